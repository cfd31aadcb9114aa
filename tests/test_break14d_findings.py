"""Outside tests of 49f14a1..e387d2b (break14d): the Aloware → GHL contact flow moved to
`sync/contacts_aloware` (a contact the service creates for a dialer contact is placed on its lists
on every attempt of the event that made it; a `Contact Created` with `is_dnc` decides voice DNC
first), `dnc.decide_voice_dnc` / `tell_voice_dnc`, and the provisional Aloware echo fingerprint of
a Lead API create (`sync/contacts.sync_ghl_contact`). Real ingest, the real worker and the
simulators over HTTP, both databases (`sync_world`); races are made deterministic by running
another worker inside a patched connector call (the pattern of tests/test_break14c_findings.py).

Findings (both databases; all fixed, their tests now regressions: 1 and 5 by `_dnc_at_first_sight`
and `sync/made_contacts.tell_consents_in_force`, 2 by dating the placement by the contact's
`dateUpdated`, 3 in `EchoGuard.is_echo`, 4 by `ContactMappings.claim_on_phone`; the GHL simulator's
contact dates now follow its clock skew like its webhooks):
1. (medium) A dialer contact first heard of through a `Contact Updated` carrying `is_dnc: true`
   (its `Contact Created` lost or sent before the webhook existed) gets a GHL contact and joins
   DF_UNASSIGNED_NEW_LEADS: only a `Contact Created` decides DNC at creation
   (`contacts_aloware._dnc_at_creation`), while any event that creates the GHL contact places it.
2. (medium) The placement reads the owner from GHL and applies it with no signals time: a GHL
   owner change applied by another worker between that read and the apply is undone (the contact
   goes back to UNASSIGNED). Running the placement on every attempt/replay widens the exposure.
3. (medium) The provisional Aloware fingerprint (`new:<phone>`) of a Lead API create is not
   cleared by a genuine Aloware change (`EchoGuard.is_echo` clears only the entity's own rows): an
   agent renaming the contact and back while the creating event waits for its retry has the
   rename-back swallowed as our echo; GHL keeps the intermediate name for good.
4. (low-medium, older than these commits) Two GHL contacts on one phone synced at once: the
   second silently takes over the first's Aloware contact (profile overwritten, mapping moved by
   `ContactMappings.upsert`), where one after the other it is flagged a conflict.
5. (medium) A voice DNC decided while GHL has nobody (a `Contact DNC Updated` delivered before
   the `Contact Created`) is never told to the GHL contact the creation then makes: no list (the
   registry blocks it) but Call DND stays off in GHL.

What held (plain regressions): an older creation DNC delivered after a newer lift, and a replay of
it, change nothing (R-OPT-2); `is_dnc` as "1"/1/"yes"/" TRUE " decides; null, 2, -1, 1.0, text,
nested objects and a 400-digit number decide nothing and fail nothing; a creation DNC whose phone
is an object is done and synced by email; a replayed creation keeps an owner GHL assigned since
and places nothing after a newer DNC; a retried placement after the GHL contact was deleted, or
after a DNC, places nothing and is done; a creation DNC whose GHL create failed is told by the
retry; a creation DNC for a person GHL already has takes them off the dialer for good; a real
worker SIGKILLed between the Lead API write and its lookup leaves one contact each side, the
mapping, and no provisional fingerprint; `WebhookEvent.queued_internally` makes unique,
verified, due events.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import df_middleware.sync.contacts as sync_contacts
import df_middleware.sync.contacts_aloware as sync_contacts_aloware
from df_middleware.db.models import DncRegistry, WebhookEvent
from df_middleware.db.models import EchoGuard as EchoGuardRow
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import replay_event
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.timestamps import parse_iso8601
from tests.conftest import TEST_SECRETS
from tests.sync_world import LOCATION, SyncWorld
from tests.test_break14_findings import NO_NATURAL_RETRY, statuses
from tests.test_break14c_findings import _list_call_fails_once, _log, _made_in_the_dialer, _mappings, _patch
from tests.test_interrupted_writes import (
    STEP_DEADLINE,
    AnswerHold,
    event_statuses,
    exit_code,
    interrupt_mid_write,
    log_tail,
)
from tests.test_interrupted_writes import deliver as delivered_id
from tests.test_soak_findings import retry_now
from tests.test_sync_call_lists import _agents, _list_calls, _memberships, _on_lists
from tests.worker_processes import StartWorker

pytestmark = pytest.mark.slow

PHONE = "+19195550142"  # the number test_sync_call_lists' helpers read
EARLY = "2026-11-24T16:00:00Z"
LATE = "2026-11-24T17:00:00Z"


# --- helpers ---------------------------------------------------------------------------------------


def _aloware(world: SyncWorld) -> Any:
    assert world.connectors is not None
    assert world.connectors.aloware is not None
    return world.connectors.aloware


def _ghl(world: SyncWorld) -> Any:
    assert world.connectors is not None
    assert world.connectors.ghl is not None
    return world.connectors.ghl


async def _voice_decision(world: SyncWorld, phone: str = PHONE) -> str | None:
    async with world.db.session() as session:
        row = await session.scalar(select(DncRegistry).where(DncRegistry.phone_number == phone))
    return row.status if row is not None else None


def _call_dnd(contact: dict[str, Any]) -> str | None:
    status: str | None = ((contact.get("dndSettings") or {}).get("Call") or {}).get("status")
    return status


def _ghl_contacts(world: SyncWorld) -> list[dict[str, Any]]:
    return [c for c in world.ghl.sim.snapshot()["contacts"] if not c.get("deleted")]


async def _event_id(world: SyncWorld, event_type: str) -> str:
    async with world.db.session() as session:
        [found] = list(
            await session.scalars(select(WebhookEvent.id).where(WebhookEvent.event_type == event_type))
        )
    return str(found)


# --- do-not-call at creation ----------------------------------------------------------------------


async def test_a_dialer_contact_first_seen_by_contact_updated_on_dnc_joins_no_list(
    sync_world: SyncWorld,
) -> None:
    """R-AG-2, R-OPT-6: Dana is on do-not-call in Aloware; her `Contact Created` never reached us
    (sent before the webhook was set up, or lost), so the first we hear is a `Contact Updated`
    carrying `is_dnc: true`. That event creates her GHL contact (the ledger names it) and so
    places her: a voice-DNC contact must join no power-dialer list all the same."""
    world = sync_world
    await _agents(world)
    made = world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes", is_dnc=True)
    await world.deliver_aloware("Contact Updated", world.aloware.sim.webhook_contact(int(made["id"])))
    await world.process()
    assert await statuses(world, "Contact Updated") == ["done"]
    assert [c["phone"] for c in _ghl_contacts(world)] == [PHONE]
    assert _on_lists(world) == set(), await _log(world)
    assert not [r for r in _list_calls(world) if "add-contact" in r.path]


async def test_an_older_creation_dnc_does_not_override_a_newer_lift(sync_world: SyncWorld) -> None:
    """R-OPT-2, R-OPT-6: Dana is made in the dialer on do-not-call (`updated_at` 16:00), then her
    DNC is lifted (17:00). Aloware delivers the lift first and the creation after. The lift stands:
    the voice decision is opted in, her new GHL contact has no Call DND, and she joins NEW_LEADS."""
    world = sync_world
    await _agents(world)
    sim = world.aloware.sim
    made = sim.add_contact(PHONE, first_name="Dana", last_name="Reyes", is_dnc=True)
    created = {**sim.webhook_contact(int(made["id"])), "updated_at": EARLY}
    sim.update_contact(int(made["id"]), is_dnc=False)
    lifted = {**sim.webhook_contact(int(made["id"])), "updated_at": LATE}
    await world.deliver_aloware("Contact DNC Updated", lifted)
    await world.process()
    assert await _voice_decision(world) == "opted_in"
    await world.deliver_aloware("Contact Created", created)
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await _voice_decision(world) == "opted_in"
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) != "active"
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)


async def test_a_creation_dnc_replayed_after_a_lift_changes_nothing(sync_world: SyncWorld) -> None:
    """R-OPT-2, R-Q-4, R-AG-2: Dana is made on do-not-call (16:00): no list, Call DND active. The
    DNC is lifted (17:00): Call DND inactive, she joins NEW_LEADS. An operator then replays the
    old `Contact Created` (`events replay`, the same event: its placement runs again). The older
    DNC does not come back: opted in, Call DND inactive, still on NEW_LEADS, one GHL contact."""
    world = sync_world
    await _agents(world)
    sim = world.aloware.sim
    made = sim.add_contact(PHONE, first_name="Dana", last_name="Reyes", is_dnc=True)
    await world.deliver_aloware(
        "Contact Created", {**sim.webhook_contact(int(made["id"])), "updated_at": EARLY}
    )
    await world.process()
    assert _on_lists(world) == set()
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) == "active"
    sim.update_contact(int(made["id"]), is_dnc=False)
    await world.deliver_aloware(
        "Contact DNC Updated", {**sim.webhook_contact(int(made["id"])), "updated_at": LATE}
    )
    await world.process()
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)
    await replay_event(world.db, await _event_id(world, "Contact Created"))
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await _voice_decision(world) == "opted_in"
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) != "active"
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)


@pytest.mark.parametrize("flag", ["1", 1, "yes", " TRUE "])
async def test_is_dnc_written_as_a_flag_decides(sync_world: SyncWorld, flag: object) -> None:
    """R-OPT-6: `is_dnc` as some exports write it ("1", 1, "yes", padded "TRUE") is a DNC at
    creation: the decision is recorded, Call DND active, no list."""
    world = sync_world
    await _agents(world)
    made = world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes")
    body = {**world.aloware.sim.webhook_contact(int(made["id"])), "is_dnc": flag}
    await world.deliver_aloware("Contact Created", body)
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await _voice_decision(world) == "opted_out"
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) == "active"
    assert _on_lists(world) == set()


@pytest.mark.parametrize(
    "flag", [None, 2, -1, 1.0, "maybe", "", {"value": True}, [True], {"is_dnc": {"is_dnc": True}}]
)
async def test_an_odd_is_dnc_decides_nothing_and_breaks_nothing(sync_world: SyncWorld, flag: object) -> None:
    """R-OPT-6, R-SEC (hostile payloads): a `Contact Created` whose `is_dnc` is no flag (null, 2,
    a float, a huge number, text, nested objects) records no decision, does not fail the event,
    and the contact is created and placed as any other (NEW_LEADS)."""
    world = sync_world
    await _agents(world)
    made = world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes")
    body = {**world.aloware.sim.webhook_contact(int(made["id"])), "is_dnc": flag}
    response = await world.deliver_aloware("Contact Created", body)
    assert response.status_code < 300, response.text
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await _voice_decision(world) is None
    assert [c["phone"] for c in _ghl_contacts(world)] == [PHONE]
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}, await _log(world)


async def test_a_huge_is_dnc_number_is_refused_or_ignored(sync_world: SyncWorld) -> None:
    """R-OPT-6, R-SEC (hostile payloads): `is_dnc` a 400-digit number (JSON allows it; orjson
    would not even write it). Ingest refuses it (4xx) or accepts it as no flag: never a 5xx, never a
    decision, never a failed event."""
    world = sync_world
    made = world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes")
    body = world.aloware.sim.webhook_contact(int(made["id"]))
    raw = json.dumps({"event": "Contact Created", "body": {**body, "is_dnc": 10**400}}).encode()
    async with httpx.AsyncClient(base_url=world.service_url, timeout=10) as client:
        answer = await client.post(
            "/api/webhooks/aloware",
            content=raw,
            headers={
                "content-type": "application/json",
                "authorization": f"Bearer {TEST_SECRETS['aloware_webhook_bearer_token']}",
            },
        )
    assert answer.status_code < 500, answer.text
    await world.process()
    assert await _voice_decision(world) is None
    assert set(await statuses(world, "Contact Created")) <= {"done"}


async def test_a_creation_dnc_with_no_usable_phone_does_not_fail_the_event(sync_world: SyncWorld) -> None:
    """R-OPT-6, R-C-2: a `Contact Created` with `is_dnc` true whose phone is not a number (an
    object) but with an email: no decision (the registry is keyed by number), the event is done,
    and the contact is synced by its email."""
    world = sync_world
    made = world.aloware.sim.add_contact(
        PHONE, first_name="Dana", last_name="Reyes", email="dana@example.com"
    )
    body = {
        **world.aloware.sim.webhook_contact(int(made["id"])),
        "is_dnc": True,
        "phone_number": {"number": PHONE},
    }
    response = await world.deliver_aloware("Contact Created", body)
    assert response.status_code < 300, response.text
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"], await _log(world)
    async with world.db.session() as session:
        assert list(await session.scalars(select(DncRegistry))) == []
    assert [c.get("email") for c in _ghl_contacts(world)] == ["dana@example.com"]


# --- the placement on every attempt ---------------------------------------------------------------


async def test_an_owner_assigned_between_the_placements_read_and_its_apply_wins(
    sync_world: SyncWorld,
) -> None:
    """R-AG-1, R-AG-4: Dana is made in the dialer and created in GHL; the placement reads her from
    GHL (unassigned). Right after that read, a GHL user assigns her to Alice and that ContactUpdate
    is processed by another worker (she joins DF_ALICE_NEW_LEADS). The placement, applying what
    it read, must not move her back: she ends on DF_ALICE_NEW_LEADS only."""
    world = sync_world
    await _agents(world)
    ghl = _ghl(world)
    raced = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def read_then_assign(contact_id: str) -> Any:
            answer = await real(contact_id)
            if not raced.is_set() and answer is not None:
                raced.set()
                contact = world.ghl.sim.update_contact(
                    LOCATION, contact_id, {"assignedTo": "user-alice"}
                ).contact
                await world.deliver_ghl(contact_webhook("ContactUpdate", contact))
                await world.worker().run_once()  # another worker applies the new owner now
            return answer

        return read_then_assign

    undo = _patch(ghl, "get_contact", wrapper)
    try:
        await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    await world.process()
    assert raced.is_set()
    assert await statuses(world, "ContactUpdate") == ["done"]
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS"}, await _log(world)
    assert await _memberships(world.db) == {("ALICE", "NEW_LEADS", "member")}


async def test_a_replayed_creation_after_a_reassignment_keeps_the_new_owner(sync_world: SyncWorld) -> None:
    """R-AG-4, R-Q-4: Dana made in the dialer joins DF_UNASSIGNED_NEW_LEADS; a GHL user assigns
    her to Bob (she moves to DF_BOB_NEW_LEADS); an operator replays the old `Contact Created`
    (the same event, which the ledger names as the creator, so its placement runs again). She
    stays on Bob's list, one GHL contact."""
    world = sync_world
    await _agents(world)
    await _made_in_the_dialer(world)
    await world.process()
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}
    [ghl_contact] = _ghl_contacts(world)
    contact = world.ghl.sim.update_contact(LOCATION, ghl_contact["id"], {"assignedTo": "user-bob"}).contact
    await world.deliver_ghl(contact_webhook("ContactUpdate", contact))
    await world.process()
    assert _on_lists(world) == {"DF_BOB_NEW_LEADS"}
    await replay_event(world.db, await _event_id(world, "Contact Created"))
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert _on_lists(world) == {"DF_BOB_NEW_LEADS"}, await _log(world)
    assert await _memberships(world.db) == {("BOB", "NEW_LEADS", "member")}
    assert len(_ghl_contacts(world)) == 1


