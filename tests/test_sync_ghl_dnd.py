"""GHL's SMS DND toggles as consent decisions (R-OPT-5, R-LOOP-1): real ingest, worker, GHL and
Verity simulators over HTTP, both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import df_middleware.sync.contacts as contacts
import df_middleware.sync.ghl_dnd as ghl_dnd
import df_middleware.sync.texting as texting
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import OptoutEvent, SyncLog, WebhookEvent
from tests.sync_world import SyncWorld

PERSON = "+19195550140"
GHL_ID = "ghlDnd1"


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(texting, ghl_dnd)
    return sync_world


def dnd_update(
    sms: str | None,
    *,
    at: str | None = None,
    contact_id: str = GHL_ID,
    phone: str | None = PERSON,
    call: str | None = "inactive",
) -> dict[str, Any]:
    """`contracts/ghl/webhooks/ContactDndUpdate.json`'s example, with our contact and statuses
    (a channel given None is left out)."""
    settings: dict[str, Any] = {}
    if call is not None:
        settings["Call"] = {"status": call, "message": "", "code": ""}
    if sms is not None:
        settings["SMS"] = {"status": sms, "message": "", "code": ""}
    payload: dict[str, Any] = {
        "type": "ContactDndUpdate",
        "id": contact_id,
        "firstName": "Dana",
        "dnd": True,
        "dndSettings": settings,
    }
    if at is not None:  # else the delivery stamps it now
        payload["timestamp"] = at
    if phone is not None:
        payload["phone"] = phone
    return payload


def ago(seconds: int) -> str:
    """A GHL webhook timestamp `seconds` ago (ingest refuses one outside ±300 s of now)."""
    moment = datetime.now(UTC) - timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stop_text(at: str = "2026-11-24T17:10:00.000Z") -> dict[str, Any]:
    """`contracts/verity/webhooks/texting.message.received*.json`: the person texts STOP."""
    return {
        "eventType": "message.received",
        "messageId": "tlx_DND_STOP",
        "conversationId": "chat_dnd",
        "direction": "inbound",
        "from": PERSON,
        "to": "+19195550000",
        "body": "STOP",
        "timestamp": at,
        "status": "received",
    }


async def history(world: SyncWorld, channel: str = "sms") -> list[tuple[str, str]]:
    """One channel's consent history, oldest first."""
    async with world.db.session() as session:
        rows = await session.scalars(
            select(OptoutEvent).where(OptoutEvent.channel == channel).order_by(OptoutEvent.event_at)
        )
        return [(row.status, row.source) for row in rows]


def _about(message: str | None, channel: str) -> bool:
    """Whether a sync_log row of a DND webhook is about `channel` (each row names its channel:
    "SMS DND: …", "… opted out of SMS …", "sms consent …"; "Call DND: …", "… voice DNC …")."""
    text = (message or "").lower()
    if channel == "sms":
        return "sms" in text
    return "call dnd" in text or "voice" in text or "power-dialer" in text


async def dnd_log(world: SyncWorld, channel: str | None = "sms") -> list[tuple[str, str | None]]:
    """The sync_log rows of the ContactDndUpdate events (the worker files each row under its
    event's id, `correlation_id`), oldest first; those about one channel, or all (None)."""
    async with world.db.session() as session:
        ids = [
            str(event_id)
            for event_id in await session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.event_type == "ContactDndUpdate")
            )
        ]
        rows = await session.execute(
            select(SyncLog.status, SyncLog.message)
            .where(SyncLog.correlation_id.in_(ids))
            .order_by(SyncLog.started_at)
        )
        return [(status, message) for status, message in rows if channel is None or _about(message, channel)]


async def all_done(world: SyncWorld) -> bool:
    async with world.db.session() as session:
        return set(await session.scalars(select(WebhookEvent.status))) == {"done"}


async def test_ghl_sms_dnd_on_opts_out_and_off_lifts(world: SyncWorld) -> None:
    """R-OPT-5: GHL SMS DND set active records an SMS opt-out of source `ghl` (reason DND, the
    webhook's own time); set inactive later, it lifts that GHL-sourced opt-out. Two decisions, two
    history rows."""
    opted_out_at = ago(120)
    await world.deliver_ghl(dnd_update("active", at=opted_out_at))
    await world.process()
    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source, state.reason) == ("opted_out", "ghl", "DND")
    assert state.last_event_at == datetime.fromisoformat(opted_out_at)
    assert not await sms_allowed(world.db, PERSON)

    await world.deliver_ghl(dnd_update("inactive", at=ago(60)))
    await world.process()
    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "ghl")
    assert await sms_allowed(world.db, PERSON)
    assert await history(world) == [("opted_out", "ghl"), ("opted_in", "ghl")]
    assert [status for status, _ in await dnd_log(world)] == ["success", "success"]
    assert await all_done(world)


async def test_ghl_dnd_off_does_not_lift_a_texting_stop(world: SyncWorld) -> None:
    """R-OPT-5: a texting STOP can be reversed only by the person's opt-in keyword or a manual
    action: GHL's SMS DND switched off afterwards (a newer event) leaves the number opted out, and
    the sync_log says why."""
    await world.deliver_texting(stop_text())
    await world.process()
    [contact] = [c for c in world.ghl.sim.snapshot()["contacts"] if c["phone"] == PERSON]

    await world.deliver_ghl(dnd_update("inactive", contact_id=contact["id"]))
    await world.process()

    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "texting")
    assert not await sms_allowed(world.db, PERSON)
    assert await history(world) == [("opted_out", "texting")]
    [(status, message)] = await dnd_log(world)
    assert status == "skipped"
    assert message is not None
    assert "texting opt-out can only be lifted" in message
    assert await all_done(world)


