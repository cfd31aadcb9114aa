"""Texting ⇄ GHL conversations (R-TXT-1…R-TXT-5), and the consent keywords people text (R-OPT-1).

Verity (the texting system) reports every SMS through webhooks; GHL shows them in the contact's
conversation through our custom SMS conversation provider, and asks us to send when an agent
texts from GHL (`ProviderOutboundMessage`). One person's events share an ordering key
(`phone:<E.164>`), so an agent's send, its `message.sent` echo and its `message.delivered`
receipt are processed one after the other, in that order.

- **R-TXT-1 `message.received`.** Resolve the sender's GHL contact (mapping → GHL by exact
  phone → create it with `POST /contacts/upsert`, an effect), upsert a texting-only contact
  mapping, find or create the conversation (its id cached in `ghl_conversations`), add the
  message (`type SMS`, provider id, `date` = the texting timestamp (`ghl_date`), `altId` = the texting id) as
  an effect keyed by the texting id, and record the `message_mappings` row (inbound).
- **R-TXT-2 `message.sent`.** A texting id we already map is our own send coming back (R-TXT-5):
  only the mapping's status changes, since GHL has no `sent` status and the message stays
  `pending` there until the receipt. Otherwise a person at Verity texted outside GHL: the message
  is added to the conversation once, with `direction: "outbound"`.
- **R-TXT-3 `message.delivered` / `message.failed`.** The mapping's status and GHL's
  (`failed` carries `{code, type: "saas", message}` from Verity's error code and text). A
  receipt for a message we never mapped is *skipped*, not retried: the ordering key already made
  its `message.sent` go first, so a missing mapping means that message never reached us (or its
  event was dead-lettered, where an operator replays it); retrying for up to MAX_ATTEMPTS could
  not change that and would only delay this number's later events.
- **R-TXT-4 Aloware mirror.** Aloware's API (contracts/aloware) has no call that records a
  text message against a contact, so with TEXTING_SYNC_TO_ALOWARE on, a mapped contact's message
  is recorded `skipped` with that reason, not pretended; with it off, `skipped: disabled`.
- **R-TXT-5 `ProviderOutboundMessage`**, an agent's SMS: `agent_sends.py` (registered here with
  the rest of texting). The `message_mappings` rows all these flows share: `message_mappings.py`.

Configuration gaps are never silent drops: GHL or Verity not configured at all follows the
registry's convention (skipped, saying which setting), while a half-configured flow that an
agent or a person is waiting on — GHL_CONVERSATION_PROVIDER_ID missing, or an agent's send with
no Verity client — dead-letters the event (an error row an operator sees and can replay once the
setting is fixed), and an agent's unsendable message is also set `failed` in GHL so the agent
sees it at once.

Database sessions are short and never held across a remote call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import (
    ContactUpsert,
    ConversationMessage,
    MessageStatus,
    ProviderError,
)
from df_middleware.connectors.http import RemoteNotFound, RemoteRejected
from df_middleware.errors import PermanentError
from df_middleware.sync.agent_send_given_up import (
    AGENT_TEXT_GIVEN_UP,
    SERVICE_SOURCE,
    given_up_follow_up,
    handle_agent_text_given_up,
)
from df_middleware.sync.agent_sends import (
    PROVIDER_ERROR_TYPE,
    PROVIDER_EVENT,
    confirm_late,
    ghl_for,
    handle_provider_outbound,
    late_confirmation,
    unconfirmed_dead_letter_of,
    unconfirmed_send_for,
)
from df_middleware.sync.call_lists import back_on_the_dialer
from df_middleware.sync.contacts import ghl_contact_gone
from df_middleware.sync.conversations import ConversationCache
from df_middleware.sync.effects import EffectLedger, skipped, success
from df_middleware.sync.identity import ContactMappings, PersonKeys, resolve_ghl_contact
from df_middleware.sync.message_mappings import (
    MessageMappings,
    location_of_send,
    own_send_of,
    status_advances,
)
from df_middleware.sync.optout import (
    consent_change_of,
    keyword_of,
    off_the_dialer,
    record_consent,
    reply_to_help,
    tell_ghl_sms_dnd,
)
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.sync.sequences import out_of_sequence
from df_middleware.texting_payload import TextingEvent, normalize_texting_payload
from df_middleware.timestamps import parse_iso8601

TEXTING_TO_GHL = "texting_to_ghl"
TEXTING_TO_ALOWARE = "texting_to_aloware"

MirrorDecision = Literal["disabled", "not_mapped", "no_api"]
SentBranch = Literal["echo", "own_send_unrecorded", "record_copy"]

# --- pure decisions --------------------------------------------------------------------------------


def texting_key(texting: TextingEvent, event: ClaimedEvent) -> str:
    """What identifies the texting message in effect keys: Verity's id, else (a payload without
    one) the stored event, so at least a replay of the same event never writes twice."""
    return texting.message_id or f"event:{event.id}"


def ghl_date(timestamp: str | None, received_at: datetime) -> str:
    """The message's `date` for GHL: the texting time in RFC 3339 with `Z` (GHL's schema refuses
    anything else, so an epoch number, "yesterday" or a zone-less time would dead-letter the text,
    and a STOP would never reach the conversation), else when the text reached us."""
    moment = parse_iso8601(timestamp) or received_at
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ghl_status_for(event_type: str) -> MessageStatus | None:
    """GHL's status for a texting receipt; None for `message.sent` (GHL has no `sent`)."""
    if event_type == "message.delivered":
        return "delivered"
    if event_type == "message.failed":
        return "failed"
    return None


