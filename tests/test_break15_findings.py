"""Outside tests of the break15 working-tree changes: the opt-outs in force shown as GHL DND on a
GHL contact the service sees for the first time (`contacts._tell_consents_at_first_sight`,
`made_contacts.tell_consents_in_force`), a call of a second Aloware contact on a GHL contact
mapped to another one (`calls._resolve_contact`'s conflict), and a stale no-phone GHL event
(`contacts.sync_ghl_contact`). Real ingest, the real worker and the simulators over HTTP, both
databases (`sync_world`); races made deterministic by patching a connector call.

The first-sight tell was withdrawn after these findings: a GHL contact first linked by the texting
or call flow is never told, so with it alone a person's DND depended on which event came first
(tests/test_reliability_interleaving.py failed in CI-like runs). break14e finding 4 is a strict
xfail again, its own issue. The tests of findings 1, 2 and 6 stay: they hold without it (nothing
undoes a GHL user's opt-in, nothing is shown on a corrected number, no fingerprint is left).

Findings (both databases); each test below was a strict xfail first:
- 1, 2 and 6 were in the first-sight tell, first fixed (1: not while a `ContactDndUpdate` of the
  contact waits in the queue; 2: only while the contact still has the webhook's number; 6: never
  for the echo of our own create), then moot with the tell withdrawn; their tests stay;
- 3 fixed by checking the disposition's staleness against the GHL contact it is written to;
- 4 fixed by a conflict only when the body names an Aloware contact;
- 5 fixed by asking GHL whether the contact is still on the number before its claim is released.

The findings as reported:
1. (medium) The first-sight tell writes DND active from the consent state recorded *now*, over
   whatever GHL shows: a GHL user's own DND-off (an opt-in through GHL of a GHL-sourced opt-out),
   made before the contact's first webhook is processed and queued behind it, is undone. Our
   write is newer than the user's, so its ContactDndUpdate (taken as a genuine change once the
   user's webhook cleared our fingerprint) records a fresh GHL opt-out: the person the user opted
   back in ends opted out, in GHL and in the registry.
2. (low-medium) The first-sight tell looks up the consents of the phone the *webhook* carries, not
   the contact's number when read: a contact whose number a GHL user corrected before its
   ContactCreate is processed is shown the old number's opt-out (SMS DND active on a number
   nobody opted out; nothing ever clears it).
3. (low-medium, new with the conflict rule) A second Aloware contact's `Contact Disposed` is
   stale-checked against its own mapping, which the conflict never creates, while written to the
   other contact's GHL contact: its older disposition delivered late replaces its newer one
   (before the change its first event re-pointed the mapping, so its own watermark held).
4. (low) A call whose body names no Aloware contact id, on a mapped number, is logged as a
   "conflict ... not None" (the activity itself goes where it should).
5. (low-medium) A second webhook of an applied no-phone change (same `timestamp`, another
   `webhookId`: GHL sometimes sends two) received after the number came back, whose sync failed
   (the watermark did not move), is newer by receipt and releases the current phone-only claim.
6. (medium, narrow race) The first-sight tell is a second teller of a contact the service is
   making: when the made contact's ContactCreate reaches another worker before the mapping
   exists and both read DND off, both write it active and both remember it; only the first
   write changes anything (one ContactDndUpdate), so one fingerprint stays unconsumed for
   ECHO_TTL and swallows a GHL user's SMS opt-out (after a texted START) as our echo: the
   registry keeps the person opted in.

What held (plain regressions, those kept): an opt-out lifted (START) before the ContactCreate is
processed sets no DND; a late ContactUpdate of a GHL contact whose mapping is deleted makes no GHL
call; the made contact's ContactCreate taken by another worker (fully) before the mapping leaves
one DND write and no fingerprint; no phone or an invalid phone tells nothing; our DND write's echo
taken by another worker before it is remembered leaves nothing to swallow a later GHL opt-out; a
second Aloware contact's call, redelivered and replayed, gives one note and keeps the mapping, and
its later `Contact Updated` neither re-points it nor overwrites the profile; found by email, the
same; a newer number removal after the number came back releases the claim.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from df_middleware.consent.decisions import ConsentChange
from df_middleware.consent.store import ConsentStore
from df_middleware.db.models import EchoGuard as EchoGuardRow
from df_middleware.simulators.ghl import contact_webhook
from tests.sync_world import LOCATION, SyncWorld
from tests.test_break14_findings import statuses
from tests.test_break14c_findings import _log, _made_in_the_dialer, _mappings, _patch
from tests.test_break14d_findings import EARLY, LATE, _ghl, _ghl_contacts
from tests.test_break14e_findings import (
    _gina_claims_and_fails,
    _lead_write_fails_for_good,
    _still_the_texted_stop,
    _stop_in_force,
)
from tests.test_sync_calls import PHONE as CALL_PHONE
from tests.test_sync_calls import aloware_contact, call_disposed, only_contact

pytestmark = pytest.mark.slow

PHONE = "+19195550142"
OTHER = "+19195550177"


def _sms_dnd(contact: dict[str, Any]) -> str | None:
    status: str | None = ((contact.get("dndSettings") or {}).get("SMS") or {}).get("status")
    return status


def _contact(world: SyncWorld, contact_id: str) -> dict[str, Any]:
    [found] = [c for c in _ghl_contacts(world) if c["id"] == contact_id]
    return found


def _dnd_puts(world: SyncWorld, contact_id: str) -> int:
    return sum(b"dndSettings" in r.body for r in world.ghl.requests("PUT", f"/contacts/{contact_id}"))


async def _apply(
    world: SyncWorld, channel: Any, status: Any, source: str, reason: str, at: datetime
) -> ConsentStore:
    """A consent decision for PHONE recorded as its flow would have (no GHL contact then)."""
    store = ConsentStore(world.db)
    change = ConsentChange(
        channel=channel, phone=PHONE, status=status, source=source, event_at=at, reason=reason
    )
    await store.apply(change)
    return store


async def _unconsumed_dnd_fingerprints(world: SyncWorld) -> list[str]:
    async with world.db.session() as session:
        return [
            r.entity_id
            for r in await session.scalars(select(EchoGuardRow).where(EchoGuardRow.system == "ghl"))
            if "#dnd-" in r.entity_id and r.consumed_by is None
        ]


# --- (3) the opt-outs in force shown at first sight ----------------------------------------------


async def test_a_ghl_users_dnd_off_queued_behind_the_first_sight_is_not_undone(sync_world: SyncWorld) -> None:
    """R-OPT-5, R-LOOP-1, R-REL-4: Lee's number carries a GHL-sourced SMS opt-out (an earlier
    GHL contact's SMS DND, a GHL decision GHL may lift). A GHL user creates Lee with SMS DND
    active, then switches it off (an opt-in through GHL). GHL posts ContactCreate then
    ContactDndUpdate; the service processes them in that order (GHL also echoes every write we
    make). The user's opt-in is the newest decision: it must hold in our registry and in GHL."""
    world = sync_world
    world.ghl_sends_webhooks()
    store = await _apply(world, "sms", "opted_out", "ghl", "DND", datetime.now(UTC) - timedelta(days=3))
    sim = world.ghl.sim
    lee = sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Lee", "dndSettings": {"SMS": {"status": "active"}}}
    ).contact
    made = sim.contacts[lee["id"]]  # made a minute ago (the user's switch-off is a later edit)
    made.added_ms -= 60_000
    made.updated_ms -= 60_000
    lee = made.as_ghl()
    created = contact_webhook("ContactCreate", lee)
    off = sim.update_contact(LOCATION, lee["id"], {"dndSettings": {"SMS": {"status": "inactive"}}}).contact
    await world.deliver_ghl(created)
    await world.deliver_ghl(contact_webhook("ContactDndUpdate", off))
    await world.process()
    if _dnd_puts(world, lee["id"]):  # our write's ContactDndUpdate reaches the service too
        await world.ghl_webhooks_delivered("ContactDndUpdate")
        await world.process()
    state = await store.state("sms", PHONE)
    assert state is not None
    assert state.status == "opted_in", (state, await _log(world))
    assert _sms_dnd(_contact(world, lee["id"])) == "inactive", await _log(world)


