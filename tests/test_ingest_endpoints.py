"""The five webhook endpoints against the real application and a real database (both engines).

Requests go through the whole ASGI application in-process (httpx ASGITransport); the database
is real. Assertions check responses and the rows that were (or were not) written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.db.models import BroadcastWebhookEvent, TextingWebhookEvent, WebhookEvent
from df_middleware.db.session import Database
from tests.conftest import TEST_SECRETS, Keys

ClientFactory = Callable[..., Any]


@pytest.fixture
async def client_factory(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """Build a client for an app with the given setting overrides (no worker: ingest only)."""
    apps: list[Any] = []

    async def factory(**overrides: Any) -> httpx.AsyncClient:
        settings = make_settings(auto_migrate=False, **overrides)
        app = create_app(settings, run_worker=False)
        apps.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    yield factory
    for app in apps:
        await app.state.db.dispose()


@pytest.fixture
async def client(client_factory: Callable[..., Any]) -> httpx.AsyncClient:
    return await client_factory()  # type: ignore[no-any-return]


def _body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _ghl_headers(keys: Keys, body: bytes, scheme: str) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if scheme == "ed25519":
        headers["x-ghl-signature"] = keys.ed25519_sign(body)
    elif scheme == "rsa":
        headers["x-wh-signature"] = keys.rsa_sign(body)
    elif scheme == "workflow":
        headers["x-df-webhook-secret"] = TEST_SECRETS["ghl_workflow_webhook_secret"]
    return headers


def _hmac(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _contact_update(**extra: Any) -> dict[str, Any]:
    return {
        "type": "ContactUpdate",
        "locationId": "loc_test",
        "id": "contact-1",
        "phone": "+19195551234",
        "firstName": "Sarah",
        **extra,
    }


async def _count(db: Database, model: Any) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _rows(db: Database, model: Any) -> list[Any]:
    async with db.session() as session:
        return list((await session.scalars(select(model).order_by(model.received_at))).all())


# --- GHL signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ed25519", "rsa"])
async def test_ghl_signed_webhook_is_stored(
    client: httpx.AsyncClient, db: Database, keys: Keys, scheme: str
) -> None:
    """R-IN-1, R-IN-2, R-IN-3, R-IN-5, R-SEC-2: a signed GHL webhook is verified, stored and classified."""
    body = _body(_contact_update(webhookId="wh-1"))
    response = await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, scheme))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["status"] == "accepted"
    [row] = await _rows(db, WebhookEvent)
    assert str(row.id) == data["id"]
    assert (row.source, row.event_type, row.entity_type, row.entity_id) == (
        "ghl",
        "ContactUpdate",
        "contact",
        "contact-1",
    )
    assert row.status == "pending"
    assert row.signature_verified is True
    assert row.dedupe_key == "ghl:wh-1"
    assert row.ordering_key == "ghl:contact:contact-1"
    assert row.payload_json["firstName"] == "Sarah"


@pytest.mark.parametrize("scheme", ["ed25519", "rsa"])
async def test_ghl_tampered_body_is_refused(
    client: httpx.AsyncClient, db: Database, keys: Keys, scheme: str
) -> None:
    """R-IN-1, R-SEC-2: a signature over other bytes is refused with 401 and nothing is stored."""
    body = _body(_contact_update())
    headers = _ghl_headers(keys, body, scheme)
    tampered = body.replace(b"Sarah", b"Mallory")
    response = await client.post("/api/webhooks/ghl", content=tampered, headers=headers)
    assert response.status_code == 401
    assert "does not match" in response.json()["error"]
    assert await _count(db, WebhookEvent) == 0


async def test_ghl_garbage_signature_is_401_not_500(client: httpx.AsyncClient, db: Database) -> None:
    """R-SEC-3: a malformed signature header is an authentication failure, never a server error."""
    body = _body(_contact_update())
    for header in ("x-ghl-signature", "x-wh-signature"):
        response = await client.post(
            "/api/webhooks/ghl",
            content=body,
            headers={"content-type": "application/json", header: "%%%not-b64"},
        )
        assert response.status_code == 401
    assert await _count(db, WebhookEvent) == 0


async def test_ghl_rsa_defaults_to_ghl_published_key(
    client_factory: ClientFactory, db: Database, keys: Keys, contracts: Path
) -> None:
    """SPEC §3.1: without GHL_WEBHOOK_PUBLIC_KEY the RSA check uses the key GHL publishes."""
    from cryptography.hazmat.primitives import serialization

    from df_middleware.ingest.auth import GHL_PUBLISHED_KEY

    published = serialization.load_pem_public_key(
        (contracts / "ghl" / "webhook-rsa-public-key.pem").read_bytes()
    )
    shipped = serialization.load_pem_public_key(GHL_PUBLISHED_KEY.read_bytes())
    assert shipped.public_numbers() == published.public_numbers()  # type: ignore[union-attr]
    client = await client_factory(ghl_webhook_public_key=None)
    body = _body(_contact_update())
    response = await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "rsa"))
    assert response.status_code == 401  # signed with our test key, not GHL's
    assert await _count(db, WebhookEvent) == 0


async def test_ghl_rsa_key_from_file_path(
    client_factory: ClientFactory, db: Database, keys: Keys, tmp_path: Path
) -> None:
    """SPEC §14: GHL_WEBHOOK_PUBLIC_KEY may be a path to a PEM file."""
    pem = tmp_path / "ghl.pem"
    pem.write_text(keys.rsa_public_pem)
    client = await client_factory(ghl_webhook_public_key=str(pem))
    body = _body(_contact_update())
    response = await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "rsa"))
    assert response.status_code == 200


async def test_ghl_workflow_secret(client: httpx.AsyncClient, db: Database, keys: Keys) -> None:
    """SPEC §3.1, R-SEC-2: unsigned workflow webhooks need the shared secret; a wrong one is 401."""
    payload = {"event": "contact.updated", "contactId": "c-7", "locationId": "loc_test"}
    body = _body(payload)
    ok = await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "workflow"))
    assert ok.status_code == 200
    wrong = await client.post(
        "/api/webhooks/ghl",
        content=_body({**payload, "contactId": "c-8"}),
        headers={"content-type": "application/json", "x-df-webhook-secret": "guess"},
    )
    assert wrong.status_code == 401
    assert "guess" not in wrong.text
    assert TEST_SECRETS["ghl_workflow_webhook_secret"] not in wrong.text
    [row] = await _rows(db, WebhookEvent)
    assert row.signature_verified is False
    assert row.entity_id == "c-7"


async def test_unsigned_ghl_refused_when_no_workflow_secret(
    client_factory: ClientFactory, db: Database
) -> None:
    """R-IN-1: fail closed; the 401 names the missing setting."""
    client = await client_factory(ghl_workflow_webhook_secret=None)
    response = await client.post(
        "/api/webhooks/ghl",
        content=_body(_contact_update()),
        headers={"content-type": "application/json", "x-df-webhook-secret": "anything"},
    )
    assert response.status_code == 401
    assert "GHL_WORKFLOW_WEBHOOK_SECRET" in response.json()["error"]
    assert await _count(db, WebhookEvent) == 0


@pytest.mark.parametrize(
    ("age", "accepted"),
    [(timedelta(seconds=30), True), (timedelta(minutes=10), False), (-timedelta(minutes=10), False)],
)
async def test_ghl_replay_window(
    client: httpx.AsyncClient, db: Database, keys: Keys, age: timedelta, accepted: bool
) -> None:
    """SPEC §3.1: a `timestamp` further than the tolerance from now is refused (401)."""
    sent_at = (datetime.now(UTC) - age).isoformat().replace("+00:00", "Z")
    body = _body(_contact_update(timestamp=sent_at))
    response = await client.post(
        "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
    )
    assert response.status_code == (200 if accepted else 401)
    assert await _count(db, WebhookEvent) == (1 if accepted else 0)


async def test_ghl_replay_window_epoch_millis_and_disabled(
    client_factory: ClientFactory, db: Database, keys: Keys
) -> None:
    """SPEC §3.1: epoch milliseconds are accepted; tolerance 0 disables the check."""
    client = await client_factory()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    body = _body(_contact_update(timestamp=now_ms))
    assert (
        await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "rsa"))
    ).status_code == 200
    lenient = await client_factory(ghl_webhook_tolerance_seconds=0)
    old = _body(_contact_update(timestamp="2020-01-01T00:00:00Z", firstName="Old"))
    response = await lenient.post("/api/webhooks/ghl", content=old, headers=_ghl_headers(keys, old, "rsa"))
    assert response.status_code == 200
    assert await _count(db, WebhookEvent) == 2


# --- duplicates and dedupe keys -----------------------------------------------------------------


async def test_duplicate_delivery_returns_existing_id(
    client: httpx.AsyncClient, db: Database, keys: Keys
) -> None:
    """R-IN-3, R-IN-4: a redelivery answers `duplicate` with the first event's id; one row."""
    body = _body(_contact_update())
    first = await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519"))
    second = await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "rsa"))
    assert first.json()["status"] == "accepted"
    assert second.json() == {"status": "duplicate", "id": first.json()["id"]}
    assert await _count(db, WebhookEvent) == 1


