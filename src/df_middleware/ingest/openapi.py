"""What the OpenAPI document says about the five webhook endpoints (SPEC §3, §8.1; R-IN-3, R-REL-6).

The endpoints read their raw body themselves (the signature is over the exact bytes, so nothing
may parse it first), which leaves FastAPI nothing to describe. This module writes the description
by hand, as OpenAPI fragments the routes carry in `openapi_extra`:

- **request bodies**: what each source must send (the fields the classifiers in `sources/` and
  `texting_payload.py` read) and their bounds (`MAX_ID_LENGTH`, the body size, the nesting depth).
  The schemas stay open (`additionalProperties`): GHL and Aloware add fields without notice, and
  an event name we do not know is stored, not refused (docs/architecture.md);
- **security**: each endpoint's alternatives, over the schemes of `SECURITY_SCHEMES`, which the
  document lists in `components.securitySchemes` (see `admin/docs.py`);
- **responses**: every status the pipeline answers, with its body and headers.

A schema here is documentation *and* the generator of the property-based fuzzing in
`tests/test_openapi_fuzz.py`, so a field named here is one the pipeline really reads. Nothing in
this module is consulted on the request path.
"""

from __future__ import annotations

from typing import Any

from df_middleware.config import Settings
from df_middleware.ingest.sources.aloware import ALOWARE_EVENTS
from df_middleware.ingest.sources.common import MAX_ID_LENGTH
from df_middleware.ingest.sources.ghl import GHL_EVENTS
from df_middleware.texting_payload import TEXTING_EVENT_TYPES

Schema = dict[str, Any]

# --- security schemes ---------------------------------------------------------------------------

GHL_ED25519 = "ghlEd25519Signature"
GHL_RSA = "ghlRsaSignature"
GHL_WORKFLOW = "ghlWorkflowSecret"
ALOWARE_BASIC = "alowareBasic"
ALOWARE_BEARER = "alowareBearer"
TEXTING_SIGNATURE = "textingSignature"
TEXTING_PLAIN = "textingPlainSecret"
BROADCAST_SIGNATURE = "broadcastSignature"

#: How a sender proves itself, one scheme per header (or HTTP auth scheme) we accept. Signatures
#: are described as what they are: a header whose value is computed over the raw body bytes.
SECURITY_SCHEMES: dict[str, Schema] = {
    GHL_ED25519: {
        "type": "apiKey",
        "in": "header",
        "name": "x-ghl-signature",
        "description": "Base64 Ed25519 signature of the raw request body, verified with "
        "GHL_WEBHOOK_ED25519_PUBLIC_KEY (GHL's newer deliveries). Preferred over `x-wh-signature`.",
    },
    GHL_RSA: {
        "type": "apiKey",
        "in": "header",
        "name": "x-wh-signature",
        "description": "Base64 RSA-SHA256 (PKCS#1 v1.5) signature of the raw request body, verified "
        "with GHL_WEBHOOK_PUBLIC_KEY (default: the key GHL publishes).",
    },
    GHL_WORKFLOW: {
        "type": "apiKey",
        "in": "header",
        "name": "X-DF-Webhook-Secret",
        "description": "For GHL workflow 'custom webhook' actions, which GHL does not sign: equal to "
        "GHL_WORKFLOW_WEBHOOK_SECRET (constant-time compare). With that setting unset, unsigned "
        "requests are refused.",
    },
    ALOWARE_BASIC: {
        "type": "http",
        "scheme": "basic",
        "description": "ALOWARE_WEBHOOK_BASIC_USER / ALOWARE_WEBHOOK_BASIC_PASS, as configured in "
        "Aloware's webhook settings.",
    },
    ALOWARE_BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "ALOWARE_WEBHOOK_BEARER_TOKEN, as configured in Aloware's webhook settings.",
    },
    TEXTING_SIGNATURE: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Texting-Signature",
        "description": "Hex HMAC-SHA256 of the raw request body with VERITY_WEBHOOK_SECRET "
        "(a `sha256=` prefix is tolerated).",
    },
    TEXTING_PLAIN: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Texting-Secret",
        "description": "VERITY_WEBHOOK_SECRET itself, for legacy senders that cannot sign: accepted "
        "only while TEXTING_ALLOW_PLAIN_SECRET=true and no X-Texting-Signature is sent.",
    },
    BROADCAST_SIGNATURE: {
        "type": "apiKey",
        "in": "header",
        "name": "X-Broadcast-Signature",
        "description": "Hex HMAC-SHA256 of the raw request body with BROADCAST_WEBHOOK_SECRET "
        "(default: VERITY_WEBHOOK_SECRET).",
    },
}


