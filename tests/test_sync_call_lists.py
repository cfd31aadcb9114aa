"""A GHL contact's agent and power-dialer lists in Aloware, end to end (SPEC §6.5: R-AG-1…R-AG-4).

Webhooks go through the real ingest, the real worker processes them, and the assertions read the
Aloware simulator's lists (over real HTTP), its request log (the call counts) and the database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from df_middleware.db.models import AgentDirectory, CallListRegistry, ContactAgentState, ContactListMembership
from df_middleware.db.session import Database
from df_middleware.queue.worker import Worker
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.call_lists import ContactLists
from df_middleware.sync.list_operations import lists_status, rebuild_lists
from df_middleware.sync.list_registry import CallListRegistryStore
from tests.sync_world import LOCATION, SyncWorld

pytestmark = pytest.mark.slow

PHONE = "+19195550142"
KEYS = ("CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT")
LIST_CALLS = ("/api/v1/webhook/powerdialer-", "/api/v1/call-lists")


async def _agents(world: SyncWorld, *, lists_for: tuple[str, ...] = ("ALICE", "BOB", "UNASSIGNED")) -> None:
    """Two agents in the directory, and every list of theirs (and of the default agent) in Aloware."""
    async with world.db.session() as session:
        session.add_all(
            [
                AgentDirectory(
                    agent_key="ALICE",
                    display_name="Alice",
                    ghl_owner_id="user-alice",
                    ghl_assigned_agent_field_value="Alice",
                    required_tag="team-alice",
                ),
                AgentDirectory(
                    agent_key="BOB",
                    display_name="Bob",
                    ghl_owner_id="user-bob",
                    ghl_assigned_agent_field_value="Bob",
                    required_tag="team-bob",
                ),
            ]
        )
    for agent in lists_for:
        for key in KEYS:
            world.aloware.sim.add_list(f"DF_{agent}_{key}")


def _list_calls(world: SyncWorld) -> list[Any]:
    return [r for r in world.aloware.requests() if any(r.path.startswith(p) for p in LIST_CALLS)]


def _on_lists(world: SyncWorld, phone: str = PHONE) -> set[str]:
    """Names of the Aloware lists the contact on `phone` is on, read from the simulator."""
    sim = world.aloware.sim
    contact = sim.contact_by_phone(phone)
    if contact is None:
        return set()
    return {sim.lists[i]["name"] for i in sim.lists_of(contact["id"])}


def _ghl_contact(world: SyncWorld, **fields: Any) -> dict[str, Any]:
    body = {"firstName": "Lena", "lastName": "Lead", "phone": PHONE, "locationId": LOCATION, **fields}
    contact: dict[str, Any] = world.ghl.sim.create_contact(LOCATION, body).contact
    return contact


async def _deliver_contact(world: SyncWorld, contact: dict[str, Any], event: str = "ContactCreate") -> None:
    await world.deliver_ghl(contact_webhook(event, contact))
    await world.process()


async def _memberships(db: Database) -> set[tuple[str, str, str]]:
    async with db.session() as session:
        rows = await session.scalars(select(ContactListMembership))
        return {(r.agent_key, r.list_key, r.status) for r in rows}


async def test_new_contact_joins_new_leads_of_its_owner(sync_world: SyncWorld) -> None:
    """R-AG-1, R-AG-2: a new contact whose owner is Alice's GHL user joins DF_ALICE_NEW_LEADS."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice")
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}
    assert await _memberships(sync_world.db) == {("ALICE", "NEW_LEADS", "member")}


async def test_agent_by_custom_field_native_and_workflow(sync_world: SyncWorld) -> None:
    """R-AG-1: the agent custom field, found by name through GET /locations/{id}/customFields
    (native webhooks carry it by id) or read by name from a workflow webhook."""
    await _agents(sync_world)
    field = sync_world.ghl.sim.add_custom_field(LOCATION, "Assigned Agent", "assigned_agent")
    contact = _ghl_contact(sync_world, customFields=[{"id": field["id"], "field_value": "bob"}])
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_BOB_NEW_LEADS"}

    # A workflow webhook names the field: "Assigned Agent": "Alice" → reassigned to Alice.
    await sync_world.deliver_ghl(
        {
            "type": "contact.updated",
            "contact_id": contact["id"],
            "phone": PHONE,
            "tags": "",
            "Assigned Agent": "Alice",
        }
    )
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}


async def test_agent_by_tag_and_default(sync_world: SyncWorld) -> None:
    """R-AG-1: a required tag names the agent; no rule matching → DEFAULT_AGENT_KEY (UNASSIGNED)."""
    await _agents(sync_world)
    tagged = _ghl_contact(sync_world, tags=["Team-Bob"])
    await _deliver_contact(sync_world, tagged)
    assert _on_lists(sync_world) == {"DF_BOB_NEW_LEADS"}

    other = _ghl_contact(sync_world, phone="+19195550177", firstName="Otto")
    await _deliver_contact(sync_world, other)
    assert _on_lists(sync_world, "+19195550177") == {"DF_UNASSIGNED_NEW_LEADS"}


