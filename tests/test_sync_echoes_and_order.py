"""Echoes and ordering of contact changes (issue 10): R-LOOP-1, R-C-2, R-C-3, R-IDEM-1, R-CALL-3, R-Q-4.

The flows go through `sync_world`: webhooks are posted to the real ingest (GHL's own webhooks are
emitted by the GHL simulator when it is told where to send them, exactly as GHL follows a write
with its `Contact*` webhooks), the real worker runs the handlers, and the assertions are about
the simulators' contacts, Aloware's Lead API writes and the rows in contact_mappings / sync_log.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

import df_middleware.sync.calls as calls
import df_middleware.sync.contacts as contacts
import df_middleware.sync.contacts_aloware as contacts_aloware
from df_middleware.db.models import ContactMapping, SyncLog, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import replay_event
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.echoes import EchoGuard, provisional_entity
from df_middleware.sync.identity import ContactMappings
from tests.sync_world import LOCATION, SyncWorld

PHONE = "+19195550111"
OTHER_PHONE = "+19195550112"
T0 = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)


# --- helpers --------------------------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _use_mode(world: SyncWorld, mode: str) -> None:
    world.settings = world.settings.model_copy(update={"contact_source_of_truth": mode})


def _ghl_sends_webhooks(world: SyncWorld) -> None:
    """GHL follows every contact write with its webhooks, signed, to the service (as GHL does)."""
    world.ghl.sim.webhook_url = f"{world.service_url}/api/webhooks/ghl"
    world.ghl.sim.webhook_signing_key = world.keys.ed25519_private


async def _ghl_webhooks_delivered(world: SyncWorld, count: int) -> list[Any]:
    """Wait (30 s deadline) until GHL has delivered `count` webhooks; they are all accepted."""
    webhooks = world.ghl.sim.webhooks
    deadline = time.monotonic() + 30
    while (len(webhooks.deliveries) < count or webhooks.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(webhooks.deliveries) == count, [d.event for d in webhooks.deliveries]
    assert all(d.ok for d in webhooks.deliveries)
    return list(webhooks.deliveries)


async def _edit_in_ghl(world: SyncWorld, ghl_id: str, **fields: Any) -> None:
    """A GHL user edits the contact in GHL's UI; GHL's webhook follows."""
    async with httpx.AsyncClient(base_url=world.ghl.url) as client:
        answer = await client.post("/_sim/ui/contacts", json={"id": ghl_id, "locationId": LOCATION, **fields})
    assert answer.status_code == 200, answer.text


def _person(world: SyncWorld, ghl_fields: dict[str, Any], **aloware_fields: Any) -> tuple[str, int]:
    """A GHL contact and an Aloware contact on the same phone, not mapped yet (no webhooks)."""
    world.use_modules(contacts, contacts_aloware)
    write = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "lastName": "Johnson", **ghl_fields})
    aloware = world.aloware.sim.add_contact(PHONE, last_name="Johnson", **aloware_fields)
    return str(write.contact["id"]), int(aloware["id"])


def _aloware_body(world: SyncWorld, aloware_id: int, updated_at: datetime) -> dict[str, Any]:
    body: dict[str, Any] = world.aloware.sim.webhook_contact(aloware_id)
    body["updated_at"] = _stamp(updated_at)
    return body


def _lead_writes(world: SyncWorld) -> int:
    return len(world.aloware.requests("POST", "/api/v1/webhook/forms"))


def _ghl_writes(world: SyncWorld) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in world.ghl.requests() if r.method in {"POST", "PUT"}]


async def _logs(world: SyncWorld) -> list[SyncLog]:
    async with world.db.session() as session:
        return list(await session.scalars(select(SyncLog).order_by(SyncLog.started_at)))


async def _last_message(world: SyncWorld) -> str | None:
    return (await _logs(world))[-1].message


async def _mapping(world: SyncWorld) -> ContactMapping:
    async with world.db.session() as session:
        (row,) = list(await session.scalars(select(ContactMapping)))
        return row


async def _event_ids(world: SyncWorld) -> list[Any]:
    async with world.db.session() as session:
        return list(await session.scalars(select(WebhookEvent.id).order_by(WebhookEvent.received_at)))


def _ghl(world: SyncWorld, ghl_id: str) -> dict[str, Any]:
    contact: dict[str, Any] = world.ghl.sim.get_contact(LOCATION, ghl_id)
    return contact


# --- 1. the echo's fingerprint holds only what the echo can carry ----------------------------------


async def test_echo_guard_fingerprints_only_what_webhooks_carry(db: Database) -> None:
    """R-LOOP-1: GHL's contact webhooks never carry the timezone, so what we remember of a GHL
    write leaves it out and the echo, without it, is recognised. Aloware's webhooks carry the
    timezone: there it still counts."""
    guard = EchoGuard(db, ttl_seconds=900)
    written = {"first_name": "Sara", "timezone": "America/Chicago"}
    await guard.remember("ghl", "g1", written)
    assert await guard.is_echo("ghl", "g1", {"first_name": "Sara"})
    await guard.remember("aloware", "17", written)
    assert not await guard.is_echo("aloware", "17", {"first_name": "Sara"})


async def test_the_echo_of_writing_a_contact_with_a_timezone_is_not_written_back(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-C-2 (`aloware` mode): our PUT to a GHL contact that has a timezone comes back as
    GHL's `ContactUpdate` (no timezone in it); it is skipped as an echo, and Aloware gets no Lead
    API write. The same for a contact we create in GHL (`ContactCreate`)."""
    _use_mode(sync_world, "aloware")
    ghl_id, aloware_id = _person(
        sync_world,
        {"firstName": "Sarah", "email": "sarah@example.com", "timezone": "America/Chicago"},
        first_name="Sara",
        city="Raleigh",
    )
    new = sync_world.aloware.sim.add_contact(
        OTHER_PHONE, first_name="Ann", email="ann@example.com", timezone="America/Denver"
    )
    _ghl_sends_webhooks(sync_world)

    await sync_world.deliver_aloware("Contact Updated", _aloware_body(sync_world, aloware_id, T0))
    await sync_world.deliver_aloware("Contact Created", _aloware_body(sync_world, int(new["id"]), T0))
    await sync_world.process()
    assert (_ghl(sync_world, ghl_id)["firstName"], _ghl(sync_world, ghl_id)["city"]) == ("Sara", "Raleigh")
    deliveries = await _ghl_webhooks_delivered(sync_world, 2)
    assert sorted(d.event for d in deliveries) == ["ContactCreate", "ContactUpdate"]

    await sync_world.process()

    echoes = {
        (r.entity_id, r.status, r.message) for r in await _logs(sync_world) if r.direction == "ghl_to_aloware"
    }
    assert echoes == {(d.details["contactId"], "skipped", contacts.ECHO) for d in deliveries}
    assert ghl_id in {d.details["contactId"] for d in deliveries}
    assert _lead_writes(sync_world) == 0


