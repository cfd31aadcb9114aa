"""Broadcast analytics → one GHL custom-object record per broadcast (R-BC-1, R-BC-2, R-BC-3).

Verity posts `analytics_updated` many times while a broadcast goes out, and `broadcast_completed`
once at the end (contracts/verity/webhooks). Each event's numbers come from its `analytics` object
when it carries one, else from Verity's database (`connectors/verity_db.py`, VERITY_DATABASE_URL);
`record_properties` turns them into the record of `contracts/verity/ghl-broadcast-record.example.json`
(plus `bounced` and `opt_out_rate`, every `*_rate` in [0, 1]), and the record is found
(`broadcast_records`, else `POST /objects/{key}/records/search` matched exactly on `broadcast_id`)
and updated (`PUT`), or created (`POST`, an effect of the ledger: R-IDEM-2).

What keeps a busy broadcast cheap and its numbers right, in the order the handler asks:

1. **Superseded.** One broadcast's events share an ordering key, so they run one at a time in
   receipt order (R-Q-4, R-BC-3). An event with a later-received event of the same broadcast still
   pending (or processing) does no GHL work: that one recomputes everything anyway. It ends
   `skipped: superseded by <event id>`. A later event stands in only if it can: its own numbers
   are usable (its `analytics` parse, or it has none and Verity's database is configured) and it
   is not older (below). Ten queued events cost one write cycle.
2. **Stale.** An event is dated by its `timestamp`, believed up to five minutes after its receipt
   (a clock further ahead, or a forged time, cannot make every later event look old: then, as
   without one, by its receipt). An event older than
   the one whose numbers GHL holds (`broadcast_records.source_event_id`) is skipped; at equal
   times `broadcast_completed` wins over `analytics_updated`, so the final numbers are never
   replaced by an in-flight snapshot of the same moment.
3. **Throttled.** `analytics_updated` is written at most once per `MIN_WRITE_INTERVAL` (60 s) per
   broadcast: a later one is deferred (retried when the interval has passed, as a retry whose
   `Retry-After` is the time left), never dropped; while it waits, the broadcast's newer events
   queue behind it and supersede it, so the newest numbers always land, within one interval.
   `broadcast_completed` is never throttled (it can wait behind a deferred `analytics_updated`, at
   most one interval). Near MAX_ATTEMPTS an event writes instead of waiting.
4. **Unchanged.** Numbers equal to those last written (`broadcast_records.properties`) are not
   written again.

**The bound.** Per broadcast and GHL location: the first write costs one search (a page of
`SEARCH_PAGE_LIMIT`, at most `MAX_SEARCH_PAGES` pages) plus one `POST`; every later write is one
`PUT` (the record id is remembered). So in any 60 s window a broadcast costs at most one
`analytics_updated` write, plus one per distinct `broadcast_completed` event (Verity sends one),
i.e. ≤ 2 PUTs a minute (≤ 1 in steady sending), plus once in its life the search and POST;
in-call retries of a failed call (HTTP_MAX_RETRIES) come on top. Measured by
`bench/broadcast_burst.py`.

Failures: analytics missing from the event with no VERITY_DATABASE_URL, or an unusable
`analytics` object (negative, fractional, boolean or astronomically large counts, a non-object),
dead-letter the event with a message saying so; Verity's database unreachable or the broadcast not
in it yet is retried (`verity_db`). GHL not configured: skipped, saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.http import RemoteNotFound
from df_middleware.connectors.verity_db import (
    BroadcastAnalytics,
    BroadcastAnalyticsReader,
    InvalidAnalytics,
    analytics_from_event,
)
from df_middleware.db.models import BroadcastRecord, BroadcastWebhookEvent, SyncEffect
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.sync.effects import DONE, SUPERSEDED, EffectLedger, skipped, success
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, HandlerRegistry, HandlerResult
from df_middleware.timestamps import believed_time, parse_iso8601

SOURCE: Final = "broadcast"
ANALYTICS_UPDATED: Final = "analytics_updated"
BROADCAST_COMPLETED: Final = "broadcast_completed"
VERITY_TO_GHL: Final = "verity_to_ghl"

#: At most one `analytics_updated` write per broadcast in this interval (see the module docstring).
MIN_WRITE_INTERVAL: Final = timedelta(seconds=60)
#: Records asked for per search page, and the most pages read before giving up (a broadcast id
#: that is a substring of that many other records' values is an operator's problem, said so).
SEARCH_PAGE_LIMIT: Final = 100
MAX_SEARCH_PAGES: Final = 5
#: How many later events are considered as stand-ins (newest first) before doing the work anyway.
STAND_IN_CANDIDATES: Final = 50
#: Counts above this are no real broadcast's, and GHL (JavaScript) cannot hold them exactly.
MAX_COUNT: Final = 2**53 - 1

ACTIVE: Final = ("pending", "processing")
COUNT_FIELDS: Final = (
    "recipients",
    "sent",
    "delivered",
    "pending",
    "failed",
    "bounced",
    "opted_out",
    "responses",
    "appointments_set",
)
#: The record's counts, in the example's order (`opted_out` feeds `opt_out_rate` only).
RECORD_COUNTS: Final = (
    "recipients",
    "sent",
    "delivered",
    "pending",
    "failed",
    "bounced",
    "responses",
    "appointments_set",
)
RECORD_RATES: Final = ("delivery_rate", "response_rate", "failure_rate", "conversion_rate", "opt_out_rate")
_CAMEL: Final = {"opted_out": "optedOut", "appointments_set": "appointmentsSet"}

GHL_OFF: Final = "GHL not configured (GHL_LOCATION_ID and GHL_API_KEY or OAuth): broadcast record not written"
NO_ANALYTICS: Final = (
    "broadcast {id}: the event carries no analytics and VERITY_DATABASE_URL is not set, "
    "so there are no numbers to write"
)


# --- pure decisions ---------------------------------------------------------------------------------


def event_time(payload: Mapping[str, Any], received_at: datetime) -> datetime:
    """When the event's numbers were true: its `timestamp`, believed up to `MAX_CLOCK_AHEAD`
    after we received it (Verity's clock a minute fast must not let a late snapshot beat the
    completion: break14 finding 3d), else its receipt."""
    return believed_time(parse_iso8601(payload.get("timestamp")), received_at)


def is_older(time: datetime, event_type: str, than_time: datetime, than_type: str) -> bool:
    """Whether numbers of (`time`, `event_type`) are older than those of (`than_time`, `than_type`):
    earlier, or at the same moment an `analytics_updated` against a `broadcast_completed`."""
    if time != than_time:
        return time < than_time
    return event_type.lower() != BROADCAST_COMPLETED and than_type.lower() == BROADCAST_COMPLETED


def _check_counts(raw: Mapping[str, Any]) -> None:
    """Refuse what the lax integer parsing would accept but no count is (`true`), and numbers
    too large to be counts."""
    for name in COUNT_FIELDS:
        for key in {name, _CAMEL.get(name, name)}:
            value = raw.get(key)
            if isinstance(value, bool):
                raise InvalidAnalytics(f"broadcast analytics: {key} is a boolean, not a count")
            if isinstance(value, int | float) and abs(value) > MAX_COUNT:
                raise InvalidAnalytics(
                    f"broadcast analytics: {key} is larger than any broadcast ({MAX_COUNT})"
                )


def analytics_in_event(payload: Mapping[str, Any], broadcast_id: str) -> BroadcastAnalytics | None:
    """The event's own numbers, or None when it carries none (no `analytics`, null, or `{}`).

    Raises `InvalidAnalytics` (dead letter) when `analytics` is there but unusable.
    """
    raw = payload.get("analytics")
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return None
    if not isinstance(raw, Mapping):
        raise InvalidAnalytics(f"broadcast analytics: `analytics` is a {type(raw).__name__}, not an object")
    _check_counts(raw)
    analytics = analytics_from_event(raw, broadcast_id=broadcast_id)
    for name in COUNT_FIELDS:
        if getattr(analytics, name) > MAX_COUNT:
            raise InvalidAnalytics(f"broadcast analytics: {name} is larger than any broadcast ({MAX_COUNT})")
    return analytics


def has_usable_numbers(payload: Mapping[str, Any], broadcast_id: str, *, database: bool) -> bool:
    """Whether processing this event would find numbers to write (its own, or the database's)."""
    try:
        own = analytics_in_event(payload, broadcast_id)
    except PermanentError:
        return False
    return own is not None or database


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def record_properties(analytics: BroadcastAnalytics, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The GHL record's properties (the example's unprefixed names, plus `bounced` and
    `opt_out_rate`). Rates are recomputed from the counts and bounded to [0, 1]; name and channel
    come from the analytics, else from the event itself. Unknown values (no name, no send time)
    are left out, so a PUT keeps what GHL already shows instead of blanking it."""
    name = (
        analytics.broadcast_name
        or _text(payload.get("broadcastName"))
        or _text(payload.get("broadcast_name"))
    )
    channel = analytics.channel or _text(payload.get("channel"))
    sent_at = analytics.sent_at or parse_iso8601(payload.get("sentAt") or payload.get("sent_at"))
    properties: dict[str, Any] = {"broadcast_id": analytics.broadcast_id}
    if name is not None:
        properties["broadcast_name"] = name
    if channel is not None:
        properties["channel"] = channel.upper()
    if sent_at is not None:
        properties["sent_at"] = _iso(sent_at)
    for count in RECORD_COUNTS:
        properties[count] = int(getattr(analytics, count))
    for rate in RECORD_RATES:
        properties[rate] = min(1.0, max(0.0, float(getattr(analytics, rate))))
    return properties


def merged(last_written: Mapping[str, Any] | None, properties: Mapping[str, Any]) -> dict[str, Any]:
    """What the record holds after a PUT of `properties` (GHL replaces only the values given)."""
    return {**(last_written or {}), **properties}


def throttle_wait(
    event_type: str, written_at: datetime | None, now: datetime, *, last_attempt: bool
) -> float | None:
    """Seconds an `analytics_updated` must wait for its broadcast's next write, or None to write
    now (`broadcast_completed`, first write, interval passed, or the event's last attempts)."""
    if event_type.lower() != ANALYTICS_UPDATED or written_at is None or last_attempt:
        return None
    left = (written_at + MIN_WRITE_INTERVAL - now).total_seconds()
    return left if left > 0 else None


def effect_key(location_id: str, object_key: str, broadcast_id: str) -> str:
    """The ledger key of creating a broadcast's record in one location's object."""
    return f"ghl:broadcast-record:{location_id}:{object_key}:{broadcast_id}"


# --- reading state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What GHL holds for the broadcast, as far as our writes tell (`broadcast_records`)."""

    row: BroadcastRecord | None
    #: Time and type of the event whose numbers are written (None: unknown or pruned).
    source_time: datetime | None = None
    source_type: str | None = None


async def _stand_in(
    ctx: HandlerContext, event: ClaimedEvent, broadcast_id: str, mine: datetime
) -> str | None:
    """The newest later-received, still active event of this broadcast that can do this one's
    work (see the module docstring), or None."""
    table = BroadcastWebhookEvent
    later = or_(
        table.received_at > event.received_at,
        and_(table.received_at == event.received_at, table.id > event.id),
    )
    async with ctx.db.session() as session:
        rows = (
            await session.execute(
                select(table.id, table.event_type, table.payload_json, table.received_at)
                .where(
                    table.broadcast_id == broadcast_id, table.status.in_(ACTIVE), table.id != event.id, later
                )
                .order_by(table.received_at.desc(), table.id.desc())
                .limit(STAND_IN_CANDIDATES)
            )
        ).all()
    database = ctx.connectors is not None and ctx.connectors.analytics is not None
    for row in rows:
        payload = row.payload_json if isinstance(row.payload_json, Mapping) else {}
        theirs = event_time(payload, row.received_at)
        if is_older(theirs, row.event_type, mine, event.event_type):
            continue
        if has_usable_numbers(payload, broadcast_id, database=database):
            return str(row.id)
    return None


async def _written(ctx: HandlerContext, broadcast_id: str) -> Written:
    async with ctx.db.session() as session:
        row = await session.get(BroadcastRecord, broadcast_id)
        if row is None or row.source_event_id is None:
            return Written(row)
        source = (
            await session.execute(
                select(
                    BroadcastWebhookEvent.event_type,
                    BroadcastWebhookEvent.payload_json,
                    BroadcastWebhookEvent.received_at,
                ).where(BroadcastWebhookEvent.id == row.source_event_id)
            )
        ).first()
    if source is None:  # pruned: its numbers are older than the retention, nothing arriving now is older
        return Written(row)
    payload = source.payload_json if isinstance(source.payload_json, Mapping) else {}
    return Written(row, event_time(payload, source.received_at), source.event_type)


def _reader(ctx: HandlerContext) -> BroadcastAnalyticsReader | None:
    return ctx.connectors.analytics if ctx.connectors is not None else None


async def _analytics(
    ctx: HandlerContext, own: BroadcastAnalytics | None, broadcast_id: str
) -> BroadcastAnalytics:
    """The event's own numbers, else Verity's database's (read only now: after the throttle, so a
    deferred event reads the freshest numbers and a busy broadcast does not load Verity)."""
    if own is not None:
        return own
    reader = _reader(ctx)
    if reader is None:  # checked before the throttle; kept for the type checker
        raise PermanentError(NO_ANALYTICS.format(id=broadcast_id))
    analytics = await reader.analytics(broadcast_id)
    for name in COUNT_FIELDS:
        if getattr(analytics, name) > MAX_COUNT:
            raise InvalidAnalytics(f"broadcast {broadcast_id}: {name} from Verity's database is out of range")
    return analytics


# --- GHL --------------------------------------------------------------------------------------------


async def find_record(ghl: GhlClient, object_key: str, broadcast_id: str) -> str | None:
    """The id of the record whose `broadcast_id` is exactly this one, or None.

    GHL's search matches text anywhere in the searchable values, so `bc_1` also finds `bc_10`:
    only an exact `broadcast_id` is accepted (R-ID-2's rule for search results). Pages are read
    with GHL's `searchAfter` cursor, at most MAX_SEARCH_PAGES.
    """
    after: list[str] = []
    seen = 0
    for _ in range(MAX_SEARCH_PAGES):
        page = await ghl.search_records(
            object_key, broadcast_id, page_limit=SEARCH_PAGE_LIMIT, search_after=after
        )
        for record in page.records:
            if str(record.properties.get("broadcast_id", "")) == broadcast_id:
                return record.id
        seen += len(page.records)
        cursor = (page.records[-1].model_extra or {}).get("searchAfter") if page.records else None
        if len(page.records) < SEARCH_PAGE_LIMIT or seen >= page.total or not isinstance(cursor, list):
            return None
        after = [str(part) for part in cursor]
    raise PermanentError(
        f"GHL search for broadcast {broadcast_id!r} matched more than {seen} records of {object_key} "
        "without an exact broadcast_id: cannot tell whether its record exists (not created twice)"
    )


async def _retire(ctx: HandlerContext, key: str) -> None:
    """The record the ledger remembers creating is gone from GHL (deleted by a user): keep the
    ledger row as history under a suffixed key, so the next create is a new effect."""
    async with ctx.db.session() as session:
        await session.execute(
            update(SyncEffect)
            .where(SyncEffect.effect_key == key, SyncEffect.state == DONE)
            .values(effect_key=f"{key}#superseded:{utcnow().isoformat()}", state=SUPERSEDED)
        )


async def write_record(
    ctx: HandlerContext,
    event: ClaimedEvent,
    ghl: GhlClient,
    ledger: EffectLedger,
    known_id: str | None,
    properties: Mapping[str, Any],
) -> tuple[str, str]:
    """Update the broadcast's record, or create it; returns (record id, what was done)."""
    object_key = ctx.settings.ghl_broadcast_object_key
    broadcast_id = str(properties["broadcast_id"])
    gone: set[str] = set()
    if known_id is not None:
        try:
            await ghl.update_record(object_key, known_id, properties)
            return known_id, "updated"
        except RemoteNotFound:
            gone.add(known_id)  # deleted in GHL since: find it (another copy) or create it again
    found = await find_record(ghl, object_key, broadcast_id)
    if found is not None:
        await ghl.update_record(object_key, found, properties)
        return found, "updated (found by search)"
    key = effect_key(ghl.location_id, object_key, broadcast_id)

    async def create() -> str:
        return (await ghl.create_record(object_key, properties)).id

    async def look() -> str | None:
        return await find_record(ghl, object_key, broadcast_id)

    for _ in range(2):
        outcome = await ledger.perform(key, "ghl", create, find_existing=look)
        if not outcome.already_done:
            return str(outcome.target_id), "created"
        if outcome.target_id is None:
            break
        if outcome.target_id not in gone:
            try:  # made by an earlier run (its answer lost, or the search index behind): update it
                await ghl.update_record(object_key, outcome.target_id, properties)
                return outcome.target_id, "updated"
            except RemoteNotFound:
                gone.add(outcome.target_id)
        await _retire(ctx, key)
    raise RetryableError(f"GHL record of broadcast {broadcast_id!r}: created but not found; retrying")


async def _remember(
    ctx: HandlerContext,
    event: ClaimedEvent,
    broadcast_id: str,
    location_id: str,
    properties: Mapping[str, Any],
    record_id: str | None,
    *,
    wrote: bool,
) -> None:
    """broadcast_records: the record id, what it now holds, and whose numbers those are."""
    now = utcnow()
    try:
        async with ctx.db.session() as session:
            row = await session.get(BroadcastRecord, broadcast_id)
            if row is None:
                row = BroadcastRecord(broadcast_id=broadcast_id)
                session.add(row)
            row.location_id = location_id
            if record_id is not None:
                row.ghl_record_id = record_id
            row.properties = dict(properties)
            row.source_event_id = event.id
            row.event_received_at = event.received_at
            if wrote:
                row.written_at = now
            row.updated_at = now
    except IntegrityError as exc:
        raise RetryableError(
            f"broadcast {broadcast_id!r}: record row written concurrently; retrying"
        ) from exc


# --- the handler ------------------------------------------------------------------------------------


async def handle_broadcast_event(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """`analytics_updated` / `broadcast_completed` → the broadcast's GHL record (R-BC-1…3).

    Effects: at most one GHL record write (a PUT, or a search and a POST the first time); skipped
    when GHL is not configured, superseded by a newer queued event, older than the numbers GHL
    holds, or unchanged. Deferred (retried) while its broadcast was written less than
    MIN_WRITE_INTERVAL ago (`analytics_updated` only).
    """
    ctx.direction = VERITY_TO_GHL
    ghl = ctx.connectors.ghl if ctx.connectors is not None else None
    if ghl is None:
        return skipped(event, VERITY_TO_GHL, GHL_OFF)
    broadcast_id = event.entity_id or str(event.payload.get("broadcastId") or "")
    mine = event_time(event.payload, event.received_at)

    newer = await _stand_in(ctx, event, broadcast_id, mine)
    if newer is not None:
        return skipped(event, VERITY_TO_GHL, f"superseded by {newer}")

    written = await _written(ctx, broadcast_id)
    if (
        written.source_time is not None
        and written.source_type is not None
        and is_older(mine, event.event_type, written.source_time, written.source_type)
    ):
        held = f"{written.source_type} of {_iso(written.source_time)}"
        return skipped(event, VERITY_TO_GHL, f"stale: GHL holds newer numbers ({held})")
    own = analytics_in_event(event.payload, broadcast_id)  # unusable numbers: dead letter now
    if own is None and _reader(ctx) is None:
        raise PermanentError(NO_ANALYTICS.format(id=broadcast_id))
    row = written.row
    same_location = row is not None and row.location_id == ghl.location_id
    last_attempt = event.attempts >= ctx.settings.max_attempts - 1
    wait = throttle_wait(
        event.event_type,
        row.written_at if row is not None and same_location else None,
        utcnow(),
        last_attempt=last_attempt,
    )
    if wait is not None:
        raise RetryableError(
            f"throttled: broadcast {broadcast_id} was written to GHL less than "
            f"{int(MIN_WRITE_INTERVAL.total_seconds())} s ago; next write in {wait:.1f} s",
            retry_after=wait,
        )

    analytics = await _analytics(ctx, own, broadcast_id)
    properties = record_properties(analytics, event.payload)
    last = row.properties if row is not None and same_location else None
    holds = merged(last, properties)
    if last is not None and holds == last and row is not None and row.ghl_record_id is not None:
        await _remember(ctx, event, broadcast_id, ghl.location_id, holds, None, wrote=False)
        return skipped(event, VERITY_TO_GHL, "unchanged: GHL's record already holds these numbers")

    ledger = EffectLedger(ctx.db, event)
    known_id = row.ghl_record_id if row is not None and same_location else None
    started = utcnow()
    record_id, done = await write_record(ctx, event, ghl, ledger, known_id, properties)
    if done == "created":  # a new record holds exactly what was sent
        holds = dict(properties)
    await _remember(ctx, event, broadcast_id, ghl.location_id, holds, record_id, wrote=True)
    entry = success(
        event,
        VERITY_TO_GHL,
        f"GHL broadcast record {done} ({analytics.source} analytics, {event.event_type})",
        target_id=record_id,
    )
    entry.started_at = started
    return HandlerResult(entries=[entry], effects=list(ledger.performed))


def register_handlers(registry: HandlerRegistry) -> None:
    """Verity's broadcast events (SPEC §3.5, §6.6)."""
    registry.register(SOURCE, ANALYTICS_UPDATED, BROADCAST_COMPLETED)(handle_broadcast_event)
