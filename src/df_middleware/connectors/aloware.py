"""Typed client of Aloware's API v1 (base `https://app.aloware.com/api/v1`).

Every call goes through `ServiceClient` (timeouts, in-call retries of repeatable calls, error
classification, metrics). What this module adds is Aloware's own shape:

- **Authentication** is the account's `api_token`, sent the way Aloware expects it: a query
  parameter on GET and a key of the JSON body on POST. It is never logged: `ServiceClient` masks
  `api_token=` in the URLs it logs (and in httpx's own request log line) and never logs bodies.
- **Phones** are normalised to E.164 (R-ID-1) before they are sent; an invalid number raises
  `InvalidPhoneNumber` (a `PermanentError`) before any request, because Aloware would answer 400
  and no retry can change that.
- **Ids** are numbers in Aloware and strings everywhere in this service: the response models
  accept either and hold strings. Numeric ids go back on the wire as numbers.
- **Idempotency**: each POST says whether repeating it is harmless, which decides whether a 5xx
  or timeout is retried inside the call. Only `create_call_list` and a forced sequence
  enrollment are not.

Which calls Aloware documents (contracts README): the Lead API (`POST /webhook/forms`), contact
lookup by phone, remove-from-all-lists, clear-list, sequence enroll and disenroll. Used by the
previous TypeScript middleware but *not* in Aloware's public documents — an account may answer
differently, so they stay behind this connector: list users, list and create power-dialer lists,
add contacts to a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, TypeVar

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from df_middleware.config import Settings
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteError,
    RemoteNotFound,
    RemoteRejected,
    RemoteUnauthorized,
    RemoteUnavailable,
    ServiceClient,
)
from df_middleware.connectors.status import ConnectionReport
from df_middleware.errors import InvalidPhoneNumber, UnexpectedResponse
from df_middleware.observability import mask_text
from df_middleware.phones import normalize_phone

SYSTEM: Final = "aloware"
M = TypeVar("M", bound=BaseModel)

#: Looked up by `check()`: a valid NANP number in the 555-01xx range reserved for fiction, so the
#: lookup is read-only and (almost certainly) answers 404 — which proves the token was accepted.
CHECK_PHONE: Final = "+12025550100"


# --- errors -----------------------------------------------------------------------------------------


# --- models -----------------------------------------------------------------------------------------


def _id_to_str(value: Any) -> Any:
    """Aloware ids are JSON numbers; the service keys everything by string."""
    if isinstance(value, bool):
        raise ValueError("an id cannot be a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError("an id cannot be empty")
        return value
    return value


AlowareId = Annotated[str, BeforeValidator(_id_to_str)]


def _wire_id(value: str | int) -> str | int:
    """An id as Aloware sends it: numeric ids go back as numbers, anything else as given."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    return int(text) if text.isdigit() else text


class AlowareModel(BaseModel):
    """Base of Aloware's objects: unknown keys survive (`extra="allow"`), so nothing Aloware adds
    is lost when a handler passes an object on."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class AlowareContact(AlowareModel):
    """A contact as the phone lookup returns it (keys as in the `Contact Created` webhook body)."""

    id: AlowareId
    phone_number: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    email: str | None = None
    timezone: str | None = None
    lead_source: str | None = None
    disposition_status: str | None = None
    is_dnc: bool | None = None
    is_blocked: bool | None = None
    text_authorized: bool | None = None
    country: str | None = None
    state: str | None = None
    city: str | None = None
    csf1: str | None = None
    csf2: str | None = None
    aloware_list_status: str | None = None
    user_id: AlowareId | None = None
    created_at: str | None = None
    updated_at: str | None = None


class AlowareUser(AlowareModel):
    """An Aloware user (agent); matched to GHL users and the agent directory by email (R-AG-5)."""

    id: AlowareId
    name: str | None = None
    email: str | None = None


class CallList(AlowareModel):
    """A power-dialer list. `contact_ids` is only present when the account's API includes it."""

    id: AlowareId
    name: str
    description: str | None = None
    contact_ids: list[AlowareId] | None = None