async def test_two_updates_to_one_contact_are_two_events(
    client: httpx.AsyncClient, db: Database, keys: Keys
) -> None:
    """R-IN-4: the seed's source+type+entity key would drop the second update; ours keeps both."""
    for first_name in ("Sarah", "Sara"):
        body = _body(_contact_update(firstName=first_name))
        response = await client.post(
            "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
        )
        assert response.json()["status"] == "accepted"
    rows = await _rows(db, WebhookEvent)
    assert [r.payload_json["firstName"] for r in rows] == ["Sarah", "Sara"]
    assert len({r.dedupe_key for r in rows}) == 2
    assert {r.ordering_key for r in rows} == {"ghl:contact:contact-1"}


async def test_same_webhook_id_is_a_duplicate_even_if_body_differs(
    client: httpx.AsyncClient, db: Database, keys: Keys
) -> None:
    """R-IN-4: the provider's delivery id decides."""
    for name in ("A", "B"):
        body = _body(_contact_update(webhookId="wh-same", firstName=name))
        await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519"))
    assert await _count(db, WebhookEvent) == 1


async def test_provider_delivery_retry_is_one_event(
    client: httpx.AsyncClient, db: Database, keys: Keys, contracts: Path
) -> None:
    """SPEC §3.2, R-IN-4: GHL retrying a provider delivery of one messageId stores one event."""
    payload = json.loads((contracts / "ghl/webhooks/ProviderOutboundMessage.json").read_text())["examples"][0]
    ids = set()
    for attempt in range(2):
        body = _body({**payload, "attempt": attempt})  # a retry may differ in incidental fields
        response = await client.post(
            "/api/webhooks/ghl/provider-delivery", content=body, headers=_ghl_headers(keys, body, "ed25519")
        )
        assert response.status_code == 200
        ids.add(response.json()["id"])
    assert len(ids) == 1
    [row] = await _rows(db, WebhookEvent)
    assert (row.event_type, row.entity_type, row.dedupe_key) == (
        "ProviderOutboundMessage",
        "message",
        "ghl-provider:GKJxs4P5L8dWc5CFUITM",
    )


