"""The admin API (SPEC §8.1) over real HTTP: the service served by uvicorn (its lifespan runs),
the three simulators behind it (`sync_world`), both database engines."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.consent.store import sms_allowed
from df_middleware.db.models import AgentDirectory, ContactMapping, OptoutEvent, SyncLog
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from tests.event_factory import (
    EVENT_LIST_KEYS,
    event_row,
    event_state,
    insert_event,
    insert_events,
    wait_until,
)
from tests.servers import serve_app
from tests.sync_world import SyncWorld
from tests.worker_processes import worker_env

SECRET = "admin-api-secret-Zq9"
BEARER = {"Authorization": f"Bearer {SECRET}"}
HEADER = {"X-DF-ADMIN-SECRET": SECRET}


@pytest.fixture
def admin_service(sync_world: SyncWorld) -> Iterator[str]:
    """The service with DF_ADMIN_SECRET set, pointed at the world's simulators and database."""
    settings = sync_world.settings.model_copy(update={"df_admin_secret": SecretStr(SECRET)})
    with ExitStack() as stack:
        yield stack.enter_context(serve_app(create_app(settings, run_worker=False)))


@pytest.fixture
async def admin(admin_service: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=admin_service, headers=BEARER, timeout=30) as client:
        yield client


def admin_routes() -> list[tuple[str, str]]:
    """Every (method, path) under /api/admin, from the app's own OpenAPI document."""
    document = create_app(run_worker=False).openapi()
    return [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith("/api/admin")
        for method in operations
    ]


async def test_every_admin_route_needs_the_secret(admin_service: str, db: Database) -> None:
    """SPEC §8.1, R-SEC-1, R-SEC-2: every /api/admin route answers 401 without the secret or with a
    wrong one (an empty Bearer, a prefix of the secret, the secret in the wrong header), and
    nothing is written."""
    routes = admin_routes()
    assert len(routes) >= 20, routes
    filled = {
        "{event_id}": str(uuid.uuid4()),
        "{phone}": "+19195550100",
        "{agent_key}": "ALICE",
        "{job}": "lists",
    }
    wrong = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {SECRET[:-1]}"},
        {"Authorization": f"Basic {SECRET}"},
        {"X-DF-ADMIN-SECRET": SECRET + "x"},
        {"X-Admin-Secret": SECRET},
    ]
    async with httpx.AsyncClient(base_url=admin_service, timeout=30) as client:
        for method, path in routes:
            for template, value in filled.items():
                path = path.replace(template, value)
            for headers in wrong:
                response = await client.request(method, path, headers=headers, json={"phone": "+19195550100"})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert "WWW-Authenticate" in response.headers
    async with db.session() as session:
        assert list(await session.scalars(select(OptoutEvent))) == []
        assert list(await session.scalars(select(AgentDirectory))) == []


