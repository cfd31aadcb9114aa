"""The scripted day: one lead's day across GHL, Aloware and Verity, as data plus a driver.

Used by `df-middleware demo` and by the end-to-end tests (tests/test_e2e_day.py), so the day a
newcomer watches is the day the suite proves. It does not depend on pytest.

- **The day** (`DAY`) is a list of steps, each a thing that happens in one of the systems and the
  webhook it sends: a lead created in GHL (`ContactCreate`), the same person arriving in the
  dialer (Aloware `Contact Created`), an outbound call (`Call Disposed` with a recording, then
  `Recording Saved`, `Transcription Saved`, `Call Summarized`), inbound texts (Verity
  `message.received`), an agent's SMS from GHL (`ProviderOutboundMessage`, after which Verity
  posts its own `message.sent` / `message.delivered` receipts), and the contact edited in GHL and
  then in Aloware. Then consent (SPEC 6.4): a second person texts "See you this weekend" (an
  ordinary text, not an opt-out), then STOP; the agent's next text to them is refused and shown
  failed in GHL; they text START, and the agent's text goes out. Then agents and their dialer
  lists (SPEC 6.5): a third person, Riley, is created in GHL assigned to Alice (on
  DF_ALICE_NEW_LEADS), reassigned to Bob (on DF_BOB_NEW_LEADS only) and tagged `hot` (on
  DF_BOB_HOT too); and a Verity broadcast (SPEC 6.6) reports its progress, then its completion,
  which end as one GHL broadcast record with the final numbers. Payloads are shaped like
  `contracts/…` and built here in code.
- **The agents** (`DAY_AGENTS_FILE`: Alice and Bob) are applied before the day by `seed_agents`,
  through the agent directory as `agents seed` applies a file: their GHL and Aloware users exist
  in the simulators, and their ids are filled in by email.
- **The driver** (`run_day`) plays the steps in order. A step that happens *in* a simulator (a
  GHL user saving a contact, an agent texting from GHL, an agent editing in Aloware) is made in the
  simulator's state first, and the webhook is built from that state, as the real system would
  build it; it is then delivered through a `DayDeliverer` (signed, through the real ingest) and
  the queue is processed before the next step. Every webhook delivered is returned, so a test can
  deliver the day again.
- **The outcome** (`snapshot_of_world`) reduces the three simulators' state (`/_sim/state`, or
  each simulator's `snapshot()`) to a deterministic summary with generated ids and timestamps
  left out, so two runs compare with `==`; `expected_final_state` is that summary as the day
  must end under CONTACT_SOURCE_OF_TRUTH=ghl with GHL_CALL_PROVIDER_ID set, the agents seeded and
  ALOWARE_CREATE_LISTS on.

The simulators must not post their own GHL contact or provider webhooks while the driver runs
(leave `GhlSimulator.webhook_url` / `provider_delivery_url` unset): the driver delivers those, once.
Verity's receipts, on the other hand, come from the Verity simulator (its `webhook_url` points at
the service), exactly as in production.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from df_middleware.agents.directory import ApplyReport, apply_agents, parse_agents
from df_middleware.connectors.suite import Connectors
from df_middleware.db.session import Database
from df_middleware.simulators.aloware import AlowareSimulator
from df_middleware.simulators.ghl import GhlSimulator, contact_webhook
from df_middleware.simulators.verity import VeritySimulator

JSON: TypeAlias = dict[str, Any]

#: The lead whose day this is.
LEAD_PHONE = "+19195557001"
#: The business line Verity texts from (the Verity simulator's default).
BUSINESS_LINE = "+19195550000"
#: The agent who makes the call (as Aloware embeds the user in call events).
AGENT: JSON = {"id": 731, "name": "Chris Agent", "email": "chris@example.com"}
#: Aloware ids of the day's call and its recording, transcription and summary.
CALL_ID = 5550101
RECORDING_ID = 77101
TRANSCRIPTION_ID = 88101
SUMMARY_ID = 55101
RECORDING_URL = f"https://recordings.example.com/{CALL_ID}.mp3"
TRANSCRIPT = (
    "Agent: Hi Dana, this is Chris from the office, you asked for a call back. "
    "Customer: Yes, I wanted to hear about the spring offer."
)
SUMMARY = "Dana is interested in the spring offer and wants the details by email."
FIRST_TEXT_ID = "tlx_DAY0001IN"
SECOND_TEXT_ID = "tlx_DAY0002IN"
AGENT_SMS = "Great talking to you, Dana! Sending the details by email now."
#: The second person of the day: a past customer who opts out of texts, then back in.
SAM_PHONE = "+19195557002"
SAM_WEEKEND_TEXT = "See you this weekend!"
SAM_WEEKEND_ID = "tlx_DAY0003IN"
SAM_STOP_ID = "tlx_DAY0004IN"
SAM_START_ID = "tlx_DAY0005IN"
REFUSED_SMS = "Hi Sam, are we still on for Saturday?"
RESUMED_SMS = "Thanks for coming back, Sam! See you Saturday."
#: The day's agents, as an AGENTS_FILE would list them: no ids, only the email their GHL and
#: Aloware users have (the directory fills the ids in by email, R-AG-5).
ALICE_EMAIL = "alice@example.com"
BOB_EMAIL = "bob@example.com"
DAY_AGENTS_FILE = f"""\
- agent_key: ALICE
  display_name: Alice Moreno
  ghl_owner_email: {ALICE_EMAIL}
