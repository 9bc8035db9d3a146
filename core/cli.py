"""The `backprop` command: the same invocations that `make run`, docker-compose and the
end-to-end tests use, so there is one way to start each process; and client commands
(train, jobs, predict, weights, datasets) that talk to a running server through core/client.py."""

from __future__ import annotations

import csv
import functools
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from sqlalchemy.exc import OperationalError

from .client import DEFAULT_URL, ApiError, Client, Job, TransportError
from .config import ConfigError, load_settings
from .numbers import plain

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str | None = None):
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if url:
        cfg.attributes["url"] = url
    return cfg


def serve_command(settings) -> list[str]:
    # an IPv6 address is bound in brackets ([::1]:8000): gunicorn reads "::1:8000" as host "::1:8000"
    # with no port. Its own lines follow BACKPROP_LOG_LEVEL and (the logger class) BACKPROP_LOG_FORMAT
    return [sys.executable, "-m", "gunicorn", "--bind", settings.address,
            "--workers", str(settings.web_workers), "--worker-class", "gthread", "--threads", str(settings.web_threads),
            "--timeout", "120", "--graceful-timeout", "10", "--access-logfile", "-",
            "--log-level", settings.log_level.lower(),
            "--logger-class", "core.logs.JsonAccessLogger", *_without_control_socket(), "app:create_app()"]


def _without_control_socket() -> list[str]:
    """Gunicorn 27 opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl), so
    every instance on a host shares it and one that stops removes another's. Nothing here uses
    it; older gunicorns (pyproject allows 22) have neither the socket nor the flag."""
    from importlib.metadata import version

    major = int(version("gunicorn").split(".")[0])
    return ["--no-control-socket"] if major >= 27 else []


def process_env(settings, kind: str) -> dict[str, str]:
    """The environment of a server process: its own multiprocess metrics directory (emptied at
    start) and, for workers, glibc malloc thresholds pinned as `make bench` measures them: by
    default glibc returns large blocks to the kernel and page-faults them back on every batch."""
    from .metrics import prepare_multiprocess_dir

    path = settings.data_dir / "prometheus" / f"{kind}-{os.getpid()}"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": prepare_multiprocess_dir(path)}
    if kind == "worker":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 << 20))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 << 20))
    return env


