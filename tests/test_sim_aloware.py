"""The Aloware simulator over real HTTP: every call of the contracts README's two Aloware tables,
their documented error shapes, the Lead API's force_update semantics, list and sequence state,
webhooks back to the service (Basic and Bearer), and fault injection.

A small receiver app stands in for the service where only the wire matters; one test sends an
emitted webhook to the real DF-Middleware ingest endpoint.
"""

from __future__ import annotations

import base64
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
from df_middleware.db.models import WebhookEvent
from df_middleware.db.session import Database
from df_middleware.simulators.aloware import CONTACT_KEYS, AlowareSimulator, create_app
from tests.conftest import TEST_SECRETS
from tests.servers import serve_app

TOKEN = "aloware-test-token"
BASIC = ("aloware", "basic-secret")
BASIC_HEADER = "Basic " + base64.b64encode(b"aloware:basic-secret").decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook endpoint: records every POST, answers 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.app = FastAPI()

        @self.app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            self.received.append(Received(f"/{path}", dict(request.headers), await request.body()))
            return JSONResponse({"status": "accepted"})


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()
    with serve_app(receiver.app) as url:
        yield receiver, url


@pytest.fixture(scope="module")
def aloware_server(receiver_server: tuple[Receiver, str]) -> Iterator[tuple[AlowareSimulator, str]]:
    sim = AlowareSimulator()
    app = create_app(
        sim, api_token=TOKEN, webhook_url=f"{receiver_server[1]}/aloware", webhook_basic_auth=BASIC
    )
    with serve_app(app) as url:
        yield sim, url


@pytest.fixture
def receiver(receiver_server: tuple[Receiver, str]) -> Receiver:
    receiver_server[0].received.clear()
    return receiver_server[0]


@pytest.fixture
def sim(aloware_server: tuple[AlowareSimulator, str], receiver: Receiver) -> AlowareSimulator:
    """The simulator, reset (state, request log, faults) and with its configuration restored."""
    simulator, url = aloware_server
    httpx.post(f"{url}/_sim/reset").raise_for_status()
    simulator.webhook_basic_auth, simulator.webhook_bearer_token = BASIC, None
    simulator.emit_contact_events = False
    return simulator


@pytest.fixture
def api(aloware_server: tuple[AlowareSimulator, str], sim: AlowareSimulator) -> Iterator[Api]:
    with httpx.Client(base_url=aloware_server[1], timeout=10) as client:
        yield Api(client)


