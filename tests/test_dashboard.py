"""The dashboard at /admin (SPEC §8.2, R-SEC-6, R-SEC-4), over real HTTP semantics (httpx against
the ASGI app) and the real database on both engines.

What is proved: every route's auth rule (303 to the login without a session, 401 and no cookie
for a wrong secret, 429 after too many attempts, a tampered or foreign cookie refused, CSRF
missing or wrong → 403 and nothing changed), the cookie's attributes, pages rendering stored data
masked (and revealed on request), hostile strings shown as text, and the forms calling the same
service functions as the CLI: replay, quarantine, mark done, manual opt-out (a later send is then
refused by the consent check every send path asks).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import func, select

from df_middleware.admin.dashboard.session import COOKIE_NAME
from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.consent.store import sms_allowed
from df_middleware.db.models import (
    AgentDirectory,
    CallListRegistry,
    ContactListMembership,
    ContactMapping,
    GhlOauthToken,
    OptoutEvent,
    OptoutRegistry,
    QuarantineEvent,
    ReconcileRun,
    SyncLog,
    WebhookEvent,
)
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.sync.agent_routing import list_name

SECRET = "dashboard-test-secret"
PHONE = "+19195550142"
EMAIL = "ann.person@example.com"
XSS = "<script>alert('owned')</script>"
PAGES = ["/admin", "/admin/events", "/admin/sync-log", "/admin/optouts", "/admin/agents", "/admin/mappings"]
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, "no csrf_token field on the page"
    return match.group(1)


def flash_of(html: str) -> list[str]:
    return re.findall(r'class="flash flash-\w+" role="\w+">([^<]*)<', html)


class Dashboard:
    """An operator's browser, reduced to HTTP: cookies kept, redirects not followed."""

    def __init__(self, app: FastAPI, base_url: str = "http://testserver") -> None:
        self.app = app
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=base_url, follow_redirects=False
        )

    async def login(self, secret: str = SECRET) -> httpx.Response:
        return await self.http.post("/admin/login", data={"secret": secret})

    async def csrf(self, path: str = "/admin") -> str:
        page = await self.http.get(path)
        assert page.status_code == 200, page.text
        return csrf_of(page.text)

    async def follow(self, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 303, response.text
        return await self.http.get(response.headers["location"])


@pytest.fixture
def dashboard_factory(make_settings: Callable[..., Settings]) -> Callable[..., Dashboard]:
    made: list[Dashboard] = []

    def make(base_url: str = "http://testserver", **overrides: Any) -> Dashboard:
        values: dict[str, Any] = {"df_admin_secret": SECRET, "auto_migrate": False, **overrides}
        dashboard = Dashboard(create_app(make_settings(**values), run_worker=False), base_url)
        made.append(dashboard)
        return dashboard

    return make


@pytest.fixture
async def dashboard(dashboard_factory: Callable[..., Dashboard]) -> AsyncIterator[Dashboard]:
    board = dashboard_factory()
    yield board
    await board.http.aclose()
    await board.app.state.db.dispose()


@pytest.fixture
async def operator(dashboard: Dashboard) -> Dashboard:
    """A logged-in dashboard."""
    assert (await dashboard.login()).status_code == 303
    return dashboard


async def add_event(db: Database, **fields: Any) -> uuid.UUID:
    now = utcnow()
    values: dict[str, Any] = {
        "source": "ghl",
        "event_type": "ContactUpdate",
        "entity_type": "contact",
        "entity_id": "c-42",
        "payload_json": {"type": "ContactUpdate", "id": "c-42", "phone": PHONE, "email": EMAIL},
        "dedupe_key": f"test:{uuid.uuid4()}",
        "ordering_key": "ghl:contact:c-42",
        "received_at": now,
        "next_attempt_at": now,
        **fields,
    }
    async with db.session() as session:
        row = WebhookEvent(**values)
        session.add(row)
    return row.id


async def event_row(db: Database, event_id: uuid.UUID) -> WebhookEvent:
    async with db.session() as session:
        row = await session.get(WebhookEvent, event_id)
        assert row is not None
        return row


# --- the auth rules ------------------------------------------------------------------------------


async def test_every_page_and_action_without_a_session_goes_to_the_login(
    dashboard: Dashboard, db: Database
) -> None:
    """SPEC §8.2: any /admin page but the login, and every action, answers 303 to /admin/login
    without a valid session; nothing is changed by a POST without one."""
    event_id = await add_event(db, status="error", error_message="boom", attempts=10)
    for path in [*PAGES, f"/admin/events/{event_id}"]:
        response = await dashboard.http.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/admin/login"
    for path in [
        f"/admin/events/{event_id}/replay",
        f"/admin/events/{event_id}/quarantine",
        f"/admin/events/{event_id}/unquarantine",
        f"/admin/events/{event_id}/mark-done",
        "/admin/optouts/opt-out",
        "/admin/optouts/opt-in",
        "/admin/lists/rebuild",
    ]:
        response = await dashboard.http.post(path, data={"phone": PHONE, "reason": "x"})
        assert response.status_code == 303, path
        assert response.headers["location"] == "/admin/login"
    assert (await event_row(db, event_id)).status == "error"
    assert await sms_allowed(db, PHONE)
    login = await dashboard.http.get("/admin/login")
    assert login.status_code == 200
    assert 'name="secret"' in login.text


async def test_a_wrong_secret_is_401_with_the_form_and_no_cookie(dashboard: Dashboard) -> None:
    """SPEC §8.2, R-SEC-6: a failed login answers 401 with the form again and sets no cookie."""
    for secret in ("wrong", "", SECRET + "x", SECRET[:-1]):
        response = await dashboard.login(secret)
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert 'name="secret"' in response.text
        assert "not the admin secret" in response.text
    assert (await dashboard.http.get("/admin")).status_code == 303


async def test_the_right_secret_sets_a_signed_http_only_same_site_cookie(dashboard: Dashboard) -> None:
    """SPEC §8.2, R-SEC-6: success → 303 to /admin with an HTTP-only, SameSite, time-limited
    cookie (not Secure over plain http); the pages then open; logout ends the session."""
    response = await dashboard.login()
    assert response.status_code == 303
    assert response.headers["location"] == "/admin"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    attributes = cookie.lower()
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "max-age=43200" in attributes
    assert "secure" not in attributes
    assert SECRET not in cookie
    for path in PAGES:
        page = await dashboard.http.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "same-origin"
        assert page.headers["cache-control"] == "no-store"
    token = await dashboard.csrf()
    out = await dashboard.http.post("/admin/logout", data={"csrf_token": token})
    assert out.status_code == 303
    assert out.headers["location"] == "/admin/login"
    assert f'{COOKIE_NAME}=""' in out.headers["set-cookie"]
    assert (await dashboard.http.get("/admin")).status_code == 303


async def test_over_https_the_cookie_is_secure(dashboard_factory: Callable[..., Dashboard]) -> None:
    """R-SEC-6: a login over https gets a Secure cookie."""
    board = dashboard_factory("https://testserver")
    try:
        response = await board.login()
        assert response.status_code == 303
        assert "secure" in response.headers["set-cookie"].lower()
    finally:
        await board.http.aclose()
        await board.app.state.db.dispose()


async def test_login_attempts_are_rate_limited_per_address(dashboard: Dashboard) -> None:
    """R-SEC-6: ten attempts a minute from one address; the next is 429 with a clear message
    and no cookie, even with the right secret."""
    for _ in range(10):
        assert (await dashboard.login("guess")).status_code == 401
    refused = await dashboard.login()
    assert refused.status_code == 429
    assert "Too many login attempts" in refused.text
    assert "set-cookie" not in refused.headers


async def test_a_tampered_or_foreign_cookie_is_refused(dashboard: Dashboard) -> None:
    """R-SEC-6: the cookie is signed with a key derived from DF_ADMIN_SECRET: a changed byte, a
    made-up value, or one signed under another secret (a rotated one) is no session."""
    await dashboard.login()
    good = dashboard.http.cookies[COOKIE_NAME]
    payload, _, signature = good.rpartition(".")
    # The first character, not the last: base64's last character carries padding bits, so a
    # change there may decode to the same signature bytes (a flaky "tamper").
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    foreign = URLSafeTimedSerializer(b"another key", salt="session").dumps({"sid": "x" * 32})
    for forged in (f"{payload}.{flipped}", "garbage", str(foreign), good.replace(".", "", 1)):
        dashboard.http.cookies.clear()
        dashboard.http.cookies.set(COOKIE_NAME, forged)
        response = await dashboard.http.get("/admin")
        assert response.status_code == 303, forged
        assert response.headers["location"] == "/admin/login"
    dashboard.http.cookies.clear()
    dashboard.http.cookies.set(COOKIE_NAME, good)
    assert (await dashboard.http.get("/admin")).status_code == 200


async def test_rotating_the_secret_logs_everybody_out(
    dashboard_factory: Callable[..., Dashboard],
) -> None:
    """R-SEC-6: a cookie issued under the old DF_ADMIN_SECRET is refused under the new one."""
    old = dashboard_factory()
    new = dashboard_factory(df_admin_secret="the-rotated-secret")
    try:
        await old.login()
        assert (await old.http.get("/admin")).status_code == 200
        new.http.cookies.set(COOKIE_NAME, old.http.cookies[COOKIE_NAME])
        assert (await new.http.get("/admin")).status_code == 303
    finally:
        for board in (old, new):
            await board.http.aclose()
            await board.app.state.db.dispose()


async def test_without_df_admin_secret_the_dashboard_is_disabled(
    dashboard_factory: Callable[..., Dashboard],
) -> None:
    """SPEC §8.2: with DF_ADMIN_SECRET unset the login page says so and no login works."""
    board = dashboard_factory(df_admin_secret=None)
    try:
        page = await board.http.get("/admin/login")
        assert page.status_code == 200
        assert "dashboard is disabled" in page.text
        for secret in ("", "anything"):
            response = await board.login(secret)
            assert response.status_code == 401
            assert "set-cookie" not in response.headers
        assert (await board.http.get("/admin")).status_code == 303
    finally:
        await board.http.aclose()
        await board.app.state.db.dispose()


async def test_a_post_without_the_sessions_csrf_token_is_403_and_changes_nothing(
    operator: Dashboard, dashboard_factory: Callable[..., Dashboard], db: Database
) -> None:
    """SPEC §8.2, R-SEC-6: every changing form needs the session's csrf_token: missing, wrong,
    or another session's token → 403, and the event, the registry and the session are unchanged."""
    event_id = await add_event(db, status="error", error_message="boom", attempts=10)
    other = dashboard_factory()
    try:
        await other.login()
        others_token = await other.csrf()
    finally:
        await other.http.aclose()
        await other.app.state.db.dispose()
    mine = await operator.csrf()
    assert mine != others_token
    for token in (None, "", "0" * 64, others_token, mine[:-1]):
        fields = {} if token is None else {"csrf_token": token}
        for path, extra in (
            (f"/admin/events/{event_id}/replay", {}),
            (f"/admin/events/{event_id}/quarantine", {"reason": "x"}),
            (f"/admin/events/{event_id}/mark-done", {}),
            ("/admin/optouts/opt-out", {"phone": PHONE, "reason": "forged", "channel": "sms"}),
            ("/admin/logout", {}),
        ):
            response = await operator.http.post(path, data={**fields, **extra})
            assert response.status_code == 403, (path, token)
            assert "csrf_token" in response.text
    row = await event_row(db, event_id)
    assert (row.status, row.attempts) == ("error", 10)
    assert await sms_allowed(db, PHONE)
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(OptoutEvent)) == 0
        assert await session.scalar(select(func.count()).select_from(QuarantineEvent)) == 0
    assert (await operator.http.get("/admin")).status_code == 200  # still logged in