def worker_command(settings) -> list[str]:
    """Celery's worker, named backprop-PID@HOST: with the default celery@HOST every worker on a
    host had the same name (in job records and Celery's control commands). PID is the process
    that runs this, which `backprop worker` then becomes (exec keeps the pid). In JSON mode the
    banner is left out (--quiet): the worker logs what it says as a JSON line when ready."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app",
            *(["--quiet"] if settings.log_format == "json" else []), "worker",  # --quiet: celery's own option
            "--hostname", f"backprop-{os.getpid()}@%h",
            "--loglevel", settings.log_level, "--concurrency", str(settings.worker_concurrency),
            "--queues", "training", "--without-gossip", "--without-mingle", "--without-heartbeat"]


class _Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:  # a BACKPROP_* variable that cannot be used: one line, exit 2
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except OperationalError as exc:  # migrate, keys: the database is down or refuses us
            reason = str(exc.orig or exc).strip().splitlines()[0]
            click.echo(f"error: the database at {load_settings().public()['database_url']} does not answer: "
                       f"{reason}", err=True)
            sys.exit(1)
        except BrokenPipeError:
            # the reader of our output has gone (`backprop jobs list | head -1`): stop without a word.
            # stdout goes to devnull so that Python's flush at exit does not fail again; exit 141 =
            # 128 + SIGPIPE, what a shell reports for any writer whose reader went away
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # no file descriptor behind stdout (a test's capture)
                pass
            sys.exit(141)


@click.group(cls=_Main)
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

    with _sessions()() as session:  # read first: a slow reader of the output must not hold a transaction
        rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
    for k in rows:
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
    os.execve(sys.executable, serve_command(settings), process_env(settings, "api"))


@main.command()
def worker() -> None:
    """Run a Celery worker that trains queued jobs."""
    settings = load_settings()
    os.execve(sys.executable, worker_command(settings), process_env(settings, "worker"))


@main.command()
def run() -> None:
    """Migrate, then run the API and a worker together until Ctrl-C."""
    from alembic import command

    settings = load_settings()
    command.upgrade(alembic_config(settings.database_url), "head")
    # each in its own process group, so that stopping reaches the gunicorn and Celery children too
    procs = [subprocess.Popen(serve_command(settings), env=process_env(settings, "api"), start_new_session=True),
             subprocess.Popen(worker_command(settings), env=process_env(settings, "worker"),
                              start_new_session=True)]
    click.echo(f"backprop API on http://{settings.address} "
               f"(data in {settings.data_dir}); Ctrl-C stops it")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    # SIGHUP too: closing the terminal of `make run` must not leave the servers running on
    # (they are in sessions of their own, so the hangup does not reach them)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        # A warm shutdown of the worker: a training job hands itself back to the queue at its
        # next batch (worker/celery_app.py) and resumes from its last checkpoint when a worker
        # next runs. Only Celery's main process is signalled, as `docker stop` does.
        _signal_group(procs[0], signal.SIGTERM)
        procs[1].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)  # whatever is left of the group
    sys.exit(0 if stopping else _first_failure(procs))


def _first_failure(procs: list[subprocess.Popen]) -> int:
    """The exit code for a child that ended on its own: its failure, as a shell gives it (128 +
    the signal for one killed), not 0 because another child then stopped cleanly."""
    codes = [p.returncode for p in procs if p.returncode]
    if not codes:
        return 1  # a server that exits 0 by itself has stopped serving all the same
    return 128 - codes[0] if codes[0] < 0 else codes[0]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


# --- client commands: talk to a running server over HTTP through core/client.py -------------

EXIT_API_ERROR = 1  # the server refused a request or could not be reached, or a local file was unusable
JOB_KEYS = {"model", "training", "init_from", "freeze", "dataset", "dataset_id"}
EXIT_JOB_FAILED = 3  # the followed job failed or was cancelled


def with_client(f):
    """Adds --url and --api-key and hands the command a Client; API errors are printed (detail,
    then `path: message` per error) and end the command with EXIT_API_ERROR."""

    @click.option("--api-key", envvar="BACKPROP_API_KEY", default=None, metavar="KEY",
                  show_envvar=True, help="API key, sent as Authorization: Bearer KEY")
    @click.option("--url", envvar="BACKPROP_URL", default=DEFAULT_URL, show_default=True,
                  show_envvar=True, help="the server")
    @functools.wraps(f)
    def wrapper(url: str, api_key: str | None, **kwargs):
        try:
            client = Client(url, api_key or "")
        except ValueError as exc:  # a --url (or BACKPROP_URL) that is not http(s)://host[:port]: exit 2
            raise click.UsageError(str(exc)) from None
        try:
            return f(client, **kwargs)
        except ApiError as exc:
            for line in [*exc.lines(), *(f"  ({note})" for note in getattr(exc, "__notes__", []))]:
                click.echo(line, err=True)
            if exc.status == 401 and not api_key:
                click.echo("  (no API key given: set BACKPROP_API_KEY or pass --api-key)", err=True)
            sys.exit(EXIT_API_ERROR)
        except (TransportError, TimeoutError, http.client.HTTPException) as exc:
            # TimeoutError and IncompleteRead: an answer that stalled or broke off mid-body
            click.echo(f"error: {exc.__class__.__name__ + ': ' if not isinstance(exc, TransportError) else ''}"
                       f"{exc}", err=True)
            sys.exit(EXIT_API_ERROR)
        except BrokenPipeError:
            raise  # not a file of ours: stdout, closed by its reader (_Main.invoke ends quietly)
        except (OSError, UnicodeError, ValueError, TypeError) as exc:
            # a local file that cannot be read or written, or does not hold what it should (a
            # JSON list where an object belongs, text that is not UTF-8): a message, not a traceback
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_API_ERROR)

    return wrapper


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_number(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {_fmt_number(v)}" for k, v in metrics.items())


class ProgressPrinter:
    """A progress line per epoch: redrawn in place on a terminal; on a pipe or file, plain
    lines (the first and last epoch, about every 5% of the run, and at least every 10 s)."""

    def __init__(self, total: int, tty: bool | None = None, width: int = 24):
        self.total, self.width = total, width
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.durations: list[float] = []
        self.drawn = False
        self.last_line = ""
        self.printed_at = 0.0
        self.last_epoch = None

    def _eta(self, epoch: int) -> float | None:
        recent = self.durations[-20:]
        return sum(recent) / len(recent) * max(self.total - epoch, 0) if recent else None

    def _line(self, e) -> str:
        total = max(self.total, e.epoch)
        head = f"epoch {e.epoch}/{total}"
        if self.tty:
            done = int(self.width * e.epoch / total) if total else self.width
            head = f"[{'#' * done}{'.' * (self.width - done)}] {head}"
        parts = [head, f"loss {_fmt_number(e.loss)}", _fmt_metrics(e.metrics),
                 f"eta {_fmt_seconds(self._eta(e.epoch))}"]
        return "  ".join(p for p in parts if p)

    def epoch(self, e) -> None:
        if e.duration is not None:
            self.durations.append(e.duration)
        line, now = self._line(e), time.monotonic()
        self.last_epoch = e
        if self.tty:
            line = line[:max(shutil.get_terminal_size().columns - 1, 20)]  # a wrapped line cannot be redrawn
            pad = " " * max(len(self.last_line) - len(line), 0)
            click.echo(f"\r{line}{pad}", nl=False)
            self.drawn, self.last_line = True, line
            return
        step = max(self.total // 20, 1)
        if e.epoch in (1, self.total) or e.epoch % step == 0 or now - self.printed_at >= 10:
            click.echo(line)
            self.printed_at, self.last_line = now, line
        else:
            self.last_line = ""  # remember that the newest epoch is not on screen yet

    def message(self, text: str) -> None:
        if self.tty and self.drawn:
            click.echo()
            self.drawn, self.last_line = False, ""
        elif not self.tty and self.last_epoch is not None and not self.last_line:
            click.echo(self._line(self.last_epoch))  # the last epoch before a status change
            self.last_line = "shown"
        click.echo(text)

    def status(self, job) -> None:
        if job.total_epochs:
            self.total = job.total_epochs
        if job.status == "running" and self.last_epoch is not None:
            return  # the epochs already said so (the stream sends a poll's epochs before its status)
        self.message(f"status {job.status}")


def follow_job(client: Client, job_id: str, total: int = 0, after: int = 0):
    """Show a job's progress until it ends; its final state."""
    printer = ProgressPrinter(total)
    final = None
    try:
        for item in client.follow(job_id, after=after):
            if isinstance(item, Job):
                printer.status(item)
                final = item
            else:
                printer.epoch(item)
    except KeyboardInterrupt:
        printer.message(f"stopped following; job {job_id} carries on (backprop jobs show {job_id})")
        sys.exit(130)
    return final or client.get_job(job_id)


