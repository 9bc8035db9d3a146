"""The dashboard's page and assets are served without an API key (the API calls need one), from
this origin only, with a Content-Security-Policy that allows no inline script or third party."""

from __future__ import annotations

import re

import pytest

from core.config import Settings

ASSETS = ("app.js", "api.js", "charts.js", "style.css", "favicon.svg")


@pytest.fixture
def auth_client(tmp_path):
    from app import create_app
    from tests.conftest import migrate

    settings = Settings(data_dir=tmp_path / "data", auth="on")
    migrate(settings.database_url)
    app = create_app(settings)
    yield app.test_client()
    app.extensions["backprop"]["engine"].dispose()


def test_index_and_assets_need_no_key(auth_client):
    resp = auth_client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    html = resp.get_data(as_text=True)
    linked = re.findall(r'(?:src|href)="/ui/static/([^"]+)"', html)
    assert set(linked) == {"app.js", "style.css", "favicon.svg"}
    for name in ASSETS:
        with auth_client.get(f"/ui/static/{name}") as asset:
            assert asset.status_code == 200 and asset.data, name
            if name.endswith(".js"):
                assert asset.mimetype in ("text/javascript", "application/javascript")
    assert auth_client.get("/v1/jobs").status_code == 401
    assert auth_client.get("/ui/static/../dashboard.py").status_code == 404
    assert auth_client.get("/static/app.js").status_code == 404  # served once, where the page loads it


def test_every_answer_refuses_sniffing_and_framing(auth_client):
    for path in ("/", "/ui/static/app.js", "/docs", "/openapi.json", "/livez", "/v1/jobs"):
        with auth_client.get(path) as resp:  # a static file's answer holds it open until closed
            assert resp.headers["X-Content-Type-Options"] == "nosniff", path
            assert resp.headers["X-Frame-Options"] == "DENY", path


def test_pages_use_only_the_public_api_and_no_inline_html():
    """Every request the scripts make is a /v1 path; API data is never parsed as HTML."""
    from app.dashboard import STATIC

    source = "\n".join((STATIC / name).read_text() for name in ("app.js", "api.js", "charts.js"))
    assert "innerHTML" not in source and "insertAdjacentHTML" not in source and "eval(" not in source
    paths = re.findall(r"(?:api|fetch)\(\s*[`'\"]([^`'\"$?]+)", source)
    assert paths and all(p.startswith("/v1/") for p in paths), paths
    assert "http://" not in source and "https://" not in source