async def test_a_forged_flash_message_is_not_shown(operator: Dashboard) -> None:
    """SPEC §8.2: the message an action redirects with is signed; a link cannot write one."""
    page = await operator.http.get("/admin/events", params={"flash": "Your account is locked, call 555"})
    assert page.status_code == 200
    assert "account is locked" not in page.text


# --- pages with data -----------------------------------------------------------------------------


async def test_events_page_lists_filters_and_pages_with_masked_pii(operator: Dashboard, db: Database) -> None:
    """SPEC §8.2, R-SEC-4: each listed event shows its id and status; the filters are the admin
    API's; "Older →" pages by cursor without repeats; entity ids and errors are masked."""
    now = utcnow()
    ids = [
        await add_event(
            db,
            status="error" if i % 2 else "done",
            received_at=now - timedelta(minutes=i),
            entity_id=PHONE if i == 0 else f"c-{i}",
            error_message=f"GHL said no to {PHONE}" if i % 2 else None,
        )
        for i in range(60)
    ]
    page = await operator.http.get("/admin/events")
    assert page.status_code == 200
    shown = re.findall(r'data-event-id="([^"]+)"', page.text)
    assert shown == [str(i) for i in ids[:50]]
    assert PHONE not in page.text
    assert 'class="older"' in page.text
    older = re.search(r'class="older" href="([^"]+)"', page.text)
    assert older
    rest = await operator.http.get(older.group(1).replace("&amp;", "&"))
    assert re.findall(r'data-event-id="([^"]+)"', rest.text) == [str(i) for i in ids[50:]]
    errors = await operator.http.get("/admin/events", params={"status": "error", "source": "ghl"})
    listed = re.findall(r'data-event-id="([^"]+)"', errors.text)
    assert listed == [str(i) for n, i in enumerate(ids) if n % 2][:50]
    assert "badge-error" in errors.text
    one = await operator.http.get("/admin/events", params={"entity_id": "c-7", "kind": "webhook"})
    assert re.findall(r'data-event-id="([^"]+)"', one.text) == [str(ids[7])]
    since = (now - timedelta(minutes=2, seconds=30)).isoformat()
    recent = await operator.http.get("/admin/events", params={"since": since})
    assert re.findall(r'data-event-id="([^"]+)"', recent.text) == [str(i) for i in ids[:3]]
    for bad in ({"status": "lost"}, {"kind": "email"}, {"since": "yesterday"}, {"cursor": "nonsense"}):
        refused = await operator.http.get("/admin/events", params=bad)
        assert refused.status_code == 422, bad
        assert "flash-error" in refused.text


