"""GoHighLevel API v2 simulator: the calls the middleware makes (SPEC §6, §9), answered as GHL does.

Everything the middleware's correctness depends on behaves like the real API:

- **Gateway.** Every API route needs `Authorization: Bearer <token>` — a location's Private
  Integration Token or a live OAuth access token — else 401. A token belongs to one location;
  naming another location, or a resource of another location, is 403. The `Version` header is
  required and must be the one the route's document declares (`2021-04-15` for
  `/conversations/*`, `2021-07-28` for the rest), else 400.
- **Rate limits.** Per location: a strict sliding window of `rate_limit_max` requests per
  `rate_limit_interval_seconds` (GHL: 100 per 10 s) and 200,000 per UTC day. Every request with a
  valid token counts, whatever its outcome, except the 429s themselves. Every API answer carries
  the `X-RateLimit-*` headers; over the limit the answer is 429 with `Retry-After`.
- **Contracts.** Request bodies and parameters are validated against GHL's OpenAPI documents when
  `openapi_dir` is given (else against our models of them, `ghl_schemas`); a violation is 422.
- **Contacts.** Duplicate refusal (400 with the existing id in `meta`) unless the location allows
  duplicates; upsert matches by email, then phone (E.164 after `phonenumbers` parsing, emails
  case-insensitive); custom fields by id or key; tags replaced by PUT/upsert, added and removed by
  the tag endpoints; `dateAdded`/`dateUpdated` kept; advanced search with filters, sort, `page`
  and `searchAfter` cursors (tie-break on id, so paging is stable).
- **Conversations.** Inbound/outbound messages (`POST /conversations/messages/inbound` without a
  `direction` records an *outbound* message: GHL's documented default), provider status updates
  (`delivered`, `failed`, `pending`, `read` only; `failed` needs `error {code, type, message}`),
  and a conversation's messages newest first in pages of `limit` (default 20) continued with
  `lastMessageId` while `nextPage` is true.
- **Answers the documents leave open.** GHL's documents allow answers the simulator can be set to
  give, so that the middleware is tested against them: `tag_answer = "sent"` answers a tag change
  with only the tags of the request (the documented `tags` promises no more), `message_page_max`
  caps a message page below the `limit` asked for, and `nest_message_pages` wraps a message page in
  `{"messages": {...}}` as GHL's live API does (highlevel-api-docs#54).
- **OAuth.** Code exchange and single-use refresh tokens; a used refresh token is `invalid_grant`.
- **Webhooks out.** With `webhook_url`, contact changes made through the API (or through the
  `/_sim/ui/*` routes, which act as a GHL user would) are posted as GHL's `Contact*` events,
  signed with `x-ghl-signature` (Ed25519 over the raw body). `/_sim/ui/send-sms` plays an agent
  sending an SMS: GHL posts a `ProviderOutboundMessage` to the provider's delivery URL.

Control routes (under `/_sim`, never faulted or rate limited) come from `common.build_simulator_app`,
plus the UI routes above and a few configuration routes for a simulator run in its own process.
"""

from __future__ import annotations

import base64
import bisect
import functools
import math
import random
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from df_middleware.phones import normalize_phone
from df_middleware.simulators.common import CONTROL_PREFIX, WebhookSender, build_simulator_app, system_now
from df_middleware.simulators.ghl_schemas import (
    ContactSearchBody,
    ContractRequest,
    ModelContract,
    OpenApiContract,
    RecordCreateBody,
    RecordUpdateBody,
    RequestContract,
    SearchFilter,
    SearchGroup,
    Violation,
    document_for,
    is_form,
    is_json,
    pydantic_violations,
    violation_text,
)

JSON = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_LOCATION_ID = "loc_sim"
DEFAULT_TOKEN = "pit-sim"  # noqa: S105 - the simulator's well-known test token
DEFAULT_COMPANY_ID = "comp_sim"
#: An OAuth client that exists from the start, so a demo can run the OAuth flow unconfigured.
DEFAULT_CLIENT_ID = "sim-client-id"
DEFAULT_CLIENT_SECRET = "sim-client-secret"  # noqa: S105 - a simulator default, not a secret
DEFAULT_SCOPE = (
    "contacts.readonly contacts.write conversations.readonly conversations.write "
    "conversations/message.readonly conversations/message.write locations/customFields.readonly "
    "users.readonly objects/record.readonly objects/record.write"
)
PHONE_REGION = "US"
DAILY_LIMIT = 200_000
#: GHL's API version per document: the conversations API is older than the rest.
API_VERSIONS = {"conversations": "2021-04-15"}
DEFAULT_API_VERSION = "2021-07-28"
OAUTH_TOKEN_ROUTE = "/oauth/token"  # noqa: S105 - a path
#: How long an authorization code may wait for its exchange.
AUTH_CODE_TTL_SECONDS = 600
#: Standard pagination reaches this many records; beyond it GHL demands `searchAfter`.
SEARCH_WINDOW = 10_000
#: `GET /conversations/{id}/messages`: the documented default page, and the largest page given.
MESSAGE_PAGE_DEFAULT = 20
MESSAGE_PAGE_MAX = 100
#: What `POST|DELETE /contacts/{id}/tags` answers in `tags`: the contact's tags after the change,
#: or only the tags of the request (both fit GHL's document, which promises neither).
TagAnswer = Literal["contact", "sent"]
#: `direction` of `POST /conversations/messages/inbound` when the body has none (GHL's document).
INBOUND_ENDPOINT_DEFAULT_DIRECTION = "outbound"
_ID_ALPHABET = string.ascii_letters + string.digits
#: Contact properties a write may set (anything else in a body is ignored, as GHL ignores it).
PROFILE_FIELDS = (
    "firstName",
    "lastName",
    "name",
    "email",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "inboundDndSettings",
    "source",
    "dateOfBirth",
    "country",
    "companyName",
    "assignedTo",
    "gender",
)
#: Properties of a contact webhook, as in `contracts/ghl/webhooks/Contact*.json`.
WEBHOOK_CONTACT_FIELDS = (
    "address1",
    "city",
    "state",
    "companyName",
    "country",
    "source",
    "dateAdded",
    "dateOfBirth",
    "dnd",
    "email",
    "name",
    "firstName",
    "lastName",
    "phone",
    "postalCode",
    "tags",
    "website",
    "assignedTo",
    "customFields",
)
DATE_FIELDS = frozenset({"dateAdded", "dateUpdated"})
MESSAGE_TYPE_CODES = {
    "SMS": "TYPE_SMS",
    "RCS": "TYPE_RCS",
    "Email": "TYPE_EMAIL",
    "WhatsApp": "TYPE_WHATSAPP",
    "GMB": "TYPE_GMB",
    "IG": "TYPE_INSTAGRAM",
    "FB": "TYPE_FACEBOOK",
    "Custom": "TYPE_CUSTOM_SMS",
    "WebChat": "TYPE_WEBCHAT",
    "Live_Chat": "TYPE_LIVE_CHAT",
    "Call": "TYPE_CALL",
    "IVR_Call": "TYPE_IVR_CALL",
    "Campaign_Call": "TYPE_CAMPAIGN_CALL",
    "Campaign_VoiceMail": "TYPE_CAMPAIGN_VOICEMAIL",
    "TIKTOK": "TYPE_TIKTOK",
    "ALL_IN_ONE_CHAT": "TYPE_LIVE_CHAT",
    "FORM_SUBMISSION": "TYPE_FORM_SUBMISSION",
}
_BIRTH_DATE_FORMATS = (
    "%Y/%m/%d",
    "%m/%d/%Y",
    "%Y-%m-%d",
    "%m-%d-%Y",
    "%Y.%m.%d",
    "%m.%d.%Y",
    "%Y_%m_%d",
    "%m_%d_%Y",
)


# --- errors and small helpers --------------------------------------------------------------------


class GhlError(Exception):
    """An answer other than success, with GHL's body for it."""

    def __init__(self, status: int, body: JSON, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    @classmethod
    def of(cls, status: int, message: str | list[str], **extra: Any) -> GhlError:
        """The NestJS-style body GHL's API answers with: `{statusCode, message, ...}`."""
        return cls(status, {"statusCode": status, "message": message, **extra})

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def _not_found(what: str) -> GhlError:
    return GhlError.of(404, f"{what} not found", error="Not Found")


def _forbidden() -> GhlError:
    return GhlError.of(403, "The token does not have access to this location.", error="Forbidden")


def _unprocessable(violations: list[Violation]) -> GhlError:
    return GhlError.of(
        422,
        [violation_text(v) for v in violations],
        error="Unprocessable Entity",
        violations=violations,
    )


def _oauth_error(status: int, error: str, description: str) -> GhlError:
    return GhlError(status, {"error": error, "error_description": description})


def _now() -> datetime:
    """UTC now, cut to milliseconds: the precision GHL shows, so sort values equal shown values."""
    now = system_now("ghl")
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime) -> str:
    """GHL's timestamps: `2021-07-02T05:18:26.704Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def now_ms() -> int:
    """Now in epoch milliseconds by GHL's clock (`set_clock_skew`): a contact's `dateAdded` and
    `dateUpdated` and its webhooks' `timestamp` come from one clock, as in GHL."""
    return epoch_ms(_now())


def iso_ms(ms: int) -> str:
    return iso(datetime.fromtimestamp(ms / 1000, UTC))


def _moment_ms(value: Any) -> int | None:
    """Epoch milliseconds of a filter or cursor value: a number, digits, or an ISO-8601 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return epoch_ms(parsed)
    return None


def _mask(secret: str) -> str:
    return f"{secret[:4]}…" if len(secret) > 4 else "…"


def _phone_key(raw: Any) -> str | None:
    """How GHL keys a phone: E.164 when it parses (region US), else the trimmed text."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    return normalize_phone(text, PHONE_REGION) or text


def _email_key(raw: Any) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        return None
    return raw.strip().lower()


