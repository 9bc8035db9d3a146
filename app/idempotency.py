"""`Idempotency-Key` on creates: the same key with the same body answers with the first
result; the same key with a different body is refused. A key holds for BACKPROP_IDEMPOTENCY_HOURS
(24) after its first use (core/idempotency.py). The key is claimed before the request
runs, so concurrent requests with one key create one resource: the others are told to come
back (409 `idempotency_key_in_use`) and then get the first result."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from datetime import timedelta

from flask import current_app, request
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError, OperationalError

from core.db import IdempotencyRecord
from core.db.models import utcnow
from core.idempotency import expired_before

from .auth import current_tenant
from .errors import ApiError, first_line

PENDING = 0  # the status_code of a key whose first request is still being answered
log = logging.getLogger(__name__)
ABANDONED_AFTER = timedelta(minutes=5)  # a reservation this old was left by a process that died


def _stored(record: IdempotencyRecord, digest: str):
    if record.request_hash != digest:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request body")
    if record.status_code == PENDING:
        raise ApiError(409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being "
                       "answered; send it again in a moment", headers={"Retry-After": "1"})
    resp = current_app.response_class(current_app.json.dumps(record.response), status=record.status_code,
                                      mimetype="application/json")
    if record.location:
        resp.headers["Location"] = record.location
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


def request_digest() -> str:
    """What makes two requests "the same": method, path, query string, media type (with its
    charset, which changes what the bytes say) and body. A multipart body is hashed part by part,
    because its boundary is random per request (so the same upload sent twice never has the same
    bytes)."""
    h = hashlib.sha256(request.method.encode() + request.path.encode() + b"\0")
    if request.query_string:
        h.update(b"?" + request.query_string + b"\0")
    h.update(f"{request.mimetype};{request.mimetype_params.get('charset', '')}".encode() + b"\0")
    if request.mimetype != "multipart/form-data":
        h.update(request.get_data())
        return h.hexdigest()
    # a part's name can be None (Werkzeug's reading of name="a\\"): sorted as "", refused later
    parts = [["field", k, v] for k, v in sorted(request.form.items(multi=True), key=lambda kv: (kv[0] or "", kv[1]))]
    for key, upload in sorted(request.files.items(multi=True), key=lambda kv: (kv[0] or "", kv[1].filename or "")):
        data = upload.read()
        upload.seek(0)
        parts.append(["file", key, upload.filename or "", hashlib.sha256(data).hexdigest()])
    h.update(json.dumps(parts).encode())
    return h.hexdigest()


def _reserve(sessions, tenant: str, key: str, digest: str, stamp) -> IdempotencyRecord | None:
    """Claim the key before the request runs, so that of concurrent requests with one key only
    one does the work. None when claimed (the claim is known by its `stamp`); else the record
    that holds the key."""
    for _ in range(2):
        try:
            with sessions.begin() as session:
                session.add(IdempotencyRecord(tenant=tenant, key=key, request_hash=digest, status_code=PENDING,
                                              response={}, created_at=stamp))
            return None
        except IntegrityError:
            pass
        with sessions.begin() as session:
            found = session.get(IdempotencyRecord, (tenant, key))
            if found is None:  # released meanwhile: claim it again
                continue
            expired = found.created_at < expired_before(current_app.extensions["backprop"]["settings"])
            abandoned = found.status_code == PENDING and utcnow() - found.created_at >= ABANDONED_AFTER
            if not (expired or abandoned):
                session.expunge(found)
                return found
            # an expired key, or one abandoned by a request that died: take it over (a statement,
            # so that two takers racing here both go on to the insert, where only one wins)
            session.execute(delete(IdempotencyRecord).where(
                IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == key,
                IdempotencyRecord.created_at == found.created_at))
    raise ApiError(409, "idempotency_key_in_use", "requests with this Idempotency-Key are racing; send it "
                   "again in a moment", headers={"Retry-After": "1"})


def _mine(tenant: str, key: str, stamp):
    """This request's own claim: a claim taken over after ABANDONED_AFTER is someone else's."""
    return (IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == key,
            IdempotencyRecord.status_code == PENDING, IdempotencyRecord.created_at == stamp)


def _release(sessions, tenant: str, key: str, stamp) -> None:
    with sessions.begin() as session:
        session.execute(delete(IdempotencyRecord).where(*_mine(tenant, key, stamp)))


def _record(sessions, tenant: str, key: str, stamp, resp) -> None:
    """The answer kept for the key's retries. The request's work is committed by now: a database
    error here must not become a 503 "try again" (the retry, its key still pending, would be a
    409 for ABANDONED_AFTER and then run again), so the write is tried three times and the
    answer sent whatever happens; the key then stays pending until abandoned."""
    for wait in (0.1, 0.5, None):
        try:
            with sessions.begin() as session:
                session.execute(update(IdempotencyRecord).where(*_mine(tenant, key, stamp)).values(
                    status_code=resp.status_code, response=resp.get_json(),
                    location=resp.headers.get("Location")))
            return
        except OperationalError as exc:
            if wait is None:
                log.warning("the answer for Idempotency-Key %r could not be kept: %s", key, first_line(exc))
                return
            time.sleep(wait)


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
        tenant = current_tenant()
        stamp = utcnow()
        found = _reserve(sessions, tenant, key, digest, stamp)
        if found is not None:
            return _stored(found, digest)
        try:
            resp = current_app.make_response(view(*args, **kwargs))
        except BaseException:
            _release(sessions, tenant, key, stamp)  # a refused request does not use up its key
            raise
        if 200 <= resp.status_code < 300 and resp.is_json:
            _record(sessions, tenant, key, stamp, resp)
        else:
            _release(sessions, tenant, key, stamp)
        return resp
    wrapper._idempotent = True  # the OpenAPI document lists the Idempotency-Key header for it
    return wrapper
