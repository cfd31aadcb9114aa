"""Aloware call activity → GHL notes, tags and the conversation's call log (R-CALL-1…R-CALL-4).

Every call-related Aloware webhook becomes, on the person's GHL contact:

- exactly one note (R-CALL-4): its text is a pure function of the webhook body (`call_note`,
  `summary_note`, …) and ends with a marker line `[df:<effect key>]`, the key built from the
  Aloware call / communication id and the note kind (`note_key`). The note is created through
  `EffectLedger.perform`, whose `find_existing` looks for the marker among the contact's notes, so
  a replay, a redelivery or a retry after a lost answer (GHL created the note, we never heard)
  finds the note instead of writing a second one;
- tags (`Call: <disposition>`, `Inbound Call` / `Outbound Call`, `Summary: <outcome>`,
  `Disposition: <value>`): tag writes are repeatable by nature (R-C-5), so they are not keyed;
- for calls, when GHL_CALL_PROVIDER_ID is set, one external call log entry in the contact's
  conversation, keyed by the call id so that the several events of one call (completed, then
  disposed) log it once.

Which events of the `InboundPhoneCall-*` / `OutboundPhoneCall-*` family count: the statuses in
`FINISHED_CALL_STATUSES` describe a call that is over (answered and completed, missed, abandoned,
sent to voicemail, failed…) and are logged like `Call Disposed` — a missed inbound call is still a
call the team must see. The statuses in `UNFINISHED_CALL_STATUSES` (ringing, in progress…) are
skipped: the same call's finishing event follows and carries the duration and outcome, so a note
now would only be noise. Other statuses fall to the registry's `no handler yet`.

Keys: a `Call Disposed` and the same call's `…PhoneCall-Completed` write different notes (kinds
`call-disposed` and `call-completed`: the first says how the agent disposed it, the second that
it happened), but share one call-log key. The GHL contact is resolved from `body.contact`
(mapping → phone → email, R-ID-2); when GHL has nobody, it is created with `POST
/contacts/upsert` (an effect keyed by the Aloware contact id) and the mapping upserted (R-ID-3).
Database sessions are short and never held across a GHL call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from df_middleware.canonical import MAX_EXACT_FLOAT_ID
from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import (
    CallData,
    CallStatus,
    Contact,
    ContactUpdate,
    ContactUpsert,
    CustomFieldValue,
    ExternalCall,
)
from df_middleware.connectors.http import RemoteRejected
from df_middleware.sync.contacts import (
    aloware_profile,
    decide_ghl_changes,
    ghl_contact_gone,
    ghl_profile,
    ghl_update,
)
from df_middleware.sync.conversations import ConversationCache
from df_middleware.sync.echoes import EchoGuard
from df_middleware.sync.effects import EffectLedger, skipped, success
from df_middleware.sync.identity import ContactMappings, PersonKeys, resolve_ghl_contact
from df_middleware.sync.made_contacts import create_key
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.timestamps import parse_iso8601

DIRECTION = "aloware_to_ghl"

#: `<Direction>PhoneCall-<Status>` statuses (as ingest spells them) of a call that is over.
FINISHED_CALL_STATUSES: tuple[str, ...] = (
    "Completed",
    "Missed",
    "Abandoned",
    "Voicemail",
    "Failed",
    "Busy",
    "No-Answer",
    "Canceled",
    "Cancelled",
)
#: Statuses of a call still under way: its finishing event follows with the full story.
UNFINISHED_CALL_STATUSES: tuple[str, ...] = ("Initiated", "Queued", "Ringing", "Answered", "In-Progress")

CALL_DISPOSED = "Call Disposed"
CALL_SUMMARIZED = "Call Summarized"
RECORDING_SAVED = "Recording Saved"
TRANSCRIPTION_SAVED = "Transcription Saved"
VOICEMAIL_SAVED = "Voicemail Saved"
COMMUNICATION_INITIATED = "Communication Initiated"
COMMUNICATION_DISPOSED = "Communication Disposed"
CONTACT_DISPOSED = "Contact Disposed"

#: Tag prefix of a contact's current Aloware disposition (R-CALL-3); GHL lower-cases tags.
DISPOSITION_TAG_PREFIX = "Disposition: "

GHL_NOT_CONFIGURED = "GHL not configured (set GHL_LOCATION_ID and a GHL token or OAuth install)"
NO_CONTACT_DATA = "no contact data: body has no contact id, valid phone or email"
NO_CALL_ID = "no call or communication id to key the note by"
NO_DISPOSITION = "no disposition in body"
CALL_UNFINISHED = "call not finished yet: its finishing event writes the note"

#: GHL refuses very long note bodies; transcripts are cut well below any plausible limit.
MAX_NOTE_TEXT = 30_000

#: Aloware call statuses → the GHL call log's status vocabulary.
_CALL_LOG_STATUS: dict[str, CallStatus] = {
    "completed": "completed",
    "answered": "answered",
    "missed": "no-answer",
    "no-answer": "no-answer",
    "abandoned": "no-answer",
    "busy": "busy",
    "failed": "failed",
    "canceled": "canceled",
    "cancelled": "canceled",
    "voicemail": "voicemail",
}


# --- pure decisions: what to write, from the webhook body alone -------------------------------------


@dataclass(frozen=True)
class CallActivity:
    """What one Aloware webhook writes to the GHL contact (decided without I/O).

    `note_key` is the effect key of the note and what its marker line names; `call_log_key` is
    set for events that describe a call, so the call is logged once in the conversation.
    """

    note_key: str
    note_text: str
    tags: tuple[str, ...] = ()
    call_log_key: str | None = None
    call_log: CallLog | None = None


@dataclass(frozen=True)
class CallLog:
    """The conversation entry of one call: who called whom, when, and how it ended."""

    call_id: str
    to: str | None
    from_: str | None
    status: CallStatus | None
    date: str | None


def _text(value: object) -> str | None:
    """A non-empty, stripped string of a scalar payload value, else None."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def aloware_id(value: object) -> str | None:
    """Aloware ids come as numbers or strings; keys and mappings use the string. A number beyond
    what a float holds exactly is no id (two calls would share one note key)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer() or abs(value) > MAX_EXACT_FLOAT_ID:
            return None
        value = int(value)
    return _text(value)


def call_id_of(body: Mapping[str, Any]) -> str | None:
    """The call a child event (summary, recording…) belongs to, else the body's own id."""
    return (
        aloware_id(body.get("call_id"))
        or aloware_id(body.get("communication_id"))
        or aloware_id(body.get("id"))
    )