def _any_of(*schemes: str) -> list[dict[str, list[str]]]:
    """An operation's `security`: one requirement per scheme, i.e. any one of them suffices."""
    return [{scheme: []} for scheme in schemes]


# --- request bodies -----------------------------------------------------------------------------

_INT64 = {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1}


def _identifier(description: str) -> Schema:
    """An id as senders send them: a string (at most MAX_ID_LENGTH characters) or an integer;
    either is stored as a string. Longer ids are refused (422): they go into indexed keys."""
    return {
        "anyOf": [{"type": "string", "maxLength": MAX_ID_LENGTH}, _INT64],
        "description": description,
    }


def _name(description: str, known: list[str] | None = None) -> Schema:
    """An event name: a non-empty string of at most MAX_ID_LENGTH characters. The names the
    service acts on are listed first; any other name is stored too (and skipped by the worker)."""
    free = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    if not known:
        return {**free, "description": description}
    return {"anyOf": [{"type": "string", "enum": known}, free], "description": description}


def _text(description: str, *, max_length: int | None = None) -> Schema:
    schema: Schema = {"type": "string", "description": description}
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


_TIMESTAMP: Schema = {
    "anyOf": [{"type": "string", "format": "date-time"}, _INT64],
    "description": "When the sender sent the event: ISO-8601 (as GHL sends it) or epoch milliseconds.",
}


def _ghl_body() -> Schema:
    known = sorted({spec.name for spec in GHL_EVENTS.values()})
    name = "Event name; taken from `type`, then `event`, then `eventType` (case-insensitive)."
    return {
        "title": "GhlWebhook",
        "type": "object",
        "description": (
            "A GHL webhook (SPEC §3.1; examples: contracts/ghl/webhooks). Native webhooks name the event "
            "in `type` (PascalCase), workflow webhooks in `type` or `event` (dotted names). Contact "
            "events need the contact's id (`id`, `contactId` or `contact.id`): without it, 422. "
            "A name the service does not know is stored and skipped. With a `timestamp` further than "
            "GHL_WEBHOOK_TOLERANCE_SECONDS from now the request is refused (401)."
        ),
        "properties": {
            "type": _name(name, known),
            "event": _name("Event name of workflow webhooks (when `type` is absent)."),
            "eventType": _name("Event name, last resort."),
            "webhookId": _identifier("GHL's delivery id: a redelivery with the same id is a duplicate."),
            "timestamp": _TIMESTAMP,
            "locationId": _text("The GHL location (sub-account) the event belongs to."),
            "companyId": _identifier("The agency (install events)."),
            "id": _identifier("The entity's id (the contact's, on native contact events)."),
            "contactId": _identifier("The contact's id (workflow contact events; messages, notes…)."),
            "contact_id": _identifier("The contact's id (workflow contact events, snake case)."),
            "contact": {
                "type": "object",
                "description": "The contact, on workflow webhooks.",
                "properties": {
                    "id": _identifier("The contact's id."),
                    "phone": _text("The contact's phone, any format."),
                },
            },
            "messageId": _identifier("The message's id (message events)."),
            "opportunityId": _identifier("The opportunity's id (workflow opportunity events)."),
            "phone": _text("The contact's phone, any format: events of one phone are processed in order."),
            "email": _text("The contact's email."),
            "firstName": _text("The contact's first name."),
            "lastName": _text("The contact's last name."),
            "tags": {"type": "array", "items": {"type": "string"}, "description": "The contact's tags."},
            "dnd": {"type": "boolean", "description": "Do-not-disturb on every channel."},
            "appointment": {
                "type": "object",
                "description": "The appointment (appointment events).",
                "properties": {"id": _identifier("The appointment's id.")},
            },
        },
        "anyOf": [{"required": ["type"]}, {"required": ["event"]}, {"required": ["eventType"]}],
        "additionalProperties": True,
        "example": {
            "type": "ContactUpdate",
            "locationId": "ve9EPM428h8vShlRW1KT",
            "id": "nmFmQEsNgz6AVpgLVUJ0",
            "firstName": "John",
            "phone": "+919509597501",
            "webhookId": "6b9f1f0a-5d4e-4c3b-9a2f-1e0d9c8b7a60",
            "timestamp": "2025-01-28T14:35:00Z",
        },
    }


