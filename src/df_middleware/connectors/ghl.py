"""GoHighLevel API v2 client: the calls the sync flows make, typed, rate-limited and authenticated.

A `GhlClient` is bound to one location (`GHL_LOCATION_ID` by default); `for_location(id)` gives a
sibling for a location installed through OAuth, sharing the HTTP client and the rate limiter.
Every call:

- carries `Authorization: Bearer <token>` from `GhlCredentials` (a Private Integration Token or
  the location's OAuth token) and the `Version` its document requires (`2021-04-15` for
  conversations, `2021-07-28` for everything else);
- waits for the location's budget in the shared limiter (100 requests / 10 s);
- on a 401, asks the credentials for a fresh token once (an OAuth refresh) and repeats the call;
- raises the errors of `connectors/http.py` otherwise, so the worker decides retries.

Shapes follow GHL's OpenAPI documents: custom fields go as arrays of `{id, field_value}` (keys are
resolved to ids through the location's field definitions, cached), tags change only through the
tag endpoints, and a duplicate refused by `POST /contacts/` surfaces as `DuplicateContact` with
the existing contact's id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from df_middleware.config import Settings
from df_middleware.connectors.ghl_models import (
    Contact,
    ContactCreate,
    ContactPage,
    ContactUpdate,
    ContactUpsert,
    ContactWrite,
    Conversation,
    ConversationMessage,
    ConversationMessageRecord,
    CustomFieldDefinition,
    CustomFieldValue,
    CustomObjectRecord,
    ExternalCall,
    GhlUser,
    MessagePage,
    MessageResult,
    MessageStatus,
    Note,
    ProviderError,
    RecordPage,
    UpsertResult,
)
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteError,
    RemoteNotFound,
    RemoteRejected,
    RemoteUnauthorized,
    ServiceClient,
)
from df_middleware.connectors.ratelimit import SlidingWindowLimiter
from df_middleware.connectors.status import ConnectionReport
from df_middleware.errors import PermanentError, SyncError
from df_middleware.phones import normalize_email, normalize_phone
from df_middleware.timestamps import parse_iso8601

_W = TypeVar("_W", bound=ContactWrite)

VERSION_DEFAULT = "2021-07-28"
VERSION_CONVERSATIONS = "2021-04-15"
#: How long custom-field definitions are cached per location (they change rarely, and a missed
#: change costs one stale lookup).
FIELD_CACHE_SECONDS = 600.0
#: GHL's largest contact search page.
MAX_PAGE_LIMIT = 100
#: Hits read when looking a person up by phone or email (exact keys: a handful at most).
FIND_PAGE_LIMIT = 20
#: Messages asked for per page of `GET /conversations/{id}/messages`. GHL's document defaults to
#: 20 and names no maximum; whatever size GHL gives, listings go on by `nextPage`/`lastMessageId`.
MESSAGE_PAGE_LIMIT = 100
#: Pages `find_message` reads at most. It runs when an add's answer was lost and the event is
#: retried, minutes (at worst hours) later: 10 pages are 200 messages added after ours at GHL's
#: documented page of 20 (1,000 at 100), far more than one person's conversation gets meanwhile.
#: Each page is one request of the location's budget (100 per 10 s), which a lookup in a huge
#: conversation must not exhaust.
FIND_MESSAGE_MAX_PAGES = 10
#: How far GHL's `dateAdded` may be before the `date` we sent (GHL may stamp the add with its own
#: clock): a listing newest first is read down to `date` minus this, where ours cannot be.
FIND_MESSAGE_CLOCK_SKEW = timedelta(minutes=5)


class GhlCredentials(Protocol):
    """Where a location's bearer token comes from (connectors/tokens.py implements OAuth)."""

    async def access_token(self, location_id: str) -> str:
        """A token valid for the location (refreshed first when about to expire)."""
        ...

    async def after_unauthorized(self, location_id: str, rejected_token: str) -> str | None:
        """A fresh token after GHL refused `rejected_token`, or None when none can exist."""
        ...


