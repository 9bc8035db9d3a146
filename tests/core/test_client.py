"""core/client.py without the service: the SSE parser on canned byte streams, problem details
mapped to ApiError, and the client against a small stdlib HTTP server that plays the API
(paging, errors, an event stream that drops and is resumed)."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import click
import numpy as np
import pytest
from click.testing import CliRunner

from core.cli import ProgressPrinter, _csv_rows, main
from core.client import ApiError, Client, Epoch, Job, TransportError, error_from_response, parse_sse

# what app/jobs.py's job_events sends, byte for byte in form
SERVER_STREAM = (
    b"retry: 2000\n\n"
    b'event: status\ndata: {"id":"j1","status":"running","progress":{"epoch":0,"total_epochs":2}}\n\n'
    b'id: 1\nevent: epoch\ndata: {"epoch":1,"loss":0.9,"accuracy":0.5,"duration":0.01,'
    b'"grad_norms":{},"weight_norms":{}}\n\n'
    b'id: 2\nevent: epoch\ndata: {"epoch":2,"loss":0.4,"val_loss":0.5,"duration":0.02,'
    b'"grad_norms":{},"weight_norms":{}}\n\n'
    b'event: status\ndata: {"id":"j1","status":"succeeded","progress":{"epoch":2,"total_epochs":2},'
    b'"metrics":{"loss":0.4}}\n\n'
)


def chunked(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_sse_parser_reads_the_server_stream_at_any_chunking(size):
    events = list(parse_sse(chunked(SERVER_STREAM, size)))
    assert [e.event for e in events] == ["status", "epoch", "epoch", "status"]
    assert [e.id for e in events] == [None, "1", "2", "2"]  # the last id persists
    assert events[0].retry == 2000  # a retry-only block is not an event; it rides on the next one
    assert events[2].json()["val_loss"] == 0.5


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
@pytest.mark.parametrize("size", [1, 5, 1000])
def test_sse_parser_line_endings(newline, size):
    stream = SERVER_STREAM.replace(b"\n", newline)
    assert [e.event for e in parse_sse(chunked(stream, size))] == ["status", "epoch", "epoch", "status"]


def test_sse_parser_fields_comments_and_multiline_data():
    stream = ("\ufeff: a comment, ignored\n"
              "data: first\ndata:second\ndata:  two spaces\n\n"  # one leading space is stripped
              "event: empty\n\n"  # no data: not dispatched
              "event: x\ndata\n\n"  # a field name alone means an empty value
              "id: 7\nbogus: field\nevent: é\ndata: ünïcode\n\n"
              "data: unterminated").encode()
    events = list(parse_sse(chunked(stream, 1)))  # the é and ü are split across chunks too
    assert [(e.event, e.data, e.id) for e in events] == [
        ("message", "first\nsecond\n two spaces", None),
        ("x", "", None),
        ("é", "ünïcode", "7"),
    ]


def test_problem_details_become_api_errors():
    body = json.dumps({"type": "https://backprop.dev/problems/validation_error", "title": "Unprocessable content",
                       "status": 422, "code": "validation_error", "detail": "model.layers[0].units: must be >= 1",
                       "errors": [{"path": "model.layers[0].units", "message": "must be >= 1"},
                                  {"path": "training.epochs", "message": "must be >= 1"}]}).encode()
    err = error_from_response(422, "application/problem+json", body)
    assert (err.status, err.code, err.title) == (422, "validation_error", "Unprocessable content")
    assert err.detail == "model.layers[0].units: must be >= 1"
    assert err.errors[1] == {"path": "training.epochs", "message": "must be >= 1"}
    assert err.lines() == ["error 422 (validation_error): model.layers[0].units: must be >= 1",
                           "  model.layers[0].units: must be >= 1", "  training.epochs: must be >= 1"]
    assert err.body["type"].endswith("validation_error")


def test_errors_that_are_not_problem_details():
    html = error_from_response(502, "text/html", b"<html>Bad Gateway</html>")
    assert (html.status, html.code, html.errors) == (502, "http_502", [])
    assert "Bad Gateway" in html.detail and "text/html" in html.detail
    assert error_from_response(500, None, b"").detail == "HTTP 500 (no content type)"
    other = error_from_response(400, "application/json", b'{"message": "nope"}')
    assert other.code == "http_400" and "nope" in other.detail
    no_detail = error_from_response(401, "application/problem+json", b'{"code": "unauthorized"}')
    assert (no_detail.code, no_detail.detail) == ("unauthorized", "HTTP 401")


def test_an_error_that_is_not_json_keeps_its_text_in_the_body():
    """body was {}: a proxy's page or a stack trace was lost beyond the 200 characters of detail."""
    page = error_from_response(502, "text/html", b"<html>Bad Gateway</html>")
    assert page.body == {"text": "<html>Bad Gateway</html>"}
    long = error_from_response(500, "text/plain", b"x" * 100_000)
    assert long.body["text"] == "x" * 4096  # a few KB at most
    assert error_from_response(500, None, b"").body == {}


