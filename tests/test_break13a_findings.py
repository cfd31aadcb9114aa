"""Findings of the outside test of the admin API, its CLI twins and the reconcile jobs (issue 13,
break13a): each test failed before its fix, over real HTTP against the served app, both engines."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from df_middleware.app import create_app
from df_middleware.db.models import OptoutEvent, OptoutRegistry, ReconcileRun, SyncLog
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from tests.event_factory import event_state, insert_event, wait_until
from tests.servers import serve_app
from tests.sync_world import SyncWorld
from tests.worker_processes import worker_env

SECRET = "break13a-admin-secret"
BEARER = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def admin_service(sync_world: SyncWorld) -> Iterator[str]:
    settings = sync_world.settings.model_copy(update={"df_admin_secret": SecretStr(SECRET)})
    with ExitStack() as stack:
        yield stack.enter_context(serve_app(create_app(settings, run_worker=False)))


@pytest.fixture
async def admin(admin_service: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=admin_service, headers=BEARER, timeout=30) as client:
        yield client


#: Every admin input that reaches a SQL parameter as free text (filters, bodies, reasons).
NUL_REQUESTS: list[tuple[str, str, dict[str, str] | None, dict[str, object] | None]] = [
    ("GET", "/api/admin/events", {"source": "ghl\x00"}, None),
    ("GET", "/api/admin/events", {"event_type": "\x00"}, None),
    ("GET", "/api/admin/events", {"entity_id": "a\x00b"}, None),
    ("GET", "/api/admin/sync-log", {"entity_id": "\x00"}, None),
    ("GET", "/api/admin/sync-log", {"direction": "\x00"}, None),
    ("GET", "/api/admin/sync-log", {"event_id": "\x00"}, None),
    ("GET", "/api/admin/mappings", {"email": "a\x00@example.com"}, None),
    ("GET", "/api/admin/mappings", {"ghl_id": "\x00"}, None),
    ("GET", "/api/admin/mappings", {"aloware_id": "\x00"}, None),
    ("POST", "/api/admin/events/replay", None, {"source": "\x00"}),
    ("POST", "/api/admin/events/replay", None, {"entity_id": "\x00"}),
    ("POST", "/api/admin/optouts", None, {"phone": "+19195550170", "reason": "spam\x00"}),
    ("DELETE", "/api/admin/optouts/+19195550170", {"reason": "ok\x00"}, None),
]


async def test_a_nul_character_in_a_filter_or_reason_is_422_never_500(
    admin: httpx.AsyncClient, db: Database
) -> None:
    """R-SEC-3, SPEC §8.1: malformed input gets a 4xx, never a 500. PostgreSQL can neither store
    nor compare text holding a NUL: every admin filter, bulk-replay body and opt-out reason with
    a `\\x00` was a 500 there (asyncpg: invalid byte sequence for encoding "UTF8": 0x00). Now it is
    a 422 on both engines, and nothing is recorded."""
    for method, path, params, body in NUL_REQUESTS:
        response = await admin.request(method, path, params=params, json=body)
        assert response.status_code == 422, (method, path, params, body, response.text)
    event_id = await insert_event(db, "webhook", status="error")
    quarantine = await admin.post(f"/api/admin/events/{event_id}/quarantine", json={"reason": "x\x00"})
    assert quarantine.status_code == 422, quarantine.text
    assert (await event_state(db, event_id)).status == "error"
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(OptoutRegistry)) == 0
        assert await session.scalar(select(func.count()).select_from(OptoutEvent)) == 0
    # The same routes still answer ordinary values (tab and newline are text, not junk).
    assert (await admin.get("/api/admin/events", params={"source": "ghl"})).status_code == 200
    assert (await admin.get("/api/admin/mappings", params={"email": "a@example.com"})).status_code == 200
    body = {"phone": "+19195550170", "reason": "asked\tby phone"}
    added = await admin.post("/api/admin/optouts", json=body)
    assert added.status_code == 200, added.text
    assert added.json()["status"] == "opted_out"


async def test_an_event_detail_masks_its_number_in_the_entity_sync_log_and_effects(
    admin: httpx.AsyncClient, db: Database, sync_world: SyncWorld
) -> None:
    """R-SEC-4, SPEC §8.1: `GET /api/admin/events/{id}` shows the payload "with PII masked unless
    `?reveal=true`". The event list masked `entity_id`, but the detail showed the full number in
    `entity_id` (a manual opt-out's `consent.decided` event, every texting event) and in its
    sync_log rows ("+19195550171 opted out of SMS …") and effect keys; `events show` (its CLI
    twin) did the same. Now all are masked, and `?reveal=true` / `--reveal` shows them."""
    number = "+19195550171"
    decided = await admin.post("/api/admin/optouts", json={"phone": number, "reason": "asked"})
    assert decided.status_code == 200, decided.text
    listed = (await admin.get("/api/admin/events", params={"event_type": "consent.decided"})).json()
    (event_id,) = [item["id"] for item in listed["items"]]
    async with db.session() as session:
        session.add(
            SyncLog(
                direction="operator_to_ghl",
                entity_type="contact",
                entity_id=number,
                source_id=number,
                target_id=None,
                status="success",
                correlation_id=event_id,
                message=f"{number} opted out of SMS (manual)",
            )
        )
    masked = await admin.get(f"/api/admin/events/{event_id}")
    assert masked.status_code == 200, masked.text
    assert "9195550171" not in masked.text, masked.text
    assert masked.json()["sync_log"][0]["message"].endswith("opted out of SMS (manual)")
    revealed = await admin.get(f"/api/admin/events/{event_id}", params={"reveal": "true"})
    assert revealed.json()["entity_id"] == number
    assert revealed.json()["sync_log"][0]["entity_id"] == number

    shown = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "events", "show", event_id],
        env=worker_env(sync_world.settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "9195550171" not in shown.stdout, shown.stdout


def _cursor(*position: object) -> str:
    """A cursor as `queue.operations.encode_cursor` writes one, holding whatever it is given."""
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


async def test_a_forged_cursor_or_an_out_of_range_time_is_422_never_500(admin: httpx.AsyncClient) -> None:
    """R-SEC-3, SPEC §8.1 (cursor pagination; since/until): a cursor is the client's to send
    back, so it may be forged. One holding a time at the calendar's edge (year 1 at +14:00, year
    9999 at -14:00: valid ISO-8601 that UTC cannot hold) or a number for the id was a 500 on both
    engines (OverflowError / AttributeError), and so were `since`/`until` at those edges, on the
    lists and in the bulk replay body. Now each is a 422."""
    some_id = str(uuid.uuid4())
    cursors = [
        _cursor("0001-01-01T00:00:00+14:00", some_id),
        _cursor("9999-12-31T23:59:59-14:00", some_id),
        _cursor("2026-11-25T10:00:00+00:00", 5),
    ]
    for path in ("/api/admin/events", "/api/admin/sync-log", "/api/admin/optouts"):
        for cursor in cursors:
            response = await admin.get(path, params={"cursor": cursor})
            assert response.status_code == 422, (path, cursor, response.text)
    edges = [{"since": "0001-01-01T00:00:00+14:00"}, {"until": "9999-12-31T23:59:59-14:00"}]
    for path in ("/api/admin/events", "/api/admin/sync-log"):
        for params in edges:
            response = await admin.get(path, params=params)
            assert response.status_code == 422, (path, params, response.text)
    for body in edges:
        response = await admin.post("/api/admin/events/replay", json=body)
        assert response.status_code == 422, (body, response.text)
    # A time inside the range still answers.
    assert (
        await admin.get("/api/admin/events", params={"since": "0001-01-02T00:00:00+00:00"})
    ).status_code == 200


@pytest.mark.parametrize(
    "args",
    [
        ["events", "replay-matching", "--since", "0001-01-01T00:00:00+14:00"],
        ["events", "list", "--until", "9999-12-31T23:59:59-14:00"],
        ["events", "list", "--cursor", "eyJ4Ijo1fQ", "--json"],
        ["events", "list", "--cursor", _cursor("0001-01-01T00:00:00+14:00", str(uuid.UUID(int=0)))],
    ],
)
def test_cli_twins_refuse_a_bad_cursor_or_time_in_one_line(tmp_path: Path, args: list[str]) -> None:
    """SPEC §8.3, R-SEC-3 (the CLI twins of `GET /api/admin/events` and `POST …/events/replay`, in
    an empty directory): a `--cursor` that is not one the command printed, or a `--since`/`--until`
    at the calendar's edge, ended in a traceback and exit 1 (ValueError: invalid cursor; the
    database's OverflowError), after creating and migrating `./df-middleware.db`. Now: one line
    naming the option, exit 2 (a usage error), and nothing created."""
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", *args],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "╭" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("df-middleware: --"), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_events_list_refuses_an_unknown_status_in_one_line(tmp_path: Path) -> None:
    """SPEC §8.3 (`events list`, twin of `GET /api/admin/events?status=`, which answers 422): an
    unknown `--status` was a traceback (exit 1); now one line and exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "events", "list", "--status", "bogus"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert "╭" not in done.stderr, done.stderr
    assert "status must be one of" in done.stderr


