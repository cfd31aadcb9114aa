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
from df_middleware.connectors.http import RemoteRejected, ServiceClient
from df_middleware.db.models import ContactMapping, SyncEffect
from df_middleware.db.session import Database
from df_middleware.simulators.ghl import GhlSimulator, create_app
from df_middleware.sync.echoes import EchoGuard
from df_middleware.sync.effects import EffectLedger, EffectMaybeDone, fingerprint
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


async def _effect_states(db: Database) -> dict[str, str]:
    async with db.session() as session:
        return dict((await session.execute(select(SyncEffect.effect_key, SyncEffect.state))).all())


def _rejected() -> RemoteRejected:
    return RemoteRejected(
        "bad", system="ghl", endpoint="POST /contacts/{id}/notes", status_code=422, body=None
    )


async def test_a_write_refused_leaves_no_intent_and_its_retry_writes_without_looking(db: Database) -> None:
    """R-IDEM-2: a write that certainly changed nothing (a 4xx refusal) drops its intent, so the
    retry writes at once, with no remote look-up."""
    calls: list[str] = []

    async def refused() -> str:
        calls.append("write")
        raise _rejected()

    async def write() -> str:
        calls.append("write")
        return "note-1"

    async def look() -> str | None:
        calls.append("look")
        return None

    with pytest.raises(RemoteRejected):
        await EffectLedger(db, _event()).perform("ghl:note:x", "ghl", refused, find_existing=look)
    assert await _effect_states(db) == {}
    outcome = await EffectLedger(db, _event()).perform("ghl:note:x", "ghl", write, find_existing=look)
    assert (outcome.already_done, outcome.target_id, calls) == (False, "note-1", ["write", "write"])
    assert await _effect_states(db) == {"ghl:note:x": "done"}


@pytest.mark.parametrize("ending", ["exception", "cancellation"])
async def test_an_interrupted_write_is_maybe_done_and_looked_for_before_repeating(
    db: Database, ending: str
) -> None:
    """R-IDEM-2: a run that ends after the request may have left — an unknown failure, or a
    cancellation (shutdown past the grace) — leaves the committed intent; the next run, whatever
    its attempt count, looks remotely before writing and records what it finds. A first run
    (no intent) makes no look-up."""
    calls: list[str] = []

    async def interrupted() -> str:
        calls.append("write")
        if ending == "cancellation":
            raise asyncio.CancelledError
        raise RuntimeError("the answer was lost")

    async def write() -> str:
        calls.append("write")
        return "new"

    async def found() -> str | None:
        calls.append("look")
        return "already-there"

    with pytest.raises((RuntimeError, asyncio.CancelledError)):
        await EffectLedger(db, _event()).perform("k", "ghl", interrupted, find_existing=found)
    assert await _effect_states(db) == {"k": "started"}
    # The release after a shutdown gives the attempt back: the retry is attempt 1 again.
    retry = await EffectLedger(db, _event(attempts=1)).perform("k", "ghl", write, find_existing=found)
    assert (retry.already_done, retry.target_id, calls) == (True, "already-there", ["write", "look"])
    assert await _effect_states(db) == {"k": "done"}

    calls.clear()
    first = await EffectLedger(db, _event()).perform("k2", "ghl", write, find_existing=found)
    assert (first.already_done, first.target_id, calls) == (False, "new", ["write"])


async def test_an_interrupted_write_that_cannot_be_looked_up_is_never_repeated(db: Database) -> None:
    """R-IDEM-2, R-TXT-5: with no remote look-up (a Verity send), an intent with no outcome is
    `EffectMaybeDone`: the write is not made again."""
    writes: list[str] = []

    async def interrupted() -> str:
        writes.append("send")
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await EffectLedger(db, _event()).perform("verity:send:m1", "verity", interrupted)
    with pytest.raises(EffectMaybeDone):
        await EffectLedger(db, _event()).perform("verity:send:m1", "verity", interrupted)
    assert writes == ["send"]
    assert await _effect_states(db) == {"verity:send:m1": "started"}


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
