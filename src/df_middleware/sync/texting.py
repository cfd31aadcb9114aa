"""Texting ⇄ GHL conversations (R-TXT-1…R-TXT-5), and the outbound side of R-OPT-4.

Verity (the texting system) reports every SMS through webhooks; GHL shows them in the contact's
conversation through our custom SMS conversation provider, and asks us to send when an agent
texts from GHL (`ProviderOutboundMessage`). One person's events share an ordering key
(`phone:<E.164>`), so an agent's send, its `message.sent` echo and its `message.delivered`
receipt are processed one after the other, in that order.

- **R-TXT-1 `message.received`.** Resolve the sender's GHL contact (mapping → GHL by exact
  phone → create it with `POST /contacts/upsert`, an effect), upsert a texting-only contact
  mapping, find or create the conversation (its id cached in `ghl_conversations`), add the
  message (`type SMS`, provider id, `date` = the texting timestamp, `altId` = the texting id) as
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
- **R-TXT-5 `ProviderOutboundMessage`.** Normalise the phone; refuse a number whose
  `optout_registry` status is `opted_out` (the GHL message is set `failed`, code `opted_out`);
  else send once through Verity (effect `verity:send:<GHL message id>`), and record the mapping
  (GHL id ↔ texting id, `pending`) at once, so the receipts find it.

Configuration gaps are never silent drops: GHL or Verity not configured at all follows the
registry's convention (skipped, saying which setting), while a half-configured flow that an
agent or a person is waiting on — GHL_CONVERSATION_PROVIDER_ID missing, or an agent's send with
no Verity client — dead-letters the event (an error row an operator sees and can replay once the
setting is fixed), and an agent's unsendable message is also set `failed` in GHL so the agent
sees it at once.

Database sessions are short and never held across a remote call.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import (
    ContactUpsert,
    ConversationMessage,
    MessageStatus,
    ProviderError,
)
from df_middleware.connectors.http import RemoteNotFound, RemoteRejected, write_not_made
from df_middleware.connectors.verity import VerityClient
from df_middleware.consent.sending import send_sms
from df_middleware.consent.store import sms_allowed
from df_middleware.db.models import MessageMapping, SyncEffect, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import OptedOut, PermanentError, RetryableError
from df_middleware.phones import normalize_phone
from df_middleware.sync.contacts import ghl_contact_gone
from df_middleware.sync.conversations import ConversationCache
from df_middleware.sync.effects import EffectLedger, EffectMaybeDone, record_effect, skipped, success
from df_middleware.sync.identity import ContactMappings, PersonKeys, resolve_ghl_contact
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
    EventResolution,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.texting_payload import TextingEvent, normalize_texting_payload
from df_middleware.timestamps import parse_iso8601

TEXTING_TO_GHL = "texting_to_ghl"
GHL_TO_TEXTING = "ghl_to_texting"
TEXTING_TO_ALOWARE = "texting_to_aloware"

PROVIDER_EVENT = "ProviderOutboundMessage"
#: GHL's ErrorDto example and the only type our provider reports: the failure is on our side of
#: the provider integration (carrier, consent, configuration), not GHL's.
PROVIDER_ERROR_TYPE = "saas"
REFUSED_BEFORE = "refused before (GHL message failed): a refused text is never sent later"
#: Effect key prefix of Verity sends (R-TXT-5); the rest is the GHL message id.
SEND_EFFECT_PREFIX = "verity:send:"
#: What the error message of a dead-lettered send Verity never confirmed says (`_send`).
UNCONFIRMED_ERROR = "Verity send not confirmed"
#: How long after it a `message.sent` with the same number and text is taken for that send.
UNCONFIRMED_WINDOW = timedelta(hours=24)
#: How far Verity's clock may be behind ours when comparing its send time with our request's.
CLOCK_SKEW = timedelta(minutes=5)
OPTED_OUT_ERROR = ProviderError(
    code="opted_out", type=PROVIDER_ERROR_TYPE, message="Recipient has opted out of SMS"
)
#: Message lifecycle ranks: a status never moves backwards (a replayed `sent` after `delivered`).
_STATUS_RANK: dict[str, int] = {"pending": 0, "received": 1, "sent": 1, "delivered": 2, "failed": 2}

MirrorDecision = Literal["disabled", "not_mapped", "no_api"]
SendFailure = Literal["not_sent", "unknown"]
SentBranch = Literal["echo", "own_send_unrecorded", "record_copy"]


# --- pure decisions --------------------------------------------------------------------------------


def texting_key(texting: TextingEvent, event: ClaimedEvent) -> str:
    """What identifies the texting message in effect keys: Verity's id, else (a payload without
    one) the stored event, so at least a replay of the same event never writes twice."""
    return texting.message_id or f"event:{event.id}"


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


def status_advances(current: str | None, new: str) -> bool:
    """Whether moving a mapping from `current` to `new` is progress (same or older: no-op)."""
    if current is None:
        return True
    return _STATUS_RANK.get(new, 0) > _STATUS_RANK.get(current, 0)


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


def classify_send_failure(exc: Exception) -> SendFailure:
    """Whether a failed Verity send certainly did not go out (safe to retry) or may have.

    Refusals before any processing (429, 503, 401, a 4xx) and failures to connect did not send
    (`write_not_made`). A timeout after the request left, a 500/502/504, or a broken connection
    may have sent it, and a retry could text the person twice, so those are not retried.
    """
    return "not_sent" if write_not_made(exc) else "unknown"


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


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


# --- message_mappings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageView:
    """A message_mappings row as handlers see it (detached from any session)."""

    texting_message_id: str | None
    ghl_message_id: str | None
    conversation_id: str | None
    ghl_contact_id: str | None
    status: str | None

    @classmethod
    def of(cls, row: MessageMapping) -> MessageView:
        return cls(
            texting_message_id=row.texting_message_id,
            ghl_message_id=row.ghl_message_id,
            conversation_id=row.conversation_id,
            ghl_contact_id=row.ghl_contact_id,
            status=row.status,
        )


class MappingRace(RetryableError):
    """Two writers recorded the same message at once; the retry finds the row the other wrote."""


class MessageMappings:
    """Reads and upserts of `message_mappings` (one row per message across the systems)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_texting_id(self, texting_message_id: str) -> MessageView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(MessageMapping).where(MessageMapping.texting_message_id == texting_message_id)
            )
            return MessageView.of(row) if row is not None else None

    async def by_ghl_id(self, ghl_message_id: str) -> MessageView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(MessageMapping).where(MessageMapping.ghl_message_id == ghl_message_id)
            )
            return MessageView.of(row) if row is not None else None

    async def record(
        self,
        *,
        texting_message_id: str | None,
        ghl_message_id: str | None,
        direction: str,
        status: str,
        conversation_id: str | None = None,
        ghl_contact_id: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        force_status: bool = False,
    ) -> None:
        """Create or complete the message's row, found by texting id then GHL id; known values
        are never replaced by None, and the status only moves forward (unless `force_status`: a
        fresh send after an earlier refusal starts the message's life again)."""
        try:
            async with self.db.session() as session:
                row: MessageMapping | None = None
                if texting_message_id is not None:
                    row = await session.scalar(
                        select(MessageMapping).where(MessageMapping.texting_message_id == texting_message_id)
                    )
                if row is None and ghl_message_id is not None:
                    row = await session.scalar(
                        select(MessageMapping).where(MessageMapping.ghl_message_id == ghl_message_id)
                    )
                if row is None:
                    row = MessageMapping(direction=direction)
                    session.add(row)
                values = {
                    "texting_message_id": texting_message_id,
                    "ghl_message_id": ghl_message_id,
                    "conversation_id": conversation_id,
                    "ghl_contact_id": ghl_contact_id,
                    "from_number": from_number,
                    "to_number": to_number,
                }
                for name, value in values.items():
                    if value is not None:
                        setattr(row, name, value)
                if force_status or status_advances(row.status, status):
                    row.status = status
                    row.status_updated_at = utcnow()
                await session.flush()
        except IntegrityError as exc:
            raise MappingRace(
                f"message mapping for texting {texting_message_id} / GHL {ghl_message_id} "
                "was written concurrently; retrying"
            ) from exc

    async def set_status(self, texting_message_id: str, status: str) -> None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(MessageMapping).where(MessageMapping.texting_message_id == texting_message_id)
            )
            if row is not None and status_advances(row.status, status):
                row.status = status
                row.status_updated_at = utcnow()


