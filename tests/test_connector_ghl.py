"""The GHL connector against the GHL simulator over real HTTP.

Each test serves a fresh simulator (validating every request with GHL's own OpenAPI documents when
`../shared/contracts` is present) and calls it through `GhlClient` exactly as the sync handlers
will. Assertions read the simulator's state and request log: what GHL would now hold, and what
crossed the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from df_middleware.connectors.ghl import (
    DuplicateContact,
    GhlClient,
    MissingGhlCredentials,
    StaticToken,
    UnknownCustomField,
)
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
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteRejected,
    RemoteUnauthorized,
    RemoteUnavailable,
    ServiceClient,
)
from df_middleware.connectors.ratelimit import SlidingWindowLimiter
from df_middleware.observability import configure_logging
from df_middleware.simulators.common import FaultPlan
from df_middleware.simulators.ghl import GhlSimulator, create_app
from tests.conftest import CONTRACTS
from tests.servers import serve_app

LOC = "loc_sim"
PIT = "pit-sim"
OPENAPI_DIR = CONTRACTS / "ghl" / "openapi"


@dataclass
class GhlSim:
    url: str
    sim: GhlSimulator
    app: Any

    def requests(self, method: str | None = None, prefix: str = "") -> list[Any]:
        return list(self.app.state.request_log.matching(method, prefix))

    def faults(self, **plan: Any) -> None:
        self.app.state.faults.set_plan(FaultPlan(**plan))

    def state(self) -> dict[str, Any]:
        return dict(self.sim.snapshot())


def _openapi_dir() -> Path | None:
    return OPENAPI_DIR if OPENAPI_DIR.is_dir() else None


@pytest.fixture
def ghl_sim() -> Iterator[GhlSim]:
    sim = GhlSimulator(seed=7)
    app = create_app(sim, openapi_dir=_openapi_dir(), rate_limit_max=100, rate_limit_interval_seconds=10)
    with serve_app(app) as url:
        yield GhlSim(url, sim, app)


def _client(url: str, *, limiter: SlidingWindowLimiter | None = None, **settings: Any) -> GhlClient:
    http = ServiceClient(
        "ghl",
        url,
        settings=ClientSettings(**{"timeout_seconds": 5.0, "retry_wait_base_seconds": 0.01, **settings}),
        limiter=limiter or SlidingWindowLimiter(100, 10.0),
    )
    return GhlClient(http, StaticToken(LOC, PIT), LOC)


@pytest.fixture
async def ghl(ghl_sim: GhlSim) -> AsyncIterator[GhlClient]:
    client = _client(ghl_sim.url)
    yield client
    await client.aclose()


async def test_contact_lifecycle_create_get_update_upsert(ghl: GhlClient, ghl_sim: GhlSim) -> None:
    """Create, read, update and upsert land in GHL with the documented shapes (R-C-2)."""
    created = await ghl.create_contact(
        ContactCreate(
            locationId=LOC, firstName="Ann", lastName="Lee", phone="+19195550101", email="ann@x.com"
        )
    )
    assert created.id
    assert created.phone == "+19195550101"

    fetched = await ghl.get_contact(created.id)
    assert fetched is not None
    assert fetched.first_name == "Ann"

    updated = await ghl.update_contact(created.id, ContactUpdate(city="Raleigh", timezone="America/New_York"))
    assert updated.city == "Raleigh"
    # An update sends only the fields it sets: GHL's other fields are untouched.
    put = ghl_sim.requests("PUT", "/contacts/")[-1].json()
    assert put == {"city": "Raleigh", "timezone": "America/New_York"}

    again = await ghl.upsert_contact(
        ContactUpsert(locationId=LOC, phone="(919) 555-0101", lastName="Lee-Smith")
    )
    assert again.new is False
    assert again.contact.id == created.id
    fresh = await ghl.upsert_contact(ContactUpsert(locationId=LOC, phone="+19195550199", firstName="Bo"))
    assert fresh.new is True
    assert fresh.contact.id != created.id
    assert len([c for c in ghl_sim.state()["contacts"] if not c["deleted"]]) == 2


async def test_unknown_contact_is_none(ghl: GhlClient) -> None:
    assert await ghl.get_contact("doesNotExist00000000") is None


async def test_duplicate_create_names_the_existing_contact(ghl: GhlClient) -> None:
    """GHL refuses a second contact with the same phone; the connector says which one exists."""
    first = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550102"))
    with pytest.raises(DuplicateContact) as refused:
        await ghl.create_contact(ContactCreate(locationId=LOC, phone="919-555-0102", firstName="Dup"))
    assert refused.value.existing_id == first.id
    assert refused.value.matching_field == "phone"


async def test_find_contact_by_phone_and_email_exactly(ghl: GhlClient) -> None:
    """R-ID-2: resolution by exact E.164 phone, then lower-cased email; nothing else matches."""
    ann = await ghl.create_contact(
        ContactCreate(locationId=LOC, phone="+19195550103", email="Ann@Example.com")
    )
    await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550104", email="other@example.com"))
    by_phone = await ghl.find_contact(phone="(919) 555-0103")
    assert by_phone is not None
    assert by_phone.id == ann.id
    by_email = await ghl.find_contact(email=" ANN@example.com ")
    assert by_email is not None
    assert by_email.id == ann.id
    assert await ghl.find_contact(phone="+19195550100") is None
    assert await ghl.find_contact(phone="not a phone") is None


async def test_find_contact_by_both_keys_is_one_search_preferring_the_phone(
    ghl: GhlClient, ghl_sim: GhlSim
) -> None:
    """R-ID-2, R-PERF-3: phone and email are looked up in one search (an OR group); a phone match
    wins over another contact's email match, and an email match is used when no phone matches."""
    by_email_only = await ghl.create_contact(
        ContactCreate(locationId=LOC, phone="+19195550105", email="pat@example.com")
    )
    by_phone_only = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550106"))
    before = len(ghl_sim.requests("POST", "/contacts/search"))
    found = await ghl.find_contact(phone="919-555-0106", email="PAT@example.com")
    assert found is not None
    assert found.id == by_phone_only.id
    found = await ghl.find_contact(phone="+19195550107", email="pat@example.com")
    assert found is not None
    assert found.id == by_email_only.id
    assert await ghl.find_contact(phone="+19195550108", email="nobody@example.com") is None
    searches = ghl_sim.requests("POST", "/contacts/search")[before:]
    assert len(searches) == 3
    assert searches[0].json()["filters"][0]["group"] == "OR"


