"""Contact sync GHL ⇄ Aloware (SPEC §6.1, §11): decisions without I/O, flows through the real world.

The decision tests call the pure functions of `df_middleware.sync.contacts`. The flow tests go
through `sync_world`: webhooks are signed and posted to the real ingest, the real worker runs the
handlers, and the simulators answer over HTTP; they assert on simulator state, request logs,
contact_mappings and sync_log, never on which functions ran.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

import df_middleware.sync.contacts as contacts
import df_middleware.sync.contacts_aloware as contacts_aloware
from df_middleware.db.models import ContactMapping, SyncEffect, SyncLog, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.queue.operations import replay_event
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.contacts import (
    PROFILE_FIELDS,
    PhoneChange,
    Profile,
    aloware_profile,
    decide_ghl_changes,
    decide_phone_change,
    ghl_profile,
    ghl_update,
    lead_fields,
    profile_fingerprint,
)
from df_middleware.sync.identity import ContactDeleted, ContactMappings, GhlSighting, MappingView
from df_middleware.sync.registry import HandlerRegistry
from df_middleware.timestamps import parse_iso8601
from tests.conftest import TEST_SECRETS
from tests.sync_world import LOCATION, SyncWorld

PHONE = "+19195550101"
OTHER_PHONE = "+19195550102"
THIRD_PHONE = "+19195550103"
T0 = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)


def _mapping(phone: str | None = PHONE, aloware_id: str | None = "100001") -> MappingView:
    return MappingView(
        id="m1",
        ghl_contact_id="ghl1",
        aloware_contact_id=aloware_id,
        phone=phone,
        email=None,
        fingerprint=None,
        deleted_at=None,
    )


# --- decisions (no I/O) ---------------------------------------------------------------------------


def test_ghl_profile_reads_native_and_workflow_payloads() -> None:
    """R-C-1, R-ID-1: GHL's fields map to the shared vocabulary; phone E.164, email lower-cased."""
    native = {
        "type": "ContactUpdate",
        "id": "c1",
        "firstName": " John ",
        "lastName": "Deo",
        "email": "JohnDeo@Example.com ",
        "phone": "(919) 555-0101",
        "source": "xyz form",
        "city": "Raleigh",
        "state": "NC",
        "country": "US",
        "timezone": "",
        "tags": ["a"],
    }
    expected = {
        "first_name": "John",
        "last_name": "Deo",
        "email": "johndeo@example.com",
        "phone": PHONE,
        "lead_source": "xyz form",
        "city": "Raleigh",
        "state": "NC",
        "country": "US",
    }
    assert ghl_profile(native) == expected
    workflow = {"type": "contact.updated", "contact": {"first_name": "John", "phone": "9195550101"}}
    assert ghl_profile(workflow) == {"first_name": "John", "phone": PHONE}
    assert "phone" not in ghl_profile({"phone": "12345"})


def test_aloware_profile_reads_a_contact_body() -> None:
    """R-C-2: Aloware's webhook body maps to the same vocabulary (unknown keys ignored)."""
    body = {
        "id": 48213,
        "first_name": "Sara",
        "last_name": "Johnson",
        "phone_number": "+19195551234",
        "email": "Sarah.Johnson@example.com",
        "lead_source": "Website",
        "disposition_status": "Interested",
        "csf1": None,
    }
    assert aloware_profile(body) == {
        "first_name": "Sara",
        "last_name": "Johnson",
        "phone": "+19195551234",
        "email": "sarah.johnson@example.com",
        "lead_source": "Website",
    }


def test_ghl_mode_only_fills_empty_fields() -> None:
    """R-C-2 `ghl`: GHL owns the profile; Aloware fills what GHL lacks, nothing else."""
    changes = decide_ghl_changes(
        "ghl",
        {"first_name": "Sara", "city": "Raleigh"},
        {"first_name": "Sarah"},
        aloware_changed_at=T0 + timedelta(days=1),
        ghl_changed_at=T0,
    )
    assert changes == {"city": "Raleigh"}


def test_aloware_mode_overwrites_but_never_clears() -> None:
    """R-C-2 `aloware`: Aloware's values are written; an empty Aloware field clears nothing."""
    changes = decide_ghl_changes(
        "aloware",
        {"first_name": "Sara"},
        {"first_name": "Sarah", "city": "Durham"},
        aloware_changed_at=None,
        ghl_changed_at=T0,
    )
    assert changes == {"first_name": "Sara"}