def note_key(kind: str, entity_id: str, note_kind: str) -> str:
    """Effect key of a note (and its marker): `aloware:<call|communication>:<id>:note:<kind>`."""
    return f"aloware:{kind}:{entity_id}:note:{note_kind}"


def marker_line(key: str) -> str:
    """The line every note of ours ends with (R-CALL-4): how a lost note is found again."""
    return f"[df:{key}]"


def with_marker(text: str, key: str) -> str:
    if len(text) > MAX_NOTE_TEXT:
        text = text[: MAX_NOTE_TEXT - 1] + "…"
    return f"{text}\n\n{marker_line(key)}"


def has_marker(note_body: str, key: str) -> bool:
    """Whether a GHL note body carries our marker for `key` (on a line of its own)."""
    marker = marker_line(key)
    return any(line.strip() == marker for line in note_body.splitlines())


def display_zone(name: str) -> ZoneInfo:
    """DISPLAY_TIMEZONE, or UTC when the name is unknown (a bad setting must not lose notes)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_time(value: object, zone: ZoneInfo) -> str | None:
    """`2026-11-24 11:30 EST`: the time as the team reads it, with the zone's abbreviation."""
    moment = parse_iso8601(value)
    if moment is None:
        return None
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def format_duration(value: object) -> str | None:
    """Seconds as `3m 07s` (`45s` under a minute, `1h 02m 03s` over an hour)."""
    text = _text(value)
    if text is None:
        return None
    try:
        seconds = int(float(text))
    except ValueError:
        return None
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def call_direction(body: Mapping[str, Any], event_type: str) -> str | None:
    """'inbound' / 'outbound' from the body, else from the family's event name."""
    direction = (_text(body.get("direction")) or "").lower()
    if direction in {"inbound", "outbound"}:
        return direction
    lowered = event_type.lower()
    for candidate in ("inbound", "outbound"):
        if lowered.startswith(f"{candidate}phonecall-"):
            return candidate
    return None


def call_status(body: Mapping[str, Any], event_type: str) -> str | None:
    """The call's status: the body's, else the family name's suffix (`…PhoneCall-Missed`)."""
    status = _text(body.get("status"))
    if status:
        return status.lower()
    if "phonecall-" in event_type.lower():
        return event_type.split("-", 1)[1].lower()
    return None


