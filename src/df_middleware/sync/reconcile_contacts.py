"""`reconcile contacts` (R-REC-1, R-PERF-4) and the one-contact repair of the admin API.

Webhooks get lost (GHL gives up after its retries, a deploy drops one, a contact is imported
without events), so every `RECONCILE_INTERVAL` the GHL contacts changed since the last run are
paged through and compared with what we last synced:

- **The cursor** is `sync_state` (`ghl_to_aloware`, `contact`): the `dateUpdated` and id of the
  last (settled) contact of the last completed page. A run asks `POST /contacts/search` for contacts with
  `dateUpdated` ≥ the cursor, sorted by `dateUpdated` ascending (GHL breaks ties by id), 100 a
  page, continuing with `searchAfter` = [cursor time, cursor id], so it starts right after the
  last contact it finished. The cursor is committed after every page, in a transaction of its
  own, with the run's totals: a crash (kill -9 included) resumes from the last completed page.
  `--full` starts from the oldest contact instead (and moves the cursor as it goes).
- **Settling.** GHL's search is an index that catches up with writes a moment later: a contact
  changed a second before a page was read may be missing from it while a later-changed one is
  already there. So the cursor never moves past contacts changed within `SETTLE_SECONDS` of the
  page's search; they are scanned now and again by the next run (costing nothing when unchanged:
  see drift below), and a late-indexed contact among them is not skipped for good.
- **Drift** is decided without a call: a contact whose profile has the mapping's
  `last_synced_fingerprint` (the fingerprint the contact sync stores, `contacts.profile_fingerprint`)
  is unchanged and costs nothing. So a full run over unchanged contacts costs one GHL call per
  100 contacts and no Aloware call (R-PERF-4).
- **Repair** is the contact sync itself: a drifted or unmapped contact goes through
  `contacts.handle_ghl_contact_upsert` as a `ContactUpdate` carrying the contact as GHL answered
  it (a native webhook carries the same fields), so consent, the echo guard, staleness, phone
  conflicts, the mapping upsert and the contact's dialer lists are decided exactly as for a
  webhook. There is no second sync to drift from the first.

Each repaired, created or refused contact leaves its sync_log rows, with the run's id as their
correlation id. A contact the remote refuses for good (`PermanentError`) is counted in `errors`
and the run goes on; a remote that is unavailable (`RetryableError`, after the client's own
retries) ends the run `error`, and the next run resumes from the last completed page.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from df_middleware.config import Settings
from df_middleware.connectors.ghl import MAX_PAGE_LIMIT, GhlClient
from df_middleware.connectors.ghl_models import Contact
from df_middleware.connectors.suite import Connectors
from df_middleware.db.models import ContactMapping, ReconcileRun, SyncLog, SyncState
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError
from df_middleware.observability import get_logger
from df_middleware.sync.contacts import (
    GHL_TO_ALOWARE,
    ghl_profile,
    handle_ghl_contact_upsert,
    profile_fingerprint,
)
from df_middleware.sync.identity import MappingView
from df_middleware.sync.reconcile_runs import (
    RUNNING,
    ReconcileNotConfigured,
    ReconcileProgress,
    Totals,
    _owner,
)
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, HandlerResult, SyncLogEntry
from df_middleware.timestamps import parse_iso8601

log = get_logger(__name__)

#: The `sync_state` row of this job's cursor.
CURSOR_DIRECTION = GHL_TO_ALOWARE
CURSOR_ENTITY = "contact"
PAGE_SIZE = MAX_PAGE_LIMIT  # 100, GHL's largest search page
SORT = ({"field": "dateUpdated", "direction": "asc"},)
#: The event type a reconciled contact is synced as: the native webhook that carries a whole contact.
AS_EVENT = "ContactUpdate"
#: The cursor stays behind contacts changed this recently before a page was read (see Settling).
SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class Cursor:
    updated_at: datetime
    contact_id: str | None

    def search_after(self) -> list[Any] | None:
        """GHL's `searchAfter` for the contact right after this one: its sort value (epoch ms,
        as GHL gives `dateUpdated` in sort values) and its id."""
        if self.contact_id is None:
            return None
        return [int(self.updated_at.timestamp() * 1000), self.contact_id]


async def load_cursor(db: Database) -> Cursor | None:
    async with db.session() as session:
        row = await session.scalar(
            select(SyncState).where(
                SyncState.direction == CURSOR_DIRECTION, SyncState.entity_type == CURSOR_ENTITY
            )
        )
        if row is None:
            return None
        return Cursor(row.cursor_updated_at, row.cursor_id)


async def save_page(
    db: Database, run_id: uuid.UUID, cursor: Cursor | None, totals: Totals, *, succeeded: bool = False
) -> None:
    """One transaction: the cursor after a completed page (None: unchanged) and the run's totals
    so far (its heartbeat too). `succeeded` also stamps the cursor row's last success."""
    now = utcnow()
    async with db.session() as session:
        row = await session.scalar(
            select(SyncState).where(
                SyncState.direction == CURSOR_DIRECTION, SyncState.entity_type == CURSOR_ENTITY
            )
        )
        if row is None:
            row = SyncState(direction=CURSOR_DIRECTION, entity_type=CURSOR_ENTITY, last_run_at=now)
            if cursor is None:
                row.cursor_updated_at, row.cursor_id = now, None  # nothing seen yet: the id says so
            session.add(row)
        if cursor is not None:
            row.cursor_updated_at, row.cursor_id = cursor.updated_at, cursor.contact_id
        row.last_run_at = now
        if succeeded:
            row.last_success_at = now
        await session.execute(
            update(ReconcileRun)
            .where(ReconcileRun.id == run_id, ReconcileRun.status == RUNNING)
            .values(totals={**totals.as_dict(), "owner": _owner(), "heartbeat_at": now.isoformat()})
        )