async def test_custom_fields_are_sent_as_id_arrays(ghl: GhlClient, ghl_sim: GhlSim) -> None:
    """Custom fields go as arrays of {id, field_value}: keys are resolved to ids, cached (R-C-2)."""
    field = ghl_sim.sim.add_custom_field(LOC, "Assigned Agent", "contact.assigned_agent")
    contact = await ghl.upsert_contact(
        ContactUpsert(
            locationId=LOC,
            phone="+19195550105",
            customFields=[CustomFieldValue(key="assigned_agent", field_value="alice")],
        )
    )
    assert contact.contact.custom_field(field["id"]) == "alice"
    sent = ghl_sim.requests("POST", "/contacts/upsert")[-1].json()
    assert sent["customFields"] == [{"id": field["id"], "field_value": "alice"}]
    await ghl.update_contact(
        contact.contact.id,
        ContactUpdate(customFields=[CustomFieldValue(key="assigned_agent", field_value="bob")]),
    )
    # Definitions were fetched once for both writes.
    assert len(ghl_sim.requests("GET", f"/locations/{LOC}/customFields")) == 1
    with pytest.raises(UnknownCustomField):
        await ghl.update_contact(
            contact.contact.id, ContactUpdate(customFields=[CustomFieldValue(key="nope", field_value="x")])
        )