- agent_key: BOB
  display_name: Bob Okafor
  ghl_owner_email: {BOB_EMAIL}
"""
#: The third person of the day: a new lead routed to Alice, then to Bob.
RILEY_PHONE = "+19195557003"
#: The day's Verity broadcast, its numbers while it goes out and when it is done.
BROADCAST_ID = "bc_DAYSPRING"
BROADCAST_NAME = "Spring offer"
BROADCAST_SENT_AT = "2026-11-24T18:00:00Z"
BROADCAST_PROGRESS: JSON = {
    "broadcastName": BROADCAST_NAME,
    "channel": "SMS",
    "sentAt": BROADCAST_SENT_AT,
    "recipients": 400,
    "sent": 250,
    "delivered": 230,
    "pending": 150,
    "failed": 4,
    "bounced": 1,
    "optedOut": 2,
    "responses": 11,
    "appointmentsSet": 3,
}
BROADCAST_FINAL: JSON = {
    **BROADCAST_PROGRESS,
    "sent": 396,
    "delivered": 380,
    "pending": 0,
    "failed": 12,
    "bounced": 4,
    "optedOut": 5,
    "responses": 38,
    "appointmentsSet": 19,
}

Channel: TypeAlias = Literal["ghl", "provider", "aloware", "texting", "broadcast"]


# --- delivering -----------------------------------------------------------------------------------


class DayDeliverer(Protocol):
    """Where the day's webhooks go: the real ingest, signed as each system signs (the test world
    `tests.sync_world.SyncWorld` is one; the demo's is another)."""

    async def deliver_ghl(self, payload: dict[str, Any]) -> Any: ...

    async def deliver_provider_message(self, payload: dict[str, Any]) -> Any: ...

    async def deliver_aloware(self, event: str, body: dict[str, Any]) -> Any: ...

    async def deliver_texting(self, payload: dict[str, Any]) -> Any: ...

    async def deliver_broadcast(self, payload: dict[str, Any]) -> Any: ...


#: Runs the worker until the queue is settled (returns how many events it processed).
Process: TypeAlias = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class Delivered:
    """One webhook the driver delivered: through which door, and exactly what."""

    channel: Channel
    payload: JSON
    #: Aloware's event name (Aloware webhooks are `{"event", "body"}`; `payload` is the body).
    event: str | None = None

    async def deliver(self, deliver: DayDeliverer, payload: JSON | None = None) -> Any:
        """Deliver it (again), optionally with a changed payload."""
        body = copy.deepcopy(payload if payload is not None else self.payload)
        if self.channel == "ghl":
            return await deliver.deliver_ghl(body)
        if self.channel == "provider":
            return await deliver.deliver_provider_message(body)
        if self.channel == "aloware":
            assert self.event is not None
            return await deliver.deliver_aloware(self.event, body)
        if self.channel == "broadcast":
            return await deliver.deliver_broadcast(body)
        return await deliver.deliver_texting(body)


@dataclass
class DaySimulators:
    """The simulators the day happens in (their in-memory state objects)."""

    ghl: GhlSimulator
    aloware: AlowareSimulator
    verity: VeritySimulator
    location_id: str
    #: GHL_CONVERSATION_PROVIDER_ID: the provider an agent's SMS goes out through.
    conversation_provider_id: str | None = None

    def ghl_contact_id(self, phone: str) -> str:
        for contact in self.ghl.snapshot()["contacts"]:
            if contact.get("phone") == phone and not contact["deleted"]:
                return str(contact["id"])
        raise LookupError(f"GHL has no contact with phone {phone}")

    def ghl_user_id(self, email: str) -> str:
        for user in self.ghl.snapshot()["users"]:
            if str(user.get("email") or "").lower() == email.lower() and not user.get("deleted"):
                return str(user["id"])
        raise LookupError(f"GHL has no user with email {email}")

    def aloware_contact_id(self, phone: str) -> int:
        found = self.aloware.contact_by_phone(phone)
        if found is None:
            raise LookupError(f"Aloware has no contact with phone {phone}")
        return int(found["id"])


