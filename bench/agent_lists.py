"""Aloware calls per GHL contact update with agents configured (issue 12; R-AG-3: "nothing is called
when nothing changes").

    python bench/agent_lists.py [--contacts 100] [--sqlite]

A benchmark, not a test. One run:

1. creates a PostgreSQL database on 127.0.0.1:5432 (or a SQLite file with `--sqlite`) and migrates it;
2. serves, in this process, the GHL and Aloware simulators; puts two agents (ALICE, BOB, routed by
   GHL owner) in the directory and their eight lists (`DF_<AGENT>_<LIST>`) in Aloware;
3. creates N contacts in GHL owned by Alice and runs phases, each one GHL webhook per contact
   (the native webhook GHL sends, stored as ingest stores it) processed by one in-process `Worker`
   with the production registry:
   - `created`: ContactCreate → the contact synced to Aloware and put on DF_ALICE_NEW_LEADS;
   - `unchanged`: the same contact again (a new webhook id: not a duplicate) → nothing to do;
   - `tag_added`: tag `hot` → DF_ALICE_HOT joined;
   - `tag_removed`: tag removed → remove-all, NEW_LEADS re-added;
   - `reassigned`: owner Bob → off Alice's lists, on DF_BOB_NEW_LEADS.

One JSON line: per phase, Aloware list calls (`/webhook/powerdialer-…`, `/call-lists`) per update
and all Aloware calls per update (the contact sync's own lookups and Lead API writes included),
by endpoint. Targets: 0 list calls per update when the list set is unchanged, at most 2 when it
changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.migrate import upgrade
from df_middleware.db.models import AgentDirectory, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.ingest.sources.ghl import classify_ghl
from df_middleware.ingest.store import queued_row
from df_middleware.observability import configure_logging
from df_middleware.queue.worker import Worker
from df_middleware.simulators.aloware import AlowareSimulator
from df_middleware.simulators.aloware import create_app as create_aloware
from df_middleware.simulators.ghl import GhlSimulator, contact_webhook
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.serving import serve_app

LOCATION = "loc_sim"
LIST_KEYS = ("CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT")
LIST_PREFIXES = ("/api/v1/webhook/powerdialer-", "/api/v1/call-lists")


def phone_of(i: int) -> str:
    return f"+1919556{i:04d}"


async def _queue(db: Database, payloads: list[dict[str, Any]]) -> None:
    rows = []
    for payload in payloads:
        payload = {**payload, "webhookId": str(uuid.uuid4()), "locationId": LOCATION}
        rows.append(queued_row(classify_ghl(payload), payload, verified=True, request_id=None))
    async with db.session() as session:
        session.add_all(WebhookEvent(**row) for row in rows)


async def _drain(worker: Worker) -> int:
    total = 0
    while True:
        done = await worker.run_once()
        total += done
        if not done:
            return total


def _counts(requests: list[Any]) -> tuple[int, int, Counter[str]]:
    by_endpoint: Counter[str] = Counter(f"{r.method} {r.path}" for r in requests)
    lists = sum(1 for r in requests if r.path.startswith(LIST_PREFIXES))
    return lists, len(requests), by_endpoint


async def run(database_url: str, contacts: int = 100) -> dict[str, Any]:
    await upgrade(database_url)
    ghl_sim, aloware_sim = GhlSimulator(seed=3), AlowareSimulator()
    token = secrets.token_urlsafe(12)
    ghl_app, aloware_app = create_ghl(ghl_sim), create_aloware(aloware_sim, api_token=token)
    for agent in ("ALICE", "BOB"):
        for key in LIST_KEYS:
            aloware_sim.add_list(f"DF_{agent}_{key}")
    phases: dict[str, Any] = {}
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
            ghl_rate_limit_max=100_000,
        )
        db = Database(database_url)
        connectors = Connectors.from_settings(settings, db)
        try:
            async with db.session() as session:
                session.add_all(
                    [
                        AgentDirectory(agent_key="ALICE", display_name="Alice", ghl_owner_id="user-alice"),
                        AgentDirectory(agent_key="BOB", display_name="Bob", ghl_owner_id="user-bob"),
                    ]
                )
            people = [
                ghl_sim.create_contact(
                    LOCATION,
                    {
                        "firstName": f"Lead{i}",
                        "phone": phone_of(i),
                        "assignedTo": "user-alice",
                        "locationId": LOCATION,
                    },
                ).contact
                for i in range(contacts)
            ]
            worker = Worker(settings, db, connectors=connectors)
            script = [
                ("created", "ContactCreate", {}),
                ("unchanged", "ContactUpdate", {}),
                ("tag_added", "ContactTagUpdate", {"tags": ["hot"]}),
                ("tag_removed", "ContactTagUpdate", {"tags": []}),
                ("reassigned", "ContactUpdate", {"assignedTo": "user-bob"}),
            ]
            for name, event, change in script:
                people = [{**person, **change} for person in people]
                log = aloware_app.state.request_log
                before = len(list(log.matching(None, "")))
                await _queue(db, [contact_webhook(event, person) for person in people])
                processed = await _drain(worker)
                requests = list(log.matching(None, ""))[before:]
                lists, total, by_endpoint = _counts(requests)
                phases[name] = {
                    "updates": contacts,
                    "processed": processed,
                    "aloware_list_calls_per_update": round(lists / contacts, 3),
                    "aloware_calls_per_update": round(total / contacts, 3),
                    "by_endpoint": dict(sorted(by_endpoint.items())),
                }
                print(
                    f"phase {name}: {phases[name]['aloware_list_calls_per_update']} list calls/update",
                    file=sys.stderr,
                )
            on_bob = {
                aloware_sim.lists[i]["name"]
                for i in aloware_sim.lists_of(aloware_sim.contact_by_phone(phone_of(0))["id"])
            }
        finally:
            await connectors.aclose()
            await db.dispose()
    return {
        "bench": "agent_lists",
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "contacts": contacts,
        "phases": phases,
        "first_contact_lists_at_end": sorted(on_bob),
    }


async def _with_database(sqlite: bool, contacts: int) -> dict[str, Any]:
    if sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            return await run(f"sqlite:///{Path(tmp) / 'bench.db'}", contacts)
    name = f"bench_lists_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            return await run(f"postgresql://postgres@127.0.0.1:5432/{name}", contacts)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=100, help="Contacts, one update each per phase.")
    parser.add_argument("--sqlite", action="store_true", help="A SQLite file instead of PostgreSQL.")
    args = parser.parse_args(argv)
    configure_logging("warning", "json")
    print(json.dumps(asyncio.run(_with_database(args.sqlite, args.contacts))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
