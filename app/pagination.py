"""Newest-first keyset pages over (created_at, id) with opaque `next` cursors, for any table
that has both columns. The cursor format is the one GET /v1/jobs has always returned
(base64url of "<ISO timestamp>|<id>"), so the jobs list can use these helpers unchanged."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, literal, tuple_

from .errors import validation_error


def aware(dt: datetime) -> datetime:
    """SQLite hands timestamps back naive; they are all UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def encode_cursor(row: Any) -> str:
    raw = f"{iso(row.created_at)}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, path: str = "next") -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        at, last_id = raw.split("|", 1)
        if "\0" in last_id:  # PostgreSQL refuses NUL in text; no id holds one
            raise ValueError(last_id)
        return aware(datetime.fromisoformat(at)), last_id
    except (ValueError, UnicodeDecodeError):
        raise validation_error([{"path": path, "message": "not a cursor this API returned"}]) from None


def newest_first(stmt: Select, model: Any, limit: int, token: str | None) -> Select:
    """`stmt` ordered newest first, after the cursor `token`, one row more than `limit` (so
    `page` can tell whether another page follows)."""
    if token:
        at, last_id = decode_cursor(token)
        # a row-value comparison: an index on (..., created_at, id) serves it as one range, where
        # the OR form was a filter over every row before the cursor (quadratic over all pages)
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(literal(at, model.created_at.type),
                                                                      literal(last_id, model.id.type)))
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    """The rows to show and the cursor for the next page (None on the last one)."""
    shown = rows[:limit]
    return shown, encode_cursor(shown[-1]) if len(rows) > limit else None
