"""The dashboard: a static single page at `/` (plain HTML, CSS and JavaScript in app/static/,
no build step) that uses only the public /v1 API. Its routes are client-side (`/#/jobs/ID`),
so the server serves one page and its assets; neither needs an API key, the API calls do."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

STATIC = Path(__file__).with_name("static")
bp = Blueprint("dashboard", __name__, static_folder=str(STATIC), static_url_path="/ui/static")

# Everything the page loads comes from this origin; no inline script, no third party.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


@bp.get("/")
def index() -> Response:
    resp = Response((STATIC / "index.html").read_bytes(), mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp
