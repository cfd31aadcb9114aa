"""Broadcast analytics (R-BC-1): read from Verity's PostgreSQL database, or taken from a webhook.

Verity's broadcast webhooks may carry an `analytics` object; when they do not, the numbers are
computed from Verity's own tables (`VERITY_DATABASE_URL`). Both paths produce one type,
`BroadcastAnalytics`, so the GHL record (R-BC-2) is built the same way whichever source fed it.

The database is someone else's: the reader only ever reads. Every connection is opened with
`default_transaction_read_only=on` and every transaction is additionally started `READ ONLY`
(REPEATABLE READ, so all counts of one computation come from one snapshot); a statement timeout
bounds what one computation may cost Verity's server; the pool is small.

Tables (contracts README): `broadcast(id, user_id, type, subject, executed_at, completed_at)`,
`broadcast_recipient(id, broadcast_id, contact_id, status, sent_at, delivered_at)`,
`broadcast_delivery_event(broadcast_recipient_id, event_type)`, `chat(id, owner_id)`,
`chat_participant(id, chat_id, phone_number)`, `chat_message(id, chat_id, participant_id,
broadcast_id, status, created_at)`, `contacts(id, phone_e164, email)`, `leads(contact_id,
ghl_appointment_id, last_activity_at, created_at)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, computed_field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from df_middleware.config import Settings
from df_middleware.connectors.status import ConnectionReport
from df_middleware.db.session import async_url
from df_middleware.errors import PermanentError, RetryableError

#: A recipient's reply counts as a response when it arrives within this window after their send.
RESPONSE_WINDOW_DAYS: Final = 7
#: Rates are rounded to this many decimals (the GHL record's precision, `contracts/verity/`).
RATE_DECIMALS: Final = 4
#: Statement timeout of the reader's connections (milliseconds): analytics must never load Verity.
STATEMENT_TIMEOUT_MS: Final = 30_000

Source = Literal["event", "database"]


# --- errors -----------------------------------------------------------------------------------------


class VerityDatabaseUnavailable(RetryableError):
    """Verity's database could not be reached, timed out, or dropped the connection."""


class VerityDatabaseError(PermanentError):
    """Verity's database refused the query (missing table or column, permission): a schema or
    configuration problem an operator must fix; retrying the event unchanged cannot help."""


class BroadcastNotFound(RetryableError):
    """The broadcast a webhook names is not (yet) in Verity's database.

    Retryable: Verity posts the webhook right after writing, and a replica may lag behind; an id
    that never appears ends in the dead-letter state after MAX_ATTEMPTS.
    """

    def __init__(self, broadcast_id: str) -> None:
        super().__init__(
            f"verity: broadcast {broadcast_id!r} not found in VERITY_DATABASE_URL", retry_after=60
        )
        self.broadcast_id = broadcast_id


class InvalidAnalytics(PermanentError):
    """A webhook's `analytics` object is not usable (missing broadcast id, negative or non-numeric
    counts)."""


# --- the model --------------------------------------------------------------------------------------


def _rate(numerator: int, denominator: int) -> float:
    """A fraction in [0, 1], rounded; 0 when there is nothing to divide by."""
    if denominator <= 0:
        return 0.0
    return round(min(1.0, max(0.0, numerator / denominator)), RATE_DECIMALS)