async def own_send_of(db: Database, texting_message_id: str) -> str | None:
    """The GHL message id whose Verity send produced this texting id, from the effect ledger.

    The send is recorded the moment Verity answers, before the mapping is written; a crash in
    between leaves only this, and it still tells an echo from a message texted outside GHL.
    """
    async with db.session() as session:
        key: str | None = await session.scalar(
            select(SyncEffect.effect_key).where(
                SyncEffect.target_system == "verity",
                SyncEffect.target_id == texting_message_id,
                SyncEffect.effect_key.like(f"{SEND_EFFECT_PREFIX}%"),
            )
        )
    return key.removeprefix(SEND_EFFECT_PREFIX) if key is not None else None


async def _event_of_send(session: AsyncSession, ghl_message_id: str) -> uuid.UUID | None:
    """The provider delivery event whose send of this GHL message is recorded, if any."""
    event_id = await session.scalar(
        select(SyncEffect.event_id).where(SyncEffect.effect_key == f"{SEND_EFFECT_PREFIX}{ghl_message_id}")
    )
    if event_id is None:
        return None
    try:
        return uuid.UUID(str(event_id))
    except ValueError:
        return None


async def location_of_send(db: Database, ghl_message_id: str) -> str | None:
    """The GHL location an agent's message came from (its provider delivery's `locationId`), so
    receipts of OAuth-installed locations update the right sub-account; None: GHL_LOCATION_ID."""
    async with db.session() as session:
        key = await _event_of_send(session, ghl_message_id)
        if key is None:
            return None
        payload = await session.scalar(select(WebhookEvent.payload_json).where(WebhookEvent.id == key))
    location = payload.get("locationId") if isinstance(payload, Mapping) else None
    return location if isinstance(location, str) and location else None


