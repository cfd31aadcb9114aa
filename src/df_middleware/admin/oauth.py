"""GHL Marketplace OAuth routes (R-OA-1): the admin-only start, and GHL's callback.

`GET /leadconnector/oauth/start` needs the admin secret, because whoever completes an install
makes a GHL location one the service syncs. It redirects to GHL's choose-location page with a
signed, expiring `state`. `GET /leadconnector/oauth` (the callback, the path the existing app
registered with GHL) accepts only a `state` we signed in the last 15 minutes, so an install that
did not start here — a forged link, a replayed old one, or an install begun from the GHL
marketplace listing — stores nothing. It then exchanges the code (`POST /oauth/token`) and stores
the location's token, encrypted.

The state is an itsdangerous `URLSafeTimedSerializer` token carrying a random nonce, signed with
a key derived from the token encryption key: every process sharing that key verifies any other's
state, with no server-side session. `df-middleware oauth start-url` prints the same URL.

Answers are small HTML pages (a person's browser lands here), escaped by Jinja2's autoescape,
never cached, and sent with `Referrer-Policy: no-referrer` so the code in the callback URL does
not travel on to any other site.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from jinja2 import Environment
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from df_middleware.admin.auth import require_admin
from df_middleware.config import Settings
from df_middleware.connectors.tokens import (
    GhlTokenStore,
    TokenCipher,
    load_token_cipher,
    missing_oauth_settings,
    token_http_client,
)
from df_middleware.db.models import OAuthStateUse
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import SyncError
from df_middleware.observability import get_logger

log = get_logger(__name__)

START_PATH = "/leadconnector/oauth/start"
CALLBACK_PATH = "/leadconnector/oauth"
STATE_SALT = "ghl-oauth-state"
STATE_MAX_AGE_SECONDS = 15 * 60


class InvalidState(Exception):
    """The callback's `state` is missing, forged, or older than STATE_MAX_AGE_SECONDS."""


# --- state and the authorize URL ------------------------------------------------------------------


def _state_serializer(cipher: TokenCipher) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(cipher.derive_key(STATE_SALT), salt=STATE_SALT)


def new_state(cipher: TokenCipher) -> str:
    """A signed, timestamped state carrying a random nonce (every start URL is different)."""
    return _state_serializer(cipher).dumps({"nonce": secrets.token_urlsafe(16)})


def verify_state(cipher: TokenCipher, state: str | None) -> str:
    """The state's nonce; raises `InvalidState`, with a reason fit for the person who followed
    the link, unless the state is one we signed less than STATE_MAX_AGE_SECONDS ago."""
    if not state:
        raise InvalidState("the request carries no state")
    try:
        payload = _state_serializer(cipher).loads(state, max_age=STATE_MAX_AGE_SECONDS)
    except SignatureExpired:
        raise InvalidState(
            f"the install link expired (it is valid for {STATE_MAX_AGE_SECONDS // 60} minutes)"
        ) from None
    except BadSignature:
        raise InvalidState("the state was not issued by this service") from None
    nonce = payload.get("nonce") if isinstance(payload, dict) else None
    if not isinstance(nonce, str) or not nonce:
        raise InvalidState("the state was not issued by this service")
    return nonce


async def use_state_once(db: Database, nonce: str) -> None:
    """Record the state's nonce as used; raise `InvalidState` when it already was.

    A state is good for one callback: a link copied from a browser history or a log cannot install
    another location while it is still within its 15 minutes. Uses older than a day (well past
    any state's lifetime) are forgotten on the way.
    """
    now = utcnow()
    try:
        async with db.session() as session:
            await session.execute(
                delete(OAuthStateUse).where(OAuthStateUse.used_at < now - timedelta(days=1))
            )
            session.add(OAuthStateUse(nonce=nonce, used_at=now))
    except IntegrityError:
        raise InvalidState("this install link was already used") from None


def authorize_url(settings: Settings, cipher: TokenCipher) -> str:
    """GHL's choose-location URL with our client id, redirect URI, scopes and a fresh state."""
    params = urlencode(
        {
            "response_type": "code",
            "redirect_uri": settings.oauth_redirect_uri,
            "client_id": settings.ghl_client_id or "",
            "scope": settings.ghl_oauth_scopes,
            "state": new_state(cipher),
        }
    )
    base = settings.ghl_oauth_authorize_url
    return f"{base}{'&' if '?' in base else '?'}{params}"


