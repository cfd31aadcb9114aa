"""The one migration history runs on both engines and matches the models (R-DM-6, SPEC §2)."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from df_middleware.db.migrate import alembic_config, head_revision
from df_middleware.db.models import Base
from df_middleware.db.session import async_url

SEED_TABLES = {
    "webhook_events",
    "texting_webhook_events",
    "broadcast_webhook_events",
    "sync_log",
    "sync_state",
    "contact_mappings",
    "message_mappings",
    "optout_registry",
    "agent_directory",
    "call_list_registry",
    "contact_list_memberships",
    "contact_agent_state",
    "ghl_oauth_tokens",
    "reconcile_runs",
    "quarantine_events",
}
ADDED_TABLES = {
    "optout_events",
    "dnc_registry",
    "sync_effects",
    "echo_guard",
    "oauth_state_uses",
    "ghl_conversations",
    "broadcast_records",
}

QUEUE_COLUMNS = {
    "attempts",
    "next_attempt_at",
    "locked_until",
    "locked_by",
    "ordering_key",
    "signature_verified",
    "request_id",
}
#: Columns the seed had and the spec's additions, per table (a sample that proves both are there).
EXPECTED_COLUMNS = {
    "webhook_events": {
        "source",
        "event_type",
        "entity_type",
        "entity_id",
        "payload_json",
        "dedupe_key",
        "status",
    }
    | QUEUE_COLUMNS,
    "texting_webhook_events": {"conversation_id", "from_number", "to_number", "dedupe_key"} | QUEUE_COLUMNS,
    "broadcast_webhook_events": {"broadcast_id", "event_type", "dedupe_key"} | QUEUE_COLUMNS,
    "contact_mappings": {"aloware_contact_id", "ghl_contact_id", "last_synced_fingerprint", "deleted_at"},
    "message_mappings": {"texting_message_id", "ghl_message_id", "status", "status_updated_at"},
    "ghl_oauth_tokens": {
        "location_id",
        "access_token",
        "user_type",
        "company_id",
        "refresh_failed_at",
        "installed_at",
    },
    "contact_agent_state": {"contact_id", "agent_key", "last_aloware_list_status"},
    "sync_effects": {"effect_key", "event_id", "target_system", "target_id", "created_at"},
    "echo_guard": {"system", "entity_id", "fingerprint", "expires_at"},
    "optout_events": {
        "phone_number",
        "channel",
        "status",
        "source",
        "reason",
        "keyword",
        "message_id",
        "event_at",
        "actor",
    },
    "dnc_registry": {"phone_number", "status", "source", "reason", "last_event_at"},
}


async def _inspect(url: str) -> dict[str, Any]:
    engine = create_async_engine(async_url(url))

    def read(conn: Connection) -> dict[str, Any]:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names()) - {"alembic_version"}
        columns = {t: {c["name"] for c in inspector.get_columns(t)} for t in tables}
        unique = {
            t: {tuple(i["column_names"]) for i in inspector.get_indexes(t) if i["unique"]} for t in tables
        }
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        revision = MigrationContext.configure(conn).get_current_revision()
        return {"tables": tables, "columns": columns, "unique": unique, "diff": diff, "revision": revision}

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    finally:
        await engine.dispose()


def test_schema_has_every_table_and_matches_models(database_url: str) -> None:
    """R-DM-1…R-DM-6: the fifteen seed tables plus the additions, with their columns; no drift
    between the models and the migration history; dedupe keys and effect keys are unique."""
    found = asyncio.run(_inspect(database_url))
    assert found["revision"] == head_revision()
    assert found["tables"] == SEED_TABLES | ADDED_TABLES
    for table, columns in EXPECTED_COLUMNS.items():
        assert columns <= found["columns"][table], (table, columns - found["columns"][table])
    assert found["diff"] == []
    for table in ("webhook_events", "texting_webhook_events", "broadcast_webhook_events"):
        assert ("dedupe_key",) in found["unique"][table]
    assert ("effect_key",) in found["unique"]["sync_effects"]
    assert ("event_source", "event_id") in found["unique"]["quarantine_events"]


def test_downgrade_and_upgrade_again(database_url: str) -> None:
    """R-DM-6: the history is reversible on both engines (a bad deploy can be rolled back)."""
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    assert asyncio.run(_inspect(database_url))["tables"] == set()
    command.upgrade(config, "head")
    assert asyncio.run(_inspect(database_url))["tables"] == SEED_TABLES | ADDED_TABLES