async def test_dnd_settings_round_trip(ghl: GhlClient) -> None:
    """The SMS DND channel is what opt-outs set (R-OPT-3); it must survive a round trip."""
    contact = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550106"))
    changed = await ghl.update_contact(
        contact.id, ContactUpdate(dndSettings={"SMS": DndChannel(status="active", message="STOP")})
    )
    assert changed.dnd_settings is not None
    assert changed.dnd_settings["SMS"]["status"] == "active"


async def test_tags_change_only_through_tag_endpoints(ghl: GhlClient, ghl_sim: GhlSim) -> None:
    """R-C-5: tags are added and removed with the tag endpoints, never by rewriting the list."""
    contact = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550107", tags=["keep"]))
    await ghl.add_tags(contact.id, ["Call: Interested", "Inbound Call"])
    await ghl.add_tags(contact.id, ["Inbound Call"])  # already there: no change
    await ghl.remove_tags(contact.id, ["Call: Interested"])
    current = await ghl.get_contact(contact.id)
    assert current is not None
    assert sorted(current.tags) == ["inbound call", "keep"]  # GHL keeps tags in lower case
    assert not [r for r in ghl_sim.requests("PUT") if "tags" in (r.json() or {})]


async def test_notes_create_and_list(ghl: GhlClient) -> None:
    contact = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550108"))
    note = await ghl.create_note(contact.id, "Outbound call, 3 min\n[df:call:42]")
    notes = await ghl.list_notes(contact.id)
    assert [n.id for n in notes] == [note.id]
    assert "[df:call:42]" in notes[0].body


async def test_conversation_messages_and_statuses(ghl: GhlClient, ghl_sim: GhlSim) -> None:
    """R-TXT-1/2/3: find-or-create the conversation, add inbound and outbound SMS, report status."""
    contact = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550109"))
    conversation = await ghl.ensure_conversation(contact.id)
    assert (await ghl.ensure_conversation(contact.id)).id == conversation.id
    assert len(ghl_sim.state()["conversations"]) == 1

    inbound = await ghl.add_message(
        ConversationMessage(
            conversationId=conversation.id,
            contactId=contact.id,
            conversationProviderId="prov-sms",
            message="Hi there",
            altId="tlx_1",
            date="2026-11-24T16:52:00.000Z",
        )
    )
    outbound = await ghl.add_message(
        ConversationMessage(
            conversationId=conversation.id,
            contactId=contact.id,
            conversationProviderId="prov-sms",
            message="Sent from the texting app",
            altId="tlx_2",
            direction="outbound",
        )
    )
    await ghl.update_message_status(outbound.message_id, "delivered")
    await ghl.update_message_status(
        inbound.message_id, "failed", error=ProviderError(code="30003", type="saas", message="Unreachable")
    )
    with pytest.raises(ValueError, match="error"):
        await ghl.update_message_status(inbound.message_id, "failed")
    messages = {m["id"]: m for m in ghl_sim.state()["messages"]}
    assert messages[outbound.message_id]["status"] == "delivered"
    assert messages[outbound.message_id]["direction"] == "outbound"
    assert messages[inbound.message_id]["status"] == "failed"
    # The conversations API carries its own Version.
    assert {r.headers["version"] for r in ghl_sim.requests(prefix="/conversations")} == {"2021-04-15"}
    assert {r.headers["version"] for r in ghl_sim.requests(prefix="/contacts")} == {"2021-07-28"}


async def test_external_call_log(ghl: GhlClient, ghl_sim: GhlSim) -> None:
    """R-CALL-1: a call made in Aloware appears in the GHL conversation as type Call."""
    contact = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550110"))
    conversation = await ghl.ensure_conversation(contact.id)
    result = await ghl.log_external_call(
        ExternalCall(
            conversationId=conversation.id,
            conversationProviderId="prov-call",
            date="2026-11-24T16:52:00.000Z",
            call=CallData(to="+19195550110", from_="+19195550000", status="completed"),
        )
    )
    message = next(m for m in ghl_sim.state()["messages"] if m["id"] == result.message_id)
    assert message["messageType"] == "TYPE_CALL"
    assert message["conversationId"] == conversation.id