class BroadcastAnalytics(BaseModel):
    """The numbers of one broadcast, whichever source they came from.

    Counts are of recipients (rows of `broadcast_recipient`), except `appointments_set` (distinct
    contacts). Rates are fractions in [0, 1], rounded to 4 decimals, and 0 when their denominator
    is 0 (so a broadcast with no recipients has every rate 0):

    - `delivery_rate` = delivered / sent — of the messages that left, how many arrived;
    - `failure_rate` = (failed + bounced) / sent — of the messages that left, how many did not;
    - `response_rate` = responses / delivered — only a delivered message can be answered;
    - `conversion_rate` = appointments_set / responses — of those who answered, how many booked
      (appointments of recipients who did not reply still count, hence the bound at 1);
    - `opt_out_rate` = opted_out / delivered — of those who received it, how many opted out.

    These reproduce the example record in `contracts/verity/ghl-broadcast-record.example.json`.
    """

    model_config = ConfigDict(frozen=True)

    broadcast_id: str
    broadcast_name: str | None = None
    #: `SMS` or `EMAIL` (upper case, as the webhook's `channel`).
    channel: str | None = None
    sent_at: datetime | None = None
    recipients: int = Field(0, ge=0)
    #: Recipients whose message left (delivered, failed and bounced included), i.e. not pending.
    sent: int = Field(0, ge=0)
    delivered: int = Field(0, ge=0)
    pending: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    bounced: int = Field(0, ge=0)
    opted_out: int = Field(0, ge=0)
    #: Distinct recipients who replied within RESPONSE_WINDOW_DAYS of their own send (recipients
    #: whose message failed or bounced excluded: they never got it).
    responses: int = Field(0, ge=0)
    #: Distinct recipient contacts with a GHL appointment whose lead activity is after their send
    #: (failed and bounced recipients excluded, as for responses).
    appointments_set: int = Field(0, ge=0)
    source: Source

    @computed_field  # type: ignore[prop-decorator]
    @property
    def delivery_rate(self) -> float:
        return _rate(self.delivered, self.sent)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failure_rate(self) -> float:
        return _rate(self.failed + self.bounced, self.sent)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def response_rate(self) -> float:
        return _rate(self.responses, self.delivered)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def conversion_rate(self) -> float:
        return _rate(self.appointments_set, self.responses)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def opt_out_rate(self) -> float:
        return _rate(self.opted_out, self.delivered)


# --- from a webhook ---------------------------------------------------------------------------------


class _EventAnalytics(BaseModel):
    """The webhook's `analytics` object (camelCase as Verity sends it; snake_case accepted too).
    Missing counts are 0; a count that is negative or not a whole number is refused."""

    model_config = ConfigDict(extra="ignore")

    broadcast_name: str | None = Field(None, validation_alias=AliasChoices("broadcastName", "broadcast_name"))
    channel: str | None = None
    sent_at: datetime | None = Field(None, validation_alias=AliasChoices("sentAt", "sent_at"))
    recipients: int = Field(0, ge=0)
    sent: int = Field(0, ge=0)
    delivered: int = Field(0, ge=0)
    pending: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    bounced: int = Field(0, ge=0)
    opted_out: int = Field(0, ge=0, validation_alias=AliasChoices("optedOut", "opted_out"))
    responses: int = Field(0, ge=0)
    appointments_set: int = Field(
        0, ge=0, validation_alias=AliasChoices("appointmentsSet", "appointments_set")
    )


def analytics_from_event(obj: Mapping[str, Any], *, broadcast_id: str | None = None) -> BroadcastAnalytics:
    """`BroadcastAnalytics` from a broadcast webhook: either the whole event (`broadcastId` plus an
    `analytics` object) or the `analytics` object itself with `broadcast_id` given.

    Rates are recomputed from the counts, so a record never disagrees with its own numbers.
    Raises `InvalidAnalytics` when the object cannot be used.
    """
    analytics: Any = obj.get("analytics") if isinstance(obj.get("analytics"), Mapping) else obj
    found = broadcast_id or obj.get("broadcastId") or analytics.get("broadcastId")
    if found is None or isinstance(found, bool) or not str(found).strip():
        raise InvalidAnalytics("broadcast analytics without a broadcast id")
    try:
        parsed = _EventAnalytics.model_validate(analytics)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise InvalidAnalytics(f"broadcast analytics: invalid {fields}") from exc
    values = parsed.model_dump()
    if values["channel"]:
        values["channel"] = values["channel"].upper()
    return BroadcastAnalytics(broadcast_id=str(found).strip(), source="event", **values)


# --- from Verity's database -------------------------------------------------------------------------

# A broadcast's id is matched as text, so the reader works whatever type Verity gives the column
# (text, uuid or integer); recipients are then joined on the column itself, using its index.
_BROADCAST_SQL = text(
    """
    SELECT b.id, b.subject, b.type, b.executed_at
    FROM broadcast AS b
    WHERE b.id::text = :broadcast_id
    """
)

