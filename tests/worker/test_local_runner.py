"""The embedded runner (service/runners/local.py) with real ``spawn`` child processes on a real
SQLite database: the job process's warm-up, the start-up scan, submit, cancelled jobs that never
reach the child, a child killed mid-job, the time limit, and close().

One runner serves the whole scenario: every child process imports torch afresh, which costs
seconds on a loaded machine, so the steps share it instead of starting a runner per test."""

from __future__ import annotations

import os
import signal
import time

import pytest
import sqlalchemy as sa

from service.db.models import Model
from service.jobs import state
from service.runners.local import LocalRunner
from tests.worker import digits
from tests.worker.conftest import make_worker_db

REMOVE_5 = {"kind": "remove_class", "class": 5}
TIMEOUT_S = 180.0
TIME_LIMIT_S = 20.0  # far above a quick job here, reached by the long ones


def _wait_for(db, job_id, predicate, what, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = db.job(job_id)
        if predicate(job):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never became {what}: status={job.status} error={job.error}")


def _terminal(job):
    return job.status in ("succeeded", "failed", "cancelled")


def _solving(job):
    return job.status == "running" and (job.progress or {}).get("phase") == "solve"


def test_local_runner_scans_runs_and_survives_a_killed_child(tmp_path, trained_state, digits_data):
    db, engine = make_worker_db(
        tmp_path / "data", heartbeat_interval_s=0.5, job_time_limit_s=TIME_LIMIT_S
    )
    x, y = digits_data
    model, dataset = db.add_model(trained_state), db.add_dataset(x, y)
    quick = digits.quick_request(REMOVE_5, step={"mode": "fixed", "scale": 1.0})
    # Left by a previous server process: one queued, one running whose process is gone.
    queued = db.add_job(model.id, dataset.id, quick)
    orphan = db.add_job(
        model.id, dataset.id, quick, status="running", attempts=1, worker_id="local:gone:1:1"
    )
    runner = LocalRunner(db.settings)
    try:
        assert runner.ready()
        # 0. The job process warms up (imports, its connection) before the first job: the
        # runner hands the first job over only once it said so, and that process runs it.
        deadline = time.monotonic() + TIMEOUT_S
        while not runner.job_process_ready and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runner.job_process_ready
        warm_pid = runner.job_process_pid
        # 1. The start-up scan runs both: the orphan is re-run as its second attempt.
        for job_id, attempts in ((queued, 1), (orphan, 2)):
            job = _wait_for(db, job_id, _terminal, "terminal")
            assert (job.status, job.attempts) == ("succeeded", attempts), job.error
            assert job.worker_id.split(":")[-2] == str(warm_pid)
            # Its last event came with its terminal state (one transaction).
            assert db.events(job_id)[-1].message == "succeeded"

        # 1b. A burst of jobs cancelled before the runner got to them costs no process and no
        # place in the child's job budget: they never reach it (one read each, here).
        pid_before, handed_before = runner.job_process_pid, runner.handed_over
        cancelled = [db.add_job(model.id, dataset.id, quick) for _ in range(30)]
        for job_id in cancelled:
            assert state.cancel_job(db.factory, job_id)
            runner.submit(job_id)
        flagged = db.add_job(model.id, dataset.id, quick, cancel_requested=True)
        runner.submit(flagged)
        after = db.add_job(model.id, dataset.id, quick)
        runner.submit(after)
        assert _wait_for(db, after, _terminal, "terminal").status == "succeeded"
        assert runner.handed_over == handed_before + 1  # only `after` reached the child
        assert runner.job_process_pid == pid_before  # the same process ran it
        assert db.job(flagged).status == "cancelled"
        assert {db.job(j).started_at for j in cancelled} == {None}

        # 2. A child killed in the middle of a solve fails its job worker_lost.
        doomed = db.add_job(model.id, dataset.id, digits.long_request(REMOVE_5))
        runner.submit(doomed)
        _wait_for(db, doomed, _solving, "solving")
        running_job_id, pid = runner.running_job
        assert running_job_id == doomed
        os.kill(pid, signal.SIGKILL)
        job = _wait_for(db, doomed, _terminal, "terminal", timeout=30)
        assert job.status == "failed" and job.error["code"] == "worker_lost"
        assert "signal 9" in job.error["message"]

        # 3. A job past the time limit: its process is terminated, the job fails `timeout`.
        slow = db.add_job(model.id, dataset.id, digits.long_request(REMOVE_5))
        runner.submit(slow)
        job = _wait_for(db, slow, _terminal, "terminal")
        assert job.status == "failed" and job.error["code"] == "timeout", job.error
        assert (job.finished_at - job.started_at).total_seconds() >= TIME_LIMIT_S - 1

        # 4. The runner survives: the next job runs; close() stops its child at once, and
        # the job stays running for the next runner on this database to re-run.
        interrupted = db.add_job(model.id, dataset.id, digits.long_request(REMOVE_5))
        runner.submit(interrupted)
        _wait_for(db, interrupted, _solving, "solving")
        _, pid = runner.running_job
        started = time.monotonic()
        runner.close()
        assert time.monotonic() - started < 15
        assert not runner.ready()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert db.job(interrupted).status == "running"
    finally:
        runner.close()
        engine.dispose()
    with db.factory() as session:
        edited = session.scalars(
            sa.select(Model.source_job_id).where(Model.source_job_id.is_not(None))
        ).all()
    assert sorted(edited) == sorted([queued, orphan, after])
