"""Rendering dashboard pages: Jinja2 with autoescape on (a hostile payload string is shown as
text, never markup), the security headers every page sends, and redirects with a flash message.

The templates live in `admin/templates/` and the stylesheet in `admin/static/dashboard.css`
(served at /static by `admin/docs.py`): no CDN, no JavaScript, so the Content-Security-Policy can
be `default-src 'self'` with nothing inline allowed.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from df_middleware.admin.dashboard.session import AdminSession, read_flash, sign_flash

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

#: The left navigation: (path, label).
NAV = [
    ("/admin", "Overview"),
    ("/admin/events", "Events"),
    ("/admin/sync-log", "Sync log"),
    ("/admin/optouts", "Opt-outs"),
    ("/admin/agents", "Agents & lists"),
    ("/admin/mappings", "Mappings"),
]


def _when(value: str | datetime | None) -> str:
    """A stored time as an operator reads it: `2026-12-02 20:14:05 UTC`."""
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


_environment = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["when"] = _when
_environment.filters["age"] = _age
_environment.filters["pretty"] = _pretty


def page(
    request: Request,
    template: str,
    *,
    session: AdminSession | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A rendered page with the security headers; `session` gives the forms their CSRF token."""
    html = _environment.get_template(template).render(
        request=request,
        request_path=request.url.path,
        nav=NAV,
        session=session,
        csrf_token=session.csrf_token if session else "",
        flash=read_flash(request),
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def safe_back(target: str | None, default: str) -> str:
    """Where an action returns to: a dashboard path only (never another site: `//host` or a URL)."""
    if not target or not target.startswith("/admin") or "//" in target or "\\" in target:
        return default
    return target


def redirect_with_flash(request: Request, target: str, message: str, level: str = "ok") -> RedirectResponse:
    """303 back to a dashboard page, which shows `message` (signed, so a link cannot forge one)."""
    flash = sign_flash(request.app.state.settings, message, level)
    path, _, query = target.partition("?")
    kept = "&".join(p for p in query.split("&") if p and not p.startswith("flash="))
    joined = f"{path}?{kept + '&' if kept else ''}{urlencode({'flash': flash})}"
    return RedirectResponse(joined, status_code=303, headers=SECURITY_HEADERS)


def query_without(request: Request, *names: str, **extra: str) -> str:
    """The page's query string without `names` (e.g. the cursor), plus `extra`: for paging links."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in names and k != "flash" and v]
    kept.extend((k, v) for k, v in extra.items() if v)
    return urlencode(kept)


_environment.globals["query_without"] = query_without