async def test_a_number_changed_before_the_create_is_processed_is_not_shown_the_old_numbers_opt_out(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-5, R-REL-4: Dana texted STOP from PHONE. A GHL user creates a contact on PHONE by
    mistake and, before its ContactCreate is processed, corrects the number to OTHER (nobody
    opted OTHER out). Once both webhooks are processed, the contact must not show SMS DND."""
    world = sync_world
    await _stop_in_force(world)
    sim = world.ghl.sim
    eve = sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Eve"}).contact
    created = contact_webhook("ContactCreate", eve)
    moved = sim.update_contact(LOCATION, eve["id"], {"phone": OTHER}).contact
    await world.deliver_ghl(created)
    await world.deliver_ghl(contact_webhook("ContactUpdate", moved))
    await world.process()
    assert set(await statuses(world, "ContactCreate")) <= {"done"}
    assert _contact(world, eve["id"])["phone"] == OTHER
    assert _sms_dnd(_contact(world, eve["id"])) != "active", await _log(world)


async def test_an_opt_out_lifted_before_the_create_is_processed_sets_no_dnd(sync_world: SyncWorld) -> None:
    """R-OPT-5, R-OPT-3: Dana texted STOP, then START (the texted opt-in is in force) before a GHL
    user's new contact on her number is processed: nothing is shown (no DND write at all)."""
    world = sync_world
    await _stop_in_force(world)
    await _apply(world, "sms", "opted_in", "texting", "START", datetime(2026, 11, 24, 16, 0, tzinfo=UTC))
    dana = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Dana"}).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", dana))
    await world.process()
    assert await statuses(world, "ContactCreate") == ["done"]
    assert world.ghl.requests("PUT", f"/contacts/{dana['id']}") == [], await _log(world)
    assert _sms_dnd(_contact(world, dana["id"])) != "active"


