"""Reconcile jobs (SPEC §7): contacts (R-REC-1), lists and optouts (R-REC-3), run rows (R-REC-2),
the CLI (R-REC-4, §8.3) and the scheduler. Both engines; the simulators over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from df_middleware.consent.decisions import OPTED_OUT, ConsentChange
from df_middleware.consent.store import ConsentStore
from df_middleware.db.models import AgentDirectory, ContactMapping, ReconcileRun, SyncLog, SyncState
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.scheduler import default_jobs
from df_middleware.simulators.serving import free_port
from df_middleware.sync.agent_field import AgentField
from df_middleware.sync.list_registry import CallListRegistryStore
from df_middleware.sync.reconcile import (
    RECONCILE_JOBS,
    latest_runs,
    list_reconcile_runs,
    repair_contact,
    run_reconcile,
)
from df_middleware.sync.reconcile_runs import INTERRUPTED, ReconcileBusy, start_run
from tests.sync_world import LOCATION, SyncWorld
from tests.worker_processes import worker_env

CLI = [sys.executable, "-m", "df_middleware.cli", "reconcile"]


#: Seeded contacts are dated this far back: older than the cursor's settling time, as contacts
#: that changed before the last run are.
SEEDED_AGE_MS = 10 * 60 * 1000


def seed_ghl(world: SyncWorld, count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """`count` GHL contacts straight into the simulator (no webhooks: as if they were missed),
    last changed ten minutes ago."""
    made = []
    for i in range(start, start + count):
        write = world.ghl.sim.create_contact(
            LOCATION,
            {
                "firstName": f"Person{i}",
                "lastName": "Recon",
                "email": f"person{i}@example.com",
                "phone": f"+1415555{i:04d}",
            },
        )
        made.append(aged(world, write.contact))
    return made


def aged(world: SyncWorld, contact: dict[str, Any]) -> dict[str, Any]:
    """The simulator's contact, dated SEEDED_AGE_MS back; returns it as GHL now shows it."""
    stored = world.ghl.sim.contacts[contact["id"]]
    stored.added_ms -= SEEDED_AGE_MS
    stored.updated_ms -= SEEDED_AGE_MS
    shown: dict[str, Any] = stored.as_ghl()
    return shown


def aloware_writes(world: SyncWorld) -> int:
    """Lead API writes Aloware received (the only contact write the GHL → Aloware sync makes)."""
    return len(world.aloware.requests("POST", "/api/v1/webhook/forms"))


def searches(world: SyncWorld) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in world.ghl.requests("POST", "/contacts/search")]


async def run(world: SyncWorld, job: str = "contacts", **kwargs: Any) -> dict[str, Any]:
    return await run_reconcile(world.settings, world.db, world.connectors, job, **kwargs)


async def mapped(db: Database) -> dict[str, ContactMapping]:
    async with db.session() as session:
        rows = await session.scalars(select(ContactMapping).where(ContactMapping.deleted_at.is_(None)))
        return {row.ghl_contact_id: row for row in rows}


async def cursor_of(db: Database) -> tuple[Any, str | None] | None:
    async with db.session() as session:
        row = await session.scalar(
            select(SyncState).where(
                SyncState.direction == "ghl_to_aloware", SyncState.entity_type == "contact"
            )
        )
        return (row.cursor_updated_at, row.cursor_id) if row is not None else None


# --- contacts ------------------------------------------------------------------------------------


