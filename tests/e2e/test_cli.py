"""The `backprop` client commands as a user runs them: the real console script in a subprocess,
talking to a real stack (gunicorn + a Celery worker) over HTTP."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from .stack import Stack

pytestmark = pytest.mark.e2e

BACKPROP = str(Path(sys.executable).with_name("backprop"))
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def spec(epochs: int = 30, **optimizer) -> dict:
    return {"model": {"input_shape": [4],
                      "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                                 {"type": "dense", "units": 3, "activation": "softmax"}],
                      "loss": "categorical_crossentropy"},
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.02, **optimizer}, "epochs": epochs,
                         "batch_size": 16, "validation_split": 0.2, "seed": 0}}


def write_iris(path: Path, rows=None) -> list[str]:
    """Iris as CSV with a header and string labels in `species`; the labels written."""
    data = load_iris()
    idx = range(len(data.target)) if rows is None else rows
    labels = [str(data.target_names[data.target[i]]) for i in idx]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*FEATURES, "species"])
        for i, label in zip(idx, labels, strict=True):
            w.writerow([*data.data[i], label])
    return labels


def cli(stack: Stack, *args: str, api_key: str | None = None, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BACKPROP_API_KEY", "BACKPROP_URL")}
    env["BACKPROP_URL"] = stack.url
    if api_key:
        env["BACKPROP_API_KEY"] = api_key
    return subprocess.run([BACKPROP, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_id(out: str) -> str:
    return re.search(r"^job (\w+) (queued|running) \(", out, re.M).group(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("cli-stack"), {"BACKPROP_HEARTBEAT_SECONDS": "0.2"})  # quick cancel
    try:
        yield s.up()
    finally:
        s.down()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-files")
    write_iris(d / "iris.csv")
    (d / "spec.json").write_text(json.dumps(spec()))
    return d


@pytest.fixture(scope="module")
def trained(stack, files):
    """One `train --follow` run shared by the read-only commands' tests."""
    run = cli(stack, "train", str(files / "spec.json"), "--data", str(files / "iris.csv"), "--target", "species",
              "--follow")
    return run, job_id(run.stdout)


def test_train_follow_shows_progress_and_succeeds(trained):
    run, _ = trained
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "uploaded dataset" in out and "setosa (50)" in out
    assert re.search(r"^epoch 1/30  loss [\d.]+  .*val_loss [\d.]+  val_accuracy [\d.]+  eta ", out, re.M), out
    assert re.search(r"^epoch 30/30 ", out, re.M), out
    assert re.search(r"^job \w+ succeeded \(completed\) after 30/30 epochs: loss ", out, re.M), out
    assert "\r" not in out  # not a terminal: plain lines


def test_jobs_list_show_and_epochs(stack, trained):
    _, ident = trained
    listed = cli(stack, "jobs", "list")
    assert listed.returncode == 0
    assert re.search(rf"^{ident}\s+succeeded\s+30/30 ", listed.stdout, re.M), listed.stdout
    as_json = json.loads(cli(stack, "jobs", "list", "--json", "--status", "succeeded").stdout)
    assert ident in [j["id"] for j in as_json]

    shown = cli(stack, "jobs", "show", ident)
    assert shown.returncode == 0
    assert re.search(r"^status:\s+succeeded$", shown.stdout, re.M)
    assert re.search(r"^progress:\s+30/30 epochs$", shown.stdout, re.M)

    epochs = cli(stack, "jobs", "epochs", ident)
    assert epochs.returncode == 0
    lines = epochs.stdout.splitlines()
    assert lines[0].split()[:2] == ["EPOCH", "LOSS"] and "VAL_ACCURACY" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == [str(n) for n in range(1, 31)]
    sampled = json.loads(cli(stack, "jobs", "epochs", ident, "--max-points", "5", "--json").stdout)
    assert [e["epoch"] for e in sampled][0::4] == [1, 30] and len(sampled) == 5


