"""A small Python client for the backprop API, standard library only; the `backprop` command's
client subcommands are a thin layer over it.

    from core.client import Client
    c = Client("http://127.0.0.1:8000", api_key=None)
    ds = c.upload_dataset("iris.csv", target="species")
    job = c.submit_job({"model": ..., "training": ...}, dataset_id=ds.id)
    for item in c.follow(job.id):        # Epoch per finished epoch, Job on each status change
        ...
    job = c.wait(job)                    # a Job or its id, wherever a job is taken
    c.predict(job, rows).predictions

Every failure the server reports becomes an ApiError carrying its RFC 9457 problem details
(status, code, detail, errors); an answer that is not what this API sends is an ApiError with
code invalid_response; an unreachable server is a TransportError. A bad URL, a local file that
cannot be used, or a value JSON cannot carry (NaN, infinity) is a ValueError."""

from __future__ import annotations

import codecs
import http.client
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
USER_AGENT = "backprop-client/0.1"
LARGE_BODY_PAUSES = (1, 2, 4, 8, 8)  # seconds between sends refused as 503 too_many_large_requests


# --- errors -----------------------------------------------------------------------------------

class ClientError(Exception):
    """Anything that stopped a request from succeeding."""


class TransportError(ClientError):
    """The server could not be reached, or the connection broke."""


