"""Aloware call activity → GHL (R-CALL-1…R-CALL-4, R-IDEM-1/2, R-ID-2/3).

The note texts and tag decisions are pure functions, tested first without I/O (with the shared
contract examples when the folder is there, else inline bodies). The flows are then tested end to
end: signed webhooks through the real ingest, the real worker, and the GHL simulator over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

import df_middleware.sync.calls
from df_middleware.config import Settings
from df_middleware.db.models import ContactMapping, GhlConversation, SyncEffect, SyncLog, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import replay_event
from df_middleware.sync.calls import (
    CALL_UNFINISHED,
    GHL_NOT_CONFIGURED,
    NO_CONTACT_DATA,
    call_activity,
    call_family_names,
    child_activity,
    format_duration,
    format_time,
    handle_finished_call,
    has_marker,
    register_handlers,
    stale_disposition_tags,
    with_marker,
)
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, HandlerRegistry
from tests.sync_world import NO_NATURAL_RETRY, SyncWorld

NEW_YORK = ZoneInfo("America/New_York")
PHONE = "+19195551234"

# --- inline bodies, shaped like contracts/aloware/webhooks/*.json -------------------------------------


def aloware_contact(**changes: Any) -> dict[str, Any]:
    return {
        "id": 48213,
        "first_name": "Sarah",
        "last_name": "Johnson",
        "name": "Sarah Johnson",
        "phone_number": PHONE,
        "email": "sarah.johnson@example.com",
        "timezone": "America/New_York",
        "country": "US",
        "state": "NC",
        "city": "Raleigh",
        **changes,
    }


AGENT = {"id": 731, "name": "Chris Agent", "email": "chris@example.com"}


def call_disposed(call_id: int = 9912345, **changes: Any) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "call",
        "direction": "outbound",
        "contact_id": 48213,
        "user_id": 731,
        "contact": aloware_contact(),
        "user": AGENT,
        "disposition_status": "Left Voicemail",
        "call_disposition": "Left Voicemail",
        "status": "completed",
        "duration": 187,
        "talk_time": 161,
        "has_recording": True,
        "recording_url": f"https://recordings.example.com/{call_id}.mp3",
        "created_at": "2026-11-24T16:30:00Z",
        "ended_at": "2026-11-24T16:33:07Z",
        **changes,
    }


def missed_inbound(call_id: int = 9912347) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "call",
        "direction": "inbound",
        "contact_id": 48213,
        "user_id": None,
        "contact": aloware_contact(),
        "status": "missed",
        "duration": 0,
        "created_at": "2026-11-24T19:00:00Z",
    }


def child(record_id: int, call_id: int = 9912345, **fields: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "call_id": call_id,
        "communication_id": call_id,
        "contact_id": 48213,
        "contact": aloware_contact(),
        "created_at": "2026-11-24T16:35:00Z",
        **fields,
    }


SUMMARY = child(
    55501,
    summary="Customer is interested in the Q1 offering and asked for a follow-up call next Tuesday.",
    outcomes=["Interested", "Follow-up Needed"],
)
RECORDING = child(77001, url="https://recordings.example.com/9912345.mp3", duration=161)
TRANSCRIPTION = child(88001, text="Agent: Hi Sarah, this is Chris... Customer: Yes, I saw the email...")
VOICEMAIL = child(66001, call_id=9912347, url="https://voicemail.example.com/9912347.mp3", duration=23)


# --- pure decisions (no I/O) ----------------------------------------------------------------------------


def test_call_note_describes_the_call() -> None:
    """R-CALL-1: direction, local time (DISPLAY_TIMEZONE), duration, agent, disposition, status,
    recording link; tags `Call: <disposition>` and the direction's tag."""
    activity = call_activity(call_disposed(), "Call Disposed", NEW_YORK)
    assert activity is not None
    assert activity.note_key == "aloware:call:9912345:note:call-disposed"
    assert activity.note_text.splitlines() == [
        "Outbound call disposed (Aloware)",
        "Time: 2026-11-24 11:30 EST",
        "Duration: 3m 07s (talk time 2m 41s)",
        "Agent: Chris Agent",
        "Disposition: Left Voicemail",
        "Status: completed",
        "Recording: https://recordings.example.com/9912345.mp3",
    ]
    assert activity.tags == ("Call: Left Voicemail", "Outbound Call")
    assert activity.call_log_key == "aloware:call:9912345:ghl-call-log"
    assert activity.call_log is not None
    assert (activity.call_log.to, activity.call_log.from_, activity.call_log.status) == (
        PHONE,
        None,
        "completed",
    )
    assert activity.call_log.date == "2026-11-24T16:30:00.000Z"