def settled_cursor(contacts: Sequence[Contact], searched_at: datetime) -> Cursor | None:
    """Where the cursor may move after this page: its last contact changed at least
    SETTLE_SECONDS before the search (None: none was, the cursor stays)."""
    limit = searched_at - timedelta(seconds=SETTLE_SECONDS)
    for contact in reversed(contacts):
        changed = parse_iso8601(contact.date_updated)
        if changed is not None and changed <= limit:
            return Cursor(changed, contact.id)
    return None


def contact_event(ghl: GhlClient, contact: Contact, *, fresh: bool = False) -> ClaimedEvent:
    """The GHL contact as the `ContactUpdate` a native webhook would carry (same field names,
    `customFields` by id, every tag). `fresh`: a contact read just now is GHL's latest word
    whatever its `dateUpdated` says, so its time is left out and no staleness check applies."""
    payload = contact.model_dump(by_alias=True, exclude={"search_after"})
    payload.update({"type": AS_EVENT, "locationId": contact.location_id or ghl.location_id})
    if fresh:
        payload.pop("dateUpdated", None)
    return ClaimedEvent(
        kind="webhook",
        id=uuid.uuid4(),
        source="ghl",
        event_type=AS_EVENT,
        entity_type="contact",
        entity_id=contact.id,
        ordering_key=f"contact:{contact.id}",
        payload=payload,
        attempts=1,
        received_at=utcnow(),
    )


async def _mappings_of(db: Database, ids: Sequence[str]) -> dict[str, MappingView]:
    """The mappings of a page's contacts in one query; a live row wins over deleted history."""
    found: dict[str, MappingView] = {}
    if not ids:
        return found
    async with db.session() as session:
        rows = await session.scalars(select(ContactMapping).where(ContactMapping.ghl_contact_id.in_(ids)))
        for row in rows:
            view = MappingView.of(row)
            known = found.get(view.ghl_contact_id)
            if known is None or (known.deleted_at is not None and view.deleted_at is None):
                found[view.ghl_contact_id] = view
    return found