# --- shared steps ------------------------------------------------------------------------------------


def _ghl(ctx: HandlerContext, location_id: object = None) -> GhlClient | None:
    if ctx.connectors is None:
        return None
    if isinstance(location_id, str) and location_id:
        return ctx.connectors.ghl_for(location_id)
    return ctx.connectors.ghl


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
    if resolved is None:

        async def create() -> str:
            answer = await ghl.upsert_contact(
                ContactUpsert(location_id=ghl.location_id, phone=phone, source=source)
            )
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
    return Person(contact_id, mapping.aloware_contact_id)


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
            date=texting.timestamp or event.received_at.isoformat(),
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
    then: Callable[[GhlClient, str], Awaitable[list[SyncLogEntry]]] | None = None,
) -> HandlerResult:
    """R-TXT-1 / R-TXT-2: put a text that happened at Verity into the person's GHL conversation;
    `then(ghl, contact id)` runs after, on the person's GHL contact (the consent flow sets its DND
    there), and its rows join the result."""
    ghl = _ghl(ctx)
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
    for last in (False, True):
        person: Person | None = None
        try:
            contact_key = f"ghl:contact:texting:{key}"
            person = await person_in_ghl(ctx, event, ghl, ledger, phone, contact_key, entries)
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
    if then is not None:
        entries += await then(ghl, person.ghl_contact_id)
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

    async def tell_ghl(ghl: GhlClient, ghl_contact_id: str) -> list[SyncLogEntry]:
        if change is None or not in_force:
            return []
        return [await tell_ghl_sms_dnd(ctx, event, ghl, ghl_contact_id, change)]

    result = await _record_text_in_ghl(ctx, event, texting, "inbound", then=tell_ghl)
    after: list[SyncLogEntry] = []
    phone = texting.from_number
    if match is not None and match.kind == "help" and phone is not None:
        after.append(await reply_to_help(ctx, event, phone))
    opted_out = change is not None and in_force and change.status == "opted_out"
    if change is not None and opted_out and ctx.settings.optout_removes_from_dialer:
        after.append(await off_the_dialer(ctx, event, change.phone))
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
            return await _confirm_late(ctx, event, texting, unconfirmed)
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
    # A late confirmation whose outcome was never committed (see `_confirm_late`): this retry
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
    ghl = _ghl(ctx, await location_of_send(ctx.db, ghl_message_id))
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


