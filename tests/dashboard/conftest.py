"""Headless Chromium (Debian's `chromium` and `chromedriver`) driven by selenium, against real
API + worker processes. Under CI=true a missing browser fails the tests; elsewhere they skip."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.e2e.stack import Stack

CHROMIUM = os.environ.get("BACKPROP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BACKPROP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and not shutil.which(path):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def chromium_available() -> None:
    missing = browser_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"the dashboard tests need headless Chromium under CI=true: {missing}")
        pytest.skip(missing)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only


@pytest.fixture(scope="module")
def driver(chromium_available, tmp_path_factory):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--no-default-browser-check", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager never looks for (or downloads) anything
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER,
                                      log_output=str(tmp_path_factory.mktemp("chromedriver") / "log"))
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def stack(chromium_available, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.up()
    finally:
        s.down()


@pytest.fixture(scope="module")
def auth_stack(chromium_available, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("auth-stack"), {"BACKPROP_AUTH": "on"})
    try:
        yield s.up()
    finally:
        s.down()


class Shots:
    """Screenshots of each step, kept in test-artifacts/dashboard/ (full page height)."""

    def __init__(self, driver, prefix: str):
        self.driver, self.prefix, self.n = driver, prefix, 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = ARTIFACTS / f"{self.prefix}-{self.n:02d}-{name}.png"
        size = self.driver.get_window_size()
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(size["width"], min(max(height + 140, 600), 5000))
        time.sleep(0.3)  # let the charts redraw at the new size
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(size["width"], size["height"])
        return path


@pytest.fixture
def shots(driver, request):
    return Shots(driver, request.node.name.removeprefix("test_"))
