"""The pieces every sync handler stands on: the effect ledger, echo fingerprints, identity.

Real database (both engines); the GHL simulator over real HTTP where a remote look-up is needed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from df_middleware.connectors.ghl import GhlClient, StaticToken
from df_middleware.connectors.ghl_models import ContactCreate
from df_middleware.connectors.http import ServiceClient
from df_middleware.db.models import ContactMapping, SyncEffect
from df_middleware.db.session import Database
from df_middleware.simulators.ghl import GhlSimulator, create_app
from df_middleware.sync.effects import EchoGuard, EffectLedger, fingerprint
from df_middleware.sync.identity import ContactMappings, PersonKeys, resolve_ghl_contact
from df_middleware.sync.registry import ClaimedEvent
from tests.servers import serve_app


def _event(attempts: int = 1) -> ClaimedEvent:
    return ClaimedEvent(
        kind="webhook",
        id=uuid.uuid4(),
        source="aloware",
        event_type="Call Disposed",
        entity_type="call",
        entity_id="42",
        ordering_key="phone:+19195550100",
        payload={},
        attempts=attempts,
        received_at=datetime.now(UTC),
    )


async def _effect_rows(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(SyncEffect)) or 0)


async def test_an_effect_is_made_once_across_retries(db: Database) -> None:
    """R-IDEM-2: the second `perform` of a key (a retry, a replay) returns the first target id and
    does not write; the key is recorded at once, before the event's outcome."""
    writes: list[str] = []

    async def write() -> str:
        writes.append("note")
        return f"note-{len(writes)}"

    first = await EffectLedger(db, _event()).perform("ghl:note:call:42", "ghl", write)
    again = await EffectLedger(db, _event()).perform("ghl:note:call:42", "ghl", write)
    assert (first.already_done, first.target_id) == (False, "note-1")
    assert (again.already_done, again.target_id) == (True, "note-1")
    assert writes == ["note"]
    assert await _effect_rows(db) == 1


async def test_a_failed_write_records_nothing(db: Database) -> None:
    async def fail() -> str:
        raise RuntimeError("GHL down")

    with pytest.raises(RuntimeError):
        await EffectLedger(db, _event()).perform("ghl:note:x", "ghl", fail)
    assert await _effect_rows(db) == 0


async def test_a_write_found_remotely_is_recorded_not_repeated(db: Database) -> None:
    """R-CALL-4: on a retry, when the earlier answer was lost but the write happened, the remote
    look-up finds it; on a first run nothing can exist yet and no look-up (no API call) is made."""
    writes: list[str] = []
    lookups: list[str] = []

    async def write() -> str:
        writes.append("x")
        return "new"

    async def found() -> str | None:
        lookups.append("looked")
        return "already-there"

    retry = await EffectLedger(db, _event(attempts=2)).perform("k", "ghl", write, find_existing=found)
    assert (retry.already_done, retry.target_id, writes) == (True, "already-there", [])
    assert await _effect_rows(db) == 1

    first = await EffectLedger(db, _event()).perform("k2", "ghl", write, find_existing=found)
    assert (first.already_done, first.target_id, writes, lookups) == (False, "new", ["x"], ["looked"])


async def test_echo_guard_recognises_our_own_write(db: Database) -> None:
    """R-LOOP-1: the webhook our write causes carries the same fields: an echo, until the TTL."""
    guard = EchoGuard(db, ttl_seconds=900)
    await guard.remember("aloware", "17", {"first_name": "Ann", "email": "ann@x.com"})
    assert await guard.is_echo("aloware", "17", {"email": "ann@x.com", "first_name": "Ann", "city": None})
    assert not await guard.is_echo("aloware", "17", {"first_name": "Anne", "email": "ann@x.com"})
    assert not await guard.is_echo("ghl", "17", {"first_name": "Ann", "email": "ann@x.com"})
    expired = EchoGuard(db, ttl_seconds=0)
    await expired.remember("ghl", "c1", {"a": 1})
    await asyncio.sleep(0.01)
    assert not await expired.is_echo("ghl", "c1", {"a": 1})


def test_fingerprint_ignores_order_and_empty_values() -> None:
    """R-C-3: None, "" and absent mean the same to every system, so they do not change the print."""
    assert fingerprint({"a": 1, "b": None}) == fingerprint({"a": 1}) == fingerprint({"b": "", "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


async def test_mapping_upsert_completes_a_texting_only_row(db: Database) -> None:
    """R-ID-3: a texting-only mapping (no Aloware id) is completed in place when the Aloware id
    becomes known, not duplicated; identity columns only gain values."""
    mappings = ContactMappings(db)
    keys = PersonKeys.of("(919) 555-0100", " Ann@Example.com ")
    assert keys == PersonKeys("+19195550100", "ann@example.com")
    texting_only = await mappings.upsert(ghl_contact_id="g1", keys=keys, direction="texting_to_ghl")
    assert texting_only.aloware_contact_id is None
    completed = await mappings.upsert(
        ghl_contact_id="g1",
        aloware_contact_id=100001,
        keys=PersonKeys(None, None),
        direction="aloware_to_ghl",
    )
    assert completed.id == texting_only.id
    assert completed.aloware_contact_id == "100001"
    assert completed.phone == "+19195550100"  # not erased by an update without a phone
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(ContactMapping)) == 1
    assert (await mappings.by_aloware_id("100001")) == completed
    deleted = await mappings.mark_deleted("g1")
    assert deleted is not None
    assert deleted.deleted_at is not None


@pytest.fixture
def ghl_url() -> Iterator[str]:
    with serve_app(create_app(GhlSimulator(seed=3))) as url:
        yield url


async def test_resolution_order_mapping_then_phone_then_email(db: Database, ghl_url: str) -> None:
    """R-ID-2: the mapping wins; then GHL by exact phone; then by exact email; else nobody."""
    ghl = GhlClient(ServiceClient("ghl", ghl_url), StaticToken("loc_sim", "pit-sim"), "loc_sim")
    mappings = ContactMappings(db)
    try:
        by_phone = await ghl.create_contact(ContactCreate(locationId="loc_sim", phone="+19195550101"))
        by_email = await ghl.create_contact(ContactCreate(locationId="loc_sim", email="bo@example.com"))
        await mappings.upsert(
            ghl_contact_id="mapped-1",
            aloware_contact_id="7",
            keys=PersonKeys("+19195550109", None),
            direction="x",
        )
        mapped = await resolve_ghl_contact(
            mappings, ghl, PersonKeys("+19195550101", None), aloware_contact_id="7"
        )
        assert mapped is not None
        assert (mapped.ghl_contact_id, mapped.via) == ("mapped-1", "mapping")
        phone = await resolve_ghl_contact(mappings, ghl, PersonKeys("+19195550101", "bo@example.com"))
        assert phone is not None
        assert (phone.ghl_contact_id, phone.via) == (by_phone.id, "phone")
        email = await resolve_ghl_contact(mappings, ghl, PersonKeys("+19195550199", "BO@example.com".lower()))
        assert email is not None
        assert (email.ghl_contact_id, email.via) == (by_email.id, "email")
        assert (
            await resolve_ghl_contact(mappings, ghl, PersonKeys("+19195550188", "nobody@example.com")) is None
        )
    finally:
        await ghl.aclose()
