"""A GHL contact deleted in GHL is never written again; the person's next activity lands on a live
contact and the mapping moves to it, the deleted row kept as history (R-C-4, R-ID-3, R-CALL-1).

Issue 10, defect 3: the ledger's `ghl:contact-for-aloware:<id>` record of creating the contact
stayed `done` forever, so after `ContactDelete` the person's next call reused the dead id, the
mapping was revived onto it and the note POST failed (404) for that call and every later one; and
when the person texted first (a new contact), completing the mapping with the Aloware id collided
with the deleted row's unique Aloware id until dead-lettered.

Real ingest, worker and GHL / Aloware / Verity simulators over HTTP; both databases.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from df_middleware.db.models import ContactMapping, SyncEffect, TextingWebhookEvent, WebhookEvent
from tests.sync_world import LOCATION, SyncWorld

PHONE = "+19195557311"
ALOWARE_ID = 58_211


def aloware_contact() -> dict[str, Any]:
    return {
        "id": ALOWARE_ID,
        "first_name": "Dana",
        "last_name": "Reyes",
        "phone_number": PHONE,
        "email": "dana.reyes@example.com",
    }


def call_disposed(call_id: int) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "call",
        "direction": "outbound",
        "contact_id": ALOWARE_ID,
        "contact": aloware_contact(),
        "user": {"id": 731, "name": "Chris Agent", "email": "chris@example.com"},
        "disposition_status": "Interested",
        "call_disposition": "Interested",
        "status": "completed",
        "duration": 95,
        "created_at": "2026-11-24T16:30:00Z",
    }


def text_from_person(message_id: str) -> dict[str, Any]:
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_del_1",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": "Is this still available?",
        "timestamp": "2026-11-25T10:00:00.000Z",
        "status": "received",
    }


def live_contacts(world: SyncWorld) -> list[dict[str, Any]]:
    return [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"] and c["phone"] == PHONE]


async def delete_in_ghl(world: SyncWorld, contact_id: str) -> None:
    """The contact is deleted in GHL, and GHL tells us (`ContactDelete`)."""
    world.ghl.sim.delete_contact(LOCATION, contact_id)
    await world.deliver_ghl({"type": "ContactDelete", "id": contact_id, "phone": PHONE})
    await world.process()


async def mappings(world: SyncWorld) -> list[ContactMapping]:
    async with world.db.session() as session:
        rows = await session.scalars(select(ContactMapping).order_by(ContactMapping.created_at))
        return list(rows)


async def statuses(world: SyncWorld) -> list[str]:
    async with world.db.session() as session:
        found = list(await session.scalars(select(WebhookEvent.status)))
        found += list(await session.scalars(select(TextingWebhookEvent.status)))
    return found


def note_markers(contact: dict[str, Any]) -> list[str]:
    return [
        line for note in contact["notes"] for line in note["body"].splitlines() if line.startswith("[df:")
    ]


async def test_a_call_after_the_contact_was_deleted_lands_on_a_new_live_contact(
    sync_world: SyncWorld,
) -> None:
    """R-C-4, R-CALL-1: call → contact created; deleted in GHL; the next call creates a new live
    contact (not the dead id from the ledger), its note goes there, the mapping moves to it and
    the deleted row stays as history; the ledger's create record of the dead contact is retired."""
    world = sync_world
    await world.deliver_aloware("Call Disposed", call_disposed(9_920_001))
    await world.process()
    [first] = live_contacts(world)

    await delete_in_ghl(world, first["id"])
    await world.deliver_aloware("Call Disposed", call_disposed(9_920_002))
    await world.process()

    assert set(await statuses(world)) == {"done"}
    [second] = live_contacts(world)
    assert second["id"] != first["id"]
    assert note_markers(second) == ["[df:aloware:call:9920002:note:call-disposed]"]
    rows = await mappings(world)
    assert [(r.ghl_contact_id, r.aloware_contact_id, r.deleted_at is not None) for r in rows] == [
        (first["id"], str(ALOWARE_ID), True),
        (second["id"], str(ALOWARE_ID), False),
    ]
    async with world.db.session() as session:
        found = await session.execute(select(SyncEffect.effect_key, SyncEffect.state))
        effects = {key: state for key, state in found.all()}
    assert effects[f"ghl:contact-for-aloware:{ALOWARE_ID}"] == "done"
    retired = [k for k, s in effects.items() if s == "superseded"]
    assert [k.split("#")[0] for k in retired] == [f"ghl:contact-for-aloware:{ALOWARE_ID}"]

    # A third call goes to the same live contact: nothing more is created.
    await world.deliver_aloware("Call Disposed", call_disposed(9_920_003))
    await world.process()
    [still] = live_contacts(world)
    assert still["id"] == second["id"]
    assert len(note_markers(still)) == 2