async def handle_provider_outbound(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ProviderOutboundMessage` (R-TXT-5, R-OPT-4): an agent's SMS, sent once through Verity.

    Effects: one Verity send (keyed `verity:send:<GHL message id>`) and its message mapping, or,
    when the message cannot be sent (opted out, invalid number, no text, no Verity), the GHL
    message set `failed` with the reason and nothing sent.
    """
    ctx.direction = GHL_TO_TEXTING
    payload = event.payload
    ghl_message_id = _text(payload.get("messageId")) or event.entity_id
    if not ghl_message_id:
        return skipped(event, ctx.direction, "provider delivery without a messageId")
    kind = _text(payload.get("type"))
    if kind is not None and kind.upper() != "SMS":
        return skipped(event, ctx.direction, f"not an SMS (type {kind}): our provider sends SMS only")
    ghl = _ghl(ctx, payload.get("locationId"))
    messages = MessageMappings(ctx.db)
    existing = await messages.by_ghl_id(ghl_message_id)
    if existing is not None and existing.texting_message_id is not None:
        return skipped(event, ctx.direction, f"already sent as texting message {existing.texting_message_id}")
    if existing is not None and existing.status == "failed":
        # Refused before (opted out, invalid number, no text) and shown failed to the agent: a
        # refusal is final. A replay after the person texted START must not send an old text the
        # agent saw fail; the agent writes again if they still want to (R-OPT-4, R-IDEM-1).
        return skipped(event, ctx.direction, REFUSED_BEFORE)
    phone = normalize_phone(payload.get("phone"), ctx.settings.default_phone_region)
    contact_id = _text(payload.get("contactId"))
    conversation_id = _text(payload.get("conversationId"))
    body = outbound_body(payload)

    async def refuse(error: ProviderError, reason: str) -> HandlerResult:
        if ghl is not None:
            await ghl.update_message_status(ghl_message_id, "failed", error=error)
        await messages.record(
            texting_message_id=None,
            ghl_message_id=ghl_message_id,
            direction="outbound",
            status="failed",
            conversation_id=conversation_id,
            ghl_contact_id=contact_id,
            to_number=phone,
        )
        return skipped(event, ctx.direction, f"not sent: {reason}; GHL message set failed ({error.code})")

    if phone is None:
        return await refuse(
            ProviderError(
                code="invalid_phone", type=PROVIDER_ERROR_TYPE, message="Recipient phone number is not valid"
            ),
            "invalid phone number",
        )
    if not await sms_allowed(ctx.db, phone):  # at send time, every send (R-OPT-4)
        return await refuse(OPTED_OUT_ERROR, "recipient opted out of SMS (R-OPT-4)")
    if not body:
        return await refuse(
            ProviderError(code="empty_message", type=PROVIDER_ERROR_TYPE, message="Message has no text"),
            "empty message",
        )
    verity = ctx.connectors.verity if ctx.connectors is not None else None
    if verity is None:
        if ghl is not None:
            await ghl.update_message_status(
                ghl_message_id,
                "failed",
                error=ProviderError(
                    code="not_configured",
                    type=PROVIDER_ERROR_TYPE,
                    message="SMS sending is not configured in DF-Middleware",
                ),
            )
        raise PermanentError(
            "Verity is not configured (VERITY_BASE_URL and VERITY_API_KEY): the agent's SMS was not "
            "sent and its GHL message set failed; configure Verity and replay to send it"
        )
    ledger = EffectLedger(ctx.db, event)
    try:
        outcome = await ledger.perform(
            f"{SEND_EFFECT_PREFIX}{ghl_message_id}",
            "verity",
            lambda: _send(ctx.db, verity, ghl, phone, body, ghl_message_id),
        )
    except OptedOut:
        # Opted out after the check above (an operator's action meanwhile): consent is asked
        # again at the very send (R-OPT-4), and nothing left.
        return await refuse(OPTED_OUT_ERROR, "recipient opted out of SMS (R-OPT-4)")
    except EffectMaybeDone as exc:
        # An earlier run asked Verity to send and was interrupted (killed, or cancelled at
        # shutdown) before the answer was recorded: the text may be out. Never sent again.
        raise await _hold_unconfirmed(ghl, ghl_message_id, "an earlier run was interrupted mid-send") from exc
    texting_message_id = outcome.target_id
    await messages.record(
        texting_message_id=texting_message_id,
        ghl_message_id=ghl_message_id,
        direction="outbound",
        status="pending",
        conversation_id=conversation_id,
        ghl_contact_id=contact_id,
        to_number=phone,
        force_status=not outcome.already_done,
    )
    message = "SMS sent through Verity" if not outcome.already_done else "SMS already sent (recorded effect)"
    entry = success(event, ctx.direction, message, target_id=texting_message_id)
    return HandlerResult(entries=[entry], effects=list(ledger.performed))


async def _send(
    db: Database, verity: VerityClient, ghl: GhlClient | None, phone: str, body: str, ghl_message_id: str
) -> str:
    """One Verity send. A refusal (4xx) sets the GHL message failed with Verity's reason and
    dead-letters; a failure that certainly did not send is retried by the worker; one that may
    have sent is never retried automatically (the GHL message is set failed and the event
    dead-lettered, so an operator checks Verity before replaying: a replay sends again)."""
    try:
        sent = await send_sms(db, verity, phone, body, correlation_id=ghl_message_id)
    except RemoteRejected as exc:
        if ghl is not None:
            await ghl.update_message_status(
                ghl_message_id,
                "failed",
                error=ProviderError(
                    code=f"verity_{exc.status_code}",
                    type=PROVIDER_ERROR_TYPE,
                    message=f"The texting system refused the message: {_refusal_text(exc)}",
                ),
            )
        raise
    except RetryableError as exc:
        if classify_send_failure(exc) == "not_sent":
            raise
        raise await _hold_unconfirmed(ghl, ghl_message_id, str(exc)) from exc
    return sent.message_id


async def _hold_unconfirmed(ghl: GhlClient | None, ghl_message_id: str, why: str) -> PermanentError:
    """A send that may have gone out and cannot be looked up at Verity (R-IDEM-2): the GHL message
    is set failed (`send_unconfirmed`) and the error to dead-letter the event with is returned.
    Verity's `message.sent` for the same number and text resolves it (`_confirm_late`); an
    operator who checked Verity and found nothing replays it with `--resend-unconfirmed`."""
    if ghl is not None:
        await ghl.update_message_status(
            ghl_message_id,
            "failed",
            error=ProviderError(
                code="send_unconfirmed",
                type=PROVIDER_ERROR_TYPE,
                message="The texting system did not confirm the send; it may or may not have gone out",
            ),
        )
    return PermanentError(
        f"{UNCONFIRMED_ERROR} ({why}); it may have been sent: if Verity's message.sent for the "
        f"same number and text arrives within 24 h this event is resolved by it; otherwise check "
        f"Verity for correlation id {ghl_message_id}, and if it was not sent replay with "
        f"--resend-unconfirmed"
    )


def outbound_body(payload: Mapping[str, Any]) -> str:
    """The SMS text Verity is asked to send for a provider delivery: the message, then one line per
    attachment URL (Verity's send API takes text only)."""
    text = _text(payload.get("message")) or ""
    attachments = [a for a in payload.get("attachments") or [] if isinstance(a, str) and a.strip()]
    return "\n".join([text, *attachments]).strip()


@dataclass(frozen=True)
class UnconfirmedSend:
    """An agent's SMS whose Verity send got no answer, dead-lettered (see `_send`)."""

    event_id: uuid.UUID
    ghl_message_id: str
    location_id: str | None


async def unconfirmed_send_for(
    db: Database, to_number: str | None, body: str | None, region: str, *, sent_at: datetime
) -> UnconfirmedSend | None:
    """The dead-lettered agent SMS whose send Verity never confirmed, to this number with exactly
    this text, asked of Verity in the `UNCONFIRMED_WINDOW` before the text went out (`sent_at`,
    Verity's time, allowing `CLOCK_SKEW`), the oldest first; or None.

    Verity's receipts do not echo our `correlationId`, so a send whose answer was lost can only be
    recognised by what was sent: the recipient, the whole text, and a send that came after the
    request. A `message.sent` that matches is that send going out after all.
    """
    if to_number is None or not body:
        return None
    async with db.session() as session:
        rows = await session.execute(
            select(WebhookEvent.id, WebhookEvent.payload_json, WebhookEvent.entity_id)
            .where(
                WebhookEvent.event_type == PROVIDER_EVENT,
                WebhookEvent.status == "error",
                WebhookEvent.error_message.contains(UNCONFIRMED_ERROR),
                WebhookEvent.received_at >= sent_at - UNCONFIRMED_WINDOW,
                WebhookEvent.received_at <= sent_at + CLOCK_SKEW,
            )
            .order_by(WebhookEvent.received_at)
        )
        for event_id, payload, entity_id in rows.all():
            if normalize_phone(payload.get("phone"), region) != to_number:
                continue
            if outbound_body(payload) != body.strip():
                continue
            ghl_message_id = _text(payload.get("messageId")) or entity_id
            if ghl_message_id:
                return UnconfirmedSend(event_id, ghl_message_id, _text(payload.get("locationId")))
    return None


async def unconfirmed_dead_letter_of(db: Database, ghl_message_id: str) -> uuid.UUID | None:
    """The event of this GHL message's send when it is still dead-lettered as unconfirmed although
    the send is recorded: a late confirmation recorded the send, then its own outcome (which
    resolves the dead letter) was never committed. None otherwise (the usual case)."""
    async with db.session() as session:
        key = await _event_of_send(session, ghl_message_id)
        if key is None:
            return None
        found: uuid.UUID | None = await session.scalar(
            select(WebhookEvent.id).where(
                WebhookEvent.id == key,
                WebhookEvent.status == "error",
                WebhookEvent.error_message.contains(UNCONFIRMED_ERROR),
            )
        )
    return found


def late_confirmation(dead_letter: uuid.UUID, texting_message_id: str | None) -> EventResolution:
    """The dead-lettered send resolved by Verity's receipt, as its sync_log row will name it."""
    actor = f"df-middleware: Verity confirmed the send as texting message {texting_message_id}"
    return EventResolution(dead_letter, actor=actor)


async def _confirm_late(
    ctx: HandlerContext, event: ClaimedEvent, texting: TextingEvent, unconfirmed: UnconfirmedSend
) -> HandlerResult:
    """Verity sent the agent's SMS after all: put the GHL message back to `pending` (its receipts
    follow, R-TXT-3), record the send as the dead-lettered event's effect, map the message and
    resolve the dead letter, with a sync_log row saying how.

    In that order: a failure on GHL leaves nothing recorded and the receipt is retried whole; once
    the effect is recorded, a replay of the dead letter can never send again. The dead letter is
    resolved last, by the worker, in the transaction that records this receipt's outcome
    (`HandlerResult.resolves`: the queue alone writes event rows). If that transaction never
    commits (the process dies), the receipt is retried, finds its texting id mapped (or the send
    recorded) and takes `handle_message_sent`'s echo branch, which finds the dead letter still
    open (`unconfirmed_dead_letter_of`) and resolves it then."""
    assert texting.message_id is not None
    ghl = _ghl(ctx, unconfirmed.location_id)
    if ghl is not None:
        # A GHL message deleted since is no reason to fail: the mapping still records the send.
        with contextlib.suppress(RemoteNotFound):
            await ghl.update_message_status(unconfirmed.ghl_message_id, "pending")
    key = f"{SEND_EFFECT_PREFIX}{unconfirmed.ghl_message_id}"
    await record_effect(ctx.db, key, "verity", texting.message_id, event_id=str(unconfirmed.event_id))
    await MessageMappings(ctx.db).record(
        texting_message_id=texting.message_id,
        ghl_message_id=unconfirmed.ghl_message_id,
        direction="outbound",
        status="sent",
        from_number=texting.from_number,
        to_number=texting.to_number,
        force_status=True,
    )
    return HandlerResult(
        entries=[
            success(
                event,
                ctx.direction,
                f"sent: the unconfirmed send of GHL message {unconfirmed.ghl_message_id} went out "
                f"(same number and text); mapped, GHL message back to pending, dead letter "
                f"{unconfirmed.event_id} resolved",
                target_id=unconfirmed.ghl_message_id,
            )
        ],
        resolves=[late_confirmation(unconfirmed.event_id, texting.message_id)],
    )


def _refusal_text(exc: RemoteRejected) -> str:
    """Verity's `{"error": …}` text when it gave one (never our request, which holds the body)."""
    if isinstance(exc.body, Mapping) and isinstance(exc.body.get("error"), str):
        return str(exc.body["error"])[:200]
    return f"HTTP {exc.status_code}"


async def tell_agent_send_failed(ctx: HandlerContext, event: ClaimedEvent, reason: str) -> None:
    """An agent's SMS event was dead-lettered (e.g. Verity unavailable through every retry): set its
    GHL message `failed`, so the agent does not believe a text went out that never did. Messages
    already sent or already failed (a mapping with a texting id or a final status) are left alone."""
    payload = event.payload
    ghl_message_id = _text(payload.get("messageId")) or event.entity_id
    ghl = _ghl(ctx, payload.get("locationId"))
    if not ghl_message_id or ghl is None:
        return
    existing = await MessageMappings(ctx.db).by_ghl_id(ghl_message_id)
    if existing is not None and (existing.texting_message_id is not None or existing.status == "failed"):
        return
    await ghl.update_message_status(
        ghl_message_id,
        "failed",
        error=ProviderError(
            code="not_sent",
            type=PROVIDER_ERROR_TYPE,
            message="The SMS could not be sent; DF-Middleware gave up after repeated failures",
        ),
    )


def register_handlers(registry: HandlerRegistry) -> None:
    registry.register("texting", "message.received", "optout.stop", "optout.help")(handle_message_received)
    registry.register("texting", "message.sent")(handle_message_sent)
    registry.register("texting", "message.delivered", "message.failed")(handle_message_status)
    registry.register("ghl", PROVIDER_EVENT)(handle_provider_outbound)
    registry.on_dead_letter("ghl", PROVIDER_EVENT)(tell_agent_send_failed)
