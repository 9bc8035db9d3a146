"""The Flask API. `create_app()` is what gunicorn serves: `gunicorn 'app:create_app()'`."""

from __future__ import annotations

import logging
import re
import threading
import uuid
from typing import Any

from flask import Flask, g, request

from core.config import Settings, load_settings
from core.db import make_engine, make_sessionmaker
from core.logs import configure_logging, job_id_var, request_id_var
from core.queue import make_celery

from .auth import enforce_auth, init_auth
from .errors import ApiError, register_error_handlers, validation_error
from .limits import TenantSlots, init_rate_limit
from .metrics import init_http_metrics
from .predict import ModelCache

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# a request waits this long for a row or advisory lock, then answers 503, "try again shortly": a
# job row held by a frozen worker made a cancel wait for as long as that worker stayed frozen. As
# long as the server's idle-in-transaction limit, which frees a frozen holder's locks first
API_LOCK_TIMEOUT_SECONDS = 60


def create_app(settings: Settings | None = None, config: dict[str, Any] | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)  # the dashboard serves app/static at /ui/static, once
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes)
    app.config.update(config or {})
    app.json.sort_keys = False  # keep documents in the order they are built
    engine = make_engine(settings.database_url, lock_timeout=API_LOCK_TIMEOUT_SECONDS)
    app.extensions["backprop"] = {
        "settings": settings,
        "engine": engine,
        "sessions": make_sessionmaker(engine),
        "celery": make_celery(settings),
        # an event stream holds a thread for its whole life: leave half of them for everything else
        # event streams at once: half the threads, a quarter for any one tenant (when there are
        # tenants: with authentication off every caller is the same one)
        "streams": TenantSlots(max(1, settings.web_threads // 2),
                               max(1, settings.web_threads // (4 if settings.auth_enabled else 2))),
        # predictions at once: a quarter of the threads, so that streams and predictions
        # together still leave threads for everything else, /livez included; half of those for
        # any one tenant
        "predictions": TenantSlots(max(1, settings.web_threads // 4),
                                   max(1, settings.web_threads // (8 if settings.auth_enabled else 4))),
        # large JSON bodies parsed at once (schemas.LARGE_JSON_BYTES): memory, not CPU, is the bound
        "large_bodies": threading.BoundedSemaphore(max(1, settings.web_threads // 4)),
        "models": ModelCache(max_bytes=int(settings.predict_cache_mb * 2**20)),  # networks for predict
    }
    if not logging.getLogger().handlers:
        configure_logging(settings.log_level, settings.log_format)
    register_error_handlers(app)
    release_large_body_slots(app)
    refuse_nul(app)
    init_request_ids(app)
    init_http_metrics(app)
    init_auth(app)  # who is calling: a valid key has its own rate budget, anything else the address's
    init_rate_limit(app)
    enforce_auth(app)  # after the rate limit, so failed key guesses count against it
    refuse_undeclared_query(app)
    from .dashboard import bp as dashboard_bp
    from .datasets_api import bp as datasets_bp
    from .health import bp as health_bp
    from .jobs import bp as jobs_bp
    from .metrics import bp as metrics_bp
    from .models_api import bp as models_bp
    from .openapi import bp as openapi_bp

    for blueprint in (jobs_bp, datasets_bp, models_bp, health_bp, metrics_bp, openapi_bp, dashboard_bp):
        app.register_blueprint(blueprint)
    return app


def release_large_body_slots(app: Flask) -> None:
    """A request that parsed a large body (schemas.hold_large_body_slot) gives its slot back when
    it ends, however it ends."""

    @app.teardown_request
    def _release(_exc):
        from flask import g

        slots = g.pop("large_body_slot", None)
        if slots is not None:
            slots.release()


def refuse_nul(app: Flask) -> None:
    """No id, name or parameter contains NUL, and PostgreSQL cannot even compare with one: such
    a request is answered before any handler queries with it."""

    @app.before_request
    def _refuse_nul():
        if "\x00" in request.path:
            raise ApiError(404, "not_found", "no resource has a NUL character in its path")
        if any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
            raise ApiError(400, "bad_request", "query parameters must not contain NUL characters")


def refuse_undeclared_query(app: Flask) -> None:
    """A /v1 route that declares no query parameters refuses any (422), as the routes that declare
    some refuse unknown ones: `POST /v1/models/m/predict?version=1` silently used the latest."""

    @app.before_request
    def _undeclared_query():
        if not request.args or not request.path.startswith("/v1/"):
            return
        meta = getattr(app.view_functions.get(request.endpoint), "_openapi", None)
        if meta is not None and meta["query"] is None:
            name = next(iter(request.args))
            raise validation_error([{"path": name, "message": "unknown parameter: this route takes none"}])


def init_request_ids(app: Flask) -> None:
    """Echo the caller's X-Request-ID or make one, so a request can be found in the logs."""

    @app.before_request
    def _request_id():
        incoming = request.headers.get("X-Request-ID", "")
        # letters, digits and . _ : - only: the id goes into JSON log lines that gunicorn does not
        # escape (a trailing backslash broke them) and is echoed back in a header
        g.request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        request_id_var.set(g.request_id)
        job_id_var.set((request.view_args or {}).get("job_id"))

    @app.after_request
    def _echo(resp):
        resp.headers["X-Request-ID"] = getattr(g, "request_id", "") or uuid.uuid4().hex
        # every answer, the docs page and the dashboard's assets included: no content sniffing,
        # and no framing by another site's page
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        return resp
