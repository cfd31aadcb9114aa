"""Defects found by black-box testing of the running service (issue 9), each reproduced here.

An attacker with a laptop and a sender with a bug: huge or odd headers, identifiers and times,
empty secrets, slow or idle connections, bodies that stall or vanish, many large bodies at once.
The service must answer quickly and truthfully (a 4xx, never a 5xx), write nothing half-done,
and stay up. In-process requests go through the whole ASGI application (httpx ASGITransport);
the connection-level limits are tested against the real uvicorn protocol on a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import socket
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.db.models import BroadcastWebhookEvent, TextingWebhookEvent, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.http_server import server_config
from df_middleware.ingest.sources.common import MAX_ID_LENGTH
from df_middleware.simulators.serving import serve_config
from tests.conftest import TEST_SECRETS, Keys
from tests.test_service_process import process_runner

__all__ = ["process_runner"]  # a fixture, used here by name

VERITY_SECRET = TEST_SECRETS["verity_webhook_secret"]


def _hmac(body: bytes, secret: str = VERITY_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


@pytest.fixture
async def app_factory(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    apps: list[Any] = []

    def factory(**overrides: Any) -> Any:
        app = create_app(make_settings(auto_migrate=False, **overrides), run_worker=False)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.state.db.dispose()


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def _count(db: Database, model: Any) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


# --- request ids (defects 1, 5, 7) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    ["a" * 60_000, "x" * 129, "has space", "tab\tinside", "\u00e9t\u00e9", "(1-" * 5000],
    ids=["60k", "129", "space", "tab", "latin1", "hostile-regex"],
)
async def test_unsafe_request_id_is_replaced_not_echoed(
    app_factory: Callable[..., Any], db: Database, keys: Keys, sent: str
) -> None:
    """R-SEC-3, R-SEC-4: an X-Request-ID that is long or not a safe token is replaced by a generated
    one, on the refused request and on the stored one; the sent value is neither echoed nor stored."""
    async with _client(app_factory()) as client:
        header = sent.encode("utf-8")  # raw bytes, as a careless sender would put them
        refused = await client.post(
            "/api/webhooks/texting",
            content=b"{}",
            headers={"content-type": "application/json", "x-request-id": header},
        )
        assert refused.status_code == 401
        generated = refused.headers["x-request-id"]
        assert len(generated) == 32
        assert all(c in string.hexdigits for c in generated)
        assert sent not in refused.text
        body = _body({"eventType": "message.received", "messageId": "m-rid", "from": "+19195550100"})
        stored = await client.post(
            "/api/webhooks/texting",
            content=body,
            headers={
                "content-type": "application/json",
                "x-texting-signature": _hmac(body),
                "x-request-id": header,
            },
        )
    assert stored.status_code == 200, stored.text
    async with db.session() as session:
        row = (await session.scalars(select(TextingWebhookEvent))).one()
    assert row.request_id == stored.headers["x-request-id"] != sent
    assert len(row.request_id or "") == 32


async def test_safe_request_id_is_kept_end_to_end(app_factory: Callable[..., Any], db: Database) -> None:
    """R-SEC-4: a short id of a safe charset is kept: echoed back and stored with the event."""
    body = _body({"eventType": "message.received", "messageId": "m-keep", "from": "+19195550101"})
    async with _client(app_factory()) as client:
        response = await client.post(
            "/api/webhooks/texting",
            content=body,
            headers={
                "content-type": "application/json",
                "x-texting-signature": _hmac(body),
                "x-request-id": "req_2026-12-02:abc.123",
            },
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req_2026-12-02:abc.123"
    async with db.session() as session:
        assert (
            await session.scalars(select(TextingWebhookEvent.request_id))
        ).one() == "req_2026-12-02:abc.123"


async def test_500_answers_carry_the_request_id(app_factory: Callable[..., Any]) -> None:
    """R-IN-3: an unexpected error is a JSON 500 without a stack trace, and it carries X-Request-ID
    like every other answer (Starlette sends it from outside the middleware stack)."""
    app = app_factory()

    async def explode() -> None:
        raise RuntimeError("secret detail that must not leak")

    app.add_api_route("/_test/explode", explode)
    async with _client(app) as client:
        response = await client.get("/_test/explode", headers={"x-request-id": "trace-me-500"})
        generated = await client.get("/_test/explode")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert response.headers["x-request-id"] == "trace-me-500"
    assert len(generated.headers["x-request-id"]) == 32


# --- identifiers (defect 2) -----------------------------------------------------------------------

_LONG_ID_CASES: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
    (
        "ghl",
        "webhookId",
        lambda v: {"type": "ContactUpdate", "id": "c1", "locationId": "loc_test", "webhookId": v},
    ),
    ("ghl", "id", lambda v: {"type": "ContactUpdate", "id": v, "locationId": "loc_test"}),
    ("ghl", "type", lambda v: {"type": v, "id": "c1", "locationId": "loc_test"}),
    ("ghl", "contactId", lambda v: {"type": "InboundMessage", "messageId": "m1", "contactId": v}),
    (
        "ghl_provider",
        "messageId",
        lambda v: {"type": "SMS", "messageId": v, "contactId": "c1", "phone": "+19195550102"},
    ),
    ("aloware", "body.id", lambda v: {"event": "Contact Updated", "body": {"id": v}}),
    ("aloware", "event", lambda v: {"event": v, "body": {"id": 1}}),
    ("aloware", "body.call_id", lambda v: {"event": "Recording Saved", "body": {"call_id": v}}),
    ("texting", "messageId", lambda v: {"eventType": "message.received", "messageId": v}),
    ("texting", "eventType", lambda v: {"eventType": v, "messageId": "m1"}),
    (
        "texting",
        "conversationId",
        lambda v: {"eventType": "message.received", "messageId": "m1", "conversationId": v},
    ),
    ("texting", "status", lambda v: {"eventType": "message.delivered", "messageId": "m1", "status": v}),
    ("broadcast", "broadcastId", lambda v: {"broadcastId": v, "eventType": "analytics_updated"}),
    ("broadcast", "eventId", lambda v: {"broadcastId": "b1", "eventType": "analytics_updated", "eventId": v}),
    ("broadcast", "eventType", lambda v: {"broadcastId": "b1", "eventType": v}),
    (
        "broadcast",
        "timestamp",
        lambda v: {"broadcastId": "b1", "eventType": "analytics_updated", "timestamp": v},
    ),
]
_PATHS = {
    "ghl": "/api/webhooks/ghl",
    "ghl_provider": "/api/webhooks/ghl/provider-delivery",
    "aloware": "/api/webhooks/aloware",
    "texting": "/api/webhooks/texting",
    "broadcast": "/api/webhooks/broadcast",
}
_TABLES = {
    "ghl": WebhookEvent,
    "ghl_provider": WebhookEvent,
    "aloware": WebhookEvent,
    "texting": TextingWebhookEvent,
    "broadcast": BroadcastWebhookEvent,
}


def _signed_headers(source: str, body: bytes, keys: Keys) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if source in {"ghl", "ghl_provider"}:
        headers["x-ghl-signature"] = keys.ed25519_sign(body)
    elif source == "aloware":
        headers["authorization"] = f"Bearer {TEST_SECRETS['aloware_webhook_bearer_token']}"
    elif source == "texting":
        headers["x-texting-signature"] = _hmac(body)
    else:
        headers["x-broadcast-signature"] = _hmac(body)
    return headers


def _random_text(length: int, seed: int) -> str:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize(
    ("source", "field", "build"), _LONG_ID_CASES, ids=[f"{s}-{f}" for s, f, _ in _LONG_ID_CASES]
)
async def test_overlong_identifiers_are_422_never_500(
    app_factory: Callable[..., Any], db: Database, keys: Keys, source: str, field: str, build: Any
) -> None:
    """R-SEC-3, R-IN-3: identifiers and event names over MAX_ID_LENGTH (3,000 and 9,000 random
    characters, past PostgreSQL's b-tree entry limit) get a 422 naming the field, and nothing is
    stored; one of exactly MAX_ID_LENGTH characters is still accepted."""
    async with _client(app_factory()) as client:
        for length in (3000, 9000):
            body = _body(build(_random_text(length, length)))
            response = await client.post(
                _PATHS[source], content=body, headers=_signed_headers(source, body, keys)
            )
            assert response.status_code == 422, (length, response.text)
            assert field.split(".")[-1] in response.json()["error"]
            assert str(MAX_ID_LENGTH) in response.json()["error"]
        assert await _count(db, _TABLES[source]) == 0
        body = _body(build(_random_text(MAX_ID_LENGTH, 7)))
        response = await client.post(
            _PATHS[source], content=body, headers=_signed_headers(source, body, keys)
        )
    assert response.status_code == 200, response.text
    assert await _count(db, _TABLES[source]) == 1


async def test_multibyte_identifiers_stay_under_the_index_limit(
    app_factory: Callable[..., Any], db: Database, keys: Keys
) -> None:
    """R-SEC-3: ids of 4-byte characters within the length limit are stored (the keys they make stay
    under PostgreSQL's b-tree entry size), and a redelivery is still a duplicate."""
    emoji = "\U0001f600" * MAX_ID_LENGTH
    payload = {"type": emoji, "id": emoji, "locationId": "loc_test"}
    body = _body(payload)
    async with _client(app_factory()) as client:
        first = await client.post(
            "/api/webhooks/ghl", content=body, headers=_signed_headers("ghl", body, keys)
        )
        again = await client.post(
            "/api/webhooks/ghl", content=body, headers=_signed_headers("ghl", body, keys)
        )
    assert first.status_code == 200, first.text
    assert again.json() == {"status": "duplicate", "id": first.json()["id"]}
    assert await _count(db, WebhookEvent) == 1


# --- odd timestamps (defect 3) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "²",
        "1²",
        "①",
        "٣٤٥",
        "9999-12-31T23:59:59-12:00",
        "0001-01-01T00:00:00+14:00",
        "9" * 5000,
        1e300,
        -1e20,
        "",
        " ",
    ],
)
@pytest.mark.parametrize("source", ["ghl", "ghl_provider"])
async def test_odd_timestamps_are_refused_not_500(
    app_factory: Callable[..., Any], db: Database, keys: Keys, source: str, timestamp: Any
) -> None:
    """R-SEC-3, SPEC §3.1: a `timestamp` that is no time a sender means (non-ASCII digits, the ends
    of the calendar, huge numbers) is outside the replay window (401), never a 500."""
    payload: dict[str, Any] = (
        {"type": "ContactUpdate", "id": "c1", "locationId": "loc_test", "timestamp": timestamp}
        if source == "ghl"
        else {"type": "SMS", "messageId": "m1", "contactId": "c1", "timestamp": timestamp}
    )
    body = _body(payload)
    async with _client(app_factory()) as client:
        response = await client.post(
            _PATHS[source], content=body, headers=_signed_headers(source, body, keys)
        )
    assert response.status_code == 401, response.text
    assert "timestamp" in response.json()["error"]
    assert await _count(db, WebhookEvent) == 0