# --- the steps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GhlContactSaved:
    """A GHL user creates a contact (`phone` None) or edits the contact with that phone, and
    assigns it to the GHL user with `owner_email` when one is given (the contact's `assignedTo`);
    GHL then sends `ContactCreate` / `ContactUpdate` with the contact as it now is."""

    label: str
    changes: JSON
    phone: str | None = None
    owner_email: str | None = None

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        changes = dict(self.changes)
        if self.owner_email is not None:
            changes["assignedTo"] = sims.ghl_user_id(self.owner_email)
        if self.phone is None:
            write = sims.ghl.create_contact(sims.location_id, changes)
        else:
            contact_id = sims.ghl_contact_id(self.phone)
            write = sims.ghl.update_contact(sims.location_id, contact_id, changes)
        return [Delivered("ghl", contact_webhook(event, write.contact)) for event in write.events]


@dataclass(frozen=True)
class GhlTagsAdded:
    """A GHL user adds tags to the contact with that phone; GHL sends `ContactTagUpdate`."""

    label: str
    phone: str
    tags: tuple[str, ...]

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        write = sims.ghl.add_tags(sims.location_id, sims.ghl_contact_id(self.phone), list(self.tags))
        return [Delivered("ghl", contact_webhook(event, write.contact)) for event in write.events]


@dataclass(frozen=True)
class AlowareContactEvent:
    """Aloware reports its contact (`Contact Created` / `Contact Updated`), after an agent's
    `changes` in the dialer (none: the contact as the dialer has it)."""

    label: str
    event: str
    phone: str
    changes: JSON = field(default_factory=dict)

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        contact_id = sims.aloware_contact_id(self.phone)
        if self.changes:
            sims.aloware.update_contact(contact_id, **self.changes)
        return [Delivered("aloware", sims.aloware.webhook_contact(contact_id), self.event)]


@dataclass(frozen=True)
class AlowareCallEvent:
    """A call-family Aloware webhook about the person with `phone` (the contact and, when given,
    the agent are embedded as Aloware embeds them)."""

    label: str
    event: str
    phone: str
    body: JSON
    with_agent: bool = False

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        contact_id = sims.aloware_contact_id(self.phone)
        body: JSON = {"id": self.body["id"]}
        for key in ("call_id", "communication_id", "type", "direction"):
            if key in self.body:
                body[key] = self.body[key]
        body["contact_id"] = contact_id
        if self.with_agent:
            body["user_id"] = AGENT["id"]
        body["contact"] = sims.aloware.webhook_contact(contact_id)
        if self.with_agent:
            body["user"] = dict(AGENT)
        body.update({k: v for k, v in self.body.items() if k not in body})
        return [Delivered("aloware", body, self.event)]


@dataclass(frozen=True)
class InboundText:
    """A person texts the business line: Verity's `message.received`."""

    label: str
    phone: str
    message_id: str
    text: str
    timestamp: str

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        payload: JSON = {
            "eventType": "message.received",
            "messageId": self.message_id,
            "conversationId": f"chat_{self.phone.removeprefix('+')}",
            "direction": "inbound",
            "from": self.phone,
            "to": BUSINESS_LINE,
            "body": self.text,
            "timestamp": self.timestamp,
            "status": "received",
        }
        return [Delivered("texting", payload)]


@dataclass(frozen=True)
class AgentSms:
    """An agent texts the contact from GHL: GHL records the message `pending` and posts
    `ProviderOutboundMessage` to our provider; Verity's receipts follow once we have sent it."""

    label: str
    phone: str
    text: str

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        _, payload = sims.ghl.send_sms_as_user(
            sims.location_id,
            sims.ghl_contact_id(self.phone),
            self.text,
            conversation_provider_id=sims.conversation_provider_id,
        )
        return [Delivered("provider", dict(payload))]


@dataclass(frozen=True)
class BroadcastEvent:
    """Verity reports a broadcast (`analytics_updated` while it goes out, `broadcast_completed`
    at the end), its numbers in the event (contracts/verity/webhooks/broadcast.*)."""

    label: str
    event_type: str
    event_id: str
    timestamp: str
    analytics: JSON

    async def play(self, sims: DaySimulators) -> list[Delivered]:
        payload: JSON = {
            "broadcastId": BROADCAST_ID,
            "eventType": self.event_type,
            "eventId": self.event_id,
            "timestamp": self.timestamp,
            "analytics": dict(self.analytics),
        }
        return [Delivered("broadcast", payload)]


