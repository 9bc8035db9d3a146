"""The dashboard at `/` in headless Chromium, against a real API and worker: every page loads
without console errors, a training job's curves appear and grow live, the gradient chart has a
series per layer, weights and predictions show once a job succeeds, and the page asks for an
API key when the server wants one. Screenshots of each step go to test-artifacts/dashboard/."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from tests.data import iris, iris_job

pytestmark = [pytest.mark.dashboard, pytest.mark.e2e]

LABELS = ["setosa", "versicolor", "virginica"]
WAIT = 30


def console_errors(driver, allow=lambda entry: False) -> list[dict]:
    """SEVERE browser-log entries since the last call: JS exceptions, failed loads, console.error."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and not allow(e)]


def wait_for(driver, condition, timeout: float = WAIT, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text(driver, selector: str) -> str:
    """The text of the first match, read in one step (pages re-render live, so elements go stale)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
                                 selector)


def attr(driver, selector: str, name: str) -> str | None:
    return driver.execute_script("const e = document.querySelector(arguments[0]); "
                                 "return e ? e.getAttribute(arguments[1]) : null", selector, name)


def attr_int(driver, selector: str, name: str) -> int:
    return int(attr(driver, selector, name) or 0)


def click(driver, selector: str) -> None:
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def open_page(driver, stack, hash_: str) -> None:
    driver.get(f"{stack.url}/#{hash_}")


@pytest.fixture(scope="module")
def seeded(stack):
    """A named dataset with class labels, a finished job on it, and a model with an alias."""
    x, y = iris()
    status, ds = stack.request("POST", "/v1/datasets", {"name": "iris", "features": x.tolist(),
                                                        "targets": [LABELS[i] for i in y]})
    assert status == 201, ds
    body = iris_job(epochs=60, validation_split=0.2)
    del body["dataset"]
    body["dataset_id"] = ds["id"]
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    job = stack.wait_for_job(job["id"])
    assert job["status"] == "succeeded", stack.logs()
    status, version = stack.request("POST", "/v1/models", {"name": "iris-classifier", "job_id": job["id"],
                                                           "aliases": ["production"]})
    assert status == 201, version
    return {"dataset": ds, "job": job}


def test_pages_load_without_console_errors(driver, stack, seeded, shots):
    driver.get(stack.url + "/")
    wait_for(driver, lambda d: css(d, f'#jobs-table tr[data-job-id="{seeded["job"]["id"]}"]'), what="jobs table")
    row = text(driver, f'#jobs-table tr[data-job-id="{seeded["job"]["id"]}"]')
    assert "succeeded" in row and "60 / 60" in row and "dense(16, relu)" in row
    shots("jobs")
    assert console_errors(driver) == []

    open_page(driver, stack, "/datasets")
    wait_for(driver, lambda d: css(d, f'#datasets-table tr[data-dataset-id="{seeded["dataset"]["id"]}"]'),
             what="datasets table")
    row = text(driver, f'#datasets-table tr[data-dataset-id="{seeded["dataset"]["id"]}"]')
    assert "iris" in row and "[150,4]" in row and "classes" in row
    assert all(label in row for label in LABELS) and "50" in row
    shots("datasets")
    assert console_errors(driver) == []

    open_page(driver, stack, "/models")
    wait_for(driver, lambda d: css(d, '[data-model="iris-classifier"] table.versions tbody tr'), what="models")
    model = text(driver, '[data-model="iris-classifier"]')
    assert "production → v1" in model and "latest → v1" in model
    shots("models")
    assert console_errors(driver) == []

    open_page(driver, stack, f"/jobs/{seeded['job']['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") == 60, what="loss curve")
    shots("finished-job")
    open_page(driver, stack, "/no/such/page")
    wait_for(driver, lambda d: "Not found" in text(d, "#view"), what="not found page")
    assert console_errors(driver) == []
    open_page(driver, stack, "/jobs/%E0%A4%A")  # a malformed escape: an error box, not a blank page
    wait_for(driver, lambda d: css(d, "#view .error"), what="the error box of a malformed link")
    assert console_errors(driver) == []


def test_live_curves_grow_while_training_and_cancel(driver, stack, shots):
    # far more epochs than the test waits for: it is cancelled from the page at the end
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=50_000, batch_size=4, validation_split=0.2))
    assert status == 202, job
    job_id = job["id"]

    driver.get(stack.url + "/")
    row_sel = f'#jobs-table tr[data-job-id="{job_id}"]'
    wait_for(driver, lambda d: attr(d, row_sel, "data-status") == "running", what="the job running in the jobs table")
    first = text(driver, f"{row_sel} .progress")
    wait_for(driver, lambda d: text(d, f"{row_sel} .progress") not in ("", first),
             what="the jobs table's progress refreshing by itself")
    shots("jobs-running")

    click(driver, f"{row_sel} a")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") > 0, what="the loss curve")
    wait_for(driver, lambda d: "streaming events" in text(d, ".progress-row"),
             what="live updates by streaming")
    before = attr_int(driver, "#chart-loss canvas", "data-points")
    shots("curve-early")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") > before + 20, timeout=20,
             what="the loss curve growing")
    after = attr_int(driver, "#chart-loss canvas", "data-points")
    assert after > before
    # the head follows the epochs too (the stream sends the job only when its status changes)
    head = text(driver, ".progress-row .progress")
    wait_for(driver, lambda d: text(d, ".progress-row .progress") not in ("", head), timeout=10,
             what="the head's progress advancing while streaming")

    # validation curve, accuracy, and one gradient-norm series per weighted layer
    assert attr(driver, "#chart-loss canvas", "data-series-names") == "loss,validation loss"
    assert attr_int(driver, "#chart-accuracy canvas", "data-series") == 2
    assert attr_int(driver, "#chart-accuracy canvas", "data-points") > 0
    assert attr(driver, "#chart-grads canvas", "data-series-names") == "dense_0,dense_1"
    assert attr_int(driver, "#chart-grads canvas", "data-series") == 2
    assert attr_int(driver, "#chart-weight-norms canvas", "data-series") == 2
    wait_for(driver, lambda d: text(d, "#grad-flags"), what="gradient diagnostics")
    assert '"units": 16' in text(driver, "#spec")
    click(driver, "#loss-log")
    shots("curve-growing")

    # the fallback when streaming is unavailable: polling /epochs?after=N every second
    driver.execute_script("localStorage.setItem('backprop.live', 'poll')")
    driver.refresh()
    wait_for(driver, lambda d: "polling every second" in text(d, ".progress-row"), what="live updates by polling")
    polled = attr_int(driver, "#chart-loss canvas", "data-points")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") > polled + 20, timeout=20,
             what="the loss curve growing while polling")
    driver.execute_script("localStorage.removeItem('backprop.live')")

    click(driver, "#cancel")
    wait_for(driver, lambda d: text(d, "#job-status") == "cancelled", what="the job cancelled")
    _, job = stack.request("GET", f"/v1/jobs/{job_id}")
    assert job["status"] == "cancelled"
    assert attr_int(driver, "#chart-loss canvas", "data-points") > polled
    wait_for(driver, lambda d: css(d, "#weights canvas.histogram"), what="the cancelled job's last weights")
    # the weights it kept predict, as the API allows (the page offered no form but for succeeded jobs)
    box = wait_for(driver, lambda d: css(d, "#predict-input"), what="the cancelled job's predict form")[0]
    box.send_keys("[[5.1, 3.5, 1.4, 0.2]]")
    driver.find_element("css selector", "#predict-form button").click()
    wait_for(driver, lambda d: len(css(d, "#predict-output tbody tr")) == 1, what="a prediction with the kept weights")
    shots("cancelled")
    assert console_errors(driver) == []


def test_streams_the_server_ends_on_schedule_are_resumed_not_given_up(driver, stack):
    """The API ends every event stream after a few minutes (SSE_MAX_SECONDS) and the page picks it
    up again; five such ends counted as a proxy cutting streams short, and the page polled for
    the rest of the run. Streams that each delivered an epoch are resumed as streams."""
    driver.get(stack.url + "/#/datasets")
    wait_for(driver, lambda d: css(d, "#datasets-table"), what="a page")
    out = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        let epoch = 0, streams = 0;
        const real = window.fetch;
        window.fetch = async (url, init) => {
          if (!String(url).includes('/events')) return real(url, init);
          streams++;  // a stream that sends one epoch, then ends as the server's time limit does
          return new Response(`event: epoch\ndata: {"epoch": ${++epoch}}\n\n`,
                              {status: 200, headers: {'Content-Type': 'text/event-stream'}});
        };
        import('/ui/static/api.js').then(m => {
          const modes = [];
          const stop = m.followJob('no-such-job', 0, {onEpoch() {}, onStatus() {}, onMode: mode => modes.push(mode),
                                                      onError: err => modes.push(`error ${err.message}`)});
          setTimeout(() => { stop(); window.fetch = real; done({streams, modes: [...new Set(modes)]}); }, 7500);
        }).catch(err => done(String(err)));""")
    assert isinstance(out, dict), out
    assert out["streams"] >= 6 and out["modes"] == ["stream"], out


