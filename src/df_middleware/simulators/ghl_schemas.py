"""What the GHL simulator accepts: request contracts, from GHL's OpenAPI documents or our own models.

The simulator must refuse what the real GHL refuses, so every API request is checked before a
route runs. Two interchangeable contracts do it:

- `OpenApiContract` validates with openapi-core against GHL's published documents (read from a
  folder at runtime, one lazily loaded `OpenAPI` object per document). The documents have a few
  defects that would make the simulator refuse requests GHL accepts; `correct_document` fixes
  exactly those, each with its reason, and nothing else.
- `ModelContract` is the fallback when no documents are available: pydantic models of the same
  request bodies (required fields and JSON types as GHL documents them, unknown keys refused as
  GHL's NestJS validation refuses them),
  strict so that `"true"` is not a boolean and `5` is not a string, as in JSON Schema.

Both answer a list of `Violation`s; the simulator turns a non-empty list into a 422.

Some bodies are not described by the documents at all (`POST /contacts/search` and the custom
object record bodies are empty schemas). Their shape comes from GHL's prose documentation and is
checked by the route itself with the models at the end of this module, whichever contract is used.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol, TypedDict
from urllib.parse import parse_qsl

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

#: The host GHL's documents name in `servers`; openapi-core matches request URLs against it.
GHL_API_HOST = "https://services.leadconnectorhq.com"

#: Which document describes a path, by its first segment.
DOCUMENT_BY_SEGMENT = {
    "contacts": "contacts",
    "conversations": "conversations",
    "locations": "locations",
    "oauth": "oauth",
    "objects": "objects",
    "users": "users",
}


def document_for(path: str) -> str:
    """Name of the GHL document (without `.json`) that describes `path`."""
    segment = path.strip("/").split("/", 1)[0]
    try:
        return DOCUMENT_BY_SEGMENT[segment]
    except KeyError:
        raise ValueError(f"no GHL document describes {path}") from None


#: One reason a request breaks its contract: where (`in`: body, query, header, path), which field, why.
Violation = TypedDict("Violation", {"in": str, "field": str, "message": str})


def violation_text(v: Violation) -> str:
    """The NestJS-style message line GHL puts in a 422's `message` list."""
    return f"{v['in']}.{v['field']}: {v['message']}" if v["field"] else v["message"]


@dataclass(frozen=True)
class ContractRequest:
    """A request as the contracts see it (framework-neutral)."""

    method: str
    path: str
    route: str  # the path template, e.g. /contacts/{contactId}
    query: Mapping[str, str]
    headers: Mapping[str, str]
    content_type: str
    body: bytes | None


class RequestContract(Protocol):
    def violations(self, request: ContractRequest) -> list[Violation]: ...


# --- the published documents ---------------------------------------------------------------------


def _custom_field_value_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "key": {"type": "string"},
            "field_value": {},
        },
        "anyOf": [{"required": ["id"]}, {"required": ["key"]}],
    }


