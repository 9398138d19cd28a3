"""Start real ``gif-service`` processes for tests: an API server (``gif-service serve``) on a
free port and, for the distributed mode, a Celery worker (``gif-service worker``).

Plain functions and context managers; the pytest fixtures that use them live in the conftests
(``tests/integration/conftest.py``, ``tests/client/conftest.py``). Nothing here is mocked: the
processes are the very command an operator runs, with their output captured to a log file that
is attached to the error when a process fails to start.

Typical use::

    with live_server(tmp_path / "data") as server:          # embedded: SQLite + local runner
        httpx.get(server.url + "/v1/models", headers=server.headers)

    env = service_env(data_dir, database_url=pg_url, broker_url=redis_url)
    with live_worker(env), live_server(data_dir, env=env) as server:   # distributed
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


def gif_service_command() -> list[str]:
    """The installed ``gif-service`` console script of this interpreter's environment (the
    command operators run); ``python -m service.cli`` when the script is not installed."""
    script = Path(sys.executable).parent / "gif-service"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "service.cli"]


def free_port() -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(
    data_dir: Path,
    *,
    database_url: str | None = None,
    broker_url: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a test process: this environment minus every inherited ``GIF_*``
    variable (so a developer's settings never leak into a test), plus ``GIF_DATA_DIR`` and,
    for the distributed mode, ``GIF_DATABASE_URL`` / ``GIF_BROKER_URL``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIF_")}
    env["GIF_DATA_DIR"] = str(data_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The test runner shares 2 cores with others: keep each process's torch to one thread.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    if database_url:
        env["GIF_DATABASE_URL"] = database_url
    if broker_url:
        env["GIF_BROKER_URL"] = broker_url
    env.update(extra or {})
    return env


@dataclass
class LiveProcess:
    """A started ``gif-service`` subprocess whose stdout+stderr go to ``log_path``."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def logs(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, max_chars: int = 6000) -> str:
        return self.logs()[-max_chars:]

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a clean shutdown, as an operator's Ctrl-C/systemd does), then SIGKILL to the
        whole process group if it does not end in ``timeout`` seconds. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.process)
        _kill_group(self.process)  # children (worker pool, runner child) must not outlive it
        return self.process.returncode


@dataclass
class LiveServer(LiveProcess):
    """A running ``gif-service serve``: ``url`` (no trailing slash), ``api_key``, ``env``."""

    url: str = ""
    api_key: str = ""
    data_dir: Path = field(default_factory=Path)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An ``httpx.Client`` bound to the server with the API key set."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)


def _kill_group(process: subprocess.Popen) -> None:
    """Kill what is left of the process group the test started (only that group)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)


def _spawn(name: str, args: list[str], env: Mapping[str, str], log_path: Path) -> LiveProcess:
    """Start ``gif-service <args>`` in its own process group (so stopping it stops its children)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    try:
        process = subprocess.Popen(
            [*gif_service_command(), *args],
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log_file.close()  # the child holds its own descriptor
    return LiveProcess(name=name, process=process, log_path=log_path)


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 120.0) -> str:
    """Run one ``gif-service`` command to completion and return its stdout; a non-zero exit
    raises with the command's output."""
    completed = subprocess.run(
        [*gif_service_command(), *args],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"gif-service {' '.join(args)} exited {completed.returncode}\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return completed.stdout


def create_api_key(env: Mapping[str, str], owner: str) -> str:
    """A new API key for ``owner`` via ``gif-service keys create`` (the key is its last line)."""
    output = run_cli(["keys", "create", "--owner", owner], env)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("gif-service keys create printed nothing")
    return lines[-1]


def _wait_healthy(proc: LiveProcess, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if not proc.running:
            raise RuntimeError(
                f"{proc.name} exited with {proc.process.returncode} before it was healthy.\n"
                f"--- log ---\n{proc.log_tail()}"
            )
        try:
            response = httpx.get(url + "/healthz", timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"/healthz answered {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(
        f"{proc.name} not healthy after {timeout:.0f}s ({last_error}).\n"
        f"--- log ---\n{proc.log_tail()}"
    )


def start_server(
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    database_url: str | None = None,
    broker_url: str | None = None,
    owner: str = "tests",
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> LiveServer:
    """Start ``gif-service serve`` on a free port and wait for ``/healthz``.

    The API key is the one the embedded default writes to ``<data_dir>/api_key`` on first start;
    when there is none (distributed mode runs the API alone and writes no key) a key for
    ``owner`` is created with ``gif-service keys create``. Call ``stop()`` when done."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = (
        dict(env)
        if env is not None
        else service_env(data_dir, database_url=database_url, broker_url=broker_url)
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _spawn(
        "gif-service serve",
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        full_env,
        data_dir / f"serve-{port}.log",
    )
    _wait_healthy(proc, url, startup_timeout)
    key_file = Path(full_env.get("GIF_API_KEY_FILE", data_dir / "api_key"))
    try:
        if key_file.exists() and key_file.read_text().strip():
            api_key = key_file.read_text().strip()
        else:
            api_key = create_api_key(full_env, owner)
    except Exception:
        proc.stop()
        raise
    return LiveServer(
        name=proc.name,
        process=proc.process,
        log_path=proc.log_path,
        url=url,
        api_key=api_key,
        data_dir=data_dir,
        env=full_env,
    )


def _wait_worker_ready(proc: LiveProcess, timeout: float) -> None:
    """A Celery worker is ready when it logs ``ready.`` (after connecting to the broker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            raise RuntimeError(
                f"{proc.name} exited with {proc.process.returncode} before it was ready.\n"
                f"--- log ---\n{proc.log_tail()}"
            )
        if " ready." in proc.logs():
            return
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(
        f"{proc.name} not ready after {timeout:.0f}s.\n--- log ---\n{proc.log_tail()}"
    )


def start_worker(
    env: Mapping[str, str],
    *,
    name: str = "worker",
    log_dir: Path | None = None,
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> LiveProcess:
    """Start ``gif-service worker`` (a real Celery worker on ``GIF_BROKER_URL``) and wait until
    it reports ready. ``env`` is usually :func:`service_env` with both URLs set."""
    log_dir = Path(log_dir or env["GIF_DATA_DIR"])
    hostname = f"{name}-{os.getpid()}-{free_port()}@%h"
    proc = _spawn(
        "gif-service worker",
        ["worker", "--hostname", hostname, "--loglevel", "INFO"],
        env,
        log_dir / f"{name}.log",
    )
    _wait_worker_ready(proc, startup_timeout)
    return proc


@contextmanager
def live_server(data_dir: Path, **kwargs) -> Iterator[LiveServer]:
    """``start_server`` as a context manager; the log is printed when the body raises."""
    server = start_server(data_dir, **kwargs)
    try:
        yield server
    except BaseException:
        sys.stderr.write(f"--- {server.name} log ({server.log_path}) ---\n{server.log_tail()}\n")
        raise
    finally:
        server.stop()


@contextmanager
def live_worker(env: Mapping[str, str], **kwargs) -> Iterator[LiveProcess]:
    """``start_worker`` as a context manager; the log is printed when the body raises."""
    worker = start_worker(env, **kwargs)
    try:
        yield worker
    except BaseException:
        sys.stderr.write(f"--- {worker.name} log ({worker.log_path}) ---\n{worker.log_tail()}\n")
        raise
    finally:
        worker.stop()