def test_layers_named_like_object_properties_are_just_names(driver, stack, shots):
    """A layer named "constructor" or "__proto__" hit the built-in properties of the page's
    per-layer tables, and the job page showed only "grads[k].push is not a function"."""
    body = iris_job(epochs=5)
    body["model"]["layers"][0]["name"] = "constructor"
    body["model"]["layers"][1]["name"] = "__proto__"
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    assert stack.wait_for_job(job["id"])["status"] == "succeeded", stack.logs()
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-grads canvas", "data-points") == 5, what="the gradient chart")
    assert attr(driver, "#chart-grads canvas", "data-series-names") == "constructor,__proto__"
    shots("object-property-names")
    assert console_errors(driver) == []

    body["model"]["layers"][0]["name"] = ("a_very_long_layer_name_" * 6)[:128]  # one word, the longest allowed
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202 and stack.wait_for_job(job["id"])["status"] == "succeeded", stack.logs()
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: css(d, "#weights canvas.histogram"), what="the weights section")
    width, window = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= window, (width, window)  # long names wrap instead of widening the page


def test_weights_and_predict_after_success(driver, stack, seeded, shots):
    job = seeded["job"]
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: len(css(d, "#weights canvas.histogram")) == 4, what="weight histograms")
    _, weights = stack.request("GET", f"/v1/jobs/{job['id']}/weights")
    for w in weights["weights"]:
        param = css(driver, f'#weights [data-param="{w["name"]}"]')[0]
        size = int(np.prod(w["shape"]))
        assert int(param.find_element("css selector", "canvas.histogram").get_attribute("data-count")) == size
        heat = param.find_element("css selector", "canvas.heatmap")
        # a kernel: one row per unit; a bias: one row
        rows, cols = (w["shape"][-1], size // w["shape"][-1]) if len(w["shape"]) > 1 else (1, size)
        assert (int(heat.get_attribute("data-rows")), int(heat.get_attribute("data-cols"))) == (rows, cols)
    assert "no vanishing, missing or exploding" in text(driver, "#grad-flags").lower()
    shots("weights")

    x, _ = iris()
    rows = x[[0, 60, 120]]
    _, expected = stack.request("POST", f"/v1/jobs/{job['id']}/predict", {"inputs": rows.tolist()})
    csv = "sepal_length,sepal_width,petal_length,petal_width\n" + "\n".join(",".join(map(str, r)) for r in rows)
    box = driver.find_element("id", "predict-input")
    box.send_keys(csv)
    driver.find_element("css selector", "#predict-form button").click()
    wait_for(driver, lambda d: len(css(d, "#predict-output tbody tr")) == 3, what="predictions")
    shown = [r.find_element("css selector", ".prediction").text for r in css(driver, "#predict-output tbody tr")]
    assert shown == [f'"{p}"' for p in expected["predictions"]]
    assert set(expected["predictions"]) <= set(LABELS)
    shots("predict-csv")

    box.clear()
    box.send_keys("[[1, 2, 3]]")  # the wrong width: the API's validation message is shown
    driver.find_element("css selector", "#predict-form button").click()
    wait_for(driver, lambda d: css(d, "#predict-output .error"), what="the validation error")
    assert "expected" in css(driver, "#predict-output .error")[0].text
    shots("predict-error")
    # the 422 itself is logged by the browser as a failed load; nothing else may be
    assert console_errors(driver, allow=lambda e: e["source"] == "network" and " 422 " in e["message"]) == []


def test_confidence_of_a_binary_sequence_prediction(driver, stack, shots):
    """Every step of a sequence predicted 0 with P(1) about 0: confidence near 100%, where the
    page used to show the largest P(1), 0.0%."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 5, 1))
    body = {"model": {"input_shape": [5, 1], "loss": "binary_crossentropy", "layers": [
                {"type": "lstm", "units": 4, "return_sequences": True},
                {"type": "dense", "units": 1, "activation": "sigmoid"}]},
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.05}, "epochs": 40},
            "dataset": {"features": x.round(3).tolist(), "targets": np.zeros((64, 5, 1)).tolist()}}
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    assert stack.wait_for_job(job["id"])["status"] == "succeeded", stack.logs()
    row = [[0.05], [0.1], [0.02], [0.1], [0.05]]
    _, expected = stack.request("POST", f"/v1/jobs/{job['id']}/predict", {"inputs": [row]})
    weakest = min(1 - p[0] for p in expected["probabilities"][0])
    assert weakest > 0.6
    open_page(driver, stack, f"/jobs/{job['id']}")
    box = wait_for(driver, lambda d: css(d, "#predict-input"), what="the predict form")[0]
    box.send_keys(f"[{row}]")
    driver.find_element("css selector", "#predict-form button").click()
    wait_for(driver, lambda d: len(css(d, "#predict-output tbody tr")) == 1, what="the prediction")
    shown = css(driver, "#predict-output tbody tr td")[-1].text
    assert shown == f"{100 * weakest:.1f}%", shown
    shots("predict-sequence")
    assert console_errors(driver) == []


def test_api_key_prompt_when_auth_is_on(driver, auth_stack, shots):
    driver.get(auth_stack.url + "/")
    driver.execute_script("localStorage.clear()")
    driver.get(auth_stack.url + "/")
    wait_for(driver, lambda d: d.find_element("id", "key-dialog").get_attribute("open") is not None,
             what="the API key dialog")
    shots("key-prompt")

    driver.find_element("id", "key-input").send_keys("not-a-key")
    driver.find_element("id", "key-save").click()
    wait_for(driver, lambda d: d.find_element("id", "key-error").is_displayed(), what="the key refused")
    assert "refused" in driver.find_element("id", "key-error").text

    status, job = auth_stack.request("POST", "/v1/jobs", iris_job(epochs=5))
    assert status == 202
    driver.find_element("id", "key-input").clear()
    driver.find_element("id", "key-input").send_keys(auth_stack.api_key)
    driver.find_element("id", "key-save").click()
    wait_for(driver, lambda d: d.find_element("id", "key-dialog").get_attribute("open") is None, what="dialog closed")
    wait_for(driver, lambda d: css(d, f'#jobs-table tr[data-job-id="{job["id"]}"]'), what="jobs with the key")
    assert driver.execute_script("return localStorage.getItem('backprop.apiKey')") == auth_stack.api_key
    shots("key-accepted")

    # the stored key is used from then on, for live updates too
    auth_stack.wait_for_job(job["id"])
    open_page(driver, auth_stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") == 5, what="curves with the key")
    wait_for(driver, lambda d: css(d, "#weights canvas.histogram"), what="weights with the key")
    assert driver.find_element("id", "key-dialog").get_attribute("open") is None
    # the first visit's 401s (no key, then a wrong one) are the only failed loads
    errors = console_errors(driver, allow=lambda e: e["source"] == "network" and " 401 " in e["message"])
    assert errors == []

    # the static page itself needs no key; a wrong stored key brings the prompt back
    driver.execute_script("localStorage.setItem('backprop.apiKey', 'stale')")
    driver.get(auth_stack.url + "/#/datasets")
    wait_for(driver, lambda d: d.find_element("id", "key-dialog").get_attribute("open") is not None,
             what="the prompt for a stale key")
    assert "refused" in driver.find_element("id", "key-reason").text
    time.sleep(0.2)
    driver.execute_script("localStorage.clear()")


# ---------- live following, focus, live region, chart descriptions ----------


def mutations_in(driver, selector: str, seconds: float) -> int:
    """How many DOM mutations happen inside `selector` (itself included) in `seconds`."""
    return driver.execute_async_script("""
        const [selector, ms, done] = arguments;
        const target = document.querySelector(selector);
        let n = 0;
        const observer = new MutationObserver(records => { n += records.length; });
        observer.observe(target, {subtree: true, childList: true, characterData: true, attributes: true});
        setTimeout(() => { observer.disconnect(); done(n); }, ms);""", selector, int(seconds * 1000))


def test_running_job_keeps_focus_and_one_live_region(driver, stack, shots):
    """The head was rebuilt every second: a focused Cancel button was destroyed (focus fell to
    <body>), and <main> was one aria-live region re-announced on every redraw. The charts had
    no text alternative."""
    console_errors(driver)  # what earlier tests left in the log
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=50_000, batch_size=4))
    assert status == 202, job
    try:
        open_page(driver, stack, f"/jobs/{job['id']}")
        wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") > 3, what="the loss curve")
        wait_for(driver, lambda d: "streaming events" in text(d, "#live-status"), what="live updates")

        driver.execute_script("document.getElementById('cancel').focus()")
        time.sleep(2.5)  # two head updates at least
        assert driver.execute_script("return document.activeElement.id") == "cancel"

        live = driver.execute_script("return [...document.querySelectorAll('[aria-live]')].map(e => e.id)")
        assert live == ["live-status"], live
        assert attr(driver, "#live-status", "role") == "status"
        assert mutations_in(driver, "#live-status", 3) == 0  # unchanged words: left alone

        # the charts are images with a description that follows the curve
        for box in ("#chart-loss", "#chart-accuracy", "#chart-lr", "#chart-grads", "#chart-weight-norms"):
            assert attr(driver, f"{box} canvas", "role") == "img", box
        label = wait_for(driver, lambda d: attr(d, "#chart-loss canvas", "aria-label"), what="the chart's label")
        assert label.startswith("Loss per epoch, epochs 1 to "), label
        assert "loss " in label and "validation" not in label, label
        wait_for(driver, lambda d: attr(d, "#chart-loss canvas", "aria-label") != label, timeout=5,
                 what="the chart's label following the curve")
        assert "dense_0" in attr(driver, "#chart-grads canvas", "aria-label")
        shots("focus-kept")
        assert console_errors(driver) == []
    finally:
        stack.request("POST", f"/v1/jobs/{job['id']}/cancel")
        stack.wait_for_job(job["id"])


def test_live_view_rides_out_an_api_restart(driver, stack, shots):
    """The stream broke when the API went away for a moment, the page fell back to polling, the
    first failed poll ended the follow for good, and the head went on saying "live"."""
    console_errors(driver)  # what earlier tests left in the log
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=50_000, batch_size=4))
    assert status == 202, job
    try:
        open_page(driver, stack, f"/jobs/{job['id']}")
        wait_for(driver, lambda d: "streaming events" in text(d, "#live-status"), what="live updates by streaming")
        wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") > 3, what="the loss curve")

        stack.stop("api", signal.SIGKILL)  # the worker trains on
        wait_for(driver, lambda d: "reconnecting" in text(d, "#live-status"), timeout=10,
                 what="the head saying it reconnects")
        assert "live" not in text(driver, "#live-status")
        shots("reconnecting")
        time.sleep(3)  # a few failed tries, backing off
        during = attr_int(driver, "#chart-loss canvas", "data-points")

        stack.start("api", "serve")
        stack.wait_ready()
        wait_for(driver, lambda d: "live (streaming events)" in text(d, "#live-status"), timeout=20,
                 what="streaming again once the API answers")
        wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") > during + 10, timeout=15,
                 what="the curve growing again, the missed epochs included")
        xs = driver.execute_script("return document.querySelector('#chart-loss canvas').getAttribute('aria-label')")
        assert "epochs 1 to" in xs
        shots("reconnected")
        # the refused connections are logged by the browser as failed loads; nothing else may be
        assert console_errors(driver, allow=lambda e: e["source"] == "network") == []
    finally:
        if "api" not in stack.procs:
            stack.start("api", "serve")
            stack.wait_ready()
        stack.request("POST", f"/v1/jobs/{job['id']}/cancel")
        stack.wait_for_job(job["id"])
    _, epochs = stack.request("GET", f"/v1/jobs/{job['id']}/epochs?limit=10000")
    assert [e["epoch"] for e in epochs["epochs"]] == list(range(1, len(epochs["epochs"]) + 1))


# ---------- what the pages say about regression, validation and layers ----------


@pytest.fixture(scope="module")
def regression(stack):
    """A regression job (no validation data) with a loss of about 1e24, registered as a model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=64)) * 1e12
    body = {"model": {"input_shape": [3], "loss": "mse",
                      "layers": [{"type": "dense", "units": 1, "name": "house_prices_linear_layer_" * 2}]},
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.01}, "epochs": 5, "batch_size": 16},
            "dataset": {"features": x.round(4).tolist(), "targets": y.tolist()}}
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    job = stack.wait_for_job(job["id"])
    assert job["status"] == "succeeded", stack.logs()
    assert job["metrics"]["loss"] > 1e20 and job["metrics"]["r2"] is not None, job["metrics"]
    status, version = stack.request("POST", "/v1/models", {"name": "house-prices", "job_id": job["id"]})
    assert status == 201, version
    return job