def test_predict_answers_with_the_string_labels(stack, trained, tmp_path):
    _, ident = trained
    rows = [0, 1, 60, 120, 149]
    labels = write_iris(tmp_path / "rows.csv", rows)  # with the species column: it is ignored
    run = cli(stack, "predict", ident, "--input", str(tmp_path / "rows.csv"))
    assert run.returncode == 0, run.stderr
    predicted = run.stdout.split()
    assert set(predicted) <= {"setosa", "versicolor", "virginica"} and len(predicted) == 5
    assert sum(p == t for p, t in zip(predicted, labels, strict=True)) >= 4, (predicted, labels)

    out = tmp_path / "pred.csv"
    assert cli(stack, "predict", ident, "--input", str(tmp_path / "rows.csv"), "--output", str(out)).returncode == 0
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["prediction", "probability_setosa", "probability_versicolor", "probability_virginica"]
    assert [r["prediction"] for r in table] == predicted
    out = tmp_path / "pred.json"
    assert cli(stack, "predict", ident, "--input", str(tmp_path / "rows.csv"), "--output", str(out)).returncode == 0
    saved = json.loads(out.read_text())
    assert saved["predictions"] == predicted and saved["classes"] == ["setosa", "versicolor", "virginica"]

    x = load_iris().data[rows]
    (tmp_path / "rows.json").write_text(json.dumps([dict(zip(FEATURES, r, strict=True)) for r in x.tolist()]))
    assert cli(stack, "predict", ident, "--input", str(tmp_path / "rows.json")).stdout.split() == predicted


def test_jobs_follow_of_a_finished_job_shows_its_total(stack, trained):
    """The stream sends the stored epochs before the job's status: the total came too late, and
    every past epoch was printed as `epoch N/N ... eta 0s`."""
    _, ident = trained
    run = cli(stack, "jobs", "follow", ident)
    assert run.returncode == 0, run.stderr
    shown = re.findall(r"^epoch (\d+)/(\d+) ", run.stdout, re.M)
    assert shown[0] == ("1", "30") and shown[-1] == ("30", "30"), run.stdout
    assert {total for _, total in shown} == {"30"}, run.stdout  # as `train --follow` shows them


def test_a_csv_header_naming_only_some_features_is_refused(stack, trained, tmp_path):
    _, ident = trained
    typo = tmp_path / "typo.csv"
    typo.write_text("petal_width,sepal_lenght,petal_length,sepal_width\n0.2,5.1,1.4,3.5\n")
    run = cli(stack, "predict", ident, "--input", str(typo))
    assert run.returncode == 1 and "['sepal_length']" in run.stderr, run.stderr
    # naming none of them (other names, or the same in capitals) read the columns in file order,
    # here reversed: wrong predictions and exit 0
    for header in ("pw,pl,sw,sl", ",".join(reversed(FEATURES)).upper()):
        other = tmp_path / "other.csv"
        other.write_text(f"{header}\n0.2,1.4,3.5,5.1\n")
        run = cli(stack, "predict", ident, "--input", str(other))
        assert run.returncode == 1 and f"{FEATURES}" in run.stderr, run.stderr
        assert "leave the header out" in run.stderr


def test_unusable_local_files_are_messages_not_tracebacks(stack, trained, tmp_path):
    _, ident = trained
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "latin1.csv").write_bytes("sepal_length\n\xe9\n".encode("latin-1"))
    runs = [cli(stack, "datasets", "upload", str(tmp_path / "list.json")),
            cli(stack, "predict", ident, "--input", str(tmp_path / "latin1.csv")),
            cli(stack, "weights", ident, "--out", str(tmp_path / "missing-dir" / "w.npz"))]
    for run in runs:
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith("error:") or "Error:" in run.stderr, run.stderr


def test_weights_download_loads_without_pickle(stack, trained, tmp_path):
    _, ident = trained
    run = cli(stack, "weights", ident, "--out", str(tmp_path / "w.npz"))
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        assert npz["dense_0/kernel"].shape == (4, 16) and npz["dense_1/bias"].shape == (3,)
    assert "dense_0/kernel" in run.stdout
    assert cli(stack, "weights", ident, cwd=tmp_path).returncode == 0  # default file name
    assert (tmp_path / f"job-{ident}-weights.npz").exists()


