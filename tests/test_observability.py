"""PII and secret masking in logs and operator views (R-SEC-4, SPEC §8.4)."""

from __future__ import annotations

import json

import pytest
import structlog

from df_middleware.observability import (
    configure_logging,
    get_logger,
    mask_event_detail,
    mask_payload,
    mask_phone,
    mask_text,
)


def test_phone_and_email_masking() -> None:
    """R-SEC-4: numbers and addresses stay distinguishable but not usable."""
    assert mask_phone("+19195551234") == "+1919***1234"
    assert mask_text("call sarah.johnson@example.com at +1 (919) 555-1234") == (
        "call s***@example.com at +1919***1234"
    )
    assert mask_text("GET /api?api_token=abc123&x=1") == "GET /api?api_token=***&x=1"


def test_payload_masking_by_key() -> None:
    """R-SEC-4: bodies become their length, secrets disappear, nested contacts are masked."""
    masked = mask_payload(
        {
            "body": "Yes, Tuesday works for me",
            "from": "+19195551234",
            "api_token": "tok",
            "contact": {"email": "a.b@example.com", "phone_number": "+19195550000"},
            "id": "423001a5-893d-448d-a9a8-076065613383",
        }
    )
    assert masked == {
        "body": "[25 chars]",
        "from": "+1919***1234",
        "api_token": "***",
        "contact": {"email": "a***@example.com", "phone_number": "+1919***0000"},
        "id": "423001a5-893d-448d-a9a8-076065613383",
    }


def test_event_detail_masks_ordering_key() -> None:
    """R-SEC-4: an event's ordering key names the person's phone; operator views mask it."""
    detail = mask_event_detail(
        {"id": "e1", "ordering_key": "phone:+19195551234", "payload": {"phone": "+19195551234"}}
    )
    assert detail["ordering_key"] == "phone:+1919***1234"
    assert detail["payload"] == {"phone": "+1919***1234"}


def test_logs_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """R-SEC-4, SPEC §8.4: JSON logs carry no phone, email, body or token in clear."""
    configure_logging("info", "json")
    get_logger("test").info(
        "texting.received from +19195551234",
        phone="+19195551234",
        email="sarah@example.com",
        body="STOP",
        authorization="Bearer secret-token",
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    for secret in ("+19195551234", "sarah@example.com", "secret-token"):
        assert secret not in line
    assert record["body"] == "[4 chars]"
    assert record["event"] == "texting.received from +1919***1234"
    structlog.reset_defaults()
