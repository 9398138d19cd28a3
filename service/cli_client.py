"""The client half of the ``gif-service`` command line: ``models``, ``datasets``, ``jobs`` and
``erasures``.

Each command is a thin shell over :class:`service.client.GifClient`. Every command takes
``--url`` / ``--api-key`` (or ``GIF_URL`` / ``GIF_API_KEY``, or the embedded server's key file)
and ``--json`` (print the API's JSON instead of a table, for scripts). Errors print the
server's problem (status, title, detail, each field error) to stderr and exit 1.

Exit codes of ``jobs wait`` / ``jobs submit --wait``: 0 succeeded, 1 failed or cancelled (or any
error), 124 still running when ``--timeout`` ran out.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel

from gif.progress import PhaseProgress
from service.client import (
    GifClient,
    GifClientError,
    Job,
    WaitTimeoutError,
)

EXIT_JOB_UNSUCCESSFUL = 1
EXIT_WAIT_TIMEOUT = 124

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# Shared options and output


def client_command(func: F) -> F:
    """Add ``--url``, ``--api-key`` and ``--json``; hand the command a ready client and turn
    client errors into a clear message and exit status 1."""

    @click.option("--url", envvar="GIF_URL", default=None, metavar="URL",
                  help="Service base URL [env GIF_URL; default http://127.0.0.1:8000].")
    @click.option("--api-key", envvar="GIF_API_KEY", default=None, metavar="KEY",
                  help="API key [env GIF_API_KEY; default: $GIF_DATA_DIR/api_key].")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
    @functools.wraps(func)
    def wrapper(url: str | None, api_key: str | None, as_json: bool, **kwargs: Any) -> Any:
        try:
            with GifClient(url, api_key) as client:
                return func(client, as_json, **kwargs)
        except GifClientError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_to_jsonable(item) for item in value]
    return value


def metadata_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``--metadata KEY=VALUE`` options as a dict (the value may hold '='; the key may not)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}",
                                     param_hint="'--metadata'")
        out[key] = value
    return out


def echo_json(value: Any) -> None:
    click.echo(json.dumps(_to_jsonable(value), indent=2, sort_keys=False))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (no dependency, readable in any terminal or log)."""
    text_rows = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in text_rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "isoformat"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def echo_fields(resource: BaseModel, fields: Sequence[str]) -> None:
    """``name: value`` lines of a resource's main fields."""
    data = resource.model_dump()
    width = max(len(name) for name in fields)
    for name in fields:
        value = data.get(name)
        text = json.dumps(value) if isinstance(value, dict | list) else _cell(value)
        click.echo(f"{name.ljust(width)}  {text}")


def _load_json_arg(value: str, what: str) -> dict[str, Any]:
    """A JSON object given inline or as a path to a file holding it."""
    path = Path(value)
    source = f"{what} file {value}" if path.is_file() else what
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"{source} must hold a JSON object")
    return parsed


MODEL_FIELDS = ("id", "name", "arch", "arch_kwargs", "input", "task", "num_parameters",
                "size_bytes", "sha256", "created_at", "source_job_id")
DATASET_FIELDS = ("id", "name", "num_samples", "sample_shape", "dtype", "num_classes",
                  "class_counts", "sha256", "created_at")


# --------------------------------------------------------------------------------------------
# models


@click.group()
def models() -> None:
    """Upload, list, inspect, download and delete model checkpoints."""


@models.command("upload")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--spec", "spec_arg", required=True, metavar="JSON|FILE",
              help='Model spec, e.g. \'{"arch": "mlp", "arch_kwargs": {...}, "input": {...}}\'.')
@click.option("--name", default=None, help="Name of the model (overrides the spec's).")
@client_command
def models_upload(client: GifClient, as_json: bool, checkpoint: Path, spec_arg: str,
                  name: str | None) -> None:
    """Upload CHECKPOINT (safetensors or a PyTorch state dict) with its spec."""
    spec = _load_json_arg(spec_arg, "--spec")
    if name is not None:
        spec["name"] = name
    model = client.upload_model(checkpoint, spec)
    echo_json(model) if as_json else echo_fields(model, MODEL_FIELDS)