def disposition_of(body: Mapping[str, Any]) -> str | None:
    return (
        _text(body.get("call_disposition"))
        or _text(body.get("disposition_status"))
        or _text(body.get("disposition"))
    )


def agent_of(body: Mapping[str, Any]) -> str | None:
    user = _mapping(body.get("user"))
    return _text(user.get("name")) or _text(user.get("email"))


def _lines(*pairs: tuple[str, str | None]) -> list[str]:
    return [f"{label}: {value}" for label, value in pairs if value]


def call_note(body: Mapping[str, Any], event_type: str, zone: ZoneInfo) -> str:
    """The note describing a call (R-CALL-1): direction, time, duration, agent, disposition,
    status and recording link; lines whose value Aloware did not send are left out."""
    direction = call_direction(body, event_type)
    status = call_status(body, event_type)
    title = f"{direction.capitalize()} call" if direction else "Call"
    if status in {"missed", "abandoned", "no-answer"}:
        title = f"Missed {title.lower()}"
    if event_type.lower() == CALL_DISPOSED.lower():
        title = f"{title} disposed"
    duration = format_duration(body.get("duration"))
    talk = format_duration(body.get("talk_time"))
    if duration and talk and talk != duration:
        duration = f"{duration} (talk time {talk})"
    recording = _text(body.get("recording_url"))
    lines = [f"{title} (Aloware)"]
    lines += _lines(
        ("Time", format_time(body.get("created_at") or body.get("started_at"), zone)),
        ("Duration", duration),
        ("Agent", agent_of(body)),
        ("Disposition", disposition_of(body)),
        ("Status", status),
        ("Recording", recording),
    )
    return "\n".join(lines)


def call_tags(body: Mapping[str, Any], event_type: str) -> tuple[str, ...]:
    """`Call: <disposition>` (when disposed) and `Inbound Call` / `Outbound Call`."""
    tags: list[str] = []
    disposition = disposition_of(body)
    if disposition:
        tags.append(f"Call: {disposition}")
    direction = call_direction(body, event_type)
    if direction:
        tags.append(f"{direction.capitalize()} Call")
    return tuple(tags)


def call_log_of(body: Mapping[str, Any], event_type: str, call_id: str) -> CallLog:
    """The conversation entry: the contact is the callee of an outbound call, the caller of an
    inbound one (Aloware does not say which of our lines took the call, so that side is left out)."""
    contact_phone = _text(_mapping(body.get("contact")).get("phone_number"))
    direction = call_direction(body, event_type)
    status = _CALL_LOG_STATUS.get(call_status(body, event_type) or "")
    moment = parse_iso8601(body.get("created_at"))
    date = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z") if moment else None
    if direction == "inbound":
        return CallLog(call_id=call_id, to=None, from_=contact_phone, status=status, date=date)
    return CallLog(call_id=call_id, to=contact_phone, from_=None, status=status, date=date)


def call_activity(body: Mapping[str, Any], event_type: str, zone: ZoneInfo) -> CallActivity | None:
    """R-CALL-1: `Call Disposed` or a finished `…PhoneCall-…` event; None without a call id."""
    call_id = aloware_id(body.get("id"))
    if call_id is None:
        return None
    if event_type.lower() == CALL_DISPOSED.lower():
        kind = "call-disposed"
    else:
        kind = f"call-{call_status(body, event_type) or 'ended'}"
    key = note_key("call", call_id, kind)
    return CallActivity(
        note_key=key,
        note_text=call_note(body, event_type, zone),
        tags=call_tags(body, event_type),
        call_log_key=f"aloware:call:{call_id}:ghl-call-log",
        call_log=call_log_of(body, event_type, call_id),
    )


def summary_tags(body: Mapping[str, Any]) -> tuple[str, ...]:
    """`Summary: <outcome>` for each outcome Aloware's summary names (list or single value)."""
    raw = body.get("outcomes")
    outcomes = raw if isinstance(raw, list) else [body.get("outcome")]
    tags = [f"Summary: {text}" for text in (_text(o) for o in outcomes) if text]
    return tuple(dict.fromkeys(tags))