async def test_tags_join_and_leave_lists_and_a_replay_calls_nothing(sync_world: SyncWorld) -> None:
    """R-AG-2, R-AG-3: tag `hot` added → HOT joined (one add); removed → HOT left and NEW_LEADS
    kept (remove-all, re-add: two calls); the same update delivered again (redelivery or a replay
    with a new webhook id) → zero Aloware calls."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice")
    await _deliver_contact(sync_world, contact)

    before = len(_list_calls(sync_world))
    hot = {**contact, "tags": ["hot"]}
    await _deliver_contact(sync_world, hot, "ContactTagUpdate")
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}
    assert len(_list_calls(sync_world)) - before == 1

    before = len(_list_calls(sync_world))
    await _deliver_contact(sync_world, hot, "ContactTagUpdate")  # a new webhookId: not a duplicate
    await _deliver_contact(sync_world, hot, "ContactUpdate")
    assert len(_list_calls(sync_world)) == before, "nothing changed: no Aloware call"

    await _deliver_contact(sync_world, {**contact, "tags": []}, "ContactTagUpdate")
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS"}
    assert len(_list_calls(sync_world)) - before == 2
    assert await _memberships(sync_world.db) == {("ALICE", "NEW_LEADS", "member")}


async def test_pipeline_stages_move_and_close(sync_world: SyncWorld) -> None:
    """R-AG-2: a workflow `pipeline.stageChanged` to "Follow Up" puts the contact on FOLLOW_UP
    instead of NEW_LEADS (the contact's tags read from GHL); a native status `won` takes it off
    every list; a later tag does not put a closed contact back."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-bob", tags=["hot"])
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_BOB_NEW_LEADS", "DF_BOB_HOT"}

    await sync_world.deliver_ghl(
        {
            "type": "pipeline.stageChanged",
            "contact_id": contact["id"],
            "opportunity_id": "opp1",
            "pipleline_stage": "Follow Up",
            "status": "open",
        }
    )
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_BOB_FOLLOW_UP", "DF_BOB_HOT"}

    await sync_world.deliver_ghl(
        {
            "type": "OpportunityStatusUpdate",
            "id": "opp1",
            "contactId": contact["id"],
            "pipelineStageId": "stage-9",
            "status": "won",
        }
    )
    await sync_world.process()
    assert _on_lists(sync_world) == set()
    assert await _memberships(sync_world.db) == set()
    async with sync_world.db.session() as session:
        state = await session.scalar(select(ContactAgentState))
        assert state is not None
        assert state.stage_list_key == "CLOSED"

    await _deliver_contact(sync_world, {**contact, "tags": ["hot", "call_now"]}, "ContactTagUpdate")
    assert _on_lists(sync_world) == set()


async def test_reassignment_leaves_old_lists_and_joins_new(sync_world: SyncWorld) -> None:
    """R-AG-4: owner changes Alice → Bob: off every Alice list, on Bob's equivalents (NEW_LEADS
    included), state updated."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice", tags=["hot"])
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}

    await _deliver_contact(sync_world, {**contact, "assignedTo": "user-bob"}, "ContactUpdate")
    assert _on_lists(sync_world) == {"DF_BOB_NEW_LEADS", "DF_BOB_HOT"}
    sim = sync_world.aloware.sim
    alice_lists = [found for found in sim.lists.values() if found["name"].startswith("DF_ALICE_")]
    assert all(not found["contact_ids"] for found in alice_lists)
    assert await _memberships(sync_world.db) == {("BOB", "NEW_LEADS", "member"), ("BOB", "HOT", "member")}
    async with sync_world.db.session() as session:
        state = await session.scalar(select(ContactAgentState))
        assert state is not None
        assert state.agent_key == "BOB"


async def test_missing_list_is_blocked_or_created(sync_world: SyncWorld) -> None:
    """R-AG-3: Bob's lists do not exist in Aloware: without ALOWARE_CREATE_LISTS the membership is
    `blocked: list missing` and nothing is created; with it, the list is created once and joined."""
    await _agents(sync_world, lists_for=())
    contact = _ghl_contact(sync_world, assignedTo="user-bob")
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == set()
    async with sync_world.db.session() as session:
        rows = list(await session.scalars(select(ContactListMembership)))
        assert [(r.list_key, r.status, r.reason) for r in rows] == [("NEW_LEADS", "blocked", "list missing")]
    assert not any(
        r.method == "POST" and r.path == "/api/v1/call-lists" for r in sync_world.aloware.requests()
    )

    sync_world.settings = sync_world.settings.model_copy(update={"aloware_create_lists": True})
    other = _ghl_contact(sync_world, phone="+19195550178", assignedTo="user-bob", firstName="Nia")
    await _deliver_contact(sync_world, other)
    assert _on_lists(sync_world, "+19195550178") == {"DF_BOB_NEW_LEADS"}
    created = [
        found for found in sync_world.aloware.sim.lists.values() if found["name"] == "DF_BOB_NEW_LEADS"
    ]
    assert len(created) == 1
    async with sync_world.db.session() as session:
        registry = await session.scalar(
            select(CallListRegistry).where(CallListRegistry.list_key == "NEW_LEADS")
        )
        assert registry is not None
        assert registry.aloware_list_id == str(created[0]["id"])


async def test_do_not_call_takes_the_contact_off_every_list(sync_world: SyncWorld) -> None:
    """R-AG-2, R-OPT-6: GHL Call DND puts the number on do-not-call: the contact leaves every list,
    its memberships are forgotten, and a later update does not put it back."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice", tags=["hot"])
    await _deliver_contact(sync_world, contact)
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}

    dnd = contact_webhook("ContactDndUpdate", contact)
    dnd["dndSettings"] = {"Call": {"status": "active", "message": "", "code": ""}}
    await sync_world.deliver_ghl(dnd)
    await sync_world.process()
    assert _on_lists(sync_world) == set()
    assert await _memberships(sync_world.db) == set()

    await _deliver_contact(sync_world, {**contact, "tags": ["hot", "call_now"]}, "ContactUpdate")
    assert _on_lists(sync_world) == set()


