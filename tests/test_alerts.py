"""Operator alerts (SPEC §8.4): the pure decision, the facts read from a real database, and
delivery to a local Slack-compatible receiver over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from df_middleware.config import Settings
from df_middleware.db.models import EVENT_MODELS, GhlOauthToken, ReconcileRun
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.alerts import (
    DEAD_LETTERS,
    ERROR_RATE,
    ERROR_RATE_MIN_EVENTS,
    OAUTH_REFRESH,
    QUEUE_AGE,
    RECONCILE,
    Alerter,
    AlertFacts,
    AlertState,
    evaluate,
    read_facts,
)
from df_middleware.queue.scheduler import default_jobs
from tests.event_factory import ago, event_row, insert_event, insert_events
from tests.servers import free_port, serve_app

T0 = datetime(2026, 1, 1, 12, 0, 0).astimezone()
PHONE = "+14155550123"
#: A run of 7+ digits (optionally separated) would be a phone number shown in full.
FULL_PHONE_RE = re.compile(r"\d[\d\s().-]{6,}\d")


@pytest.fixture
def pure_settings() -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="sqlite:///unused-by-pure-tests.db",
        public_base_url="https://mw.example.com",
        alert_cooldown_seconds=900,
        alert_queue_age_seconds=600,
    )


# --- pure decisions ------------------------------------------------------------------------------


def test_fires_once_quiet_within_cooldown_again_after_and_resolved_once(pure_settings: Settings) -> None:
    """§8.4 alerts (no R- id in the SPEC): a condition alerts once, stays quiet for the cooldown
    while it persists, alerts again after it, and sends exactly one resolved message when it clears."""
    dead = AlertFacts(dead_letters_total=2, dead_letters_new=2)
    messages, state = evaluate(dead, AlertState(), T0, pure_settings)
    assert len(messages) == 1
    assert DEAD_LETTERS in messages[0]
    assert "2 new" in messages[0]
    assert "https://mw.example.com/admin" in messages[0]

    quiet, state = evaluate(
        AlertFacts(dead_letters_total=2), state, T0 + timedelta(seconds=899), pure_settings
    )
    assert quiet == []

    again, state = evaluate(
        AlertFacts(dead_letters_total=3, dead_letters_new=1),
        state,
        T0 + timedelta(seconds=900),
        pure_settings,
    )
    assert len(again) == 1
    assert DEAD_LETTERS in again[0]
    assert "Alert" in again[0]

    resolved, state = evaluate(AlertFacts(), state, T0 + timedelta(seconds=960), pure_settings)
    assert len(resolved) == 1
    assert "Resolved" in resolved[0]
    assert DEAD_LETTERS in resolved[0]

    nothing, _ = evaluate(AlertFacts(), state, T0 + timedelta(seconds=1020), pure_settings)
    assert nothing == []


def test_each_condition_is_named_in_plain_words(pure_settings: Settings) -> None:
    """§8.4 alerts: queue age, error rate, OAuth refresh failure and reconcile failure each fire."""
    facts = AlertFacts(
        oldest_pending_age_seconds=601,
        recent_processed=ERROR_RATE_MIN_EVENTS,
        recent_errors=2,
        oauth_failed_locations=1,
        reconcile_failed_jobs=1,
        reconcile_failed_new=1,
    )
    messages, _ = evaluate(facts, AlertState(), T0, pure_settings)
    text = "\n".join(messages)
    for name in (QUEUE_AGE, ERROR_RATE, OAUTH_REFRESH, RECONCILE):
        assert name in text
    assert DEAD_LETTERS not in text
    assert len(messages) == 4


def test_thresholds_are_not_alerts(pure_settings: Settings) -> None:
    """§8.4 alerts: at the limits nothing fires — age exactly ALERT_QUEUE_AGE_SECONDS, exactly 5 %,
    and a high rate over fewer than ERROR_RATE_MIN_EVENTS events (1 of 2 is not an alert)."""
    for facts in (
        AlertFacts(oldest_pending_age_seconds=600),
        AlertFacts(recent_processed=100, recent_errors=5),
        AlertFacts(recent_processed=2, recent_errors=1),
        AlertFacts(recent_processed=ERROR_RATE_MIN_EVENTS - 1, recent_errors=ERROR_RATE_MIN_EVENTS - 1),
    ):
        messages, _ = evaluate(facts, AlertState(), T0, pure_settings)
        assert messages == [], facts


# --- facts from a real database ------------------------------------------------------------------


async def test_read_facts_counts_each_condition(db: Database) -> None:
    """§8.4 alerts: facts read on both engines — dead letters (all at the first check, then only
    new), oldest pending age, error rate of the last 15 minutes, OAuth and reconcile failures."""
    now = utcnow()
    await insert_event(db, status="pending", received_at=ago(700))
    rows = [event_row("texting", status="done", processed_at=ago(60)) for _ in range(19)]
    rows.append(event_row("texting", status="error", processed_at=ago(60)))
    rows.append(event_row("texting", status="error", processed_at=ago(3600)))  # outside the window
    await insert_events(db, "texting", rows)
    async with db.session() as session:
        await session.execute(
            insert(GhlOauthToken),
            [{"location_id": "loc-1", "access_token": "x", "expires_at": now, "refresh_failed_at": ago(10)}],
        )
        await session.execute(
            insert(ReconcileRun),
            [
                {"job_name": "contacts", "started_at": ago(300), "status": "error", "finished_at": ago(290)},
                {
                    "job_name": "contacts",
                    "started_at": ago(200),
                    "status": "success",
                    "finished_at": ago(190),
                },
                {"job_name": "lists", "started_at": ago(100), "status": "error", "finished_at": ago(90)},
            ],
        )
    facts = await read_facts(db, None, now)
    assert facts.dead_letters_total == 2
    assert facts.dead_letters_new == 2
    assert facts.oldest_pending_age_seconds is not None
    assert facts.oldest_pending_age_seconds > 600
    assert (facts.recent_processed, facts.recent_errors) == (20, 1)
    assert facts.oauth_failed_locations == 1
    assert facts.reconcile_failed_jobs == 1  # `contacts` recovered; `lists` did not
    assert facts.reconcile_failed_new == 2

    later = await read_facts(db, ago(30), utcnow())
    assert later.dead_letters_new == 0
    assert later.dead_letters_total == 2
    assert later.reconcile_failed_new == 0


# --- delivery to a local receiver ----------------------------------------------------------------


class Receiver:
    """A Slack-compatible incoming webhook that records what it gets; `status` is its answer."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200

    def app(self) -> Starlette:
        async def hook(request: Request) -> JSONResponse:
            if self.status != 200:
                return JSONResponse({"ok": False}, status_code=self.status)
            self.received.append(await request.json())
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hooks/T000/B000/secret-token", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    recorder = Receiver()
    with serve_app(recorder.app()) as url:
        yield recorder, f"{url}/hooks/T000/B000/secret-token"