def provider_error(error_code: str | None, error_message: str | None) -> ProviderError:
    """GHL's required `{code, type, message}` from Verity's error code and text (either may be
    missing in a payload; GHL refuses a failed status without all three)."""
    return ProviderError(
        code=error_code or "unknown",
        type=PROVIDER_ERROR_TYPE,
        message=error_message or "The texting system reported the message as failed",
    )


def sent_branch(mapped: bool, own_send: bool) -> SentBranch:
    """R-TXT-2: a mapped texting id is an echo; an unmapped one that our Verity send ledger knows
    is our own send whose mapping a crash lost; anything else was texted outside GHL."""
    if mapped:
        return "echo"
    if own_send:
        return "own_send_unrecorded"
    return "record_copy"


def mirror_decision(enabled: bool, aloware_contact_id: str | None) -> MirrorDecision:
    """R-TXT-4: what the Aloware mirror can do for a message."""
    if not enabled:
        return "disabled"
    if aloware_contact_id is None:
        return "not_mapped"
    return "no_api"


MIRROR_REASONS: dict[MirrorDecision, str] = {
    "disabled": "disabled (TEXTING_SYNC_TO_ALOWARE=false)",
    "not_mapped": "no Aloware contact mapped for this number",
    "no_api": "Aloware's API has no call that records a text message against a contact; not mirrored",
}


def _attachments(payload: Mapping[str, Any]) -> list[str]:
    """Media URLs of a texting payload (root, `message` or `data`; strings or `{url}` objects)."""
    urls: list[str] = []
    containers: list[Any] = [payload, payload.get("message"), payload.get("data")]
    for container in containers:
        if not isinstance(container, Mapping):
            continue
        for key in ("attachments", "mediaUrls", "media"):
            items = container.get(key)
            if not isinstance(items, list):
                continue
            for item in items:
                url = item.get("url") if isinstance(item, Mapping) else item
                if isinstance(url, str) and url.strip() and url.strip() not in urls:
                    urls.append(url.strip())
    return urls


# --- shared steps ------------------------------------------------------------------------------------


def _provider_id(ctx: HandlerContext) -> str:
    provider = ctx.settings.ghl_conversation_provider_id
    if not provider:
        raise PermanentError(
            "GHL_CONVERSATION_PROVIDER_ID is not set: texts cannot be added to GHL conversations; "
            "set it and replay this event"
        )
    return provider