@pytest.mark.postgres
async def test_concurrent_reassignments_leave_one_agent(sync_world: SyncWorld, database_url: str) -> None:
    """R-AG-4: two workers apply one contact's lists at once for two different agents; under the
    row lock the second plans from what the first did, so the contact ends on exactly one agent's
    lists, and the memberships say the same as Aloware."""
    if not sync_world.db.is_postgres:
        pytest.skip("the row lock is PostgreSQL's; SQLite has one writer")
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice")
    await _deliver_contact(sync_world, contact)
    aloware_id = str(sync_world.aloware.sim.contact_by_phone(PHONE)["id"])
    aloware = sync_world.connectors.aloware
    assert aloware is not None
    second = Database(database_url)
    try:
        for round_ in range(5):
            agents = ("BOB", "ALICE") if round_ % 2 == 0 else ("ALICE", "BOB")
            await asyncio.gather(
                ContactLists(sync_world.settings, sync_world.db, aloware).apply(
                    contact["id"],
                    agent_key=agents[0],
                    tags=["hot"],
                    phone=PHONE,
                    aloware_contact_id=aloware_id,
                ),
                ContactLists(sync_world.settings, second, aloware).apply(
                    contact["id"], agent_key=agents[1], tags=[], phone=PHONE, aloware_contact_id=aloware_id
                ),
            )
            on = _on_lists(sync_world)
            owners = {name.split("_")[1] for name in on}
            assert len(owners) == 1, on
            rows = await _memberships(sync_world.db)
            assert {f"DF_{a}_{k}" for a, k, _ in rows} == on
    finally:
        await second.dispose()


async def test_status_and_rebuild_retry_a_blocked_list(sync_world: SyncWorld) -> None:
    """R-AG-3, §8.3: a membership blocked because Bob's NEW_LEADS list is missing shows in `lists
    status`; once the list exists in Aloware, `lists rebuild` joins the contact and the status
    says so; a second rebuild changes nothing and calls no list endpoint but the GHL reads."""
    await _agents(sync_world, lists_for=("ALICE",))
    contact = _ghl_contact(sync_world, assignedTo="user-bob")
    await _deliver_contact(sync_world, contact)
    status = await lists_status(sync_world.settings, sync_world.db)
    assert status.blocked_lists == ["DF_BOB_NEW_LEADS"]
    assert {(line.list_name, line.members) for line in status.lines if line.agent_key == "ALICE"} == {
        (f"DF_ALICE_{k}", 0) for k in KEYS
    }

    sync_world.aloware.sim.add_list("DF_BOB_NEW_LEADS")
    CallListRegistryStore.forget()  # as a later process would: Aloware's lists read again
    report = await rebuild_lists(sync_world.settings, sync_world.db, sync_world.connectors)
    assert (report.contacts, report.changed, report.failed) == (1, 1, [])
    assert _on_lists(sync_world) == {"DF_BOB_NEW_LEADS"}
    status = await lists_status(sync_world.settings, sync_world.db)
    assert status.blocked_lists == []
    assert [line.members for line in status.lines if line.list_name == "DF_BOB_NEW_LEADS"] == [1]

    before = len(_list_calls(sync_world))
    again = await rebuild_lists(sync_world.settings, sync_world.db, sync_world.connectors, agent_key="bob")
    assert (again.contacts, again.changed, again.unchanged) == (1, 0, 1)
    assert len(_list_calls(sync_world)) == before


