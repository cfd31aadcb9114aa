"""Classification of every source: event names, entities, dedupe keys and ordering keys (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from df_middleware.ingest.sources.aloware import canonical_aloware_name, classify_aloware
from df_middleware.ingest.sources.broadcast import classify_broadcast
from df_middleware.ingest.sources.common import InvalidEvent
from df_middleware.ingest.sources.ghl import classify_ghl, classify_ghl_provider
from df_middleware.ingest.sources.texting import classify_texting


def _example(contracts: Path, relative: str, index: int = 0) -> dict[str, Any]:
    data = json.loads((contracts / relative).read_text())
    if "examples" in data:
        return dict(data["examples"][index])
    return dict(data)


def test_ghl_contact_update_entity_and_phone_ordering(contracts: Path) -> None:
    """R-IN-5, R-Q-4: a native contact event names the contact and is ordered by the person's phone."""
    event = classify_ghl(_example(contracts, "ghl/webhooks/ContactUpdate.json"))
    assert (event.event_type, event.entity_type, event.entity_id) == (
        "ContactUpdate",
        "contact",
        "nmFmQEsNgz6AVpgLVUJ0",
    )
    # R-Q-4 (issue 10): a contact's own events are ordered by the contact, not the phone it carries.
    assert event.ordering_key == "ghl:contact:nmFmQEsNgz6AVpgLVUJ0"
    assert event.dedupe_key.startswith("ghl:ContactUpdate:nmFmQEsNgz6AVpgLVUJ0:")


def test_ghl_names_are_exact_and_case_insensitive() -> None:
    """R-IN-5: names match a table exactly, in any case; a look-alike is not a guess."""
    base = {"id": "c1", "locationId": "loc"}
    assert classify_ghl({**base, "type": "contactupdate"}).event_type == "ContactUpdate"
    assert classify_ghl({**base, "event": "CONTACT.CREATED"}).event_type == "contact.created"
    assert classify_ghl({**base, "eventType": "tag.added", "contactId": "c2"}).entity_id == "c2"
    lookalike = classify_ghl({**base, "type": "ContactUpdated"})
    assert lookalike.entity_type == "unknown"


def test_ghl_name_order_type_then_event_then_event_type() -> None:
    """R-IN-5: the name is taken from `type`, then `event`, then `eventType`."""
    event = classify_ghl({"type": "ContactDelete", "event": "contact.updated", "id": "c9"})
    assert event.event_type == "ContactDelete"


def test_ghl_workflow_contact_id_from_nested_contact() -> None:
    """R-IN-5: workflow payloads name the contact in `contactId` or `contact.id`."""
    event = classify_ghl(
        {"event": "contact.updated", "contact": {"id": "nested-1", "phone": "(919) 555-1234"}}
    )
    assert event.entity_id == "nested-1"
    assert event.ordering_key == "ghl:contact:nested-1"


def test_ghl_webhook_id_is_the_dedupe_key() -> None:
    """R-IN-4: GHL's own webhookId identifies a delivery."""
    event = classify_ghl({"type": "ContactUpdate", "id": "c1", "webhookId": "wh-123"})
    assert event.dedupe_key == "ghl:wh-123"


def test_ghl_missing_name_or_contact_id_is_invalid() -> None:
    """R-IN-3: JSON lacking what GHL events require is refused (422)."""
    with pytest.raises(InvalidEvent):
        classify_ghl({"id": "x"})
    with pytest.raises(InvalidEvent):
        classify_ghl({"type": "ContactUpdate", "locationId": "loc"})


def test_ghl_message_event_ordered_by_contact(contracts: Path) -> None:
    """R-Q-4: a contact's messages stay in order even without a phone in the payload."""
    payload = _example(contracts, "ghl/webhooks/InboundMessage.json", 1)
    event = classify_ghl(payload)
    assert event.entity_type == "message"
    assert event.entity_id == "tyW42xCD0HQpb3hhfLcx"
    assert event.ordering_key == "ghl:contact:gblakL5aYQC4glDtP1r2t3"