def test_missed_inbound_call_is_a_call_note() -> None:
    """R-CALL-1: a missed inbound call is finished too: its note says missed, the contact called."""
    activity = call_activity(missed_inbound(), "InboundPhoneCall-Missed", NEW_YORK)
    assert activity is not None
    assert activity.note_key == "aloware:call:9912347:note:call-missed"
    lines = activity.note_text.splitlines()
    assert lines[0] == "Missed inbound call (Aloware)"
    assert "Time: 2026-11-24 14:00 EST" in lines
    assert "Duration: 0s" in lines
    assert not any(line.startswith(("Agent:", "Disposition:")) for line in lines)
    assert activity.tags == ("Inbound Call",)
    assert activity.call_log is not None
    assert (activity.call_log.from_, activity.call_log.to, activity.call_log.status) == (
        PHONE,
        None,
        "no-answer",
    )


def test_direction_and_status_fall_back_to_the_event_name() -> None:
    """The family's name carries direction and status when the body leaves them out."""
    body = {"id": 5, "contact": aloware_contact(), "duration": 3725}
    activity = call_activity(body, "OutboundPhoneCall-Completed", ZoneInfo("UTC"))
    assert activity is not None
    assert activity.note_key == "aloware:call:5:note:call-completed"
    assert activity.note_text.splitlines()[:2] == ["Outbound call (Aloware)", "Duration: 1h 02m 05s"]
    assert activity.tags == ("Outbound Call",)
    assert call_activity({"contact": aloware_contact()}, "Call Disposed", NEW_YORK) is None


def test_child_notes_are_keyed_by_call_and_kind() -> None:
    """R-CALL-2/R-CALL-4: one key per call and note kind; summaries tag each outcome."""
    summary = child_activity(SUMMARY, "Call Summarized", NEW_YORK)
    assert summary is not None
    assert summary.note_key == "aloware:call:9912345:note:summary"
    assert summary.tags == ("Summary: Interested", "Summary: Follow-up Needed")
    assert "Outcome: Interested, Follow-up Needed" in summary.note_text
    assert SUMMARY["summary"] in summary.note_text
    recording = child_activity(RECORDING, "Recording Saved", NEW_YORK)
    assert recording is not None
    assert recording.note_key.endswith(":note:recording")
    assert "Recording: https://recordings.example.com/9912345.mp3" in recording.note_text
    assert "Duration: 2m 41s" in recording.note_text
    transcript = child_activity(TRANSCRIPTION, "Transcription Saved", NEW_YORK)
    assert transcript is not None
    assert TRANSCRIPTION["text"] in transcript.note_text
    voicemail = child_activity(VOICEMAIL, "Voicemail Saved", NEW_YORK)
    assert voicemail is not None
    assert voicemail.note_key == "aloware:call:9912347:note:voicemail"
    assert "Voicemail: https://voicemail.example.com/9912347.mp3" in voicemail.note_text
    for activity in (recording, transcript, voicemail):
        assert activity.tags == ()
        assert activity.call_log is None
    communication = {"id": 9912348, "contact": aloware_contact(), "user": AGENT, "channel": "call"}
    started = child_activity({**communication, "direction": "outbound"}, "Communication Initiated", NEW_YORK)
    disposed = child_activity(
        {**communication, "disposition_status": "No Answer"}, "Communication Disposed", NEW_YORK
    )
    assert started is not None
    assert disposed is not None
    assert started.note_key == "aloware:communication:9912348:note:initiated"
    assert disposed.note_key == "aloware:communication:9912348:note:disposed"
    assert started.note_text.startswith("Outbound call started (Aloware)")
    assert "Disposition: No Answer" in disposed.note_text