# --- empty secrets (defect 4) -----------------------------------------------------------------------


def test_empty_settings_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """R-IN-1: a secret set to the empty (or blank) string is unset, and the settings say which."""
    for name in (
        "VERITY_WEBHOOK_SECRET",
        "ALOWARE_WEBHOOK_BASIC_PASS",
        "METRICS_TOKEN",
        "GHL_WORKFLOW_WEBHOOK_SECRET",
    ):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("ALOWARE_WEBHOOK_BEARER_TOKEN", "   ")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.verity_webhook_secret is None
    assert settings.aloware_webhook_bearer_token is None
    assert settings.aloware_webhook_basic_pass is None
    assert settings.metrics_token is None
    assert settings.ghl_workflow_webhook_secret is None
    assert set(settings.blank_settings) >= {
        "VERITY_WEBHOOK_SECRET",
        "ALOWARE_WEBHOOK_BEARER_TOKEN",
        "ALOWARE_WEBHOOK_BASIC_PASS",
        "METRICS_TOKEN",
        "GHL_WORKFLOW_WEBHOOK_SECRET",
    }


async def test_empty_secrets_fail_closed(app_factory: Callable[..., Any], db: Database) -> None:
    """R-IN-1, R-SEC-1: with every webhook secret set to "", nobody gets in: not an HMAC with the
    empty key, not `Bearer ` nor Basic `user:`, not an empty workflow secret; each 401 names the
    setting to configure."""
    app = app_factory(
        verity_webhook_secret="",
        broadcast_webhook_secret="",
        aloware_webhook_bearer_token="",
        aloware_webhook_basic_pass="",
        ghl_workflow_webhook_secret="",
        ghl_webhook_ed25519_public_key=None,
    )
    texting = _body({"eventType": "message.received", "messageId": "m-empty"})
    broadcast = _body({"broadcastId": "b", "eventType": "analytics_updated"})
    aloware = _body({"event": "Contact Updated", "body": {"id": 5}})
    ghl = _body({"type": "ContactUpdate", "id": "c1", "locationId": "loc_test"})
    empty_basic = base64.b64encode(b"aloware:").decode()
    async with _client(app) as client:
        answers = {
            "texting": await client.post(
                "/api/webhooks/texting",
                content=texting,
                headers={"content-type": "application/json", "x-texting-signature": _hmac(texting, "")},
            ),
            "broadcast": await client.post(
                "/api/webhooks/broadcast",
                content=broadcast,
                headers={"content-type": "application/json", "x-broadcast-signature": _hmac(broadcast, "")},
            ),
            "aloware-bearer": await client.post(
                "/api/webhooks/aloware",
                content=aloware,
                headers={"content-type": "application/json", "authorization": "Bearer "},
            ),
            "aloware-basic": await client.post(
                "/api/webhooks/aloware",
                content=aloware,
                headers={"content-type": "application/json", "authorization": f"Basic {empty_basic}"},
            ),
            "ghl-workflow": await client.post(
                "/api/webhooks/ghl",
                content=ghl,
                headers={"content-type": "application/json", "x-df-webhook-secret": ""},
            ),
        }
    for name, response in answers.items():
        assert response.status_code == 401, (name, response.text)
    assert "VERITY_WEBHOOK_SECRET" in answers["texting"].json()["error"]
    assert "VERITY_WEBHOOK_SECRET" in answers["broadcast"].json()["error"]
    assert "ALOWARE_WEBHOOK_BEARER_TOKEN" in answers["aloware-bearer"].json()["error"]
    assert "GHL_WORKFLOW_WEBHOOK_SECRET" in answers["ghl-workflow"].json()["error"]
    for model in (WebhookEvent, TextingWebhookEvent, BroadcastWebhookEvent):
        assert await _count(db, model) == 0