async def test_event_detail_masks_by_default_reveals_on_request_and_escapes_hostile_text(
    operator: Dashboard, db: Database
) -> None:
    """SPEC §8.2, R-SEC-4: the detail page shows the event id, its sync_log rows and effects and
    quarantine info; phones and emails are masked unless `?reveal=true`; a payload string that
    is markup is shown as text (autoescape), never run."""
    event_id = await add_event(
        db,
        status="error",
        error_message=XSS,
        payload_json={
            "type": "ContactUpdate",
            "id": "c-42",
            "phone": PHONE,
            "email": EMAIL,
            "firstName": XSS,
        },
    )
    async with db.session() as session:
        session.add(
            SyncLog(
                direction="ghl_to_aloware",
                entity_type="contact",
                entity_id="c-42",
                source_id="c-42",
                status="error",
                message=f"could not write {PHONE}",
                error_message=XSS,
                correlation_id=str(event_id),
                started_at=utcnow(),
            )
        )
    page = await operator.http.get(f"/admin/events/{event_id}")
    assert page.status_code == 200
    assert str(event_id) in page.text
    assert "ghl_to_aloware" in page.text
    assert PHONE not in page.text
    assert EMAIL not in page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    revealed = await operator.http.get(f"/admin/events/{event_id}", params={"reveal": "true"})
    assert PHONE in revealed.text
    assert EMAIL in revealed.text
    assert "<script>" not in revealed.text
    missing = await operator.http.get(f"/admin/events/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert (await operator.http.get("/admin/events/not-a-uuid")).status_code == 404


async def test_replay_quarantine_unquarantine_and_mark_done_through_the_forms(
    operator: Dashboard, db: Database
) -> None:
    """SPEC §8.2, R-Q-5: the buttons call the CLI's and the API's functions: replay → pending,
    attempts 0; quarantine with a reason (and replay then refused, with the reason why);
    unquarantine → pending; mark done → done with a sync_log row naming the dashboard."""
    event_id = await add_event(db, status="error", error_message="boom", attempts=10)
    token = await operator.csrf(f"/admin/events/{event_id}")
    back = f"/admin/events/{event_id}"

    replayed = await operator.http.post(
        f"/admin/events/{event_id}/replay", data={"csrf_token": token, "back": back}
    )
    assert replayed.headers["location"].startswith(back)
    assert f"Event {event_id} replayed" in flash_of((await operator.follow(replayed)).text)[0]
    row = await event_row(db, event_id)
    assert (row.status, row.attempts, row.error_message) == ("pending", 0, None)

    quarantined = await operator.http.post(
        f"/admin/events/{event_id}/quarantine",
        data={"csrf_token": token, "back": back, "reason": "poison payload"},
    )
    assert (await event_row(db, event_id)).status == "quarantined"
    detail = await operator.follow(quarantined)
    assert "poison payload" in detail.text
    assert "by dashboard" in detail.text

    refused = await operator.http.post(
        f"/admin/events/{event_id}/replay", data={"csrf_token": token, "back": back}
    )
    assert "unquarantine it before you replay it" in flash_of((await operator.follow(refused)).text)[0]
    assert (await event_row(db, event_id)).status == "quarantined"

    await operator.http.post(f"/admin/events/{event_id}/unquarantine", data={"csrf_token": token})
    assert (await event_row(db, event_id)).status == "pending"
    await operator.http.post(f"/admin/events/{event_id}/mark-done", data={"csrf_token": token})
    assert (await event_row(db, event_id)).status == "done"
    async with db.session() as session:
        messages = list(
            await session.scalars(select(SyncLog.message).where(SyncLog.correlation_id == str(event_id)))
        )
    assert messages == ["marked done by dashboard"]

    # An action's "back" can only be a dashboard page.
    away = await operator.http.post(
        f"/admin/events/{event_id}/replay", data={"csrf_token": token, "back": "//evil.example/x"}
    )
    assert away.headers["location"].startswith(f"/admin/events/{event_id}?flash=")


async def test_a_manual_opt_out_from_the_form_refuses_a_later_send(operator: Dashboard, db: Database) -> None:
    """SPEC §8.2, R-OPT-2, R-OPT-4: the opt-out form records a manual decision with the
    dashboard as actor and queues the event that tells GHL (decide_and_tell, as the CLI); from
    then on the send check refuses the number, whatever its formatting. The registry lists it
    masked, the number's history explains it, and the opt-in form lifts it."""
    token = await operator.csrf("/admin/optouts")
    response = await operator.http.post(
        "/admin/optouts/opt-out",
        data={
            "csrf_token": token,
            "phone": "(919) 555-0142",
            "reason": "complaint by e-mail",
            "channel": "sms",
        },
    )
    page = await operator.follow(response)
    assert "opted out of SMS" in flash_of(page.text)[0]
    assert not await sms_allowed(db, PHONE)
    async with db.session() as session:
        [decision] = await session.scalars(select(OptoutEvent))
        told = list(await session.scalars(select(WebhookEvent).where(WebhookEvent.source == "operator")))
    assert (decision.source, decision.actor, decision.reason) == (
        "manual",
        "dashboard",
        "complaint by e-mail",
    )
    assert len(told) == 1
    assert told[0].payload_json["status"] == "opted_out"
    assert PHONE not in page.text
    assert "complaint by e-mail" in page.text

    history = await operator.http.get("/admin/optouts", params={"phone": "919-555-0142"})
    assert "SMS OPTED OUT" in history.text
    assert "dashboard" in history.text
    assert PHONE not in history.text

    await operator.http.post(
        "/admin/optouts/opt-in",
        data={"csrf_token": token, "phone": PHONE, "reason": "consent in writing", "channel": "sms"},
    )
    assert await sms_allowed(db, PHONE)


async def test_the_opt_out_form_refuses_bad_input_and_writes_nothing(
    operator: Dashboard, db: Database
) -> None:
    """SPEC §8.2: a number that is not a phone, a missing reason or an unknown channel → 422 with
    the reason on the page; nothing recorded."""
    token = await operator.csrf("/admin/optouts")
    for fields in (
        {"phone": "not a phone", "reason": "x", "channel": "sms"},
        {"phone": PHONE, "reason": "", "channel": "sms"},
        {"phone": PHONE, "reason": "x", "channel": "email"},
        {"phone": "1" * 5000, "reason": "x", "channel": "sms"},
    ):
        response = await operator.http.post("/admin/optouts/opt-out", data={"csrf_token": token, **fields})
        assert response.status_code == 422, fields
        assert "flash-error" in response.text
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(OptoutRegistry)) == 0
        assert await session.scalar(select(func.count()).select_from(OptoutEvent)) == 0


