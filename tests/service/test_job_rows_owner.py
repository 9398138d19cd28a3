"""The job row has one owner (``service.jobs``): no other module writes ``jobs`` or
``job_events`` rows, and the API-side modules form no import circle with the worker's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A write of a job row or an event anywhere: an UPDATE/DELETE/INSERT on the table, a new row.
JOB_WRITE = re.compile(r"sa\.(update|delete|insert)\(Job(Event)?\)|\bJobEvent\(")
ROW_CLASSES = ROOT / "service" / "db" / "models.py"
CLIENT = ROOT / "service" / "client"  # the HTTP client's own types share the names


def test_only_service_jobs_writes_job_rows_and_events():
    writers = sorted(
        str(path.relative_to(ROOT))
        for package in ("service", "worker")
        for path in (ROOT / package).rglob("*.py")
        if JOB_WRITE.search(path.read_text())
        and "service/jobs/" not in path.as_posix()
        and path != ROW_CLASSES
        and CLIENT not in path.parents
    )
    assert writers == []


def test_no_api_module_imports_the_worker_package_but_the_spawn_target():
    """``worker/`` holds what runs in worker processes; the API side references only the local
    runner's spawn target (``worker.local``, light to import). ``service/cli.py`` starts the
    worker process itself (``gif-service worker``)."""
    offenders = []
    for path in (ROOT / "service").rglob("*.py"):
        if path.name == "cli.py":
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(from|import) (worker[\w.]*)", line)
            if match and match.group(2) != "worker.local":
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []
