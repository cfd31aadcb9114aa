"""A contact's events stay in one ordering key when its phone changes (R-Q-4, R-IDEM-2, issue 10).

Keyed by `phone:<E.164>`, a contact's changes before and after a new number sat under two keys,
so the queue let them run at once (`queue/worker.py` `_claimable`: one worker claims both in one
batch). The staleness watermark cannot order them: each handler checks it before its remote
writes and moves it only after them, so an older change that passed its check while the newer
one was still being written wins in the end. The flow tests below force that interleaving *only
when the queue lets the two run at once* (the older event's write waits until the newer one got
past its checks); with contact events keyed by the contact (`ghl:contact:<id>`,
`aloware:contact:<id>`) the newer event waits behind the older one, nothing is held, and the
outcome is the one of the changes applied in order. Both database engines, real simulators.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

import df_middleware.sync.contacts as contacts
import df_middleware.sync.contacts_aloware as contacts_aloware
from df_middleware.connectors.aloware import AlowareContact, LeadFields
from df_middleware.connectors.ghl_models import Contact, ContactUpdate
from df_middleware.db.models import ContactMapping, SyncLog, WebhookEvent
from df_middleware.ingest.sources.aloware import classify_aloware
from df_middleware.ingest.sources.ghl import classify_ghl
from df_middleware.ingest.sources.texting import classify_texting
from tests.sync_world import SyncWorld

OLD_PHONE = "+19195550141"
NEW_PHONE = "+19195550142"
#: How long the older event's write may wait for the newer event (a deadline, not a pause).
WAIT_SECONDS = 60.0


# --- the keys -------------------------------------------------------------------------------------


def test_contact_events_are_keyed_by_the_contact_not_its_phone() -> None:
    """R-Q-4: a contact's events share one key whatever phone each carries; events that are not
    about the contact record keep the person's phone (calls, texts) or contact id (messages)."""
    before = classify_ghl({"type": "ContactCreate", "id": "c1", "phone": OLD_PHONE})
    after = classify_ghl({"type": "ContactUpdate", "id": "c1", "phone": NEW_PHONE})
    workflow = classify_ghl({"event": "contact.updated", "contact": {"id": "c1", "phone": NEW_PHONE}})
    deleted = classify_ghl({"type": "ContactDelete", "id": "c1", "phone": NEW_PHONE})
    message = classify_ghl({"type": "InboundMessage", "messageId": "m1", "contactId": "c1"})
    assert {e.ordering_key for e in (before, after, workflow, deleted, message)} == {"ghl:contact:c1"}

    updated = [
        classify_aloware({"event": "Contact Updated", "body": {"id": 7, "phone_number": phone}})
        for phone in (OLD_PHONE, NEW_PHONE)
    ]
    disposed = classify_aloware({"event": "Contact Disposed", "body": {"id": 7, "phone_number": NEW_PHONE}})
    assert {e.ordering_key for e in (*updated, disposed)} == {"aloware:contact:7"}

    call = classify_aloware(
        {"event": "Call Disposed", "body": {"id": 99, "contact": {"id": 7, "phone_number": NEW_PHONE}}}
    )
    assert call.ordering_key == f"phone:{NEW_PHONE}"
    text = classify_texting({"eventType": "message.received", "messageId": "t1", "from": NEW_PHONE})
    assert text.ordering_key == f"phone:{NEW_PHONE}"


# --- the flows ------------------------------------------------------------------------------------


@dataclass
class Interleaving:
    """Holds the older event's write until the newer event got past its checks, when (and only
    when) the queue runs the two at once: the order a slow answer to the older one's request
    gives in production."""

    world: SyncWorld
    newer_event_id: uuid.UUID | None = None
    newer_passed: asyncio.Event = field(default_factory=asyncio.Event)

    async def hold_older(self) -> None:
        async with self.world.db.session() as session:
            status = await session.scalar(
                select(WebhookEvent.status).where(WebhookEvent.id == self.newer_event_id)
            )
        if status == "processing":  # claimed beside the older event: they run at once
            await asyncio.wait_for(self.newer_passed.wait(), WAIT_SECONDS)


async def event_statuses(world: SyncWorld) -> list[str]:
    async with world.db.session() as session:
        return list(await session.scalars(select(WebhookEvent.status)))


async def live_mapping(world: SyncWorld) -> ContactMapping:
    async with world.db.session() as session:
        [row] = list(await session.scalars(select(ContactMapping).where(ContactMapping.deleted_at.is_(None))))
        return row


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_ghl_create_then_new_phone_makes_one_aloware_contact(
    sync_world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R-Q-4, R-IDEM-2, R-C-1: GHL sends `ContactCreate` (old phone) and, a second later,
    `ContactUpdate` with a new phone. In order, the create makes the Aloware contact and the phone
    change is flagged as a conflict (the Lead API cannot renumber a contact). The two must not
    both see "not mapped yet" and each create an Aloware contact, one per number."""
    sync_world.use_modules(contacts, contacts_aloware)
    aloware = sync_world.connectors.aloware
    assert aloware is not None
    gate = Interleaving(sync_world)
    real_upsert, real_find = aloware.upsert_lead, aloware.find_contact_by_phone

    async def upsert_lead(phone: str, *, fields: LeadFields | None = None) -> None:
        if phone == OLD_PHONE:
            await gate.hold_older()
        await real_upsert(phone, fields=fields)

    async def find_contact_by_phone(phone: str) -> AlowareContact | None:
        found = await real_find(phone)
        if phone == NEW_PHONE:  # the newer event's first-sync check
            gate.newer_passed.set()
        return found

    monkeypatch.setattr(aloware, "upsert_lead", upsert_lead)
    monkeypatch.setattr(aloware, "find_contact_by_phone", find_contact_by_phone)
    at = datetime.now(UTC)
    person = {"id": "ghlPhoneMove1", "firstName": "Ann", "lastName": "Lee"}
    await sync_world.deliver_ghl(
        {"type": "ContactCreate", **person, "phone": OLD_PHONE, "timestamp": stamp(at)}
    )
    newer = await sync_world.deliver_ghl(
        {"type": "ContactUpdate", **person, "phone": NEW_PHONE, "timestamp": stamp(at + timedelta(seconds=1))}
    )
    gate.newer_event_id = uuid.UUID(newer.json()["id"])
    await sync_world.process()

    aloware_contacts = list(sync_world.aloware.sim.contacts.values())
    assert [c["phone_number"] for c in aloware_contacts] == [OLD_PHONE]
    mapping = await live_mapping(sync_world)
    assert (mapping.ghl_contact_id, mapping.aloware_contact_id, mapping.phone_number) == (
        "ghlPhoneMove1",
        str(aloware_contacts[0]["id"]),
        OLD_PHONE,
    )
    async with sync_world.db.session() as session:
        rows = list(await session.scalars(select(SyncLog).where(SyncLog.status == "skipped")))
    assert [r.message.split(";")[0] for r in rows] == [
        f"conflict: phone changed in GHL from {OLD_PHONE} to {NEW_PHONE}"
    ]
    assert await event_statuses(sync_world) == ["done", "done"]


async def test_aloware_changes_around_a_new_number_end_with_the_newer(
    sync_world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R-Q-4, R-C-2: Aloware sends `Contact Updated` (old phone, first name "Ann1") and then
    `Contact Updated` with a new phone and first name "Ann2"; Aloware's values win
    (CONTACT_SOURCE_OF_TRUTH=aloware). In order, GHL ends with "Ann2" and the mapping with the
    new phone. The older change must never be written after the newer one."""
    sync_world.use_modules(contacts, contacts_aloware)
    sync_world.settings = sync_world.settings.model_copy(update={"contact_source_of_truth": "aloware"})
    ghl = sync_world.connectors.ghl
    assert ghl is not None
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def body(first_name: str, phone: str, moment: datetime) -> dict[str, Any]:
        return {
            "id": 48301,
            "first_name": first_name,
            "last_name": "Lee",
            "phone_number": phone,
            "email": "ann.lee@example.com",
            "updated_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    await sync_world.deliver_aloware("Contact Created", body("Ann0", OLD_PHONE, at))
    assert await sync_world.process() == 1

    gate = Interleaving(sync_world)
    real_update = ghl.update_contact

    async def update_contact(contact_id: str, changes: ContactUpdate) -> Contact:
        if changes.first_name == "Ann1":
            await gate.hold_older()
        updated = await real_update(contact_id, changes)
        if changes.first_name == "Ann2":
            gate.newer_passed.set()
        return updated

    monkeypatch.setattr(ghl, "update_contact", update_contact)
    await sync_world.deliver_aloware("Contact Updated", body("Ann1", OLD_PHONE, at + timedelta(seconds=10)))
    newer = await sync_world.deliver_aloware(
        "Contact Updated", body("Ann2", NEW_PHONE, at + timedelta(seconds=20))
    )
    gate.newer_event_id = uuid.UUID(newer.json()["id"])
    await sync_world.process()

    [contact] = [c for c in sync_world.ghl.sim.snapshot()["contacts"] if not c["deleted"]]
    assert contact["firstName"] == "Ann2"
    mapping = await live_mapping(sync_world)
    assert (mapping.aloware_contact_id, mapping.phone_number) == ("48301", NEW_PHONE)
    assert await event_statuses(sync_world) == ["done", "done", "done"]
