"""A contact's dialer lists follow its newest GHL event, whatever order the events arrive in
(R-AG-2, R-AG-4, R-IDEM-1): found by the soak (issue 14).

GHL resends a webhook under a new `webhookId` (so it is a new event to ingest), stamped with the
original event's `timestamp`. In the soak a resend of a lead's `ContactCreate` (no tags) arrived
after the lead had been tagged `hot`, and took the lead off its HOT list. The list step now
orders events by their time, as the profile step already did: an event older than the one the
lists were last placed by changes nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from df_middleware.db.models import AgentDirectory, SyncLog
from df_middleware.simulators.ghl import contact_webhook
from tests.sync_world import LOCATION, SyncWorld

pytestmark = pytest.mark.slow

PHONE = "+19195550177"


async def _alice(world: SyncWorld) -> None:
    async with world.db.session() as session:
        session.add(AgentDirectory(agent_key="ALICE", display_name="Alice", ghl_owner_id="user-alice"))
    for key in ("NEW_LEADS", "HOT"):
        world.aloware.sim.add_list(f"DF_ALICE_{key}")


def _on_lists(world: SyncWorld) -> set[str]:
    sim = world.aloware.sim
    contact = sim.contact_by_phone(PHONE)
    assert contact is not None
    return {sim.lists[i]["name"] for i in sim.lists_of(contact["id"])}


def _resent(payload: dict[str, Any]) -> dict[str, Any]:
    """The same event again, as GHL resends it: a new webhookId, the original timestamp."""
    return {**payload, "webhookId": uuid.uuid4().hex[:24]}


async def test_late_resend_of_an_older_event_moves_no_list(sync_world: SyncWorld) -> None:
    """R-AG-2, R-IDEM-1: created (NEW_LEADS), tagged hot (NEW_LEADS + HOT), then the creation is
    resent: the lead stays on both lists, and the resend's sync_log row says it was stale."""
    await _alice(sync_world)
    write = sync_world.ghl.sim.create_contact(
        LOCATION, {"firstName": "Lena", "phone": PHONE, "assignedTo": "user-alice"}
    )
    created = contact_webhook("ContactCreate", write.contact)
    await sync_world.deliver_ghl(created)
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}

    tagged = sync_world.ghl.sim.add_tags(LOCATION, write.contact["id"], ["hot"])
    for event in tagged.events:
        await sync_world.deliver_ghl(contact_webhook(event, tagged.contact))
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}

    await sync_world.deliver_ghl(_resent(created))
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}
    async with sync_world.db.session() as session:
        messages = list(await session.scalars(select(SyncLog.message)))
    assert any("stale: the lists follow a newer event" in (m or "") for m in messages)


async def test_same_time_events_apply_in_receipt_order(sync_world: SyncWorld) -> None:
    """R-AG-2, R-Q-4: one GHL write sends `ContactUpdate` and `ContactTagUpdate` with the same
    timestamp; the second received is not stale, and a later real change still applies."""
    await _alice(sync_world)
    write = sync_world.ghl.sim.create_contact(LOCATION, {"firstName": "Lena", "phone": PHONE})
    await sync_world.deliver_ghl(contact_webhook("ContactCreate", write.contact))
    await sync_world.process()
    assert _on_lists(sync_world) == set()  # the default agent's lists do not exist here

    both = sync_world.ghl.sim.update_contact(
        LOCATION, write.contact["id"], {"assignedTo": "user-alice", "tags": ["hot"]}
    )
    assert set(both.events) >= {"ContactUpdate", "ContactTagUpdate"}
    for event in both.events:
        await sync_world.deliver_ghl(contact_webhook(event, both.contact))
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}

    untagged = sync_world.ghl.sim.remove_tags(LOCATION, write.contact["id"], ["hot"])
    for event in untagged.events:
        await sync_world.deliver_ghl(contact_webhook(event, untagged.contact))
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}
