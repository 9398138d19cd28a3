"""The ``gif-service`` command: run the service (``serve``, ``worker``, ``migrate``), manage API
keys (``keys``), and — added from :mod:`service.cli_client` — talk to a running service
(``models``, ``datasets``, ``jobs``).

Configuration comes from ``GIF_*`` environment variables (:class:`service.settings.Settings`).
Heavy modules (uvicorn, the app, Celery, torch) are imported inside the commands so ``--help``
and the key commands start fast."""

from __future__ import annotations

import sys

import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _settings():
    """The settings from the environment, or a clear usage error naming the bad variable."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise click.UsageError(f"invalid GIF_* configuration:\n{exc}") from exc


def _configure_logging(level: str) -> None:
    """JSON log lines with job/request ids (service.observability), for every logger."""
    from service.observability import configure_logging

    configure_logging(level)


def _describe_database(url: str) -> str:
    """The database URL without its password (safe to print)."""
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


def _migrate(settings) -> None:
    """Apply the migrations, or fail with a clear message when the database is unreachable."""
    import sqlalchemy as sa

    from service.db.migrate import upgrade

    try:
        upgrade(settings)
    except sa.exc.OperationalError as exc:
        raise click.ClickException(
            f"cannot reach the database {_describe_database(settings.database_url)}: {exc.orig}"
        ) from exc


def _require_migrated(settings) -> None:
    """Fail with a clear message when the database schema is not at the newest revision."""
    import sqlalchemy as sa

    from service.db.migrate import current_revision, head_revision
    from service.db.session import engine_from_settings

    engine = engine_from_settings(settings)
    try:
        current = current_revision(engine)
    except sa.exc.OperationalError as exc:
        raise click.ClickException(
            f"cannot reach the database {_describe_database(settings.database_url)}: {exc.orig}"
        ) from exc
    finally:
        engine.dispose()
    if current != head_revision():
        raise click.ClickException(
            f"the database is at revision {current or 'none'}, not {head_revision()}: "
            "run `gif-service migrate` (or start `gif-service serve`, which migrates) first"
        )


@click.group(context_settings=CONTEXT_SETTINGS)
def cli() -> None:
    """gif-service: edit trained PyTorch classifiers without retraining (GIF), over HTTP.

    Configured by GIF_* environment variables: GIF_DATA_DIR (default ./data), GIF_DATABASE_URL
    (default SQLite in the data dir), GIF_BROKER_URL (unset: embedded runner; a Redis URL: jobs
    go to `gif-service worker` processes), and the others in service/settings.py."""


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(host: str, port: int) -> None:
    """Run the HTTP API (applies the database migrations first).

    Embedded default (no GIF_BROKER_URL): SQLite and artifacts under GIF_DATA_DIR, jobs run by
    the in-process local runner, and an API key for owner `local` is created on first start
    (its file path is printed). With GIF_DATABASE_URL (PostgreSQL) and GIF_BROKER_URL (Redis)
    this process is the API alone; start `gif-service worker` processes for the jobs."""
    import uvicorn

    from service.app import create_app
    from service.bootstrap import ensure_local_key
    from service.observability import uvicorn_log_config

    settings = _settings()
    _configure_logging(settings.log_level)
    click.echo(f"gif-service: database {_describe_database(settings.database_url)}")
    _migrate(settings)
    runner = settings.effective_runner
    click.echo(f"gif-service: artifacts in {settings.artifacts_dir}; job runner: {runner}")
    if runner == "local":
        _key, path, created = ensure_local_key(settings)
        if created:
            click.echo(f"gif-service: created an API key for owner 'local' in {path} (mode 0600)")
        else:
            click.echo(f"gif-service: API key for owner 'local' is in {path}")
        click.echo(f'gif-service: use it with: export GIF_API_KEY="$(cat {path})"')
    else:
        click.echo("gif-service: create API keys with: gif-service keys create --owner NAME")
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level),
        workers=1,
    )


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--hostname",
    default=None,
    help="Celery node name (default celery's: celery@<host>). Give each worker its own.",
)
@click.option(
    "--loglevel",
    default=None,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level (default: GIF_LOG_LEVEL).",
)
def worker(hostname: str | None, loglevel: str | None) -> None:
    """Run a Celery worker that executes jobs from GIF_BROKER_URL (Redis).

    One job at a time (concurrency 1, prefetch 1, one pool child reused for up to 50 jobs, its
    caches freed after each): start one
    worker per GPU, e.g. `CUDA_VISIBLE_DEVICES=1 gif-service worker --hostname gpu1@%h`.
    It needs the same GIF_DATABASE_URL and a shared GIF_ARTIFACTS_DIR as the API, and the
    same GIF_JOB_QUEUE (default gif-jobs) when several deployments share one Redis."""
    from service.runners.celery import MAX_TASKS_PER_CHILD
    from worker.celery_app import make_celery_app

    settings = _settings()
    if not settings.broker_url:
        raise click.UsageError(
            "`gif-service worker` needs GIF_BROKER_URL (e.g. redis://host:6379/0)"
        )
    _require_migrated(settings)
    _configure_logging(loglevel or settings.log_level)
    # Import the engine (torch, without touching CUDA) once in the parent: a pool child is
    # forked with it loaded instead of importing it again. Frozen, those objects are skipped
    # by every later garbage collection (and their pages stay shared with the children).
    import gc

    from worker.jobs import preload_engine

    preload_engine()
    gc.collect()
    gc.freeze()

    app = make_celery_app(settings)
    argv = [
        "worker",
        f"--loglevel={(loglevel or settings.log_level).upper()}",
        "--pool=prefork",
        "--concurrency=1",
        f"--max-tasks-per-child={MAX_TASKS_PER_CHILD}",
        f"--queues={settings.job_queue}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@cli.command(context_settings=CONTEXT_SETTINGS)
def migrate() -> None:
    """Create or upgrade the database schema to the newest revision."""
    from service.db.migrate import head_revision

    settings = _settings()
    _migrate(settings)
    click.echo(
        f"database {_describe_database(settings.database_url)} at revision {head_revision()}"
    )


@cli.group(context_settings=CONTEXT_SETTINGS)
def keys() -> None:
    """Create, list and revoke API keys (operator commands; they talk to the database)."""


@keys.command("create", context_settings=CONTEXT_SETTINGS)
@click.option("--owner", required=True, help="Owner name (created if new).")
def keys_create(owner: str) -> None:
    """Create an API key for OWNER. The key is shown once: it is the LAST line printed."""
    from service.auth import create_key
    from service.db.session import engine_from_settings, make_session_factory, session_scope

    settings = _settings()
    _require_migrated(settings)
    engine = engine_from_settings(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            key = create_key(session, owner)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--owner") from exc
    finally:
        engine.dispose()
    click.echo(f"created an API key for owner {owner!r}; it is not stored, copy it now:", err=True)
    click.echo(key)


@keys.command("revoke", context_settings=CONTEXT_SETTINGS)
@click.argument("key_prefix_or_id")
def keys_revoke(key_prefix_or_id: str) -> None:
    """Revoke the key with this id (key_…) or lookup prefix (its first 12 characters)."""
    from service.auth import revoke_key
    from service.db.session import engine_from_settings, make_session_factory, session_scope

    settings = _settings()
    _require_migrated(settings)
    engine = engine_from_settings(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            revoked = revoke_key(session, key_prefix_or_id)
    finally:
        engine.dispose()
    if revoked == 0:
        raise click.ClickException(f"no active key with id or prefix {key_prefix_or_id!r}")
    click.echo(f"revoked {revoked} key(s)")


@keys.command("list", context_settings=CONTEXT_SETTINGS)
@click.option("--owner", default=None, help="Only this owner's keys.")
def keys_list(owner: str | None) -> None:
    """List keys (id, owner, prefix, created, last used, revoked); never the keys themselves."""
    from service.auth import list_keys
    from service.db.session import engine_from_settings, make_session_factory

    settings = _settings()
    _require_migrated(settings)
    engine = engine_from_settings(settings)
    try:
        with make_session_factory(engine)() as session:
            rows = list_keys(session, owner)
    finally:
        engine.dispose()

    def when(value) -> str:
        return value.isoformat(timespec="seconds") if value else "-"

    header = ("id", "owner", "prefix", "created", "last_used", "revoked")
    table = [header] + [
        (k.id, name, k.prefix, when(k.created_at), when(k.last_used_at), when(k.revoked_at))
        for k, name in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@cli.group(context_settings=CONTEXT_SETTINGS)
def webhooks() -> None:
    """Owners' webhook signing secrets (operator commands; they talk to the database)."""