class LeadFields(BaseModel):
    """Profile fields of the Lead API (`POST /webhook/forms`); only the non-None ones are sent.

    `extra="forbid"`: a misspelt field would otherwise be silently dropped by Aloware, and the
    sync would believe it had written it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    email: str | None = None
    company_name: str | None = None
    lead_source: str | None = None
    date_of_birth: str | None = None
    timezone: str | None = None
    city: str | None = None
    state: str | None = None
    zipcode: str | None = None
    country: str | None = None
    address: str | None = None
    website: str | None = None
    notes: str | None = None
    csf1: str | None = None
    csf2: str | None = None
    user_id: str | int | None = None
    add_to_powerdialer: bool | None = None
    powerdialer_position: str | None = None
    sequence_id: str | int | None = None
    tag_id: str | int | None = None
    disposition_status_id: str | int | None = None

    def to_body(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True)
        for key in ("user_id", "sequence_id", "tag_id", "disposition_status_id"):
            if key in body:
                body[key] = _wire_id(body[key])
        return body


# --- client -----------------------------------------------------------------------------------------


class AlowareClient:
    """Aloware API v1 for the sync handlers (contacts, power-dialer lists, sequences, users)."""

    def __init__(
        self,
        base_url: str,
        api_token: str,
        client_settings: ClientSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        phone_region: str = "US",
    ) -> None:
        if not api_token:
            raise ValueError("AlowareClient needs an api_token")
        self._api_token = api_token
        self.phone_region = phone_region
        self.http = ServiceClient(SYSTEM, base_url, settings=client_settings, transport=transport)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> AlowareClient | None:
        """The configured client, or None when ALOWARE_API_TOKEN is unset (feature disabled)."""
        if settings.aloware_api_token is None or not settings.aloware_api_token.get_secret_value():
            return None
        return cls(
            settings.aloware_base_url,
            settings.aloware_api_token.get_secret_value(),
            ClientSettings.from_settings(settings),
            transport=transport,
            phone_region=settings.default_phone_region,
        )

    def __repr__(self) -> str:
        return f"AlowareClient(base_url={self.http.base_url!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AlowareClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # --- plumbing -------------------------------------------------------------------------------

    def _phone(self, raw: str) -> str:
        phone = normalize_phone(raw, self.phone_region)
        if phone is None:
            raise InvalidPhoneNumber(f"aloware: not a valid phone number: {mask_text(str(raw))}")
        return phone

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        query = {"api_token": self._api_token, **(params or {})}
        return await self.http.request("GET", path, endpoint=f"GET {path}", params=query)

    async def _post(self, path: str, body: Mapping[str, Any], *, idempotent: bool) -> Any:
        payload = {"api_token": self._api_token, **body}
        return await self.http.request(
            "POST", path, endpoint=f"POST {path}", json=payload, idempotent=idempotent
        )

    # --- documented by Aloware --------------------------------------------------------------------

    async def upsert_lead(self, phone: str, *, fields: LeadFields | None = None) -> None:
        """Create or update the contact with this phone (Lead API, `POST /webhook/forms`, documented).

        `force_update: true` makes Aloware overwrite the existing contact's fields instead of
        ignoring the submission (R-C-1). The call is keyed by phone, so repeating it converges on
        the same contact: it is retried in-call. The answer carries no id; learn it with
        `find_contact_by_phone`.
        """
        body: dict[str, Any] = {"phone_number": self._phone(phone), "force_update": True}
        if fields is not None:
            body.update(fields.to_body())
        await self._post("/webhook/forms", body, idempotent=True)

    async def find_contact_by_phone(self, phone: str) -> AlowareContact | None:
        """The contact with this phone, or None (`GET /webhook/contact/phone-number`, documented).

        Aloware cannot look a contact up by id, only by phone; a 404 means no such contact.
        """
        try:
            data = await self._get("/webhook/contact/phone-number", {"phone_number": self._phone(phone)})
        except RemoteNotFound:
            return None
        if isinstance(data, Mapping) and isinstance(data.get("data"), Mapping) and "id" not in data:
            data = data["data"]  # tolerate a `{"data": {...}}` envelope
        return _parse(AlowareContact, data, "GET /webhook/contact/phone-number")

    async def remove_from_all_lists(self, contact_id: str | int) -> bool:
        """Remove the contact from every power-dialer list (documented). False when Aloware does
        not know the contact (404) — then it is on no list, which is what the caller wanted.

        Removing is a set operation (a second removal changes nothing), so it is retried in-call.
        Used by delete (R-C-4), opt-out (R-OPT-3), DNC (R-OPT-6) and list moves (R-AG-3).
        """
        try:
            await self._post(
                "/webhook/powerdialer-remove-contact-from-lists",
                {"contact_id": _wire_id(contact_id)},
                idempotent=True,
            )
        except RemoteNotFound:
            return False
        return True

    async def clear_list(self, list_id: str | int) -> None:
        """Empty a power-dialer list (`POST /webhook/powerdialer-clear-list`, documented; repeatable)."""
        await self._post("/webhook/powerdialer-clear-list", {"list_id": _wire_id(list_id)}, idempotent=True)

    async def enroll_in_sequence(self, sequence_id: str | int, phone: str, *, force: bool = False) -> None:
        """Enroll the contact with this phone in a sequence (`POST /webhook/sequence-enroll`,
        documented; R-AG-6).

        Without `force`, Aloware leaves an already-enrolled contact alone, so a repeat is harmless
        and the call is retried in-call. `force=True` (`force_enroll`) restarts the sequence, so a
        repeat would restart it again: not retried in-call.
        """
        body = {
            "sequence_id": _wire_id(sequence_id),
            "source": "phone_number",
            "phone_number": self._phone(phone),
            "force_enroll": force,
        }
        await self._post("/webhook/sequence-enroll", body, idempotent=not force)

    async def disenroll_from_sequences(self, phone: str) -> bool:
        """Take the contact with this phone out of every sequence (`POST /webhook/sequence-disenroll`,
        documented; repeatable). Used before a new enrollment (R-AG-6) and on opt-out/DNC.

        False when Aloware has no contact with this phone (404): such a contact is in no sequence,
        which is what the caller wanted, so it is not an error that would dead-letter the event.
        """
        body = {"source": "phone_number", "phone_number": self._phone(phone)}
        try:
            await self._post("/webhook/sequence-disenroll", body, idempotent=True)
        except RemoteNotFound:
            return False
        return True

    # --- not in Aloware's public documents (used by the previous middleware) ---------------------

    async def list_users(self) -> list[AlowareUser]:
        """All users of the account (`GET /webhook/users`, **undocumented**): seeds agent matching
        by email (R-AG-5). Accepts the bare array the README names, or a `{"data": [...]}` envelope."""
        data = await self._get("/webhook/users")
        return [
            _parse(AlowareUser, item, "GET /webhook/users") for item in _items(data, "GET /webhook/users")
        ]

    async def list_call_lists(self) -> list[CallList]:
        """All power-dialer lists (`GET /call-lists`, **undocumented**): lists are found by name
        `DF_<AGENT>_<LIST>` and cached in `call_list_registry` (R-AG-3)."""
        data = await self._get("/call-lists")
        return [_parse(CallList, item, "GET /call-lists") for item in _items(data, "GET /call-lists")]

    async def create_call_list(self, name: str, description: str = "") -> CallList:
        """Create a power-dialer list (`POST /call-lists`, **undocumented**; only when
        ALOWARE_CREATE_LISTS=true, R-AG-3).

        Not idempotent — a repeat would create a second list with the same name — so a 5xx or a
        timeout is not retried here; the caller looks the name up again before retrying.
        """
        data = await self._post("/call-lists", {"name": name, "description": description}, idempotent=False)
        if isinstance(data, Mapping) and isinstance(data.get("data"), Mapping) and "id" not in data:
            data = data["data"]
        return _parse(CallList, data, "POST /call-lists")

    async def add_to_list(self, list_id: str | int, contact_ids: Iterable[str | int]) -> None:
        """Add contacts to a power-dialer list (`POST /webhook/powerdialer-add-contact-to-lists`,
        **undocumented**; R-AG-3).

        Marked repeatable: list membership is a set, and if a repeat were not harmless the event's
        own retry would repeat it anyway (memberships are recorded only after success), so holding
        back the in-call retry would protect nothing.
        """
        ids = [_wire_id(c) for c in contact_ids]
        if not ids:
            return
        body = {"list_id": _wire_id(list_id), "contact_ids": ids}
        await self._post("/webhook/powerdialer-add-contact-to-lists", body, idempotent=True)

    # --- health ---------------------------------------------------------------------------------

    async def check(self) -> ConnectionReport:
        """Configured / reachable / authenticated, by a read-only phone lookup of `CHECK_PHONE`.

        404 ("Contact not found.") or 200 means the token was accepted; 401/403 means it was not; a
        network error or timeout means Aloware is unreachable; another answer (5xx, 400) means
        reachable but the token could not be judged. Never raises.
        """
        report = ConnectionReport(system=SYSTEM, configured=True, detail={"base_url": self.http.base_url})
        try:
            await self._get("/webhook/contact/phone-number", {"phone_number": CHECK_PHONE})
        except RemoteNotFound:
            pass
        except RemoteUnauthorized as exc:
            return _refused(report, exc)
        except RemoteRejected as exc:
            if exc.status_code == 403:
                return _refused(report, exc)
            report.reachable, report.reason = True, f"unexpected answer: {exc}"
            return report
        except RemoteUnavailable as exc:
            if exc.status_code is None:
                report.reachable, report.reason = False, f"unreachable: {exc}"
            else:
                report.reachable, report.reason = True, f"unavailable: {exc}"
            return report
        except Exception as exc:  # a health check reports, it never raises
            report.reason = f"check failed: {type(exc).__name__}: {mask_text(str(exc))[:200]}"
            return report
        report.reachable = report.authenticated = True
        return report


def _refused(report: ConnectionReport, exc: RemoteError) -> ConnectionReport:
    report.reachable, report.authenticated = True, False
    report.reason = f"api_token refused (HTTP {exc.status_code}): check ALOWARE_API_TOKEN"
    return report


def _items(data: Any, endpoint: str) -> list[Any]:
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        return list(data["data"])
    if isinstance(data, list):
        return data
    raise UnexpectedResponse(f"aloware {endpoint}: expected a list, got {type(data).__name__}")


def _parse(model: type[M], data: Any, endpoint: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "body" for e in exc.errors())
        raise UnexpectedResponse(f"aloware {endpoint}: unexpected response shape ({fields})") from exc


async def check_aloware(settings: Settings) -> ConnectionReport:
    """The Aloware report for `df-middleware check` / the admin connections view, configured or not."""
    client = AlowareClient.from_settings(settings)
    if client is None:
        return ConnectionReport.not_configured(SYSTEM, "ALOWARE_API_TOKEN")
    try:
        return await client.check()
    finally:
        await client.aclose()
