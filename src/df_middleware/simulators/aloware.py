"""Aloware API v1 simulator: the calls the middleware makes, and Aloware's webhooks back to it.

It implements exactly the two Aloware tables of `contracts/README.md` under `/api/v1`: the Lead
API (create-or-update keyed by phone, `force_update`), contact lookup by phone, the power-dialer
list calls, sequence enrol/disenrol, users and call lists. State is kept in memory so tests can
assert what the middleware did (memberships, enrolments, every Lead API write per contact).

Faithful where the middleware depends on it:
- `api_token` is read from the query string on GET and from the JSON body on POST only; a wrong or
  missing token answers 401 `{"message": "Unauthenticated."}` (Laravel's answer).
- phones are parsed with `phonenumbers` (region US) and stored in E.164, so a lookup with a
  differently formatted number finds the contact; an invalid one answers 400
  `{"error": "Phone number is empty or invalid."}` (the documented text).
- the Lead API does not return the contact id (which is why the middleware looks it up after);
  without `force_update` an existing contact is left unchanged.
- validation failures answer 422 `{"message", "errors": {field: [..]}}`; ids are numbers in
  answers and accepted as numbers or numeric strings.
- ids of contacts (100001…), users (701…), lists (5001…) and sequences (9001…) never overlap, so
  an id passed in the wrong place is refused instead of silently matching something.

Webhooks out: `POST /_sim/emit` sends `{"event", "body"}` to the configured URL with HTTP Basic or
Bearer auth, starting from a built-in example shaped like `contracts/aloware/webhooks/<name>.json`
when asked. With `emit_contact_events`, Lead API writes also send `Contact Created` /
`Contact Updated`, as Aloware does; that is the echo the middleware's loop guard must recognise.
"""

from __future__ import annotations

import base64
import copy
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from df_middleware.phones import normalize_phone
from df_middleware.simulators.common import (
    CONTROL_PREFIX,
    HeaderBuilder,
    WebhookDelivery,
    WebhookSender,
    build_simulator_app,
    system_now,
)

API_PREFIX = "/api/v1"
DEFAULT_API_TOKEN = "aloware-sim-token"  # noqa: S105 - the simulator's well-known test token
PHONE_REGION = "US"

#: The contact object as Aloware's webhooks carry it (`Contact_Created.json` body), in that order.
CONTACT_KEYS = (
    "id",
    "first_name",
    "last_name",
    "name",
    "phone_number",
    "email",
    "timezone",
    "lead_source",
    "intake_source",
    "disposition_status",
    "is_dnc",
    "is_blocked",
    "text_authorized",
    "country",
    "state",
    "city",
    "csf1",
    "csf2",
    "aloware_list_status",
    "created_at",
    "updated_at",
)
#: Profile fields the Lead API writes.
LEAD_PROFILE_FIELDS = (
    "first_name",
    "last_name",
    "name",
    "email",
    "company_name",
    "lead_source",
    "date_of_birth",
    "timezone",
    "city",
    "state",
    "zipcode",
    "country",
    "address",
    "website",
    "notes",
    "csf1",
    "csf2",
)
#: Kept on a contact beyond CONTACT_KEYS (the lookup answers them too, as the real one answers more).
EXTRA_CONTACT_KEYS = (
    "company_name",
    "date_of_birth",
    "zipcode",
    "address",
    "website",
    "notes",
    "user_id",
    "tag_ids",
    "disposition_status_id",
)

#: What a test helper may set on a contact: the id and the phone (the lookup key) are Aloware's.
_EDITABLE_CONTACT_KEYS = frozenset(CONTACT_KEYS + EXTRA_CONTACT_KEYS) - {"id", "phone_number"}

MESSAGE_CREATED = "Contact has been created."
MESSAGE_UPDATED = "Contact has been updated."
MESSAGE_UNCHANGED = "Contact already exists and was not updated (force_update is not set)."

LeadAction = Literal["created", "updated", "unchanged"]
WebhookAuth = Literal["basic", "bearer", "none"]


def _now() -> str:
    return system_now("aloware").strftime("%Y-%m-%dT%H:%M:%SZ")


