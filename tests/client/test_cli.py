"""The ``models`` / ``datasets`` / ``jobs`` commands against the real server (click's runner in
process, plus the installed ``gif-service`` script once for the wiring)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from service.cli_client import datasets, jobs, models
from service.client import Model
from tests.client.conftest import MODEL_SPEC, FinishedJob, cli_env, edit_body
from tests.live_server import LiveServer, gif_service_command


@pytest.fixture()
def run(server: LiveServer):
    """Invoke a command group with the server's URL and key in the environment."""

    def invoke(group, *args: str):
        env = {"GIF_URL": server.url, "GIF_API_KEY": server.api_key}
        return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)

    return invoke


def test_every_command_has_help():
    runner = CliRunner()
    for group in (models, datasets, jobs):
        for name, command in group.commands.items():
            result = runner.invoke(group, [name, "--help"])
            assert result.exit_code == 0, (name, result.output)
            assert "--api-key" in result.output and (command.help or "")[:20] in result.output


def test_models_upload_list_show_download(run, checkpoint: Path, tmp_path: Path):
    uploaded = run(models, "upload", str(checkpoint), "--spec", json.dumps(MODEL_SPEC),
                   "--name", "cli-model", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    model = json.loads(uploaded.output)
    assert model["name"] == "cli-model"

    listed = run(models, "list")
    shown = run(models, "show", model["id"], "--json")
    downloaded = run(models, "download", model["id"], str(tmp_path / "m.safetensors"))

    assert model["id"] in listed.output and "cli-model" in listed.output
    assert json.loads(shown.output) == model
    assert downloaded.exit_code == 0
    path = Path(downloaded.output.strip())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model["sha256"]


def test_download_into_a_directory_named_with_a_trailing_slash(run, model: Model,
                                                              tmp_path: Path):
    """``models download ID ./edited/`` puts ``<id>.safetensors`` in ``edited/`` (made if
    missing), never a file called ``edited``."""
    result = run(models, "download", model.id, str(tmp_path / "edited") + "/")
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip())
    assert path.parent == tmp_path / "edited" and path.name == f"{model.id}.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256


def test_download_with_a_wrong_sha_exits_nonzero(run, model: Model, tmp_path: Path):
    result = run(models, "download", model.id, str(tmp_path / "x.safetensors"),
                 "--sha256", "f" * 64)

    assert result.exit_code == 1
    assert "sha256 mismatch" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_datasets_upload_then_list_shows_it_beside_the_builtins(run, tmp_path: Path):
    path = tmp_path / "cli-set.npz"
    np.savez(path, x=np.zeros((4, 64), dtype=np.float32), y=np.array([0, 1, 0, 1]))

    uploaded = run(datasets, "upload", str(path), "--json")
    listed = run(datasets, "list")

    dataset = json.loads(uploaded.output)
    assert dataset["name"] == "cli-set" and dataset["num_samples"] == 4
    assert dataset["id"] in listed.output and "builtin:digits:train" in listed.output


def test_show_of_a_missing_job_prints_the_problem_and_exits_1(run):
    result = run(jobs, "show", "job_doesnotexist")

    assert result.exit_code == 1
    assert "404" in result.stderr and "job_doesnotexist" in result.stderr


def test_submit_wait_shows_an_advancing_progress_bar_and_a_metrics_table(
        finished_job: FinishedJob):
    """``gif-service jobs submit --idempotency-key K --wait``, run while the shared job ran."""
    result = finished_job.cli
    job_id = finished_job.job.id

    assert result.returncode == 0, result.stderr
    assert f"submitted {job_id}" in result.stderr  # the same key: the same job
    # tqdm redraws "job_… solve: …| n/200 [" on stderr: the count must climb, phases follow.
    counts = [int(n) for n in re.findall(r"solve:.*?(\d+)/200 \[", result.stderr)]
    phases = re.findall(rf"{job_id} (\w+)[: ]", result.stderr)
    assert len(set(counts)) >= 2 and counts == sorted(counts), result.stderr
    assert list(dict.fromkeys(phases))[-1] == "save" and "solve" in phases, result.stderr
    assert f"job {job_id} succeeded" in result.stdout
    assert "ACC BEFORE" in result.stdout and "test" in result.stdout
    assert re.search(r"score: \S+ -> \S+", result.stdout)


def test_jobs_show_list_and_events_of_a_finished_job(run, finished_job: FinishedJob):
    job_id = finished_job.job.id

    shown = run(jobs, "show", job_id)
    events = run(jobs, "events", job_id, "--json")
    listed = run(jobs, "list", "--status", "succeeded", "--json")

    assert "succeeded" in shown.output and finished_job.job.result.edited_model_id in shown.output
    assert "ACC BEFORE" in shown.output
    lines = [json.loads(line) for line in events.output.splitlines()]
    assert [e["seq"] for e in lines] == [e.seq for e in finished_job.streamed]
    assert job_id in [j["id"] for j in json.loads(listed.output)]


def test_wait_on_a_failed_job_exits_nonzero_with_the_error_code(server: LiveServer,
                                                                 exploding_model: Model,
                                                                 tmp_path: Path):
    """Through the installed ``gif-service`` script: the command wiring is part of the test."""
    body = tmp_path / "job.json"
    body.write_text(json.dumps(edit_body(exploding_model.id)))
    env = cli_env(server)
    submit = subprocess.run([*gif_service_command(), "jobs", "submit", str(body)], env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    job_id = submit.stdout.strip()

    waited = subprocess.run([*gif_service_command(), "jobs", "wait", job_id, "--no-progress"],
                            env=env, capture_output=True, text=True, timeout=240)

    assert waited.returncode == 1, waited
    assert f"job {job_id} failed" in waited.stdout
    assert re.search(rf"error: job {job_id} failed: non_finite: \S", waited.stderr), waited.stderr


def test_jobs_submit_and_list_by_metadata(run, client, model: Model, tmp_path: Path):
    """``--metadata KEY=VALUE`` tags a submission; ``jobs list --metadata`` (and the client's
    ``list_jobs(metadata=...)``) return only the jobs whose metadata holds every pair."""
    body = tmp_path / "job.json"
    body.write_text(json.dumps({**edit_body(model.id), "metadata": {"team": "ml"}}))
    ids = {}
    for ticket in ("GDPR-1", "GDPR-2"):
        submitted = run(jobs, "submit", str(body), "--metadata", f"ticket={ticket}",
                        "--metadata", "note=a=b", "--json")
        assert submitted.exit_code == 0, submitted.output
        job = json.loads(submitted.output)
        assert job["metadata"] == {"team": "ml", "ticket": ticket, "note": "a=b"}
        ids[ticket] = job["id"]
    try:
        listed = run(jobs, "list", "--metadata", "ticket=GDPR-1", "--metadata", "team=ml",
                     "--json")
        assert listed.exit_code == 0, listed.output
        assert [j["id"] for j in json.loads(listed.output)] == [ids["GDPR-1"]]
        assert [j.id for j in client.list_jobs(metadata={"ticket": "GDPR-2"})] == [ids["GDPR-2"]]
        assert client.list_jobs(metadata={"ticket": "GDPR-1", "team": "other"}) == []
        bad = run(jobs, "list", "--metadata", "no-equals-sign")
        assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.output
    finally:
        for job_id in ids.values():
            client.cancel_job(job_id)