Step: TypeAlias = (
    GhlContactSaved
    | GhlTagsAdded
    | AlowareContactEvent
    | AlowareCallEvent
    | InboundText
    | AgentSms
    | BroadcastEvent
)

LEAD: JSON = {
    "firstName": "Dana",
    "lastName": "Whitfield",
    "email": "dana.whitfield@example.com",
    "phone": LEAD_PHONE,
    "source": "Website Form",
    "city": "Durham",
    "state": "NC",
    "country": "US",
    "tags": ["New Lead", "Spring Offer"],
}
RILEY: JSON = {
    "firstName": "Riley",
    "lastName": "Chen",
    "email": "riley.chen@example.com",
    "phone": RILEY_PHONE,
    "source": "Facebook Ad",
    "city": "Cary",
    "state": "NC",
    "country": "US",
    "tags": ["New Lead"],
}

DAY: tuple[Step, ...] = (
    GhlContactSaved(
        "A lead fills in the website form: GHL creates the contact (no owner: the default agent's "
        "DF_UNASSIGNED_NEW_LEADS)",
        LEAD,
    ),
    AlowareContactEvent("The lead arrives in the dialer", "Contact Created", LEAD_PHONE),
    InboundText(
        "Dana texts before anyone calls",
        LEAD_PHONE,
        FIRST_TEXT_ID,
        "Hi, I just filled in your form. Can someone call me?",
        "2026-11-24T15:58:00.000Z",
    ),
    AlowareCallEvent(
        "Chris calls Dana; the call is disposed",
        "Call Disposed",
        LEAD_PHONE,
        {
            "id": CALL_ID,
            "type": "call",
            "direction": "outbound",
            "disposition_status": "Interested",
            "call_disposition": "Interested",
            "status": "completed",
            "resolution": "completed",
            "duration": 245,
            "talk_time": 221,
            "wait_time": 7,
            "has_recording": True,
            "recording_url": RECORDING_URL,
            "created_at": "2026-11-24T16:30:00Z",
            "ended_at": "2026-11-24T16:34:05Z",
        },
        with_agent=True,
    ),
    AlowareCallEvent(
        "The recording is saved",
        "Recording Saved",
        LEAD_PHONE,
        {
            "id": RECORDING_ID,
            "call_id": CALL_ID,
            "communication_id": CALL_ID,
            "url": RECORDING_URL,
            "duration": 221,
            "created_at": "2026-11-24T16:35:00Z",
        },
    ),
    AlowareCallEvent(
        "The transcript is ready",
        "Transcription Saved",
        LEAD_PHONE,
        {
            "id": TRANSCRIPTION_ID,
            "call_id": CALL_ID,
            "communication_id": CALL_ID,
            "text": TRANSCRIPT,
            "created_at": "2026-11-24T16:36:00Z",
        },
    ),
    AlowareCallEvent(
        "Aloware summarises the call",
        "Call Summarized",
        LEAD_PHONE,
        {
            "id": SUMMARY_ID,
            "call_id": CALL_ID,
            "communication_id": CALL_ID,
            "summary": SUMMARY,
            "outcomes": ["Interested", "Send Details"],
            "created_at": "2026-11-24T16:37:00Z",
        },
    ),
    AgentSms("Chris texts Dana from GHL", LEAD_PHONE, AGENT_SMS),
    InboundText(
        "Dana answers",
        LEAD_PHONE,
        SECOND_TEXT_ID,
        "Got it, thanks Chris!",
        "2026-11-24T16:45:00.000Z",
    ),
    InboundText(
        "Sam, a past customer, texts 'See you this weekend!': an ordinary text, not an opt-out",
        SAM_PHONE,
        SAM_WEEKEND_ID,
        SAM_WEEKEND_TEXT,
        "2026-11-24T17:00:00.000Z",
    ),
    InboundText(
        "Sam texts STOP: opted out, recorded in GHL's conversation, GHL's SMS DND on",
        SAM_PHONE,
        SAM_STOP_ID,
        "STOP",
        "2026-11-24T17:05:00.000Z",
    ),
    AgentSms("Chris texts Sam from GHL: refused, the message shows failed in GHL", SAM_PHONE, REFUSED_SMS),
    InboundText(
        "Sam texts START: opted back in, GHL's SMS DND off",
        SAM_PHONE,
        SAM_START_ID,
        "Start",
        "2026-11-24T17:20:00.000Z",
    ),
    AgentSms("Chris texts Sam again: it goes out", SAM_PHONE, RESUMED_SMS),
    GhlContactSaved(
        "Dana's new email and city are saved in GHL",
        {"email": "dana.whitfield@example.org", "city": "Raleigh"},
        phone=LEAD_PHONE,
    ),
    AlowareContactEvent(
        "An agent sets Dana's time zone in the dialer (and a nickname GHL does not take)",
        "Contact Updated",
        LEAD_PHONE,
        {"timezone": "America/New_York", "first_name": "Dani"},
    ),
    GhlContactSaved(
        "Riley, a new lead from a Facebook ad, is created in GHL assigned to Alice: on DF_ALICE_NEW_LEADS",
        RILEY,
        owner_email=ALICE_EMAIL,
    ),
    GhlContactSaved(
        "Riley is reassigned to Bob in GHL: off Alice's lists, on DF_BOB_NEW_LEADS",
        {},
        phone=RILEY_PHONE,
        owner_email=BOB_EMAIL,
    ),
    GhlTagsAdded("Bob tags Riley 'hot': on DF_BOB_HOT too", RILEY_PHONE, ("hot",)),
    BroadcastEvent(
        "Verity reports the 'Spring offer' broadcast going out: GHL gets its broadcast record",
        "analytics_updated",
        "bcev_DAY0001",
        "2026-11-24T18:30:00Z",
        BROADCAST_PROGRESS,
    ),
    BroadcastEvent(
        "The broadcast completes: its GHL record shows the final numbers",
        "broadcast_completed",
        "bcev_DAY0002",
        "2026-11-24T19:00:00Z",
        BROADCAST_FINAL,
    ),
)