async def test_a_late_update_of_a_deleted_contact_is_not_told(sync_world: SyncWorld) -> None:
    """R-C-4, R-OPT-5: Dana is synced (mapped), then deleted in GHL (ContactDelete processed); her
    number is opted out since. A late ContactUpdate about her is no first sight: no DND read or
    write for the deleted contact."""
    world = sync_world
    dana = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Dana"}).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", dana))
    await world.process()
    world.ghl.sim.delete_contact(LOCATION, dana["id"])
    await world.deliver_ghl(contact_webhook("ContactDelete", dana))
    await world.process()
    assert (dana["id"], True) in [(g, d) for g, _, _, d in await _mappings(world)]
    await _stop_in_force(world)
    before = len(world.ghl.requests(None, f"/contacts/{dana['id']}"))
    await world.deliver_ghl({**contact_webhook("ContactUpdate", dana), "firstName": "Danna"})
    await world.process()
    assert len(world.ghl.requests(None, f"/contacts/{dana['id']}")) == before, await _log(world)


async def test_a_made_contacts_create_taken_by_another_worker_first_leaves_one_write_and_no_fingerprint(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-5, R-LOOP-1, R-REL-4: Dana's SMS opt-out is in force; an agent makes her in the dialer.
    GHL's ContactCreate about the contact the service makes is taken by another worker the moment
    GHL answers the create (before the mapping exists): that worker shows the opt-out; the
    making event then finds it shown. One DND write, its echo taken as ours, no unconsumed
    fingerprint left, and the decision in force is still the texted STOP."""
    world = sync_world
    world.ghl_sends_webhooks()
    store = await _stop_in_force(world)
    raced = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def create_then_race(*args: Any, **kwargs: Any) -> Any:
            answer = await real(*args, **kwargs)
            if not raced.is_set():
                raced.set()
                await world.ghl_webhooks_delivered("ContactCreate")
                await world.worker().run_once()
            return answer

        return create_then_race

    undo = _patch(_ghl(world), "upsert_contact", wrapper)
    try:
        await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    assert raced.is_set()
    await world.ghl_webhooks_delivered("ContactDndUpdate")
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"], await _log(world)
    [contact] = _ghl_contacts(world)
    assert _sms_dnd(contact) == "active", await _log(world)
    dnd_webhooks = [d for d in world.ghl.sim.webhooks.deliveries if d.event == "ContactDndUpdate"]
    assert len(dnd_webhooks) == 1, [d.event for d in world.ghl.sim.webhooks.deliveries]
    await _still_the_texted_stop(world, store)
    assert await _unconsumed_dnd_fingerprints(world) == [], await _log(world)


# --- (1) a call of a second Aloware contact on a mapped GHL contact ------------------------------


def _notes(contact: dict[str, Any]) -> list[str]:
    return sorted(n["body"].splitlines()[-1] for n in contact.get("notes") or [])


async def _call_mappings(world: SyncWorld) -> list[tuple[str | None, str]]:
    return [(a, g) for g, a, _, d in await _mappings(world) if not d]


async def _sarah_called(world: SyncWorld) -> dict[str, Any]:
    """Sarah (Aloware 48213) had a call: her GHL contact is made and mapped to her."""
    await world.deliver_aloware("Call Disposed", call_disposed())
    await world.process()
    return only_contact(world)


SAM = {
    "id": 59001,
    "first_name": "Sam",
    "last_name": "Other",
    "name": "Sam Other",
    "email": "sam@example.com",
}


async def test_a_second_contacts_call_redelivered_and_replayed_leaves_one_note_and_the_mapping(
    sync_world: SyncWorld,
) -> None:
    """R-ID-3, R-CALL-4, R-IDEM-1, R-C-2: Sarah is mapped to the GHL contact of her number; Sam, a
    second Aloware contact on it, has a call, delivered twice and replayed by the operator: one
    note for Sam's call, the mapping stays Sarah's. Sam's later `Contact Updated` (the contact
    flow) does not re-point it either, nor overwrite Sarah's GHL profile with Sam's."""
    from df_middleware.queue.operations import replay_event

    world = sync_world
    sarah = await _sarah_called(world)
    sams_call = call_disposed(call_id=9912399, contact_id=59001, contact=aloware_contact(**SAM))
    first = await world.deliver_aloware("Call Disposed", sams_call)
    assert (await world.deliver_aloware("Call Disposed", sams_call)).json()["status"] == "duplicate"
    await world.process()
    await replay_event(world.db, first.json()["id"])
    await world.process()
    after = only_contact(world)
    assert _notes(after) == [
        "[df:aloware:call:9912345:note:call-disposed]",
        "[df:aloware:call:9912399:note:call-disposed]",
    ], await _log(world)
    assert await _call_mappings(world) == [("48213", sarah["id"])]

    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    await world.deliver_aloware("Contact Updated", aloware_contact(**SAM, updated_at=later))
    await world.process()
    after = only_contact(world)
    assert (after["firstName"], after.get("email")) == ("Sarah", "sarah.johnson@example.com"), await _log(
        world
    )
    assert await _call_mappings(world) == [("48213", sarah["id"])], await _log(world)


async def test_a_second_contact_found_by_email_gets_the_note_and_no_mapping(sync_world: SyncWorld) -> None:
    """R-ID-2, R-ID-3, R-CALL-1: Sarah is mapped; Sam (another Aloware contact, another number)
    shares Sarah's email. Sam's call is written to the GHL contact found by the email, flagged
    as a conflict found by email; the mapping stays Sarah's and her GHL number is not changed."""
    world = sync_world
    sarah = await _sarah_called(world)
    sam = aloware_contact(**{**SAM, "email": "sarah.johnson@example.com"}, phone_number=OTHER)
    await world.deliver_aloware(
        "Call Disposed", call_disposed(call_id=9912399, contact_id=59001, contact=sam)
    )
    await world.process()
    after = only_contact(world)
    assert after["phone"] == CALL_PHONE
    assert "[df:aloware:call:9912399:note:call-disposed]" in _notes(after), await _log(world)
    assert await _call_mappings(world) == [("48213", sarah["id"])]
    assert any(
        m and m.startswith(f"conflict: GHL contact {sarah['id']} (found by email)")
        for _, _, m in await _log(world)
    ), await _log(world)