async def test_a_text_then_a_call_after_the_delete_complete_one_live_mapping(sync_world: SyncWorld) -> None:
    """R-C-4, R-ID-3: after the delete the person texts first (a new GHL contact, a texting-only
    mapping), then calls: the call finds that contact by its mapping and completes it with the
    Aloware id — no collision with the deleted row, nothing dead-lettered, the note on the live
    contact."""
    world = sync_world
    await world.deliver_aloware("Call Disposed", call_disposed(9_921_001))
    await world.process()
    [first] = live_contacts(world)
    await delete_in_ghl(world, first["id"])

    await world.deliver_texting(text_from_person("tlx_DEL_1"))
    await world.process()
    await world.deliver_aloware("Call Disposed", call_disposed(9_921_002))
    await world.process()

    assert set(await statuses(world)) == {"done"}
    [live] = live_contacts(world)
    assert live["id"] != first["id"]
    assert note_markers(live) == ["[df:aloware:call:9921002:note:call-disposed]"]
    texts = [m for m in world.ghl.sim.snapshot()["messages"] if m.get("altId") == "tlx_DEL_1"]
    assert [m["contactId"] for m in texts] == [live["id"]]
    rows = await mappings(world)
    assert [(r.ghl_contact_id, r.aloware_contact_id, r.deleted_at is not None) for r in rows] == [
        (first["id"], str(ALOWARE_ID), True),
        (live["id"], str(ALOWARE_ID), False),
    ]


async def test_a_late_change_of_a_deleted_contact_is_not_synced(sync_world: SyncWorld) -> None:
    """R-C-4: a GHL `ContactUpdate` of the deleted contact delivered after its delete (late, or
    replayed) writes nothing to Aloware and does not revive the mapping."""
    world = sync_world
    await world.deliver_aloware("Call Disposed", call_disposed(9_922_001))
    await world.process()
    [first] = live_contacts(world)
    await delete_in_ghl(world, first["id"])
    before = len(world.aloware.requests("POST", "/api/v1/webhook/forms"))

    await world.deliver_ghl(
        {"type": "ContactUpdate", "id": first["id"], "firstName": "Late", "phone": PHONE, "tags": []}
    )
    await world.process()

    assert len(world.aloware.requests("POST", "/api/v1/webhook/forms")) == before
    [row] = await mappings(world)
    assert row.deleted_at is not None
    assert set(await statuses(world)) == {"done"}


async def test_a_call_and_a_text_before_the_delete_webhook_land_on_a_live_contact(
    sync_world: SyncWorld,
) -> None:
    """R-C-4, R-CALL-1, R-TXT-1: the contact is deleted in GHL, and the person's next call and text
    are processed before GHL's `ContactDelete` (ordered under the contact, not the phone) — or it
    never comes. GHL refuses the writes on the dead contact; the middleware checks that GHL no
    longer knows it, retires it as a delete would (mapping marked deleted, off Aloware's lists) and
    writes to the person's live contact: nothing dead-lettered, nothing on the dead contact. The
    late `ContactDelete` then finds it done."""
    world = sync_world
    await world.deliver_aloware("Call Disposed", call_disposed(9_923_001))
    await world.deliver_texting(text_from_person("tlx_DEL_0"))
    await world.process()
    [first] = live_contacts(world)
    world.ghl.sim.delete_contact(LOCATION, first["id"])  # GHL's webhook has not reached us

    await world.deliver_aloware("Call Disposed", call_disposed(9_923_002))
    await world.deliver_texting(text_from_person("tlx_DEL_2"))
    await world.process()

    assert set(await statuses(world)) == {"done"}
    [live] = live_contacts(world)
    assert live["id"] != first["id"]
    assert note_markers(live) == ["[df:aloware:call:9923002:note:call-disposed]"]
    texts = {m["altId"]: m["contactId"] for m in world.ghl.sim.snapshot()["messages"] if m.get("altId")}
    assert texts["tlx_DEL_2"] == live["id"]
    rows = await mappings(world)
    assert [(r.ghl_contact_id, r.deleted_at is not None) for r in rows] == [
        (first["id"], True),
        (live["id"], False),
    ]

    await world.deliver_ghl({"type": "ContactDelete", "id": first["id"], "phone": PHONE})
    await world.process()
    assert set(await statuses(world)) == {"done"}
    [still] = live_contacts(world)
    assert still["id"] == live["id"]