def test_r2_is_labelled_as_r2_on_both_pages(driver, stack, regression, shots):
    """The jobs table showed a regression's R² under "Accuracy"; the models page showed "–"."""
    console_errors(driver)  # what earlier tests left in the log
    open_page(driver, stack, "/jobs")
    row = f'#jobs-table tr[data-job-id="{regression["id"]}"]'
    wait_for(driver, lambda d: css(d, row), what="the regression job's row")
    assert "R²" in text(driver, "#jobs-table thead")
    assert text(driver, f"{row} td.score").startswith("R² "), text(driver, f"{row} td.score")

    open_page(driver, stack, "/models")
    wait_for(driver, lambda d: css(d, '[data-model="house-prices"] table.versions tbody tr'), what="the model")
    assert "R²" in text(driver, '[data-model="house-prices"] thead')
    assert text(driver, '[data-model="house-prices"] tbody td.score').startswith("R² ")
    shots("models-r2")
    assert console_errors(driver) == []


def test_numbers_badges_and_ids_never_break(driver, stack, seeded, regression, shots):
    """`overflow-wrap: anywhere` on every cell broke "1.01e+24" into "1.01e+2 / 4" and
    "succeeded" into "succe / eded" in a narrow window."""
    console_errors(driver)  # what earlier tests left in the log
    size = driver.get_window_size()
    driver.set_window_size(520, 900)
    try:
        open_page(driver, stack, "/jobs")
        wait_for(driver, lambda d: css(d, f'#jobs-table tr[data-job-id="{regression["id"]}"]'), what="the jobs")
        time.sleep(0.3)
        broken = driver.execute_script("""
            const out = [];
            for (const td of document.querySelectorAll('#jobs-table tbody td:not(.arch):not(.wrap)')) {
              const walk = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
              for (let node = walk.nextNode(); node; node = walk.nextNode()) {
                if (!node.textContent.trim()) continue;
                const range = document.createRange();
                range.selectNodeContents(node);
                const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                if (lines.size > 1) out.push(node.textContent);
              }
            }
            return out;""")
        assert broken == [], broken
        loss = text(driver, f'#jobs-table tr[data-job-id="{regression["id"]}"] td.num')
        assert "e+2" in loss and "\n" not in loss, loss
        shots("narrow-jobs")
    finally:
        driver.set_window_size(size["width"], size["height"])

    # a user-chosen one-word name still wraps instead of widening the page
    open_page(driver, stack, f"/jobs/{regression['id']}")
    wait_for(driver, lambda d: css(d, "#weights canvas.heatmap"), what="the weights")
    width, window = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= window, (width, window)
    # no validation data: no validation series in the charts or their legends
    assert attr(driver, "#chart-loss canvas", "data-series-names") == "loss"
    assert attr(driver, "#chart-accuracy canvas", "data-series-names") == "MAE"
    assert "validation" not in text(driver, "#chart-loss .legend") + text(driver, "#chart-accuracy .legend")


