"""The soak's traffic: a population of people, what happens to each of them, and the webhooks
that tell the service — plus the oracle's own record of what every system must hold at the end.

**People** (`Person`) are of four kinds, each with a short script of steps played in order:

- `lead`: created in GHL by a user (owner Alice, Bob or nobody; some tagged `hot`), then edits,
  tag changes, reassignment, inbound texts (ordinary, with stop-words, STOP / START / HELP),
  agent texts from GHL and dialer calls (once the service has put the lead in Aloware);
- `dnd`: a lead whose SMS DND a GHL user switches on and off;
- `dialer`: created in Aloware by an agent, then called, then edited in the dialer;
- `texter`: an unknown number texting the business line (STOP / START / HELP too), then texted
  back by an agent once the service has created the GHL contact.

Broadcasts (`Broadcast`) report their analytics in bursts, then complete.

**Delivery** (`Deliverer`): every webhook is signed as its system signs it and posted to one of
the two servers; like a provider, a sender retries on the other server after a transport error,
a 5xx or a 429, until a deadline. 20 % are delivered twice (at the same moment to both servers,
right after the first was acknowledged, or much later — after the person's next steps); a GHL
copy is sometimes a resend with a new `webhookId`. Some pairs go out of order on purpose: two
edits of a contact delivered newest first, a STOP and a START delivered in reverse, a call's
events shuffled, a broadcast update arriving after its completion.

**The oracle** is written here, not read from the service: a person's steps record what they
must leave behind (the profile, the notes of every call event, every inbound text, the fate of
every agent text), and consent is modelled independently (`Person.opted_out_now`): the decision
in force is the latest by the texts' own time — an opt-out winning a tie — among the consent
texts acknowledged so far. One person's steps are serialized (the next waits for the previous
acknowledgement) and their texts and agent sends share the service's per-phone order, so "the
decision in force when the agent's text was accepted" is well defined.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from soak_world import AGENTS, LOCATION, PROVIDER, Secrets, Simulators

from df_middleware.simulators.common import system_now
from df_middleware.simulators.ghl import contact_webhook

BUSINESS_LINE = "+19195550000"
FIRST_NAMES = ("Dana", "Riley", "Sam", "Avery", "Jordan", "Casey", "Morgan", "Quinn", "Taylor", "Jamie")
LAST_NAMES = ("Whitfield", "Chen", "Okafor", "Moreno", "Patel", "Nguyen", "Kowalski", "Haddad", "Silva")
ORDINARY_TEXTS = (
    "Hi, can someone call me back?",
    "Got it, thanks!",
    "What time works tomorrow?",
    "Is the spring offer still on?",
)
#: Ordinary texts that contain consent words without being a consent keyword (R-OPT-1).
STOPWORD_TEXTS = (
    "Please don't stop calling, I'm interested",
    "stop by tomorrow?",
    "Can you help me with the form",
    "START date is Monday",
)
STOP_SPELLINGS = ("STOP", "stop", "Stop.", "UNSUBSCRIBE", "cancel")
START_SPELLINGS = ("START", "start", "Unstop", "YES")
HELP_SPELLINGS = ("HELP", "help", "INFO")
DISPOSITIONS = ("Interested", "Not Interested", "Left Voicemail", "Call Back")
OUTCOMES = (("Interested", "Send Details"), ("Not Interested",), ("Call Back",))
#: How long a sender keeps retrying one webhook (a provider retries for much longer).
DELIVERY_DEADLINE_SECONDS = 240.0


def iso_now(offset_seconds: float = 0.0, *, system: str | None = None) -> str:
    """Now (plus `offset_seconds`), as `system`'s clock reads it (its simulator's skew), else ours."""
    moment = (system_now(system) if system else datetime.now(UTC)) + timedelta(seconds=offset_seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- delivery -------------------------------------------------------------------------------------


@dataclass
class Webhook:
    """One webhook as its system would send it (unsigned), and what identifies it."""

    channel: str  # ghl | provider | aloware | texting | broadcast
    payload: dict[str, Any]
    #: Aloware's event name (Aloware posts `{"event", "body"}`; `payload` is the body).
    event: str | None = None

    def identity(self, body: dict[str, Any]) -> str:
        """What the service must store for this delivery (see `stored_identity`)."""
        return stored_identity(self.channel, body)


def stored_identity(channel: str, body: dict[str, Any]) -> str:
    """The identity of a webhook body as posted (and as the service stores it): GHL's
    `webhookId`, the provider message id, Aloware's event with the object id (and `updated_at`
    for contact events), Verity's event type with the message id, a broadcast event's id."""
    if channel == "ghl":
        return f"ghl:{body.get('webhookId')}"
    if channel == "provider":
        return f"provider:{body.get('messageId')}"
    if channel == "aloware":
        inner = body.get("body") or {}
        return f"aloware:{body.get('event')}:{inner.get('id')}:{inner.get('updated_at') or ''}"
    if channel == "texting":
        return f"texting:{body.get('eventType')}:{body.get('messageId')}"
    return f"broadcast:{body.get('eventId')}"


@dataclass
class Delivery:
    """One posting of a webhook (the first or a copy) and how it ended."""

    channel: str
    identity: str
    phase: str
    copy: bool
    acked: bool = False
    status: int | None = None
    attempts: int = 0
    latency_ms: float | None = None
    server: int | None = None
    failures: Counter[str] = field(default_factory=Counter)


class Deliverer:
    """Posts webhooks to the servers, signed, retrying like a provider (see the module docstring)."""

    def __init__(self, servers: list[str], keys: Secrets, phase: Any, rng: random.Random) -> None:
        self.servers = servers
        self.keys = keys
        self.phase = phase  # () -> str: the phase now
        self.rng = rng
        self.deliveries: list[Delivery] = []
        self.clients = [httpx.AsyncClient(base_url=url, timeout=15) for url in servers]
        self.tasks: set[asyncio.Task[Any]] = set()

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

    def _body(self, webhook: Webhook, *, resend: bool) -> tuple[dict[str, Any], bytes, dict[str, str]]:
        keys = self.keys
        if webhook.channel == "ghl":
            # GHL stamps an event when it happens (`timestamp`, the order the service relies on);
            # a resend of it is the same event under a new `webhookId`.
            body = {"locationId": LOCATION, **webhook.payload}
            if resend:
                body["webhookId"] = uuid.uuid4().hex[:24]
            raw = orjson.dumps(body)
            return body, raw, {"x-ghl-signature": base64.b64encode(keys.ghl_key.sign(raw)).decode()}
        if webhook.channel == "provider":
            body = {"locationId": LOCATION, **webhook.payload}
            raw = orjson.dumps(body)
            return body, raw, {"x-ghl-signature": base64.b64encode(keys.ghl_key.sign(raw)).decode()}
        if webhook.channel == "aloware":
            body = {"event": webhook.event, "body": webhook.payload}
            raw = orjson.dumps(body)
            return body, raw, {"authorization": f"Bearer {keys.aloware_webhook_token}"}
        raw = orjson.dumps(webhook.payload)
        signature = hmac.new(keys.texting_secret.encode(), raw, hashlib.sha256).hexdigest()
        header = "x-texting-signature" if webhook.channel == "texting" else "x-broadcast-signature"
        return webhook.payload, raw, {header: signature}

    async def post(
        self,
        channel: str,
        body: dict[str, Any],
        raw: bytes,
        headers: dict[str, str],
        *,
        copy: bool,
        server: int | None = None,
    ) -> Delivery:
        """Post until acknowledged (2xx), refused (a 4xx other than 429) or past the deadline."""
        path = {
            "ghl": "/api/webhooks/ghl",
            "provider": "/api/webhooks/ghl/provider-delivery",
            "aloware": "/api/webhooks/aloware",
            "texting": "/api/webhooks/texting",
            "broadcast": "/api/webhooks/broadcast",
        }[channel]
        delivery = Delivery(channel, stored_identity(channel, body), self.phase(), copy)
        self.deliveries.append(delivery)
        target = self.rng.randrange(len(self.clients)) if server is None else server
        deadline = time.monotonic() + DELIVERY_DEADLINE_SECONDS
        pause = 0.1
        while True:
            delivery.attempts += 1
            started = time.perf_counter()
            try:
                answer = await self.clients[target].post(
                    path, content=raw, headers={"content-type": "application/json", **headers}
                )
            except httpx.HTTPError as exc:
                delivery.failures[type(exc).__name__] += 1
            else:
                delivery.status = answer.status_code
                if 200 <= answer.status_code < 300:
                    delivery.acked = True
                    delivery.latency_ms = (time.perf_counter() - started) * 1000
                    delivery.server = target
                    return delivery
                delivery.failures[str(answer.status_code)] += 1
                if 400 <= answer.status_code < 500 and answer.status_code not in (408, 429):
                    return delivery  # refused: a bug in the sender or the service, reported
            if time.monotonic() > deadline:
                return delivery
            target = (target + 1) % len(self.clients)  # the other server, as a load balancer would
            await asyncio.sleep(pause * (0.5 + self.rng.random()))
            pause = min(pause * 2, 3.0)

    async def deliver(self, webhook: Webhook, *, copy_chance: float) -> Delivery:
        """Deliver `webhook` once (awaited), and maybe a copy (see the module docstring)."""
        body, raw, headers = self._body(webhook, resend=False)
        copy_kind = (
            self.rng.choice(("together", "after", "later")) if self.rng.random() < copy_chance else None
        )
        if copy_kind == "together":
            first = self.rng.randrange(2)
            twin = asyncio.create_task(
                self.post(webhook.channel, body, raw, headers, copy=True, server=1 - first)
            )
            self._track(twin)
            return await self.post(webhook.channel, body, raw, headers, copy=False, server=first)
        delivery = await self.post(webhook.channel, body, raw, headers, copy=False)
        if copy_kind is not None:
            delay = 0.0 if copy_kind == "after" else self.rng.uniform(5, 60)
            resend = webhook.channel == "ghl" and self.rng.random() < 0.5
            self._track(asyncio.create_task(self._copy_later(webhook, body, raw, headers, delay, resend)))
        return delivery

    async def _copy_later(
        self,
        webhook: Webhook,
        body: dict[str, Any],
        raw: bytes,
        headers: dict[str, str],
        delay: float,
        resend: bool,
    ) -> None:
        await asyncio.sleep(delay)
        if resend:  # GHL sends the same event again under a new webhookId
            body, raw, headers = self._body(webhook, resend=True)
        await self.post(webhook.channel, body, raw, headers, copy=True)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


# --- people and what they must leave behind --------------------------------------------------------


@dataclass
class AgentSend:
    """An agent's text from GHL: its GHL message, and whether consent allowed it when accepted."""

    message_id: str
    allowed: bool
    body: str