async def test_empty_metrics_token_is_no_token(app_factory: Callable[..., Any]) -> None:
    """SPEC §8.1: METRICS_TOKEN="" is unset (metrics open as documented), never a token that
    `Authorization: Bearer ` matches; a real token still guards them."""
    async with _client(app_factory(metrics_token="")) as client:
        assert (await client.get("/metrics")).status_code == 200
    async with _client(app_factory(metrics_token="m-token")) as client:
        assert (await client.get("/metrics", headers={"authorization": "Bearer "})).status_code == 401
        assert (await client.get("/metrics", headers={"authorization": "Bearer m-token"})).status_code == 200


# --- bodies that stall or vanish (defects 6, 7) -----------------------------------------------------


async def test_stalled_body_gets_408_and_nothing_is_stored(
    app_factory: Callable[..., Any], db: Database
) -> None:
    """R-SEC-3, R-IN-3: a body that stops arriving is answered 408 with `Connection: close` once
    HTTP_BODY_TIMEOUT_SECONDS have passed, instead of holding the request open; nothing is stored."""
    never = asyncio.Event()

    async def stalling_body() -> AsyncIterator[bytes]:
        yield b'{"eventType": "message.rec'
        await never.wait()

    async with _client(app_factory(http_body_timeout_seconds=0.3)) as client:
        response = await client.post(
            "/api/webhooks/texting",
            content=stalling_body(),
            headers={"content-type": "application/json", "x-texting-signature": "00"},
        )
    assert response.status_code == 408
    assert response.headers["connection"] == "close"
    assert "body" in response.json()["error"]
    assert await _count(db, TextingWebhookEvent) == 0