async def test_users_and_custom_objects(ghl: GhlClient, ghl_sim: GhlSim) -> None:
    """R-AG-5 reads users; R-BC-2 searches, creates and updates a custom-object record."""
    ghl_sim.sim.add_user(LOC, "Alice Agent", "alice@example.com")
    users = await ghl.list_users()
    assert [u.email for u in users] == ["alice@example.com"]

    key = "custom_objects.broadcasts"
    assert (await ghl.search_records(key, "bc-1")).records == []
    record = await ghl.create_record(key, {"broadcast_id": "bc-1", "recipients": 10})
    found = await ghl.search_records(key, "bc-1")
    assert [r.id for r in found.records] == [record.id]
    updated = await ghl.update_record(key, record.id, {"recipients": 12})
    assert updated.properties["recipients"] == 12


async def test_private_token_refused_is_retryable_unauthorized(ghl_sim: GhlSim) -> None:
    """A refused PIT is a RetryableError: events wait for an operator to fix the key."""
    http = ServiceClient("ghl", ghl_sim.url, limiter=SlidingWindowLimiter(100, 10.0))
    client = GhlClient(http, StaticToken(LOC, "wrong-token"), LOC)
    try:
        with pytest.raises(RemoteUnauthorized):
            await client.get_contact("x" * 20)
        with pytest.raises(MissingGhlCredentials):
            await client.for_location("another-location").list_users()
    finally:
        await client.aclose()


async def test_invalid_request_is_a_permanent_rejection(ghl: GhlClient) -> None:
    """A request GHL refuses (here: an unknown contact for a note) dead-letters, not retries."""
    with pytest.raises(RemoteRejected):
        await ghl.create_note("doesNotExist00000000", "hello")


async def test_idempotent_calls_retry_through_faults_and_creates_do_not(ghl_sim: GhlSim) -> None:
    """5xx faults: a GET is retried in-call until it succeeds; a note create is sent once and the
    failure goes back to the worker (the effect ledger decides about the retry, R-IDEM-2)."""
    client = _client(ghl_sim.url, max_retries=6)
    try:
        contact = await client.create_contact(ContactCreate(locationId=LOC, phone="+19195550111"))
        ghl_sim.faults(error_rate=0.5, seed=3)
        for _ in range(5):
            assert (await client.get_contact(contact.id)) is not None
        gets = ghl_sim.requests("GET", f"/contacts/{contact.id}")
        assert any(r.fault == "error" for r in gets)  # faults happened and were absorbed

        ghl_sim.faults(error_rate=1.0)
        before = len(ghl_sim.requests("POST", f"/contacts/{contact.id}/notes"))
        with pytest.raises(RemoteUnavailable):
            await client.create_note(contact.id, "once")
        assert len(ghl_sim.requests("POST", f"/contacts/{contact.id}/notes")) == before + 1
    finally:
        await client.aclose()


async def test_a_lost_answer_leaves_the_write_done_and_the_call_retryable(
    ghl: GhlClient, ghl_sim: GhlSim
) -> None:
    """The case R-CALL-4's marker check exists for: GHL created the note but the answer was lost.
    The connector reports a retryable failure, and the note is there to be found by its marker."""
    contact = await ghl.create_contact(ContactCreate(locationId=LOC, phone="+19195550112"))
    ghl_sim.faults(lost_response_rate=1.0)
    with pytest.raises(RemoteUnavailable):
        await ghl.create_note(contact.id, "Call summary\n[df:call:7]")
    ghl_sim.faults()
    assert [n.body for n in await ghl.list_notes(contact.id)] == ["Call summary\n[df:call:7]"]