@dataclass
class Person:
    index: int
    kind: str
    phone: str
    first: str
    last: str
    email: str
    steps: list[str]
    agent: str | None = None
    busy: bool = False
    #: Tags the GHL users gave the contact (lower case, as GHL stores them).
    tags: set[str] = field(default_factory=set)
    timezone: str | None = None
    ghl_contact_id: str | None = None
    aloware_contact_id: int | None = None
    #: Notes the service must have written: `[df:…]` markers.
    notes: set[str] = field(default_factory=set)
    call_tags: set[str] = field(default_factory=set)
    #: Aloware call ids whose `Call Disposed` was acknowledged (a call log each).
    calls: set[int] = field(default_factory=set)
    #: Verity ids of the person's inbound texts acknowledged (each one GHL message).
    inbound: set[str] = field(default_factory=set)
    #: Consent texts acknowledged: (their own time, is opt-out).
    consent: list[tuple[str, bool]] = field(default_factory=list)
    sends: list[AgentSend] = field(default_factory=list)
    #: Whether a HELP reply must have gone out (a HELP acknowledged while opted in).
    help_reply: bool = False
    #: The SMS DND a GHL user set (dnd people), None when never touched.
    dnd_active: bool | None = None
    #: Put on do-not-call in Aloware (dialer people): GHL Call DND on, off every list (R-OPT-6).
    voice_dnc: bool = False
    #: Deleted in GHL by a user (a lead's last step): it stays deleted, and its Aloware contact is
    #: on no list (R-C-4).
    deleted: bool = False
    #: Steps played so far (a person with none is not judged: the run never reached them).
    played: int = 0
    #: What happened to them, in order (written to `oracle.json` for whoever reads a verdict).
    history: list[str] = field(default_factory=list)
    #: Steps not played because what they need never appeared (reported).
    stranded: list[str] = field(default_factory=list)

    def opted_out_now(self) -> bool:
        """The consent decision in force: the latest consent text by its own time (an opt-out
        wins a tie), or a GHL DND switched on; opted in when nothing decided."""
        if self.dnd_active:
            return True
        if not self.consent:
            return False
        return max(self.consent)[1]

    @property
    def decided_by_text(self) -> bool:
        return bool(self.consent)


