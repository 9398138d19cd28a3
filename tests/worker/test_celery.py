"""The Celery runner with a real Redis and a real ``gif-service worker`` process: the soft time
limit fails a job ``timeout`` (and the worker carries on), and a pool child killed mid-job is
redelivered and re-run as attempt 2 (never left ``running``), and messages for cancelled jobs
start no process (the pool child is reused). The job rows live in a SQLite
file the worker and the test share; jobs are sent with :class:`CeleryDispatcher` as the API does.
"""

from __future__ import annotations

import os
import secrets
import signal
import time

import pytest

from service.jobs import state
from service.runners.celery import CeleryDispatcher, time_limits
from service.settings import Settings
from tests.live_server import REPO_ROOT, live_worker, service_env
from tests.worker import digits
from tests.worker.conftest import make_worker_db

pytestmark = pytest.mark.services
TIME_LIMIT_S = 8.0
HEARTBEAT_S = 0.5


def _wait(db, job_id, predicate, what, worker, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = db.job(job_id)
        if predicate(job):
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} never {what} (status {job.status})\n{worker.log_tail()}")


def _terminal(job):
    return job.status in ("succeeded", "failed", "cancelled")


def _running(job):
    return job.status == "running" and job.worker_id is not None


def test_time_limits_stay_below_the_visibility_timeout():
    for limit, visibility in ((6 * 3600.0, None), (10.0, 11.0), (100.0, 100.5)):
        settings = Settings(job_time_limit_s=limit, broker_visibility_timeout_s=visibility)
        soft, hard = time_limits(settings)
        assert soft == limit < hard < settings.broker_visibility_timeout_s


def test_dispatcher_ready_reflects_the_broker(redis_url):
    assert CeleryDispatcher(Settings(broker_url=redis_url)).ready()
    closed_port = "redis://127.0.0.1:1/0"
    assert not CeleryDispatcher(Settings(broker_url=closed_port)).ready()


def test_celery_worker_times_out_and_recovers_a_killed_child(
    tmp_path, redis_url, trained_state, digits_data
):
    data_dir = tmp_path / "data"
    queue = f"gif-test-{secrets.token_hex(6)}"  # its own queue on the shared Redis
    db, engine = make_worker_db(
        data_dir,
        heartbeat_interval_s=HEARTBEAT_S,
        job_time_limit_s=TIME_LIMIT_S,
        broker_url=redis_url,
        job_queue=queue,
    )
    x, y = digits_data
    model, dataset = db.add_model(trained_state), db.add_dataset(x, y)
    env = service_env(
        data_dir,
        broker_url=redis_url,
        extra={
            "GIF_JOB_TIME_LIMIT_S": str(TIME_LIMIT_S),
            "GIF_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
            "GIF_JOB_QUEUE": queue,
        },
    )
    dispatcher = CeleryDispatcher(db.settings)
    try:
        with live_worker(env, log_dir=tmp_path) as worker:
            # 1. A job longer than the limit fails `timeout` at the soft limit.
            slow = db.add_job(
                model.id, dataset.id, digits.long_request({"kind": "remove_class", "class": 4})
            )
            dispatcher.submit(slow)
            job = _wait(db, slow, _terminal, "ended", worker)
            assert job.status == "failed" and job.error["code"] == "timeout", job.error
            assert (job.finished_at - job.started_at).total_seconds() < TIME_LIMIT_S + 30

            # 2. A pool child killed mid-job: the message is redelivered, the stale job is
            #    re-run as attempt 2 (which this long job ends at the time limit again).
            doomed = db.add_job(
                model.id, dataset.id, digits.long_request({"kind": "remove_class", "class": 6})
            )
            dispatcher.submit(doomed)
            job = _wait(db, doomed, _running, "started", worker)
            child_pid = int(job.worker_id.rsplit(":", 1)[1])
            assert child_pid != worker.process.pid
            os.kill(child_pid, signal.SIGKILL)
            job = _wait(db, doomed, _terminal, "ended after the kill", worker)
            assert job.attempts == 2, (job.status, job.error)
            assert job.status == "failed" and job.error["code"] == "timeout"
            assert int(job.worker_id.rsplit(":", 1)[1]) != child_pid

            # 3. The worker still runs jobs to success.
            quick = db.add_job(
                model.id,
                dataset.id,
                digits.quick_request(
                    {"kind": "remove_class", "class": 4}, step={"mode": "fixed", "scale": 1.0}
                ),
            )
            dispatcher.submit(quick)
            job = _wait(db, quick, _terminal, "ended", worker)
            assert job.status == "succeeded", job.error
            assert worker.running
            pool_child = job.worker_id.rsplit(":", 1)[1]
            # The pool child warmed up once, when it started (worker_process_init).
            assert worker.logs().count(f"job process {pool_child} warmed up") == 1
            assert db.events(quick)[-1].message == "succeeded"  # committed with the status

            # 4. Messages for jobs cancelled before a worker took them start no process and
            #    no edit; the same pool child then runs the next job (it is reused).
            cancelled = [db.add_job(model.id, dataset.id, digits.quick_request(
                {"kind": "remove_class", "class": 4})) for _ in range(20)]
            for job_id in cancelled:
                assert state.cancel_job(db.factory, job_id)
                dispatcher.submit(job_id)
            flagged = db.add_job(model.id, dataset.id, digits.quick_request(
                {"kind": "remove_class", "class": 4}), cancel_requested=True)
            dispatcher.submit(flagged)
            following = db.add_job(model.id, dataset.id, digits.quick_request(
                {"kind": "remove_class", "class": 4}, step={"mode": "fixed", "scale": 1.0}))
            dispatcher.submit(following)
            job = _wait(db, following, _terminal, "ended", worker)
            assert job.status == "succeeded", job.error
            assert job.worker_id.rsplit(":", 1)[1] == pool_child
            assert db.job(flagged).status == "cancelled"
            for job_id in [*cancelled, flagged]:
                assert (db.job(job_id).started_at, db.job(job_id).attempts) == (None, 0)
                assert [e.message for e in db.events(job_id)] == ["cancelled before it started"]
    finally:
        dispatcher.close()
        engine.dispose()


def test_preloading_the_engine_never_touches_cuda():
    """The worker's parent preloads the engine before forking job children: it must not even
    query the CUDA driver (a parent that did could leave forked children unable to use it)."""
    import subprocess
    import sys

    probe = (
        "import torch\n"
        "calls = []\n"
        "count = torch._C._cuda_getDeviceCount\n"
        "torch._C._cuda_getDeviceCount = lambda: (calls.append(1), count())[1]\n"
        "from worker.jobs import preload_engine\n"
        "preload_engine()\n"
        "import gif.edit, gif.data, gif.checkpoint\n"
        "print(len(calls), torch.cuda.is_initialized())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "False"]
