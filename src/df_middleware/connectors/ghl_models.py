"""Typed shapes of the GHL API v2 requests and answers the middleware uses.

Request models list exactly the properties GHL's OpenAPI documents give each endpoint
(`contracts/ghl/openapi/*.json`): GHL's API refuses properties an endpoint does not know
("property X should not exist"), so `ContactUpdate` has no `locationId` or `companyName`, while
`ContactCreate`/`ContactUpsert` have both. They serialise without the unset fields, so an update
only ever touches the fields the caller set.

Response models keep unknown keys (`extra="allow"`): GHL adds fields over time and the middleware
must not break, or drop data, when it does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DndStatus = Literal["active", "inactive", "permanent"]
#: Channels of `dndSettings` in the contacts document.
DndChannelName = Literal["Call", "Email", "SMS", "WhatsApp", "GMB", "FB"]
MessageStatus = Literal["delivered", "failed", "pending", "read"]
CallStatus = Literal[
    "pending", "completed", "answered", "busy", "no-answer", "failed", "canceled", "voicemail"
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def body(self) -> dict[str, Any]:
        """The JSON body: set fields only, by GHL's names."""
        return self.model_dump(by_alias=True, exclude_none=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- contacts ----------------------------------------------------------------------------------


class CustomFieldValue(_Request):
    """One custom field value, named by `id` or by `key`. GHL's documents require `id` on every
    item, so the connector resolves a key to its id through the location's custom-field
    definitions before sending (and sends the id only)."""

    id: str | None = None
    key: str | None = None
    field_value: str | int | float | bool | list[str] | None = None

    @model_validator(mode="after")
    def _named(self) -> CustomFieldValue:
        if not self.id and not self.key:
            raise ValueError("a custom field value needs an id or a key")
        return self


class DndChannel(_Request):
    status: DndStatus
    message: str | None = None
    code: str | None = None


class ContactWrite(_Request):
    """Fields shared by create, upsert and update."""

    first_name: str | None = Field(None, alias="firstName")
    last_name: str | None = Field(None, alias="lastName")
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    address1: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = Field(None, alias="postalCode")
    website: str | None = None
    timezone: str | None = None
    dnd: bool | None = None
    dnd_settings: dict[DndChannelName, DndChannel] | None = Field(None, alias="dndSettings")
    tags: list[str] | None = None
    custom_fields: list[CustomFieldValue] | None = Field(None, alias="customFields")
    source: str | None = None
    country: str | None = None
    assigned_to: str | None = Field(None, alias="assignedTo")


class ContactUpdate(ContactWrite):
    """`PUT /contacts/{id}` (UpdateContactDto). Setting `tags` here replaces the whole list, which
    is why the sync layer changes tags only through the tag endpoints (R-C-5) and leaves it None."""


class ContactCreate(ContactWrite):
    """`POST /contacts/` (CreateContactDto)."""

    location_id: str = Field(alias="locationId")
    company_name: str | None = Field(None, alias="companyName")
    gender: str | None = None


class ContactUpsert(ContactCreate):
    """`POST /contacts/upsert` (UpsertContactDto): GHL finds the contact by phone/email, honouring
    the location's duplicate settings, and updates it or creates one."""

    create_new_if_duplicate_allowed: bool | None = Field(None, alias="createNewIfDuplicateAllowed")


class Contact(_Response):
    id: str
    location_id: str | None = Field(None, alias="locationId")
    first_name: str | None = Field(None, alias="firstName")
    last_name: str | None = Field(None, alias="lastName")
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    country: str | None = None
    state: str | None = None
    city: str | None = None
    source: str | None = None
    assigned_to: str | None = Field(None, alias="assignedTo")
    tags: list[str] = Field(default_factory=list)
    custom_fields: list[dict[str, Any]] = Field(default_factory=list, alias="customFields")
    dnd: bool | None = None
    dnd_settings: dict[str, dict[str, Any]] | None = Field(None, alias="dndSettings")
    date_added: str | None = Field(None, alias="dateAdded")
    date_updated: str | None = Field(None, alias="dateUpdated")
    search_after: list[Any] | None = Field(None, alias="searchAfter")

    def custom_field(self, field_id: str) -> Any:
        """The value of a custom field by id (GHL answers `{id, value}` items), or None."""
        for item in self.custom_fields:
            if item.get("id") == field_id:
                return item.get("value", item.get("field_value"))
        return None


class UpsertResult(_Response):
    new: bool = False
    contact: Contact


class ContactPage(_Response):
    """One page of `POST /contacts/search`; `next_search_after` continues it (None: last page)."""

    contacts: list[Contact] = Field(default_factory=list)
    total: int = 0
    next_search_after: list[Any] | None = None


# --- notes -------------------------------------------------------------------------------------


class Note(_Response):
    id: str
    body: str = ""
    contact_id: str | None = Field(None, alias="contactId")
    user_id: str | None = Field(None, alias="userId")
    date_added: str | None = Field(None, alias="dateAdded")


# --- conversations -----------------------------------------------------------------------------


class Conversation(_Response):
    id: str
    contact_id: str | None = Field(None, alias="contactId")
    location_id: str | None = Field(None, alias="locationId")


class ProviderError(_Request):
    """`error` of a failed message status: GHL requires all three fields."""

    code: str
    type: str
    message: str


class CallData(_Request):
    to: str | None = None
    from_: str | None = Field(None, alias="from")
    status: CallStatus | None = None


class ConversationMessage(_Request):
    """`POST /conversations/messages/inbound` (ProcessMessageBodyDto) for SMS added by our provider.

    `direction` is always sent: `"inbound"` for a text the person sent us (R-TXT-1), `"outbound"`
    for one our side sent outside GHL (R-TXT-2). Despite the endpoint's name, GHL's document gives
    `outbound` as the default of an absent `direction`, so an inbound text must say so. The
    document types the property as an object, but GHL takes (and its own example shows) the
    plain string.
    """

    type: Literal["SMS"] = "SMS"
    conversation_id: str = Field(alias="conversationId")
    contact_id: str = Field(alias="contactId")
    conversation_provider_id: str = Field(alias="conversationProviderId")
    message: str | None = None
    attachments: list[str] | None = None
    alt_id: str | None = Field(None, alias="altId")
    date: str | None = None
    direction: Literal["inbound", "outbound"] | None = None


class ExternalCall(_Request):
    """`POST /conversations/messages/outbound` (ProcessOutboundMessageBodyDto): a call made or taken
    outside GHL, logged in the contact's conversation."""

    type: Literal["Call"] = "Call"
    conversation_id: str = Field(alias="conversationId")
    conversation_provider_id: str = Field(alias="conversationProviderId")
    date: str | None = None
    alt_id: str | None = Field(None, alias="altId")
    attachments: list[str] | None = None
    call: CallData


class ConversationMessageRecord(_Response):
    """A message as `GET /conversations/{id}/messages` lists it."""

    id: str
    message_type: str | None = Field(None, alias="messageType")
    direction: str | None = None
    status: str | None = None
    body: str | None = None
    date_added: str | None = Field(None, alias="dateAdded")
    alt_id: str | None = Field(None, alias="altId")


class MessagePage(_Response):
    """One page of `GET /conversations/{id}/messages`: `next_page` says more follow, asked for
    with `lastMessageId` = `last_message_id`."""

    messages: list[ConversationMessageRecord] = Field(default_factory=list)
    last_message_id: str | None = Field(None, alias="lastMessageId")
    next_page: bool = Field(False, alias="nextPage")

    @classmethod
    def of(cls, body: Any) -> MessagePage:
        """The page from an answer flat as GHL's document shows it, or nested under `messages` as
        GHL's live API answers (GoHighLevel/highlevel-api-docs#54)."""
        if isinstance(body, dict) and isinstance(body.get("messages"), dict):
            body = body["messages"]
        return cls.model_validate(body if isinstance(body, dict) else {})


class MessageResult(_Response):
    success: bool = True
    conversation_id: str = Field(alias="conversationId")
    message_id: str = Field(alias="messageId")
    message: str | None = None
    contact_id: str | None = Field(None, alias="contactId")
    date_added: str | None = Field(None, alias="dateAdded")


# --- users, custom fields, custom objects -----------------------------------------------------


class GhlUser(_Response):
    id: str
    name: str | None = None
    first_name: str | None = Field(None, alias="firstName")
    last_name: str | None = Field(None, alias="lastName")
    email: str | None = None


class CustomFieldDefinition(_Response):
    id: str
    name: str | None = None
    field_key: str | None = Field(None, alias="fieldKey")
    data_type: str | None = Field(None, alias="dataType")
    model: str | None = None

    def matches_key(self, key: str) -> bool:
        """`assignedAgent`, `contact.assignedagent` and `{{ contact.assignedAgent }}` all name the
        field whose fieldKey is `contact.assigned_agent`-like: compare case-insensitively, with and
        without the model prefix."""
        wanted = key.strip().strip("{} ").lower()
        own = (self.field_key or "").lower()
        return wanted in {own, own.split(".", 1)[-1]} or wanted == (self.name or "").lower()


class CustomObjectRecord(_Response):
    id: str
    properties: dict[str, Any] = Field(default_factory=dict)
    location_id: str | None = Field(None, alias="locationId")


class RecordPage(_Response):
    records: list[CustomObjectRecord] = Field(default_factory=list)
    total: int = 0