async def test_both_ways_of_presenting_the_secret_work(admin_service: str) -> None:
    """SPEC §8.1: `Authorization: Bearer` or `X-DF-ADMIN-SECRET`."""
    async with httpx.AsyncClient(base_url=admin_service, timeout=30) as client:
        for headers in (BEARER, HEADER):
            response = await client.get("/api/admin/events", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json() == {"items": [], "next_cursor": None}


async def test_event_pages_never_skip_or_repeat_under_concurrent_inserts(
    admin: httpx.AsyncClient, db: Database
) -> None:
    """SPEC §8.1: newest first, opaque cursor; rows stored while an operator pages (newer ones, and
    rows of the other tables) are neither skipped nor shown twice on later pages."""
    base = utcnow() - timedelta(minutes=30)
    rows = [event_row("webhook", received_at=base + timedelta(seconds=i)) for i in range(70)]
    rows_texting = [
        event_row("texting", received_at=base + timedelta(seconds=i, milliseconds=500)) for i in range(40)
    ]
    # Several rows at the very same instant: the id breaks the tie.
    same = base + timedelta(seconds=35)
    rows += [event_row("webhook", received_at=same) for _ in range(5)]
    before = {str(i) for i in await insert_events(db, "webhook", rows)}
    before |= {str(i) for i in await insert_events(db, "texting", rows_texting)}

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 25}
        if cursor:
            params["cursor"] = cursor
        response = await admin.get("/api/admin/events", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        for item in body["items"]:
            assert set(item) == EVENT_LIST_KEYS
        seen += [item["id"] for item in body["items"]]
        times = [item["received_at"] for item in body["items"]]
        assert times == sorted(times, reverse=True)
        pages += 1
        # New deliveries arrive between pages, in both tables.
        await insert_event(db, "webhook")
        await insert_event(db, "texting")
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a row was shown twice"
    assert set(seen) == before, "a row was skipped (or a newer row leaked into an older page)"
    assert pages == 5


async def test_event_list_filters_and_bad_values(admin: httpx.AsyncClient, db: Database) -> None:
    """SPEC §8.1: the list's filters; a bad kind, status, naive time, over-long id or forged
    cursor is a 422, never a 500."""
    error_id = await insert_event(db, "webhook", status="error", source="aloware", entity_id="al-1")
    await insert_event(db, "webhook", status="done", source="ghl")
    body = (await admin.get("/api/admin/events", params={"status": "error"})).json()
    assert [i["id"] for i in body["items"]] == [str(error_id)]
    body = (await admin.get("/api/admin/events", params={"source": "aloware", "entity_id": "al-1"})).json()
    assert [i["id"] for i in body["items"]] == [str(error_id)]
    for params in (
        {"kind": "email"},
        {"status": "lost"},
        {"since": "2026-11-25T10:00:00"},
        {"entity_id": "x" * 5000},
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},
        {"limit": 0},
        {"limit": 201},
    ):
        response = await admin.get("/api/admin/events", params=params)
        assert response.status_code == 422, (params, response.text)


async def test_event_detail_is_masked_unless_revealed(admin: httpx.AsyncClient, db: Database) -> None:
    """SPEC §8.1, R-SEC-4: the payload's phones, emails and bodies are masked unless `?reveal=true`."""
    payload = {"phone": "+19195551234", "email": "lead@example.com", "body": "call me at 919 555 1234"}
    event_id = await insert_event(db, "webhook", payload=payload)
    masked = (await admin.get(f"/api/admin/events/{event_id}")).json()
    text = str(masked)
    assert "+19195551234" not in text
    assert "lead@example.com" not in text
    assert masked["id"] == str(event_id)
    revealed = (await admin.get(f"/api/admin/events/{event_id}", params={"reveal": "true"})).json()
    assert revealed["payload"] == payload
    assert (await admin.get(f"/api/admin/events/{uuid.uuid4()}")).status_code == 404
    assert (await admin.get("/api/admin/events/not-a-uuid")).status_code == 404


async def test_replay_mark_done_quarantine_and_their_refusals(admin: httpx.AsyncClient, db: Database) -> None:
    """SPEC §8.1: replay sets pending, due now, attempts 0; an event being processed cannot be
    replayed or quarantined (409, unchanged); quarantine / unquarantine / mark-done."""
    dead = await insert_event(db, "webhook", status="error", attempts=7)
    response = await admin.post(f"/api/admin/events/{dead}/replay")
    assert response.status_code == 200, response.text
    row = await event_state(db, dead)
    assert (row.status, row.attempts) == ("pending", 0)
    assert row.next_attempt_at <= utcnow()

    busy = await insert_event(
        db, "webhook", status="processing", locked_by="w1", locked_until=utcnow() + timedelta(minutes=5)
    )
    for action in ("replay", "quarantine", "mark-done"):
        response = await admin.post(f"/api/admin/events/{busy}/{action}")
        assert response.status_code == 409, (action, response.text)
    assert (await event_state(db, busy)).status == "processing"

    response = await admin.post(f"/api/admin/events/{dead}/quarantine", json={"reason": "poison"})
    assert response.status_code == 200, response.text
    assert (await event_state(db, dead)).status == "quarantined"
    assert (await admin.post(f"/api/admin/events/{dead}/replay")).status_code == 409
    detail = (await admin.get(f"/api/admin/events/{dead}")).json()
    assert detail["quarantine"]["reason"] == "poison"
    assert (await admin.post(f"/api/admin/events/{dead}/unquarantine")).status_code == 200
    assert (await event_state(db, dead)).status == "pending"
    response = await admin.post(f"/api/admin/events/{dead}/mark-done")
    assert response.status_code == 200
    assert response.json()["status"] == "done"
    async with db.session() as session:
        messages = list(
            await session.scalars(select(SyncLog.message).where(SyncLog.correlation_id == str(dead)))
        )
    assert messages == ["marked done by admin-api"]
    assert (await admin.post(f"/api/admin/events/{uuid.uuid4()}/replay")).status_code == 404