async def test_overview_shows_depth_dead_letters_chart_reconcile_tokens(
    operator: Dashboard, db: Database
) -> None:
    """SPEC §8.2: the overview shows queue depth by source and status, dead letters with a link,
    throughput and error rate of the last hour as a server-drawn SVG, the last reconcile run per
    job and OAuth token health."""
    now = utcnow()
    for i in range(6):
        await add_event(db, status="done", received_at=now - timedelta(minutes=i * 7), processed_at=now)
    for _ in range(3):
        await add_event(db, status="error", source="aloware", received_at=now)
    await add_event(db, status="pending", received_at=now - timedelta(minutes=30))
    async with db.session() as session:
        session.add(
            ReconcileRun(
                job_name="contacts", started_at=now, finished_at=now, status="error", error_message="GHL 503"
            )
        )
        session.add(
            GhlOauthToken(
                location_id="loc-expired",
                access_token="x",
                expires_at=now - timedelta(hours=1),
                refresh_failed_at=now,
                refresh_error="invalid_grant",
            )
        )
    page = await operator.http.get("/admin")
    assert page.status_code == 200
    html = page.text
    assert re.search(r'id="dead-letters">3<', html)
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in html
    assert html.count('class="bar-done"') >= 1
    assert html.count('class="bar-error"') == 1  # all three errors in the newest bucket
    assert ": 3 error</title>" in html
    assert 'class="rate-line"' in html
    assert "33.3 %" in html  # 3 errors of 9 finished in the hour
    assert "30 min" in html  # the oldest pending event's age
    assert "aloware" in html
    assert "GHL 503" in html
    assert "refresh-failing" in html
    assert "invalid_grant" in html
    assert "never run" in html  # the lists and optouts jobs