def test_merge_mode_newer_change_wins() -> None:
    """R-C-2 `merge`: per field the newer change wins; ties and unknown Aloware times keep GHL."""
    aloware: Profile = {"first_name": "Sara", "city": "Raleigh"}
    ghl: Profile = {"first_name": "Sarah"}
    newer = decide_ghl_changes("merge", aloware, ghl, aloware_changed_at=T0, ghl_changed_at=T0 - timedelta(1))
    older = decide_ghl_changes("merge", aloware, ghl, aloware_changed_at=T0 - timedelta(1), ghl_changed_at=T0)
    tie = decide_ghl_changes("merge", aloware, ghl, aloware_changed_at=T0, ghl_changed_at=T0)
    unknown = decide_ghl_changes("merge", aloware, ghl, aloware_changed_at=None, ghl_changed_at=T0)
    assert newer == {"first_name": "Sara", "city": "Raleigh"}
    assert older == tie == unknown == {"city": "Raleigh"}
    ghl_unknown = decide_ghl_changes("merge", aloware, ghl, aloware_changed_at=T0, ghl_changed_at=None)
    assert ghl_unknown == {"first_name": "Sara", "city": "Raleigh"}


def test_phone_is_never_written_to_ghl() -> None:
    """R-C-1: the phone is changed in GHL only; an Aloware profile never rewrites it."""
    changes = decide_ghl_changes(
        "aloware", {"phone": OTHER_PHONE}, {"phone": PHONE}, aloware_changed_at=T0, ghl_changed_at=None
    )
    assert changes == {}


def test_phone_change_decisions() -> None:
    """R-C-1: a phone change reaches the mapped contact only; otherwise a flagged conflict."""
    assert decide_phone_change(None, OTHER_PHONE, None) == PhoneChange(write=True)
    assert decide_phone_change(_mapping(), PHONE, None) == PhoneChange(write=True)
    assert decide_phone_change(_mapping(aloware_id=None), OTHER_PHONE, None) == PhoneChange(write=True)
    assert decide_phone_change(_mapping(), OTHER_PHONE, "100001") == PhoneChange(write=True)
    taken = decide_phone_change(_mapping(), OTHER_PHONE, "100002")
    free = decide_phone_change(_mapping(), OTHER_PHONE, None)
    assert not taken.write
    assert not free.write
    assert taken.conflict is not None
    assert free.conflict is not None
    assert taken.conflict.startswith("conflict: ")
    assert free.conflict.startswith("conflict: ")
    assert "100002" in taken.conflict
    assert "second contact" in free.conflict


def test_parse_iso8601() -> None:
    """Event times: ISO-8601 with Z or offset, naive taken as UTC, junk as unknown."""
    assert parse_iso8601("2026-11-24T16:45:00Z") == datetime(2026, 11, 24, 16, 45, tzinfo=UTC)
    assert parse_iso8601("2026-11-24T17:45:00+01:00") == datetime(2026, 11, 24, 16, 45, tzinfo=UTC)
    assert parse_iso8601("2026-11-24T16:45:00") == datetime(2026, 11, 24, 16, 45, tzinfo=UTC)
    assert parse_iso8601("yesterday") is None
    assert parse_iso8601(None) is None


_values = st.one_of(st.none(), st.sampled_from(["Ann", "Bo", "Raleigh", "NC", "Web"]))
_emails = st.one_of(st.none(), st.sampled_from(["ann@example.com", "bo@example.org"]))
_profiles = st.fixed_dictionaries(
    {name: _emails if name == "email" else _values for name in PROFILE_FIELDS}
).map(lambda raw: {k: v for k, v in raw.items() if v is not None})
_times = st.one_of(st.none(), st.integers(-3, 3).map(lambda d: T0 + timedelta(hours=d)))
_modes = st.sampled_from(["ghl", "aloware", "merge"])


@given(mode=_modes, aloware=_profiles, ghl=_profiles, a_time=_times, g_time=_times)
def test_deciding_again_after_writing_yields_nothing(
    mode: Any, aloware: Profile, ghl: Profile, a_time: datetime | None, g_time: datetime | None
) -> None:
    """R-C-3 / R-LOOP-1: writing the decided fields converges — a second decision writes nothing."""
    changes = decide_ghl_changes(mode, aloware, ghl, aloware_changed_at=a_time, ghl_changed_at=g_time)
    after = {**ghl, **changes}
    assert decide_ghl_changes(mode, aloware, after, aloware_changed_at=a_time, ghl_changed_at=g_time) == {}
    assert all(aloware[name] == value for name, value in changes.items())
    if mode == "ghl":
        assert all(name not in ghl for name in changes)