class AlowareError(Exception):
    """An answer other than 2xx, with Aloware's status and body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def unauthenticated() -> AlowareError:
    return AlowareError(401, {"message": "Unauthenticated."})


def invalid_phone() -> AlowareError:
    return AlowareError(400, {"error": "Phone number is empty or invalid."})


def contact_not_found() -> AlowareError:
    return AlowareError(404, {"error": "Contact not found."})


def contact_id_not_found() -> AlowareError:
    """The power-dialer calls' wording for an unknown contact (Aloware's Power Dialer API page)."""
    return AlowareError(404, {"message": "The requested contact id does not exist."})


def list_id_not_found() -> AlowareError:
    return AlowareError(404, {"message": "The requested list id does not exist."})


class RequestFields:
    """Laravel-style validation of one request's input: collects every failure, then answers 422
    `{"message": <first failure>, "errors": {field: [messages]}}` like Aloware's Laravel backend."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.errors: dict[str, list[str]] = {}

    def fail(self, key: str, message: str) -> None:
        self.errors.setdefault(key, []).append(message)

    @staticmethod
    def _label(key: str) -> str:
        return key.replace("_", " ")

    def is_missing(self, key: str) -> bool:
        value = self.data.get(key)
        return value is None or (isinstance(value, str) and not value.strip())

    def integer(self, key: str, *, required: bool = False) -> int | None:
        """A number or a numeric string (ids travel both ways in practice)."""
        if self.is_missing(key):
            if required:
                self.fail(key, f"The {self._label(key)} field is required.")
            return None
        value = self.data[key]
        parsed = _as_int(value)
        if parsed is None:
            self.fail(key, f"The {self._label(key)} must be an integer.")
        return parsed

    def integer_list(self, key: str, *, required: bool = False) -> list[int]:
        value = self.data.get(key)
        if value is None or value == []:
            if required:
                self.fail(key, f"The {self._label(key)} field is required.")
            return []
        if not isinstance(value, list):
            self.fail(key, f"The {self._label(key)} must be an array.")
            return []
        parsed: list[int] = []
        for index, item in enumerate(value):
            number = _as_int(item)
            if number is None:
                self.fail(f"{key}.{index}", f"The {key}.{index} must be an integer.")
            else:
                parsed.append(number)
        return parsed

    def boolean(self, key: str) -> bool:
        """Laravel's `boolean` rule: true/false, 1/0, "1"/"0" (and "true"/"false", which forms send)."""
        value = self.data.get(key)
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in {"1", "0", "true", "false"}:
            return value.strip().lower() in {"1", "true"}
        self.fail(key, f"The {self._label(key)} field must be true or false.")
        return False

    def text(self, key: str, *, required: bool = False, max_length: int | None = None) -> str | None:
        if self.is_missing(key):
            if required:
                self.fail(key, f"The {self._label(key)} field is required.")
            return None
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(key, f"The {self._label(key)} must be a string.")
            return None
        text = str(value).strip()
        if max_length is not None and len(text) > max_length:
            self.fail(key, f"The {self._label(key)} may not be greater than {max_length} characters.")
            return None
        return text

    def check(self) -> None:
        """Raise the 422 when anything failed."""
        if not self.errors:
            return
        messages = [m for found in self.errors.values() for m in found]
        message = messages[0]
        if len(messages) > 1:
            extra = len(messages) - 1
            message += f" (and {extra} more error{'s' if extra > 1 else ''})"
        raise AlowareError(422, {"message": message, "errors": self.errors})


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


@dataclass(frozen=True)
class LeadResult:
    """What one Lead API call did."""

    action: LeadAction
    contact: dict[str, Any]
    changed: tuple[str, ...]

    @property
    def message(self) -> str:
        return {"created": MESSAGE_CREATED, "updated": MESSAGE_UPDATED, "unchanged": MESSAGE_UNCHANGED}[
            self.action
        ]


# --- webhook examples (shaped like contracts/aloware/webhooks/*.json) ------------------------------

_EXAMPLE_USER = {"id": 731, "name": "Chris Agent", "email": "chris@example.com"}


def _example_contact() -> dict[str, Any]:
    return {
        "id": 48213,
        "first_name": "Sarah",
        "last_name": "Johnson",
        "name": "Sarah Johnson",
        "phone_number": "+19195551234",
        "email": "sarah.johnson@example.com",
        "timezone": "America/New_York",
        "lead_source": "Website",
        "intake_source": "Lead API",
        "disposition_status": "Interested",
        "is_dnc": False,
        "is_blocked": False,
        "text_authorized": True,
        "country": "US",
        "state": "NC",
        "city": "Raleigh",
        "csf1": None,
        "csf2": None,
        "aloware_list_status": None,
        "created_at": "2026-11-20T14:02:11Z",
        "updated_at": "2026-11-24T16:40:03Z",
    }


def _with_contact(body: dict[str, Any], *, user: bool = True) -> dict[str, Any]:
    """An event body that embeds the contact (and the agent), in the examples' key order."""
    head = {"id": body.pop("id")}
    # Call-family bodies lead with type and direction; communications keep direction after the user.
    leading = ("call_id", "communication_id", "type", "direction") if "type" in body else ("call_id",)
    for key in (*leading, "communication_id"):
        if key in body:
            head[key] = body.pop(key)
    head["contact_id"] = 48213
    if "user_id" in body:
        head["user_id"] = body.pop("user_id")
    head["contact"] = _example_contact()
    if user:
        head["user"] = dict(_EXAMPLE_USER)
    return {**head, **body}


