"""Contract tests: every request the GHL connector makes validates against GHL's own OpenAPI documents.

A scripted session drives every GHL call of the sync flows (contacts, tags, notes, conversations,
messages, call log, statuses, users, custom fields, custom objects) and the OAuth token calls
through the real connector against the GHL simulator. Each request the simulator captured is then
validated, independently of the simulator, with openapi-core against the documents in
`../shared/contracts/ghl/openapi/` — made *stricter* than published, not looser:

- every request-body object refuses properties its schema does not list (GHL's API is NestJS with
  `forbidNonWhitelisted`: "property X should not exist" is a 422);
- the only correction is the one documented defect the connector relies on: `direction` of
  `POST /conversations/messages/inbound` is typed `object` but is the string `inbound`/`outbound`.

The tests skip, saying why, when the contracts folder is absent.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest

from df_middleware.config import Settings
from df_middleware.connectors.ghl import GhlClient, StaticToken
from df_middleware.connectors.ghl_models import (
    CallData,
    ContactCreate,
    ContactUpdate,
    ContactUpsert,
    ConversationMessage,
    CustomFieldValue,
    DndChannel,
    ExternalCall,
    ProviderError,
)
from df_middleware.connectors.http import ServiceClient
from df_middleware.connectors.ratelimit import SlidingWindowLimiter
from df_middleware.connectors.tokens import GhlTokenStore, TokenCipher
from df_middleware.db.session import Database
from df_middleware.simulators.common import CapturedRequest
from df_middleware.simulators.ghl import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, GhlSimulator, create_app
from df_middleware.simulators.ghl_schemas import forbid_unknown_properties
from tests.conftest import CONTRACTS
from tests.servers import serve_app

OPENAPI_DIR = CONTRACTS / "ghl" / "openapi"
HOST = "https://services.leadconnectorhq.com"
LOC = "loc_sim"
DOCUMENTS = ("contacts", "conversations", "locations", "oauth", "objects", "users")

#: The GHL endpoints the middleware needs (contracts/README.md), as (method, OpenAPI path).
REQUIRED_ENDPOINTS = {
    ("GET", "/contacts/{contactId}"),
    ("PUT", "/contacts/{contactId}"),
    ("POST", "/contacts/"),
    ("POST", "/contacts/upsert"),
    ("POST", "/contacts/search"),
    ("POST", "/contacts/{contactId}/tags"),
    ("DELETE", "/contacts/{contactId}/tags"),
    ("GET", "/contacts/{contactId}/notes"),
    ("POST", "/contacts/{contactId}/notes"),
    ("POST", "/conversations/"),
    ("GET", "/conversations/search"),
    ("POST", "/conversations/messages/inbound"),
    ("GET", "/conversations/{conversationId}/messages"),
    ("POST", "/conversations/messages/outbound"),
    ("PUT", "/conversations/messages/{messageId}/status"),
    ("GET", "/users/"),
    ("GET", "/locations/{locationId}/customFields"),
    ("POST", "/objects/{schemaKey}/records/search"),
    ("POST", "/objects/{schemaKey}/records"),
    ("PUT", "/objects/{schemaKey}/records/{id}"),
    ("POST", "/oauth/token"),
}


def strict_document(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(raw)
    schemas = doc.get("components", {}).get("schemas", {})
    if name == "conversations":
        direction = schemas["ProcessMessageBodyDto"]["properties"]["direction"]
        direction.clear()
        direction.update({"type": "string", "enum": ["inbound", "outbound"]})
    forbid_unknown_properties(schemas)
    forbid_unknown_properties(doc.get("paths", {}))
    return doc


class StrictGhlContract:
    """GHL's documents, made strict (see the module docstring), validating captured requests."""

    def __init__(self, openapi_dir: Path) -> None:
        self.raw = {name: json.loads((openapi_dir / f"{name}.json").read_text()) for name in DOCUMENTS}
        self.apis = {
            name: OpenAPI.from_dict(
                strict_document(name, raw),
                config=Config(spec_validator_cls=None),  # GHL's documents are not strictly valid
            )
            for name, raw in self.raw.items()
        }

    def check(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes | None,
        content_type: str = "application/json",
    ) -> tuple[str, list[str]]:
        """(matched OpenAPI path, problems) for one request."""
        api = self.apis[path.strip("/").split("/", 1)[0]]
        request = MockRequest(
            HOST, method.lower(), path, args=query, headers=headers, data=body, content_type=content_type
        )
        result = api.unmarshal_request(request)
        problems = []
        for error in result.errors:
            if type(error).__name__ == "SecurityValidationError":
                continue  # the bearer token is the simulator's check; the documents' scheme is odd
            cause = error.__cause__
            details = getattr(cause, "schema_errors", None)
            reason = "; ".join(e.message for e in details) if details else str(cause or error)
            problems.append(f"{type(error).__name__}: {reason}")
        return self.template_of(method, path), problems

    def template_of(self, method: str, path: str) -> str:
        """The documents' path template a concrete path matches (`/contacts/{contactId}`)."""
        name = path.strip("/").split("/", 1)[0]
        for template, item in self.raw[name]["paths"].items():
            pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
            if method.lower() in item and re.match(pattern, path):
                return str(template)
        return ""

    def check_captured(self, captured: CapturedRequest) -> tuple[str, list[str]]:
        headers = dict(captured.headers)
        # The log masks the bearer token; the documents only need the header to be present.
        return self.check(
            captured.method,
            captured.path,
            query=captured.query,
            headers=headers,
            body=captured.body or None,
            content_type=headers.get("content-type", "application/json").split(";")[0],
        )


