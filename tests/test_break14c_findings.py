"""Outside tests of e825baa (break14c): (A) a contact made in the dialer is placed on its lists
when the service creates it in GHL (`sync/contacts_aloware`, R-AG-2); (B) a GHL contact
is mapped (GHL id, phone) before its Lead API write (`sync/contacts.sync_ghl_contact`, R-ID-3).
Real ingest, the real worker and the simulators over HTTP, both databases (`sync_world`); races
are made deterministic by running another worker inside a patched connector call (the pattern of
tests/test_break14b_findings.py).

Findings (both databases; all fixed, their tests regressions): A1 GHL's echo taken early still left
the new contact on no list; A2 a failed list call is never retried; A3 a create whose answer was
lost is never placed; A4 a contact made do-not-call in Aloware joins NEW_LEADS; A5 the create's list
step, dated by our clock, outranked an owner GHL assigns right after when GHL's clock is behind; B1
the mapping written before a Lead API write that never succeeds gives an old number to its GHL
contact.
The other tests held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select

from df_middleware.db.models import ContactMapping, DncRegistry, OptoutRegistry, SyncLog
from df_middleware.simulators import common
from df_middleware.simulators.ghl import contact_webhook
from tests.sync_world import LOCATION, SyncWorld
from tests.test_break14_findings import NO_NATURAL_RETRY, statuses
from tests.test_soak_findings import retry_now
from tests.test_sync_call_lists import _agents, _list_calls, _memberships, _on_lists

pytestmark = pytest.mark.slow

PHONE = "+19195550142"  # the number test_sync_call_lists' helpers read
OTHER_PHONE = "+19195550188"


# --- helpers ---------------------------------------------------------------------------------------


async def _made_in_the_dialer(world: SyncWorld, phone: str = PHONE, **fields: Any) -> dict[str, Any]:
    """An agent makes a contact in Aloware; its `Contact Created` reaches the service."""
    made: dict[str, Any] = world.aloware.sim.add_contact(
        phone, first_name="Dana", last_name="Reyes", **fields
    )
    await world.deliver_aloware("Contact Created", world.aloware.sim.webhook_contact(int(made["id"])))
    return made


def _ghl_sends_webhooks(world: SyncWorld) -> None:
    world.ghl.sim.webhook_url = f"{world.service_url}/api/webhooks/ghl"
    world.ghl.sim.webhook_signing_key = world.keys.ed25519_private


async def _ghl_delivered(world: SyncWorld, count: int) -> None:
    """Readiness: GHL delivered `count` webhooks and has none in flight."""
    webhooks = world.ghl.sim.webhooks
    for _ in range(3000):
        if len(webhooks.deliveries) >= count and not webhooks.pending:
            break
        await asyncio.sleep(0.01)
    assert len(webhooks.deliveries) >= count, [d.event for d in webhooks.deliveries]


def _patch(
    obj: Any, name: str, wrapper: Callable[[Callable[..., Awaitable[Any]]], Any]
) -> Callable[[], None]:
    real = getattr(obj, name)
    setattr(obj, name, wrapper(real))

    def undo() -> None:
        setattr(obj, name, real)

    return undo


async def _list_call_fails_once(world: SyncWorld) -> Callable[[], None]:
    """The first `add_to_list` fails (Aloware 503 through the client's retries); returns the undo."""
    failed = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def add_fails_once(*args: Any, **kwargs: Any) -> Any:
            if failed.is_set():
                return await real(*args, **kwargs)
            failed.set()
            world.aloware.faults(error_rate=1.0)
            try:
                return await real(*args, **kwargs)
            finally:
                world.aloware.faults()

        return add_fails_once

    assert world.connectors is not None
    return _patch(world.connectors.aloware, "add_to_list", wrapper)


async def _mappings(world: SyncWorld) -> list[tuple[str, str | None, str | None, bool]]:
    async with world.db.session() as session:
        rows = await session.scalars(select(ContactMapping).order_by(ContactMapping.ghl_contact_id))
        return [
            (r.ghl_contact_id, r.aloware_contact_id, r.phone_number, r.deleted_at is not None) for r in rows
        ]


async def _log(world: SyncWorld) -> list[tuple[str, str, str | None]]:
    async with world.db.session() as session:
        return [(r.direction, r.status, r.message) for r in await session.scalars(select(SyncLog))]


# --- (A) the list step of a contact made in the dialer ---------------------------------------------


async def test_a_dialer_contact_joins_new_leads_when_ghls_echo_ran_its_list_step_first(
    sync_world: SyncWorld,
) -> None:
    """R-AG-2, R-LOOP-1 (the race e825baa names): an agent makes Dana in Aloware; the service
    creates her in GHL; GHL's ContactCreate about that create reaches another worker, which runs
    its list step before this worker has mapped the Aloware id. Dana, new and unassigned, must
    end on DF_UNASSIGNED_NEW_LEADS."""
    world = sync_world
    await _agents(world)
    _ghl_sends_webhooks(world)
    assert world.connectors is not None
    assert world.connectors.ghl is not None
    ghl = world.connectors.ghl
    echoed = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def upsert_then_echo(*args: Any, **kwargs: Any) -> Any:
            answer = await real(*args, **kwargs)
            if not echoed.is_set():
                echoed.set()
                await _ghl_delivered(world, 1)
                await world.worker().run_once()  # another worker takes GHL's ContactCreate now
            return answer

        return upsert_then_echo

    undo = _patch(ghl, "upsert_contact", wrapper)
    try:
        await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    await world.process()
    assert echoed.is_set()
    assert await statuses(world, "Contact Created") == ["done"]
    assert [c["phone"] for c in world.ghl.sim.snapshot()["contacts"]] == [PHONE]
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)
    assert await _memberships(world.db) == {("UNASSIGNED", "NEW_LEADS", "member")}


