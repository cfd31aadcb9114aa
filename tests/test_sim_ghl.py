"""The GHL simulator, used over real HTTP as the connector and end-to-end tests use it (SPEC §9).

What the middleware's correctness depends on is checked here against the simulator's answers and
its `/_sim/state`: authentication and the Version header, contract validation (GHL's OpenAPI
documents and the built-in models), duplicate refusal and upsert matching, tags, notes,
conversations and message statuses, search paging, custom object records, OAuth with single-use
refresh tokens, the per-location rate limit, fault injection, and signed webhooks.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI, Request

from df_middleware.simulators.ghl import (
    DEFAULT_LOCATION_ID,
    DEFAULT_TOKEN,
    GhlSimulator,
    LocationRateLimiter,
    create_app,
)
from tests.servers import serve_app

LOC = DEFAULT_LOCATION_ID
CONTACTS_VERSION = "2021-07-28"
CONVERSATIONS_VERSION = "2021-04-15"


def api_headers(token: str = DEFAULT_TOKEN, version: str | None = CONTACTS_VERSION) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if version is not None:
        headers["Version"] = version
    return headers


CONV = api_headers(version=CONVERSATIONS_VERSION)


class Ghl:
    """A served simulator: its base URL, its state object and a client with the default token."""

    def __init__(self, url: str, sim: GhlSimulator) -> None:
        self.url = url
        self.sim = sim
        self.http = httpx.Client(base_url=url, headers=api_headers(), timeout=10)

    def state(self) -> dict[str, Any]:
        response = self.http.get("/_sim/state")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def create_contact(self, **fields: Any) -> dict[str, Any]:
        response = self.http.post("/contacts/", json={"locationId": LOC, **fields})
        assert response.status_code == 201, response.text
        contact: dict[str, Any] = response.json()["contact"]
        return contact


@pytest.fixture(params=["models", "openapi"])
def ghl(request: pytest.FixtureRequest) -> Iterator[Ghl]:
    """A served simulator, validating with its built-in models or with GHL's OpenAPI documents
    (openapi-core); every API test runs with both, so neither refuses what GHL accepts."""
    openapi_dir: Path | None = None
    if request.param == "openapi":
        contracts: Path = request.getfixturevalue("contracts")
        openapi_dir = contracts / "ghl" / "openapi"
        if not openapi_dir.exists():
            pytest.skip(f"GHL OpenAPI documents not found at {openapi_dir}")
    sim = GhlSimulator(seed=7)
    with serve_app(create_app(sim, openapi_dir=openapi_dir)) as url:
        client = Ghl(url, sim)
        yield client
        client.http.close()


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# --- gateway -------------------------------------------------------------------------------------


def test_token_version_and_location_are_enforced(ghl: Ghl) -> None:
    contact = ghl.create_contact(firstName="Ann", phone="+19195550101")
    path = f"/contacts/{contact['id']}"
    no_token = httpx.get(f"{ghl.url}{path}", headers={"Version": CONTACTS_VERSION})
    assert no_token.status_code == 401
    assert no_token.json()["message"] == "Invalid JWT"
    assert httpx.get(f"{ghl.url}{path}", headers=api_headers("pit-wrong")).status_code == 401

    missing = httpx.get(f"{ghl.url}{path}", headers=api_headers(version=None))
    assert missing.status_code == 400
    assert "Version" in missing.json()["message"]
    # The conversations API has its own, older version; each API refuses the other's.
    assert (
        httpx.get(f"{ghl.url}{path}", headers=api_headers(version=CONVERSATIONS_VERSION)).status_code == 400
    )
    search = f"{ghl.url}/conversations/search?locationId={LOC}"
    assert httpx.get(search, headers=api_headers(version=CONTACTS_VERSION)).status_code == 400
    assert httpx.get(search, headers=CONV).status_code == 200

    other_token = ghl.sim.add_location("loc_other")
    # A token serves its own location only: naming or touching another one is 403.
    assert httpx.get(f"{ghl.url}{path}", headers=api_headers(other_token)).status_code == 403
    foreign = ghl.http.post("/contacts/", json={"locationId": "loc_other", "firstName": "Bob"})
    assert foreign.status_code == 403
    assert ghl.http.get(path).json()["contact"]["firstName"] == "Ann"
    assert ghl.http.get("/contacts/nope").status_code == 404


# --- contracts -----------------------------------------------------------------------------------


def test_requests_ghl_would_refuse_are_refused(ghl: Ghl) -> None:
    bad_fields = ghl.http.post("/contacts/", json={"locationId": LOC, "customFields": {"id": "x"}})
    assert bad_fields.status_code == 422
    assert any("customFields" in line for line in bad_fields.json()["message"])

    no_location = ghl.http.post("/contacts/upsert", json={"phone": "+19195550102"})
    assert no_location.status_code == 422
    assert "locationId" in str(no_location.json())

    # GHL validates with forbidNonWhitelisted: a property the endpoint does not know is a 422.
    created = ghl.http.post("/contacts/", json={"locationId": LOC, "phone": "+19195550199"})
    unknown = ghl.http.put(f"/contacts/{created.json()['contact']['id']}", json={"locationId": LOC})
    assert unknown.status_code == 422
    assert "locationId" in str(unknown.json())

    wrong_types = ghl.http.post("/contacts/", json={"locationId": LOC, "firstName": 5, "dnd": "true"})
    assert wrong_types.status_code == 422
    assert {v["field"] for v in wrong_types.json()["violations"]} >= {"firstName", "dnd"}

    assert (
        ghl.http.post(
            "/contacts/", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert ghl.http.get("/users/").status_code == 422  # locationId is a required query parameter
    # `null` only where GHL documents a field as nullable.
    assert ghl.http.post("/contacts/", json={"locationId": LOC, "tags": None}).status_code == 422
    assert ghl.http.post("/contacts/", json={"locationId": LOC, "email": None}).status_code == 201

    # What GHL accepts passes, including the forms its documents get wrong.
    field = ghl.sim.add_custom_field(LOC, "Agent", "assigned_agent")
    ok = ghl.http.post(
        "/contacts/",
        json={
            "locationId": LOC,
            "phone": "+19195550103",
            "dateOfBirth": "1990-09-25",
            "customFields": [
                {"key": "assigned_agent", "field_value": "alice"},
                {"id": field["id"], "field_value": 3},
            ],
        },
    )
    assert ok.status_code == 201, ok.text

    contact = ok.json()["contact"]
    conversation = ghl.http.post(
        "/conversations/", json={"locationId": LOC, "contactId": contact["id"]}, headers=CONV
    )
    assert conversation.status_code == 201
    inbound = {
        "type": "SMS",
        "contactId": contact["id"],
        "conversationId": conversation.json()["conversation"]["id"],
        "conversationProviderId": "prov_1",
        "message": "hello",
        "date": "2025-01-28T14:35:00Z",
        "direction": "outbound",
    }
    assert ghl.http.post("/conversations/messages/inbound", json=inbound, headers=CONV).status_code == 200
    bad_date = ghl.http.post(
        "/conversations/messages/inbound", json={**inbound, "date": "yesterday"}, headers=CONV
    )
    assert bad_date.status_code == 422
    missing_provider = {k: v for k, v in inbound.items() if k != "conversationProviderId"}
    assert (
        ghl.http.post("/conversations/messages/inbound", json=missing_provider, headers=CONV).status_code
        == 422
    )
    bad_grant = httpx.post(f"{ghl.url}/oauth/token", data={"grant_type": "password", "client_id": "x"})
    assert bad_grant.status_code == 422


# --- contacts ------------------------------------------------------------------------------------


def test_duplicates_are_refused_and_upsert_matches_by_normalised_phone_and_email(ghl: Ghl) -> None:
    first = ghl.create_contact(
        firstName="Ann", lastName="Lee", phone="(919) 555-0110", email="Ann@Example.com"
    )
    assert first["phone"] == "+19195550110"

    refused = ghl.http.post("/contacts/", json={"locationId": LOC, "phone": "919.555.0110"})
    assert refused.status_code == 400
    body = refused.json()
    assert body["message"] == "This location does not allow duplicated contacts."
    assert body["meta"] == {"contactName": "Ann Lee", "contactId": first["id"], "matchingField": "phone"}
    by_email = ghl.http.post("/contacts/", json={"locationId": LOC, "email": "ann@example.COM"})
    assert by_email.json()["meta"]["matchingField"] == "email"

    upsert = ghl.http.post(
        "/contacts/upsert",
        json={"locationId": LOC, "phone": "+1 919 555 0110", "city": "Raleigh", "tags": ["a"]},
    )
    assert upsert.status_code == 200
    assert upsert.json()["new"] is False
    assert upsert.json()["contact"]["id"] == first["id"]
    assert upsert.json()["contact"]["city"] == "Raleigh"
    created = ghl.http.post("/contacts/upsert", json={"locationId": LOC, "phone": "+19195550111"}).json()
    assert created["new"] is True

    state = ghl.state()
    assert len([c for c in state["contacts"] if not c["deleted"]]) == 2
    stored = next(c for c in state["contacts"] if c["id"] == first["id"])
    assert stored["dateUpdated"] > stored["dateAdded"]

    token = ghl.sim.add_location("loc_dupes", allow_duplicate_contacts=True)
    for _ in range(2):
        again = httpx.post(
            f"{ghl.url}/contacts/",
            json={"locationId": "loc_dupes", "phone": "9195550110"},
            headers=api_headers(token),
        )
        assert again.status_code == 201


def test_tags_notes_custom_fields_and_dnd(ghl: Ghl) -> None:
    field = ghl.sim.add_custom_field(LOC, "Assigned agent", "assignedAgent")
    contact = ghl.create_contact(firstName="Cy", phone="+19195550120", tags=["Lead"])
    cid = contact["id"]

    added = ghl.http.post(f"/contacts/{cid}/tags", json={"tags": ["HOT", "lead", "Call: Answered"]})
    assert added.status_code == 201
    assert added.json()["tags"] == ["lead", "hot", "call: answered"]  # GHL keeps tags in lower case
    removed = ghl.http.request("DELETE", f"/contacts/{cid}/tags", json={"tags": ["hot"]})
    assert removed.json()["tags"] == ["lead", "call: answered"]

    updated = ghl.http.put(
        f"/contacts/{cid}",
        json={
            "tags": ["Only"],
            "customFields": [{"key": "contact.assignedAgent", "field_value": "alice"}],
            "dndSettings": {"SMS": {"status": "active", "message": "STOP"}},
        },
    )
    assert updated.status_code == 200
    contact = ghl.http.get(f"/contacts/{cid}").json()["contact"]
    assert contact["tags"] == ["only"]  # PUT replaces the list, as GHL does
    assert contact["customFields"] == [{"id": field["id"], "value": "alice"}]
    assert contact["dndSettings"]["SMS"]["status"] == "active"
    fields = ghl.http.get(f"/locations/{LOC}/customFields", params={"model": "contact"}).json()
    assert fields["customFields"][0]["fieldKey"] == "contact.assignedAgent"

    for text in ("first call [df:k1]", "second call [df:k2]"):
        note = ghl.http.post(f"/contacts/{cid}/notes", json={"body": text})
        assert note.status_code == 201
        assert note.json()["note"]["body"] == text
    notes = ghl.http.get(f"/contacts/{cid}/notes").json()["notes"]
    assert [n["body"] for n in notes] == ["second call [df:k2]", "first call [df:k1]"]
    assert ghl.http.post(f"/contacts/{cid}/notes", json={"title": "no body"}).status_code == 422

    user = ghl.sim.add_user(LOC, "Alice Agent", "alice@example.com")
    users = ghl.http.get("/users/", params={"locationId": LOC}).json()["users"]
    assert [u["email"] for u in users] == [user["email"]]


def test_search_pages_by_date_updated_with_a_stable_cursor(ghl: Ghl) -> None:
    ids = [ghl.create_contact(phone=f"+1919555{n:04d}", email=f"p{n}@example.com")["id"] for n in range(7)]
    # Several contacts changed in the same millisecond: only the id tie-break keeps paging exact.
    same_moment = ghl.sim.contacts[ids[0]].updated_ms
    for cid in ids[:4]:
        ghl.sim.contacts[cid].updated_ms = same_moment

    def page(after: list[Any] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "locationId": LOC,
            "pageLimit": 3,
            "sort": [{"field": "dateUpdated", "direction": "asc"}],
        }
        if after:
            body["searchAfter"] = after
        response = ghl.http.post("/contacts/search", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    seen: list[dict[str, Any]] = []
    after: list[Any] | None = None
    while True:
        result = page(after)
        assert result["total"] == 7
        if not result["contacts"]:
            break
        seen.extend(result["contacts"])
        after = result["contacts"][-1]["searchAfter"]
    keys = [(c["dateUpdated"], c["id"]) for c in seen]
    assert keys == sorted(keys)
    assert sorted(c["id"] for c in seen) == sorted(ids)

    # The reconcile pattern: changes after a cursor come back after it.
    ghl.http.put(f"/contacts/{ids[0]}", json={"city": "Durham"})
    more = page(after)["contacts"]
    assert [c["id"] for c in more] == [ids[0]]

    by_phone = ghl.http.post(
        "/contacts/search",
        json={
            "locationId": LOC,
            "pageLimit": 10,
            "filters": [{"field": "phone", "operator": "eq", "value": "(919) 555-0003"}],
        },
    ).json()
    assert [c["id"] for c in by_phone["contacts"]] == [ids[3]]
    by_email = ghl.http.post(
        "/contacts/search",
        json={
            "locationId": LOC,
            "pageLimit": 10,
            "filters": [{"field": "email", "operator": "eq", "value": "P5@EXAMPLE.com"}],
        },
    ).json()
    assert [c["id"] for c in by_email["contacts"]] == [ids[5]]
    assert (
        ghl.http.post("/contacts/search", json={"locationId": LOC}).status_code == 422
    )  # pageLimit is required
    assert ghl.http.post("/contacts/search", json={"locationId": LOC, "pageLimit": 501}).status_code == 422


# --- conversations -------------------------------------------------------------------------------


def test_conversation_messages_and_status_rules(ghl: Ghl) -> None:
    contact = ghl.create_contact(firstName="Dee", phone="+19195550130")
    created = ghl.http.post(
        "/conversations/", json={"locationId": LOC, "contactId": contact["id"]}, headers=CONV
    )
    assert created.status_code == 201
    assert created.json()["success"] is True
    conversation = created.json()["conversation"]
    found = ghl.http.get(
        "/conversations/search", params={"locationId": LOC, "contactId": contact["id"]}, headers=CONV
    )
    assert [c["id"] for c in found.json()["conversations"]] == [conversation["id"]]
    assert found.json()["total"] == 1

    inbound = ghl.http.post(
        "/conversations/messages/inbound",
        headers=CONV,
        json={
            "type": "SMS",
            "contactId": contact["id"],
            "conversationId": conversation["id"],
            "conversationProviderId": "prov_sms",
            "message": "STOP",
            "direction": "inbound",
            "altId": "tlx_1",
            "date": "2025-01-28T14:35:00Z",
        },
    )
    assert inbound.status_code == 200
    added = inbound.json()
    assert added["success"] is True
    assert added["conversationId"] == conversation["id"]
    message_id = added["messageId"]

    status_url = f"/conversations/messages/{message_id}/status"
    assert ghl.http.put(status_url, json={"status": "sent"}, headers=CONV).status_code == 422
    assert ghl.http.put(status_url, json={"status": "failed"}, headers=CONV).status_code == 422
    incomplete = {"status": "failed", "error": {"code": "30007"}}
    assert ghl.http.put(status_url, json=incomplete, headers=CONV).status_code == 422
    failed = {"status": "failed", "error": {"code": "30007", "type": "saas", "message": "Carrier blocked"}}
    answer = ghl.http.put(status_url, json=failed, headers=CONV)
    assert answer.status_code == 200
    assert answer.json()["status"] == "failed"
    assert (
        ghl.http.put(
            "/conversations/messages/unknown/status", json={"status": "read"}, headers=CONV
        ).status_code
        == 404
    )

    call = ghl.http.post(
        "/conversations/messages/outbound",
        headers=CONV,
        json={
            "type": "Call",
            "conversationId": conversation["id"],
            "conversationProviderId": "prov_call",
            "date": "2025-01-28T15:00:00Z",
            "call": {"to": "+19195550130", "from": "+19195550000", "status": "completed"},
        },
    )
    assert call.status_code == 200

    messages = {m["id"]: m for m in ghl.state()["messages"]}
    assert messages[message_id]["direction"] == "inbound"
    assert messages[message_id]["altId"] == "tlx_1"
    assert messages[message_id]["status"] == "failed"
    assert messages[message_id]["error"]["message"] == "Carrier blocked"
    assert messages[call.json()["messageId"]]["call"]["status"] == "completed"
    assert messages[call.json()["messageId"]]["type"] == "Call"


# --- custom objects ------------------------------------------------------------------------------


def test_custom_object_records_search_create_update(ghl: Ghl) -> None:
    key = "custom_objects.broadcasts"
    search = {"locationId": LOC, "page": 1, "pageLimit": 10, "query": "bc-42", "searchAfter": []}
    assert ghl.http.post(f"/objects/{key}/records/search", json=search).json() == {"records": [], "total": 0}

    created = ghl.http.post(
        f"/objects/{key}/records",
        json={"locationId": LOC, "properties": {"broadcast_id": "bc-42", "sent": 10}},
    )
    assert created.status_code == 201
    record = created.json()["record"]
    assert record["properties"] == {"broadcast_id": "bc-42", "sent": 10}
    ghl.http.post(f"/objects/{key}/records", json={"locationId": LOC, "properties": {"broadcast_id": "bc-7"}})

    found = ghl.http.post(f"/objects/{key}/records/search", json=search).json()
    assert [r["id"] for r in found["records"]] == [record["id"]]

    url = f"/objects/{key}/records/{record['id']}"
    assert (
        ghl.http.put(url, json={"properties": {"sent": 12}}).status_code == 422
    )  # locationId query required
    updated = ghl.http.put(
        url, params={"locationId": LOC}, json={"properties": {"sent": 12, "delivered": 11}}
    )
    assert updated.status_code == 200
    assert updated.json()["record"]["properties"] == {"broadcast_id": "bc-42", "sent": 12, "delivered": 11}
    assert ghl.http.post(f"/objects/{key}/records", json={"properties": {}}).status_code == 422


# --- OAuth ---------------------------------------------------------------------------------------


def test_oauth_code_exchange_and_single_use_refresh(ghl: Ghl) -> None:
    ghl.sim.add_oauth_client("app-1", "s3cret")
    code = ghl.sim.issue_auth_code(LOC, "app-1")
    form = {"client_id": "app-1", "client_secret": "s3cret", "user_type": "Location"}
    exchanged = httpx.post(
        f"{ghl.url}/oauth/token",
        data={**form, "grant_type": "authorization_code", "code": code, "redirect_uri": "https://app/cb"},
    )
    assert exchanged.status_code == 200, exchanged.text
    tokens = exchanged.json()
    assert {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "userType",
        "locationId",
        "companyId",
        "userId",
    } <= set(tokens)
    assert tokens["locationId"] == LOC
    assert tokens["userType"] == "Location"
    assert (
        ghl.http.get(
            "/users/", params={"locationId": LOC}, headers=api_headers(tokens["access_token"])
        ).status_code
        == 200
    )
    reused_code = httpx.post(
        f"{ghl.url}/oauth/token", data={**form, "grant_type": "authorization_code", "code": code}
    )
    assert reused_code.status_code == 400

    refresh = {**form, "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    renewed = httpx.post(f"{ghl.url}/oauth/token", data=refresh)
    assert renewed.status_code == 200
    pair = renewed.json()
    assert pair["access_token"] != tokens["access_token"]
    assert pair["refresh_token"] != tokens["refresh_token"]
    again = httpx.post(f"{ghl.url}/oauth/token", data=refresh)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    newer = httpx.post(f"{ghl.url}/oauth/token", data={**refresh, "refresh_token": pair["refresh_token"]})
    assert newer.status_code == 200
    bad_secret = httpx.post(f"{ghl.url}/oauth/token", data={**refresh, "client_secret": "wrong"})
    assert bad_secret.status_code == 401

    ghl.sim.expire_access_token(newer.json()["access_token"])
    expired = ghl.http.get(
        "/users/", params={"locationId": LOC}, headers=api_headers(newer.json()["access_token"])
    )
    assert expired.status_code == 401
    counters = ghl.state()["counters"]
    assert counters["oauth_code_exchanges"] == 2
    assert counters["oauth_refresh_calls"] == 3
    assert counters["oauth_refresh_failures"] == 1
    assert all("…" in t["token"] for t in ghl.state()["tokens"]["refresh"])


def test_choose_location_redirects_with_a_code_for_the_default_location(ghl: Ghl) -> None:
    ghl.sim.add_oauth_client("app-2", "pw")
    redirect_uri = "http://127.0.0.1:9/leadconnector/oauth"
    answer = httpx.get(
        f"{ghl.url}/oauth/chooselocation",
        params={
            "response_type": "code",
            "client_id": "app-2",
            "redirect_uri": redirect_uri,
            "scope": "contacts.write",
            "state": "st-1",
        },
    )
    assert answer.status_code == 302
    target = httpx.URL(answer.headers["location"])
    assert str(target.copy_with(query=None)) == redirect_uri
    assert target.params["state"] == "st-1"
    form = {
        "client_id": "app-2",
        "client_secret": "pw",
        "grant_type": "authorization_code",
        "code": target.params["code"],
    }
    assert (
        httpx.post(f"{ghl.url}/oauth/token", data={**form, "redirect_uri": "http://elsewhere"}).status_code
        == 400
    )
    # A failed attempt does not burn the code; the right redirect_uri then succeeds.
    tokens = httpx.post(
        f"{ghl.url}/oauth/token", data={**form, "redirect_uri": redirect_uri, "user_type": "Location"}
    )
    assert tokens.status_code == 200
    assert tokens.json()["locationId"] == LOC
    assert tokens.json()["scope"] == "contacts.write"


# --- rate limits and faults ----------------------------------------------------------------------


class ManualClock:
    """The simulator's rate-limit clock, moved by the test: a window passes when the test says so,
    not when a slow machine happens to take a second between two requests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_headers_429_and_recovery() -> None:
    sim = GhlSimulator()
    app = create_app(sim, rate_limit_max=5, rate_limit_interval_seconds=1.0)
    clock = ManualClock()
    sim.rate_limits = LocationRateLimiter(5, 1.0, clock=clock)
    with (
        serve_app(app) as url,
        httpx.Client(base_url=url, headers=api_headers()) as http,
    ):
        users = f"/users/?locationId={LOC}"
        assert http.get(users, headers={"Authorization": "Bearer nope"}).status_code == 401  # not counted
        remaining = []
        for n in range(5):
            # A refused request (here: no Version header) still counts against the limit.
            response = http.get(users) if n else http.get(users, headers={"Version": ""})
            assert response.status_code == (200 if n else 400)
            assert response.headers["X-RateLimit-Max"] == "5"
            assert response.headers["X-RateLimit-Interval-Milliseconds"] == "1000"
            assert response.headers["X-RateLimit-Limit-Daily"] == "200000"
            assert int(response.headers["X-RateLimit-Daily-Remaining"]) == 200_000 - n - 1
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        limited = http.get(users)
        assert limited.status_code == 429
        assert limited.json() == {"statusCode": 429, "message": "Too Many Requests"}
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        retry_after = int(limited.headers["Retry-After"])
        assert retry_after == 1  # the oldest request leaves the 1 s window within a second
        # Control routes are never limited.
        assert http.get("/_sim/state").json()["counters"]["rate_limited_responses"] == 1
        # Another location has its own window.
        other = sim.add_location("loc_b")
        assert http.get("/users/?locationId=loc_b", headers=api_headers(other)).status_code == 200

        clock.now += retry_after
        recovered = http.get(users)
        assert recovered.status_code == 200
        assert recovered.headers["X-RateLimit-Remaining"] == "4"