async def test_the_echo_of_filling_a_contact_from_a_call_is_not_written_back(sync_world: SyncWorld) -> None:
    """R-LOOP-1, R-REL-4: a call of an Aloware contact first linked to an existing GHL contact
    fills GHL's empty fields (calls.py); GHL's webhook about that fill (the contact has a
    timezone, the webhook does not) is an echo, not a change to write to Aloware."""
    ghl_id, aloware_id = _person(
        sync_world, {"firstName": "Sarah", "timezone": "America/Chicago"}, first_name="Sara", city="Raleigh"
    )
    sync_world.use_modules(contacts, contacts_aloware, calls)
    _ghl_sends_webhooks(sync_world)
    call = {
        "id": 9912345,
        "direction": "outbound",
        "status": "completed",
        "contact": sync_world.aloware.sim.webhook_contact(aloware_id),
        "created_at": "2026-11-24T16:30:00Z",
    }
    await sync_world.deliver_aloware("Call Disposed", call)
    await sync_world.process()
    assert _ghl(sync_world, ghl_id)["city"] == "Raleigh"
    deliveries = await _ghl_webhooks_delivered(sync_world, 2)
    assert sorted(d.event for d in deliveries) == ["ContactTagUpdate", "ContactUpdate"]

    await sync_world.process()

    rows = {(r.status, r.message) for r in await _logs(sync_world) if r.direction == "ghl_to_aloware"}
    assert rows == {("skipped", contacts.ECHO), ("skipped", contacts.NO_AGENTS)}
    assert _lead_writes(sync_world) == 0