async def test_a_dialer_contact_whose_list_call_failed_is_placed_by_the_retry(sync_world: SyncWorld) -> None:
    """R-AG-2, R-IDEM-2: Dana is made in Aloware and created in GHL; adding her to
    DF_UNASSIGNED_NEW_LEADS fails (Aloware 503 through the client's retries), so the event is
    retried. The retry must place her: she ends on the list."""
    world = sync_world
    # No retry of its own inside `process()`: the test runs the retry itself (retry_now).
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)
    await _agents(world)
    undo = await _list_call_fails_once(world)
    try:
        await _made_in_the_dialer(world)
        await world.process()
        assert await statuses(world, "Contact Created") == ["pending"]
        await retry_now(world, "Contact Created")
    finally:
        undo()
    assert await statuses(world, "Contact Created") == ["done"]
    assert len(world.ghl.sim.snapshot()["contacts"]) == 1
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)


async def test_a_dialer_contact_created_through_a_lost_answer_joins_new_leads(sync_world: SyncWorld) -> None:
    """R-AG-2, R-IDEM-2: Dana is made in Aloware; GHL creates her but the answer to our upsert is
    lost (504 after the work); the retry finds the contact it made. She is a new GHL contact all
    the same and joins DF_UNASSIGNED_NEW_LEADS (GHL's own webhook never reaches us here)."""
    world = sync_world
    await _agents(world)
    assert world.connectors is not None
    assert world.connectors.ghl is not None
    ghl = world.connectors.ghl

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def lost(*args: Any, **kwargs: Any) -> Any:
            setattr(ghl, "upsert_contact", real)  # noqa: B010 (only the first create)
            world.ghl.faults(lost_response_rate=1.0)
            try:
                return await real(*args, **kwargs)
            finally:
                world.ghl.faults()

        return lost

    undo = _patch(ghl, "upsert_contact", wrapper)
    try:
        await _made_in_the_dialer(world)
        await world.process()
        await retry_now(world, "Contact Created")
    finally:
        undo()
    assert await statuses(world, "Contact Created") == ["done"]
    assert len(world.ghl.sim.snapshot()["contacts"]) == 1
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)


