"""core/client.py without the service: the SSE parser on canned byte streams, problem details
mapped to ApiError, and the client against a small stdlib HTTP server that plays the API
(paging, errors, an event stream that drops and is resumed)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from core.cli import ProgressPrinter
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
        self.send(500, {"oops": True})

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


@pytest.fixture
def fake_api():
    FakeApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


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
    _write_predictions_csv(out, Prediction(predictions=[first, second], probabilities=[0.2, 0.9]), labels)
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