async def test_missing_aloware_contacts_are_created_then_unchanged_ones_cost_nothing(
    sync_world: SyncWorld,
) -> None:
    """R-REC-1, R-REC-2, R-C-3: a first run creates the missing Aloware contacts and mappings;
    a second (incremental) run finds nothing changed; a `--full` run scans everything and writes
    nothing, one GHL call per page."""
    world = sync_world
    contacts = seed_ghl(world, 3)
    no_phone = world.ghl.sim.create_contact(LOCATION, {"firstName": "NoPhone", "email": "np@example.com"})
    aged(world, no_phone.contact)

    first = await run(world)
    assert first["status"] == "success", first
    totals = first["totals"]
    assert totals["scanned"] == 4
    assert totals["created"] == 3
    assert totals["skipped"] == 1
    assert totals["drifted"] == 3
    assert totals["repaired"] == 0
    assert totals["errors"] == 0
    assert totals["api_calls"] > 0
    rows = await mapped(world.db)
    for contact in contacts:
        remote = world.aloware.sim.contact_by_phone(contact["phone"])
        assert remote is not None
        assert remote["first_name"] == contact["firstName"]
        assert rows[contact["id"]].aloware_contact_id == str(remote["id"])

    writes = aloware_writes(world)
    again = await run(world)
    assert again["status"] == "success"
    assert again["totals"]["scanned"] == 0
    assert again["totals"]["drifted"] == 0

    full = await run(world, full=True)
    assert full["status"] == "success"
    assert full["totals"] == {
        "scanned": 4,
        "drifted": 0,
        "repaired": 0,
        "created": 0,
        "skipped": 1,
        "errors": 0,
        "api_calls": 1,  # one page of GHL search, no Aloware call
    }
    assert aloware_writes(world) == writes


async def test_drifted_contact_is_repaired_in_aloware(sync_world: SyncWorld) -> None:
    """R-REC-1: a GHL change whose webhook never came is found by the next run (changed since
    the cursor) and written to Aloware through the contact sync; the others are not touched. A
    contact changed within the settling time stays after the cursor and is read again, free."""
    world = sync_world
    contacts = seed_ghl(world, 3)
    assert (await run(world))["status"] == "success"
    writes = aloware_writes(world)

    world.ghl.sim.update_contact(LOCATION, contacts[1]["id"], {"firstName": "Renamed", "city": "Boston"})
    row = await run(world)
    assert row["status"] == "success", row
    assert row["totals"]["scanned"] == 1
    assert row["totals"]["drifted"] == 1
    assert row["totals"]["repaired"] == 1
    remote = world.aloware.sim.contact_by_phone(contacts[1]["phone"])
    assert remote is not None
    assert remote["first_name"] == "Renamed"
    assert remote["city"] == "Boston"
    assert aloware_writes(world) == writes + 1
    async with world.db.session() as session:
        logged = await session.scalar(
            select(func.count()).select_from(SyncLog).where(SyncLog.correlation_id == row["id"])
        )
    assert logged == 1

    # Changed a moment ago, so the cursor stayed before it (GHL's index may not show every such
    # change yet): the next run reads it again, and finds it in step.
    again = await run(world)
    assert again["totals"]["scanned"] == 1
    assert again["totals"]["drifted"] == 0
    assert aloware_writes(world) == writes + 1


class PageWatch:
    """A progress sink that, once page `after` is done, makes Aloware answer 503 to everything."""

    def __init__(self, world: SyncWorld, after: int) -> None:
        self.world = world
        self.after = after
        self.notes: list[str] = []

    def start(self, total: int | None) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        self.notes.append(text)
        if text.startswith(f"page {self.after}:"):
            self.world.aloware.faults(error_rate=1.0)


async def test_cursor_advances_after_every_page_and_a_failed_run_resumes_there(
    sync_world: SyncWorld,
) -> None:
    """R-REC-1, R-REC-2: the cursor is committed after each page; when Aloware fails on page 2
    the run ends `error` with the cursor at page 1's last contact, and the next run continues
    right after it (GHL's `searchAfter`), creating every remaining contact."""
    world = sync_world
    contacts = seed_ghl(world, 150)
    failed = await run(world, progress=PageWatch(world, after=1))
    assert failed["status"] == "error"
    assert "503" in (failed["error_message"] or "")
    ordered = sorted(contacts, key=lambda c: (c["dateUpdated"], c["id"]))
    cursor = await cursor_of(world.db)
    assert cursor is not None
    assert cursor[1] == ordered[99]["id"]
    assert failed["totals"]["created"] == 100

    world.aloware.faults()
    before = len(searches(world))
    resumed = await run(world)
    assert resumed["status"] == "success", resumed
    first_search = searches(world)[before]
    assert first_search["searchAfter"][-1] == ordered[99]["id"]
    assert resumed["totals"]["scanned"] == 50
    assert resumed["totals"]["created"] == 50
    rows = await mapped(world.db)
    assert set(rows) == {c["id"] for c in contacts}
    for contact in contacts:
        assert world.aloware.sim.contact_by_phone(contact["phone"]) is not None


