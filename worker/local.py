"""The embedded local runner's job process (:class:`service.runners.local.LocalRunner` starts
it with ``spawn``): warm up once (:func:`worker.process.warm_up`: the engine's imports, the
database connection), say ``ready``, then run the jobs the runner sends, one at a time.
Module level and light to import: ``spawn`` pickles a reference to :func:`child_main`."""

from __future__ import annotations

import logging
import signal
from multiprocessing.connection import Connection

from service.settings import Settings


def child_main(settings: Settings, connection: Connection) -> None:
    """The child process: warm up once, then run the jobs it is sent until told to
    stop (``None``) or its parent goes away. Module level: ``spawn`` pickles a reference."""
    # Ctrl-C in a terminal reaches the whole process group; the API decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from service.observability import configure_logging
    from worker.jobs import execute_job
    from worker.process import close_resources, warm_up

    configure_logging(settings.log_level)
    warm_up(settings)  # before the first job arrives: imports, connection, gc.freeze
    connection.send(("ready", None))
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent closed its end or died
            close_resources()
            return
        if message is None:
            close_resources()
            return
        job_id, worker_id, orphaned = message
        connection.send(("started", None))  # the time limit counts from here
        try:
            status = execute_job(job_id, settings, worker_id=worker_id, orphaned=orphaned)
            connection.send(("done", status))
        except Exception as exc:  # the job row could not even be read/claimed
            logging.getLogger(__name__).exception("job %s could not be executed", job_id)
            connection.send(("error", f"{type(exc).__name__}: {exc}"[:300]))
