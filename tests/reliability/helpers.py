"""Helpers of the reliability tests: talk HTTP to a live server like a client does (or over a
raw socket, to send bodies a server must refuse unread), wait for job states, look at processes
through /proc (which child runs a job, what a request cost in peak RSS and CPU), and read the
database."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.live_server import LiveProcess, LiveServer
from tests.worker import digits

TERMINAL = ("succeeded", "failed", "cancelled")
JOB_TIMEOUT_S = 240.0  # generous: job processes import torch on a loaded 2-core machine


def upload_model(client: httpx.Client, path: Path, name: str = "digits-mlp") -> dict:
    spec = {**digits.MLP_SPEC, "name": name}
    with path.open("rb") as handle:
        response = client.post(
            "/v1/models",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"spec": json.dumps(spec)},
        )
    assert response.status_code == 201, response.text
    return response.json()


def upload_dataset(client: httpx.Client, path: Path, name: str = "digits-train") -> dict:
    with path.open("rb") as handle:
        response = client.post(
            "/v1/datasets",
            files={"file": (path.name, handle, "application/octet-stream")},
            data={"name": name},
        )
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: httpx.Client, model_id: str, dataset_id: str, request: dict, **kw) -> dict:
    body = {"model_id": model_id, "train_dataset_id": dataset_id, **request}
    response = client.post("/v1/jobs", json=body, **kw)
    assert response.status_code == 202, response.text
    return response.json()


def wait_job(
    server: LiveServer,
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict], bool] | None = None,
    timeout: float = JOB_TIMEOUT_S,
) -> dict:
    """Poll the job until ``until(job)`` (default: terminal); fail with the server log if not."""
    until = until or (lambda job: job["status"] in TERMINAL)
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200:
            job = response.json()
            if until(job):
                return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} stuck at {job}\n--- server log ---\n{log_without_access(server)}")


def log_without_access(server: LiveServer, max_chars: int = 8000) -> str:
    """The server's log minus the per-request access lines (what went on besides polling)."""
    lines = [line for line in server.logs().splitlines() if '"service.access"' not in line]
    return "\n".join(lines)[-max_chars:]


def in_solve(job: dict) -> bool:
    """The job is inside the solver (or already over)."""
    return job["status"] in TERMINAL or (
        job["status"] == "running" and (job["progress"] or {}).get("phase") == "solve"
    )


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def celery_pool_child(worker: LiveProcess) -> int:
    """The pid of the Celery worker's prefork pool child (the process that runs the job)."""
    pids = wait_until(
        lambda: children(worker.process.pid), 30.0, "the Celery pool child process"
    )
    assert isinstance(pids, list) and len(pids) == 1, pids
    return pids[0]


def local_job_child(server: LiveServer) -> int:
    """The pid of the embedded local runner's spawn child (not multiprocessing's tracker)."""
    def find() -> list[int]:
        return [p for p in children(server.process.pid) if "spawn_main" in cmdline(p)]

    pids = wait_until(find, 60.0, "the local runner's job process")
    assert isinstance(pids, list) and len(pids) == 1, pids
    return pids[0]


def kill9(pid: int) -> None:
    os.kill(pid, 9)


def edited_models_per_job(database_url: str) -> dict[str, int]:
    """``job_id → number of models whose source_job_id is that job`` (read from the database)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT source_job_id, count(*) FROM models "
                    "WHERE source_job_id IS NOT NULL GROUP BY source_job_id"
                )
            ).all()
    finally:
        engine.dispose()
    return {job_id: count for job_id, count in rows}


def job_rows(database_url: str) -> dict[str, dict]:
    """Every job row's status, attempts and error (straight from the database)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT id, status, attempts, error, edited_model_id FROM jobs")
            ).mappings().all()
    finally:
        engine.dispose()
    return {row["id"]: dict(row) for row in rows}


def logged_statuses(server: LiveServer) -> list[int]:
    """The HTTP status of every request in the server's JSON access log."""
    statuses = []
    for line in server.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("status"), int):
            statuses.append(record["status"])
    return statuses


# ------------------------------------------------------------------ what a request costs a server


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    found, frontier = [pid], [pid]
    while frontier:
        below = [child for parent in frontier for child in children(parent)]
        found += below
        frontier = below
    return found


