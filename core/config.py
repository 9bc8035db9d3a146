"""Settings from BACKPROP_* environment variables, with embedded defaults that need no server:
a SQLite file and Celery's filesystem transport under the data directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"BACKPROP_{name}", default)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", "var")).absolute())
    database_url: str = ""
    broker_url: str = ""
    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("PORT", "8000")))
    web_workers: int = field(default_factory=lambda: int(_env("WEB_WORKERS", "2")))
    web_threads: int = field(default_factory=lambda: int(_env("WEB_THREADS", "8")))
    worker_concurrency: int = field(default_factory=lambda: int(_env("WORKER_CONCURRENCY", str(os.cpu_count() or 1))))
    blas_threads: int = field(default_factory=lambda: int(_env("BLAS_THREADS", "1")))
    max_request_bytes: int = field(default_factory=lambda: int(_env("MAX_REQUEST_BYTES", str(64 * 1024 * 1024))))
    idempotency_hours: float = field(default_factory=lambda: float(_env("IDEMPOTENCY_HOURS", "24")))
    predict_cache_mb: float = field(default_factory=lambda: float(_env("PREDICT_CACHE_MB", "256")))
    broker_poll_seconds: float = field(default_factory=lambda: float(_env("BROKER_POLL_SECONDS", "0.05")))
    worker_metrics_port: int = field(default_factory=lambda: int(_env("WORKER_METRICS_PORT", "0")))  # 0: off
    # crash safety: see worker/training.py and worker/reconciler.py
    job_time_limit: float = field(default_factory=lambda: float(_env("JOB_TIME_LIMIT", str(6 * 3600))))
    max_attempts: int = field(default_factory=lambda: int(_env("MAX_ATTEMPTS", "3")))
    heartbeat_seconds: float = field(default_factory=lambda: float(_env("HEARTBEAT_SECONDS", "2")))
    stale_after_seconds: float = field(default_factory=lambda: float(_env("STALE_AFTER_SECONDS", "30")))
    reconcile_seconds: float = field(default_factory=lambda: float(_env("RECONCILE_SECONDS", "15")))
    requeue_after_seconds: float = field(default_factory=lambda: float(_env("REQUEUE_AFTER_SECONDS", "60")))
    checkpoint_seconds: float = field(default_factory=lambda: float(_env("CHECKPOINT_SECONDS", "5")))
    # limits, each answered with a 4xx before anything is stored or queued (app/limits.py)
    max_layers: int = field(default_factory=lambda: int(_env("MAX_LAYERS", "64")))
    max_units: int = field(default_factory=lambda: int(_env("MAX_UNITS", "8192")))
    max_parameters: int = field(default_factory=lambda: int(_env("MAX_PARAMETERS", "20000000")))
    max_epochs: int = field(default_factory=lambda: int(_env("MAX_EPOCHS", "100000")))
    max_rows: int = field(default_factory=lambda: int(_env("MAX_ROWS", "1000000")))
    max_sample_values: int = field(default_factory=lambda: int(_env("MAX_SAMPLE_VALUES", "100000")))
    max_dataset_values: int = field(default_factory=lambda: int(_env("MAX_DATASET_VALUES", "100000000")))
    max_compute: float = field(default_factory=lambda: float(_env("MAX_COMPUTE", "2e13")))
    max_active_jobs: int = field(default_factory=lambda: int(_env("MAX_ACTIVE_JOBS", "20")))
    rate_limit: str = field(default_factory=lambda: _env("RATE_LIMIT", "1200 per minute"))
    # on | off | auto (auto: off only for the embedded default bound to a loopback address)
    auth: str = field(default_factory=lambda: _env("AUTH", "auto"))

    def __post_init__(self):
        # derived defaults depend on data_dir, so they are filled here
        if not self.database_url:
            object.__setattr__(self, "database_url",
                               _env("DATABASE_URL", f"sqlite:///{self.data_dir / 'backprop.db'}"))
        if not self.broker_url:
            object.__setattr__(self, "broker_url", _env("BROKER_URL", "filesystem://"))

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @property
    def embedded(self) -> bool:
        return self.embedded_broker and self.database_url.startswith("sqlite")

    @property
    def auth_enabled(self) -> bool:
        if self.auth not in ("on", "off", "auto"):
            raise ValueError(f"BACKPROP_AUTH must be on, off or auto, not {self.auth!r}")
        if self.auth == "off" and not self.loopback:
            raise ValueError("BACKPROP_AUTH=off is only allowed when the API listens on 127.0.0.1")
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
        """The settings minus anything secret, for logs and the health endpoint."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _redact(str(v)) if "url" in f.name else (str(v) if isinstance(v, Path) else v)
        return out


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def load_settings(**overrides) -> Settings:
    return Settings(**overrides)
