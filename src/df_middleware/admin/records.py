"""Read-only views an operator searches: the sync log, the opt-out registry, the contact mappings.

The admin API and the dashboard call these (the events have theirs in `queue/operations.py`).
Lists are newest first and keyset-paginated on (time, id) through an index, so a page costs the
same with a million rows as with ten, and a row inserted while someone pages is neither skipped
nor shown twice: the cursor is a position, not an offset.

Phones and emails are masked unless the caller asks to reveal them (R-SEC-4); what a caller
searched by is normalised first (R-ID-1), so every formatting of a number finds the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select

from df_middleware.db.models import ContactMapping, DncRegistry, OptoutRegistry, SyncLog
from df_middleware.db.session import Database
from df_middleware.observability import mask_email, mask_phone, mask_text
from df_middleware.queue.operations import MAX_PAGE_SIZE, decode_cursor, encode_cursor

#: The longest search value accepted (an id, a phone, an email); longer is not a search.
MAX_SEARCH_CHARS = 320
SYNC_LOG_STATUSES = ("success", "error", "skipped")
CONSENT_STATUSES = ("opted_out", "opted_in")


@dataclass(frozen=True)
class Page:
    """One page, newest first; pass `next_cursor` back for the next one (None: the last page)."""

    items: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _bounded(name: str, value: str | None) -> str | None:
    """A search value stripped, None when blank; ValueError when it is longer than any id."""
    if value is None:
        return None
    value = value.strip()
    if "\x00" in value:  # PostgreSQL cannot compare text holding a NUL: a 500, not a search
        raise ValueError(f"{name} contains a NUL character")
    if len(value) > MAX_SEARCH_CHARS:
        raise ValueError(f"{name} is longer than {MAX_SEARCH_CHARS} characters")
    return value or None


def _after(time_column: Any, id_column: Any, cursor: str | None) -> list[ColumnElement[bool]]:
    """The keyset condition 'older than the cursor's row' (ValueError for a malformed cursor)."""
    if not cursor:
        return []
    at, row_id = decode_cursor(cursor)
    return [or_(time_column < at, and_(time_column == at, id_column < row_id))]


def _page(rows: list[Any], limit: int, time_of: Any, id_of: Any, shape: Any) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(time_of(rows[-1]), id_of(rows[-1])) if more and rows else None
    return Page(items=[shape(row) for row in rows], next_cursor=cursor)


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE_SIZE))


# --- sync log ------------------------------------------------------------------------------------


def _sync_log_item(entry: SyncLog, *, reveal: bool) -> dict[str, Any]:
    def shown(text: str | None) -> str | None:
        return text if reveal or text is None else mask_text(text)

    return {
        "id": str(entry.id),
        "direction": entry.direction,
        "entity_type": entry.entity_type,
        "entity_id": shown(entry.entity_id),
        "source_id": shown(entry.source_id),
        "target_id": shown(entry.target_id),
        "status": entry.status,
        "message": shown(entry.message),
        "error_message": shown(entry.error_message),
        "correlation_id": entry.correlation_id,
        "started_at": _iso(entry.started_at),
        "finished_at": _iso(entry.finished_at),
    }


async def list_sync_log(
    db: Database,
    *,
    direction: str | None = None,
    entity_type: str | None = None,
    entity_id: str | None = None,
    status: str | None = None,
    correlation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
    reveal: bool = False,
) -> Page:
    """The audit trail (R-Q-7), newest first. `correlation_id` is the event id a row belongs to.

    Raises ValueError for an unknown status, a naive time, an over-long value or a bad cursor.
    """
    if status is not None and status not in SYNC_LOG_STATUSES:
        raise ValueError(f"status must be one of {', '.join(SYNC_LOG_STATUSES)}")
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise ValueError("since/until need a time zone")
        try:  # 0001-01-01T00:00+14:00 parses, but is before the first moment UTC can hold
            _ = bound.astimezone(UTC) if bound is not None else None
        except OverflowError:
            raise ValueError("since/until out of range") from None
    conditions: list[ColumnElement[bool]] = _after(SyncLog.started_at, SyncLog.id, cursor)
    for name, column, value in (
        ("direction", SyncLog.direction, direction),
        ("entity_type", SyncLog.entity_type, entity_type),
        ("entity_id", SyncLog.entity_id, entity_id),
        ("correlation_id", SyncLog.correlation_id, correlation_id),
    ):
        wanted = _bounded(name, value)
        if wanted is not None:
            conditions.append(column == wanted)
    if status is not None:
        conditions.append(SyncLog.status == status)
    if since is not None:
        conditions.append(SyncLog.started_at >= since)
    if until is not None:
        conditions.append(SyncLog.started_at < until)
    limit = _limit(limit)
    statement = (
        select(SyncLog)
        .where(*conditions)
        .order_by(SyncLog.started_at.desc(), SyncLog.id.desc())
        .limit(limit + 1)
    )
    async with db.session() as session:
        rows = list(await session.scalars(statement))
    return _page(
        rows,
        limit,
        lambda r: r.started_at,
        lambda r: r.id,
        lambda r: _sync_log_item(r, reveal=reveal),
    )


