"""The service as an operator runs it: the installed `df-middleware` command, real processes, real
HTTP, real signals.

The helpers here (`CLI`, `clean_env`, `RunningCommand`, `process_runner`) are shared with
tests/test_cli_fresh_machine.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
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
#: The console script pip installed beside this interpreter: what an operator types.
CONSOLE_SCRIPT = Path(sys.executable).with_name("df-middleware")
CLI = [str(CONSOLE_SCRIPT)]
#: How long a process gets to print a line or to exit: generous, for a loaded 2-core machine.
DEADLINE_S = 60.0

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a bare machine: no DF-Middleware settings at all. Logs are JSON lines
    (they are not on a terminal), which the tests read as readiness signals."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(extra)
    return env


class RunningCommand:
    """A started `df-middleware` process whose output (stdout and stderr, merged) is read line by
    line in a thread, so that a test can wait for a line — a readiness signal — with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"output-{proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                with self._changed:
                    self._lines.append(raw.decode(errors="replace"))
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, text: str, deadline_s: float = DEADLINE_S) -> str:
        """The first output line containing `text`; fails (with the output) if the process ends or
        the deadline passes first."""
        deadline = time.monotonic() + deadline_s
        with self._changed:
            while True:
                for line in self._lines:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    output = "".join(self._lines)
                    raise AssertionError(f"no line with {text!r} (exit {self.proc.poll()}):\n{output}")
                self._changed.wait(remaining)

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `name`."""
        found = []
        for line in self.output.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, deadline_s: float = DEADLINE_S) -> int:
        """Wait for the exit and the last of the output; the exit status."""
        code = self.proc.wait(deadline_s)
        self._reader.join(deadline_s)
        return code


def _wait_http(url: str, deadline_s: float = DEADLINE_S) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=5.0)
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer: {last}")


def _stop_gracefully(command: RunningCommand) -> str:
    """SIGTERM, then wait: the lifespan shutdown must run and the process exit 0 (R-Q-6)."""
    command.signal(signal.SIGTERM)
    code = command.finish()
    text = command.output
    assert code == 0, text
    assert "service.stopped" in text, text
    assert "Traceback" not in text, text
    return text


@pytest.fixture
def process_runner() -> Iterator[Callable[..., RunningCommand]]:
    started: list[RunningCommand] = []

    def start(args: list[str], cwd: Path, env: dict[str, str]) -> RunningCommand:
        assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} is not installed: pip install -e '.[dev]'"
        proc = subprocess.Popen(
            [*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        command = RunningCommand(proc)
        started.append(command)
        return command

    yield start
    for command in started:
        if command.proc.poll() is None:
            command.proc.kill()
            command.finish(10)


def test_serve_on_a_bare_machine(tmp_path: Path, process_runner: Callable[..., RunningCommand]) -> None:
    """R-RUN-1, R-RUN-3, R-DM-6, R-Q-6: with no configuration `serve` creates a SQLite database,
    migrates it, answers /healthz and /readyz, refuses unconfigured webhooks, and exits cleanly on SIGTERM."""
    port = _free_port()
    proc = process_runner(["serve", "--port", str(port)], tmp_path, clean_env())
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
    tmp_path: Path, process_runner: Callable[..., RunningCommand]
) -> None:
    """R-RUN-2, R-Q-3, R-Q-7: `serve` stores a webhook and its in-process worker records the outcome."""
    port = _free_port()
    db_path = tmp_path / "e2e.db"
    env = clean_env(
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
    deadline = time.monotonic() + DEADLINE_S
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
    env = clean_env(DATABASE_URL=db_url)
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
    tmp_path: Path, process_runner: Callable[..., RunningCommand]
) -> None:
    """R-RUN-2, R-Q-6: `df-middleware worker` migrates, runs its loop, and exits 0 on SIGTERM."""
    db_path = tmp_path / "worker.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{db_path}", POLL_SECONDS="0.1", SHUTDOWN_GRACE_SECONDS="5")
    worker = process_runner(["worker"], tmp_path, env)
    worker.wait_for('"worker started"')  # the claim loop is about to run
    worker.signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.output
    assert worker.log_events("worker stopped"), worker.output
    assert "Traceback" not in worker.output


# --- stopping during start-up (R-Q-6) -------------------------------------------------------------

#: The first line each long-running command prints, right after it starts honouring signals.
FIRST_LINE = {"worker": '"worker.starting"', "serve": '"service.starting"'}
#: The line that says it got as far as running (which a stop during start-up must prevent).
RUNNING_LINE = {"worker": '"worker started"', "serve": '"service.started"'}


def _schema_revision(database_url: str) -> str | None:
    import asyncio

    from df_middleware.db.migrate import current_revision

    async def read() -> str | None:
        db = Database(database_url)
        try:
            async with db.engine.connect() as conn:
                return await current_revision(conn)
        finally:
            await db.dispose()

    return asyncio.run(read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_stop_at_the_first_moment_exits_cleanly(
    command: str, signum: int, tmp_path: Path, process_runner: Callable[..., RunningCommand]
) -> None:
    """R-Q-6: a stop sent as soon as the command is up (its first line, printed before it touches
    the database) ends it with exit 0 and no traceback once the start-up step in progress is
    done: the schema is complete (never half migrated) and the loop or server never starts."""
    from df_middleware.db.migrate import head_revision

    url = f"sqlite:///{tmp_path / 'early.db'}"
    args = [command] if command == "worker" else [command, "--port", str(_free_port())]
    running = process_runner(args, tmp_path, clean_env(DATABASE_URL=url, POLL_SECONDS="0.1"))
    running.wait_for(FIRST_LINE[command])
    running.signal(signum)
    assert running.finish() == 0, running.output
    assert "Traceback" not in running.output
    assert RUNNING_LINE[command] not in running.output
    assert _schema_revision(url) == head_revision()


@pytest.mark.parametrize("moment", ["Waiting for application startup", "Application startup complete"])
def test_serve_stops_on_sigterm_while_uvicorn_starts(
    moment: str, tmp_path: Path, process_runner: Callable[..., RunningCommand]
) -> None:
    """R-Q-6: SIGTERM while uvicorn runs the lifespan (or just after) shuts the service down
    gracefully with exit 0 (uvicorn re-raises the signal afterwards; it must not kill us)."""
    port = _free_port()
    env = clean_env(DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}", POLL_SECONDS="0.1")
    serving = process_runner(["serve", "--port", str(port)], tmp_path, env)
    serving.wait_for(moment)
    _stop_gracefully(serving)


@contextlib.contextmanager
def _holding_start_up_lock(database_url: str) -> Iterator[Callable[[], None]]:
    """Hold the lock a start-up step needs, so that the step is certainly in progress when the
    signal arrives; yields the function that releases it. PostgreSQL: the migrations' advisory
    lock (the migration waits for it). SQLite: the write lock (reading the schema's revision, the
    step before, waits for it)."""
    import asyncio
    import sqlite3

    import asyncpg

    from df_middleware.db.migrate import MIGRATION_LOCK_ID
    from df_middleware.db.session import asyncpg_dsn, sqlite_path

    path = sqlite_path(database_url)
    if path is not None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield holder.close  # closing ends the transaction, releasing the lock
        finally:
            holder.close()
        return
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(asyncpg_dsn(database_url)))
    loop.run_until_complete(conn.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))

    def release() -> None:
        if not conn.is_closed():
            loop.run_until_complete(conn.close())

    try:
        yield release
    finally:
        release()
        loop.close()


@pytest.fixture
def unmigrated_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of the parametrised engine without any schema: a SQLite file path not created
    yet, or a new, empty PostgreSQL database (dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'unmigrated.db'}"
        return
    import asyncio

    from tests.conftest import IN_CI, PG_ADMIN_URL, _pg_exec, _pg_url

    name = f"dfm_fresh_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_exec(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable, refused, timed out: no PostgreSQL here
        if IN_CI:
            pytest.fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    try:
        yield _pg_url(name)
    finally:
        asyncio.run(_pg_exec(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_stop_while_start_up_waits_on_the_database_exits_cleanly(
    command: str,
    unmigrated_database_url: str,
    tmp_path: Path,
    process_runner: Callable[..., RunningCommand],
) -> None:
    """R-Q-6, R-DM-6: SIGTERM while start-up is inside a database step (waiting for the migration
    lock on PostgreSQL, for the write lock on SQLite) is honoured once that step is done: the
    migration completes (one transaction: never half applied), the process exits 0 without a
    traceback, and the worker loop or HTTP server never starts."""
    from df_middleware.db.migrate import head_revision

    url = unmigrated_database_url
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).touch()  # an empty database file to lock
    args = [command] if command == "worker" else [command, "--port", str(_free_port())]
    with _holding_start_up_lock(url) as release:
        running = process_runner(args, tmp_path, clean_env(DATABASE_URL=url, POLL_SECONDS="0.1"))
        running.wait_for(FIRST_LINE[command])
        if not url.startswith("sqlite"):
            running.wait_for('"database.migrating"')  # and now blocked on the advisory lock
        running.signal(signal.SIGTERM)
        running.wait_for('"shutdown.requested"')
        assert running.proc.poll() is None  # still inside the step
        release()
        assert running.finish() == 0, running.output
    assert "Traceback" not in running.output
    assert RUNNING_LINE[command] not in running.output
    assert _schema_revision(url) == head_revision()


# --- serve's flags -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "flags", "expected"),
    [("false", [], False), ("true", ["--no-worker"], False), (None, [], True)],
    ids=["SERVE_WITH_WORKER=false", "--no-worker", "default"],
)
def test_serve_runs_the_worker_as_the_settings_and_flags_say(
    setting: str | None,
    flags: list[str],
    expected: bool,
    tmp_path: Path,
    process_runner: Callable[..., RunningCommand],
) -> None:
    """R-RUN-2: `serve` runs the worker in-process unless SERVE_WITH_WORKER=false or --no-worker
    (which wins over the setting); without the worker a stored event stays pending."""
    port = _free_port()
    env = clean_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}",
        GHL_WORKFLOW_WEBHOOK_SECRET="wf",
        GHL_LOCATION_ID="loc_1",
        POLL_SECONDS="0.1",
    )
    if setting is not None:
        env["SERVE_WITH_WORKER"] = setting
    serving = process_runner(["serve", "--port", str(port), *flags], tmp_path, env)
    serving.wait_for('"service.started"')
    [started] = serving.log_events("service.started")
    assert started["worker"] is expected
    if platform.libc_ver()[0] == "glibc":  # the process that runs the worker pins its heap
        assert started["mmap_threshold_pinned"] is expected
    _wait_http(f"http://127.0.0.1:{port}/readyz")
    stored = httpx.post(
        f"http://127.0.0.1:{port}/api/webhooks/ghl",
        json={"type": "ContactUpdate", "locationId": "loc_1", "id": "c-1", "phone": "+19195551234"},
        headers={"x-df-webhook-secret": "wf"},
        timeout=5,
    )
    assert stored.status_code == 200
    if expected:
        serving.wait_for('"event processed"')
    _stop_gracefully(serving)
    shown = subprocess.run(
        [*CLI, "events", "show", stored.json()["id"]], env=env, cwd=tmp_path, capture_output=True, check=True
    )
    assert json.loads(shown.stdout)["status"] == ("done" if expected else "pending")
    assert bool(serving.log_events("worker started")) is expected


@pytest.mark.parametrize("workers", [1, 2])
def test_the_oauth_redirect_uri_names_the_served_port(
    workers: int, tmp_path: Path, process_runner: Callable[..., RunningCommand]
) -> None:
    """R-OA-1: without PUBLIC_BASE_URL or GHL_OAUTH_REDIRECT_URI, the redirect URI sent to GHL is
    on the host and port `serve --host/--port` actually serves (one process or several)."""
    from urllib.parse import parse_qs, urlsplit

    port = _free_port()
    env = clean_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}",
        DF_ADMIN_SECRET="admin-secret",
        GHL_CLIENT_ID="client-1",
        GHL_CLIENT_SECRET="client-secret",
        SERVE_WITH_WORKER="false",
    )
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    serving = process_runner(args, tmp_path, env)
    _wait_http(f"http://127.0.0.1:{port}/readyz")
    start = httpx.get(
        f"http://127.0.0.1:{port}/leadconnector/oauth/start",
        headers={"Authorization": "Bearer admin-secret"},
        timeout=10,
    )
    assert start.status_code == 302, start.text
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert query["redirect_uri"] == [f"http://127.0.0.1:{port}/leadconnector/oauth"]
    serving.signal(signal.SIGTERM)
    assert serving.finish() == 0, serving.output
    assert "Traceback" not in serving.output


FAILING_MIGRATION = '''"""a migration that fails halfway (test only)"""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("half_applied", sa.Column("id", sa.Integer, primary_key=True))
    raise RuntimeError("this migration fails after its first step")


def downgrade() -> None:
    pass
'''


def test_a_failed_upgrade_leaves_the_schema_as_it_was(unmigrated_database_url: str, tmp_path: Path) -> None:
    """R-DM-6, R-Q-6: an upgrade is one transaction on both engines (on SQLite too, where DDL
    would otherwise commit statement by statement): when its last migration fails halfway, the
    database holds none of it — no table of any migration, no version — so a stop or a crash
    during a migration can never leave a half-applied schema behind."""
    import shutil

    from alembic import command
    from sqlalchemy import inspect

    from df_middleware.db.migrate import MIGRATIONS_DIR, alembic_config, head_revision

    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_fails.py").write_text(FAILING_MIGRATION.format(down=head_revision()))
    config = alembic_config(unmigrated_database_url)
    config.set_main_option("script_location", str(scripts))
    with pytest.raises(RuntimeError, match="fails after its first step"):
        command.upgrade(config, "head")

    import asyncio

    async def tables() -> list[str]:
        db = Database(unmigrated_database_url)
        try:
            async with db.engine.connect() as conn:
                return await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        finally:
            await db.dispose()

    assert asyncio.run(tables()) == []