# --- 2. one write, one echo; a genuine change ends what is left ----------------------------------


async def test_one_write_one_echo_and_a_change_clears_the_rest(db: Database) -> None:
    """R-LOOP-1: an echo consumes its fingerprint (two writes of the same fields, two echoes); a
    report matching none of the entity's fingerprints is a change, and the fingerprints left for
    that entity in that system are gone — another entity's, or another system's, stay."""
    guard = EchoGuard(db, ttl_seconds=900)
    sara, jane = {"first_name": "Sara"}, {"first_name": "Jane"}
    await guard.remember("ghl", "g1", sara)
    await guard.remember("ghl", "g1", sara)
    assert await guard.is_echo("ghl", "g1", sara)
    assert await guard.is_echo("ghl", "g1", sara)
    assert not await guard.is_echo("ghl", "g1", sara)

    await guard.remember("ghl", "g1", sara)
    await guard.remember("ghl", "g1", jane)
    await guard.remember("ghl", "g2", sara)
    await guard.remember("aloware", "g1", sara)
    assert not await guard.is_echo("ghl", "g1", {"first_name": "Sarah-Jane"})
    assert not await guard.is_echo("ghl", "g1", sara)
    assert not await guard.is_echo("ghl", "g1", jane)
    assert await guard.is_echo("ghl", "g2", sara)
    assert await guard.is_echo("aloware", "g1", sara)


async def test_the_echo_of_a_create_may_come_before_its_answer(db: Database) -> None:
    """R-LOOP-1 (issue 14, the soak with GHL's echoes): a create remembers its fingerprint under a
    provisional entity (the phone) before the write. Its echo, taken by another worker before the
    answer came, is recognised there; the answer then adds no second fingerprint (one write, one
    echo), so the same fields reported again are a change. When the answer comes first, the
    fingerprint moves to the new id and the echo finds it there."""
    guard = EchoGuard(db, ttl_seconds=900)
    ann = {"first_name": "Ann", "phone": "+19195550100"}
    early = provisional_entity("+19195550100")
    await guard.remember("ghl", early, ann)
    assert await guard.is_echo("ghl", "g1", ann, by="echo-event", provisional=early)
    await guard.settle_provisional("ghl", early, "g1", ann)
    assert not await guard.is_echo("ghl", "g1", ann, provisional=early)
    # The echo's event run again (its outcome lost to a crash) still sees its own echo.
    assert await guard.is_echo("ghl", "g1", ann, by="echo-event", provisional=early)

    bob = {"first_name": "Bob", "phone": "+19195550101"}
    late = provisional_entity("+19195550101")
    await guard.remember("ghl", late, bob)
    await guard.settle_provisional("ghl", late, "g2", bob)
    assert await guard.is_echo("ghl", "g2", bob, provisional=late)
    assert not await guard.is_echo("ghl", "g2", bob, provisional=late)