def test_typed_results():
    job = Job.from_json({"id": "j", "status": "running", "progress": {"epoch": 3, "total_epochs": 10},
                         "eta_seconds": 1.5, "metrics": {"loss": 0.2}, "dataset_id": "d"})
    assert (job.epoch, job.total_epochs, job.finished, job.metrics) == (3, 10, False, {"loss": 0.2})
    epoch = Epoch.from_json({"epoch": 2, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.6, "duration": 0.1,
                             "grad_norms": {"d": 1.0}, "weight_norms": {"d": 2.0}})
    assert epoch.metrics == {"accuracy": 0.9, "val_loss": 0.6} and epoch.raw["grad_norms"] == {"d": 1.0}


# --- against a fake API ------------------------------------------------------------------------

class FakeApi(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict[str, str]]] = []
    busy = 0  # predictions asked of /v1/jobs/busy

    def log_message(self, *args):
        pass

    def send(self, status: int, body: dict, ctype: str = "application/json"):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append(("GET", self.path, dict(self.headers)))
        if url.path == "/v1/jobs":
            ids = {None: (["a", "b"], "c1"), "c1": (["c"], None)}[q.get("next")]
            return self.send(200, {"jobs": [job(i, "succeeded") for i in ids[0]], "next": ids[1]})
        if url.path == "/v1/jobs/j1/events":
            return self.events(int(q.get("after", 0)))
        if url.path == "/v1/jobs/busy/events":  # no stream to spare twice, then one
            if sum(p == self.path for _, p, _ in self.requests) <= 2:
                return self.send(503, {"status": 503, "code": "too_many_streams", "detail": "busy"},
                                 "application/problem+json")
            return self.events(2)
        if url.path == "/v1/jobs/j1":
            return self.send(200, {**job("j1", "running"), "progress": {"epoch": 3, "total_epochs": 4}})
        if url.path == "/v1/jobs/missing":
            return self.send(404, {"status": 404, "code": "job_not_found", "detail": "no job with id 'missing'"},
                             "application/problem+json")
        if url.path == "/v1/jobs/j1/weights":
            return self.raw(200, WEIGHTS_NPZ, "application/octet-stream")
        if url.path == "/v1/jobs/half/weights":  # ends cleanly half way (the server's stream stopped, HTTP/1.0)
            return self.raw(200, WEIGHTS_NPZ[:len(WEIGHTS_NPZ) // 2], "application/octet-stream")
        if url.path == "/v1/jobs/cut/weights":  # says 1000 bytes, sends 20 and hangs up
            return self.raw(200, b"PK\x03\x04" + b"x" * 16, "application/octet-stream", length=1000)
        if url.path == "/v1/jobs/page/weights":  # a proxy's page, say
            return self.raw(200, b"<html>sign in</html>", "text/html")
        self.send(500, {"oops": True})

    def raw(self, status: int, data: bytes, ctype: str, length: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length or len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, dict(self.headers)))
        if self.path == "/v1/jobs/j1/predict":  # a classifier: the label is the row's first value
            rows = body["inputs"]
            if len(rows) > 6:  # what a server with a low BACKPROP_MAX_PREDICT_VALUES answers
                return self.send(422, {"status": 422, "code": "validation_error", "detail":
                                       f"{len(rows)} rows x 2 outputs; the limit is 12 (BACKPROP_MAX_PREDICT_VALUES)"},
                                 "application/problem+json")
            if len(rows) > 3:  # and one whose body limit is low
                return self.send(413, {"status": 413, "code": "request_too_large", "detail": "too large"},
                                 "application/problem+json")
            return self.send(200, {"predictions": [r[0] for r in rows], "probabilities": [[0.5, 0.5]] * len(rows),
                                   "job_id": "j1"})
        if self.path == "/v1/jobs/deep/predict":  # a deep network: at most 2 rows' worth of compute
            rows = body["inputs"]
            if len(rows) > 2:
                return self.send(422, {"status": 422, "code": "validation_error", "detail":
                                       f"inputs: {len(rows)} rows x 1e9 multiply-adds each; the limit is 2e9 per "
                                       "request (BACKPROP_MAX_PREDICT_COMPUTE): send at most 2 rows at a time"},
                                 "application/problem+json")
            return self.send(200, {"predictions": [r[0] for r in rows], "job_id": "deep"})
        if self.path == "/v1/jobs/busy/predict":  # every prediction slot taken twice, then free
            FakeApi.busy += 1
            if FakeApi.busy <= 2:
                return self.send(503, {"status": 503, "code": "too_many_predictions", "detail": "busy"},
                                 "application/problem+json")
            return self.send(200, {"predictions": [r[0] for r in body["inputs"]], "job_id": "busy"})
        if self.path == "/v1/datasets" and body.get("name") == "crowded":  # no large-body slot free, twice
            FakeApi.busy += 1
            if FakeApi.busy <= 2:
                return self.send(503, {"status": 503, "code": "too_many_large_requests", "detail": "busy"},
                                 "application/problem+json")
        if self.path == "/v1/datasets":  # a JSON upload: the dataset it makes, named as asked
            return self.send(201, {"id": "d1", "name": body.get("name"), "source": "json",
                                   "n_samples": len(body["features"]), "shape": [len(body["features"]), 1]})
        self.send(500, {"oops": True})

    def events(self, after: int):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"retry: 10\n\n")
        if after == 0:  # the first connection sends two epochs, then drops
            for n in (1, 2):
                self.wfile.write(epoch_event(n))
            self.wfile.write(b'id: 3\nevent: epoch\ndata: {"epo')  # cut mid-event
            self.wfile.flush()
            self.close_connection = True
            return
        for n in range(after + 1, 5):
            self.wfile.write(epoch_event(n))
        self.wfile.write(b"event: status\ndata: " + json.dumps(job("j1", "succeeded")).encode() + b"\n\n")
        self.close_connection = True


