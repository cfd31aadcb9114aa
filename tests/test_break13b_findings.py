"""Break-it findings on the dashboard and the demo, from outside (issue 13, second tester).

Each test failed before its fix, unless its docstring says it proves something that held.
The dashboard runs against the real database on both engines (the fixtures of
`tests/test_dashboard.py`); the real `df-middleware serve` process where what matters is how
uvicorn sees the client (a proxy's address, its forwarded headers).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from df_middleware.db.models import OptoutEvent, OptoutRegistry, QuarantineEvent
from df_middleware.db.session import Database
from tests.servers import free_port
from tests.test_dashboard import Dashboard, add_event, event_row
from tests.test_service_process import CLI, RunningCommand, clean_env

# The fixtures of the dashboard tests (a dashboard over the test database, logged in or not).
from tests.test_dashboard import dashboard, dashboard_factory, operator  # noqa: F401  isort: skip

SECRET = "break13b-proxy-secret-0123456789"


@pytest.mark.parametrize(
    "query",
    [
        {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "9999-12-31T23:59:59-14:00"},
    ],
)
async def test_an_aware_time_outside_the_utc_calendar_is_422_on_the_events_page(
    operator: Dashboard,  # noqa: F811
    db: Database,
    query: dict[str, str],
) -> None:
    """R-SEC-3, SPEC §8.2 (events page filters as the admin API's): `since=0001-01-01T00:00+14:00`
    parses but has no UTC instant; the events page passed it to the database layer, whose
    `astimezone(UTC)` raised OverflowError: a 500 (the sync log page and the admin API already
    answered 422). Now the page answers 422 and says why, with the form to correct it."""
    page = await operator.http.get("/admin/events", params=query)
    assert page.status_code == 422, page.text[:500]
    assert "out of range" in page.text
    assert 'name="csrf_token"' in page.text  # the page itself, not an error body


@pytest.mark.parametrize("name", ["source", "event_type", "entity_id", "cursor"])
async def test_a_nul_in_an_events_filter_is_422_on_both_engines(
    operator: Dashboard,  # noqa: F811
    db: Database,
    name: str,
) -> None:
    """R-SEC-3, SPEC §8.2: PostgreSQL can neither store nor compare text holding a NUL. The admin
    API refuses it (break13a finding 1), but the dashboard's own filter parsing (`text_filter`) let
    `\\x00` through to `list_events`: 500 on PostgreSQL, a silent empty page on SQLite. Now 422 on
    both, with the page and its message."""
    page = await operator.http.get("/admin/events", params={name: "ab\x00c"})
    assert page.status_code == 422, page.text[:500]
    assert "NUL" in page.text


async def test_a_nul_in_a_dashboard_form_is_422_and_changes_nothing(
    operator: Dashboard,  # noqa: F811
    db: Database,
) -> None:
    """R-SEC-3, R-SEC-6, SPEC §8.2: a quarantine reason or an opt-out reason with a NUL went to
    the database: a 500 on PostgreSQL after nothing but the CSRF check. Now every dashboard form
    with a NUL in a field is refused with 422 before anything is done, on both engines."""
    event_id = await add_event(db, status="error")
    token = await operator.csrf(f"/admin/events/{event_id}")
    quarantine = await operator.http.post(
        f"/admin/events/{event_id}/quarantine", data={"csrf_token": token, "reason": "bad\x00reason"}
    )
    assert quarantine.status_code == 422, quarantine.text[:500]
    assert (await event_row(db, event_id)).status == "error"
    optout = await operator.http.post(
        "/admin/optouts/opt-out",
        data={"csrf_token": token, "phone": "+19195550171", "reason": "spam\x00", "channel": "sms"},
    )
    assert optout.status_code == 422, optout.text[:500]
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(QuarantineEvent)) == 0
        assert await session.scalar(select(func.count()).select_from(OptoutRegistry)) == 0
        assert await session.scalar(select(func.count()).select_from(OptoutEvent)) == 0
    # Ordinary text still goes through (a tab is text, not junk).
    done = await operator.http.post(
        f"/admin/events/{event_id}/quarantine", data={"csrf_token": token, "reason": "asked\tby ops"}
    )
    assert done.status_code == 303, done.text[:500]
    assert (await event_row(db, event_id)).status == "quarantined"


# --- behind the documented reverse proxy ------------------------------------------------------------


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[str]:
    """`df-middleware serve` on 127.0.0.1 with DF_ADMIN_SECRET and `env`, on SQLite."""
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'proxy.db'}", DF_ADMIN_SECRET=SECRET, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    command = RunningCommand(proc)
    try:
        command.wait_for("Uvicorn running")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        command.finish(30)


def _from(address: str) -> httpx.Client:
    """A client whose connections come from `address` (a proxy on another host: 127.0.0.2)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


@pytest.mark.slow
def test_behind_the_documented_proxy_the_cookie_is_secure_and_the_limit_is_per_client(tmp_path: Path) -> None:
    """R-SEC-6, docs/operations.md "Forwarded headers, precisely": nginx terminates TLS on another
    host (here 127.0.0.2) and sends X-Forwarded-Proto/X-Forwarded-For. With FORWARDED_ALLOW_IPS
    naming the proxy, as the guide says, a real `serve` process sets the session cookie `Secure`
    and counts login attempts per real client: an attacker behind the same proxy using up his
    attempts does not lock the operator out. (Without it, every visitor is the proxy.)"""
    with serving(tmp_path, FORWARDED_ALLOW_IPS="127.0.0.2") as served, _from("127.0.0.2") as proxy:
        login = proxy.post(
            f"{served}/admin/login",
            data={"secret": SECRET},
            headers={"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7"},
        )
        assert login.status_code == 303, login.text
        assert "secure" in login.headers["set-cookie"].lower(), login.headers["set-cookie"]
        for _ in range(12):  # an attacker behind the same proxy
            proxy.post(
                f"{served}/admin/login",
                data={"secret": "guess"},
                headers={"x-forwarded-proto": "https", "x-forwarded-for": "198.51.100.9"},
            )
        operator = proxy.post(
            f"{served}/admin/login",
            data={"secret": SECRET},
            headers={"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.7"},
        )
        assert operator.status_code == 303, operator.status_code


@pytest.mark.slow
def test_an_untrusted_client_cannot_spoof_its_address_past_the_login_limit(tmp_path: Path) -> None:
    """R-SEC-6: the login limit counts per client address, and X-Forwarded-For from a client that
    is not a trusted proxy (here 127.0.0.3, not in uvicorn's default 127.0.0.1) changes nothing:
    the 11th attempt within a minute is 429 whatever address it claims."""
    with serving(tmp_path) as served, _from("127.0.0.3") as attacker:
        codes = [
            attacker.post(
                f"{served}/admin/login",
                data={"secret": "guess"},
                headers={"x-forwarded-for": f"192.0.2.{i}"},
            ).status_code
            for i in range(11)
        ]
    assert codes[:10] == [401] * 10, codes
    assert codes[10] == 429, codes