@given(profile=_profiles)
def test_field_mapping_round_trips(profile: Profile) -> None:
    """The GHL ↔ Aloware field mapping loses nothing: a profile written either way reads back the
    same, so fingerprints of the two systems' copies agree (R-C-3)."""
    as_aloware = {**lead_fields(profile).to_body(), "phone_number": PHONE}
    as_ghl = {**ghl_update(profile).body(), "phone": PHONE}
    assert aloware_profile(as_aloware) == ghl_profile(as_ghl) == {**profile, "phone": PHONE}
    assert profile_fingerprint(aloware_profile(as_aloware)) == profile_fingerprint(ghl_profile(as_ghl))


def test_registered_event_names() -> None:
    """R-C-1, R-C-4, R-C-2: native and dotted GHL contact events and Aloware's contact events are
    served here; DND (opt-out, §6.4) and dispositions (calls, §6.2) are left to their flows."""
    registry = HandlerRegistry()
    contacts.register_handlers(registry)
    contacts_aloware.register_handlers(registry)
    for name in ("ContactCreate", "ContactUpdate", "contact.created", "contact.updated", "ContactDelete"):
        assert ("ghl", name) in registry
    assert ("ghl", "contact.deleted") in registry
    assert ("ghl", "ContactTagUpdate") in registry
    assert ("aloware", "contact created") in registry
    assert ("aloware", "Contact Updated") in registry
    assert ("ghl", "ContactDndUpdate") not in registry
    assert ("aloware", "Contact Disposed") not in registry


# --- flows through the real ingest, worker and simulators ----------------------------------------


def _ghl_contact(contact_id: str, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "ContactUpdate",
        "id": contact_id,
        "firstName": "John",
        "lastName": "Deo",
        "email": "john.deo@example.com",
        "phone": PHONE,
        "city": "Raleigh",
        "state": "NC",
        "country": "US",
        "timezone": "America/New_York",
        "source": "xyz form",
        "tags": [],
    }
    payload.update(fields)
    return {k: v for k, v in payload.items() if v is not None}


async def _logs(world: SyncWorld) -> list[SyncLog]:
    async with world.db.session() as session:
        return list(await session.scalars(select(SyncLog).order_by(SyncLog.started_at)))


async def _mappings(world: SyncWorld) -> list[ContactMapping]:
    async with world.db.session() as session:
        return list(await session.scalars(select(ContactMapping)))


async def _statuses(world: SyncWorld) -> list[str]:
    async with world.db.session() as session:
        return list(await session.scalars(select(WebhookEvent.status)))


def _lead_writes(world: SyncWorld) -> int:
    return len(world.aloware.requests("POST", "/api/v1/webhook/forms"))


def _ghl_writes(world: SyncWorld) -> int:
    return sum(len(world.ghl.requests(method, "/contacts")) for method in ("POST", "PUT", "DELETE"))


async def _sync_new_contact(world: SyncWorld, contact_id: str = "ghlA", **fields: Any) -> dict[str, Any]:
    world.use_modules(contacts, contacts_aloware)
    await world.deliver_ghl(_ghl_contact(contact_id, type="ContactCreate", **fields))
    await world.process()
    found: dict[str, Any] | None = world.aloware.sim.contact_by_phone(fields.get("phone", PHONE))
    assert found is not None
    return found


async def test_new_ghl_contact_is_synced_once_despite_duplicates_and_replay(sync_world: SyncWorld) -> None:
    """R-C-1: a new GHL contact becomes an Aloware contact (Lead API, force_update) and a mapping.
    R-IDEM-1, R-C-3: the same delivery twice, the same change in another delivery, and a replay of
    the first event make exactly one Lead API write."""
    sync_world.use_modules(contacts, contacts_aloware)
    payload = _ghl_contact("ghlA", type="ContactCreate", webhookId="wh-1")
    await sync_world.deliver_ghl(payload)
    await sync_world.deliver_ghl(payload)  # the same delivery again: deduplicated at ingest
    await sync_world.deliver_ghl(_ghl_contact("ghlA"))  # the same profile, another delivery
    await sync_world.process()
    async with sync_world.db.session() as session:
        first_id = await session.scalar(select(WebhookEvent.id).order_by(WebhookEvent.received_at))
    assert first_id is not None
    await replay_event(sync_world.db, first_id)
    await sync_world.process()

    created = sync_world.aloware.sim.contact_by_phone(PHONE)
    assert created is not None
    profile = {k: created[k] for k in ("first_name", "email", "timezone", "lead_source", "city")}
    assert profile == {
        "first_name": "John",
        "email": "john.deo@example.com",
        "timezone": "America/New_York",
        "lead_source": "xyz form",
        "city": "Raleigh",
    }
    assert len(sync_world.aloware.sim.contacts) == 1
    (write,) = sync_world.aloware.sim.lead_writes[created["id"]]
    assert write["force_update"] is True
    assert _lead_writes(sync_world) == 1
    (mapping,) = await _mappings(sync_world)
    assert (mapping.ghl_contact_id, mapping.aloware_contact_id) == ("ghlA", str(created["id"]))
    assert mapping.phone_number == PHONE
    assert mapping.last_synced_fingerprint is not None
    rows = sorted((r.status, r.direction, r.message or "", r.target_id) for r in await _logs(sync_world))
    # The second delivery carries the same profile (unchanged); the replay of the first, older
    # event is stale: a newer change of this contact was already applied.
    assert [row[:3] for row in rows if row[0] == "skipped"] == [
        ("skipped", "ghl_to_aloware", contacts.STALE),
        ("skipped", "ghl_to_aloware", "unchanged"),
    ]
    assert [(row[0], row[3]) for row in rows if row[0] != "skipped"] == [("success", str(created["id"]))]
    assert await _statuses(sync_world) == ["done", "done"]


