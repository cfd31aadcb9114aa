"""Upgrade safety: a database at any earlier migration, with data and a queue, upgrades and drains
(R-DM-6 migration history; SPEC §13; issue 14 item 5).

Operators upgrade a running deployment: they stop the service, run `df-middleware migrate` (or let
`serve` migrate at start) and start the new version, while webhooks that arrived before the stop
are still queued. What that needs, and what this module proves for every revision before head and
on both engines:

- **No data is lost or changed by the history.** A database is brought to exactly revision R (from
  base, through the real Alembic history), and every table that exists at R gets realistic rows,
  written with raw SQL `INSERT`s that name only the columns R has (today's ORM models describe
  head's schema, not R's): a contact mapped between GHL and Aloware with its agent, list
  membership, remembered conversation and earlier text, an opt-out and its history, a voice DNC,
  an echo guard, an earlier call's effect and sync log, a reconcile run and its cursor, another
  location's OAuth token, an install state, an earlier broadcast's record, a quarantined event;
  and in each event table a processed event and events still queued (one of them claimed by a
  worker of the old version that was stopped for the upgrade, its lease run out since). After the
  upgrade to head every row is still there, each column written at R holds what was written, the
  columns added since hold their documented defaults, tables added since are empty, and the schema
  equals the models (no drift).
- **The queue drains with today's code.** The queued events, stored as an earlier version's ingest
  stored them, are processed by the real worker and the production handler registry against the
  GHL, Aloware and Verity simulators over real HTTP. Each ends `done`, and its effect exists in the
  simulator exactly once: the `Call Disposed` note on the mapped GHL contact and its call in the
  contact's conversation; the inbound Verity text in that same conversation; the GHL
  `ContactCreate` as one Aloware contact, placed on its agent's existing dialer list (the list id
  read from `call_list_registry`, the agent from `agent_directory`); the broadcast as one GHL
  record. The rows written at R are what the handlers use: GHL is never asked to find or create
  the mapped contact or its conversation, Aloware never for the agent's list.

A migration that loses or rewrites data, or leaves a schema today's code cannot run on, fails here
for each revision it upgrades from.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from df_middleware.db.migrate import alembic_config, head_revision, upgrade
from df_middleware.db.models import Base, SyncLog
from df_middleware.db.session import async_url
from df_middleware.db.types import JSONPayload, UTCDateTime, utcnow
from df_middleware.ingest.sources.aloware import classify_aloware
from df_middleware.ingest.sources.broadcast import classify_broadcast
from df_middleware.ingest.sources.ghl import classify_ghl
from df_middleware.ingest.sources.texting import classify_texting
from df_middleware.ingest.store import queued_row
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.agent_field import AgentField
from df_middleware.sync.list_registry import CallListRegistryStore
from tests.sync_world import CALL_PROVIDER, CONVERSATION_PROVIDER, LOCATION, SyncWorld

pytestmark = pytest.mark.slow


def _earlier_revisions() -> list[str]:
    """Every revision of the history but head, oldest first."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = scripts.get_current_head()
    return sorted(script.revision for script in scripts.walk_revisions() if script.revision != head)


EARLIER_REVISIONS = _earlier_revisions()

# --- the people and things of the world before the upgrade -----------------------------------------

DANA_PHONE = "+19195557101"  # mapped GHL <-> Aloware, Alice's, with history
RILEY_PHONE = "+19195557103"  # created in GHL while the service was down: queued ContactCreate
SAM_PHONE = "+19195557102"  # opted out of texts before the upgrade
BUSINESS_LINE = "+19195550000"
ALICE_EMAIL = "alice.upgrade@example.com"
OLD_CALL_ID = 5550100  # processed before the upgrade
NEW_CALL_ID = 5550102  # queued
OLD_TEXT_ID = "tlx_UPG0001IN"  # processed before the upgrade
NEW_TEXT_ID = "tlx_UPG0002IN"  # queued
OLD_BROADCAST_ID = "bc_UPGWINTER"  # its record was written before the upgrade
NEW_BROADCAST_ID = "bc_UPGSPRING"  # queued
OTHER_LOCATION = "loc_upgrade_installed"  # an OAuth install of another sub-account


def note_marker(call_id: int) -> str:
    return f"[df:aloware:call:{call_id}:note:call-disposed]"