async def seed_agents(sims: DaySimulators, db: Database, connectors: Connectors) -> ApplyReport:
    """Before the day: Alice's and Bob's users in GHL and Aloware (as an admin would have made
    them), then `DAY_AGENTS_FILE` applied through the agent directory, as `agents seed` applies a
    file: parsed, and the ids filled in by email from both systems' users (R-AG-5)."""
    specs = parse_agents(DAY_AGENTS_FILE, "the demo's agents", "yaml")
    ghl_emails = {str(u.get("email") or "").lower() for u in sims.ghl.snapshot()["users"]}
    aloware_emails = {str(u.get("email") or "").lower() for u in sims.aloware.snapshot()["users"]}
    for spec in specs:
        email = spec.ghl_owner_email or ""
        if email.lower() not in ghl_emails:
            sims.ghl.add_user(sims.location_id, spec.display_name, email)
        if email.lower() not in aloware_emails:
            sims.aloware.add_user(spec.display_name, email)
    return await apply_agents(db, specs, ghl=connectors.ghl, aloware=connectors.aloware)


async def run_day(
    deliver: DayDeliverer,
    process: Process,
    sims: DaySimulators,
    *,
    steps: Sequence[Step] = DAY,
    on_step: Callable[[Step, list[Delivered]], None] | None = None,
) -> list[Delivered]:
    """Play `steps` in order: make each in its simulator, deliver its webhooks, let the queue
    settle (and Verity's receipts arrive and settle) before the next. Returns what was delivered
    (Verity's own receipts are not in it: read them from the Verity simulator)."""
    delivered: list[Delivered] = []
    for step in steps:
        webhooks = await step.play(sims)
        for webhook in webhooks:
            await webhook.deliver(deliver)
        delivered.extend(webhooks)
        await process()
        # An agent's SMS: Verity answers at once and posts its receipts shortly after.
        await sims.verity.drain()
        await process()
        if on_step is not None:
            on_step(step, webhooks)
    return delivered


# --- the outcome ----------------------------------------------------------------------------------

#: GHL contact fields the summary keeps (the profile the sync is about).
GHL_FIELDS = ("firstName", "lastName", "email", "phone", "source", "city", "state", "country", "timezone")
#: Aloware contact fields the summary keeps.
ALOWARE_FIELDS = (
    "first_name",
    "last_name",
    "email",
    "lead_source",
    "city",
    "state",
    "country",
    "timezone",
)
Fields: TypeAlias = tuple[tuple[str, str], ...]


@dataclass(frozen=True, order=True)
class NoteView:
    """A GHL note: the marker it carries (`[df:<key>]`, '' for none) and its first line."""

    marker: str
    title: str


@dataclass(frozen=True, order=True)
class MessageView:
    """A GHL conversation message, without ids or dates."""

    type: str
    direction: str
    alt_id: str
    body: str
    status: str
    #: The provider error's code of a failed message (`opted_out`…), '' for none.
    error: str = ""


@dataclass(frozen=True, order=True)
class GhlContactView:
    phone: str
    fields: Fields
    tags: tuple[str, ...]
    notes: tuple[NoteView, ...]
    conversations: int
    messages: tuple[MessageView, ...]
    #: DND status by channel (`("SMS", "active")`…), as GHL shows it; () when none is set.
    dnd: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, order=True)