async def test_a_dialer_contact_made_do_not_call_joins_no_list(sync_world: SyncWorld) -> None:
    """R-AG-2, R-OPT-6: an agent makes Dana in Aloware already on do-not-call (`is_dnc`). A
    voice-DNC contact is on no power-dialer list, ever: the service creates her in GHL and puts her
    on none."""
    world = sync_world
    await _agents(world)
    await _made_in_the_dialer(world, is_dnc=True)
    await world.process()
    [contact] = world.ghl.sim.snapshot()["contacts"]
    assert contact["phone"] == PHONE
    assert _on_lists(world) == set(), await _log(world)
    assert await _memberships(world.db) == set()
    # The decision is recorded and told, as a `Contact DNC Updated` would be.
    assert (contact.get("dndSettings") or {}).get("Call", {}).get("status") == "active"
    async with world.db.session() as session:
        dnc = await session.scalar(select(DncRegistry).where(DncRegistry.phone_number == PHONE))
    assert dnc is not None
    assert dnc.status == "opted_out"


async def test_a_dialer_contact_on_the_dnc_registry_joins_no_list(sync_world: SyncWorld) -> None:
    """R-AG-2, R-OPT-6: the number is on do-not-call (dnc_registry) before Dana is made in the
    dialer: created in GHL, she joins no list and no add call is made."""
    world = sync_world
    await _agents(world)
    async with world.db.session() as session:
        session.add(DncRegistry(phone_number=PHONE, status="opted_out", source="aloware", reason="DNC"))
    await _made_in_the_dialer(world)
    await world.process()
    assert [c["phone"] for c in world.ghl.sim.snapshot()["contacts"]] == [PHONE]
    assert _on_lists(world) == set()
    assert not [r for r in _list_calls(world) if "add-contact" in r.path]


async def test_a_dialer_contact_opted_out_of_sms_joins_no_list_when_optout_removes(
    sync_world: SyncWorld,
) -> None:
    """R-AG-2, R-OPT-3: OPTOUT_REMOVES_FROM_DIALER=true and the number opted out of SMS: Dana,
    made in the dialer and created in GHL, joins no list; with the setting off she joins
    NEW_LEADS (an SMS opt-out alone does not keep her off the dialer)."""
    world = sync_world
    await _agents(world)
    async with world.db.session() as session:
        session.add(OptoutRegistry(phone_number=PHONE, status="opted_out", source="texting", reason="STOP"))
    world.settings = world.settings.model_copy(update={"optout_removes_from_dialer": True})
    await _made_in_the_dialer(world)
    await world.process()
    assert _on_lists(world) == set()
    assert not [r for r in _list_calls(world) if "add-contact" in r.path]

    world.settings = world.settings.model_copy(update={"optout_removes_from_dialer": False})
    await _made_in_the_dialer(world, OTHER_PHONE)
    async with world.db.session() as session:
        session.add(
            OptoutRegistry(phone_number=OTHER_PHONE, status="opted_out", source="texting", reason="STOP")
        )
    await world.process()
    assert _on_lists(world, OTHER_PHONE) == {"DF_UNASSIGNED_NEW_LEADS"}


async def test_a_dialer_contact_without_agents_makes_no_list_call(sync_world: SyncWorld) -> None:
    """R-AG-2 with no agent routing (empty directory): the create makes no list call at all and
    writes no membership."""
    world = sync_world
    world.aloware.sim.add_list("DF_UNASSIGNED_NEW_LEADS")
    await _made_in_the_dialer(world)
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert len(world.ghl.sim.snapshot()["contacts"]) == 1
    assert _list_calls(world) == []
    assert await _memberships(world.db) == set()