async def test_bulk_replay_needs_a_filter_and_counts(admin: httpx.AsyncClient, db: Database) -> None:
    """SPEC §8.1: `POST /api/admin/events/replay` with the list's filters (at least one) answers
    `{"count": N}`; quarantined and processing events are never picked up."""
    dead = [await insert_event(db, "webhook", status="error", source="aloware") for _ in range(3)]
    await insert_event(db, "webhook", status="error", source="ghl")
    kept = await insert_event(db, "webhook", status="quarantined", source="aloware")
    assert (await admin.post("/api/admin/events/replay", json={})).status_code == 422
    assert (await admin.post("/api/admin/events/replay", json={"status": "quarantined"})).status_code == 422
    assert (await admin.post("/api/admin/events/replay", json={"bogus": 1})).status_code == 422
    response = await admin.post("/api/admin/events/replay", json={"source": "aloware", "status": "error"})
    assert response.status_code == 200, response.text
    assert response.json() == {"count": 3}
    assert {(await event_state(db, e)).status for e in dead} == {"pending"}
    assert (await event_state(db, kept)).status == "quarantined"


async def test_manual_opt_out_refuses_sends_and_reads_back_in_any_format(
    admin: httpx.AsyncClient, db: Database
) -> None:
    """SPEC §8.1, R-OPT-5, R-ID-1: a manual opt-out by any formatting of the number, its report
    and history, the list, a manual opt-in; a number that is not a phone is 422."""
    response = await admin.post(
        "/api/admin/optouts", json={"phone": "(919) 555-0142", "reason": "asked on a call"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["phone"] == "+19195550142"
    assert response.json()["status"] == "opted_out"
    assert not await sms_allowed(db, "+19195550142")

    report = (await admin.get("/api/admin/optouts/919.555.0142")).json()
    assert report["phone"] == "+19195550142"
    assert (report["status"], report["source"], report["reason"]) == (
        "opted_out",
        "manual",
        "asked on a call",
    )
    assert report["history"][0]["actor"] == "admin-api"

    listed = (await admin.get("/api/admin/optouts", params={"status": "opted_out"})).json()
    assert [item["phone"] for item in listed["items"]] == ["+1919***0142"]
    revealed = (
        await admin.get("/api/admin/optouts", params={"phone": "9195550142", "reveal": "true"})
    ).json()
    assert [item["phone"] for item in revealed["items"]] == ["+19195550142"]

    response = await admin.delete("/api/admin/optouts/+1 919 555 0142", params={"reason": "texted START"})
    assert response.status_code == 200
    assert response.json()["status"] == "opted_in"
    assert await sms_allowed(db, "+19195550142")
    assert len((await admin.get("/api/admin/optouts/+19195550142")).json()["history"]) == 2

    for bad in ("not-a-phone", "123", "+1" + "9" * 60):
        assert (await admin.post("/api/admin/optouts", json={"phone": bad, "reason": "x"})).status_code == 422
        assert (await admin.get(f"/api/admin/optouts/{bad}")).status_code == 422
    assert (await admin.post("/api/admin/optouts", json={"phone": "+19195550142"})).status_code == 422


async def test_agents_create_update_and_seed(admin: httpx.AsyncClient, db: Database) -> None:
    """SPEC §8.1, R-AG-5: create (409 twice), update by PUT, refuse a bad agent with the reason;
    seed without AGENTS_FILE is 409; the list status answers."""
    response = await admin.post(
        "/api/admin/agents", json={"agent_key": "alice", "display_name": "Alice", "required_tag": "alice"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["agent"]["agent_key"] == "ALICE"
    assert (await admin.post("/api/admin/agents", json={"agent_key": "ALICE"})).status_code == 409
    response = await admin.put(
        "/api/admin/agents/ALICE", json={"display_name": "Alice B", "is_active": False}
    )
    assert response.status_code == 200, response.text
    agents = (await admin.get("/api/admin/agents")).json()
    assert [(a["agent_key"], a["display_name"], a["is_active"]) for a in agents] == [
        ("ALICE", "Alice B", False)
    ]
    for bad in (
        {"agent_key": "bad key"},
        {"agent_key": "BOB", "ghl_owner_email": "nope"},
        {"agent_key": "B", "x": 1},
    ):
        assert (await admin.post("/api/admin/agents", json=bad)).status_code == 422, bad
    assert (await admin.put("/api/admin/agents/ALICE", json={"agent_key": "BOB"})).status_code == 422
    assert (await admin.post("/api/admin/agents/seed")).status_code == 409
    async with db.session() as session:
        assert [row.agent_key for row in await session.scalars(select(AgentDirectory))] == ["ALICE"]
    status = (await admin.get("/api/admin/lists/status")).json()
    assert set(status) == {"lists", "blocked_lists"}


async def test_sync_log_mappings_and_connections(
    admin: httpx.AsyncClient, db: Database, sync_world: SyncWorld
) -> None:
    """SPEC §8.1: the sync log by event, mapping search by any formatting of a phone (masked
    unless revealed), and the connections check, which writes nothing remote."""
    event_id = uuid.uuid4()
    async with db.session() as session:
        session.add(
            SyncLog(
                direction="ghl_to_aloware",
                entity_type="contact",
                entity_id="c-1",
                source_id="c-1",
                status="success",
                message="created Aloware contact for +19195550177",
                correlation_id=str(event_id),
            )
        )
        session.add(
            ContactMapping(
                ghl_contact_id="ghl-1",
                aloware_contact_id="al-1",
                phone_number="+19195550177",
                email="lead@example.com",
                sync_direction="ghl_to_aloware",
            )
        )
    page = (await admin.get("/api/admin/sync-log", params={"event_id": str(event_id)})).json()
    assert [row["entity_id"] for row in page["items"]] == ["c-1"]
    assert "+19195550177" not in page["items"][0]["message"]
    assert (await admin.get("/api/admin/sync-log", params={"status": "ok"})).status_code == 422

    found = (await admin.get("/api/admin/mappings", params={"phone": "(919) 555-0177"})).json()["items"]
    assert [(m["ghl_contact_id"], m["phone"], m["email"]) for m in found] == [
        ("ghl-1", "+1919***0177", "l***@example.com")
    ]
    found = (
        await admin.get("/api/admin/mappings", params={"email": "LEAD@example.com", "reveal": "true"})
    ).json()
    assert [m["phone"] for m in found["items"]] == ["+19195550177"]
    assert (await admin.get("/api/admin/mappings", params={"phone": "nope"})).status_code == 422

    def remote_writes() -> list[int]:
        # Verity's check posts an empty body that cannot be sent (connectors/verity.py): it is
        # refused with 422, and Verity's state shows no message.
        return [
            len([r for r in sync_world.ghl.requests() if r.method != "GET"]),
            len([r for r in sync_world.aloware.requests() if r.method != "GET"]),
            len(sync_world.verity.sim.messages),
        ]

    writes_before = remote_writes()
    response = await admin.get("/api/admin/connections")
    assert response.status_code == 200, response.text
    systems = {s["system"]: s for s in response.json()["systems"]}
    assert [systems[name]["ok"] for name in ("database", "ghl", "aloware", "verity")] == [True] * 4
    assert remote_writes() == writes_before


async def test_every_endpoint_is_in_the_openapi_document(admin_service: str) -> None:
    """SPEC §8.1: the admin API is documented at /openapi.json, each operation with the admin
    security schemes."""
    async with httpx.AsyncClient(base_url=admin_service) as client:
        document = (await client.get("/openapi.json")).json()
    expected = {
        ("get", "/api/admin/events"),
        ("get", "/api/admin/events/{event_id}"),
        ("post", "/api/admin/events/replay"),
        ("post", "/api/admin/events/{event_id}/replay"),
        ("post", "/api/admin/events/{event_id}/mark-done"),
        ("post", "/api/admin/events/{event_id}/quarantine"),
        ("post", "/api/admin/events/{event_id}/unquarantine"),
        ("get", "/api/admin/sync-log"),
        ("get", "/api/admin/mappings"),
        ("get", "/api/admin/optouts"),
        ("post", "/api/admin/optouts"),
        ("get", "/api/admin/optouts/{phone}"),
        ("delete", "/api/admin/optouts/{phone}"),
        ("get", "/api/admin/agents"),
        ("post", "/api/admin/agents"),
        ("put", "/api/admin/agents/{agent_key}"),
        ("post", "/api/admin/agents/seed"),
        ("get", "/api/admin/lists/status"),
        ("post", "/api/admin/lists/rebuild"),
        ("get", "/api/admin/connections"),
    }
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if path.startswith("/api/admin")
    }
    assert expected <= documented, expected - documented
    for path, operations in document["paths"].items():
        if path.startswith("/api/admin"):
            for operation in operations.values():
                assert {"adminBearer": []} in operation["security"], path


async def test_reconcile_start_runs_and_repair(
    admin: httpx.AsyncClient, db: Database, sync_world: SyncWorld
) -> None:
    """SPEC §8.1, R-REC-2, R-REC-3: `POST /api/admin/reconcile/{job}` starts the job (202) and its
    run appears in `GET /api/admin/reconcile/runs` with its totals; an unknown job is 404/422;
    `POST /api/admin/mappings/repair` creates the Aloware contact and mapping of a GHL contact, and
    is 404 for a contact GHL does not have."""
    response = await admin.post("/api/admin/reconcile/optouts")
    assert response.status_code == 202, response.text

    async def finished() -> bool:
        runs = (await admin.get("/api/admin/reconcile/runs", params={"job": "optouts"})).json()["items"]
        return bool(runs) and runs[0]["status"] != "running"

    await wait_until(finished, timeout=60)
    run = (await admin.get("/api/admin/reconcile/runs", params={"job": "optouts"})).json()["items"][0]
    assert run["status"] == "success", run
    assert {"scanned", "drifted", "repaired", "created", "skipped", "errors", "api_calls"} <= set(
        run["totals"]
    )
    assert (await admin.post("/api/admin/reconcile/everything")).status_code == 422
    assert (await admin.post("/api/admin/reconcile/contacts", json={"full": [1]})).status_code == 422

    contact = sync_world.ghl.sim.create_contact(
        sync_world.settings.ghl_location_id, {"firstName": "Rae", "phone": "+19195550190"}
    ).contact
    response = await admin.post("/api/admin/mappings/repair", json={"ghl_contact_id": contact["id"]})
    assert response.status_code == 200, response.text
    assert response.json()["aloware_contact_id"]
    assert sync_world.aloware.sim.contact_by_phone("+19195550190") is not None
    found = (await admin.get("/api/admin/mappings", params={"ghl_id": contact["id"]})).json()["items"]
    assert [m["aloware_contact_id"] for m in found] == [response.json()["aloware_contact_id"]]
    missing = await admin.post("/api/admin/mappings/repair", json={"ghl_contact_id": "nope123"})
    assert missing.status_code == 404
    bad = await admin.post("/api/admin/mappings/repair", json={"ghl_contact_id": "../etc"})
    assert bad.status_code == 422


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", *args],
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_cli_twins_answer_as_the_api_does(admin: httpx.AsyncClient, sync_world: SyncWorld) -> None:
    """SPEC §8.1, §8.3: each admin action has a CLI twin calling the same function — `mappings
    repair` then `mappings search --json` show what `GET /api/admin/mappings` shows, and `events
    replay-matching --json` counts as `POST /api/admin/events/replay` does."""
    contact = sync_world.ghl.sim.create_contact(
        sync_world.settings.ghl_location_id, {"firstName": "Cli", "phone": "+19195550191"}
    ).contact
    repaired = _cli(sync_world.settings, "mappings", "repair", contact["id"], "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["aloware_contact_id"]
    searched = _cli(sync_world.settings, "mappings", "search", "--phone", "919-555-0191", "--json")
    assert searched.returncode == 0, searched.stderr
    api = (await admin.get("/api/admin/mappings", params={"phone": "9195550191"})).json()
    assert json.loads(searched.stdout) == api
    assert len(api["items"]) == 1

    await insert_event(sync_world.db, "webhook", status="error", source="aloware")
    replayed = _cli(sync_world.settings, "events", "replay-matching", "--source", "aloware", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"count": 1}
    again = await admin.post("/api/admin/events/replay", json={"source": "aloware", "status": "error"})
    assert again.json() == {"count": 0}
