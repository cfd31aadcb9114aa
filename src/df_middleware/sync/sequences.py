"""Aloware sequences by list status (SPEC §6.5, R-AG-6), behind ENABLE_ALOWARE_SEQUENCES.

An Aloware contact's `aloware_list_status` (carried by its `Contact Created` / `Contact Updated`
webhooks, `null` when it has none) is mapped through ALOWARE_STATUS_TO_SEQUENCE
(`Settings.status_to_sequence`, keys lower-cased) to a sequence. What we last acted on is kept per
GHL contact in `contact_agent_state`: `last_aloware_list_status` and `aloware_sequence_id` (the
sequence *we* enrolled the contact in, None when none). `decide_sequence` is the pure rule:

- a status equal to the last one (compared stripped and case-insensitively) changes nothing and
  makes no Aloware call;
- a changed status that maps to a sequence other than ours: disenroll, then enroll. Aloware keeps a
  contact in one sequence at a time and refuses an enrolment without `force_enroll` while it is in
  another, so every enrolment is preceded by a disenroll (the spec's "disenrolled and enrolled"),
  and `force_enroll` (which restarts a sequence and cannot be repeated safely) is never used;
- a changed status that maps to the sequence we already enrolled it in: recorded, no call (a
  disenroll + enroll would restart the sequence);
- a status that maps to nothing (or `null`): the contact is in no sequence of ours, so it is
  disenrolled if we had enrolled it; a sequence somebody else started in Aloware is left alone;
- an opted-out (SMS opt-out in force) or voice-DNC contact is never enrolled, and is disenrolled
  when we had enrolled it, whether or not the status changed. The status is still recorded: lifting
  the opt-out does not by itself enrol the person again, the next status change does.

Consent is asked exactly as the send paths ask it (`consent.store.sms_allowed`, and the voice
registry's state), never re-derived here. Both Aloware calls are set operations (enrolment without
force leaves an enrolled contact alone; disenrolling twice changes nothing), so the state row is
written *after* they succeed, in one transaction: a crash in between only repeats them.

Aloware contact events are ordered per contact (`aloware:contact:<id>`), a STOP per phone
(`phone:<E.164>`), so they may run at the same time. After an enrolment is recorded, consent is
asked again; a STOP recorded meanwhile disenrolls at once. A STOP recorded after that second look
finds the enrolment in `contact_agent_state`, which is what `disenroll_for_consent` (for the
consent flows) reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from df_middleware.connectors.aloware import AlowareClient
from df_middleware.consent.store import dialer_block
from df_middleware.db.models import ContactAgentState
from df_middleware.db.session import Database
from df_middleware.errors import RetryableError
from df_middleware.phones import normalize_phone
from df_middleware.sync.effects import skipped, success
from df_middleware.sync.identity import ContactMappings
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, SyncLogEntry

INTERNAL: Final = "internal"
#: The key of the Aloware contact's list status in its webhook body (contracts: `Contact_Updated.json`).
STATUS_KEY: Final = "aloware_list_status"
#: A list status longer than this is not a status a person picked: refused, not stored.
MAX_STATUS_CHARS: Final = 256

NOT_MAPPED = "not mapped to a GHL contact"
NO_STATUS_FIELD = f"sequences: no {STATUS_KEY} in the event"
BAD_STATUS = f"sequences: {STATUS_KEY} is not a short text"
ALOWARE_OFF = "sequences: aloware not configured"
NO_PHONE = "sequences: no valid phone (Aloware enrols by phone number)"
NO_ALOWARE_CONTACT = "sequences: Aloware has no contact on this number; not enrolled"


# --- pure decisions ----------------------------------------------------------------------------------


def status_key(status: str | None) -> str | None:
    """A list status as it is compared and looked up: stripped and lower-cased; None when empty."""
    if status is None:
        return None
    return status.strip().lower() or None


def status_of(body: Mapping[str, Any]) -> str | None:
    """The body's list status, stripped (None for `null` or blank). ValueError when it is not a
    short text (a number is read as its text)."""
    value = body.get(STATUS_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(BAD_STATUS)
    text = str(value).strip()
    if len(text) > MAX_STATUS_CHARS:
        raise ValueError(BAD_STATUS)
    return text or None


DecisionKind = Literal["nothing", "disenroll", "enroll", "disenroll+enroll"]


@dataclass(frozen=True)
class SequenceDecision:
    """What to do: the Aloware calls (disenroll first, then enroll) and what to record after them.

    `record` False means nothing is written at all (the row, if any, already says it all)."""

    disenroll: bool
    enroll: str | None
    record: bool
    status: str | None
    sequence: str | None
    why: str

    @property
    def kind(self) -> DecisionKind:
        if self.disenroll and self.enroll is not None:
            return "disenroll+enroll"
        if self.enroll is not None:
            return "enroll"
        return "disenroll" if self.disenroll else "nothing"

    @property
    def calls_aloware(self) -> bool:
        return self.disenroll or self.enroll is not None


def decide_sequence(
    status: str | None,
    last_status: str | None,
    current_sequence: str | None,
    mapping: Mapping[str, str],
    consent_blocked: bool,
    enabled: bool,
) -> SequenceDecision:
    """R-AG-6 for one contact: `status` is the event's list status, `last_status` and
    `current_sequence` what `contact_agent_state` holds (the sequence we enrolled it in),
    `mapping` {lower-cased status: sequence id}, `consent_blocked` whether the person opted out of
    SMS or is on voice DNC. See the module docstring for the rules."""
    if not enabled:
        return SequenceDecision(False, None, False, None, None, "sequences off (ENABLE_ALOWARE_SEQUENCES)")
    shown = status.strip() if status is not None and status.strip() else None
    changed = status_key(status) != status_key(last_status)
    if consent_blocked:
        if current_sequence is not None:
            return SequenceDecision(
                True, None, True, shown, None, f"opted out or on DNC: left sequence {current_sequence}"
            )
        return SequenceDecision(
            False, None, changed, shown, None, "opted out or on DNC: never enrolled in a sequence"
        )
    if not changed:
        return SequenceDecision(False, None, False, shown, current_sequence, "list status unchanged")
    key = status_key(status)
    target = mapping.get(key) if key is not None else None
    if target is None:
        if current_sequence is not None:
            return SequenceDecision(
                True,
                None,
                True,
                shown,
                None,
                f"list status {shown!r} maps to no sequence: left {current_sequence}",
            )
        return SequenceDecision(False, None, True, shown, None, f"list status {shown!r} maps to no sequence")
    if target == current_sequence:
        return SequenceDecision(
            False, None, True, shown, target, f"list status {shown!r}: already in sequence {target}"
        )
    return SequenceDecision(True, target, True, shown, target, f"list status {shown!r}: sequence {target}")


# --- reads and records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceState:
    """The sequence part of a contact's `contact_agent_state` row."""

    last_status: str | None
    sequence: str | None