async def test_a_second_contacts_older_disposition_delivered_late_does_not_replace_its_newer_one(
    sync_world: SyncWorld,
) -> None:
    """R-CALL-3, R-Q-4: Sarah is mapped; Sam (another Aloware contact on her number) is disposed
    "Not Interested" at 16:00 and "Appointment Set" at 17:00; Aloware's webhooks reach us in the
    other order. The GHL contact they go to must end with the newer disposition only."""
    world = sync_world
    await _sarah_called(world)
    await world.deliver_aloware(
        "Contact Disposed", aloware_contact(**SAM, disposition_status="Appointment Set", updated_at=LATE)
    )
    await world.process()
    await world.deliver_aloware(
        "Contact Disposed", aloware_contact(**SAM, disposition_status="Not Interested", updated_at=EARLY)
    )
    await world.process()
    tags = [t.lower() for t in only_contact(world)["tags"] if t.lower().startswith("disposition:")]
    assert tags == ["disposition: appointment set"], await _log(world)


async def test_a_call_without_a_contact_id_on_a_mapped_number_is_no_conflict(sync_world: SyncWorld) -> None:
    """R-ID-2, R-Q-7: Sarah is mapped; a call whose body carries only her number (no Aloware
    contact id) gets its note on her GHL contact, and nothing in the sync log says conflict."""
    world = sync_world
    await _sarah_called(world)
    body = call_disposed(call_id=9912399, contact_id=None, contact={"phone_number": CALL_PHONE})
    await world.deliver_aloware("Call Disposed", body)
    await world.process()
    assert "[df:aloware:call:9912399:note:call-disposed]" in _notes(only_contact(world))
    assert [m for _, _, m in await _log(world) if m and m.startswith("conflict")] == [], await _log(world)