class Api:
    """Calls the simulator the way the Aloware connector does (token in query / JSON body)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def get(self, path: str, token: str | None = TOKEN, **params: Any) -> httpx.Response:
        query = {**params, **({"api_token": token} if token is not None else {})}
        return self.client.get(f"/api/v1{path}", params=query)

    def post(self, path: str, token: str | None = TOKEN, **body: Any) -> httpx.Response:
        payload = {**body, **({"api_token": token} if token is not None else {})}
        return self.client.post(f"/api/v1{path}", json=payload)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get("/_sim/state").json()
        return result


# --- authentication -------------------------------------------------------------------------------


def test_api_token_is_required_where_aloware_reads_it(api: Api) -> None:
    unauthenticated = {"message": "Unauthenticated."}
    for answer in (
        api.get("/webhook/users", token=None),
        api.get("/webhook/users", token="wrong"),
        api.get("/call-lists", token=None),
        api.get("/webhook/contact/phone-number", token="wrong", phone_number="+19195551234"),
        api.post("/webhook/forms", token=None, phone_number="+19195551234"),
        api.post("/call-lists", token="wrong", name="x"),
        # On POST the token is a body key: in the query string it does not count.
        api.client.post(f"/api/v1/webhook/forms?api_token={TOKEN}", json={"phone_number": "+19195551234"}),
        api.client.post("/api/v1/webhook/forms", content=b"not json"),
    ):
        assert answer.status_code == 401
        assert answer.json() == unauthenticated
    assert api.state()["contacts"] == []
    assert api.get("/webhook/users").status_code == 200


# --- Lead API and lookup --------------------------------------------------------------------------


def test_lead_api_creates_and_the_lookup_finds_it_by_any_format(api: Api) -> None:
    created = api.post(
        "/webhook/forms",
        phone_number="(919) 555-1234",
        first_name="Sarah",
        last_name="Johnson",
        email="sarah@example.com",
        force_update=True,
    )
    assert created.status_code == 200
    assert list(created.json()) == ["message"]  # the Lead API does not answer the contact id

    for typed in ("+19195551234", "919-555-1234", "9195551234", "+1 (919) 555 1234"):
        found = api.get("/webhook/contact/phone-number", phone_number=typed)
        assert found.status_code == 200, typed
        contact = found.json()
        assert set(CONTACT_KEYS) <= set(contact)
        assert isinstance(contact["id"], int)
        assert contact["phone_number"] == "+19195551234"
        assert (contact["first_name"], contact["name"], contact["intake_source"]) == (
            "Sarah",
            "Sarah Johnson",
            "Lead API",
        )
        assert (contact["is_dnc"], contact["text_authorized"]) == (False, True)
    (write,) = api.state()["lead_writes"][str(contact["id"])]
    assert write["action"] == "created"
    assert "api_token" not in write["request"]


def test_lead_api_leaves_an_existing_contact_alone_without_force_update(
    api: Api, sim: AlowareSimulator
) -> None:
    api.post("/webhook/forms", phone_number="+19195551234", first_name="Sarah", city="Raleigh")
    same_phone = {"phone_number": "919.555.1234", "first_name": "Sara", "city": "Durham"}
    ignored = api.post("/webhook/forms", **same_phone)
    assert ignored.status_code == 200
    contact = api.get("/webhook/contact/phone-number", phone_number="+19195551234").json()
    assert (contact["first_name"], contact["city"]) == ("Sarah", "Raleigh")

    updated = api.post("/webhook/forms", **same_phone, force_update="true", email="", csf1=12)
    assert updated.status_code == 200
    contact = api.get("/webhook/contact/phone-number", phone_number="+19195551234").json()
    assert (contact["first_name"], contact["city"], contact["csf1"]) == ("Sara", "Durham", "12")
    assert contact["name"] == "Sara"
    assert contact["email"] is None  # an empty value never clears or sets a field

    again = api.post("/webhook/forms", **same_phone, force_update=1)
    assert again.status_code == 200
    writes = api.state()["lead_writes"][str(contact["id"])]
    assert [(w["action"], w["force_update"]) for w in writes] == [
        ("created", False),
        ("unchanged", False),
        ("updated", True),
        ("updated", True),
    ]
    assert set(writes[2]["changed"]) == {"first_name", "name", "city", "csf1"}
    assert writes[3]["changed"] == []  # same values: nothing changed
    assert len(sim.contacts) == 1


def test_lead_api_links_users_sequences_and_tags(api: Api, sim: AlowareSimulator) -> None:
    agent = sim.add_user("Chris Agent", "chris@example.com")
    sequence = sim.add_sequence("New leads")
    answer = api.post(
        "/webhook/forms",
        phone_number="+19195551234",
        user_id=str(agent["id"]),
        sequence_id=sequence["id"],
        tag_id="17",
        add_to_powerdialer=True,
    )
    assert answer.status_code == 200
    contact = sim.contact_by_phone("+19195551234")
    assert contact is not None
    assert (contact["user_id"], contact["tag_ids"]) == (agent["id"], [17])
    state = api.state()
    assert state["enrollments"] == {str(contact["id"]): sequence["id"]}
    assert state["lead_writes"][str(contact["id"])][0]["add_to_powerdialer"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone_number": "+19195551234", "user_id": "abc"}, "user_id"),
        ({"phone_number": "+19195551234", "user_id": 999}, "user_id"),
        ({"phone_number": "+19195551234", "sequence_id": 1}, "sequence_id"),
        ({"phone_number": "+19195551234", "force_update": "maybe"}, "force_update"),
        ({"phone_number": "+19195551234", "first_name": {"a": 1}}, "first_name"),
    ],
)
def test_lead_api_validation_errors_are_422(api: Api, body: dict[str, Any], field: str) -> None:
    answer = api.post("/webhook/forms", **body)
    assert answer.status_code == 422
    assert set(answer.json()) == {"message", "errors"}
    assert field in answer.json()["errors"]
    assert api.state()["contacts"] == []


def test_invalid_phone_is_400_and_unknown_phone_is_404(api: Api) -> None:
    for bad in ("12345", "8181234567", ""):
        created = api.post("/webhook/forms", phone_number=bad, first_name="X")
        assert (created.status_code, created.json()) == (400, {"error": "Phone number is empty or invalid."})
        lookup = api.get("/webhook/contact/phone-number", phone_number=bad)
        assert lookup.status_code == 400
        assert set(lookup.json()) == {"error"}
    assert api.post("/webhook/forms").status_code == 400  # no phone at all
    missing = api.get("/webhook/contact/phone-number", phone_number="+12025550123")
    assert (missing.status_code, missing.json()) == (404, {"error": "Contact not found."})


# --- users and power-dialer lists -----------------------------------------------------------------


def test_users_and_call_lists(api: Api, sim: AlowareSimulator) -> None:
    chris = sim.add_user("Chris Agent", "chris@example.com")
    sim.add_user("Dana Agent", "dana@example.com")
    users = api.get("/webhook/users").json()
    assert users[0] == chris
    assert [set(u) for u in users] == [{"id", "name", "email"}] * 2

    assert api.get("/call-lists").json() == {"data": []}
    created = api.post("/call-lists", name="DF_CHRIS_NEW_LEADS", description="new leads")
    assert created.status_code == 200
    call_list = created.json()
    assert isinstance(call_list["id"], int)
    assert call_list == {
        "id": call_list["id"],
        "name": "DF_CHRIS_NEW_LEADS",
        "description": "new leads",
        "contact_ids": [],
    }
    assert api.get("/call-lists").json() == {"data": [call_list]}
    refused = api.post("/call-lists", description="no name")
    assert refused.status_code == 422
    assert refused.json()["errors"] == {"name": ["The name field is required."]}


def test_list_add_remove_and_clear(api: Api, sim: AlowareSimulator) -> None:
    first = sim.add_contact("+19195551234", first_name="Sarah")
    second = sim.add_contact("(919) 555-2222")
    new_leads, callbacks = sim.add_list("DF_CHRIS_NEW_LEADS"), sim.add_list("DF_CHRIS_CALLBACKS")

    added = api.post(
        "/webhook/powerdialer-add-contact-to-lists",
        list_id=str(new_leads["id"]),
        contact_ids=[first["id"], str(second["id"]), first["id"]],
    )
    assert added.status_code == 200
    assert set(added.json()) == {"message"}
    api.post("/webhook/powerdialer-add-contact-to-lists", list_id=callbacks["id"], contact_ids=[first["id"]])
    lists = {x["id"]: x for x in api.get("/call-lists").json()["data"]}
    assert lists[new_leads["id"]]["contact_ids"] == [first["id"], second["id"]]
    assert lists[callbacks["id"]]["contact_ids"] == [first["id"]]

    unknown_contact = api.post(
        "/webhook/powerdialer-add-contact-to-lists", list_id=new_leads["id"], contact_ids=[99]
    )
    assert unknown_contact.status_code == 404
    unknown_list = api.post("/webhook/powerdialer-add-contact-to-lists", list_id=1, contact_ids=[first["id"]])
    assert unknown_list.status_code == 404
    invalid = api.post("/webhook/powerdialer-add-contact-to-lists", list_id="x", contact_ids="1,2")
    assert invalid.status_code == 422
    assert set(invalid.json()["errors"]) == {"list_id", "contact_ids"}

    removed = api.post("/webhook/powerdialer-remove-contact-from-lists", contact_id=str(first["id"]))
    assert removed.json() == {"message": "The contact has been removed from the Power Dialer lists."}
    assert sim.lists_of(first["id"]) == []
    assert sim.lists_of(second["id"]) == [new_leads["id"]]
    missing = api.post("/webhook/powerdialer-remove-contact-from-lists", contact_id=123)
    assert (missing.status_code, missing.json()) == (
        404,
        {"message": "The requested contact id does not exist."},
    )
    assert api.post("/webhook/powerdialer-remove-contact-from-lists").status_code == 422

    cleared = api.post("/webhook/powerdialer-clear-list", list_id=new_leads["id"])
    assert cleared.status_code == 200
    assert set(cleared.json()) == {"message"}
    assert sim.lists[new_leads["id"]]["contact_ids"] == []
    assert api.post("/webhook/powerdialer-clear-list", list_id=4).status_code == 404


# --- sequences ------------------------------------------------------------------------------------


def test_sequence_enroll_and_disenroll(api: Api, sim: AlowareSimulator) -> None:
    contact = sim.add_contact("+19195551234")
    welcome, nurture = sim.add_sequence("Welcome"), sim.add_sequence("Nurture")

    def enroll(sequence_id: Any, **extra: Any) -> httpx.Response:
        return api.post(
            "/webhook/sequence-enroll",
            sequence_id=sequence_id,
            source="phone_number",
            phone_number="(919) 555-1234",
            **extra,
        )

    ok = enroll(str(welcome["id"]), force_enroll=False)
    assert ok.json() == {"message": "Contact is successfully enrolled in the sequence."}
    assert enroll(welcome["id"]).status_code == 200  # already there: harmless
    conflict = enroll(nurture["id"])
    assert conflict.status_code == 400
    assert set(conflict.json()) == {"error"}
    assert sim.enrollments == {contact["id"]: welcome["id"]}
    assert enroll(nurture["id"], force_enroll=True).status_code == 200
    assert sim.enrollments == {contact["id"]: nurture["id"]}

    out = api.post("/webhook/sequence-disenroll", source="phone_number", phone_number="+19195551234")
    assert out.status_code == 200
    assert set(out.json()) == {"message"}
    assert sim.enrollments == {}
    again = api.post("/webhook/sequence-disenroll", source="phone_number", phone_number="+19195551234")
    assert again.status_code == 200
    assert [e["action"] for e in api.state()["sequence_log"]] == [
        "enrolled",
        "already_enrolled",
        "refused_enrolled",
        "enrolled",
        "disenrolled",
        "not_enrolled",
    ]

    assert enroll(1).status_code == 404  # unknown sequence
    unknown_contact = api.post(
        "/webhook/sequence-enroll",
        sequence_id=welcome["id"],
        source="phone_number",
        phone_number="+12025550123",
    )
    assert (unknown_contact.status_code, unknown_contact.json()) == (404, {"error": "Contact not found."})
    wrong_source = api.post("/webhook/sequence-enroll", sequence_id=welcome["id"], source="hubspot", id=3)
    assert wrong_source.status_code == 422
    assert set(wrong_source.json()["errors"]) == {"source", "phone_number"}
    bad_phone = api.post("/webhook/sequence-disenroll", source="phone_number", phone_number="555")
    assert bad_phone.status_code == 400

    sim.update_contact(contact["id"], is_dnc=True)
    refused = enroll(welcome["id"])
    assert refused.status_code == 400
    assert sim.enrollments == {}


# --- webhooks to the service ----------------------------------------------------------------------


def test_emit_example_with_simulator_contact_and_basic_auth(
    api: Api, sim: AlowareSimulator, receiver: Receiver
) -> None:
    contact = sim.add_contact("+19195552222", first_name="Dana", last_name="Lee")
    agent = sim.add_user("Chris Agent", "chris@example.com")
    answer = api.client.post(
        "/_sim/emit",
        json={
            "example": "Call_Disposed",
            "contact_id": contact["id"],
            "user_id": agent["id"],
            "body": {"disposition_status": "Interested", "duration": 42},
        },
    )
    assert answer.status_code == 200
    assert (answer.json()["status_code"], answer.json()["event"]) == (200, "Call Disposed")
    (received,) = receiver.received
    assert received.path == "/aloware"
    assert received.headers["authorization"] == BASIC_HEADER
    payload = received.json()
    assert payload["event"] == "Call Disposed"
    body = payload["body"]
    assert body["contact"] == sim.webhook_contact(contact["id"])
    assert list(body["contact"]) == list(CONTACT_KEYS)
    assert (body["contact_id"], body["user_id"], body["user"]) == (contact["id"], agent["id"], agent)
    assert (body["disposition_status"], body["duration"], body["talk_time"]) == ("Interested", 42, 161)
    deliveries = api.state()["webhook_deliveries"]
    assert [(d["event"], d["status_code"]) for d in deliveries] == [("Call Disposed", 200)]


def test_emit_with_bearer_auth_and_a_free_form_body(
    api: Api, sim: AlowareSimulator, receiver: Receiver
) -> None:
    sim.webhook_basic_auth, sim.webhook_bearer_token = None, "bearer-xyz"
    body = {"id": 5, "phone_number": "+19195551234", "is_dnc": True}
    answer = api.client.post("/_sim/emit", json={"event": "Contact DNC Updated", "body": body})
    assert answer.status_code == 200
    (received,) = receiver.received
    assert received.headers["authorization"] == "Bearer bearer-xyz"
    assert received.json() == {"event": "Contact DNC Updated", "body": body}

    assert api.client.post("/_sim/emit", json={"example": "No_Such_Event"}).status_code == 404
    assert api.client.post("/_sim/emit", json={"body": {}}).status_code == 422
    assert api.client.post("/_sim/emit", json={"event": "x", "auth": "basic"}).status_code == 409
    unauthenticated = api.client.post("/_sim/emit", json={"example": "Contact_Created", "auth": "none"})
    assert unauthenticated.status_code == 200
    assert "authorization" not in receiver.received[-1].headers


def test_lead_api_writes_send_contact_events_when_enabled(
    api: Api, sim: AlowareSimulator, receiver: Receiver
) -> None:
    sim.emit_contact_events = True
    api.post("/webhook/forms", phone_number="+19195551234", first_name="Sarah")
    api.post("/webhook/forms", phone_number="+19195551234", first_name="Sara")  # unchanged: no event
    api.post("/webhook/forms", phone_number="+19195551234", first_name="Sara", force_update=True)
    api.post("/webhook/forms", phone_number="+19195551234", first_name="Sara", force_update=True)  # same
    drained = api.client.post("/_sim/drain", params={"max_wait_seconds": 5}).json()
    assert drained == {"drained": True, "pending": 0}
    events = [r.json() for r in receiver.received]
    assert [e["event"] for e in events] == ["Contact Created", "Contact Updated"]
    assert [e["body"]["first_name"] for e in events] == ["Sarah", "Sara"]
    assert list(events[0]["body"]) == list(CONTACT_KEYS)


def test_seed_route(api: Api) -> None:
    seeded = api.client.post(
        "/_sim/seed",
        json={
            "users": [{"name": "Chris", "email": "chris@example.com"}],
            "lists": [{"name": "DF_CHRIS_NEW_LEADS"}],
            "sequences": [{"name": "Welcome"}],
            "contacts": [{"phone_number": "9195551234", "first_name": "Sarah"}],
        },
    )
    assert seeded.status_code == 200
    assert seeded.json()["contacts"][0]["phone_number"] == "+19195551234"
    state = api.state()
    assert (len(state["users"]), len(state["lists"]), len(state["sequences"]), len(state["contacts"])) == (
        1,
        1,
        1,
        1,
    )
    refused = api.client.post("/_sim/seed", json={"contacts": [{"phone_number": "123"}]})
    assert refused.status_code == 422


# --- faults ---------------------------------------------------------------------------------------


def test_fault_injection(api: Api) -> None:
    assert api.client.put("/_sim/faults", json={"error_rate": 1.0}).status_code == 200
    assert api.post("/webhook/forms", phone_number="+19195551234").status_code == 503
    assert api.state()["contacts"] == []  # the fault answered before the route ran
    api.client.put("/_sim/faults", json={"rate_limit_rate": 1.0, "retry_after_seconds": 3})
    limited = api.get("/call-lists")
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    api.client.put("/_sim/faults", json={"error_rate": 0.5, "seed": 7})
    first_run = [api.get("/webhook/users").status_code for _ in range(12)]
    api.client.put("/_sim/faults", json={"error_rate": 0.5, "seed": 7})
    assert [api.get("/webhook/users").status_code for _ in range(12)] == first_run
    assert set(first_run) == {200, 503}
    requests = api.client.get("/_sim/requests").json()
    assert requests[0]["body"]["phone_number"] == "+19195551234"
    api.client.post("/_sim/reset")
    assert api.post("/webhook/forms", phone_number="+19195551234").status_code == 200
    assert len(api.client.get("/_sim/requests").json()) == 1


# --- against the real service ---------------------------------------------------------------------


async def test_emitted_webhook_is_accepted_by_the_real_aloware_endpoint(
    make_settings: Callable[..., Settings], db: Database
) -> None:
    """An emitted `Call Disposed` passes the service's Aloware auth (SPEC §3.3) and is stored."""
    service = create_service_app(make_settings(auto_migrate=False), run_worker=False)
    with serve_app(service) as service_url:
        sim = AlowareSimulator()
        contact = sim.add_contact("+19195551234", first_name="Sarah")
        basic = (TEST_SECRETS["aloware_webhook_basic_user"], TEST_SECRETS["aloware_webhook_basic_pass"])
        app = create_app(sim, webhook_url=f"{service_url}/api/webhooks/aloware", webhook_basic_auth=basic)
        with serve_app(app) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                answer = await client.post(
                    "/_sim/emit", json={"example": "Call_Disposed", "contact_id": contact["id"]}
                )
                wrong = await client.post("/_sim/emit", json={"example": "Contact_Created", "auth": "none"})
    assert answer.json()["status_code"] == 200
    assert wrong.json()["status_code"] == 401
    async with db.session() as session:
        (row,) = (await session.scalars(select(WebhookEvent))).all()
    assert (row.source, row.event_type, row.entity_type, row.entity_id) == (
        "aloware",
        "Call Disposed",
        "call",
        "9912345",
    )
    assert row.payload_json["body"]["contact"]["id"] == contact["id"]