async def sequence_state(db: Database, ghl_contact_id: str) -> SequenceState | None:
    async with db.session() as session:
        row = await session.scalar(
            select(ContactAgentState).where(ContactAgentState.contact_id == ghl_contact_id)
        )
        return None if row is None else SequenceState(row.last_aloware_list_status, row.aloware_sequence_id)


async def record_sequence(
    db: Database, ghl_contact_id: str, default_agent_key: str, *, status: str | None, sequence: str | None
) -> None:
    """Write the status and sequence acted on, in one transaction. A missing row is created with
    the default agent; an existing row's agent and pipeline columns are the list flow's and are
    left as they are (only the two columns written here are updated)."""
    try:
        async with db.session() as session:
            query = select(ContactAgentState).where(ContactAgentState.contact_id == ghl_contact_id)
            if db.is_postgres:
                query = query.with_for_update()
            row = await session.scalar(query)
            if row is None:
                row = ContactAgentState(contact_id=ghl_contact_id, agent_key=default_agent_key)
                session.add(row)
            row.last_aloware_list_status = status
            row.aloware_sequence_id = sequence
    except IntegrityError as exc:
        raise RetryableError(
            f"contact_agent_state of {ghl_contact_id} was created concurrently; retrying"
        ) from exc


async def consent_block(db: Database, phone: str) -> str | None:
    """Why this E.164 number may not be in a sequence, or None: an SMS opt-out in force (R-OPT-4)
    or voice DNC (R-OPT-6) — the dialer's own question, with SMS opt-outs always counting."""
    return await dialer_block(db, phone, sms_opt_out_counts=True)


# --- flows ----------------------------------------------------------------------------------------------


def _aloware(ctx: HandlerContext) -> AlowareClient | None:
    return ctx.connectors.aloware if ctx.connectors is not None else None


def _body(event: ClaimedEvent) -> Mapping[str, Any]:
    body = event.payload.get("body")
    return body if isinstance(body, Mapping) else {}


def _skip(event: ClaimedEvent, reason: str) -> SyncLogEntry:
    return skipped(event, INTERNAL, reason).entries[0]


def _said(decision: SequenceDecision, consent: str | None) -> str:
    said = {
        "disenroll": "disenrolled from sequences",
        "disenroll+enroll": f"disenrolled, then enrolled in sequence {decision.enroll}",
        "enroll": f"enrolled in sequence {decision.enroll}",
    }[decision.kind]
    why = f"{consent}: left sequence" if consent is not None and decision.disenroll else decision.why
    return f"Aloware contact {said} ({why})"


