"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests
and from the engine's spec declarations: views carry their metadata with `@doc(...)`, and
`/openapi.json` walks the URL map. Nothing is kept by hand."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, ValidationError

from .errors import error_path, validation_error

bp = Blueprint("openapi", __name__)

ERROR_STATUSES = {400: "Malformed request", 401: "Missing or invalid API key",
                  403: "With authentication off: addressed to a host that is not a loopback name, or a change "
                       "sent from another site's page", 404: "Not found",
                  405: "Method not allowed", 409: "Conflict with the resource's state",
                  413: "Request body too large", 415: "Unsupported media type",
                  422: "Validation failed; `errors` lists {path, message}", 429: "Rate limited",
                  500: "Internal error",
                  503: "Try again shortly (Retry-After): the database does not answer, or this process is "
                       "serving as many large bodies, predictions or event streams as it may at once"}


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, str]] | None = None


REQUEST_ID_PARAM = {"name": "X-Request-ID", "in": "header", "required": False,
                    "description": "your id for this request, echoed back and written to the logs (1-128 "
                                   "letters, digits or . _ : -); one is made when absent or not of that form",
                    "schema": {"type": "string"}}
IDEMPOTENCY_KEY_PARAM = {"name": "Idempotency-Key", "in": "header", "required": False,
                         "description": "retry safely: the same key with the same request answers with the first "
                                        "result (and `Idempotent-Replayed: true`); the same key with another "
                                        "request is refused with 422 `idempotency_key_reused`",
                         "schema": {"type": "string", "maxLength": 255}}
REQUEST_ID_HEADER = {"description": "the request's id: the caller's X-Request-ID, or one made for it",
                     "required": True, "schema": {"type": "string"}}
LOCATION_HEADER = {"description": "the created or affected resource", "schema": {"type": "string"}}
REPLAYED_HEADER = {"description": "`true` when this is the stored answer to an earlier request with the same "
                                  "Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}}
RETRY_AFTER_HEADER = {"description": "seconds to wait before trying again", "schema": {"type": "string"}}


def doc(summary: str, *, body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None, status: int = 200, errors: tuple[int, ...] = (),
        tag: str | None = None, raw_body: dict[str, Any] | None = None,
        raw_response: dict[str, Any] | None = None, headers: tuple[dict[str, Any], ...] = (),
        description: str = ""):
    """Attach OpenAPI metadata to a view."""
    def deco(view):
        view._openapi = {"summary": summary, "body": body, "query": query, "response": response,
                         "status": status, "errors": errors, "tag": tag, "raw_body": raw_body,
                         "raw_response": raw_response, "headers": list(headers),
                         "description": description or (view.__doc__ or "")}
        return view
    return deco


def parse_query(model: type[BaseModel]) -> Any:
    """Validate the query string with the same model the document shows; a parameter given twice
    is refused (which one would count is nobody's guess)."""
    repeated = next((k for k, values in request.args.lists() if len(values) > 1), None)
    if repeated is not None:
        raise validation_error([{"path": repeated, "message": "given more than once"}])
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error([{"path": error_path(e["loc"]) or "(query)",
                                 "message": "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"]}
                                for e in exc.errors(include_url=False)]) from None


class _Components:
    def __init__(self):
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas[name] = sub
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def resolve(self, value: Any) -> Any:
        """A hand-written schema fragment with the pydantic models in it replaced by references."""
        if isinstance(value, type) and issubclass(value, BaseModel):
            return self.ref(value)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


def _parameters(rule, query: type[BaseModel] | None) -> list[dict[str, Any]]:
    params = [{"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
              for arg in sorted(rule.arguments)]
    if query is not None:
        schema = query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                           **({"description": prop["description"]} if "description" in prop else {})})
    return params