async def test_only_changed_profiles_are_written(sync_world: SyncWorld) -> None:
    """R-C-3, R-C-1: an update whose profile is the one last synced (a tag-only change, say) makes
    no call to either system; a real change is written to the same Aloware contact."""
    created = await _sync_new_contact(sync_world)
    (before,) = await _mappings(sync_world)
    aloware_before = len(sync_world.aloware.requests())
    ghl_before = len(sync_world.ghl.requests())

    await sync_world.deliver_ghl(_ghl_contact("ghlA", tags=["vip"]))
    await sync_world.process()

    assert len(sync_world.aloware.requests()) == aloware_before
    assert len(sync_world.ghl.requests()) == ghl_before
    assert (await _logs(sync_world))[-1].message == "unchanged"

    await sync_world.deliver_ghl(_ghl_contact("ghlA", firstName="Johnny", phone="919-555-0101"))
    await sync_world.process()

    assert len(sync_world.aloware.sim.contacts) == 1
    assert sync_world.aloware.sim.contacts[created["id"]]["first_name"] == "Johnny"
    (after,) = await _mappings(sync_world)
    assert after.last_synced_fingerprint != before.last_synced_fingerprint
    assert _lead_writes(sync_world) == 2
    assert (await _logs(sync_world))[-1].status == "success"


async def test_contact_without_phone_and_tag_updates_are_skipped(sync_world: SyncWorld) -> None:
    """R-C-1: no valid phone → `skipped: no phone`; R-C-5 / §6.5: a tag change has no profile
    effect here and says so. Nothing is sent to Aloware, no mapping is made."""
    sync_world.use_modules(contacts, contacts_aloware)
    await sync_world.deliver_ghl(_ghl_contact("ghlB", type="ContactCreate", phone=None))
    await sync_world.deliver_ghl(_ghl_contact("ghlC", type="ContactCreate", phone="12345"))
    await sync_world.deliver_ghl(_ghl_contact("ghlD", type="ContactTagUpdate", tags=["hot"]))
    await sync_world.process()

    rows = sorted((r.entity_id, r.status, r.message) for r in await _logs(sync_world))
    assert rows == [
        ("ghlB", "skipped", "no phone"),
        ("ghlC", "skipped", "no phone"),
        ("ghlD", "skipped", contacts.NO_AGENTS),
    ]
    assert sync_world.aloware.requests() == []
    assert await _mappings(sync_world) == []


async def _aloware_and_ghl_person(world: SyncWorld, ghl_updated: datetime | None = None) -> tuple[str, int]:
    """GHL contact 'Sarah' (no city) and Aloware contact on the same phone, not yet mapped."""
    world.use_modules(contacts, contacts_aloware)
    write = world.ghl.sim.create_contact(
        LOCATION, {"firstName": "Sarah", "lastName": "Johnson", "phone": PHONE, "email": "s@example.com"}
    )
    ghl_id = str(write.contact["id"])
    if ghl_updated is not None:
        world.ghl.sim.contacts[ghl_id].updated_ms = int(ghl_updated.timestamp() * 1000)
    aloware = world.aloware.sim.add_contact(PHONE, first_name="Sara", last_name="Johnson", city="Raleigh")
    return ghl_id, int(aloware["id"])


def _aloware_update(world: SyncWorld, aloware_id: int, updated_at: datetime) -> dict[str, Any]:
    body: dict[str, Any] = world.aloware.sim.webhook_contact(aloware_id)
    body["updated_at"] = updated_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return body


def _use_mode(world: SyncWorld, mode: str) -> None:
    world.settings = world.settings.model_copy(update={"contact_source_of_truth": mode})


