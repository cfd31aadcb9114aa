"""The Verity send-message connector against the Verity simulator over real HTTP.

What matters most here is that sending an SMS is never repeated by the connector: a 5xx, a 429
or a timeout is one request and then an error for the sync layer (which keys the send as an
effect, R-IDEM-2), because the message may have gone out anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog

from df_middleware.config import Settings
from df_middleware.connectors.http import (
    ClientSettings,
    RemoteRejected,
    RemoteUnauthorized,
    RemoteUnavailable,
)
from df_middleware.connectors.verity import SentMessage, VerityClient, check_verity
from df_middleware.errors import InvalidPhoneNumber
from df_middleware.observability import configure_logging
from df_middleware.simulators.verity import SEND_MESSAGE_PATH, create_app
from tests.servers import free_port, serve_app

KEY = "verity-test-key-5b21aa90"
TO = "+19195551234"
FAST = ClientSettings(
    timeout_seconds=5.0, connect_timeout_seconds=2.0, max_retries=2, retry_wait_base_seconds=0.01
)


class Sim:
    def __init__(self, root: str) -> None:
        self.root = root
        self.control = httpx.Client(base_url=root, timeout=10)

    def state(self) -> dict[str, Any]:
        return dict(self.control.get("/_sim/state").json())

    def requests(self) -> list[dict[str, Any]]:
        return list(self.control.get("/_sim/requests").json())

    def faults(self, **plan: Any) -> None:
        self.control.put("/_sim/faults", json=plan).raise_for_status()


@pytest.fixture(scope="module")
def sim_server() -> Iterator[Sim]:
    # No webhook URL: receipts are not posted anywhere; the send-message API is what is tested.
    with serve_app(create_app(api_key=KEY)) as root:
        sim = Sim(root)
        yield sim
        sim.control.close()


@pytest.fixture
def sim(sim_server: Sim) -> Sim:
    sim_server.control.post("/_sim/reset").raise_for_status()
    return sim_server


@pytest.fixture
async def client(sim: Sim) -> AsyncIterator[VerityClient]:
    verity = VerityClient(sim.root, KEY, FAST)
    yield verity
    await verity.aclose()


async def test_send_message(client: VerityClient, sim: Sim) -> None:
    """R-TXT-5: one send with Bearer auth; numbers go out in E.164; the conversation and the
    correlation id (the GHL message id) travel; Verity's message id comes back."""
    sent = await client.send_message(
        "(919) 555-1234",
        "Your appointment is confirmed.",
        from_number="919-555-0000",
        conversation_id="chat_1",
        correlation_id="ghl_msg_42",
    )
    assert isinstance(sent, SentMessage)
    assert sent.status == "queued"
    assert sent.message_id.startswith("tlx_")

    (message,) = sim.state()["sent_messages"]
    assert message["messageId"] == sent.message_id
    assert (message["to"], message["from"], message["body"]) == (
        TO,
        "+19195550000",
        "Your appointment is confirmed.",
    )
    assert (message["conversationId"], message["correlationId"]) == ("chat_1", "ghl_msg_42")

    (request,) = sim.requests()
    assert (request["method"], request["path"], request["status"]) == ("POST", SEND_MESSAGE_PATH, 200)
    assert request["headers"]["authorization"].startswith("Bearer ")
    assert request["body"] == {
        "to": TO,
        "body": "Your appointment is confirmed.",
        "from": "+19195550000",
        "conversationId": "chat_1",
        "correlationId": "ghl_msg_42",
    }


async def test_optional_fields_are_left_out(client: VerityClient, sim: Sim) -> None:
    """A send without from/conversation/correlation sends only `to` and `body`."""
    await client.send_message(TO, "Hi")
    assert sim.requests()[0]["body"] == {"to": TO, "body": "Hi"}


async def test_invalid_phone_is_refused_before_sending(client: VerityClient, sim: Sim) -> None:
    """R-ID-1, R-OPT-4: a number that does not parse is never sent to."""
    with pytest.raises(InvalidPhoneNumber):
        await client.send_message("12345", "Hi")
    with pytest.raises(InvalidPhoneNumber):
        await client.send_message(TO, "Hi", from_number="nope")
    assert sim.requests() == []


async def test_bad_key_is_unauthorized(sim: Sim) -> None:
    async with VerityClient(sim.root, "wrong-key", FAST) as wrong:
        with pytest.raises(RemoteUnauthorized):
            await wrong.send_message(TO, "Hi")
    assert sim.state()["sent_messages"] == []


async def test_validation_is_rejected(client: VerityClient, sim: Sim) -> None:
    """A body Verity refuses (422) is permanent: RemoteRejected with Verity's message."""
    with pytest.raises(RemoteRejected) as rejected:
        await client.send_message(TO, "   ")
    assert rejected.value.status_code == 422
    assert "body" in str(rejected.value)
    assert len(sim.requests()) == 1