async def test_a_dialer_contact_whose_list_is_missing_is_blocked_not_created(sync_world: SyncWorld) -> None:
    """R-AG-3: ALOWARE_CREATE_LISTS=false and DF_UNASSIGNED_NEW_LEADS missing in Aloware: the
    membership is recorded `blocked` and the event is done; no list is created."""
    world = sync_world
    await _agents(world, lists_for=("ALICE",))
    world.settings = world.settings.model_copy(update={"aloware_create_lists": False})
    await _made_in_the_dialer(world)
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await _memberships(world.db) == {("UNASSIGNED", "NEW_LEADS", "blocked")}
    assert not world.aloware.requests("POST", "/api/v1/call-lists")
    assert _on_lists(world) == set()


async def test_a_dialer_contact_found_in_ghl_is_not_placed_by_the_create(sync_world: SyncWorld) -> None:
    """R-AG-2, R-ID-2: the person is already in GHL (an owned contact, Bob's); Dana made in the
    dialer is matched to it by phone, not created: the Aloware event makes no list call (the GHL
    contact's own events keep its lists), and nothing joins UNASSIGNED."""
    world = sync_world
    await _agents(world)
    world.ghl.sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Dana", "assignedTo": "user-bob", "locationId": LOCATION}
    )
    await _made_in_the_dialer(world)
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert len(world.ghl.sim.snapshot()["contacts"]) == 1
    assert _list_calls(world) == []


async def test_an_owner_assigned_in_ghl_while_the_create_places_the_contact_wins(
    sync_world: SyncWorld,
) -> None:
    """R-AG-2, R-AG-4, signals time: Dana is made in the dialer and created in GHL; before the
    create's list step runs, a GHL user assigns her to Alice and that ContactUpdate is processed by
    another worker (the mapping already knows her Aloware id). The create's list step must not move
    her back to UNASSIGNED: she ends on DF_ALICE_NEW_LEADS only."""
    import df_middleware.sync.made_contacts as contacts

    world = sync_world
    await _agents(world)
    assigned = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def assign_first(ctx: Any, contact_id: str, **kwargs: Any) -> Any:
            if not assigned.is_set():
                assigned.set()
                contact = world.ghl.sim.update_contact(
                    LOCATION, contact_id, {"assignedTo": "user-alice"}
                ).contact
                await world.deliver_ghl(contact_webhook("ContactUpdate", contact))
                await world.worker().run_once()
            return await real(ctx, contact_id, **kwargs)

        return assign_first

    undo = _patch(contacts, "sync_contact_lists", wrapper)
    try:
        await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    await world.process()
    assert assigned.is_set()
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS"}, await _log(world)
    assert await _memberships(world.db) == {("ALICE", "NEW_LEADS", "member")}


async def test_a_later_owner_assignment_is_not_undone_by_a_replay_of_the_create(
    sync_world: SyncWorld,
) -> None:
    """R-AG-4, R-Q-4: Dana made in the dialer joins UNASSIGNED NEW_LEADS; a GHL user then assigns
    her to Alice (she moves to DF_ALICE_NEW_LEADS); the Aloware Contact Created is delivered again
    (a resend). She stays on Alice's list."""
    world = sync_world
    await _agents(world)
    made = await _made_in_the_dialer(world)
    await world.process()
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}
    [ghl_contact] = world.ghl.sim.snapshot()["contacts"]
    contact = world.ghl.sim.update_contact(LOCATION, ghl_contact["id"], {"assignedTo": "user-alice"}).contact
    await world.deliver_ghl(contact_webhook("ContactUpdate", contact))
    await world.process()
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS"}
    await world.deliver_aloware("Contact Created", world.aloware.sim.webhook_contact(int(made["id"])))
    await world.process()
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS"}
    assert len(world.ghl.sim.snapshot()["contacts"]) == 1


