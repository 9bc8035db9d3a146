"""Bearer API keys and the tenant they belong to. Every query a view makes is scoped to
`current_tenant()`; another tenant's ids look exactly like ids that do not exist."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, current_app, g, request

from core.config import LOOPBACK_NAMES
from core.db import DEFAULT_TENANT
from core.keys import tenant_for_key

from .errors import ApiError

PUBLIC_PATHS = ("/livez", "/readyz", "/openapi.json", "/docs", "/metrics")


def current_tenant() -> str:
    return g.tenant


def init_auth(app: Flask) -> None:
    """Identify the caller. A missing or wrong key is only noted here and refused by
    `enforce_auth`, registered after the rate limiter, so that guesses are rate limited too."""
    enabled = app.extensions["backprop"]["settings"].auth_enabled

    @app.before_request
    def _authenticate():
        g.unauthorized = False
        if not enabled:
            refuse_other_sites()
            g.tenant = DEFAULT_TENANT
            return
        if request.path in PUBLIC_PATHS or not request.path.startswith("/v1/"):
            g.tenant = None
            return
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        tenant = None
        if scheme.lower() == "bearer" and key:
            with current_app.extensions["backprop"]["sessions"]() as session:
                tenant = tenant_for_key(session, key.strip())
        g.tenant = tenant
        g.unauthorized = tenant is None
        if tenant is not None:
            g.api_key_id = key.strip().split("_")[1]  # the key's public prefix: its rate-limit budget
            g.api_key = key.strip()


def refuse_other_sites() -> None:
    """With authentication off (allowed only on a loopback address) anything that reaches the
    port is trusted, and a web page the developer opens can reach it: a form posts a dataset
    without a CORS preflight, and a name of the page's that it points at 127.0.0.1 (DNS
    rebinding) lets its scripts read every answer. Such requests name another Host, or send
    another site's Origin with a request that changes something."""
    host = urlsplit(f"//{request.host}").hostname or ""
    if host not in LOOPBACK_NAMES:
        raise ApiError(403, "forbidden_host", f"with authentication off the API answers only requests addressed "
                       f"to a loopback name (localhost, 127.0.0.1, [::1]), not {host!r}")
    origin = request.headers.get("Origin")
    if origin and request.method not in ("GET", "HEAD", "OPTIONS") and urlsplit(origin).netloc != request.host:
        raise ApiError(403, "cross_origin", f"with authentication off the API takes no {request.method} from "
                       f"another site's page (Origin {origin[:100]!r})")


def key_still_valid(session) -> bool:
    """For responses that outlive their request (event streams): a key revoked since the request
    began ends them. Always true with authentication off."""
    key = g.get("api_key")
    return key is None or tenant_for_key(session, key) == g.tenant


def enforce_auth(app: Flask) -> None:
    @app.before_request
    def _refuse_unauthorized():
        if g.get("unauthorized"):
            raise ApiError(401, "unauthorized", "send a valid API key: Authorization: Bearer KEY",
                           headers={"WWW-Authenticate": 'Bearer realm="backprop"'})