class AlowareContactView:
    phone: str
    fields: Fields
    lists: tuple[str, ...]


@dataclass(frozen=True, order=True)
class VeritySendView:
    """A message sent through Verity; `correlated` names the GHL message its correlation id is
    (`<phone>: <body>`), '' when it names none."""

    correlated: str
    to: str
    body: str
    status: str


@dataclass(frozen=True, order=True)
class AlowareListView:
    """An Aloware power-dialer list: its name and its members' phones (sorted)."""

    name: str
    members: tuple[str, ...]


#: A GHL custom-object record's properties, sorted by name.
Properties: TypeAlias = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class GhlRecordView:
    """A GHL custom-object record (a broadcast's): its object and properties, without ids."""

    object_key: str
    properties: Properties


@dataclass(frozen=True)
class WorldSnapshot:
    """The three systems' state with generated ids and timestamps left out (comparable with ==)."""

    ghl_contacts: tuple[GhlContactView, ...]
    aloware_contacts: tuple[AlowareContactView, ...]
    verity_sends: tuple[VeritySendView, ...]
    #: Aloware's lists, by name (an emptied list stays: it was created and is now empty).
    aloware_lists: tuple[AlowareListView, ...]
    #: GHL's custom-object records (the broadcast's), by object and properties.
    ghl_records: tuple[GhlRecordView, ...]


def _fields(source: Mapping[str, Any], names: Sequence[str]) -> Fields:
    return tuple((name, str(source[name])) for name in names if source.get(name) not in (None, ""))