async def test_run_rows_listed_newest_first_and_latest_per_job(sync_world: SyncWorld) -> None:
    """R-REC-2: the runs are listed newest first (per job, or all) and the last run of each job
    is there for the dashboard."""
    world = sync_world
    seed_ghl(world, 2)
    one = await run(world)
    two = await run(world, "optouts")
    runs = await list_reconcile_runs(world.db)
    assert [r["id"] for r in runs[:2]] == [two["id"], one["id"]]
    assert [r["id"] for r in await list_reconcile_runs(world.db, job="contacts")] == [one["id"]]
    latest = await latest_runs(world.db)
    assert latest["contacts"]["id"] == one["id"]
    assert latest["optouts"]["id"] == two["id"]
    assert "lists" not in latest
    assert RECONCILE_JOBS == ("contacts", "lists", "optouts")


async def test_unknown_job_is_refused(sync_world: SyncWorld) -> None:
    """R-REC-2: only the three jobs exist; nothing is recorded for another name."""
    world = sync_world
    with pytest.raises(ValueError, match="contacts"):
        await run(world, "everything")
    async with world.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(ReconcileRun)) == 0


async def test_repair_contact_resyncs_even_when_in_step(sync_world: SyncWorld) -> None:
    """SPEC §8.1 mappings repair: an operator's repair writes the GHL contact to Aloware again
    (Aloware was edited by hand, our fingerprint says in step); an unknown id is a LookupError."""
    world = sync_world
    contacts = seed_ghl(world, 1)
    await run(world)
    remote = world.aloware.sim.contact_by_phone(contacts[0]["phone"])
    assert remote is not None
    world.aloware.sim.update_contact(remote["id"], first_name="Wrong")
    answer = await repair_contact(
        world.settings, world.db, world.connectors, ghl_contact_id=contacts[0]["id"]
    )
    assert answer == {
        "ghl_contact_id": contacts[0]["id"],
        "aloware_contact_id": str(remote["id"]),
        "outcome": "repaired",
    }
    fixed = world.aloware.sim.contact_by_phone(contacts[0]["phone"])
    assert fixed is not None
    assert fixed["first_name"] == contacts[0]["firstName"]
    with pytest.raises(LookupError):
        await repair_contact(world.settings, world.db, world.connectors, ghl_contact_id="nope")


# --- the run rows: interrupted runs, a live run elsewhere -------------------------------------------


async def test_a_run_left_running_is_marked_interrupted_and_a_live_one_is_busy(sync_world: SyncWorld) -> None:
    """R-REC-2: a row left `running` by a process that is gone (its lease expired) becomes
    `error: interrupted` when the job starts again; a live run of the job (this process, beating)
    makes a second start refuse (ReconcileBusy) instead of paging the same contacts twice."""
    world = sync_world
    stale_at = utcnow() - timedelta(minutes=30)
    async with world.db.session() as session:
        session.add(
            ReconcileRun(
                job_name="optouts",
                started_at=stale_at,
                status="running",
                totals={"scanned": 3, "owner": "another-host:1", "heartbeat_at": stale_at.isoformat()},
            )
        )
    row = await run(world, "optouts")
    assert row["status"] == "success"
    runs = await list_reconcile_runs(world.db, job="optouts")
    assert [r["status"] for r in runs] == ["success", "error"]
    assert runs[1]["error_message"] == INTERRUPTED
    assert runs[1]["totals"]["scanned"] == 3
    assert "owner" not in runs[1]["totals"]

    live = await start_run(world.db, "contacts")  # this process, heartbeat now
    with pytest.raises(ReconcileBusy):
        await run(world, "contacts")
    async with world.db.session() as session:
        states = list(await session.scalars(select(ReconcileRun.status).where(ReconcileRun.id == live)))
    assert states == ["running"]