@dataclass
class Person:
    ghl_contact_id: str
    aloware_contact_id: str | None
    #: The contact's DND settings as GHL answered the upsert that created it in this run (so a
    #: consent write need not read them again); None when the contact was found, not created.
    created_dnd: Mapping[str, Any] | None = None


async def person_in_ghl(
    ctx: HandlerContext,
    event: ClaimedEvent,
    ghl: GhlClient,
    ledger: EffectLedger,
    phone: str,
    effect_key: str,
    entries: list[SyncLogEntry],
    *,
    source: str = "SMS",
) -> Person:
    """The person's GHL contact, created when unknown (an effect under `effect_key`, the contact's
    `source` saying why it exists), mapping upserted."""
    mappings = ContactMappings(ctx.db)
    keys = PersonKeys(phone, None)
    resolved = await resolve_ghl_contact(mappings, ghl, keys)
    created_dnd: Mapping[str, Any] | None = None
    if resolved is None:

        async def create() -> str:
            nonlocal created_dnd
            answer = await ghl.upsert_contact(
                ContactUpsert(location_id=ghl.location_id, phone=phone, source=source)
            )
            created_dnd = answer.contact.dnd_settings or {}
            return answer.contact.id

        async def find_existing() -> str | None:
            found = await ghl.find_contact(phone=phone)
            return found.id if found is not None else None

        outcome = await ledger.perform(effect_key, "ghl", create, find_existing=find_existing)
        contact_id = outcome.target_id
        if contact_id is None:  # pragma: no cover - create() always returns an id
            raise PermanentError(f"no GHL contact id recorded for {effect_key}")
        if not outcome.already_done:
            entries.append(
                success(
                    event,
                    ctx.direction,
                    "GHL contact upserted for the number (none matched the phone)",
                    target_id=contact_id,
                    entity_type="contact",
                    entity_id=phone,
                )
            )
    else:
        contact_id = resolved.ghl_contact_id
        if resolved.via != "mapping":  # found in GHL: maybe by an interrupted create of ours
            await ledger.settle_found(effect_key, "ghl", contact_id)
    # A person already mapped (by a contact sync, or an earlier text) keeps the row as it is; only
    # a newly found or created contact gets a (phone-only) mapping.
    mapping = (
        await mappings.by_ghl_id(contact_id) if resolved is not None and resolved.via == "mapping" else None
    )
    if mapping is None:
        mapping = await mappings.upsert(ghl_contact_id=contact_id, keys=keys, direction=ctx.direction)
    return Person(contact_id, mapping.aloware_contact_id, created_dnd)


async def _add_to_conversation(
    ctx: HandlerContext,
    ghl: GhlClient,
    ledger: EffectLedger,
    person: Person,
    texting: TextingEvent,
    event: ClaimedEvent,
    key: str,
    direction: Literal["inbound", "outbound"],
) -> tuple[str, str, bool]:
    """Add the text to the person's conversation once (effect keyed by the texting id).

    Returns (GHL message id, conversation id, whether it was already there). A cached
    conversation GHL no longer knows (deleted) is replaced by a fresh search-or-create.
    """
    provider = _provider_id(ctx)
    messages = MessageMappings(ctx.db)
    conversations = ConversationCache(ctx.db)
    conversation_id = await conversations.conversation_for(ghl, person.ghl_contact_id)
    attachments = _attachments(event.payload)

    def message(conversation: str) -> ConversationMessage:
        return ConversationMessage(
            conversation_id=conversation,
            contact_id=person.ghl_contact_id,
            conversation_provider_id=provider,
            message=texting.body or "",
            attachments=attachments or None,
            alt_id=texting.message_id,
            date=ghl_date(texting.timestamp, event.received_at),
            direction=direction,
        )

    async def add() -> str:
        nonlocal conversation_id
        result, conversation_id = await conversations.in_conversation(
            ghl,
            person.ghl_contact_id,
            lambda conversation: ghl.add_message(message(conversation)),
            conversation_id=conversation_id,
        )
        await conversations.remember(person.ghl_contact_id, result.conversation_id, ghl.location_id)
        return result.message_id

    async def already_mapped() -> str | None:
        mapped = await messages.by_texting_id(key) if texting.message_id else None
        if mapped is not None:
            return mapped.ghl_message_id
        # Added by an earlier run whose answer was lost: GHL has it (our altId, or text and date).
        nonlocal conversation_id

        async def look_in(conversation: str) -> str | None:
            sent = message(conversation)
            return await ghl.find_message(
                conversation,
                alt_id=sent.alt_id,
                body=sent.message or "",
                date=sent.date,
                message_type="TYPE_SMS",
            )

        found, conversation_id = await conversations.in_conversation(
            ghl, person.ghl_contact_id, look_in, conversation_id=conversation_id
        )
        return found

    outcome = await ledger.perform(f"ghl:message:texting:{key}", "ghl", add, find_existing=already_mapped)
    if outcome.target_id is None:  # pragma: no cover - add() always returns an id
        raise PermanentError(f"no GHL message id recorded for texting message {key}")
    return outcome.target_id, conversation_id, outcome.already_done