def _dnd(contact: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    settings = contact.get("dndSettings") or {}
    return tuple(
        sorted(
            (str(channel), str(setting.get("status")))
            for channel, setting in settings.items()
            if isinstance(setting, Mapping) and setting.get("status")
        )
    )


def _properties(record: Mapping[str, Any]) -> Properties:
    return tuple(sorted((str(name), value) for name, value in (record.get("properties") or {}).items()))


def _note_view(note: Mapping[str, Any]) -> NoteView:
    lines = str(note.get("body") or "").splitlines()
    marker = next((line.strip() for line in reversed(lines) if line.strip().startswith("[df:")), "")
    return NoteView(marker=marker, title=lines[0] if lines else "")


def snapshot_of_world(
    ghl: Mapping[str, Any], aloware: Mapping[str, Any], verity: Mapping[str, Any]
) -> WorldSnapshot:
    """Reduce the simulators' states (each `snapshot()`, i.e. `GET /_sim/state`) to a summary:
    GHL contacts by phone (profile, tags, notes by marker and first line, conversation count,
    messages by type/direction/altId/body/status), Aloware contacts by phone (profile, list names),
    Verity sends by the GHL message they correlate to, Aloware's lists with their members' phones
    and GHL's custom-object records with their properties. Duplicates stay visible (a second note,
    message, list of one name or record is a second entry), and everything is sorted, so equal
    worlds give equal summaries."""
    contacts = [c for c in ghl["contacts"] if not c.get("deleted")]
    phone_of = {c["id"]: str(c.get("phone") or "") for c in contacts}
    conversations: dict[str, int] = {}
    for conversation in ghl["conversations"]:
        if not conversation.get("deleted"):
            cid = conversation["contactId"]
            conversations[cid] = conversations.get(cid, 0) + 1
    messages: dict[str, list[MessageView]] = {}
    label_of_message: dict[str, str] = {}
    for message in ghl["messages"]:
        view = MessageView(
            type=str(message["type"]),
            direction=str(message["direction"]),
            alt_id=str(message.get("altId") or ""),
            body=str(message.get("body") or ""),
            status=str(message["status"]),
            error=str((message.get("error") or {}).get("code") or ""),
        )
        messages.setdefault(message["contactId"], []).append(view)
        label_of_message[message["id"]] = f"{phone_of.get(message['contactId'], '?')}: {view.body}"
    ghl_views = tuple(
        sorted(
            GhlContactView(
                phone=phone_of[c["id"]],
                fields=_fields(c, GHL_FIELDS),
                tags=tuple(sorted(c.get("tags") or [])),
                notes=tuple(sorted(_note_view(n) for n in c.get("notes") or [])),
                conversations=conversations.get(c["id"], 0),
                messages=tuple(sorted(messages.get(c["id"], []))),
                dnd=_dnd(c),
            )
            for c in contacts
        )
    )
    list_names = {found["id"]: str(found["name"]) for found in aloware["lists"]}
    memberships: dict[Any, list[str]] = {}
    for found in aloware["lists"]:
        for contact_id in found["contact_ids"]:
            memberships.setdefault(contact_id, []).append(list_names[found["id"]])
    aloware_views = tuple(
        sorted(
            AlowareContactView(
                phone=str(c["phone_number"]),
                fields=_fields(c, ALOWARE_FIELDS),
                lists=tuple(sorted(memberships.get(c["id"], []))),
            )
            for c in aloware["contacts"]
        )
    )
    verity_views = tuple(
        sorted(
            VeritySendView(
                correlated=label_of_message.get(str(m.get("correlationId")), ""),
                to=str(m["to"]),
                body=str(m["body"]),
                status=str(m["status"]),
            )
            for m in verity["sent_messages"]
        )
    )
    phone_of_aloware = {c["id"]: str(c["phone_number"]) for c in aloware["contacts"]}
    list_views = tuple(
        sorted(
            AlowareListView(
                name=str(found["name"]),
                members=tuple(sorted(phone_of_aloware.get(cid, f"?{cid}") for cid in found["contact_ids"])),
            )
            for found in aloware["lists"]
        )
    )
    record_views = tuple(
        sorted(
            (
                GhlRecordView(
                    object_key=str(record["objectKey"]),
                    properties=_properties(record),
                )
                for record in ghl.get("records") or []
            ),
            key=lambda view: (view.object_key, repr(view.properties)),
        )
    )
    return WorldSnapshot(ghl_views, aloware_views, verity_views, list_views, record_views)


def snapshot_of_simulators(sims: DaySimulators) -> WorldSnapshot:
    """`snapshot_of_world` of in-process simulators."""
    return snapshot_of_world(sims.ghl.snapshot(), sims.aloware.snapshot(), sims.verity.snapshot())


def _marker(kind: str) -> str:
    return f"[df:aloware:call:{CALL_ID}:note:{kind}]"


def expected_final_state() -> WorldSnapshot:
    """How `DAY` must leave the world (CONTACT_SOURCE_OF_TRUTH=ghl, GHL_CALL_PROVIDER_ID and
    GHL_CONVERSATION_PROVIDER_ID set): one GHL contact with the lead's profile, the GHL edit and
    the time zone Aloware filled in (GHL keeps its first name: GHL owns the profile), its tags plus
    the call's and summary's; one note per call event; the call log, both inbound texts and the
    agent's SMS, delivered; one Aloware contact with the GHL profile and the agent's own edits;
    one Verity send for the agent's SMS, delivered. And Sam, who opted out and back in, Riley and
    their lists, and the broadcast's record (below)."""
    ghl_contact = GhlContactView(
        phone=LEAD_PHONE,
        fields=(
            ("firstName", "Dana"),
            ("lastName", "Whitfield"),
            ("email", "dana.whitfield@example.org"),
            ("phone", LEAD_PHONE),
            ("source", "Website Form"),
            ("city", "Raleigh"),
            ("state", "NC"),
            ("country", "US"),
            ("timezone", "America/New_York"),
        ),
        tags=tuple(
            sorted(
                (
                    "new lead",
                    "spring offer",
                    "call: interested",
                    "outbound call",
                    "summary: interested",
                    "summary: send details",
                )
            )
        ),
        notes=tuple(
            sorted(
                (
                    NoteView(_marker("call-disposed"), "Outbound call disposed (Aloware)"),
                    NoteView(_marker("recording"), "Call recording (Aloware)"),
                    NoteView(_marker("transcription"), "Call transcript (Aloware)"),
                    NoteView(_marker("summary"), "Call summary (Aloware)"),
                )
            )
        ),
        conversations=1,
        messages=tuple(
            sorted(
                (
                    MessageView("Call", "outbound", f"aloware-call-{CALL_ID}", "", "completed"),
                    MessageView(
                        "SMS",
                        "inbound",
                        FIRST_TEXT_ID,
                        "Hi, I just filled in your form. Can someone call me?",
                        "delivered",
                    ),
                    MessageView("SMS", "inbound", SECOND_TEXT_ID, "Got it, thanks Chris!", "delivered"),
                    MessageView("SMS", "outbound", "", AGENT_SMS, "delivered"),
                )
            )
        ),
    )
    aloware_contact = AlowareContactView(
        phone=LEAD_PHONE,
        fields=(
            ("first_name", "Dani"),
            ("last_name", "Whitfield"),
            ("email", "dana.whitfield@example.org"),
            ("lead_source", "Website Form"),
            ("city", "Raleigh"),
            ("state", "NC"),
            ("country", "US"),
            ("timezone", "America/New_York"),
        ),
        # No owner: the default agent's new-lead list (R-AG-1, R-AG-2).
        lists=("DF_UNASSIGNED_NEW_LEADS",),
    )
    send = VeritySendView(
        correlated=f"{LEAD_PHONE}: {AGENT_SMS}", to=LEAD_PHONE, body=AGENT_SMS, status="delivered"
    )
    # Sam: a contact their first text created (phone and source only); all three texts in the
    # conversation (the STOP too, R-OPT-3); the text sent while they were opted out failed with
    # `opted_out` and never reached Verity (R-OPT-4); after START, SMS DND off and the next text
    # delivered (R-OPT-5).
    sam = GhlContactView(
        phone=SAM_PHONE,
        fields=(("phone", SAM_PHONE), ("source", "SMS")),
        tags=(),
        notes=(),
        conversations=1,
        messages=tuple(
            sorted(
                (
                    MessageView("SMS", "inbound", SAM_WEEKEND_ID, SAM_WEEKEND_TEXT, "delivered"),
                    MessageView("SMS", "inbound", SAM_STOP_ID, "STOP", "delivered"),
                    MessageView("SMS", "inbound", SAM_START_ID, "Start", "delivered"),
                    MessageView("SMS", "outbound", "", REFUSED_SMS, "failed", "opted_out"),
                    MessageView("SMS", "outbound", "", RESUMED_SMS, "delivered"),
                )
            )
        ),
        dnd=(("SMS", "inactive"),),
    )
    resumed = VeritySendView(
        correlated=f"{SAM_PHONE}: {RESUMED_SMS}", to=SAM_PHONE, body=RESUMED_SMS, status="delivered"
    )
    # Riley: created with Alice as owner, reassigned to Bob, tagged hot. GHL holds the profile and
    # the tags (GHL lower-cases them); Aloware the same profile, on Bob's new-lead and hot lists
    # only (R-AG-1…R-AG-3); Alice's new-lead list, created for Riley, is left empty.
    riley_ghl = GhlContactView(
        phone=RILEY_PHONE,
        fields=(
            ("firstName", "Riley"),
            ("lastName", "Chen"),
            ("email", "riley.chen@example.com"),
            ("phone", RILEY_PHONE),
            ("source", "Facebook Ad"),
            ("city", "Cary"),
            ("state", "NC"),
            ("country", "US"),
        ),
        tags=("hot", "new lead"),
        notes=(),
        conversations=0,
        messages=(),
    )
    riley_aloware = AlowareContactView(
        phone=RILEY_PHONE,
        fields=(
            ("first_name", "Riley"),
            ("last_name", "Chen"),
            ("email", "riley.chen@example.com"),
            ("lead_source", "Facebook Ad"),
            ("city", "Cary"),
            ("state", "NC"),
            ("country", "US"),
        ),
        lists=("DF_BOB_HOT", "DF_BOB_NEW_LEADS"),
    )
    lists = (
        AlowareListView("DF_ALICE_NEW_LEADS", ()),
        AlowareListView("DF_BOB_HOT", (RILEY_PHONE,)),
        AlowareListView("DF_BOB_NEW_LEADS", (RILEY_PHONE,)),
        AlowareListView("DF_UNASSIGNED_NEW_LEADS", (LEAD_PHONE,)),
    )
    # The broadcast: one record (R-BC-2) with the completion's numbers (R-BC-3), rates computed by
    # hand from BROADCAST_FINAL (R-BC-1): delivered/sent = 380/396, (failed+bounced)/sent = 16/396,
    # responses/delivered = 38/380, appointments/responses = 19/38, opted out/delivered = 5/380.
    record = GhlRecordView(
        object_key="custom_objects.broadcasts",
        properties=tuple(
            sorted(
                {
                    "broadcast_id": BROADCAST_ID,
                    "broadcast_name": BROADCAST_NAME,
                    "channel": "SMS",
                    "sent_at": BROADCAST_SENT_AT,
                    "recipients": 400,
                    "sent": 396,
                    "delivered": 380,
                    "pending": 0,
                    "failed": 12,
                    "bounced": 4,
                    "responses": 38,
                    "appointments_set": 19,
                    "delivery_rate": 0.9596,
                    "failure_rate": 0.0404,
                    "response_rate": 0.1,
                    "conversion_rate": 0.5,
                    "opt_out_rate": 0.0132,
                }.items()
            )
        ),
    )
    return WorldSnapshot(
        tuple(sorted((ghl_contact, sam, riley_ghl))),
        tuple(sorted((aloware_contact, riley_aloware))),
        tuple(sorted((send, resumed))),
        lists,
        (record,),
    )