class StaticToken:
    """A Private Integration Token for one location: nothing to refresh."""

    def __init__(self, location_id: str, token: str) -> None:
        self.location_id = location_id
        self._token = token

    async def access_token(self, location_id: str) -> str:
        if location_id != self.location_id:
            raise MissingGhlCredentials(
                f"no GHL credentials for location {location_id}: the Private Integration Token "
                f"(GHL_API_KEY) belongs to {self.location_id}"
            )
        return self._token

    async def after_unauthorized(self, location_id: str, rejected_token: str) -> str | None:
        return None

    def __repr__(self) -> str:
        return f"StaticToken(location_id={self.location_id!r}, token=***)"


class MissingGhlCredentials(PermanentError):
    """No token can be had for the location: neither a PIT nor an OAuth installation."""


class DuplicateContact(RemoteRejected):
    """`POST /contacts/` refused a second contact with the same phone or email."""

    def __init__(self, error: RemoteRejected, existing_id: str | None, matching_field: str | None) -> None:
        super().__init__(
            str(error),
            system=error.system,
            endpoint=error.endpoint,
            status_code=error.status_code or 400,
            body=error.body,
        )
        self.existing_id = existing_id
        self.matching_field = matching_field


@dataclass
class _FieldCache:
    fetched_at: float
    fields: list[CustomFieldDefinition]


def build_ghl_http(settings: Settings, **kwargs: Any) -> ServiceClient:
    """The process's GHL HTTP client, with the per-location limiter of the settings."""
    limiter = SlidingWindowLimiter(
        settings.ghl_rate_limit_max,
        settings.ghl_rate_limit_interval_seconds,
        processes=settings.ghl_rate_limit_processes,
    )
    return ServiceClient(
        "ghl",
        settings.ghl_base_url,
        settings=ClientSettings.from_settings(settings),
        limiter=limiter,
        **kwargs,
    )