def _status_bytes(pid: int, field: str) -> int:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants (those alive)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            fields = (Path("/proc") / str(member) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


class PeakMemory:
    """Peak RSS growth of a process tree over a stretch of time, from /proc.

    ``reset()`` sets each process's high-water mark (``VmHWM``) to its current RSS (writing
    ``5`` to ``/proc/<pid>/clear_refs``, which Linux provides for exactly this) and remembers
    that RSS; ``growth()`` is the sum over the tree of ``VmHWM`` minus that baseline (a process
    born since counts whole). A sum of per-process peaks: an upper bound of the tree's peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.baseline: dict[int, int] = {}

    def reset(self) -> None:
        self.baseline = {}
        for member in process_tree(self.pid):
            try:
                (Path("/proc") / str(member) / "clear_refs").write_text("5")
            except OSError:
                continue
            self.baseline[member] = _status_bytes(member, "VmRSS")

    def growth(self) -> int:
        return sum(
            max(_status_bytes(member, "VmHWM") - self.baseline.get(member, 0), 0)
            for member in process_tree(self.pid)
        )


def peak_rss_growth(work: Callable[[], object], pid: int | None = None) -> int:
    """Peak RSS growth (bytes) of ``pid``'s tree (default: this process) while ``work()`` runs."""
    memory = PeakMemory(pid or os.getpid())
    memory.reset()
    work()
    return memory.growth()


@dataclass
class Cost:
    """What one stretch of requests cost the server: peak RSS growth (bytes), CPU and wall
    seconds."""

    rss_growth: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def __str__(self) -> str:
        return (f"RSS +{self.rss_growth / 1e6:.1f} MB, server CPU {self.cpu_s:.2f} s, "
                f"wall {self.wall_s:.2f} s")


def wait_settled(pid: int, timeout: float = 90.0, tolerance: int = 2 * 10**6) -> None:
    """Wait until the tree's processes and their total RSS stop changing (the embedded
    runner's job process imports torch for a while after the server starts): what is measured
    afterwards is the requests', not a start-up's."""
    def snapshot() -> tuple[frozenset[int], int]:
        tree = process_tree(pid)
        return frozenset(tree), sum(_status_bytes(p, "VmRSS") for p in tree)

    deadline = time.monotonic() + timeout
    previous = snapshot()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = snapshot()
        if current[0] == previous[0] and abs(current[1] - previous[1]) < tolerance:
            return
        previous = current
    pytest.fail(f"the processes of {pid} did not settle within {timeout:.0f}s")


@contextmanager
def server_cost(server: LiveServer) -> Iterator[Cost]:
    """Measure the server's peak RSS growth and CPU over the ``with`` block (once its process
    tree has settled)."""
    wait_settled(server.process.pid)
    cost = Cost()
    memory = PeakMemory(server.process.pid)
    memory.reset()
    cpu, wall = cpu_seconds(server.process.pid), time.perf_counter()
    try:
        yield cost
    finally:
        cost.rss_growth = memory.growth()
        cost.cpu_s = cpu_seconds(server.process.pid) - cpu
        cost.wall_s = time.perf_counter() - wall


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()} if directory.exists() else set()


def assert_still_answers(server: LiveServer) -> None:
    """The server process is up and serves an authenticated request."""
    assert server.running, log_without_access(server)
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    assert server.client().get("/v1/models").status_code == 200


# ------------------------------------------------------------------ a raw HTTP/1.1 client


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def raw_request(
    url: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body_bytes: int,
    *,
    declare_length: bool = True,
    declared_length: int | None = None,
    chunk: bytes = b"\0" * 65536,
    timeout: float = 120.0,
) -> RawResponse:
    """Send ``body_bytes`` of body over a plain socket (``Content-Length``, possibly larger
    than what is sent, or chunked) while reading the answer: a server may answer before the
    body is complete and stop reading it, and a client like httpx would report the broken
    pipe instead of the answer. Sending stops as soon as the answer is in."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if declare_length:
        lines.append(f"Content-Length: {declared_length or body_bytes}")
    else:
        lines.append("Transfer-Encoding: chunked")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    answered = threading.Event()

    def send_body() -> None:
        sent = 0
        try:
            while sent < body_bytes and not answered.is_set():
                piece = chunk[: body_bytes - sent]
                sock.sendall(piece if declare_length else
                             f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
            if not declare_length and not answered.is_set():
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: what we are here to see

    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        writer = threading.Thread(target=send_body, daemon=True)
        writer.start()
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed without an answer: {received!r}")
            received += data
        head, _, rest = received.partition(b"\r\n\r\n")
        answered.set()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer_headers = {k.strip().lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in header_lines)}
        length = int(answer_headers.get("content-length", "0"))
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
        writer.join(timeout=timeout)
        return RawResponse(int(status_line.split()[1]), answer_headers, rest[:length])
    finally:
        answered.set()
        sock.close()