async def test_a_replayed_creation_after_a_dnc_places_nothing(sync_world: SyncWorld) -> None:
    """R-AG-2, R-OPT-6, R-OPT-2: Dana made in the dialer joins NEW_LEADS; the agent then marks
    her do-not-call (`Contact DNC Updated`, newer): off every list. A replay of her old
    `Contact Created` (is_dnc false) re-runs its placement: she stays on no list and the DNC
    stands."""
    world = sync_world
    await _agents(world)
    made = await _made_in_the_dialer(world)
    await world.process()
    assert _on_lists(world) == {"DF_UNASSIGNED_NEW_LEADS"}
    world.aloware.sim.update_contact(int(made["id"]), is_dnc=True)
    await world.deliver_aloware(
        "Contact DNC Updated", {**world.aloware.sim.webhook_contact(int(made["id"])), "updated_at": LATE}
    )
    await world.process()
    assert _on_lists(world) == set()
    await replay_event(world.db, await _event_id(world, "Contact Created"))
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await _voice_decision(world) == "opted_out"
    assert _on_lists(world) == set(), await _log(world)
    assert await _memberships(world.db) == set()


async def test_a_retried_placement_after_the_ghl_contact_was_deleted_places_nothing(
    sync_world: SyncWorld,
) -> None:
    """R-C-4, R-AG-2: Dana is made in the dialer and created in GHL; her list call fails, so the
    event waits for its retry. Meanwhile a GHL user deletes her in GHL (the ContactDelete not
    processed yet). The retry finds her gone: the event ends (no dead letter) and she joins no
    list; after the ContactDelete, a replay places nothing either."""
    world = sync_world
    # No retry of its own inside `process()`: the test runs the retry itself (retry_now).
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)
    await _agents(world)
    undo = await _list_call_fails_once(world)
    try:
        await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    assert await statuses(world, "Contact Created") == ["pending"]
    [ghl_contact] = _ghl_contacts(world)
    world.ghl.sim.delete_contact(LOCATION, ghl_contact["id"])
    await retry_now(world, "Contact Created")
    assert await statuses(world, "Contact Created") == ["done"], await _log(world)
    assert _on_lists(world) == set(), await _log(world)
    await world.deliver_ghl(contact_webhook("ContactDelete", ghl_contact))
    await world.process()
    await replay_event(world.db, await _event_id(world, "Contact Created"))
    await world.process()
    assert _on_lists(world) == set(), await _log(world)
    assert _ghl_contacts(world) == []