async def test_sync_log_page_filters_pages_and_masks(operator: Dashboard, db: Database) -> None:
    """SPEC §8.2, R-SEC-4: the sync log newest first with the admin API's filters, "Older →"
    paging, messages masked, each row linked to its event."""
    event_id = uuid.uuid4()
    now = utcnow()
    async with db.session() as session:
        for i in range(55):
            session.add(
                SyncLog(
                    direction="ghl_to_aloware" if i % 2 else "aloware_to_ghl",
                    entity_type="contact",
                    entity_id=f"c-{i}",
                    source_id=f"c-{i}",
                    status="error" if i == 3 else "success",
                    message=f"wrote {PHONE} (row {i})",
                    correlation_id=str(event_id) if i < 2 else None,
                    started_at=now - timedelta(seconds=i),
                )
            )
    page = await operator.http.get("/admin/sync-log")
    assert page.status_code == 200
    assert page.text.count("(row ") == 50
    assert "(row 0)" in page.text
    assert "(row 50)" not in page.text
    assert PHONE not in page.text
    older = re.search(r'class="older" href="([^"]+)"', page.text)
    assert older
    rest = await operator.http.get(older.group(1).replace("&amp;", "&"))
    assert sorted(int(n) for n in re.findall(r"\(row (\d+)\)", rest.text)) == list(range(50, 55))
    by_event = await operator.http.get("/admin/sync-log", params={"correlation_id": str(event_id)})
    assert sorted(re.findall(r"\(row (\d+)\)", by_event.text)) == ["0", "1"]
    assert f'href="/admin/events/{event_id}"' in by_event.text
    failed = await operator.http.get(
        "/admin/sync-log", params={"status": "error", "direction": "ghl_to_aloware"}
    )
    assert re.findall(r"\(row (\d+)\)", failed.text) == ["3"]
    refused = await operator.http.get("/admin/sync-log", params={"status": "maybe"})
    assert refused.status_code == 422


