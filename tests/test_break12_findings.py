"""Findings of the outside test of issue 12 (agents, call lists), kept as regression tests.

Each test states what must hold; the ones that fail today are `xfail(strict=True)` with the
finding in the reason, so the fix turns them green (and the strict xfail then asks for the marker
to go). Webhooks go through the real ingest and the real worker; the assertions read the Aloware
simulator's lists and the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import select

from df_middleware.agents.directory import AgentsFileError, parse_agents
from df_middleware.consent.store import dialer_block
from df_middleware.db.models import ContactListMembership, TextingWebhookEvent, WebhookEvent
from df_middleware.simulators.ghl import contact_webhook
from tests.sync_world import SyncWorld
from tests.test_sync_call_lists import PHONE, _agents, _deliver_contact, _ghl_contact, _on_lists

pytestmark = pytest.mark.slow

ADD = "/api/v1/webhook/powerdialer-add-contact-to-lists"


def _stop_text(message_id: str) -> dict[str, Any]:
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_7781",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": "STOP",
        "timestamp": "2026-11-24T17:05:00.000Z",
        "status": "received",
    }


def _adds(world: SyncWorld) -> int:
    return sum(r.path == ADD for r in world.aloware.requests())


async def _until_settled(world: SyncWorld, deadline_s: float = 60.0) -> None:
    """Process until no GHL or texting event is pending (retries included), or the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        await world.process()
        async with world.db.session() as session:
            open_events = 0
            for model in (WebhookEvent, TextingWebhookEvent):
                rows = await session.scalars(select(model).where(model.status.in_(("pending", "processing"))))
                open_events += len(rows.all())
        if open_events == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("events still pending at the deadline")


async def test_a_stop_during_list_adds_leaves_the_person_on_no_list(sync_world: SyncWorld) -> None:
    """R-AG-2, R-OPT-3: an SMS STOP (OPTOUT_REMOVES_FROM_DIALER=true) processed while the contact's
    list adds are on their way to Aloware: once everything has settled the person is on no list,
    and `contact_list_memberships` agrees with Aloware. Readiness: the first add reached Aloware
    (the simulator answers each call after 1 s, so the adds are still in flight)."""
    sync_world.settings = sync_world.settings.model_copy(update={"optout_removes_from_dialer": True})
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice")
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}
    before = _adds(sync_world)

    update = contact_webhook("ContactUpdate", {**contact, "tags": ["hot", "call_now", "follow_up"]})
    await sync_world.deliver_ghl(update)
    sync_world.aloware.faults(latency_ms=1000)
    lists_work = asyncio.create_task(sync_world.process())
    deadline = time.monotonic() + 30
    while _adds(sync_world) <= before:
        assert time.monotonic() < deadline, "the list event never reached Aloware"
        await asyncio.sleep(0.01)
    await sync_world.deliver_texting(_stop_text("tlx_STOP_break12"))
    await sync_world.process()  # a second worker handles the STOP meanwhile
    await lists_work
    sync_world.aloware.faults()
    await _until_settled(sync_world)

    assert await dialer_block(sync_world.db, PHONE, sms_opt_out_counts=True) == "opted out of SMS"
    on = _on_lists(sync_world)
    async with sync_world.db.session() as session:
        rows = {(r.agent_key, r.list_key) for r in await session.scalars(select(ContactListMembership))}
    assert {f"DF_{agent}_{key}" for agent, key in rows} == on
    assert on == set()


async def test_a_workflow_tag_event_without_the_owner_keeps_the_agent(sync_world: SyncWorld) -> None:
    """R-AG-1, R-AG-2: Alice owns the contact in GHL; a workflow `contact.tag.added` webhook that
    names the contact and its tags (but not its owner, as workflow payloads are configured by
    hand) adds HOT on Alice's lists; it does not reassign the lead to UNASSIGNED."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice")
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}

    await sync_world.deliver_ghl(
        {"type": "contact.tag.added", "contact_id": contact["id"], "phone": PHONE, "tags": "hot"}
    )
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}


def _refused(text: str, source: str) -> AgentsFileError:
    fmt = "yaml" if source.endswith(".yaml") else "json"
    with pytest.raises(AgentsFileError) as refused:
        parse_agents(text, source, fmt)
    return refused.value


def test_a_deeply_nested_yaml_file_is_refused_with_a_message() -> None:
    """R-AG-5: a file that does not parse is refused with a message naming the file."""
    error = _refused("- agent_key: A\n  display_name: " + "[" * 100_000 + "]" * 100_000 + "\n", "deep.yaml")
    assert "deep.yaml" in str(error)


@pytest.mark.parametrize(
    ("text", "source"),
    [
        ("- agent_key: A\n  aloware_user_id: " + "9" * 5000 + "\n", "agents.yaml"),
        ('[{"agent_key": "A", "aloware_user_id": ' + "9" * 5000 + "}]", "agents.json"),
    ],
)
def test_a_huge_number_is_refused_with_its_line(text: str, source: str) -> None:
    """R-AG-5: a value of the wrong kind is refused with the file and the line named."""
    error = _refused(text, source)
    assert error.line is not None


def test_a_nul_character_is_refused_by_the_file_check() -> None:
    """R-AG-5: text PostgreSQL cannot store is refused with its line, the same on both engines."""
    error = _refused('[{"agent_key": "A",\n "display_name": "x\\u0000y"}]', "agents.json")
    assert error.line == 2
