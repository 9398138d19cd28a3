"""What the job commands and the client say about a finished job (issue 13, items 4–6): the
warnings of an unconverged or unimproved edit, the numbers that judge each edit kind (with
retraining beside them when a retrain job on the same request exists), and a progress display
without glitches. Against the real embedded server where a job is needed."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from click.testing import CliRunner

from gif.progress import PhaseProgress
from service.cli_client import glance_table, jobs
from service.client import GifClient, Job, JobProgress, Model
from tests.client.conftest import FinishedJob, edit_body
from tests.live_server import LiveServer

FORGET = list(range(0, 40))


@pytest.fixture()
def run(server: LiveServer):
    def invoke(*args: str):
        env = {"GIF_URL": server.url, "GIF_API_KEY": server.api_key}
        return CliRunner().invoke(jobs, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="module")
def unconverged_job(server: LiveServer, model: Model) -> Job:
    """A sample removal whose solve stops at max_iter=2, far from its tolerance."""
    solver = {"algorithm": "lsqr", "max_iter": 2, "tol": 1e-12, "hessian_samples": 256,
              "edit_samples": None}
    body = edit_body(model.id, edit={"kind": "remove_samples", "indices": FORGET},
                     solver=solver)
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        job = gif.wait_for_job(gif.submit_job(body).id, poll_interval=0.05, timeout=240)
    assert job.status == "succeeded", job.error
    assert job.result.solver["converged"] is False
    return job


# --------------------------------------------------------------------------- warnings (13.4)


def test_an_unconverged_solve_is_a_warning_on_the_client_job(server: LiveServer,
                                                             unconverged_job: Job):
    with GifClient(server.url, server.api_key) as gif:
        fetched = gif.get_job(unconverged_job.id)

    codes = [w.code for w in fetched.warnings]
    assert codes[:1] == ["solver_not_converged"]
    assert "2 iterations" in fetched.warnings[0].message


def test_wait_show_and_json_print_the_warnings(run, unconverged_job: Job):
    waited = run("wait", unconverged_job.id, "--no-progress")
    shown = run("show", unconverged_job.id)
    as_json = run("show", unconverged_job.id, "--json")

    for result in (waited, shown):
        assert result.exit_code == 0, result.output
        assert re.search(r"^warning \[solver_not_converged\]: the lsqr stopped after 2 "
                         r"iterations \(max_iter\)", result.stdout, re.M), result.stdout
    assert json.loads(as_json.stdout)["id"] == unconverged_job.id  # stdout stays JSON
    assert "warning [solver_not_converged]" in as_json.stderr


def test_a_converged_job_shows_no_warning(run, server: LiveServer, model: Model):
    solver = {"algorithm": "lsqr", "max_iter": 500, "tol": 0.5, "hessian_samples": 256,
              "edit_samples": 64}
    body = edit_body(model.id, solver=solver)
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        job = gif.wait_for_job(gif.submit_job(body).id, poll_interval=0.05, timeout=240)

    shown = run("show", job.id)

    assert job.result.solver["converged"] is True
    assert job.warnings == []
    assert "warning" not in shown.stdout


# --------------------------------------------------------------------- result table (13.5)


def _glance(stdout: str) -> dict[str, list[str]]:
    """The "at a glance" rows: label → [before, after, change, (retrain)]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("AT A GLANCE"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("SET", "RETRAIN:")):
            break
        label, *cells = re.split(r"\s{2,}", line.strip())
        rows[label] = cells
    return rows


