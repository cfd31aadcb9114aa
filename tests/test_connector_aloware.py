"""The Aloware connector against the Aloware simulator over real HTTP.

Each test drives `AlowareClient` at a simulator served on a real port and asserts what the
simulator then holds (contacts, lists, enrolments) and what crossed the wire (`/_sim/requests`):
the contract README's calls, the token where Aloware expects it, E.164 phones, string ids,
error classes, in-call retries of repeatable calls only, and no token in any log line.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog

from df_middleware.config import Settings
from df_middleware.connectors.aloware import (
    AlowareClient,
    AlowareContact,
    CallList,
    InvalidPhoneNumber,
    LeadFields,
    check_aloware,
)
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteNotFound,
    RemoteRejected,
    RemoteUnauthorized,
    RemoteUnavailable,
)
from df_middleware.observability import configure_logging
from df_middleware.simulators.aloware import create_app
from tests.servers import free_port, serve_app

TOKEN = "alw-test-token-7f3c9e1d"
PHONE = "+19195551234"
#: Fast in-call retries: the behaviour under test is how many attempts, not how long they wait.
FAST = ClientSettings(
    timeout_seconds=5.0, connect_timeout_seconds=2.0, max_retries=2, retry_wait_base_seconds=0.01
)


class Sim:
    """The served simulator: its base URLs and a synchronous handle on its control routes."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.api = f"{root}/api/v1"
        self.control = httpx.Client(base_url=root, timeout=10)

    def state(self) -> dict[str, Any]:
        return dict(self.control.get("/_sim/state").json())

    def requests(self) -> list[dict[str, Any]]:
        return list(self.control.get("/_sim/requests").json())

    def faults(self, **plan: Any) -> None:
        self.control.put("/_sim/faults", json=plan).raise_for_status()

    def seed(self, **items: list[dict[str, Any]]) -> dict[str, Any]:
        response = self.control.post("/_sim/seed", json=items)
        response.raise_for_status()
        return dict(response.json())


@pytest.fixture(scope="module")
def sim_server() -> Iterator[Sim]:
    with serve_app(create_app(api_token=TOKEN)) as root:
        sim = Sim(root)
        yield sim
        sim.control.close()


@pytest.fixture
def sim(sim_server: Sim) -> Sim:
    sim_server.control.post("/_sim/reset").raise_for_status()
    return sim_server


@pytest.fixture
async def client(sim: Sim) -> AsyncIterator[AlowareClient]:
    aloware = AlowareClient(sim.api, TOKEN, FAST)
    yield aloware
    await aloware.aclose()


def _contacts(sim: Sim) -> list[dict[str, Any]]:
    return list(sim.state()["contacts"])


def _list(sim: Sim, list_id: str) -> dict[str, Any]:
    return next(found for found in sim.state()["lists"] if str(found["id"]) == list_id)