def finish(job) -> None:
    """Print how the job ended; exit EXIT_JOB_FAILED unless it succeeded."""
    progress = f"{job.epoch}/{job.total_epochs} epochs"
    if job.status == "succeeded":
        click.echo(f"job {job.id} succeeded ({job.stop_reason or 'completed'}) after {progress}: "
                   f"{_fmt_metrics(job.metrics)}")
        return
    if job.status == "failed":
        click.echo(f"job {job.id} failed after {progress}: {job.error or job.stop_reason or 'no reason given'}",
                   err=True)
    else:
        click.echo(f"job {job.id} {job.status} after {progress}", err=True)
    sys.exit(EXIT_JOB_FAILED)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{what} {path} is not valid JSON: {exc}") from None


def _describe_dataset(ds) -> str:
    shape = "x".join(map(str, ds.shape[1:])) or "?"
    text = f"dataset {ds.id} ({ds.name or ds.source}): {ds.n_samples} samples of {shape} features"
    if ds.class_counts:
        text += ", classes " + ", ".join(f"{k} ({v})" for k, v in ds.class_counts.items())
    elif ds.target_kind:
        text += f", {ds.target_kind} targets"
    return text


def _check_csv_target(path: Path, target: str | None) -> None:
    # not .npy either: the client says what a .npy lacks (the targets), not to add --target
    if path.suffix.lower() not in (".npz", ".npy", ".json") and not target:
        raise click.UsageError(f"{path.name} is a CSV: name its target column with --target COLUMN")


