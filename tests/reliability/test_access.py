"""Access control through a live embedded server: every route of the OpenAPI document needs a
key (except the health probes and /metrics); another owner sees 404 for every id; a key revoked
with ``gif-service keys revoke`` stops working at once; keys are compared with
``hmac.compare_digest``; no key ever appears in the server's log."""

from __future__ import annotations

import hashlib
import hmac
import re

import httpx
import pytest

from service.auth import authenticate, create_key, hash_key
from service.db.migrate import upgrade
from service.db.session import engine_from_settings, make_session_factory
from service.settings import Settings
from tests.live_server import create_api_key, run_cli
from tests.reliability.helpers import submit
from tests.worker import digits

# Probes and the Prometheus scrape need no key (api.md; /metrics holds only counters).
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


def _operations(client: httpx.Client) -> list[tuple[str, str]]:
    document = client.get("/openapi.json").raise_for_status().json()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _fill(path: str, ids: dict[str, str]) -> str:
    """The path with every ``{param}`` replaced: real ids where we have one, else a word."""
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "convergence"), path)


@pytest.fixture(scope="module")
def resource_ids(embedded, uploaded) -> dict[str, str]:
    """Ids of real resources of the embedded server's owner: model, dataset and a job."""
    client = embedded.client()
    job = submit(
        client,
        uploaded["model"]["id"],
        uploaded["dataset"]["id"],
        digits.quick_request({"kind": "remove_class", "class": 5}),
    )
    return {
        "model_id": uploaded["model"]["id"],
        "dataset_id": uploaded["dataset"]["id"],
        "job_id": job["id"],
    }


def test_every_route_without_a_key_is_401(embedded, resource_ids):
    anonymous = httpx.Client(base_url=embedded.url, timeout=30.0)
    operations = _operations(anonymous)
    assert len(operations) >= 15
    assert set(operations) >= PUBLIC
    wrong = []
    for method, path in operations:
        if (method, path) in PUBLIC:
            continue
        for headers in ({}, {"Authorization": "Bearer gif_not-a-real-key-at-all"},
                        {"Authorization": f"Basic {embedded.api_key}"}):
            response = anonymous.request(method, _fill(path, resource_ids), headers=headers)
            if response.status_code != 401 or "Bearer" not in response.headers.get(
                "www-authenticate", ""
            ):
                wrong.append(f"{method} {path} {headers}: {response.status_code}")
    assert not wrong, "\n".join(wrong)


def test_another_owner_gets_404_for_every_id(embedded, resource_ids):
    mallory = httpx.Client(
        base_url=embedded.url,
        headers={"Authorization": f"Bearer {create_api_key(embedded.env, 'mallory')}"},
        timeout=30.0,
    )
    with_ids = [(m, p) for m, p in _operations(mallory) if "{" in p]
    assert len(with_ids) >= 8
    wrong = []
    for method, path in with_ids:
        response = mallory.request(method, _fill(path, resource_ids))
        if response.status_code != 404:
            wrong.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    # Nothing of the owner's shows up in mallory's lists either.
    for listing in ("/v1/models", "/v1/datasets", "/v1/jobs"):
        ids = {item["id"] for item in mallory.get(listing).json()["data"]}
        assert not ids & set(resource_ids.values())
    # And the owner still sees them (the 404s were about ownership, not missing rows).
    owner = embedded.client()
    assert owner.get(f"/v1/jobs/{resource_ids['job_id']}").status_code == 200


def test_a_revoked_key_is_refused_at_once(embedded):
    key = create_api_key(embedded.env, "temporary")
    client = httpx.Client(
        base_url=embedded.url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0
    )
    assert client.get("/v1/models").status_code == 200
    output = run_cli(["keys", "revoke", key[:12]], embedded.env)
    assert "revoked 1 key" in output
    assert client.get("/v1/models").status_code == 401
    assert embedded.client().get("/v1/models").status_code == 200  # other keys unaffected


def test_keys_are_compared_with_hmac_compare_digest(tmp_path, monkeypatch):
    """Behaviour, not timing: authentication hands the stored and the presented hash to
    ``hmac.compare_digest`` (a spy around the real function), for good and bad keys alike."""
    settings = Settings(data_dir=tmp_path / "data", runner="none")
    upgrade(settings)
    engine = engine_from_settings(settings)
    factory = make_session_factory(engine)
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("service.auth.hmac.compare_digest", spy)
    try:
        with factory() as session:
            key = create_key(session, "alice")
            session.commit()
        with factory() as session:
            assert authenticate(session, key).name == "alice"
            forged = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
            assert authenticate(session, forged) is None
    finally:
        engine.dispose()
    stored = hash_key(key)
    assert calls == [
        (stored, hashlib.sha256(key.encode()).hexdigest()),
        (stored, hashlib.sha256(forged.encode()).hexdigest()),
    ]


def test_no_key_appears_in_the_server_log(embedded, resource_ids):
    """Run after the tests above (same module, same server): every key they used — the
    owner's, mallory's, a revoked one, malformed ones — is absent from the log."""
    client = embedded.client()
    client.get("/v1/models", params={"api_key": embedded.api_key})  # a key in a query string
    httpx.get(embedded.url + "/v1/models", headers={"Authorization": "Bearer gif_leakcheck123"})
    log = embedded.logs()
    assert "/v1/models" in log  # the log does record the requests
    keys = set(re.findall(r"gif_[A-Za-z0-9_-]{20,}", log))
    assert not keys, f"keys in the log: {sorted(keys)[:3]}"
    assert embedded.api_key not in log and "gif_leakcheck123" not in log