async def test_client_disconnect_is_an_info_line_not_a_traceback(
    app_factory: Callable[..., Any], db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sender that disconnects mid-body is logged once at info, without a traceback or an error
    line, and nothing is stored."""
    app = app_factory()
    messages = [
        {"type": "http.request", "body": b'{"eventType": "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/webhooks/texting",
        "raw_path": b"/api/webhooks/texting",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    capsys.readouterr()
    await app(scope, receive, send)
    err = capsys.readouterr().err
    assert "http.client_disconnected" in err
    assert "Traceback" not in err
    assert '"level": "error"' not in err
    assert await _count(db, TextingWebhookEvent) == 0


# --- memory under large bodies (defect 9) -----------------------------------------------------------


async def test_bytes_in_flight_are_bounded(app_factory: Callable[..., Any], db: Database) -> None:
    """R-SEC-3, R-IN-3: while one process holds INGEST_MAX_BYTES_IN_FLIGHT of webhook bodies, the next
    large body is not read: it waits, then gets 503 with Retry-After (the sender retries); once the
    first is answered the next one is accepted. Nothing is lost or half-written."""
    app = app_factory(max_webhook_bytes=4096, ingest_max_bytes_in_flight=4096, ingest_budget_wait_seconds=0.2)
    budget = app.state.ingest.body_budget
    release = asyncio.Event()
    padding = "x" * 3000

    def texting_body(message_id: str) -> bytes:
        return _body({"eventType": "message.received", "messageId": message_id, "pad": padding})

    first_body = texting_body("m-first")

    async def slow_first() -> AsyncIterator[bytes]:
        yield first_body[:-10]
        await release.wait()
        yield first_body[-10:]

    async with _client(app) as client:
        headers = {"content-type": "application/json", "x-texting-signature": _hmac(first_body)}
        headers["content-length"] = str(len(first_body))
        first = asyncio.create_task(
            client.post("/api/webhooks/texting", content=slow_first(), headers=headers)
        )
        deadline = time.monotonic() + 30
        while budget.in_use < len(first_body) - 10:
            assert time.monotonic() < deadline, "the first request never took room for its body"
            await asyncio.sleep(0.01)
        second_body = texting_body("m-second")
        refused = await client.post(
            "/api/webhooks/texting",
            content=second_body,
            headers={"content-type": "application/json", "x-texting-signature": _hmac(second_body)},
        )
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        release.set()
        assert (await first).status_code == 200
        assert budget.in_use == 0
        retried = await client.post(
            "/api/webhooks/texting",
            content=second_body,
            headers={"content-type": "application/json", "x-texting-signature": _hmac(second_body)},
        )
    assert retried.status_code == 200
    assert retried.json()["status"] == "accepted"
    assert await _count(db, TextingWebhookEvent) == 2


async def test_a_declared_body_that_never_comes_holds_no_room(
    app_factory: Callable[..., Any], db: Database
) -> None:
    """R-SEC-3: room in the body budget is taken for bytes received, not for the Content-Length a
    request declares: unauthenticated requests that declare a megabyte and send nothing cannot lock
    the signed senders out."""
    app = app_factory(ingest_max_bytes_in_flight=1_048_576, ingest_budget_wait_seconds=0.2)
    never = asyncio.Event()

    async def nothing() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""

    from df_middleware.observability import WEBHOOKS_RECEIVED

    received_before = WEBHOOKS_RECEIVED.labels("texting")._value.get()
    async with _client(app) as client:
        squatters = [
            asyncio.create_task(
                client.post(
                    "/api/webhooks/texting",
                    content=nothing(),
                    headers={"content-type": "application/json", "content-length": "1048576"},
                )
            )
            for _ in range(4)
        ]
        deadline = time.monotonic() + 30
        while WEBHOOKS_RECEIVED.labels("texting")._value.get() < received_before + 4:
            assert time.monotonic() < deadline, "the squatting requests never reached ingest"
            await asyncio.sleep(0.01)
        body = _body({"eventType": "message.received", "messageId": "m-real"})
        real = await client.post(
            "/api/webhooks/texting",
            content=body,
            headers={"content-type": "application/json", "x-texting-signature": _hmac(body)},
        )
        for task in squatters:
            task.cancel()
    assert real.status_code == 200, real.text
    assert app.state.ingest.body_budget.in_use == 0
    assert await _count(db, TextingWebhookEvent) == 1


async def test_json_with_too_many_values_is_413(app_factory: Callable[..., Any], db: Database) -> None:
    """R-SEC-3, R-PERF-5: a body of many tiny values (which parses to ~60 times its size) is refused
    with 413 before it is parsed, signed or not; a body within MAX_JSON_VALUES is stored."""
    many = (
        b'{"eventType": "message.received", "messageId": "m-many", "x": [' + b",".join([b"{}"] * 1000) + b"]}"
    )
    few = b'{"eventType": "message.received", "messageId": "m-few", "x": [' + b",".join([b"{}"] * 50) + b"]}"
    async with _client(app_factory(max_json_values=500)) as client:
        refused = await client.post(
            "/api/webhooks/texting",
            content=many,
            headers={"content-type": "application/json", "x-texting-signature": _hmac(many)},
        )
        accepted = await client.post(
            "/api/webhooks/texting",
            content=few,
            headers={"content-type": "application/json", "x-texting-signature": _hmac(few)},
        )
    assert refused.status_code == 413
    assert "500 values" in refused.json()["error"]
    assert accepted.status_code == 200
    assert await _count(db, TextingWebhookEvent) == 1


def test_in_memory_sqlite_is_refused() -> None:
    """R-RUN-3: an in-memory SQLite URL is a configuration error (each connection would see its own
    empty database: migrations, server and worker would never share one)."""
    from pydantic import ValidationError

    for url in ("sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite://"):
        with pytest.raises(ValidationError, match="in-memory"):
            Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]


# --- connection limits on a real socket (defects 1, 6) ---------------------------------------------


def test_answer_before_the_body_ends_the_connection(served: tuple[str, int]) -> None:
    """R-SEC-3: when the answer comes before the request's body was received (a 404, a 401 or 413 on
    the headers), the connection is closed: bytes trickled afterwards would start no request and arm
    no deadline, holding the connection forever."""
    with socket.create_connection(served, timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")  # the trickle
    assert received.startswith(b"HTTP/1.1 200 ")


@pytest.fixture
def served(make_settings: Callable[..., Settings]) -> Iterator[tuple[str, int]]:
    """The service on a real port with uvicorn and the bounded protocol, tight limits."""
    settings = make_settings(
        auto_migrate=False,
        http_header_timeout_seconds=0.5,
        http_body_timeout_seconds=0.5,
        max_request_header_bytes=8192,
    )
    app = create_app(settings, run_worker=False)
    with serve_config(server_config(app, settings, host="127.0.0.1", port=0)) as url:
        host, _, port = url.removeprefix("http://").partition(":")
        yield host, int(port)


def _exchange(address: tuple[str, int], data: bytes, *, then_wait: bool = True) -> bytes:
    """Send `data`, then read until the server closes the connection (a deadline far beyond the
    limits under test guards against a server that never does)."""
    with socket.create_connection(address, timeout=60) as sock:
        if data:
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def test_oversized_headers_get_431(served: tuple[str, int]) -> None:
    """R-SEC-3: request headers past MAX_REQUEST_HEADER_BYTES are answered 431 and the connection
    closed before the rest is read; a normal request on a new connection still works."""
    request = (
        b"POST /api/webhooks/texting HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + b"a" * 60_000 + b"\r\n\r\n"
    )
    answer = _exchange(served, request)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"http://{served[0]}:{served[1]}/healthz").status_code == 200


def test_partial_request_line_gets_408_and_is_closed(served: tuple[str, int]) -> None:
    """R-SEC-3: a client that starts a request and stops (slowloris) is answered 408 and cut off
    after HTTP_HEADER_TIMEOUT_SECONDS; meanwhile the server answers others."""
    with socket.create_connection(served, timeout=60) as slow:
        slow.sendall(b"POST /api/webhooks/texting HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        assert httpx.get(f"http://{served[0]}:{served[1]}/healthz").status_code == 200
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := slow.recv(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 408 ")


def test_idle_connection_is_closed(served: tuple[str, int]) -> None:
    """R-SEC-3: a connection that never sends a byte is closed (no answer owed)."""
    assert _exchange(served, b"") == b""


def test_stalled_body_on_a_socket_gets_408(served: tuple[str, int]) -> None:
    """R-SEC-3: headers complete, body stalls: 408 after HTTP_BODY_TIMEOUT_SECONDS, connection closed."""
    request = (
        b"POST /api/webhooks/texting HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500\r\n\r\n{"eventType": '
    )
    answer = _exchange(served, request)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()


# --- masking in linear time (defect 1) --------------------------------------------------------------

_MASKING_PROBE = r"""
import sys
from df_middleware.observability import mask_text
size = 1_000_000
for pattern in ("a", "(1-", "1", "a@", "1 ", "x@y.", "1.1-", "+1(", "token=a&"):
    text = pattern * (size // len(pattern))
    masked = mask_text(text + "x")
    assert masked.endswith("x"), pattern
print("ok")
"""


def test_masking_hostile_text_finishes() -> None:
    """R-SEC-4, R-SEC-3: masking is linear in its input: a megabyte of each pattern that made the old
    regular expressions quadratic (8.4 s for 60,000 characters) is masked. Run in a subprocess so
    that a regression fails the test (after a deadline a thousand times what linear takes) instead of
    hanging the suite."""
    done = subprocess.run(
        [sys.executable, "-c", _MASKING_PROBE], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_masking_still_masks() -> None:
    """R-SEC-4: the linear patterns still mask what the old ones did."""
    from df_middleware.observability import mask_text

    assert mask_text("call +1 (919) 555-1234 now") == "call +1919***1234 now"
    assert mask_text("mail Sarah.Lee@example.com.") == "mail S***@example.com."
    assert mask_text("tel:+19195551234") == "tel:+1919***1234"
    assert mask_text("https://x/y?api_token=abc&z=1") == "https://x/y?api_token=***&z=1"
    for untouched in (
        "id 550e8400-e29b-41d4-a716-446655440000",
        "12345678abc",
        "2026-12-02T00:00:00Z",
        "PostgreSQL at 10.255.255.1:5432",
        "request 2024-01-15 10:00:00 took",
        "event 12345678",
    ):
        assert mask_text(untouched) == untouched


def test_log_lines_are_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    """R-SEC-4: whatever a sender puts in a logged value, the log line stays small and masked."""
    from df_middleware.observability import MAX_LOGGED_CHARS, configure_logging, get_logger

    configure_logging("info", "json")
    capsys.readouterr()
    get_logger("test").info("probe", sender_value="(1-" * 400_000, nested={"k": "9" * 100_000})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert len(line) < 4 * MAX_LOGGED_CHARS
    assert record["sender_value"].endswith("[1200000 chars]")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_command_enforces_the_connection_limits(
    tmp_path: Any,
    process_runner: Callable[..., Any],
    workers: int,
) -> None:
    """R-SEC-3, R-RUN-2: `df-middleware serve` (one process, and `--workers 2`) runs the bounded
    protocol with the configured limits: oversized headers get 431, a stalled request line 408, and
    the server keeps answering."""
    from tests.test_service_process import _free_port, _stop_gracefully, _wait_http, clean_env

    port = _free_port()
    env = clean_env(
        HTTP_HEADER_TIMEOUT_SECONDS="0.5",
        MAX_REQUEST_HEADER_BYTES="4096",
        DATABASE_URL=f"sqlite:///{tmp_path}/s.db",
    )
    command = process_runner(
        ["serve", "--no-worker", "--port", str(port), "--workers", str(workers)], tmp_path, env
    )
    assert _wait_http(f"http://127.0.0.1:{port}/healthz").status_code == 200
    address = ("127.0.0.1", port)
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8000 + b"\r\n\r\n"
    assert _exchange(address, big).startswith(b"HTTP/1.1 431 ")
    assert _exchange(address, b"GET /heal").startswith(b"HTTP/1.1 408 ")
    assert _wait_http(f"http://127.0.0.1:{port}/healthz").status_code == 200
    _stop_gracefully(command)