@pytest.mark.parametrize(
    ("plan", "status"),
    [
        ({"error_rate": 1.0, "error_status": 503}, 503),
        ({"error_rate": 1.0, "error_status": 500}, 500),
        ({"rate_limit_rate": 1.0, "retry_after_seconds": 1}, 429),
    ],
)
async def test_send_is_never_retried_in_call(
    client: VerityClient, sim: Sim, plan: dict[str, Any], status: int
) -> None:
    """R-IDEM-2, R-TXT-5: a send that failed with a 5xx or 429 is one request, then
    RemoteUnavailable (retryable by the worker, keyed as an effect) — never a second SMS here."""
    sim.faults(**plan)
    with pytest.raises(RemoteUnavailable) as failed:
        await client.send_message(TO, "Hi")
    assert failed.value.status_code == status
    if status == 429:
        assert failed.value.retry_after == 1.0
    assert [r["status"] for r in sim.requests()] == [status]


async def test_timeout_is_unavailable_and_not_retried(sim: Sim) -> None:
    """A send that hangs past the client timeout is RemoteUnavailable after exactly one request,
    even with a retry budget configured."""
    sim.faults(timeout_rate=1.0, timeout_seconds=1.0)
    quick = ClientSettings(timeout_seconds=0.2, connect_timeout_seconds=0.2, max_retries=3)
    async with VerityClient(sim.root, KEY, quick) as verity:
        with pytest.raises(RemoteUnavailable) as timed_out:
            await verity.send_message(TO, "Hi")
    assert timed_out.value.status_code is None
    assert len(sim.requests()) == 1


async def test_key_never_appears_in_logs(
    sim: Sim, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """R-SEC-4: the Bearer key is in no log line, for a good send, a refused one and a 5xx."""
    configure_logging("debug", "json")
    caplog.set_level(logging.DEBUG)
    try:
        async with VerityClient(sim.root, KEY, FAST) as verity:
            await verity.send_message(TO, "Hi")
            with pytest.raises(RemoteRejected):
                await verity.send_message(TO, "")
            sim.faults(error_rate=1.0)
            with pytest.raises(RemoteUnavailable):
                await verity.send_message(TO, "Hi")
            sim.faults()
        async with VerityClient(sim.root, "refused-key-0042", FAST) as wrong:
            with pytest.raises(RemoteUnauthorized):
                await wrong.send_message(TO, "Hi")
    finally:
        structlog.reset_defaults()
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert "external_call_failed" in captured.err
    for secret in (KEY, "refused-key-0042"):
        assert secret not in output


async def test_check_good_key_sends_nothing(client: VerityClient, sim: Sim) -> None:
    """`df-middleware check`: an empty body is refused by validation (422), which proves the key
    was accepted — and nothing was sent."""
    report = await client.check()
    assert (report.configured, report.reachable, report.authenticated, report.ok) == (True, True, True, True)
    assert report.detail["probe_status"] == 422
    assert sim.state()["sent_messages"] == []
    assert [r["body"] for r in sim.requests()] == [{}]


async def test_check_bad_key(sim: Sim) -> None:
    async with VerityClient(sim.root, "wrong-key", FAST) as wrong:
        report = await wrong.check()
    assert (report.reachable, report.authenticated, report.ok) == (True, False, False)
    assert report.reason is not None
    assert "VERITY_API_KEY" in report.reason
    assert "wrong-key" not in json.dumps(report.as_dict())


async def test_check_wrong_base_url(sim: Sim) -> None:
    """A base URL that does not serve the API answers 404: reachable, key not judged, and the
    reason names the setting to fix."""
    async with VerityClient(f"{sim.root}/nothing-here", KEY, FAST) as verity:
        report = await verity.check()
    assert (report.reachable, report.authenticated) == (True, None)
    assert report.reason is not None
    assert "VERITY_BASE_URL" in report.reason


async def test_check_unreachable() -> None:
    closed = ClientSettings(timeout_seconds=1.0, connect_timeout_seconds=0.5, max_retries=0)
    async with VerityClient(f"http://127.0.0.1:{free_port()}", KEY, closed) as verity:
        report = await verity.check()
    assert (report.configured, report.reachable, report.authenticated) == (True, False, None)
    assert report.reason is not None
    assert report.reason.startswith("unreachable")


async def test_from_settings_and_unconfigured_check(sim: Sim) -> None:
    """Both VERITY_BASE_URL and VERITY_API_KEY are needed; the check names what is missing."""
    neither = Settings(_env_file=None, verity_base_url=None, verity_api_key=None)
    assert VerityClient.from_settings(neither) is None
    report = await check_verity(neither)
    assert (report.configured, report.reachable) == (False, None)
    assert report.reason == "not configured: set VERITY_BASE_URL and VERITY_API_KEY"

    no_key = Settings(_env_file=None, verity_base_url=sim.root, verity_api_key=None)
    assert VerityClient.from_settings(no_key) is None
    assert (await check_verity(no_key)).reason == "not configured: set VERITY_API_KEY"

    configured = Settings(_env_file=None, verity_base_url=sim.root, verity_api_key=KEY)
    assert (await check_verity(configured)).ok
    client = VerityClient.from_settings(configured)
    assert client is not None
    assert KEY not in repr(client)
    sent = await client.send_message(TO, "Hi")
    assert sent.message_id == sim.state()["sent_messages"][0]["messageId"]
    await client.aclose()
