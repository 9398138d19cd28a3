"""The README's commands work as written: each of its ``bash`` blocks is run here against a live
embedded server (``gif-service serve``: SQLite, local runner), or skipped for a reason listed in
``RULES``; a block that matches no rule fails, so a new block must be run or explained.

The blocks run in one simulated reader's session, in the order a reader meets them: the
activation line, the worked example (in a checkout-like directory whose ``.venv`` and ``data``
are this repository's environment and the live server's data directory), then the blocks that
continue in the worked example's shell (its directory and variables). Two things differ from a
reader's machine, both the server's address only: ``http://127.0.0.1:8000`` in a block is
replaced by the live server's URL, and ``GIF_URL`` (the CLI's default server) is set to it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.live_server import LiveServer, live_server, service_env

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_URL = "http://127.0.0.1:8000"
BLOCK_TIMEOUT_S = 300
SESSION_VARIABLES = ("GIF_API_KEY", "AUTH", "URL", "MODEL", "DATA", "JOB", "EDITED")


@dataclass(frozen=True)
class Block:
    line: int  # where the block starts in README.md
    code: str


def bash_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(text[: match.start()].count("\n") + 1, match.group(1))
            for match in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M)]


@dataclass(frozen=True)
class Rule:
    """Blocks containing ``marker`` are run as ``kind`` — or skipped, when ``skip`` says why."""

    marker: str
    kind: str
    skip: str | None = None


RULES = (
    Rule("./scripts/serve.sh", "serve", skip="starts a server; this test's live server is the "
         "same `gif-service serve` that serve.sh ends in (tests/test_deployment.py and "
         "tests/integration start it too)"),
    Rule("./scripts/test.sh", "test", skip="runs the whole suite, this test included"),
    Rule("GIF_DATABASE_URL=postgresql", "distributed", skip="names hosts that do not exist "
         "here (db-host, redis-host) and starts long-running processes; tests/integration runs "
         "the same migrate, keys create, serve and worker commands on local PostgreSQL/Redis"),
    Rule("docker ", "docker", skip="no Docker engine on the development and CI machines; "
         "tests/test_deployment.py checks the Dockerfile, the compose file and every command "
         "they run"),
    Rule("export GIF_API_KEY=", "worked_example"),
    Rule("gif edit --model", "gif_edit"),
    Rule("gif-service models upload", "cli"),
    Rule("/plots/convergence.png", "report"),
    Rule("source .venv/bin/activate", "activate"),
)


def rule_for(block: Block) -> Rule:
    """The first rule whose marker the block contains (activation alone comes last: the worked
    example and the distributed block start with it too)."""
    for rule in RULES:
        if rule.marker in block.code:
            return rule
    raise AssertionError(f"README.md line {block.line}: a bash block no rule runs or skips:\n"
                         f"{block.code}")


def test_every_readme_bash_block_is_run_or_skipped_with_a_reason():
    blocks = bash_blocks()
    assert len(blocks) >= 8, "the README's bash blocks were not found"
    kinds = [rule_for(block).kind for block in blocks]
    run = {rule.kind for rule in RULES if rule.skip is None}
    assert run <= set(kinds), f"a block this test runs has gone from the README: {run - set(kinds)}"
    assert len([k for k in kinds if k in run]) == len(run), "two README blocks of one kind"


def block_of(kind: str) -> Block:
    (block,) = [b for b in bash_blocks() if rule_for(b).kind == kind]
    return block


# ------------------------------------------------------------------------------ the session


@dataclass
class Session:
    """The simulated reader: a checkout-like ``root``, the worked example's directory and its
    shell variables, and the live server."""

    server: LiveServer
    root: Path
    env: dict[str, str]
    workdir: Path | None = None
    state: Path | None = None

    def run(self, block: Block, *, cwd: Path, prelude: str = "", epilogue: str = "") -> str:
        """Run ``block`` with bash (``-e``: the first failing command fails it); returns its
        output, stdout and stderr together."""
        code = block.code.replace(README_URL, self.server.url)
        script = f"set -eo pipefail\n{prelude}\n{code}\n{epilogue}\n"
        done = subprocess.run(["bash", "-c", script], cwd=cwd, env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, (
            f"README.md line {block.line} failed (exit {done.returncode}):\n{done.stdout[-6000:]}"
            f"\n--- server log ---\n{self.server.log_tail(3000)}")
        return done.stdout

    def continue_in_worked_example(self, block: Block) -> str:
        """Run ``block`` in the worked example's shell: its directory, its variables, .venv
        active (as the block's comment says)."""
        if self.state is None:
            pytest.skip("the worked example did not run")
        prelude = f"source {shlex.quote(str(self.root / '.venv/bin/activate'))}\n" \
                  f"source {shlex.quote(str(self.state))}"
        return self.run(block, cwd=self.workdir, prelude=prelude)

    def variable(self, name: str) -> str:
        match = re.search(rf"^declare -x {name}=\"(.*)\"$|^declare -- {name}=\"(.*)\"$",
                          self.state.read_text(), re.M)
        assert match, f"{name} not set by the worked example"
        return match.group(1) or match.group(2)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    missing = [tool for tool in ("bash", "curl", "jq", "sha256sum") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the README's examples need {', '.join(missing)} (scripts/setup.sh "
                    f"installs them)")
    venv = REPO / ".venv"
    if not (venv / "bin" / "activate").exists():
        pytest.skip("no .venv in the checkout (scripts/setup.sh creates it)")
    base = tmp_path_factory.mktemp("readme")
    root, data, tmp = base / "checkout", base / "data", base / "tmp"
    root.mkdir()
    tmp.mkdir()
    with live_server(data) as server:
        (root / ".venv").symlink_to(venv)
        (root / "data").symlink_to(data)
        env = service_env(data)
        env.pop("GIF_DATA_DIR")  # the reader's shell has no GIF_* set ...
        env.update(GIF_URL=server.url, TMPDIR=str(tmp),  # ... but the server's address
                   PYTHONPATH=str(REPO))  # this checkout's code, whatever .venv points at
        yield Session(server=server, root=root, env=env)
        _cancel_unfinished(server)


def _cancel_unfinished(server: LiveServer) -> None:
    """Stop what the blocks left running, so it does not cost CPU after the test."""
    with server.client() as client:
        for job in client.get("/v1/jobs", params={"limit": 100}).json()["data"]:
            if job["status"] in ("queued", "running"):
                client.post(f"/v1/jobs/{job['id']}/cancel")


# ------------------------------------------------------------------------- the blocks, in order


def test_activation_line_puts_the_environment_on_path(session: Session):
    out = session.run(block_of("activate"), cwd=session.root,
                      epilogue="command -v gif-service gif python")
    paths = out.split()
    assert len(paths) == 3 and all(p.startswith(str(REPO / ".venv" / "bin")) or
                                   "/.venv/bin/" in p for p in paths), out


def test_worked_example_runs_verbatim_and_edits_the_model(session: Session):
    state = session.root.parent / "worked-example.vars"
    epilogue = (f"declare -p {' '.join(SESSION_VARIABLES)} > {shlex.quote(str(state))}\n"
                f"pwd > {shlex.quote(str(state))}.pwd")
    out = session.run(block_of("worked_example"), cwd=session.root, epilogue=epilogue)
    session.state = state
    session.workdir = Path(Path(f"{state}.pwd").read_text().strip())
    assert f"working in {session.workdir}" in out
    # It works in a fresh temporary directory, never in the checkout.
    assert session.workdir.parent == Path(session.env["TMPDIR"])
    for name in ("digits-train.npz", "digits-mlp.safetensors", "headers.txt",
                 "edited.safetensors", "report.html"):
        assert (session.workdir / name).is_file(), name
    assert sorted(p.name for p in session.root.iterdir()) == [".venv", "data"]

    job = _job(session, session.variable("JOB"))
    assert job["status"] == "succeeded", job
    metrics = _last_json_object(out, "removed_before")
    assert metrics["removed_after"] < metrics["removed_before"]
    # The default request (the example sets only `edit` and `eval`): the class is gone and
    # the others keep their accuracy, as the README reports (measured 0.0 and 1.0).
    assert metrics["removed_after"] <= 0.01 and metrics["others_after"] >= 0.95, metrics
    # The ETag line and sha256sum agree, as the README says.
    etag = re.search(r'(?im)^etag: "([0-9a-f]{64})"', out)
    digest = re.search(r"(?m)^([0-9a-f]{64})  edited\.safetensors$", out)
    assert etag and digest and etag.group(1) == digest.group(1), out[-2000:]
    assert "event: end" in out  # the SSE stream ran to the job's end


def test_gif_edit_runs_in_the_worked_example_directory(session: Session):
    out = session.continue_in_worked_example(block_of("gif_edit"))
    result = _last_json_object(out, "metrics")
    assert "scale" in result and result["metrics"]["after"]["test"]["count"] > 0
    assert (session.workdir / "edited-here.safetensors").stat().st_size > 0
    plots = sorted(p.name for p in (session.workdir / "plots").glob("*.png"))
    assert "convergence.png" in plots, plots


def test_command_line_block_runs_in_the_worked_example_shell(session: Session):
    out = session.continue_in_worked_example(block_of("cli"))
    model_id, job_id = session.variable("MODEL"), session.variable("JOB")
    assert model_id in out and job_id in out
    assert "succeeded" in out
    downloaded = session.workdir / f"{session.variable('EDITED')}.safetensors"
    assert downloaded.read_bytes() == (session.workdir / "edited.safetensors").read_bytes()
    with session.server.client() as client:
        jobs = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    chained = [j for j in jobs if j["model_id"] == session.variable("EDITED")]
    assert len(chained) == 1, "jobs submit --model-id did not submit one job on the edited model"
    assert _job(session, job_id)["status"] == "succeeded"  # cancel left the finished job alone


def test_report_block_fetches_the_page_and_a_figure(session: Session):
    session.continue_in_worked_example(block_of("report"))
    page = (session.workdir / "report.html").read_text()
    assert "<html" in page.lower() and session.variable("JOB") in page
    assert (session.workdir / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ helpers


def _job(session: Session, job_id: str) -> dict:
    response = httpx.get(f"{session.server.url}/v1/jobs/{job_id}",
                         headers=session.server.headers, timeout=30)
    response.raise_for_status()
    return response.json()


def _last_json_object(text: str, key: str) -> dict:
    """The last top-level JSON object in ``text`` that has ``key`` (jq prints them indented)."""
    decoder = json.JSONDecoder()
    found = None
    for start in (m.start() for m in re.finditer(r"(?m)^\{", text)):
        try:
            value, _ = decoder.raw_decode(text[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and key in value:
            found = value
    assert found is not None, f"no JSON object with {key!r} in:\n{text[-3000:]}"
    return found

