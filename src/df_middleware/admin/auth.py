"""Admin authentication (SPEC §8.1, R-SEC-1, R-SEC-2): the DF_ADMIN_SECRET, in constant time.

`require_admin` is a FastAPI dependency for every route that acts as the operator: the admin
API, and `/leadconnector/oauth/start` (whoever completes an install makes a GHL location "ours").
It accepts `Authorization: Bearer <DF_ADMIN_SECRET>` or `X-DF-ADMIN-SECRET: <DF_ADMIN_SECRET>`.
With DF_ADMIN_SECRET unset nothing is accepted: the surface fails closed and says why.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from df_middleware.config import Settings

ADMIN_HEADER = "x-df-admin-secret"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="df-middleware admin"'}


def presented_admin_secret(request: Request) -> str | None:
    """The secret a request presents, from `Authorization: Bearer` or `X-DF-ADMIN-SECRET`."""
    scheme, _, credentials = _utf8(request.headers.get("authorization", "")).partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    header = _utf8(request.headers.get(ADMIN_HEADER, "")).strip()
    return header or None


def _utf8(header: str) -> str:
    """A header as its sender wrote it. Starlette decodes header bytes as latin-1, clients send
    UTF-8: without this a DF_ADMIN_SECRET with any non-ASCII character could never match."""
    try:
        return header.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return header


def admin_secret_matches(settings: Settings, presented: str | None) -> bool:
    """Constant-time comparison with DF_ADMIN_SECRET; False when either is missing."""
    if settings.df_admin_secret is None or presented is None:
        return False
    expected = settings.df_admin_secret.get_secret_value().encode()
    return bool(expected) and hmac.compare_digest(presented.encode(), expected)


async def require_admin(request: Request) -> None:
    """Dependency: 401 unless the request carries the admin secret (see the module docstring)."""
    settings: Settings = request.app.state.settings
    secret = settings.df_admin_secret
    if secret is None or not secret.get_secret_value():
        raise HTTPException(401, "admin access is disabled: DF_ADMIN_SECRET is not set", headers=_CHALLENGE)
    if not admin_secret_matches(settings, presented_admin_secret(request)):
        raise HTTPException(
            401,
            "admin secret required: send Authorization: Bearer <DF_ADMIN_SECRET> or X-DF-ADMIN-SECRET",
            headers=_CHALLENGE,
        )