def summary_note(body: Mapping[str, Any], zone: ZoneInfo) -> str:
    outcomes = ", ".join(t.removeprefix("Summary: ") for t in summary_tags(body))
    lines = ["Call summary (Aloware)"]
    lines += _lines(
        ("Time", format_time(body.get("created_at"), zone)),
        ("Outcome", outcomes or None),
    )
    lines.append("")
    lines.append(_text(body.get("summary")) or "(no summary text)")
    return "\n".join(lines)


def recording_note(body: Mapping[str, Any], zone: ZoneInfo) -> str:
    lines = ["Call recording (Aloware)"]
    lines += _lines(
        ("Time", format_time(body.get("created_at"), zone)),
        ("Duration", format_duration(body.get("duration"))),
        ("Recording", _text(body.get("url")) or _text(body.get("recording_url")) or "(no link)"),
    )
    return "\n".join(lines)


def transcription_note(body: Mapping[str, Any], zone: ZoneInfo) -> str:
    lines = ["Call transcript (Aloware)"]
    lines += _lines(("Time", format_time(body.get("created_at"), zone)))
    lines.append("")
    lines.append(_text(body.get("text")) or _text(body.get("transcription")) or "(empty transcript)")
    return "\n".join(lines)


def voicemail_note(body: Mapping[str, Any], zone: ZoneInfo) -> str:
    lines = ["Voicemail (Aloware)"]
    lines += _lines(
        ("Time", format_time(body.get("created_at"), zone)),
        ("Duration", format_duration(body.get("duration"))),
        ("Voicemail", _text(body.get("url")) or _text(body.get("voicemail_url")) or "(no link)"),
    )
    return "\n".join(lines)


def communication_note(body: Mapping[str, Any], event_type: str, zone: ZoneInfo) -> str:
    """A communication started or disposed: channel, direction, agent, disposition."""
    channel = _text(body.get("channel")) or "communication"
    what = "started" if event_type.lower() == COMMUNICATION_INITIATED.lower() else "disposed"
    direction = call_direction(body, event_type)
    title = f"{direction.capitalize()} {channel}" if direction else channel.capitalize()
    lines = [f"{title} {what} (Aloware)"]
    lines += _lines(
        ("Time", format_time(body.get("created_at"), zone)),
        ("Agent", agent_of(body)),
        ("Disposition", disposition_of(body)),
        ("Status", _text(body.get("status"))),
    )
    return "\n".join(lines)


def child_activity(body: Mapping[str, Any], event_type: str, zone: ZoneInfo) -> CallActivity | None:
    """R-CALL-2: summary, recording, transcription, voicemail or communication → one note."""
    name = event_type.lower()
    if name in {COMMUNICATION_INITIATED.lower(), COMMUNICATION_DISPOSED.lower()}:
        communication_id = aloware_id(body.get("id"))
        if communication_id is None:
            return None
        kind = "initiated" if name == COMMUNICATION_INITIATED.lower() else "disposed"
        return CallActivity(
            note_key=note_key("communication", communication_id, kind),
            note_text=communication_note(body, event_type, zone),
        )
    call_id = call_id_of(body)
    if call_id is None:
        return None
    if name == CALL_SUMMARIZED.lower():
        return CallActivity(
            note_key=note_key("call", call_id, "summary"),
            note_text=summary_note(body, zone),
            tags=summary_tags(body),
        )
    writers = {
        RECORDING_SAVED.lower(): ("recording", recording_note),
        TRANSCRIPTION_SAVED.lower(): ("transcription", transcription_note),
        VOICEMAIL_SAVED.lower(): ("voicemail", voicemail_note),
    }
    kind, write = writers[name]
    return CallActivity(note_key=note_key("call", call_id, kind), note_text=write(body, zone))


def disposition_tag(value: str) -> str:
    return f"{DISPOSITION_TAG_PREFIX}{value}"


def stale_disposition_tags(tags: Sequence[str], current: str) -> list[str]:
    """`Disposition:` tags other than the current one, compared ignoring case (GHL lower-cases)."""
    prefix = DISPOSITION_TAG_PREFIX.strip().lower()
    wanted = disposition_tag(current).lower()
    return [t for t in tags if t.strip().lower().startswith(prefix) and t.strip().lower() != wanted]


def contact_upsert_of(contact: Mapping[str, Any], keys: PersonKeys, location_id: str) -> ContactUpsert:
    """The GHL contact created for an Aloware contact GHL does not know yet."""
    return ContactUpsert(
        location_id=location_id,
        first_name=_text(contact.get("first_name")),
        last_name=_text(contact.get("last_name")),
        email=keys.email,
        phone=keys.phone,
        timezone=_text(contact.get("timezone")),
        city=_text(contact.get("city")),
        state=_text(contact.get("state")),
        country=_text(contact.get("country")),
        source="Aloware",
    )


