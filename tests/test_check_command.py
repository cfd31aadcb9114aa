"""`df-middleware check`: configured / reachable / authenticated per system, against the simulators.

The command runs as a real process with only environment variables, as an operator runs it; the
three simulators are served on real ports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from df_middleware.connectors.ghl import GhlClient, StaticToken
from df_middleware.connectors.http import ServiceClient
from df_middleware.simulators.aloware import create_app as create_aloware
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.verity import create_app as create_verity
from tests.servers import free_port, serve_app

CLI = [sys.executable, "-m", "df_middleware.cli"]


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield {
            "ghl": stack.enter_context(serve_app(create_ghl())),
            "aloware": stack.enter_context(serve_app(create_aloware(api_token="alo-token"))),
            "verity": stack.enter_context(serve_app(create_verity(api_key="verity-key"))),
        }


def _check(database_url: str, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}
    environment = {k: v for k, v in os.environ.items() if k in keep}
    environment.update({"DATABASE_URL": database_url, "LOG_LEVEL": "warning", **env})
    done = subprocess.run(
        [*CLI, "check", "--json"], env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    reports = {r["system"]: r for r in json.loads(done.stdout)}
    return done.returncode, reports


def test_all_systems_configured_and_healthy(database_url: str, simulators: dict[str, str]) -> None:
    """Issue 3 item 9: each configured system is reachable and authenticated; exit 0."""
    code, reports = _check(
        database_url,
        GHL_BASE_URL=simulators["ghl"],
        GHL_LOCATION_ID="loc_sim",
        GHL_API_KEY="pit-sim",
        ALOWARE_BASE_URL=f"{simulators['aloware']}/api/v1",
        ALOWARE_API_TOKEN="alo-token",
        VERITY_BASE_URL=simulators["verity"],
        VERITY_API_KEY="verity-key",
    )
    assert code == 0, reports
    for system in ("database", "ghl", "aloware", "verity"):
        assert reports[system]["ok"] is True, reports[system]
    assert reports["verity-db"]["configured"] is False
    assert "VERITY_DATABASE_URL" in reports["verity-db"]["reason"]


def test_wrong_credentials_and_unreachable_systems_are_named(
    database_url: str, simulators: dict[str, str]
) -> None:
    """A refused key says authenticated: false; a closed port says reachable: false; exit 1."""
    code, reports = _check(
        database_url,
        GHL_BASE_URL=simulators["ghl"],
        GHL_LOCATION_ID="loc_sim",
        GHL_API_KEY="not-the-token",
        ALOWARE_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1",
        ALOWARE_API_TOKEN="alo-token",
        VERITY_BASE_URL=simulators["verity"],
        VERITY_API_KEY="wrong-key",
    )
    assert code == 1
    assert reports["ghl"]["reachable"] is True
    assert reports["ghl"]["authenticated"] is False
    assert reports["aloware"]["reachable"] is False
    assert reports["verity"]["authenticated"] is False
    for report in reports.values():
        assert "not-the-token" not in json.dumps(report)
        assert "wrong-key" not in json.dumps(report)


def test_nothing_configured_lists_the_settings(database_url: str) -> None:
    code, reports = _check(database_url)
    assert code == 0
    assert "GHL_API_KEY" in reports["ghl"]["reason"]
    assert "ALOWARE_API_TOKEN" in reports["aloware"]["reason"]
    assert "VERITY_API_KEY" in reports["verity"]["reason"]


def test_empty_secrets_are_reported_as_unset(database_url: str) -> None:
    """R-IN-1: `check` says which settings were given empty and are therefore unset."""
    keep = {"PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV"}
    environment = {k: v for k, v in os.environ.items() if k in keep}
    environment.update(
        {
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "warning",
            "VERITY_WEBHOOK_SECRET": "",
            "ALOWARE_API_TOKEN": " ",
        }
    )
    done = subprocess.run(
        [*CLI, "check", "--json"], env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    reports = {r["system"]: r for r in json.loads(done.stdout)}
    assert "ALOWARE_API_TOKEN" in reports["aloware"]["reason"]
    assert "VERITY_WEBHOOK_SECRET is set but empty: treated as unset" in done.stderr
    assert "ALOWARE_API_TOKEN is set but empty: treated as unset" in done.stderr


async def test_external_calls_are_counted_by_system_endpoint_and_outcome(simulators: dict[str, str]) -> None:
    """SPEC §8.4: external API calls, latency, errors and 429s by system and endpoint, on /metrics.

    Labels are endpoint templates: ids never become label values.
    """
    from prometheus_client import REGISTRY

    def calls(outcome: str) -> float:
        value = REGISTRY.get_sample_value(
            "df_external_api_calls_total",
            {"system": "ghl", "endpoint": "GET /contacts/{id}", "outcome": outcome},
        )
        return value or 0.0

    before_ok, before_4xx = calls("2xx"), calls("4xx")
    client = GhlClient(ServiceClient("ghl", simulators["ghl"]), StaticToken("loc_sim", "pit-sim"), "loc_sim")
    try:
        created = await client.http.request(
            "POST",
            "/contacts/",
            endpoint="POST /contacts/",
            json={"locationId": "loc_sim", "phone": "+19195550177"},
            headers={"Authorization": "Bearer pit-sim", "Version": "2021-07-28"},
        )
        await client.get_contact(created["contact"]["id"])
        await client.get_contact("unknownContactId0000")
    finally:
        await client.aclose()
    assert calls("2xx") == before_ok + 1
    assert calls("4xx") == before_4xx + 1
    assert REGISTRY.get_sample_value(
        "df_external_api_latency_seconds_count", {"system": "ghl", "endpoint": "GET /contacts/{id}"}
    )