async def test_an_owner_assigned_right_after_the_create_wins_with_ghls_clock_behind(
    sync_world: SyncWorld,
) -> None:
    """R-AG-1, R-AG-4: GHL's clock runs 5 s behind ours. Dana is made in the dialer, created in GHL
    and joins DF_UNASSIGNED_NEW_LEADS; a GHL user (or GHL's round-robin workflow) then assigns her
    to Alice. She moves to DF_ALICE_NEW_LEADS."""
    world = sync_world
    await _agents(world)
    # GHL's clock is behind ours all along (a clock does not jump back between two of GHL's writes).
    common.set_clock_skew("ghl", -5)
    try:
        await _made_in_the_dialer(world)
        await world.process()
        assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}
        [ghl_contact] = world.ghl.sim.snapshot()["contacts"]
        contact = world.ghl.sim.update_contact(
            LOCATION, ghl_contact["id"], {"assignedTo": "user-alice"}
        ).contact
        await world.deliver_ghl(contact_webhook("ContactUpdate", contact))
        await world.process()
    finally:
        common.set_clock_skew("ghl", 0)
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS"}, await _log(world)
    assert await _memberships(world.db) == {("ALICE", "NEW_LEADS", "member")}


# --- (B) the mapping written before the Lead API write ---------------------------------------------


def _lead_api_down(world: SyncWorld) -> Callable[[], None]:
    """Aloware's Lead API (`POST /webhook/forms`) answers 503 to every try while its lookups work;
    returns what brings it back."""
    assert world.connectors is not None
    assert world.connectors.aloware is not None

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def failing(*args: Any, **kwargs: Any) -> Any:
            world.aloware.faults(error_rate=1.0)
            try:
                return await real(*args, **kwargs)
            finally:
                world.aloware.faults()

        return failing

    return _patch(world.connectors.aloware, "upsert_lead", wrapper)


async def test_a_dead_lead_write_does_not_give_an_old_number_to_its_ghl_contact(
    sync_world: SyncWorld,
) -> None:
    """R-ID-2, R-C-1, R-C-2: Gina is created in GHL on P; syncing her to Aloware fails for good
    (the Lead API down through every attempt: dead-lettered). Her number is then changed in GHL
    to P2 (that sync dead-lettered too). Aloware recovers; an agent makes Bob on P in the dialer.
    GHL has nobody on P: Bob gets a GHL contact of his own, and Gina is not mapped to Bob."""
    world = sync_world
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    gina = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Gina"}).contact
    restore = _lead_api_down(world)
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", gina))
        await world.process()
        moved = world.ghl.sim.update_contact(LOCATION, gina["id"], {"phone": OTHER_PHONE}).contact
        await world.deliver_ghl(contact_webhook("ContactUpdate", moved))
        await world.process()
    finally:
        restore()
    assert await statuses(world, "ContactCreate") == ["error"]
    assert await statuses(world, "ContactUpdate") == ["error"]
    assert world.aloware.sim.contact_by_phone(PHONE) is None

    bob = world.aloware.sim.add_contact(PHONE, first_name="Bob", last_name="Other")
    await world.deliver_aloware("Contact Created", world.aloware.sim.webhook_contact(int(bob["id"])))
    await world.process()
    on_p = [c for c in world.ghl.sim.snapshot()["contacts"] if c.get("phone") == PHONE]
    mapped_to_bob = [m for m in await _mappings(world) if m[1] == str(bob["id"])]
    assert [m[0] for m in mapped_to_bob] != [gina["id"]], await _mappings(world)
    assert [c["firstName"] for c in on_p] == ["Bob"], await _log(world)


async def test_a_duplicate_ghl_contact_on_a_mapped_phone_leaves_no_mapping(sync_world: SyncWorld) -> None:
    """R-C-1, R-ID-3: Ann (GHL) is synced to Aloware and mapped; a second GHL contact with Ann's
    number (GHL allows duplicates) is flagged as a conflict before anything is written: no Lead
    API write, no mapping row for it, Ann's mapping untouched, and Aloware's next change of the
    contact still goes to Ann."""
    world = sync_world
    ann = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", ann))
    await world.process()
    aloware_id = str(world.aloware.sim.contact_by_phone(PHONE)["id"])
    world.ghl.sim.locations[LOCATION].allow_duplicate_contacts = True
    twin = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Annie"}).contact
    forms_before = len(world.aloware.requests("POST", "/api/v1/webhook/forms"))
    await world.deliver_ghl(contact_webhook("ContactCreate", twin))
    await world.process()
    assert len(world.aloware.requests("POST", "/api/v1/webhook/forms")) == forms_before
    assert await _mappings(world) == [(ann["id"], aloware_id, PHONE, False)]
    world.aloware.sim.update_contact(int(aloware_id), email="ann@example.com")
    await world.deliver_aloware("Contact Updated", world.aloware.sim.webhook_contact(int(aloware_id)))
    await world.process()
    by_id = {c["id"]: c for c in world.ghl.sim.snapshot()["contacts"]}
    assert by_id[ann["id"]].get("email") == "ann@example.com"
    assert not by_id[twin["id"]].get("email")