@main.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="SPEC.json")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the training data: .csv (with --target), .npz (features, targets) or .json")
@click.option("--dataset-id", help="train on a dataset already stored (instead of --data)")
@click.option("--target", help="the CSV column holding the targets")
@click.option("--task", type=click.Choice(["classification", "regression", "labels"]),
              help="whether numeric targets are classes (default: guessed); labels: the numbers name "
                   "the classes (wine's 1..3)")
@click.option("--name", help="a name for the uploaded dataset (default: the file name)")
@click.option("--follow", is_flag=True, help="show progress until the job ends; exit 3 unless it succeeds")
@with_client
def train(client: Client, spec_file: Path, data: Path | None, dataset_id: str | None, target: str | None,
          task: str | None, name: str | None, follow: bool) -> None:
    """Upload the data, submit the job in SPEC.json ({"model": ..., "training": ...}), and with
    --follow show its progress until it ends."""
    spec = _read_json(spec_file, "spec")
    if not isinstance(spec, dict):
        raise click.ClickException(f"spec {spec_file} must be a JSON object with model and training")
    extra = sorted(set(spec) - JOB_KEYS)
    if extra:  # e.g. the "description" and "data" of examples/specs/*.json
        click.echo(f"ignoring {', '.join(extra)} in {spec_file.name}: not part of a job", err=True)
        spec = {k: v for k, v in spec.items() if k in JOB_KEYS}
    if data is not None and dataset_id is not None:
        raise click.UsageError("give --data or --dataset-id, not both")
    if (data is not None or dataset_id is not None) and ("dataset" in spec or "dataset_id" in spec):
        raise click.UsageError(f"{spec_file.name} already names its dataset; drop --data / --dataset-id")
    if data is not None:
        _check_csv_target(data, target)
        ds = client.upload_dataset(data, target=target, name=name, task=task)
        click.echo(f"uploaded {_describe_dataset(ds)}")
        dataset_id = ds.id
        try:
            job = client.submit_job(spec, dataset_id=dataset_id)
        except ApiError as exc:
            exc.add_note(f"the dataset stays stored: retry with --dataset-id {ds.id}")
            raise
    else:
        job = client.submit_job(spec, dataset_id=dataset_id)
    click.echo(f"job {job.id} {job.status} ({job.total_epochs} epochs)")
    if not follow:
        click.echo(f"follow it with: backprop jobs follow {job.id}")
        return
    finish(follow_job(client, job.id, job.total_epochs))


@main.group()
def jobs() -> None:
    """List, inspect, follow and cancel training jobs."""


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _take(items, limit: int | None):
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item


