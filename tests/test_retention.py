"""Retention of the ledger tables (R-DM-7, R-DM-3, R-IDEM-2, R-LOOP-1).

`prune` deletes, in batches and on both engines, what no longer protects or explains anything:
old `done` events; effects and sync_log rows older than the retention whose event is gone (an
event that still exists may be replayed, so what makes its replay safe stays however old);
conversation ids nobody uses; expired echo guards and install-state uses. The rows are inserted
directly with the ages each rule looks at, except in the last test, where the real worker and
the simulators make the writes and a kept event is replayed after pruning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

import df_middleware.sync.texting as texting
from df_middleware.db.models import (
    ContactMapping,
    EchoGuard,
    GhlConversation,
    MessageMapping,
    OAuthStateUse,
    SyncEffect,
    SyncLog,
    TextingWebhookEvent,
    WebhookEvent,
)
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import get_event, prune, quarantine_event, unquarantine_event
from tests.event_factory import ago, insert_event
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, SyncWorld

DAY = 86400
RETENTION_DAYS = 30
REPO = Path(__file__).resolve().parents[1]


async def add_effect(db: Database, key: str, event_id: object, created_at: datetime) -> None:
    async with db.session() as session:
        session.add(
            SyncEffect(
                effect_key=key,
                event_id=None if event_id is None else str(event_id),
                target_system="ghl",
                target_id=f"target-{key}",
                created_at=created_at,
            )
        )


async def add_log_row(db: Database, correlation_id: object, started_at: datetime, message: str) -> None:
    async with db.session() as session:
        session.add(
            SyncLog(
                direction="internal",
                entity_type="contact",
                entity_id="c",
                source_id="c",
                status="success",
                message=message,
                started_at=started_at,
                correlation_id=None if correlation_id is None else str(correlation_id),
            )
        )


async def effect_keys(db: Database) -> set[str]:
    async with db.session() as session:
        return set(await session.scalars(select(SyncEffect.effect_key)))


async def log_messages(db: Database) -> set[str]:
    async with db.session() as session:
        return {m or "" for m in await session.scalars(select(SyncLog.message))}


async def events_by_age(db: Database) -> dict[str, uuid.UUID]:
    """One event per case the effect rule distinguishes, all received 40 days ago."""
    old, recent = ago(40 * DAY), ago(3600)
    return {
        "old done": await insert_event(db, status="done", received_at=old, processed_at=old),
        "old done texting": await insert_event(
            db, "texting", event_type="message.sent", status="done", received_at=old, processed_at=old
        ),
        "old done broadcast, no processed_at": await insert_event(
            db, "broadcast", event_type="analytics_updated", status="done", received_at=old
        ),
        "young done": await insert_event(db, status="done", received_at=old, processed_at=recent),
        "pending": await insert_event(db, status="pending", received_at=old),
        "processing": await insert_event(db, status="processing", received_at=old),
        "error": await insert_event(db, status="error", received_at=old),
        "quarantined texting": await insert_event(
            db, "texting", event_type="message.received", status="quarantined", received_at=old
        ),
    }


PRUNED_OWNERS = {"old done", "old done texting", "old done broadcast, no processed_at"}


async def test_an_effect_outlives_every_event_that_could_replay_it(db: Database) -> None:
    """R-DM-7, R-DM-3, R-IDEM-2: an effect older than the retention is pruned only when its event
    is gone or is an old `done` one (pruned in the same run), whatever table the event is in; the
    effects of pending, processing, error, quarantined and recently done events stay however old.
    An effect naming no event (NULL, an unknown id, not an id) ages alone; a young effect stays.
    The kept effects are interleaved with the pruned ones, in batches of two."""
    events = await events_by_age(db)
    for minute, (name, event_id) in enumerate(events.items()):
        await add_effect(db, name, event_id, ago(35 * DAY + 60 * minute))
    await add_effect(db, "no event", None, ago(35 * DAY + 30))
    await add_effect(db, "unknown event", uuid.uuid4(), ago(35 * DAY + 90))
    await add_effect(db, "not an event id", "event:abc", ago(35 * DAY + 150))
    await add_effect(db, "young, event gone", uuid.uuid4(), ago(DAY))

    counts = await prune(db, retention_days=RETENTION_DAYS, batch_size=2)

    assert counts["webhook_events"] == 1
    assert counts["texting_webhook_events"] == 1
    assert counts["broadcast_webhook_events"] == 1
    assert counts["sync_effects"] == 6
    kept = set(events) - PRUNED_OWNERS | {"young, event gone"}
    assert await effect_keys(db) == kept
    for name, event_id in events.items():
        assert (await get_event(db, event_id) is None) == (name in PRUNED_OWNERS)


async def test_a_log_row_outlives_its_event(db: Database) -> None:
    """R-DM-7, R-IDEM-2: sync_log rows older than the retention go unless their event still exists
    (a dead letter keeps the row that says why; a replay reads its rows to know it ran before and
    look for writes whose answer was lost). Rows of no event age alone."""
    events = await events_by_age(db)
    for name, event_id in events.items():
        await add_log_row(db, event_id, ago(35 * DAY), name)
    await add_log_row(db, None, ago(35 * DAY), "no event")
    await add_log_row(db, "reconcile:contacts", ago(35 * DAY), "not an event id")
    await add_log_row(db, uuid.uuid4(), ago(DAY), "young, event gone")

    counts = await prune(db, retention_days=RETENTION_DAYS, batch_size=3)

    assert counts["sync_log"] == 5
    assert await log_messages(db) == set(events) - PRUNED_OWNERS | {"young, event gone"}


async def test_batches_smaller_than_the_backlog_delete_all_of_it(db: Database) -> None:
    """R-DM-7: with a batch of 3, a backlog of 20 old done events, their 40 effects and 40 log
    rows, 7 expired echo guards and 5 old install-state uses is deleted whole, one short
    transaction per batch, while the effects and rows of 4 dead letters placed between them stay."""
    old = ago(40 * DAY)
    for n in range(20):
        event_id = await insert_event(db, status="done", received_at=old, processed_at=old)
        for k in range(2):
            await add_effect(db, f"done-{n}-{k}", event_id, ago(35 * DAY + n))
            await add_log_row(db, event_id, ago(35 * DAY + n), f"done-{n}-{k}")
        if n % 5 == 0:
            dead_letter = await insert_event(db, status="error", received_at=old)
            await add_effect(db, f"dead-{n}", dead_letter, ago(35 * DAY + n))
            await add_log_row(db, dead_letter, ago(35 * DAY + n), f"dead-{n}")
    async with db.session() as session:
        for n in range(7):
            session.add(EchoGuard(system="ghl", entity_id=f"c{n}", fingerprint="f", expires_at=ago(n + 1)))
        for n in range(5):
            session.add(OAuthStateUse(nonce=f"old-{n}", used_at=ago(2 * DAY + n)))

    counts = await prune(db, retention_days=RETENTION_DAYS, batch_size=3)

    assert counts["webhook_events"] == 20
    assert counts["sync_effects"] == 40
    assert counts["sync_log"] == 40
    assert counts["echo_guard"] == 7
    assert counts["oauth_state_uses"] == 5
    assert await effect_keys(db) == {f"dead-{n}" for n in range(0, 20, 5)}
    assert await log_messages(db) == {f"dead-{n}" for n in range(0, 20, 5)}
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(WebhookEvent)) == 4


async def test_a_conversation_id_is_forgotten_when_unused_and_its_contact_no_longer_synced(
    db: Database,
) -> None:
    """R-DM-7, R-PERF-3: `ghl_conversations` is a cache. An id not written for longer than the
    retention goes when no live contact mapping names its GHL contact (none, or deleted); a mapped
    contact keeps it however old (it saves a search per call or text), and a young one stays."""
    old, young = ago(40 * DAY), ago(DAY)
    async with db.session() as session:
        for contact, updated_at in [
            ("old-unmapped", old),
            ("old-mapped", old),
            ("old-mapping-deleted", old),
            ("young-unmapped", young),
        ]:
            session.add(
                GhlConversation(
                    ghl_contact_id=contact, conversation_id=f"conv-{contact}", updated_at=updated_at
                )
            )
        session.add(
            ContactMapping(ghl_contact_id="old-mapped", phone_number="+19195550101", sync_direction="x")
        )
        session.add(
            ContactMapping(
                ghl_contact_id="old-mapping-deleted",
                phone_number="+19195550102",
                sync_direction="x",
                deleted_at=ago(35 * DAY),
            )
        )

    counts = await prune(db, retention_days=RETENTION_DAYS, batch_size=1)

    assert counts["ghl_conversations"] == 2
    async with db.session() as session:
        kept = set(await session.scalars(select(GhlConversation.ghl_contact_id)))
    assert kept == {"old-mapped", "young-unmapped"}


async def test_echo_guards_and_install_states_go_once_they_cannot_matter(db: Database) -> None:
    """R-LOOP-1, R-DM-7: an echo fingerprint goes once expired (a live one still recognises the
    echo of our write); a used install state goes after a day, far past its 15 minutes of
    validity (within them it must stay, or the link could be used twice)."""
    async with db.session() as session:
        session.add(EchoGuard(system="ghl", entity_id="c", fingerprint="expired", expires_at=ago(1)))
        session.add(
            EchoGuard(
                system="ghl", entity_id="c", fingerprint="live", expires_at=utcnow() + timedelta(minutes=5)
            )
        )
        session.add(OAuthStateUse(nonce="yesterday", used_at=ago(DAY + 60)))
        session.add(OAuthStateUse(nonce="just-now", used_at=ago(60)))

    counts = await prune(db, retention_days=RETENTION_DAYS, batch_size=1)

    assert (counts["echo_guard"], counts["oauth_state_uses"]) == (1, 1)
    async with db.session() as session:
        assert list(await session.scalars(select(EchoGuard.fingerprint))) == ["live"]
        assert list(await session.scalars(select(OAuthStateUse.nonce))) == ["just-now"]


# --- through the real worker ------------------------------------------------------------------------


def received(message_id: str, body: str) -> dict[str, Any]:
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_7781",
        "direction": "inbound",
        "from": "+19195551234",
        "to": "+19195550000",
        "body": body,
        "timestamp": "2026-11-24T16:50:00.000Z",
        "status": "received",
    }


async def age_everything(db: Database, days: int) -> None:
    """Move every event, effect and log row `days` into the past, as if the day were long gone."""
    then = ago(days * DAY)
    async with db.session() as session:
        for model in (WebhookEvent, TextingWebhookEvent):
            await session.execute(update(model).values(received_at=then, processed_at=then))
        await session.execute(update(SyncEffect).values(created_at=then))
        await session.execute(update(SyncLog).values(started_at=then))


async def test_a_replay_of_a_kept_event_after_pruning_does_not_repeat_its_writes(
    sync_world: SyncWorld,
) -> None:
    """R-IDEM-2, R-DM-7, R-DM-3: a person's text reaches GHL and an agent's SMS goes out through
    Verity; an operator quarantines both events (a dispute). Forty days later the prune deletes
    another text's event and its effects, but keeps the quarantined events' effects however old.
    Released and processed again by the real worker, they write nothing twice: still one message
    in GHL per text, still one Verity send."""
    world = sync_world
    world.use_modules(texting)
    await world.deliver_texting(received("tlx_KEPT", "Is Tuesday still on?"))
    await world.deliver_texting(received("tlx_GONE", "Thanks, bye"))
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": "+19195551234", "firstName": "Ann"}).contact
    _, send = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], "See you Tuesday!", conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_provider_message(dict(send))
    await world.process()
    assert await world.verity.sim.drain()  # Verity's receipts of the send, processed too
    await world.process()
    assert len(world.verity.sim.sent_messages) == 1

    async with world.db.session() as session:
        kept_text = await session.scalar(
            select(TextingWebhookEvent.id).where(TextingWebhookEvent.entity_id == "tlx_KEPT")
        )
        agent_send = await session.scalar(
            select(WebhookEvent.id).where(WebhookEvent.event_type == "ProviderOutboundMessage")
        )
    assert kept_text is not None
    assert agent_send is not None
    for event_id in (kept_text, agent_send):
        await quarantine_event(world.db, event_id, "dispute", actor="ops@example.com")
    kept_effects = await effect_keys(world.db)
    assert {"ghl:message:texting:tlx_KEPT", f"verity:send:{send['messageId']}"} <= kept_effects

    await age_everything(world.db, 40)
    counts = await prune(world.db, retention_days=RETENTION_DAYS, batch_size=1)

    assert await get_event(world.db, kept_text) is not None
    remaining = await effect_keys(world.db)
    assert "ghl:message:texting:tlx_GONE" not in remaining
    assert counts["sync_effects"] == len(kept_effects) - len(remaining) > 0
    assert {"ghl:message:texting:tlx_KEPT", f"verity:send:{send['messageId']}"} <= remaining

    for event_id in (kept_text, agent_send):
        await unquarantine_event(world.db, event_id, actor="ops@example.com")
    await world.process()

    for event_id in (kept_text, agent_send):
        event = await get_event(world.db, event_id)
        assert event is not None
        assert event["status"] == "done"
    texts = [m for m in world.ghl.sim.snapshot()["messages"] if m.get("altId") == "tlx_KEPT"]
    assert len(texts) == 1
    assert len(world.verity.sim.sent_messages) == 1
    async with world.db.session() as session:
        [mapping] = await session.scalars(
            select(MessageMapping).where(MessageMapping.ghl_message_id == send["messageId"])
        )
    assert mapping.texting_message_id == world.verity.sim.sent_messages[0]["messageId"]


def test_cli_prune_reports_every_table(database_url: str) -> None:
    """R-DM-7: `df-middleware prune --json` prints the count of every table it prunes."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}}
    env["DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "prune", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert set(json.loads(done.stdout)) == {
        "webhook_events",
        "texting_webhook_events",
        "broadcast_webhook_events",
        "sync_effects",
        "sync_log",
        "ghl_conversations",
        "echo_guard",
        "oauth_state_uses",
    }