def test_failed_before_the_first_epoch_says_so(driver, stack, shots):
    """A job that failed before its first epoch said "Waiting for the first epoch…" forever, and
    a regression job without epochs was titled "Accuracy"."""
    console_errors(driver)  # what earlier tests left in the log
    body = {"model": {"input_shape": [2], "loss": "mse", "layers": [{"type": "dense", "units": 1}]},
            "training": {"optimizer": {"type": "sgd", "learning_rate": 1e30}, "epochs": 5, "batch_size": 1},
            "dataset": {"features": [[1e20, -1e20], [3e20, 2e20]] * 8, "targets": [1e20, -1e20] * 8}}
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    job = stack.wait_for_job(job["id"])
    assert job["status"] == "failed" and job["progress"]["epoch"] == 0, job
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: "failed before its first epoch" in (attr(d, "#chart-loss canvas", "aria-label") or ""),
             what="the empty charts saying why")
    assert "Waiting" not in attr(driver, "#chart-accuracy canvas", "aria-label")
    assert text(driver, "#chart-accuracy").strip() == "" and "Mean absolute error" in text(driver, "#view")
    assert driver.execute_script("return document.querySelector('#chart-accuracy').parentElement"
                                 ".querySelector('h3').textContent") == "Mean absolute error"
    shots("failed-no-epochs")
    # the job stored no weights: the page asks, gets a 409 and says so; nothing else may fail
    assert "stored no weights" in text(driver, "#weights")
    assert console_errors(driver, allow=lambda e: e["source"] == "network" and " 409 " in e["message"]) == []