async def test_mappings_page_searches_by_any_key_masked(operator: Dashboard, db: Database) -> None:
    """SPEC §8.2, R-ID-1, R-SEC-4: mappings found by a phone in any format, an email, a GHL or an
    Aloware id; phones and emails masked; a number that is not a phone is 422."""
    async with db.session() as session:
        session.add(
            ContactMapping(
                ghl_contact_id="ghl-ann",
                aloware_contact_id="alo-ann",
                phone_number=PHONE,
                email=EMAIL,
                sync_direction="ghl_to_aloware",
            )
        )
        session.add(
            ContactMapping(
                ghl_contact_id="ghl-bo", aloware_contact_id="alo-bo", sync_direction="aloware_to_ghl"
            )
        )
    for search in (
        {"phone": "(919) 555-0142"},
        {"email": EMAIL.upper()},
        {"ghl_id": "ghl-ann"},
        {"aloware_id": "alo-ann"},
    ):
        page = await operator.http.get("/admin/mappings", params=search)
        assert page.status_code == 200, search
        assert "ghl-ann" in page.text, search
        assert "ghl-bo" not in page.text, search
        assert PHONE not in page.text
        assert EMAIL not in page.text
    everyone = await operator.http.get("/admin/mappings")
    assert "ghl-ann" in everyone.text
    assert "ghl-bo" in everyone.text
    assert (await operator.http.get("/admin/mappings", params={"phone": "call me"})).status_code == 422