async def test_a_retried_placement_after_a_dnc_places_nothing(sync_world: SyncWorld) -> None:
    """R-OPT-6, R-AG-2: Dana's list call fails after her GHL contact is created; before the retry
    the agent marks her do-not-call in Aloware (a newer `Contact DNC Updated`, which runs once the
    creation is done: same contact, same ordering key). The retry's placement must not put her on
    a list, and after both events she is on none."""
    world = sync_world
    # No retry of its own inside `process()`: the test runs the retry itself (retry_now).
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)
    await _agents(world)
    undo = await _list_call_fails_once(world)
    try:
        made = await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    assert await statuses(world, "Contact Created") == ["pending"]
    world.aloware.sim.update_contact(int(made["id"]), is_dnc=True)
    await world.deliver_aloware(
        "Contact DNC Updated", {**world.aloware.sim.webhook_contact(int(made["id"])), "updated_at": LATE}
    )
    await retry_now(world, "Contact Created")
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert await statuses(world, "Contact DNC Updated") == ["done"]
    assert _on_lists(world) == set(), await _log(world)
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) == "active"


# --- the provisional Aloware fingerprint of a Lead API create -------------------------------------


def _lookup_after_the_write_misses(world: SyncWorld) -> Callable[[], None]:
    """The Aloware lookup right after the first Lead API write finds nobody (Aloware's index lags;
    the same state as a worker killed between the write and the lookup): the event waits for its
    retry with the provisional fingerprint still there. Returns the undo."""
    missed: list[str] = []

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def nobody_right_after_the_write(phone: Any) -> Any:
            if world.aloware.requests("POST", "/api/v1/webhook/forms") and not missed:
                missed.append(str(phone))
                return None
            return await real(phone)

        return nobody_right_after_the_write

    return _patch(_aloware(world), "find_contact_by_phone", wrapper)