def test_early_stopping_says_which_epoch_the_numbers_are_from(driver, stack, shots):
    """The head showed the restored best epoch's metrics next to curves that ran on, without a word."""
    console_errors(driver)  # what earlier tests left in the log
    body = iris_job(epochs=30, early_stopping={"monitor": "loss", "min_delta": 100, "patience": 2,
                                               "restore_best_weights": True})
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    job = stack.wait_for_job(job["id"])
    assert job["status"] == "succeeded" and job["stop_reason"] == "early_stopping", job
    assert job["progress"]["epoch"] == 4, job
    assert job["metrics_epoch"] == 1, job  # the best epoch: no later one beats it by min_delta
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: css(d, "#weights canvas.histogram"), what="the weights")
    note = text(driver, "#metrics-epoch")
    assert "epoch 1 of 4" in note and "restored" in note and "early stopping" in note, note
    assert attr(driver, "#chart-loss canvas", "data-marker") == "1"
    assert attr(driver, "#chart-accuracy canvas", "data-marker") == "1"
    assert "epoch 1" in text(driver, "#weights-epoch") and "4" in text(driver, "#weights-epoch")
    described = attr(driver, "#chart-loss canvas", "aria-label")
    assert "marked: epoch 1, best" in described and "best 1" not in described, described
    shots("early-stopping")
    assert console_errors(driver) == []

    # a run that was not stopped early: its metrics are its last epoch's, no marker
    status, plain = stack.request("POST", "/v1/jobs", iris_job(epochs=3))
    assert status == 202 and stack.wait_for_job(plain["id"])["status"] == "succeeded"
    open_page(driver, stack, f"/jobs/{plain['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") == 3, what="the curve")
    assert text(driver, "#metrics-epoch").startswith("Metrics of epoch 3")
    assert attr(driver, "#chart-loss canvas", "data-marker") is None