async def test_agents_page_shows_directory_lists_and_blocked_lists(
    dashboard_factory: Callable[..., Dashboard], db: Database
) -> None:
    """SPEC §8.2, R-AG-3: the directory (emails masked), every active agent's lists with members
    and blocked contacts, the blocked lists named; the rebuild button needs Aloware configured
    and the CSRF token, and says why it did not start."""
    async with db.session() as session:
        session.add(
            AgentDirectory(
                agent_key="ANN",
                display_name="Ann Agent",
                ghl_owner_email="ann.agent@example.com",
                is_active=True,
            )
        )
        session.add(AgentDirectory(agent_key="OLD", display_name="Gone Agent", is_active=False))
        session.add(
            CallListRegistry(
                agent_key="ANN",
                list_key="HOT",
                aloware_list_id="list-77",
                aloware_list_name=list_name("ANN", "HOT"),
            )
        )
        for n, status in enumerate(["member", "member", "blocked"]):
            session.add(
                ContactListMembership(contact_id=f"c-{n}", agent_key="ANN", list_key="HOT", status=status)
            )
        session.add(
            ContactListMembership(contact_id="c-9", agent_key="ANN", list_key="WARM", status="blocked")
        )
    board = dashboard_factory(agent_list_keys="HOT,WARM")
    try:
        await board.login()
        page = await board.http.get("/admin/agents")
        assert page.status_code == 200
        html = page.text
        assert "Ann Agent" in html
        assert "Gone Agent" in html
        assert "ann.agent@example.com" not in html
        assert re.search(rf"{list_name('ANN', 'HOT')}</td>.*?list-77.*?>2<.*?>1<", html, re.DOTALL)
        blocked = f"{list_name('ANN', 'HOT')}, {list_name('ANN', 'WARM')}"
        assert f"Blocked lists (contacts wait for Aloware to have them): {blocked}" in html
        token = csrf_of(html)
        assert (await board.http.post("/admin/lists/rebuild")).status_code == 403
        refused = await board.http.post("/admin/lists/rebuild", data={"csrf_token": token})
        assert "Aloware is not configured" in flash_of((await board.follow(refused)).text)[0]
    finally:
        await board.http.aclose()
        await board.app.state.db.dispose()