@models.command("list")
@client_command
def models_list(client: GifClient, as_json: bool) -> None:
    """List your models, newest first."""
    items = client.list_models()
    if as_json:
        return echo_json(items)
    click.echo(format_table(
        ["ID", "NAME", "ARCH", "PARAMS", "CREATED", "SOURCE JOB"],
        [[m.id, m.name, m.arch, m.num_parameters, m.created_at, m.source_job_id] for m in items],
    ))


@models.command("show")
@click.argument("model_id")
@client_command
def models_show(client: GifClient, as_json: bool, model_id: str) -> None:
    """Show one model."""
    model = client.get_model(model_id)
    echo_json(model) if as_json else echo_fields(model, MODEL_FIELDS)


@models.command("download")
@click.argument("model_id")
@click.argument("dest", default=".")
@click.option("--sha256", "expected_sha256", default=None,
              help="Expected sha256 (default: the model's own).")
@client_command
def models_download(client: GifClient, as_json: bool, model_id: str, dest: str,
                    expected_sha256: str | None) -> None:
    """Download a model's safetensors checkpoint to DEST (a file, or a directory; default .),
    verifying its sha256. On a mismatch nothing is written and the exit status is 1. A DEST
    ending in "/" is a directory, made if missing (a Path would drop the slash and write a
    file of that name)."""
    target = Path(dest)
    if dest.endswith(("/", os.sep)):
        target.mkdir(parents=True, exist_ok=True)
    path = client.download_model(model_id, target, expected_sha256=expected_sha256)
    if as_json:
        return echo_json({"id": model_id, "path": str(path)})
    click.echo(str(path))


@models.command("delete")
@click.argument("model_id")
@client_command
def models_delete(client: GifClient, as_json: bool, model_id: str) -> None:
    """Delete a model."""
    client.delete_model(model_id)
    echo_json({"id": model_id, "deleted": True}) if as_json else click.echo(f"deleted {model_id}")


@models.command("architectures")
@client_command
def models_architectures(client: GifClient, as_json: bool) -> None:
    """List the architectures the service can build (and their arguments)."""
    archs = client.list_architectures()
    if as_json:
        return echo_json(archs)
    click.echo(format_table(
        ["NAME", "ARGUMENTS", "DESCRIPTION"],
        [[arch.name, ", ".join(_argument(a) for a in arch.arguments), arch.description]
         for arch in archs],
    ))


def _argument(argument: Any) -> str:
    return argument.name if argument.required else f"{argument.name}={argument.default!r}"


# --------------------------------------------------------------------------------------------
# datasets