# --- (2) a stale no-phone GHL event ---------------------------------------------------------------


async def _removed_then_back_and_failed(world: SyncWorld) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gina's first sync failed for good (she claims PHONE); a GHL user removed her number
    (processed), then gave it back (its sync failed again: she claims PHONE once more). Returns
    Gina and the removal webhook as delivered."""
    gina = await _gina_claims_and_fails(world)
    cleared = world.ghl.sim.update_contact(LOCATION, gina["id"], {"phone": ""}).contact
    removal = contact_webhook("ContactUpdate", cleared)
    await world.deliver_ghl(removal)
    await world.process()
    assert (gina["id"], None, PHONE, False) not in await _mappings(world)
    back = world.ghl.sim.update_contact(LOCATION, gina["id"], {"phone": PHONE}).contact
    undo = _lead_write_fails_for_good(world)
    try:
        await world.deliver_ghl(contact_webhook("ContactUpdate", back))
        await world.process()
    finally:
        undo()
    assert (gina["id"], None, PHONE, False) in await _mappings(world), (
        await _log(world),
        await statuses(world, "ContactUpdate"),
        [d.event for d in world.ghl.sim.webhooks.deliveries],
    )
    return gina, removal


async def test_a_second_copy_of_an_applied_number_removal_does_not_release_the_current_claim(
    sync_world: SyncWorld,
) -> None:
    """R-Q-4, R-ID-3: as in break14e's late-copy case, but the late copy of the number removal is
    GHL's second webhook for that very change (same `timestamp`, another `webhookId`), received
    after the number came back: it is the change already applied, and Gina keeps her claim."""
    world = sync_world
    gina, removal = await _removed_then_back_and_failed(world)
    assert _contact(world, gina["id"])["phone"] == PHONE
    await world.deliver_ghl({**removal, "webhookId": "second-copy-of-the-removal"})
    await world.process()
    assert (gina["id"], None, PHONE, False) in await _mappings(world), await _log(world)


async def test_a_newer_number_removal_after_the_number_came_back_releases_the_claim(
    sync_world: SyncWorld,
) -> None:
    """R-C-1, R-ID-3: as above, then a GHL user removes Gina's number again (a newer change) and
    creates Annie on it: Gina's claim is released and Annie reaches Aloware, mapped."""
    world = sync_world
    gina, _ = await _removed_then_back_and_failed(world)
    cleared = world.ghl.sim.update_contact(LOCATION, gina["id"], {"phone": ""}).contact
    await world.deliver_ghl(contact_webhook("ContactUpdate", cleared))
    await world.process()
    assert (gina["id"], None, PHONE, False) not in await _mappings(world), await _log(world)
    annie = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Annie"}).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", annie))
    await world.process()
    made = world.aloware.sim.contact_by_phone(PHONE)
    assert made is not None, await _log(world)
    assert (annie["id"], str(made["id"]), PHONE, False) in await _mappings(world), await _log(world)