def build_document(app: Flask) -> dict[str, Any]:
    components = _Components()
    components.ref(Problem)
    paths: dict[str, Any] = {}
    auth_enabled = app.extensions["backprop"]["settings"].auth_enabled
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        meta = getattr(app.view_functions[rule.endpoint], "_openapi", None)
        if meta is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        v1 = rule.rule.startswith("/v1/")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"operationId": rule.endpoint.replace(".", "_"), "summary": meta["summary"],
                                  "parameters": [*_parameters(rule, meta["query"]), *meta["headers"],
                                                 REQUEST_ID_PARAM], "responses": {}}
            if getattr(view, "_idempotent", False):
                op["parameters"].insert(-1, IDEMPOTENCY_KEY_PARAM)
            if meta["description"].strip():
                op["description"] = meta["description"].strip()
            if meta["tag"]:
                op["tags"] = [meta["tag"]]
            if not v1 and auth_enabled:
                op["security"] = []  # probes and the document itself need no key
            if meta["body"] is not None:
                op["requestBody"] = {"required": True,
                                     "content": {"application/json": {"schema": components.ref(meta["body"])}}}
            elif meta["raw_body"] is not None:
                op["requestBody"] = {"required": True, "content": components.resolve(meta["raw_body"])}
            ok: dict[str, Any] = {"description": HTTPStatus(meta["status"]).phrase,
                                  "headers": {"X-Request-ID": REQUEST_ID_HEADER}}
            if meta["status"] in (201, 202):
                ok["headers"]["Location"] = LOCATION_HEADER
            if getattr(view, "_idempotent", False):
                ok["headers"]["Idempotent-Replayed"] = REPLAYED_HEADER
            if meta["response"] is not None:
                ok["content"] = {"application/json": {"schema": components.ref(meta["response"])}}
            elif meta["raw_response"] is not None:
                ok["content"] = components.resolve(meta["raw_response"])
            op["responses"][str(meta["status"])] = ok
            statuses = set(meta["errors"]) | {400, 500}  # 400: a NUL in a query parameter (refuse_nul)
            if v1:
                # a query parameter the route does not take; the per-key rate limit; the database
                # down (database_unavailable), or this process's slots for large bodies, predictions
                # or event streams all taken (too_many_*)
                statuses |= {422, 429, 503}
                if auth_enabled:
                    statuses.add(401)
            if not auth_enabled:
                statuses.add(403)  # every route: auth.refuse_other_sites (forbidden_host, cross_origin)
            if meta["body"] is not None or meta["raw_body"] is not None:
                statuses |= {400, 413, 415, 422}
            if meta["query"] is not None:
                statuses.add(422)
            if getattr(view, "_idempotent", False):
                statuses |= {409, 422}  # key in use by a request still running; key reused
            for code in sorted(statuses):
                op["responses"][str(code)] = {
                    "description": ERROR_STATUSES[code],
                    "headers": {"X-Request-ID": REQUEST_ID_HEADER,
                                **({"Retry-After": RETRY_AFTER_HEADER}
                                   if code in (409, 429) or (code == 503 and v1) else {})},
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            paths.setdefault(path, {})[method.lower()] = op
    doc_: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "backprop", "version": "1",
                 "description": "Train neural networks by backpropagation over HTTP."},
        "paths": paths,
        "components": {"schemas": components.schemas},
    }
    if auth_enabled:
        doc_["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        doc_["security"] = [{"apiKey": []}]
    return doc_


@bp.get("/openapi.json")
def openapi_json():
    ext = current_app.extensions["backprop"]
    if "openapi" not in ext:
        ext["openapi"] = build_document(current_app)
    return ext["openapi"]


DOCS_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>backprop API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
code,pre{background:#f5f5f5;border-radius:4px}pre{padding:.6em;overflow:auto;font-size:13px}
h2{border-bottom:1px solid #ddd;margin-top:2em}.m{font-weight:bold;text-transform:uppercase;
display:inline-block;width:4.5em}details{margin:.3em 0 .8em 5em}</style></head><body>
<h1>backprop API</h1><p>Generated from <a href="/openapi.json">/openapi.json</a>.</p><div id="ops"></div>
<script>
fetch('/openapi.json').then(r => r.json()).then(spec => {
  const root = document.getElementById('ops');
  const byTag = {};
  for (const [path, ops] of Object.entries(spec.paths)) for (const [m, op] of Object.entries(ops)) {
    (byTag[(op.tags || ['other'])[0]] ||= []).push([m, path, op]);
  }
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement('h2'); h.textContent = tag; root.appendChild(h);
    for (const [m, path, op] of ops) {
      const d = document.createElement('div');
      const head = document.createElement('div');
      head.innerHTML = '<span class="m"></span><code></code> ';
      head.querySelector('.m').textContent = m; head.querySelector('code').textContent = path;
      head.append(op.summary || '');
      const det = document.createElement('details');
      const sum = document.createElement('summary'); sum.textContent = 'details';
      const pre = document.createElement('pre'); pre.textContent = JSON.stringify(
        {parameters: op.parameters, requestBody: op.requestBody, responses: Object.keys(op.responses)}, null, 1);
      det.append(sum, pre); d.append(head, det); root.appendChild(d);
    }
  }
});
</script></body></html>"""


@bp.get("/docs")
def docs_page():
    return Response(DOCS_PAGE, mimetype="text/html")