@dataclass
class Broadcast:
    broadcast_id: str
    name: str
    recipients: int
    steps: list[str]
    busy: bool = False
    final: dict[str, Any] | None = None
    sent_at: str = field(default_factory=iso_now)


LEAD_EXTRAS = (
    "ghl_update",
    "ghl_updates_reversed",
    "tag_hot",
    "tag_other",
    "reassign",
    "text",
    "stopword_text",
    "agent_sms",
    "agent_sms",
    "call",
    "call",
    "stop",
    "start",
    "help",
    "consent_reversed",
)
TEXTER_EXTRAS = (
    "text",
    "stopword_text",
    "stop",
    "start",
    "help",
    "agent_sms",
    "agent_sms",
    "consent_reversed",
)


def make_population(count: int, rng: random.Random) -> list[Person]:
    people = []
    for index in range(count):
        draw = rng.random()
        kind = "lead" if draw < 0.55 else "dnd" if draw < 0.60 else "dialer" if draw < 0.75 else "texter"
        if kind == "lead":
            steps = ["ghl_create", *rng.sample(LEAD_EXTRAS, rng.randint(1, 5))]
            # A text to someone after they opted out, the case consent exists for.
            if "stop" in steps and rng.random() < 0.7:
                steps.insert(steps.index("stop") + 1, "agent_sms")
            if rng.random() < 0.05:
                steps.append("ghl_delete")  # last: nothing is played for a deleted lead
        elif kind == "dnd":
            steps = ["ghl_create", "dnd_on", *rng.sample(("ghl_update", "tag_hot"), 1), "dnd_off"]
            if rng.random() < 0.5:
                steps.append("dnd_on")
        elif kind == "dialer":
            steps = ["aloware_create", "call", *rng.sample(("aloware_update", "call"), rng.randint(1, 2))]
            if rng.random() < 0.3:
                steps.append("dnc_on")  # last: the dialer calls nobody on do-not-call
        else:
            steps = ["text", *rng.sample(TEXTER_EXTRAS, rng.randint(1, 4))]
            if "stop" in steps and rng.random() < 0.7:
                steps.insert(steps.index("stop") + 1, "agent_sms")
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        people.append(
            Person(
                index=index,
                kind=kind,
                phone=f"+1919555{1000 + index:04d}",
                first=first,
                last=last,
                email=f"{first.lower()}.{last.lower()}.{index}@example.com",
                steps=steps,
            )
        )
    return people


