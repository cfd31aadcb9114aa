"""Dashboard sessions (SPEC §8.2, R-SEC-6): login with the admin secret, a signed cookie, a CSRF
token per session, and login attempts rate-limited per client address.

Why a signed cookie and no session table: the dashboard must work on every server process behind
a load balancer without shared state, and the admin secret is the only credential there is. The
signing key is derived from DF_ADMIN_SECRET, so rotating the secret logs everybody out at once.
The cookie holds a random session id and its issue time; the CSRF token is an HMAC of that id, so
it is bound to the session and needs no storage either.

What this does not do: a logged-out cookie copied before the logout stays valid until it expires
(MAX_AGE); rotate DF_ADMIN_SECRET to end every session now. The login rate limit is per process
and per client address as the server sees it (behind a proxy, run uvicorn with proxy headers).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from df_middleware.config import Settings

COOKIE_NAME = "df_admin_session"
#: A working day and then some: the operator on call logs in once per shift.
MAX_AGE_SECONDS = 12 * 3600
#: Flash messages are read on the page the action redirects to, at once.
FLASH_MAX_AGE_SECONDS = 300
LOGIN_PATH = "/admin/login"
#: Attempts per client address; enough for typos, far too few to guess a secret.
LOGIN_RATE = "10/minute"
#: The largest form the dashboard reads (its forms hold a few short fields).
MAX_FORM_BYTES = 16 * 1024
_KEY_LABEL = b"df-middleware dashboard session v1"


@dataclass(frozen=True)
class AdminSession:
    """A logged-in operator's session: its id, and the CSRF token its forms must carry."""

    session_id: str
    csrf_token: str


def dashboard_enabled(settings: Settings) -> bool:
    secret = settings.df_admin_secret
    return secret is not None and bool(secret.get_secret_value())


def _signing_key(settings: Settings) -> bytes | None:
    """A key derived from DF_ADMIN_SECRET (never the secret itself); None when it is unset."""
    if not dashboard_enabled(settings):
        return None
    assert settings.df_admin_secret is not None
    return hmac.new(settings.df_admin_secret.get_secret_value().encode(), _KEY_LABEL, hashlib.sha256).digest()


def _serializer(settings: Settings, salt: str) -> URLSafeTimedSerializer | None:
    key = _signing_key(settings)
    return None if key is None else URLSafeTimedSerializer(key, salt=salt)


def _csrf_for(settings: Settings, session_id: str) -> str:
    key = _signing_key(settings)
    assert key is not None
    return hmac.new(key, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()


def new_session_cookie(settings: Settings) -> str:
    """The signed value of a fresh session's cookie."""
    serializer = _serializer(settings, "session")
    assert serializer is not None, "no sessions without DF_ADMIN_SECRET"
    return str(serializer.dumps({"sid": secrets.token_urlsafe(24)}))


def session_of(request: Request) -> AdminSession | None:
    """The request's session, or None (no cookie, a tampered or expired one, or the secret changed)."""
    settings: Settings = request.app.state.settings
    raw = request.cookies.get(COOKIE_NAME)
    serializer = _serializer(settings, "session")
    if not raw or serializer is None:
        return None
    try:
        data = serializer.loads(raw, max_age=MAX_AGE_SECONDS)
    except BadSignature:
        return None
    session_id = data.get("sid") if isinstance(data, dict) else None
    if not isinstance(session_id, str) or not session_id:
        return None
    return AdminSession(session_id=session_id, csrf_token=_csrf_for(settings, session_id))


def require_session(request: Request) -> AdminSession:
    """Dependency of every dashboard page but the login: no valid session → 303 to the login."""
    session = session_of(request)
    if session is None:
        raise HTTPException(303, "log in first", headers={"Location": LOGIN_PATH})
    return session


async def checked_form(request: Request, session: AdminSession) -> dict[str, str]:
    """The POSTed form's fields, after its `csrf_token` matched the session's (constant time).
    403 without it, so a forged cross-site form changes nothing."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form could not be read") from None
    fields = dict(pairs)
    token = fields.pop("csrf_token", "")
    if not hmac.compare_digest(token.encode(), session.csrf_token.encode()):
        raise HTTPException(403, "the form's csrf_token is missing or wrong: reload the page and try again")
    # No dashboard field may hold a NUL: PostgreSQL cannot store one (a reason reached the
    # database as a 500 there, break13b finding 2). Refused before anything is done.
    junk = sorted(name for name, value in fields.items() if "\x00" in value or "\x00" in name)
    if junk:
        raise HTTPException(422, f"the form's field {junk[0][:40]!r} contains a NUL character")
    return fields


def cookie_is_secure(request: Request) -> bool:
    return request.url.scheme == "https"


# --- flash messages ---------------------------------------------------------------------------------


def sign_flash(settings: Settings, message: str, level: str = "ok") -> str:
    """A flash message for the query string, signed so a link cannot put words in the page."""
    serializer = _serializer(settings, "flash")
    assert serializer is not None
    return str(serializer.dumps([level, message[:500]]))


def read_flash(request: Request) -> tuple[str, str] | None:
    raw = request.query_params.get("flash")
    serializer = _serializer(request.app.state.settings, "flash")
    if not raw or serializer is None:
        return None
    try:
        level, message = serializer.loads(raw, max_age=FLASH_MAX_AGE_SECONDS)
    except (BadSignature, ValueError, TypeError):
        return None
    return (str(level), str(message))


# --- login rate limit -------------------------------------------------------------------------------


class LoginLimiter:
    """LOGIN_RATE attempts per client address, in this process's memory (moving window)."""

    def __init__(self, rate: str = LOGIN_RATE) -> None:
        self._rate = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def attempt(self, client: str) -> bool:
        """Count an attempt; False when the address has used up its attempts."""
        return bool(self._limiter.hit(self._rate, "dashboard-login", client))
