"""The dashboard in a real browser (SPEC §8.2, R-SEC-6): Debian's Chromium driven by Playwright
against the real `df-middleware serve` process, with the GHL and Verity simulators over HTTP.

The operator's path: log in, filter the events, open one, replay it and see it processed again,
opt a number out by hand and see an agent's send to it refused, look at the overview, log out.
Screenshots of each step go to `test-artifacts/` (gitignored); with UPDATE_DOCS_SCREENSHOT=1 the
overview is also written to `docs/dashboard-overview.png`, the picture in the README.

No browser is ever downloaded (`playwright install` is not used): Chromium is Debian's package,
which `scripts/test` installs when it is missing. Without /usr/bin/chromium the test is skipped
with the reason, except in CI, where it must run.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from df_middleware.db.models import ReconcileRun, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.demo_run import LOCATION, DemoDeliverer
from df_middleware.simulators.ghl import GhlSimulator
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.verity import VeritySimulator
from df_middleware.simulators.verity import create_app as create_verity
from tests.conftest import IN_CI, Keys
from tests.servers import free_port, serve_app
from tests.test_service_process import CLI, RunningCommand, clean_env

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
DOCS_SCREENSHOT = REPO / "docs" / "dashboard-overview.png"
SECRET = "browser-test-admin-secret"
VERITY_SECRET = "verity-browser-secret"
VERITY_KEY = "verity-browser-key"
PROVIDER = "prov-sms-browser"
PERSON = "+19195550177"
#: How long the service gets to process something, reloading the page meanwhile.
DEADLINE_S = 60.0

if not CHROMIUM.exists() and not IN_CI:
    pytest.skip(
        f"{CHROMIUM} is not installed (Debian package `chromium`; scripts/test installs it)",
        allow_module_level=True,
    )
try:
    from playwright import sync_api
except ImportError:
    if IN_CI:
        raise
    pytest.skip("playwright is not installed: pip install -e '.[dev]'", allow_module_level=True)


class Service:
    """`df-middleware serve` with its worker, the GHL and Verity simulators, and the deliverer."""

    def __init__(
        self,
        url: str,
        database_url: str,
        ghl: GhlSimulator,
        verity: VeritySimulator,
        deliverer: DemoDeliverer,
    ) -> None:
        self.url = url
        self.database_url = database_url
        self.ghl = ghl
        self.verity = verity
        self.deliverer = deliverer

    def deliver(self, send: Callable[[DemoDeliverer], Any]) -> dict[str, Any]:
        answer: httpx.Response = in_thread(lambda: asyncio.run(send(self.deliverer)))
        return dict(answer.json())


@pytest.fixture
def service(tmp_path: Path, keys: Keys) -> Iterator[Service]:
    ghl_sim = GhlSimulator(seed=13)
    verity_sim = VeritySimulator()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        ghl_url = stack.enter_context(serve_app(create_ghl(ghl_sim)))
        verity_url = stack.enter_context(
            serve_app(
                create_verity(
                    verity_sim,
                    api_key=VERITY_KEY,
                    webhook_secret=VERITY_SECRET,
                    webhook_url=f"{url}/api/webhooks/texting",
                    receipt_delay_seconds=0.02,
                )
            )
        )
        database_url = f"sqlite:///{tmp_path / 'browser.db'}"
        env = clean_env(
            DATABASE_URL=database_url,
            DF_ADMIN_SECRET=SECRET,
            GHL_LOCATION_ID=LOCATION,
            GHL_BASE_URL=ghl_url,
            GHL_API_KEY="pit-sim",
            GHL_CONVERSATION_PROVIDER_ID=PROVIDER,
            GHL_WEBHOOK_ED25519_PUBLIC_KEY=keys.ed25519_public_pem,
            VERITY_BASE_URL=verity_url,
            VERITY_API_KEY=VERITY_KEY,
            VERITY_WEBHOOK_SECRET=VERITY_SECRET,
            POLL_SECONDS="0.1",
        )
        proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        command = RunningCommand(proc)
        try:
            command.wait_for("service.started")
            command.wait_for("Uvicorn running")
            deliverer = DemoDeliverer(url, keys.ed25519_private, "unused", VERITY_SECRET)
            yield Service(url, database_url, ghl_sim, verity_sim, deliverer)
        finally:
            if proc.poll() is None:
                proc.terminate()
            command.finish(30)
            (ARTIFACTS / "browser-service.log").parent.mkdir(exist_ok=True)
            (ARTIFACTS / "browser-service.log").write_text(command.output)


@pytest.fixture
def browser_page(service: Service) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ],
        )
        try:
            context = browser.new_context(base_url=service.url, viewport={"width": 1360, "height": 900})
            page = context.new_page()
            # Every message the browser logs (a CSP refusal, a failed load), for the test to check.
            page.console_errors = []
            page.on(
                "console",
                lambda message: page.console_errors.append(message.text) if message.type == "error" else None,
            )
            yield page
        finally:
            browser.close()


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def reload_until(page: Any, condition: Callable[[], bool], what: str) -> None:
    """Reload the page until `condition` holds (the service works in the background)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            shot(page, "timeout")
            raise AssertionError(f"timed out waiting for {what}; page:\n{page.inner_text('main')}")
        time.sleep(0.2)
        page.reload()