def job(ident: str, status: str) -> dict:
    return {"id": ident, "status": status, "progress": {"epoch": 4, "total_epochs": 4}}


def epoch_event(n: int) -> bytes:
    return f'id: {n}\nevent: epoch\ndata: {{"epoch": {n}, "loss": {1 / n}, "duration": 0.01}}\n\n'.encode()


def serve(handler: type[BaseHTTPRequestHandler]):
    """A local HTTP server with this handler, for as long as the generator runs: its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fake_api():
    FakeApi.requests, FakeApi.busy = [], 0
    yield from serve(FakeApi)


def test_list_jobs_follows_next_and_sends_the_key(fake_api):
    client = Client(fake_api, api_key="bp_k_secret")
    assert [j.id for j in client.list_jobs(page_size=2)] == ["a", "b", "c"]
    pages = [path for method, path, _ in FakeApi.requests]
    assert pages == ["/v1/jobs?limit=2", "/v1/jobs?limit=2&next=c1"]
    assert all(h["Authorization"] == "Bearer bp_k_secret" for _, _, h in FakeApi.requests)


def test_server_errors_raise_api_error(fake_api):
    client = Client(fake_api, api_key="")
    with pytest.raises(ApiError) as err:
        client.get_job("missing")
    assert (err.value.status, err.value.code, err.value.detail) == (404, "job_not_found", "no job with id 'missing'")
    assert "Authorization" not in FakeApi.requests[-1][2]
    with pytest.raises(ApiError) as err:
        client.get_job("boom")
    assert err.value.status == 500 and err.value.code == "http_500"


def test_follow_resumes_after_the_last_epoch_when_the_stream_drops(fake_api):
    items = list(Client(fake_api).follow("j1"))
    assert [i.epoch for i in items if isinstance(i, Epoch)] == [1, 2, 3, 4]
    assert isinstance(items[-1], Job) and items[-1].status == "succeeded"
    assert [p for _, p, _ in FakeApi.requests] == ["/v1/jobs/j1/events", "/v1/jobs/j1/events?after=2"]


def test_follow_rides_through_a_busy_or_unreachable_server(fake_api):
    items = list(Client(fake_api).follow("busy", reconnect_delay=0.01))
    assert [i.epoch for i in items if isinstance(i, Epoch)] == [3, 4] and items[-1].status == "succeeded"
    FakeApi.requests = []  # busy again
    with pytest.raises(ApiError) as err:
        list(Client(fake_api).follow("busy", reconnect_delay=0.01, max_failures=1))
    assert err.value.status == 503
    started = time.monotonic()
    with pytest.raises(TransportError):
        list(Client("http://127.0.0.1:9", timeout=1).follow("x", reconnect_delay=0.05, max_failures=4))
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # growing pauses between attempts


def test_wait_returns_the_final_job_following_from_its_current_epoch(fake_api):
    final = Client(fake_api).wait("j1")
    assert (final.id, final.status, final.finished) == ("j1", "succeeded", True)
    assert [p for _, p, _ in FakeApi.requests] == ["/v1/jobs/j1", "/v1/jobs/j1/events?after=3"]


def test_wait_with_a_timeout_gives_up_on_time_while_nothing_happens(fake_api):
    """An event stream says nothing while a job waits in the queue, so a timeout checked between
    its events was never checked: wait(timeout=3) blocked for as long as the job queued."""
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still running after 0.3 s"):
        Client(fake_api).wait("j1", timeout=0.3, poll=0.05)  # j1 stays running when asked directly
    assert time.monotonic() - started < 2
    assert {p for _, p, _ in FakeApi.requests} == {"/v1/jobs/j1"}


def test_unreachable_server_is_a_transport_error():
    with pytest.raises(TransportError, match="cannot reach"):
        Client("http://127.0.0.1:9", timeout=2).get_job("x")


def test_progress_printer_plain_lines_and_terminal(capsys):
    plain = ProgressPrinter(total=100, tty=False)
    for n in range(1, 101):
        plain.epoch(Epoch(epoch=n, loss=1 / n, metrics={"val_accuracy": 0.5}, duration=0.5))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/100  loss 1  val_accuracy 0.5  eta 50s")
    assert lines[-1].startswith("epoch 100/100") and len(lines) == 21  # epoch 1, then every 5th
    plain.message("status succeeded")
    assert capsys.readouterr().out == "status succeeded\n"

    tty = ProgressPrinter(total=4, tty=True, width=4)
    tty.epoch(Epoch(epoch=1, loss=0.5, duration=60.0))
    tty.epoch(Epoch(epoch=4, loss=0.25, duration=60.0))
    tty.status(Job(id="j", status="succeeded", epoch=4, total_epochs=4))
    out = capsys.readouterr().out
    assert out.startswith("\r[#...] epoch 1/4  loss 0.5  eta 3m00s\r[####] epoch 4/4  loss 0.25  eta 0s ")
    assert out.endswith("\nstatus succeeded\n")


@pytest.mark.parametrize("labels, column", [(["ja", "nein"], "probability_nein"), (None, "probability_1")])
def test_a_binary_predictions_csv_names_the_class_its_probability_is_of(tmp_path, labels, column):
    """A sigmoid output's probability is P(second class): a column called just `probability`
    beside a predicted first label read as that label's probability."""
    import csv

    from core.cli import _write_predictions_csv
    from core.client import Prediction

    out = tmp_path / "p.csv"
    first, second = labels or [0, 1]
    _write_predictions_csv(out, Prediction(predictions=[first, second], probabilities=[0.2, 0.9],
                                           classes=labels or [0, 1]))
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction", column]
    assert rows[1:] == [[str(first), "0.2"], [str(second), "0.9"]]