async def test_a_run_left_by_a_killed_process_does_not_block_an_api_start(
    admin: httpx.AsyncClient, db: Database
) -> None:
    """SPEC §8.1 (`POST /api/admin/reconcile/{job}`: 409 only while the job runs), R-REC-2 (a row
    never stays `running` after its process is gone). After `df-middleware reconcile` was killed
    with -9, its row stays `running` with a fresh heartbeat; the CLI's next run retires it at once
    (its owner's pid is gone), but the API answered 409 "already running" for up to the lease
    (5 min), judging by the heartbeat alone. Now the API applies the same test as the job: the
    start is accepted, the old row ends `error: interrupted`, the new run succeeds. A row whose
    owner is alive and beating still gets 409."""
    finished_process = subprocess.Popen([sys.executable, "-c", "pass"])
    finished_process.wait()

    def running_row(pid: int) -> ReconcileRun:
        now = utcnow()  # each row the newest when it is added
        return ReconcileRun(
            id=uuid.uuid4(),
            job_name="optouts",
            started_at=now,
            status="running",
            totals={"scanned": 0, "owner": f"{socket.gethostname()}:{pid}", "heartbeat_at": now.isoformat()},
        )

    alive = running_row(os.getpid())  # this test's process: alive, and not the server's
    async with db.session() as session:
        session.add(alive)
    busy = await admin.post("/api/admin/reconcile/optouts")
    assert busy.status_code == 409, busy.text
    async with db.session() as session:
        (await session.get(ReconcileRun, alive.id)).status = "error"  # type: ignore[union-attr]

    left = running_row(finished_process.pid)
    async with db.session() as session:
        session.add(left)
    started = await admin.post("/api/admin/reconcile/optouts")
    assert started.status_code == 202, started.text

    async def finished() -> bool:
        runs = (await admin.get("/api/admin/reconcile/runs", params={"job": "optouts"})).json()["items"]
        return runs[0]["id"] != str(left.id) and runs[0]["status"] != "running"

    await wait_until(finished, timeout=60)
    runs = (await admin.get("/api/admin/reconcile/runs", params={"job": "optouts"})).json()["items"]
    assert runs[0]["status"] == "success", runs[0]
    old = next(run for run in runs if run["id"] == str(left.id))
    assert old["status"] == "error"
    assert old["error_message"].startswith("interrupted")