def test_datasets_upload_and_list(stack, trained, files, tmp_path):
    data = load_iris()
    np.savez(tmp_path / "iris.npz", features=data.data, targets=data.target_names[data.target])
    up = cli(stack, "datasets", "upload", str(tmp_path / "iris.npz"), "--json")
    assert up.returncode == 0, up.stderr
    ds = json.loads(up.stdout)
    assert ds["source"] == "npz" and ds["class_labels"] == ["setosa", "versicolor", "virginica"]

    listed = cli(stack, "datasets", "list")
    assert listed.returncode == 0
    assert re.search(rf"^{ds['id']}\s+iris.npz\s+npz\s+150x4\s+setosa, versicolor, virginica", listed.stdout, re.M)
    assert re.search(r"\s+iris.csv\s+csv\s+150x4\s", listed.stdout), listed.stdout  # the one `train` uploaded

    missing_target = cli(stack, "datasets", "upload", str(files / "iris.csv"))
    assert missing_target.returncode == 2 and "--target" in missing_target.stderr


def test_diverging_job_exits_non_zero_with_the_reason(stack, tmp_path):
    bad = spec(epochs=20)
    bad["model"]["layers"][0]["activation"] = "linear"
    bad["training"]["optimizer"] = {"type": "sgd", "learning_rate": 1e6}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    write_iris(tmp_path / "iris.csv")
    run = cli(stack, "train", str(tmp_path / "bad.json"), "--data", str(tmp_path / "iris.csv"), "--target",
              "species", "--follow")
    assert run.returncode == 3, run.stdout + run.stderr
    assert re.search(r"job \w+ failed after \d+/20 epochs: .*non-finite", run.stderr), run.stderr