# --- (3) more first sights -------------------------------------------------------------------------


@pytest.mark.parametrize("phone", [None, "555"])
async def test_a_first_sight_without_a_valid_phone_tells_nothing(
    sync_world: SyncWorld, phone: str | None
) -> None:
    """R-OPT-5, R-C-1: a GHL contact first seen with no phone or an invalid one: no consent is
    looked up by a number it does not have, no DND write, and the event ends."""
    world = sync_world
    await _stop_in_force(world)
    fields = {"firstName": "Nia", "email": "nia@example.com"} | ({"phone": phone} if phone else {})
    nia = world.ghl.sim.create_contact(LOCATION, fields).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", nia))
    await world.process()
    assert set(await statuses(world, "ContactCreate")) <= {"done"}, await _log(world)
    assert _dnd_puts(world, nia["id"]) == 0
    assert _sms_dnd(_contact(world, nia["id"])) != "active"


def _texted(message_id: str, body: str) -> dict[str, Any]:
    """Verity's `message.received` for a text from PHONE, dated now."""
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": f"chat_{PHONE.removeprefix('+')}",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": body,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": "received",
    }


_WORKER: contextvars.ContextVar[str] = contextvars.ContextVar("break15_worker", default="A")


def _both_tell_at_once(world: SyncWorld) -> tuple[Callable[[], None], asyncio.Event]:
    """The made contact's GHL ContactCreate is taken by another worker (B) the moment GHL answers
    the create, before the contact is mapped; B's DND read waits until the making event (A) has
    read the contact too, and A's DND write waits until B is done: both read DND off, both
    write it. Returns the undo and an event set once B has run."""
    ghl = _ghl(world)
    b_at_read, a_read, b_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    def in_b() -> bool:
        return _WORKER.get() == "B"

    async def run_b() -> None:
        _WORKER.set("B")  # the worker's own tasks inherit it
        try:
            await world.worker().run_once()
        finally:
            b_done.set()

    def upsert(real: Callable[..., Awaitable[Any]]) -> Any:
        async def create_then_race(*args: Any, **kwargs: Any) -> Any:
            answer = await real(*args, **kwargs)
            if not tasks:
                await world.ghl_webhooks_delivered("ContactCreate")
                tasks.append(asyncio.create_task(run_b()))
                # B reaches its DND read, or ends without one (it takes the webhook for our echo)
                waits = [asyncio.create_task(b_at_read.wait()), asyncio.create_task(b_done.wait())]
                _, pending = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
                for waiting in pending:
                    waiting.cancel()
            return answer

        return create_then_race

    def get(real: Callable[..., Awaitable[Any]]) -> Any:
        async def read(contact_id: str) -> Any:
            if in_b() and not b_at_read.is_set():
                b_at_read.set()
                await asyncio.wait_for(a_read.wait(), 10)
                return await real(contact_id)
            answer = await real(contact_id)
            if not in_b() and tasks and not a_read.is_set():
                a_read.set()
            return answer

        return read

    def put(real: Callable[..., Awaitable[Any]]) -> Any:
        async def write(contact_id: str, update: Any) -> Any:
            if not in_b() and tasks and getattr(update, "dnd_settings", None):
                await asyncio.wait_for(b_done.wait(), 10)
            return await real(contact_id, update)

        return write

    undos = [
        _patch(ghl, "upsert_contact", upsert),
        _patch(ghl, "get_contact", get),
        _patch(ghl, "update_contact", put),
    ]

    def undo() -> None:
        for one in reversed(undos):
            one()

    return undo, b_done