# --- pages ---------------------------------------------------------------------------------------------

_PAGES = Environment(autoescape=True, auto_reload=False)
_PAGE = _PAGES.from_string(
    """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · DF-Middleware</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.4rem}.ok{color:#1a7f37}.bad{color:#cf222e}code{background:#f6f8fa;padding:0 .25rem}</style>
</head>
<body><main>
<h1 class="{{ 'ok' if ok else 'bad' }}">{{ title }}</h1>
{% for paragraph in paragraphs %}<p>{{ paragraph }}</p>
{% endfor %}</main></body>
</html>
"""
)
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


def _page(status: int, title: str, *paragraphs: str, ok: bool = False) -> HTMLResponse:
    html = _PAGE.render(title=title, paragraphs=paragraphs, ok=ok)
    return HTMLResponse(html, status_code=status, headers=_PAGE_HEADERS)


def _not_configured(missing: list[str]) -> HTMLResponse:
    return _page(
        503,
        "GHL OAuth is not configured",
        f"This service cannot install the GHL app yet: set {', '.join(missing)} and restart it.",
    )


def _cipher(request: Request) -> TokenCipher:
    """The app's token cipher (loaded at startup when OAuth is configured; created here otherwise)."""
    cipher: TokenCipher | None = getattr(request.app.state, "token_cipher", None)
    if cipher is None:
        cipher = load_token_cipher(request.app.state.settings, create=True)
        request.app.state.token_cipher = cipher
    assert cipher is not None  # create=True always yields a cipher or raises
    return cipher


# --- routes ----------------------------------------------------------------------------------------------


def oauth_router() -> APIRouter:
    router = APIRouter(tags=["oauth"])

    @router.get(
        START_PATH,
        summary="Start a GHL Marketplace install (admin secret required)",
        dependencies=[Depends(require_admin)],
        response_class=RedirectResponse,
        response_model=None,
        status_code=302,
        responses={302: {"description": "Redirect to GHL's choose-location page"}, 401: {}, 503: {}},
    )
    async def oauth_start(request: Request) -> Response:
        settings: Settings = request.app.state.settings
        missing = missing_oauth_settings(settings)
        if missing:
            return _not_configured(missing)
        url = authorize_url(settings, _cipher(request))
        log.info("oauth.install_started")
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    @router.get(
        CALLBACK_PATH,
        summary="GHL's OAuth callback: verify state, exchange the code, store the token",
        response_class=HTMLResponse,
        responses={400: {}, 502: {}, 503: {}},
    )
    async def oauth_callback(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> HTMLResponse:
        settings: Settings = request.app.state.settings
        missing = missing_oauth_settings(settings)
        if missing:
            return _not_configured(missing)
        cipher = _cipher(request)
        db: Database = request.app.state.db
        try:
            # The state is checked (and spent) first: nothing of an unauthenticated request,
            # not even GHL's error text, is shown unless it carries a state we issued.
            await use_state_once(db, verify_state(cipher, state))
        except InvalidState as exc:
            log.warning("oauth.callback_refused", reason=str(exc))
            return _page(
                400,
                "This install link is not valid",
                f"{str(exc).capitalize()}. Nothing was stored.",
                f"Installs must start from {START_PATH} (with the admin secret) or from "
                "`df-middleware oauth start-url`; start again from there.",
            )
        if error:
            log.warning("oauth.callback_refused", reason="ghl_error", ghl_error=error[:100])
            detail = f"GHL answered: {error}" + (f" ({error_description})" if error_description else "")
            return _page(400, "The app was not installed", detail[:500], "Nothing was stored.")
        if not code:
            log.warning("oauth.callback_refused", reason="no code")
            return _page(400, "The app was not installed", "GHL sent no authorization code.")
        http = token_http_client(settings)
        try:
            location_id = await GhlTokenStore(settings, db, http, cipher).exchange_code(code)
        except SyncError as exc:
            log.warning("oauth.code_exchange_failed", error=type(exc).__name__, reason=str(exc))
            return _page(
                502,
                "The app was not installed",
                f"Exchanging the authorization code with GHL failed: {exc}",
                "Nothing was stored. Start the install again.",
            )
        finally:
            await http.aclose()
        log.info("oauth.installed", location_id=location_id)
        return _page(
            200,
            "GHL app installed",
            f"Location {location_id} is installed: DF-Middleware now syncs it with its own OAuth token.",
            "You can close this page.",
            ok=True,
        )

    return router