async def test_a_rename_back_in_aloware_while_the_creating_write_waits_is_synced(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-C-2 (CONTACT_SOURCE_OF_TRUTH=aloware): Gina (GHL) is written to Aloware
    through the Lead API, which creates her; the lookup right after finds nobody, so the event
    waits for its retry (Aloware sent no webhook about the create). Meanwhile an agent renames her
    'Gin' in Aloware (synced to GHL), then back to 'Gina': a genuine change, and GHL must end with
    'Gina'."""

    world = sync_world
    world.settings = world.settings.model_copy(
        update={**NO_NATURAL_RETRY, "contact_source_of_truth": "aloware"}
    )
    gina = world.ghl.sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Gina", "lastName": "Ray"}
    ).contact
    undo = _lookup_after_the_write_misses(world)
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", gina))
        await world.process()
    finally:
        undo()
    assert await statuses(world, "ContactCreate") == ["pending"]
    made = world.aloware.sim.contact_by_phone(PHONE)
    assert made is not None
    assert made["first_name"] == "Gina"
    sim = world.aloware.sim
    sim.update_contact(int(made["id"]), first_name="Gin", name="Gin Ray")
    renamed = sim.webhook_contact(int(made["id"]))
    await world.deliver_aloware("Contact Updated", renamed)
    await world.process()
    [contact] = _ghl_contacts(world)
    assert contact["firstName"] == "Gin", await _log(world)
    sim.update_contact(int(made["id"]), first_name="Gina", name="Gina Ray")
    # A later second than the rename (Aloware's `updated_at` has one-second resolution).
    renamed_at = parse_iso8601(renamed["updated_at"])
    assert renamed_at is not None
    back_at = (renamed_at + timedelta(seconds=2)).isoformat()
    await world.deliver_aloware(
        "Contact Updated", {**sim.webhook_contact(int(made["id"])), "updated_at": back_at}
    )
    await world.process()
    [contact] = _ghl_contacts(world)
    assert contact["firstName"] == "Gina", await _log(world)


async def test_two_ghl_contacts_on_one_phone_created_at_once_keep_aloware_consistent(
    sync_world: SyncWorld,
) -> None:
    """R-C-1, R-ID-3, R-LOOP-1: GHL allows duplicates; Gina and Annie are created in GHL on the
    same number. Gina's sync finds nobody in Aloware and is about to create her through the Lead
    API when another worker syncs Annie (finds nobody too, creates the Aloware contact, maps it).
    As when they come one after the other: the one that claimed the number first (Gina) keeps the
    Aloware contact, the other's sync is flagged a conflict (no silent remap), the Aloware contact
    holds the profile of the one GHL contact it is mapped to, and no event is dead-lettered."""
    world = sync_world
    world.ghl.sim.locations[LOCATION].allow_duplicate_contacts = True
    gina = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Gina"}).contact
    annie = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Annie"}).contact
    raced = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def twin_first(*args: Any, **kwargs: Any) -> Any:
            if not raced.is_set():
                raced.set()
                await world.deliver_ghl(contact_webhook("ContactCreate", annie))
                await world.worker().run_once()  # another worker syncs Annie now
            return await real(*args, **kwargs)

        return twin_first

    undo = _patch(_aloware(world), "upsert_lead", wrapper)
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", gina))
        await world.worker().run_once()
    finally:
        undo()
    await retry_now(world, "ContactCreate")
    assert raced.is_set()
    assert "error" not in await statuses(world, "ContactCreate")
    made = world.aloware.sim.contact_by_phone(PHONE)
    assert made is not None
    holders = [m for m in await _mappings(world) if m[1] == str(made["id"])]
    assert len(holders) == 1, await _mappings(world)
    by_id = {c["id"]: c for c in _ghl_contacts(world)}
    assert made["first_name"] == by_id[holders[0][0]]["firstName"], (made["first_name"], await _log(world))
    # The serial case flags the second as a conflict (test_break14c_findings: a duplicate GHL
    # contact on a mapped phone leaves no mapping); at once, it must not remap silently either.
    assert any("conflict" in (message or "") for _, _, message in await _log(world)), await _log(world)
    # Gina claimed the number first (her mapping is written before her Lead API write), so she is
    # the one mapped first here and keeps the Aloware contact; Annie's sync is the conflict.
    assert (gina["id"], str(made["id"]), PHONE, False) in await _mappings(world), await _mappings(world)


async def test_a_dnc_decided_before_the_ghl_contact_exists_is_told_when_it_is_created(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-6, R-OPT-2: an agent makes Dana in the dialer and marks her do-not-call at once;
    Aloware delivers the `Contact DNC Updated` (17:00) before the `Contact Created` (16:00, is_dnc
    false then). The DNC is decided while GHL has nobody (Call DND not set: "a DNC creates no
    contact"); the creation then makes her GHL contact. The decision in force is do-not-call, so
    her new GHL contact must show Call DND active, and she joins no list."""
    world = sync_world
    await _agents(world)
    sim = world.aloware.sim
    made = sim.add_contact(PHONE, first_name="Dana", last_name="Reyes")
    created = {**sim.webhook_contact(int(made["id"])), "updated_at": EARLY}
    sim.update_contact(int(made["id"]), is_dnc=True)
    await world.deliver_aloware(
        "Contact DNC Updated", {**sim.webhook_contact(int(made["id"])), "updated_at": LATE}
    )
    await world.process()
    assert await _voice_decision(world) == "opted_out"
    await world.deliver_aloware("Contact Created", created)
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert _on_lists(world) == set()
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) == "active", await _log(world)


