"""The service as an operator runs it: real processes, real HTTP, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from df_middleware.config import configuration_markdown, env_example
from df_middleware.db.models import QuarantineEvent, SyncLog, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from tests.event_factory import EVENT_LIST_KEYS

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "df_middleware.cli"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a bare machine: no DF-Middleware settings at all."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(extra)
    return env


def _wait_http(url: str, deadline_s: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=1.0)
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer: {last}")


def _stop_gracefully(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, then wait: the lifespan shutdown must run (uvicorn re-raises the signal after it,
    so the exit status is either 0 or -SIGTERM)."""
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    text = output.decode()
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "service.stopped" in text, text
    return text


@pytest.fixture
def process_runner() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_on_a_bare_machine(
    tmp_path: Path, process_runner: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """R-RUN-1, R-RUN-3, R-DM-6, R-Q-6: with no configuration `serve` creates a SQLite database,
    migrates it, answers /healthz and /readyz, refuses unconfigured webhooks, and exits cleanly on SIGTERM."""
    port = _free_port()
    proc = process_runner(["serve", "--port", str(port)], tmp_path, _clean_env())
    health = _wait_http(f"http://127.0.0.1:{port}/healthz")
    assert health.json() == {"status": "ok"}
    ready = _wait_http(f"http://127.0.0.1:{port}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["database"] == "sqlite"
    assert (tmp_path / "df-middleware.db").exists()
    refused = httpx.post(
        f"http://127.0.0.1:{port}/api/webhooks/texting", json={"eventType": "message.received"}, timeout=5
    )
    assert refused.status_code == 401
    assert "VERITY_WEBHOOK_SECRET" in refused.json()["error"]
    _stop_gracefully(proc)


def test_serve_processes_a_webhook_end_to_end(
    tmp_path: Path, process_runner: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """R-RUN-2, R-Q-3, R-Q-7: `serve` stores a webhook and its in-process worker records the outcome."""
    port = _free_port()
    db_path = tmp_path / "e2e.db"
    env = _clean_env(
        DATABASE_URL=f"sqlite:///{db_path}",
        GHL_WORKFLOW_WEBHOOK_SECRET="wf",
        GHL_LOCATION_ID="loc_1",
        POLL_SECONDS="0.1",
    )
    proc = process_runner(["serve", "--port", str(port)], tmp_path, env)
    _wait_http(f"http://127.0.0.1:{port}/readyz")
    response = httpx.post(
        f"http://127.0.0.1:{port}/api/webhooks/ghl",
        json={"type": "ContactUpdate", "locationId": "loc_1", "id": "c-1", "phone": "+19195551234"},
        headers={"x-df-webhook-secret": "wf"},
        timeout=5,
    )
    assert response.status_code == 200
    event_id = response.json()["id"]
    deadline = time.monotonic() + 15
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*CLI, "events", "show", event_id], env=env, cwd=tmp_path, capture_output=True, check=True
        )
        shown = json.loads(out.stdout)
        if shown["status"] == "done":
            break
        time.sleep(0.2)
    assert shown["status"] == "done"
    # The contact handler runs; with no Aloware configured it says so instead of failing.
    assert [(r["status"], r["message"]) for r in shown["sync_log"]] == [("skipped", "aloware not configured")]
    assert "+19195551234" not in out.stdout.decode()  # masked unless --reveal
    _stop_gracefully(proc)


def _insert_event(db_url: str, **fields: Any) -> uuid.UUID:
    import asyncio

    async def insert() -> uuid.UUID:
        db = Database(db_url)
        try:
            async with db.session() as session:
                now = utcnow()
                row = WebhookEvent(
                    source="ghl",
                    event_type="ContactUpdate",
                    entity_type="contact",
                    entity_id="c-42",
                    payload_json={"type": "ContactUpdate", "id": "c-42"},
                    dedupe_key=f"test:{uuid.uuid4()}",
                    ordering_key="ghl:contact:c-42",
                    received_at=now,
                    next_attempt_at=now,
                    **fields,
                )
                session.add(row)
            return row.id
        finally:
            await db.dispose()

    return asyncio.run(insert())


def _cli(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = _clean_env(DATABASE_URL=db_url)
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=check, cwd=REPO)


def test_cli_event_commands(database_url: str) -> None:
    """SPEC §8.3, R-Q-5: events list --json, show, quarantine, replay refused while quarantined,
    unquarantine, replay — as an operator types them, against the real database."""
    event_id = _insert_event(database_url, status="error", error_message="boom", attempts=10)
    listed = json.loads(_cli(database_url, "events", "list", "--json", "--status", "error").stdout)
    assert listed["next_cursor"] is None
    [item] = listed["items"]
    assert set(item) == EVENT_LIST_KEYS
    assert (item["id"], item["kind"], item["status"]) == (str(event_id), "webhook", "error")

    _cli(database_url, "events", "quarantine", str(event_id), "--reason", "poison payload")
    refused = _cli(database_url, "events", "replay", str(event_id), check=False)
    assert refused.returncode == 1
    _cli(database_url, "events", "unquarantine", str(event_id))
    _cli(database_url, "events", "replay", str(event_id))
    missing = _cli(database_url, "events", "replay", str(uuid.uuid4()), check=False)
    assert missing.returncode == 1

    import asyncio

    async def read() -> tuple[WebhookEvent, list[QuarantineEvent], list[SyncLog]]:
        db = Database(database_url)
        try:
            async with db.session() as session:
                event = (await session.scalars(select(WebhookEvent))).one()
                quarantines = list((await session.scalars(select(QuarantineEvent))).all())
                logs = list((await session.scalars(select(SyncLog))).all())
                return event, quarantines, logs
        finally:
            await db.dispose()

    event, quarantines, _logs = asyncio.run(read())
    assert event.status == "pending"
    assert event.attempts == 0
    assert event.error_message is None
    assert [q.reason for q in quarantines] in ([], ["poison payload"])


def test_cli_prune_json(database_url: str) -> None:
    """R-DM-7: `prune --json` reports what it deleted per table."""
    from datetime import timedelta

    old = utcnow() - timedelta(days=40)
    _insert_event(database_url, status="done", processed_at=old)
    _insert_event(database_url, status="error", processed_at=old)
    result = json.loads(_cli(database_url, "prune", "--json").stdout)
    assert result["webhook_events"] == 1


def test_configuration_reference_is_generated_from_settings() -> None:
    """DESIGN §4: docs/configuration.md and .env.example match config.py."""
    assert (REPO / "docs" / "configuration.md").read_text() == configuration_markdown()
    assert (REPO / ".env.example").read_text() == env_example()


def test_worker_process_stops_on_sigterm(
    tmp_path: Path, process_runner: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """R-RUN-2, R-Q-6: `df-middleware worker` migrates, runs, and exits 0 promptly on SIGTERM."""
    db_path = tmp_path / "worker.db"
    env = _clean_env(DATABASE_URL=f"sqlite:///{db_path}", POLL_SECONDS="0.1", SHUTDOWN_GRACE_SECONDS="5")
    proc = process_runner(["worker"], tmp_path, env)
    deadline = time.monotonic() + 20
    while not db_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let it reach its loop
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
