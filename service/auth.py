"""API keys: ``gif_<token>``, stored as the sha256 of the whole key plus its first 12
characters (the lookup prefix). The plaintext is shown once at creation and never stored or
logged; verification compares hashes in constant time.

:func:`owner_for_authorization` turns an ``Authorization`` header into its owner or a
:class:`NotAuthenticated` saying what is wrong with it (never echoing the key)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
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


def key_for(session: Session, key: str) -> ApiKey | None:
    """The valid, unrevoked key row of ``key``, or None."""
    if not key.startswith(KEY_PREFIX) or len(key) <= LOOKUP_PREFIX_LENGTH:
        return None
    candidates = session.scalars(
        sa.select(ApiKey).where(
            ApiKey.prefix == key[:LOOKUP_PREFIX_LENGTH], ApiKey.revoked_at.is_(None)
        )
    ).all()
    digest = hash_key(key)
    for candidate in candidates:
        if hmac.compare_digest(candidate.key_hash, digest):
            return candidate
    return None


def authenticate(session: Session, key: str) -> Owner | None:
    """The owner of a valid, unrevoked ``key``, or None."""
    candidate = key_for(session, key)
    if candidate is None:
        return None
    now = utcnow()
    last = candidate.last_used_at
    if last is None or now - last > LAST_USED_RESOLUTION:
        candidate.last_used_at = now
        session.commit()
    return session.get(Owner, candidate.owner_id)


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


def owner_for_authorization(session: Session, header: str | None) -> Owner:
    """The owner of the valid, unrevoked key in an ``Authorization`` header value;
    :class:`NotAuthenticated` otherwise."""
    owner = authenticate(session, bearer_key(header))
    if owner is None:
        raise NotAuthenticated("invalid or revoked API key")
    return owner


def list_keys(session: Session, owner_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Keys (never their plaintext) with their owner's name, oldest first."""
    query = sa.select(ApiKey, Owner.name).join(Owner, Owner.id == ApiKey.owner_id)
    if owner_name is not None:
        query = query.where(Owner.name == owner_name)
    return [(key, name) for key, name in session.execute(query.order_by(ApiKey.created_at))]
