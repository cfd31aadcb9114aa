"""Hostile input to the webhook endpoints: authentic (correctly signed) but arbitrary bodies
never get a 5xx and never leave a half-written row (R-SEC-3, R-IN-3; the seed of R-REL-6)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from df_middleware.app import create_app
from df_middleware.config import Settings
from tests.conftest import TEST_SECRETS, Keys

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.just("a\u0000b"),
    st.integers(min_value=2**64, max_value=2**80),
)
_names = st.sampled_from(
    [
        "type",
        "event",
        "eventType",
        "id",
        "contactId",
        "messageId",
        "phone",
        "from",
        "to",
        "body",
        "broadcastId",
        "timestamp",
        "webhookId",
        "message",
        "data",
        "contact",
        "locationId",
        "status",
    ]
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_names | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=20,
)
_events = st.sampled_from(
    [
        "ContactUpdate",
        "contact.updated",
        "InboundMessage",
        "Call Disposed",
        "OutboundPhoneCall-Completed",
        "message.received",
        "message.delivered",
        "analytics_updated",
        "INSTALL",
        "",
        "x" * 300,
    ]
)
_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(_names, _json | _events, max_size=8).map(lambda v: json.dumps(v).encode()),
)


def _hmac(body: bytes) -> str:
    return hmac.new(TEST_SECRETS["verity_webhook_secret"].encode(), body, hashlib.sha256).hexdigest()


def _signed(endpoint: str, body: bytes, keys: Keys) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if endpoint.startswith("/api/webhooks/ghl"):
        headers["x-ghl-signature"] = keys.ed25519_sign(body)
    elif endpoint.endswith("aloware"):
        headers["authorization"] = "Bearer " + TEST_SECRETS["aloware_webhook_bearer_token"]
    elif endpoint.endswith("texting"):
        headers["x-texting-signature"] = _hmac(body)
    else:
        headers["x-broadcast-signature"] = _hmac(body)
    return headers


ENDPOINTS = [
    "/api/webhooks/ghl",
    "/api/webhooks/ghl/provider-delivery",
    "/api/webhooks/aloware",
    "/api/webhooks/texting",
    "/api/webhooks/broadcast",
]


def test_signed_garbage_never_gets_a_5xx(make_settings: Callable[..., Settings], keys: Keys) -> None:
    """R-SEC-3, R-IN-3: any signed body gets 200 or a 4xx with a JSON error, never a 5xx."""
    app = create_app(make_settings(auto_migrate=False, ghl_webhook_tolerance_seconds=0), run_worker=False)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz")

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(endpoint=st.sampled_from(ENDPOINTS), body=_bodies)
    def check(endpoint: str, body: bytes) -> None:
        response = loop.run_until_complete(
            client.post(endpoint, content=body, headers=_signed(endpoint, body, keys))
        )
        assert response.status_code < 500, (endpoint, body[:200], response.text)
        data: Any = response.json()
        if response.status_code == 200:
            assert data["status"] in {"accepted", "duplicate", "ignored"}
        else:
            assert set(data) == {"error"}

    try:
        check()
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(app.state.db.dispose())
        loop.close()