def test_provider_delivery_keyed_by_message_id(contracts: Path) -> None:
    """SPEC §3.2: dedupe `ghl-provider:<messageId>`, entity message, ordered by the recipient phone."""
    event = classify_ghl_provider(_example(contracts, "ghl/webhooks/ProviderOutboundMessage.json"))
    assert event.dedupe_key == "ghl-provider:GKJxs4P5L8dWc5CFUITM"
    assert event.event_type == "ProviderOutboundMessage"
    assert event.ordering_key == "phone:+15864603685"
    with pytest.raises(InvalidEvent):
        classify_ghl_provider({"type": "SMS", "phone": "+15864603685"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Call Disposed", ("Call Disposed", "call")),
        ("call disposed", ("Call Disposed", "call")),
        ("Contact DNC Updated", ("Contact DNC Updated", "contact")),
        ("OutboundPhoneCall-Completed", ("OutboundPhoneCall-Completed", "call")),
        ("inboundphonecall-missed", ("InboundPhoneCall-Missed", "call")),
        ("Recording Saved", ("Recording Saved", "recording")),
        ("Call Disposed Again", None),
        ("PhoneCall-Completed", None),
        ("xOutboundPhoneCall-Completed", None),
    ],
)
def test_aloware_event_names(raw: str, expected: tuple[str, str] | None) -> None:
    """R-IN-5: exact (case-insensitive) names and the two call families, no substring guesses."""
    assert canonical_aloware_name(raw) == expected


def test_aloware_examples_classify(contracts: Path) -> None:
    """R-IN-5, R-Q-4: every Aloware example gets its entity; a contact's call activity shares one key
    (the phone), its own contact events another (the contact's id)."""
    keys = set()
    for path in sorted((contracts / "aloware" / "webhooks").glob("*.json")):
        event = classify_aloware(json.loads(path.read_text()))
        assert event.entity_type != "unknown", path.name
        assert event.entity_id, path.name
        keys.add(event.ordering_key)
    assert keys == {"phone:+19195551234", "aloware:contact:48213"}


def test_aloware_ids_are_strings_and_children_name_their_entity(contracts: Path) -> None:
    """SPEC §3.3: numeric ids are stored as strings; a recording is its own entity type."""
    event = classify_aloware(_example(contracts, "aloware/webhooks/Recording_Saved.json"))
    assert event.entity_type == "recording"
    assert event.entity_id == "77001"


def test_aloware_call_child_without_phone_is_ordered_behind_its_call() -> None:
    """R-Q-4: without a phone, a summary waits for its call."""
    event = classify_aloware({"event": "Call Summarized", "body": {"id": 5, "call_id": 99}})
    assert event.ordering_key == "aloware:call:99"


def test_aloware_dedupe_keeps_two_updates_apart(contracts: Path) -> None:
    """R-IN-4: two different updates of one contact are two events; the same body twice is one."""
    first = _example(contracts, "aloware/webhooks/Contact_Updated.json")
    second = json.loads(json.dumps(first))
    second["body"]["first_name"] = "Changed"
    assert classify_aloware(first).dedupe_key != classify_aloware(second).dedupe_key
    assert classify_aloware(first).dedupe_key == classify_aloware(json.loads(json.dumps(first))).dedupe_key


def test_texting_nested_payload_is_normalised(contracts: Path) -> None:
    """SPEC §3.4, R-ID-1: nested fields, `type` for the event name, phones stored as E.164."""
    event = classify_texting(_example(contracts, "verity/webhooks/texting.nested.message.received.json"))
    assert event.event_type == "message.received"
    assert event.entity_id == "tlx_01HZX0C1"
    assert event.columns["from_number"] == "+19195557777"
    assert event.columns["conversation_id"] == "chat_7790"
    assert event.ordering_key == "phone:+19195557777"


