"""`Idempotency-Key` on creates: the same key with the same body answers with the first
result; the same key with a different body is refused."""

from __future__ import annotations

import functools
import hashlib
import json

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


def request_digest() -> str:
    """What makes two requests "the same": method, path, query string and body. A multipart
    body is hashed part by part, because its boundary is random per request (so the same
    upload sent twice never has the same bytes)."""
    h = hashlib.sha256(request.method.encode() + request.path.encode() + b"\0")
    if request.query_string:
        h.update(b"?" + request.query_string + b"\0")
    if request.mimetype != "multipart/form-data":
        h.update(request.get_data())
        return h.hexdigest()
    parts = [["field", k, v] for k, v in sorted(request.form.items(multi=True))]
    for key, upload in sorted(request.files.items(multi=True), key=lambda kv: (kv[0], kv[1].filename or "")):
        data = upload.read()
        upload.seek(0)
        parts.append(["file", key, upload.filename or "", hashlib.sha256(data).hexdigest()])
    h.update(json.dumps(parts).encode())
    return h.hexdigest()


def idempotent(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if not key:
            return view(*args, **kwargs)
        if len(key) > 255:
            raise ApiError(422, "validation_error", "Idempotency-Key is longer than 255 characters",
                           errors=[{"path": "Idempotency-Key", "message": "at most 255 characters"}])
        digest = request_digest()
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
