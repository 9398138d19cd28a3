"""The operator commands of ``gif-service`` run as real subprocesses on a real SQLite database:
migrate, keys create/list/revoke, and the clear errors of misconfigured commands."""

from __future__ import annotations

import subprocess

import pytest

from service.auth import authenticate
from service.db.session import engine_from_settings, make_session_factory
from service.settings import Settings
from tests.live_server import REPO_ROOT, create_api_key, gif_service_command, run_cli, service_env


def _run(args, env):
    return subprocess.run(
        [*gif_service_command(), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _owner_of(data_dir, key):
    engine = engine_from_settings(Settings(data_dir=data_dir))
    try:
        with make_session_factory(engine)() as session:
            owner = authenticate(session, key)
            return owner.name if owner is not None else None
    finally:
        engine.dispose()


def test_keys_lifecycle_through_the_command_line(tmp_path):
    data_dir = tmp_path / "data"
    env = service_env(data_dir)

    refused = _run(["keys", "create", "--owner", "alice"], env)
    assert refused.returncode != 0 and "gif-service migrate" in refused.stderr

    assert "at revision" in run_cli(["migrate"], env)
    key = create_api_key(env, "alice")
    assert key.startswith("gif_") and _owner_of(data_dir, key) == "alice"

    listing = run_cli(["keys", "list"], env)
    assert "alice" in listing and key[:12] in listing and key not in listing

    assert "revoked 1 key" in run_cli(["keys", "revoke", key[:12]], env)
    assert _owner_of(data_dir, key) is None
    again = _run(["keys", "revoke", key[:12]], env)
    assert again.returncode != 0 and "no active key" in again.stderr
    revoked_row = [line for line in run_cli(["keys", "list"], env).splitlines() if "alice" in line]
    assert len(revoked_row) == 1 and revoked_row[0].split()[-1] != "-"  # revoked_at is set


def test_misconfiguration_is_a_clear_error(tmp_path):
    no_broker = _run(["worker"], service_env(tmp_path / "data"))
    assert no_broker.returncode != 0 and "GIF_BROKER_URL" in no_broker.stderr

    unreachable = service_env(
        tmp_path / "data", database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"
    )
    down = _run(["migrate"], unreachable)
    assert down.returncode != 0 and "cannot reach the database" in down.stderr
    assert "Traceback" not in down.stderr

    bad_setting = service_env(tmp_path / "data", extra={"GIF_RUNNER": "sometimes"})
    invalid = _run(["migrate"], bad_setting)
    assert invalid.returncode != 0 and "runner" in invalid.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["worker"],
        ["migrate"],
        ["keys"],
        ["keys", "create"],
        ["keys", "revoke"],
        ["keys", "list"],
    ],
)
def test_every_command_has_help(command, tmp_path):
    result = _run([*command, "--help"], service_env(tmp_path))
    assert result.returncode == 0 and result.stdout.startswith("Usage: gif-service")