def _build_examples() -> dict[str, tuple[str, dict[str, Any]]]:
    contact = _example_contact()
    recording_ref = {"call_id": 9912345, "communication_id": 9912345}
    return {
        "Contact_Created": ("Contact Created", contact),
        "Contact_Updated": (
            "Contact Updated",
            {**contact, "first_name": "Sara", "updated_at": "2026-11-24T16:45:00Z"},
        ),
        "Contact_Disposed": ("Contact Disposed", {**contact, "disposition_status": "Appointment Set"}),
        "Contact_DNC_Updated": (
            "Contact DNC Updated",
            {**contact, "is_dnc": True, "updated_at": "2026-11-24T17:00:00Z"},
        ),
        "Call_Disposed": (
            "Call Disposed",
            _with_contact(
                {
                    "id": 9912345,
                    "type": "call",
                    "direction": "outbound",
                    "user_id": 731,
                    "disposition_status": "Left Voicemail",
                    "call_disposition": "Left Voicemail",
                    "status": "completed",
                    "resolution": "completed",
                    "duration": 187,
                    "talk_time": 161,
                    "wait_time": 9,
                    "csat_score": None,
                    "has_recording": True,
                    "recording_url": "https://recordings.example.com/9912345.mp3",
                    "created_at": "2026-11-24T16:30:00Z",
                    "ended_at": "2026-11-24T16:33:07Z",
                }
            ),
        ),
        "OutboundPhoneCall-Completed": (
            "OutboundPhoneCall-Completed",
            _with_contact(
                {
                    "id": 9912346,
                    "type": "call",
                    "direction": "outbound",
                    "user_id": 731,
                    "status": "completed",
                    "duration": 64,
                    "talk_time": 51,
                    "created_at": "2026-11-24T18:00:00Z",
                    "ended_at": "2026-11-24T18:01:04Z",
                }
            ),
        ),
        "InboundPhoneCall-Missed": (
            "InboundPhoneCall-Missed",
            _with_contact(
                {
                    "id": 9912347,
                    "type": "call",
                    "direction": "inbound",
                    "user_id": None,
                    "status": "missed",
                    "duration": 0,
                    "created_at": "2026-11-24T19:00:00Z",
                },
                user=False,
            ),
        ),
        "Call_Summarized": (
            "Call Summarized",
            _with_contact(
                {
                    "id": 55501,
                    **recording_ref,
                    "summary": "Customer is interested in the Q1 offering and asked for a follow-up call "
                    "next Tuesday.",
                    "outcomes": ["Interested", "Follow-up Needed"],
                    "created_at": "2026-11-24T16:35:00Z",
                },
                user=False,
            ),
        ),
        "Recording_Saved": (
            "Recording Saved",
            _with_contact(
                {
                    "id": 77001,
                    **recording_ref,
                    "url": "https://recordings.example.com/9912345.mp3",
                    "duration": 161,
                    "created_at": "2026-11-24T16:34:00Z",
                },
                user=False,
            ),
        ),
        "Transcription_Saved": (
            "Transcription Saved",
            _with_contact(
                {
                    "id": 88001,
                    **recording_ref,
                    "text": "Agent: Hi Sarah, this is Chris... Customer: Yes, I saw the email...",
                    "created_at": "2026-11-24T16:36:00Z",
                },
                user=False,
            ),
        ),
        "Voicemail_Saved": (
            "Voicemail Saved",
            _with_contact(
                {
                    "id": 66001,
                    "call_id": 9912347,
                    "communication_id": 9912347,
                    "url": "https://voicemail.example.com/9912347.mp3",
                    "duration": 23,
                    "created_at": "2026-11-24T19:01:00Z",
                },
                user=False,
            ),
        ),
        "Communication_Initiated": (
            "Communication Initiated",
            _with_contact(
                {
                    "id": 9912348,
                    "channel": "call",
                    "direction": "outbound",
                    "created_at": "2026-11-24T20:00:00Z",
                }
            ),
        ),
        "Communication_Disposed": (
            "Communication Disposed",
            _with_contact(
                {
                    "id": 9912348,
                    "channel": "call",
                    "direction": "outbound",
                    "disposition_status": "No Answer",
                    "created_at": "2026-11-24T20:01:00Z",
                }
            ),
        ),
        "Appointment_Saved": (
            "Appointment Saved",
            _with_contact(
                {
                    "id": 4401,
                    "scheduled_at": "2026-12-01T15:00:00Z",
                    "created_at": "2026-11-24T16:37:00Z",
                }
            ),
        ),
    }


_EXAMPLES = _build_examples()
#: Example names, as the contract files are named (`Call_Disposed`, `InboundPhoneCall-Missed`, …).
EXAMPLE_NAMES = tuple(_EXAMPLES)
#: Events whose body is the contact itself (the others embed it under `contact`).
CONTACT_EVENTS = frozenset({"contact created", "contact updated", "contact disposed", "contact dnc updated"})


def aloware_example(name: str) -> tuple[str, dict[str, Any]]:
    """(event name, body) of a built-in example; `name` is the contract file's name or the event
    name (`Call_Disposed`, `Call Disposed`, case-insensitive). KeyError when unknown."""
    wanted = name.strip().removesuffix(".json").replace(" ", "_").lower()
    for key, (event, body) in _EXAMPLES.items():
        if key.lower() == wanted:
            return event, copy.deepcopy(body)
    raise KeyError(name)


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --- the simulator ---------------------------------------------------------------------------------