async def test_aloware_update_in_ghl_mode_fills_empty_fields_only(sync_world: SyncWorld) -> None:
    """R-C-2 `ghl` (default): GHL keeps 'Sarah', gains Aloware's city; the mapping is made."""
    ghl_id, aloware_id = await _aloware_and_ghl_person(sync_world)
    body = _aloware_update(sync_world, aloware_id, datetime.now(UTC) + timedelta(hours=1))

    await sync_world.deliver_aloware("Contact Updated", body)
    await sync_world.process()

    contact = sync_world.ghl.sim.get_contact(LOCATION, ghl_id)
    assert (contact["firstName"], contact.get("city")) == ("Sarah", "Raleigh")
    (mapping,) = await _mappings(sync_world)
    assert (mapping.ghl_contact_id, mapping.aloware_contact_id) == (ghl_id, str(aloware_id))
    (row,) = await _logs(sync_world)
    assert (row.status, row.direction, row.target_id) == ("success", "aloware_to_ghl", ghl_id)

    # The same Aloware profile again: last synced, so no call at all (R-C-3).
    ghl_before = len(sync_world.ghl.requests())
    body["updated_at"] = "2030-01-01T00:00:00Z"
    await sync_world.deliver_aloware("Contact Updated", body)
    await sync_world.process()
    assert len(sync_world.ghl.requests()) == ghl_before
    assert (await _logs(sync_world))[-1].message == "unchanged"


async def test_aloware_update_in_aloware_mode_overwrites(sync_world: SyncWorld) -> None:
    """R-C-2 `aloware`: Aloware's profile is written to GHL, whatever the times."""
    _use_mode(sync_world, "aloware")
    ghl_id, aloware_id = await _aloware_and_ghl_person(sync_world)
    body = _aloware_update(sync_world, aloware_id, datetime(2001, 1, 1, tzinfo=UTC))

    await sync_world.deliver_aloware("Contact Updated", body)
    await sync_world.process()

    contact = sync_world.ghl.sim.get_contact(LOCATION, ghl_id)
    assert (contact["firstName"], contact.get("city")) == ("Sara", "Raleigh")

    # GHL's webhook about our write is an echo (R-LOOP-1): Aloware is not written back.
    await sync_world.deliver_ghl(contact_webhook("ContactUpdate", contact))
    await sync_world.process()
    assert (await _logs(sync_world))[-1].message == "echo"
    assert _lead_writes(sync_world) == 0


async def test_aloware_update_in_merge_mode_newer_wins(sync_world: SyncWorld) -> None:
    """R-C-2 `merge`: an older Aloware change loses to GHL's newer one (empty fields still fill);
    a newer Aloware change wins."""
    _use_mode(sync_world, "merge")
    ghl_updated = datetime(2026, 6, 1, tzinfo=UTC)
    ghl_id, aloware_id = await _aloware_and_ghl_person(sync_world, ghl_updated)

    older = _aloware_update(sync_world, aloware_id, ghl_updated - timedelta(days=1))
    await sync_world.deliver_aloware("Contact Updated", older)
    await sync_world.process()
    contact = sync_world.ghl.sim.get_contact(LOCATION, ghl_id)
    assert (contact["firstName"], contact.get("city")) == ("Sarah", "Raleigh")

    sync_world.aloware.sim.update_contact(aloware_id, last_name="Johns")
    newer = _aloware_update(sync_world, aloware_id, datetime.now(UTC) + timedelta(hours=1))
    await sync_world.deliver_aloware("Contact Updated", newer)
    await sync_world.process()
    contact = sync_world.ghl.sim.get_contact(LOCATION, ghl_id)
    assert (contact["firstName"], contact["lastName"]) == ("Sara", "Johns")