# --- Aloware ---------------------------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_aloware_basic_and_bearer(client: httpx.AsyncClient, db: Database, contracts: Path) -> None:
    """SPEC §3.3, R-SEC-2: Basic and Bearer both work when configured; wrong credentials are 401."""
    call = json.loads((contracts / "aloware/webhooks/Call_Disposed.json").read_text())
    summary = json.loads((contracts / "aloware/webhooks/Call_Summarized.json").read_text())
    basic = _basic(TEST_SECRETS["aloware_webhook_basic_user"], TEST_SECRETS["aloware_webhook_basic_pass"])
    bearer = "Bearer " + TEST_SECRETS["aloware_webhook_bearer_token"]
    assert (
        await client.post("/api/webhooks/aloware", json=call, headers={"authorization": basic})
    ).status_code == 200
    assert (
        await client.post("/api/webhooks/aloware", json=summary, headers={"authorization": bearer})
    ).status_code == 200
    for wrong in (_basic("aloware", "nope"), "Bearer nope", "Basic !!!", ""):
        response = await client.post(
            "/api/webhooks/aloware", json={**call, "x": wrong}, headers={"authorization": wrong}
        )
        assert response.status_code == 401, wrong
    rows = await _rows(db, WebhookEvent)
    assert [(r.source, r.event_type, r.entity_type, r.entity_id) for r in rows] == [
        ("aloware", "Call Disposed", "call", "9912345"),
        ("aloware", "Call Summarized", "summary", "55501"),
    ]
    assert all(r.ordering_key == "phone:+19195551234" for r in rows)