async def test_a_failing_run_is_error_and_the_cli_exits_1(sync_world: SyncWorld, tmp_path: Path) -> None:
    """R-REC-2, SPEC §8.3: GHL unreachable → the run ends `error` with the reason (never left
    `running`), `reconcile contacts --json` prints that row and exits 1."""
    world = sync_world
    env = worker_env(world.settings, GHL_BASE_URL=f"http://127.0.0.1:{free_port()}")
    done = subprocess.run(
        [*CLI, "contacts", "--json"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stderr.decode()
    row = json.loads(done.stdout)
    assert row["status"] == "error"
    assert row["finished_at"] is not None
    assert "ghl" in (row["error_message"] or "").lower()
    runs = await list_reconcile_runs(world.db)
    assert [(r["id"], r["status"]) for r in runs] == [(row["id"], "error")]


# --- a crash mid-run, with the real command -----------------------------------------------------


async def _wait_for_cursor(db: Database, proc: subprocess.Popen[bytes], log: Path) -> tuple[Any, str | None]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        cursor = await cursor_of(db)
        if cursor is not None and cursor[1] is not None:
            return cursor
        assert proc.poll() is None, log.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"no cursor committed in time:\n{log.read_text()}")


async def test_kill_9_after_the_first_page_resumes_from_that_page(
    sync_world: SyncWorld, tmp_path: Path
) -> None:
    """R-REC-1 (a crash resumes from the last page), R-REC-2, R-REC-4: `reconcile contacts` as a
    real process is killed with SIGKILL once page 1's cursor is committed (GHL answers each
    search after 1.5 s, so page 2's is still in flight); the next run marks the killed run
    `interrupted`, starts right after page 1's last contact, and every contact ends mapped to
    its Aloware contact. Without a terminal, progress is logged as lines."""
    world = sync_world
    contacts = seed_ghl(world, 210)
    ordered = sorted(contacts, key=lambda c: (c["dateUpdated"], c["id"]))
    world.ghl.faults(latency_ms=1500)
    log = tmp_path / "killed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "contacts"],
            cwd=tmp_path,
            env=worker_env(world.settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        cursor = await _wait_for_cursor(world.db, proc, log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert cursor[1] == ordered[99]["id"]
    world.ghl.faults()
    killed = await list_reconcile_runs(world.db)
    assert [r["status"] for r in killed] == ["running"]
    assert killed[0]["totals"]["created"] == 100  # a running row shows its progress
    assert killed[0]["totals"]["api_calls"] >= 201  # page 1's search and its Aloware calls

    before = len(searches(world))
    done = subprocess.run(
        [*CLI, "contacts", "--json"],
        cwd=tmp_path,
        env=worker_env(world.settings),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    row = json.loads(done.stdout)
    assert row["status"] == "success"
    assert row["totals"]["scanned"] == 110
    assert row["totals"]["created"] == 110
    assert b"reconcile.progress" in done.stderr  # R-REC-4: log lines without a terminal
    assert searches(world)[before]["searchAfter"] == [
        int(cursor[0].timestamp() * 1000),
        ordered[99]["id"],
    ]
    runs = await list_reconcile_runs(world.db)
    assert [(r["id"], r["status"]) for r in runs] == [(row["id"], "success"), (killed[0]["id"], "error")]
    assert runs[1]["error_message"] == INTERRUPTED
    assert runs[1]["totals"]["created"] == 100
    rows = await mapped(world.db)
    assert set(rows) == {c["id"] for c in contacts}
    for contact in contacts:
        remote = world.aloware.sim.contact_by_phone(contact["phone"])
        assert remote is not None
        assert rows[contact["id"]].aloware_contact_id == str(remote["id"])
        assert remote["first_name"] == contact["firstName"]


# --- lists and optouts ----------------------------------------------------------------------------


@pytest.fixture
def _fresh_list_caches() -> None:
    AgentField.forget()
    CallListRegistryStore.forget()


def _on_lists(world: SyncWorld, phone: str) -> set[str]:
    sim = world.aloware.sim
    contact = sim.contact_by_phone(phone)
    if contact is None:
        return set()
    return {sim.lists[i]["name"] for i in sim.lists_of(contact["id"])}


def _list_calls(world: SyncWorld) -> int:
    return len(world.aloware.requests("POST", "/api/v1/webhook/powerdialer"))


@pytest.mark.usefixtures("_fresh_list_caches")
async def test_lists_job_converges_and_then_calls_nothing(sync_world: SyncWorld) -> None:
    """R-REC-3, R-AG-3: a tag added in GHL whose webhook was lost leaves the contact off its HOT
    list until `reconcile lists` recomputes its lists and applies the difference; a second run
    changes nothing and makes no Aloware list call."""
    world = sync_world
    async with world.db.session() as session:
        session.add(AgentDirectory(agent_key="ALICE", display_name="Alice", ghl_owner_id="user-alice"))
    for key in ("CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT"):
        world.aloware.sim.add_list(f"DF_ALICE_{key}")
    contact = world.ghl.sim.create_contact(
        LOCATION, {"firstName": "Lena", "phone": "+19195550142", "assignedTo": "user-alice"}
    ).contact
    assert (await run(world))["totals"]["created"] == 1  # the contact sync put her on NEW_LEADS
    assert _on_lists(world, "+19195550142") == {"DF_ALICE_NEW_LEADS"}

    world.ghl.sim.add_tags(LOCATION, contact["id"], ["hot"])
    row = await run(world, "lists")
    assert row["status"] == "success", row
    assert row["totals"]["scanned"] == 1
    assert row["totals"]["repaired"] == 1
    assert _on_lists(world, "+19195550142") == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}

    calls = _list_calls(world)
    again = await run(world, "lists")
    assert again["status"] == "success"
    assert again["totals"]["repaired"] == 0
    assert _list_calls(world) == calls


async def test_optouts_job_sets_dnd_turned_off_remotely(sync_world: SyncWorld) -> None:
    """R-REC-3, R-OPT-3: an opted-out number whose GHL contact had SMS DND switched off gets it
    back (`active`); a second run writes nothing (GHL already shows it); a number GHL has no
    contact for is skipped."""
    world = sync_world
    phone = "+19195550177"
    contact = world.ghl.sim.create_contact(
        LOCATION, {"firstName": "Sam", "phone": phone, "dndSettings": {"SMS": {"status": "inactive"}}}
    ).contact
    store = ConsentStore(world.db)
    for number in (phone, "+19195550178"):
        await store.apply(
            ConsentChange(
                channel="sms",
                phone=number,
                status=OPTED_OUT,
                source="texting",
                event_at=utcnow(),
                reason="STOP",
            )
        )

    row = await run(world, "optouts")
    assert row["status"] == "success", row
    assert row["totals"]["scanned"] == 2
    assert row["totals"]["repaired"] == 1
    assert row["totals"]["skipped"] == 1
    shown = world.ghl.sim.get_contact(LOCATION, contact["id"])
    assert shown["dndSettings"]["SMS"]["status"] == "active"

    puts = len(world.ghl.requests("PUT", "/contacts/"))
    again = await run(world, "optouts")
    assert again["totals"]["repaired"] == 0
    assert len(world.ghl.requests("PUT", "/contacts/")) == puts
    assert again["totals"]["api_calls"] == 2  # one search per number


# --- the scheduler ------------------------------------------------------------------------------


async def test_scheduler_runs_the_jobs_every_interval_where_configured(
    sync_world: SyncWorld, make_settings: Any
) -> None:
    """R-REC-1, R-REC-3, SPEC §14: the three jobs every RECONCILE_INTERVAL (first run one
    interval after start) when GHL and Aloware are configured; only optouts without Aloware;
    none with RECONCILE_INTERVAL=0. A scheduled run is a real run, on the process's clients when
    the scheduler is given them (R-PERF-3: one GHL budget per process)."""
    world = sync_world
    jobs = {job.name: job for job in default_jobs(world.settings, world.db)}
    for name in ("reconcile-contacts", "reconcile-lists", "reconcile-optouts"):
        assert jobs[name].interval == 6 * 3600
        assert jobs[name].first_delay == 6 * 3600
    ghl_only = make_settings(ghl_api_key="pit", reconcile_interval="90m")
    names = {job.name: job for job in default_jobs(ghl_only, world.db)}
    assert [n for n in names if n.startswith("reconcile")] == ["reconcile-optouts"]
    assert names["reconcile-optouts"].interval == 5400
    off = make_settings(ghl_api_key="pit", aloware_api_token="t", reconcile_interval="0")
    assert not [job for job in default_jobs(off, world.db) if job.name.startswith("reconcile")]
    assert not [job for job in default_jobs(make_settings(), world.db) if job.name.startswith("reconcile")]

    seed_ghl(world, 2)
    outcome = await jobs["reconcile-contacts"].run()  # its own clients, opened and closed
    assert isinstance(outcome, dict)
    assert outcome["status"] == "success"
    assert (await latest_runs(world.db))["contacts"]["totals"]["created"] == 2

    # Given the process's clients (the worker's: one GHL rate budget), a run uses them and leaves
    # them open for the worker.
    shared = {job.name: job for job in default_jobs(world.settings, world.db, world.connectors)}
    seed_ghl(world, 1, start=2)
    outcome = await shared["reconcile-contacts"].run()
    assert isinstance(outcome, dict)
    assert outcome["totals"]["created"] == 1
    assert (await run(world))["status"] == "success"


async def test_a_contact_refused_for_good_is_counted_and_the_run_goes_on(sync_world: SyncWorld) -> None:
    """R-REC-2: Aloware refusing one contact (422: a 6,000-character city) is an `errors` of the
    run, logged in sync_log under the run's id; the other contacts are still created and the run
    ends `error` saying how many failed."""
    world = sync_world
    contacts = seed_ghl(world, 3)
    world.ghl.sim.update_contact(LOCATION, contacts[1]["id"], {"city": "x" * 6000})
    aged(world, contacts[1])
    row = await run(world)
    assert row["status"] == "error"
    assert "1 contact(s) could not be synced" in (row["error_message"] or "")
    assert row["totals"]["errors"] == 1
    assert row["totals"]["created"] == 2
    assert world.aloware.sim.contact_by_phone(contacts[1]["phone"]) is None
    for contact in (contacts[0], contacts[2]):
        assert world.aloware.sim.contact_by_phone(contact["phone"]) is not None
    async with world.db.session() as session:
        failed = list(
            await session.scalars(
                select(SyncLog).where(SyncLog.correlation_id == row["id"], SyncLog.status == "error")
            )
        )
    assert [f.entity_id for f in failed] == [contacts[1]["id"]]
    assert "422" in (failed[0].error_message or "")


def test_the_cli_without_ghl_or_aloware_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """SPEC §8.3: `reconcile contacts` on a machine where GHL and Aloware are not configured says
    which settings are missing in one line, exits 2, and creates no database."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    done = subprocess.run(
        [*CLI, "contacts"], cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines() == [
        "df-middleware: reconcile contacts needs GHL_LOCATION_ID (with GHL_API_KEY or OAuth) and "
        "ALOWARE_API_TOKEN"
    ]
    assert list(tmp_path.iterdir()) == []
