"""Verity simulator: the send-message API, and the texting and broadcast webhooks Verity sends.

`POST /api/integrations/df-middleware/send-message` (Bearer key) queues an SMS and answers at once
`{"messageId": "tlx_…", "status": "queued"}`; then, in the background, the simulator posts the
delivery receipts the way Verity does — `message.sent`, then `message.delivered` or
`message.failed` — to the texting webhook URL, signed with `X-Texting-Signature` (hex
HMAC-SHA256 of the raw body). The payloads are shaped exactly like
`contracts/verity/webhooks/texting.message.*.json`, so the real ingest endpoint accepts them.

Control routes let a test play the other side of the conversation: `/_sim/inbound` (a person texts
in — `message.received`), `/_sim/optout` (`optout.stop`), `/_sim/broadcast` (a broadcast webhook,
signed with `X-Broadcast-Signature`), `/_sim/fail-numbers` (destinations whose messages fail) and
`/_sim/drain` (wait until every receipt has been delivered).

Like a carrier after STOP, a number that opted out (through `/_sim/optout` or an inbound STOP) gets
`message.failed` with Telnyx's code 40300 until it texts START. The message is still recorded in
`sent_messages`, so a test can prove the middleware never tried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from df_middleware.phones import normalize_phone
from df_middleware.simulators.common import (
    CONTROL_PREFIX,
    HeaderBuilder,
    WebhookDelivery,
    WebhookSender,
    build_simulator_app,
    system_now,
)

SEND_MESSAGE_PATH = "/api/integrations/df-middleware/send-message"
DEFAULT_API_KEY = "verity-sim-key"
#: The business line the simulator texts from when a send names no `from`.
DEFAULT_FROM_NUMBER = "+19195550000"
#: Longest body accepted (10 concatenated segments, as carriers allow).
MAX_BODY_CHARS = 1600
STOP_KEYWORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit"})
START_KEYWORDS = frozenset({"start", "unstop"})
#: What the carrier answers for a number that texted STOP (Telnyx 40300).
OPTED_OUT_FAILURE = ("40300", "Blocked due to STOP message")

BroadcastEvent = Literal["analytics_updated", "broadcast_completed"]


def texting_timestamp() -> str:
    """Verity's message timestamps: UTC, milliseconds, `Z` (`2026-11-24T16:52:00.000Z`)."""
    return system_now("verity").isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds_timestamp() -> str:
    """Opt-out and broadcast events carry second precision (`2026-11-24T21:05:00Z`)."""
    return system_now("verity").strftime("%Y-%m-%dT%H:%M:%SZ")


def new_message_id() -> str:
    """A fresh message id; random, so a reset simulator never repeats one the service has seen."""
    return f"tlx_{secrets.token_hex(10).upper()}"


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _is_e164(value: Any) -> bool:
    return isinstance(value, str) and normalize_phone(value) == value


