"""A job process's lasting state and warm-up (worker/process.py) on a real SQLite database:
one engine kept across jobs, a fresh one after a fork, a warm-up that runs once per process,
opens the connection, freezes what it loaded for the garbage collector, and never calls CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.live_server import REPO_ROOT
from tests.worker import digits
from worker import jobs, process

REMOVE_2 = {"kind": "remove_class", "class": 2}


def test_jobs_in_one_process_share_one_engine_and_keep_its_connection(seeded):
    db, source, dataset = seeded
    first = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_2))
    second = db.add_job(source.id, dataset.id, digits.quick_request(REMOVE_2, seed=1))

    assert jobs.execute_job(first, db.settings) == "succeeded"
    kept = process.resources(db.settings)
    assert kept.engine.pool.checkedin() >= 1  # the connection stayed open after the job
    assert jobs.execute_job(second, db.settings) == "succeeded"
    assert process.resources(db.settings) is kept
    # The succeeded event is written with the status, in the same transaction.
    last = db.events(second)[-1]
    assert last.message == "succeeded" and last.data["edit_seconds"] > 0
    assert last.data["edited_model_id"] == db.job(second).edited_model_id


def test_a_forked_child_builds_its_own_engine(worker_db):
    parent = process.resources(worker_db.settings)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never the parent's engine (nor its connections)
        try:
            child = process.resources(worker_db.settings)
            ok = child is not parent and child.engine is not parent.engine
            ok = ok and child.pid == os.getpid()
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert process.resources(worker_db.settings) is parent  # the parent's is untouched


def test_warm_up_runs_once_per_process_and_never_calls_cuda(tmp_path):
    """In a fresh process, as in a job process: the warm-up imports the engine, opens the
    database, freezes the loaded objects (so the collection after each job skips them), and
    neither queries the CUDA driver nor initialises CUDA; a second call does nothing."""
    from tests.worker.conftest import make_worker_db

    db, engine = make_worker_db(tmp_path / "data")
    engine.dispose()
    probe = (
        "import torch, gc, sys\n"
        "calls = []\n"
        "count = torch._C._cuda_getDeviceCount\n"
        "torch._C._cuda_getDeviceCount = lambda: (calls.append(1), count())[1]\n"
        "from pathlib import Path\n"
        "from service.settings import Settings\n"
        "from worker import process\n"
        "settings = Settings(data_dir=Path(sys.argv[1]), runner='none')\n"
        "assert not process.warmed_up()\n"
        "first = process.warm_up(settings)\n"
        "frozen = gc.get_freeze_count()\n"
        "again = process.warm_up(settings)\n"
        "pool = process.resources(settings).engine.pool\n"
        "print(first > 0, again, process.warmed_up(), frozen > 10000, pool.checkedin(),\n"
        "      'gif.solvers' in sys.modules, len(calls), torch.cuda.is_initialized())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "0.0", "True", "True", "1", "True", "0", "False"]