def test_texting_status_events_keyed_by_status(contracts: Path) -> None:
    """R-IN-4: sent and delivered receipts of one message are different events."""
    sent = classify_texting(_example(contracts, "verity/webhooks/texting.message.sent.json"))
    delivered = classify_texting(_example(contracts, "verity/webhooks/texting.message.delivered.json"))
    assert sent.dedupe_key == "texting:message.sent:tlx_01HZX0B1:sent"
    assert delivered.dedupe_key == "texting:message.delivered:tlx_01HZX0B1:delivered"
    # Outbound: the person is the recipient.
    assert sent.ordering_key == "phone:+19195551234"


def test_texting_without_message_id_never_shares_a_key() -> None:
    """SPEC §3.4: no message id → a digest of the body, never a key two messages can share."""
    first = classify_texting({"eventType": "message.received", "from": "+19195551234", "body": "a"})
    second = classify_texting({"eventType": "message.received", "from": "+19195551234", "body": "b"})
    assert first.dedupe_key != second.dedupe_key
    with pytest.raises(InvalidEvent):
        classify_texting({"from": "+19195551234", "body": "no type"})


def test_texting_invalid_phone_is_not_a_key() -> None:
    """R-ID-1: an invalid number stays in the payload but is never used as a key."""
    event = classify_texting({"eventType": "message.received", "messageId": "m1", "from": "12", "to": "x"})
    assert event.columns["from_number"] is None
    assert event.ordering_key == "texting:message:m1"


def test_broadcast_keys(contracts: Path) -> None:
    """SPEC §3.5: broadcast dedupe key uses the event id; ordering per broadcast (R-BC-3)."""
    event = classify_broadcast(_example(contracts, "verity/webhooks/broadcast.analytics_updated.json"))
    assert event.dedupe_key == "broadcast:bc_2f9a1c:analytics_updated:bcev_0001"
    assert event.ordering_key == "broadcast:broadcast:bc_2f9a1c"
    no_id = classify_broadcast({"broadcastId": "b", "eventType": "analytics_updated", "timestamp": "T1"})
    assert no_id.dedupe_key == "broadcast:b:analytics_updated:T1"
    with pytest.raises(InvalidEvent):
        classify_broadcast({"eventType": "analytics_updated"})


_json_scalars = st.one_of(st.none(), st.integers(-(2**53), 2**53), st.text(max_size=20))
_bodies = st.dictionaries(st.text(min_size=1, max_size=8), _json_scalars, max_size=6)


@given(_bodies, _bodies)
def test_ghl_dedupe_key_differs_exactly_when_payload_differs(a: dict[str, Any], b: dict[str, Any]) -> None:
    """R-IN-4 (property): without webhookId, two payloads share a key only when they are equal."""
    a = {**a, "type": "ContactUpdate", "id": "c1"}
    b = {**b, "type": "ContactUpdate", "id": "c1"}
    a.pop("webhookId", None)
    b.pop("webhookId", None)
    same_key = classify_ghl(a).dedupe_key == classify_ghl(b).dedupe_key
    assert same_key == (a == b)


def test_an_id_number_beyond_what_a_float_holds_exactly_is_refused() -> None:
    """R-IDEM-2, R-SEC-3 (issue 10): JSON integers beyond 64 bits are read as floats, so 2**64 and
    2**64 + 1 would become one key and two calls one note; such an id is a 422, while the same id
    sent as a string, and any id up to 2**53, are kept exactly."""
    too_big = json.loads("18446744073709551617")  # what orjson/json give for 2**64 + 1
    for number in (float(2**64), 1e40, float(too_big)):
        with pytest.raises(InvalidEvent, match="too large"):
            classify_aloware({"event": "Call Disposed", "body": {"id": number}})
    exact = classify_aloware({"event": "Call Disposed", "body": {"id": "18446744073709551617"}})
    assert exact.entity_id == "18446744073709551617"
    assert classify_aloware({"event": "Call Disposed", "body": {"id": float(2**53)}}).entity_id == str(2**53)