@pytest.fixture(scope="module")
def contract() -> StrictGhlContract:
    if not OPENAPI_DIR.is_dir():
        pytest.skip(f"GHL OpenAPI documents not found at {OPENAPI_DIR} (../shared/contracts is absent)")
    return StrictGhlContract(OPENAPI_DIR)


@pytest.fixture
def ghl_app() -> Iterator[tuple[str, GhlSimulator, Any]]:
    sim = GhlSimulator(seed=11)
    app = create_app(sim, openapi_dir=OPENAPI_DIR if OPENAPI_DIR.is_dir() else None)
    with serve_app(app) as url:
        yield url, sim, app


async def _drive_every_call(url: str, sim: GhlSimulator, database_url: str, tmp_path: Path) -> None:
    """The scripted session: each GHL call of the sync flows, made by the real connector."""
    field = sim.add_custom_field(LOC, "Disposition", "contact.disposition")
    sim.add_user(LOC, "Alice Agent", "alice@example.com")
    ghl = GhlClient(
        ServiceClient("ghl", url, limiter=SlidingWindowLimiter(100, 10.0)), StaticToken(LOC, "pit-sim"), LOC
    )
    try:
        created = await ghl.create_contact(
            ContactCreate(
                locationId=LOC,
                firstName="Ann",
                phone="+19195550120",
                email="ann@example.com",
                source="Aloware",
                tags=["new lead"],
            )
        )
        await ghl.get_contact(created.id)
        await ghl.update_contact(
            created.id,
            ContactUpdate(
                lastName="Lee",
                dndSettings={"SMS": DndChannel(status="active", message="Opted out by STOP")},
                customFields=[CustomFieldValue(key="disposition", field_value="Interested")],
            ),
        )
        await ghl.upsert_contact(
            ContactUpsert(locationId=LOC, phone="+19195550121", firstName="Bo", country="US")
        )
        await ghl.find_contact(phone="+19195550121")
        await ghl.find_contact(email="ann@example.com")
        await ghl.find_contact(phone="+19195550121", email="ann@example.com")
        await ghl.search_contacts(page_limit=100)
        await ghl.add_tags(created.id, ["Call: Interested"])
        await ghl.remove_tags(created.id, ["new lead"])
        await ghl.create_note(created.id, "Outbound call\n[df:call:1]")
        await ghl.list_notes(created.id)
        conversation = await ghl.ensure_conversation(created.id)
        inbound = await ghl.add_message(
            ConversationMessage(
                conversationId=conversation.id,
                contactId=created.id,
                conversationProviderId="prov-sms",
                message="Hello",
                altId="tlx_1",
                date="2026-11-24T16:52:00.000Z",
                attachments=["https://example.com/a.jpg"],
            )
        )
        outbound = await ghl.add_message(
            ConversationMessage(
                conversationId=conversation.id,
                contactId=created.id,
                conversationProviderId="prov-sms",
                message="Hi back",
                altId="tlx_2",
                direction="outbound",
            )
        )
        await ghl.find_message(conversation.id, alt_id="tlx_1", body="Hello")
        await ghl.update_message_status(outbound.message_id, "delivered")
        await ghl.update_message_status(
            inbound.message_id,
            "failed",
            error=ProviderError(code="opted_out", type="saas", message="Recipient has opted out of SMS"),
        )
        await ghl.log_external_call(
            ExternalCall(
                conversationId=conversation.id,
                conversationProviderId="prov-call",
                date="2026-11-24T16:52:00.000Z",
                call=CallData(to="+19195550120", from_="+19195550000", status="completed"),
            )
        )
        await ghl.list_users()
        await ghl.custom_fields(refresh=True)
        assert field["id"] in {f.id for f in await ghl.custom_fields()}
        key = "custom_objects.broadcasts"
        await ghl.search_records(key, "bc-1")
        record = await ghl.create_record(key, {"broadcast_id": "bc-1", "recipients": 10})
        await ghl.update_record(key, record.id, {"recipients": 11})
    finally:
        await ghl.aclose()

    # The OAuth token calls: code exchange and refresh, through the real token store.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        ghl_base_url=url,
        ghl_client_id=DEFAULT_CLIENT_ID,
        ghl_client_secret=DEFAULT_CLIENT_SECRET,
        public_base_url="http://127.0.0.1:8000",
        data_dir=str(tmp_path),
    )
    db = Database(database_url)
    http = ServiceClient("ghl", url)
    try:
        store = GhlTokenStore(settings, db, http, TokenCipher(Fernet.generate_key().decode()))
        location = await store.exchange_code(
            sim.issue_auth_code(LOC, DEFAULT_CLIENT_ID, redirect_uri=settings.oauth_redirect_uri)
        )
        await store.refresh(location, force=True)
    finally:
        await http.aclose()
        await db.dispose()


