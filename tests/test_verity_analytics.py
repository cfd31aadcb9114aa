"""Broadcast analytics (R-BC-1) from Verity's tables on PostgreSQL, and from a webhook's object.

A private database gets Verity's broadcast tables (contracts README) and a scenario whose answers
are worked out by hand below; the reader must reproduce them exactly, and must not be able to write.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from df_middleware.connectors.verity_db import (
    BroadcastAnalytics,
    BroadcastAnalyticsReader,
    BroadcastNotFound,
    InvalidAnalytics,
    VerityDatabaseError,
    VerityDatabaseUnavailable,
    analytics_from_event,
)
from df_middleware.errors import PermanentError, RetryableError
from tests.conftest import IN_CI, PG_ADMIN_URL
from tests.servers import free_port

T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)

SCHEMA = """
CREATE TABLE broadcast (
    id text PRIMARY KEY, user_id text, type text, subject text,
    executed_at timestamptz, completed_at timestamptz
);
CREATE TABLE broadcast_recipient (
    id bigserial PRIMARY KEY, broadcast_id text NOT NULL REFERENCES broadcast(id), contact_id bigint,
    status text NOT NULL, sent_at timestamptz, delivered_at timestamptz
);
CREATE INDEX ON broadcast_recipient (broadcast_id);
CREATE TABLE broadcast_delivery_event (
    id bigserial PRIMARY KEY, broadcast_recipient_id bigint NOT NULL, event_type text NOT NULL,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE chat (id bigint PRIMARY KEY, owner_id text);
CREATE TABLE chat_participant (id bigint PRIMARY KEY, chat_id bigint NOT NULL, phone_number text);
CREATE TABLE chat_message (
    id bigserial PRIMARY KEY, chat_id bigint NOT NULL, participant_id bigint, broadcast_id text,
    status text NOT NULL, created_at timestamptz NOT NULL
);
CREATE TABLE contacts (id bigint PRIMARY KEY, phone_e164 text, email text);
CREATE TABLE leads (
    id bigserial PRIMARY KEY, contact_id bigint NOT NULL, ghl_appointment_id text,
    last_activity_at timestamptz, created_at timestamptz NOT NULL
);
"""


def _phone(contact_id: int) -> str:
    return f"+1919555{contact_id:04d}"


async def _insert_scenario(conn: asyncpg.Connection) -> None:
    """Broadcast `bc_main` (user u1, SMS, sent at T0) to contacts 1-11; contact 12 is not a recipient.

    | ct | recipient status            | reply                                | lead appointment          |
    |----|-----------------------------|--------------------------------------|---------------------------|
    | 1  | delivered                   | T0+1h → response                     | 2 leads after → 1 appt    |
    | 2  | delivered                   | T0+8d only (outside 7 days)          | activity before the send  |
    | 3  | clicked                     | T0+1d and T0+6d23h → one response    | no appointment id         |
    | 4  | failed (sent)               | T0+1h, but it never arrived          | after, but never arrived  |
    | 5  | bounced (sent)              | —                                    | '' id, after              |
    | 6  | opted_out, delivered_at     | only another member of a group chat  | —                         |
    | 7  | pending (not sent)          | —                                    | after T0, but unsent      |
    | 8  | sent (no receipt yet)       | T0+1h in a chat of another user (u2) | —                         |
    | 9  | delivered                   | T0-1h (before), outbound after       | lead created after → appt |
    | 10 | opted_out, never sent       | —                                    | —                         |
    | 11 | delivered + opted_out event | T0+2h, no participant id → response  | —                         |
    | 12 | (not a recipient)           | T0+1h                                | after T0                  |
    """
    await conn.executemany(
        "INSERT INTO contacts (id, phone_e164, email) VALUES ($1, $2, $3)",
        [(c, _phone(c), f"c{c}@example.com") for c in range(1, 13)],
    )
    await conn.executemany(
        "INSERT INTO broadcast (id, user_id, type, subject, executed_at, completed_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [
            ("bc_main", "u1", "sms", "November investor update", T0, T0 + HOUR),
            ("bc_other", "u1", "sms", "Other", T0, None),
            ("bc_empty", "u1", "email", "Nobody", None, None),
        ],
    )
    sent, delivered = T0, T0 + MIN
    recipients = {
        1: ("delivered", sent, delivered),
        2: ("delivered", sent, delivered),
        3: ("clicked", sent, delivered),
        4: ("failed", sent, None),
        5: ("bounced", sent, None),
        6: ("opted_out", sent, delivered),
        7: ("pending", None, None),
        8: ("sent", sent, None),
        9: ("delivered", sent, delivered),
        10: ("opted_out", None, None),
        11: ("delivered", sent, delivered),
    }
    ids: dict[int, int] = {}
    for contact, (status, sent_at, delivered_at) in recipients.items():
        ids[contact] = await conn.fetchval(
            "INSERT INTO broadcast_recipient (broadcast_id, contact_id, status, sent_at, delivered_at) "
            "VALUES ('bc_main', $1, $2, $3, $4) RETURNING id",
            contact,
            status,
            sent_at,
            delivered_at,
        )
    # The other broadcast reaches contacts 1 and 2 too; none of it may leak into bc_main's numbers.
    await conn.executemany(
        "INSERT INTO broadcast_recipient (broadcast_id, contact_id, status, sent_at, delivered_at) "
        "VALUES ('bc_other', $1, $2, $3, $4)",
        [(1, "failed", sent, None), (2, "pending", None, None)],
    )
    await conn.executemany(
        "INSERT INTO broadcast_delivery_event (broadcast_recipient_id, event_type) VALUES ($1, $2)",
        [(ids[1], "sent"), (ids[1], "delivered"), (ids[11], "delivered"), (ids[11], "opted_out")],
    )

    # One chat per person, owned by u1 (participant id = 100 + contact), except: contact 8 only
    # talks in a chat of user u2, and contact 6 is in a group chat with a non-recipient.
    for contact in (1, 2, 3, 4, 9, 11, 12):
        await conn.execute("INSERT INTO chat (id, owner_id) VALUES ($1, 'u1')", contact)
        await conn.execute(
            "INSERT INTO chat_participant (id, chat_id, phone_number) VALUES ($1, $2, $3)",
            100 + contact,
            contact,
            _phone(contact),
        )
    await conn.execute("INSERT INTO chat (id, owner_id) VALUES (8, 'u2'), (6, 'u1')")
    await conn.execute(
        "INSERT INTO chat_participant (id, chat_id, phone_number) "
        "VALUES (108, 8, $1), (106, 6, $2), (199, 6, $3)",
        _phone(8),
        _phone(6),
        "+19195550999",
    )
    messages: list[tuple[int, int | None, str | None, str, datetime]] = [
        (1, None, "bc_main", "sent", T0),  # the broadcast itself
        (1, 101, None, "received", T0 + HOUR),
        (2, 102, None, "received", T0 + 8 * DAY),
        (3, 103, None, "received", T0 + DAY),
        (3, 103, None, "received", T0 + 6 * DAY + 23 * HOUR),
        (4, 104, None, "received", T0 + HOUR),  # its message failed: not a response to it
        (6, 199, None, "received", T0 + HOUR),  # someone else in contact 6's group chat
        (8, 108, None, "received", T0 + HOUR),  # a chat of another Verity user
        (9, 109, None, "received", T0 - HOUR),  # before the send
        (9, 109, None, "sent", T0 + HOUR),  # outbound, not a reply
        (11, None, None, "received", T0 + 2 * HOUR),  # no participant recorded: one-to-one chat
        (12, 112, None, "received", T0 + HOUR),  # not a recipient
    ]
    await conn.executemany(
        "INSERT INTO chat_message (chat_id, participant_id, broadcast_id, status, created_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        messages,
    )
    await conn.executemany(
        "INSERT INTO leads (contact_id, ghl_appointment_id, last_activity_at, created_at) "
        "VALUES ($1, $2, $3, $4)",
        [
            (1, "appt_1", T0 + 2 * DAY, T0 - 30 * DAY),
            (1, "appt_1b", T0 + 3 * DAY, T0 - 30 * DAY),
            (2, "appt_2", T0 - DAY, T0 - 30 * DAY),
            (3, None, T0 + DAY, T0 - 30 * DAY),
            (4, "appt_4", T0 + DAY, T0 - 30 * DAY),
            (5, "", T0 + DAY, T0 - 30 * DAY),
            (7, "appt_7", T0 + DAY, T0 - 30 * DAY),
            (9, "appt_9", None, T0 + DAY),
            (12, "appt_12", T0 + DAY, T0 - 30 * DAY),
        ],
    )


async def _create_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _fill(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(SCHEMA)
        await _insert_scenario(conn)
    finally:
        await conn.close()


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def verity_db_url() -> Iterator[str]:
    """A private database holding Verity's tables and the scenario; skipped (locally) or failed
    (CI=true) when PostgreSQL is unreachable."""
    name = f"dfm_verity_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_create_database(name))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(message)
    url = f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
    try:
        asyncio.run(_fill(url))
        yield url
    finally:
        asyncio.run(_drop(name))


@pytest.fixture
async def reader(verity_db_url: str) -> AsyncIterator[BroadcastAnalyticsReader]:
    analytics_reader = BroadcastAnalyticsReader(verity_db_url)
    yield analytics_reader
    await analytics_reader.dispose()


# --- from the database ------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_database_metrics_are_exact(reader: BroadcastAnalyticsReader) -> None:
    """R-BC-1: counts, 7-day responses and appointments after the send, rates — exactly as worked
    out in `_insert_scenario`'s table."""
    result = await reader.analytics("bc_main")
    assert result.source == "database"
    assert (result.broadcast_id, result.broadcast_name, result.channel, result.sent_at) == (
        "bc_main",
        "November investor update",
        "SMS",
        T0,
    )
    counts = result.model_dump(
        include={
            "recipients",
            "sent",
            "delivered",
            "pending",
            "failed",
            "bounced",
            "opted_out",
            "responses",
            "appointments_set",
        }
    )
    assert counts == {
        "recipients": 11,
        "sent": 9,  # 1-6, 8, 9, 11: not pending 7, not never-sent 10
        "delivered": 6,  # 1, 2, 3 (clicked), 6 (opted out after delivery), 9, 11
        "pending": 1,
        "failed": 1,
        "bounced": 1,
        "opted_out": 3,  # 6 and 10 by status, 11 by delivery event
        "responses": 3,  # 1, 3, 11
        "appointments_set": 2,  # 1 (two leads, one contact), 9
    }
    rates = result.model_dump(
        include={"delivery_rate", "failure_rate", "response_rate", "conversion_rate", "opt_out_rate"}
    )
    assert rates == {
        "delivery_rate": 0.6667,  # 6 / 9
        "failure_rate": 0.2222,  # (1 + 1) / 9
        "response_rate": 0.5,  # 3 / 6
        "conversion_rate": 0.6667,  # 2 / 3
        "opt_out_rate": 0.5,  # 3 / 6
    }


@pytest.mark.postgres
async def test_other_and_empty_broadcasts(reader: BroadcastAnalyticsReader) -> None:
    """R-BC-1: each broadcast counts only its own recipients — contact 1's reply and appointment
    answer bc_main, whose message reached them, not bc_other, whose message failed; no
    recipients → every rate 0."""
    other = await reader.analytics("bc_other")
    assert (other.recipients, other.sent, other.failed, other.pending) == (2, 1, 1, 1)
    assert (other.responses, other.appointments_set) == (0, 0)
    assert other.failure_rate == 1.0

    empty = await reader.analytics("bc_empty")
    assert (empty.recipients, empty.channel, empty.sent_at) == (0, "EMAIL", None)
    assert [empty.delivery_rate, empty.failure_rate, empty.response_rate, empty.conversion_rate] == [0.0] * 4
    assert empty.opt_out_rate == 0.0


@pytest.mark.postgres
async def test_unknown_broadcast(reader: BroadcastAnalyticsReader) -> None:
    """An id Verity does not (yet) have: `broadcast_exists` says so, `analytics` is retryable."""
    assert await reader.broadcast_exists("bc_main") is True
    assert await reader.broadcast_exists("bc_nope") is False
    with pytest.raises(BroadcastNotFound) as missing:
        await reader.analytics("bc_nope")
    assert isinstance(missing.value, RetryableError)


@pytest.mark.postgres
async def test_reader_cannot_write(reader: BroadcastAnalyticsReader) -> None:
    """The reader's connections refuse writes, inside its transactions and even in autocommit."""
    insert = text("INSERT INTO contacts (id, phone_e164) VALUES (999, '+19195559999')")
    async with reader.engine.connect() as conn:
        with pytest.raises(DBAPIError, match="read-only"):
            await conn.execute(insert)
    async with reader.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(DBAPIError, match="read-only"):
            await autocommit.execute(insert)
    async with reader.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM contacts WHERE id = 999"))).scalar_one() == 0


async def test_unreachable_database_is_retryable() -> None:
    """A closed port is VerityDatabaseUnavailable (the worker retries the event later)."""
    reader = BroadcastAnalyticsReader(
        f"postgresql://postgres@127.0.0.1:{free_port()}/verity", connect_timeout=1
    )
    try:
        with pytest.raises(VerityDatabaseUnavailable):
            await reader.analytics("bc_main")
    finally:
        await reader.dispose()


@pytest.mark.postgres
async def test_database_without_the_tables_is_permanent(verity_db_url: str) -> None:
    """A database without Verity's tables (wrong VERITY_DATABASE_URL) is a permanent error that
    names the problem."""
    reader = BroadcastAnalyticsReader(PG_ADMIN_URL)
    try:
        with pytest.raises(VerityDatabaseError, match="broadcast"):
            await reader.analytics("bc_main")
    finally:
        await reader.dispose()


def test_reader_refuses_non_postgres_urls() -> None:
    with pytest.raises(ValueError, match="postgresql"):
        BroadcastAnalyticsReader("sqlite:///verity.db")


# --- from the webhook -------------------------------------------------------------------------------


def test_event_analytics_match_the_ghl_record_example(contracts: Path) -> None:
    """R-BC-1, R-BC-2: the contract's `broadcast_completed` analytics give exactly the counts and
    rates of the contract's GHL record example."""
    event = orjson.loads(
        (contracts / "verity/webhooks/broadcast.broadcast_completed.with_analytics.json").read_bytes()
    )
    record = orjson.loads((contracts / "verity/ghl-broadcast-record.example.json").read_bytes())["properties"]
    result = analytics_from_event(event)
    assert result.source == "event"
    dumped = result.model_dump(mode="json")
    for key, expected in record.items():
        if key == "sent_at":
            assert dumped[key].replace("+00:00", "Z") == expected
        else:
            assert dumped[key] == expected, key
    assert (result.bounced, result.opted_out) == (5, 6)


def test_event_and_database_yield_one_type() -> None:
    """The analytics object alone (with the id given) builds the same model; snake_case works too."""
    from_object = analytics_from_event({"recipients": 4, "sent": 4, "delivered": 3}, broadcast_id="bc_x")
    from_snake = analytics_from_event(
        {"broadcastId": "bc_x", "analytics": {"recipients": 4, "sent": 4, "delivered": 3, "opted_out": 1}}
    )
    assert isinstance(from_object, BroadcastAnalytics)
    assert isinstance(from_snake, BroadcastAnalytics)
    assert from_object.delivery_rate == 0.75
    assert from_snake.opt_out_rate == 0.3333
    assert from_object.responses == 0
    assert from_object.conversion_rate == 0.0


@pytest.mark.parametrize(
    ("analytics", "rates"),
    [
        ({}, (0.0, 0.0, 0.0, 0.0, 0.0)),  # zero recipients
        # Inconsistent numbers from a sender never produce a rate outside [0, 1].
        (
            {"sent": 2, "delivered": 5, "failed": 3, "bounced": 3, "responses": 9, "appointmentsSet": 20},
            (1.0, 1.0, 1.0, 1.0, 0.0),
        ),
    ],
)
def test_event_rates_are_bounded(analytics: dict[str, Any], rates: tuple[float, ...]) -> None:
    """R-BC-1: rates are fractions in [0, 1]; a zero denominator gives 0."""
    result = analytics_from_event(analytics, broadcast_id="bc_y")
    assert (
        result.delivery_rate,
        result.failure_rate,
        result.response_rate,
        result.conversion_rate,
        result.opt_out_rate,
    ) == rates


@pytest.mark.parametrize(
    ("event", "broadcast_id"),
    [
        ({"analytics": {"sent": 1}}, None),  # no broadcast id anywhere
        ({"broadcastId": "bc_z", "analytics": {"sent": -1}}, None),
        ({"broadcastId": "bc_z", "analytics": {"sent": "many"}}, None),
        ({"delivered": 1.5}, "bc_z"),
    ],
)
def test_unusable_event_analytics_are_permanent(event: dict[str, Any], broadcast_id: str | None) -> None:
    with pytest.raises(InvalidAnalytics) as invalid:
        analytics_from_event(event, broadcast_id=broadcast_id)
    assert isinstance(invalid.value, PermanentError)
