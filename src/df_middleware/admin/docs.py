"""The API's documentation, offline (SPEC §8.1): the OpenAPI document and its UI at `/docs`.

FastAPI's own `/docs` and `/redoc` pages load Swagger UI and ReDoc from a CDN: they break on a
machine without internet access, and they make every operator's browser run code fetched from a
third party next to the admin secret. So `app.py` turns both off and `install_api_docs` serves
`/docs` from this package: Swagger UI's bundle, stylesheet and icon are vendored under
`admin/static/swagger-ui/` (swagger-ui-dist, Apache-2.0; its README says which version and how to
update it) and mounted at `/static`. The page sends a Content-Security-Policy that allows scripts,
styles, images and requests from this origin only (plus the page's one inline script, by hash),
and Swagger UI's online validator is switched off, so the page needs nothing but this service.
ReDoc is not served: one UI is enough, and it is one less bundle to vendor and keep current.

The document itself is FastAPI's, built from the routes; `install_api_docs` adds what the routes
cannot say by themselves: `components` (the webhook bodies and the security schemes of
`ingest.openapi`, and the admin and metrics schemes below), and the `security` of the routes
that check a secret in their own code (the admin API under `/api/admin`,
`/leadconnector/oauth/start`, and `/metrics`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from df_middleware.admin.oauth import START_PATH
from df_middleware.ingest.openapi import webhook_components

#: Vendored front-end assets, served at STATIC_PATH.
STATIC_DIR = Path(__file__).with_name("static")
STATIC_PATH = "/static"
DOCS_PATH = "/docs"
_SWAGGER = f"{STATIC_PATH}/swagger-ui"

ADMIN_BEARER = "adminBearer"
ADMIN_HEADER_SCHEME = "adminSecretHeader"
METRICS_BEARER = "metricsBearer"

#: The operator's and the metrics scraper's ways in (webhook senders' are in `ingest.openapi`).
OPERATOR_SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    ADMIN_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <DF_ADMIN_SECRET>` (admin API, `/leadconnector/oauth/start`). "
        "With DF_ADMIN_SECRET unset every admin route answers 401.",
    },
    ADMIN_HEADER_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "X-DF-ADMIN-SECRET",
        "description": "DF_ADMIN_SECRET, the alternative to the Bearer header.",
    },
    METRICS_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <METRICS_TOKEN>`: required by `/metrics` when "
        "METRICS_TOKEN is set.",
    },
}
_ADMIN_SECURITY: list[dict[str, list[str]]] = [{ADMIN_BEARER: []}, {ADMIN_HEADER_SCHEME: []}]
#: METRICS_TOKEN is optional: the empty requirement says "or nothing, when it is unset".
_METRICS_SECURITY: list[dict[str, list[str]]] = [{METRICS_BEARER: []}, {}]
_METRICS_PATH = "/metrics"
_ADMIN_API = "/api/admin"

#: The answer of a route that checks a secret itself and was not given it.
_UNAUTHORIZED: dict[str, Any] = {
    "description": "The secret is missing or wrong, or not configured (the message says which).",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    },
}

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _operator_security(path: str) -> list[dict[str, list[str]]] | None:
    """The security of an operation whose route checks a secret in its own code, by its path:
    the admin API (`/api/admin/...`), `/leadconnector/oauth/start`, and `/metrics`."""
    if path == _METRICS_PATH:
        return _METRICS_SECURITY
    if path in (START_PATH, _ADMIN_API) or path.startswith(_ADMIN_API + "/"):
        return _ADMIN_SECURITY
    return None


def _complete_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document (cached by FastAPI until the routes change) with the components, and
    the security (and its 401) that routes checking secrets in their own code cannot declare.
    Idempotent: the cached document is completed in place, the same way every time."""
    document = FastAPI.openapi(app)
    components = document.setdefault("components", {})
    extra = webhook_components()
    extra["securitySchemes"].update(OPERATOR_SECURITY_SCHEMES)
    for section, entries in extra.items():
        components.setdefault(section, {}).update(entries)
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    for path, operations in paths.items():
        security = _operator_security(path)
        if security is None:
            continue
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.setdefault("security", security)
                operation.setdefault("responses", {}).setdefault("401", _UNAUTHORIZED)
    return document


def _content_security_policy(page: str) -> str:
    """This origin only, plus the page's inline script by its hash. Swagger UI sets inline styles
    (so styles need `'unsafe-inline'`) and draws its icons from data: URIs."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def docs_router() -> APIRouter:
    """`/docs`: FastAPI's Swagger UI page, pointed at the vendored assets and sent with the CSP."""
    router = APIRouter()

    @router.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        app: FastAPI = request.app
        page = get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{_SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_SWAGGER}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
        html = bytes(page.body).decode()
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": _content_security_policy(html),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    return router


def install_api_docs(app: FastAPI) -> None:
    """Serve `/docs` and its assets from the package, and complete the OpenAPI document."""
    app.include_router(docs_router())
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = lambda: _complete_document(app)  # type: ignore[method-assign]
