"""The Verity simulator over real HTTP: send-message, signed delivery receipts, inbound texts,
opt-outs, broadcasts and fault injection — and its receipts accepted by the real service.

A small receiver app stands in for the service where only the wire matters; one test points the
simulator at the real DF-Middleware ingest endpoint and checks the stored rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from df_middleware.app import create_app as create_service_app
from df_middleware.config import Settings
from df_middleware.db.models import TextingWebhookEvent
from df_middleware.db.session import Database
from df_middleware.simulators.verity import SEND_MESSAGE_PATH, VeritySimulator, create_app
from tests.conftest import TEST_SECRETS
from tests.servers import free_port, serve_app

API_KEY = "verity-test-key"
TEXTING_SECRET = "texting-secret"
BROADCAST_SECRET = "broadcast-secret"
PERSON = "+19195551234"

#: Key order of the contract examples (contracts/verity/webhooks/texting.message.*.json).
SENT_KEYS = [
    "eventType",
    "messageId",
    "conversationId",
    "direction",
    "from",
    "to",
    "body",
    "timestamp",
    "status",
]
DELIVERED_KEYS = [
    "eventType",
    "messageId",
    "conversationId",
    "direction",
    "from",
    "to",
    "timestamp",
    "status",
]
FAILED_KEYS = [*DELIVERED_KEYS, "errorCode", "errorMessage"]
RECEIVED_KEYS = SENT_KEYS
OPTOUT_KEYS = ["eventType", "messageId", "from", "to", "body", "timestamp"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook endpoint: records every POST and answers the statuses queued in `answers`
    (then 200)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: list[int] = []
        self.app = FastAPI()

        @self.app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            self.received.append(Received(f"/{path}", dict(request.headers), await request.body()))
            status = self.answers.pop(0) if self.answers else 200
            return JSONResponse({"status": status}, status_code=status)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()
    with serve_app(receiver.app) as url:
        yield receiver, url


@pytest.fixture(scope="module")
def verity_server(receiver_server: tuple[Receiver, str]) -> Iterator[tuple[VeritySimulator, str]]:
    _, receiver_url = receiver_server
    sim = VeritySimulator()
    app = create_app(
        sim,
        api_key=API_KEY,
        webhook_url=f"{receiver_url}/texting",
        webhook_secret=TEXTING_SECRET,
        receipt_delay_seconds=0.02,
        broadcast_webhook_url=f"{receiver_url}/broadcast",
        broadcast_webhook_secret=BROADCAST_SECRET,
    )
    with serve_app(app) as url:
        yield sim, url


@pytest.fixture
def receiver(receiver_server: tuple[Receiver, str]) -> Receiver:
    receiver_server[0].received.clear()
    receiver_server[0].answers.clear()
    return receiver_server[0]


@pytest.fixture
def verity(verity_server: tuple[VeritySimulator, str], receiver: Receiver) -> Iterator[httpx.Client]:
    """A client of the simulator, reset before the test (state, log and faults)."""
    _sim, url = verity_server
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/_sim/reset").status_code == 200
        yield client


def _send(client: httpx.Client, payload: Any, key: str = API_KEY) -> httpx.Response:
    return client.post(SEND_MESSAGE_PATH, json=payload, headers={"Authorization": f"Bearer {key}"})


def _drain(client: httpx.Client) -> None:
    answer = client.post("/_sim/drain", params={"max_wait_seconds": 5}).json()
    assert answer == {"drained": True, "pending": 0}


def _signed(received: Received, header: str, secret: str) -> bool:
    expected = hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers[header], expected)


# --- send-message ---------------------------------------------------------------------------------


def test_send_message_requires_the_bearer_key(verity: httpx.Client) -> None:
    payload = {"to": PERSON, "body": "hello"}
    missing = verity.post(SEND_MESSAGE_PATH, json=payload)
    wrong = _send(verity, payload, key="not-the-key")
    basic = verity.post(SEND_MESSAGE_PATH, json=payload, headers={"Authorization": f"Basic {API_KEY}"})
    for answer in (missing, wrong, basic):
        assert answer.status_code == 401
        assert set(answer.json()) == {"error"}
    assert verity.get("/_sim/state").json()["sent_messages"] == []


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"body": "no destination"}, 422),
        ({"to": "(919) 555-1234", "body": "not E.164"}, 422),
        ({"to": "+1555", "body": "not a number"}, 422),
        ({"to": PERSON}, 422),
        ({"to": PERSON, "body": "   "}, 422),
        ({"to": PERSON, "body": 42}, 422),
        ({"to": PERSON, "body": "x" * 1601}, 422),
        ({"to": PERSON, "body": "hi", "from": "9195550000"}, 422),
        ({"to": PERSON, "body": "hi", "correlationId": 7}, 422),
        (["not", "an", "object"], 400),
    ],
)
def test_send_message_refuses_invalid_bodies(verity: httpx.Client, payload: Any, status: int) -> None:
    answer = _send(verity, payload)
    assert answer.status_code == status
    assert set(answer.json()) == {"error"}
    assert verity.get("/_sim/state").json()["sent_messages"] == []


def test_send_message_refuses_malformed_json(verity: httpx.Client) -> None:
    answer = verity.post(
        SEND_MESSAGE_PATH,
        content=b"{not json",
        headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    assert answer.status_code == 400
    assert "error" in answer.json()


def test_send_message_queues_then_posts_signed_sent_and_delivered(
    verity: httpx.Client, receiver: Receiver
) -> None:
    answer = _send(
        verity, {"to": PERSON, "body": "Tuesday at 3pm?", "conversationId": "chat_1", "correlationId": "ev-1"}
    )
    assert answer.status_code == 200
    message_id = answer.json()["messageId"]
    assert answer.json() == {"messageId": message_id, "status": "queued"}
    assert message_id.startswith("tlx_")
    assert receiver.at("/texting") == []  # receipts never block the answer

    _drain(verity)
    sent, delivered = receiver.at("/texting")
    assert [sent.json()["eventType"], delivered.json()["eventType"]] == ["message.sent", "message.delivered"]
    assert list(sent.json()) == SENT_KEYS
    assert list(delivered.json()) == DELIVERED_KEYS
    for receipt in (sent, delivered):
        assert _signed(receipt, "x-texting-signature", TEXTING_SECRET)
        assert receipt.headers["content-type"] == "application/json"
        body = receipt.json()
        assert body["messageId"] == message_id
        assert (body["from"], body["to"], body["conversationId"]) == ("+19195550000", PERSON, "chat_1")
        assert body["direction"] == "outbound"
        assert body["timestamp"].endswith("Z")
    assert sent.json()["body"] == "Tuesday at 3pm?"
    assert (sent.json()["status"], delivered.json()["status"]) == ("sent", "delivered")

    state = verity.get("/_sim/state").json()
    (message,) = state["sent_messages"]
    assert message["correlationId"] == "ev-1"
    assert message["status"] == "delivered"
    assert message["receipts"] == ["message.sent", "message.delivered"]
    assert [(d["event"], d["messageId"], d["status_code"]) for d in state["deliveries"]] == [
        ("message.sent", message_id, 200),
        ("message.delivered", message_id, 200),
    ]
    assert state["receipts_pending"] == 0
    assert state["message_counts"] == {"delivered": 1}
    assert state["webhook_errors"] == []


def test_a_conversation_id_is_kept_per_person(verity: httpx.Client) -> None:
    first = _send(verity, {"to": PERSON, "body": "one"}).json()["messageId"]
    second = _send(verity, {"to": PERSON, "body": "two", "from": "+19195550001"}).json()["messageId"]
    other = _send(verity, {"to": "+19195552222", "body": "three"}).json()["messageId"]
    _drain(verity)
    messages = {m["messageId"]: m for m in verity.get("/_sim/state").json()["sent_messages"]}
    assert messages[first]["conversationId"] == messages[second]["conversationId"]
    assert messages[first]["conversationId"] != messages[other]["conversationId"]
    assert messages[second]["from"] == "+19195550001"


def test_failing_destination_gets_message_failed(
    verity: httpx.Client, receiver: Receiver, verity_server: tuple[VeritySimulator, str]
) -> None:
    answer = verity.put("/_sim/fail-numbers", json={"+19195557777": ["40300", "Destination is a landline"]})
    assert answer.status_code == 200
    assert verity.put("/_sim/fail-numbers", json={"919-555-7777": ["1", "x"]}).status_code == 422
    message_id = _send(verity, {"to": "+19195557777", "body": "hello"}).json()["messageId"]
    _drain(verity)
    sent, failed = (r.json() for r in receiver.at("/texting"))
    assert sent["eventType"] == "message.sent"
    assert list(failed) == FAILED_KEYS
    assert failed["eventType"] == "message.failed"
    assert (failed["messageId"], failed["status"]) == (message_id, "failed")
    assert (failed["errorCode"], failed["errorMessage"]) == ("40300", "Destination is a landline")
    (message,) = verity_server[0].sent_messages
    assert (message["status"], message["errorCode"]) == ("failed", "40300")


def test_receipts_are_retried_on_5xx_and_recorded_when_undeliverable(
    verity: httpx.Client, receiver_server: tuple[Receiver, str], verity_server: tuple[VeritySimulator, str]
) -> None:
    receiver, receiver_url = receiver_server
    receiver.answers.extend([503, 500])
    _send(verity, {"to": PERSON, "body": "retry me"})
    _drain(verity)
    deliveries = verity.get("/_sim/state").json()["deliveries"]
    assert [(d["event"], d["status_code"], d["attempts"]) for d in deliveries] == [
        ("message.sent", 200, 3),
        ("message.delivered", 200, 1),
    ]
    assert len(receiver.at("/texting")) == 4

    sim = verity_server[0]
    sim.webhook_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    try:
        verity.post("/_sim/reset")
        _send(verity, {"to": PERSON, "body": "lost"})
        _drain(verity)
    finally:
        sim.webhook_url = f"{receiver_url}/texting"
    undelivered = verity.get("/_sim/state").json()["deliveries"]
    assert [d["status_code"] for d in undelivered] == [None, None]
    assert all(d["attempts"] == 4 and "ConnectError" in d["error"] for d in undelivered)
    assert [m["status"] for m in sim.sent_messages] == ["delivered"]  # Verity's side went on


# --- the other side of the conversation -----------------------------------------------------------


def test_inbound_texts_and_stop_block_later_sends(verity: httpx.Client, receiver: Receiver) -> None:
    answer = verity.post("/_sim/inbound", json={"from": "(919) 555-2222", "body": "Yes, Tuesday works"})
    assert answer.status_code == 200
    assert answer.json()["status_code"] == 200
    stop = verity.post("/_sim/inbound", json={"from": "919-555-2222", "body": "STOP"})
    assert stop.status_code == 200
    first, second = receiver.at("/texting")
    for received in (first, second):
        assert _signed(received, "x-texting-signature", TEXTING_SECRET)
        payload = received.json()
        assert list(payload) == RECEIVED_KEYS
        assert (payload["eventType"], payload["direction"], payload["status"]) == (
            "message.received",
            "inbound",
            "received",
        )
        assert (payload["from"], payload["to"]) == ("+19195552222", "+19195550000")
    assert first.json()["conversationId"] == second.json()["conversationId"]
    assert second.json()["body"] == "STOP"
    assert verity.get("/_sim/state").json()["opted_out"] == ["+19195552222"]

    receiver.received.clear()
    _send(verity, {"to": "+19195552222", "body": "are you still there?"})
    _drain(verity)
    failed = receiver.at("/texting")[-1].json()
    assert (failed["eventType"], failed["errorCode"]) == ("message.failed", "40300")

    verity.post("/_sim/inbound", json={"from": "+19195552222", "body": "START"})
    assert verity.get("/_sim/state").json()["opted_out"] == []


def test_inbound_nested_shape_and_validation(verity: httpx.Client, receiver: Receiver) -> None:
    answer = verity.post(
        "/_sim/inbound", json={"from": "(919) 555-7777", "body": "still available?", "nested": True}
    )
    assert answer.status_code == 200
    payload = receiver.at("/texting")[0].json()
    assert payload["type"] == "message.received"
    assert payload["message"]["from"] == "(919) 555-7777"
    assert payload["message"]["text"] == "still available?"
    assert payload["message"]["id"].startswith("tlx_")
    assert verity.post("/_sim/inbound", json={"from": "12", "body": "x"}).status_code == 422
    assert verity.post("/_sim/inbound", json={"from": PERSON, "body": ""}).status_code == 422


def test_optout_event(verity: httpx.Client, receiver: Receiver) -> None:
    answer = verity.post("/_sim/optout", json={"from": "+19195552222", "body": "Stop"})
    assert answer.status_code == 200
    (received,) = receiver.at("/texting")
    assert _signed(received, "x-texting-signature", TEXTING_SECRET)
    payload = received.json()
    assert list(payload) == OPTOUT_KEYS
    assert (payload["eventType"], payload["from"], payload["to"], payload["body"]) == (
        "optout.stop",
        "+19195552222",
        "+19195550000",
        "Stop",
    )
    state = verity.get("/_sim/state").json()
    assert state["opted_out"] == ["+19195552222"]
    assert state["deliveries"][0]["event"] == "optout.stop"


def test_broadcast_webhooks_are_signed_with_their_own_secret(
    verity: httpx.Client, receiver: Receiver, verity_server: tuple[VeritySimulator, str]
) -> None:
    analytics = {"broadcastName": "November investor update", "recipients": 1200, "delivered": 1150}
    completed = verity.post(
        "/_sim/broadcast",
        json={
            "event": "broadcast_completed",
            "broadcast": {"broadcastId": "bc_2f9a1c", "analytics": analytics},
        },
    )
    updated = verity.post("/_sim/broadcast", json={"event": "analytics_updated", "broadcast": {}})
    assert completed.status_code == updated.status_code == 200
    first, second = receiver.at("/broadcast")
    assert _signed(first, "x-broadcast-signature", BROADCAST_SECRET)
    assert _signed(second, "x-broadcast-signature", BROADCAST_SECRET)
    assert list(first.json()) == ["broadcastId", "eventType", "eventId", "timestamp", "analytics"]
    assert first.json()["analytics"] == analytics
    assert (first.json()["broadcastId"], first.json()["eventType"]) == ("bc_2f9a1c", "broadcast_completed")
    assert list(second.json()) == ["broadcastId", "eventType", "eventId", "timestamp"]
    assert first.json()["eventId"] != second.json()["eventId"]
    assert verity.post("/_sim/broadcast", json={"event": "nope"}).status_code == 422

    sim = verity_server[0]
    saved, sim.broadcast_webhook_url = sim.broadcast_webhook_url, None
    try:
        assert verity.post("/_sim/broadcast", json={"event": "analytics_updated"}).status_code == 409
    finally:
        sim.broadcast_webhook_url = saved


# --- faults and helpers ---------------------------------------------------------------------------


def test_fault_injection_applies_to_the_api_not_to_control_routes(verity: httpx.Client) -> None:
    assert verity.put("/_sim/faults", json={"error_rate": 1.0, "error_status": 502}).status_code == 200
    assert _send(verity, {"to": PERSON, "body": "x"}).status_code == 502
    assert verity.get("/_sim/state").status_code == 200
    verity.put("/_sim/faults", json={"rate_limit_rate": 1.0, "retry_after_seconds": 7})
    limited = _send(verity, {"to": PERSON, "body": "x"})
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")
    assert verity.get("/_sim/state").json()["sent_messages"] == []
    requests = verity.get("/_sim/requests").json()
    assert [(r["status"], r["fault"]) for r in requests] == [(502, "error"), (429, "rate_limit")]
    assert requests[0]["headers"]["authorization"].startswith("Bearer veri")  # masked
    assert API_KEY not in json.dumps(requests)
    verity.post("/_sim/reset")
    assert _send(verity, {"to": PERSON, "body": "x"}).status_code == 200


async def test_drain_from_another_loop_and_reset(verity_server: tuple[VeritySimulator, str]) -> None:
    sim, url = verity_server
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post("/_sim/reset")
        for n in range(3):
            answer = await client.post(
                SEND_MESSAGE_PATH,
                json={"to": PERSON, "body": f"m{n}"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert answer.status_code == 200
    assert await sim.drain(5)
    assert sim.receipts_pending == 0
    assert [m["status"] for m in sim.sent_messages] == ["delivered"] * 3
    assert len(sim.deliveries) == 6
    sim.reset()
    assert sim.snapshot()["sent_messages"] == []
    assert sim.deliveries == []


# --- against the real service ---------------------------------------------------------------------


async def test_receipts_and_inbound_are_accepted_by_the_real_texting_endpoint(
    make_settings: Callable[..., Settings], db: Database
) -> None:
    """The simulator's signed receipts pass the service's `verify_texting` and are stored
    (SPEC §3.4), with the worker off so the rows stay as ingested."""
    settings = make_settings(auto_migrate=False)
    service = create_service_app(settings, run_worker=False)
    with serve_app(service) as service_url:
        sim = VeritySimulator()
        app = create_app(
            sim,
            api_key=API_KEY,
            webhook_url=f"{service_url}/api/webhooks/texting",
            webhook_secret=TEST_SECRETS["verity_webhook_secret"],
            receipt_delay_seconds=0.01,
        )
        with serve_app(app) as verity_url:
            async with httpx.AsyncClient(base_url=verity_url) as client:
                answer = await client.post(
                    SEND_MESSAGE_PATH,
                    json={"to": PERSON, "body": "See you Tuesday", "correlationId": "ev-42"},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                message_id = answer.json()["messageId"]
                inbound = await client.post("/_sim/inbound", json={"from": "(919) 555-2222", "body": "STOP"})
                drained = await client.post("/_sim/drain", params={"max_wait_seconds": 5})
            assert drained.json()["drained"] is True
            assert inbound.json()["status_code"] == 200
    # The inbound text races the receipts, so compare without order.
    assert sorted((d["event"], d["status_code"]) for d in sim.deliveries) == [
        ("message.delivered", 200),
        ("message.received", 200),
        ("message.sent", 200),
    ]

    async with db.session() as session:
        rows = (await session.scalars(select(TextingWebhookEvent))).all()
    by_type = {row.event_type: row for row in rows}
    assert set(by_type) == {"message.sent", "message.delivered", "message.received"}
    for event_type in ("message.sent", "message.delivered"):
        row = by_type[event_type]
        assert row.entity_id == message_id
        assert (row.from_number, row.to_number) == ("+19195550000", PERSON)
        assert row.signature_verified is True
        assert row.status == "pending"
        assert row.dedupe_key == f"texting:{event_type}:{message_id}:{event_type.removeprefix('message.')}"
    assert by_type["message.received"].from_number == "+19195552222"