def correct_document(name: str, document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a GHL document with its known defects fixed, so valid GHL requests validate.

    - `customFields[]` items: every `anyOf` branch requires `id`, yet GHL accepts `{key,
      field_value}` (the property `key` is documented right there) and numeric values (the
      "number" branches are typed `object` with a numeric example). Corrected to: `id` or `key`
      required, `field_value` of any type.
    - `dateOfBirth` is typed `object` while its description lists string formats
      (`YYYY-MM-DD`, …): any type is accepted.
    - `POST /conversations/messages/inbound` `direction` is typed `object` while described as the
      string `inbound`/`outbound`: corrected to that string enum (its documented default,
      `outbound`, kept).
    - `POST /objects/{schemaKey}/records/search` `searchAfter` items are typed `string`, but the
      cursor GHL returns in each record is numbers: both are accepted.

    And one tightening: unknown body properties are refused (`forbid_unknown_properties`).
    """
    doc = copy.deepcopy(document)
    schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                custom = props.get("customFields")
                if (
                    isinstance(custom, dict)
                    and custom.get("type") == "array"
                    and isinstance(custom.get("items"), dict)
                    and "anyOf" in custom["items"]
                ):
                    custom["items"] = _custom_field_value_schema()
                birth = props.get("dateOfBirth")
                if isinstance(birth, dict) and birth.get("type") == "object":
                    del birth["type"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schemas)
    walk(doc.get("paths", {}))
    if name == "conversations" and "ProcessMessageBodyDto" in schemas:
        direction = schemas["ProcessMessageBodyDto"].get("properties", {}).get("direction")
        if isinstance(direction, dict):
            direction.clear()
            direction.update({"type": "string", "enum": ["inbound", "outbound"], "default": "outbound"})
    if name == "objects" and "SearchRecordsBody" in schemas:
        after = schemas["SearchRecordsBody"].get("properties", {}).get("searchAfter")
        if isinstance(after, dict):
            after["items"] = {"anyOf": [{"type": "string"}, {"type": "number"}]}
    forbid_unknown_properties(schemas)
    forbid_unknown_properties(doc.get("paths", {}))
    return doc


def forbid_unknown_properties(node: Any) -> None:
    """`additionalProperties: false` on every object schema that lists its properties.

    GHL's API validates bodies with NestJS's `forbidNonWhitelisted`: a property the endpoint does
    not know is a 422 ("property companyName should not exist"), e.g. `locationId` in the body of
    `PUT /contacts/{id}`. The documents do not say so; this makes them say it. Schemas combined
    with allOf/anyOf/oneOf are left open (their properties live in the branches).
    """
    if isinstance(node, dict):
        if (
            isinstance(node.get("properties"), dict)
            and node["properties"]
            and "additionalProperties" not in node
            and not any(k in node for k in ("allOf", "anyOf", "oneOf"))
        ):
            node["additionalProperties"] = False
        for value in node.values():
            forbid_unknown_properties(value)
    elif isinstance(node, list):
        for value in node:
            forbid_unknown_properties(value)


@dataclass
class _OpenApiRequest:
    """The request protocol of openapi-core, fed from a `ContractRequest`."""

    method: str
    path: str
    body: bytes | None
    content_type: str
    parameters: Any
    host_url: str = GHL_API_HOST


class OpenApiContract:
    """Validates requests with openapi-core against the documents in `openapi_dir`."""

    def __init__(self, openapi_dir: Path) -> None:
        self.openapi_dir = openapi_dir
        self._documents: dict[str, Any] = {}
        self._lock = threading.Lock()

    def document(self, name: str) -> Any:
        """The loaded (and corrected) `OpenAPI` object of one document, loaded once."""
        with self._lock:
            loaded = self._documents.get(name)
            if loaded is None:
                from openapi_core import Config, OpenAPI

                raw = json.loads((self.openapi_dir / f"{name}.json").read_text(encoding="utf-8"))
                # GHL's documents are not strictly valid OpenAPI (external refs to a missing
                # common file, `type: any`): skip spec validation, validate requests only.
                loaded = OpenAPI.from_dict(
                    correct_document(name, raw), config=Config(spec_validator_cls=None)
                )
                self._documents[name] = loaded
            return loaded

    def violations(self, request: ContractRequest) -> list[Violation]:
        from openapi_core.datatypes import RequestParameters

        api = self.document(document_for(request.route))
        adapted = _OpenApiRequest(
            method=request.method.lower(),
            path=request.path,
            body=request.body,
            content_type=request.content_type or "application/octet-stream",
            parameters=RequestParameters(query=request.query, header=request.headers, cookie={}),
        )
        result = api.unmarshal_request(adapted)
        found: list[Violation] = []
        for error in result.errors:
            found.extend(_describe_openapi_error(error))
        return found


def _describe_openapi_error(error: Exception) -> list[Violation]:
    from openapi_core.validation.request.exceptions import (
        MissingRequiredRequestBody,
        ParameterValidationError,
        RequestBodyValidationError,
        SecurityValidationError,
    )

    if isinstance(error, SecurityValidationError):
        # Authentication is the simulator's own first check; by now the token is known good.
        return []
    cause = error.__cause__
    schema_errors = getattr(cause, "schema_errors", None)
    if isinstance(error, ParameterValidationError):
        where, name = error.location, error.name
        if schema_errors:
            return [{"in": where, "field": name, "message": e.message} for e in schema_errors]
        detail = str(cause) if cause is not None else str(error)
        return [{"in": where, "field": name, "message": detail}]
    if isinstance(error, MissingRequiredRequestBody):
        return [{"in": "body", "field": "", "message": "request body is required"}]
    if isinstance(error, RequestBodyValidationError):
        if schema_errors:
            return [
                {
                    "in": "body",
                    "field": ".".join(str(p) for p in e.absolute_path),
                    "message": e.message,
                }
                for e in schema_errors
            ]
        detail = str(cause) if cause is not None else str(error)
        return [{"in": "body", "field": "", "message": detail}]
    return [{"in": "request", "field": "", "message": str(error)}]


# --- the fallback: our own models of the documented request bodies -------------------------------


class _Contract(BaseModel):
    """Base of request models: JSON types as strict as JSON Schema, unknown keys refused.

    Optional fields are typed `X | None` so that they may be left out, but an explicit `null` is
    refused unless the field is listed in `nullable` (GHL's `nullable: true`).
    """

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _refuse_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(
                name
                for name, info in cls.model_fields.items()
                if name not in cls.nullable and data.get(info.alias or name, 0) is None
            )
            if nulls:
                raise ValueError(f"{', '.join(nulls)} must not be null")
        return data


def _rfc3339(value: str) -> str:
    """`format: date-time` as JSON Schema checks it: a full timestamp with a zone."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a 'date-time'") from None
    if parsed.tzinfo is None or "T" not in value.upper():
        raise ValueError(f"{value!r} is not a 'date-time'")
    return value


DateTimeText = Annotated[str, AfterValidator(_rfc3339)]
DndStatus = Literal["active", "inactive", "permanent"]


class DndChannel(_Contract):
    status: DndStatus
    message: str | None = None
    code: str | None = None


class DndSettings(_Contract):
    Call: DndChannel | None = None
    Email: DndChannel | None = None
    SMS: DndChannel | None = None
    WhatsApp: DndChannel | None = None
    GMB: DndChannel | None = None
    FB: DndChannel | None = None


class InboundDndAll(_Contract):
    status: Literal["active", "inactive"]
    message: str | None = None


class InboundDndSettings(_Contract):
    all: InboundDndAll | None = None


class CustomFieldValue(_Contract):
    """`{id|key, field_value}`: GHL resolves `key` through the location's field definitions."""

    nullable = frozenset({"field_value"})
    id: str | None = None
    key: str | None = None
    field_value: Any = None

    @model_validator(mode="after")
    def _id_or_key(self) -> CustomFieldValue:
        if self.id is None and self.key is None:
            raise ValueError("a custom field needs `id` or `key`")
        return self


_NULLABLE_PROFILE = frozenset(
    {
        "firstName",
        "lastName",
        "name",
        "email",
        "phone",
        "address1",
        "city",
        "state",
        "website",
        "timezone",
        "dateOfBirth",
        "companyName",
    }
)


class ContactProfile(_Contract):
    """`PUT /contacts/{id}` (and the base of create/upsert)."""

    # The update document also allows null `source` and `assignedTo`; it does not describe
    # `companyName` and `gender`, so any value passes there.
    nullable = _NULLABLE_PROFILE | {"source", "assignedTo", "gender"}
    firstName: str | None = None
    lastName: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    website: str | None = None
    timezone: str | None = None
    dnd: bool | None = None
    dndSettings: DndSettings | None = None
    inboundDndSettings: InboundDndSettings | None = None
    tags: list[str] | None = None
    customFields: list[CustomFieldValue] | None = None
    source: str | None = None
    dateOfBirth: Any = None
    country: str | None = None
    companyName: str | None = None
    assignedTo: str | None = None
    gender: str | None = None


class CreateContactBody(ContactProfile):
    nullable = _NULLABLE_PROFILE
    locationId: str


class UpsertContactBody(CreateContactBody):
    createNewIfDuplicateAllowed: bool | None = None


class TagsBody(_Contract):
    tags: list[str]


class NoteBody(_Contract):
    body: str
    userId: str | None = None
    title: str | None = None
    color: str | None = None
    pinned: bool | None = None


class CreateConversationBody(_Contract):
    locationId: str
    contactId: str


MessageType = Literal[
    "SMS",
    "RCS",
    "Email",
    "WhatsApp",
    "GMB",
    "IG",
    "FB",
    "Custom",
    "WebChat",
    "Live_Chat",
    "Call",
    "IVR_Call",
    "Campaign_Call",
    "Campaign_VoiceMail",
    "TIKTOK",
    "ALL_IN_ONE_CHAT",
    "FORM_SUBMISSION",
]
CallStatus = Literal[
    "pending", "completed", "answered", "busy", "no-answer", "failed", "canceled", "voicemail"
]


class CallDetails(_Contract):
    to: str | None = None
    from_: str | None = Field(None, alias="from")
    status: CallStatus | None = None


class InboundMessageBody(_Contract):
    type: MessageType
    attachments: list[str] | None = None
    message: str | None = None
    conversationId: str
    contactId: str
    conversationProviderId: str
    html: str | None = None
    subject: str | None = None
    emailFrom: str | None = None
    emailTo: str | None = None
    emailCc: list[str] | None = None
    emailBcc: list[str] | None = None
    emailMessageId: str | None = None
    altId: str | None = None
    direction: Literal["inbound", "outbound"] | None = None
    date: DateTimeText | None = None
    call: CallDetails | None = None


class OutboundCallBody(_Contract):
    type: Literal["Call"]
    attachments: list[str] | None = None
    conversationId: str
    conversationProviderId: str
    altId: str | None = None
    date: DateTimeText | None = None
    call: CallDetails | None = None


class ProviderError(_Contract):
    code: str
    type: str
    message: str


class MessageStatusBody(_Contract):
    status: Literal["delivered", "failed", "pending", "read"]
    error: ProviderError | None = None
    emailMessageId: str | None = None
    recipients: list[str] | None = None


class RecordSearchBody(_Contract):
    locationId: str
    page: float
    pageLimit: float
    query: str
    searchAfter: list[str | float]


class OAuthTokenForm(_Contract):
    client_id: str
    client_secret: str
    grant_type: Literal["authorization_code", "refresh_token", "client_credentials"]
    code: str | None = None
    refresh_token: str | None = None
    user_type: Literal["Company", "Location"] | None = None
    redirect_uri: str | None = None


#: (method, route) → the model of its JSON body, as the documents describe it.
BODY_CONTRACTS: dict[tuple[str, str], type[_Contract]] = {
    ("POST", "/contacts/"): CreateContactBody,
    ("POST", "/contacts/upsert"): UpsertContactBody,
    ("PUT", "/contacts/{contactId}"): ContactProfile,
    ("POST", "/contacts/{contactId}/tags"): TagsBody,
    ("DELETE", "/contacts/{contactId}/tags"): TagsBody,
    ("POST", "/contacts/{contactId}/notes"): NoteBody,
    ("POST", "/conversations/"): CreateConversationBody,
    ("POST", "/conversations/messages/inbound"): InboundMessageBody,
    ("POST", "/conversations/messages/outbound"): OutboundCallBody,
    ("PUT", "/conversations/messages/{messageId}/status"): MessageStatusBody,
    ("POST", "/objects/{schemaKey}/records/search"): RecordSearchBody,
}
#: Bodies that are JSON but whose documented schema is empty (any JSON object passes).
OPEN_JSON_BODIES = {
    ("POST", "/contacts/search"),
    ("POST", "/objects/{schemaKey}/records"),
    ("PUT", "/objects/{schemaKey}/records/{id}"),
}
FORM_CONTRACTS: dict[tuple[str, str], type[_Contract]] = {("POST", "/oauth/token"): OAuthTokenForm}


@dataclass(frozen=True)
class QueryRules:
    """What a route's documented query parameters demand."""

    required: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


QUERY_CONTRACTS: dict[tuple[str, str], QueryRules] = {
    ("GET", "/users/"): QueryRules(required=("locationId",)),
    ("GET", "/conversations/search"): QueryRules(
        required=("locationId",),
        numeric=("limit", "startDate", "endDate", "scoreProfileMin", "scoreProfileMax"),
        enums={
            "sort": ("asc", "desc"),
            "status": ("all", "read", "unread", "starred", "recents"),
            "lastMessageDirection": ("inbound", "outbound"),
            "lastMessageAction": ("automated", "manual"),
        },
    ),
    ("GET", "/locations/{locationId}/customFields"): QueryRules(
        enums={"model": ("contact", "opportunity", "all")}
    ),
    ("PUT", "/objects/{schemaKey}/records/{id}"): QueryRules(required=("locationId",)),
}


def pydantic_violations(error: ValidationError, located_in: str = "body") -> list[Violation]:
    """Violations from a pydantic error, one per failing field."""
    return [
        {
            "in": located_in,
            "field": ".".join(str(p) for p in item["loc"]),
            "message": item["msg"],
        }
        for item in error.errors()
    ]


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def is_form(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


class ModelContract:
    """Validates requests with the models above (used when no OpenAPI documents are given)."""

    def violations(self, request: ContractRequest) -> list[Violation]:
        key = (request.method.upper(), request.route)
        found: list[Violation] = []
        rules = QUERY_CONTRACTS.get(key, QueryRules())
        for name in rules.required:
            if not request.query.get(name):
                found.append({"in": "query", "field": name, "message": "is required"})
        for name in rules.numeric:
            value = request.query.get(name)
            if value is not None:
                try:
                    float(value)
                except ValueError:
                    found.append({"in": "query", "field": name, "message": f"{value!r} is not a number"})
        for name, allowed in rules.enums.items():
            value = request.query.get(name)
            if value is not None and value not in allowed:
                found.append({"in": "query", "field": name, "message": f"must be one of {list(allowed)}"})
        body = request.body or b""
        model = BODY_CONTRACTS.get(key)
        if model is not None or key in OPEN_JSON_BODIES:
            if not body:
                found.append({"in": "body", "field": "", "message": "request body is required"})
            elif not is_json(request.content_type):
                found.append(
                    {
                        "in": "body",
                        "field": "",
                        "message": f"content type {request.content_type!r} is not application/json",
                    }
                )
            elif model is not None:
                try:
                    model.model_validate_json(body)
                except ValidationError as exc:
                    found.extend(pydantic_violations(exc))
        form = FORM_CONTRACTS.get(key)
        if form is not None:
            if not is_form(request.content_type):
                found.append(
                    {
                        "in": "body",
                        "field": "",
                        "message": "content type must be application/x-www-form-urlencoded",
                    }
                )
            else:
                fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
                try:
                    form.model_validate(fields)
                except ValidationError as exc:
                    found.extend(pydantic_violations(exc))
        return found


# --- shapes the documents leave open (checked by the routes under either contract) ---------------


class SearchFilter(_Contract):
    field: str
    operator: Literal["eq", "not_eq", "contains", "not_contains", "exists", "not_exists", "range"]
    value: Any = None


class SearchGroup(_Contract):
    group: Literal["AND", "OR"]
    filters: list[SearchFilter | SearchGroup]


class SearchSort(_Contract):
    field: str
    direction: Literal["asc", "desc"] = "asc"


class ContactSearchBody(_Contract):
    """`POST /contacts/search` as GHL's advanced-search guide describes it.

    `pageLimit` is required (at most 500); `page` and `searchAfter` are alternatives; at most two
    sort fields; `query` at most 75 characters.
    """

    nullable = frozenset({"page", "searchAfter", "query"})
    locationId: str
    pageLimit: int = Field(ge=1, le=500)
    page: int | None = Field(None, ge=1)
    searchAfter: list[str | int | float] | None = None
    filters: list[SearchFilter | SearchGroup] = Field(default_factory=list)
    sort: list[SearchSort] = Field(default_factory=list, max_length=2)
    query: str | None = Field(None, max_length=75)

    @model_validator(mode="after")
    def _one_pagination(self) -> ContactSearchBody:
        if self.page is not None and self.searchAfter:
            raise ValueError("use either `page` or `searchAfter`, not both")
        return self


class RecordCreateBody(_Contract):
    nullable = frozenset({"owner", "followers"})
    locationId: str
    properties: dict[str, Any]
    owner: list[str] | None = None
    followers: list[str] | None = None


class RecordUpdateBody(_Contract):
    nullable = frozenset({"owner", "followers"})
    properties: dict[str, Any]
    owner: list[str] | None = None
    followers: list[str] | None = None