async def test_ghl_echo_of_our_create_processed_before_the_answer_is_no_change(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-C-2 (issue 14): a contact made in Aloware is created in GHL; GHL's ContactCreate
    about it reaches the service and is processed while the creating event still waits for GHL's
    answer (the answer's arrival is held until then). The echo is recognised: nothing is written
    back to Aloware."""
    world = sync_world
    _use_mode(world, "aloware")
    _ghl_sends_webhooks(world)
    phone = "+19195550142"
    contact = world.aloware.sim.add_contact(phone, first_name="Dana", last_name="Reyes")
    body = world.aloware.sim.webhook_contact(contact["id"])
    echo_processed = asyncio.Event()
    real_upsert = world.connectors.ghl.upsert_contact  # type: ignore[union-attr]

    async def answer_after_the_echo(upsert: Any) -> Any:
        answer = await real_upsert(upsert)
        await _ghl_webhooks_delivered(world, 1)  # GHL's ContactCreate is stored
        await world.worker().run_once()  # and another worker takes it now
        echo_processed.set()
        return answer

    world.connectors.ghl.upsert_contact = answer_after_the_echo  # type: ignore[union-attr,method-assign]
    try:
        await world.deliver_aloware("Contact Created", body)
        await world.process()
    finally:
        world.connectors.ghl.upsert_contact = real_upsert  # type: ignore[union-attr,method-assign]
    assert echo_processed.is_set()
    await world.process()
    assert contacts.ECHO in [row.message for row in await _logs(world)]
    assert _lead_writes(world) == 0


async def _write_sara_to_ghl(world: SyncWorld) -> tuple[str, int]:
    """`aloware` mode: Aloware's 'Sara' is written over GHL's 'Sarah', and GHL's echo processed."""
    _use_mode(world, "aloware")
    ghl_id, aloware_id = _person(world, {"firstName": "Sarah"}, first_name="Sara", city="Raleigh")
    _ghl_sends_webhooks(world)
    await world.deliver_aloware("Contact Updated", _aloware_body(world, aloware_id, T0))
    await world.process()
    assert _ghl(world, ghl_id)["firstName"] == "Sara"
    await _ghl_webhooks_delivered(world, 1)
    await world.process()
    assert await _last_message(world) == contacts.ECHO
    assert _lead_writes(world) == 0
    return ghl_id, aloware_id


async def test_a_name_changed_back_in_ghl_within_the_echo_ttl_is_synced(sync_world: SyncWorld) -> None:
    """R-LOOP-1, R-C-1: we write 'Sara' to GHL (its echo is skipped); a GHL user renames her
    'Sarah-Jane' (synced), then back to 'Sara' well within ECHO_TTL: that is a change, not the
    echo of our write, and Aloware ends with 'Sara'."""
    ghl_id, aloware_id = await _write_sara_to_ghl(sync_world)

    await _edit_in_ghl(sync_world, ghl_id, firstName="Sarah-Jane")
    await _ghl_webhooks_delivered(sync_world, 2)
    await sync_world.process()
    assert sync_world.aloware.sim.contacts[aloware_id]["first_name"] == "Sarah-Jane"

    await _edit_in_ghl(sync_world, ghl_id, firstName="Sara")
    await _ghl_webhooks_delivered(sync_world, 3)
    await sync_world.process()

    assert sync_world.aloware.sim.contacts[aloware_id]["first_name"] == "Sara"
    assert _lead_writes(sync_world) == 2
    assert (await _logs(sync_world))[-1].status == "success"


async def test_a_second_webhook_for_one_write_is_not_written_back(sync_world: SyncWorld) -> None:
    """R-LOOP-1, R-IDEM-1, R-C-3: GHL sends the webhook of our write twice (two webhook ids, the
    same content and time, so ingest cannot tell): the first is the echo, the second changes
    nothing either — no Lead API write, Aloware keeps its own profile."""
    ghl_id, aloware_id = await _write_sara_to_ghl(sync_world)
    (echo,) = sync_world.ghl.sim.webhooks.deliveries
    async with sync_world.db.session() as session:
        stored = await session.scalar(
            select(WebhookEvent.payload_json).where(WebhookEvent.entity_id == ghl_id)
        )
    assert stored is not None
    assert stored["webhookId"] == echo.details["webhookId"]

    await sync_world.deliver_ghl({**stored, "webhookId": "second-delivery-of-the-same-write"})
    await sync_world.process()

    assert _lead_writes(sync_world) == 0
    assert (await _logs(sync_world))[-1].status == "skipped"
    assert sync_world.aloware.sim.contacts[aloware_id]["first_name"] == "Sara"


# --- 3. two changes in one second: receipt order decides (R-Q-4) ----------------------------------


async def test_a_second_aloware_change_in_the_same_second_is_applied(sync_world: SyncWorld) -> None:
    """R-IDEM-1, R-Q-4, R-C-2 (`aloware` mode): Aloware's `updated_at` has one-second resolution;
    two different changes stamped with the same second are both applied, in the order they were
    received, so GHL ends with the second. A replay of either stays a no-op."""
    _use_mode(sync_world, "aloware")
    ghl_id, aloware_id = _person(sync_world, {"firstName": "Sarah"}, first_name="Sara")
    await sync_world.deliver_aloware("Contact Updated", _aloware_body(sync_world, aloware_id, T0))
    await sync_world.process()

    moment = T0 + timedelta(minutes=1)
    sync_world.aloware.sim.update_contact(aloware_id, first_name="Ann")
    await sync_world.deliver_aloware("Contact Updated", _aloware_body(sync_world, aloware_id, moment))
    sync_world.aloware.sim.update_contact(aloware_id, first_name="Anna")
    await sync_world.deliver_aloware("Contact Updated", _aloware_body(sync_world, aloware_id, moment))
    await sync_world.process()
    assert _ghl(sync_world, ghl_id)["firstName"] == "Anna"

    writes = len(_ghl_writes(sync_world))
    for event_id in await _event_ids(sync_world):
        await replay_event(sync_world.db, event_id)
        await sync_world.process()
        assert await _last_message(sync_world) == contacts.STALE
    assert _ghl(sync_world, ghl_id)["firstName"] == "Anna"
    assert len(_ghl_writes(sync_world)) == writes


async def test_a_tie_with_an_older_watermark_is_not_stale(db: Database) -> None:
    """R-IDEM-1, R-Q-4: a change is stale when older than the last applied, or of the same time
    and received no later; a watermark written before receipt times were kept (none stored)
    makes a tie not stale. The watermark only moves forward."""
    mappings = ContactMappings(db)
    await mappings.upsert(ghl_contact_id="g1", aloware_contact_id="a1", direction="aloware_to_ghl")
    first, second = utcnow(), utcnow() + timedelta(seconds=1)

    async with db.session() as session:
        row = await session.scalar(select(ContactMapping))
        assert row is not None
        row.aloware_event_at = T0  # a row from before receipt times were stored
    mapping = await mappings.by_ghl_id("g1")
    assert mapping is not None
    assert not mapping.is_stale("aloware", T0, first)
    assert mapping.is_stale("aloware", T0 - timedelta(seconds=1), first)

    await mappings.mark_applied("g1", "aloware", T0, received_at=second)
    await mappings.mark_applied("g1", "aloware", T0, received_at=first)  # older: ignored
    mapping = await mappings.by_ghl_id("g1")
    assert mapping is not None
    assert mapping.is_stale("aloware", T0, first)
    assert mapping.is_stale("aloware", T0, second)  # the same event again
    assert not mapping.is_stale("aloware", T0, second + timedelta(milliseconds=1))
    assert not mapping.is_stale("aloware", T0 + timedelta(seconds=1), first)
    assert not mapping.is_stale("ghl", T0, first)


# --- 4. Contact Disposed: the older disposition never replaces the newer (R-CALL-3) ---------------


def _disposed(world: SyncWorld, aloware_id: int, value: str, updated_at: datetime) -> dict[str, Any]:
    body = _aloware_body(world, aloware_id, updated_at)
    body["disposition_status"] = value
    return body


def _dispositions(world: SyncWorld, ghl_id: str) -> list[str]:
    return [t.lower() for t in _ghl(world, ghl_id)["tags"] if t.lower().startswith("disposition:")]


async def test_contact_dispositions_delivered_out_of_order_keep_the_newest(sync_world: SyncWorld) -> None:
    """R-CALL-3, R-IDEM-1: Aloware's newer `Contact Disposed` arrives first and an older one after
    it (a late retry): GHL keeps the newer disposition; the older is skipped as stale. Two
    dispositions in the same second apply in the order received."""
    ghl_id, aloware_id = _person(sync_world, {"firstName": "Sarah"}, first_name="Sara")
    sync_world.use_modules(calls)

    await sync_world.deliver_aloware(
        "Contact Disposed", _disposed(sync_world, aloware_id, "Not Interested", T0 + timedelta(minutes=5))
    )
    await sync_world.deliver_aloware(
        "Contact Disposed", _disposed(sync_world, aloware_id, "Appointment Set", T0)
    )
    await sync_world.process()

    assert _dispositions(sync_world, ghl_id) == ["disposition: not interested"]
    assert (await _logs(sync_world))[-1].status == "skipped"

    same_second = T0 + timedelta(minutes=9)
    await sync_world.deliver_aloware(
        "Contact Disposed", _disposed(sync_world, aloware_id, "Callback", same_second)
    )
    await sync_world.deliver_aloware(
        "Contact Disposed", _disposed(sync_world, aloware_id, "Sold", same_second)
    )
    await sync_world.process()
    assert _dispositions(sync_world, ghl_id) == ["disposition: sold"]

    for event_id in await _event_ids(sync_world):
        await replay_event(sync_world.db, event_id)
    await sync_world.process()
    assert _dispositions(sync_world, ghl_id) == ["disposition: sold"]


# --- 5. a sighting's age is measured on our clock ---------------------------------------------------


async def _mapped_in_ghl_mode(world: SyncWorld) -> tuple[str, int]:
    """'Sarah' in GHL (no state, no country), 'Sara' in Aloware with a city: mapped, city filled."""
    ghl_id, aloware_id = _person(world, {"firstName": "Sarah"}, first_name="Sara", city="Raleigh")
    await world.deliver_aloware("Contact Updated", _aloware_body(world, aloware_id, T0))
    await world.process()
    assert _ghl(world, ghl_id)["city"] == "Raleigh"
    return ghl_id, aloware_id


async def test_a_ghl_webhook_stamped_in_the_future_does_not_outlive_what_we_read(
    sync_world: SyncWorld,
) -> None:
    """R-C-2 (`ghl` mode) with R-PERF-3: a GHL webhook whose `timestamp` is ahead of our clock
    (GHL's clock runs fast: 280 s, inside the 300 s replay window ingest allows) is a sighting as
    of when it reached us. GHL's later answer to our write replaces it, so a state set in GHL
    since (its webhook lost) is known and kept: Aloware's different state does not overwrite it."""
    ghl_id, aloware_id = await _mapped_in_ghl_mode(sync_world)
    future = datetime.now(UTC) + timedelta(seconds=280)
    webhook = contact_webhook("ContactUpdate", _ghl(sync_world, ghl_id))
    await sync_world.deliver_ghl({**webhook, "timestamp": future.isoformat().replace("+00:00", "Z")})
    await sync_world.process()
    received = utcnow()

    sync_world.ghl.sim.update_contact(LOCATION, ghl_id, {"state": "SC"})  # its webhook is lost
    sync_world.aloware.sim.update_contact(aloware_id, country="US")
    await sync_world.deliver_aloware(
        "Contact Updated", _aloware_body(sync_world, aloware_id, T0 + timedelta(minutes=1))
    )
    await sync_world.process()
    assert _ghl(sync_world, ghl_id)["country"] == "US"

    sync_world.aloware.sim.update_contact(aloware_id, state="NC")
    await sync_world.deliver_aloware(
        "Contact Updated", _aloware_body(sync_world, aloware_id, T0 + timedelta(minutes=2))
    )
    await sync_world.process()

    assert _ghl(sync_world, ghl_id)["state"] == "SC"
    mapping = await _mapping(sync_world)
    assert mapping.ghl_profile_at is not None
    assert mapping.ghl_profile_at <= utcnow()
    assert mapping.ghl_profile_at < received + timedelta(seconds=60)  # not GHL's clock


async def test_a_late_ghl_webhook_older_than_our_read_does_not_replace_it(sync_world: SyncWorld) -> None:
    """R-C-2 (`ghl` mode) with R-PERF-3: a GHL webhook about an older state of the contact (its
    `timestamp` before the `dateUpdated` GHL answered us with) reaches us after our read: what we
    read stands, so Aloware's state still fills GHL's empty one."""
    ghl_id, aloware_id = await _mapped_in_ghl_mode(sync_world)
    read_at = datetime.fromisoformat(_ghl(sync_world, ghl_id)["dateUpdated"].replace("Z", "+00:00"))
    older = {**_ghl(sync_world, ghl_id), "state": "SC"}
    webhook = contact_webhook("ContactUpdate", older)
    stamp = (read_at - timedelta(minutes=4)).isoformat().replace("+00:00", "Z")
    await sync_world.deliver_ghl({**webhook, "timestamp": stamp})
    await sync_world.process()

    sync_world.aloware.sim.update_contact(aloware_id, state="NC")
    await sync_world.deliver_aloware(
        "Contact Updated", _aloware_body(sync_world, aloware_id, T0 + timedelta(minutes=1))
    )
    await sync_world.process()

    assert _ghl(sync_world, ghl_id).get("state") == "NC"