async def test_the_admin_secret_and_a_body_limit_come_before_the_body_is_read(
    admin_service: str, admin: httpx.AsyncClient
) -> None:
    """R-SEC-1 (nothing that can write is open), R-SEC-3 (bodies size-limited before reading;
    malformed input 4xx). FastAPI reads and parses a route's JSON body before its dependencies
    run, so without the secret `POST /api/admin/optouts` answered a malformed body with 422 and
    its JSON error details, and took in and parsed a body of any size (100 MB: parsed, then 401).
    Now the secret is checked first (401 whatever the body), and an admin body over 64 KiB is 413,
    declared or chunked; ordinary bodies work as before."""
    async with httpx.AsyncClient(base_url=admin_service, timeout=60) as anonymous:
        malformed = await anonymous.post(
            "/api/admin/optouts", content=b"[[[", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 401, malformed.text
        huge = b'{"phone": "+19195550172", "reason": "' + b"a" * 5_000_000 + b'"}'
        refused = await anonymous.post(
            "/api/admin/optouts", content=huge, headers={"content-type": "application/json"}
        )
        assert refused.status_code == 401, refused.text

    too_big = b'{"phone": "+19195550172", "reason": "' + b"a" * 100_000 + b'"}'
    declared = await admin.post(
        "/api/admin/optouts", content=too_big, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413, declared.text

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(too_big), 8192):
            yield too_big[start : start + 8192]

    chunked = await admin.post(
        "/api/admin/optouts", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413, chunked.text
    assert (await admin.get("/api/admin/optouts/+19195550172")).json()["status"] == "none"
    ordinary = await admin.post("/api/admin/optouts", json={"phone": "+19195550172", "reason": "asked"})
    assert ordinary.status_code == 200, ordinary.text


async def test_a_non_ascii_admin_secret_can_be_presented(sync_world: SyncWorld) -> None:
    """SPEC §8.1 (auth: `Authorization: Bearer <DF_ADMIN_SECRET>` or `X-DF-ADMIN-SECRET`), R-SEC-2.
    Clients send header bytes as UTF-8 and Starlette decodes them as latin-1, so a secret with
    any non-ASCII character ("pässwörd") never matched: every admin request was 401 although the
    dashboard login (a form field, decoded as UTF-8) accepted the same secret. Now both headers
    match it (sent as UTF-8); a wrong one is still 401."""
    secret = "pässwörd-ünïcode-13a"
    settings = sync_world.settings.model_copy(update={"df_admin_secret": SecretStr(secret)})
    with serve_app(create_app(settings, run_worker=False)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            for name, value in (("Authorization", f"Bearer {secret}"), ("X-DF-ADMIN-SECRET", secret)):
                answer = await client.get("/api/admin/agents", headers={name: value.encode()})
                assert answer.status_code == 200, (name, answer.text)
            wrong = await client.get("/api/admin/agents", headers={"X-DF-ADMIN-SECRET": "pässwörd".encode()})
            assert wrong.status_code == 401