async def test_a_dead_lead_write_then_a_ghl_delete_leaves_the_number_to_the_next_person(
    sync_world: SyncWorld,
) -> None:
    """R-C-4, R-ID-2: Gina's sync to Aloware dead-letters (Lead API down), then Gina is deleted in
    GHL. Bob, made in the dialer on her old number, gets a live GHL contact of his own, mapped."""
    world = sync_world
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    gina = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Gina"}).contact
    restore = _lead_api_down(world)
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", gina))
        await world.process()
    finally:
        restore()
    assert await statuses(world, "ContactCreate") == ["error"]
    world.ghl.sim.delete_contact(LOCATION, gina["id"])
    await world.deliver_ghl(contact_webhook("ContactDelete", gina))
    await world.process()
    assert await statuses(world, "ContactDelete") == ["done"]

    bob = world.aloware.sim.add_contact(PHONE, first_name="Bob", last_name="Other")
    await world.deliver_aloware("Contact Created", world.aloware.sim.webhook_contact(int(bob["id"])))
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    [live] = [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"]]
    assert live["firstName"] == "Bob"
    assert (live["id"], str(bob["id"]), PHONE, False) in await _mappings(world)


async def test_aloware_echo_of_a_first_lead_write_taken_early_finds_the_mapped_contact(
    sync_world: SyncWorld,
) -> None:
    """R-ID-2, R-ID-3, R-LOOP-1 (what e825baa's mapping before the write is for): a GHL contact is
    written to Aloware through the Lead API; Aloware's `Contact Created` about it is processed by
    another worker before the writer has learnt the Aloware id. The echo resolves the person by the
    mapping: no GHL search, no second GHL contact, one mapping (GHL id, Aloware id)."""
    from tests.conftest import TEST_SECRETS

    world = sync_world
    sim = world.aloware.sim
    sim.webhook_url = f"{world.service_url}/api/webhooks/aloware"
    sim.webhook_bearer_token = TEST_SECRETS["aloware_webhook_bearer_token"]
    sim.emit_contact_events = True
    gina = world.ghl.sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Gina", "lastName": "Ray"}
    ).contact
    assert world.connectors is not None
    assert world.connectors.aloware is not None
    taken = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def find_after_the_echo(phone: Any) -> Any:
            if not taken.is_set() and world.aloware.requests("POST", "/api/v1/webhook/forms"):
                for _ in range(3000):
                    if sim.webhooks.deliveries and not sim.webhooks.pending:
                        break
                    await asyncio.sleep(0.01)
                taken.set()
                await world.worker().run_once()  # another worker takes Aloware's webhook now
            return await real(phone)

        return find_after_the_echo

    undo = _patch(world.connectors.aloware, "find_contact_by_phone", wrapper)
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", gina))
        await world.process()
    finally:
        undo()
    await world.process()
    assert taken.is_set()
    assert await statuses(world, "Contact Created") == ["done"]
    assert [c["id"] for c in world.ghl.sim.snapshot()["contacts"]] == [gina["id"]]
    assert not world.ghl.requests("POST", "/contacts/search")
    aloware_id = str(sim.contact_by_phone(PHONE)["id"])
    assert await _mappings(world) == [(gina["id"], aloware_id, PHONE, False)]