def test_injected_faults_come_before_the_api(ghl: Ghl) -> None:
    plan = ghl.http.put("/_sim/faults", json={"error_rate": 1.0, "error_status": 503, "seed": 1})
    assert plan.status_code == 200
    assert ghl.http.get(f"/users/?locationId={LOC}").status_code == 503
    # A faulted request never reached the gateway: it used no rate-limit slot.
    assert ghl.state()["counters"]["api_requests"] == 0
    ghl.http.put("/_sim/faults", json={"rate_limit_rate": 1.0, "retry_after_seconds": 3})
    limited = ghl.http.get(f"/users/?locationId={LOC}")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    ghl.http.put("/_sim/faults", json={})
    assert ghl.http.get(f"/users/?locationId={LOC}").status_code == 200
    assert ghl.http.post("/_sim/reset").status_code == 200
    assert ghl.state()["counters"]["api_requests"] == 0


# --- webhooks ------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A tiny service that records every webhook it gets (path, headers, raw body)."""
    received: list[tuple[str, dict[str, str], bytes]] = []
    app = FastAPI()

    @app.post("/{path:path}")
    async def record(path: str, request: Request) -> dict[str, str]:
        received.append((path, dict(request.headers), await request.body()))
        return {"status": "accepted"}

    with serve_app(app) as url:
        yield url, received