@pytest.mark.timeout(300)
async def test_a_worker_killed_between_the_lead_write_and_its_lookup(
    sync_world: SyncWorld, start_worker: StartWorker, tmp_path: Path
) -> None:
    """R-IDEM-2, R-LOOP-1, R-ID-3 (a real worker process, SIGKILL): Gina (GHL) is written to
    Aloware through the Lead API, which creates her and sends its `Contact Created`; the answer is
    held and the worker killed before its lookup. A second worker takes Aloware's webhook (our
    echo, under the provisional entity) and, once the lease ends, the GHL event again. The end:
    every event done, one Aloware contact, one GHL contact (the echo made none), Gina mapped to
    it, and no provisional fingerprint left to swallow a later change."""
    world = sync_world
    sim = world.aloware.sim
    sim.webhook_url = f"{world.service_url}/api/webhooks/aloware"
    sim.webhook_bearer_token = TEST_SECRETS["aloware_webhook_bearer_token"]
    sim.emit_contact_events = True
    gina = world.ghl.sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Gina", "lastName": "Ray"}
    ).contact
    hold = AnswerHold(world.aloware, "POST", re.escape("/api/v1/webhook/forms"))
    event_id = await delivered_id(world.deliver_ghl(contact_webhook("ContactCreate", gina)))

    def written() -> list[dict[str, Any]]:
        made = sim.contact_by_phone(PHONE)
        return [made] if made is not None else []

    second, made = await interrupt_mid_write(
        world, hold, "sigkill", event_id, start_worker, tmp_path, written
    )
    try:
        deadline = time.monotonic() + STEP_DEADLINE
        while True:
            found = await event_statuses(world)
            kinds = {kind for kind, status, _ in found if status == "done"}
            if {"ContactCreate", "Contact Created"} <= kinds and all(s == "done" for _, s, _ in found):
                break
            assert time.monotonic() < deadline, f"{found}\n{log_tail(tmp_path, 'worker-2')}"
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        await exit_code(second, STEP_DEADLINE)
    assert len([c for c in sim.snapshot()["contacts"] if c["phone_number"] == PHONE]) == 1
    assert [c["id"] for c in _ghl_contacts(world)] == [gina["id"]]
    assert await _mappings(world) == [(gina["id"], str(made["id"]), PHONE, False)]
    async with world.db.session() as session:
        left = [
            (r.entity_id, r.consumed_by)
            for r in await session.scalars(select(EchoGuardRow).where(EchoGuardRow.system == "aloware"))
            if r.entity_id.startswith("new:") and r.consumed_by is None
        ]
    assert left == []


