"""The Flask API. `create_app()` is what gunicorn serves: `gunicorn 'app:create_app()'`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from core.config import Settings, load_settings
from core.db import make_engine, make_sessionmaker
from core.queue import make_celery

from .errors import register_error_handlers


def create_app(settings: Settings | None = None, config: dict[str, Any] | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, JSON_SORT_KEYS=False)
    app.config.update(config or {})
    app.json.sort_keys = False  # keep documents in the order they are built
    engine = make_engine(settings.database_url)
    app.extensions["backprop"] = {
        "settings": settings,
        "engine": engine,
        "sessions": make_sessionmaker(engine),
        "celery": make_celery(settings),
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    register_error_handlers(app)
    from .health import bp as health_bp
    from .jobs import bp as jobs_bp
    app.register_blueprint(jobs_bp)
    app.register_blueprint(health_bp)
    return app
