"""Operator alerts (SPEC §8.4): the scheduler checks a few health conditions every minute and
posts Slack-compatible JSON to ALERT_WEBHOOK_URL.

Three parts, so the decision is testable without a database or a network:

- `read_facts` (I/O): counts read from the database — dead letters, the oldest pending event's
  age, the error rate of the last 15 minutes, OAuth refresh failures, failed reconcile runs.
- `evaluate` (pure): per condition, fire (it is active and was not alerted, or its cooldown has
  passed while it persists), stay quiet (cooldown), or send one "resolved" when it clears.
- `Alerter.check` (I/O): reads, decides, posts. The new state is kept only when the post was
  delivered, so a failed delivery is logged and the same messages go out at the next check;
  it never raises into the scheduler.

Messages carry condition names, counts and the dashboard link only: no payload text, error
message, phone number or secret ever goes into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import httpx
from sqlalchemy import func, select

from df_middleware.config import Settings
from df_middleware.db.models import GhlOauthToken, ReconcileRun
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.observability import get_logger
from df_middleware.queue.event_tables import EVENT_TABLES

log = get_logger(__name__)

ALERT_INTERVAL_SECONDS = 60.0
ALERT_FIRST_DELAY_SECONDS = 30.0
ERROR_RATE_WINDOW = timedelta(minutes=15)
ERROR_RATE_THRESHOLD = 0.05
#: Fewer events than this in the window never make an error-rate alert: 1 failure out of 2 is
#: noise, not a rate. (The dead-letter alert already reports each failure.)
ERROR_RATE_MIN_EVENTS = 20
DELIVERY_TIMEOUT_SECONDS = 10.0

DEAD_LETTERS = "dead letters"
QUEUE_AGE = "queue age"
ERROR_RATE = "error rate"
OAUTH_REFRESH = "OAuth refresh failure"
RECONCILE = "reconcile failure"
CONDITIONS = (DEAD_LETTERS, QUEUE_AGE, ERROR_RATE, OAUTH_REFRESH, RECONCILE)


@dataclass(frozen=True)
class AlertFacts:
    """What one check read from the database."""

    dead_letters_total: int = 0
    dead_letters_new: int = 0  # `error` events processed since the last delivered check
    oldest_pending_age_seconds: float | None = None
    recent_processed: int = 0  # done + error in the error-rate window
    recent_errors: int = 0
    oauth_failed_locations: int = 0
    reconcile_failed_jobs: int = 0  # jobs whose latest finished run failed
    reconcile_failed_new: int = 0  # failed runs finished since the last delivered check


@dataclass(frozen=True)
class ConditionState:
    active: bool = False
    last_sent: datetime | None = None


@dataclass(frozen=True)
class AlertState:
    """Per condition: alerted-and-not-resolved, and when it was last sent. `last_check` is the
    time of the last delivered check (None before the first: then every `error` event counts)."""

    conditions: dict[str, ConditionState] = field(default_factory=dict)
    last_check: datetime | None = None


def _active_conditions(facts: AlertFacts, settings: Settings) -> dict[str, str]:
    """The conditions that hold now, each with its plain-words detail."""
    active: dict[str, str] = {}
    if facts.dead_letters_total > 0 or facts.dead_letters_new > 0:
        active[DEAD_LETTERS] = (
            f"{facts.dead_letters_new} new since the last check, "
            f"{facts.dead_letters_total} dead-lettered events in all"
        )
    age = facts.oldest_pending_age_seconds
    if age is not None and age > settings.alert_queue_age_seconds:
        active[QUEUE_AGE] = (
            f"the oldest pending event has waited {int(age)} s (limit {settings.alert_queue_age_seconds} s)"
        )
    if (
        facts.recent_processed >= ERROR_RATE_MIN_EVENTS
        and facts.recent_errors / facts.recent_processed > ERROR_RATE_THRESHOLD
    ):
        rate = 100 * facts.recent_errors / facts.recent_processed
        active[ERROR_RATE] = (
            f"{facts.recent_errors} of {facts.recent_processed} events failed in the last 15 minutes "
            f"({rate:.1f} %, limit {100 * ERROR_RATE_THRESHOLD:.0f} %)"
        )
    if facts.oauth_failed_locations > 0:
        active[OAUTH_REFRESH] = f"{facts.oauth_failed_locations} location(s) whose token refresh failed"
    if facts.reconcile_failed_jobs > 0 or facts.reconcile_failed_new > 0:
        active[RECONCILE] = (
            f"{facts.reconcile_failed_new} failed run(s) since the last check, "
            f"{facts.reconcile_failed_jobs} job(s) whose latest run failed"
        )
    return active


def evaluate(
    facts: AlertFacts, state: AlertState, now: datetime, settings: Settings
) -> tuple[list[str], AlertState]:
    """The messages to send now and the state to keep once they are delivered."""
    cooldown = timedelta(seconds=settings.alert_cooldown_seconds)
    dashboard = f"{settings.base_url.rstrip('/')}/admin"
    active = _active_conditions(facts, settings)
    messages: list[str] = []
    conditions = dict(state.conditions)
    for name in CONDITIONS:
        previous = conditions.get(name, ConditionState())
        if name in active:
            if not previous.active or previous.last_sent is None or now - previous.last_sent >= cooldown:
                messages.append(f":rotating_light: Alert — {name}: {active[name]}. Dashboard: {dashboard}")
                conditions[name] = ConditionState(active=True, last_sent=now)
        elif previous.active:
            messages.append(f":white_check_mark: Resolved — {name}: back to normal. Dashboard: {dashboard}")
            conditions[name] = ConditionState(active=False, last_sent=now)
    return messages, replace(state, conditions=conditions, last_check=now)


async def read_facts(db: Database, since: datetime | None, now: datetime) -> AlertFacts:
    """Count what the conditions need. `since` None (the first check after start): every
    dead-lettered event and failed reconcile run counts as new."""
    window_start = now - ERROR_RATE_WINDOW
    dead_total = dead_new = processed = errors = 0
    oldest: datetime | None = None
    async with db.session() as session:
        for event_table in EVENT_TABLES:
            t = event_table.table
            dead_total += await session.scalar(select(func.count()).where(t.c.status == "error")) or 0
            new_query = select(func.count()).where(t.c.status == "error")
            if since is not None:
                new_query = new_query.where(t.c.processed_at > since)
            dead_new += await session.scalar(new_query) or 0
            for status, count in await session.execute(
                select(t.c.status, func.count())
                .where(t.c.status.in_(("done", "error")), t.c.processed_at >= window_start)
                .group_by(t.c.status)
            ):
                processed += count
                if status == "error":
                    errors += count
            first = await session.scalar(select(func.min(t.c.received_at)).where(t.c.status == "pending"))
            if first is not None and (oldest is None or first < oldest):
                oldest = first
        oauth_failed = (
            await session.scalar(
                select(func.count())
                .select_from(GhlOauthToken)
                .where(GhlOauthToken.refresh_failed_at.is_not(None))
            )
            or 0
        )
        latest = (
            select(ReconcileRun.job_name, func.max(ReconcileRun.started_at).label("started_at"))
            .where(ReconcileRun.status.in_(("success", "error")))
            .group_by(ReconcileRun.job_name)
            .subquery()
        )
        reconcile_failed_jobs = (
            await session.scalar(
                select(func.count())
                .select_from(ReconcileRun)
                .join(
                    latest,
                    (latest.c.job_name == ReconcileRun.job_name)
                    & (latest.c.started_at == ReconcileRun.started_at),
                )
                .where(ReconcileRun.status == "error")
            )
            or 0
        )
        failed_new_query = (
            select(func.count()).select_from(ReconcileRun).where(ReconcileRun.status == "error")
        )
        if since is not None:
            failed_new_query = failed_new_query.where(
                func.coalesce(ReconcileRun.finished_at, ReconcileRun.started_at) > since
            )
        reconcile_failed_new = await session.scalar(failed_new_query) or 0
    return AlertFacts(
        dead_letters_total=dead_total,
        dead_letters_new=dead_new,
        oldest_pending_age_seconds=None if oldest is None else max(0.0, (now - oldest).total_seconds()),
        recent_processed=processed,
        recent_errors=errors,
        oauth_failed_locations=oauth_failed,
        reconcile_failed_jobs=reconcile_failed_jobs,
        reconcile_failed_new=reconcile_failed_new,
    )


class Alerter:
    """Holds the alert state of this (leader) process between checks."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.state = AlertState()

    async def check(self, now: datetime | None = None) -> int:
        """One check: returns how many messages were delivered. Never raises for a failed
        delivery (logged; the same messages are sent at the next check)."""
        now = now or utcnow()
        facts = await read_facts(self.db, self.state.last_check, now)
        messages, new_state = evaluate(facts, self.state, now, self.settings)
        if messages and not await self._deliver(messages):
            return 0
        self.state = new_state
        return len(messages)

    async def _deliver(self, messages: list[str]) -> bool:
        url = self.settings.alert_webhook_url
        if url is None:
            return False
        body = {
            "text": "\n".join(messages),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": m}} for m in messages],
        }
        try:
            async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_SECONDS) as client:
                response = await client.post(url.get_secret_value(), json=body)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            # The URL is a secret (Slack's token is in its path): log the status only.
            log.warning("alert delivery failed; retried at the next check", status=exc.response.status_code)
            return False
        except httpx.HTTPError as exc:
            log.warning("alert delivery failed; retried at the next check", error=type(exc).__name__)
            return False
        return True