@click.group()
def datasets() -> None:
    """Upload and list datasets (uploads and the server's built-ins)."""


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Dataset name (default: the file name's stem).")
@client_command
def datasets_upload(client: GifClient, as_json: bool, path: Path, name: str | None) -> None:
    """Upload a dataset file (.npz or safetensors with arrays x and y)."""
    dataset = client.upload_dataset(path, name)
    echo_json(dataset) if as_json else echo_fields(dataset, DATASET_FIELDS)


@datasets.command("list")
@client_command
def datasets_list(client: GifClient, as_json: bool) -> None:
    """List datasets: your uploads and the built-ins."""
    items = client.list_datasets()
    if as_json:
        return echo_json(items)
    click.echo(format_table(
        ["ID", "NAME", "SAMPLES", "SHAPE", "CLASSES", "CREATED"],
        [[d.id, d.name, d.num_samples, "x".join(map(str, d.sample_shape or [])) or None,
          d.num_classes, d.created_at] for d in items],
    ))


@datasets.command("show")
@click.argument("dataset_id")
@client_command
def datasets_show(client: GifClient, as_json: bool, dataset_id: str) -> None:
    """Show one dataset."""
    dataset = client.get_dataset(dataset_id)
    echo_json(dataset) if as_json else echo_fields(dataset, DATASET_FIELDS)


# --------------------------------------------------------------------------------------------
# jobs


@click.group()
def jobs() -> None:
    """Submit edit jobs, follow them, and read their results."""


def metrics_table(job: Job) -> str:
    """Before/after accuracy and loss of every evaluated set, then the score."""
    if job.result is None:
        return ""
    metrics = job.result.metrics
    rows = []
    for name in metrics.set_names():
        b, a = metrics.before.get(name) or {}, metrics.after.get(name) or {}
        rows.append([name, b.get("accuracy"), a.get("accuracy"), b.get("loss"), a.get("loss")])
    table = format_table(["SET", "ACC BEFORE", "ACC AFTER", "LOSS BEFORE", "LOSS AFTER"], rows)
    before, after = metrics.score("before"), metrics.score("after")
    if before is None and after is None:
        return table
    return f"{table}\nscore: {_cell(before)} -> {_cell(after)}"


# How many of the newest succeeded jobs on the same model are searched for a retrain, as the
# report does (service/api/reports.py).
REFERENCE_CANDIDATES = 50


def retrain_reference(client: GifClient, job: Job) -> Job | None:
    """The newest succeeded ``retrain`` job on the same model, training data and edit as
    ``job`` (the report's reference), or None. The list filters narrow the search where the
    server applies them; every condition is checked here again, on the full job (a list may
    hold summaries without the request's edit)."""
    request = job.request or {}
    if request.get("method") == "retrain" or not request.get("edit"):
        return None
    candidates = client.list_jobs("succeeded", model_id=job.model_id, method="retrain")
    for other in candidates[:REFERENCE_CANDIDATES]:
        if (other.id == job.id or other.model_id != job.model_id
                or other.train_dataset_id != job.train_dataset_id
                or other.request_field("method") not in (None, "retrain")):
            continue
        full = other if "edit" in other.request else client.get_job(other.id)
        if (full.request.get("method") == "retrain" and full.request.get("edit") == request["edit"]
                and full.result is not None and full.result.metrics.after):
            return full
    return None


def glance_table(job: Job, reference: Job | None) -> str:
    """The numbers that judge the job's edit kind (the report's "at a glance" rows, one owner:
    ``service.report.glance_rows``): for a class removal the removed and remaining classes'
    accuracy, for a sample removal the forgotten, retained and test sets, for a relabel the
    corrected labels and the original ones (a backdoor's attack success) — before → after, with
    a RETRAIN column when a retrain job on the same request exists."""
    from service.report import glance_rows

    if job.result is None:
        return ""
    kind = (job.request.get("edit") or {}).get("kind")
    metrics = job.result.metrics
    after_retrain = reference.result.metrics.after if reference and reference.result else None
    rows = glance_rows(kind, metrics.before, metrics.after, after_retrain)
    if not rows:
        return ""
    headers = ["AT A GLANCE", "BEFORE", "AFTER", "CHANGE"]
    table = [[r["label"], r["before"]["text"], r["after"]["text"], r["change"]] for r in rows]
    if reference is not None:
        headers.append("RETRAIN")
        for line, row in zip(table, rows, strict=True):
            line.append(row["reference"]["text"])
    text = format_table(headers, table)
    if reference is not None:
        text += f"\nRETRAIN: job {reference.id} (method retrain, same model, data and edit)"
    return text


def warning_lines(job: Job) -> list[str]:
    """``warning [code]: message`` for each warning of the job's result."""
    return [f"warning [{w.code}]: {w.message}" for w in job.warnings]


def echo_job_json(job: Job) -> None:
    """The job's JSON on stdout (parseable as is), its warnings on stderr."""
    echo_json(job)
    for line in warning_lines(job):
        click.echo(line, err=True)


def echo_result(client: GifClient, job: Job) -> None:
    """A succeeded job's warnings, the numbers that judge its edit, then every set's metrics."""
    for line in warning_lines(job):
        click.echo(line)
    try:
        reference = retrain_reference(client, job)
    except GifClientError as exc:  # the reference is extra: the result is shown without it
        click.echo(f"warning: no retrain reference looked up: {exc}", err=True)
        reference = None
    glance = glance_table(job, reference)
    if glance:
        click.echo(glance)
    click.echo(metrics_table(job))


def report_job(client: GifClient, job: Job, as_json: bool) -> None:
    """Print a terminal job (summary or JSON) and exit non-zero unless it succeeded."""
    if as_json:
        echo_job_json(job)
    elif job.status == "succeeded" and job.result is not None:
        click.echo(f"job {job.id} succeeded: edited model {job.result.edited_model_id}"
                   f" (scale {_cell(job.result.scale)})")
        echo_result(client, job)
    else:
        click.echo(f"job {job.id} {job.status}")
    if job.status != "succeeded":
        error = job.error
        reason = f"{error.code}: {error.message}" if error else "no error reported"
        click.echo(f"error: job {job.id} {job.status}: {reason}", err=True)
        sys.exit(EXIT_JOB_UNSUCCESSFUL)


def solve_count(client: GifClient, job_id: str) -> Callable[[str | None], int | None]:
    """The true final iteration of a job's solve, read when the bar sees the solve end: the
    engine's "solver stopped" event carries it (``data.iterations``), and is written before
    the next phase starts. None when unknown (the bar then ends at the last count seen)."""

    def count(phase: str | None) -> int | None:
        if phase != "solve":
            return None
        try:
            events = client.list_events(job_id)
        except GifClientError:
            return None  # the display must never break the wait
        for event in reversed(events):
            iterations = (event.data or {}).get("iterations")
            if event.phase == "solve" and isinstance(iterations, int):
                return iterations
        return None

    return count


def final_iterations(job: Job) -> dict[str, int]:
    """The true final count of each iterating phase, from the result (the last poll may have
    missed the solve's last iterations)."""
    iterations = (job.result.solver if job.result is not None else {}).get("iterations")
    return {"solve": iterations} if isinstance(iterations, int) else {}


def wait_and_report(client: GifClient, job_id: str, as_json: bool, poll_interval: float,
                    timeout: float | None, show_progress: bool) -> None:
    bar = PhaseProgress(job_id, final_count=solve_count(client, job_id)) if show_progress else None
    try:
        job = client.wait_for_job(job_id, on_progress=bar, poll_interval=poll_interval,
                                  timeout=timeout)
    except WaitTimeoutError as exc:
        if bar is not None:
            bar.close()
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_WAIT_TIMEOUT)
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    if bar is not None:
        bar.finish(final_iterations(job))
    report_job(client, job, as_json)