async def test_every_connector_request_validates_against_ghl_openapi(
    contract: StrictGhlContract, ghl_app: tuple[str, GhlSimulator, Any], database_url: str, tmp_path: Path
) -> None:
    """Every request the connector made is valid for GHL's own documents (strict), and together they
    cover every endpoint the middleware needs (contracts/README.md)."""
    url, sim, app = ghl_app
    await _drive_every_call(url, sim, database_url, tmp_path)
    captured: list[CapturedRequest] = list(app.state.request_log.items)
    assert captured
    failures: list[str] = []
    covered: set[tuple[str, str]] = set()
    for request in captured:
        matched, problems = contract.check_captured(request)
        covered.add((request.method, matched))
        if problems:
            failures.append(f"{request.method} {request.path}: {problems}")
        if not 200 <= request.status < 300:
            failures.append(f"{request.method} {request.path}: simulator answered {request.status}")
    assert not failures, "\n".join(failures)
    assert covered >= REQUIRED_ENDPOINTS, f"not exercised: {sorted(REQUIRED_ENDPOINTS - covered)}"


@pytest.mark.parametrize(
    ("method", "path", "body", "why"),
    [
        ("PUT", "/contacts/abc", {"companyName": "Acme"}, "PUT /contacts does not take companyName"),
        ("PUT", "/contacts/abc", {"locationId": "x"}, "PUT /contacts does not take locationId"),
        ("POST", "/contacts/upsert", {"phone": "+19195550100"}, "upsert needs locationId"),
        (
            "POST",
            "/contacts/upsert",
            {"locationId": "x", "customFields": {"a": "b"}},
            "customFields is an array",
        ),
        (
            "POST",
            "/contacts/upsert",
            {"locationId": "x", "customFields": [{"key": "a", "field_value": "b"}]},
            "each custom field needs its id",
        ),
        ("PUT", "/conversations/messages/m1/status", {"status": "sent"}, "GHL has no 'sent' status"),
        (
            "POST",
            "/conversations/messages/inbound",
            {"type": "SMS", "conversationId": "c", "contactId": "k"},
            "conversationProviderId is required",
        ),
        (
            "POST",
            "/conversations/messages/inbound",
            {"type": "sms", "conversationId": "c", "contactId": "k", "conversationProviderId": "p"},
            "message types are upper case",
        ),
        (
            "POST",
            "/conversations/messages/outbound",
            {
                "type": "Call",
                "conversationId": "c",
                "conversationProviderId": "p",
                "call": {"status": "done"},
            },
            "call status is an enum",
        ),
        ("POST", "/contacts/abc/tags", {"tag": "x"}, "tags is required"),
    ],
)
def test_strict_contract_refuses_what_ghl_refuses(
    contract: StrictGhlContract, method: str, path: str, body: dict[str, Any], why: str
) -> None:
    """A request shape the real GHL would reject fails validation (so the test above has teeth)."""
    version = "2021-04-15" if path.startswith("/conversations") else "2021-07-28"
    _, problems = contract.check(
        method,
        path,
        query={},
        headers={"Authorization": "Bearer x", "Version": version},
        body=json.dumps(body).encode(),
    )
    assert problems, why