def test_predict_sends_large_inputs_in_chunks_and_joins_the_answers(fake_api):
    """The server bounds a predict request (body bytes, rows x outputs): a large file goes in
    requests of chunk_rows rows, answered as one prediction in the rows' order."""
    rows = [[i, 0] for i in range(25)]
    result = Client(fake_api).predict("j1", rows, chunk_rows=3)
    assert result.predictions == list(range(25)) and len(result.probabilities) == 25
    assert len(FakeApi.requests) == 9
    assert Client(fake_api).predict("j1", rows[:3]).predictions == [0, 1, 2]
    assert len(FakeApi.requests) == 10
    # a server that finds 10 rows (422) and 5 (413) too many: the client halves to 2 and goes on
    FakeApi.requests = []
    result = Client(fake_api).predict("j1", rows, chunk_rows=10)
    assert result.predictions == list(range(25))
    assert len(FakeApi.requests) == 2 + 13


def record_client_sleeps(monkeypatch, slept: list) -> None:
    """time.sleep, patched, records the test's own sleeps (this thread's) instead of sleeping. The
    patch is the time module's, so any thread calls it: a server thread an earlier test left
    polling in the background (an event stream sleeps 0.5 s between polls) would otherwise add
    its sleeps to the list and spin without pausing."""
    real_sleep, test_thread = time.sleep, threading.current_thread()

    def sleep(seconds):
        if threading.current_thread() is test_thread:
            slept.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr("core.client.time.sleep", sleep)