async def test_aloware_unconfigured_is_401_naming_settings(
    client_factory: ClientFactory, db: Database
) -> None:
    """R-IN-1: with neither Basic nor Bearer configured, Aloware webhooks are refused."""
    client = await client_factory(
        aloware_webhook_basic_user=None, aloware_webhook_basic_pass=None, aloware_webhook_bearer_token=None
    )
    response = await client.post(
        "/api/webhooks/aloware",
        json={"event": "Contact Created", "body": {"id": 1}},
        headers={"authorization": "Bearer x"},
    )
    assert response.status_code == 401
    assert "ALOWARE_WEBHOOK_BEARER_TOKEN" in response.json()["error"]
    assert await _count(db, WebhookEvent) == 0


async def test_aloware_allowed_events_filter(
    client_factory: ClientFactory, db: Database, contracts: Path
) -> None:
    """SPEC §3.3: ALOWARE_WEBHOOK_ALLOWED_EVENTS stores only those; others answer 200 ignored."""
    client = await client_factory(aloware_webhook_allowed_events="call disposed, Contact Created")
    bearer = {"authorization": "Bearer " + TEST_SECRETS["aloware_webhook_bearer_token"]}
    call = json.loads((contracts / "aloware/webhooks/Call_Disposed.json").read_text())
    recording = json.loads((contracts / "aloware/webhooks/Recording_Saved.json").read_text())
    assert (await client.post("/api/webhooks/aloware", json=call, headers=bearer)).json()[
        "status"
    ] == "accepted"
    assert (await client.post("/api/webhooks/aloware", json=recording, headers=bearer)).json() == {
        "status": "ignored"
    }
    assert await _count(db, WebhookEvent) == 1


# --- texting and broadcast -------------------------------------------------------------------------


async def test_texting_hmac_and_normalised_columns(
    client: httpx.AsyncClient, db: Database, contracts: Path
) -> None:
    """SPEC §3.4, R-ID-1: HMAC-signed texting webhook stored with E.164 number columns."""
    body = (contracts / "verity/webhooks/texting.nested.message.received.json").read_bytes()
    signature = _hmac(body, TEST_SECRETS["verity_webhook_secret"])
    response = await client.post(
        "/api/webhooks/texting",
        content=body,
        headers={"content-type": "application/json", "x-texting-signature": signature},
    )
    assert response.status_code == 200, response.text
    [row] = await _rows(db, TextingWebhookEvent)
    assert (row.event_type, row.entity_id, row.from_number, row.to_number, row.conversation_id) == (
        "message.received",
        "tlx_01HZX0C1",
        "+19195557777",
        "+19195550000",
        "chat_7790",
    )
    assert row.signature_verified is True


