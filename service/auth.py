"""API keys: ``gif_<token>``, stored as the sha256 of the whole key plus its first 12
characters (the lookup prefix). The plaintext is shown once at creation and never stored or
logged; verification compares hashes in constant time.

:func:`lookup_authorization` turns an ``Authorization`` header into its :class:`Caller` (the
key's owner and the key) or a :class:`NotAuthenticated` saying what is wrong with it (never
echoing the key). Every request pays that lookup, so it is one prebuilt Core statement (key
and owner joined), no ORM objects, and a write of ``last_used_at`` at most once a minute."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.db.models import ApiKey, Owner, utcnow

KEY_PREFIX = "gif_"
LOOKUP_PREFIX_LENGTH = 12
LAST_USED_RESOLUTION = timedelta(minutes=1)  # coarse: no database write on every request
EXPECTED_HEADER = "'Authorization: Bearer <key>'"
_SCHEME_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,19}$")  # safe to echo: a scheme, no secret


class NotAuthenticated(Exception):
    """The request carries no valid key; the message says why and never contains the key."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the owner of its key (``id``, ``name``) and the key's id."""

    id: str
    name: str
    key_id: str


def hash_key(key: str) -> str:
    """sha256 hex of the whole key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_owner(session: Session, owner_name: str) -> Owner:
    """The owner called ``owner_name``, created if new."""
    owner = session.scalar(sa.select(Owner).where(Owner.name == owner_name))
    if owner is None:
        owner = Owner(name=owner_name)
        session.add(owner)
        session.flush()
    return owner


def create_key(session: Session, owner_name: str) -> str:
    """Create a key for ``owner_name`` (creating the owner if needed); returns the plaintext.

    The caller commits; the plaintext cannot be recovered afterwards."""
    if not owner_name.strip():
        raise ValueError("owner name must not be empty")
    owner = get_or_create_owner(session, owner_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(owner_id=owner.id, prefix=key[:LOOKUP_PREFIX_LENGTH], key_hash=hash_key(key))
    )
    session.flush()
    return key


def revoke_key(session: Session, prefix_or_id: str) -> int:
    """Revoke the key(s) with this id (``key_…``) or lookup prefix; returns how many were revoked.

    Already revoked keys are left as they are. The caller commits."""
    column = ApiKey.id if prefix_or_id.startswith("key_") else ApiKey.prefix
    keys = session.scalars(
        sa.select(ApiKey).where(column == prefix_or_id, ApiKey.revoked_at.is_(None))
    ).all()
    now = utcnow()
    for key in keys:
        key.revoked_at = now
    session.flush()
    return len(keys)


# Built once: the statement's compiled form and cache key are reused by every request.
_KEY_LOOKUP = (
    sa.select(ApiKey.id, ApiKey.key_hash, ApiKey.last_used_at, Owner.id.label("owner_id"),
              Owner.name)
    .join(Owner, Owner.id == ApiKey.owner_id)
    .where(ApiKey.prefix == sa.bindparam("prefix"), ApiKey.revoked_at.is_(None))
)
_TOUCH_KEY = (
    sa.update(ApiKey).where(ApiKey.id == sa.bindparam("key_id"))
    .values(last_used_at=sa.bindparam("now"))
)


def caller_for_key(db: Session | sa.Connection, key: str) -> Caller | None:
    """The :class:`Caller` of a valid, unrevoked ``key``, or None. ``db`` is a session or a
    connection; when ``last_used_at`` is older than :data:`LAST_USED_RESOLUTION` it is
    refreshed and committed."""
    found = lookup_key(db, key)
    if found is None:
        return None
    caller, stale = found
    if stale:
        touch_key(db, caller.key_id)
    return caller


def lookup_key(db: Session | sa.Connection, key: str) -> tuple[Caller, bool] | None:
    """The :class:`Caller` of a valid, unrevoked ``key`` and whether its ``last_used_at`` is
    due a refresh (:func:`touch_key`), or None. Reads only: one statement."""
    if not key.startswith(KEY_PREFIX) or len(key) <= LOOKUP_PREFIX_LENGTH:
        return None
    digest = hash_key(key)
    for row in db.execute(_KEY_LOOKUP, {"prefix": key[:LOOKUP_PREFIX_LENGTH]}).all():
        if not hmac.compare_digest(row.key_hash, digest):
            continue
        stale = row.last_used_at is None or utcnow() - row.last_used_at > LAST_USED_RESOLUTION
        return Caller(id=row.owner_id, name=row.name, key_id=row.id), stale
    return None


def touch_key(db: Session | sa.Connection, key_id: str) -> None:
    """Set the key's ``last_used_at`` to now, and commit."""
    db.execute(_TOUCH_KEY, {"key_id": key_id, "now": utcnow()})
    db.commit()


def authenticate(session: Session, key: str) -> Owner | None:
    """The owner row of a valid, unrevoked ``key``, or None (the CLI's and bootstrap's check;
    a request uses :func:`lookup_authorization`)."""
    caller = caller_for_key(session, key)
    return session.get(Owner, caller.id) if caller is not None else None


def bearer_key(header: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; :class:`NotAuthenticated` naming
    what is wrong otherwise (absent, another scheme, a bare key, no key)."""
    text = (header or "").strip()
    if not text:
        raise NotAuthenticated(f"missing API key: send {EXPECTED_HEADER}")
    scheme, _, credentials = text.partition(" ")
    if scheme.lower() == "bearer":
        if not credentials.strip():
            raise NotAuthenticated(f"the Authorization header has no key after 'Bearer': send "
                                   f"{EXPECTED_HEADER}")
        return credentials.strip()
    if text.startswith(KEY_PREFIX):
        raise NotAuthenticated(f"the Authorization header holds a key without the 'Bearer' "
                               f"scheme: it must be {EXPECTED_HEADER}")
    if credentials and _SCHEME_WORD.match(scheme):
        raise NotAuthenticated(f"the Authorization scheme {scheme!r} is not accepted: it must be "
                               f"{EXPECTED_HEADER}")
    raise NotAuthenticated(f"malformed Authorization header: it must be {EXPECTED_HEADER}")


def lookup_authorization(db: Session | sa.Connection, header: str | None) -> tuple[Caller, bool]:
    """The :class:`Caller` of the valid, unrevoked key in an ``Authorization`` header value,
    and whether its key's ``last_used_at`` is due a refresh (the caller of this runs
    :func:`touch_key` then, apart: the lookup itself only reads); :class:`NotAuthenticated`
    otherwise."""
    found = lookup_key(db, bearer_key(header))
    if found is None:
        raise NotAuthenticated("invalid or revoked API key")
    return found


def list_keys(session: Session, owner_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Keys (never their plaintext) with their owner's name, oldest first."""
    query = sa.select(ApiKey, Owner.name).join(Owner, Owner.id == ApiKey.owner_id)
    if owner_name is not None:
        query = query.where(Owner.name == owner_name)
    return [(key, name) for key, name in session.execute(query.order_by(ApiKey.created_at))]