# --- I/O: resolving the contact and writing the activity ------------------------------------------


def _body(event: ClaimedEvent) -> Mapping[str, Any]:
    return _mapping(event.payload.get("body"))


def _ghl(ctx: HandlerContext) -> GhlClient | None:
    return ctx.connectors.ghl if ctx.connectors is not None else None


@dataclass
class _Run:
    """One event's writes: the ledger and the sync_log rows, one per effect (R-Q-7)."""

    ctx: HandlerContext
    event: ClaimedEvent
    ghl: GhlClient
    ledger: EffectLedger
    entries: list[SyncLogEntry] = field(default_factory=list)

    def log(self, message: str, target_id: str | None, entity_type: str | None = None) -> None:
        self.entries.append(
            success(self.event, DIRECTION, message, target_id=target_id, entity_type=entity_type)
        )

    def result(self) -> HandlerResult:
        return HandlerResult(entries=self.entries, effects=list(self.ledger.performed))


async def _resolve_contact(run: _Run, contact: Mapping[str, Any]) -> str | None:
    """The GHL contact id of an Aloware contact (R-ID-2), created when GHL has nobody; the
    mapping is upserted either way (R-ID-3). None when the body names nobody we can find."""
    settings = run.ctx.settings
    keys = PersonKeys.of(contact.get("phone_number"), contact.get("email"), settings.default_phone_region)
    aloware_contact_id = aloware_id(contact.get("id"))
    if aloware_contact_id is None and keys.empty:
        return None
    mappings = ContactMappings(run.ctx.db)
    linked = await mappings.by_aloware_id(aloware_contact_id) if aloware_contact_id is not None else None
    first_link = aloware_contact_id is not None and (linked is None or linked.deleted_at is not None)
    resolved = await resolve_ghl_contact(mappings, run.ghl, keys, aloware_contact_id=aloware_contact_id)
    # The contact flow creates under the same key: one create per Aloware contact, whichever flow.
    key = create_key(aloware_contact_id or keys.phone or keys.email or "")
    if resolved is not None:
        ghl_contact_id = resolved.ghl_contact_id
        owner = await mappings.by_ghl_id(ghl_contact_id)
        if (
            aloware_contact_id is not None  # a body without a contact id names nobody to conflict with
            and owner is not None
            and owner.deleted_at is None
            and owner.aloware_contact_id not in (None, aloware_contact_id)
        ):
            # Found by phone or email, but that GHL contact is another Aloware contact's (two
            # dialer contacts share the number, or Aloware merged them): the activity still goes
            # to GHL's contact for the number, but the mapping is never re-pointed and that
            # person's profile is not filled from this one (the contact flow's conflict rule).
            run.log(
                f"conflict: GHL contact {ghl_contact_id} (found by {resolved.via}) is mapped to Aloware "
                f"contact {owner.aloware_contact_id}, not {aloware_contact_id}; activity written there, "
                "mapping unchanged",
                ghl_contact_id,
                entity_type="contact",
            )
            return ghl_contact_id
        if resolved.via != "mapping":  # found in GHL: maybe by an interrupted create of ours
            await run.ledger.settle_found(key, "ghl", ghl_contact_id)
        if first_link:
            await _fill_from_aloware(run, resolved.ghl_contact_id, resolved.contact, contact)
    elif keys.empty:
        return None  # a mapping miss with no phone or email: nothing to create a contact from
    else:
        upsert = contact_upsert_of(contact, keys, run.ghl.location_id)

        async def create() -> str | None:
            return (await run.ghl.upsert_contact(upsert)).contact.id

        async def find_existing() -> str | None:
            found = await run.ghl.find_contact(phone=keys.phone, email=keys.email)
            return found.id if found is not None else None

        outcome = await run.ledger.perform(key, "ghl", create, find_existing=find_existing)
        if outcome.target_id is None:
            return None
        ghl_contact_id = outcome.target_id
        if not outcome.already_done:
            run.log("created GHL contact for Aloware contact", ghl_contact_id, entity_type="contact")
    await mappings.upsert(
        ghl_contact_id=ghl_contact_id,
        aloware_contact_id=aloware_contact_id,
        keys=keys,
        direction=DIRECTION,
    )
    return ghl_contact_id


