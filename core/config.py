"""Settings from BACKPROP_* environment variables, with embedded defaults that need no server:
a SQLite file and Celery's filesystem transport under the data directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BACKPROP_{name}", default)


class ConfigError(ValueError):
    """A BACKPROP_* variable that cannot be used: named, with what it must be, at startup rather
    than as a traceback deep inside gunicorn or Celery (or as a server that refuses everything)."""


def _number(kind, name: str, default: str, low: float, high: float | None = None, above: bool = False):
    raw = _env(name, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    ok = value is not None and (value > low if above else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if above else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"BACKPROP_{name} must be {noun} {bound}, not {raw!r}")
    return value


def _int(name: str, default: str, low: int = 1, high: int | None = None):
    return field(default_factory=lambda: _number(int, name, default, low, high))


def _float(name: str, default: str, low: float = 0.0, above: bool = True):
    return field(default_factory=lambda: _number(float, name, default, low, above=above))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")  # where keys may be off (BACKPROP_AUTH), and the Host then

# "1200 per minute", "10/second; 1000 per day": what flask-limiter parses
_RATE = r"\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", "var")).absolute())
    database_url: str = ""
    broker_url: str = ""
    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1"))
    port: int = _int("PORT", "8000", 1, 65535)
    web_workers: int = _int("WEB_WORKERS", "2")
    web_threads: int = _int("WEB_THREADS", "8")
    worker_concurrency: int = _int("WORKER_CONCURRENCY", str(os.cpu_count() or 1))
    blas_threads: int = _int("BLAS_THREADS", "1")
    max_request_bytes: int = _int("MAX_REQUEST_BYTES", str(64 * 1024 * 1024))
    idempotency_hours: float = _float("IDEMPOTENCY_HOURS", "24")
    predict_cache_mb: float = _float("PREDICT_CACHE_MB", "256", above=False)
    broker_poll_seconds: float = _float("BROKER_POLL_SECONDS", "0.05")
    worker_metrics_port: int = _int("WORKER_METRICS_PORT", "0", 0, 65535)  # 0: off
    # crash safety: see worker/training.py and worker/reconciler.py
    job_time_limit: float = _float("JOB_TIME_LIMIT", str(6 * 3600))
    max_attempts: int = _int("MAX_ATTEMPTS", "3")
    heartbeat_seconds: float = _float("HEARTBEAT_SECONDS", "2")
    stale_after_seconds: float = _float("STALE_AFTER_SECONDS", "30")
    reconcile_seconds: float = _float("RECONCILE_SECONDS", "15")
    requeue_after_seconds: float = _float("REQUEUE_AFTER_SECONDS", "60")
    checkpoint_seconds: float = _float("CHECKPOINT_SECONDS", "5", above=False)
    # limits, each answered with a 4xx before anything is stored or queued (app/limits.py)
    max_layers: int = _int("MAX_LAYERS", "64")
    max_units: int = _int("MAX_UNITS", "8192")
    max_parameters: int = _int("MAX_PARAMETERS", "20000000")
    max_epochs: int = _int("MAX_EPOCHS", "100000")
    max_rows: int = _int("MAX_ROWS", "1000000")
    max_sample_values: int = _int("MAX_SAMPLE_VALUES", "100000")
    max_dataset_values: int = _int("MAX_DATASET_VALUES", "100000000")
    # multiply-adds (app/limits.py): ~6 h of one core at 100 GFLOP/s, the default time limit
    max_compute: float = _float("MAX_COMPUTE", "3e14")
    max_batch_mb: float = _float("MAX_BATCH_MB", "2048")
    max_predict_values: int = _int("MAX_PREDICT_VALUES", "2000000")
    max_predict_compute: float = _float("MAX_PREDICT_COMPUTE", "2e10")
    max_active_jobs: int = _int("MAX_ACTIVE_JOBS", "20")
    rate_limit: str = field(default_factory=lambda: _env("RATE_LIMIT", "1200 per minute"))
    # on | off | auto (auto: off only for the embedded default bound to a loopback address)
    auth: str = field(default_factory=lambda: _env("AUTH", "auto"))
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    log_format: str = field(default_factory=lambda: _env("LOG_FORMAT", "json"))

    def __post_init__(self):
        if self.auth not in ("on", "off", "auto"):
            raise ConfigError(f"BACKPROP_AUTH must be on, off or auto, not {self.auth!r}")
        if self.auth == "off" and not self.loopback:
            raise ConfigError(f"BACKPROP_AUTH=off is only allowed when the API listens on a loopback address "
                              f"(127.0.0.1, localhost, ::1), not BACKPROP_HOST={self.host}")
        object.__setattr__(self, "log_level", self.log_level.upper())  # any case, as logging takes it
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"BACKPROP_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"BACKPROP_LOG_FORMAT must be json or text, not {self.log_format!r}")
        if not re.fullmatch(f"{_RATE}([;,]{_RATE})*", self.rate_limit):
            raise ConfigError(f"BACKPROP_RATE_LIMIT must read like '1200 per minute' or '10/second; 1000 per day', "
                              f"not {self.rate_limit!r}")
        # derived defaults depend on data_dir, so they are filled here
        if not self.database_url:
            object.__setattr__(self, "database_url",
                               _env("DATABASE_URL", f"sqlite:///{self.data_dir / 'backprop.db'}"))
        if not self.broker_url:
            object.__setattr__(self, "broker_url", _env("BROKER_URL", "filesystem://"))

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_NAMES

    @property
    def embedded(self) -> bool:
        return self.embedded_broker and self.database_url.startswith("sqlite")

    @property
    def auth_enabled(self) -> bool:
        if self.auth == "auto":
            return not (self.embedded and self.loopback)
        return self.auth == "on"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def public(self) -> dict:
        """The settings minus anything secret (passwords in URLs), for what the commands print."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _redact(str(v)) if "url" in f.name else (str(v) if isinstance(v, Path) else v)
        return out


def _redact(url: str) -> str:
    url = re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", url)  # libpq's query-string form
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