async def apply_sequence(
    ctx: HandlerContext, event: ClaimedEvent, ghl_contact_id: str | None
) -> list[SyncLogEntry]:
    """R-AG-6 for an Aloware `Contact Created` / `Contact Updated`, run right after the contact
    sync with the GHL contact it mapped (`ghl_contact_id`; None: skipped, the state row is keyed by
    the GHL contact). Returns the sync_log rows: [] when the feature is off, one skip saying why
    when nothing is called, else one row for the calls made."""
    settings = ctx.settings
    if not settings.enable_aloware_sequences:
        return []
    body = _body(event)
    if STATUS_KEY not in body:
        return [_skip(event, NO_STATUS_FIELD)]
    try:
        status = status_of(body)
    except ValueError as exc:
        return [_skip(event, str(exc))]
    if ghl_contact_id is None:
        return [_skip(event, f"sequences: {NOT_MAPPED}")]
    aloware = _aloware(ctx)
    if aloware is None:
        return [_skip(event, ALOWARE_OFF)]
    raw_phone = body.get("phone_number")
    phone = normalize_phone(raw_phone, settings.default_phone_region) if isinstance(raw_phone, str) else None
    if phone is None:
        return [_skip(event, NO_PHONE)]

    state = await sequence_state(ctx.db, ghl_contact_id)
    consent = await consent_block(ctx.db, phone)
    decision = decide_sequence(
        status,
        state.last_status if state is not None else None,
        state.sequence if state is not None else None,
        settings.status_to_sequence,
        consent is not None,
        enabled=True,
    )
    if not decision.calls_aloware:
        if decision.record:
            await record_sequence(
                ctx.db,
                ghl_contact_id,
                settings.default_agent_key,
                status=decision.status,
                sequence=decision.sequence,
            )
        reason = f"{consent}: never enrolled in a sequence" if consent is not None else decision.why
        return [_skip(event, f"sequences: {reason}")]

    if decision.disenroll and not await aloware.disenroll_from_sequences(phone):
        # Aloware knows nobody on this number: in no sequence, and an enrolment would be refused.
        await record_sequence(
            ctx.db, ghl_contact_id, settings.default_agent_key, status=decision.status, sequence=None
        )
        return [_skip(event, NO_ALOWARE_CONTACT)]
    if decision.enroll is not None:
        await aloware.enroll_in_sequence(decision.enroll, phone)
    await record_sequence(
        ctx.db, ghl_contact_id, settings.default_agent_key, status=decision.status, sequence=decision.sequence
    )
    entry = success(
        event,
        INTERNAL,
        _said(decision, consent),
        target_id=decision.enroll,
        entity_type="contact",
        entity_id=event.entity_id or ghl_contact_id,
    )
    if decision.enroll is None:
        return [entry]
    late = await consent_block(ctx.db, phone)
    if late is None:
        return [entry]
    # An opt-out recorded while we enrolled (a STOP runs on the phone's key, not the contact's).
    await aloware.disenroll_from_sequences(phone)
    await record_sequence(
        ctx.db, ghl_contact_id, settings.default_agent_key, status=decision.status, sequence=None
    )
    left = success(
        event,
        INTERNAL,
        f"Aloware contact disenrolled from sequence {decision.enroll} ({late} while it was enrolled)",
        entity_type="contact",
        entity_id=event.entity_id or ghl_contact_id,
    )
    return [entry, left]


async def disenroll_for_consent(
    ctx: HandlerContext, event: ClaimedEvent, phone: str, *, ghl_contact_id: str | None = None
) -> SyncLogEntry | None:
    """For the consent flows (an SMS opt-out, voice DNC): the person leaves the sequence we enrolled
    them in. The GHL contact is `ghl_contact_id` when known, else the mapping of the E.164 `phone`.
    None when there is nothing to do (no Aloware, no mapping, no enrolment of ours); the status is
    kept, so only the next status change enrols again (and only once consent allows it). Done even
    with sequences switched off since: an enrolment of ours outlives the switch."""
    aloware = _aloware(ctx)
    if aloware is None:
        return None
    if ghl_contact_id is None:
        mapping = await ContactMappings(ctx.db).by_phone(phone)
        if mapping is None or mapping.deleted_at is not None:
            return None
        ghl_contact_id = mapping.ghl_contact_id
    state = await sequence_state(ctx.db, ghl_contact_id)
    if state is None or state.sequence is None:
        return None
    await aloware.disenroll_from_sequences(phone)
    await record_sequence(
        ctx.db, ghl_contact_id, ctx.settings.default_agent_key, status=state.last_status, sequence=None
    )
    return success(
        event,
        INTERNAL,
        f"Aloware contact disenrolled from sequence {state.sequence} (consent withdrawn)",
        entity_type="contact",
        entity_id=ghl_contact_id,
    )


async def out_of_sequence(
    ctx: HandlerContext, event: ClaimedEvent, phone: str, *, ghl_contact_id: str | None = None
) -> list[SyncLogEntry]:
    """`disenroll_for_consent` as the consent flows add its row: none when there was nothing to do.
    A sequence may text or call, so every opt-out (SMS or voice, whatever OPTOUT_REMOVES_FROM_DIALER
    says) ends the one we enrolled the person in."""
    entry = await disenroll_for_consent(ctx, event, phone, ghl_contact_id=ghl_contact_id)
    return [entry] if entry is not None else []
