"""Logging for every process: one JSON object per line, carrying the request id and the job id
of whatever the line is about (set through context variables by the API and the worker)."""

from __future__ import annotations

import json
import logging
import re
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime

from gunicorn import glogging

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


class JsonAccessLogger(glogging.Logger):
    """gunicorn's access lines in the same shape as every other line. Built with json.dumps:
    gunicorn's --access-logformat fills a template and escapes only quotes, so a backslash in a
    URL (GET /livez?y=a\\) made the line invalid JSON, and a client could drop its own requests
    out of a JSON log pipeline. The job a request is about is named, as in the API's lines."""

    def access(self, resp, req, environ, request_time):
        # access_log_enabled is newer than gunicorn 22, which pyproject admits; and a failure here
        # must never escape: gunicorn closes the response (and so gives back a stream's slot) after
        if not getattr(self, "access_log_enabled", True):
            return
        try:
            atoms = self.atoms(resp, req, environ, request_time)
            job = _JOB_PATH.match(atoms.get("U") or "")
            self.access_log.info(json.dumps({
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "INFO",
                "logger": "gunicorn.access", "message": atoms.get("r"), "request_id": atoms.get("{x-request-id}o"),
                "job_id": job.group(1) if job else None, "status": atoms.get("s"), "duration_ms": atoms.get("M"),
                "remote": atoms.get("h")}))
        except Exception:  # noqa: BLE001 - as gunicorn's own access()
            self.error(traceback.format_exc())


_JOB_PATH = re.compile(r"/v1/jobs/([0-9a-f]{32})(?:/|$)")