class ApiError(ClientError):
    """The server answered with an error: its problem details, as sent."""

    def __init__(self, status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None,
                 title: str | None = None, body: dict[str, Any] | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.title = status, code, detail, title
        self.errors = errors or []
        self.body = body or {}

    def lines(self) -> list[str]:
        """The detail, then one `path: message` line per error, for printing."""
        out = [f"error {self.status} ({self.code}): {self.detail}"]
        out += [f"  {e.get('path', '?')}: {e.get('message', '')}" for e in self.errors]
        return out


def error_from_response(status: int, content_type: str | None, body: bytes) -> ApiError:
    """An ApiError from an error response: problem+json fields when the body has them, else
    the start of whatever came back (a proxy's HTML page, say)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and ("detail" in doc or "code" in doc):
        errors = doc.get("errors") if isinstance(doc.get("errors"), list) else []
        errors = [e if isinstance(e, dict) else {"path": "", "message": str(e)} for e in errors]
        return ApiError(status, str(doc.get("code") or f"http_{status}"),
                        str(doc.get("detail") or doc.get("title") or f"HTTP {status}"),
                        errors, doc.get("title"), doc)
    text = body.decode("utf-8", "replace").strip()
    kind = (content_type or "no content type").split(";")[0]
    detail = f"HTTP {status} ({kind})" + (f": {text[:200]}" if text else "")
    # the answer itself stays at hand (a proxy's page, a stack trace), within reason
    return ApiError(status, f"http_{status}", detail, body={"text": text[:4096]} if text else None)


# --- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    id: str
    status: str
    epoch: int
    total_epochs: int
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_epoch: int | None = None  # the epoch `metrics` come from (early stopping: the best)
    stop_reason: str | None = None
    error: str | None = None
    attempts: int = 0
    dataset_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        progress = d.get("progress") or {}
        return cls(id=d["id"], status=d["status"], epoch=int(progress.get("epoch") or 0),
                   total_epochs=int(progress.get("total_epochs") or 0), created_at=d.get("created_at"),
                   started_at=d.get("started_at"), finished_at=d.get("finished_at"),
                   eta_seconds=d.get("eta_seconds"), metrics=dict(d.get("metrics") or {}),
                   metrics_epoch=d.get("metrics_epoch"), stop_reason=d.get("stop_reason"), error=d.get("error"),
                   attempts=int(d.get("attempts") or 0),
                   dataset_id=d.get("dataset_id"), raw=d)


@dataclass(frozen=True)
class Epoch:
    epoch: int
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)  # accuracy, val_loss, val_accuracy, ...
    duration: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Epoch:
        skip = {"epoch", "loss", "duration", "grad_norms", "weight_norms"}
        return cls(epoch=int(d["epoch"]), loss=d["loss"], duration=d.get("duration"),
                   metrics={k: v for k, v in d.items() if k not in skip}, raw=d)


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str | None
    source: str
    n_samples: int
    shape: list[int]
    feature_names: list[str] | None = None
    target_kind: str | None = None
    class_labels: list[Any] | None = None
    class_counts: dict[str, int] | None = None
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Dataset:
        return cls(id=d["id"], name=d.get("name"), source=d.get("source", ""), n_samples=int(d["n_samples"]),
                   shape=list(d.get("shape") or []), feature_names=d.get("feature_names"),
                   target_kind=d.get("target_kind"), class_labels=d.get("class_labels"),
                   class_counts=d.get("class_counts"), created_at=d.get("created_at"), raw=d)


@dataclass(frozen=True)
class Prediction:
    predictions: list[Any]
    probabilities: list[Any] | None = None
    job_id: str | None = None
    classes: list[Any] | None = None  # of each probability column; a one-unit sigmoid's: both, the second's given
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Prediction:
        return cls(predictions=d["predictions"], probabilities=d.get("probabilities"), job_id=d.get("job_id"),
                   classes=d.get("classes"), raw=d)


# --- Server-Sent Events -----------------------------------------------------------------------

@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines ended by CRLF, LF or CR, across arbitrary chunk boundaries."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two chunks
    buf, first = "", True
    for chunk in chunks:
        buf += decoder.decode(chunk)
        if first and buf:
            buf, first = buf.removeprefix("\ufeff"), False
        while True:
            cut = min((i for i in (buf.find("\r"), buf.find("\n")) if i >= 0), default=-1)
            if cut < 0 or (buf[cut] == "\r" and cut == len(buf) - 1):
                break  # no full line yet, or a CR that may be half of a CRLF
            step = 2 if buf.startswith("\r\n", cut) else 1
            yield buf[:cut]
            buf = buf[cut + step:]
    buf += decoder.decode(b"", final=True)
    if buf:
        yield buf.rstrip("\r")


def parse_sse(chunks: Iterable[bytes]) -> Iterator[SseEvent]:
    """The event-stream format (WHATWG HTML, server-sent events): `field: value` lines, a blank
    line dispatches, `:` starts a comment, data lines join with newlines, the id persists. A
    block with no data is not dispatched; `retry` is reported on the next event."""
    event, data, last_id, retry = "", [], None, None
    for line in _lines(chunks):
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data), last_id, retry)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)
    # an unterminated final block is dropped, as the spec says


# --- the client -------------------------------------------------------------------------------

class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30.0,
                 stream_timeout: float = 60.0):
        self.url = (url or os.environ.get("BACKPROP_URL") or DEFAULT_URL).rstrip("/")
        # checked here, not at the first request: urllib's "unknown url type" or an empty reason
        # ("cannot reach ftp://...: ") does not say what is wrong with the URL
        parts = urllib.parse.urlsplit(self.url)
        try:
            port_ok = parts.port is None or 1 <= parts.port <= 65535
        except ValueError:  # not a number, or over 65535
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ValueError(f"--url must be http(s)://host[:port], not {self.url!r}")
        self.api_key = api_key if api_key is not None else os.environ.get("BACKPROP_API_KEY") or None
        self.timeout, self.stream_timeout = timeout, stream_timeout

    # -- plumbing

    def _open(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: bytes | None = None,
              content_type: str | None = None, headers: dict[str, str] | None = None,
              timeout: float | None = None):
        url = self.url + path
        query = {k: v for k, v in (query or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
        if self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        if content_type:
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        timeout = timeout or self.timeout
        try:
            if body is not None and not _proxied(url):
                return self._send(method, url, body, hdrs, timeout)
            req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as err:
            with err:
                raise error_from_response(err.code, err.headers.get("Content-Type"), err.read()) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransportError(f"cannot reach {self.url}: {reason}") from None

    def _send(self, method: str, url: str, body: bytes, hdrs: dict[str, str],
              timeout: float) -> http.client.HTTPResponse:
        """A request with a body, over http.client: a server that refuses a body as too large
        answers 413 before reading it all and closes, which breaks the send; urllib then drops
        the connection with that answer unread, while http.client can still read it."""
        parts = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        # the port spelled out: given None, http.client reads "::1" (an IPv6 host) as host ":" port 1
        conn = kind(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout=timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        broke = False
        try:
            try:
                conn.request(method, target, body, {**hdrs, "Connection": "close"})
            except (BrokenPipeError, ConnectionResetError):
                broke = True  # the server stopped reading: its answer, if it gave one, is still there
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            conn.close()
            if broke:  # no answer either: not "cannot reach", the server was reached
                raise TransportError(f"{self.url}: the server closed the connection during the upload of "
                                     f"{len(body) / 1e6:.1f} MB (over its request size limit?)") from None
            raise
        if not 200 <= resp.status < 300:  # as urllib's HTTPError: the problem details
            with resp:
                raise error_from_response(resp.status, resp.getheader("Content-Type"), resp.read())
        return resp

    def _open_when_read(self, method: str, path: str, **kw):
        """_open, sent again after 1, 2, 4, 8 and 8 s while the server answers 503
        too_many_large_requests: it refused to parse a large body for now and did nothing with
        it, so sending it again is safe, a job submission included."""
        for pause in LARGE_BODY_PAUSES:
            try:
                return self._open(method, path, **kw)
            except ApiError as exc:
                if exc.status != 503 or exc.code != "too_many_large_requests":
                    raise
                time.sleep(pause)
        return self._open(method, path, **kw)

    def _request(self, method: str, path: str, *, parse: Callable[[Any], Any] | None = None, **kw) -> Any:
        """The answer's JSON, or what `parse` makes of it: an answer it cannot take (a KeyError,
        say, from a server that is not this API) is an ApiError, not a traceback."""
        json_body = kw.pop("json", None)
        if json_body is not None:
            kw["body"], kw["content_type"] = _json_bytes(json_body, f"{method} {path}"), "application/json"
        with self._open_when_read(method, path, **kw) as resp:
            status = resp.status
            try:
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise TransportError(f"{method} {path}: the connection broke: {exc!r}") from None
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(status, "invalid_response",
                           f"{method} {path} did not answer JSON: {raw[:200]!r}") from None
        if parse is None:
            return doc
        try:
            return parse(doc)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise ApiError(status, "invalid_response", f"{method} {path}: unexpected answer {raw[:200]!r} "
                           "(is the URL that of a backprop server?)") from None

    def _pages(self, path: str, query: dict[str, Any], key: str, item: Callable[[dict[str, Any]], Any],
               cursor: tuple[str, str] = ("next", "next")) -> Iterator[Any]:
        """The items of every page, fetching the next as the iterator advances. `cursor` names the
        answer's field that points at the next page and the query parameter it goes back in."""
        field_name, param = cursor
        query = dict(query)
        while True:
            items, after = self._request("GET", path, query=query, parse=lambda page: (
                [item(i) for i in page[key]], page.get(field_name)))
            yield from items
            if after is None or after == "":
                return
            query[param] = after

    # -- jobs

    def submit_job(self, spec: dict[str, Any], *, dataset_id: str | Dataset | None = None,
                   idempotency_key: str | None = None) -> Job:
        """POST /v1/jobs. `spec` is the job body ({"model", "training"}, optionally init_from,
        freeze, or an inline dataset); dataset_id, when given, is added to it."""
        body = dict(spec)
        if dataset_id is not None:
            body["dataset_id"] = _id(dataset_id)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/v1/jobs", json=body, headers=headers, parse=Job.from_json)

    def get_job(self, job_id: str | Job) -> Job:
        return self._request("GET", f"/v1/jobs/{_q(_id(job_id))}", parse=Job.from_json)

    def list_jobs(self, *, status: str | list[str] | None = None, dataset_id: str | None = None,
                  page_size: int = 50) -> Iterator[Job]:
        """Every job, newest first, fetching pages (via `next`) as the iterator advances."""
        if isinstance(status, list | tuple):
            status = ",".join(status)
        query = {"status": status, "dataset_id": dataset_id, "limit": page_size}
        yield from self._pages("/v1/jobs", query, "jobs", Job.from_json)

    def cancel_job(self, job_id: str | Job) -> Job:
        return self._request("POST", f"/v1/jobs/{_q(_id(job_id))}/cancel", parse=Job.from_json)

    def epochs(self, job_id: str | Job, *, after: int = 0, max_points: int | None = None) -> list[Epoch]:
        """The job's per-epoch history (every page), or downsampled to max_points."""
        query: dict[str, Any] = {"after": after, "max_points": max_points}
        return list(self._pages(f"/v1/jobs/{_q(_id(job_id))}/epochs", query, "epochs", Epoch.from_json,
                                cursor=("next_after", "after")))

    def events(self, job_id: str | Job, *, after: int = 0) -> Iterator[SseEvent]:
        """One connection to GET /v1/jobs/{id}/events, as raw events."""
        resp = self._open("GET", f"/v1/jobs/{_q(_id(job_id))}/events", query={"after": after or None},
                          headers={"Accept": "text/event-stream"}, timeout=self.stream_timeout)
        with resp:
            yield from parse_sse(iter(lambda: resp.read1(65536), b""))

    def follow(self, job_id: str | Job, *, after: int = 0, reconnect_delay: float = 1.0,
               max_failures: int = 5) -> Iterator[Epoch | Job]:
        """An Epoch for every finished epoch and a Job on every status change, until the job
        ends. An idle or dropped stream is resumed after the last epoch seen. A server that
        cannot be reached, or has no stream to spare (503), is tried again with growing pauses
        (1, 2, 4 and 8 s by default: a restart rides through); TransportError or the ApiError
        after `max_failures` failed attempts in a row."""
        job_id = _id(job_id)
        last, failures = after, 0
        while True:
            delay = reconnect_delay
            try:
                resp = self._open("GET", f"/v1/jobs/{_q(job_id)}/events", query={"after": last or None},
                                  headers={"Accept": "text/event-stream"}, timeout=self.stream_timeout)
            except (TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status != 503:
                    raise
                failures += 1
                if failures >= max_failures:
                    raise
                time.sleep(reconnect_delay * 2 ** (failures - 1))
                continue
            failures = 0
            with resp:
                try:
                    for ev in parse_sse(iter(lambda: resp.read1(65536), b"")):  # noqa: B023 - used at once
                        if ev.retry is not None:
                            delay = ev.retry / 1000
                        if ev.event == "epoch":
                            epoch = Epoch.from_json(ev.json())
                            last = max(last, epoch.epoch)
                            yield epoch
                        elif ev.event == "status":
                            data = ev.json()
                            if data.get("status") == "deleted":
                                raise ApiError(404, "job_not_found", f"job {job_id} was deleted while followed")
                            job = Job.from_json(data)
                            yield job
                            if job.finished:
                                return
                except (OSError, http.client.HTTPException):
                    pass  # idle for stream_timeout (a long queue) or dropped: resume
            time.sleep(min(delay, 5.0))

    def wait(self, job_id: str | Job, timeout: float | None = None, poll: float = 0.5) -> Job:
        """Block until the job has ended; its final state. With a timeout it polls (every
        `poll` seconds), since an event stream says nothing while a job waits in the queue and
        could not be left on time; TimeoutError once `timeout` seconds have passed."""
        job_id = _id(job_id)
        job = self.get_job(job_id)
        if job.finished:
            return job
        if timeout is None:
            for item in self.follow(job_id, after=job.epoch):
                if isinstance(item, Job) and item.finished:
                    return item
            return self.get_job(job_id)  # pragma: no cover - follow only ends on a finished job
        deadline = time.monotonic() + timeout
        while not job.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(min(poll, left))
            job = self.get_job(job_id)
        return job

    def predict(self, job_id: str | Job, rows: Any, chunk_rows: int = 10_000, busy_retries: int = 5) -> Prediction:
        """Sends at most `chunk_rows` rows per request, and halves that while the server finds a
        request too large (BACKPROP_MAX_REQUEST_BYTES, BACKPROP_MAX_PREDICT_VALUES,
        BACKPROP_MAX_PREDICT_COMPUTE): wide rows, many outputs or a deep network need smaller
        requests, which the client cannot know in advance. A server with no prediction to spare
        (503) is asked again after 0.5, 1, 2, 4 and 8 s: a prediction changes nothing, so this
        POST may be repeated. `rows` may be a NumPy array, or lists holding NumPy numbers; NaN
        or infinity is a ValueError before anything is sent."""
        job_id = _id(job_id)
        rows = rows.tolist() if hasattr(rows, "tolist") else list(rows)  # an ndarray, without importing numpy
        parts, start, size, busy = [], 0, chunk_rows, 0
        while True:
            chunk = rows[start:start + size]
            try:
                # each answer read as a Prediction, so a wrong one is an ApiError; its JSON is joined below
                parts.append(self._request("POST", f"/v1/jobs/{_q(job_id)}/predict", json={"inputs": chunk},
                                           parse=lambda d: Prediction.from_json(d).raw))
            except ApiError as exc:
                too_large = exc.status == 413 or (exc.status == 422 and any(
                    limit in (exc.detail or "") for limit in ("MAX_PREDICT_VALUES", "MAX_PREDICT_COMPUTE")))
                if too_large and len(chunk) > 1:
                    size = len(chunk) // 2
                    continue
                if exc.status == 503 and exc.code == "too_many_predictions" and busy < busy_retries:
                    time.sleep(0.5 * 2**busy)
                    busy += 1
                    continue
                raise
            busy = 0
            start += len(chunk)
            if start >= len(rows):
                break
        if len(parts) == 1:
            return Prediction.from_json(parts[0])
        merged = {**parts[0], "predictions": [p for part in parts for p in part["predictions"]]}
        if parts[0].get("probabilities") is not None:
            merged["probabilities"] = [p for part in parts for p in part["probabilities"]]
        return Prediction.from_json(merged)

    def download_weights(self, job_id: str | Job, path: str | os.PathLike | None = None) -> bytes:
        """The learned weights as .npz bytes (one array per layer parameter); written to `path`
        when given, whole or not at all (an existing file stays as it was on failure)."""
        job_id = _id(job_id)
        where = f"GET /v1/jobs/{job_id}/weights"
        with self._open("GET", f"/v1/jobs/{_q(job_id)}/weights", query={"format": "npz"}) as resp:
            try:  # as in _request: a body cut short (IncompleteRead) or a reset is a TransportError
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                raise TransportError(f"{where}: the connection broke: {exc!r}") from None
        if not data.startswith(b"PK\x03\x04"):  # an .npz is a zip; this is, say, a proxy's page
            raise ApiError(resp.status, "invalid_response", f"{where}: not a .npz: {data[:200]!r}")
        try:  # the server streams it: a stream that stopped early ends cleanly through an HTTP/1.0 hop
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            bad = repr(exc)
        if bad is not None:
            raise TransportError(f"{where}: the .npz is cut short or corrupt ({bad}); download it again")
        if path is not None:
            _write_whole(Path(path), data)
        return data

    # -- datasets

    def upload_dataset(self, source: str | os.PathLike | dict[str, Any], *, target: str | None = None,
                       name: str | None = None, task: str | None = None,
                       idempotency_key: str | None = None) -> Dataset:
        """Store a dataset: a .csv file (with `target` naming the target column), a .npz holding
        features and targets, a .json file or a dict with features and targets. The format
        of a file is taken from its suffix."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        query: dict[str, Any] = {"name": name, "task": task}
        if isinstance(source, dict):
            body = {**source, **{k: v for k, v in query.items() if v is not None}}
            return self._request("POST", "/v1/datasets", json=body, headers=headers, parse=Dataset.from_json)
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix == ".json":
            body = {**_read_json_object(path, "an object with features and targets"),
                    **{k: v for k, v in query.items() if v is not None}}
            if not body.get("name"):  # the file's own name, else the file name
                body["name"] = path.name
            return self._request("POST", "/v1/datasets", json=body, headers=headers, parse=Dataset.from_json)
        data = path.read_bytes()
        query["name"] = name or path.name
        if suffix in (".npz", ".npy"):
            if suffix == ".npy":
                raise ValueError("a .npy holds only features: save features and targets together in a .npz")
            if not data.startswith(b"PK"):  # not a zip: the server would take it for a CSV and ask for a target
                raise ValueError(f"{path} is not a .npz (zip) file")
            body, ctype = multipart({"name": query["name"], "task": task},
                                    {"file": (path.name, data, "application/octet-stream")})
            return self._request("POST", "/v1/datasets", body=body, content_type=ctype, headers=headers,
                                 parse=Dataset.from_json)
        query["target"] = target
        return self._request("POST", "/v1/datasets", query=query, body=data, content_type="text/csv; charset=utf-8",
                             headers=headers, parse=Dataset.from_json)

    def list_datasets(self, *, page_size: int = 50) -> Iterator[Dataset]:
        yield from self._pages("/v1/datasets", {"limit": page_size}, "datasets", Dataset.from_json)

    def get_dataset(self, dataset_id: str | Dataset) -> Dataset:
        return self._request("GET", f"/v1/datasets/{_q(_id(dataset_id))}", parse=Dataset.from_json)


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _id(item: str | Job | Dataset) -> str:
    """Methods take a Job (or Dataset), as submit_job returns it, or its id."""
    return item.id if isinstance(item, Job | Dataset) else item


def _proxied(url: str) -> bool:
    """Whether http(s)_proxy applies to the URL: then urllib, which knows proxies, sends the request."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


def _plain(value: Any) -> Any:
    """json.dumps's fallback: NumPy arrays and numbers have tolist() (the client does not import numpy)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_bytes(doc: Any, what: str) -> bytes:
    try:
        return json.dumps(doc, allow_nan=False, default=_plain).encode()
    except ValueError as exc:  # json.dumps would write NaN, which the server refuses as invalid JSON
        if "Out of range float" not in str(exc):
            raise
        raise ValueError(f"{what}: the request holds NaN or infinity, which JSON cannot carry") from None


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a key given twice is an error (the API answers 400 for it), not the last one."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


_JSON_TYPES = {"list": "array", "str": "string", "int": "number", "float": "number", "bool": "boolean",
              "NoneType": "null"}


def _read_json_object(path: str | os.PathLike, expected: str) -> dict[str, Any]:
    """A local JSON file holding an object: a ValueError naming the file and what was `expected`
    when it is not UTF-8, empty, not JSON, has a key twice, or holds something else."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); expected JSON, {expected}") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; expected JSON, {expected}")
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:
        raise ValueError(f"{path}: the key {exc.args[0]!r} is given twice in one object") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a JSON {_JSON_TYPES.get(type(doc).__name__, type(doc).__name__)}, "
                         f"where {expected} was expected")
    return doc


def _write_whole(path: Path, data: bytes) -> None:
    """Write via a file beside `path`, then rename it into place: a write that fails leaves
    neither a partial file nor a changed one. (Not tempfile.mkstemp: its file is private, 0600.)"""
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with part.open("xb") as f:
            f.write(data)
        os.replace(part, path)
    except OSError as exc:  # named by the file asked for, not by the temporary one
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    finally:
        part.unlink(missing_ok=True)  # gone already once renamed


def multipart(fields: dict[str, str | None], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = f"backprop-{uuid.uuid4().hex}"
    out = bytearray()
    for key, value in fields.items():
        if value is None:
            continue
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"\r\n\r\n{value}\r\n").encode()
    for key, (filename, data, ctype) in files.items():
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{key}\"; filename=\"{safe}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


__all__ = ["ApiError", "Client", "ClientError", "Dataset", "Epoch", "Job", "Prediction", "SseEvent",
           "TransportError", "error_from_response", "parse_sse"]