async def write_log(db: Database, correlation_id: str, entries: Sequence[SyncLogEntry]) -> None:
    """The handler's sync_log rows, as the worker writes an event's (R-Q-7)."""
    if not entries:
        return
    async with db.session() as session:
        await session.execute(
            insert(SyncLog),
            [
                {
                    "direction": e.direction,
                    "entity_type": e.entity_type,
                    "entity_id": e.entity_id,
                    "source_id": e.source_id,
                    "target_id": e.target_id,
                    "status": e.status,
                    "message": e.message,
                    "error_message": e.error_message,
                    "started_at": e.started_at,
                    "finished_at": e.finished_at,
                    "correlation_id": correlation_id,
                }
                for e in entries
            ],
        )


def _outcome(result: HandlerResult, before: MappingView | None) -> str:
    """`created`, `repaired` or `skipped`, from the contact step's row (the first one)."""
    first = result.entries[0] if result.entries else None
    if first is None or first.status != "success":
        return "skipped"
    unmapped = before is None or before.deleted_at is not None or before.aloware_contact_id is None
    return "created" if unmapped else "repaired"


async def sync_one(
    ctx: HandlerContext, event: ClaimedEvent, before: MappingView | None, correlation: str
) -> str:
    """Sync one GHL contact through the contact flow and log it; the outcome (`_outcome`), or
    `error` for a contact the remote refused for good (logged, not raised)."""
    try:
        result = await handle_ghl_contact_upsert(ctx, event)
    except PermanentError as exc:
        await write_log(
            ctx.db,
            correlation,
            [
                SyncLogEntry(
                    direction=GHL_TO_ALOWARE,
                    entity_type="contact",
                    entity_id=event.entity_id or "",
                    source_id=event.entity_id or "",
                    status="error",
                    message="reconcile could not sync the contact",
                    error_message=str(exc)[:1000],
                )
            ],
        )
        return "error"
    await write_log(ctx.db, correlation, result.entries)
    return _outcome(result, before)


def _count(totals: Totals, outcome: str) -> None:
    if outcome == "created":
        totals.created += 1
    elif outcome == "repaired":
        totals.repaired += 1
    elif outcome == "error":
        totals.errors += 1
    else:
        totals.skipped += 1


async def _reconcile_page(
    ctx: HandlerContext, ghl: GhlClient, contacts: Sequence[Contact], totals: Totals, correlation: str
) -> None:
    region = ctx.settings.default_phone_region
    mappings = await _mappings_of(ctx.db, [c.id for c in contacts])
    for contact in contacts:
        totals.scanned += 1
        mapping = mappings.get(contact.id)
        profile = ghl_profile(contact.model_dump(by_alias=True), region)
        if profile.get("phone") is None:
            totals.skipped += 1  # R-C-1: no phone, nothing to sync to Aloware
            continue
        if mapping is not None and mapping.deleted_at is not None:
            totals.skipped += 1  # R-C-4: a deletion in GHL stands
            continue
        if (
            mapping is not None
            and mapping.aloware_contact_id is not None
            and mapping.fingerprint == profile_fingerprint(profile)
        ):
            continue  # unchanged since the last sync: no call (R-C-3)
        totals.drifted += 1
        _count(totals, await sync_one(ctx, contact_event(ghl, contact), mapping, correlation))