def status_text(page: Any) -> str:
    return str(page.inner_text("#event-status")).strip()


def in_thread(work: Callable[[], Any]) -> Any:
    """Run `work` (which may start an event loop) beside Playwright's sync API, which keeps one here."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(work).result()


def seed_an_hour_for_the_picture(database_url: str) -> None:
    """For the README's picture only (UPDATE_DOCS_SCREENSHOT=1): an hour of past traffic, some of it
    failed, and a finished reconcile run, written straight into the service's database, so the
    overview looks as it does on a working day. No assertion depends on it."""

    async def seed() -> None:
        db = Database(database_url)
        now = utcnow()
        try:
            async with db.session() as session:
                for minute in range(3, 60):
                    for n in range(2 + (minute * 7) % 9):
                        at = now - timedelta(minutes=minute, seconds=n)
                        status = "error" if (minute + n) % 23 == 0 else "done"
                        session.add(
                            WebhookEvent(
                                source="aloware" if n % 3 == 0 else "ghl",
                                event_type="call.completed" if n % 3 == 0 else "ContactUpdate",
                                entity_type="contact",
                                entity_id=f"c-day-{minute}-{n}",
                                payload_json={},
                                dedupe_key=f"picture:{minute}:{n}",
                                ordering_key=f"picture:{minute}:{n}",
                                status=status,
                                error_message="GHL answered 422" if status == "error" else None,
                                attempts=1,
                                received_at=at,
                                next_attempt_at=at,
                                processed_at=at + timedelta(seconds=1),
                            )
                        )
                session.add(
                    ReconcileRun(
                        job_name="contacts",
                        started_at=now - timedelta(minutes=42),
                        finished_at=now - timedelta(minutes=40),
                        status="success",
                        totals={"pages": 3, "drifted": 2},
                    )
                )
        finally:
            await db.dispose()

    asyncio.run(seed())


def wait_for_contact(service: Service, phone: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for contact in service.ghl.snapshot()["contacts"]:
            if contact["phone"] == phone and not contact["deleted"]:
                return dict(contact)
        time.sleep(0.1)
    raise AssertionError(f"GHL never got a contact for {phone}")


def contact_update(contact_id: str, phone: str) -> Callable[[DemoDeliverer], Any]:
    payload = {"type": "ContactUpdate", "id": contact_id, "phone": phone, "firstName": "Dana"}
    return lambda deliverer: deliverer.deliver_ghl(payload)


def test_an_operator_replays_an_event_and_opts_a_number_out_in_the_browser(
    service: Service, browser_page: Any
) -> None:
    """SPEC §8.2, R-SEC-6, R-OPT-4: log in, filter events, open one, replay it and see it
    processed again; opt a number out by hand and see an agent's send to it refused (nothing
    sent by Verity, GHL's message failed, the sync log says why); log out."""
    page = browser_page
    for i in range(4):
        service.deliver(contact_update(f"c-browse-{i}", f"+1919555020{i}"))
    target = service.deliver(contact_update("c-browse-target", "+19195550299"))["id"]

    # Without a session every page leads to the login; a wrong secret is refused.
    page.goto("/admin/events")
    assert page.url.endswith("/admin/login")
    page.fill("#secret", "not-it")
    page.click("button[type=submit]")
    assert "not the admin secret" in page.inner_text("body")
    page.fill("#secret", SECRET)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/admin$"))
    shot(page, "overview-start")

    # Filter the events to the target contact, and open it.
    page.click("nav.sidebar >> text=Events")
    page.fill("input[name=entity_id]", "c-browse-target")
    page.select_option("select[name=kind]", "webhook")
    page.click("#event-filters button[type=submit]")
    page.wait_for_url(re.compile(r"entity_id=c-browse-target"))
    rows = page.locator("tr[data-event-id]")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-event-id") == target
    shot(page, "events-filtered")
    page.click(f"a.event-link:has-text('{target}')")
    page.wait_for_url(re.compile(f"/admin/events/{target}"))
    assert page.inner_text("#event-id").strip() == target
    reload_until(page, lambda: status_text(page) == "done", "the event to be processed")
    first_log = page.locator(".sync-status").count()
    assert first_log >= 1

    # Replay it: pending again, then processed again (one more sync_log row).
    page.click("button[data-action=replay]")
    page.wait_for_url(re.compile(r"flash="))
    assert "replayed" in page.inner_text(".flash")
    reload_until(
        page,
        lambda: status_text(page) == "done" and page.locator(".sync-status").count() > first_log,
        "the replayed event to be processed again",
    )
    shot(page, "event-replayed")

    # A manual opt-out from the form, then an agent's text to that number.
    page.click("nav.sidebar >> text=Opt-outs")
    form = page.locator("#optout-form")
    form.locator("input[name=phone]").fill("(919) 555-0177")
    form.locator("input[name=reason]").fill("asked by phone not to be texted")
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"flash="))
    assert "opted out of SMS" in page.inner_text(".flash")
    assert PERSON not in page.inner_text("main")  # masked in the registry (R-SEC-4)
    shot(page, "optout-added")

    # The worker told GHL: the contact exists now (created with SMS DND), and an agent texts it.
    contact = wait_for_contact(service, PERSON)
    message, payload = service.ghl.send_sms_as_user(
        LOCATION, contact["id"], "Hi Eve, still interested?", conversation_provider_id=PROVIDER
    )
    sent = service.deliver(lambda deliverer: deliverer.deliver_provider_message(dict(payload)))

    page.goto(f"/admin/events/{sent['id']}")
    reload_until(page, lambda: status_text(page) == "done", "the agent's send to be decided")
    assert "recipient opted out of SMS" in page.inner_text("main")
    shot(page, "send-refused")
    assert service.verity.sent_messages == []
    [in_ghl] = [m for m in service.ghl.snapshot()["messages"] if m["id"] == message.id]
    assert in_ghl["status"] == "failed"

    # The overview now has an hour with traffic; then log out.
    page.click("nav.sidebar >> text=Overview")
    assert page.locator("svg.chart rect").count() >= 1
    overview = shot(page, "overview")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        in_thread(lambda: seed_an_hour_for_the_picture(service.database_url))
        page.reload()
        page.screenshot(path=str(DOCS_SCREENSHOT), full_page=False)
    assert overview.stat().st_size > 0
    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/admin/login$"))
    page.goto("/admin")
    assert page.url.endswith("/admin/login")
    # Nothing on any page was refused by the Content-Security-Policy or failed to load (no CDN);
    # the one error logged is the wrong secret's 401.
    assert [m for m in page.console_errors if "status of 401" not in m] == []
    assert len(page.console_errors) == 1