def _wait_options(func: F) -> F:
    func = click.option("--poll-interval", type=float, default=0.5, show_default=True,
                        help="Seconds between status checks.")(func)
    func = click.option("--timeout", type=float, default=None,
                        help="Give up (exit 124) after this many seconds.")(func)
    func = click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show a live progress bar on stderr.")(func)
    return func


@jobs.command("submit")
@click.argument("body_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model-id", default=None, help="Override the body's model_id.")
@click.option("--train-dataset-id", default=None, help="Override the body's train_dataset_id.")
@click.option("--idempotency-key", default=None,
              help="Reuse a key to make a resubmission return the same job (default: random).")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="Add KEY=VALUE to the job's metadata (repeatable; over the body's own).")
@click.option("--wait", "wait", is_flag=True, help="Wait for the job to end and report it.")
@_wait_options
@client_command
def jobs_submit(client: GifClient, as_json: bool, body_file: Path, model_id: str | None,
                train_dataset_id: str | None, idempotency_key: str | None,
                metadata: tuple[str, ...], wait: bool, poll_interval: float,
                timeout: float | None, progress: bool) -> None:
    """Submit the edit job described by BODY_FILE (the JSON body of POST /v1/jobs)."""
    body = _load_json_arg(str(body_file), "BODY_FILE")
    if model_id is not None:
        body["model_id"] = model_id
    if train_dataset_id is not None:
        body["train_dataset_id"] = train_dataset_id
    if metadata:
        body["metadata"] = {**(body.get("metadata") or {}), **metadata_pairs(metadata)}
    job = client.submit_job(body, idempotency_key=idempotency_key)
    if not wait:
        return echo_json(job) if as_json else click.echo(job.id)
    click.echo(f"submitted {job.id}", err=True)
    wait_and_report(client, job.id, as_json, poll_interval, timeout, progress)


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed",
                                             "cancelled"]), default=None)
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="Only jobs whose metadata holds KEY=VALUE (repeatable: all must hold).")
@client_command
def jobs_list(client: GifClient, as_json: bool, status: str | None,
              metadata: tuple[str, ...]) -> None:
    """List your jobs, newest first."""
    items = client.list_jobs(status, metadata=metadata_pairs(metadata) or None)
    if as_json:
        return echo_json(items)
    click.echo(format_table(
        ["ID", "STATUS", "EDIT", "MODEL", "CREATED", "PHASE"],
        [[j.id, j.status, (j.request_field("edit") or {}).get("kind"), j.model_id,
          j.created_at, j.progress.phase if j.progress else None] for j in items],
    ))