async def reconcile_contacts(
    settings: Settings,
    db: Database,
    connectors: Connectors,
    run_id: uuid.UUID,
    totals: Totals,
    *,
    full: bool = False,
    progress: ReconcileProgress | None = None,
) -> str | None:
    """R-REC-1: page through GHL contacts changed since the cursor (all with `full`), repair the
    drifted ones, advance the cursor after every page. Fills `totals` as it goes; returns what
    failed (None: nothing)."""
    ghl = connectors.ghl
    if ghl is None or connectors.aloware is None:
        raise ReconcileNotConfigured(
            "reconcile contacts needs GHL (GHL_LOCATION_ID with GHL_API_KEY or OAuth) and Aloware "
            "(ALOWARE_API_TOKEN)"
        )
    ctx = HandlerContext(settings=settings, db=db, connectors=connectors, direction=GHL_TO_ALOWARE)
    cursor = None if full else await load_cursor(db)
    filters: list[dict[str, Any]] = []
    search_after: list[Any] | None = None
    if cursor is not None and cursor.contact_id is not None:
        since = cursor.updated_at.isoformat().replace("+00:00", "Z")
        filters = [{"field": "dateUpdated", "operator": "range", "value": {"gte": since}}]
        search_after = cursor.search_after()
    if progress is not None:
        progress.note(
            "full run: every contact"
            if cursor is None
            else f"contacts changed since {cursor.updated_at.isoformat()}"
        )
    correlation = str(run_id)
    pages = 0
    while True:
        searched_at = utcnow()
        page = await ghl.search_contacts(
            filters=filters, sort=SORT, page_limit=PAGE_SIZE, search_after=search_after
        )
        if pages == 0 and progress is not None:
            progress.start(page.total)
        if not page.contacts:
            break
        await _reconcile_page(ctx, ghl, page.contacts, totals, correlation)
        pages += 1
        await save_page(db, run_id, settled_cursor(page.contacts, searched_at), totals)
        if progress is not None:
            progress.advance(len(page.contacts))
            progress.note(f"page {pages}: {totals.scanned} scanned, {totals.drifted} drifted")
        if page.next_search_after is None:
            break
        search_after = page.next_search_after
    await save_page(db, run_id, None, totals, succeeded=True)
    log.info("reconcile contacts finished", pages=pages, **totals.as_dict())
    if totals.errors:
        return (
            f"{totals.errors} contact(s) could not be synced (their sync_log rows: correlation id {run_id})"
        )
    return None


async def repair_contact(
    settings: Settings, db: Database, connectors: Connectors, *, ghl_contact_id: str
) -> dict[str, Any]:
    """`POST /api/admin/mappings/repair`: read the GHL contact afresh and sync it to Aloware
    through the contact flow, even when its fingerprint says it is in step (the operator says
    Aloware is wrong). Raises LookupError when GHL has no such contact."""
    ghl = connectors.ghl
    if ghl is None or connectors.aloware is None:
        raise ReconcileNotConfigured(
            "repair needs GHL (GHL_LOCATION_ID with GHL_API_KEY or OAuth) and Aloware (ALOWARE_API_TOKEN)"
        )
    contact = await ghl.get_contact(ghl_contact_id)
    if contact is None:
        raise LookupError(f"GHL has no contact {ghl_contact_id}")
    before = (await _mappings_of(db, [ghl_contact_id])).get(ghl_contact_id)
    async with db.session() as session:  # forget what we last wrote, so the sync writes again
        await session.execute(
            update(ContactMapping)
            .where(ContactMapping.ghl_contact_id == ghl_contact_id, ContactMapping.deleted_at.is_(None))
            .values(last_synced_fingerprint=None)
        )
    ctx = HandlerContext(settings=settings, db=db, connectors=connectors, direction=GHL_TO_ALOWARE)
    event = contact_event(ghl, contact, fresh=True)
    result = await handle_ghl_contact_upsert(ctx, event)
    await write_log(db, f"repair:{event.id}", result.entries)
    outcome = _outcome(result, before)
    if outcome == "skipped" and result.entries and result.entries[0].message:
        outcome = f"skipped: {result.entries[0].message}"
    after = (await _mappings_of(db, [ghl_contact_id])).get(ghl_contact_id)
    return {
        "ghl_contact_id": ghl_contact_id,
        "aloware_contact_id": after.aloware_contact_id
        if after is not None and after.deleted_at is None
        else None,
        "outcome": outcome,
    }