async def test_dead_letter_alert_end_to_end(
    db: Database, make_settings: Callable[..., Settings], receiver: tuple[Receiver, str]
) -> None:
    """§8.4 alerts, both engines: a dead-lettered event → one "dead letters" message; a second
    check → nothing; the dead letter cleared → one resolved; no full phone number or secret."""
    recorder, url = receiver
    settings = make_settings(alert_webhook_url=url, public_base_url="https://mw.example.com")
    alerter = Alerter(settings, db)
    event_id = await insert_event(
        db,
        status="error",
        processed_at=utcnow(),
        payload={"phone": PHONE},
        error_message=f"GHL rejected {PHONE}",
    )

    assert await alerter.check() == 1
    assert len(recorder.received) == 1
    first = recorder.received[0]
    assert DEAD_LETTERS in first["text"]
    assert "1 new" in first["text"]
    assert "https://mw.example.com/admin" in first["text"]
    assert first["blocks"][0]["text"]["text"] in first["text"]

    assert await alerter.check() == 0
    assert len(recorder.received) == 1

    model = EVENT_MODELS["webhook"]
    async with db.session() as session:
        await session.execute(update(model).where(model.id == event_id).values(status="done"))
    assert await alerter.check() == 1
    assert len(recorder.received) == 2
    assert "Resolved" in recorder.received[1]["text"]
    assert DEAD_LETTERS in recorder.received[1]["text"]

    assert await alerter.check() == 0
    for body in recorder.received:
        text = repr(body)
        assert not FULL_PHONE_RE.search(text.replace("https://mw.example.com/admin", "")), text
        assert "secret-token" not in text


async def test_failed_delivery_is_retried_at_the_next_check(
    db: Database, make_settings: Callable[..., Settings], receiver: tuple[Receiver, str]
) -> None:
    """§8.4 alerts, both engines: the receiver answering 500, then refusing connections, raises
    nothing into the scheduler; the alert is delivered once at the next check that reaches it."""
    recorder, url = receiver
    settings = make_settings(alert_webhook_url=url)
    alerter = Alerter(settings, db)
    await insert_event(db, status="error", processed_at=utcnow())

    recorder.status = 500
    assert await alerter.check() == 0
    assert recorder.received == []

    alerter.settings = make_settings(alert_webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    assert await alerter.check() == 0

    recorder.status = 200
    alerter.settings = settings
    assert await alerter.check() == 1
    assert len(recorder.received) == 1
    assert DEAD_LETTERS in recorder.received[0]["text"]
    assert await alerter.check() == 0
    assert len(recorder.received) == 1


async def test_alert_job_only_when_webhook_url_is_set(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """§8.4 alerts: the scheduler runs the alert check every minute only when ALERT_WEBHOOK_URL is set."""
    assert "alerts" not in [job.name for job in default_jobs(make_settings(), db)]
    jobs = {
        job.name: job for job in default_jobs(make_settings(alert_webhook_url="http://127.0.0.1:9/x"), db)
    }
    assert jobs["alerts"].interval == 60.0