async def _fill_from_aloware(
    run: _Run, ghl_contact_id: str, known: Contact | None, aloware_contact: Mapping[str, Any]
) -> None:
    """The first time an Aloware contact is linked to an existing GHL contact (one a text created
    from a phone alone, say), its profile is applied as R-C-2 says for CONTACT_SOURCE_OF_TRUTH —
    in `ghl` mode, GHL's empty fields are filled — so a person ends with the same profile whichever
    event reached us first (R-REL-4). Later calls cost no extra API call."""
    region = run.ctx.settings.default_phone_region
    current = known or await run.ghl.get_contact(ghl_contact_id)
    if current is None:
        return
    changes = decide_ghl_changes(
        run.ctx.settings.contact_source_of_truth,
        aloware_profile(aloware_contact, region),
        ghl_profile(current.model_dump(by_alias=True), region),
        aloware_changed_at=parse_iso8601(aloware_contact.get("updated_at")),
        ghl_changed_at=parse_iso8601(current.date_updated),
    )
    if not changes:
        return
    updated = await run.ghl.update_contact(ghl_contact_id, ghl_update(changes))
    echoes = EchoGuard(run.ctx.db, run.ctx.settings.echo_ttl_seconds)
    await echoes.remember("ghl", ghl_contact_id, ghl_profile(updated.model_dump(by_alias=True), region))
    run.log(f"filled GHL contact from Aloware: {', '.join(sorted(changes))}", ghl_contact_id, "contact")


async def _write_note(run: _Run, ghl_contact_id: str, activity: CallActivity) -> None:
    """The activity's note, at most once ever (R-CALL-4): ledger first, then GHL's own notes."""
    text = with_marker(activity.note_text, activity.note_key)

    async def create() -> str | None:
        return (await run.ghl.create_note(ghl_contact_id, text)).id

    async def find_existing() -> str | None:
        for note in await run.ghl.list_notes(ghl_contact_id):
            if has_marker(note.body, activity.note_key):
                return note.id
        return None

    outcome = await run.ledger.perform(activity.note_key, "ghl", create, find_existing=find_existing)
    verb = "note already present" if outcome.already_done else "note created"
    run.log(f"{verb}: {activity.note_key}", outcome.target_id)


async def _log_call(run: _Run, ghl_contact_id: str, activity: CallActivity) -> None:
    """The call in the contact's conversation, when GHL_CALL_PROVIDER_ID is set (R-CALL-1)."""
    provider_id = run.ctx.settings.ghl_call_provider_id
    call = activity.call_log
    if not provider_id or call is None or activity.call_log_key is None:
        return

    conversations = ConversationCache(run.ctx.db)
    alt_id = f"aloware-call-{call.call_id}"

    def entry(conversation_id: str) -> ExternalCall:
        return ExternalCall(
            conversation_id=conversation_id,
            conversation_provider_id=provider_id,
            date=call.date,
            alt_id=alt_id,
            call=CallData(to=call.to, from_=call.from_, status=call.status),
        )

    async def write() -> str | None:
        result, _ = await conversations.in_conversation(
            run.ghl, ghl_contact_id, lambda conversation_id: run.ghl.log_external_call(entry(conversation_id))
        )
        await conversations.remember(ghl_contact_id, result.conversation_id, run.ghl.location_id)
        return result.message_id

    async def already_logged() -> str | None:
        # Our altId, or (if GHL does not show altIds) a call message with the same date.
        async def look_in(conversation_id: str) -> str | None:
            return await run.ghl.find_message(
                conversation_id,
                alt_id=alt_id,
                body="" if call.date else None,
                date=call.date,
                message_type="TYPE_CALL",
            )

        found, _ = await conversations.in_conversation(run.ghl, ghl_contact_id, look_in)
        return found

    outcome = await run.ledger.perform(activity.call_log_key, "ghl", write, find_existing=already_logged)
    verb = "call already logged" if outcome.already_done else "call logged in conversation"
    run.log(verb, outcome.target_id, entity_type="call")


