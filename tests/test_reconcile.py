"""Reconcile jobs (SPEC §7): contacts (R-REC-1), lists and optouts (R-REC-3), run rows (R-REC-2),
the CLI (R-REC-4, §8.3) and the scheduler. Both engines; the simulators over real HTTP."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from sqlalchemy import func, select

from df_middleware.db.models import ContactMapping, ReconcileRun, SyncLog, SyncState
from df_middleware.db.session import Database
from df_middleware.sync.reconcile import (
    RECONCILE_JOBS,
    latest_runs,
    list_reconcile_runs,
    repair_contact,
    run_reconcile,
)
from tests.sync_world import LOCATION, SyncWorld

CLI = [sys.executable, "-m", "df_middleware.cli", "reconcile"]


def seed_ghl(world: SyncWorld, count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """`count` GHL contacts straight into the simulator (no webhooks: as if they were missed)."""
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
        made.append(write.contact)
    return made


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
    world.ghl.sim.create_contact(LOCATION, {"firstName": "NoPhone", "email": "nophone@example.com"})

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
    the cursor) and written to Aloware through the contact sync; the others are not touched."""
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