@jobs.command("show")
@click.argument("job_id")
@client_command
def jobs_show(client: GifClient, as_json: bool, job_id: str) -> None:
    """Show one job: status, progress, error or result."""
    job = client.get_job(job_id)
    if as_json:
        return echo_job_json(job)
    echo_fields(job, ("id", "status", "created_at", "started_at", "finished_at"))
    if job.reported_progress is not None and not job.is_terminal:  # a finished one's is stale
        click.echo(f"progress     {job.reported_progress.describe()}")
    if job.error is not None:
        click.echo(f"error        {job.error.code}: {job.error.message}")
    if job.result is not None:
        click.echo(f"edited model {job.result.edited_model_id}")
        echo_result(client, job)


@jobs.command("wait")
@click.argument("job_id")
@_wait_options
@client_command
def jobs_wait(client: GifClient, as_json: bool, job_id: str, poll_interval: float,
              timeout: float | None, progress: bool) -> None:
    """Wait for a job to end with a live progress bar, then print its before/after metrics.
    Exits 1 if the job failed or was cancelled, 124 on --timeout."""
    wait_and_report(client, job_id, as_json, poll_interval, timeout, progress)


@jobs.command("cancel")
@click.argument("job_id")
@client_command
def jobs_cancel(client: GifClient, as_json: bool, job_id: str) -> None:
    """Cancel a job (a running one stops at its next iteration; a queued one never starts)."""
    job = client.cancel_job(job_id)
    echo_json(job) if as_json else click.echo(f"{job.id} {job.status}")


@jobs.command("delete")
@click.argument("job_id")
@client_command
def jobs_delete(client: GifClient, as_json: bool, job_id: str) -> None:
    """Erase a terminal job: its request (the forgotten indices), result, events and figures.
    Its edited model stays, as a model."""
    client.delete_job(job_id)
    if not as_json:
        click.echo(f"deleted {job_id}")


@jobs.command("events")
@click.argument("job_id")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep streaming until the job ends, or print what is there now.")
@client_command
def jobs_events(client: GifClient, as_json: bool, job_id: str, follow: bool) -> None:
    """Print a job's events (one JSON object per line with --json)."""
    events = client.stream_events(job_id) if follow else client.list_events(job_id)
    for event in events:
        if as_json:
            click.echo(json.dumps(event.model_dump(mode="json")))
        else:
            at = _cell(event.at)
            click.echo(f"{at}  {event.level:<7} {event.phase or '-':<11} {event.message}")


# --------------------------------------------------------------------------------------------
# erasures


@click.group()
def erasures() -> None:
    """The audit records of what was erased (deletions and retention)."""


@erasures.command("list")
@client_command
def erasures_list(client: GifClient, as_json: bool) -> None:
    """List erasure records, newest first: what was erased, when, by which key, which job."""
    items = client.list_erasures()
    if as_json:
        return echo_json(items)
    click.echo(format_table(
        ["ERASED", "KIND", "ID", "NAME", "SHA256", "SIZE", "REASON", "KEY", "JOB"],
        [[e.erased_at, e.kind, e.object_id, e.name, (e.sha256 or "")[:12] or None,
          e.size_bytes, e.reason, e.api_key_id, e.job_id] for e in items],
    ))


CLIENT_GROUPS = (models, datasets, jobs, erasures)