def _ghl_provider_body() -> Schema:
    return {
        "title": "GhlProviderOutboundMessage",
        "type": "object",
        "description": (
            "An agent's message from GHL to our conversation provider's Delivery URL (SPEC §3.2; "
            "contracts/ghl/webhooks/ProviderOutboundMessage.json). Sent asynchronously; a GHL retry "
            "of the same `messageId` is a duplicate and never sends a second SMS."
        ),
        "properties": {
            "messageId": _identifier("GHL's message id: the dedupe key."),
            "contactId": _identifier("The GHL contact the message is for."),
            "locationId": _text("The GHL location (sub-account)."),
            "type": _text("The channel, e.g. `SMS` or `Email`."),
            "phone": _text("The recipient's phone, any format."),
            "message": _text("The text to send."),
            "attachments": {"type": "array", "items": {"type": "string"}, "description": "Media URLs."},
            "userId": _identifier("The GHL user who sent it."),
            "emailMessageId": _identifier("The email's id (email messages)."),
            "timestamp": _TIMESTAMP,
        },
        "required": ["messageId"],
        "additionalProperties": True,
        "example": {
            "contactId": "GKBhT6BfwY9mjzXAU3sq",
            "locationId": "GKAWb4yu7A4LSc0skQ6g",
            "messageId": "GKJxs4P5L8dWc5CFUITM",
            "type": "SMS",
            "phone": "+15864603685",
            "message": "The text message to be sent to the contact",
            "attachments": [],
            "userId": "GK56r6wdJDrkUPd0xsmx",
        },
    }


def _aloware_body() -> Schema:
    known = sorted(name for name, _entity in ALOWARE_EVENTS.values())
    return {
        "title": "AlowareWebhook",
        "type": "object",
        "description": (
            "An Aloware webhook (SPEC §3.3; examples: contracts/aloware/webhooks). The names listed, "
            "and the `OutboundPhoneCall-<Status>` / `InboundPhoneCall-<Status>` families, are processed; "
            "ALOWARE_WEBHOOK_ALLOWED_EVENTS may restrict them (others: 200 `ignored`). Contact and call "
            "events need `body.id` (422 without)."
        ),
        "properties": {
            "event": _name("Event name (case-insensitive).", known),
            "body": {
                "type": "object",
                "description": "The contact, call, or call's recording, transcription, summary or voicemail.",
                "properties": {
                    "id": _identifier("The entity's id (contact or call)."),
                    "call_id": _identifier(
                        "The call a recording, transcription, summary or voicemail is of."
                    ),
                    "communication_id": _identifier("Same as `call_id`, in Aloware's newer payloads."),
                    "contact_id": _identifier("The Aloware contact."),
                    "phone_number": _text("The contact's phone (contact events), any format."),
                    "contact": {
                        "type": "object",
                        "description": "The contact, embedded in call-family events.",
                        "properties": {
                            "id": _identifier("The Aloware contact's id."),
                            "phone_number": _text("The contact's phone, any format."),
                        },
                    },
                },
                "additionalProperties": True,
            },
        },
        "required": ["event", "body"],
        "additionalProperties": True,
        "example": {
            "event": "Contact Updated",
            "body": {"id": 48213, "first_name": "Sara", "phone_number": "+19195551234"},
        },
    }