def test_predict_halves_for_the_compute_limit_and_waits_out_a_busy_server(fake_api, monkeypatch):
    """A deep network's rows cost compute (BACKPROP_MAX_PREDICT_COMPUTE): halved like the other
    limits. A server with no prediction slot free (503 too_many_predictions) is asked again:
    a prediction changes nothing, so repeating it is safe."""
    rows = [[i, 0] for i in range(7)]
    assert Client(fake_api).predict("deep", rows).predictions == list(range(7))
    slept = []
    record_client_sleeps(monkeypatch, slept)
    assert Client(fake_api).predict("busy", rows[:3]).predictions == [0, 1, 2]
    assert slept == [0.5, 1.0]
    FakeApi.busy = -10  # busy for longer than the client waits: the 503 is raised
    with pytest.raises(ApiError) as err:
        Client(fake_api).predict("busy", rows[:3], busy_retries=3)
    assert err.value.status == 503 and err.value.code == "too_many_predictions"


def test_a_large_body_the_server_cannot_parse_now_is_sent_again(fake_api, monkeypatch):
    """503 too_many_large_requests: the server parsed nothing, so the same request goes again."""
    slept = []
    record_client_sleeps(monkeypatch, slept)
    ds = Client(fake_api).upload_dataset({"features": [[1.0], [2.0]], "targets": [0, 1]}, name="crowded")
    assert ds.id == "d1" and slept == [1, 2]
    assert [path for method, path, _ in FakeApi.requests if method == "POST"] == ["/v1/datasets"] * 3
    FakeApi.busy = -10  # busy for longer than the client waits: the 503 is raised
    with pytest.raises(ApiError) as err:
        Client(fake_api).upload_dataset({"features": [[1.0], [2.0]], "targets": [0, 1]}, name="crowded")
    assert err.value.code == "too_many_large_requests"


# --- defects found in review ----------------------------------------------------------------------

def csv_rows(tmp_path, text: str, names: list[str] | None, header_row: bool | None = None):
    path = tmp_path / "f.csv"
    path.write_text(text)
    return _csv_rows(path, lambda: SimpleNamespace(feature_names=names), header_row)


FOUR = ["a", "b", "c", "d"]


def test_a_csv_row_shorter_than_its_header_is_named(tmp_path):
    """It was an IndexError traceback: the row was read by the header's column positions."""
    with pytest.raises(click.ClickException) as err:
        csv_rows(tmp_path, "d,c,b,a\n1,2,3,4\n1,2,3\n", FOUR)
    assert err.value.message == f"{tmp_path / 'f.csv'}, line 3: 3 cells, the header has 4"