async def test_unknown_aloware_contact_creates_one_ghl_contact(sync_world: SyncWorld) -> None:
    """R-C-2, R-IDEM-2: an Aloware contact GHL does not know is created once (keyed effect), also
    when its event is replayed. R-ID-2: a second Aloware contact sharing that GHL contact's email
    is a flagged conflict; the GHL contact and its mapping are left alone."""
    sync_world.use_modules(contacts, contacts_aloware)
    aloware = sync_world.aloware.sim.add_contact(OTHER_PHONE, first_name="Ann", email="ann@example.com")
    await sync_world.deliver_aloware("Contact Created", sync_world.aloware.sim.webhook_contact(aloware["id"]))
    await sync_world.process()
    async with sync_world.db.session() as session:
        event_id = await session.scalar(select(WebhookEvent.id))
    assert event_id is not None
    await replay_event(sync_world.db, event_id)
    await sync_world.process()

    live = [c for c in sync_world.ghl.sim.contacts.values() if not c.deleted]
    assert [c.profile["firstName"] for c in live] == ["Ann"]
    assert len(sync_world.ghl.requests("POST", "/contacts/upsert")) == 1
    (mapping,) = await _mappings(sync_world)
    assert (mapping.ghl_contact_id, mapping.aloware_contact_id) == (live[0].id, str(aloware["id"]))
    async with sync_world.db.session() as session:
        effect = await session.scalar(select(SyncEffect))
    assert effect is not None
    assert effect.effect_key == f"ghl:contact-for-aloware:{aloware['id']}"

    namesake = sync_world.aloware.sim.add_contact(THIRD_PHONE, first_name="Anna", email="ann@example.com")
    await sync_world.deliver_aloware(
        "Contact Created", sync_world.aloware.sim.webhook_contact(namesake["id"])
    )
    await sync_world.process()

    row = (await _logs(sync_world))[-1]
    assert (row.direction, row.status) == ("aloware_to_ghl", "skipped")
    assert row.message is not None
    assert row.message.startswith("conflict: ")
    assert [c.profile["firstName"] for c in sync_world.ghl.sim.contacts.values()] == ["Ann"]
    (after,) = await _mappings(sync_world)
    assert (after.ghl_contact_id, after.aloware_contact_id) == (live[0].id, str(aloware["id"]))


async def test_echo_of_our_aloware_write_is_skipped(sync_world: SyncWorld) -> None:
    """R-LOOP-1: our Lead API write comes back as Aloware's own `Contact Created` webhook (the
    simulator emits it, as Aloware does) with the same fields: `skipped: echo`, no GHL write."""
    sim = sync_world.aloware.sim
    sim.webhook_url = f"{sync_world.service_url}/api/webhooks/aloware"
    sim.webhook_bearer_token = TEST_SECRETS["aloware_webhook_bearer_token"]
    sim.emit_contact_events = True
    created = await _sync_new_contact(sync_world)
    ghl_before = _ghl_writes(sync_world)

    deadline = time.monotonic() + 30
    while (not sim.webhooks.deliveries or sim.webhooks.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    (delivery,) = sim.webhooks.deliveries
    assert delivery.ok
    assert (delivery.event, delivery.details["entity_id"]) == ("Contact Created", created["id"])
    await sync_world.process()

    rows = await _logs(sync_world)
    assert [(r.direction, r.status, r.message) for r in rows[1:]] == [("aloware_to_ghl", "skipped", "echo")]
    assert _ghl_writes(sync_world) == ghl_before
    assert await _statuses(sync_world) == ["done", "done"]


async def test_contact_delete_removes_from_lists_and_marks_mapping(sync_world: SyncWorld) -> None:
    """R-C-4: GHL delete → off every power-dialer list, mapping marked deleted, nothing deleted in
    Aloware; a redelivery is skipped; an unmapped contact's delete is skipped."""
    created = await _sync_new_contact(sync_world)
    sim = sync_world.aloware.sim
    lists = [sim.add_list("DF_A_HOT")["id"], sim.add_list("DF_A_COLD")["id"]]
    for list_id in lists:
        sim.lists[list_id]["contact_ids"].append(created["id"])

    await sync_world.deliver_ghl(_ghl_contact("ghlA", type="ContactDelete"))
    await sync_world.deliver_ghl(_ghl_contact("ghlA", type="ContactDelete"))
    await sync_world.deliver_ghl(_ghl_contact("ghlZ", type="ContactDelete", phone=THIRD_PHONE))
    await sync_world.process()

    assert sim.lists_of(created["id"]) == []
    assert created["id"] in sim.contacts
    (mapping,) = await _mappings(sync_world)
    assert mapping.deleted_at is not None
    rows = sorted((r.entity_id, r.status, r.message or "") for r in (await _logs(sync_world))[1:])
    assert [row[:2] for row in rows] == [("ghlA", "skipped"), ("ghlA", "success"), ("ghlZ", "skipped")]
    assert (rows[0][2], rows[2][2]) == ("already deleted", contacts.NOT_MAPPED)
    assert "removed Aloware contact" in rows[1][2]
    assert len(sync_world.aloware.requests("POST", "/api/v1/webhook/powerdialer-remove")) == 1


async def test_phone_change_onto_another_aloware_contact_is_a_conflict(sync_world: SyncWorld) -> None:
    """R-C-1: GHL moves the phone to a number another Aloware contact has → flagged conflict,
    nobody overwritten; to a free number → flagged, no second contact created."""
    created = await _sync_new_contact(sync_world)
    other = sync_world.aloware.sim.add_contact(OTHER_PHONE, first_name="Other")
    writes_before = _lead_writes(sync_world)

    await sync_world.deliver_ghl(_ghl_contact("ghlA", phone=OTHER_PHONE, firstName="Johnny"))
    await sync_world.process()
    await sync_world.deliver_ghl(_ghl_contact("ghlA", phone=THIRD_PHONE, firstName="Johnny"))
    await sync_world.process()

    logs = await _logs(sync_world)
    taken, free = logs[-2], logs[-1]
    assert (taken.status, free.status) == ("skipped", "skipped")
    assert taken.message is not None
    assert free.message is not None
    assert taken.message.startswith("conflict: ")
    assert str(other["id"]) in taken.message
    assert free.message.startswith("conflict: ")
    assert _lead_writes(sync_world) == writes_before
    assert sync_world.aloware.sim.contacts[other["id"]]["first_name"] == "Other"
    assert sync_world.aloware.sim.contact_by_phone(THIRD_PHONE) is None
    assert len(sync_world.aloware.sim.contacts) == 2
    (mapping,) = await _mappings(sync_world)
    assert (mapping.aloware_contact_id, mapping.phone_number) == (str(created["id"]), PHONE)
    assert await _statuses(sync_world) == ["done"] * 3


def _calls_since(world: SyncWorld, before: int) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in world.ghl.requests()[before:]]