def _texting_message_fields() -> dict[str, Schema]:
    """The fields of a texting event, which Verity puts at the root, under `message` or under
    `data` (the first container that has a field wins)."""
    return {
        "messageId": _identifier("Verity's message id: with the event type (and status), the dedupe key."),
        "message_id": _identifier("Alias of `messageId`."),
        "id": _identifier("The message id, inside `message` or `data`."),
        "conversationId": _identifier("Verity's conversation (chat) id."),
        "chatId": _identifier("Alias of `conversationId`."),
        "direction": {
            "type": "string",
            "description": "`inbound` or `outbound`; when absent, it follows from the event type.",
        },
        "from": _text("The sender's number, any format (stored as E.164)."),
        "to": _text("The recipient's number, any format (stored as E.164)."),
        "body": _text("The message text."),
        "text": _text("Alias of `body`."),
        "timestamp": _text("When it happened (ISO-8601)."),
        "createdAt": _text("Alias of `timestamp`."),
        "status": _text("Delivery status (status events).", max_length=MAX_ID_LENGTH),
        "errorCode": _text("Why a message failed (message.failed)."),
        "errorMessage": _text("Why a message failed, in words (message.failed)."),
    }


def _texting_body() -> Schema:
    name = _name(
        "Event name; taken from `eventType`, `event_type`, `type` or `event` (lower-cased).",
        sorted(TEXTING_EVENT_TYPES),
    )
    nested: Schema = {
        "type": "object",
        "description": "The message, in Verity's nested shape.",
        "properties": {"eventType": name, "type": name, **_texting_message_fields()},
    }
    return {
        "title": "TextingWebhook",
        "type": "object",
        "description": (
            "A Verity texting webhook (SPEC §3.4; examples: contracts/verity/webhooks/texting.*). The "
            "fields may sit at the root, under `message` or under `data`; an event name is required "
            "(422 without). A root `message` that is a string is the text."
        ),
        "properties": {
            "eventType": name,
            "event_type": name,
            "type": name,
            "event": name,
            **_texting_message_fields(),
            "message": {"anyOf": [nested, {"type": "string", "description": "The message text."}]},
            "data": {**nested, "description": "The message, in Verity's `data` envelope."},
        },
        "anyOf": [
            {"required": ["eventType"]},
            {"required": ["event_type"]},
            {"required": ["type"]},
            {"required": ["event"]},
            {"required": ["message"]},
            {"required": ["data"]},
        ],
        "additionalProperties": True,
        "example": {
            "eventType": "message.received",
            "messageId": "tlx_01HZX0A1",
            "conversationId": "chat_7781",
            "direction": "inbound",
            "from": "+19195551234",
            "to": "+19195550000",
            "body": "Yes, Tuesday works for me",
            "timestamp": "2026-11-24T16:50:00.000Z",
            "status": "received",
        },
    }