@pytest.mark.parametrize("names", [FOUR, None])
def test_a_first_row_with_one_bad_number_is_not_taken_for_a_header(tmp_path, names):
    """It was dropped silently as a header: one row fewer predicted, and exit 0."""
    with pytest.raises(click.ClickException) as err:
        csv_rows(tmp_path, "1,2,x,4\n5,6,7,8\n", names)
    assert err.value.message == f"{tmp_path / 'f.csv'}, line 1, column 3: 'x' is not a number"
    if names is None:  # no number at all: a header, and the columns in file order
        assert csv_rows(tmp_path, "p,q,r,s\n5,6,7,8\n", names) == [[5, 6, 7, 8]]
    else:  # naming none of the training data's features: refused, not read in file order
        with pytest.raises(click.ClickException, match="does not name the feature"):
            csv_rows(tmp_path, "p,q,r,s\n5,6,7,8\n", names)


def test_number_like_feature_names_make_line_1_ambiguous_until_told(tmp_path):
    """Feature names "0".."3" (pandas' default) look like numbers: line 1 "3,2,1,0" is their names
    or a row of data. Read as data, the header went to the server as a row; read as a header, a
    row of data was dropped and the others reordered. Nothing can tell, so the user says."""
    names = ["0", "1", "2", "3"]
    with pytest.raises(click.ClickException, match="could be the header .* --header or --no-header"):
        csv_rows(tmp_path, "3,2,1,0\n30,20,10,0\n", names)
    assert csv_rows(tmp_path, "3,2,1,0\n30,20,10,0\n", names, header_row=True) == [[0, 10, 20, 30]]
    assert csv_rows(tmp_path, "3,2,1,0\n30,20,10,0\n", names, header_row=False) == [[3, 2, 1, 0], [30, 20, 10, 0]]
    assert csv_rows(tmp_path, "3,2,1,5\n30,20,10,0\n", names) == [[3, 2, 1, 5], [30, 20, 10, 0]]  # not all named


@pytest.mark.parametrize("cell", ["1_000", "\u0661\u0662", "\uff11"])
def test_cells_only_python_reads_as_numbers_are_refused_locally(tmp_path, cell):
    """1_000 and digits of other scripts went to the server as 1000.0 and 12.0, where an upload
    of the same cell is a 422."""
    with pytest.raises(click.ClickException, match="is not a number"):
        csv_rows(tmp_path, f"1,2,3,{cell}\n", None)


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity"])
def test_nan_and_inf_cells_are_refused_locally(tmp_path, cell):
    """They went to the server, whose answer was `400 (invalid_json): ... NaN is not valid JSON`."""
    with pytest.raises(click.ClickException) as err:
        csv_rows(tmp_path, f"1,2,3,{cell}\n", FOUR)
    assert err.value.message == f"{tmp_path / 'f.csv'}, line 1, column 4: {cell!r} is not a finite number"
    with pytest.raises(click.ClickException, match="column 'b': 'nan' is not a finite number"):
        csv_rows(tmp_path, "b,a,c,d\n1,2,3,4\nnan,1,2,3\n", FOUR)


def test_predict_refuses_nan_before_sending(fake_api):
    with pytest.raises(ValueError, match="/v1/jobs/j1/predict: the request holds NaN or infinity"):
        Client(fake_api).predict("j1", [[1.0, float("nan")]])
    assert FakeApi.requests == []


def test_predict_takes_numpy_arrays_and_numbers(fake_api):
    """json.dumps raised TypeError: ndarray (or float32) is not JSON serializable."""
    client = Client(fake_api)
    assert client.predict("j1", np.zeros((2, 4))).predictions == [0.0, 0.0]
    assert client.predict("j1", [[np.float32(1.5), np.int64(2)], np.array([3, 4])]).predictions == [1.5, 3]
    with pytest.raises(ValueError, match="NaN or infinity"):
        client.predict("j1", np.array([[np.inf, 1.0]], dtype=np.float32))


@pytest.fixture
def wrong_api():
    """Something that answers 200 with JSON that is not this API's: a wrong --url."""

    class Wrong(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b'{"foo":1}')

    yield from serve(Wrong)


