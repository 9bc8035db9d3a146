"""The dashboard at `/` in headless Chromium, against a real API and worker: every page loads
without console errors, a training job's curves appear and grow live, the gradient chart has a
series per layer, weights and predictions show once a job succeeds, and the page asks for an
API key when the server wants one. Screenshots of each step go to test-artifacts/dashboard/."""

from __future__ import annotations

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
    shots("cancelled")
    assert console_errors(driver) == []


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