# Recipient counts. `status` is a recipient's current state, so a recipient who opted out after
# receiving the message shows `opted_out`; their delivery (and send) is then known from
# `delivered_at`/`sent_at` or from the delivery-event history. An opt-out is a status or an
# `opted_out`/`unsubscribed` delivery event (an email recipient may unsubscribe after a click).
_COUNTS_SQL = text(
    """
    WITH r AS (
        SELECT
            br.status,
            br.sent_at,
            br.delivered_at,
            EXISTS (
                SELECT 1 FROM broadcast_delivery_event AS e
                WHERE e.broadcast_recipient_id = br.id
                  AND e.event_type IN ('delivered', 'opened', 'clicked')
            ) AS delivery_evidence,
            EXISTS (
                SELECT 1 FROM broadcast_delivery_event AS e
                WHERE e.broadcast_recipient_id = br.id
                  AND e.event_type IN ('opted_out', 'unsubscribed')
            ) AS opt_out_event
        FROM broadcast_recipient AS br
        WHERE br.broadcast_id = :bid
    )
    SELECT
        count(*) AS recipients,
        count(*) FILTER (WHERE status = 'pending') AS pending,
        count(*) FILTER (
            WHERE status IN ('sent', 'delivered', 'opened', 'clicked', 'failed', 'bounced')
               OR (status = 'opted_out'
                   AND (sent_at IS NOT NULL OR delivered_at IS NOT NULL OR delivery_evidence))
        ) AS sent,
        count(*) FILTER (
            WHERE status IN ('delivered', 'opened', 'clicked')
               OR (status = 'opted_out' AND (delivered_at IS NOT NULL OR delivery_evidence))
        ) AS delivered,
        count(*) FILTER (WHERE status = 'failed') AS failed,
        count(*) FILTER (WHERE status = 'bounced') AS bounced,
        count(*) FILTER (WHERE status = 'opted_out' OR opt_out_event) AS opted_out,
        min(sent_at) AS first_sent_at
    FROM r
    """
)

# A response: a message received (status 'received') in a chat where the recipient's phone is a
# participant, from that participant (or with no participant recorded, as in a one-to-one chat),
# after the recipient's own send and within the window. The chat must belong to the broadcast's
# sender when the broadcast names one: a reply to another user of Verity answers something else.
# A recipient whose message failed or bounced never got it, so whatever they wrote answers
# something else too (e.g. another broadcast sent the same day).
_RESPONSES_SQL = text(
    f"""
    SELECT count(*) AS responses
    FROM broadcast_recipient AS br
    JOIN broadcast AS b ON b.id = br.broadcast_id
    JOIN contacts AS c ON c.id = br.contact_id
    WHERE br.broadcast_id = :bid
      AND br.sent_at IS NOT NULL
      AND br.status NOT IN ('failed', 'bounced')
      AND c.phone_e164 IS NOT NULL
      AND EXISTS (
          SELECT 1
          FROM chat_participant AS cp
          JOIN chat AS ch ON ch.id = cp.chat_id
          JOIN chat_message AS m ON m.chat_id = cp.chat_id
          WHERE cp.phone_number = c.phone_e164
            AND (b.user_id IS NULL OR ch.owner_id = b.user_id)
            AND m.status = 'received'
            AND (m.participant_id = cp.id OR m.participant_id IS NULL)
            AND m.created_at > br.sent_at
            AND m.created_at <= br.sent_at + interval '{RESPONSE_WINDOW_DAYS} days'
      )
    """
)

# Appointments: distinct recipient contacts whose message reached them (not failed or bounced) and
# whose lead carries a GHL appointment id with lead activity (last activity, else creation) after
# their send. The schema has no appointment time, so lead activity is the closest evidence that
# the appointment followed the broadcast.
_APPOINTMENTS_SQL = text(
    """
    SELECT count(DISTINCT br.contact_id) AS appointments_set
    FROM broadcast_recipient AS br
    JOIN leads AS l ON l.contact_id = br.contact_id
    WHERE br.broadcast_id = :bid
      AND br.sent_at IS NOT NULL
      AND br.status NOT IN ('failed', 'bounced')
      AND NULLIF(l.ghl_appointment_id::text, '') IS NOT NULL
      AND COALESCE(l.last_activity_at, l.created_at) > br.sent_at
    """
)


def reader_url(database_url: str) -> str:
    """VERITY_DATABASE_URL (`postgresql://…`) as the asyncpg driver URL; anything else is refused."""
    url = async_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("VERITY_DATABASE_URL must be a postgresql:// URL")
    return url.render_as_string(hide_password=False)


