"""The job report and plot routes, on a real job result: a tiny MLP trained here on digits,
edited by ``gif.edit.run_edit`` (class removal, GIF), stored in a job row of a migrated
database and served by the real app. The page is rendered in headless Chromium over the
DevTools protocol: no console errors, the four figures decode, the screenshot is not blank."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.db.models import Artifact, Job, Model
from service.report import PLOT_CAPTIONS, render_report

torch.set_num_threads(1)

IN_CI = os.environ.get("CI") == "true"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL_NAME = '<script>alert("model")</script>'
EVIL_EVAL = "<img src=x onerror=alert(1)>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- a real edit ----------------------------------------------------------------------------


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)  # 0..16, 8×8 flattened
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


@pytest.fixture(scope="module")
def edit_result() -> dict:
    return run_tiny_edit()


def run_tiny_edit() -> dict:
    """``result`` of a real GIF class removal on a small MLP trained on 1,200 digits."""
    from gif.data import ArrayDataset
    from gif.edit import LoadedModel, run_edit
    from gif.registry import build_model
    from gif.request import EditRequest
    from gif.spec import ModelSpec

    x, y = _digits()
    spec = ModelSpec(arch="mlp", arch_kwargs={"in_features": 64, "hidden": [32],
                                              "num_classes": 10},
                     input={"scale": 1 / 16}, name=EVIL_NAME)
    torch.manual_seed(0)
    model = build_model(spec)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    train_x, train_y = x[:1200], y[:1200]
    for _ in range(150):  # full batch: a few seconds on one thread
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(train_x / 16), train_y)
        loss.backward()
        optimiser.step()
    request = EditRequest.model_validate({
        "edit": {"kind": "remove_class", "class": 3},
        "selection": {"ratio": 0.2},
        "solver": {"max_iter": 30, "hessian_samples": 300, "edit_samples": 100},
        "eval": {"datasets": {EVIL_EVAL: "test-digits"}, "mia": True, "retain_samples": 300},
    })
    outcome = run_edit(
        request,
        LoadedModel(spec=spec, state_dict=model.state_dict()),
        ArrayDataset(train_x, train_y),
        {EVIL_EVAL: ArrayDataset(x[1200:], y[1200:])},
    )
    return outcome.result


# --- the app and its database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, edit_result):
    """The real app (runner ``none``) over a migrated SQLite database holding a succeeded, a
    failed and a running job of owner alice, and the keys of alice and bob."""
    from service.app import create_app
    from service.auth import create_key
    from service.db.migrate import upgrade
    from service.settings import Settings

    data_dir = tmp_path_factory.mktemp("report-data")
    settings = Settings(data_dir=data_dir, runner="none")
    upgrade(settings)
    app = create_app(settings)
    with TestClient(app) as client:
        factory = app.state.session_factory
        with factory() as session:
            alice_key, bob_key = create_key(session, "alice"), create_key(session, "bob")
            session.commit()
        with factory() as session:
            from service.auth import authenticate

            alice = authenticate(session, alice_key)
            jobs = _seed(session, alice.id, edit_result)
            session.commit()
        yield {"client": client, "alice": {"Authorization": f"Bearer {alice_key}"},
               "bob": {"Authorization": f"Bearer {bob_key}"}, "jobs": jobs,
               "result": edit_result}


def _seed(session, owner_id: str, result: dict) -> dict[str, str]:
    artifact = Artifact(owner_id=owner_id, sha256="a" * 64, size_bytes=10, kind="checkpoint",
                        media_type="application/octet-stream")
    session.add(artifact)
    session.flush()

    def model(name: str) -> Model:
        row = Model(owner_id=owner_id, name=name, arch="mlp", arch_kwargs={}, input={},
                    num_parameters=2410, size_bytes=10, sha256="a" * 64,
                    artifact_id=artifact.id)
        session.add(row)
        session.flush()
        return row

    source = model(EVIL_NAME)
    request = {
        "model_id": source.id, "train_dataset_id": "builtin:digits:train",
        "edit": {"kind": "remove_class", "class": 3}, "method": "gif",
        "eval": {"datasets": {EVIL_EVAL: "builtin:digits:test"}, "mia": True},
    }
    start = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    succeeded = Job(owner_id=owner_id, status="succeeded", request=request, request_hash="1",
                    model_id=source.id, train_dataset_id="builtin:digits:train",
                    started_at=start, finished_at=start + timedelta(seconds=12))
    failed = Job(owner_id=owner_id, status="failed", request=request, request_hash="2",
                 model_id=source.id, train_dataset_id="builtin:digits:train",
                 started_at=start, finished_at=start + timedelta(seconds=3),
                 progress={"phase": "solve", "iteration": 7, "max_iter": 30, "residual": 3.5e4},
                 error={"code": "solver_diverged",
                        "message": "residual grew <b>without</b> bound"})
    running = Job(owner_id=owner_id, status="running", request=request, request_hash="3",
                  model_id=source.id, train_dataset_id="builtin:digits:train", started_at=start,
                  progress={"phase": "solve", "iteration": 4, "max_iter": 30,
                            "residual": 0.25})
    # A succeeded job whose result has nothing to draw (a result of another shape).
    bare = Job(owner_id=owner_id, status="succeeded", request=request, request_hash="4",
               model_id=source.id, train_dataset_id="builtin:digits:train", started_at=start,
               finished_at=start + timedelta(seconds=1),
               result={"scale": 1.0, "solver": {"history": [{"residual": 0.5}]},
                       "metrics": {"before": {}, "after": {}}})
    session.add_all([succeeded, failed, running, bare])
    session.flush()
    edited = model("edited")
    edited.source_job_id = succeeded.id
    succeeded.edited_model_id = edited.id
    succeeded.result = {**result, "edited_model_id": edited.id}
    return {"succeeded": succeeded.id, "failed": failed.id, "running": running.id,
            "bare": bare.id}


# --- the report page ------------------------------------------------------------------------


def _report(served, job: str, who: str = "alice"):
    return served["client"].get(f"/v1/jobs/{served['jobs'][job]}/report", headers=served[who])


@pytest.fixture(scope="module")
def succeeded_report(served):
    """The succeeded job's report response (drawing four figures is the slow part: once)."""
    return _report(served, "succeeded")