async def _hold(world: SyncWorld, event_id: str, until: datetime) -> None:
    """Keep a queued event waiting (as if its delivery were still on its way through the queue)."""
    async with world.db.session() as session:
        row = await session.get(WebhookEvent, uuid.UUID(event_id))
        assert row is not None
        row.next_attempt_at = until


async def test_mapped_contact_update_is_decided_from_the_last_seen_ghl_profile(sync_world: SyncWorld) -> None:
    """R-PERF-3: an Aloware change of a mapped contact costs one `PUT` (no `GET`), decided (R-C-2,
    `ghl` mode) from the GHL profile last seen — GHL's answer to our write, or GHL's own contact
    webhook. While a GHL change of the contact is still queued the last-seen profile is not
    trusted: the contact is read, and GHL's newer value is kept."""
    ghl_id, aloware_id = await _aloware_and_ghl_person(sync_world)
    await sync_world.deliver_aloware("Contact Updated", _aloware_update(sync_world, aloware_id, T0))
    await sync_world.process()
    assert sync_world.ghl.sim.get_contact(LOCATION, ghl_id).get("city") == "Raleigh"

    # Aloware fills the state GHL lacks: one call, the PUT.
    sync_world.aloware.sim.update_contact(aloware_id, state="NC")
    before = len(sync_world.ghl.requests())
    await sync_world.deliver_aloware(
        "Contact Updated", _aloware_update(sync_world, aloware_id, T0 + timedelta(minutes=1))
    )
    await sync_world.process()
    assert [(r.method, r.path) for r in sync_world.ghl.requests()[before:]] == [
        ("PUT", f"/contacts/{ghl_id}")
    ]
    assert sync_world.ghl.sim.get_contact(LOCATION, ghl_id)["state"] == "NC"

    # Someone fills the country in GHL; GHL's (workflow) webhook, which names no phone and so
    # is not queued behind the person's other events, still waits in the queue when Aloware's
    # different country arrives: GHL is read, and its value stands.
    sync_world.ghl.sim.update_contact(LOCATION, ghl_id, {"country": "US"})
    workflow = {"type": "contact.updated", "locationId": LOCATION, "contact_id": ghl_id, "country": "US"}
    held = await sync_world.deliver_ghl(workflow)
    await _hold(sync_world, held.json()["id"], datetime.now(UTC) + timedelta(hours=1))
    sync_world.aloware.sim.update_contact(aloware_id, country="CA")
    before = len(sync_world.ghl.requests())
    await sync_world.deliver_aloware(
        "Contact Updated", _aloware_update(sync_world, aloware_id, T0 + timedelta(minutes=2))
    )
    await sync_world.process()
    assert [(r.method, r.path) for r in sync_world.ghl.requests()[before:]] == [
        ("GET", f"/contacts/{ghl_id}")
    ]
    assert sync_world.ghl.sim.get_contact(LOCATION, ghl_id)["country"] == "US"

    # The held webhook, processed late, is older than that read and changes nothing of what we
    # know: later Aloware changes that GHL's values override cost no call at all.
    await _hold(sync_world, held.json()["id"], datetime.now(UTC) - timedelta(seconds=1))
    await sync_world.process()
    for minute, changes in ((3, {"country": "MX"}), (4, {"first_name": "Sarita"})):
        sync_world.aloware.sim.update_contact(aloware_id, **changes)
        before = len(sync_world.ghl.requests())
        await sync_world.deliver_aloware(
            "Contact Updated", _aloware_update(sync_world, aloware_id, T0 + timedelta(minutes=minute))
        )
        await sync_world.process()
        assert sync_world.ghl.requests()[before:] == []
    contact = sync_world.ghl.sim.get_contact(LOCATION, ghl_id)
    assert (contact["firstName"], contact["country"], contact["state"]) == ("Sarah", "US", "NC")
    assert (await _logs(sync_world))[-1].message.startswith(f"GHL contact {ghl_id} already up to date")