async def test_texting_wrong_signature_and_plain_secret(
    client_factory: ClientFactory, db: Database, contracts: Path
) -> None:
    """SPEC §3.4: wrong HMAC is 401; the plain secret header only when TEXTING_ALLOW_PLAIN_SECRET=true."""
    body = (contracts / "verity/webhooks/texting.message.received.json").read_bytes()
    strict = await client_factory()
    headers = {"content-type": "application/json"}
    assert (
        await strict.post(
            "/api/webhooks/texting", content=body, headers={**headers, "x-texting-signature": "00"}
        )
    ).status_code == 401
    plain = {**headers, "x-texting-secret": TEST_SECRETS["verity_webhook_secret"]}
    assert (await strict.post("/api/webhooks/texting", content=body, headers=plain)).status_code == 401
    assert await _count(db, TextingWebhookEvent) == 0
    lenient = await client_factory(texting_allow_plain_secret=True)
    response = await lenient.post("/api/webhooks/texting", content=body, headers=plain)
    assert response.status_code == 200
    [row] = await _rows(db, TextingWebhookEvent)
    assert row.signature_verified is False


async def test_texting_unconfigured_names_setting(client_factory: ClientFactory, db: Database) -> None:
    """R-IN-1: no VERITY_WEBHOOK_SECRET → 401 naming it."""
    client = await client_factory(verity_webhook_secret=None)
    response = await client.post(
        "/api/webhooks/texting", json={"eventType": "message.received"}, headers={"x-texting-signature": "ab"}
    )
    assert response.status_code == 401
    assert "VERITY_WEBHOOK_SECRET" in response.json()["error"]


async def test_broadcast_secret_override(
    client_factory: ClientFactory, db: Database, contracts: Path
) -> None:
    """SPEC §3.5: X-Broadcast-Signature with VERITY_WEBHOOK_SECRET, or BROADCAST_WEBHOOK_SECRET when set."""
    body = (contracts / "verity/webhooks/broadcast.broadcast_completed.with_analytics.json").read_bytes()
    headers = {"content-type": "application/json"}
    default = await client_factory()
    signed_verity = {**headers, "x-broadcast-signature": _hmac(body, TEST_SECRETS["verity_webhook_secret"])}
    assert (
        await default.post("/api/webhooks/broadcast", content=body, headers=signed_verity)
    ).status_code == 200
    override = await client_factory(broadcast_webhook_secret="bc-only")
    assert (
        await override.post("/api/webhooks/broadcast", content=body, headers=signed_verity)
    ).status_code == 401
    signed_bc = {**headers, "x-broadcast-signature": "sha256=" + _hmac(body, "bc-only")}
    response = await override.post("/api/webhooks/broadcast", content=body, headers=signed_bc)
    assert response.json()["status"] == "duplicate"  # same event as the first delivery
    [row] = await _rows(db, BroadcastWebhookEvent)
    assert (row.broadcast_id, row.event_type, row.dedupe_key) == (
        "bc_2f9a1c",
        "broadcast_completed",
        "broadcast:bc_2f9a1c:broadcast_completed:bcev_0002",
    )