@webhooks.command("rotate-secret", context_settings=CONTEXT_SETTINGS)
@click.option("--owner", required=True, help="Owner name.")
def webhooks_rotate_secret(owner: str) -> None:
    """Give OWNER a new webhook signing secret (the LAST line printed); every attempt from
    now on, retries of earlier deliveries included, is signed with it. The owner reads it with
    GET /v1/webhooks/secret."""
    from service.db.session import engine_from_settings, make_session_factory
    from service.webhooks.signing import rotate_secret

    settings = _settings()
    _require_migrated(settings)
    engine = engine_from_settings(settings)
    try:
        with make_session_factory(engine)() as session:
            secret = rotate_secret(session, owner)
    except LookupError as exc:
        raise click.BadParameter(str(exc), param_hint="--owner") from exc
    finally:
        engine.dispose()
    click.echo(f"new webhook secret of owner {owner!r}:", err=True)
    click.echo(secret)


# --- Client command groups (helper F: service/cli_client.py) ---------------------------------
# Add `cli.add_command(<group>)` lines for the client groups here.
from service.cli_client import datasets as _datasets_group  # noqa: E402
from service.cli_client import erasures as _erasures_group  # noqa: E402
from service.cli_client import jobs as _jobs_group  # noqa: E402
from service.cli_client import models as _models_group  # noqa: E402

for _group in (_models_group, _datasets_group, _jobs_group, _erasures_group):
    cli.add_command(_group)


def main() -> None:
    """Console-script entry point (``gif-service``)."""
    cli(prog_name="gif-service")


if __name__ == "__main__":
    sys.exit(main())