class BroadcastAnalyticsReader:
    """Read-only access to Verity's broadcast tables (see the module docstring)."""

    def __init__(self, database_url: str, *, pool_size: int = 2, connect_timeout: float = 5.0) -> None:
        self.engine: AsyncEngine = create_async_engine(
            reader_url(database_url),
            pool_size=pool_size,
            max_overflow=1,
            pool_timeout=connect_timeout,
            pool_pre_ping=True,
            pool_recycle=1800,
            # A failed statement's message must not carry parameters (ids, phones) into logs.
            hide_parameters=True,
            connect_args={
                "timeout": connect_timeout,
                "server_settings": {
                    "default_transaction_read_only": "on",
                    "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                    "application_name": "df-middleware-analytics",
                },
            },
        ).execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> BroadcastAnalyticsReader | None:
        """The reader, or None when VERITY_DATABASE_URL is unset (analytics then come from events)."""
        if settings.verity_database_url is None:
            return None
        url = settings.verity_database_url.get_secret_value()
        return cls(url) if url else None

    def __repr__(self) -> str:
        return f"BroadcastAnalyticsReader({self.engine.url.render_as_string(hide_password=True)!r})"

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def check(self) -> ConnectionReport:
        """Reachable and readable: one read of the broadcast table; never raises."""
        report = ConnectionReport(system="verity-db", configured=True)
        try:
            async with self._transaction() as conn:
                await conn.execute(text("SELECT 1 FROM broadcast LIMIT 1"))
        except Exception as exc:  # any failure is the report's content, not the caller's problem
            message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            auth_failed = "password" in message.lower() or "authentication" in message.lower()
            report.reachable = auth_failed or "does not exist" in message.lower()
            report.authenticated = False if auth_failed else None
            report.reason = f"{type(exc).__name__}: {message}"
        else:
            report.reachable = report.authenticated = True
        return report

    async def broadcast_exists(self, broadcast_id: str) -> bool:
        """Whether Verity's database has this broadcast."""
        async with self._transaction() as conn:
            row = (await conn.execute(_BROADCAST_SQL, {"broadcast_id": str(broadcast_id)})).first()
        return row is not None

    async def analytics(self, broadcast_id: str) -> BroadcastAnalytics:
        """The broadcast's analytics from one consistent snapshot of Verity's tables.

        Raises `BroadcastNotFound` (retryable) for an unknown id, `VerityDatabaseUnavailable`
        (retryable) when the database cannot be reached, `VerityDatabaseError` (permanent) when
        it refuses the query.
        """
        key = str(broadcast_id)
        async with self._transaction() as conn:
            broadcast = (await conn.execute(_BROADCAST_SQL, {"broadcast_id": key})).mappings().first()
            if broadcast is None:
                raise BroadcastNotFound(key)
            params = {"bid": broadcast["id"]}
            counts = (await conn.execute(_COUNTS_SQL, params)).mappings().one()
            responses = (await conn.execute(_RESPONSES_SQL, params)).scalar_one()
            appointments = (await conn.execute(_APPOINTMENTS_SQL, params)).scalar_one()
        kind = broadcast["type"]
        return BroadcastAnalytics(
            broadcast_id=key,
            broadcast_name=broadcast["subject"],
            channel=str(kind).upper() if kind else None,
            sent_at=broadcast["executed_at"] or counts["first_sent_at"],
            recipients=counts["recipients"],
            sent=counts["sent"],
            delivered=counts["delivered"],
            pending=counts["pending"],
            failed=counts["failed"],
            bounced=counts["bounced"],
            opted_out=counts["opted_out"],
            responses=responses,
            appointments_set=appointments,
            source="database",
        )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A read-only REPEATABLE READ transaction; driver errors become the service's two failure
        kinds (the worker alone decides what to do with them)."""
        try:
            async with self.engine.connect() as conn, conn.begin():
                yield conn
        except (RetryableError, PermanentError):
            raise
        except Exception as exc:
            classified = _classify(exc)
            if classified is exc:
                raise
            raise classified from exc


def _classify(exc: Exception) -> Exception:
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return VerityDatabaseUnavailable(f"verity database unavailable: {type(exc).__name__}")
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return VerityDatabaseUnavailable("verity database connection lost")
        return VerityDatabaseError(f"verity database refused the analytics query: {_short(exc)}")
    return exc


def _short(exc: DBAPIError) -> str:
    """The driver's first line (e.g. `relation "broadcast" does not exist`), without parameters."""
    original = exc.orig if exc.orig is not None else exc
    return str(original).splitlines()[0][:200] if str(original) else type(original).__name__
