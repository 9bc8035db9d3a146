"""`Idempotency-Key` on creates: the same key with the same body answers with the first
result; the same key with a different body is refused."""

from __future__ import annotations

import functools
import hashlib

from flask import current_app, request
from sqlalchemy.exc import IntegrityError

from core.db import IdempotencyRecord

from .auth import current_tenant
from .errors import ApiError


def _stored(record: IdempotencyRecord, digest: str):
    if record.request_hash != digest:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request body")
    resp = current_app.response_class(current_app.json.dumps(record.response), status=record.status_code,
                                      mimetype="application/json")
    if record.location:
        resp.headers["Location"] = record.location
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


def idempotent(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if not key:
            return view(*args, **kwargs)
        if len(key) > 255:
            raise ApiError(422, "validation_error", "Idempotency-Key is longer than 255 characters",
                           errors=[{"path": "Idempotency-Key", "message": "at most 255 characters"}])
        digest = hashlib.sha256(request.method.encode() + request.path.encode() + b"\0"
                                + request.get_data()).hexdigest()
        sessions = current_app.extensions["backprop"]["sessions"]
        with sessions() as session:
            found = session.get(IdempotencyRecord, (current_tenant(), key))
            if found is not None:
                return _stored(found, digest)
        resp = current_app.make_response(view(*args, **kwargs))
        if 200 <= resp.status_code < 300 and resp.is_json:
            try:
                with sessions.begin() as session:
                    session.add(IdempotencyRecord(tenant=current_tenant(), key=key, request_hash=digest,
                                                  status_code=resp.status_code, response=resp.get_json(),
                                                  location=resp.headers.get("Location")))
            except IntegrityError:  # a concurrent request with the same key won the race
                with sessions() as session:
                    return _stored(session.get(IdempotencyRecord, (current_tenant(), key)), digest)
        return resp
    return wrapper
