"""Dashboard and admin API page times with 1 M events (issue 13, "Measure"), and the plans of
every list query the pages run.

    python bench/seed_events.py                                  # once: PostgreSQL df_bench_dash
    python bench/dashboard.py [-n 50]                            # against it
    python bench/seed_events.py --sqlite /tmp/dash.db && python bench/dashboard.py --sqlite /tmp/dash.db

A benchmark, not a test. One run:

1. starts the real service, `df-middleware serve --no-worker`, as a subprocess on a free port with
   the seeded DATABASE_URL and a fresh DF_ADMIN_SECRET (it applies pending migrations on start, as
   in production: that is how new indexes reach a seeded database), and waits for /readyz;
2. logs in to the dashboard (POST /admin/login, keeps the cookie), finds an event id and the
   cursors of the 2nd and 10th events pages by following the page's own "Older" links;
3. requests every page below N times (after 3 untimed warm-ups), one at a time, and prints the
   median and p95 of the wall time per page (client side: HTTP, rendering and every query);
4. runs, in this process, the same service functions the pages call (`read_overview`,
   `list_events`, `get_event`, `list_sync_log`, `list_optouts`, `search_mappings`), captures
   every SELECT they send, and EXPLAINs each one — PostgreSQL `EXPLAIN (ANALYZE, BUFFERS)`,
   SQLite `EXPLAIN QUERY PLAN` — reporting any sequential scan of a big table (and, on SQLite,
   any full scan or temporary sort);
5. prints one JSON line with all of it.

Why client-side wall time: it is what the operator waits for. Why one request at a time: the
question is how a page feels, not how many pages per second the server can render.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event

from df_middleware.admin.dashboard.overview import read_overview
from df_middleware.admin.records import list_optouts, list_sync_log, search_mappings
from df_middleware.config import Settings
from df_middleware.db.session import Database, asyncpg_dsn
from df_middleware.queue.operations import get_event, list_events

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/df_bench_dash"
BIG_TABLES = (
    "webhook_events",
    "texting_webhook_events",
    "broadcast_webhook_events",
    "sync_log",
    "contact_mappings",
    "optout_registry",
    "reconcile_runs",
)
PHONE = "+12125012345"  # a seeded mapping's phone (seed_events: +12125 and 6 digits)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def df_middleware_command() -> str:
    beside = Path(sys.executable).with_name("df-middleware")
    found = str(beside) if beside.exists() else shutil.which("df-middleware")
    if not found:
        raise SystemExit("df-middleware is not installed (run with the project's .venv/bin/python)")
    return found


class Server:
    """One `df-middleware serve --no-worker` subprocess in its own session: we alone stop it."""

    def __init__(self, database_url: str, secret: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "DF_", "GHL_"))}
        env.update(DATABASE_URL=database_url, DF_ADMIN_SECRET=secret, LOG_LEVEL="warning", LOG_FORMAT="json")
        command = [
            df_middleware_command(),
            "serve",
            "--no-worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._log.close()


# --- page times ----------------------------------------------------------------------------------


def _older_link(page_html: str) -> str:
    found = re.search(r'<a class="older" href="([^"]+)"', page_html)
    if not found:
        raise SystemExit("the events page has no 'Older' link: is the database seeded?")
    return html.unescape(found.group(1))


def discover(client: httpx.Client) -> dict[str, str]:
    """The pages to time, with the event id and cursors the dashboard itself links to."""
    first = client.get("/admin/events")
    first.raise_for_status()
    event_id = re.search(r'href="/admin/events/([0-9a-f-]{36})"', first.text)
    if not event_id:
        raise SystemExit("no event on the first events page")
    second = _older_link(first.text)
    path = second
    for _ in range(8):  # pages 3 … 10
        path = _older_link(client.get(path).text)
    return {
        "overview": "/admin",
        "events": "/admin/events",
        "events_status_error": "/admin/events?status=error",
        "events_source_aloware": "/admin/events?source=aloware",
        "events_event_type": "/admin/events?event_type=contactupdate",
        # "What happened to this lead?": one contact's events and sync log rows, by its id alone.
        "events_entity": "/admin/events?entity_id=c4242",
        "sync_log_entity": "/admin/sync-log?entity_id=c4242",
        "events_page_2": second,
        "events_page_10": path,
        "event_detail": f"/admin/events/{event_id.group(1)}",
        "sync_log": "/admin/sync-log",
        "optouts": "/admin/optouts",
        "mappings_phone": f"/admin/mappings?phone={PHONE.replace('+', '%2B')}",
        "api_events": "/api/admin/events",
    }


def time_pages(client: httpx.Client, pages: dict[str, str], n: int, warmup: int = 3) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, path in pages.items():
        for _ in range(warmup):
            client.get(path)
        times, statuses, size = [], set(), 0
        for _ in range(n):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            statuses.add(response.status_code)
            size = len(response.content)
        times.sort()
        results[name] = {
            "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[min(len(times) - 1, round(0.95 * len(times)) - 1)], 1),
            "max_ms": round(times[-1], 1),
            "status": sorted(statuses),
            "bytes": size,
        }
        r = results[name]
        say(
            f"{name:24} median {r['median_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  {r['status']} {path[:60]}"
        )
    return results


# --- plans ---------------------------------------------------------------------------------------


async def capture_queries(database_url: str, event_id: str) -> list[dict[str, Any]]:
    """Every SELECT the pages' service functions send, labelled by the page, deduplicated by text."""
    db = Database(database_url, pool_size=2)
    settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
    captured: list[dict[str, Any]] = []
    label = ["?"]

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append({"page": label[0], "sql": statement, "params": parameters})

    calls: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
        ("overview", lambda: read_overview(settings, db)),
        ("events", lambda: list_events(db)),
        ("events_status_error", lambda: list_events(db, status="error")),
        ("events_source_aloware", lambda: list_events(db, source="aloware")),
        ("events_event_type", lambda: list_events(db, event_type="contactupdate")),
        ("event_detail", lambda: get_event(db, event_id)),
        ("sync_log", lambda: list_sync_log(db)),
        ("optouts", lambda: list_optouts(db)),
        ("mappings_phone", lambda: search_mappings(db, phone=PHONE)),
        ("mappings_all", lambda: search_mappings(db)),
    ]
    try:
        for name, call in calls:
            label[0] = name
            await call()
        # The pages after the first: the same statements with the keyset condition.
        page = await list_events(db)
        label[0] = "events_page_2"
        await list_events(db, cursor=page.next_cursor)
        label[0] = "sync_log_page_2"
        log_page = await list_sync_log(db)
        await list_sync_log(db, cursor=log_page.next_cursor)
    finally:
        await db.dispose()
    seen: set[str] = set()
    unique = []
    for query in captured:
        if query["sql"] not in seen:
            seen.add(query["sql"])
            unique.append(query)
    return unique


