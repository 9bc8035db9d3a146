"""Logging for every process: one JSON object per line, carrying the request id and the job id
of whatever the line is about (set through context variables by the API and the worker)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
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


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(fmt: str = "json") -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Root logger to stderr, JSON lines unless fmt is "text" (Settings.log_level, log_format)."""
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kombu.connection",):  # warns about the filesystem transport having no hostname
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # billiard's pool ("Process 'ForkPoolWorker-1' pid:12 exited with 'signal 9 (SIGKILL)'") logs
    # to the "multiprocessing" logger, which does not propagate: without a handler of its own its
    # lines reached stderr bare, through logging's last resort
    mp = logging.getLogger("multiprocessing")
    mp.handlers[:] = [handler]
    mp.setLevel(max(root.level, logging.WARNING))
    logging.captureWarnings(True)  # warnings.warn (Celery's SecurityWarning): a line like the others
    # flask-limiter logs every request it cannot count while Redis is silent at ERROR with a
    # full traceback: one WARNING line each (the request goes through, as documented)
    limiter = logging.getLogger("flask-limiter")
    if not any(isinstance(f, OneLineWarning) for f in limiter.filters):
        limiter.addFilter(OneLineWarning())


class OneLineWarning(logging.Filter):
    """Turns a logger's error-with-traceback into one WARNING line naming the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                reason = (str(exc).strip().splitlines() or [""])[0]
                message = f"{message}: {type(exc).__name__}{': ' + reason if reason else ''}"
            record.msg, record.args = message, None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def say(msg: str, f=sys.__stderr__) -> None:
    """Celery's safe_say (the shutdown notices it prints from its signal handlers) as one JSON
    line: written with a single os.write, as Celery does, since it runs in a signal handler."""
    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, msg.strip(), None, None)
    try:
        os.write(f.fileno(), (JsonFormatter().format(record) + "\n").encode())
    except (OSError, ValueError, AttributeError):  # as Celery's: losing it must not stop a shutdown
        pass


class JsonAccessLogger(glogging.Logger):
    """gunicorn's access lines in the same shape as every other line. Built with json.dumps:
    gunicorn's --access-logformat fills a template and escapes only quotes, so a backslash in a
    URL (GET /livez?y=a\\) made the line invalid JSON, and a client could drop its own requests
    out of a JSON log pipeline. The job a request is about is named, as in the API's lines.

    Its error log (gunicorn's own lines: "Starting gunicorn", "Worker failed to boot", a worker's
    traceback) follows BACKPROP_LOG_FORMAT too, one JSON object per line by default; and the
    access log follows --log-level (BACKPROP_LOG_LEVEL): its INFO lines go above INFO. In text
    mode the access lines are gunicorn's own."""

    def setup(self, cfg):
        super().setup(cfg)
        self.log_format = "text" if os.environ.get("BACKPROP_LOG_FORMAT", "json").lower() == "text" else "json"
        for handler in self.error_log.handlers:
            if getattr(handler, "_gunicorn", False) and not isinstance(handler, logging.handlers.SysLogHandler):
                handler.setFormatter(make_formatter(self.log_format))
        self.access_level = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        self.access_log.setLevel(self.access_level)

    def access(self, resp, req, environ, request_time):
        # access_log_enabled is newer than gunicorn 22, which pyproject admits; and a failure here
        # must never escape: gunicorn closes the response (and so gives back a stream's slot) after
        if not getattr(self, "access_log_enabled", True) or getattr(self, "access_level", 0) > logging.INFO:
            return
        if getattr(self, "log_format", "json") == "text":
            return super().access(resp, req, environ, request_time)
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
