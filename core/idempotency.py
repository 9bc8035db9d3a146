"""How long an Idempotency-Key holds: `Settings.idempotency_hours` after its first use. The API
treats an older key as unused, and the worker's reconciler deletes old keys, so the table holds
about a day of keys rather than every key ever sent."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .db import IdempotencyRecord
from .db.models import utcnow


def expired_before(settings: Settings) -> datetime:
    return utcnow() - timedelta(hours=settings.idempotency_hours)


def purge_expired_keys(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Delete expired keys; returns how many."""
    with sessions.begin() as session:
        return session.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.created_at < expired_before(settings))).rowcount