class Stream:
    """Plays people's and broadcasts' steps into the simulators and the service."""

    def __init__(
        self, sims: Simulators, deliverer: Deliverer, rng: random.Random, *, copy_chance: float
    ) -> None:
        self.sims = sims
        self.deliver = deliverer
        self.rng = rng
        self.copy_chance = copy_chance
        self.next_call_id = 7_000_001
        self.next_text = 1
        self.steps_played: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        self.errors: list[str] = []

    # --- preconditions: what a step needs to exist first -------------------------------------------

    def ready(self, person: Person) -> bool:
        """Whether the person's next step can be played now (what it needs exists)."""
        step = person.steps[0]
        if step == "call" and person.kind != "dialer" and self._aloware_id(person) is None:
            return False
        return not (step in ("agent_sms", "ghl_delete") and self._ghl_id(person) is None)

    def _ghl_id(self, person: Person) -> str | None:
        if person.ghl_contact_id is None:
            for contact in self.sims.ghl.contacts.values():
                if not contact.deleted and contact.profile.get("phone") == person.phone:
                    person.ghl_contact_id = contact.id
                    break
        return person.ghl_contact_id

    def _aloware_id(self, person: Person) -> int | None:
        if person.aloware_contact_id is None:
            found = self.sims.aloware.contact_by_phone(person.phone)
            if found is not None:
                person.aloware_contact_id = int(found["id"])
        return person.aloware_contact_id

    # --- playing ------------------------------------------------------------------------------------

    async def play(self, person: Person) -> None:
        step = person.steps.pop(0)
        try:
            person.played += 1
            person.history.append(f"{iso_now()} {step}")
            await getattr(self, f"_{step}")(person)
            self.steps_played[step] += 1
        except Exception as exc:  # a bug of the soak itself: reported in the verdict
            self.errors.append(f"{person.phone} {step}: {type(exc).__name__}: {exc}")
        finally:
            person.busy = False

    async def _send(self, webhook: Webhook) -> bool:
        delivery = await self.deliver.deliver(webhook, copy_chance=self.copy_chance)
        return delivery.acked

    @staticmethod
    def _ghl_webhooks(write: Any) -> list[Webhook]:
        """The webhooks GHL sends about a contact write, stamped when the write happened."""
        return [Webhook("ghl", contact_webhook(event, write.contact)) for event in write.events]

    async def _ghl_write(self, write: Any) -> bool:
        return await self._send_all(self._ghl_webhooks(write))

    async def _send_all(self, webhooks: list[Webhook]) -> bool:
        acked = True
        for webhook in webhooks:
            acked = await self._send(webhook) and acked
        return acked

    def _owner_id(self, agent: str | None) -> str | None:
        if agent is None:
            return None
        email = next(e for key, _n, e in AGENTS if key == agent)
        return next(str(u["id"]) for u in self.sims.ghl.users.values() if u.get("email") == email)

    async def _ghl_create(self, person: Person) -> None:
        person.agent = self.rng.choice(("ALICE", "BOB", None))
        if self.rng.random() < 0.3:
            person.tags.add("hot")
        body: dict[str, Any] = {
            "firstName": person.first,
            "lastName": person.last,
            "email": person.email,
            "phone": person.phone,
            "source": "Website Form",
            "tags": sorted(person.tags),
        }
        if (owner := self._owner_id(person.agent)) is not None:
            body["assignedTo"] = owner
        write = self.sims.ghl.create_contact(LOCATION, body)
        person.ghl_contact_id = write.contact["id"]
        await self._ghl_write(write)

    async def _ghl_update(self, person: Person) -> None:
        person.last = self.rng.choice(LAST_NAMES)
        suffix = self.rng.randrange(999)
        person.email = f"{person.first.lower()}.{person.last.lower()}.{person.index}.{suffix}@example.org"
        write = self.sims.ghl.update_contact(
            LOCATION, str(person.ghl_contact_id), {"lastName": person.last, "email": person.email}
        )
        await self._ghl_write(write)

    async def _ghl_updates_reversed(self, person: Person) -> None:
        """Two edits; GHL's webhooks for them arrive newest first (the older must not win)."""
        batches = []
        for _ in range(2):
            person.email = f"{person.first.lower()}.{person.index}.{self.rng.randrange(99999)}@example.net"
            write = self.sims.ghl.update_contact(
                LOCATION, str(person.ghl_contact_id), {"email": person.email}
            )
            batches.append(self._ghl_webhooks(write))
            await asyncio.sleep(0.002)  # distinct timestamps (GHL's are in milliseconds)
        for webhooks in reversed(batches):
            await self._send_all(webhooks)

    async def _tag_hot(self, person: Person) -> None:
        person.tags.add("hot")
        await self._ghl_write(self.sims.ghl.add_tags(LOCATION, str(person.ghl_contact_id), ["hot"]))

    async def _tag_other(self, person: Person) -> None:
        tag = self.rng.choice(("spring offer", "referral", "vip"))
        person.tags.add(tag)
        await self._ghl_write(self.sims.ghl.add_tags(LOCATION, str(person.ghl_contact_id), [tag]))

    async def _reassign(self, person: Person) -> None:
        person.agent = self.rng.choice([a for a in ("ALICE", "BOB", None) if a != person.agent])
        owner = self._owner_id(person.agent)
        write = self.sims.ghl.update_contact(
            LOCATION, str(person.ghl_contact_id), {"assignedTo": owner or ""}
        )
        await self._ghl_write(write)

    async def _dnd_on(self, person: Person) -> None:
        await self._dnd(person, True)

    async def _dnd_off(self, person: Person) -> None:
        await self._dnd(person, False)

    async def _dnd(self, person: Person, active: bool) -> None:
        setting = {"status": "active" if active else "inactive", "message": "set by a GHL user", "code": ""}
        write = self.sims.ghl.update_contact(
            LOCATION, str(person.ghl_contact_id), {"dndSettings": {"SMS": setting}}
        )
        if await self._ghl_write(write):
            person.dnd_active = active

    async def _aloware_create(self, person: Person) -> None:
        contact = self.sims.aloware.add_contact(
            person.phone,
            first_name=person.first,
            last_name=person.last,
            email=person.email,
            lead_source="Dialer",
        )
        person.aloware_contact_id = int(contact["id"])
        await self._send(
            Webhook(
                "aloware", self.sims.aloware.webhook_contact(person.aloware_contact_id), "Contact Created"
            )
        )

    async def _dnc_on(self, person: Person) -> None:
        """An agent puts the contact on do-not-call in Aloware (R-OPT-6)."""
        contact_id = int(person.aloware_contact_id or 0)
        self.sims.aloware.update_contact(contact_id, is_dnc=True)
        body = self.sims.aloware.webhook_contact(contact_id)
        if await self._send(Webhook("aloware", body, "Contact DNC Updated")):
            person.voice_dnc = True

    async def _ghl_delete(self, person: Person) -> None:
        """A GHL user deletes the lead (R-C-4)."""
        write = self.sims.ghl.delete_contact(LOCATION, str(self._ghl_id(person)))
        if await self._ghl_write(write):
            person.deleted = True

    async def _aloware_update(self, person: Person) -> None:
        person.timezone = self.rng.choice(("America/New_York", "America/Chicago", "America/Denver"))
        contact_id = int(person.aloware_contact_id or 0)
        self.sims.aloware.update_contact(contact_id, timezone=person.timezone)
        await self._send(Webhook("aloware", self.sims.aloware.webhook_contact(contact_id), "Contact Updated"))

    async def _call(self, person: Person) -> None:
        """An outbound call and the events Aloware sends about it (some shuffled)."""
        contact_id = self._aloware_id(person)
        assert contact_id is not None
        call_id = self.next_call_id
        self.next_call_id += 1
        disposition = self.rng.choice(DISPOSITIONS)
        contact = self.sims.aloware.webhook_contact(contact_id)
        agent = {"id": 731, "name": "Chris Agent", "email": "chris@example.com"}
        base = {"contact_id": contact_id, "contact": contact}
        events: list[tuple[str, dict[str, Any], str]] = [
            (
                "Call Disposed",
                {
                    "id": call_id,
                    "type": "call",
                    "direction": "outbound",
                    **base,
                    "user_id": agent["id"],
                    "user": agent,
                    "disposition_status": disposition,
                    "call_disposition": disposition,
                    "status": "completed",
                    "resolution": "completed",
                    "duration": 245,
                    "talk_time": 221,
                    "wait_time": 7,
                    "has_recording": True,
                    "recording_url": f"https://recordings.example.com/{call_id}.mp3",
                    "created_at": iso_now(-300, system="aloware"),
                    "ended_at": iso_now(-60, system="aloware"),
                },
                "call-disposed",
            )
        ]
        tags = {f"call: {disposition.lower()}", "outbound call"}
        if self.rng.random() < 0.6:
            events.append(
                (
                    "Recording Saved",
                    {
                        "id": call_id + 100_000_000,
                        "call_id": call_id,
                        "communication_id": call_id,
                        **base,
                        "url": f"https://recordings.example.com/{call_id}.mp3",
                        "duration": 221,
                        "created_at": iso_now(-50, system="aloware"),
                    },
                    "recording",
                )
            )
        if self.rng.random() < 0.5:
            events.append(
                (
                    "Transcription Saved",
                    {
                        "id": call_id + 200_000_000,
                        "call_id": call_id,
                        "communication_id": call_id,
                        **base,
                        "text": "Agent: Hi, this is Chris. Customer: Tell me more.",
                        "created_at": iso_now(-40, system="aloware"),
                    },
                    "transcription",
                )
            )
        if self.rng.random() < 0.5:
            outcomes = self.rng.choice(OUTCOMES)
            events.append(
                (
                    "Call Summarized",
                    {
                        "id": call_id + 300_000_000,
                        "call_id": call_id,
                        "communication_id": call_id,
                        **base,
                        "summary": "The customer wants the details by email.",
                        "outcomes": list(outcomes),
                        "created_at": iso_now(-30, system="aloware"),
                    },
                    "summary",
                )
            )
            tags |= {f"summary: {o.lower()}" for o in outcomes}
        if len(events) > 1 and self.rng.random() < 0.25:
            self.rng.shuffle(events)  # Aloware's events of one call, out of order
        for name, body, kind in events:
            if await self._send(Webhook("aloware", body, name)):
                person.notes.add(f"[df:aloware:call:{call_id}:note:{kind}]")
                if name == "Call Disposed":
                    person.calls.add(call_id)
                    person.call_tags |= {f"call: {disposition.lower()}", "outbound call"}
                if name == "Call Summarized":
                    person.call_tags |= tags - {f"call: {disposition.lower()}", "outbound call"}

    def _text_webhook(self, person: Person, text: str, timestamp: str) -> tuple[str, Webhook]:
        message_id = f"tlx_SOAK{self.next_text:08d}"
        self.next_text += 1
        payload = {
            "eventType": "message.received",
            "messageId": message_id,
            "conversationId": f"chat_{person.phone.removeprefix('+')}",
            "direction": "inbound",
            "from": person.phone,
            "to": BUSINESS_LINE,
            "body": text,
            "timestamp": timestamp,
            "status": "received",
        }
        return message_id, Webhook("texting", payload)

    async def _inbound(self, person: Person, text: str, *, consent: bool | None = None) -> None:
        timestamp = iso_now(system="verity")
        message_id, webhook = self._text_webhook(person, text, timestamp)
        if await self._send(webhook):
            person.inbound.add(message_id)
            person.history.append(f"  {message_id} {text!r} at {timestamp} acknowledged")
            if consent is not None:
                person.consent.append((timestamp, consent))

    async def _text(self, person: Person) -> None:
        await self._inbound(person, self.rng.choice(ORDINARY_TEXTS))

    async def _stopword_text(self, person: Person) -> None:
        await self._inbound(person, self.rng.choice(STOPWORD_TEXTS))

    async def _stop(self, person: Person) -> None:
        await self._inbound(person, self.rng.choice(STOP_SPELLINGS), consent=True)

    async def _start(self, person: Person) -> None:
        await self._inbound(person, self.rng.choice(START_SPELLINGS), consent=False)

    async def _help(self, person: Person) -> None:
        timestamp = iso_now(system="verity")
        message_id, webhook = self._text_webhook(person, self.rng.choice(HELP_SPELLINGS), timestamp)
        opted_out = person.opted_out_now()
        if await self._send(webhook):
            person.inbound.add(message_id)
            if not opted_out:
                person.help_reply = True

    async def _consent_reversed(self, person: Person) -> None:
        """A STOP and a START (in either order) whose webhooks arrive in the reverse order."""
        first, second = self.rng.sample([(STOP_SPELLINGS, True), (START_SPELLINGS, False)], 2)
        texts = []
        # Verity dates a text when it received it, before it posts the webhook.
        for offset, (spellings, opt_out) in ((-2.0, first), (-1.0, second)):
            timestamp = iso_now(offset, system="verity")
            message_id, webhook = self._text_webhook(person, self.rng.choice(spellings), timestamp)
            texts.append((message_id, webhook, timestamp, opt_out))
        for message_id, webhook, timestamp, opt_out in reversed(texts):
            if await self._send(webhook):
                person.inbound.add(message_id)
                text = webhook.payload["body"]
                person.history.append(f"  {message_id} {text!r} at {timestamp} acknowledged")
                person.consent.append((timestamp, opt_out))

    async def _agent_sms(self, person: Person) -> None:
        text = f"Hi {person.first}, it's Chris from the office ({self.rng.randrange(10**6)})."
        message, payload = self.sims.ghl.send_sms_as_user(
            LOCATION, str(self._ghl_id(person)), text, conversation_provider_id=PROVIDER
        )
        delivery = await self.deliver.deliver(
            Webhook("provider", dict(payload)), copy_chance=self.copy_chance
        )
        if delivery.acked:
            person.sends.append(AgentSend(message.id, not person.opted_out_now(), text))
            person.history.append(
                f"  agent text {message.id} acknowledged; allowed={not person.opted_out_now()}"
            )

    # --- broadcasts ---------------------------------------------------------------------------------

    async def play_broadcast(self, broadcast: Broadcast) -> None:
        """A burst of analytics updates (delivered together, racing), then the completion; now
        and then an update that arrives after the completion."""
        try:
            updates = []
            sent = 0
            total = broadcast.recipients
            count = self.rng.randint(3, 8)
            for index in range(count):
                sent = min(total, sent + self.rng.randint(1, total // 4 or 1))
                # The numbers as they were a few seconds ago, a second apart (never in the future).
                updates.append(
                    self._analytics(broadcast, "analytics_updated", index, sent, total, offset=index - count)
                )
            late = updates.pop(self.rng.randrange(len(updates))) if self.rng.random() < 0.3 else None
            await asyncio.gather(*(self._send(Webhook("broadcast", u)) for u in updates))
            final = self._analytics(broadcast, "broadcast_completed", 99, total - 3, total, offset=0)
            if await self._send(Webhook("broadcast", final)):
                broadcast.final = final["analytics"]
            if late is not None:
                await self._send(Webhook("broadcast", late))
            self.steps_played["broadcast"] += 1
        except Exception as exc:
            self.errors.append(f"{broadcast.broadcast_id}: {type(exc).__name__}: {exc}")
        finally:
            broadcast.steps.clear()
            broadcast.busy = False

    def _analytics(
        self, broadcast: Broadcast, event_type: str, index: int, sent: int, total: int, *, offset: float
    ) -> dict[str, Any]:
        delivered = int(sent * 0.95)
        failed = sent - delivered
        return {
            "broadcastId": broadcast.broadcast_id,
            "eventType": event_type,
            "eventId": f"bcev_{broadcast.broadcast_id}_{index:02d}",
            "timestamp": iso_now(offset, system="verity"),
            "analytics": {
                "broadcastName": broadcast.name,
                "channel": "SMS",
                "sentAt": broadcast.sent_at,
                "recipients": total,
                "sent": sent,
                "delivered": delivered,
                "pending": total - sent,
                "failed": failed,
                "bounced": 0,
                "optedOut": sent // 100,
                "responses": sent // 10,
                "appointmentsSet": sent // 40,
            },
        }