def test_contact_changes_and_agent_sms_are_posted_signed(
    receiver: tuple[str, list[tuple[str, dict[str, str], bytes]]],
) -> None:
    url, received = receiver
    key = Ed25519PrivateKey.generate()
    sim = GhlSimulator()
    app = create_app(
        sim, webhook_url=f"{url}/ghl", webhook_signing_key=key, provider_delivery_url=f"{url}/provider"
    )
    public_key = load_pem_public_key(sim.webhook_public_key_pem.encode())
    assert isinstance(public_key, Ed25519PublicKey)

    with serve_app(app) as sim_url, httpx.Client(base_url=sim_url, headers=api_headers()) as http:
        contact = http.post(
            "/contacts/", json={"locationId": LOC, "firstName": "Eve", "phone": "+19195550140"}
        ).json()
        cid = contact["contact"]["id"]
        http.post(f"/contacts/{cid}/tags", json={"tags": ["HOT"]})
        ui = http.post("/_sim/ui/contacts", json={"id": cid, "lastName": "Adams"})
        assert ui.status_code == 200
        no_phone = http.post("/contacts/", json={"locationId": LOC, "email": "x@example.com"}).json()[
            "contact"
        ]
        assert (
            http.post("/_sim/ui/send-sms", json={"contactId": no_phone["id"], "message": "?"}).status_code
            == 400
        )
        sms = http.post("/_sim/ui/send-sms", json={"contactId": cid, "message": "Hi Eve"})
        assert sms.status_code == 200
        wait_for(lambda: len(received) >= 5)
        assert http.post("/_sim/drain").json()["drained"] is True
        deliveries = http.get("/_sim/state").json()["deliveries"]
        # What a service the simulator posts to needs (GHL_WEBHOOK_ED25519_PUBLIC_KEY).
        served_key = http.get("/_sim/webhook-public-key")
        assert served_key.status_code == 200
        assert served_key.text == sim.webhook_public_key_pem

    by_type: dict[str, Any] = {}
    for path, headers, body in received:
        public_key.verify(base64.b64decode(headers["x-ghl-signature"]), body)  # raises when forged
        payload = orjson.loads(body)
        if payload.get("id") != no_phone["id"]:
            by_type[payload["type"]] = (path, payload)
    assert set(by_type) == {"ContactCreate", "ContactTagUpdate", "ContactUpdate", "SMS"}
    path, created = by_type["ContactCreate"]
    assert path == "ghl"
    assert created["id"] == cid
    assert created["locationId"] == LOC
    assert created["phone"] == "+19195550140"
    assert created["timestamp"].endswith("Z")
    assert created["webhookId"]
    assert by_type["ContactTagUpdate"][1]["tags"] == ["hot"]
    assert by_type["ContactUpdate"][1]["lastName"] == "Adams"
    path, outbound = by_type["SMS"]
    assert path == "provider"
    assert outbound["contactId"] == cid
    assert outbound["message"] == "Hi Eve"
    assert outbound["phone"] == "+19195550140"
    assert outbound["messageId"] == sms.json()["messageId"]
    assert len({p["webhookId"] for _, p in by_type.values() if "webhookId" in p}) == 3
    assert [d["status_code"] for d in deliveries] == [200] * 5


async def test_fault_plan_latency_spreads_between_base_and_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §9 (simulators), issue 14: `latency_jitter_ms` spreads each request's latency uniformly
    over [latency_ms, latency_ms + latency_jitter_ms] (the soak's 100-250 ms), reproducibly by seed."""
    import asyncio

    from df_middleware.simulators.common import FaultInjector, FaultPlan

    waited: list[float] = []

    async def record(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", record)
    injector = FaultInjector(FaultPlan(latency_ms=100, latency_jitter_ms=150, seed=5))
    for _ in range(200):
        assert await injector.apply() == (None, None)
    first = list(waited)
    assert all(0.1 <= w <= 0.25 for w in first)
    assert max(first) - min(first) > 0.1  # spread over the range, not one value
    waited.clear()
    injector.set_plan(FaultPlan(latency_ms=100, latency_jitter_ms=150, seed=5))
    for _ in range(200):
        await injector.apply()
    assert waited == first
