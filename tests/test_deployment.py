"""The Docker deployment, checked without a Docker engine: the compose file parses and wires
the services as README.md describes, and the image runs exactly the ``gif-service`` commands
(with options that the real click group accepts) that the integration tests run."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with ``\\`` continuations joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    """The argv of an exec-form (JSON array) CMD/ENTRYPOINT; shell form is refused."""
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), arguments
    return argv


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _one(instructions, keyword: str) -> str:
    found = [args for kw, args in instructions if kw == keyword]
    assert found, f"Dockerfile has no {keyword}"
    return found[-1]  # the last one wins, as in Docker


def _cli():
    """The click group behind the ``gif-service`` console script (``service.cli:main``)."""
    import click

    import service.cli

    group = service.cli.main
    return group if isinstance(group, click.Group) else service.cli.cli


def assert_cli_accepts(argv: list[str]) -> None:
    """``gif-service <argv>``: the sub-command exists, has --help, and parses these options."""
    main = _cli()
    command_name, *options = argv
    assert command_name in main.commands, f"gif-service has no sub-command {command_name!r}"
    result = CliRunner().invoke(main, [command_name, "--help"])
    assert result.exit_code == 0, result.output
    command = main.commands[command_name]
    context = command.make_context(command_name, list(options))  # raises on unknown options
    for option in (o for o in options if o.startswith("--")):
        assert option in result.output, f"{option} is not documented in --help"
    context.close()


# --- Dockerfile ------------------------------------------------------------------------------


def test_image_base_pins_and_data(dockerfile):
    base = _one(dockerfile, "FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    runs = " ".join(args for kw, args in dockerfile if kw == "RUN")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    torch_pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert torch_pins, "pyproject.toml pins no torch"
    for pin in torch_pins:  # the image installs exactly the versions the project pins
        assert re.search(rf"(^|\s){re.escape(pin)}(\s|$)", runs), pin
    assert "dataset-fashion-mnist" in runs
    assert "'.[service]'" in runs or '".[service]"' in runs


def test_image_runs_as_non_root_with_a_data_volume(dockerfile):
    user = _one(dockerfile, "USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    env = " ".join(args for kw, args in dockerfile if kw == "ENV")
    data_dir = re.search(r"GIF_DATA_DIR=(\S+)", env).group(1)
    assert data_dir in exec_form(_one(dockerfile, "VOLUME"))


def test_image_healthcheck_probes_healthz(dockerfile):
    healthcheck = _one(dockerfile, "HEALTHCHECK")
    assert "/healthz" in healthcheck
    port = re.search(r"127\.0\.0\.1:(\d+)/healthz", healthcheck).group(1)
    cmd = exec_form(_one(dockerfile, "CMD"))
    assert cmd[cmd.index("--port") + 1] == port  # it probes the port the API listens on


def test_image_commands_are_the_gif_service_commands(dockerfile):
    entrypoint = exec_form(_one(dockerfile, "ENTRYPOINT"))
    assert entrypoint == ["gif-service"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["gif-service"] == "service.cli:main"
    cmd = exec_form(_one(dockerfile, "CMD"))
    assert cmd[:3] == ["serve", "--host", "0.0.0.0"]
    assert_cli_accepts(cmd)


def test_copied_sources_exist_and_context_excludes_the_venv(dockerfile):
    for keyword, arguments in dockerfile:
        if keyword == "COPY":
            *sources, _destination = shlex.split(arguments)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "data" in ignored


def test_integration_tests_run_the_same_commands():
    """tests/live_server.py starts `serve --host … --port …` and `worker …`: the commands the
    image and compose run, so the integration tests exercise what ships."""
    source = (ROOT / "tests" / "live_server.py").read_text()
    assert re.search(r'\["serve",\s*"--host"', source)
    assert re.search(r'\["worker"', source)


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_has_the_services(compose):
    assert set(compose["services"]) == {"api", "worker", "redis", "postgres", "migrate"}


def test_compose_commands_are_gif_service_commands(compose, dockerfile):
    services = compose["services"]
    assert services["api"]["command"] == exec_form(_one(dockerfile, "CMD"))
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["command"] == ["migrate"]
    images = {services[name]["image"] for name in ("api", "worker", "migrate")}
    assert len(images) == 1, "api, worker and migrate must run the one image"
    for name in ("api", "worker", "migrate"):
        assert services[name]["build"] == "."
        assert_cli_accepts(services[name]["command"])


def test_compose_dependencies_wait_for_health_and_migrations(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    for name in ("api", "worker", "redis", "postgres"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"]["test"][-2:] == ["service.observability",
                                                               "worker-ping"]


def test_compose_environment_and_shared_artifacts(compose):
    services = compose["services"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["GIF_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["GIF_DATABASE_URL"]
        assert env["GIF_BROKER_URL"] == "redis://redis:6379/0"
    artifacts_dir = services["api"]["environment"]["GIF_ARTIFACTS_DIR"]
    for name in ("api", "worker"):
        assert f"artifacts:{artifacts_dir}" in services[name]["volumes"]
    assert "artifacts" in compose["volumes"]
    postgres_volumes = services["postgres"]["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres_volumes)
    assert postgres_volumes[0].split(":")[0] in compose["volumes"]


def test_compose_reserves_one_gpu_per_worker_and_scales(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # --scale worker=N needs no fixed name or host port on the worker.
    assert "container_name" not in worker and "ports" not in worker


def test_compose_redis_never_evicts_and_persists(compose):
    command = compose["services"]["redis"]["command"]
    joined = " ".join(command)
    assert "--maxmemory-policy noeviction" in joined
    assert "--appendonly yes" in joined


def test_compose_log_level_is_a_valid_setting(compose):
    from service.settings import Settings

    level = compose["services"]["api"]["environment"]["GIF_LOG_LEVEL"]
    default = re.fullmatch(r"\$\{GIF_LOG_LEVEL:-(\w+)\}", level).group(1)
    assert Settings(log_level=default).log_level == default


@pytest.mark.services
def test_worker_healthcheck_answers_only_while_a_worker_runs(compose, redis_url, tmp_path):
    """The compose worker healthcheck, run as is against a real `gif-service worker` on a
    real Redis: it fails with no worker and succeeds once one is up. Its JSON log shows the
    worker logs through service.observability too."""
    import subprocess
    import sys

    from tests.live_server import REPO_ROOT, run_cli, service_env, start_worker

    # A Redis database of its own: other tests' workers must not answer this ping.
    broker = redis_url.rsplit("/", 1)[0] + "/11"
    env = service_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'gif.db'}",
                      broker_url=broker)
    run_cli(["migrate"], env)
    kind, *argv = compose["services"]["worker"]["healthcheck"]["test"]
    assert kind == "CMD" and argv[0] == "python"
    command = [sys.executable, *argv[1:]]

    def healthcheck() -> int:
        return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True,
                              timeout=60).returncode

    assert healthcheck() != 0
    worker = start_worker(env, log_dir=tmp_path)
    try:
        assert healthcheck() == 0
    finally:
        worker.stop()
    records = [json.loads(line) for line in worker.logs().splitlines()
               if line.startswith("{")]
    assert any(r["logger"] == "celery.apps.worker" and r["message"].endswith("ready.")
               for r in records)