async def test_every_contract_example_is_accepted(
    client: httpx.AsyncClient, db: Database, keys: Keys, contracts: Path
) -> None:
    """R-IN-3, R-IN-5: every example the external systems document is accepted and classified."""
    bearer = {"authorization": "Bearer " + TEST_SECRETS["aloware_webhook_bearer_token"]}
    expected = 0
    for path in sorted((contracts / "ghl/webhooks").glob("*.json")):
        for example in json.loads(path.read_text())["examples"]:
            url = (
                "/api/webhooks/ghl/provider-delivery"
                if path.stem == "ProviderOutboundMessage"
                else "/api/webhooks/ghl"
            )
            body = _body(example)
            response = await client.post(url, content=body, headers=_ghl_headers(keys, body, "ed25519"))
            assert response.status_code == 200, (path.name, response.text)
            expected += response.json()["status"] == "accepted"
    for path in sorted((contracts / "aloware/webhooks").glob("*.json")):
        response = await client.post(
            "/api/webhooks/aloware",
            content=path.read_bytes(),
            headers={**bearer, "content-type": "application/json"},
        )
        assert response.status_code == 200, (path.name, response.text)
        expected += 1
    assert await _count(db, WebhookEvent) == expected
    rows = await _rows(db, WebhookEvent)
    assert not [r for r in rows if r.entity_type == "unknown"]
    for path in sorted((contracts / "verity/webhooks").glob("*.json")):
        body = path.read_bytes()
        kind = "texting" if path.name.startswith("texting") else "broadcast"
        header = f"x-{kind}-signature"
        response = await client.post(
            f"/api/webhooks/{kind}",
            content=body,
            headers={
                "content-type": "application/json",
                header: _hmac(body, TEST_SECRETS["verity_webhook_secret"]),
            },
        )
        assert response.status_code == 200, (path.name, response.text)
    assert await _count(db, TextingWebhookEvent) == 7
    assert await _count(db, BroadcastWebhookEvent) == 2


# --- refusals --------------------------------------------------------------------------------------