async def test_a_made_contact_told_twice_at_once_leaves_no_fingerprint_to_swallow_a_ghl_opt_out(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-5, R-LOOP-1, R-REL-4: Dana's SMS opt-out (texted STOP) is in force; an agent makes her
    in the dialer. GHL's ContactCreate about her new GHL contact reaches another worker before
    she is mapped, and both it and the making event read SMS DND off and write it active (only
    the first write changes anything, so GHL posts one ContactDndUpdate). She then texts START
    (the service shows SMS DND off), and later a GHL user switches her SMS DND on: that is a
    GHL opt-out, and must be recorded, not swallowed as the echo of our second write."""
    world = sync_world
    world.ghl_sends_webhooks()
    store = await _stop_in_force(world)
    undo, b_done = _both_tell_at_once(world)
    try:
        await _made_in_the_dialer(world)
        await world.process()
        await asyncio.wait_for(b_done.wait(), 10)
    finally:
        undo()
    await world.ghl_webhooks_delivered("ContactDndUpdate")
    await world.process()
    assert await statuses(world, "Contact Created") == ["done"], await _log(world)
    [dana] = _ghl_contacts(world)
    assert _sms_dnd(dana) == "active"
    await _still_the_texted_stop(world, store)
    await _start_then_ghl_opt_out(world, store, dana["id"])


async def _start_then_ghl_opt_out(world: SyncWorld, store: ConsentStore, contact_id: str) -> None:
    """Dana texts START (the service shows SMS DND off, its echo taken), then a GHL user switches
    her SMS DND on: a GHL opt-out, which must be in force."""
    await world.deliver_texting(_texted("tlx_B15START2", "START"))
    await world.process()
    await world.ghl_webhooks_delivered("ContactDndUpdate", at_least=2)
    await world.process()
    state = await store.state("sms", PHONE)
    assert state is not None
    assert state.status == "opted_in", await _log(world)
    dnd_on = {"dndSettings": {"SMS": {"status": "active"}}}
    on = world.ghl.sim.update_contact(LOCATION, contact_id, dnd_on).contact
    await world.deliver_ghl(contact_webhook("ContactDndUpdate", on))
    await world.process()
    state = await store.state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "ghl"), await _log(world)


async def test_an_echo_taken_before_the_dnd_write_is_remembered_leaves_no_fingerprint(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-OPT-5 (held): as break14e's race (Dana's SMS opt-out in force, made in the
    dialer; GHL's ContactDndUpdate about the service's DND write taken by another worker the moment
    GHL answers the write): nothing of it is left to take a GHL user's later SMS opt-out (after
    Dana's START) for our echo."""
    world = sync_world
    world.ghl_sends_webhooks()
    store = await _stop_in_force(world)
    raced = asyncio.Event()

    def wrapper(real: Callable[..., Awaitable[Any]]) -> Any:
        async def write_then_race(contact_id: str, update: Any) -> Any:
            answer = await real(contact_id, update)
            if not raced.is_set() and getattr(update, "dnd_settings", None):
                raced.set()
                await world.ghl_webhooks_delivered("ContactDndUpdate")
                await world.worker().run_once()
            return answer

        return write_then_race

    undo = _patch(_ghl(world), "update_contact", wrapper)
    try:
        await _made_in_the_dialer(world)
        await world.process()
    finally:
        undo()
    await world.process()
    assert raced.is_set()
    [dana] = _ghl_contacts(world)
    await _still_the_texted_stop(world, store)
    await _start_then_ghl_opt_out(world, store, dana["id"])
