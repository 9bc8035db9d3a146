"""Bearer API keys and the tenant they belong to. Every query a view makes is scoped to
`current_tenant()`; another tenant's ids look exactly like ids that do not exist."""

from __future__ import annotations

from flask import Flask, current_app, g, request

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