async def test_body_too_large_is_413(client_factory: ClientFactory, db: Database, keys: Keys) -> None:
    """R-IN-3, R-SEC-3: bodies over MAX_WEBHOOK_BYTES are refused before being read whole."""
    client = await client_factory(max_webhook_bytes=2048)
    body = _body(_contact_update(notes="x" * 4096))
    response = await client.post(
        "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
    )
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(8):
            yield b" " * 512

    streamed = await client.post(
        "/api/webhooks/ghl", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await _count(db, WebhookEvent) == 0


async def test_non_json_content_type_is_415(client: httpx.AsyncClient, db: Database, keys: Keys) -> None:
    """R-IN-3: a content type that is not JSON is refused."""
    body = _body(_contact_update())
    headers = {**_ghl_headers(keys, body, "ed25519"), "content-type": "text/plain"}
    response = await client.post("/api/webhooks/ghl", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json() == {"error": "content type must be application/json"}


async def test_invalid_json_is_400_and_incomplete_json_is_422(
    client: httpx.AsyncClient, db: Database, keys: Keys
) -> None:
    """R-IN-3, R-SEC-3: invalid JSON → 400; JSON without an event type or not an object → 422;
    nested too deep → 400."""
    cases = [
        (b"{not json", 400),
        (_body({"locationId": "loc_test", "id": "c1"}), 422),
        (_body([1, 2, 3]), 422),
        (_body({"type": "ContactUpdate", "locationId": "loc_test"}), 422),
    ]
    deep: Any = "leaf"
    for _ in range(60):
        deep = {"n": deep}
    cases.append((_body({"type": "ContactUpdate", "id": "c1", "deep": deep}), 400))
    for body, status in cases:
        response = await client.post(
            "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
        )
        assert response.status_code == status, (body[:40], response.text)
        assert set(response.json()) == {"error"}
    assert await _count(db, WebhookEvent) == 0


async def test_rate_limit_is_429_with_retry_after(
    client_factory: ClientFactory, db: Database, keys: Keys
) -> None:
    """R-IN-3: over the per-source ingest limit → 429 with Retry-After; other sources unaffected."""
    client = await client_factory(ingest_rate_limit_per_second=3)
    statuses = []
    for n in range(6):
        body = _body(_contact_update(firstName=f"n{n}"))
        response = await client.post(
            "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
    assert statuses.count(429) >= 1
    assert await _count(db, WebhookEvent) == statuses.count(200)
    body = b'{"eventType":"message.received","messageId":"m-rl"}'
    other = await client.post(
        "/api/webhooks/texting",
        content=body,
        headers={
            "content-type": "application/json",
            "x-texting-signature": _hmac(body, TEST_SECRETS["verity_webhook_secret"]),
        },
    )
    assert other.status_code == 200


async def test_database_unavailable_is_503_never_2xx(
    backend: str, make_settings: Callable[..., Settings], keys: Keys, tmp_path: Path
) -> None:
    """R-IN-2, R-REL-2: when the database cannot be reached the sender is told to retry
    (503 + Retry-After), never 2xx."""
    if backend == "postgresql":
        url = "postgresql://postgres@127.0.0.1:1/nowhere"
    else:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file where a directory should be")
        url = f"sqlite:///{blocker}/db.sqlite"
    settings = make_settings(database_url=url, auto_migrate=False)
    app = create_app(settings, run_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        body = _body(_contact_update())
        response = await client.post(
            "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
        )
    await app.state.db.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"error": "database unavailable, retry later"}


async def test_health_ready_and_metrics(client_factory: ClientFactory, db: Database, keys: Keys) -> None:
    """SPEC §8.1, §8.4: health, readiness (migrations current) and ingest metrics."""
    client = await client_factory()
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    body = _body(_contact_update())
    await client.post("/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519"))
    metrics = (await client.get("/metrics")).text
    assert 'df_webhooks_accepted_total{source="ghl"}' in metrics
    assert 'df_queue_depth{status="pending",table="webhook_events"} 1.0' in metrics
    protected = await client_factory(metrics_token="m-token")
    assert (await protected.get("/metrics")).status_code == 401
    assert (await protected.get("/metrics", headers={"authorization": "Bearer m-token"})).status_code == 200


async def test_unknown_route_error_body_is_json(client: httpx.AsyncClient) -> None:
    """R-IN-3: error bodies are JSON `{"error": ...}`."""
    response = await client.get("/api/webhooks/ghl")
    assert response.status_code == 405
    assert "error" in response.json()


async def test_concurrent_identical_deliveries_store_one_event(
    client: httpx.AsyncClient, db: Database, keys: Keys
) -> None:
    """R-IN-4, R-IDEM-1: a burst of the same delivery at once stores one row; every answer names it."""
    import asyncio

    body = _body(_contact_update(webhookId="wh-burst"))
    headers = _ghl_headers(keys, body, "ed25519")
    responses = await asyncio.gather(
        *(client.post("/api/webhooks/ghl", content=body, headers=headers) for _ in range(20))
    )
    assert all(r.status_code == 200 for r in responses)
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["accepted"] + ["duplicate"] * 19
    assert len({r.json()["id"] for r in responses}) == 1
    assert await _count(db, WebhookEvent) == 1


async def test_nul_characters_are_stored_not_refused(
    client: httpx.AsyncClient, db: Database, keys: Keys
) -> None:
    """R-SEC-3, R-IN-2: `\\u0000` (which PostgreSQL cannot store) is replaced, never a 500 or a lost event."""
    body = b'{"type":"ContactUpdate","id":"c-nul","firstName":"a\\u0000b","k\\u0000":1}'
    response = await client.post(
        "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
    )
    assert response.status_code == 200, response.text
    [row] = await _rows(db, WebhookEvent)
    assert row.payload_json["firstName"] == "a\ufffdb"
    assert row.payload_json["k\ufffd"] == 1


async def test_exhausted_connection_pool_is_503(client_factory: ClientFactory, keys: Keys) -> None:
    """R-IN-2: when every pooled connection stays busy past DB_POOL_TIMEOUT_SECONDS the sender is
    told to retry (503 + Retry-After), never a 500 and never a 2xx for an unstored event."""
    client = await client_factory(db_pool_size=1, db_pool_timeout_seconds=0.2)
    app_db: Database = client._transport.app.state.db  # type: ignore[attr-defined]
    async with app_db.engine.connect():  # hold the only connection
        body = _body(_contact_update())
        response = await client.post(
            "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    retried = await client.post(
        "/api/webhooks/ghl", content=body, headers=_ghl_headers(keys, body, "ed25519")
    )
    assert retried.json()["status"] == "accepted"