@jobs.command("list")
@click.option("--status", help="comma-separated statuses, e.g. running,queued")
@click.option("--dataset-id", help="only jobs trained on this dataset")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="show at most this many")
@click.option("--all", "show_all", is_flag=True, help="every job (all pages)")
@click.option("--json", "as_json", is_flag=True, help="print the jobs as JSON")
@with_client
def jobs_list(client: Client, status: str | None, dataset_id: str | None, limit: int, show_all: bool,
              as_json: bool) -> None:
    """Jobs, newest first."""
    found = list(_take(client.list_jobs(status=status, dataset_id=dataset_id, page_size=min(limit, 200)),
                       None if show_all else limit))
    if as_json:
        _echo_json([j.raw for j in found])
        return
    if not found:
        click.echo("no jobs")
        return
    _table([[j.id, j.status, f"{j.epoch}/{j.total_epochs}", (j.created_at or "")[:19].replace("T", " "),
             _fmt_metrics(j.metrics) or (j.error or "")[:60]] for j in found],
           ["ID", "STATUS", "EPOCHS", "CREATED", "METRICS"])


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the job as the API returns it")
@with_client
def jobs_show(client: Client, job_id: str, as_json: bool) -> None:
    """A job's status, progress, metrics and spec."""
    job = client.get_job(job_id)
    if as_json:
        _echo_json(job.raw)
        return
    layers = job.raw.get("model", {}).get("layers", [])
    fields = [("id", job.id), ("status", job.status), ("progress", f"{job.epoch}/{job.total_epochs} epochs"),
              ("eta", _fmt_seconds(job.eta_seconds) if job.eta_seconds is not None else None),
              ("metrics", _fmt_metrics(job.metrics) or None), ("stop reason", job.stop_reason),
              ("error", job.error), ("dataset", job.dataset_id), ("created", job.created_at),
              ("started", job.started_at), ("finished", job.finished_at), ("attempts", job.attempts),
              ("worker", job.raw.get("worker")), ("model", " -> ".join(
                  str(layer.get("name") or layer.get("type")) for layer in layers) or None),
              ("training", json.dumps(job.raw.get("training"), separators=(",", ":")))]
    for key, value in fields:
        if value is not None:
            click.echo(f"{key + ':':13}{value}")


@jobs.command("follow")
@click.argument("job_id")
@with_client
def jobs_follow(client: Client, job_id: str) -> None:
    """Show a job's progress until it ends; exit 3 unless it succeeds."""
    # the total first: the stream sends the stored epochs before the job's status
    finish(follow_job(client, job_id, total=client.get_job(job_id).total_epochs))


@jobs.command("cancel")
@click.argument("job_id")
@with_client
def jobs_cancel(client: Client, job_id: str) -> None:
    """Cancel a queued or running job (a running one stops within an epoch)."""
    job = client.cancel_job(job_id)
    click.echo(f"job {job.id} {job.status}")


@jobs.command("epochs")
@click.argument("job_id")
@click.option("--max-points", type=click.IntRange(min=2), help="downsample to at most this many epochs")
@click.option("--json", "as_json", is_flag=True, help="print the epochs as JSON")
@with_client
def jobs_epochs(client: Client, job_id: str, max_points: int | None, as_json: bool) -> None:
    """A job's per-epoch loss and metrics."""
    epochs = client.epochs(job_id, max_points=max_points)
    if as_json:
        _echo_json([e.raw for e in epochs])
        return
    if not epochs:
        click.echo("no epochs yet")
        return
    names = list(dict.fromkeys(k for e in epochs for k in e.metrics))
    _table([[str(e.epoch), _fmt_number(e.loss), *(_fmt_number(e.metrics.get(k, "")) for k in names),
             f"{e.duration:.3f}s" if e.duration is not None else ""] for e in epochs],
           ["EPOCH", "LOSS", *(k.upper() for k in names), "DURATION"])


def _is_number(cell: str) -> bool:
    try:
        return plain(cell) and math.isfinite(float(cell))  # nan and inf parse, but JSON cannot carry them
    except ValueError:
        return False