def test_an_answer_of_the_wrong_shape_is_an_api_error(wrong_api):
    """Job/Epoch/Dataset.from_json raised KeyError tracebacks."""
    client = Client(wrong_api)
    calls = {"/v1/jobs": lambda: list(client.list_jobs()), "/v1/jobs/j": lambda: client.get_job("j"),
             "/v1/jobs/j/epochs": lambda: client.epochs("j"), "/v1/datasets": lambda: list(client.list_datasets()),
             "/v1/datasets/d": lambda: client.get_dataset("d")}
    for path, call in calls.items():
        with pytest.raises(ApiError) as err:
            call()
        assert (err.value.status, err.value.code) == (200, "invalid_response")
        assert err.value.detail.startswith(f"GET {path}: unexpected answer b'{{\"foo\":1}}'"), err.value.detail

    run = CliRunner().invoke(main, ["jobs", "list", "--url", wrong_api])
    assert run.exit_code == 1, run.output
    assert run.stderr.startswith("error 200 (invalid_response): GET /v1/jobs: unexpected answer")
    assert len(run.stderr.splitlines()) == 1


def test_a_send_cut_off_by_the_server_says_so(tmp_path):
    """A server that closes during an upload without answering: not `cannot reach ...: Broken pipe`
    (the answer the server does give, a 413, is read: tests/e2e/test_cli.py)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.close()  # with the rest unread: a reset

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    big = tmp_path / "huge.csv"
    big.write_bytes(b"x,y\n" + b"1.5,0\n" * 4_000_000)  # 24 MB: more than the socket buffers hold
    try:
        with pytest.raises(TransportError) as err:
            Client(f"http://127.0.0.1:{listener.getsockname()[1]}").upload_dataset(big, target="y")
    finally:
        thread.join(5)
        listener.close()
    assert "the server closed the connection during the upload of 24.0 MB (over its request size limit?)" \
        in str(err.value)


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


WEIGHTS_NPZ = _npz(**{"dense_0/kernel": np.arange(12.0).reshape(3, 4), "dense_0/bias": np.zeros(4)})


def test_weights_are_checked_and_written_whole(fake_api, tmp_path):
    """A body cut short raised http.client.IncompleteRead, and any 200 answer was written as the .npz."""
    out = tmp_path / "w.npz"
    out.write_bytes(b"old")
    client = Client(fake_api)
    with pytest.raises(TransportError, match="GET /v1/jobs/cut/weights: the connection broke"):
        client.download_weights("cut", out)
    with pytest.raises(ApiError) as err:
        client.download_weights("page", out)
    assert err.value.code == "invalid_response" and "not a .npz: b'<html>sign in" in err.value.detail
    assert out.read_bytes() == b"old"
    with pytest.raises(TransportError, match="GET /v1/jobs/half/weights: the .npz is cut short or corrupt"):
        client.download_weights("half", out)  # a stream that stopped early reads as a whole body over HTTP/1.0
    assert out.read_bytes() == b"old"
    assert client.download_weights("j1", out) == out.read_bytes() == WEIGHTS_NPZ
    assert [f.name for f in tmp_path.iterdir()] == ["w.npz"]  # no temporary file left


def test_weights_a_write_that_fails_leaves_the_file_as_it_was(fake_api, tmp_path, monkeypatch):
    """Written in place, a full disk left half an .npz where the old file was."""
    real_open = Path.open

    class DiskFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    def open_(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return DiskFull(f) if mode in ("wb", "xb") else f

    out = tmp_path / "w.npz"
    out.write_bytes(b"old")
    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(OSError, match="No space left"):
        Client(fake_api).download_weights("j1", out)
    assert out.read_bytes() == b"old" and [f.name for f in tmp_path.iterdir()] == ["w.npz"]


def test_a_json_upload_keeps_its_own_name_and_refuses_a_key_twice(fake_api, tmp_path):
    client = Client(fake_api)
    data = {"features": [[1], [2]], "targets": [0, 1]}
    (tmp_path / "named.json").write_text(json.dumps({"name": "mine", **data}))
    (tmp_path / "unnamed.json").write_text(json.dumps(data))
    assert client.upload_dataset(tmp_path / "named.json").name == "mine"  # was "named.json"
    assert client.upload_dataset(tmp_path / "named.json", name="other").name == "other"
    assert client.upload_dataset(tmp_path / "unnamed.json").name == "unnamed.json"

    (tmp_path / "twice.json").write_text('{"features": [[1]], "targets": [0], "features": [[2]]}')
    with pytest.raises(ValueError, match=r"twice.json: the key 'features' is given twice"):
        client.upload_dataset(tmp_path / "twice.json")
    assert len(FakeApi.requests) == 3


@pytest.mark.parametrize("content, problem", [
    (b"[1, 2]", "a JSON array, where an object with features and targets was expected"),
    (b'{"features": ', "not valid JSON (Expecting value: line 1 column 14 (char 13)); expected an object"),
    (b"", "the file is empty; expected JSON, an object with features and targets"),
    (b" \n", "the file is empty"),
    ('{"name": "\xe9"}'.encode("latin-1"), "not UTF-8 text (byte 10); expected JSON, an object with features"),
])
def test_an_unusable_json_file_is_named(tmp_path, content, problem):
    """The messages did not name the file: `'list' object is not a mapping`, a bare JSONDecodeError."""
    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        Client("http://127.0.0.1:9").upload_dataset(path)
    assert str(err.value).startswith(f"{path}: {problem}"), str(err.value)


def test_a_file_named_npz_that_is_not_a_zip_is_refused(tmp_path):
    """It was sent, and the server took it for a CSV: a 422 about the CSV's target."""
    (tmp_path / "junk.npz").write_bytes(b"notazip\n")
    with pytest.raises(ValueError, match="junk.npz is not a .npz \\(zip\\) file"):
        Client("http://127.0.0.1:9").upload_dataset(tmp_path / "junk.npz")


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1:8000", "http://127.0.0.1:99999", "http://127.0.0.1:0",
                                 "http://127.0.0.1:port", "http://:8000", "127.0.0.1:8000"])
