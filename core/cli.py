"""The `backprop` command: the same invocations that `make run`, docker-compose and the
end-to-end tests use, so there is one way to start each process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from .config import load_settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if url:
        cfg.attributes["url"] = url
    return cfg


def serve_command(settings) -> list[str]:
    from .logs import GUNICORN_ACCESS_FORMAT

    return [sys.executable, "-m", "gunicorn", "--bind", f"{settings.host}:{settings.port}",
            "--workers", str(settings.web_workers), "--worker-class", "gthread", "--threads", "4",
            "--timeout", "120", "--graceful-timeout", "10", "--access-logfile", "-",
            "--access-logformat", GUNICORN_ACCESS_FORMAT, "app:create_app()"]


def metrics_env(settings, kind: str) -> dict[str, str]:
    """Each server gets its own multiprocess metrics directory, emptied at start."""
    from .metrics import prepare_multiprocess_dir

    path = settings.data_dir / "prometheus" / f"{kind}-{os.getpid()}"
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": prepare_multiprocess_dir(path)}


def worker_command(settings) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--loglevel", "INFO", "--concurrency", str(settings.worker_concurrency),
            "--queues", "training", "--without-gossip", "--without-mingle", "--without-heartbeat"]


@click.group()
def main() -> None:
    """backprop: train neural networks by backpropagation over HTTP."""


@main.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from alembic import command

    settings = load_settings()
    command.upgrade(alembic_config(settings.database_url), "head")
    click.echo(f"database at head: {settings.public()['database_url']}")


@main.group()
def keys() -> None:
    """Manage API keys (the database keeps only their hashes)."""


def _sessions():
    from .db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(load_settings().database_url))


@keys.command("create")
@click.option("--tenant", required=True, help="the tenant the key acts for")
@click.option("--name", default=None, help="a note to recognise the key by")
def keys_create(tenant: str, name: str | None) -> None:
    """Create a key and print it once."""
    from .keys import create_key

    with _sessions().begin() as session:
        key = create_key(session, tenant, name)
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """List keys by prefix (never the keys themselves)."""
    from sqlalchemy import select

    from .db import ApiKey

    with _sessions()() as session:
        for k in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            click.echo(f"bp_{k.prefix}_...  tenant={k.tenant}  {state}  {k.name or ''}".rstrip())


@keys.command("revoke")
@click.argument("prefix")
def keys_revoke(prefix: str) -> None:
    """Revoke the key whose prefix is PREFIX (the part after bp_)."""
    from sqlalchemy import update

    from .db import ApiKey
    from .db.models import utcnow

    with _sessions().begin() as session:
        done = session.execute(update(ApiKey).where(ApiKey.prefix == prefix.removeprefix("bp_").split("_")[0])
                               .values(revoked_at=utcnow())).rowcount
    if not done:
        raise click.ClickException(f"no key with prefix {prefix}")
    click.echo("revoked")


@main.command()
def serve() -> None:
    """Run the API under gunicorn."""
    settings = load_settings()
    os.execve(sys.executable, serve_command(settings), metrics_env(settings, "api"))


@main.command()
def worker() -> None:
    """Run a Celery worker that trains queued jobs."""
    settings = load_settings()
    os.execve(sys.executable, worker_command(settings), metrics_env(settings, "worker"))


@main.command()
def run() -> None:
    """Migrate, then run the API and a worker together until Ctrl-C."""
    from alembic import command

    settings = load_settings()
    command.upgrade(alembic_config(settings.database_url), "head")
    procs = [subprocess.Popen(serve_command(settings), env=metrics_env(settings, "api")),
             subprocess.Popen(worker_command(settings), env=metrics_env(settings, "worker"))]
    click.echo(f"backprop API on http://{settings.host}:{settings.port} "
               f"(data in {settings.data_dir}); Ctrl-C stops it")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
    code = max((p.returncode or 0) for p in procs) if not stopping else 0
    sys.exit(code)


if __name__ == "__main__":
    main()