def _broadcast_body() -> Schema:
    return {
        "title": "BroadcastWebhook",
        "type": "object",
        "description": (
            "A Verity broadcast webhook (SPEC §3.5; examples: contracts/verity/webhooks/broadcast.*). "
            "`broadcastId` (or `broadcast_id`) and `eventType` (or `event_type`) are required (422 "
            "without). Deduplicated by broadcast, event type and `eventId` (else `timestamp`)."
        ),
        "properties": {
            "broadcastId": _identifier("Verity's broadcast id."),
            "broadcast_id": _identifier("Alias of `broadcastId`."),
            "eventType": _name("Event name.", ["analytics_updated", "broadcast_completed"]),
            "event_type": _name("Alias of `eventType`."),
            "eventId": _identifier("Verity's id of this delivery: a redelivery is a duplicate."),
            "timestamp": _identifier("When the event happened (ISO-8601); dedupes when `eventId` is absent."),
            "analytics": {
                "type": "object",
                "description": "The broadcast's figures (recipients, sent, delivered, failed, …).",
                "additionalProperties": True,
            },
        },
        "required": ["broadcastId", "eventType"],
        "additionalProperties": True,
        "example": {
            "broadcastId": "bc_2f9a1c",
            "eventType": "analytics_updated",
            "eventId": "bcev_0001",
            "timestamp": "2026-11-24T22:00:00Z",
        },
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# --- responses ----------------------------------------------------------------------------------

_REQUEST_ID_HEADER: Schema = {
    "description": "The request's id: the sender's `X-Request-ID` when it is a short token of "
    "`[A-Za-z0-9._:-]`, else a generated one. Also in the service's log lines.",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER_HEADER: Schema = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def _error(description: str, *, retry_after: bool = False, plain_text: bool = False) -> Schema:
    headers = {"X-Request-ID": _REQUEST_ID_HEADER}
    if retry_after:
        headers["Retry-After"] = _RETRY_AFTER_HEADER
    content: Schema = {"application/json": {"schema": _ref("WebhookError")}}
    if plain_text:
        content.update(_PLAIN_TEXT)
    return {"description": description, "headers": headers, "content": content}


def webhook_responses(settings: Settings) -> dict[int | str, dict[str, Any]]:
    """Every answer of the webhook pipeline (R-IN-3), with its body and headers."""
    return {
        200: {
            "description": "Stored (`accepted`), already stored (`duplicate`, with the first "
            "delivery's id), or authentic but not wanted (`ignored`: an Aloware event outside "
            "ALOWARE_WEBHOOK_ALLOWED_EVENTS). Sent only after the event row is committed.",
            "headers": {"X-Request-ID": _REQUEST_ID_HEADER},
            "content": {
                "application/json": {"schema": {"oneOf": [_ref("WebhookStored"), _ref("WebhookIgnored")]}}
            },
        },
        400: _error(
            "The body is not JSON, or nests deeper than MAX_JSON_DEPTH, or Content-Length is invalid."
        ),
        401: _error(
            "Authentication failed, or the source's secret or key is not configured (the message names "
            "the setting); also a GHL `timestamp` outside the replay window."
        ),
        408: _error(
            "The body did not arrive within HTTP_BODY_TIMEOUT_SECONDS "
            f"({settings.http_body_timeout_seconds:g} s; JSON), or the headers within "
            "HTTP_HEADER_TIMEOUT_SECONDS (plain text, from the HTTP server).",
            plain_text=True,
        ),
        413: _error(f"The body is larger than MAX_WEBHOOK_BYTES ({settings.max_webhook_bytes} bytes)."),
        415: _error("The content type is neither `application/json` nor `application/*+json`."),
        422: _error(
            "The JSON lacks what the source requires (an event name, a contact or call id, Aloware's "
            f"`body`, a broadcast id), is not an object, or has an id longer than {MAX_ID_LENGTH} characters."
        ),
        429: _error(
            "The per-source ingest limit (INGEST_RATE_LIMIT_PER_SECOND) is exceeded.", retry_after=True
        ),
        431: {
            "description": "The request headers are larger than MAX_REQUEST_HEADER_BYTES (plain text, "
            "from the HTTP server; the connection is closed).",
            "content": _PLAIN_TEXT,
        },
        503: _error(
            "The database is unavailable, or the process holds as many webhook bytes as "
            "INGEST_MAX_BYTES_IN_FLIGHT allows: retry later. Never a 2xx for an event that is not stored.",
            retry_after=True,
        ),
    }


# --- the document's shared parts ----------------------------------------------------------------

#: Request and response bodies, by name, for `components.schemas` (operations refer to them).
WEBHOOK_SCHEMAS: dict[str, Schema] = {
    "GhlWebhook": _ghl_body(),
    "GhlProviderOutboundMessage": _ghl_provider_body(),
    "AlowareWebhook": _aloware_body(),
    "TextingWebhook": _texting_body(),
    "BroadcastWebhook": _broadcast_body(),
    "WebhookStored": {
        "title": "WebhookStored",
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["accepted", "duplicate"]},
            "id": {
                "type": "string",
                "description": "The stored event's id (the first one's, for a duplicate).",
            },
        },
        "required": ["status", "id"],
    },
    "WebhookIgnored": {
        "title": "WebhookIgnored",
        "type": "object",
        "properties": {"status": {"type": "string", "enum": ["ignored"]}},
        "required": ["status"],
    },
    "WebhookError": {
        "title": "WebhookError",
        "type": "object",
        "properties": {"error": {"type": "string", "description": "What was wrong; never a secret."}},
        "required": ["error"],
    },
}