async def _write_activity(
    ctx: HandlerContext, event: ClaimedEvent, activity: CallActivity | None, missing: str
) -> HandlerResult:
    """Resolve the contact of `body.contact`, then note, tags and call log (in that order, so a
    retry after a failure repeats only what is not yet done)."""
    ctx.direction = DIRECTION
    ghl = _ghl(ctx)
    if ghl is None:
        return skipped(event, DIRECTION, GHL_NOT_CONFIGURED)
    if activity is None:
        return skipped(event, DIRECTION, missing)
    body = _body(event)
    contact = dict(_mapping(body.get("contact")))
    if contact.get("id") is None:
        contact["id"] = body.get("contact_id")
    run = _Run(ctx, event, ghl, EffectLedger(ctx.db, event))

    async def write(ghl_contact_id: str) -> None:
        await _write_note(run, ghl_contact_id, activity)
        if activity.tags:
            await ghl.add_tags(ghl_contact_id, list(activity.tags))
            run.log(f"tags added: {', '.join(activity.tags)}", ghl_contact_id, entity_type="contact")
        await _log_call(run, ghl_contact_id, activity)

    if await _on_live_contact(run, contact, write) is None:
        return skipped(event, DIRECTION, NO_CONTACT_DATA)
    return run.result()


async def _on_live_contact(
    run: _Run, contact: Mapping[str, Any], write: Callable[[str], Awaitable[None]]
) -> str | None:
    """Resolve the person's GHL contact and make `write` on it; returns the contact id, or None
    when the body names nobody. When GHL refuses because the contact was deleted (its
    `ContactDelete` not processed yet, or never sent), it is retired (R-C-4: off Aloware's lists,
    mapping marked deleted) and the person resolved and written once more: to a live contact,
    found or created. Writes already made are recorded, so the second pass repeats none."""
    for last in (False, True):
        ghl_contact_id: str | None = None
        try:
            ghl_contact_id = await _resolve_contact(run, contact)
            if ghl_contact_id is None:
                return None
            await write(ghl_contact_id)
            return ghl_contact_id
        except RemoteRejected:
            if last or ghl_contact_id is None or not await ghl_contact_gone(run.ctx, run.ghl, ghl_contact_id):
                raise
        run.log(
            f"GHL contact {ghl_contact_id} no longer exists in GHL: mapping marked deleted (R-C-4); "
            "written to the person's live contact",
            ghl_contact_id,
            entity_type="contact",
        )
    raise AssertionError("unreachable: the second pass returns or raises")


# --- handlers ------------------------------------------------------------------------------------


