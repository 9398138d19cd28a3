"""API keys: hashed at rest, revocable, scoped to their owner; the local bootstrap key."""

from __future__ import annotations

import stat

import sqlalchemy as sa

from service.auth import authenticate, create_key, hash_key, revoke_key
from service.bootstrap import LOCAL_OWNER, ensure_local_key
from service.db.models import ApiKey, Owner
from service.db.session import session_scope
from tests.service.conftest import assert_problem, bearer, upload_model


def test_key_is_stored_only_as_hash_and_prefix(session_factory):
    with session_scope(session_factory) as session:
        key = create_key(session, "carol")
    with session_factory() as session:
        row = session.scalars(sa.select(ApiKey)).one()
        assert key.startswith("gif_")
        assert row.prefix == key[:12]
        assert row.key_hash == hash_key(key)
        stored = " ".join(str(v) for v in (row.id, row.prefix, row.key_hash, row.owner_id))
        assert key not in stored
        assert authenticate(session, key).name == "carol"
        assert authenticate(session, key[:-1] + ("A" if key[-1] != "A" else "B")) is None


def test_create_key_reuses_the_owner(session_factory):
    with session_scope(session_factory) as session:
        first, second = create_key(session, "dave"), create_key(session, "dave")
    assert first != second
    with session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Owner)) == 1
        assert authenticate(session, first).id == authenticate(session, second).id


def test_missing_key_is_401_with_bearer_challenge(client):
    response = client.get("/v1/models")
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_and_malformed_keys_are_401(client):
    for header in ("Bearer gif_notakeyatall00000000000", "Bearer nonsense", "Basic abc"):
        assert_problem(client.get("/v1/models", headers={"Authorization": header}), 401)


def test_revoked_key_is_401(client, session_factory, make_key):
    # On this SQLite app the lookup runs on the loop's own connection (LoopReader): a revoked
    # key is refused at once there too.
    key = make_key("erin")
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    with session_scope(session_factory) as session:
        assert revoke_key(session, key[:12]) == 1
    assert_problem(client.get("/v1/models", headers=bearer(key)), 401)
    with session_scope(session_factory) as session:
        assert revoke_key(session, key[:12]) == 0  # already revoked: nothing more to do


def test_revoke_by_id_leaves_other_keys_working(client, session_factory, make_key):
    kept, revoked = make_key("frank"), make_key("frank")
    with session_scope(session_factory) as session:
        key_id = session.scalar(sa.select(ApiKey.id).where(ApiKey.prefix == revoked[:12]))
        assert revoke_key(session, key_id) == 1
    assert client.get("/v1/models", headers=bearer(kept)).status_code == 200
    assert_problem(client.get("/v1/models", headers=bearer(revoked)), 401)


def test_other_owners_resources_answer_404(client, alice, bob):
    created = upload_model(client, alice)
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]
    assert client.get(f"/v1/models/{model_id}", headers=alice).status_code == 200
    for method, path in [
        ("GET", f"/v1/models/{model_id}"),
        ("GET", f"/v1/models/{model_id}/content"),
        ("DELETE", f"/v1/models/{model_id}"),
    ]:
        assert_problem(client.request(method, path, headers=bob), 404)
    assert client.get("/v1/models", headers=bob).json()["data"] == []


def test_ensure_local_key_creates_once_with_private_file(settings, session_factory):
    key, path, created = ensure_local_key(settings)
    assert created
    assert path == settings.api_key_file
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _, created_again = ensure_local_key(settings)
    assert (again, created_again) == (key, False)
    with session_factory() as session:
        assert authenticate(session, key).name == LOCAL_OWNER


def test_ensure_local_key_replaces_a_revoked_key(settings, session_factory):
    key, path, _ = ensure_local_key(settings)
    with session_scope(session_factory) as session:
        revoke_key(session, key[:12])
    new_key, _, created = ensure_local_key(settings)
    assert created and new_key != key
    assert path.read_text().strip() == new_key