@dataclass
class Before:
    """What existed before the upgrade: the simulators' ids and the rows written at R."""

    dana_ghl_id: str
    dana_aloware_id: int
    conversation_id: str
    alice_list_id: int
    rows: dict[str, list[dict[str, Any]]]
    #: Queued event ids per table.
    queued: dict[str, list[uuid.UUID]]


def _call_disposed_body(world: SyncWorld, contact_id: int, call_id: int, at: str) -> dict[str, Any]:
    """A `Call Disposed` body as Aloware sends it (the contact and the agent embedded), shaped like
    `contracts/aloware/webhooks/` and the scripted day's call (df_middleware.demo)."""
    return {
        "id": call_id,
        "type": "call",
        "direction": "outbound",
        "contact_id": contact_id,
        "user_id": 731,
        "contact": world.aloware.sim.webhook_contact(contact_id),
        "user": {"id": 731, "name": "Chris Agent", "email": "chris@example.com"},
        "disposition_status": "Interested",
        "call_disposition": "Interested",
        "status": "completed",
        "duration": 245,
        "talk_time": 221,
        "has_recording": True,
        "recording_url": f"https://recordings.example.com/{call_id}.mp3",
        "created_at": at,
        "ended_at": at,
    }


def _event(
    row: dict[str, Any],
    *,
    status: str,
    processed_at: datetime | None = None,
    lease: tuple[str, datetime] | None = None,
) -> dict[str, Any]:
    """A stored event row as ingest (and, for one already tried, a worker) left it, every column of
    the table given a value. `lease`: the worker that held it and until when."""
    row = {**row, "status": status}
    row.update(
        error_message="quarantined by the operator: bad data" if status == "quarantined" else None,
        processed_at=processed_at,
        locked_by=lease[0] if lease else None,
        locked_until=lease[1] if lease else None,
    )
    if status != "pending":
        row["attempts"] = 1
    return row