class GhlClient:
    """The GHL calls of the sync flows, for one location (see the module docstring)."""

    def __init__(
        self,
        http: ServiceClient,
        credentials: GhlCredentials,
        location_id: str,
        *,
        phone_region: str = "US",
        field_cache: dict[str, _FieldCache] | None = None,
    ) -> None:
        self.http = http
        self.credentials = credentials
        self.location_id = location_id
        self.phone_region = phone_region
        self._field_cache = field_cache if field_cache is not None else {}

    def for_location(self, location_id: str) -> GhlClient:
        """The same client for another (OAuth-installed) location; shares HTTP, limiter and caches."""
        if location_id == self.location_id:
            return self
        return GhlClient(
            self.http,
            self.credentials,
            location_id,
            phone_region=self.phone_region,
            field_cache=self._field_cache,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- the one call path -----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        version: str = VERSION_DEFAULT,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        token = await self.credentials.access_token(self.location_id)
        try:
            return await self._send(method, path, token, endpoint, version, params, json, idempotent)
        except RemoteUnauthorized:
            fresh = await self.credentials.after_unauthorized(self.location_id, token)
            if fresh is None or fresh == token:
                raise
            return await self._send(method, path, fresh, endpoint, version, params, json, idempotent)

    async def _send(
        self,
        method: str,
        path: str,
        token: str,
        endpoint: str,
        version: str,
        params: Mapping[str, Any] | None,
        json: Any,
        idempotent: bool | None,
    ) -> Any:
        return await self.http.request(
            method,
            path,
            endpoint=endpoint,
            params=params,
            json=json,
            headers={"Authorization": f"Bearer {token}", "Version": version},
            idempotent=idempotent,
            rate_key=self.location_id,
        )

    # --- contacts --------------------------------------------------------------------------------

    async def get_contact(self, contact_id: str) -> Contact | None:
        """The contact, or None when GHL does not know the id (deleted or never existed)."""
        try:
            body = await self._call("GET", f"/contacts/{contact_id}", endpoint="GET /contacts/{id}")
        except RemoteNotFound:
            return None
        except RemoteRejected as exc:
            # GHL answers an unknown id with 400 "Contact not found" as often as with 404.
            if exc.status_code == 400 and "not found" in str(exc).lower():
                return None
            raise
        return Contact.model_validate(_field(body, "contact"))

    async def create_contact(self, contact: ContactCreate) -> Contact:
        """`POST /contacts/`. Not idempotent: callers key it as an effect; prefer `upsert_contact`."""
        contact = await self._with_field_ids(contact)
        try:
            body = await self._call("POST", "/contacts/", endpoint="POST /contacts/", json=contact.body())
        except RemoteRejected as exc:
            duplicate = _duplicate_of(exc)
            if duplicate is not None:
                raise duplicate from exc
            raise
        return Contact.model_validate(_field(body, "contact"))

    async def upsert_contact(self, contact: ContactUpsert) -> UpsertResult:
        """`POST /contacts/upsert`: create-or-update by phone/email, so safe to repeat."""
        contact = await self._with_field_ids(contact)
        body = await self._call(
            "POST", "/contacts/upsert", endpoint="POST /contacts/upsert", json=contact.body(), idempotent=True
        )
        return UpsertResult.model_validate(body)

    async def update_contact(self, contact_id: str, changes: ContactUpdate) -> Contact:
        """`PUT /contacts/{id}` with only the fields set in `changes`."""
        changes = await self._with_field_ids(changes)
        body = await self._call(
            "PUT", f"/contacts/{contact_id}", endpoint="PUT /contacts/{id}", json=changes.body()
        )
        return Contact.model_validate(_field(body, "contact"))

    async def search_contacts(
        self,
        *,
        filters: Sequence[Mapping[str, Any]] = (),
        sort: Sequence[Mapping[str, str]] = ({"field": "dateUpdated", "direction": "asc"},),
        page_limit: int = MAX_PAGE_LIMIT,
        search_after: Sequence[Any] | None = None,
    ) -> ContactPage:
        """One page of `POST /contacts/search` (GHL's advanced search: `filters` of
        `{field, operator, value}`, `sort`, and `searchAfter` = the last contact's `searchAfter`)."""
        body: dict[str, Any] = {
            "locationId": self.location_id,
            "pageLimit": min(max(page_limit, 1), MAX_PAGE_LIMIT),
            "filters": list(filters),
            "sort": list(sort),
        }
        if search_after:
            body["searchAfter"] = list(search_after)
        answer = await self._call(
            "POST", "/contacts/search", endpoint="POST /contacts/search", json=body, idempotent=True
        )
        page = ContactPage.model_validate(answer if isinstance(answer, dict) else {})
        full = len(page.contacts) >= body["pageLimit"]
        last = page.contacts[-1] if page.contacts else None
        page.next_search_after = last.search_after if full and last is not None else None
        return page

    async def find_contact(self, *, phone: str | None = None, email: str | None = None) -> Contact | None:
        """The contact whose phone (E.164) or email equals the key exactly (R-ID-2): a phone match
        first, else an email match.

        GHL's search matches loosely; a hit is accepted only when its own phone or email really
        equals the key, so a similar number never becomes somebody else's contact. Both keys go in
        one search (an OR group: one call, not two); should that page be full without a match,
        each key is searched alone, so a crowd of loose hits cannot hide the right contact.
        """
        e164 = normalize_phone(phone, self.phone_region) if phone else None
        wanted_email = normalize_email(email) if email else None
        by_phone = {"field": "phone", "operator": "eq", "value": e164}
        by_email = {"field": "email", "operator": "eq", "value": wanted_email}
        if e164 and wanted_email:
            page = await self.search_contacts(
                filters=[{"group": "OR", "filters": [by_phone, by_email]}],
                page_limit=FIND_PAGE_LIMIT,
                sort=(),
            )
            by_phone_hit = self._phone_match(page.contacts, e164)
            if by_phone_hit is not None:
                return by_phone_hit
            if len(page.contacts) < FIND_PAGE_LIMIT:
                return self._email_match(page.contacts, wanted_email)
            return await self.find_contact(phone=e164) or await self.find_contact(email=wanted_email)
        if e164:
            page = await self.search_contacts(filters=[by_phone], page_limit=FIND_PAGE_LIMIT, sort=())
            return self._phone_match(page.contacts, e164)
        if wanted_email:
            page = await self.search_contacts(filters=[by_email], page_limit=FIND_PAGE_LIMIT, sort=())
            return self._email_match(page.contacts, wanted_email)
        return None

    def _phone_match(self, contacts: Sequence[Contact], e164: str) -> Contact | None:
        return next(
            (c for c in contacts if c.phone and normalize_phone(c.phone, self.phone_region) == e164), None
        )

    @staticmethod
    def _email_match(contacts: Sequence[Contact], email: str) -> Contact | None:
        return next((c for c in contacts if c.email and normalize_email(c.email) == email), None)

    # --- tags and notes --------------------------------------------------------------------------

    async def add_tags(self, contact_id: str, tags: Sequence[str]) -> list[str]:
        """`POST /contacts/{id}/tags` (R-C-5): adding a present tag changes nothing, so repeatable.

        Returns the `tags` of GHL's answer, which GHL's document does not promise to be all the
        contact's tags (GHL may name only the tags sent): a caller that needs every tag the contact
        has, e.g. to remove others, uses `tags_after_adding`.
        """
        body = await self._call(
            "POST",
            f"/contacts/{contact_id}/tags",
            endpoint="POST /contacts/{id}/tags",
            json={"tags": list(tags)},
            idempotent=True,
        )
        return list(_field(body, "tags") or [])

    async def tags_after_adding(self, contact_id: str, tags: Sequence[str]) -> list[str]:
        """Add `tags` (`add_tags`), then every tag the contact has (`GET /contacts/{id}`): what a
        clean-up of other tags must look at (R-CALL-3, the stale `Disposition:` tags), since the
        add's answer may name only the tags sent. One request more than `add_tags`. Empty when
        the contact is deleted between the two requests (it has no tags left to clean)."""
        await self.add_tags(contact_id, tags)
        contact = await self.get_contact(contact_id)
        return list(contact.tags) if contact is not None else []

    async def remove_tags(self, contact_id: str, tags: Sequence[str]) -> list[str]:
        """`DELETE /contacts/{id}/tags` (R-C-5). Returns the `tags` of GHL's answer (like
        `add_tags`'s, not promised to be the contact's remaining tags)."""
        body = await self._call(
            "DELETE",
            f"/contacts/{contact_id}/tags",
            endpoint="DELETE /contacts/{id}/tags",
            json={"tags": list(tags)},
        )
        return list(_field(body, "tags") or [])

    async def list_notes(self, contact_id: str) -> list[Note]:
        body = await self._call("GET", f"/contacts/{contact_id}/notes", endpoint="GET /contacts/{id}/notes")
        return [Note.model_validate(item) for item in _field(body, "notes") or []]

    async def create_note(self, contact_id: str, text: str, *, user_id: str | None = None) -> Note:
        """`POST /contacts/{id}/notes`. Not idempotent: the sync layer keys it (R-CALL-4)."""
        payload: dict[str, Any] = {"body": text}
        if user_id:
            payload["userId"] = user_id
        body = await self._call(
            "POST", f"/contacts/{contact_id}/notes", endpoint="POST /contacts/{id}/notes", json=payload
        )
        return Note.model_validate(_field(body, "note"))

    # --- conversations ---------------------------------------------------------------------------

    async def find_conversation(self, contact_id: str) -> Conversation | None:
        """The contact's conversation (`GET /conversations/search`), or None."""
        body = await self._call(
            "GET",
            "/conversations/search",
            endpoint="GET /conversations/search",
            version=VERSION_CONVERSATIONS,
            params={"locationId": self.location_id, "contactId": contact_id},
        )
        for item in _field(body, "conversations") or []:
            conversation = Conversation.model_validate(item)
            if conversation.contact_id in (None, contact_id):
                return conversation
        return None

    async def create_conversation(self, contact_id: str) -> Conversation:
        """`POST /conversations/`. GHL refuses a second conversation for the same contact with a 400
        naming the existing one; that id is returned instead, so the call is safe to repeat."""
        try:
            body = await self._call(
                "POST",
                "/conversations/",
                endpoint="POST /conversations/",
                version=VERSION_CONVERSATIONS,
                json={"locationId": self.location_id, "contactId": contact_id},
            )
        except RemoteRejected as exc:
            existing = _conversation_of(exc)
            if existing is None:
                raise
            return Conversation(id=existing, contactId=contact_id, locationId=self.location_id)
        return Conversation.model_validate(_field(body, "conversation"))

    async def ensure_conversation(self, contact_id: str) -> Conversation:
        """Find the contact's conversation or create it."""
        return await self.find_conversation(contact_id) or await self.create_conversation(contact_id)

    async def add_message(self, message: ConversationMessage) -> MessageResult:
        """`POST /conversations/messages/inbound` (R-TXT-1/R-TXT-2). Keyed by the caller (effect)."""
        body = await self._call(
            "POST",
            "/conversations/messages/inbound",
            endpoint="POST /conversations/messages/inbound",
            version=VERSION_CONVERSATIONS,
            json=message.body(),
        )
        return MessageResult.model_validate(body)

    async def message_page(
        self,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = MESSAGE_PAGE_LIMIT,
        message_type: str | None = None,
    ) -> MessagePage:
        """One page of the conversation's messages, newest first; `after` continues the listing
        past the previous page (its `last_message_id`). GHL may give fewer than `limit`."""
        params: dict[str, Any] = {"limit": min(max(limit, 1), MESSAGE_PAGE_LIMIT)}
        if message_type:
            params["type"] = message_type
        if after:
            params["lastMessageId"] = after
        body = await self._call(
            "GET",
            f"/conversations/{conversation_id}/messages",
            endpoint="GET /conversations/{id}/messages",
            version=VERSION_CONVERSATIONS,
            params=params,
        )
        return MessagePage.of(body)

    async def list_messages(
        self, conversation_id: str, *, limit: int = MESSAGE_PAGE_LIMIT, message_type: str | None = None
    ) -> list[ConversationMessageRecord]:
        """The conversation's most recent messages, newest first (one page)."""
        page = await self.message_page(conversation_id, limit=limit, message_type=message_type)
        return page.messages

    async def find_message(
        self,
        conversation_id: str,
        *,
        alt_id: str | None = None,
        body: str | None = None,
        date: str | None = None,
        message_type: str | None = None,
    ) -> str | None:
        """The id of a message we may already have added (its answer lost): the one with our
        `altId` when GHL shows it, else the one with the same text and the same date (we set
        both). None when there is none; callers then add the message.

        The conversation is read page by page, newest first, so a busy conversation cannot hide
        ours beyond the first page; at most FIND_MESSAGE_MAX_PAGES pages, and no further than
        messages older than `date` (less FIND_MESSAGE_CLOCK_SKEW) while the listing is seen to
        be newest first: ours cannot be among them.
        """
        wanted_at = parse_iso8601(date)
        oldest_possible = wanted_at - FIND_MESSAGE_CLOCK_SKEW if wanted_at is not None else None
        after: str | None = None
        listing = _NewestFirst()
        for _ in range(FIND_MESSAGE_MAX_PAGES):
            page = await self.message_page(conversation_id, after=after, message_type=message_type)
            for message in page.messages:
                if _is_ours(message, alt_id, body, wanted_at):
                    return message.id
                listing.see(parse_iso8601(message.date_added))
            if not page.next_page or not page.last_message_id or page.last_message_id == after:
                return None
            if oldest_possible is not None and listing.passed(oldest_possible):
                return None
            after = page.last_message_id
        return None

    async def log_external_call(self, call: ExternalCall) -> MessageResult:
        """`POST /conversations/messages/outbound` with type Call (R-CALL-1)."""
        body = await self._call(
            "POST",
            "/conversations/messages/outbound",
            endpoint="POST /conversations/messages/outbound",
            version=VERSION_CONVERSATIONS,
            json=call.body(),
        )
        return MessageResult.model_validate(body)

    async def update_message_status(
        self, message_id: str, status: MessageStatus, *, error: ProviderError | None = None
    ) -> None:
        """`PUT /conversations/messages/{id}/status` (R-TXT-3). `failed` needs an error."""
        if status == "failed" and error is None:
            raise ValueError("a failed message status needs error {code, type, message}")
        payload: dict[str, Any] = {"status": status}
        if error is not None:
            payload["error"] = error.body()
        await self._call(
            "PUT",
            f"/conversations/messages/{message_id}/status",
            endpoint="PUT /conversations/messages/{id}/status",
            version=VERSION_CONVERSATIONS,
            json=payload,
        )

    # --- users and custom fields -----------------------------------------------------------------

    async def list_users(self) -> list[GhlUser]:
        body = await self._call(
            "GET", "/users/", endpoint="GET /users/", params={"locationId": self.location_id}
        )
        return [GhlUser.model_validate(item) for item in _field(body, "users") or []]

    async def custom_fields(self, *, refresh: bool = False) -> list[CustomFieldDefinition]:
        """The location's contact custom-field definitions, cached for FIELD_CACHE_SECONDS."""
        cached = self._field_cache.get(self.location_id)
        if cached and not refresh and time.monotonic() - cached.fetched_at < FIELD_CACHE_SECONDS:
            return cached.fields
        body = await self._call(
            "GET",
            f"/locations/{self.location_id}/customFields",
            endpoint="GET /locations/{id}/customFields",
            params={"model": "contact"},
        )
        fields = [CustomFieldDefinition.model_validate(item) for item in _field(body, "customFields") or []]
        self._field_cache[self.location_id] = _FieldCache(time.monotonic(), fields)
        return fields

    async def custom_field_id(self, key: str) -> str | None:
        """The id of the custom field named by `key` (fieldKey with or without `contact.`, or the
        field's name), or None when the location has no such field."""
        for definition in await self.custom_fields():
            if definition.id == key or definition.matches_key(key):
                return definition.id
        return None

    async def _with_field_ids(self, contact: _W) -> _W:
        """Custom fields given by key get their id: GHL's documents require `id` on every item,
        and the key itself is not sent."""
        fields = contact.custom_fields
        if not fields or all(item.id for item in fields):
            return contact
        resolved: list[CustomFieldValue] = []
        for item in fields:
            if not item.id:
                field_id = await self.custom_field_id(item.key or "")
                if field_id is None:
                    raise UnknownCustomField(
                        f"GHL location {self.location_id} has no custom field {item.key!r}"
                    )
                item = CustomFieldValue(id=field_id, field_value=item.field_value)
            resolved.append(item)
        return contact.model_copy(update={"custom_fields": resolved})

    # --- custom objects --------------------------------------------------------------------------

    async def search_records(
        self, schema_key: str, query: str, *, page_limit: int = 20, search_after: Sequence[str] = ()
    ) -> RecordPage:
        """`POST /objects/{key}/records/search` (the body fields are all required by GHL)."""
        body = await self._call(
            "POST",
            f"/objects/{schema_key}/records/search",
            endpoint="POST /objects/{key}/records/search",
            json={
                "locationId": self.location_id,
                "page": 1,
                "pageLimit": page_limit,
                "query": query,
                "searchAfter": list(search_after),
            },
            idempotent=True,
        )
        return RecordPage.model_validate(body if isinstance(body, dict) else {})

    async def create_record(self, schema_key: str, properties: Mapping[str, Any]) -> CustomObjectRecord:
        """`POST /objects/{key}/records`. Not idempotent: search first (R-BC-2)."""
        body = await self._call(
            "POST",
            f"/objects/{schema_key}/records",
            endpoint="POST /objects/{key}/records",
            json={"locationId": self.location_id, "properties": dict(properties)},
        )
        return CustomObjectRecord.model_validate(_field(body, "record"))

    async def update_record(
        self, schema_key: str, record_id: str, properties: Mapping[str, Any]
    ) -> CustomObjectRecord:
        """`PUT /objects/{key}/records/{id}?locationId=` with the properties to change."""
        body = await self._call(
            "PUT",
            f"/objects/{schema_key}/records/{record_id}",
            endpoint="PUT /objects/{key}/records/{id}",
            params={"locationId": self.location_id},
            json={"properties": dict(properties)},
        )
        return CustomObjectRecord.model_validate(_field(body, "record"))

    # --- health ----------------------------------------------------------------------------------

    async def check(self) -> ConnectionReport:
        """Configured / reachable / authenticated, by one read (`GET /users/`); never raises."""
        report = ConnectionReport(system="ghl", configured=True, detail={"location_id": self.location_id})
        try:
            users = await self.list_users()
        except MissingGhlCredentials as exc:
            report.configured, report.reason = False, str(exc)
        except RemoteUnauthorized as exc:
            report.reachable, report.authenticated, report.reason = True, False, str(exc)
        except RemoteError as exc:
            if exc.status_code is None:
                report.reachable, report.reason = False, str(exc)
            else:
                report.reachable, report.authenticated, report.reason = True, exc.status_code != 403, str(exc)
        except SyncError as exc:
            report.reachable, report.reason = False, str(exc)
        else:
            report.reachable = report.authenticated = True
            report.detail["users"] = len(users)
        return report


class UnknownCustomField(PermanentError):
    """A custom field key that the location does not define: a configuration error."""


def _is_ours(
    message: ConversationMessageRecord, alt_id: str | None, body: str | None, wanted_at: datetime | None
) -> bool:
    """Whether a listed message is the one we added: our `altId`, or (GHL not showing altIds)
    the same text at the same date."""
    if alt_id is not None and message.alt_id == alt_id:
        return True
    same_text = message.alt_id is None and body is not None and (message.body or "") == body
    return same_text and (wanted_at is None or parse_iso8601(message.date_added) == wanted_at)


class _NewestFirst:
    """The dates of a message listing as read: whether it is newest first so far, and how old
    it has got. GHL's document does not state the order, so `find_message` stops early only on
    what it saw."""

    def __init__(self) -> None:
        self.ordered = True
        self.oldest: datetime | None = None

    def see(self, added: datetime | None) -> None:
        if added is None:
            return
        if self.oldest is not None and added > self.oldest:
            self.ordered = False
        self.oldest = added if self.oldest is None else min(self.oldest, added)

    def passed(self, moment: datetime) -> bool:
        """Whether the listing, newest first, has reached messages older than `moment`."""
        return self.ordered and self.oldest is not None and self.oldest < moment


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, Mapping) else None


def _duplicate_of(error: RemoteRejected) -> DuplicateContact | None:
    """GHL's duplicate refusal: 400 with `meta.contactId` (and `meta.matchingField`)."""
    meta = _field(error.body, "meta")
    if error.status_code != 400 or not isinstance(meta, Mapping):
        return None
    existing = meta.get("contactId")
    if not isinstance(existing, str):
        return None
    matching = meta.get("matchingField")
    return DuplicateContact(error, existing, matching if isinstance(matching, str) else None)


def _conversation_of(error: RemoteRejected) -> str | None:
    """The existing conversation id GHL names when refusing a duplicate conversation."""
    if error.status_code != 400 or not isinstance(error.body, Mapping):
        return None
    for key in ("conversationId", "id"):
        value = error.body.get(key)
        if isinstance(value, str) and value:
            return value
    meta = error.body.get("meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("conversationId"), str):
        return str(meta["conversationId"])
    return None