def test_report_of_a_succeeded_job_has_every_section_and_inline_figures(served,
                                                                         succeeded_report):
    response = succeeded_report
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    for heading in ("Request (normalised)", "Timings per phase", "Solver diagnostics",
                    "Metrics before and after the edit", "Figures"):
        assert f"<h2>{heading}</h2>" in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(PLOT_CAPTIONS) == 4
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in images)

    result = served["result"]
    # The numbers in the tables are the result's own, e.g. every phase's timing and the
    # solver's iteration count; the forget set's accuracy before and after.
    for phase in result["timings"]:
        assert f"<td>{phase}</td>" in page
    assert f'<td class="num">{result["solver"]["iterations"]}</td>' in page
    before = result["metrics"]["before"]["forget"]["accuracy"]
    after = result["metrics"]["after"]["forget"]["accuracy"]
    assert f"{before:.4g}" in page and f"{after:.4g}" in page
    assert "accuracy remaining classes" in page and "accuracy removed class" in page
    for scalar in ("score", "retained_grad_norm", "mia.efficacy", "mia.method"):
        assert f"<td>{scalar}</td>" in page, scalar
    assert "svc_true_class_confidence" in page
    assert f"{result['scale']:.4g} (auto)" in page


def test_report_has_no_external_references(served, succeeded_report):
    pages = {"succeeded": succeeded_report.text,
             **{job: _report(served, job).text for job in ("failed", "running")}}
    for job, page in pages.items():
        assert not re.search(r"https?://", page, re.IGNORECASE), job
        for tag in re.findall(r"<[a-zA-Z][^>]*>", page):  # real tags (user text is escaped)
            assert not re.search(r"\b(src|href|action)\s*=\s*(?![\"']?data:image/png)", tag), tag
        assert "<script" not in page.lower()
        assert "<link" not in page.lower()


def test_user_strings_are_escaped(served, succeeded_report):
    page = succeeded_report.text
    assert EVIL_NAME not in page and "&lt;script&gt;alert(&quot;model&quot;)" in page
    assert EVIL_EVAL not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    failed = _report(served, "failed").text
    assert "<b>without</b>" not in failed and "&lt;b&gt;without&lt;/b&gt;" in failed


def test_unfinished_jobs_show_status_progress_and_error_without_figures(served):
    failed = _report(served, "failed")
    assert failed.status_code == 200
    assert "solver_diverged" in failed.text and "<h2>Progress</h2>" in failed.text
    assert "<img" not in failed.text and '<span class="badge failed">failed</span>' in failed.text
    running = _report(served, "running").text
    assert '<span class="badge running">running</span>' in running
    assert "0.25" in running and "<img" not in running


def test_a_result_without_figure_data_still_has_a_page_and_404_figures(served):
    page = _report(served, "bare")
    assert page.status_code == 200
    assert "<img" not in page.text
    assert all(f"{name}: no data for this figure." in page.text for name in PLOT_CAPTIONS)
    for name in PLOT_CAPTIONS:
        url = f"/v1/jobs/{served['jobs']['bare']}/plots/{name}.png"
        response = served["client"].get(url, headers=served["alice"])
        assert response.status_code == 404, name
        assert response.headers["content-type"].startswith("application/problem+json")