async def test_timeout_is_retryable(ghl_sim: GhlSim) -> None:
    client = _client(ghl_sim.url, timeout_seconds=0.3, max_retries=0)
    try:
        ghl_sim.faults(timeout_rate=1.0, timeout_seconds=2.0)
        with pytest.raises(RemoteUnavailable, match="timed out"):
            await client.list_users()
    finally:
        await client.aclose()


async def test_limiter_keeps_a_burst_within_ghl_budget() -> None:
    """R-PERF-3: 60 concurrent calls against a 20-per-second limit get no 429 and all succeed.

    The simulator runs in a thread of this process, so on a loaded machine a request may reach it
    well after the limiter let it go; the limiter counts each call until a window after its answer,
    so however late the simulator counts it, it is still within the limiter's count then.

    Without the limiter the same burst is answered 429 (the simulator enforces the limit), which
    proves the test would catch a limiter that let too much through.
    """
    sim = GhlSimulator(seed=1)
    app = create_app(sim, rate_limit_max=20, rate_limit_interval_seconds=1.0)
    with serve_app(app) as url:
        limited = _client(url, limiter=SlidingWindowLimiter(20, 1.0))
        try:
            results = await asyncio.gather(*(limited.list_users() for _ in range(60)))
        finally:
            await limited.aclose()
        assert len(results) == 60
        assert sim.snapshot()["counters"]["rate_limited_responses"] == 0

        await asyncio.sleep(1.1)
        unlimited = GhlClient(
            ServiceClient("ghl", url, settings=ClientSettings(max_retries=0)), StaticToken(LOC, PIT), LOC
        )
        try:
            outcomes = await asyncio.gather(
                *(unlimited.list_users() for _ in range(40)), return_exceptions=True
            )
        finally:
            await unlimited.aclose()
        refused = [o for o in outcomes if isinstance(o, RemoteUnavailable) and o.status_code == 429]
        assert refused, "the simulator should refuse a burst above its limit"
        assert all(o.retry_after is not None for o in refused)


async def test_limiter_learns_a_smaller_limit_from_ghl_headers() -> None:
    """The headers are the truth: a client configured for 100/10 s adapts to GHL's 10/1 s."""
    sim = GhlSimulator(seed=2)
    app = create_app(sim, rate_limit_max=10, rate_limit_interval_seconds=1.0)
    with serve_app(app) as url:
        limiter = SlidingWindowLimiter(100, 10.0)
        client = _client(url, limiter=limiter, max_retries=3)
        try:
            await client.list_users()
            assert limiter.max_calls == 10
            assert limiter.interval == 1.0
            await asyncio.gather(*(client.list_users() for _ in range(30)))
        finally:
            await client.aclose()
        assert sim.snapshot()["counters"]["rate_limited_responses"] == 0


async def test_tokens_never_reach_the_logs(
    ghl_sim: GhlSim, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """R-SEC-4: with debug logging on (structlog and the standard library, httpx included), a call
    GHL refuses logs its failure but never the bearer token, nor puts it in the error."""
    configure_logging("debug", "json")
    caplog.set_level(logging.DEBUG)
    client = GhlClient(ServiceClient("ghl", ghl_sim.url), StaticToken(LOC, "secret-token-value-123"), LOC)
    try:
        with pytest.raises(RemoteUnauthorized) as refused:
            await client.list_users()
    finally:
        await client.aclose()
        structlog.reset_defaults()
    captured = capsys.readouterr()
    assert "external_call_failed" in captured.err  # the failure was logged where we looked
    assert "HTTP Request: GET" in caplog.text
    for text in (captured.out, captured.err, caplog.text, str(refused.value), repr(client.credentials)):
        assert "secret-token-value-123" not in text


def test_simulator_cli_serves(tmp_path: Path) -> None:
    """`df-middleware simulate ghl --port N` runs the simulator (SPEC §9)."""
    import subprocess
    import sys
    import time

    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "df_middleware.cli", "simulate", "ghl", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/users/",
                    params={"locationId": LOC},
                    headers={"Authorization": f"Bearer {PIT}", "Version": "2021-07-28"},
                )
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-max"] == "100"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