class AlowareSimulator:
    """One Aloware account in memory: contacts, users, power-dialer lists, sequences, and the
    webhook settings Aloware would call the middleware back with."""

    def __init__(self) -> None:
        self.api_token = DEFAULT_API_TOKEN
        self.webhook_url: str | None = None
        self.webhook_basic_auth: tuple[str, str] | None = None
        self.webhook_bearer_token: str | None = None
        #: Send `Contact Created` / `Contact Updated` after Lead API writes, as Aloware does.
        self.emit_contact_events = False
        self.webhooks = WebhookSender()
        self.reset()

    def reset(self) -> None:
        """Empty the account (configuration — token, webhook URL and auth — is kept)."""
        self.contacts: dict[int, dict[str, Any]] = {}
        self._ids_by_phone: dict[str, int] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.lists: dict[int, dict[str, Any]] = {}
        self.sequences: dict[int, dict[str, Any]] = {}
        #: contact id → the sequence it is enrolled in (Aloware: one at a time).
        self.enrollments: dict[int, int] = {}
        #: Every enrol/disenrol decision, in order.
        self.sequence_log: list[dict[str, Any]] = []
        #: contact id → every Lead API write that named it, in order.
        self.lead_writes: dict[int, list[dict[str, Any]]] = {}
        self.webhooks.clear()
        self._next_ids = {"contact": 100001, "user": 701, "list": 5001, "sequence": 9001}

    def _new_id(self, kind: str) -> int:
        value = self._next_ids[kind]
        self._next_ids[kind] = value + 1
        return value

    # --- test helpers -------------------------------------------------------------------------------

    def add_user(self, name: str, email: str) -> dict[str, Any]:
        user_id = self._new_id("user")
        user: dict[str, Any] = {"id": user_id, "name": name, "email": email}
        self.users[user_id] = user
        return dict(user)

    def add_list(self, name: str, description: str = "") -> dict[str, Any]:
        call_list: dict[str, Any] = {
            "id": self._new_id("list"),
            "name": name,
            "description": description,
            "contact_ids": [],
            "created_at": _now(),
        }
        self.lists[call_list["id"]] = call_list
        return copy.deepcopy(call_list)

    def add_sequence(self, name: str) -> dict[str, Any]:
        sequence_id = self._new_id("sequence")
        sequence: dict[str, Any] = {"id": sequence_id, "name": name}
        self.sequences[sequence_id] = sequence
        return dict(sequence)

    def add_contact(self, phone: str, **fields: Any) -> dict[str, Any]:
        """A contact as if an agent had created it in Aloware (no webhook, no Lead API history).
        ValueError when the phone is invalid or already taken."""
        e164 = normalize_phone(phone, PHONE_REGION)
        if e164 is None:
            raise ValueError(f"invalid phone number: {phone!r}")
        if e164 in self._ids_by_phone:
            raise ValueError(f"a contact with {e164} already exists")
        unknown = set(fields) - _EDITABLE_CONTACT_KEYS
        if unknown:
            raise ValueError(f"unknown or read-only contact fields: {sorted(unknown)}")
        contact = self._new_contact(e164, intake_source="Manual")
        contact.update(fields)
        if "name" not in fields:
            contact["name"] = _full_name(contact)
        self._store(contact)
        return copy.deepcopy(contact)

    def update_contact(self, contact_id: int, **fields: Any) -> dict[str, Any]:
        """Change a contact as an agent would in Aloware (e.g. `aloware_list_status`, `is_dnc`)."""
        contact = self.contacts[contact_id]
        unknown = set(fields) - _EDITABLE_CONTACT_KEYS
        if unknown:
            raise ValueError(f"unknown or read-only contact fields: {sorted(unknown)}")
        contact.update(fields)
        contact["updated_at"] = _now()
        return copy.deepcopy(contact)

    def contact_by_phone(self, phone: str) -> dict[str, Any] | None:
        e164 = normalize_phone(phone, PHONE_REGION)
        contact_id = self._ids_by_phone.get(e164) if e164 else None
        return copy.deepcopy(self.contacts[contact_id]) if contact_id is not None else None

    def lists_of(self, contact_id: int) -> list[int]:
        """Ids of the lists the contact is on."""
        return [list_id for list_id, found in self.lists.items() if contact_id in found["contact_ids"]]

    def snapshot(self) -> dict[str, Any]:
        """The whole account as JSON (what `GET /_sim/state` answers)."""
        return {
            "contacts": [copy.deepcopy(c) for c in self.contacts.values()],
            "users": [dict(u) for u in self.users.values()],
            "lists": [copy.deepcopy(found) for found in self.lists.values()],
            "sequences": [dict(s) for s in self.sequences.values()],
            "enrollments": {str(c): s for c, s in self.enrollments.items()},
            "sequence_log": copy.deepcopy(self.sequence_log),
            "lead_writes": {str(c): copy.deepcopy(w) for c, w in self.lead_writes.items()},
            "webhook_deliveries": [d.as_dict() for d in self.webhooks.deliveries],
            "webhooks_pending": self.webhooks.pending,
            "webhook_errors": list(self.webhooks.background_errors),
        }

    # --- contacts -----------------------------------------------------------------------------------

    def _new_contact(self, e164: str, *, intake_source: str) -> dict[str, Any]:
        now = _now()
        contact: dict[str, Any] = dict.fromkeys(CONTACT_KEYS)
        contact.update(dict.fromkeys(EXTRA_CONTACT_KEYS))
        contact.update(
            {
                "id": self._new_id("contact"),
                "phone_number": e164,
                "intake_source": intake_source,
                "is_dnc": False,
                "is_blocked": False,
                "text_authorized": True,
                "tag_ids": [],
                "created_at": now,
                "updated_at": now,
            }
        )
        return contact

    def _store(self, contact: dict[str, Any]) -> None:
        self.contacts[contact["id"]] = contact
        self._ids_by_phone[contact["phone_number"]] = contact["id"]

    def _contact_for_phone(self, raw: Any) -> dict[str, Any]:
        e164 = normalize_phone(raw, PHONE_REGION)
        if e164 is None:
            raise invalid_phone()
        contact_id = self._ids_by_phone.get(e164)
        if contact_id is None:
            raise contact_not_found()
        return self.contacts[contact_id]

    def submit_lead(self, data: Mapping[str, Any]) -> LeadResult:
        """`POST /webhook/forms`: create the contact keyed by phone, or update it when
        `force_update` is true; without it an existing contact is left as it is. Empty values never
        clear a field. `user_id`, `sequence_id`, `tag_id` and `disposition_status_id` apply to a
        created or force-updated contact; `add_to_powerdialer` is only recorded."""
        fields = RequestFields(data)
        force_update = fields.boolean("force_update")
        force_update_sequence = fields.boolean("force_update_sequence")
        add_to_powerdialer = fields.boolean("add_to_powerdialer")
        fields.text("powerdialer_position")
        profile = {key: fields.text(key, max_length=5000) for key in LEAD_PROFILE_FIELDS}
        given = {key: value for key, value in profile.items() if value}
        user_id = fields.integer("user_id")
        sequence_id = fields.integer("sequence_id")
        tag_id = fields.integer("tag_id")
        disposition_status_id = fields.integer("disposition_status_id")
        if user_id is not None and user_id not in self.users:
            fields.fail("user_id", "The selected user id is invalid.")
        if sequence_id is not None and sequence_id not in self.sequences:
            fields.fail("sequence_id", "The selected sequence id is invalid.")
        fields.check()
        e164 = normalize_phone(data.get("phone_number"), PHONE_REGION)
        if e164 is None:
            raise invalid_phone()

        existing_id = self._ids_by_phone.get(e164)
        if existing_id is None:
            contact = self._new_contact(e164, intake_source="Lead API")
            action: LeadAction = "created"
        elif force_update:
            contact = self.contacts[existing_id]
            action = "updated"
        else:
            contact = self.contacts[existing_id]
            self._record_lead(contact["id"], "unchanged", force_update, data, changed=())
            return LeadResult("unchanged", copy.deepcopy(contact), ())

        before = copy.deepcopy(contact)
        contact.update(given)
        if "name" not in given and ({"first_name", "last_name"} & set(given) or action == "created"):
            contact["name"] = _full_name(contact)
        if user_id is not None:
            contact["user_id"] = user_id
        if tag_id is not None and tag_id not in contact["tag_ids"]:
            contact["tag_ids"] = [*contact["tag_ids"], tag_id]
        if disposition_status_id is not None:
            contact["disposition_status_id"] = disposition_status_id
        changed = tuple(
            k for k in contact if k not in {"created_at", "updated_at"} and before[k] != contact[k]
        )
        if action == "updated" and changed:
            contact["updated_at"] = _now()
        self._store(contact)
        if sequence_id is not None:
            self._enroll(contact, sequence_id, force=force_update_sequence, via="lead_api", strict=False)
        self._record_lead(
            contact["id"], action, force_update, data, changed=changed, add_to_powerdialer=add_to_powerdialer
        )
        return LeadResult(action, copy.deepcopy(contact), changed)

    def _record_lead(
        self,
        contact_id: int,
        action: LeadAction,
        force_update: bool,
        data: Mapping[str, Any],
        *,
        changed: tuple[str, ...],
        add_to_powerdialer: bool = False,
    ) -> None:
        self.lead_writes.setdefault(contact_id, []).append(
            {
                "action": action,
                "force_update": force_update,
                "changed": list(changed),
                "add_to_powerdialer": add_to_powerdialer,
                "request": {k: copy.deepcopy(v) for k, v in data.items() if k != "api_token"},
                "at": _now(),
            }
        )

    def lookup_by_phone(self, raw_phone: Any) -> dict[str, Any]:
        """`GET /webhook/contact/phone-number`."""
        return copy.deepcopy(self._contact_for_phone(raw_phone))

    def webhook_contact(self, contact_id: int) -> dict[str, Any]:
        """The contact as Aloware's webhooks carry it (exactly CONTACT_KEYS)."""
        contact = self.contacts[contact_id]
        return {key: copy.deepcopy(contact[key]) for key in CONTACT_KEYS}

    # --- power-dialer lists ---------------------------------------------------------------------------

    def list_view(self, list_id: int) -> dict[str, Any]:
        found = self.lists[list_id]
        return {k: copy.deepcopy(found[k]) for k in ("id", "name", "description", "contact_ids")}

    def create_list(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /call-lists` (names are not unique in Aloware: a second call makes a second list)."""
        fields = RequestFields(data)
        name = fields.text("name", required=True, max_length=190)
        description = fields.text("description", max_length=5000)
        fields.check()
        assert name is not None
        created = self.add_list(name, description or "")
        return self.list_view(created["id"])

    def add_to_list(self, data: Mapping[str, Any]) -> int:
        """`POST /webhook/powerdialer-add-contact-to-lists`; all or nothing. Returns how many joined."""
        fields = RequestFields(data)
        list_id = fields.integer("list_id", required=True)
        contact_ids = fields.integer_list("contact_ids", required=True)
        fields.check()
        assert list_id is not None
        if list_id not in self.lists:
            raise list_id_not_found()
        if any(contact_id not in self.contacts for contact_id in contact_ids):
            raise contact_id_not_found()
        members: list[int] = self.lists[list_id]["contact_ids"]
        joined = [c for c in dict.fromkeys(contact_ids) if c not in members]
        members.extend(joined)
        return len(joined)

    def remove_from_all_lists(self, data: Mapping[str, Any]) -> list[int]:
        """`POST /webhook/powerdialer-remove-contact-from-lists`. Returns the lists it left."""
        fields = RequestFields(data)
        contact_id = fields.integer("contact_id", required=True)
        fields.check()
        if contact_id not in self.contacts:
            raise contact_id_not_found()
        left = self.lists_of(contact_id)
        for list_id in left:
            self.lists[list_id]["contact_ids"].remove(contact_id)
        return left

    def clear_list(self, data: Mapping[str, Any]) -> int:
        """`POST /webhook/powerdialer-clear-list`. Returns how many contacts were removed."""
        fields = RequestFields(data)
        list_id = fields.integer("list_id", required=True)
        fields.check()
        assert list_id is not None
        if list_id not in self.lists:
            raise list_id_not_found()
        removed = len(self.lists[list_id]["contact_ids"])
        self.lists[list_id]["contact_ids"] = []
        return removed

    # --- sequences ------------------------------------------------------------------------------------

    def _sequence_contact(self, fields: RequestFields) -> dict[str, Any]:
        source = fields.text("source", required=True)
        if source is not None and source != "phone_number":
            fields.fail("source", "The selected source is invalid.")
        if fields.is_missing("phone_number"):
            fields.fail("phone_number", "The phone number field is required when source is phone_number.")
        fields.check()
        return self._contact_for_phone(fields.data.get("phone_number"))

    def enroll(self, data: Mapping[str, Any]) -> str:
        """`POST /webhook/sequence-enroll` (source `phone_number`). A contact is in one sequence at a
        time: enrolling into another needs `force_enroll`; a DNC contact is refused."""
        fields = RequestFields(data)
        sequence_id = fields.integer("sequence_id", required=True)
        force = fields.boolean("force_enroll")
        contact = self._sequence_contact(fields)
        assert sequence_id is not None
        if sequence_id not in self.sequences:
            raise AlowareError(404, {"error": "Sequence not found."})
        return self._enroll(contact, sequence_id, force=force, via="sequence_api", strict=True)

    def _enroll(
        self, contact: dict[str, Any], sequence_id: int, *, force: bool, via: str, strict: bool
    ) -> str:
        contact_id = contact["id"]
        current = self.enrollments.get(contact_id)
        if contact["is_dnc"] or contact["is_blocked"]:
            outcome, error = "refused_dnc", "Contact is on the DNC list and cannot be enrolled."
        elif current is not None and current != sequence_id and not force:
            outcome, error = "refused_enrolled", "Contact is already enrolled in another sequence."
        elif current == sequence_id:
            outcome, error = "already_enrolled", None
        else:
            outcome, error = "enrolled", None
            self.enrollments[contact_id] = sequence_id
        self.sequence_log.append(
            {
                "action": outcome,
                "contact_id": contact_id,
                "sequence_id": sequence_id,
                "previous_sequence_id": current,
                "via": via,
                "at": _now(),
            }
        )
        if error is not None and strict:
            raise AlowareError(400, {"error": error})
        return "Contact is successfully enrolled in the sequence."

    def disenroll(self, data: Mapping[str, Any]) -> str:
        """`POST /webhook/sequence-disenroll`: leave whatever sequence the contact is in (a contact in
        none is fine)."""
        contact = self._sequence_contact(RequestFields(data))
        previous = self.enrollments.pop(contact["id"], None)
        self.sequence_log.append(
            {
                "action": "disenrolled" if previous is not None else "not_enrolled",
                "contact_id": contact["id"],
                "sequence_id": previous,
                "previous_sequence_id": previous,
                "via": "sequence_api",
                "at": _now(),
            }
        )
        return "Contact is successfully disenrolled from the sequences."

    # --- webhooks to the middleware ---------------------------------------------------------------

    def _auth_headers(self, auth: WebhookAuth | None) -> HeaderBuilder | None:
        """Basic when configured, else Bearer (Aloware's webhook settings offer one or the other)."""
        mode = auth or (
            "basic" if self.webhook_basic_auth else "bearer" if self.webhook_bearer_token else "none"
        )
        if mode == "none":
            return None
        if mode == "basic":
            if self.webhook_basic_auth is None:
                raise ValueError("webhook Basic auth is not configured")
            user, password = self.webhook_basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return lambda _body: {"authorization": f"Basic {token}"}
        if self.webhook_bearer_token is None:
            raise ValueError("webhook Bearer token is not configured")
        bearer = self.webhook_bearer_token
        return lambda _body: {"authorization": f"Bearer {bearer}"}

    async def emit(
        self, event: str, body: dict[str, Any], *, auth: WebhookAuth | None = None
    ) -> WebhookDelivery:
        """Send `{"event", "body"}` to the webhook URL now; the delivery is also kept in state."""
        if not self.webhook_url:
            raise ValueError("webhook_url is not configured")
        return await self.webhooks.send(
            self.webhook_url,
            event,
            {"event": event, "body": body},
            headers=self._auth_headers(auth),
            details={"entity_id": body.get("id")},
        )

    def build_event(
        self,
        *,
        event: str | None = None,
        example: str | None = None,
        body: Mapping[str, Any] | None = None,
        contact_id: int | None = None,
        user_id: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """(event, body) for `emit`: the example (if any), then the simulator's own contact and user
        put in place (if named), then `body`'s fields on top. KeyError for an unknown example,
        contact or user; ValueError when neither event nor example is given."""
        base: dict[str, Any] = {}
        if example is not None:
            example_event, base = aloware_example(example)
            event = event or example_event
        if not event:
            raise ValueError("give `event` or `example`")
        if contact_id is not None:
            contact = self.webhook_contact(contact_id)
            if event.lower() in CONTACT_EVENTS:
                base = {**base, **contact}
            else:
                base = {**base, "contact_id": contact_id, "contact": contact}
        if user_id is not None:
            base = {**base, "user_id": user_id, "user": dict(self.users[user_id])}
        return event, _deep_merge(base, body or {})

    def notify_contact_change(self, result: LeadResult) -> None:
        """After a Lead API write, send `Contact Created`/`Contact Updated` in the background."""
        if not (self.emit_contact_events and self.webhook_url) or result.action == "unchanged":
            return
        if result.action == "updated" and not result.changed:
            return
        event = "Contact Created" if result.action == "created" else "Contact Updated"
        self.webhooks.start(self.emit(event, self.webhook_contact(result.contact["id"])))


def _full_name(contact: Mapping[str, Any]) -> str | None:
    name = " ".join(p for p in (contact.get("first_name"), contact.get("last_name")) if p)
    return name or None


# --- HTTP ------------------------------------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    """The JSON body, or {} when it is not a JSON object (Laravel then sees no input at all)."""
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _token_matches(provided: Any, expected: str) -> bool:
    return isinstance(provided, str) and hmac.compare_digest(provided.encode(), expected.encode())


class EmitRequest(BaseModel):
    """`POST /_sim/emit`: what to send (see `AlowareSimulator.build_event`)."""

    event: str | None = None
    example: str | None = Field(None, description="Contract example name, e.g. Call_Disposed.")
    body: dict[str, Any] = Field(default_factory=dict, description="Fields set on top of the example.")
    contact_id: int | None = Field(None, description="Embed this simulator contact.")
    user_id: int | None = Field(None, description="Embed this simulator user.")
    auth: WebhookAuth | None = Field(None, description="Override the configured webhook auth.")


class SeedRequest(BaseModel):
    """`POST /_sim/seed`: users, lists, sequences and contacts to create (for `simulate aloware`)."""

    users: list[dict[str, str]] = Field(default_factory=list)
    lists: list[dict[str, str]] = Field(default_factory=list)
    sequences: list[dict[str, str]] = Field(default_factory=list)
    contacts: list[dict[str, Any]] = Field(default_factory=list)


def _api_routes(sim: AlowareSimulator) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)

    async def post_input(request: Request) -> dict[str, Any]:
        data = await _json_object(request)
        if not _token_matches(data.get("api_token"), sim.api_token):
            raise unauthenticated()
        return data

    def get_input(request: Request) -> dict[str, str]:
        query = dict(request.query_params)
        if not _token_matches(query.get("api_token"), sim.api_token):
            raise unauthenticated()
        return query

    @router.post("/webhook/forms")
    async def lead_api(request: Request) -> dict[str, str]:
        result = sim.submit_lead(await post_input(request))
        sim.notify_contact_change(result)
        return {"message": result.message}

    @router.get("/webhook/contact/phone-number")
    async def contact_lookup(request: Request) -> dict[str, Any]:
        return sim.lookup_by_phone(get_input(request).get("phone_number"))

    @router.post("/webhook/powerdialer-remove-contact-from-lists")
    async def remove_from_lists(request: Request) -> dict[str, str]:
        sim.remove_from_all_lists(await post_input(request))
        return {"message": "The contact has been removed from the Power Dialer lists."}

    @router.post("/webhook/powerdialer-clear-list")
    async def clear_list(request: Request) -> dict[str, str]:
        sim.clear_list(await post_input(request))
        return {"message": "All contacts have been removed from the Power Dialer list."}

    @router.post("/webhook/sequence-enroll")
    async def sequence_enroll(request: Request) -> dict[str, str]:
        return {"message": sim.enroll(await post_input(request))}

    @router.post("/webhook/sequence-disenroll")
    async def sequence_disenroll(request: Request) -> dict[str, str]:
        return {"message": sim.disenroll(await post_input(request))}

    @router.get("/webhook/users")
    async def users(request: Request) -> list[dict[str, Any]]:
        get_input(request)
        return [dict(u) for u in sim.users.values()]

    @router.get("/call-lists")
    async def call_lists(request: Request) -> dict[str, list[dict[str, Any]]]:
        get_input(request)
        return {"data": [sim.list_view(list_id) for list_id in sim.lists]}

    @router.post("/call-lists")
    async def create_call_list(request: Request) -> dict[str, Any]:
        return sim.create_list(await post_input(request))

    @router.post("/webhook/powerdialer-add-contact-to-lists")
    async def add_to_list(request: Request) -> dict[str, str]:
        sim.add_to_list(await post_input(request))
        return {"message": "The contacts have been added to the Power Dialer list."}

    return router


def _control_routes(app: FastAPI, sim: AlowareSimulator) -> None:
    @app.post(f"{CONTROL_PREFIX}/emit")
    async def emit(request: EmitRequest) -> Response:
        try:
            event, body = sim.build_event(
                event=request.event,
                example=request.example,
                body=request.body,
                contact_id=request.contact_id,
                user_id=request.user_id,
            )
        except KeyError as exc:
            return JSONResponse({"error": f"unknown example, contact or user: {exc}"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        try:
            delivery = await sim.emit(event, body, auth=request.auth)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(delivery.as_dict())

    @app.post(f"{CONTROL_PREFIX}/seed")
    async def seed(request: SeedRequest) -> Response:
        try:
            created = {
                "users": [sim.add_user(u["name"], u["email"]) for u in request.users],
                "lists": [sim.add_list(x["name"], x.get("description", "")) for x in request.lists],
                "sequences": [sim.add_sequence(s["name"]) for s in request.sequences],
                "contacts": [
                    sim.add_contact(c["phone_number"], **{k: v for k, v in c.items() if k != "phone_number"})
                    for c in request.contacts
                ],
            }
        except (KeyError, ValueError) as exc:
            return JSONResponse({"error": f"cannot seed: {exc}"}, status_code=422)
        return JSONResponse(created)

    @app.post(f"{CONTROL_PREFIX}/drain")
    async def drain(max_wait_seconds: float = 10.0) -> dict[str, Any]:
        drained = await sim.webhooks.drain(max_wait_seconds)
        return {"drained": drained, "pending": sim.webhooks.pending}


def create_app(
    sim: AlowareSimulator | None = None,
    *,
    api_token: str = DEFAULT_API_TOKEN,
    webhook_url: str | None = None,
    webhook_basic_auth: tuple[str, str] | None = None,
    webhook_bearer_token: str | None = None,
    emit_contact_events: bool | None = None,
) -> FastAPI:
    """The Aloware simulator as an ASGI app; `app.state.sim` is its `AlowareSimulator`.

    Webhook settings given here replace the simulator's; those left None keep what it has.
    """
    sim = sim or AlowareSimulator()
    sim.api_token = api_token
    if webhook_url is not None:
        sim.webhook_url = webhook_url
    if webhook_basic_auth is not None:
        sim.webhook_basic_auth = webhook_basic_auth
    if webhook_bearer_token is not None:
        sim.webhook_bearer_token = webhook_bearer_token
    if emit_contact_events is not None:
        sim.emit_contact_events = emit_contact_events
    app = build_simulator_app("Aloware API simulator", state=sim.snapshot, reset=sim.reset)
    app.state.sim = sim

    @app.exception_handler(AlowareError)
    async def aloware_error(_request: Request, exc: AlowareError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    app.include_router(_api_routes(sim))
    _control_routes(app, sim)
    return app
