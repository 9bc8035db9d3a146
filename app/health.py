"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import text

from .errors import ApiError
from .openapi import doc

bp = Blueprint("health", __name__)


@bp.get("/livez")
@doc("Liveness: the process answers", tag="health")
def livez():
    return {"status": "ok"}


@bp.get("/readyz")
@doc("Readiness: 200 once the database and the broker answer, 503 until then", errors=(503,), tag="health")
def readyz():
    ext = current_app.extensions["backprop"]
    checks = {}
    try:
        with ext["engine"].connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        with ext["celery"].connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {exc.__class__.__name__}"
    if any(v != "ok" for v in checks.values()):
        raise ApiError(503, "not_ready", "a dependency does not answer", checks=checks)
    return {"status": "ready", "checks": checks}