async def test_a_timezone_changed_in_ghl_is_not_overwritten_after_its_webhook(sync_world: SyncWorld) -> None:
    """R-C-2 with R-PERF-3: GHL's contact webhooks carry no timezone, so after one the timezone
    is unknown, never "empty" or "as before" (the webhook may report that very change): an
    Aloware change carrying a timezone reads the contact first, and GHL's timezone stands in
    `ghl` mode. A change without a timezone is still decided without a read."""
    ghl_id, aloware_id = await _aloware_and_ghl_person(sync_world)
    await sync_world.deliver_aloware("Contact Updated", _aloware_update(sync_world, aloware_id, T0))
    await sync_world.process()  # reads GHL (no timezone there yet) and fills the city

    changed = sync_world.ghl.sim.update_contact(LOCATION, ghl_id, {"timezone": "America/Chicago"}).contact
    webhook = contact_webhook("ContactUpdate", changed)
    assert "timezone" not in webhook
    await sync_world.deliver_ghl(webhook)
    await sync_world.process()

    sync_world.aloware.sim.update_contact(aloware_id, timezone="America/Denver", state="SC")
    before = len(sync_world.ghl.requests())
    await sync_world.deliver_aloware(
        "Contact Updated", _aloware_update(sync_world, aloware_id, T0 + timedelta(minutes=1))
    )
    await sync_world.process()
    assert _calls_since(sync_world, before) == [
        ("GET", f"/contacts/{ghl_id}"),
        ("PUT", f"/contacts/{ghl_id}"),
    ]
    contact = sync_world.ghl.sim.get_contact(LOCATION, ghl_id)
    assert (contact["timezone"], contact["state"]) == ("America/Chicago", "SC")


async def test_last_seen_ghl_profile_rules(db: Database) -> None:
    """R-PERF-3 safety (R-C-2): a sighting older than the one stored never replaces it; GHL
    changes we cannot read make the profile unknown, and so does a day without news; a webhook's
    missing timezone is unknown, not empty; a mapping moved to another GHL contact, revived or
    deleted forgets what it saw."""
    mappings = ContactMappings(db)
    await mappings.upsert(ghl_contact_id="g1", aloware_contact_id="a1", direction="ghl_to_aloware")

    async def seen(ghl_id: str = "g1", now: datetime | None = None) -> GhlSighting | None:
        mapping = await mappings.by_ghl_id(ghl_id)
        assert mapping is not None
        return await mappings.trusted_ghl_profile(mapping, now=now)

    now = datetime.now(UTC)
    read = {"first_name": "Sarah", "timezone": "America/Chicago"}
    await mappings.see_ghl_profile("g1", read, changed_at=T0, seen_at=now)
    await mappings.see_ghl_profile("g1", {"first_name": "Old"}, seen_at=now - timedelta(minutes=1))
    assert await seen() == GhlSighting(read, T0)  # the older sighting was ignored
    assert await seen(now=now + timedelta(hours=25)) is None  # too old to stand in for a read

    later = now + timedelta(minutes=2)
    webhook = {"first_name": "Sarah", "state": "NC"}
    await mappings.see_ghl_profile("g1", webhook, changed_at=later, seen_at=later, unseen=("timezone",))
    sighting = await seen(now=later)
    assert sighting == GhlSighting(webhook, later, ("timezone",))
    assert sighting.decides({"state": "SC"})
    assert not sighting.decides({"state": "SC", "timezone": "America/Denver"})

    await mappings.see_ghl_profile("g1", None, seen_at=later + timedelta(minutes=1))
    assert await seen(now=later) is None

    await mappings.see_ghl_profile("g1", read, seen_at=later + timedelta(minutes=2))
    await mappings.upsert(ghl_contact_id="g2", aloware_contact_id="a1", direction="aloware_to_ghl")
    assert await seen("g2", now=later) is None  # another GHL contact now: nothing seen of it
    await mappings.see_ghl_profile("g2", read, seen_at=later + timedelta(minutes=3))
    await mappings.mark_deleted("g2")
    assert await seen("g2", now=later) is None  # deleted: nothing seen of it stands
    with pytest.raises(ContactDeleted):  # R-C-4: a deleted GHL contact is never mapped again
        await mappings.upsert(ghl_contact_id="g2", aloware_contact_id="a1", direction="aloware_to_ghl")
