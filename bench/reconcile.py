"""What a full contacts reconcile costs (R-PERF-4): GHL calls, time against GHL's rate limit, and
Aloware writes, for 10,000 unchanged contacts and then with 1 % of them drifted.

    python bench/reconcile.py [--contacts 10000] [--drift 0.01] [--sqlite]

A benchmark, not a test. One run:

1. creates a PostgreSQL database on 127.0.0.1:5432 (or a SQLite file with `--sqlite`) and migrates it;
2. serves, in this process, the GHL and Aloware simulators (GHL's limit of 100 requests / 10 s per
   location enforced by the simulator, and the service's own limiter at the same figures);
3. seeds N contacts in GHL, their Aloware contacts and their mappings with the fingerprint the
   contact sync would have stored (as if every contact had been synced by its webhook);
4. `full`: `reconcile contacts --full` (the real `run_reconcile`) → GHL calls (target ≤ 110: pages
   only), wall time against the least the rate limit allows for that many calls, Aloware writes
   (target 0);
5. `drifted`: changes the first name of `drift` x N contacts in GHL (no webhook, as if it were
   lost) and runs `--full` again → Aloware writes (Lead API `POST /webhook/forms`) must equal the
   number drifted, and each drifted contact must carry its new name in Aloware;
6. `incremental`: one more drifted batch, then a run from the cursor (no `--full`): what an
   ordinary scheduled run costs.

Progress on stderr; one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.migrate import upgrade
from df_middleware.db.models import ContactMapping
from df_middleware.db.session import Database
from df_middleware.observability import configure_logging
from df_middleware.simulators.aloware import AlowareSimulator
from df_middleware.simulators.aloware import create_app as create_aloware
from df_middleware.simulators.ghl import GhlSimulator
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.serving import serve_app
from df_middleware.sync.contacts import ghl_profile, profile_fingerprint
from df_middleware.sync.reconcile import run_reconcile
from df_middleware.timestamps import parse_iso8601

LOCATION = "loc_sim"
#: GHL's published burst limit, which the simulator enforces.
GHL_BUDGET, GHL_WINDOW_SECONDS = 100, 10.0
LEAD_API = "/api/v1/webhook/forms"


def phone_of(i: int) -> str:
    return f"+1919{5_000_000 + i:07d}"


def rate_limit_floor(calls: int) -> float:
    """The least time `calls` requests can take at 100 per sliding 10 s: each full budget after
    the first waits one window."""
    return max(0, math.ceil(calls / GHL_BUDGET) - 1) * GHL_WINDOW_SECONDS


async def seed(
    db: Database, ghl: GhlSimulator, aloware: AlowareSimulator, count: int
) -> list[dict[str, Any]]:
    """N contacts in GHL and Aloware, mapped with the fingerprint of their GHL profile."""
    contacts, rows = [], []
    for i in range(count):
        contact = ghl.create_contact(
            LOCATION,
            {
                "firstName": f"Lead{i}",
                "lastName": "Bench",
                "email": f"lead{i}@example.com",
                "phone": phone_of(i),
                "city": "Raleigh",
            },
        ).contact
        # Changed an hour ago, as contacts synced before the last run were (the cursor settles
        # behind contacts changed in the last minute: sync/reconcile_contacts.py).
        stored = ghl.contacts[contact["id"]]
        stored.added_ms -= 3_600_000
        stored.updated_ms -= 3_600_000
        contact = stored.as_ghl()
        remote = aloware.add_contact(
            phone_of(i),
            first_name=f"Lead{i}",
            last_name="Bench",
            email=f"lead{i}@example.com",
            city="Raleigh",
        )
        profile = ghl_profile(contact)
        rows.append(
            {
                "id": uuid.uuid4(),
                "ghl_contact_id": contact["id"],
                "aloware_contact_id": str(remote["id"]),
                "phone_number": profile["phone"],
                "email": profile.get("email"),
                "sync_direction": "ghl_to_aloware",
                "last_synced_fingerprint": profile_fingerprint(profile),
                "ghl_event_at": parse_iso8601(contact["dateUpdated"]),
            }
        )
        contacts.append(contact)
    async with db.session() as session:
        for start in range(0, len(rows), 1000):
            await session.execute(insert(ContactMapping), rows[start : start + 1000])
    return contacts


class Phase:
    """Requests each simulator received during one phase."""

    def __init__(self, ghl_app: Any, aloware_app: Any) -> None:
        self.ghl_log, self.aloware_log = ghl_app.state.request_log, aloware_app.state.request_log
        self.ghl_before = len(self.ghl_log.items)
        self.aloware_before = len(self.aloware_log.items)

    def figures(self) -> dict[str, int]:
        ghl = list(self.ghl_log.items)[self.ghl_before :]
        aloware = list(self.aloware_log.items)[self.aloware_before :]
        return {
            "ghl_calls": len(ghl),
            "ghl_429": sum(1 for r in ghl if r.status == 429),
            "aloware_calls": len(aloware),
            "aloware_writes": sum(1 for r in aloware if r.method == "POST" and r.path == LEAD_API),
        }


async def timed_run(
    settings: Settings, db: Database, connectors: Connectors, ghl_app: Any, aloware_app: Any, *, full: bool
) -> dict[str, Any]:
    phase = Phase(ghl_app, aloware_app)
    started = time.perf_counter()
    row = await run_reconcile(settings, db, connectors, "contacts", full=full)
    wall = time.perf_counter() - started
    figures = phase.figures()
    return {
        "status": row["status"],
        "totals": row["totals"],
        **figures,
        "wall_seconds": round(wall, 2),
        "rate_limit_floor_seconds": rate_limit_floor(figures["ghl_calls"]),
    }


def drift(ghl: GhlSimulator, contacts: list[dict[str, Any]], which: range, tag: str) -> None:
    for i in which:
        ghl.update_contact(LOCATION, contacts[i]["id"], {"firstName": f"{tag}{i}"})


async def run(database_url: str, count: int, share: float) -> dict[str, Any]:
    await upgrade(database_url)
    ghl_sim, aloware_sim = GhlSimulator(seed=11), AlowareSimulator()
    token = secrets.token_urlsafe(12)
    ghl_app, aloware_app = create_ghl(ghl_sim), create_aloware(aloware_sim, api_token=token)
    result: dict[str, Any] = {
        "bench": "reconcile",
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "contacts": count,
    }
    with serve_app(ghl_app) as ghl_url, serve_app(aloware_app) as aloware_url:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=database_url,
            ghl_location_id=LOCATION,
            ghl_base_url=ghl_url,
            ghl_api_key="pit-sim",
            aloware_base_url=f"{aloware_url}/api/v1",
            aloware_api_token=token,
            log_level="warning",
        )
        db = Database(database_url)
        connectors = Connectors.from_settings(settings, db)
        try:
            print(f"seeding {count} mapped contacts …", file=sys.stderr)
            contacts = await seed(db, ghl_sim, aloware_sim, count)
            print("full reconcile of unchanged contacts …", file=sys.stderr)
            result["full"] = await timed_run(settings, db, connectors, ghl_app, aloware_app, full=True)
            print(f"  {result['full']}", file=sys.stderr)

            drifted = max(1, round(count * share))
            drift(ghl_sim, contacts, range(drifted), "Drifted")
            print(f"full reconcile with {drifted} drifted …", file=sys.stderr)
            result["drifted"] = {
                "drifted": drifted,
                **await timed_run(settings, db, connectors, ghl_app, aloware_app, full=True),
            }
            result["drifted"]["aloware_names_right"] = sum(
                1
                for i in range(drifted)
                if (aloware_sim.contact_by_phone(phone_of(i)) or {}).get("first_name") == f"Drifted{i}"
            )
            print(f"  {result['drifted']}", file=sys.stderr)

            drift(ghl_sim, contacts, range(drifted, 2 * drifted), "Again")
            print(f"incremental reconcile with {drifted} more drifted …", file=sys.stderr)
            result["incremental"] = {
                "drifted": drifted,
                **await timed_run(settings, db, connectors, ghl_app, aloware_app, full=False),
            }
            print(f"  {result['incremental']}", file=sys.stderr)
        finally:
            await connectors.aclose()
            await db.dispose()
    full, drifted_phase = result["full"], result["drifted"]
    result["targets"] = {
        "full_ghl_calls_le_110": full["ghl_calls"] <= 110,
        "full_aloware_writes_0": full["aloware_writes"] == 0,
        "drift_writes_equal_drift": drifted_phase["aloware_writes"] == drifted_phase["drifted"],
        "no_429": full["ghl_429"] == 0 and drifted_phase["ghl_429"] == 0,
    }
    return result


async def _with_database(sqlite: bool, count: int, share: float) -> dict[str, Any]:
    if sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            return await run(f"sqlite:///{Path(tmp) / 'bench.db'}", count, share)
    name = f"bench_reconcile_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            return await run(f"postgresql://postgres@127.0.0.1:5432/{name}", count, share)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=10_000, help="Mapped contacts in GHL.")
    parser.add_argument("--drift", type=float, default=0.01, help="Share of contacts drifted (0.01 = 1 %%).")
    parser.add_argument("--sqlite", action="store_true", help="A SQLite file instead of PostgreSQL.")
    args = parser.parse_args(argv)
    configure_logging("warning", "json")
    print(json.dumps(asyncio.run(_with_database(args.sqlite, args.contacts, args.drift))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