def make_world_before(world: SyncWorld) -> Before:
    """The simulators as they were before the upgrade, and the rows the database held (every
    table of head; a table or column that R does not have yet is left out when written)."""
    ghl, aloware = world.ghl.sim, world.aloware.sim
    now = utcnow().replace(microsecond=0)
    earlier = now - timedelta(days=2)
    queued_at = now - timedelta(minutes=10)

    # GHL and Aloware: Alice; Dana in both (Alice's), on Alice's NEW_LEADS list, with a conversation,
    # an earlier inbound text and the note of an earlier call.
    alice_ghl = ghl.add_user(LOCATION, "Alice Moreno", ALICE_EMAIL)
    alice_aloware = aloware.add_user("Alice Moreno", ALICE_EMAIL)
    dana = ghl.create_contact(
        LOCATION,
        {
            "firstName": "Dana",
            "lastName": "Whitfield",
            "email": "dana.upgrade@example.com",
            "phone": DANA_PHONE,
            "assignedTo": alice_ghl["id"],
        },
    ).contact
    dana_aloware = aloware.add_contact(
        DANA_PHONE, first_name="Dana", last_name="Whitfield", email="dana.upgrade@example.com"
    )
    alice_list = aloware.add_list("DF_ALICE_NEW_LEADS")
    aloware.add_to_list({"list_id": alice_list["id"], "contact_ids": [dana_aloware["id"]]})
    conversation = ghl.create_conversation(LOCATION, {"locationId": LOCATION, "contactId": dana["id"]})
    old_text = ghl.add_inbound_message(
        LOCATION,
        {
            "type": "SMS",
            "conversationId": conversation["id"],
            "contactId": dana["id"],
            "message": "Hi, is the spring offer still on?",
            "altId": OLD_TEXT_ID,
            "conversationProviderId": CONVERSATION_PROVIDER,
        },
    )
    old_note = ghl.add_note(
        LOCATION, dana["id"], {"body": f"Outbound call disposed\n{note_marker(OLD_CALL_ID)}"}
    )

    # The events: one of each table processed before the upgrade, the rest queued (one of them
    # held by a worker of the old version when it was stopped).
    old_call = {
        "event": "Call Disposed",
        "body": _call_disposed_body(world, dana_aloware["id"], OLD_CALL_ID, "2026-11-30T16:30:00Z"),
    }
    new_call = {
        "event": "Call Disposed",
        "body": _call_disposed_body(world, dana_aloware["id"], NEW_CALL_ID, "2026-12-02T16:30:00Z"),
    }
    unknown = {"event": "Contact Updated", "body": {"id": 999001, "phone_number": "not a phone"}}
    riley = ghl.create_contact(
        LOCATION,
        {
            "firstName": "Riley",
            "lastName": "Chen",
            "email": "riley.upgrade@example.com",
            "phone": RILEY_PHONE,
            "source": "Facebook Ad",
            "assignedTo": alice_ghl["id"],
        },
    )
    riley_created = contact_webhook("ContactCreate", riley.contact)  # as GHL posted it, signed

    def text_event(message_id: str, body: str, at: str) -> dict[str, Any]:
        return {
            "eventType": "message.received",
            "messageId": message_id,
            "conversationId": f"chat_{DANA_PHONE.removeprefix('+')}",
            "direction": "inbound",
            "from": DANA_PHONE,
            "to": BUSINESS_LINE,
            "body": body,
            "timestamp": at,
            "status": "received",
        }

    def broadcast_event(broadcast_id: str, event_id: str) -> dict[str, Any]:
        return {
            "broadcastId": broadcast_id,
            "eventType": "analytics_updated",
            "eventId": event_id,
            "timestamp": (queued_at - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "analytics": {
                "broadcastName": "Spring offer",
                "channel": "SMS",
                "recipients": 400,
                "sent": 250,
                "delivered": 230,
                "pending": 150,
                "failed": 4,
                "bounced": 1,
                "optedOut": 2,
                "responses": 11,
                "appointmentsSet": 3,
            },
        }

    def stored(classify: Any, payload: dict[str, Any], at: datetime) -> dict[str, Any]:
        row = queued_row(classify(payload), payload, verified=True, request_id=f"req-{uuid.uuid4().hex[:16]}")
        row.update(received_at=at, next_attempt_at=at)
        return row

    old_call_row = _event(stored(classify_aloware, old_call, earlier), status="done", processed_at=earlier)
    quarantined_row = _event(
        stored(classify_aloware, unknown, earlier), status="quarantined", processed_at=earlier
    )
    new_call_row = _event(stored(classify_aloware, new_call, queued_at), status="pending")
    riley_row = _event(
        stored(classify_ghl, riley_created, queued_at + timedelta(seconds=1)), status="pending"
    )
    old_text_row = _event(
        stored(
            classify_texting,
            text_event(OLD_TEXT_ID, "Hi, is the spring offer still on?", "2026-11-30T15:58:00.000Z"),
            earlier,
        ),
        status="done",
        processed_at=earlier,
    )
    new_text_row = _event(
        stored(
            classify_texting,
            text_event(NEW_TEXT_ID, "Can you call me back after 5?", "2026-12-02T16:45:00.000Z"),
            queued_at,
        ),
        status="pending",
    )
    old_broadcast_row = _event(
        stored(classify_broadcast, broadcast_event(OLD_BROADCAST_ID, "bcev_UPG0001"), earlier),
        status="done",
        processed_at=earlier,
    )
    # Being processed when the service was stopped for the upgrade: its lease has run out since.
    new_broadcast_row = _event(
        stored(classify_broadcast, broadcast_event(NEW_BROADCAST_ID, "bcev_UPG0002"), queued_at),
        status="processing",
        lease=("worker-before-upgrade", queued_at + timedelta(seconds=30)),
    )

    def row_id() -> uuid.UUID:
        return uuid.uuid4()

    rows: dict[str, list[dict[str, Any]]] = {
        "webhook_events": [old_call_row, quarantined_row, new_call_row, riley_row],
        "texting_webhook_events": [old_text_row, new_text_row],
        "broadcast_webhook_events": [old_broadcast_row, new_broadcast_row],
        "quarantine_events": [
            {
                "id": row_id(),
                "event_id": str(quarantined_row["id"]),
                "event_source": "webhook",
                "reason": "bad data",
                "quarantined_at": earlier,
                "quarantined_by": "operator",
            }
        ],
        "sync_log": [
            {
                "id": row_id(),
                "direction": "aloware_to_ghl",
                "entity_type": "call",
                "entity_id": str(OLD_CALL_ID),
                "source_id": str(OLD_CALL_ID),
                "target_id": old_note["id"],
                "status": "success",
                "started_at": earlier,
                "finished_at": earlier,
                "error_message": None,
                "correlation_id": str(old_call_row["id"]),
                "message": "call note added",
            }
        ],
        "sync_effects": [
            {
                "id": row_id(),
                "effect_key": f"aloware:call:{OLD_CALL_ID}:note:call-disposed",
                "event_id": str(old_call_row["id"]),
                "target_system": "ghl",
                "target_id": old_note["id"],
                "created_at": earlier,
                "state": "done",
            }
        ],
        "sync_state": [
            {
                "id": row_id(),
                "direction": "ghl_to_aloware",
                "entity_type": "contact",
                "cursor_updated_at": earlier,
                "cursor_id": dana["id"],
                "last_run_at": earlier,
                "last_success_at": earlier,
            }
        ],
        "contact_mappings": [
            {
                "id": row_id(),
                "aloware_contact_id": str(dana_aloware["id"]),
                "ghl_contact_id": dana["id"],
                "phone_number": DANA_PHONE,
                "email": "dana.upgrade@example.com",
                "last_synced_at": earlier,
                "sync_direction": "ghl_to_aloware",
                "created_at": earlier,
                "updated_at": earlier,
                "last_synced_fingerprint": "3f0c1a-upgrade",
                "deleted_at": None,
                "ghl_event_at": earlier,
                "aloware_event_at": earlier,
                "ghl_profile": {"firstName": "Dana", "lastName": "Whitfield", "phone": DANA_PHONE},
                "ghl_profile_at": earlier,
                "ghl_event_received_at": earlier,
                "aloware_event_received_at": earlier,
                "disposition_event_at": earlier,
                "disposition_received_at": earlier,
            }
        ],
        "ghl_conversations": [
            {
                "ghl_contact_id": dana["id"],
                "conversation_id": conversation["id"],
                "location_id": LOCATION,
                "updated_at": earlier,
            }
        ],
        "message_mappings": [
            {
                "id": row_id(),
                "texting_message_id": OLD_TEXT_ID,
                "ghl_message_id": old_text.id,
                "aloware_message_id": None,
                "conversation_id": conversation["id"],
                "ghl_contact_id": dana["id"],
                "aloware_contact_id": str(dana_aloware["id"]),
                "from_number": DANA_PHONE,
                "to_number": BUSINESS_LINE,
                "direction": "inbound",
                "created_at": earlier,
                "updated_at": earlier,
                "status": "delivered",
                "status_updated_at": earlier,
                "error_code": None,  # 0011: only a refused agent text has one
            }
        ],
        "optout_registry": [
            {
                "id": row_id(),
                "phone_number": SAM_PHONE,
                "status": "opted_out",
                "source": "texting",
                "reason": "keyword STOP",
                "last_event_at": earlier,
                "created_at": earlier,
                "updated_at": earlier,
            }
        ],
        "optout_events": [
            {
                "id": row_id(),
                "phone_number": SAM_PHONE,
                "channel": "sms",
                "status": "opted_out",
                "source": "texting",
                "reason": "keyword STOP",
                "keyword": "STOP",
                "message_id": "tlx_UPG0003IN",
                "event_at": earlier,
                "actor": None,
                "created_at": earlier,
            }
        ],
        "dnc_registry": [
            {
                "id": row_id(),
                "phone_number": SAM_PHONE,
                "status": "opted_out",
                "source": "aloware",
                "reason": "asked not to be called",
                "last_event_at": earlier,
                "created_at": earlier,
                "updated_at": earlier,
            }
        ],
        "echo_guard": [
            {
                "id": row_id(),
                "system": "aloware",
                "entity_id": str(dana_aloware["id"]),
                "fingerprint": "echo-fingerprint-before-upgrade",
                "expires_at": now + timedelta(hours=1),
                "created_at": earlier,
                "consumed_by": None,  # 0012: not seen yet
            }
        ],
        "agent_directory": [
            {
                "id": row_id(),
                "agent_key": "ALICE",
                "display_name": "Alice Moreno",
                "ghl_owner_id": alice_ghl["id"],
                "ghl_owner_email": ALICE_EMAIL,
                "ghl_assigned_agent_field_value": None,
                "required_tag": None,
                "aloware_user_id": str(alice_aloware["id"]),
                "is_active": True,
                "created_at": earlier,
                "updated_at": earlier,
            }
        ],
        "call_list_registry": [
            {
                "id": row_id(),
                "agent_key": "ALICE",
                "list_key": "NEW_LEADS",
                "aloware_list_id": str(alice_list["id"]),
                "aloware_list_name": "DF_ALICE_NEW_LEADS",
                "created_at": earlier,
                "updated_at": earlier,
            }
        ],
        "contact_list_memberships": [
            {
                "id": row_id(),
                "contact_id": dana["id"],
                "agent_key": "ALICE",
                "list_key": "NEW_LEADS",
                "status": "member",
                "reason": None,
                "created_at": earlier,
                "updated_at": earlier,
            }
        ],
        "contact_agent_state": [
            {
                "id": row_id(),
                "contact_id": dana["id"],
                "agent_key": "ALICE",
                "last_aloware_list_status": None,
                "created_at": earlier,
                "updated_at": earlier,
                "stage_list_key": None,
                "stage_name": None,
                "stage_at": None,
                "aloware_sequence_id": None,
                # 0011: the time of the contact event that placed Dana on her lists.
                "signals_at": earlier,
                "signals_received_at": earlier,
            }
        ],
        "ghl_oauth_tokens": [
            {
                "id": row_id(),
                "location_id": OTHER_LOCATION,
                "access_token": "gAAAAABn-upgrade-access-ciphertext",
                "refresh_token": "gAAAAABn-upgrade-refresh-ciphertext",
                "token_type": "Bearer",
                "scope": "contacts.readonly contacts.write",
                "expires_at": now + timedelta(hours=20),
                "created_at": earlier,
                "updated_at": earlier,
                "user_type": "Location",
                "company_id": "cmp_upgrade",
                "refresh_failed_at": None,
                "refresh_error": None,
                "installed_at": earlier,
            }
        ],
        "oauth_state_uses": [{"nonce": "nonce-upgrade-0001", "used_at": earlier}],
        "reconcile_runs": [
            {
                "id": row_id(),
                "job_name": "contacts",
                "started_at": earlier,
                "finished_at": earlier + timedelta(minutes=2),
                "status": "success",
                "totals": {"checked": 1, "created": 0, "updated": 0, "errors": 0},
                "error_message": None,
            }
        ],
        "broadcast_records": [
            {
                "broadcast_id": OLD_BROADCAST_ID,
                "location_id": LOCATION,
                "ghl_record_id": "rec_upgrade_winter",
                "properties": {"broadcast_id": OLD_BROADCAST_ID, "sent": 250},
                "source_event_id": old_broadcast_row["id"],
                "event_received_at": earlier,
                "written_at": earlier,
                "updated_at": earlier,
            }
        ],
    }
    queued = {
        "webhook_events": [new_call_row["id"], riley_row["id"]],
        "texting_webhook_events": [new_text_row["id"]],
        "broadcast_webhook_events": [new_broadcast_row["id"]],
    }
    return Before(dana["id"], dana_aloware["id"], conversation["id"], alice_list["id"], rows, queued)


# --- raw SQL against the schema of revision R ------------------------------------------------------

#: Each table's key, to match rows before and after.
KEYS = {
    "oauth_state_uses": "nonce",
    "ghl_conversations": "ghl_contact_id",
    "broadcast_records": "broadcast_id",
}
#: A column added by a later migration holds this on the rows that were there (NULL when not
#: listed): `sync_effects.state` is `done` for every effect recorded before 0007 (its server default).
ADDED_DEFAULTS: dict[tuple[str, str], Any] = {("sync_effects", "state"): "done"}


def _sql_type(value: Any) -> Any:
    """The column type a value is bound and read with (the storage each engine uses); a NULL is
    bound untyped, so that the database takes the column's type."""
    if value is None:
        return sa.types.NullType()
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.Integer()
    if isinstance(value, uuid.UUID):
        return sa.Uuid()
    if isinstance(value, datetime):
        return UTCDateTime()
    if isinstance(value, dict | list):
        return JSONPayload
    return sa.Text()


def _schema_columns(conn: Connection) -> dict[str, set[str]]:
    inspector = inspect(conn)
    return {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }


async def write_rows(url: str, rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """INSERT every row into the tables of the schema as it is now, naming only the columns it
    has. Every table must get rows, and the rows must cover every column (so that all of them are
    checked after the upgrade). Returns what was written, per table."""
    engine = create_async_engine(async_url(url))
    written: dict[str, list[dict[str, Any]]] = {}
    try:
        async with engine.begin() as conn:
            columns = await conn.run_sync(_schema_columns)
            assert set(columns) <= set(rows), f"tables without rows: {set(columns) - set(rows)}"
            for table, table_columns in columns.items():
                for row in rows[table]:
                    values = {name: value for name, value in row.items() if name in table_columns}
                    assert set(values) == table_columns, (table, table_columns - set(values))
                    statement = text(
                        f"INSERT INTO {table} ({', '.join(values)}) "
                        f"VALUES ({', '.join(f':{name}' for name in values)})"
                    ).bindparams(*(sa.bindparam(name, type_=_sql_type(v)) for name, v in values.items()))
                    await conn.execute(statement, values)
                    written.setdefault(table, []).append(values)
    finally:
        await engine.dispose()
    return written


async def read_all(url: str, written: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table now, all columns, read with raw SQL: a column written before is
    read with the type it was written with, any other column as the database returns it."""
    engine = create_async_engine(async_url(url))
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        async with engine.connect() as conn:
            columns = await conn.run_sync(_schema_columns)
            for table, names in columns.items():
                types = {
                    name: _sql_type(value)
                    for row in written.get(table, [])
                    for name, value in row.items()
                    if value is not None
                }
                ordered = sorted(names)
                statement = text(f"SELECT {', '.join(ordered)} FROM {table}").columns(
                    *(sa.column(name, types.get(name, sa.types.NullType())) for name in ordered)
                )
                found[table] = [dict(row._mapping) for row in await conn.execute(statement)]
    finally:
        await engine.dispose()
    return found


async def schema_drift(url: str) -> list[Any]:
    """Differences between the models and the migrated schema (`compare_metadata`)."""
    engine = create_async_engine(async_url(url))

    def compare(conn: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def current(url: str) -> str | None:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


def by_key(table: str, rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    key = KEYS.get(table, "id")
    return {row[key]: row for row in rows}


async def statuses(world: SyncWorld, before: Before) -> dict[str, list[str]]:
    """The status of each event table's rows, sorted."""
    found: dict[str, list[str]] = {}
    async with world.db.session() as session:
        for table in before.queued:
            found[table] = sorted(await session.scalars(text(f"SELECT status FROM {table}")))
    return found


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def back_at_head(database_url: str) -> Iterator[str]:
    """The test's database; afterwards, at head again whatever happened (the PostgreSQL database is
    shared by the session's tests, which expect head's tables)."""
    yield database_url
    config = alembic_config(database_url)
    try:
        command.upgrade(config, "head")
    except Exception:
        command.downgrade(config, "base")
        command.upgrade(config, "head")


@pytest.fixture
def world(back_at_head: str, sync_world: SyncWorld) -> SyncWorld:
    """The world the production service runs in: every handler (`default_registry`), no list
    created by the service (the lists the agents need exist), nothing remembered of other tests."""
    assert sync_world.settings.database_url == back_at_head
    CallListRegistryStore.forget()
    AgentField.forget()
    return sync_world


# --- the test -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("revision", EARLIER_REVISIONS)
async def test_upgrade_from_an_earlier_revision_keeps_every_row_and_drains_the_queue(
    revision: str, world: SyncWorld
) -> None:
    """R-DM-6, SPEC §13, issue 14 item 5: from revision R (with rows in every table and events
    queued) to head: every row and column written at R is intact, the added columns hold their
    defaults, the schema matches the models; the queued events are processed by the real worker
    against the simulators, each `done`, each effect in its simulator exactly once."""
    url = world.settings.database_url
    config = alembic_config(url)
    await asyncio.to_thread(command.downgrade, config, "base")
    await upgrade(url, revision)
    assert await current(url) == revision

    before = make_world_before(world)
    written = await write_rows(url, before.rows)
    ghl_before = world.ghl.sim.snapshot()
    lists_before = world.aloware.sim.snapshot()["lists"]

    # The operator's upgrade, with the events still queued.
    await upgrade(url)
    assert await current(url) == head_revision()
    assert await schema_drift(url) == []
    after = await read_all(url, written)
    for table, rows in written.items():
        now_there = by_key(table, after[table])
        assert now_there.keys() == by_key(table, rows).keys(), table
        for row in rows:
            stored = now_there[row[KEYS.get(table, "id")]]
            # Each column written at R holds what was written ...
            assert {name: stored[name] for name in row} == row, table
            # ... and each column added since holds its documented default.
            added = {name: stored[name] for name in stored.keys() - row.keys()}
            assert added == {name: ADDED_DEFAULTS.get((table, name)) for name in added}, table
    # Tables created after R start empty.
    assert {table: rows for table, rows in after.items() if table not in written and rows} == {}

    # The new version's worker drains the queue against the simulators.
    processed = await world.process()
    assert processed == sum(len(ids) for ids in before.queued.values())
    assert await statuses(world, before) == {
        "webhook_events": ["done", "done", "done", "quarantined"],
        "texting_webhook_events": ["done", "done"],
        "broadcast_webhook_events": ["done", "done"],
    }
    async with world.db.session() as session:
        errors = list(await session.scalars(select(SyncLog).where(SyncLog.status == "error")))
    assert errors == []

    # Every look-up was answered by the rows written at R: the contact mapping, the conversation
    # (ghl_conversations or message_mappings), the agent's list id; GHL and Aloware were asked for
    # none of them.
    assert world.ghl.requests("POST", "/contacts/upsert") == []
    assert world.ghl.requests(prefix="/contacts/search") == []
    assert world.ghl.requests(prefix="/conversations/search") == []
    assert [r.path for r in world.ghl.requests("POST") if r.path.rstrip("/") == "/conversations"] == []
    assert world.aloware.requests(prefix="/api/v1/call-lists") == []

    ghl = world.ghl.sim.snapshot()
    contacts = [c for c in ghl["contacts"] if not c["deleted"]]
    assert len(contacts) == len([c for c in ghl_before["contacts"] if not c["deleted"]])  # none created
    [dana] = [c for c in contacts if c["id"] == before.dana_ghl_id]
    # Call Disposed: one note on the mapped contact, its call in the remembered conversation.
    notes = [n["body"] for n in dana["notes"]]
    assert sum(note_marker(NEW_CALL_ID) in n for n in notes) == 1
    assert sum(note_marker(OLD_CALL_ID) in n for n in notes) == 1
    calls = [m for m in ghl["messages"] if m["type"] == "Call"]
    assert [(m["contactId"], m["conversationId"], m["conversationProviderId"]) for m in calls] == [
        (before.dana_ghl_id, before.conversation_id, CALL_PROVIDER)
    ]
    # The inbound text: once, in the same conversation.
    [text_message] = [m for m in ghl["messages"] if m.get("altId") == NEW_TEXT_ID]
    assert (text_message["contactId"], text_message["conversationId"], text_message["direction"]) == (
        before.dana_ghl_id,
        before.conversation_id,
        "inbound",
    )
    assert [c["id"] for c in ghl["conversations"]] == [before.conversation_id]
    # The broadcast: one record.
    records = [
        r for r in world.ghl.sim.records.values() if r.properties.get("broadcast_id") == NEW_BROADCAST_ID
    ]
    assert len(records) == 1
    assert (records[0].properties["sent"], records[0].properties["delivered"]) == (250, 230)
    # ContactCreate: one Aloware contact, on Alice's existing list.
    aloware = world.aloware.sim
    riley = aloware.contact_by_phone(RILEY_PHONE)
    assert riley is not None
    assert (riley["first_name"], riley["email"]) == ("Riley", "riley.upgrade@example.com")
    assert len(aloware.contacts) == 2
    lists_after = aloware.snapshot()["lists"]
    assert len(lists_after) == len(lists_before) == 1
    assert aloware.lists[before.alice_list_id]["contact_ids"] == [before.dana_aloware_id, riley["id"]]
