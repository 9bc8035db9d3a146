"""Logging for every process: one JSON object per line, carrying the request id and the job id
of whatever the line is about (set through context variables by the API and the worker)."""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
            "job_id": job_id_var.get(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Root logger to stderr, JSON lines unless fmt is "text" (Settings.log_level, log_format)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kombu.connection",):  # warns about the filesystem transport having no hostname
        logging.getLogger(noisy).setLevel(logging.ERROR)


# gunicorn's access log in the same shape (its own formatter, fed through --access-logformat)
GUNICORN_ACCESS_FORMAT = json.dumps({
    "ts": "%(t)s", "level": "INFO", "logger": "gunicorn.access", "message": "%(r)s",
    "request_id": "%({x-request-id}o)s", "status": "%(s)s", "duration_ms": "%(M)s", "remote": "%(h)s",
})