def _birth_date(raw: Any) -> Any:
    """GHL stores a birth date given in any documented format as `YYYY-MM-DDT00:00:00.000Z`."""
    if not isinstance(raw, str):
        return raw
    for pattern in _BIRTH_DATE_FORMATS:
        try:
            parsed = datetime.strptime(raw.strip(), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
        return iso(parsed)
    return raw


def _unique_tags(tags: Iterable[Any]) -> list[str]:
    """Tags as GHL keeps them: trimmed, lower-cased (GHL stores every tag in lower case, so
    `Call: Interested` comes back as `call: interested`), empty ones and repeats dropped."""
    result: list[str] = []
    for tag in tags:
        text = str(tag).strip().lower()
        if text and text not in result:
            result.append(text)
    return result


def _synchronized(
    method: Callable[Concatenate[GhlSimulator, P], R],
) -> Callable[Concatenate[GhlSimulator, P], R]:
    """Run a state method under the simulator's lock: routes run in the server's thread while
    tests configure the simulator from theirs."""

    @functools.wraps(method)
    def locked(self: GhlSimulator, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


# --- state ---------------------------------------------------------------------------------------


@dataclass
class Location:
    id: str
    company_id: str = DEFAULT_COMPANY_ID
    allow_duplicate_contacts: bool = False
    #: Phone key / lower-cased email → ids of live contacts carrying it (duplicate checks, upsert).
    by_phone: dict[str, set[str]] = field(default_factory=dict)
    by_email: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class ApiToken:
    """A bearer token: a Private Integration Token (`pit`) or an OAuth access token."""

    token: str
    location_id: str
    kind: Literal["pit", "oauth"]
    expires_at: float | None = None
    revoked: bool = False
    client_id: str | None = None

    def live(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass
class RefreshToken:
    token: str
    location_id: str
    client_id: str
    scope: str
    user_id: str
    used: bool = False


@dataclass
class AuthCode:
    code: str
    location_id: str
    client_id: str
    redirect_uri: str | None
    scope: str
    expires_at: float
    used: bool = False


@dataclass(frozen=True)
class Principal:
    """Who is calling: the location its token belongs to."""

    location_id: str
    token_kind: str


@dataclass
class Contact:
    id: str
    location_id: str
    #: `dateAdded` / `dateUpdated` as epoch milliseconds (what searches sort and compare).
    added_ms: int
    updated_ms: int
    profile: JSON = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    #: Custom field id → value.
    custom_fields: dict[str, Any] = field(default_factory=dict)
    dnd_settings: dict[str, JSON] = field(default_factory=dict)
    notes: list[JSON] = field(default_factory=list)
    deleted: bool = False

    @property
    def phone_key(self) -> str | None:
        return _phone_key(self.profile.get("phone"))

    @property
    def email_key(self) -> str | None:
        return _email_key(self.profile.get("email"))

    def display_name(self) -> str:
        name = self.profile.get("name")
        if name:
            return str(name)
        return " ".join(str(p) for p in (self.profile.get("firstName"), self.profile.get("lastName")) if p)

    def as_ghl(self) -> JSON:
        """The contact as `GET /contacts/{id}` returns it."""
        out: JSON = {"id": self.id, "locationId": self.location_id}
        out.update(self.profile)
        first, last = self.profile.get("firstName"), self.profile.get("lastName")
        if first:
            out["firstNameLowerCase"] = str(first).lower()
        if last:
            out["lastNameLowerCase"] = str(last).lower()
        full = self.display_name()
        if full:
            out["name"] = out.get("name") or full
            out["fullNameLowerCase"] = full.lower()
        if self.profile.get("email"):
            out["emailLowerCase"] = str(self.profile["email"]).lower()
        out["dnd"] = bool(self.profile.get("dnd", False))
        if self.dnd_settings:
            out["dndSettings"] = {channel: dict(value) for channel, value in self.dnd_settings.items()}
        out["type"] = "lead"
        out["tags"] = list(self.tags)
        out["customFields"] = [{"id": fid, "value": value} for fid, value in self.custom_fields.items()]
        out["dateAdded"] = iso_ms(self.added_ms)
        out["dateUpdated"] = iso_ms(self.updated_ms)
        return out


@dataclass
class ContactWrite:
    """The outcome of a contact write: the contact after it, and the webhooks it causes."""

    contact: JSON
    new: bool
    events: tuple[str, ...]


@dataclass
class Conversation:
    id: str
    location_id: str
    contact_id: str
    date_added: datetime
    date_updated: datetime
    last_message_date: datetime | None = None
    last_message_body: str = ""
    last_message_type: str | None = None
    last_message_direction: str | None = None
    unread_count: int = 0
    deleted: bool = False

    def as_ghl(self) -> JSON:
        out: JSON = {
            "id": self.id,
            "locationId": self.location_id,
            "contactId": self.contact_id,
            "dateAdded": iso(self.date_added),
            "dateUpdated": iso(self.date_updated),
            "deleted": self.deleted,
            "lastMessageDate": iso(self.last_message_date or self.date_added),
            "lastMessageBody": self.last_message_body,
            "unreadCount": self.unread_count,
            "type": "TYPE_PHONE",
        }
        if self.last_message_type:
            out["lastMessageType"] = self.last_message_type
        if self.last_message_direction:
            out["lastMessageDirection"] = self.last_message_direction
        return out


@dataclass
class Message:
    id: str
    location_id: str
    conversation_id: str
    contact_id: str
    type: str
    direction: str
    status: str
    date_added: datetime
    body: str = ""
    attachments: list[str] = field(default_factory=list)
    alt_id: str | None = None
    conversation_provider_id: str | None = None
    call: JSON | None = None
    error: JSON | None = None
    user_id: str | None = None
    source: str = "api"
    status_history: list[str] = field(default_factory=list)

    def as_ghl(self) -> JSON:
        out: JSON = {
            "id": self.id,
            "locationId": self.location_id,
            "conversationId": self.conversation_id,
            "contactId": self.contact_id,
            "type": self.type,
            "messageType": MESSAGE_TYPE_CODES.get(self.type, f"TYPE_{self.type.upper()}"),
            "direction": self.direction,
            "status": self.status,
            "body": self.body,
            "attachments": list(self.attachments),
            "dateAdded": iso(self.date_added),
            "source": self.source,
            "statusHistory": list(self.status_history),
        }
        optional = {
            "altId": self.alt_id,
            "conversationProviderId": self.conversation_provider_id,
            "call": self.call,
            "error": self.error,
            "userId": self.user_id,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


@dataclass
class ObjectRecord:
    id: str
    location_id: str
    object_key: str
    properties: JSON
    owner: list[str]
    followers: list[str]
    created_at: datetime
    updated_at: datetime
    #: Creation order, the second element of the record search cursor.
    sequence: int

    def cursor(self) -> list[int]:
        return [epoch_ms(self.created_at), self.sequence]

    def as_ghl(self) -> JSON:
        stamp = {"channel": "API", "source": "PUBLIC_API", "sourceId": "df-middleware-simulator"}
        return {
            "id": self.id,
            "owner": list(self.owner),
            "followers": list(self.followers),
            "properties": dict(self.properties),
            "dateAdded": iso(self.created_at),
            "dateUpdated": iso(self.updated_at),
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "locationId": self.location_id,
            "objectKey": self.object_key,
            "createdBy": {**stamp, "createdAt": iso(self.created_at)},
            "lastUpdatedBy": {**stamp, "createdAt": iso(self.updated_at)},
        }


# --- rate limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may run, and the `X-RateLimit-*` headers its answer carries."""

    allowed: bool
    headers: dict[str, str]


class LocationRateLimiter:
    """GHL's per-location limits: a strict sliding window (burst) plus a UTC-day budget.

    Strict means a request is refused while `max_requests` admitted requests lie within the last
    `interval_seconds`; a refused request (429) does not take a slot, so a client that waits the
    `Retry-After` it was given gets through.
    """

    def __init__(
        self,
        max_requests: int = 100,
        interval_seconds: float = 10.0,
        daily_limit: int = DAILY_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_requests = max_requests
        self.interval_seconds = interval_seconds
        self.daily_limit = daily_limit
        self._clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._days: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()
            self._days.clear()

    def usage(self) -> dict[str, JSON]:
        with self._lock:
            now = self._clock()
            return {
                location: {
                    "inWindow": sum(1 for t in window if t > now - self.interval_seconds),
                    "today": self._days.get(location, ("", 0))[1],
                }
                for location, window in self._windows.items()
            }

    def admit(self, location_id: str) -> RateDecision:
        with self._lock:
            now = self._clock()
            today = datetime.now(UTC).date().isoformat()
            window = self._windows.setdefault(location_id, deque())
            while window and window[0] <= now - self.interval_seconds:
                window.popleft()
            day, used_today = self._days.get(location_id, (today, 0))
            if day != today:
                used_today = 0
            retry_after: int | None = None
            if len(window) >= self.max_requests:
                retry_after = max(1, math.ceil(window[0] + self.interval_seconds - now))
            elif used_today >= self.daily_limit:
                tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
                tomorrow += timedelta(days=1)
                retry_after = max(1, math.ceil((tomorrow - datetime.now(UTC)).total_seconds()))
            else:
                window.append(now)
                used_today += 1
            self._days[location_id] = (today, used_today)
            headers = {
                "X-RateLimit-Limit-Daily": str(self.daily_limit),
                "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - used_today)),
                "X-RateLimit-Interval-Milliseconds": str(int(self.interval_seconds * 1000)),
                "X-RateLimit-Max": str(self.max_requests),
                "X-RateLimit-Remaining": str(max(0, self.max_requests - len(window))),
            }
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            return RateDecision(allowed=retry_after is None, headers=headers)


# --- the simulator's state and operations --------------------------------------------------------


class GhlSimulator:
    """GHL's data for the simulated locations, and the operations the API routes perform.

    Operations take the caller's location and raise `GhlError` exactly where GHL answers an error;
    tests may call them directly to seed or inspect state (no webhooks are sent then: webhooks are
    published by the routes). Configuration (webhook URL and key, token lifetime, rate limits)
    survives `reset()`; data, tokens, counters and deliveries do not. So do the answers the
    documents leave open (`tag_answer`, `message_page_max`, `nest_message_pages`).
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._lock = threading.RLock()
        self._rng = random.Random(seed)  # identifiers, not secrets: seedable on purpose
        self.webhook_url: str | None = None
        self.provider_delivery_url: str | None = None
        self.webhook_signing_key: Ed25519PrivateKey = Ed25519PrivateKey.generate()
        self.access_token_ttl_seconds = 86399
        self.tag_answer: TagAnswer = "contact"
        self.message_page_max = MESSAGE_PAGE_MAX
        self.nest_message_pages = False
        self.rate_limits = LocationRateLimiter()
        self.webhooks = WebhookSender()
        self.reset()

    @_synchronized
    def reset(self) -> None:
        """Back to a fresh account: the default location, its token and the default OAuth client."""
        self.locations: dict[str, Location] = {}
        self.contacts: dict[str, Contact] = {}
        self.conversations: dict[str, Conversation] = {}
        self.messages: dict[str, Message] = {}
        self.records: dict[str, ObjectRecord] = {}
        self.users: dict[str, JSON] = {}
        self.custom_fields: dict[str, JSON] = {}
        self.tokens: dict[str, ApiToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.auth_codes: dict[str, AuthCode] = {}
        self.oauth_clients: dict[str, str] = {}
        self.counters: dict[str, int] = {
            "api_requests": 0,
            "rate_limited_responses": 0,
            "unauthorized_responses": 0,
            "oauth_code_exchanges": 0,
            "oauth_code_exchange_failures": 0,
            "oauth_refresh_calls": 0,
            "oauth_refresh_failures": 0,
            "webhooks_published": 0,
            "provider_deliveries_published": 0,
        }
        self._record_sequence = 0
        self._search_cache: dict[tuple[str, str], tuple[tuple[int, int], list[Any]]] = {}
        self.rate_limits.clear()
        self.webhooks.clear()
        self.add_location(DEFAULT_LOCATION_ID, token=DEFAULT_TOKEN)
        self.add_oauth_client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)

    def new_id(self) -> str:
        """A GHL-style 20-character id."""
        return "".join(self._rng.choice(_ID_ALPHABET) for _ in range(20))

    @_synchronized
    def count(self, counter: str, amount: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + amount

    # --- configuration used by tests ---------------------------------------------------------------

    @_synchronized
    def add_location(
        self, location_id: str, *, token: str | None = None, allow_duplicate_contacts: bool = False
    ) -> str:
        """Create (or reconfigure) a location and give it a Private Integration Token (returned)."""
        location = self.locations.get(location_id)
        if location is None:
            location = Location(id=location_id)
            self.locations[location_id] = location
        location.allow_duplicate_contacts = allow_duplicate_contacts
        token = token or f"pit-{secrets.token_hex(16)}"
        self.tokens[token] = ApiToken(token=token, location_id=location_id, kind="pit")
        return token

    @_synchronized
    def add_user(self, location_id: str, name: str, email: str) -> JSON:
        self._location(location_id)
        first, _, last = name.partition(" ")
        user: JSON = {
            "id": self.new_id(),
            "name": name,
            "firstName": first,
            "lastName": last,
            "email": email,
            "phone": "",
            "extension": "",
            "permissions": {"contactsEnabled": True, "conversationsEnabled": True},
            "roles": {"type": "account", "role": "user", "locationIds": [location_id]},
            "deleted": False,
        }
        self.users[user["id"]] = user
        return dict(user)

    @_synchronized
    def add_custom_field(self, location_id: str, name: str, field_key: str, data_type: str = "TEXT") -> JSON:
        """Define a contact custom field; `field_key` may be given with or without `contact.`."""
        self._location(location_id)
        key = field_key if field_key.startswith("contact.") else f"contact.{field_key}"
        position = sum(1 for f in self.custom_fields.values() if f["locationId"] == location_id)
        definition: JSON = {
            "id": self.new_id(),
            "name": name,
            "fieldKey": key,
            "placeholder": "",
            "dataType": data_type,
            "position": position,
            "picklistOptions": [],
            "isAllowedCustomOption": False,
            "locationId": location_id,
            "model": "contact",
        }
        self.custom_fields[definition["id"]] = definition
        return dict(definition)

    @_synchronized
    def add_oauth_client(self, client_id: str, client_secret: str) -> None:
        self.oauth_clients[client_id] = client_secret

    @_synchronized
    def issue_auth_code(
        self,
        location_id: str,
        client_id: str,
        *,
        redirect_uri: str | None = None,
        scope: str | None = None,
    ) -> str:
        """What GHL hands the app after a user installs it on `location_id`: a one-time code."""
        self._location(location_id)
        if client_id not in self.oauth_clients:
            raise KeyError(f"unknown OAuth client {client_id!r}")
        code = secrets.token_hex(20)
        self.auth_codes[code] = AuthCode(
            code=code,
            location_id=location_id,
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope or DEFAULT_SCOPE,
            expires_at=time.time() + AUTH_CODE_TTL_SECONDS,
        )
        return code

    @_synchronized
    def expire_access_token(self, token: str) -> None:
        """Make a token fail from now on, as if its lifetime had run out."""
        self.tokens[token].expires_at = time.time() - 1

    @property
    def webhook_public_key_pem(self) -> str:
        """PEM of the key that verifies `x-ghl-signature` (what GHL shows in the app settings)."""
        return (
            self.webhook_signing_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def signature_headers(self, body: bytes) -> dict[str, str]:
        return {"x-ghl-signature": base64.b64encode(self.webhook_signing_key.sign(body)).decode()}

    # --- authentication ------------------------------------------------------------------------------

    @_synchronized
    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").strip().partition(" ")
        entry = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or not entry.live(time.time()):
            self.counters["unauthorized_responses"] += 1
            raise GhlError.of(401, "Invalid JWT", error="Unauthorized")
        return Principal(location_id=entry.location_id, token_kind=entry.kind)

    def _location(self, location_id: str) -> Location:
        location = self.locations.get(location_id)
        if location is None:
            raise _not_found("Location")
        return location

    @staticmethod
    def check_access(principal_location: str, location_id: str) -> None:
        if location_id != principal_location:
            raise _forbidden()

    # --- contacts ------------------------------------------------------------------------------------

    def _contact(self, location_id: str, contact_id: str) -> Contact:
        contact = self.contacts.get(contact_id)
        if contact is None or contact.deleted:
            raise _not_found("Contact")
        self.check_access(location_id, contact.location_id)
        return contact

    def _find_by(
        self, location: Location, field_name: str, key: str | None, exclude: str | None
    ) -> Contact | None:
        if key is None:
            return None
        index = location.by_email if field_name == "email" else location.by_phone
        ids = sorted(i for i in index.get(key, ()) if i != exclude)
        if not ids:
            return None
        return min((self.contacts[i] for i in ids), key=lambda c: (c.added_ms, c.id))

    def _duplicate_of(
        self, location: Location, body: Mapping[str, Any], exclude: str | None
    ) -> tuple[Contact, str] | None:
        """The existing contact a write would duplicate (email first, then phone), if any."""
        for field_name, key in (
            ("email", _email_key(body.get("email"))),
            ("phone", _phone_key(body.get("phone"))),
        ):
            if field_name in body:
                found = self._find_by(location, field_name, key, exclude)
                if found is not None:
                    return found, field_name
        return None

    @staticmethod
    def _duplicate_error(existing: Contact, matching_field: str) -> GhlError:
        return GhlError.of(
            400,
            "This location does not allow duplicated contacts.",
            error="Bad Request",
            meta={
                "contactName": existing.display_name(),
                "contactId": existing.id,
                "matchingField": matching_field,
            },
        )

    def _index(self, location: Location, contact: Contact, add: bool) -> None:
        for index, key in ((location.by_phone, contact.phone_key), (location.by_email, contact.email_key)):
            if key is None:
                continue
            if add:
                index.setdefault(key, set()).add(contact.id)
            else:
                ids = index.get(key)
                if ids is not None:
                    ids.discard(contact.id)
                    if not ids:
                        del index[key]

    def _resolve_custom_field(self, location_id: str, item: Mapping[str, Any]) -> str | None:
        field_id, key = item.get("id"), item.get("key")
        if isinstance(field_id, str) and field_id:
            definition = self.custom_fields.get(field_id)
            return field_id if definition is not None and definition["locationId"] == location_id else None
        if isinstance(key, str) and key:
            wanted = key if key.startswith("contact.") else f"contact.{key}"
            for definition in self.custom_fields.values():
                if definition["locationId"] == location_id and definition["fieldKey"] == wanted:
                    return str(definition["id"])
        return None

    def _apply_profile(self, contact: Contact, body: Mapping[str, Any], skip: Iterable[str] = ()) -> set[str]:
        """Write the body's contact properties; returns which kinds of change it made."""
        skipped = set(skip)
        changed: set[str] = set()
        for key in PROFILE_FIELDS:
            if key not in body or key in skipped:
                continue
            value = body[key]
            if key == "phone":
                value = normalize_phone(value, PHONE_REGION) or (str(value).strip() if value else None)
            elif key == "email" and isinstance(value, str):
                value = value.strip()
            elif key == "dateOfBirth":
                value = _birth_date(value)
            before = contact.profile.get(key)
            if value is None or value == "":
                contact.profile.pop(key, None)
            else:
                contact.profile[key] = value
            if contact.profile.get(key) != before:
                changed.add("dnd" if key == "dnd" else "profile")
        if ("firstName" in body or "lastName" in body) and "name" not in body:
            joined = " ".join(
                str(p) for p in (contact.profile.get("firstName"), contact.profile.get("lastName")) if p
            )
            if joined:
                contact.profile["name"] = joined
            else:
                contact.profile.pop("name", None)
        dnd = body.get("dndSettings")
        if isinstance(dnd, Mapping):
            for channel, setting in dnd.items():
                if isinstance(setting, Mapping):
                    merged = {**contact.dnd_settings.get(channel, {}), **setting}
                    if contact.dnd_settings.get(channel) != merged:
                        contact.dnd_settings[channel] = merged
                        changed.add("dnd")
        if "tags" in body:
            tags = _unique_tags(body.get("tags") or [])
            if tags != contact.tags:
                contact.tags = tags
                changed.add("tags")
        for item in body.get("customFields") or []:
            if not isinstance(item, Mapping):
                continue
            field_id = self._resolve_custom_field(contact.location_id, item)
            if field_id is None:
                continue  # GHL ignores fields the location does not define
            value = item.get("field_value")
            before = contact.custom_fields.get(field_id)
            if value is None or value == "" or value == []:
                contact.custom_fields.pop(field_id, None)
            else:
                contact.custom_fields[field_id] = value
            if contact.custom_fields.get(field_id) != before:
                changed.add("profile")
        return changed

    def _update_events(self, changed: set[str]) -> tuple[str, ...]:
        events = ["ContactUpdate"]
        if "tags" in changed:
            events.append("ContactTagUpdate")
        if "dnd" in changed:
            events.append("ContactDndUpdate")
        return tuple(events)

    @_synchronized
    def create_contact(self, location_id: str, body: Mapping[str, Any]) -> ContactWrite:
        """`POST /contacts/`: refuses a duplicate unless the location allows duplicates."""
        location = self._location(location_id)
        if not location.allow_duplicate_contacts:
            duplicate = self._duplicate_of(location, body, exclude=None)
            if duplicate is not None:
                raise self._duplicate_error(*duplicate)
        return self._insert_contact(location, body)

    def _insert_contact(
        self, location: Location, body: Mapping[str, Any], skip: Iterable[str] = ()
    ) -> ContactWrite:
        now = now_ms()
        contact = Contact(id=self.new_id(), location_id=location.id, added_ms=now, updated_ms=now)
        self._apply_profile(contact, body, skip)
        self.contacts[contact.id] = contact
        self._index(location, contact, add=True)
        return ContactWrite(contact=contact.as_ghl(), new=True, events=("ContactCreate",))

    def _write_contact(
        self, location: Location, contact: Contact, body: Mapping[str, Any], skip: Iterable[str] = ()
    ) -> ContactWrite:
        self._index(location, contact, add=False)
        changed = self._apply_profile(contact, body, skip)
        contact.updated_ms = now_ms()
        self._index(location, contact, add=True)
        return ContactWrite(contact=contact.as_ghl(), new=False, events=self._update_events(changed))

    @_synchronized
    def upsert_contact(self, location_id: str, body: Mapping[str, Any]) -> ContactWrite:
        """`POST /contacts/upsert`: update the contact matching by email, then phone, else create.

        Like GHL, when the email matches one contact and the phone another, the email match is
        updated and the phone (which would duplicate the other contact) is left unchanged.
        """
        location = self._location(location_id)
        if location.allow_duplicate_contacts and body.get("createNewIfDuplicateAllowed"):
            return self._insert_contact(location, body)
        match = self._duplicate_of(location, body, exclude=None)
        if match is None:
            return self._insert_contact(location, body)
        contact, _ = match
        skip: list[str] = []
        if not location.allow_duplicate_contacts:
            other = self._duplicate_of(location, body, exclude=contact.id)
            if other is not None:
                skip.append(other[1])
        return self._write_contact(location, contact, body, skip)

    @_synchronized
    def update_contact(self, location_id: str, contact_id: str, body: Mapping[str, Any]) -> ContactWrite:
        """`PUT /contacts/{id}`; tags in the body replace the contact's tags."""
        contact = self._contact(location_id, contact_id)
        location = self._location(contact.location_id)
        if not location.allow_duplicate_contacts:
            duplicate = self._duplicate_of(location, body, exclude=contact.id)
            if duplicate is not None:
                raise self._duplicate_error(*duplicate)
        return self._write_contact(location, contact, body)

    @_synchronized
    def delete_contact(self, location_id: str, contact_id: str) -> ContactWrite:
        contact = self._contact(location_id, contact_id)
        self._index(self._location(contact.location_id), contact, add=False)
        contact.deleted = True
        contact.updated_ms = now_ms()
        # GHL deletes a contact's conversations with it: nothing more can be written into them.
        for conversation in self.conversations.values():
            if conversation.contact_id == contact.id:
                conversation.deleted = True
        return ContactWrite(contact=contact.as_ghl(), new=False, events=("ContactDelete",))

    @_synchronized
    def get_contact(self, location_id: str, contact_id: str) -> JSON:
        return self._contact(location_id, contact_id).as_ghl()

    @_synchronized
    def add_tags(self, location_id: str, contact_id: str, tags: list[str]) -> ContactWrite:
        contact = self._contact(location_id, contact_id)
        merged = _unique_tags([*contact.tags, *tags])
        return self._set_tags(contact, merged)

    @_synchronized
    def remove_tags(self, location_id: str, contact_id: str, tags: list[str]) -> ContactWrite:
        contact = self._contact(location_id, contact_id)
        removed = {str(t).strip().lower() for t in tags}
        return self._set_tags(contact, [t for t in contact.tags if t.lower() not in removed])

    def tags_answer(self, write: ContactWrite, sent: list[str]) -> list[str]:
        """The `tags` of a tag change's answer, as `tag_answer` says (see the module docstring)."""
        return list(write.contact["tags"]) if self.tag_answer == "contact" else _unique_tags(sent)

    def _set_tags(self, contact: Contact, tags: list[str]) -> ContactWrite:
        if tags == contact.tags:
            return ContactWrite(contact=contact.as_ghl(), new=False, events=())
        contact.tags = tags
        contact.updated_ms = now_ms()
        return ContactWrite(contact=contact.as_ghl(), new=False, events=("ContactTagUpdate",))

    @_synchronized
    def add_note(self, location_id: str, contact_id: str, body: Mapping[str, Any]) -> JSON:
        contact = self._contact(location_id, contact_id)
        note: JSON = {
            "id": self.new_id(),
            "body": body["body"],
            "contactId": contact.id,
            "dateAdded": iso(_now()),
        }
        for key in ("userId", "title", "color", "pinned"):
            if body.get(key) is not None:
                note[key] = body[key]
        contact.notes.append(note)
        return dict(note)

    @_synchronized
    def list_notes(self, location_id: str, contact_id: str) -> list[JSON]:
        """Newest first, as GHL lists them."""
        contact = self._contact(location_id, contact_id)
        return [dict(n) for n in reversed(contact.notes)]

    # --- contact search ------------------------------------------------------------------------------

    def _search_value(self, contact: Contact, field_name: str) -> Any:
        if field_name == "id":
            return contact.id
        if field_name == "dateAdded":
            return contact.added_ms
        if field_name == "dateUpdated":
            return contact.updated_ms
        if field_name == "tags":
            return contact.tags
        if field_name in {"firstNameLowerCase", "lastNameLowerCase"}:
            raw = contact.profile.get(field_name.removesuffix("LowerCase"))
            return str(raw).lower() if raw else None
        if field_name == "fullNameLowerCase":
            return contact.display_name().lower() or None
        if field_name in {"email", "emailLowerCase"}:
            return contact.email_key
        if field_name == "dnd":
            return bool(contact.profile.get("dnd", False))
        for prefix in ("customFields.", "customField."):
            if field_name.startswith(prefix):
                return contact.custom_fields.get(field_name.removeprefix(prefix))
        return contact.profile.get(field_name)

    def _filter_matches(self, contact: Contact, rule: SearchFilter) -> bool:
        actual = self._search_value(contact, rule.field)
        operator = rule.operator
        if operator in {"exists", "not_exists"}:
            present = actual not in (None, "", [])
            return present if operator == "exists" else not present
        if operator == "range":
            return _in_range(rule.field, actual, rule.value)
        if operator in {"eq", "not_eq"}:
            equal = _equals(rule.field, actual, rule.value)
            return equal if operator == "eq" else not equal
        needle = str(rule.value or "").lower()
        if isinstance(actual, list):
            found = any(needle in str(v).lower() for v in actual)
        else:
            found = actual is not None and needle in str(actual).lower()
        return found if operator == "contains" else not found

    def _node_matches(self, contact: Contact, node: SearchFilter | SearchGroup) -> bool:
        if isinstance(node, SearchGroup):
            results = (self._node_matches(contact, child) for child in node.filters)
            return all(results) if node.group == "AND" else any(results)
        return self._filter_matches(contact, node)

    @_synchronized
    def search_contacts(self, location_id: str, search: ContactSearchBody) -> JSON:
        """`POST /contacts/search`: filters (AND at the top), sort (tie-break on id), page or cursor.

        Every contact carries `searchAfter` (its sort values and id); passing the last one's back
        returns the next page, however many contacts share a timestamp.
        """
        self.check_access(location_id, search.locationId)
        sort: list[tuple[str, str]] = [(s.field, s.direction) for s in search.sort] or [("dateAdded", "desc")]
        descending = [direction == "desc" for _, direction in sort]

        def order_key(values: list[Any], contact_id: str) -> tuple[Any, ...]:
            return (*(_null_last(v, d) for v, d in zip(values, descending, strict=True)), contact_id)

        keyed = self._sorted_matches(location_id, search, sort, order_key)
        total = len(keyed)
        if search.searchAfter:
            if len(search.searchAfter) != len(sort) + 1:
                raise GhlError.of(
                    422,
                    [f"searchAfter must have {len(sort) + 1} values (the sort values and the id)"],
                    error="Unprocessable Entity",
                )
            cursor = [
                _sortable(_moment_ms(v) if name in DATE_FIELDS else v)
                for (name, _), v in zip(sort, search.searchAfter, strict=False)
            ]
            cursor_key = order_key(cursor, str(search.searchAfter[-1]))
            keyed = keyed[bisect.bisect_right(keyed, cursor_key, key=lambda item: item[0]) :]
            start = 0
        else:
            start = ((search.page or 1) - 1) * search.pageLimit
            if start + search.pageLimit > SEARCH_WINDOW:
                raise GhlError.of(
                    400,
                    f"Standard pagination is limited to {SEARCH_WINDOW} records; use searchAfter.",
                    error="Bad Request",
                )
        page = keyed[start : start + search.pageLimit]
        contacts = []
        for _, values, contact in page:
            item = contact.as_ghl()
            item["searchAfter"] = [*values, contact.id]
            contacts.append(item)
        return {"contacts": contacts, "total": total}

    def _sorted_matches(
        self,
        location_id: str,
        search: ContactSearchBody,
        sort: list[tuple[str, str]],
        order_key: Callable[[list[Any], str], tuple[Any, ...]],
    ) -> list[tuple[tuple[Any, ...], list[Any], Contact]]:
        """The matching contacts in order, each with its sort key and sort values.

        Paging through many contacts repeats one search with a moving cursor; the sorted list is
        kept while no contact changed (every write moves `dateUpdated`, so the fingerprint catches
        them) and the next page is then a bisect away.
        """
        spec = search.model_dump_json(exclude={"page", "pageLimit", "searchAfter"})
        fingerprint = (len(self.contacts), sum(c.updated_ms for c in self.contacts.values()))
        cached = self._search_cache.get((location_id, spec))
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        text = (search.query or "").strip().lower()
        keyed = []
        for contact in self.contacts.values():
            if (
                contact.location_id != location_id
                or contact.deleted
                or not all(self._node_matches(contact, node) for node in search.filters)
                or (text and not _text_matches(contact, text))
            ):
                continue
            values = [_sortable(self._search_value(contact, name)) for name, _ in sort]
            keyed.append((order_key(values, contact.id), values, contact))
        keyed.sort(key=lambda item: item[0])
        if len(self._search_cache) >= 8:
            self._search_cache.pop(next(iter(self._search_cache)))
        self._search_cache[(location_id, spec)] = (fingerprint, keyed)
        return keyed

    # --- conversations and messages ----------------------------------------------------------------

    def _conversation(self, location_id: str, conversation_id: str) -> Conversation:
        conversation = self.conversations.get(conversation_id)
        if conversation is None or conversation.deleted:
            raise GhlError.of(400, "Conversation not found", error="Bad Request")
        self.check_access(location_id, conversation.location_id)
        return conversation

    @_synchronized
    def create_conversation(self, location_id: str, body: Mapping[str, Any]) -> JSON:
        self.check_access(location_id, body["locationId"])
        contact = self.contacts.get(body["contactId"])
        if contact is None or contact.deleted:
            raise GhlError.of(400, "Contact not found", error="Bad Request")
        self.check_access(location_id, contact.location_id)
        now = _now()
        conversation = Conversation(
            id=self.new_id(), location_id=location_id, contact_id=contact.id, date_added=now, date_updated=now
        )
        self.conversations[conversation.id] = conversation
        return conversation.as_ghl()

    @_synchronized
    def search_conversations(self, location_id: str, query: Mapping[str, str]) -> JSON:
        self.check_access(location_id, query["locationId"])
        contact_id = query.get("contactId")
        found = [
            c
            for c in self.conversations.values()
            if c.location_id == location_id
            and not c.deleted
            and (contact_id is None or c.contact_id == contact_id)
            and (query.get("id") is None or c.id == query.get("id"))
        ]
        newest_first = query.get("sort", "desc") == "desc"
        found.sort(key=lambda c: (c.last_message_date or c.date_added, c.id), reverse=newest_first)
        limit = int(float(query.get("limit", "20")))
        items = []
        for conversation in found[:limit]:
            item = conversation.as_ghl()
            contact = self.contacts.get(conversation.contact_id)
            if contact is not None:
                item.update(
                    {
                        "fullName": contact.display_name(),
                        "contactName": contact.display_name(),
                        "email": contact.profile.get("email", ""),
                        "phone": contact.profile.get("phone", ""),
                    }
                )
            items.append(item)
        return {"conversations": items, "total": len(found)}

    @_synchronized
    def list_messages(self, location_id: str, conversation_id: str, query: Mapping[str, str]) -> JSON:
        """`GET /conversations/{id}/messages`: newest first, pages of `limit` (default 20, at most
        `message_page_max`) continued with `lastMessageId` (the page's last message) while
        `nextPage` is true, optionally filtered by `type` (comma list of TYPE_… codes)."""
        conversation = self._conversation(location_id, conversation_id)
        found = sorted(
            (m for m in self.messages.values() if m.conversation_id == conversation.id),
            key=lambda m: (m.date_added, m.id),
            reverse=True,
        )
        types = {t.strip() for t in query.get("type", "").split(",") if t.strip()}
        if types:
            found = [m for m in found if m.as_ghl()["messageType"] in types]
        after = query.get("lastMessageId")
        if after:
            ids = [m.id for m in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        asked = int(float(query.get("limit", str(MESSAGE_PAGE_DEFAULT))))
        limit = min(max(asked, 1), self.message_page_max)
        page = found[:limit]
        answer: JSON = {
            "lastMessageId": page[-1].id if page else "",
            "nextPage": len(found) > limit,
            "messages": [m.as_ghl() for m in page],
        }
        return {"messages": answer} if self.nest_message_pages else answer

    def _record_message(self, conversation: Conversation, message: Message) -> None:
        self.messages[message.id] = message
        conversation.last_message_date = message.date_added
        conversation.last_message_body = message.body
        conversation.last_message_type = MESSAGE_TYPE_CODES.get(message.type, f"TYPE_{message.type.upper()}")
        conversation.last_message_direction = message.direction
        conversation.date_updated = _now()
        if message.direction == "inbound":
            conversation.unread_count += 1

    @staticmethod
    def _message_date(raw: Any) -> datetime:
        if isinstance(raw, str):
            parsed = _moment_ms(raw)
            if parsed is not None:
                return datetime.fromtimestamp(parsed / 1000, UTC)
        return _now()

    @_synchronized
    def add_inbound_message(self, location_id: str, body: Mapping[str, Any]) -> Message:
        """`POST /conversations/messages/inbound`: a provider adds a message to a conversation."""
        conversation = self._conversation(location_id, body["conversationId"])
        if body["contactId"] != conversation.contact_id:
            raise GhlError.of(400, "The contact does not belong to this conversation", error="Bad Request")
        direction = body.get("direction") or INBOUND_ENDPOINT_DEFAULT_DIRECTION
        message = Message(
            id=self.new_id(),
            location_id=location_id,
            conversation_id=conversation.id,
            contact_id=conversation.contact_id,
            type=body["type"],
            direction=direction,
            status="delivered" if direction == "inbound" else "pending",
            date_added=self._message_date(body.get("date")),
            body=body.get("message") or "",
            attachments=list(body.get("attachments") or []),
            alt_id=body.get("altId"),
            conversation_provider_id=body["conversationProviderId"],
            call=dict(body["call"]) if isinstance(body.get("call"), Mapping) else None,
        )
        message.status_history.append(message.status)
        self._record_message(conversation, message)
        return message

    @_synchronized
    def add_outbound_call(self, location_id: str, body: Mapping[str, Any]) -> Message:
        """`POST /conversations/messages/outbound` (type Call): an external call's log entry."""
        conversation = self._conversation(location_id, body["conversationId"])
        call = dict(body["call"]) if isinstance(body.get("call"), Mapping) else {}
        message = Message(
            id=self.new_id(),
            location_id=location_id,
            conversation_id=conversation.id,
            contact_id=conversation.contact_id,
            type="Call",
            direction="outbound",
            status=str(call.get("status") or "completed"),
            date_added=self._message_date(body.get("date")),
            attachments=list(body.get("attachments") or []),
            alt_id=body.get("altId"),
            conversation_provider_id=body["conversationProviderId"],
            call=call,
        )
        message.status_history.append(message.status)
        self._record_message(conversation, message)
        return message

    @_synchronized
    def update_message_status(self, location_id: str, message_id: str, body: Mapping[str, Any]) -> JSON:
        message = self.messages.get(message_id)
        if message is None:
            raise _not_found("Message")
        self.check_access(location_id, message.location_id)
        status = body["status"]
        error = body.get("error")
        if status == "failed" and not isinstance(error, Mapping):
            raise GhlError.of(
                422,
                ["error: an error {code, type, message} is required when status is failed"],
                error="Unprocessable Entity",
            )
        message.status = status
        message.error = dict(error) if status == "failed" and isinstance(error, Mapping) else None
        message.status_history.append(status)
        return {
            "conversationId": message.conversation_id,
            "messageId": message.id,
            "status": status,
            "msg": "Message status updated successfully.",
        }

    @_synchronized
    def send_sms_as_user(
        self,
        location_id: str,
        contact_id: str,
        text: str,
        *,
        user_id: str | None = None,
        attachments: list[str] | None = None,
        conversation_provider_id: str | None = None,
    ) -> tuple[Message, JSON]:
        """An agent sends an SMS from GHL: the message is recorded `pending` in the contact's
        conversation (created if missing) and the custom provider's payload is returned."""
        contact = self._contact(location_id, contact_id)
        if not contact.profile.get("phone"):
            raise GhlError.of(400, "The contact has no phone number to text", error="Bad Request")
        conversation = next(
            (
                c
                for c in sorted(self.conversations.values(), key=lambda c: c.date_added)
                if c.contact_id == contact.id and not c.deleted
            ),
            None,
        )
        if conversation is None:
            created = self.create_conversation(
                location_id, {"locationId": location_id, "contactId": contact.id}
            )
            conversation = self.conversations[created["id"]]
        if user_id is None:
            user_id = next(
                (u["id"] for u in self.users.values() if location_id in u["roles"]["locationIds"]), "sim-user"
            )
        message = Message(
            id=self.new_id(),
            location_id=location_id,
            conversation_id=conversation.id,
            contact_id=contact.id,
            type="SMS",
            direction="outbound",
            status="pending",
            date_added=_now(),
            body=text,
            attachments=list(attachments or []),
            conversation_provider_id=conversation_provider_id,
            user_id=user_id,
            source="app",
        )
        message.status_history.append(message.status)
        self._record_message(conversation, message)
        payload: JSON = {
            "contactId": contact.id,
            "locationId": location_id,
            "messageId": message.id,
            "conversationId": conversation.id,
            "type": "SMS",
            "phone": contact.profile["phone"],
            "message": text,
            "attachments": list(attachments or []),
            "userId": user_id,
        }
        return message, payload

    # --- users, custom fields ------------------------------------------------------------------------

    @_synchronized
    def list_users(self, location_id: str, query_location: str) -> list[JSON]:
        self.check_access(location_id, query_location)
        return [dict(u) for u in self.users.values() if location_id in u["roles"]["locationIds"]]

    @_synchronized
    def list_custom_fields(self, location_id: str, path_location: str, model: str | None) -> list[JSON]:
        self.check_access(location_id, path_location)
        return [
            dict(f)
            for f in self.custom_fields.values()
            if f["locationId"] == location_id and (model in (None, "all") or f["model"] == model)
        ]

    # --- custom object records -----------------------------------------------------------------------

    @staticmethod
    def _check_schema_key(schema_key: str) -> None:
        if (
            not (schema_key.startswith("custom_objects.") and len(schema_key) > 15)
            and schema_key != "business"
        ):
            raise GhlError.of(400, f"Invalid object schema key {schema_key!r}", error="Bad Request")

    @_synchronized
    def create_record(self, location_id: str, schema_key: str, body: RecordCreateBody) -> JSON:
        self._check_schema_key(schema_key)
        self.check_access(location_id, body.locationId)
        now = _now()
        self._record_sequence += 1
        record = ObjectRecord(
            id=self.new_id(),
            location_id=location_id,
            object_key=schema_key,
            properties=dict(body.properties),
            owner=list(body.owner or []),
            followers=list(body.followers or []),
            created_at=now,
            updated_at=now,
            sequence=self._record_sequence,
        )
        self.records[record.id] = record
        return record.as_ghl()

    @_synchronized
    def update_record(
        self, location_id: str, schema_key: str, record_id: str, query_location: str, body: RecordUpdateBody
    ) -> JSON:
        """`PUT /objects/{key}/records/{id}`: the given properties replace those values only."""
        self._check_schema_key(schema_key)
        self.check_access(location_id, query_location)
        record = self.records.get(record_id)
        if record is None or record.object_key != schema_key:
            raise _not_found("Record")
        self.check_access(location_id, record.location_id)
        record.properties.update(body.properties)
        if body.owner is not None:
            record.owner = list(body.owner)
        if body.followers is not None:
            record.followers = list(body.followers)
        record.updated_at = _now()
        return record.as_ghl()

    @_synchronized
    def search_records(self, location_id: str, schema_key: str, body: Mapping[str, Any]) -> JSON:
        """Records whose property values contain `query` (case-insensitive), oldest first."""
        self._check_schema_key(schema_key)
        self.check_access(location_id, body["locationId"])
        text = str(body.get("query") or "").strip().lower()
        found = sorted(
            (
                r
                for r in self.records.values()
                if r.location_id == location_id
                and r.object_key == schema_key
                and (not text or any(text in str(v).lower() for v in r.properties.values()))
            ),
            key=lambda r: r.cursor(),
        )
        limit = max(1, int(body["pageLimit"]))
        after = body.get("searchAfter") or []
        if after:
            try:
                cursor = [int(float(v)) for v in after]
            except (TypeError, ValueError):
                raise GhlError.of(
                    422, ["searchAfter must hold numbers"], error="Unprocessable Entity"
                ) from None
            page = [r for r in found if r.cursor() > cursor][:limit]
        else:
            start = (max(1, int(body["page"])) - 1) * limit
            page = found[start : start + limit]
        records = [{**r.as_ghl(), "searchAfter": r.cursor()} for r in page]
        return {"records": records, "total": len(found)}

    # --- OAuth ---------------------------------------------------------------------------------------

    def _issue_tokens(self, location_id: str, client_id: str, scope: str, user_id: str | None = None) -> JSON:
        if user_id is None:
            user_id = next(
                (u["id"] for u in self.users.values() if location_id in u["roles"]["locationIds"]), "sim-user"
            )
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        self.tokens[access] = ApiToken(
            token=access,
            location_id=location_id,
            kind="oauth",
            expires_at=time.time() + self.access_token_ttl_seconds,
            client_id=client_id,
        )
        self.refresh_tokens[refresh] = RefreshToken(
            token=refresh, location_id=location_id, client_id=client_id, scope=scope, user_id=user_id
        )
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_token_ttl_seconds,
            "refresh_token": refresh,
            "scope": scope,
            "userType": "Location",
            "locationId": location_id,
            "companyId": self.locations[location_id].company_id,
            "userId": user_id,
        }

    @_synchronized
    def exchange_token(self, form: Mapping[str, str]) -> JSON:
        """`POST /oauth/token`. Refresh tokens are single use: each refresh returns a new pair and
        the presented refresh token is dead from then on (`invalid_grant`)."""
        client_id = form.get("client_id", "")
        secret = self.oauth_clients.get(client_id)
        if secret is None or not secrets.compare_digest(secret, form.get("client_secret", "")):
            raise _oauth_error(401, "invalid_client", "Invalid client credentials")
        grant = form.get("grant_type")
        if form.get("user_type") not in (None, "Location"):
            raise _oauth_error(400, "invalid_request", "The simulator issues Location tokens only")
        if grant == "authorization_code":
            self.counters["oauth_code_exchanges"] += 1
            code = self.auth_codes.get(form.get("code") or "")
            problem = None
            if code is None or code.used or code.client_id != client_id:
                problem = "Invalid authorization code"
            elif time.time() > code.expires_at:
                problem = "Authorization code expired"
            elif code.redirect_uri is not None and form.get("redirect_uri") != code.redirect_uri:
                problem = "redirect_uri does not match the authorization request"
            if problem is not None or code is None:
                self.counters["oauth_code_exchange_failures"] += 1
                raise _oauth_error(400, "invalid_grant", problem or "Invalid authorization code")
            code.used = True
            return self._issue_tokens(code.location_id, client_id, code.scope)
        if grant == "refresh_token":
            self.counters["oauth_refresh_calls"] += 1
            refresh = self.refresh_tokens.get(form.get("refresh_token") or "")
            if refresh is None or refresh.used or refresh.client_id != client_id:
                self.counters["oauth_refresh_failures"] += 1
                raise _oauth_error(400, "invalid_grant", "Invalid refresh token")
            refresh.used = True
            return self._issue_tokens(refresh.location_id, client_id, refresh.scope, refresh.user_id)
        raise _oauth_error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")

    # --- what tests read -----------------------------------------------------------------------------

    @_synchronized
    def snapshot(self) -> JSON:
        """Everything, as JSON: contacts (with notes, deleted ones flagged), conversations, messages,
        records, users, custom fields, tokens (masked), counters, rate-limit usage, deliveries."""
        contacts = []
        for contact in sorted(self.contacts.values(), key=lambda c: (c.added_ms, c.id)):
            item = contact.as_ghl()
            item["deleted"] = contact.deleted
            item["notes"] = [dict(n) for n in contact.notes]
            contacts.append(item)
        now = time.time()
        return {
            "locations": {
                loc.id: {"companyId": loc.company_id, "allowDuplicateContacts": loc.allow_duplicate_contacts}
                for loc in self.locations.values()
            },
            "contacts": contacts,
            "conversations": [
                c.as_ghl() for c in sorted(self.conversations.values(), key=lambda c: c.date_added)
            ],
            "messages": [m.as_ghl() for m in sorted(self.messages.values(), key=lambda m: m.date_added)],
            "records": [r.as_ghl() for r in sorted(self.records.values(), key=lambda r: r.sequence)],
            "users": [dict(u) for u in self.users.values()],
            "customFields": [dict(f) for f in self.custom_fields.values()],
            "tokens": {
                "bearer": [
                    {
                        "token": _mask(t.token),
                        "kind": t.kind,
                        "locationId": t.location_id,
                        "live": t.live(now),
                        "expiresAt": t.expires_at,
                    }
                    for t in self.tokens.values()
                ],
                "refresh": [
                    {"token": _mask(r.token), "locationId": r.location_id, "used": r.used}
                    for r in self.refresh_tokens.values()
                ],
                "authCodes": [{"code": _mask(c.code), "used": c.used} for c in self.auth_codes.values()],
            },
            "counters": dict(self.counters),
            "rateLimits": self.rate_limits.usage(),
            "deliveries": [d.as_dict() for d in self.webhooks.deliveries],
            "deliveriesPending": self.webhooks.pending,
        }

    # --- webhooks out --------------------------------------------------------------------------------

    def publish_contact_events(self, write: ContactWrite) -> None:
        """Post the webhooks a contact write causes (in the background; call from the server loop)."""
        url = self.webhook_url
        if not url:
            return
        for event in write.events:
            payload = contact_webhook(event, write.contact)
            self.count("webhooks_published")
            self.webhooks.start(
                self.webhooks.send(
                    url,
                    event,
                    payload,
                    headers=self.signature_headers,
                    details={"webhookId": payload["webhookId"], "contactId": write.contact["id"]},
                )
            )

    def publish_provider_message(self, payload: JSON) -> None:
        """Post a `ProviderOutboundMessage` to the conversation provider's delivery URL."""
        url = self.provider_delivery_url
        if not url:
            return
        self.count("provider_deliveries_published")
        self.webhooks.start(
            self.webhooks.send(
                url,
                "ProviderOutboundMessage",
                payload,
                headers=self.signature_headers,
                details={"messageId": payload["messageId"]},
            )
        )


def contact_webhook(event: str, contact: Mapping[str, Any]) -> JSON:
    """A native contact webhook as GHL sends it (`contracts/ghl/webhooks/Contact*.json`)."""
    payload: JSON = {"type": event, "locationId": contact["locationId"], "id": contact["id"]}
    for key in WEBHOOK_CONTACT_FIELDS:
        value = contact.get(key)
        if value not in (None, ""):
            payload[key] = value
    payload["attachments"] = []
    if event == "ContactDndUpdate":
        payload["dndSettings"] = contact.get("dndSettings", {})
    payload["timestamp"] = iso(_now())
    payload["webhookId"] = secrets.token_hex(12)
    return payload


# --- search value semantics ----------------------------------------------------------------------


def _sortable(value: Any) -> Any:
    """A value as it is sorted and shown in `searchAfter`: text lower-cased, lists joined."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, list):
        return ",".join(str(v).lower() for v in value)
    return value


@functools.total_ordering
class _Descending:
    """Wraps a sort value so that it orders in reverse (text cannot be negated like a number)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.value == other.value)

    def __lt__(self, other: _Descending) -> bool:
        return bool(self.value > other.value)

    def __hash__(self) -> int:
        return hash(self.value)


def _null_last(value: Any, descending: bool) -> tuple[Any, ...]:
    """One sort value as a key: numbers before text, reversed when descending, missing last."""
    if value is None:
        return (1,)
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int | float):
        return (0, 0, -value) if descending else (0, 0, value)
    text = value if isinstance(value, str) else str(value)
    return (0, -1, _Descending(text)) if descending else (0, 1, text)


def _equals(field_name: str, actual: Any, expected: Any) -> bool:
    if field_name == "phone":
        return actual is not None and _phone_key(actual) == _phone_key(expected)
    if field_name in DATE_FIELDS:
        return bool(actual == _moment_ms(expected))
    if isinstance(actual, list):
        return any(str(v).lower() == str(expected).lower() for v in actual)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return bool(actual == expected)
    if isinstance(actual, str):
        return actual.lower() == str(expected).lower()
    return bool(actual == expected)


def _in_range(field_name: str, actual: Any, bounds: Any) -> bool:
    if not isinstance(bounds, Mapping) or actual is None:
        return False
    for op, bound in bounds.items():
        limit = _moment_ms(bound) if field_name in DATE_FIELDS else bound
        if limit is None:
            return False
        try:
            ok = {
                "gt": actual > limit,
                "gte": actual >= limit,
                "lt": actual < limit,
                "lte": actual <= limit,
            }.get(op)
        except TypeError:
            return False
        if not ok:
            return False
    return True


def _text_matches(contact: Contact, text: str) -> bool:
    haystack = " ".join(
        str(v)
        for v in (
            contact.display_name(),
            contact.profile.get("email"),
            contact.profile.get("phone"),
            contact.profile.get("companyName"),
        )
        if v
    ).lower()
    return text in haystack


# --- the API gateway: auth, limits, version, contract --------------------------------------------


@dataclass(frozen=True)
class ApiCall:
    """What a route handler gets from the gateway: who calls, and the parsed body."""

    principal: Principal | None
    body: Any

    @property
    def location_id(self) -> str:
        if self.principal is None:
            raise RuntimeError("this route is not authenticated")
        return self.principal.location_id


class ApiGateway:
    """Checks every API request in GHL's order before its route runs, and stamps the answer.

    Order: token (401) → rate limit (429; counts from here on) → `Version` (400) → body syntax
    (400) → contract (422) → the route (403/404/400/…). The rate-limit headers go on every answer
    after the token check, errors included.
    """

    def __init__(self, sim: GhlSimulator, contract: RequestContract) -> None:
        self.sim = sim
        self.contract = contract

    async def serve(
        self,
        request: Request,
        route: str,
        handler: Callable[[Request], Coroutine[Any, Any, Response]],
    ) -> Response:
        decision: RateDecision | None = None
        try:
            principal = None
            if route != OAUTH_TOKEN_ROUTE:
                principal = self.sim.authenticate(request.headers.get("authorization"))
                decision = self.sim.rate_limits.admit(principal.location_id)
                if not decision.allowed:
                    self.sim.count("rate_limited_responses")
                    raise GhlError.of(429, "Too Many Requests")
                self.sim.count("api_requests")
                self._check_version(request, route)
            raw = await request.body()
            content_type = request.headers.get("content-type", "")
            body = self._parse_body(raw, content_type)
            violations = self.contract.violations(
                ContractRequest(
                    method=request.method,
                    path=_api_path(request),
                    route=route,
                    query=request.query_params,
                    headers=request.headers,
                    content_type=content_type,
                    body=raw if raw else None,
                )
            )
            if violations:
                raise _unprocessable(violations)
            request.state.ghl_call = ApiCall(principal=principal, body=body)
            response = await handler(request)
        except GhlError as exc:
            response = exc.response()
        if decision is not None:
            response.headers.update(decision.headers)
        return response

    @staticmethod
    def _check_version(request: Request, route: str) -> None:
        expected = API_VERSIONS.get(document_for(route), DEFAULT_API_VERSION)
        given = request.headers.get("version")
        if given is None:
            raise GhlError.of(400, "Version header was not found", error="Bad Request")
        if given != expected:
            raise GhlError.of(
                400,
                f"Version header {given!r} is not valid for this API; use {expected!r}",
                error="Bad Request",
            )

    @staticmethod
    def _parse_body(raw: bytes, content_type: str) -> Any:
        if not raw:
            return None
        if is_json(content_type):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise GhlError.of(400, "Unexpected token in JSON body", error="Bad Request") from None
        if is_form(content_type):
            return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        return None


def _api_path(request: Request) -> str:
    """The request path as GHL's documents see it, also when the simulator is mounted under a prefix."""
    path = request.url.path
    root = str(request.scope.get("root_path") or "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class GhlApiRoute(APIRoute):
    """A FastAPI route whose requests pass the `ApiGateway` (found on `app.state`) first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        route = self.path

        async def guarded(request: Request) -> Response:
            gateway: ApiGateway = request.app.state.ghl_gateway
            return await gateway.serve(request, route, handler)

        return guarded


def _call(request: Request) -> ApiCall:
    call: ApiCall = request.state.ghl_call
    return call


def _body(request: Request) -> JSON:
    body = _call(request).body
    if not isinstance(body, dict):
        # Only reachable for open-schema bodies: GHL requires a JSON object.
        raise GhlError.of(422, ["body: must be a JSON object"], error="Unprocessable Entity")
    return body


def _model(model: type[BaseModel], body: JSON) -> Any:
    """Check a body the documents leave open against what GHL's guides require (422 if not)."""
    try:
        return model.model_validate_json(orjson.dumps(body))
    except ValidationError as exc:
        raise _unprocessable(pydantic_violations(exc)) from None


def _ok(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status)


def _trace_id() -> str:
    return secrets.token_hex(16)


def _add_api_routes(router: APIRouter, sim: GhlSimulator) -> None:
    # --- contacts ---
    @router.post("/contacts/")
    async def create_contact(request: Request) -> Response:
        call = _call(request)
        body = _body(request)
        sim.check_access(call.location_id, body["locationId"])
        write = sim.create_contact(call.location_id, body)
        sim.publish_contact_events(write)
        return _ok({"contact": write.contact}, 201)

    @router.post("/contacts/upsert")
    async def upsert_contact(request: Request) -> Response:
        call = _call(request)
        body = _body(request)
        sim.check_access(call.location_id, body["locationId"])
        write = sim.upsert_contact(call.location_id, body)
        sim.publish_contact_events(write)
        return _ok({"new": write.new, "contact": write.contact, "traceId": _trace_id()})

    @router.post("/contacts/search")
    async def search_contacts(request: Request) -> Response:
        call = _call(request)
        search: ContactSearchBody = _model(ContactSearchBody, _body(request))
        return _ok(sim.search_contacts(call.location_id, search))

    @router.get("/contacts/{contactId}")
    async def get_contact(request: Request) -> Response:
        call = _call(request)
        return _ok({"contact": sim.get_contact(call.location_id, request.path_params["contactId"])})

    @router.put("/contacts/{contactId}")
    async def update_contact(request: Request) -> Response:
        call = _call(request)
        write = sim.update_contact(call.location_id, request.path_params["contactId"], _body(request))
        sim.publish_contact_events(write)
        return _ok({"succeded": True, "contact": write.contact, "traceId": _trace_id()})

    @router.delete("/contacts/{contactId}")
    async def delete_contact(request: Request) -> Response:
        call = _call(request)
        write = sim.delete_contact(call.location_id, request.path_params["contactId"])
        sim.publish_contact_events(write)
        return _ok({"succeded": True})

    @router.post("/contacts/{contactId}/tags")
    async def add_tags(request: Request) -> Response:
        call = _call(request)
        sent = _body(request)["tags"]
        write = sim.add_tags(call.location_id, request.path_params["contactId"], sent)
        sim.publish_contact_events(write)
        return _ok({"tags": sim.tags_answer(write, sent)}, 201)

    @router.delete("/contacts/{contactId}/tags")
    async def remove_tags(request: Request) -> Response:
        call = _call(request)
        sent = _body(request)["tags"]
        write = sim.remove_tags(call.location_id, request.path_params["contactId"], sent)
        sim.publish_contact_events(write)
        return _ok({"tags": sim.tags_answer(write, sent)})

    @router.get("/contacts/{contactId}/notes")
    async def list_notes(request: Request) -> Response:
        call = _call(request)
        return _ok({"notes": sim.list_notes(call.location_id, request.path_params["contactId"])})

    @router.post("/contacts/{contactId}/notes")
    async def add_note(request: Request) -> Response:
        call = _call(request)
        note = sim.add_note(call.location_id, request.path_params["contactId"], _body(request))
        return _ok({"note": note}, 201)

    # --- conversations ---
    @router.post("/conversations/")
    async def create_conversation(request: Request) -> Response:
        call = _call(request)
        return _ok(
            {"success": True, "conversation": sim.create_conversation(call.location_id, _body(request))}, 201
        )

    @router.get("/conversations/search")
    async def search_conversations(request: Request) -> Response:
        call = _call(request)
        return _ok(sim.search_conversations(call.location_id, dict(request.query_params)))

    @router.get("/conversations/{conversationId}/messages")
    async def conversation_messages(request: Request) -> Response:
        call = _call(request)
        return _ok(
            sim.list_messages(
                call.location_id, request.path_params["conversationId"], dict(request.query_params)
            )
        )

    @router.post("/conversations/messages/inbound")
    async def inbound_message(request: Request) -> Response:
        call = _call(request)
        message = sim.add_inbound_message(call.location_id, _body(request))
        return _ok(_message_added(message))

    @router.post("/conversations/messages/outbound")
    async def outbound_call(request: Request) -> Response:
        call = _call(request)
        message = sim.add_outbound_call(call.location_id, _body(request))
        return _ok(_message_added(message))

    @router.put("/conversations/messages/{messageId}/status")
    async def message_status(request: Request) -> Response:
        call = _call(request)
        return _ok(
            sim.update_message_status(call.location_id, request.path_params["messageId"], _body(request))
        )

    # --- users, locations ---
    @router.get("/users/")
    async def list_users(request: Request) -> Response:
        call = _call(request)
        return _ok({"users": sim.list_users(call.location_id, request.query_params["locationId"])})

    @router.get("/locations/{locationId}/customFields")
    async def list_custom_fields(request: Request) -> Response:
        call = _call(request)
        fields = sim.list_custom_fields(
            call.location_id, request.path_params["locationId"], request.query_params.get("model")
        )
        return _ok({"customFields": fields})

    # --- custom objects ---
    @router.post("/objects/{schemaKey}/records/search")
    async def search_records(request: Request) -> Response:
        call = _call(request)
        return _ok(sim.search_records(call.location_id, request.path_params["schemaKey"], _body(request)))

    @router.post("/objects/{schemaKey}/records")
    async def create_record(request: Request) -> Response:
        call = _call(request)
        body: RecordCreateBody = _model(RecordCreateBody, _body(request))
        return _ok(
            {"record": sim.create_record(call.location_id, request.path_params["schemaKey"], body)}, 201
        )

    @router.put("/objects/{schemaKey}/records/{id}")
    async def update_record(request: Request) -> Response:
        call = _call(request)
        body: RecordUpdateBody = _model(RecordUpdateBody, _body(request))
        record = sim.update_record(
            call.location_id,
            request.path_params["schemaKey"],
            request.path_params["id"],
            request.query_params["locationId"],
            body,
        )
        return _ok({"record": record})

    # --- OAuth ---
    @router.post(OAUTH_TOKEN_ROUTE)
    async def oauth_token(request: Request) -> Response:
        return _ok(sim.exchange_token(_body(request)))


def _message_added(message: Message) -> JSON:
    return {
        "success": True,
        "conversationId": message.conversation_id,
        "messageId": message.id,
        "message": message.body,
        "contactId": message.contact_id,
        "dateAdded": iso(message.date_added),
    }


# --- routes that play GHL's users and marketplace ------------------------------------------------


class UiContact(BaseModel):
    """A contact saved in GHL's UI: the contact properties, plus `id` to edit an existing one."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    locationId: str = DEFAULT_LOCATION_ID


class UiSms(BaseModel):
    contactId: str
    message: str
    locationId: str = DEFAULT_LOCATION_ID
    userId: str | None = None
    attachments: list[str] = Field(default_factory=list)
    conversationProviderId: str | None = None


class LocationSetup(BaseModel):
    locationId: str
    token: str | None = None
    allowDuplicateContacts: bool = False


class UserSetup(BaseModel):
    locationId: str = DEFAULT_LOCATION_ID
    name: str
    email: str


class CustomFieldSetup(BaseModel):
    locationId: str = DEFAULT_LOCATION_ID
    name: str
    fieldKey: str
    dataType: str = "TEXT"


class OAuthClientSetup(BaseModel):
    clientId: str
    clientSecret: str


def _add_control_routes(app: FastAPI, sim: GhlSimulator) -> None:
    ui = f"{CONTROL_PREFIX}/ui"

    @app.post(f"{ui}/contacts")
    async def ui_save_contact(contact: UiContact) -> Response:
        """Create or edit a contact as a GHL user would: the webhooks follow, as in GHL."""
        body = contact.model_dump(exclude={"id", "locationId"}, exclude_unset=True)
        try:
            if contact.id:
                write = sim.update_contact(contact.locationId, contact.id, body)
            else:
                write = sim.create_contact(contact.locationId, body)
        except GhlError as exc:
            return exc.response()
        sim.publish_contact_events(write)
        return _ok({"contact": write.contact, "new": write.new, "events": list(write.events)})

    @app.delete(f"{ui}/contacts/{{contact_id}}")
    async def ui_delete_contact(contact_id: str, locationId: str = DEFAULT_LOCATION_ID) -> Response:
        try:
            write = sim.delete_contact(locationId, contact_id)
        except GhlError as exc:
            return exc.response()
        sim.publish_contact_events(write)
        return _ok({"deleted": contact_id})

    @app.post(f"{ui}/send-sms")
    async def ui_send_sms(sms: UiSms) -> Response:
        """An agent sends an SMS: GHL records it and posts `ProviderOutboundMessage` to the provider."""
        try:
            message, payload = sim.send_sms_as_user(
                sms.locationId,
                sms.contactId,
                sms.message,
                user_id=sms.userId,
                attachments=sms.attachments,
                conversation_provider_id=sms.conversationProviderId,
            )
        except GhlError as exc:
            return exc.response()
        sim.publish_provider_message(payload)
        return _ok({"messageId": message.id, "conversationId": message.conversation_id, "payload": payload})

    @app.post(f"{CONTROL_PREFIX}/locations")
    async def setup_location(setup: LocationSetup) -> Response:
        token = sim.add_location(
            setup.locationId, token=setup.token, allow_duplicate_contacts=setup.allowDuplicateContacts
        )
        return _ok({"locationId": setup.locationId, "token": token})

    @app.post(f"{CONTROL_PREFIX}/users")
    async def setup_user(setup: UserSetup) -> Response:
        try:
            return _ok(sim.add_user(setup.locationId, setup.name, setup.email))
        except GhlError as exc:
            return exc.response()

    @app.post(f"{CONTROL_PREFIX}/custom-fields")
    async def setup_custom_field(setup: CustomFieldSetup) -> Response:
        try:
            return _ok(sim.add_custom_field(setup.locationId, setup.name, setup.fieldKey, setup.dataType))
        except GhlError as exc:
            return exc.response()

    @app.post(f"{CONTROL_PREFIX}/oauth-clients")
    async def setup_oauth_client(setup: OAuthClientSetup) -> Response:
        sim.add_oauth_client(setup.clientId, setup.clientSecret)
        return _ok({"clientId": setup.clientId})

    @app.get(f"{CONTROL_PREFIX}/webhook-public-key")
    async def webhook_public_key() -> Response:
        """The PEM that verifies this simulator's `x-ghl-signature` (what GHL shows in the app
        settings): set it as GHL_WEBHOOK_ED25519_PUBLIC_KEY of a service the simulator posts to."""
        return Response(sim.webhook_public_key_pem, media_type="application/x-pem-file")

    @app.post(f"{CONTROL_PREFIX}/drain")
    async def drain(max_wait_seconds: float = 10.0) -> Response:
        """Wait until every webhook the simulator started has been delivered (or given up)."""
        drained = await sim.webhooks.drain(max_wait_seconds)
        return _ok({"drained": drained, "pending": sim.webhooks.pending})

    @app.get("/oauth/chooselocation")
    async def choose_location(request: Request) -> Response:
        """GHL's marketplace page, already clicked through: the user picks the default location
        (or `locationId`), and the browser is sent back to the app with a code and the state."""
        query = request.query_params
        client_id = query.get("client_id", "")
        redirect_uri = query.get("redirect_uri")
        if query.get("response_type") != "code" or client_id not in sim.oauth_clients or not redirect_uri:
            return _ok(
                {
                    "error": "invalid_request",
                    "error_description": "response_type=code, a known client_id "
                    "and redirect_uri are required",
                },
                400,
            )
        location_id = query.get("locationId", DEFAULT_LOCATION_ID)
        if location_id not in sim.locations:
            return _ok({"error": "invalid_request", "error_description": "unknown location"}, 400)
        code = sim.issue_auth_code(
            location_id, client_id, redirect_uri=redirect_uri, scope=query.get("scope")
        )
        params = {"code": code}
        if query.get("state") is not None:
            params["state"] = query["state"]
        parts = urlsplit(redirect_uri)
        joined = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
        return RedirectResponse(urlunsplit(parts._replace(query=joined)), status_code=302)


async def _not_found_answer(request: Request, exc: Exception) -> Response:
    """Unknown routes answer as GHL's API does (`Cannot GET /x`), not with FastAPI's `detail`."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    labels = {404: "Not Found", 405: "Method Not Allowed"}
    return JSONResponse(
        {
            "statusCode": status,
            "message": f"Cannot {request.method} {request.url.path}",
            "error": labels.get(status, "Error"),
        },
        status_code=status,
    )


def create_app(
    sim: GhlSimulator | None = None,
    *,
    openapi_dir: Path | None = None,
    rate_limit_max: int = 100,
    rate_limit_interval_seconds: float = 10.0,
    access_token_ttl_seconds: int = 86399,
    webhook_url: str | None = None,
    webhook_signing_key: Ed25519PrivateKey | None = None,
    provider_delivery_url: str | None = None,
) -> FastAPI:
    """The GHL simulator as an ASGI app; `app.state.sim` is its `GhlSimulator`.

    With `openapi_dir` (GHL's documents, e.g. `contracts/ghl/openapi`) requests are validated
    with openapi-core; without it, with the simulator's own models of the same contracts.
    Webhook settings given here replace the simulator's; those left None keep what it has.
    """
    sim = sim or GhlSimulator()
    sim.rate_limits = LocationRateLimiter(rate_limit_max, rate_limit_interval_seconds)
    sim.access_token_ttl_seconds = access_token_ttl_seconds
    if webhook_url is not None:
        sim.webhook_url = webhook_url
    if webhook_signing_key is not None:
        sim.webhook_signing_key = webhook_signing_key
    if provider_delivery_url is not None:
        sim.provider_delivery_url = provider_delivery_url
    contract: RequestContract = OpenApiContract(openapi_dir) if openapi_dir is not None else ModelContract()

    app = build_simulator_app("GoHighLevel API simulator", state=sim.snapshot, reset=sim.reset)
    app.state.sim = sim
    app.state.ghl_gateway = ApiGateway(sim, contract)
    app.add_exception_handler(StarletteHTTPException, _not_found_answer)
    router = APIRouter(route_class=GhlApiRoute)
    _add_api_routes(router, sim)
    app.include_router(router)
    _add_control_routes(app, sim)
    return app