def webhook_components() -> dict[str, dict[str, Schema]]:
    """What the webhook operations refer to: `components.schemas` and `components.securitySchemes`."""
    return {"schemas": dict(WEBHOOK_SCHEMAS), "securitySchemes": dict(SECURITY_SCHEMES)}


# --- operations ---------------------------------------------------------------------------------


def _request_body(schema_name: str, settings: Settings) -> Schema:
    limits = (
        f"At most {settings.max_webhook_bytes} bytes (MAX_WEBHOOK_BYTES; 413 above) and "
        f"{settings.max_json_depth} levels deep (MAX_JSON_DEPTH; 400 above). The signature or secret "
        "is checked on these exact bytes before they are parsed."
    )
    return {
        "required": True,
        "description": limits,
        "content": {"application/json": {"schema": _ref(schema_name)}},
    }


_REQUEST_ID_PARAMETER: Schema = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "The sender's correlation id, kept when it is at most 128 characters of "
    "`[A-Za-z0-9._:-]` (otherwise a new one is generated), and sent back in the response.",
    "schema": {"type": "string"},
}

#: Per source: (its body's schema in WEBHOOK_SCHEMAS, accepted authentication, what it is for).
_SOURCES: dict[str, tuple[str, list[dict[str, list[str]]], str]] = {
    "ghl": (
        "GhlWebhook",
        _any_of(GHL_ED25519, GHL_RSA, GHL_WORKFLOW),
        "GHL's native webhooks (signed) and workflow custom webhooks (X-DF-Webhook-Secret).",
    ),
    "ghl_provider": (
        "GhlProviderOutboundMessage",
        _any_of(GHL_ED25519, GHL_RSA, GHL_WORKFLOW),
        "The Delivery URL of our GHL conversation provider: an agent sent an SMS from GHL.",
    ),
    "aloware": (
        "AlowareWebhook",
        _any_of(ALOWARE_BASIC, ALOWARE_BEARER),
        "Aloware's contact and call webhooks.",
    ),
    "texting": (
        "TextingWebhook",
        _any_of(TEXTING_SIGNATURE, TEXTING_PLAIN),
        "Verity's texting webhooks: messages received, sent, delivered or failed, opt-outs.",
    ),
    "broadcast": (
        "BroadcastWebhook",
        _any_of(BROADCAST_SIGNATURE),
        "Verity's broadcast analytics webhooks.",
    ),
}


def webhook_operation(source_name: str, settings: Settings) -> dict[str, Any]:
    """The `openapi_extra` of one webhook route: its request body, security alternatives,
    headers and description."""
    body, security, description = _SOURCES[source_name]
    return {
        "description": (
            f"{description}\n\nThe pipeline: size (413) → content type (415) → authentication of the raw "
            "body (401) → per-source rate limit (429) → JSON (400/422) → source rules and classification "
            "(401/422) → stored, or found to be a duplicate (200; 503 when the database is unavailable). "
            "Nothing is written unless every check passed."
        ),
        "requestBody": _request_body(body, settings),
        "parameters": [_REQUEST_ID_PARAMETER],
        "security": security,
    }
