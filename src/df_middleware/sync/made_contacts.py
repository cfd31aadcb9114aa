"""What a GHL contact the service made for a dialer contact is owed (R-AG-2, R-OPT-5, R-OPT-6).

GHL creates a contact with DND off and on no list. When the service makes one for an Aloware
contact (`sync/contacts_aloware`), the event that made it also owes it what the other flows would
have done had it existed: the consent decisions already in force for its number (a STOP texted
earlier, a DNC Aloware reported before the contact's creation reached us: break14d finding 5) as
GHL DND, and its agent's power-dialer lists.

These run on every attempt of that event, whatever ended its create: answered, answer lost and the
contact found by a search (break14c A3), or an earlier attempt whose list call failed (A2). The
effect ledger says which event made the contact (its `ghl:contact-for-aloware:<id>` record), and
both steps are set operations, so running them again changes only what differs.
"""

from __future__ import annotations

from typing import Literal

from df_middleware.consent.decisions import OPTED_OUT, Channel, ConsentState
from df_middleware.consent.store import ConsentStore
from df_middleware.db.types import utcnow
from df_middleware.sync.call_lists import SignalsTime, sync_contact_lists
from df_middleware.sync.effects import DONE, EffectLedger, skipped, success
from df_middleware.sync.identity import ContactMappings
from df_middleware.sync.optout import set_ghl_dnd
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, SyncLogEntry
from df_middleware.timestamps import believed_time, parse_iso8601

ALOWARE_TO_GHL = "aloware_to_ghl"
#: Each consent channel and the GHL DND channel that shows it.
DndName = Literal["SMS", "Call"]
DND_CHANNELS: tuple[tuple[Channel, DndName], ...] = (("sms", "SMS"), ("voice", "Call"))


def create_key(aloware_contact_id: str) -> str:
    """The ledger key of creating the GHL contact of an Aloware contact (R-IDEM-2)."""
    return f"ghl:contact-for-aloware:{aloware_contact_id}"


async def contact_it_made(ctx: HandlerContext, event: ClaimedEvent) -> str | None:
    """The live GHL contact this event made for its Aloware contact, or None (it made none, or
    the contact was deleted in GHL since: R-C-4, nothing is owed to it)."""
    made = await EffectLedger(ctx.db, event).lookup(create_key(event.entity_id or ""))
    if made is None or made.state != DONE or made.event_id != str(event.id) or made.target_id is None:
        return None
    mapping = await ContactMappings(ctx.db).by_ghl_id(made.target_id)
    if mapping is None or mapping.deleted_at is not None:
        return None
    return made.target_id


async def opt_outs_in_force(
    ctx: HandlerContext, phone: str, told: frozenset[Channel] = frozenset()
) -> list[tuple[Channel, DndName, ConsentState]]:
    """The number's opt-outs in force, each with the GHL DND channel that shows it (`told`: the
    channels left out). A consent lookup each; no remote call."""
    store = ConsentStore(ctx.db)
    found: list[tuple[Channel, DndName, ConsentState]] = []
    for channel, dnd_channel in DND_CHANNELS:
        if channel in told:
            continue
        state = await store.state(channel, phone)
        if state is not None and state.status == OPTED_OUT:
            found.append((channel, dnd_channel, state))
    return found


async def tell_consents_in_force(
    ctx: HandlerContext,
    event: ClaimedEvent,
    ghl_contact_id: str,
    phone: str | None,
    *,
    told: frozenset[Channel] = frozenset(),
) -> list[SyncLogEntry]:
    """R-OPT-5, R-OPT-6: an opt-out in force for the number on a channel is shown on the new GHL
    contact (SMS or Call DND active), remembered as our write. `told`: channels this event's own
    decision has told already.

    The decision is asked again after a DND write: an opt-out lifted meanwhile, whose own flow
    may already have told GHL, is not left overwritten by ours (the write is set back)."""
    ghl = ctx.connectors.ghl if ctx.connectors is not None else None
    if ghl is None or phone is None:
        return []
    store = ConsentStore(ctx.db)
    entries: list[SyncLogEntry] = []
    for channel, dnd_channel, state in await opt_outs_in_force(ctx, phone, told):
        started = utcnow()
        done = await set_ghl_dnd(ctx, ghl, ghl_contact_id, dnd_channel, "active")
        if done == "gone":
            entries += skipped(event, ALOWARE_TO_GHL, f"GHL contact {ghl_contact_id} not found").entries
            continue
        if done == "set" and not await _still_opted_out(store, channel, phone):
            # Lifted (a START, an operator) between our read and our write: the lift's own flow may
            # have told GHL before our write landed, so ours would outlive it. Set back.
            await set_ghl_dnd(ctx, ghl, ghl_contact_id, dnd_channel, "inactive")
            entry = success(
                event,
                ALOWARE_TO_GHL,
                f"GHL contact {dnd_channel} DND set back inactive: the number's {channel} opt-out was "
                "lifted while it was being shown",
                target_id=ghl_contact_id,
            )
            entry.started_at = started
            entries.append(entry)
            continue
        said = "set" if done == "set" else "already"
        entry = success(
            event,
            ALOWARE_TO_GHL,
            f"GHL contact {dnd_channel} DND {said} active: the number's {channel} opt-out in force "
            f"({state.reason or state.source})",
            target_id=ghl_contact_id,
        )
        entry.started_at = started
        entries.append(entry)
    return entries


async def _still_opted_out(store: ConsentStore, channel: Channel, phone: str) -> bool:
    state = await store.state(channel, phone)
    return state is not None and state.status == OPTED_OUT


async def place_on_lists(ctx: HandlerContext, ghl_contact_id: str) -> SyncLogEntry | None:
    """R-AG-2: the contact joins its agent's lists, from GHL's contact as it is now (owner, tags).

    The placement is dated by that contact's `dateUpdated` (GHL's clock, like GHL's event times,
    believed up to MAX_CLOCK_AHEAD ahead of ours; when missing or past that, by the moment we
    asked), not by our clock after the read: an owner a GHL user assigns
    after our read, applied meanwhile by another worker, is newer and wins (break14d finding 2);
    dated by our clock it could wrongly be older or newer than a GHL event (break14c A1, A5)."""
    ghl = ctx.connectors.ghl if ctx.connectors is not None else None
    if ghl is None:
        return await sync_contact_lists(ctx, ghl_contact_id)
    asked = utcnow()  # before the read: whatever GHL did after it is newer (break14e 2, 3)
    current = await ghl.get_contact(ghl_contact_id)
    if current is None:
        return await sync_contact_lists(ctx, ghl_contact_id)  # says "not found"
    signals = SignalsTime(at=believed_time(parse_iso8601(current.date_updated), asked), received_at=None)
    return await sync_contact_lists(
        ctx,
        ghl_contact_id,
        contact=current.model_dump(by_alias=True, exclude_none=True),
        whole=True,
        signals_time=signals,
    )