def _mirror_entry(ctx: HandlerContext, event: ClaimedEvent, aloware_contact_id: str | None) -> SyncLogEntry:
    decision = mirror_decision(ctx.settings.texting_sync_to_aloware, aloware_contact_id)
    return skipped(event, TEXTING_TO_ALOWARE, MIRROR_REASONS[decision]).entries[0]


def _no_ghl(event: ClaimedEvent, direction: str) -> HandlerResult:
    return skipped(event, direction, "GHL not configured (GHL_LOCATION_ID and GHL_API_KEY or OAuth)")


async def _record_text_in_ghl(
    ctx: HandlerContext,
    event: ClaimedEvent,
    texting: TextingEvent,
    direction: Literal["inbound", "outbound"],
    *,
    first: Callable[[GhlClient, Person], Awaitable[list[SyncLogEntry]]] | None = None,
) -> HandlerResult:
    """R-TXT-1 / R-TXT-2: put a text that happened at Verity into the person's GHL conversation;
    `first(ghl, person)` runs on the person's GHL contact before the text is added (the consent
    flow sets its DND there: what an agent must see comes before the record of how it came about,
    three GHL round trips sooner), and its rows join the result."""
    ghl = ghl_for(ctx)
    if ghl is None:
        return _no_ghl(event, ctx.direction)
    phone = texting.from_number if direction == "inbound" else texting.to_number
    if phone is None:
        side = "sender" if direction == "inbound" else "recipient"
        return skipped(event, ctx.direction, f"no valid {side} phone number")
    _provider_id(ctx)  # fail before any write when the flow cannot finish
    key = texting_key(texting, event)
    ledger = EffectLedger(ctx.db, event)
    entries: list[SyncLogEntry] = []
    told: list[SyncLogEntry] = []
    for last in (False, True):
        person: Person | None = None
        try:
            contact_key = f"ghl:contact:texting:{key}"
            person = await person_in_ghl(ctx, event, ghl, ledger, phone, contact_key, entries)
            told = await first(ghl, person) if first is not None else []
            ghl_message_id, conversation_id, already = await _add_to_conversation(
                ctx, ghl, ledger, person, texting, event, key, direction
            )
            break
        except RemoteRejected:
            # The person's contact was deleted in GHL (its ContactDelete not processed yet, or
            # never sent): retire it (R-C-4) and put the text on the person's live contact.
            gone = person.ghl_contact_id if person is not None else None
            if last or gone is None or not await ghl_contact_gone(ctx, ghl, gone):
                raise
            entries.append(
                success(
                    event,
                    ctx.direction,
                    f"GHL contact {gone} no longer exists in GHL: mapping marked deleted (R-C-4)",
                    target_id=gone,
                    entity_type="contact",
                )
            )
    assert person is not None
    entries += told
    await MessageMappings(ctx.db).record(
        texting_message_id=texting.message_id,
        ghl_message_id=ghl_message_id,
        direction=direction,
        status="received" if direction == "inbound" else "sent",
        conversation_id=conversation_id,
        ghl_contact_id=person.ghl_contact_id,
        from_number=texting.from_number,
        to_number=texting.to_number,
    )
    if already:
        entries.append(
            skipped(event, ctx.direction, "already in the GHL conversation (recorded effect)").entries[0]
        )
    else:
        what = "inbound SMS added" if direction == "inbound" else "outbound SMS (sent outside GHL) added"
        entries.append(success(event, ctx.direction, f"{what} to GHL conversation", target_id=ghl_message_id))
    entries.append(_mirror_entry(ctx, event, person.aloware_contact_id))
    return HandlerResult(entries=entries, effects=list(ledger.performed))