def _csv_rows(path: Path, dataset, header_row: bool | None = None) -> list[list[float]]:
    """Numeric rows from a CSV. A header row is optional (`header_row` None: told from line 1);
    when it names the training data's feature columns, those are taken in training order and
    any other column (say, the target) is ignored."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except UnicodeDecodeError:
        raise click.ClickException(f"{path} is not UTF-8 text (a CSV is expected here)") from None
    if not lines:
        raise click.ClickException(f"{path} has no rows")
    header, pick = None, None
    first = [c.strip() for c in lines[0][1]]
    names = dataset().feature_names
    names_all = bool(names) and all(n in first for n in names)
    if header_row is None:
        if names_all and all(_is_number(c) for c in first):
            # feature names like "0", "1" (pandas' default): line 1 is their names or a row of data
            raise click.ClickException(f"{path}: line 1 could be the header (the feature names are numbers: "
                                       f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) or a row of "
                                       "data; say which with --header or --no-header")
        # line 1 is a header if it names every feature or holds no number at all; one bad cell
        # among numbers is a data row with a mistake, not a header
        header_row = names_all or not any(_is_number(c) for c in first)
    if header_row:
        header = first
        lines = lines[1:]
        if names_all:
            pick = [header.index(n) for n in names]
        elif names:
            # some or none of the columns named (a typo, other names or case): file order could
            # silently swap features
            missing = [n for n in names if n not in header]
            raise click.ClickException(f"{path}: the header does not name the feature(s) {missing} of the "
                                       f"training data ({', '.join(names)}); name every one, or leave the "
                                       "header out to give the columns in that order")
    rows = []
    for n, row in lines:
        if header is not None and len(row) != len(header):  # a short row cannot be read by column name
            raise click.ClickException(f"{path}, line {n}: {len(row)} cells, the header has {len(header)}")
        cells = [row[i] for i in pick] if pick is not None else row
        out = []
        for j, cell in enumerate(cells):
            try:
                value = float(cell) if plain(cell) else None
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                col = header[pick[j] if pick is not None else j] if header and j < len(header) else j + 1
                what = "a number" if value is None else "a finite number"
                raise click.ClickException(f"{path}, line {n}, column {col!r}: {cell!r} is not {what}")
            out.append(value)
        rows.append(out)
    return rows


def _json_rows(path: Path, dataset) -> list:
    data = _read_json(path, "input")
    if isinstance(data, dict):
        data = data.get("inputs", data.get("instances"))
    if not isinstance(data, list):
        raise click.ClickException(f"{path}: expected a list of rows, or an object with inputs")
    if data and all(isinstance(r, dict) for r in data):
        names = dataset().feature_names
        if not names:
            raise click.ClickException(f"{path}: rows are objects but the training data has no feature names")
        missing = sorted({n for r in data for n in names if n not in r})
        if missing:
            raise click.ClickException(f"{path}: rows lack the feature(s) {', '.join(missing)}")
        data = [[r[n] for n in names] for r in data]
    return data


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="rows to predict: .json (a list of rows or of objects by feature name) or CSV")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="write the predictions (and probabilities) here: .json, otherwise CSV")
@click.option("--json", "as_json", is_flag=True, help="print the response as JSON")
@click.option("--header/--no-header", "header_row", default=None,
              help="whether a CSV's first line is a header (default: told from the line, and asked when it "
                   "cannot be)")
@with_client
def predict(client: Client, job_id: str, input_path: Path, output: Path | None, as_json: bool,
            header_row: bool | None) -> None:
    """Predict with a finished job's weights (succeeded, or cancelled after an epoch); one prediction a line."""
    # the job's training data, fetched only when needed: its feature names
    dataset = functools.cache(lambda: client.get_dataset(client.get_job(job_id).dataset_id))
    if input_path.suffix.lower() == ".json":
        rows = _json_rows(input_path, dataset)
    else:
        rows = _csv_rows(input_path, dataset, header_row)
    result = client.predict(job_id, rows)
    if output is not None:
        if output.suffix.lower() == ".json":
            output.write_text(json.dumps({"predictions": result.predictions, "probabilities": result.probabilities,
                                          "classes": result.classes}, indent=1))
        else:
            _write_predictions_csv(output, result)
        click.echo(f"wrote {len(result.predictions)} predictions to {output}")
        return
    if as_json:
        _echo_json(result.raw)
        return
    for p in result.predictions:
        click.echo(p if isinstance(p, str) else json.dumps(p))