def test_report_revalidates_with_its_etag(served, succeeded_report):
    headers = {**served["alice"], "If-None-Match": succeeded_report.headers["etag"]}
    again = served["client"].get(f"/v1/jobs/{served['jobs']['succeeded']}/report",
                                 headers=headers)
    assert again.status_code == 304 and again.content == b""


def test_report_is_owner_scoped_and_needs_a_key(served):
    other = _report(served, "succeeded", who="bob")
    assert other.status_code == 404
    assert other.headers["content-type"].startswith("application/problem+json")
    job = served["jobs"]["succeeded"]
    assert served["client"].get(f"/v1/jobs/{job}/report").status_code == 401
    assert served["client"].get("/v1/jobs/job_nope/report",
                                headers=served["alice"]).status_code == 404


# --- the plot routes ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLOT_CAPTIONS))
def test_each_plot_is_a_png_with_cache_headers(served, name):
    from PIL import Image

    url = f"/v1/jobs/{served['jobs']['succeeded']}/plots/{name}.png"
    response = served["client"].get(url, headers=served["alice"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.width > 200 and image.height > 150
    assert "max-age" in response.headers["cache-control"]
    etag = response.headers["etag"]
    cached = served["client"].get(url, headers={**served["alice"], "If-None-Match": etag})
    assert cached.status_code == 304 and cached.headers["etag"] == etag


def test_plot_errors_are_404_problems(served):
    client, alice, jobs = served["client"], served["alice"], served["jobs"]
    cases = [
        (f"/v1/jobs/{jobs['succeeded']}/plots/histogram.png", alice, "histogram"),
        (f"/v1/jobs/{jobs['failed']}/plots/convergence.png", alice, "no result"),
        (f"/v1/jobs/{jobs['running']}/plots/scale.png", alice, "no result"),
        (f"/v1/jobs/{jobs['succeeded']}/plots/convergence.png", served["bob"], "does not exist"),
    ]
    for url, headers, words in cases:
        response = client.get(url, headers=headers)
        assert response.status_code == 404, url
        assert response.headers["content-type"].startswith("application/problem+json")
        assert words in response.json()["detail"]


# --- headless Chromium ----------------------------------------------------------------------


class Chromium:
    """A headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, profile: Path):
        if CHROMIUM is None:
            if IN_CI:
                pytest.fail("chromium is not installed (CI=true: the report test must run)")
            pytest.skip("chromium is not installed")
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.port = self._wait_port(profile / "DevToolsActivePort")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list",
                                                   timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self._exits = contextlib.ExitStack()
        self.socket = self._exits.enter_context(connect(page["webSocketDebuggerUrl"],
                                                        max_size=None))
        self.next_id, self.events = 0, []

    def _wait_port(self, port_file: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def load(self, url: str, width: int = 1200, height: int = 3000) -> None:
        for domain in ("Log", "Runtime", "Page"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            self.events.append(json.loads(self.socket.recv(timeout=60)))
        self.call("Runtime.evaluate", expression="1")  # flush late console events

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(json.dumps(params["args"])[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def evaluate(self, expression: str):
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"]["value"]

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        self._exits.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def chromium():
    profile = Path(tempfile.mkdtemp(prefix="gif-chromium-"))
    browser = Chromium(profile)
    yield browser
    browser.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_chromium_without_errors(succeeded_report, chromium, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_bytes(succeeded_report.content)
    chromium.load(page.as_uri())

    assert chromium.errors() == []
    images = chromium.evaluate(
        "Array.from(document.images).map(i => ({src: i.src.slice(0, 22), ok: i.complete, "
        "w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
    )
    assert len(images) == 4
    for image in images:
        assert image["src"] == "data:image/png;base64,"
        assert image["ok"] and image["w"] > 200 and image["h"] > 150 and image["shown"] > 200
    assert chromium.evaluate("document.querySelectorAll('table').length") >= 5

    png = chromium.screenshot()
    if os.environ.get("GIF_REPORT_SCREENSHOT"):  # keep it to look at: where the env var says
        Path(os.environ["GIF_REPORT_SCREENSHOT"]).write_bytes(png)
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    assert shot.size == (1200, 3000)
    pixels = np.asarray(shot).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    non_white = float(np.mean(np.any(pixels < 245, axis=1)))
    assert colours > 200, colours  # anti-aliased plots and text, not a blank page
    assert non_white > 0.05, non_white


def test_the_chromium_check_catches_errors(chromium, tmp_path):
    """The detector itself: a page that logs an error and breaks the report's CSP is caught."""
    page = tmp_path / "broken.html"
    page.write_text(render_report({"id": "job_x", "status": "queued", "request": {}})
                    .replace("</body>", "<img src='https://example.invalid/x.png'></body>"))
    chromium.load(page.as_uri())
    errors = chromium.errors()
    assert errors and any("Content Security Policy" in e or "example.invalid" in e
                          for e in errors), errors