async def handle_finished_call(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """`Call Disposed` and the finished `InboundPhoneCall-*` / `OutboundPhoneCall-*` events
    (`FINISHED_CALL_STATUSES`: completed, missed, abandoned, voicemail…) — R-CALL-1.

    Effects on GHL: the contact (created by upsert when unknown, keyed
    `ghl:contact-for-aloware:<id>`), one note describing the call (keyed
    `aloware:call:<id>:note:call-<disposed|status>`, marker checked), tags `Call: <disposition>`
    and `Inbound Call` / `Outbound Call`, and one call log entry per call in the conversation when
    GHL_CALL_PROVIDER_ID is set. Skipped when GHL is not configured or nobody can be resolved.
    """
    zone = display_zone(ctx.settings.display_timezone)
    activity = call_activity(_body(event), event.event_type, zone)
    return await _write_activity(ctx, event, activity, NO_CALL_ID)


async def handle_unfinished_call(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """`…PhoneCall-Ringing` / `-Initiated` / `-Answered`…: the call is still going on.

    Effects: none (skipped): the call's finishing event writes the one note and call log with
    the duration and outcome, which these events cannot know yet.
    """
    ctx.direction = DIRECTION
    return skipped(event, DIRECTION, CALL_UNFINISHED)


async def handle_call_activity(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """`Call Summarized`, `Recording Saved`, `Transcription Saved`, `Voicemail Saved`,
    `Communication Initiated`, `Communication Disposed` — R-CALL-2.

    Effects on GHL: the contact (as for calls), one note per event kind and call (summary text,
    recording or voicemail link, transcript, or the communication's disposition; keyed
    `aloware:call:<call id>:note:<kind>` or `aloware:communication:<id>:note:<kind>`), and for
    summaries a `Summary: <outcome>` tag per outcome.
    """
    zone = display_zone(ctx.settings.display_timezone)
    activity = child_activity(_body(event), event.event_type, zone)
    return await _write_activity(ctx, event, activity, NO_CALL_ID)


async def handle_contact_disposed(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """`Contact Disposed` — R-CALL-3. The body is the Aloware contact itself.

    Effects on GHL: the contact (as for calls); tag `Disposition: <value>` added, then every other
    `Disposition:` tag removed (compared ignoring case), so only the latest remains; and the
    GHL_DISPOSITION_FIELD_KEY custom field set to the value when configured. All repeatable, so
    nothing is keyed. Skipped when the body has no disposition, and when the disposition is
    stale: its `updated_at` (the time the body gives of the change) is older than the one last
    applied for the person, or the same second and received no later (R-IDEM-1, R-Q-4) — a late
    retry of an older disposition must not replace the newer one.
    """
    ctx.direction = DIRECTION
    ghl = _ghl(ctx)
    if ghl is None:
        return skipped(event, DIRECTION, GHL_NOT_CONFIGURED)
    body = _body(event)
    value = _text(body.get("disposition_status")) or _text(body.get("disposition"))
    if value is None:
        return skipped(event, DIRECTION, NO_DISPOSITION)
    disposed_at = parse_iso8601(body.get("updated_at"))
    mappings = ContactMappings(ctx.db)
    contact_id = aloware_id(body.get("id"))
    mapped = await mappings.by_aloware_id(contact_id) if contact_id is not None else None
    if (
        mapped is not None
        and mapped.deleted_at is None
        and mapped.is_stale("disposition", disposed_at, event.received_at)
    ):
        return skipped(event, DIRECTION, "stale: a newer disposition of this contact was already applied")
    run = _Run(ctx, event, ghl, EffectLedger(ctx.db, event))
    tag = disposition_tag(value)
    field_key = ctx.settings.ghl_disposition_field_key

    stale_on: list[str] = []

    async def write(ghl_contact_id: str) -> None:
        target = mapped if mapped is not None and mapped.ghl_contact_id == ghl_contact_id else None
        target = target or await mappings.by_ghl_id(ghl_contact_id)
        if (
            target is not None
            and target.deleted_at is None
            and target.is_stale("disposition", disposed_at, event.received_at)
        ):
            # The GHL contact's newer disposition came from another Aloware contact on its number
            # (a conflict: this one is not mapped, so the check above could not see it).
            stale_on.append(ghl_contact_id)
            return
        tags_now = await ghl.tags_after_adding(ghl_contact_id, [tag])
        stale = stale_disposition_tags(tags_now, value)
        if stale:
            await ghl.remove_tags(ghl_contact_id, stale)
        removed = f"; removed {', '.join(stale)}" if stale else ""
        run.log(f"tag {tag}{removed}", ghl_contact_id)
        if field_key:
            await ghl.update_contact(
                ghl_contact_id,
                ContactUpdate(custom_fields=[CustomFieldValue(key=field_key, field_value=value)]),
            )
            run.log(f"custom field {field_key} set to {value}", ghl_contact_id)

    ghl_contact_id = await _on_live_contact(run, body, write)
    if ghl_contact_id is None:
        return skipped(event, DIRECTION, NO_CONTACT_DATA)
    if stale_on:
        result = skipped(event, DIRECTION, f"stale: GHL contact {ghl_contact_id} has a newer disposition")
        result.entries[:0] = run.entries
        result.effects = list(run.ledger.performed)
        return result
    await mappings.mark_disposition_applied(ghl_contact_id, disposed_at, received_at=event.received_at)
    return run.result()


def call_family_names(statuses: Sequence[str]) -> list[str]:
    """`InboundPhoneCall-<Status>` and `OutboundPhoneCall-<Status>` for each status."""
    return [f"{direction}PhoneCall-{status}" for status in statuses for direction in ("Inbound", "Outbound")]


def register_handlers(registry: HandlerRegistry) -> None:
    """Add the Aloware call-activity handlers (R-CALL-1…R-CALL-4)."""
    registry.register("aloware", CALL_DISPOSED, *call_family_names(FINISHED_CALL_STATUSES))(
        handle_finished_call
    )
    registry.register("aloware", *call_family_names(UNFINISHED_CALL_STATUSES))(handle_unfinished_call)
    registry.register(
        "aloware",
        CALL_SUMMARIZED,
        RECORDING_SAVED,
        TRANSCRIPTION_SAVED,
        VOICEMAIL_SAVED,
        COMMUNICATION_INITIATED,
        COMMUNICATION_DISPOSED,
    )(handle_call_activity)
    registry.register("aloware", CONTACT_DISPOSED)(handle_contact_disposed)