class VerityError(Exception):
    """A refused send: Verity answers `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class SentMessage:
    """One message accepted by the send-message API, and how far it got."""

    message_id: str
    to: str
    from_number: str
    body: str
    conversation_id: str
    correlation_id: str | None
    status: str = "queued"
    error_code: str | None = None
    error_message: str | None = None
    queued_at: str = field(default_factory=texting_timestamp)
    #: Receipt events already posted, in order.
    receipts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messageId": self.message_id,
            "to": self.to,
            "from": self.from_number,
            "body": self.body,
            "conversationId": self.conversation_id,
            "correlationId": self.correlation_id,
            "status": self.status,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "queuedAt": self.queued_at,
            "receipts": list(self.receipts),
        }

    def receipt(self, event: str) -> dict[str, Any]:
        """The webhook for `event`, shaped like `texting.message.<sent|delivered|failed>.json`."""
        payload: dict[str, Any] = {
            "eventType": event,
            "messageId": self.message_id,
            "conversationId": self.conversation_id,
            "direction": "outbound",
            "from": self.from_number,
            "to": self.to,
        }
        if event == "message.sent":
            payload["body"] = self.body
        payload["timestamp"] = texting_timestamp()
        payload["status"] = event.removeprefix("message.")
        if event == "message.failed":
            payload["errorCode"] = self.error_code
            payload["errorMessage"] = self.error_message
        return payload


class VeritySimulator:
    """Verity in memory: messages sent through it, what it posted back, and which destinations
    fail. Configuration (key, webhook URLs and secrets, receipt delay) survives `reset()`."""

    def __init__(self) -> None:
        self.api_key = DEFAULT_API_KEY
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.broadcast_webhook_url: str | None = None
        self.broadcast_webhook_secret: str | None = None
        self.receipt_delay_seconds = 0.05
        self.default_from_number = DEFAULT_FROM_NUMBER
        self.webhooks = WebhookSender()
        self.reset()

    def reset(self) -> None:
        self.messages: dict[str, SentMessage] = {}
        #: E.164 destination → (error code, error text) of the `message.failed` it gets.
        self.fail_numbers: dict[str, tuple[str, str]] = {}
        #: Numbers that texted STOP (or were opted out through `/_sim/optout`) and not START since.
        self.opted_out: set[str] = set()
        #: Inbound messages and opt-outs the simulator emitted, as sent.
        self.received_messages: list[dict[str, Any]] = []
        self._conversations: dict[str, str] = {}
        self.webhooks.clear()

    # --- what tests read ----------------------------------------------------------------------------

    @property
    def sent_messages(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.messages.values()]

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook posted: event, messageId (or broadcastId), status_code, attempts, payload."""
        return [d.as_dict() for d in self.webhooks.deliveries]

    @property
    def receipts_pending(self) -> int:
        """Messages whose receipts are still being delivered."""
        return self.webhooks.pending

    async def drain(self, max_wait_seconds: float = 10.0) -> bool:
        """Wait until every receipt has been delivered; False if some are still running."""
        return await self.webhooks.drain(max_wait_seconds)

    def snapshot(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for message in self.messages.values():
            counts[message.status] = counts.get(message.status, 0) + 1
        return {
            "sent_messages": self.sent_messages,
            "received_messages": [dict(m) for m in self.received_messages],
            "deliveries": self.deliveries,
            "receipts_pending": self.receipts_pending,
            "webhook_errors": list(self.webhooks.background_errors),
            "message_counts": counts,
            "fail_numbers": {number: list(failure) for number, failure in self.fail_numbers.items()},
            "opted_out": sorted(self.opted_out),
        }

    def conversation_for(self, phone: str) -> str:
        """Verity keeps one chat per person; its id is stable for the simulator's lifetime."""
        if phone not in self._conversations:
            self._conversations[phone] = f"chat_{secrets.token_hex(4)}"
        return self._conversations[phone]

    # --- send-message -------------------------------------------------------------------------------

    def accept_message(self, data: Any) -> SentMessage:
        """Validate a send-message body and queue the message (VerityError when refused)."""
        if not isinstance(data, Mapping):
            raise VerityError(400, "request body must be a JSON object")
        to, body, sender = data.get("to"), data.get("body"), data.get("from")
        if to is None:
            raise VerityError(422, "`to` is required")
        if not _is_e164(to):
            raise VerityError(422, "`to` must be an E.164 phone number")
        if not isinstance(body, str) or not body.strip():
            raise VerityError(422, "`body` is required and must be a non-empty string")
        if len(body) > MAX_BODY_CHARS:
            raise VerityError(422, f"`body` is longer than {MAX_BODY_CHARS} characters")
        if sender is not None and not _is_e164(sender):
            raise VerityError(422, "`from` must be an E.164 phone number")
        for key in ("conversationId", "correlationId"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise VerityError(422, f"`{key}` must be a string")
        message = SentMessage(
            message_id=new_message_id(),
            to=to,
            from_number=sender or self.default_from_number,
            body=body,
            conversation_id=data.get("conversationId") or self.conversation_for(to),
            correlation_id=data.get("correlationId"),
        )
        self.messages[message.message_id] = message
        return message

    def _failure_for(self, number: str) -> tuple[str, str] | None:
        if number in self.fail_numbers:
            return self.fail_numbers[number]
        if number in self.opted_out:
            return OPTED_OUT_FAILURE
        return None

    async def deliver_receipts(self, message: SentMessage) -> None:
        """`message.sent`, then `message.delivered` or `message.failed`, each after the delay."""
        generation = self.webhooks.generation
        await asyncio.sleep(self.receipt_delay_seconds)
        if generation != self.webhooks.generation:
            return
        message.status = "sent"
        await self._post_receipt(message, "message.sent")
        await asyncio.sleep(self.receipt_delay_seconds)
        if generation != self.webhooks.generation:
            return
        failure = self._failure_for(message.to)
        if failure is None:
            message.status = "delivered"
            await self._post_receipt(message, "message.delivered")
        else:
            message.status = "failed"
            message.error_code, message.error_message = failure
            await self._post_receipt(message, "message.failed")

    async def _post_receipt(self, message: SentMessage, event: str) -> None:
        message.receipts.append(event)
        await self.send_texting(event, message.receipt(event), message_id=message.message_id)

    # --- texting and broadcast webhooks ------------------------------------------------------------

    def _signer(self, header: str, secret: str | None) -> HeaderBuilder | None:
        if secret is None:
            return None  # unsigned: what a misconfigured Verity would send
        return lambda body: {header: hmac_hex(secret, body)}

    async def send_texting(
        self, event: str, payload: dict[str, Any], *, message_id: str | None
    ) -> WebhookDelivery | None:
        """Post a texting webhook (None when no texting webhook URL is configured)."""
        if not self.webhook_url:
            return None
        return await self.webhooks.send(
            self.webhook_url,
            event,
            payload,
            headers=self._signer("x-texting-signature", self.webhook_secret),
            details={"messageId": message_id},
        )

    def _person(self, raw: str) -> str:
        phone = normalize_phone(raw)
        if phone is None:
            raise VerityError(422, f"not a valid phone number: {raw!r}")
        return phone

    def _note_keyword(self, phone: str, text: str) -> None:
        keyword = text.strip().lower()
        if keyword in STOP_KEYWORDS:
            self.opted_out.add(phone)
        elif keyword in START_KEYWORDS:
            self.opted_out.discard(phone)

    def inbound_payload(
        self,
        sender: str,
        text: str,
        *,
        to: str | None = None,
        message_id: str | None = None,
        conversation_id: str | None = None,
        nested: bool = False,
    ) -> dict[str, Any]:
        """A person's SMS as Verity reports it: `texting.message.received.json`, or with
        `nested` the `texting.nested.message.received.json` shape (sender number as typed)."""
        phone = self._person(sender)
        to_number = self._person(to) if to else self.default_from_number
        message_id = message_id or new_message_id()
        conversation_id = conversation_id or self.conversation_for(phone)
        if nested:
            return {
                "type": "message.received",
                "message": {
                    "id": message_id,
                    "conversationId": conversation_id,
                    "direction": "inbound",
                    "from": sender,
                    "to": to_number,
                    "text": text,
                    "createdAt": _seconds_timestamp(),
                },
            }
        return {
            "eventType": "message.received",
            "messageId": message_id,
            "conversationId": conversation_id,
            "direction": "inbound",
            "from": phone,
            "to": to_number,
            "body": text,
            "timestamp": texting_timestamp(),
            "status": "received",
        }

    async def receive(self, sender: str, text: str, **options: Any) -> WebhookDelivery | None:
        """A person texts in: record it (STOP/START change the carrier's opt-out state) and post
        `message.received`."""
        payload = self.inbound_payload(sender, text, **options)
        self._note_keyword(self._person(sender), text)
        self.received_messages.append(payload)
        message_id = payload.get("messageId") or payload["message"]["id"]
        return await self.send_texting("message.received", payload, message_id=message_id)

    async def opt_out(
        self, sender: str, *, to: str | None = None, text: str = "STOP", message_id: str | None = None
    ) -> WebhookDelivery | None:
        """Verity's own opt-out notice, shaped like `texting.optout.stop.json`."""
        phone = self._person(sender)
        payload = {
            "eventType": "optout.stop",
            "messageId": message_id or new_message_id(),
            "from": phone,
            "to": self._person(to) if to else self.default_from_number,
            "body": text,
            "timestamp": _seconds_timestamp(),
        }
        self.opted_out.add(phone)
        self.received_messages.append(payload)
        return await self.send_texting("optout.stop", payload, message_id=payload["messageId"])

    def broadcast_payload(self, event: BroadcastEvent, broadcast: Mapping[str, Any]) -> dict[str, Any]:
        """A broadcast webhook shaped like `broadcast.*.json`; `broadcast` may name `broadcastId`,
        `eventId`, `timestamp` and `analytics` (anything else is passed through)."""
        rest = {
            k: v
            for k, v in broadcast.items()
            if k not in {"broadcastId", "eventType", "eventId", "timestamp"}
        }
        return {
            "broadcastId": broadcast.get("broadcastId") or f"bc_{secrets.token_hex(3)}",
            "eventType": event,
            "eventId": broadcast.get("eventId") or f"bcev_{secrets.token_hex(4)}",
            "timestamp": broadcast.get("timestamp") or _seconds_timestamp(),
            **rest,
        }

    async def broadcast(self, event: BroadcastEvent, broadcast: Mapping[str, Any]) -> WebhookDelivery:
        """Post a broadcast webhook, signed with `X-Broadcast-Signature`. ValueError when no
        broadcast webhook URL is configured."""
        if not self.broadcast_webhook_url:
            raise ValueError("broadcast_webhook_url is not configured")
        payload = self.broadcast_payload(event, broadcast)
        return await self.webhooks.send(
            self.broadcast_webhook_url,
            event,
            payload,
            headers=self._signer("x-broadcast-signature", self.broadcast_webhook_secret),
            details={"broadcastId": payload["broadcastId"], "eventId": payload["eventId"]},
        )


# --- HTTP ------------------------------------------------------------------------------------------


class InboundRequest(BaseModel):
    """`POST /_sim/inbound`: a person (`from`) texts `body` to the business line (`to`)."""

    model_config = ConfigDict(populate_by_name=True)

    sender: str = Field(alias="from")
    to: str | None = None
    body: str = Field(min_length=1)
    message_id: str | None = Field(None, alias="messageId")
    conversation_id: str | None = Field(None, alias="conversationId")
    nested: bool = Field(False, description="Send the nested `{type, message: {...}}` shape.")


class OptOutRequest(BaseModel):
    """`POST /_sim/optout`."""

    model_config = ConfigDict(populate_by_name=True)

    sender: str = Field(alias="from")
    to: str | None = None
    body: str = "STOP"
    message_id: str | None = Field(None, alias="messageId")


class BroadcastRequest(BaseModel):
    """`POST /_sim/broadcast`."""

    event: BroadcastEvent
    broadcast: dict[str, Any] = Field(default_factory=dict)


def _delivery_answer(delivery: WebhookDelivery | None) -> Response:
    if delivery is None:
        return JSONResponse({"error": "webhook_url is not configured"}, status_code=409)
    return JSONResponse(delivery.as_dict())


def _bearer_matches(header: str | None, key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _add_routes(app: FastAPI, sim: VeritySimulator) -> None:
    @app.post(SEND_MESSAGE_PATH)
    async def send_message(request: Request) -> Response:
        if not _bearer_matches(request.headers.get("authorization"), sim.api_key):
            return JSONResponse({"error": "Unauthorized: missing or invalid API key"}, status_code=401)
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"error": "request body is not valid JSON"}, status_code=400)
        try:
            message = sim.accept_message(data)
        except VerityError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        sim.webhooks.start(sim.deliver_receipts(message))
        return JSONResponse({"messageId": message.message_id, "status": "queued"})

    @app.post(f"{CONTROL_PREFIX}/inbound")
    async def inbound(request: InboundRequest) -> Response:
        try:
            delivery = await sim.receive(
                request.sender,
                request.body,
                to=request.to,
                message_id=request.message_id,
                conversation_id=request.conversation_id,
                nested=request.nested,
            )
        except VerityError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return _delivery_answer(delivery)

    @app.post(f"{CONTROL_PREFIX}/optout")
    async def optout(request: OptOutRequest) -> Response:
        try:
            delivery = await sim.opt_out(
                request.sender, to=request.to, text=request.body, message_id=request.message_id
            )
        except VerityError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return _delivery_answer(delivery)

    @app.post(f"{CONTROL_PREFIX}/broadcast")
    async def broadcast(request: BroadcastRequest) -> Response:
        try:
            delivery = await sim.broadcast(request.event, request.broadcast)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(delivery.as_dict())

    @app.put(f"{CONTROL_PREFIX}/fail-numbers")
    async def fail_numbers(numbers: dict[str, tuple[str, str]]) -> Response:
        """Replace the failing destinations: `{"+1…": ["40300", "Destination is a landline"]}`."""
        bad = [number for number in numbers if not _is_e164(number)]
        if bad:
            return JSONResponse({"error": f"not E.164: {bad}"}, status_code=422)
        sim.fail_numbers = dict(numbers)
        return JSONResponse({k: list(v) for k, v in sim.fail_numbers.items()})

    @app.post(f"{CONTROL_PREFIX}/drain")
    async def drain(max_wait_seconds: float = 10.0) -> dict[str, Any]:
        drained = await sim.drain(max_wait_seconds)
        return {"drained": drained, "pending": sim.receipts_pending}


def create_app(
    sim: VeritySimulator | None = None,
    *,
    api_key: str = DEFAULT_API_KEY,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    receipt_delay_seconds: float = 0.05,
    broadcast_webhook_url: str | None = None,
    broadcast_webhook_secret: str | None = None,
) -> FastAPI:
    """The Verity simulator as an ASGI app; `app.state.sim` is its `VeritySimulator`.

    Webhook settings given here replace the simulator's; those left None keep what it has.
    """
    sim = sim or VeritySimulator()
    sim.api_key = api_key
    sim.receipt_delay_seconds = receipt_delay_seconds
    if webhook_url is not None:
        sim.webhook_url = webhook_url
    if webhook_secret is not None:
        sim.webhook_secret = webhook_secret
    if broadcast_webhook_url is not None:
        sim.broadcast_webhook_url = broadcast_webhook_url
    if broadcast_webhook_secret is not None:
        sim.broadcast_webhook_secret = broadcast_webhook_secret
    app = build_simulator_app("Verity simulator", state=sim.snapshot, reset=sim.reset)
    app.state.sim = sim
    _add_routes(app, sim)
    return app