def test_a_class_removal_shows_the_removed_and_remaining_class_accuracy_then_retraining(
        run, server: LiveServer, finished_job: FinishedJob):
    job = finished_job.job
    test_before, test_after = (job.result.metrics.before["test"],
                               job.result.metrics.after["test"])

    without = _glance(run("show", job.id).stdout)
    waited = run("wait", job.id, "--no-progress").stdout

    removed, remaining = "test: accuracy removed class", "test: accuracy remaining classes"
    assert float(without[removed][0]) == pytest.approx(test_before["accuracy_removed_class"],
                                                       rel=1e-3)
    assert float(without[removed][1]) == pytest.approx(test_after["accuracy_removed_class"],
                                                       abs=1e-4)
    assert float(without[remaining][1]) == pytest.approx(
        test_after["accuracy_remaining_classes"], rel=1e-3)
    assert "removed class (training points): accuracy" in without
    assert all(len(cells) == 3 for cells in without.values())  # no RETRAIN column yet
    assert _glance(waited) == without

    retrain_body = {**finished_job.body, "method": "retrain",
                    "training": {"optimizer": "adam", "lr": 0.01, "epochs": 3,
                                 "batch_size": 256}}
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        retrain = gif.wait_for_job(gif.submit_job(retrain_body).id, poll_interval=0.05,
                                   timeout=240)
    assert retrain.status == "succeeded", retrain.error
    shown = run("show", job.id).stdout

    with_retrain = _glance(shown)
    assert f"RETRAIN: job {retrain.id}" in shown
    retrained = retrain.result.metrics.after["test"]["accuracy_remaining_classes"]
    assert float(with_retrain[remaining][3]) == pytest.approx(retrained, rel=1e-3)
    assert [cells[:3] for cells in with_retrain.values()] == list(without.values())


def test_a_sample_removal_shows_forgotten_retained_and_test_accuracy(run,
                                                                     unconverged_job: Job):
    rows = _glance(run("show", unconverged_job.id).stdout)

    after = unconverged_job.result.metrics.after
    assert float(rows["removed points: accuracy"][1]) == pytest.approx(
        after["forget"]["accuracy"], rel=1e-3)
    assert float(rows["retained training points: accuracy"][1]) == pytest.approx(
        after["retain"]["accuracy"], rel=1e-3)
    assert float(rows["test: accuracy"][1]) == pytest.approx(after["test"]["accuracy"],
                                                             rel=1e-3)


def test_a_relabel_shows_the_corrected_and_the_original_labels_accuracy():
    """The table's rows for a relabel (no job needed: a relabel's result shape, docs/api.md)."""
    before = {"forget": {"accuracy": 0.9}, "relabeled": {"accuracy": 0.05},
              "retain": {"accuracy": 0.97}, "test": {"accuracy": 0.95}}
    after = {"forget": {"accuracy": 0.1}, "relabeled": {"accuracy": 0.85},
             "retain": {"accuracy": 0.96}, "test": {"accuracy": 0.94}}
    job = Job.model_validate({"id": "job_r", "status": "succeeded",
                              "request": {"edit": {"kind": "relabel", "indices": [1],
                                                   "labels": [2]}},
                              "result": {"metrics": {"before": before, "after": after}}})

    rows = _glance(glance_table(job, None))

    assert rows["edited points, corrected labels: accuracy"][:2] == ["0.05", "0.85"]
    assert rows["edited points, original labels: accuracy"][:2] == ["0.9", "0.1"]
    assert list(rows)[0].startswith("edited points, corrected")


# ------------------------------------------------------------------------ progress (13.6)


def test_a_finished_job_shows_no_stale_progress(run, finished_job: FinishedJob):
    shown = run("show", finished_job.job.id).stdout

    assert finished_job.job.progress is not None  # the server keeps the last one ...
    assert "progress" not in shown and "0/0" not in shown  # ... the CLI does not show it


def test_the_client_never_reports_a_solve_without_its_count(finished_job: FinishedJob):
    solve = [p for p in finished_job.progress if p.phase == "solve"]

    assert solve and all(p.iteration is not None and p.max_iter == 200 for p in solve), solve


def test_the_solve_start_counts_zero_of_the_requests_max_iter():
    job = Job.model_validate({"id": "job_s", "status": "running",
                              "request": {"solver": {"max_iter": 100}},
                              "progress": {"phase": "solve"}})

    assert job.reported_progress == JobProgress(phase="solve", iteration=0, max_iter=100)
    assert job.reported_progress.describe() == "solve 0/100"
    done = job.model_copy(update={"progress": JobProgress(phase="save", iteration=0,
                                                           max_iter=0)})
    assert done.reported_progress.describe() == "save"


def _rates(text: str) -> list[float]:
    return [float(r) for r in re.findall(r"([\d.]+)it/s", text)]


