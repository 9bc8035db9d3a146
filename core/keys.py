"""API keys: `bp_<prefix>_<secret>`. The prefix finds the row; only a SHA-256 of the whole key
is stored, and it is compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import ApiKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: str, name: str | None = None) -> str:
    """Store a new key for `tenant` and return it; it is never shown again."""
    prefix = secrets.token_hex(4)
    key = f"bp_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(tenant=tenant, prefix=prefix, key_hash=hash_key(key), name=name))
    return key


def tenant_for_key(session: Session, key: str) -> str | None:
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "bp":
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1], ApiKey.revoked_at.is_(None)))
    expected = row.key_hash if row is not None else hash_key("no such key")  # same work either way
    if hmac.compare_digest(expected, hash_key(key)) and row is not None:
        return row.tenant
    return None
