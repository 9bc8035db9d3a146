"""One error format for every failure: RFC 9457 problem details with a stable `code`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE = "https://backprop.dev/problems/"  # documentation anchor per code


class ApiError(Exception):
    """Raised by views; rendered as application/problem+json."""

    def __init__(self, status: int, code: str, detail: str, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors, self.headers, self.extra = errors, headers or {}, extra


def first_line(exc: BaseException) -> str:
    """An exception for a log line: a database error's message without the statement and
    parameters SQLAlchemy appends on the lines after it."""
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


def error_path(loc: tuple[Any, ...]) -> str:
    """Pydantic's location as the API writes every other path: model.layers[2].units."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def validation_error(errors: list[dict[str, str]], detail: str | None = None) -> ApiError:
    first = errors[0]
    return ApiError(422, "validation_error",
                    detail or f"{first['path']}: {first['message']}"
                    + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
                    errors=errors)


def problem(status: int, code: str, title: str, detail: str, errors=None, headers=None,
            **extra: Any) -> Response:
    body: dict[str, Any] = {"type": PROBLEM_TYPE + code, "title": title, "status": status,
                            "detail": detail, "code": code}
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    resp = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 409: "Conflict",
          413: "Request too large", 415: "Unsupported media type", 422: "Unprocessable content",
          429: "Too many requests", 500: "Internal server error", 503: "Service unavailable"}

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
              413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limited", 500: "internal_error"}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return problem(exc.status, exc.code, TITLES.get(exc.status, "Error"), exc.detail,
                       exc.errors, exc.headers, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return problem(status, HTTP_CODES.get(status, "http_error"), TITLES.get(status, exc.name),
                       exc.description or exc.name, headers=headers)

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError):
        log.warning("database unavailable: %s", first_line(exc))
        return problem(503, "database_unavailable", TITLES[503],
                       "the database does not answer; try again shortly", headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return problem(500, "internal_error", TITLES[500], "an unexpected error occurred; it was logged")