def test_contract_examples_make_notes(contracts: Path) -> None:
    """Every call-activity example of the contracts yields a note (R-CALL-1/R-CALL-2)."""
    folder = contracts / "aloware" / "webhooks"
    for name in (
        "Call_Disposed",
        "OutboundPhoneCall-Completed",
        "InboundPhoneCall-Missed",
        "Call_Summarized",
        "Recording_Saved",
        "Transcription_Saved",
        "Voicemail_Saved",
        "Communication_Initiated",
        "Communication_Disposed",
    ):
        example = json.loads((folder / f"{name}.json").read_text())
        event, body = example["event"], example["body"]
        build = call_activity if event in {"Call Disposed"} or "PhoneCall-" in event else child_activity
        activity = build(body, event, NEW_YORK)
        assert activity is not None, name
        assert "(Aloware)" in activity.note_text.splitlines()[0], name
        assert not activity.note_text.rstrip().endswith("]"), name
    disposed = json.loads((folder / "Call_Disposed.json").read_text())["body"]
    activity = call_activity(disposed, "Call Disposed", NEW_YORK)
    assert activity is not None
    assert "Time: 2026-11-24 11:30 EST" in activity.note_text


def test_marker_and_formats() -> None:
    """R-CALL-4: the marker is the note's last line, found only on a line of its own."""
    text = with_marker("Call", "aloware:call:1:note:call-disposed")
    assert text.splitlines()[-1] == "[df:aloware:call:1:note:call-disposed]"
    assert has_marker(text, "aloware:call:1:note:call-disposed")
    assert not has_marker(text, "aloware:call:1:note:summary")
    assert not has_marker(
        "see [df:aloware:call:1:note:call-disposed] inline", "aloware:call:1:note:call-disposed"
    )
    assert len(with_marker("x" * 100_000, "k")) < 31_000
    assert format_duration(59) == "59s"
    assert format_duration("61") == "1m 01s"
    assert format_duration(None) is None
    assert format_time("2026-07-01T12:00:00Z", NEW_YORK) == "2026-07-01 08:00 EDT"
    assert format_time("not a time", NEW_YORK) is None


def test_stale_disposition_tags_ignore_case() -> None:
    """R-CALL-3: every other `Disposition:` tag goes, whatever its case; the current one stays."""
    tags = ["disposition: interested", "Disposition: Appointment Set", "vip", "call: no answer"]
    assert stale_disposition_tags(tags, "Appointment Set") == ["disposition: interested"]
    assert stale_disposition_tags(tags, "Not Interested") == [
        "disposition: interested",
        "Disposition: Appointment Set",
    ]


def test_registered_names_follow_ingest() -> None:
    """The family names registered are those ingest produces (`OutboundPhoneCall-Completed`)."""
    from df_middleware.ingest.sources.aloware import canonical_aloware_name

    registry = HandlerRegistry()
    register_handlers(registry)
    for name in ["Call Disposed", "Contact Disposed", "Voicemail Saved", *call_family_names(["Missed"])]:
        assert ("aloware", name) in registry
    for raw in ("outboundphonecall-completed", "INBOUNDPHONECALL-NO-ANSWER", "InboundPhoneCall-Ringing"):
        known = canonical_aloware_name(raw)
        assert known is not None
        assert ("aloware", known[0]) in registry


# --- end to end through ingest → worker → GHL simulator --------------------------------------------------