def test_learning_rate_chart_and_recurrent_heatmaps(driver, stack, shots):
    """The learning rate was shown nowhere; an LSTM kernel [1, 128] was drawn 3 px wide, and the
    hint said "one row per unit" of a kernel whose rows are 4 gates x units."""
    console_errors(driver)  # what earlier tests left in the log
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (32, 4, 1))
    body = {"model": {"input_shape": [4, 1], "loss": "mse", "layers": [
                {"type": "lstm", "units": 32}, {"type": "dense", "units": 1}]},
            "training": {"optimizer": {"type": "adam", "learning_rate": 0.04}, "epochs": 6, "batch_size": 16,
                         "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}},
            "dataset": {"features": x.round(3).tolist(), "targets": x.sum(1).round(3).tolist()}}
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    job = stack.wait_for_job(job["id"])
    assert job["status"] == "succeeded", stack.logs()
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-lr canvas", "data-points") == 6, what="the learning-rate chart")
    assert attr(driver, "#chart-lr canvas", "data-series-names") == "learning rate"
    assert "Learning rate per epoch" in attr(driver, "#chart-lr canvas", "aria-label")
    lr = driver.execute_script("return document.querySelector('#job-metrics [data-metric=\"learning rate\"] .value')"
                               ".textContent")
    assert float(lr) == pytest.approx(job["metrics"]["lr"], rel=1e-3)

    wait_for(driver, lambda d: css(d, "#weights canvas.heatmap"), what="the heatmaps")
    sizes = driver.execute_script("""
        return [...document.querySelectorAll('#weights canvas.heatmap')].map(c => [
          c.closest('[data-param]').dataset.param, +c.dataset.rows, +c.dataset.cols,
          c.getBoundingClientRect().width, c.getBoundingClientRect().height]);""")
    assert any(name == "lstm_0/kernel" and (rows, cols) == (128, 1) for name, rows, cols, _, _ in sizes), sizes
    for name, rows, cols, width, height in sizes:
        assert width >= 6 * cols - 1 and height >= 6 * rows - 1, (name, rows, cols, width, height)
    hint = text(driver, '#weights [data-layer="lstm_0"] .layer-hint')
    assert "4 gates" in hint, hint
    assert not css(driver, '#weights [data-layer="dense_0"] .layer-hint')
    width, window = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= window, (width, window)
    shots("lr-and-lstm")
    assert console_errors(driver) == []


def test_every_layer_has_its_own_line_style(driver, stack, shots):
    """With more than 8 layers, layers shared a colour (8 colours, i % 8); 64 are allowed."""
    console_errors(driver)  # what earlier tests left in the log
    body = iris_job(epochs=2)
    body["model"]["layers"] = [{"type": "dense", "units": 3, "activation": "tanh"} for _ in range(63)] + [
        {"type": "dense", "units": 3, "activation": "softmax"}]
    status, job = stack.request("POST", "/v1/jobs", body)
    assert status == 202, job
    assert stack.wait_for_job(job["id"])["status"] == "succeeded", stack.logs()
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-grads canvas", "data-series") == 64, what="64 gradient series")
    for box in ("#chart-grads", "#chart-weight-norms"):
        styles = driver.execute_script("return [...document.querySelectorAll(arguments[0] + ' .legend-item')]"
                                       ".map(e => [e.textContent, e.dataset.color, e.dataset.dash])", box)
        assert len(styles) == 64
        assert len({(color, dash) for _, color, dash in styles}) == 64, styles
    # the same layer has the same style in both charts
    assert driver.execute_script("""
        const style = box => [...document.querySelectorAll(box + ' .legend-item')]
          .map(e => e.textContent + e.dataset.color + e.dataset.dash).sort().join('|');
        return style('#chart-grads') === style('#chart-weight-norms');""")
    assert "dotted" in text(driver, "#view")  # the hint says how later layers are drawn
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(css(driver, "#chart-grads canvas")[0]).perform()  # the readout
    shots("64-layers")
    assert console_errors(driver) == []


def test_log_axis_ticks_are_few_and_fit(driver, stack):
    """A log axis over 26 decades had 27 overlapping labels clipped by a fixed margin; one over
    a fraction of a decade had one label or none."""
    console_errors(driver)  # what earlier tests left in the log
    driver.get(stack.url + "/#/datasets")
    wait_for(driver, lambda d: css(d, "#datasets-table"), what="a page")
    out = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/ui/static/charts.js').then(m => {
          // 1 to 1e26, then a quarter of a decade, then a few percent of one
          const charts = [[1, 1e26], [1.2, 1.6], [0.0031, 0.0033]].map(([lo, hi]) => {
            const box = document.createElement('div');
            box.style.width = '500px';
            document.body.append(box);
            const chart = new m.LineChart(box, {logY: true, title: 'test'});
            const xs = Array.from({length: 27}, (_, i) => i + 1);
            const ys = hi > 100 * lo ? xs.map(i => 10 ** (i - 1)) : xs.map(i => lo + (hi - lo) * (i - 1) / 26);
            chart.update([{name: 'a', xs, ys}]);
            return chart;
          });
          setTimeout(() => done(charts.map(c => {
            c.draw();
            const d = c.canvas.dataset;
            return [d.yTicks.split('|'), +d.marginLeft, +d.labelWidth];
          })), 200);
        }).catch(err => done(String(err)));""")
    assert isinstance(out, list), out
    (wide, wide_margin, wide_label), (narrow, _, _), (tiny, _, _) = out
    assert 2 <= len(wide) <= 7 and ("1e+25" in wide or "1e+24" in wide), wide
    assert wide_margin >= wide_label + 6, (wide_margin, wide_label)
    for ticks in (narrow, tiny):
        assert 2 <= len(ticks) <= 8 and len(set(ticks)) == len(ticks), ticks
    # losses a few float steps apart (1, 1 - 2e-16, 1 - 4e-16): the tick loop's step did not
    # move its value, and the page hung, on linear and log axes alike
    out = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/ui/static/charts.js').then(m => done([
          m.niceTicks(0.5, 0.5000000000000001).length,
          m.logTicks(Math.log10(0.9999999999999996) - 1e-17, 1e-17).length,
        ])).catch(err => done(String(err)));""")
    assert isinstance(out, list) and all(1 <= n <= 8 for n in out), out


def test_a_long_run_opens_with_its_curve_thinned(driver, stack):
    """The page read every epoch of a job before drawing it: ten pages of 10,000 epochs and 35 MB
    for a 100,000-epoch run. It reads the curve in at most 2,000 epochs, and says so."""
    console_errors(driver)  # what earlier tests left in the log
    status, job = stack.request("POST", "/v1/jobs", iris_job(epochs=2500, batch_size=150))
    assert status == 202, job
    assert stack.wait_for_job(job["id"], timeout=120)["status"] == "succeeded", stack.logs()
    open_page(driver, stack, f"/jobs/{job['id']}")
    wait_for(driver, lambda d: attr_int(d, "#chart-loss canvas", "data-points") == 2000, what="the thinned curve")
    note = text(driver, "#curve-note")
    assert "2000 of the 2500 epochs" in note, note
    assert console_errors(driver) == []