def _write_predictions_csv(path: Path, result) -> None:
    """A `prediction` column, then the probabilities: one column per class (named by its
    label when the targets were labels), or for a binary output one, named after the class it
    is the probability of (`probability_1`, or the second label)."""
    probs, labels = result.probabilities, result.classes
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        width = len(probs[0]) if probs and isinstance(probs[0], list) else (1 if probs else 0)
        if width > 1:
            names = labels if labels and len(labels) == width else list(range(width))
            head = [f"probability_{name}" for name in names]
        else:  # a binary output's probability is that of its second class (label 1)
            positive = labels[1] if labels and len(labels) == 2 else 1
            head = [f"probability_{positive}"] * width
        w.writerow(["prediction", *head])
        for i, p in enumerate(result.predictions):
            pr = probs[i] if probs else []
            w.writerow([json.dumps(p) if isinstance(p, list) else _spreadsheet_safe(p),
                        *(pr if isinstance(pr, list) else [pr])])


def _spreadsheet_safe(cell):
    """A class label that a spreadsheet would run as a formula (`=cmd|...`, `@SUM(...)`) gets a
    leading apostrophe, as OWASP advises for CSV exports; numbers, and labels that read as
    numbers ("-1"), are written as they are."""
    if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(cell):
        return "'" + cell
    return cell


@main.command()
@click.argument("job_id", metavar="JOB")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the .npz  [default: job-JOB-weights.npz]")
@with_client
def weights(client: Client, job_id: str, out: Path | None) -> None:
    """Download a job's learned weights as a NumPy .npz (np.load(path, allow_pickle=False))."""
    import io

    import numpy as np

    out = out or Path(f"job-{job_id}-weights.npz")
    data = client.download_weights(job_id, out)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        for name in npz.files:
            a = npz[name]
            click.echo(f"  {name}  {a.dtype}  {list(a.shape)}")
    click.echo(f"wrote {len(data)} bytes to {out}")


@main.group()
def datasets() -> None:
    """Upload and list stored datasets."""


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", help="the CSV column holding the targets")
@click.option("--name", help="default: the file name")
@click.option("--task", type=click.Choice(["classification", "regression", "labels"]),
              help="whether numeric targets are classes (default: guessed); labels: the numbers name "
                   "the classes (wine's 1..3)")
@click.option("--json", "as_json", is_flag=True, help="print the dataset as JSON")
@with_client
def datasets_upload(client: Client, file: Path, target: str | None, name: str | None, task: str | None,
                    as_json: bool) -> None:
    """Store FILE (.csv with --target, .npz with features and targets, or .json); prints its id."""
    _check_csv_target(file, target)
    ds = client.upload_dataset(file, target=target, name=name, task=task)
    if as_json:
        _echo_json(ds.raw)
        return
    click.echo(_describe_dataset(ds))


@datasets.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="show at most this many")
@click.option("--all", "show_all", is_flag=True, help="every dataset (all pages)")
@click.option("--json", "as_json", is_flag=True, help="print the datasets as JSON")
@with_client
def datasets_list(client: Client, limit: int, show_all: bool, as_json: bool) -> None:
    """Datasets, newest first."""
    found = list(_take(client.list_datasets(page_size=min(limit, 200)), None if show_all else limit))
    if as_json:
        _echo_json([d.raw for d in found])
        return
    if not found:
        click.echo("no datasets")
        return
    _table([[d.id, d.name or "", d.source, "x".join(map(str, d.shape)),
             ", ".join(map(str, d.class_labels or [])) or (f"{len(d.class_counts)} classes" if d.class_counts
                                                           else d.target_kind or ""),
             (d.created_at or "")[:19].replace("T", " ")] for d in found],
           ["ID", "NAME", "SOURCE", "SHAPE", "TARGETS", "CREATED"])


if __name__ == "__main__":
    main()