# --- handlers ---------------------------------------------------------------------------------------


async def handle_message_received(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Verity `message.received` (R-TXT-1, R-TXT-4): a person's SMS into their GHL conversation.

    Effects: maybe a GHL contact (upsert, keyed by the texting id), one GHL inbound message
    (keyed by the texting id); contact and message mappings upserted.
    """
    ctx.direction = TEXTING_TO_GHL
    texting = normalize_texting_payload(event.payload, ctx.settings.default_phone_region)
    match = keyword_of(event.event_type, texting.body)
    change = consent_change_of(event, texting, match)
    first: list[SyncLogEntry] = []
    in_force = False  # the change is the decision in force, applied now or by an earlier run
    if change is not None:
        # The decision first: a local write that cannot wait on GHL, and from its commit on every
        # send to the number is refused (R-OPT-4). A retry after GHL failed still tells GHL.
        outcome, decided = await record_consent(ctx, event, change)
        first.append(decided)
        in_force = outcome.holds(change)

    async def tell_ghl(ghl: GhlClient, person: Person) -> list[SyncLogEntry]:
        if change is None or not in_force:
            return []
        return [
            await tell_ghl_sms_dnd(ctx, event, ghl, person.ghl_contact_id, change, shown=person.created_dnd)
        ]

    result = await _record_text_in_ghl(ctx, event, texting, "inbound", first=tell_ghl)
    after: list[SyncLogEntry] = []
    phone = texting.from_number
    if match is not None and match.kind == "help" and phone is not None:
        after.append(await reply_to_help(ctx, event, phone))
    opted_out = change is not None and in_force and change.status == "opted_out"
    if change is not None and opted_out:
        after.extend(await out_of_sequence(ctx, event, change.phone))
    if change is not None and opted_out and ctx.settings.optout_removes_from_dialer:
        after.append(await off_the_dialer(ctx, event, change.phone))
    elif change is not None and in_force and ctx.settings.optout_removes_from_dialer:
        back = await back_on_the_dialer(
            ctx, change.phone, because="texted START", direction=TEXTING_TO_ALOWARE
        )
        after.extend([back] if back is not None else [])
    return HandlerResult(
        entries=[*first, *result.entries, *after], effects=result.effects, resolves=result.resolves
    )


async def handle_message_sent(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Verity `message.sent` (R-TXT-2): our own send's echo updates the mapping only; a text sent
    outside GHL is added to the conversation as outbound, once.

    Effects: for a text sent outside GHL, those of R-TXT-1 with `direction: "outbound"`.
    """
    ctx.direction = TEXTING_TO_GHL
    texting = normalize_texting_payload(event.payload, ctx.settings.default_phone_region)
    messages = MessageMappings(ctx.db)
    mapped = await messages.by_texting_id(texting.message_id) if texting.message_id else None
    own_ghl_id = (
        await own_send_of(ctx.db, texting.message_id) if mapped is None and texting.message_id else None
    )
    branch = sent_branch(mapped is not None, own_ghl_id is not None)
    if branch == "record_copy" and texting.message_id is not None:
        unconfirmed = await unconfirmed_send_for(
            ctx.db,
            texting.to_number,
            texting.body,
            ctx.settings.default_phone_region,
            sent_at=parse_iso8601(texting.timestamp) or event.received_at,
        )
        if unconfirmed is not None:
            return await confirm_late(ctx, event, texting, unconfirmed)
    if branch == "record_copy":
        return await _record_text_in_ghl(ctx, event, texting, "outbound")
    assert texting.message_id is not None  # both other branches found it by this id
    await messages.record(
        texting_message_id=texting.message_id,
        ghl_message_id=own_ghl_id,
        direction="outbound",
        status="sent",
        from_number=texting.from_number,
        to_number=texting.to_number,
    )
    ghl_id = mapped.ghl_message_id if mapped is not None else own_ghl_id
    message = "sent: mapping updated (our own send; GHL has no 'sent' status, it stays pending)"
    # A late confirmation whose outcome was never committed (see `confirm_late`): this retry
    # finds the send recorded and mapped, and its dead letter still open.
    dead_letter = await unconfirmed_dead_letter_of(ctx.db, ghl_id) if ghl_id is not None else None
    resolves = []
    if dead_letter is not None:
        resolves.append(late_confirmation(dead_letter, texting.message_id))
        message += f"; dead letter {dead_letter} of its unconfirmed send resolved"
    return HandlerResult(
        entries=[success(event, ctx.direction, message, target_id=ghl_id)], resolves=resolves
    )


async def handle_message_status(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Verity `message.delivered` / `message.failed` (R-TXT-3): the mapping's status and GHL's.

    Effects: `PUT /conversations/messages/{id}/status` (idempotent, so not ledgered). A receipt
    for a message we never mapped is skipped (see the module docstring for why not retried).
    """
    ctx.direction = TEXTING_TO_GHL
    texting = normalize_texting_payload(event.payload, ctx.settings.default_phone_region)
    status = ghl_status_for(event.event_type.lower())
    if status is None or texting.message_id is None:
        return skipped(event, ctx.direction, "status event without a message id")
    messages = MessageMappings(ctx.db)
    mapped = await messages.by_texting_id(texting.message_id)
    ghl_message_id = mapped.ghl_message_id if mapped is not None else None
    if ghl_message_id is None:
        ghl_message_id = await own_send_of(ctx.db, texting.message_id)
    if ghl_message_id is None:
        return skipped(
            event,
            ctx.direction,
            f"unknown message: no mapping for texting message {texting.message_id} "
            "(its message.sent never reached the middleware or was dead-lettered)",
        )
    if mapped is not None and not status_advances(mapped.status, status):
        return skipped(event, ctx.direction, f"already {mapped.status}")
    ghl = ghl_for(ctx, await location_of_send(ctx.db, ghl_message_id))
    if ghl is None:
        return _no_ghl(event, ctx.direction)
    error = provider_error(texting.error_code, texting.error_message) if status == "failed" else None
    try:
        await ghl.update_message_status(ghl_message_id, status, error=error)
    except RemoteNotFound:
        await messages.set_status(texting.message_id, status)
        return skipped(
            event, ctx.direction, f"GHL message {ghl_message_id} no longer exists; mapping {status}"
        )
    await messages.record(
        texting_message_id=texting.message_id,
        ghl_message_id=ghl_message_id,
        direction="outbound",
        status=status,
    )
    detail = f" ({error.code}: {error.message})" if error is not None else ""
    return HandlerResult(
        entries=[
            success(event, ctx.direction, f"GHL message status {status}{detail}", target_id=ghl_message_id)
        ]
    )


def register_handlers(registry: HandlerRegistry) -> None:
    registry.register("texting", "message.received", "optout.stop", "optout.help")(handle_message_received)
    registry.register("texting", "message.sent")(handle_message_sent)
    registry.register("texting", "message.delivered", "message.failed")(handle_message_status)
    registry.register("ghl", PROVIDER_EVENT)(handle_provider_outbound)
    registry.on_dead_letter("ghl", PROVIDER_EVENT)(given_up_follow_up)
    registry.register(SERVICE_SOURCE, AGENT_TEXT_GIVEN_UP)(handle_agent_text_given_up)