# --- opt-outs ------------------------------------------------------------------------------------


def _consent_item(row: OptoutRegistry | DncRegistry, channel: str, *, reveal: bool) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "phone": row.phone_number if reveal else mask_phone(row.phone_number),
        "channel": channel,
        "status": row.status,
        "source": row.source,
        "reason": row.reason,
        "last_event_at": _iso(row.last_event_at),
        "updated_at": _iso(row.updated_at),
    }


async def list_optouts(
    db: Database,
    *,
    status: str | None = None,
    phone: str | None = None,
    channel: str = "sms",
    cursor: str | None = None,
    limit: int = 50,
    reveal: bool = False,
) -> Page:
    """The consent registry of one channel (SMS: `optout_registry`, voice: `dnc_registry`), the
    most recent decision first. `phone` must already be E.164 (see `consent.manual.e164_or_refuse`).
    """
    if status is not None and status not in CONSENT_STATUSES:
        raise ValueError(f"status must be one of {', '.join(CONSENT_STATUSES)}")
    if channel not in ("sms", "voice"):
        raise ValueError("channel must be sms or voice")
    model: type[OptoutRegistry] | type[DncRegistry] = OptoutRegistry if channel == "sms" else DncRegistry
    conditions = _after(model.last_event_at, model.id, cursor)
    if status is not None:
        conditions.append(model.status == status)
    if phone is not None:
        conditions.append(model.phone_number == phone)
    limit = _limit(limit)
    statement = (
        select(model)
        .where(*conditions)
        .order_by(model.last_event_at.desc(), model.id.desc())
        .limit(limit + 1)
    )
    async with db.session() as session:
        rows = list(await session.scalars(statement))
    return _page(
        rows,
        limit,
        lambda r: r.last_event_at,
        lambda r: r.id,
        lambda r: _consent_item(r, channel, reveal=reveal),
    )


# --- contact mappings ----------------------------------------------------------------------------


def mapping_item(mapping: ContactMapping, *, reveal: bool = False) -> dict[str, Any]:
    """A mapping as the admin API and the dashboard show it (phone and email masked by default)."""
    phone, email = mapping.phone_number, mapping.email
    return {
        "id": str(mapping.id),
        "ghl_contact_id": mapping.ghl_contact_id,
        "aloware_contact_id": mapping.aloware_contact_id,
        "phone": phone if reveal or phone is None else mask_phone(phone),
        "email": email if reveal or email is None else mask_email(email),
        "sync_direction": mapping.sync_direction,
        "last_synced_at": _iso(mapping.last_synced_at),
        "has_fingerprint": mapping.last_synced_fingerprint is not None,
        "deleted_at": _iso(mapping.deleted_at),
        "created_at": _iso(mapping.created_at),
        "updated_at": _iso(mapping.updated_at),
    }


async def search_mappings(
    db: Database,
    *,
    phone: str | None = None,
    email: str | None = None,
    ghl_id: str | None = None,
    aloware_id: str | None = None,
    limit: int = 50,
    reveal: bool = False,
) -> list[dict[str, Any]]:
    """Mappings matching every given key (deleted ones included, marked by `deleted_at`), the
    most recently updated first. `phone` must already be E.164; `email` is matched without case.
    With no key at all the most recently updated mappings are listed. ValueError for a value
    longer than any id."""
    conditions: list[ColumnElement[bool]] = []
    if (wanted := _bounded("phone", phone)) is not None:
        conditions.append(ContactMapping.phone_number == wanted)
    if (wanted := _bounded("email", email)) is not None:
        conditions.append(ContactMapping.email == wanted.lower())
    if (wanted := _bounded("ghl_id", ghl_id)) is not None:
        conditions.append(ContactMapping.ghl_contact_id == wanted)
    if (wanted := _bounded("aloware_id", aloware_id)) is not None:
        conditions.append(ContactMapping.aloware_contact_id == wanted)
    statement = (
        select(ContactMapping)
        .where(*conditions)
        .order_by(ContactMapping.updated_at.desc(), ContactMapping.id.desc())
        .limit(_limit(limit))
    )
    async with db.session() as session:
        rows = list(await session.scalars(statement))
    return [mapping_item(row, reveal=reveal) for row in rows]