@pytest.mark.parametrize("other_modules", [(), (contacts,)], ids=["dnd-only", "with-contacts"])
async def test_the_echo_of_our_own_dnd_write_is_no_decision(
    world: SyncWorld, other_modules: tuple[Any, ...]
) -> None:
    """R-LOOP-1, R-OPT-5: after a texting STOP we set the GHL contact's SMS DND active; the
    `ContactDndUpdate` GHL itself posts about that write (simulator → real ingest) is our echo:
    skipped, not a GHL-sourced opt-out. Exactly one history row, the STOP's, stays in force
    (source texting), so no later GHL toggle can lift it. With the contacts flow also running,
    the `ContactUpdate` GHL sends with it is handled first; the outcome is the same."""
    world.use_modules(texting, ghl_dnd, *other_modules)
    world.ghl_sends_webhooks()
    await world.deliver_texting(stop_text())
    await world.process()
    await world.ghl_webhooks_delivered("ContactDndUpdate")
    await world.process()

    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "texting")
    assert await history(world) == [("opted_out", "texting")]
    [(status, message)] = await dnd_log(world)
    assert status == "skipped"
    if not other_modules:
        assert message == "SMS DND: echo of our own DND write"
    async with world.db.session() as session:
        assert (
            await session.scalar(
                select(func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.event_type == "ContactDndUpdate")
            )
            == 1
        )
    assert await all_done(world)


async def test_a_call_dnd_toggle_restating_sms_is_no_decision(world: SyncWorld) -> None:
    """R-OPT-5, R-OPT-6, R-LOOP-1: every ContactDndUpdate carries the whole dndSettings. After a
    STOP, the echo of our SMS DND write is skipped as such (one write, one echo); a GHL user then
    toggling Call DND re-states the SMS DND the STOP put there. That is no GHL decision either:
    the texting opt-out stays the one in force, with one history row."""
    await world.deliver_texting(stop_text())
    await world.process()
    [contact] = [c for c in world.ghl.sim.snapshot()["contacts"] if c["phone"] == PERSON]
    await world.deliver_ghl(dnd_update("active", at=ago(60), contact_id=contact["id"]))
    await world.process()
    await world.deliver_ghl(dnd_update("active", call="active", contact_id=contact["id"]))
    await world.process()
    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "texting")
    assert await history(world) == [("opted_out", "texting")]
    assert await history(world, "voice") == [("opted_out", "ghl")]  # the Call toggle: voice only
    assert await dnd_log(world) == [
        ("skipped", "SMS DND: echo of our own DND write"),
        ("skipped", "SMS DND: consent unchanged: SMS already opted_out by texting"),
    ]


@pytest.mark.parametrize(
    ("payload", "reasons"),
    [
        (dnd_update(None, call=None), ["no SMS or Call DND in the webhook"]),
        (
            dnd_update("active", phone=None),
            [
                "SMS DND: no valid phone: consent is keyed by E.164 number",
                "Call DND: no valid phone: consent is keyed by E.164 number",
            ],
        ),
        (
            dnd_update("active", phone="12", call=None),
            ["SMS DND: no valid phone: consent is keyed by E.164 number"],
        ),
        (
            dnd_update("inactive"),
            [
                "SMS DND: consent unchanged: SMS already opted_in (no opt-out recorded)",
                "Call DND: consent unchanged: voice already opted_in (no opt-out recorded)",
            ],
        ),
    ],
    ids=["no-channel", "no-phone", "invalid-phone", "nothing-to-lift"],
)
async def test_a_dnd_webhook_without_a_decision_is_skipped(
    world: SyncWorld, payload: dict[str, Any], reasons: list[str]
) -> None:
    """R-OPT-5, R-OPT-6: only the SMS or Call DND setting of a contact with a valid phone is a
    decision; neither setting, no phone, or `inactive` DND with no opt-out to lift end `done`
    with one skipped row per channel naming why, and nothing recorded on either channel."""
    await world.deliver_ghl(payload)
    await world.process()
    assert await history(world) == []
    assert await history(world, "voice") == []
    assert await ConsentStore(world.db).state("sms", PERSON) is None
    assert await ConsentStore(world.db).state("voice", PERSON) is None
    assert await dnd_log(world, None) == [("skipped", reason) for reason in reasons]
    assert await all_done(world)


@pytest.mark.parametrize("removes", [True, False], ids=["removes-from-dialer", "keeps-lists"])
async def test_ghl_sms_dnd_takes_the_person_off_the_dialer_when_configured(
    world: SyncWorld, removes: bool
) -> None:
    """R-OPT-3, R-AG-2: an SMS opt-out from GHL's SMS DND is an SMS opt-out like a STOP: with
    OPTOUT_REMOVES_FROM_DIALER=true the person's Aloware contact leaves every power-dialer list
    (one `ghl_to_aloware` row); without it, the lists are left alone."""
    sim = world.aloware.sim
    contact_id = sim.add_contact(PERSON, first_name="Dana")["id"]
    sim.lists[sim.add_list("DF_HOT")["id"]]["contact_ids"].append(contact_id)
    world.settings = world.settings.model_copy(update={"optout_removes_from_dialer": removes})

    await world.deliver_ghl(dnd_update("active", at=ago(30)))
    await world.process()

    assert not await sms_allowed(world.db, PERSON)
    assert (sim.lists_of(contact_id) == []) is removes
    assert contact_id in sim.contacts
    async with world.db.session() as session:
        directions = set(await session.scalars(select(SyncLog.direction)))
    assert ("ghl_to_aloware" in directions) is removes
    assert await all_done(world)
