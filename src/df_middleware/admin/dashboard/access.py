"""`/admin/login` and `/admin/logout` (SPEC §8.2, R-SEC-6).

The secret is compared in constant time (`admin_secret_matches`, the admin API's own check).
A failed login answers 401 with the form again and sets no cookie; the 11th attempt within a
minute from one address answers 429 before the secret is even looked at.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from df_middleware.admin.auth import admin_secret_matches
from df_middleware.admin.dashboard.render import SECURITY_HEADERS, page
from df_middleware.admin.dashboard.session import (
    COOKIE_NAME,
    LOGIN_PATH,
    LOGIN_RATE,
    MAX_AGE_SECONDS,
    MAX_FORM_BYTES,
    LoginLimiter,
    checked_form,
    cookie_is_secure,
    dashboard_enabled,
    new_session_cookie,
    session_of,
)
from df_middleware.config import Settings
from df_middleware.observability import get_logger

log = get_logger(__name__)


def _login_form(request: Request, *, status_code: int = 200, error: str | None = None) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    return page(
        request,
        "login.html",
        session=None,
        status_code=status_code,
        error=error,
        enabled=dashboard_enabled(settings),
    )


def access_router() -> APIRouter:
    router = APIRouter()
    limiter = LoginLimiter()

    @router.get(LOGIN_PATH, include_in_schema=False)
    async def login_form(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/admin", status_code=303)
        return _login_form(request)

    @router.post(LOGIN_PATH, include_in_schema=False)
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "unknown"
        if not limiter.attempt(client):
            log.warning("dashboard.login_rate_limited", client=client)
            return _login_form(
                request,
                status_code=429,
                error="Too many login attempts from your address "
                f"(at most {LOGIN_RATE.replace('/', ' per ')}). Wait a minute and try again.",
            )
        settings: Settings = request.app.state.settings
        if not dashboard_enabled(settings):
            return _login_form(
                request, status_code=401, error="The dashboard is disabled: DF_ADMIN_SECRET is not set."
            )
        body = await request.body()
        fields = dict(parse_qsl(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=10))
        if not admin_secret_matches(settings, fields.get("secret") or None):
            log.warning("dashboard.login_failed", client=client)
            return _login_form(request, status_code=401, error="That is not the admin secret.")
        log.info("dashboard.login", client=client)
        response = RedirectResponse("/admin", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE_NAME,
            new_session_cookie(settings),
            max_age=MAX_AGE_SECONDS,
            path="/admin",
            httponly=True,
            samesite="strict",
            secure=cookie_is_secure(request),
        )
        return response

    @router.post("/admin/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = session_of(request)
        if session is not None:
            await checked_form(request, session)  # a forged form cannot log the operator out
        response = RedirectResponse(LOGIN_PATH, status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE_NAME, path="/admin", httponly=True, samesite="strict")
        return response

    return router
