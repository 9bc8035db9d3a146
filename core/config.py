"""Settings from BACKPROP_* environment variables, with embedded defaults that need no server:
a SQLite file and Celery's filesystem transport under the data directory."""

from __future__ import annotations

import functools
import math
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
    # finite only: "inf", "nan" and "1e999" (= inf) overflowed int() and timedelta deep inside the
    # servers, or killed the heartbeat and reconciler threads (Event.wait) without a word
    ok = (value is not None and (kind is int or math.isfinite(value)) and (value > low if above else value >= low)
          and (high is None or value <= high))
    if not ok:
        bound = f"{'>' if above else '>='} {_plain(low)}" + (f" and <= {_plain(high)}" if high is not None
                                                             else " and finite" if kind is float else "")
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"BACKPROP_{name} must be {noun} {bound}, not {raw!r}")
    return value


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"  # 31536000, not 3.1536e+07


def _int(name: str, default: str, low: int = 1, high: int | None = None):
    return field(default_factory=lambda: _number(int, name, default, low, high))


def _float(name: str, default: str, low: float = 0.0, above: bool = True, high: float | None = None):
    return field(default_factory=lambda: _number(float, name, default, low, high, above=above))


# upper bounds of durations: far beyond any sensible value, far below what timedelta, datetime
# arithmetic and threading's waits (threading.TIMEOUT_MAX) can take
HOUR, DAY = 3600, 86400
WEEK, YEAR = 7 * DAY, 365 * DAY


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
    idempotency_hours: float = _float("IDEMPOTENCY_HOURS", "24", high=10 * YEAR / HOUR)
    predict_cache_mb: float = _float("PREDICT_CACHE_MB", "256", above=False)
    broker_poll_seconds: float = _float("BROKER_POLL_SECONDS", "0.05", high=60)
    worker_metrics_port: int = _int("WORKER_METRICS_PORT", "0", 0, 65535)  # 0: off
    # crash safety: see worker/training.py and worker/reconciler.py
    job_time_limit: float = _float("JOB_TIME_LIMIT", str(6 * 3600), high=YEAR)
    max_attempts: int = _int("MAX_ATTEMPTS", "3")
    heartbeat_seconds: float = _float("HEARTBEAT_SECONDS", "2", high=HOUR)
    stale_after_seconds: float = _float("STALE_AFTER_SECONDS", "30", high=WEEK)  # > heartbeat_seconds
    reconcile_seconds: float = _float("RECONCILE_SECONDS", "15", high=DAY)
    requeue_after_seconds: float = _float("REQUEUE_AFTER_SECONDS", "60", high=WEEK)
    checkpoint_seconds: float = _float("CHECKPOINT_SECONDS", "5", above=False, high=DAY)
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
    max_tenant_dataset_bytes: int = _int("MAX_TENANT_DATASET_BYTES", str(10 << 30))  # 10 GiB
    max_tenant_job_bytes: int = _int("MAX_TENANT_JOB_BYTES", str(10 << 30))  # weights and histories, projected
    rate_limit: str = field(default_factory=lambda: _env("RATE_LIMIT", "1200 per minute"))
    # on | off | auto (auto: off only for the embedded default bound to a loopback address)
    auth: str = field(default_factory=lambda: _env("AUTH", "auto"))
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    log_format: str = field(default_factory=lambda: _env("LOG_FORMAT", "json"))

    def __post_init__(self):
        # "[::1]" as a URL writes it: the address is ::1 (bracketed again where a port follows)
        if self.host.startswith("[") and self.host.endswith("]"):
            object.__setattr__(self, "host", self.host[1:-1])
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
        object.__setattr__(self, "database_url", _database_url(self.database_url))
        if not self.broker_url:
            object.__setattr__(self, "broker_url", _env("BROKER_URL", "filesystem://"))

    def check_relations(self) -> Settings:
        """Settings that are each usable but not together. Checked by load_settings(), which every
        command and server uses; not on every construction, so that tests may build a Settings
        that a deployment must not have (a heartbeat slower than staleness, to prove that
        something else notices a cancel)."""
        if self.stale_after_seconds <= self.heartbeat_seconds:
            # a healthy job whose beat was due counted as lost: "worker lost" on every attempt
            raise ConfigError(f"BACKPROP_STALE_AFTER_SECONDS ({self.stale_after_seconds:g}) must be greater than "
                              f"BACKPROP_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}): a running job's heartbeat "
                              f"would count as lost between two beats")
        return self

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_NAMES

    @property
    def address(self) -> str:
        """host:port as gunicorn binds it and URLs name it: an IPv6 address in brackets."""
        return host_port(self.host, self.port)

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


def host_port(host: str, port: int) -> str:
    """host:port, with an IPv6 address bracketed ([::1]:8000) as gunicorn's --bind and URLs need."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


POSTGRES_SCHEMES = ("postgres", "postgresql")  # Heroku's and libpq's: the installed driver is psycopg 3


@functools.lru_cache(maxsize=32)
def _database_url(url: str) -> str:
    """The URL SQLAlchemy is given: postgres:// and postgresql:// with psycopg (3), the driver
    installed; and one whose dialect or driver SQLAlchemy cannot load is refused here, without
    connecting, rather than as a traceback in every process."""
    from sqlalchemy.engine import make_url

    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in POSTGRES_SCHEMES:
        url = f"postgresql+psycopg://{rest}"
    try:
        make_url(url).get_dialect().import_dbapi()
    except Exception as exc:  # noqa: BLE001 - ArgumentError, NoSuchModuleError, ImportError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"BACKPROP_DATABASE_URL={_redact(url)} cannot be used: {reason} (e.g. "
                          f"postgresql+psycopg://user:pw@host/db or sqlite:////path/to/file.db)") from None
    return url


def _redact(url: str) -> str:
    url = re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", url)  # libpq's query-string form
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def load_settings(**overrides) -> Settings:
    return Settings(**overrides).check_relations()