async def test_a_lifted_dnc_puts_the_contact_back_on_its_lists(sync_world: SyncWorld) -> None:
    """R-AG-2, R-OPT-6: GHL Call DND on → off every list; Call DND off again → back on the lists
    its agent and tags say, in the same event, without waiting for another contact update."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice", tags=["hot"])
    await _deliver_contact(sync_world, contact)
    for status in ("active", "inactive"):
        dnd = contact_webhook("ContactDndUpdate", contact)
        dnd["dndSettings"] = {"Call": {"status": status, "message": "", "code": ""}}
        await sync_world.deliver_ghl(dnd)
        await sync_world.process()
        expected = set() if status == "active" else {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}
        assert _on_lists(sync_world) == expected
    assert await _memberships(sync_world.db) == {("ALICE", "NEW_LEADS", "member"), ("ALICE", "HOT", "member")}


async def test_a_workflow_tag_event_without_the_tags_reads_the_contact(sync_world: SyncWorld) -> None:
    """R-AG-2: a workflow `tag.added` that names only the added tag is completed by reading the
    contact from GHL (GET /contacts/{id}), whose tags then decide the lists."""
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice")
    await _deliver_contact(sync_world, contact)
    sync_world.ghl.sim.add_tags(LOCATION, contact["id"], ["Hot"])
    await sync_world.deliver_ghl({"type": "tag.added", "contact_id": contact["id"], "tag": "Hot"})
    await sync_world.process()
    assert _on_lists(sync_world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}
    reads = [r for r in sync_world.ghl.requests("GET") if r.path == f"/contacts/{contact['id']}"]
    assert len(reads) == 1


@pytest.mark.postgres
async def test_two_workers_two_ordering_keys_one_agent(sync_world: SyncWorld, database_url: str) -> None:
    """R-AG-4, R-Q-4: a native ContactUpdate (keyed by the contact) naming Bob as owner and a workflow
    pipeline event carrying the phone (keyed by the phone; its owner read from GHL, Alice) are
    claimed by two workers at once; under the contact's row lock the contact ends on one agent's
    lists, and the memberships agree with Aloware. Repeated with the owners swapped."""
    if not sync_world.db.is_postgres:
        pytest.skip("the row lock is PostgreSQL's; SQLite has one writer")
    await _agents(sync_world)
    contact = _ghl_contact(sync_world, assignedTo="user-alice", tags=["hot"])
    await _deliver_contact(sync_world, contact)
    second_db = Database(database_url)
    second = Worker(sync_world.settings, second_db, sync_world.registry, connectors=sync_world.connectors)
    try:
        for round_ in range(6):
            in_ghl, in_event = ("user-alice", "user-bob") if round_ % 2 == 0 else ("user-bob", "user-alice")
            sync_world.ghl.sim.update_contact(LOCATION, contact["id"], {"assignedTo": in_ghl})
            await sync_world.deliver_ghl(
                contact_webhook("ContactUpdate", {**contact, "assignedTo": in_event})
            )
            await sync_world.deliver_ghl(
                {
                    "type": "pipeline.stageChanged",
                    "contact_id": contact["id"],
                    "phone": PHONE,
                    "pipeline_stage": "Hot",
                    "status": "open",
                }
            )
            await asyncio.gather(sync_world.worker().run_once(), second.run_once())
            await sync_world.process()
            on = _on_lists(sync_world)
            assert len({name.split("_")[1] for name in on}) == 1, on
            rows = await _memberships(sync_world.db)
            assert {f"DF_{a}_{k}" for a, k, _ in rows} == on
    finally:
        await second_db.dispose()


async def test_a_contact_made_in_the_dialer_joins_new_leads_once_in_ghl(sync_world: SyncWorld) -> None:
    """R-AG-2, R-C-2 (issue 14, the soak with echoes): a contact an agent makes in Aloware is
    created in GHL, a new GHL contact, unassigned: it joins DF_UNASSIGNED_NEW_LEADS when the
    service creates it, not only if GHL's webhook about that create runs its list step after the
    mapping knows the Aloware id (GHL posts none here at all)."""
    world = sync_world
    await _agents(world)
    made = world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes")
    await world.deliver_aloware("Contact Created", world.aloware.sim.webhook_contact(int(made["id"])))
    await world.process()
    assert [c["phone"] for c in world.ghl.sim.snapshot()["contacts"]] == [PHONE]
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}
    assert await _memberships(world.db) == {("UNASSIGNED", "NEW_LEADS", "member")}