def test_attaching_mid_solve_counts_no_speed_for_the_iterations_done_before():
    out = io.StringIO()
    bar = PhaseProgress("job_x", file=out)

    bar(JobProgress(phase="solve", iteration=150, max_iter=200, residual=0.1))
    first = out.getvalue()
    time.sleep(0.2)
    bar(JobProgress(phase="solve", iteration=160, max_iter=200, residual=0.05))
    bar.close()

    assert "150/200" in first and "00:00<00:00" not in first  # no ETA from nothing
    assert _rates(out.getvalue()) and max(_rates(out.getvalue())) < 200  # ~50 it/s, not 1e6


def render(text: str) -> list[str]:
    """The terminal lines ``text`` leaves (carriage returns overwrite, cursor-up moves up)."""
    rows, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[A|\r|\n|[^\r\n\x1b]", text):
        if token == "\x1b[A":
            row -= 1
        elif token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            rows += [""] * (row + 1 - len(rows))
        else:
            line = rows[row].ljust(col)
            rows[row], col = line[:col] + token + line[col + 1:], col + 1
    return [line.rstrip() for line in rows if line.strip()]


def test_the_solve_bar_ends_at_the_true_final_iteration():
    """The poller saw 30 of 100, then the job moved on: the bar ends at the true count."""
    out = io.StringIO()
    asked: list[str | None] = []
    bar = PhaseProgress("job_x", file=out, final_count=lambda phase: asked.append(phase) or 37)
    for progress in (JobProgress(phase="load"),
                     JobProgress(phase="solve", iteration=0, max_iter=100),
                     JobProgress(phase="solve", iteration=30, max_iter=100, residual=0.1),
                     JobProgress(phase="step_search"), JobProgress(phase="save")):
        bar(progress)
    bar.finish({"solve": 37})

    lines = render(out.getvalue())
    assert asked == ["solve"]
    assert [line.split()[1].rstrip(":") for line in lines] == ["load", "solve", "step_search",
                                                               "save"], lines
    assert "37/100" in lines[1] and "residual=0.1" in lines[1], lines


def test_finish_ends_the_phase_a_job_stopped_in_at_its_count():
    out = io.StringIO()
    bar = PhaseProgress("job_x", file=out)
    bar(JobProgress(phase="solve", iteration=12, max_iter=100))

    bar.finish({"solve": 14})

    assert render(out.getvalue())[-1].split("|")[-1].lstrip().startswith("14/100")


def test_the_live_cli_bar_ends_at_the_jobs_final_iteration(finished_job: FinishedJob):
    counts = re.findall(r"solve:.*?(\d+)/200 \[", finished_job.cli.stderr)

    assert int(counts[-1]) == finished_job.job.result.solver["iterations"]
    assert max(_rates(finished_job.cli.stderr)) < 1e5, finished_job.cli.stderr


def test_attaching_to_a_running_job_shows_its_count_and_a_sane_speed(run, server: LiveServer,
                                                                    model: Model):
    """``jobs show`` and ``jobs wait`` on a job already deep in its solve."""
    long_solver = {"algorithm": "lsqr", "max_iter": 10_000, "tol": 1e-12,
                   "hessian_samples": 256, "edit_samples": 64}
    with GifClient(server.url, server.api_key, timeout=60.0) as gif:
        job = gif.submit_job(edit_body(model.id, solver=long_solver))
        try:
            deadline = time.monotonic() + 120
            while True:
                seen = gif.get_job(job.id)
                progress = seen.reported_progress
                if progress is not None and progress.phase == "solve" and (
                        progress.iteration or 0) >= 20:
                    break
                assert not seen.is_terminal and time.monotonic() < deadline, seen
                time.sleep(0.1)
            shown = run("show", job.id)
            attached = run("wait", job.id, "--timeout", "2", "--poll-interval", "0.2")
        finally:
            gif.cancel_job(job.id)

    assert re.search(r"^progress\s+solve \d+/10000 residual \S+$", shown.stdout, re.M), \
        shown.stdout
    assert attached.exit_code == 124  # still running when --timeout ran out
    counts = [int(n) for n in re.findall(r"solve:.*?(\d+)/10000", attached.stderr)]
    assert counts and counts[0] >= 20, attached.stderr  # the bar starts where the job is
    # The iterations done before attaching are not counted as this bar's speed.
    # (~100-200 it/s on the 2-core CI machine; counting them as speed gave ~1e6 it/s)
    assert _rates(attached.stderr) and max(_rates(attached.stderr)) < 20_000, attached.stderr