def test_a_url_that_is_not_http_is_refused_at_once(url):
    """`unknown url type`, `cannot reach ftp://...: ` (no reason) or a port out of range at the first request."""
    with pytest.raises(ValueError, match=r"^--url must be http\(s\)://host\[:port\], not "):
        Client(url)
    run = CliRunner().invoke(main, ["jobs", "list", "--url", url])
    assert run.exit_code == 2 and "--url must be http(s)://host[:port]" in run.stderr, run.output


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://backprop.example/", "http://[::1]:80/prefix"])
def test_http_urls_are_taken(url):
    assert Client(url).url == url.rstrip("/")


def test_methods_take_the_job_itself(fake_api):
    """wait(job) and follow(job) with the Job that submit_job returns raised TypeError in quote()."""
    client = Client(fake_api)
    job = client.get_job("j1")
    assert client.wait(job).status == "succeeded"
    assert isinstance(list(client.follow(job, after=3))[-1], Job)
    assert client.predict(job, [[7, 0]]).predictions == [7]
    assert client.download_weights(job).startswith(b"PK")


def test_a_body_goes_to_the_default_port_of_an_ipv6_url(monkeypatch):
    """http.client given port None reads "::1" as host ":" and port 1."""
    import http.client

    seen = []

    class Refused(http.client.HTTPConnection):
        def __init__(self, host, port=None, **kw):
            seen.append((host, port))
            super().__init__(host, port, **kw)

        def connect(self):
            raise ConnectionRefusedError("nothing there")

    monkeypatch.setattr(http.client, "HTTPConnection", Refused)
    with pytest.raises(TransportError):
        Client("http://[::1]").submit_job({"model": {}})
    assert seen == [("::1", 80)]



def test_labels_a_spreadsheet_would_run_are_written_as_text(tmp_path):
    """A class label `=cmd|' /C calc'!A1` written as is runs in the spreadsheet that opens the
    predictions; it gets a leading apostrophe. Numbers and number-like labels stay as they are."""
    import csv

    from core.cli import _write_predictions_csv
    from core.client import Prediction

    labels = ["=cmd|' /C calc'!A1", "@SUM(A1)", "-1", "+ok", "plain"]
    out = tmp_path / "p.csv"
    _write_predictions_csv(out, Prediction(predictions=labels + [-0.5], probabilities=None))
    with out.open() as f:
        cells = [row[0] for row in csv.reader(f)][1:]
    assert cells == ["'=cmd|' /C calc'!A1", "'@SUM(A1)", "-1", "'+ok", "plain", "-0.5"]