def _one_line(sql: str) -> str:
    return " ".join(sql.split())


async def explain_postgres(database_url: str, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    out = []
    try:
        for query in queries:
            rows = await connection.fetch(
                "EXPLAIN (ANALYZE, BUFFERS) " + query["sql"], *(query["params"] or ())
            )
            plan = [row[0] for row in rows]
            seq = sorted(
                {m for line in plan for m in re.findall(r"Seq Scan on (\w+)", line) if m in BIG_TABLES}
            )
            total = next((line for line in plan if line.startswith("Execution Time")), "")
            out.append(
                {
                    "page": query["page"],
                    "sql": _one_line(query["sql"])[:160],
                    "execution_ms": float(re.findall(r"[\d.]+", total)[0]) if total else None,
                    "seq_scans": seq,
                    "plan": plan,
                }
            )
    finally:
        await connection.close()
    return out


def explain_sqlite(path: str, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    connection = sqlite3.connect(path)
    out = []
    try:
        for query in queries:
            params = query["params"] or ()
            plan = [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + query["sql"], params)]
            started = time.perf_counter()
            connection.execute(query["sql"], params).fetchall()
            elapsed = (time.perf_counter() - started) * 1000
            full = sorted(
                {m for line in plan for m in re.findall(r"^SCAN (\w+)$", line.strip()) if m in BIG_TABLES}
            )
            out.append(
                {
                    "page": query["page"],
                    "sql": _one_line(query["sql"])[:160],
                    "execution_ms": round(elapsed, 2),
                    "seq_scans": full,
                    # A whole result sorted (not the "RIGHT PART" of an order an index began).
                    "temp_sort": any(line.strip() == "USE TEMP B-TREE FOR ORDER BY" for line in plan),
                    "plan": plan,
                }
            )
    finally:
        connection.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--sqlite", type=Path, default=None, help="a SQLite file seeded by seed_events.py")
    parser.add_argument("-n", type=int, default=50, help="timed requests per page")
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument("--plans", action="store_true", help="print every plan, not only the findings")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="includes migrations at start")
    args = parser.parse_args(argv)
    database_url = f"sqlite:///{args.sqlite.resolve()}" if args.sqlite else args.database_url
    engine = "sqlite" if args.sqlite else "postgresql"
    secret = secrets.token_urlsafe(24)
    report: dict[str, Any] = {"engine": engine, "n": args.n}
    with tempfile.TemporaryDirectory(prefix="df-bench-dash-") as tmp:
        server = Server(database_url, secret, Path(tmp))
        try:
            report["ready_s"] = round(server.wait_ready(args.ready_timeout), 1)
            say(f"server ready on {server.url} in {report['ready_s']} s (migrations included)")
            with httpx.Client(
                base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {secret}"}
            ) as client:
                login = client.post("/admin/login", data={"secret": secret}, follow_redirects=False)
                if login.status_code != 303 or "df_admin_session" not in client.cookies:
                    raise SystemExit(f"login failed: {login.status_code} {login.text[:200]}")
                pages = discover(client)
                report["pages"] = time_pages(client, pages, args.n)
                event_id = pages["event_detail"].rsplit("/", 1)[1]
        finally:
            server.stop()
    if not args.no_explain:
        queries = asyncio.run(capture_queries(database_url, event_id))
        if args.sqlite:
            plans = explain_sqlite(str(args.sqlite.resolve()), queries)
        else:
            plans = asyncio.run(explain_postgres(database_url, queries))
        say(f"{len(plans)} distinct SELECTs explained")
        for item in plans:
            flag = " SEQ SCAN " + ",".join(item["seq_scans"]) if item["seq_scans"] else ""
            flag += " TEMP SORT" if item.get("temp_sort") else ""
            say(f"  {item['page']:22} {item['execution_ms']!s:>9} ms{flag}   {item['sql'][:110]}")
            if args.plans or item["seq_scans"]:
                for line in item["plan"]:
                    say(f"      {line}")
        report["queries"] = [{k: v for k, v in item.items() if k != "plan"} for item in plans]
        report["seq_scans"] = sorted({f"{i['page']}:{t}" for i in plans for t in i["seq_scans"]})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