async def test_a_creation_dnc_whose_ghl_create_failed_is_told_by_the_retry(sync_world: SyncWorld) -> None:
    """R-OPT-6, R-IDEM-2: Dana is made on do-not-call; the decision is recorded, then GHL is down
    (503 through the client's retries), so her GHL contact is not made and the event waits. The
    retry creates her, tells GHL (Call DND active) and places her on no list; one GHL contact."""
    world = sync_world
    # No retry of its own inside `process()`: the test runs the retry itself (retry_now).
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)
    await _agents(world)
    world.ghl.faults(error_rate=1.0)
    try:
        await _made_in_the_dialer(world, is_dnc=True)
        await world.process()
    finally:
        world.ghl.faults()
    assert await statuses(world, "Contact Created") == ["pending"]
    assert await _voice_decision(world) == "opted_out"
    await retry_now(world, "Contact Created")
    assert await statuses(world, "Contact Created") == ["done"], await _log(world)
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) == "active"
    assert _on_lists(world) == set(), await _log(world)
    assert await _memberships(world.db) == set()


async def test_a_creation_dnc_for_a_person_ghl_already_has_takes_them_off_the_dialer(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-6, R-ID-2, R-AG-2: Bob's GHL contact on P is on DF_BOB_NEW_LEADS (synced from GHL,
    so an Aloware contact exists); an agent re-creates the person in Aloware on do-not-call (the
    Aloware contact is the one the Lead API made: its `Contact Created` is replayed by Aloware with
    is_dnc true). The person leaves every list, GHL's contact shows Call DND active, and Bob's next
    GHL change puts nobody back."""
    world = sync_world
    await _agents(world)
    bob = world.ghl.sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Lena", "assignedTo": "user-bob", "locationId": LOCATION}
    ).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", bob))
    await world.process()
    assert _on_lists(world) == {"DF_BOB_NEW_LEADS"}
    made = world.aloware.sim.contact_by_phone(PHONE)
    assert made is not None
    world.aloware.sim.update_contact(int(made["id"]), is_dnc=True)
    await world.deliver_aloware(
        "Contact Created", {**world.aloware.sim.webhook_contact(int(made["id"])), "updated_at": LATE}
    )
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"]
    assert _on_lists(world) == set(), await _log(world)
    [contact] = _ghl_contacts(world)
    assert _call_dnd(contact) == "active"
    changed = world.ghl.sim.update_contact(LOCATION, bob["id"], {"tags": ["hot"]}).contact
    await world.deliver_ghl(contact_webhook("ContactUpdate", changed))
    await world.process()
    assert _on_lists(world) == set(), await _log(world)


# --- events the service queues itself -------------------------------------------------------------


async def test_events_queued_internally_are_each_unique_verified_and_due(db: Any) -> None:
    """R-Q-1, R-IDEM-1 (WebhookEvent.queued_internally): the same follow-up queued twice is two
    events (told twice), both stored, verified (nobody outside can make one), pending and due now,
    with the ordering key and payload given."""
    made = [
        WebhookEvent.queued_internally(
            source="service",
            event_type="agent_text.given_up",
            entity_type="message",
            entity_id="msg-1",
            ordering_key="ghl:message:msg-1",
            dedupe_prefix="service:agent_text.given_up:send-1",
            payload={"messageId": "msg-1"},
        )
        for _ in range(2)
    ]
    async with db.session() as session:
        session.add_all(made)
    async with db.session() as session:
        rows = list(await session.scalars(select(WebhookEvent).where(WebhookEvent.entity_id == "msg-1")))
    assert len(rows) == 2
    assert len({r.dedupe_key for r in rows}) == 2
    assert all(r.dedupe_key.startswith("service:agent_text.given_up:send-1:") for r in rows)
    assert {(r.status, r.attempts, r.signature_verified, r.ordering_key) for r in rows} == {
        ("pending", 0, True, "ghl:message:msg-1")
    }
    assert all(r.next_attempt_at <= utcnow() for r in rows)
    assert [r.payload_json for r in rows] == [{"messageId": "msg-1"}] * 2


async def test_an_aloware_change_right_after_our_lead_write_is_not_taken_for_our_echo(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-C-2 (race B of issue 14, found reading the code after break14b): Ann is synced
    and mapped; her email changes in GHL and the service writes it through the Lead API. Right
    after that write, an agent sets her time zone in Aloware. Aloware's webhook about the agent's
    change is a genuine change, not our echo: GHL gets the time zone. (The fingerprint of our write
    is what the contact held before it plus what we wrote, never a read taken after it.)"""
    world = sync_world
    world.use_modules(sync_contacts, sync_contacts_aloware)
    ann = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", ann))
    await world.process()
    made = world.aloware.sim.contact_by_phone(PHONE)
    assert made is not None
    aloware = _aloware(world)
    real_write = aloware.upsert_lead

    async def agent_edits_right_after(*args: Any, **kwargs: Any) -> Any:
        answer = await real_write(*args, **kwargs)
        world.aloware.sim.update_contact(int(made["id"]), timezone="America/Denver")
        return answer

    aloware.upsert_lead = agent_edits_right_after  # type: ignore[method-assign]
    try:
        moved = world.ghl.sim.update_contact(LOCATION, ann["id"], {"email": "ann@example.com"}).contact
        await world.deliver_ghl(contact_webhook("ContactUpdate", moved))
        await world.process()
    finally:
        aloware.upsert_lead = real_write  # type: ignore[method-assign]
    assert world.aloware.sim.contact_by_phone(PHONE)["email"] == "ann@example.com"
    await world.deliver_aloware("Contact Updated", world.aloware.sim.webhook_contact(int(made["id"])))
    await world.process()
    [contact] = _ghl_contacts(world)
    assert contact.get("timezone") == "America/Denver", await _log(world)