async def sync_rows(db: Database) -> list[SyncLog]:
    async with db.session() as session:
        return list(await session.scalars(select(SyncLog).order_by(SyncLog.started_at)))


async def effect_keys(db: Database) -> set[str]:
    async with db.session() as session:
        return set(await session.scalars(select(SyncEffect.effect_key)))


async def event_statuses(db: Database) -> list[str]:
    async with db.session() as session:
        return list(await session.scalars(select(WebhookEvent.status)))


def ghl_contacts(world: SyncWorld) -> list[dict[str, Any]]:
    return [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"]]


def only_contact(world: SyncWorld) -> dict[str, Any]:
    contacts = ghl_contacts(world)
    assert len(contacts) == 1, contacts
    return contacts[0]


def call_messages(world: SyncWorld) -> list[dict[str, Any]]:
    return [m for m in world.ghl.sim.snapshot()["messages"] if m["type"] == "Call"]


async def test_call_disposed_writes_note_tags_and_call_log(sync_world: SyncWorld) -> None:
    """R-CALL-1: unknown contact created by upsert, one note with the call, the two tags, the call
    in the conversation (GHL_CALL_PROVIDER_ID set), one sync_log row per effect (R-Q-7)."""
    sync_world.use_modules(df_middleware.sync.calls)
    await sync_world.deliver_aloware("Call Disposed", call_disposed())
    assert await sync_world.process() == 1

    contact = only_contact(sync_world)
    assert contact["phone"] == PHONE
    assert contact["firstName"] == "Sarah"
    assert {t.lower() for t in contact["tags"]} >= {"call: left voicemail", "outbound call"}
    [note] = contact["notes"]
    lines = note["body"].splitlines()
    assert lines[0] == "Outbound call disposed (Aloware)"
    assert "Time: 2026-11-24 11:30 EST" in lines
    assert "Agent: Chris Agent" in lines
    assert lines[-1] == "[df:aloware:call:9912345:note:call-disposed]"
    [message] = call_messages(sync_world)
    assert message["contactId"] == contact["id"]
    assert message["conversationProviderId"] == sync_world.settings.ghl_call_provider_id
    assert message["call"] == {"to": PHONE, "status": "completed"}

    assert await effect_keys(sync_world.db) == {
        "ghl:contact-for-aloware:48213",
        "aloware:call:9912345:note:call-disposed",
        "aloware:call:9912345:ghl-call-log",
    }
    rows = await sync_rows(sync_world.db)
    assert {r.direction for r in rows} == {"aloware_to_ghl"}
    assert [r.status for r in rows] == ["success"] * 4
    async with sync_world.db.session() as session:
        mapping = await session.scalar(select(ContactMapping))
    assert mapping is not None
    assert (mapping.aloware_contact_id, mapping.ghl_contact_id, mapping.phone_number) == (
        "48213",
        contact["id"],
        PHONE,
    )


async def test_a_call_from_a_second_dialer_contact_on_a_mapped_number_never_repoints_the_mapping(
    sync_world: SyncWorld,
) -> None:
    """R-ID-3, R-CALL-1: two Aloware contacts share one number (a household, or two Aloware merges
    about to happen). The first is mapped to the GHL contact with that number; a call by the second
    still gets its note on GHL's contact for the number, but the mapping stays the first's, the
    GHL profile is not filled from the second, and the conflict is in the sync log."""
    sync_world.use_modules(df_middleware.sync.calls)
    await sync_world.deliver_aloware("Call Disposed", call_disposed())
    assert await sync_world.process() == 1
    contact = only_contact(sync_world)

    other = aloware_contact(
        id=59001, first_name="Sam", last_name="Other", name="Sam Other", email="sam@example.com"
    )
    await sync_world.deliver_aloware(
        "Call Disposed", call_disposed(call_id=9912399, contact_id=59001, contact=other)
    )
    assert await sync_world.process() == 1

    after = only_contact(sync_world)  # no second GHL contact for the number
    assert after["id"] == contact["id"]
    assert (after["firstName"], after["email"]) == ("Sarah", "sarah.johnson@example.com")
    assert sorted(n["body"].splitlines()[-1] for n in after["notes"]) == [
        "[df:aloware:call:9912345:note:call-disposed]",
        "[df:aloware:call:9912399:note:call-disposed]",
    ]
    async with sync_world.db.session() as session:
        mappings = list(await session.scalars(select(ContactMapping)))
    assert [(m.aloware_contact_id, m.ghl_contact_id) for m in mappings] == [("48213", contact["id"])]
    rows = await sync_rows(sync_world.db)
    assert any(
        r.message is not None and r.message.startswith(f"conflict: GHL contact {contact['id']}") for r in rows
    )
    assert await event_statuses(sync_world.db) == ["done", "done"]


async def test_redelivery_and_replay_leave_one_note(sync_world: SyncWorld) -> None:
    """R-CALL-4/R-IDEM-1: the same webhook twice and a replay: one note, one call log entry."""
    sync_world.use_modules(df_middleware.sync.calls)
    first = await sync_world.deliver_aloware("Call Disposed", call_disposed())
    second = await sync_world.deliver_aloware("Call Disposed", call_disposed())
    assert second.json()["status"] == "duplicate"
    await sync_world.process()
    await replay_event(sync_world.db, first.json()["id"])
    assert await sync_world.process() == 1

    assert len(only_contact(sync_world)["notes"]) == 1
    assert len(call_messages(sync_world)) == 1
    assert len(sync_world.ghl.requests("POST", "/contacts/upsert")) == 1
    assert await event_statuses(sync_world.db) == ["done"]


async def test_lost_note_answer_is_found_by_its_marker(
    sync_world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R-CALL-4: GHL creates the note but its answer is lost (504); the retry finds the marker
    in the contact's notes and records it instead of writing a second note."""
    sync_world.settings = sync_world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    sync_world.use_modules(df_middleware.sync.calls)
    sim = sync_world.ghl.sim
    original = sim.add_note

    def add_note_then_lose_answers(*args: Any, **kwargs: Any) -> Any:
        note = original(*args, **kwargs)
        sync_world.ghl.faults(lost_response_rate=1.0)  # this answer (and any after) is lost
        return note

    monkeypatch.setattr(sim, "add_note", add_note_then_lose_answers)
    answer = await sync_world.deliver_aloware("Call Disposed", call_disposed())
    await sync_world.process()
    assert len(only_contact(sync_world)["notes"]) == 1
    assert await event_statuses(sync_world.db) == ["pending"]  # retryable: a 504

    sync_world.ghl.faults()
    async with sync_world.db.session() as session:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == uuid.UUID(answer.json()["id"]))
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert await sync_world.process() == 1

    contact = only_contact(sync_world)
    assert len(contact["notes"]) == 1
    [note_post] = sync_world.ghl.requests("POST", f"/contacts/{contact['id']}/notes")
    assert note_post.fault == "lost_response"
    assert sync_world.ghl.requests("GET", f"/contacts/{contact['id']}/notes")  # the marker check
    assert len(call_messages(sync_world)) == 1
    assert await event_statuses(sync_world.db) == ["done"]
    assert "aloware:call:9912345:note:call-disposed" in await effect_keys(sync_world.db)


async def test_call_children_make_one_note_each(sync_world: SyncWorld) -> None:
    """R-CALL-2 and R-ID-3: summary, recording, transcription, voicemail, a missed inbound call
    for an unknown person: one contact created once (upsert), one note per event, summary tags."""
    sync_world.use_modules(df_middleware.sync.calls)
    await sync_world.deliver_aloware("Call Summarized", SUMMARY)
    await sync_world.deliver_aloware("Recording Saved", RECORDING)
    await sync_world.deliver_aloware("Transcription Saved", TRANSCRIPTION)
    await sync_world.deliver_aloware("Voicemail Saved", VOICEMAIL)
    await sync_world.deliver_aloware("InboundPhoneCall-Missed", missed_inbound())
    await sync_world.deliver_aloware("InboundPhoneCall-Ringing", missed_inbound(9912399))
    await sync_world.process()

    contact = only_contact(sync_world)
    assert len(sync_world.ghl.requests("POST", "/contacts/upsert")) == 1
    firsts = sorted(n["body"].splitlines()[0] for n in contact["notes"])
    assert firsts == [
        "Call recording (Aloware)",
        "Call summary (Aloware)",
        "Call transcript (Aloware)",
        "Missed inbound call (Aloware)",
        "Voicemail (Aloware)",
    ]
    tags = {t.lower() for t in contact["tags"]}
    assert tags >= {"summary: interested", "summary: follow-up needed", "inbound call"}
    [message] = call_messages(sync_world)
    assert message["call"] == {"from": PHONE, "status": "no-answer"}
    skips = [r.message for r in await sync_rows(sync_world.db) if r.status == "skipped"]
    assert skips == [CALL_UNFINISHED]
    assert set(await event_statuses(sync_world.db)) == {"done"}


async def test_contact_disposed_keeps_only_latest_disposition(sync_world: SyncWorld) -> None:
    """R-CALL-3: two dispositions in a row leave one `Disposition:` tag, the latest, and the
    configured custom field holds it."""
    sync_world.use_modules(df_middleware.sync.calls)
    sim = sync_world.ghl.sim
    sim.add_custom_field("loc_sim", "Aloware Disposition", "aloware_disposition")
    sync_world.settings.ghl_disposition_field_key = "aloware_disposition"
    await sync_world.deliver_aloware(
        "Contact Disposed", aloware_contact(disposition_status="Appointment Set")
    )
    await sync_world.process()
    await sync_world.deliver_aloware("Contact Disposed", aloware_contact(disposition_status="Not Interested"))
    await sync_world.process()

    contact = only_contact(sync_world)
    dispositions = [t for t in contact["tags"] if t.lower().startswith("disposition:")]
    assert [t.lower() for t in dispositions] == ["disposition: not interested"]
    [field] = [f for f in sim.snapshot()["customFields"] if f["fieldKey"] == "contact.aloware_disposition"]
    values = {f["id"]: f.get("value", f.get("field_value")) for f in contact["customFields"]}
    assert values[field["id"]] == "Not Interested"
    assert len(sync_world.ghl.requests("POST", "/contacts/upsert")) == 1


async def test_nobody_to_resolve_is_skipped(sync_world: SyncWorld) -> None:
    """R-ID-2: a call whose body names no contact id, phone or email is skipped, with the reason."""
    sync_world.use_modules(df_middleware.sync.calls)
    body = call_disposed(contact={"phone_number": "not a phone"}, contact_id=None)
    await sync_world.deliver_aloware("Call Disposed", body)
    await sync_world.process()
    [row] = await sync_rows(sync_world.db)
    assert (row.status, row.message, row.direction) == ("skipped", NO_CONTACT_DATA, "aloware_to_ghl")
    assert ghl_contacts(sync_world) == []


async def test_without_ghl_the_call_is_skipped(make_settings: Any, db: Database) -> None:
    """No GHL connectors: the handler skips, naming what to configure (no remote call tried)."""
    settings: Settings = make_settings()
    event = ClaimedEvent(
        kind="webhook",
        id=uuid.uuid4(),
        source="aloware",
        event_type="Call Disposed",
        entity_type="call",
        entity_id="9912345",
        ordering_key=f"phone:{PHONE}",
        payload={"event": "Call Disposed", "body": call_disposed()},
        attempts=1,
        received_at=utcnow(),
    )
    ctx = HandlerContext(settings=settings, db=db)
    result = await handle_finished_call(ctx, event)
    assert [(e.status, e.message) for e in result.entries] == [("skipped", GHL_NOT_CONFIGURED)]
    assert ctx.direction == "aloware_to_ghl"


async def test_later_calls_reuse_the_remembered_conversation(sync_world: SyncWorld) -> None:
    """R-PERF-3, R-CALL-1: a contact's first logged call looks its conversation up (search, then
    create); its later calls cost note + tags + call log only. When GHL no longer has the
    remembered conversation, the call is logged in a fresh one, once."""
    sync_world.use_modules(df_middleware.sync.calls)
    await sync_world.deliver_aloware("Call Disposed", call_disposed(9912345))
    await sync_world.process()
    assert len(sync_world.ghl.requests("GET", "/conversations/search")) == 1
    assert [r.path for r in sync_world.ghl.requests("POST", "/conversations/")].count("/conversations/") == 1
    [first] = call_messages(sync_world)

    before = len(sync_world.ghl.requests())
    await sync_world.deliver_aloware("Call Disposed", call_disposed(9912346))
    await sync_world.process()
    second_call = [(r.method, r.path) for r in sync_world.ghl.requests()[before:]]
    contact_id = only_contact(sync_world)["id"]
    assert sorted(second_call) == sorted(
        [
            ("POST", f"/contacts/{contact_id}/notes"),
            ("POST", f"/contacts/{contact_id}/tags"),
            ("POST", "/conversations/messages/outbound"),
        ]
    )
    messages = call_messages(sync_world)
    assert len(messages) == 2
    assert {m["conversationId"] for m in messages} == {first["conversationId"]}

    # The conversation is deleted in GHL: the third call finds out and logs in a new one.
    sync_world.ghl.sim.conversations[first["conversationId"]].deleted = True
    await sync_world.deliver_aloware("Call Disposed", call_disposed(9912347))
    await sync_world.process()
    assert await event_statuses(sync_world.db) == ["done"] * 3
    third = [m for m in call_messages(sync_world) if m["conversationId"] != first["conversationId"]]
    assert len(third) == 1
    async with sync_world.db.session() as session:
        remembered = await session.get(GhlConversation, contact_id)
    assert remembered is not None
    assert remembered.conversation_id == third[0]["conversationId"]


async def test_a_retry_after_the_remembered_conversation_was_deleted_still_logs_the_call(
    sync_world: SyncWorld,
) -> None:
    """R-CALL-1, R-IDEM-2: on a retry the call log is first looked for in GHL (a lost answer may
    have written it); when the remembered conversation no longer exists, that look-up moves to
    the contact's new conversation instead of failing the event."""
    sync_world.use_modules(df_middleware.sync.calls)
    sync_world.settings = sync_world.settings.model_copy(
        update={"retry_base_seconds": 0.01, "retry_max_seconds": 0.02}
    )
    await sync_world.deliver_aloware("Call Disposed", call_disposed(9912345))
    await sync_world.process()
    [first] = call_messages(sync_world)
    sync_world.ghl.sim.conversations[first["conversationId"]].deleted = True

    sync_world.ghl.faults(error_rate=1.0)  # the second call's first attempt fails at its note
    await sync_world.deliver_aloware("Call Disposed", call_disposed(9912346))
    await sync_world.process()
    sync_world.ghl.faults()
    await asyncio.sleep(0.05)
    await sync_world.process()

    async with sync_world.db.session() as session:
        attempts = sorted(await session.scalars(select(WebhookEvent.attempts)))
    assert attempts[0] == 1
    assert attempts[1] >= 2  # retried: the look-up for an earlier write ran
    assert await event_statuses(sync_world.db) == ["done", "done"]
    logged = [m for m in call_messages(sync_world) if m["conversationId"] != first["conversationId"]]
    assert [m["altId"] for m in logged] == ["aloware-call-9912346"]