def test_invalid_spec_prints_the_errors_with_their_paths(stack, tmp_path):
    bad = spec()
    bad["model"]["layers"][0]["units"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    write_iris(tmp_path / "iris.csv")
    run = cli(stack, "train", str(tmp_path / "bad.json"), "--data", str(tmp_path / "iris.csv"), "--target", "species")
    assert run.returncode == 1
    assert run.stderr.startswith("error 422 (validation_error): model.layers[0].units: ")
    assert re.search(r"^  model\.layers\[0\]\.units: must be", run.stderr, re.M), run.stderr
    assert "retry with --dataset-id" in run.stderr

    unknown = cli(stack, "jobs", "show", "nope")
    assert unknown.returncode == 1 and "error 404 (job_not_found)" in unknown.stderr


def test_cancel_a_running_job(stack, files, tmp_path):
    (tmp_path / "long.json").write_text(json.dumps(spec(epochs=100_000)))
    started = cli(stack, "train", str(tmp_path / "long.json"), "--data", str(files / "iris.csv"),
                  "--target", "species")
    assert started.returncode == 0, started.stderr
    ident = job_id(started.stdout)
    cancel = cli(stack, "jobs", "cancel", ident)
    assert cancel.returncode == 0 and re.match(rf"job {ident} (cancelling|cancelled)$", cancel.stdout.strip())
    follow = cli(stack, "jobs", "follow", ident)
    assert follow.returncode == 3 and f"job {ident} cancelled" in follow.stderr
    again = cli(stack, "jobs", "cancel", ident)
    assert again.returncode == 1 and "409 (job_finished)" in again.stderr


def test_api_key(tmp_path):
    s = Stack(tmp_path, {"BACKPROP_AUTH": "on"})
    try:
        s.up()
        write_iris(tmp_path / "iris.csv")
        (tmp_path / "spec.json").write_text(json.dumps(spec(epochs=5)))
        anonymous = cli(s, "datasets", "list")
        assert anonymous.returncode == 1
        assert "error 401 (unauthorized): send a valid API key" in anonymous.stderr
        assert "BACKPROP_API_KEY" in anonymous.stderr
        wrong = cli(s, "jobs", "list", "--api-key", "bp_nope_nope")
        assert wrong.returncode == 1 and "401" in wrong.stderr

        run = cli(s, "train", str(tmp_path / "spec.json"), "--data", str(tmp_path / "iris.csv"), "--target",
                  "species", "--follow", api_key=s.api_key)
        assert run.returncode == 0, run.stdout + run.stderr + s.logs()
        assert re.search(r"^job \w+ succeeded", run.stdout, re.M)
        assert job_id(run.stdout) in cli(s, "jobs", "list", "--api-key", s.api_key).stdout
    finally:
        s.down()


# --- defects found in review ----------------------------------------------------------------------

def test_bad_predict_csvs_are_one_line_each(stack, trained, tmp_path):
    """A short row was an IndexError traceback; a first row with one bad number was dropped as a
    header (exit 0); nan went to the server, which answered 400 invalid_json."""
    _, ident = trained
    cases = {"short.csv": (f"{','.join(FEATURES)}\n1,2,3,4\n1,2,3\n", "line 3: 3 cells, the header has 4"),
             "typo.csv": ("1,2,x,4\n5,6,7,8\n", "line 1, column 3: 'x' is not a number"),
             "nan.csv": ("1,2,3,nan\n", "line 1, column 4: 'nan' is not a finite number")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        run = cli(stack, "predict", ident, "--input", name, cwd=tmp_path)
        assert run.returncode == 1 and run.stderr == f"Error: {name}, {message}\n", run.stderr


def test_output_to_a_reader_that_left_ends_quietly(stack, trained):
    """`backprop jobs list | head -1` printed `error: [Errno 32] Broken pipe` and exited 1."""
    env = {**os.environ, "BACKPROP_URL": stack.url}
    proc = subprocess.Popen([BACKPROP, "jobs", "list"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before anything is written
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and stderr == b"", stderr


def test_an_upload_over_the_request_size_limit_gets_the_servers_answer(tmp_path):
    """The server answers 413 and closes before it has read the body: the client reported
    `cannot reach http://...: [Errno 32] Broken pipe`."""
    s = Stack(tmp_path, {"BACKPROP_MAX_REQUEST_BYTES": "100000"})
    try:
        s.up()
        huge = tmp_path / "huge.csv"
        huge.write_bytes(b"x,y\n" + b"1.5,0\n" * 2_000_000)  # 12 MB: more than the socket buffers hold
        run = cli(s, "datasets", "upload", str(huge), "--target", "y")
        assert run.returncode == 1, run.stdout + run.stderr
        assert run.stderr.startswith("error 413 (request_too_large): "), run.stderr
    finally:
        s.down()


def test_unusable_data_files_are_named(stack, files, tmp_path):
    """A JSON list, invalid JSON, an empty file or latin-1 text: messages that did not name the file
    (`'list' object is not a mapping`); a .npy was told to add --target; a .npz that is not a zip
    went to the server and came back as a 422 about CSV targets."""
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text('{"features": ')
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "latin1.json").write_bytes('{"name": "\xe9"}'.encode("latin-1"))
    for name in ["list.json", "broken.json", "empty.json", "latin1.json"]:
        for args in (["datasets", "upload", name], ["train", str(files / "spec.json"), "--data", name]):
            run = cli(stack, *args, cwd=tmp_path)
            assert run.returncode == 1, run.stderr
            assert run.stderr.startswith(f"error: {name}: ") and len(run.stderr.splitlines()) == 1, run.stderr
            assert "features and targets" in run.stderr, run.stderr

    np.save(tmp_path / "feats.npy", np.zeros((3, 2)))
    npy = cli(stack, "datasets", "upload", "feats.npy", cwd=tmp_path)
    assert npy.returncode == 1 and npy.stderr.startswith("error: a .npy holds only features"), npy.stderr
    (tmp_path / "junk.npz").write_text("notazip\n")
    junk = cli(stack, "datasets", "upload", "junk.npz", cwd=tmp_path)
    assert junk.returncode == 1 and junk.stderr == "error: junk.npz is not a .npz (zip) file\n", junk.stderr


def test_a_bad_url_is_a_usage_error(stack):
    for url in ["notaurl", "ftp://127.0.0.1:8000", "http://127.0.0.1:99999"]:
        run = cli(stack, "jobs", "list", "--url", url)
        assert run.returncode == 2, run.stderr
        assert f"Error: --url must be http(s)://host[:port], not '{url}'" in run.stderr, run.stderr


def test_a_file_that_does_not_exist_is_a_usage_error(stack, trained, files, tmp_path):
    """As the README says: exit 2, while a file that exists but cannot be used is exit 1."""
    _, ident = trained
    missing = str(tmp_path / "missing.csv")
    for args in (["predict", ident, "--input", missing], ["train", missing, "--dataset-id", "x"],
                 ["train", str(files / "spec.json"), "--data", missing], ["datasets", "upload", missing]):
        run = cli(stack, *args)
        assert run.returncode == 2 and "does not exist" in run.stderr, run.stderr