def _fault_seed(rate: float, pattern: list[bool]) -> int:
    """A seed under which the simulator's fault draws (one `random()` per request) give `pattern`
    (True = fault) at `error_rate=rate`: makes "fails twice, then succeeds" deterministic."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in pattern] == pattern:
            return seed
    raise AssertionError("no seed found")


# --- documented calls -------------------------------------------------------------------------------


async def test_upsert_lead_creates_then_updates_one_contact(client: AlowareClient, sim: Sim) -> None:
    """R-C-1: the Lead API with `force_update: true`, keyed by the E.164 phone — a second upsert
    with another spelling of the number updates the same contact, never a second one."""
    await client.upsert_lead("(919) 555-1234", fields=LeadFields(first_name="Sarah", last_name="Johnson"))
    await client.upsert_lead(
        PHONE,
        fields=LeadFields(
            first_name="Sara", email="sarah@example.com", lead_source="Website", city="Raleigh"
        ),
    )

    contacts = _contacts(sim)
    assert len(contacts) == 1
    contact = contacts[0]
    assert contact["phone_number"] == PHONE
    assert (contact["first_name"], contact["last_name"], contact["email"]) == (
        "Sara",
        "Johnson",
        "sarah@example.com",
    )
    assert (contact["lead_source"], contact["city"]) == ("Website", "Raleigh")
    writes = sim.state()["lead_writes"][str(contact["id"])]
    assert [w["action"] for w in writes] == ["created", "updated"]
    assert all(w["force_update"] is True for w in writes)
    # Only the fields that were given travel: no nulls that could clear Aloware's values.
    assert writes[0]["request"] == {
        "phone_number": PHONE,
        "force_update": True,
        "first_name": "Sarah",
        "last_name": "Johnson",
    }


async def test_token_travels_in_query_on_get_and_body_on_post(client: AlowareClient, sim: Sim) -> None:
    """Contract README: `api_token` is a query parameter on GET and a JSON body key on POST."""
    await client.upsert_lead(PHONE)
    await client.find_contact_by_phone(PHONE)
    post, get = sim.requests()
    assert post["method"] == "POST"
    assert post["path"] == "/api/v1/webhook/forms"
    assert post["body"]["api_token"] == TOKEN
    assert "api_token" not in post["query"]
    assert get["method"] == "GET"
    assert get["path"] == "/api/v1/webhook/contact/phone-number"
    assert get["query"] == {"api_token": TOKEN, "phone_number": PHONE}


async def test_lookup_by_phone_returns_string_ids_or_none(client: AlowareClient, sim: Sim) -> None:
    """R-ID-1, R-C-1: the lookup normalises the phone; Aloware's numeric ids come back as strings;
    404 is an answer (None), not an error."""
    user = sim.seed(users=[{"name": "Chris Agent", "email": "chris@example.com"}])["users"][0]
    await client.upsert_lead(PHONE, fields=LeadFields(first_name="Sarah", user_id=str(user["id"])))

    found = await client.find_contact_by_phone("919.555.1234")
    assert isinstance(found, AlowareContact)
    stored = _contacts(sim)[0]
    assert isinstance(stored["id"], int)
    assert found.id == str(stored["id"])
    assert found.user_id == str(user["id"])
    assert found.phone_number == PHONE
    assert found.first_name == "Sarah"
    # Keys the model does not name survive (extra="allow").
    assert found.model_extra is not None
    assert found.model_extra["intake_source"] == "Lead API"

    assert await client.find_contact_by_phone("+19195550199") is None


async def test_invalid_phone_is_refused_before_any_request(client: AlowareClient, sim: Sim) -> None:
    """R-ID-1: an invalid number is a permanent error raised locally; Aloware is never called."""
    with pytest.raises(InvalidPhoneNumber):
        await client.upsert_lead("555-12")
    with pytest.raises(InvalidPhoneNumber):
        await client.find_contact_by_phone("not a phone")
    with pytest.raises(InvalidPhoneNumber):
        await client.enroll_in_sequence("9001", "12")
    assert sim.requests() == []


async def test_lists_add_remove_and_clear(client: AlowareClient, sim: Sim) -> None:
    """R-AG-3, R-C-4, R-OPT-6: add contacts to a list (string ids go out as Aloware's numbers),
    remove a contact from every list, clear a list — the simulator's lists follow."""
    seeded = sim.seed(
        lists=[{"name": "DF_ALICE_CALL_NOW"}, {"name": "DF_ALICE_HOT"}],
        contacts=[{"phone_number": PHONE}, {"phone_number": "+19195550101"}],
    )
    list_a, list_b = (str(x["id"]) for x in seeded["lists"])
    c1, c2 = (str(c["id"]) for c in seeded["contacts"])

    await client.add_to_list(list_a, [c1, c2])
    await client.add_to_list(list_b, [c1])
    await client.add_to_list(list_b, [])  # nothing to add: no request
    assert _list(sim, list_a)["contact_ids"] == [int(c1), int(c2)]
    assert _list(sim, list_b)["contact_ids"] == [int(c1)]
    add_bodies = [r["body"] for r in sim.requests() if r["path"].endswith("add-contact-to-lists")]
    assert len(add_bodies) == 2
    assert add_bodies[0]["contact_ids"] == [int(c1), int(c2)]
    assert add_bodies[0]["list_id"] == int(list_a)

    assert await client.remove_from_all_lists(c1) is True
    assert _list(sim, list_a)["contact_ids"] == [int(c2)]
    assert _list(sim, list_b)["contact_ids"] == []
    # A contact Aloware does not know is on no list: False, not an error.
    assert await client.remove_from_all_lists("100999") is False

    await client.clear_list(list_a)
    assert _list(sim, list_a)["contact_ids"] == []


async def test_sequence_enroll_and_disenroll(client: AlowareClient, sim: Sim) -> None:
    """R-AG-6: enroll by phone (`source: phone_number`), move with `force_enroll`, disenroll;
    an unknown sequence is a permanent error."""
    seeded = sim.seed(
        sequences=[{"name": "Nurture"}, {"name": "Hot follow-up"}], contacts=[{"phone_number": PHONE}]
    )
    s1, s2 = (str(s["id"]) for s in seeded["sequences"])
    contact_id = str(seeded["contacts"][0]["id"])

    await client.enroll_in_sequence(s1, "919-555-1234")
    assert sim.state()["enrollments"] == {contact_id: int(s1)}
    # Enrolling again in the same sequence is harmless (the reason it may be retried in-call).
    await client.enroll_in_sequence(s1, PHONE)
    await client.enroll_in_sequence(s2, PHONE, force=True)
    assert sim.state()["enrollments"] == {contact_id: int(s2)}
    enroll = [r["body"] for r in sim.requests() if r["path"].endswith("sequence-enroll")]
    assert enroll[0] == {
        "api_token": TOKEN,
        "sequence_id": int(s1),
        "source": "phone_number",
        "phone_number": PHONE,
        "force_enroll": False,
    }
    assert enroll[2]["force_enroll"] is True

    assert await client.disenroll_from_sequences(PHONE) is True
    assert sim.state()["enrollments"] == {}
    # A phone Aloware does not know is in no sequence: False, not an error.
    assert await client.disenroll_from_sequences("+19195550188") is False
    actions = [entry["action"] for entry in sim.state()["sequence_log"]]
    assert actions == ["enrolled", "already_enrolled", "enrolled", "disenrolled"]
    with pytest.raises(RemoteNotFound):
        await client.enroll_in_sequence("9999", PHONE)


# --- undocumented calls -----------------------------------------------------------------------------


async def test_users_and_call_lists(client: AlowareClient, sim: Sim) -> None:
    """R-AG-3, R-AG-5: users and lists come back typed with string ids; a created list exists."""
    sim.seed(
        users=[{"name": "Alice", "email": "alice@example.com"}, {"name": "Bob", "email": "bob@example.com"}],
        lists=[{"name": "DF_ALICE_NEW_LEADS", "description": "seeded"}],
    )
    users = await client.list_users()
    assert [(u.id, u.email) for u in users] == [("701", "alice@example.com"), ("702", "bob@example.com")]

    created = await client.create_call_list("DF_BOB_HOT", "Bob's hot leads")
    assert isinstance(created, CallList)
    assert created.name == "DF_BOB_HOT"
    assert created.id.isdigit()

    lists = await client.list_call_lists()
    assert [(x.name, x.id) for x in lists] == [("DF_ALICE_NEW_LEADS", "5001"), ("DF_BOB_HOT", created.id)]
    assert all(x.contact_ids == [] for x in lists)
    assert _list(sim, created.id)["description"] == "Bob's hot leads"


# --- errors -----------------------------------------------------------------------------------------


async def test_bad_token_is_unauthorized(sim: Sim) -> None:
    """A refused api_token (401) surfaces as RemoteUnauthorized on GET and POST alike."""
    async with AlowareClient(sim.api, "wrong-token", FAST) as wrong:
        with pytest.raises(RemoteUnauthorized):
            await wrong.find_contact_by_phone(PHONE)
        with pytest.raises(RemoteUnauthorized):
            await wrong.upsert_lead(PHONE)
    # 401 is not retried in-call: one request each.
    assert [r["status"] for r in sim.requests()] == [401, 401]


async def test_validation_and_bad_request_are_rejected(client: AlowareClient, sim: Sim) -> None:
    """422 (validation) and 400 are permanent: RemoteRejected, with Aloware's message, one try."""
    with pytest.raises(RemoteRejected) as validation:
        await client.add_to_list("not-a-number", ["1"])
    assert validation.value.status_code == 422
    assert "list id must be an integer" in str(validation.value)

    seeded = sim.seed(sequences=[{"name": "A"}, {"name": "B"}], contacts=[{"phone_number": PHONE}])
    s1, s2 = (str(s["id"]) for s in seeded["sequences"])
    await client.enroll_in_sequence(s1, PHONE)
    with pytest.raises(RemoteRejected) as bad_request:
        await client.enroll_in_sequence(s2, PHONE)  # already in another sequence, no force
    assert bad_request.value.status_code == 400
    assert not isinstance(bad_request.value, RemoteNotFound)

    with pytest.raises(RemoteNotFound):
        await client.clear_list("5999")
    assert [r["status"] for r in sim.requests()] == [422, 200, 400, 404]


async def test_5xx_is_retried_in_call_for_repeatable_calls(client: AlowareClient, sim: Sim) -> None:
    """R-REL-3: injected 503s below the retry budget are absorbed in-call for the idempotent Lead
    API: the simulator sees the repeats and the call finally succeeds, with one contact."""
    sim.faults(error_rate=0.5, error_status=503, seed=_fault_seed(0.5, [True, True, False]))
    await client.upsert_lead(PHONE, fields=LeadFields(first_name="Sarah"))
    assert [(r["status"], r["fault"]) for r in sim.requests()] == [
        (503, "error"),
        (503, "error"),
        (200, None),
    ]
    assert len(_contacts(sim)) == 1


async def test_5xx_beyond_the_budget_is_unavailable(client: AlowareClient, sim: Sim) -> None:
    """Past the retry budget the failure is RemoteUnavailable (the worker retries the event later)."""
    sim.faults(error_rate=1.0, error_status=502)
    with pytest.raises(RemoteUnavailable) as failed:
        await client.find_contact_by_phone(PHONE)
    assert failed.value.status_code == 502
    assert [r["status"] for r in sim.requests()] == [502, 502, 502]  # 1 + max_retries


async def test_create_call_list_is_not_retried(client: AlowareClient, sim: Sim) -> None:
    """Creating a list is not idempotent (a repeat makes a second list): one request, then
    RemoteUnavailable, and no list was created twice."""
    sim.faults(error_rate=1.0, error_status=503)
    with pytest.raises(RemoteUnavailable):
        await client.create_call_list("DF_ALICE_HOT")
    assert [r["status"] for r in sim.requests()] == [503]
    sim.faults()
    await client.create_call_list("DF_ALICE_HOT")
    assert [x["name"] for x in sim.state()["lists"]] == ["DF_ALICE_HOT"]


async def test_timeout_is_unavailable(sim: Sim) -> None:
    """A request that hangs past the client timeout is RemoteUnavailable (no status: no answer)."""
    sim.faults(timeout_rate=1.0, timeout_seconds=1.0)
    quick = ClientSettings(timeout_seconds=0.2, connect_timeout_seconds=0.2, max_retries=0)
    async with AlowareClient(sim.api, TOKEN, quick) as aloware:
        with pytest.raises(RemoteUnavailable) as timed_out:
            await aloware.find_contact_by_phone(PHONE)
    assert timed_out.value.status_code is None
    assert "timed out" in str(timed_out.value)


# --- secrets in logs --------------------------------------------------------------------------------


async def test_token_never_appears_in_logs(
    sim: Sim, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """R-SEC-4: with debug logging on (structlog and the standard library, httpx included),
    successful and failing calls log no api_token — neither ours nor a refused one."""
    configure_logging("debug", "json")
    caplog.set_level(logging.DEBUG)
    try:
        async with AlowareClient(sim.api, TOKEN, FAST) as aloware:
            await aloware.upsert_lead(PHONE)
            await aloware.find_contact_by_phone(PHONE)
            await aloware.find_contact_by_phone("+19195550199")
            with pytest.raises(RemoteRejected) as rejected:
                await aloware.add_to_list("x", ["1"])
            sim.faults(error_rate=1.0)
            with pytest.raises(RemoteUnavailable) as unavailable:
                await aloware.list_users()
            sim.faults()
        async with AlowareClient(sim.api, "refused-token-0042", FAST) as wrong:
            with pytest.raises(RemoteUnauthorized) as unauthorized:
                await wrong.find_contact_by_phone(PHONE)
    finally:
        structlog.reset_defaults()
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    lines = [line for line in captured.err.splitlines() if line.startswith("{")]
    assert any(json.loads(line).get("event") == "external_call_failed" for line in lines)
    assert "HTTP Request: GET" in caplog.text  # httpx's own line was captured, and masked
    assert "api_token=***" in caplog.text
    httpx_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert httpx_lines
    assert not any("5551234" in line for line in httpx_lines)  # the phone is masked there too
    for secret in (TOKEN, "refused-token-0042"):
        assert secret not in output
        for error in (rejected.value, unavailable.value, unauthorized.value):
            assert secret not in str(error)
            assert secret not in repr(error.body)


# --- check ------------------------------------------------------------------------------------------


async def test_check_configured_and_good(client: AlowareClient, sim: Sim) -> None:
    """`df-middleware check`: a good token is reachable and authenticated, using a read-only call."""
    report = await client.check()
    assert (report.configured, report.reachable, report.authenticated, report.ok) == (True, True, True, True)
    assert report.reason is None
    assert [(r["method"], r["status"]) for r in sim.requests()] == [("GET", 404)]
    assert _contacts(sim) == []


async def test_check_bad_token(sim: Sim) -> None:
    async with AlowareClient(sim.api, "wrong-token", FAST) as wrong:
        report = await wrong.check()
    assert (report.reachable, report.authenticated, report.ok) == (True, False, False)
    assert report.reason is not None
    assert "ALOWARE_API_TOKEN" in report.reason
    assert "wrong-token" not in json.dumps(report.as_dict())


async def test_check_unreachable() -> None:
    """A closed port: unreachable, reported, not raised."""
    closed = ClientSettings(timeout_seconds=1.0, connect_timeout_seconds=0.5, max_retries=0)
    async with AlowareClient(f"http://127.0.0.1:{free_port()}/api/v1", TOKEN, closed) as aloware:
        report = await aloware.check()
    assert (report.configured, report.reachable, report.authenticated) == (True, False, None)
    assert report.reason is not None
    assert report.reason.startswith("unreachable")


async def test_from_settings_and_unconfigured_check(sim: Sim) -> None:
    """ALOWARE_API_TOKEN unset: no client, and the check names the setting without calling out."""
    unset = Settings(_env_file=None, aloware_api_token=None)
    assert AlowareClient.from_settings(unset) is None
    report = await check_aloware(unset)
    assert (report.configured, report.reachable, report.authenticated) == (False, None, None)
    assert report.reason == "not configured: set ALOWARE_API_TOKEN"

    configured = Settings(
        _env_file=None, aloware_base_url=sim.api, aloware_api_token=TOKEN, http_max_retries=0
    )
    report = await check_aloware(configured)
    assert report.ok
    client = AlowareClient.from_settings(configured)
    assert client is not None
    assert TOKEN not in repr(client)
    assert client.http.settings.max_retries == 0
    await client.aclose()
