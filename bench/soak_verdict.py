"""The soak's verdict: the oracle's expectations (soak_stream) against the simulators' final state.

Nothing here reads what the service believes (its mappings, registries or sync log) to decide
whether the world is right; the service's tables are read only to count what it stored (the
"lost" figure: acknowledged but not stored) and to report its queue and dead letters.

Counted:

- **lost**: webhooks acknowledged (2xx) whose identity no stored event carries;
- **duplicated effects**: a second GHL or Aloware contact for one phone, a second note for one
  call event, a second GHL message for one inbound text or call, a second Verity send for one
  agent text or HELP, a second broadcast record, a second Aloware list of one name;
- **SMS to opted-out**: Verity sends of an agent text that was refused by the oracle's consent
  model, and HELP replies the oracle did not expect (a HELP to an opted-out number is never
  answered);
- **held for the operator** (not a mismatch): an SMS whose send to Verity got no answer (a timeout
  or an answer lost after Verity did the work, as the simulator's request log shows) may or may not
  have gone out, and the service never sends it again (R-IDEM-2). An agent text like that must end
  either sent once and delivered (Verity had it: its receipts confirm it late) or `failed` with
  `send_unconfirmed` and its event dead-lettered for an operator to check; a HELP reply like that
  is sent once or not at all. Any other outcome, and any second send, is still counted;
- **mismatches**: every other difference between what a person must have in GHL, Aloware and
  Verity and what they have (profile, tags, SMS DND, notes, messages and their status, lists),
  and between each broadcast's final numbers and its GHL record.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from soak_stream import Broadcast, Person
from soak_world import HELP_REPLY, Simulators

from df_middleware.simulators.verity import SEND_MESSAGE_PATH
from df_middleware.sync.agent_sends import UNCONFIRMED_ERROR

BROADCAST_OBJECT = "custom_objects.broadcasts"


def _dnd_active(contact: dict[str, Any], channel: str = "SMS") -> bool:
    setting = (contact.get("dndSettings") or {}).get(channel) or {}
    return setting.get("status") == "active"


def in_the_dialer(person: Person, *, echoes: bool) -> bool:
    """Whether the person has an Aloware contact at the end (R-C-1, R-C-2). Leads and DND leads
    are GHL contacts, mirrored; a contact made in the dialer is there from the start. A person
    texting in from an unknown number gets a GHL contact the service creates (R-TXT-1); GHL posts
    its `ContactCreate` about it, a GHL contact event like any other (that write mirrors nothing
    from Aloware, so there is no ping-pong for R-LOOP-1 to end), and R-C-1 mirrors it in the
    dialer. Without those webhooks (`--no-echoes`) nothing tells the service, and it stays in
    GHL only (until a reconcile)."""
    return person.kind != "texter" or echoes


def expected_lists(person: Person, *, echoes: bool) -> set[str]:
    """R-AG-2 / R-OPT-3 as the oracle states them: a GHL contact is on its agent's NEW_LEADS list
    (the default agent's when it has no owner) and on its HOT list when tagged `hot`; on no list
    while opted out (OPTOUT_REMOVES_FROM_DIALER), on do-not-call in Aloware (R-OPT-6) or deleted
    in GHL (R-C-4). The lists follow GHL contact events: a contact
    the service itself created in GHL (for a contact made in the dialer, or a person texting in)
    has one only through GHL's `ContactCreate` about that write, so it is on a list only when the
    partners post those (`echoes`); the echo of our own write changes no profile (R-LOOP-1), but
    a new GHL contact joins NEW_LEADS (R-AG-2)."""
    placed = ("lead", "dnd", "dialer", "texter") if echoes else ("lead", "dnd")
    if person.kind not in placed or person.opted_out_now() or person.voice_dnc or person.deleted:
        return set()
    agent = person.agent or "UNASSIGNED"
    lists = {f"DF_{agent}_NEW_LEADS"}
    if "hot" in person.tags:
        lists.add(f"DF_{agent}_HOT")
    return lists


class Verdict:
    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.mismatches: Counter[str] = Counter()
        self.sms_to_opted_out = 0
        self.examples: list[str] = []

    def mismatch(self, kind: str, detail: str) -> None:
        self.mismatches[kind] += 1
        if len(self.examples) < 40:
            self.examples.append(f"{kind}: {detail}")

    def duplicate(self, kind: str, count: int, detail: str) -> None:
        if count > 1:
            self.duplicates[kind] += count - 1
            if len(self.examples) < 40:
                self.examples.append(f"duplicate {kind} x{count}: {detail}")


def judge(
    people: list[Person], broadcasts: list[Broadcast], sims: Simulators, *, echoes: bool
) -> dict[str, Any]:
    """The simulators' final state against the oracle; `echoes`: whether GHL and Aloware posted
    their webhooks about the service's own writes (the real ones do)."""
    ghl = sims.ghl.snapshot()
    aloware = sims.aloware.snapshot()
    verity = sims.verity.snapshot()
    v = Verdict()

    contacts_by_phone: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for contact in ghl["contacts"]:
        if not contact.get("deleted") and contact.get("phone"):
            contacts_by_phone[contact["phone"]].append(contact)
    messages_by_contact: dict[str, list[dict[str, Any]]] = defaultdict(list)
    message_by_id: dict[str, dict[str, Any]] = {}
    for message in ghl["messages"]:
        messages_by_contact[message["contactId"]].append(message)
        message_by_id[message["id"]] = message
    aloware_by_phone: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for contact in aloware["contacts"]:
        aloware_by_phone[str(contact["phone_number"])].append(contact)
    lists_of: dict[int, list[str]] = defaultdict(list)
    for name, count in Counter(str(found["name"]) for found in aloware["lists"]).items():
        v.duplicate("Aloware list", count, name)  # break14 finding 4: two lists of one name
    for found in aloware["lists"]:
        members = Counter(found["contact_ids"])
        for contact_id, count in members.items():
            v.duplicate("list membership", count, f"{found['name']} contact {contact_id}")
            lists_of[contact_id].append(str(found["name"]))
    sends_by_correlation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    help_replies: Counter[str] = Counter()
    for sent in verity["sent_messages"]:
        if sent.get("correlationId"):
            sends_by_correlation[str(sent["correlationId"])].append(sent)
        elif sent.get("body") == HELP_REPLY:
            help_replies[str(sent["to"])] += 1
        else:
            v.mismatch("Verity send that is neither an agent text nor a HELP reply", str(sent.get("to")))

    # Sends whose outcome the service could not know: Verity's request log has the truth.
    unanswered: set[str] = set()
    unanswered_help: set[str] = set()
    for request in sims.request_log("verity"):
        if request.path != SEND_MESSAGE_PATH or request.fault not in ("timeout", "lost_response"):
            continue
        body = request.json() or {}
        if body.get("correlationId"):
            unanswered.add(str(body["correlationId"]))
        elif body.get("body") == HELP_REPLY:
            unanswered_help.add(str(body.get("to")))
    known_phones = {p.phone for p in people if p.played}
    for phone in contacts_by_phone.keys() - known_phones:
        v.mismatch("unknown GHL contact", phone)
    for phone in aloware_by_phone.keys() - known_phones:
        v.mismatch("unknown Aloware contact", phone)
    for person in (p for p in people if p.played):
        _judge_person(
            v,
            person,
            contacts_by_phone,
            messages_by_contact,
            aloware_by_phone,
            lists_of,
            sends_by_correlation,
            help_replies,
            unanswered,
            unanswered_help,
            echoes=echoes,
        )
    accounted = {s.message_id for p in people for s in p.sends}
    for correlation, sends in sends_by_correlation.items():
        if correlation not in accounted:
            v.mismatch("Verity send for no agent text the oracle knows", f"{correlation} to {sends[0]['to']}")

    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in ghl.get("records") or []:
        if record.get("objectKey") == BROADCAST_OBJECT:
            records[str((record.get("properties") or {}).get("broadcast_id"))].append(record)
    for broadcast in broadcasts:
        found = records.get(broadcast.broadcast_id, [])
        v.duplicate("broadcast record", len(found), broadcast.broadcast_id)
        if broadcast.final is None:
            continue
        if not found:
            v.mismatch("broadcast record missing", broadcast.broadcast_id)
            continue
        properties = found[0].get("properties") or {}
        for source, target in (
            ("sent", "sent"),
            ("delivered", "delivered"),
            ("failed", "failed"),
            ("pending", "pending"),
            ("recipients", "recipients"),
            ("responses", "responses"),
        ):
            if properties.get(target) != broadcast.final[source]:
                got, want = properties.get(target), broadcast.final[source]
                v.mismatch("broadcast numbers", f"{broadcast.broadcast_id} {target}={got} want {want}")
    return {
        "duplicated_effects": sum(v.duplicates.values()),
        "duplicated_by_kind": dict(v.duplicates),
        "sms_to_opted_out": v.sms_to_opted_out,
        "mismatches": sum(v.mismatches.values()),
        "mismatches_by_kind": dict(v.mismatches),
        "held_for_operator": dict(v.held),
        "examples": v.examples,
        "verity_sends": len(verity["sent_messages"]),
        "ghl_contacts": sum(len(c) for c in contacts_by_phone.values()),
        "aloware_contacts": len(aloware["contacts"]),
    }


def _compare_profile(
    v: Verdict, system: str, contact: dict[str, Any], names: tuple[str, str, str], person: Person, who: str
) -> None:
    """The person's first name, last name and email as that system names them."""
    for field_name, want in zip(names, (person.first, person.last, person.email), strict=True):
        if contact.get(field_name) != want:
            v.mismatch(f"{system} {field_name}", f"{who}: {contact.get(field_name)!r} want {want!r}")


def _judge_person(
    v: Verdict,
    person: Person,
    contacts_by_phone: dict[str, list[dict[str, Any]]],
    messages_by_contact: dict[str, list[dict[str, Any]]],
    aloware_by_phone: dict[str, list[dict[str, Any]]],
    lists_of: dict[int, list[str]],
    sends_by_correlation: dict[str, list[dict[str, Any]]],
    help_replies: Counter[str],
    unanswered: set[str],
    unanswered_help: set[str],
    *,
    echoes: bool,
) -> None:
    who = f"{person.phone} ({person.kind})"
    contacts = contacts_by_phone.get(person.phone, [])
    if person.deleted:
        _judge_deleted(v, person, who, contacts, messages_by_contact, aloware_by_phone, lists_of, echoes)
        return
    v.duplicate("GHL contact", len(contacts), who)
    if not contacts:
        v.mismatch("GHL contact missing", who)
        return
    contact = contacts[0]
    if person.kind != "texter":
        _compare_profile(v, "GHL", contact, ("firstName", "lastName", "email"), person, who)
    if person.timezone is not None and contact.get("timezone") != person.timezone:
        v.mismatch("GHL timezone", f"{who}: {contact.get('timezone')!r} want {person.timezone!r}")
    tags = set(contact.get("tags") or [])
    want_tags = person.tags | person.call_tags
    if (tags != want_tags) if person.kind in ("lead", "dnd") else not want_tags <= tags:
        v.mismatch("GHL tags", f"{who}: {sorted(tags)} want {sorted(want_tags)}")
    if person.decided_by_text or person.dnd_active is not None:
        if _dnd_active(contact) != person.opted_out_now():
            v.mismatch("GHL SMS DND", f"{who}: active={_dnd_active(contact)} want {person.opted_out_now()}")
    elif _dnd_active(contact):
        v.mismatch("GHL SMS DND", f"{who}: active, nobody opted out")
    if _dnd_active(contact, "Call") != person.voice_dnc:
        v.mismatch("GHL Call DND", f"{who}: active={_dnd_active(contact, 'Call')} want {person.voice_dnc}")

    markers: Counter[str] = Counter()
    for note in contact.get("notes") or []:
        for line in str(note.get("body") or "").splitlines():
            if line.strip().startswith("[df:"):
                markers[line.strip()] += 1
    for marker, count in markers.items():
        v.duplicate("note", count, f"{who} {marker}")
    for marker in person.notes - markers.keys():
        v.mismatch("note missing", f"{who} {marker}")
    for marker in markers.keys() - person.notes:
        v.mismatch("note unexpected", f"{who} {marker}")

    messages = messages_by_contact.get(contact["id"], [])
    inbound = Counter(str(m.get("altId")) for m in messages if m.get("direction") == "inbound")
    for alt_id, count in inbound.items():
        v.duplicate("inbound message", count, f"{who} {alt_id}")
    for alt_id in person.inbound - inbound.keys():
        v.mismatch("inbound message missing", f"{who} {alt_id}")
    for alt_id in inbound.keys() - person.inbound:
        v.mismatch("inbound message unexpected", f"{who} {alt_id}")
    call_logs = Counter(str(m.get("altId")) for m in messages if m.get("type") in ("Call", "TYPE_CALL"))
    want_logs = {f"aloware-call-{call_id}" for call_id in person.calls}
    for alt_id, count in call_logs.items():
        v.duplicate("call log", count, f"{who} {alt_id}")
    if set(call_logs) != want_logs:
        v.mismatch("call logs", f"{who}: {sorted(call_logs)} want {sorted(want_logs)}")

    by_id = {m["id"]: m for m in messages}
    for send in person.sends:
        verity_sends = sends_by_correlation.get(send.message_id, [])
        v.duplicate("Verity send", len(verity_sends), f"{who} {send.message_id}")
        message = by_id.get(send.message_id, {})
        error = (
            str((message.get("error") or {}).get("code") or "")
            if isinstance(message.get("error"), dict)
            else ""
        )
        if send.allowed and send.message_id in unanswered and not verity_sends:
            if message.get("status") == "failed" and error == "send_unconfirmed":
                v.held["agent text held (send unconfirmed)"] += 1
            else:
                v.mismatch(
                    "unconfirmed agent text", f"{who} {send.message_id}: {message.get('status')}/{error}"
                )
        elif send.allowed:
            if send.message_id in unanswered:
                v.held["agent text confirmed late"] += 1
            if len(verity_sends) != 1:
                v.mismatch(
                    "agent text not sent", f"{who} {send.message_id}: {len(verity_sends)} Verity sends"
                )
            elif verity_sends[0].get("to") != person.phone:
                v.mismatch(
                    "agent text sent elsewhere", f"{who} {send.message_id} to {verity_sends[0].get('to')}"
                )
            if message.get("status") != "delivered":
                v.mismatch(
                    "agent text status", f"{who} {send.message_id}: {message.get('status')} want delivered"
                )
        else:
            if verity_sends:
                v.sms_to_opted_out += len(verity_sends)
                v.examples.append(f"SMS to opted-out: {who} {send.message_id}")
            if message.get("status") != "failed" or error != "opted_out":
                v.mismatch(
                    "refused agent text status",
                    f"{who} {send.message_id}: {message.get('status')}/{error} want failed/opted_out",
                )
    replies = help_replies.get(person.phone, 0)
    v.duplicate("HELP reply", replies, who)
    if person.help_reply and replies == 0:
        if person.phone in unanswered_help:
            v.held["HELP reply held (send unconfirmed)"] += 1
        else:
            v.mismatch("HELP reply missing", who)
    if not person.help_reply and replies:
        v.sms_to_opted_out += replies
        v.examples.append(f"HELP reply not expected (opted out?): {who}")

    found = aloware_by_phone.get(person.phone, [])
    v.duplicate("Aloware contact", len(found), who)
    if not in_the_dialer(person, echoes=echoes):
        if found:
            v.mismatch("Aloware contact unexpected", who)
        return
    if not found:
        v.mismatch("Aloware contact missing", who)
        return
    aloware_contact = found[0]
    if person.kind != "texter":
        _compare_profile(v, "Aloware", aloware_contact, ("first_name", "last_name", "email"), person, who)
    lists = set(lists_of.get(aloware_contact["id"], []))
    want = expected_lists(person, echoes=echoes)
    if lists != want:
        v.mismatch("Aloware lists", f"{who}: {sorted(lists)} want {sorted(want)}")


def _judge_deleted(
    v: Verdict,
    person: Person,
    who: str,
    contacts: list[dict[str, Any]],
    messages_by_contact: dict[str, list[dict[str, Any]]],
    aloware_by_phone: dict[str, list[dict[str, Any]]],
    lists_of: dict[int, list[str]],
    echoes: bool,
) -> None:
    """A lead a GHL user deleted (its last step). R-C-4: the deletion stands — no contact event,
    resend or late copy brings it back — and the Aloware contact, kept, leaves every list.

    One thing may make a GHL contact for the number again: an activity of the person's — a text,
    a call — that the service processes after the deletion, even one that happened a moment
    before it. A text from a number GHL has no contact for makes one, as GHL itself does with an
    inbound SMS (R-TXT-1; an opt-out must be visible to whoever imports the number next,
    R-OPT-3), and so does a call (R-CALL-1: the contact is created when unknown), unassigned, so
    the agents see what happened. Which activities came before the deletion's processing is the
    queue's timing, not the oracle's to know, so such a contact is allowed only for a person with
    such an activity, must hold none but theirs, be the only one, carry their SMS consent, and be
    placed as a new unassigned contact (counted in `held_for_operator`, not hidden)."""
    if contacts and not (person.inbound or person.calls):
        v.mismatch("GHL contact back after its deletion", who)
        return
    want_lists: set[str] = set()
    if contacts:
        v.held["GHL contact made again by an activity processed after its deletion"] += 1
        v.duplicate("GHL contact", len(contacts), who)
        messages = messages_by_contact.get(contacts[0]["id"], [])
        texts = {str(m.get("altId")) for m in messages if m.get("direction") == "inbound"}
        if not texts <= person.inbound:
            v.mismatch("inbound message unexpected", f"{who} {sorted(texts - person.inbound)}")
        logs = {str(m.get("altId")) for m in messages if m.get("type") in ("Call", "TYPE_CALL")}
        if not logs <= {f"aloware-call-{call_id}" for call_id in person.calls}:
            v.mismatch("call logs", f"{who}: {sorted(logs)} for calls {sorted(person.calls)}")
        if person.decided_by_text and _dnd_active(contacts[0]) != person.opted_out_now():
            v.mismatch(
                "GHL SMS DND", f"{who}: active={_dnd_active(contacts[0])} want {person.opted_out_now()}"
            )
        if echoes and not person.opted_out_now():
            want_lists = {"DF_UNASSIGNED_NEW_LEADS"}
    for found in aloware_by_phone.get(person.phone, []):
        lists = set(lists_of.get(found["id"], []))
        if lists != want_lists:
            v.mismatch(
                "Aloware lists of a deleted contact", f"{who}: {sorted(lists)} want {sorted(want_lists)}"
            )


def unexplained_dead_letters(dead: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dead letters other than agent texts held because Verity never confirmed the send (those are
    the service saying "check Verity before replaying", R-IDEM-2, and are judged above)."""
    return [d for d in dead if UNCONFIRMED_ERROR not in d["reason"]]


def lost(deliveries: list[Any], stored: set[str]) -> tuple[int, list[str]]:
    """Acknowledged webhooks whose identity no stored event carries."""
    missing = sorted({d.identity for d in deliveries if d.acked} - stored)
    return len(missing), missing[:20]
