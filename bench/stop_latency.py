"""STOP webhook accepted → GHL SMS DND active: latency on an idle system (issue 11, R-OPT-3).

    python bench/stop_latency.py [--stops N] [--contacts mixed|known|unknown] [--interval S]
                                 [--ghl-latency-ms L] [--shape split|in-process] [--sqlite]
                                 [--wait-idle S]

A benchmark, not a test. One run:

1. creates a PostgreSQL database on 127.0.0.1:5432 (or a SQLite file with `--sqlite`) and runs
   `df-middleware migrate` on it;
2. starts the GHL simulator (`df-middleware simulate ghl`, GHL's 100 requests / 10 s per location,
   no webhook URL) and the service as production runs it: `serve --no-worker` plus `worker` on
   PostgreSQL (`--shape split`, the README's production shape), `serve` with the worker in-process
   on SQLite (the bare-machine shape); GHL_* settings point at the simulator,
   VERITY_WEBHOOK_SECRET is a fresh secret. Verity and Aloware are not configured: a STOP's path
   to GHL's DND uses neither (OPTOUT_REMOVES_FROM_DIALER is off by default, and its dialer step
   comes after the DND);
3. seeds the GHL contacts of the `known` people through `/_sim/ui/contacts` (not rate limited, as
   a GHL user would create them; no mapping exists in our database, as for a lead created in GHL);
4. warms up with 4 STOPs (not measured): imports, connection pools, the LISTEN connection; their
   events being done is also the readiness signal of the worker;
5. sends N signed `message.received` webhooks with body `STOP` (default 200), one at a time, each
   from its own number, alternating a number whose GHL contact exists and one GHL does not know
   (created by the flow) with `--contacts mixed`; after each, waits until its event is done and
   the queue empty (idle system; read from the database on one open connection every 50 ms), then
   pauses a random 0.5 to 1.5 times `--interval` (default 1 s). The pause starts when the previous
   STOP is done and is spread over a whole second, so that sends do not line up with anything
   periodic in the service (the worker's poll on SQLite: a pause counted from the previous send
   put every STOP just after the worker went to sleep, and measured a full POLL_SECONDS each
   time), and the GHL budget never binds (at most 6 calls per STOP, about 50 of the 100 per 10 s;
   the JSON reports the busiest 10 s window and any 429).

What is measured, per STOP: from the moment the webhook's `200 accepted` answer has arrived at the
sender (`time.time()` after the body is read) to the moment the GHL simulator received the
`PUT /contacts/{id}` that set `dndSettings.SMS.status` = `active` (its request log's `at`, taken
when the request body has been read, right before the route applies it; plus the injected
latency when `--ghl-latency-ms` is set, since the simulator sleeps that long before the route).
Same host, same clock. The end is the simulator's own record, so the 50 ms at which this script
looks for "done" bounds nothing; the PUT is matched to its STOP by time (one STOP at a time) and
checked against the simulator's final state (that contact has the STOP's phone and SMS DND
active). The simulator is given no webhook URL: its webhook sender builds an HTTP client (an SSL
context, tens of ms of CPU) per webhook on its own event loop, which delayed its answers to the
calls that followed (the contact upsert of an unknown number, the DND PUT) in a first version of
this script that waited for the `ContactDndUpdate` webhook.

Also reported, per group (median ms): where the time goes, from the event row, `sync_log` and the
simulator's request log: the sender's round trip, 2xx → the opt-out decision recorded (wake-up,
claim, handler start, registry write), → the first GHL request, → the DND applied (the GHL calls
before it: their count, endpoints and round trip), and the DND → the event marked done.

Not included: GHL's own webhooks back to the service; in production the `ContactDndUpdate` echo of
our write is processed after the DND, outside the interval measured.

Progress goes to stderr; stdout gets exactly one JSON line. Every process the script starts is
stopped and the database dropped, on success, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from ingest import (
    BACKGROUND_WARN_PCT,
    BenchError,
    Postgres,
    Server,
    background_cpu,
    cpu_snapshot,
    cpu_usage,
    df_middleware_command,
    percentile,
    say,
)
from large_bodies import Target, run_stoppable, server_env, server_source
from pipeline import endpoint_of, simulator

from df_middleware.simulators.ghl import DEFAULT_LOCATION_ID, DEFAULT_TOKEN

WEBHOOK_PATH = "/api/webhooks/texting"
#: The number people text (ours at Verity).
OUR_NUMBER = "+19195550000"
#: Issue 11's target for the median.
TARGET_MEDIAN_MS = 1000.0
#: STOPs before the measured ones (not measured).
WARMUP_STOPS = 4
#: How long one STOP may take to be done before the run is declared broken.
DONE_TIMEOUT_S = 30.0
#: How often the script asks the database whether a STOP's event is done (bounds nothing measured).
DONE_POLL_S = 0.05
#: GHL's published budget, used by the simulator and the service alike.
GHL_WINDOW_S = 10.0
GHL_CALLS_PER_WINDOW = 100


# --- the people --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """One STOP's sender: a distinct number, whose GHL contact exists beforehand or not."""

    index: int
    phone: str
    group: str  # "known" | "unknown" | "warmup-known" | "warmup-unknown"

    @property
    def known(self) -> bool:
        return self.group.endswith("known") and not self.group.endswith("unknown")


def people(count: int, contacts: str) -> list[Person]:
    """Warm-up people first, then `count` measured ones; `mixed` alternates known and unknown so
    that both groups meet the same conditions over the run."""
    crowd = [
        Person(-1 - i, f"+1919{3_900_000 + i:07d}", "warmup-known" if i % 2 == 0 else "warmup-unknown")
        for i in range(WARMUP_STOPS)
    ]
    for i in range(count):
        group = contacts if contacts != "mixed" else ("known" if i % 2 == 0 else "unknown")
        crowd.append(Person(i, f"+1919{3_000_000 + i:07d}", group))
    return crowd


def stop_webhook(person: Person, run_id: str, secret: bytes) -> tuple[bytes, dict[str, str]]:
    """Verity's `message.received` with body STOP (contracts/verity/webhooks/…stop.json), signed."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = {
        "eventType": "message.received",
        "messageId": f"tlx-{run_id}-{person.index}",
        "conversationId": f"chat-{run_id}-{person.index}",
        "direction": "inbound",
        "from": person.phone,
        "to": OUR_NUMBER,
        "body": "STOP",
        "timestamp": now,
        "status": "received",
    }
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Texting-Signature": hmac.new(secret, body, hashlib.sha256).hexdigest(),
    }
    return body, headers


# --- the service ---------------------------------------------------------------------------------------


class WorkerProcess(Server):
    """`df-middleware worker` in its own session; stopped like a server (SIGTERM, then the group).
    It has no HTTP port: the warm-up STOPs reaching GHL are its readiness signal."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.name = "worker"
        self.log_path = workdir / "worker.log"
        self.port = 0
        self.url = ""
        say("starting worker: worker")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [df_middleware_command(), "worker"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Queue:
    """The bits of the service's database this script reads: whether a STOP's event is done and
    the queue empty (on one open connection, cheap enough to ask every 50 ms), and, at the end,
    when each event arrived, got its first sync_log row and finished."""

    def __init__(self, target: Target, pg: Postgres | None) -> None:
        self.target = target
        self.pg = pg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pg_conn: Any = None
        self._sqlite_conn: sqlite3.Connection | None = None

    def _sqlite(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.target.workdir / (self.target.name + ".db"), timeout=10, isolation_level=None
        )

    def open(self) -> None:
        if self.pg is not None:
            self._loop = asyncio.new_event_loop()
            self._pg_conn = self._loop.run_until_complete(asyncpg.connect(self.target.url))
        else:
            self._sqlite_conn = self._sqlite()

    def close(self) -> None:
        if self._loop is not None:
            if self._pg_conn is not None:
                with contextlib.suppress(Exception):
                    self._loop.run_until_complete(self._pg_conn.close())
            self._loop.close()
            self._loop = self._pg_conn = None
        if self._sqlite_conn is not None:
            self._sqlite_conn.close()
            self._sqlite_conn = None

    def state(self, event_id: uuid.UUID) -> tuple[str | None, int]:
        """(the event's status, events pending or processing)."""
        busy = "SELECT count(*) FROM texting_webhook_events WHERE status IN ('pending', 'processing')"
        if self._loop is not None:
            row = self._loop.run_until_complete(
                self._pg_conn.fetchrow(
                    f"SELECT (SELECT status FROM texting_webhook_events WHERE id = $1), ({busy})", event_id
                )
            )
            return row[0], int(row[1])
        assert self._sqlite_conn is not None
        status = self._sqlite_conn.execute(
            "SELECT status FROM texting_webhook_events WHERE id IN (?, ?)", (event_id.hex, str(event_id))
        ).fetchone()
        return (status[0] if status else None), int(self._sqlite_conn.execute(busy).fetchone()[0])

    def wait_done(self, event_id: uuid.UUID, timeout: float) -> tuple[str | None, float]:
        """Wait until the event is no longer pending or processing and nothing else is; returns
        its status and when that was seen."""
        deadline = time.monotonic() + timeout
        while True:
            status, busy = self.state(event_id)
            if status not in (None, "pending", "processing") and busy == 0:
                return status, time.time()
            if time.monotonic() > deadline:
                return status, time.time()
            time.sleep(DONE_POLL_S)

    def events(self) -> dict[str, dict[str, Any]]:
        """Per event id (32 hex digits): status, attempts, received/processed and first sync_log
        time (epoch seconds)."""
        rows: dict[str, dict[str, Any]] = {}
        if self.pg is not None:
            text = self.pg.psql(
                "SELECT id, status, attempts, extract(epoch FROM received_at), "
                "coalesce(extract(epoch FROM processed_at)::text, '') FROM texting_webhook_events",
                self.target.name,
            )
            for line in filter(None, text.split("\n")):
                event_id, status, attempts, received, processed = line.split("|")
                rows[uuid.UUID(event_id).hex] = {
                    "status": status,
                    "attempts": int(attempts),
                    "received_at": float(received),
                    "processed_at": float(processed) if processed else None,
                }
            logged = self.pg.psql(
                "SELECT correlation_id, extract(epoch FROM min(started_at)) FROM sync_log "
                "WHERE correlation_id IS NOT NULL GROUP BY correlation_id",
                self.target.name,
            )
            first_log = {k: float(v) for k, v in (ln.split("|") for ln in logged.split("\n") if ln)}
        else:
            with contextlib.closing(self._sqlite()) as conn:
                for event_id, status, attempts, received, processed in conn.execute(
                    "SELECT id, status, attempts, received_at, processed_at FROM texting_webhook_events"
                ):
                    rows[uuid.UUID(str(event_id)).hex] = {
                        "status": status,
                        "attempts": int(attempts),
                        "received_at": _sqlite_epoch(received),
                        "processed_at": _sqlite_epoch(processed) if processed else None,
                    }
                first_log = {
                    str(k): _sqlite_epoch(v)
                    for k, v in conn.execute(
                        "SELECT correlation_id, min(started_at) FROM sync_log "
                        "WHERE correlation_id IS NOT NULL GROUP BY correlation_id"
                    )
                }
        for key, at in first_log.items():
            with contextlib.suppress(ValueError):
                event = rows.get(uuid.UUID(key).hex)
                if event is not None:
                    event["first_log_at"] = at
        return rows


def _sqlite_epoch(value: Any) -> float:
    """A UTCDateTime as SQLite stores it (naive UTC text) → epoch seconds."""
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()


# --- one run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    stops: int
    contacts: str
    interval: float
    ghl_latency_ms: float
    shape: str
    sqlite: bool
    seed: int | None
    wait_idle: float


@dataclass
class Stop:
    """One STOP as the sender saw it."""

    person: Person
    sent_at: float
    accepted_at: float
    event_id: uuid.UUID
    done_seen_at: float  # when this script saw the event done (within DONE_POLL_S)
    # Filled from the simulator's request log at the end.
    dnd_put_at: float | None = None
    ghl_contact_id: str | None = None
    ghl_calls: list[dict[str, Any]] = field(default_factory=list)


class StopLatencyBenchmark:
    def __init__(self, options: Options, pg: Postgres, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.pg = None if options.sqlite else pg
        self.target = Target(workdir, self.pg, name=f"dfm_bench_stop_{secrets.token_hex(4)}")
        self.queue = Queue(self.target, self.pg)
        self.secret = secrets.token_hex(32)
        self.run_id = secrets.token_hex(3)
        self.random = random.Random(options.seed)
        self.processes: list[Server] = []

    def stop_all(self) -> None:
        self.queue.close()
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()

    def env(self, ghl_url: str) -> dict[str, str]:
        env = server_env(self.target.url, self.secret, None)
        env.update(
            GHL_BASE_URL=ghl_url,
            GHL_LOCATION_ID=DEFAULT_LOCATION_ID,
            GHL_API_KEY=DEFAULT_TOKEN,
            GHL_CONVERSATION_PROVIDER_ID="bench-sms-provider",
        )
        return env

    def run(self) -> dict[str, Any]:
        o = self.options
        background = self.wait_for_quiet_machine()
        load_before = os.getloadavg()
        say(f"machine: {os.cpu_count()} CPUs, load {load_before}, {background:.0f}% of a core busy before")
        with simulator("ghl") as ghl_url:
            if o.ghl_latency_ms:
                httpx.put(f"{ghl_url}/_sim/faults", json={"latency_ms": o.ghl_latency_ms}).raise_for_status()
            env = self.env(ghl_url)
            source = server_source(env, self.workdir)
            source["uncommitted_files"] = _uncommitted_files(source.get("package"))
            say(f"server code: {source}")
            self.target.create(env)
            crowd = people(o.stops, o.contacts)
            self.seed_known(ghl_url, [p for p in crowd if p.known])
            sim_pids = _simulator_pids(ghl_url)
            server = self.start_service(env)
            self.queue.open()
            warmup, measured = crowd[:WARMUP_STOPS], crowd[WARMUP_STOPS:]
            say(f"warm-up: {len(warmup)} STOPs (not measured)")
            self.send_all(server, warmup, timeout=90.0)
            ours = {pid for p in self.processes for pid in p.pids()} | sim_pids
            say(
                f"measuring {len(measured)} STOPs ({o.contacts}), one at a time, "
                f"pausing {o.interval:.2f} s on average after each"
            )
            cpu_before = cpu_snapshot(ours)
            started = time.time()
            stops = self.send_all(server, measured, timeout=DONE_TIMEOUT_S)
            ended = time.time()
            cpu = cpu_usage(cpu_before, cpu_snapshot(ours))
            load_after = os.getloadavg()
            requests = httpx.get(f"{ghl_url}/_sim/requests", timeout=60).json()
            sim_state = httpx.get(f"{ghl_url}/_sim/state", timeout=60).json()
        events = self.queue.events()
        return self.report(
            stops,
            requests,
            sim_state,
            events,
            started=started,
            ended=ended,
            extra={
                "server_code": source,
                "machine": {
                    "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after],
                    "background_cpu_pct_before": round(background, 1),
                    "cpu_pct_during": {
                        "service_and_simulator": cpu["server"],
                        "postgres": cpu["postgres"],
                        "bench": cpu["load"],
                        "machine": cpu["machine"],
                        "other_processes": cpu["other"],
                    },
                    "cpu_note": "% of one core over the measured STOPs; postgres = every PostgreSQL process "
                    "on the machine (others' too); other_processes = the "
                    "machine's busy time not used by the service, simulator, PostgreSQL or this script",
                },
            },
        )

    def wait_for_quiet_machine(self) -> float:
        """% of a core the machine is busy before we start; with --wait-idle, waits (up to that
        long) until it is under BACKGROUND_WARN_PCT."""
        deadline = time.monotonic() + self.options.wait_idle
        while True:
            busy = background_cpu()
            if busy <= BACKGROUND_WARN_PCT or time.monotonic() >= deadline:
                if busy > BACKGROUND_WARN_PCT:
                    say(f"WARNING: the machine is busy ({busy:.0f}% of a core) before the run")
                return busy
            say(f"machine busy ({busy:.0f}% of a core): waiting for it to be quiet")
            time.sleep(10)

    def seed_known(self, ghl_url: str, known: list[Person]) -> None:
        """GHL contacts of the `known` people, as a GHL user creates them (not rate limited)."""
        say(f"seeding {len(known)} GHL contacts through /_sim/ui/contacts")
        with httpx.Client(base_url=ghl_url, timeout=30) as client:
            for person in known:
                answer = client.post(
                    "/_sim/ui/contacts",
                    json={
                        "locationId": DEFAULT_LOCATION_ID,
                        "firstName": "Known",
                        "lastName": f"Person {person.index}",
                        "phone": person.phone,
                    },
                )
                answer.raise_for_status()

    def start_service(self, env: dict[str, str]) -> Server:
        if self.options.shape == "split":
            server = Server("http", ["--no-worker"], env, self.workdir)
            self.processes.append(server)
            server.wait_ready()
            self.processes.append(WorkerProcess(env, self.workdir))
        else:
            server = Server("serve", [], env, self.workdir)
            self.processes.append(server)
            server.wait_ready()
        return server

    def send_all(self, server: Server, crowd: Sequence[Person], timeout: float) -> list[Stop]:
        """One STOP at a time: send, wait until its event is done and the queue empty, pause."""
        stops: list[Stop] = []
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        next_send = time.time()
        try:
            for n, person in enumerate(crowd, 1):
                time.sleep(max(0.0, next_send - time.time()))
                body, headers = stop_webhook(person, self.run_id, self.secret.encode())
                sent_at = time.time()
                try:
                    connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
                    response = connection.getresponse()
                except (OSError, http.client.HTTPException):
                    connection.close()  # a closed keep-alive connection: one fresh try
                    sent_at = time.time()
                    connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
                    response = connection.getresponse()
                answer = response.read()
                accepted_at = time.time()
                parsed = json.loads(answer) if answer else {}
                if response.status != 200 or parsed.get("status") != "accepted":
                    raise BenchError(f"STOP from {person.phone} answered {response.status}: {answer[:300]!r}")
                event_id = uuid.UUID(parsed["id"])
                status, done_seen_at = self.queue.wait_done(event_id, timeout)
                if status != "done":
                    raise BenchError(
                        f"the STOP from {person.phone} is {status!r} {timeout:.0f} s after its 200\n"
                        + "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in self.processes)
                    )
                stops.append(Stop(person, sent_at, accepted_at, event_id, done_seen_at))
                next_send = time.time() + self.random.uniform(0.5, 1.5) * self.options.interval
                if n % 20 == 0 or n == len(crowd):
                    seen = [(s.done_seen_at - s.accepted_at) * 1000 for s in stops]
                    say(f"  {n}/{len(crowd)}; 2xx → seen done: median {statistics.median(seen):.0f} ms")
        finally:
            connection.close()
        return stops

    # --- the numbers ---------------------------------------------------------------------------

    def report(
        self,
        stops: list[Stop],
        requests: list[dict[str, Any]],
        sim_state: dict[str, Any],
        events: dict[str, dict[str, Any]],
        *,
        started: float,
        ended: float,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        o = self.options
        latency_s = o.ghl_latency_ms / 1000
        api = [r for r in requests if not r["path"].startswith("/oauth")]
        contacts = {c["id"]: c for c in sim_state.get("contacts", [])}
        for stop in stops:
            # One STOP at a time: the DND write between its send and its event done is its own.
            puts = [r for r in api if stop.sent_at <= r["at"] <= stop.done_seen_at and _sets_sms_dnd(r)]
            if len(puts) != 1:
                raise BenchError(
                    f"{len(puts)} SMS DND writes in the window of the STOP from {stop.person.phone}"
                )
            put = puts[0]
            stop.ghl_contact_id = put["path"].rsplit("/", 1)[1]
            contact = contacts.get(stop.ghl_contact_id) or {}
            dnd = ((contact.get("dndSettings") or {}).get("SMS") or {}).get("status")
            if contact.get("phone") != stop.person.phone or dnd != "active":
                raise BenchError(
                    f"GHL contact {stop.ghl_contact_id} ends with phone {contact.get('phone')} and SMS DND "
                    f"{dnd!r}, not {stop.person.phone} active"
                )
            stop.dnd_put_at = put["at"] + latency_s
            stop.ghl_calls = [r for r in api if stop.sent_at <= r["at"] <= put["at"]]

        groups = {"all": stops}
        for name in ("known", "unknown"):
            members = [s for s in stops if s.person.group == name]
            if members:
                groups[name] = members

        def ms(values: Sequence[float]) -> dict[str, Any]:
            ordered = sorted(values)
            return {
                "count": len(ordered),
                "median": round(statistics.median(ordered), 1),
                "p90": round(percentile(ordered, 90), 1),
                "p99": round(percentile(ordered, 99), 1),
                "max": round(ordered[-1], 1),
                "min": round(ordered[0], 1),
                "mean": round(statistics.fmean(ordered), 1),
            }

        def dnd_ms(s: Stop) -> float:
            assert s.dnd_put_at is not None
            return (s.dnd_put_at - s.accepted_at) * 1000

        latency = {name: ms([dnd_ms(s) for s in members]) for name, members in groups.items()}
        breakdown = {name: self.breakdown(members, events, latency_s) for name, members in groups.items()}
        calls = {
            name: {
                "calls_before_dnd_per_stop": round(statistics.fmean(len(s.ghl_calls) for s in members), 2),
                "by_endpoint_per_stop": {
                    k: round(v / len(members), 2)
                    for k, v in sorted(
                        Counter(
                            endpoint_of(r["method"], r["path"]) for s in members for r in s.ghl_calls
                        ).items()
                    )
                },
            }
            for name, members in groups.items()
        }
        during = [r for r in api if started <= r["at"] <= ended]
        measured_ids = {s.event_id.hex for s in stops}
        outcomes = Counter(events[i]["status"] for i in measured_ids if i in events)
        retried = sum(1 for i in measured_ids if i in events and events[i]["attempts"] > 1)
        slowest = sorted(stops, key=dnd_ms, reverse=True)[:3]
        result: dict[str, Any] = {
            "bench": "stop_latency",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "database": self.target.label,
            "shape": "serve --no-worker + worker" if o.shape == "split" else "serve (worker in-process)",
            "stops": len(stops),
            "contacts": o.contacts,
            "interval_s": o.interval,
            "ghl_latency_ms": o.ghl_latency_ms,
            "latency_ms": latency,
            "target_median_ms": TARGET_MEDIAN_MS,
            "median_under_target": latency["all"]["median"] < TARGET_MEDIAN_MS,
            "measured": "200 accepted received by the sender → GHL simulator received the PUT "
            "/contacts/{id} setting SMS DND active (request log `at` + injected latency); same clock",
            "checked": "each STOP's PUT found in the simulator's request log, and its contact holds the "
            "STOP's phone with SMS DND active in the simulator's final state",
            "breakdown_median_ms": breakdown,
            "ghl": {
                **calls,
                "max_calls_in_any_10s": _max_in_window(sorted(r["at"] for r in during), GHL_WINDOW_S),
                "budget_per_10s": GHL_CALLS_PER_WINDOW,
                "rate_limited_429": sum(1 for r in during if r["status"] == 429),
                "error_statuses": dict(Counter(str(r["status"]) for r in during if r["status"] >= 400)),
                "sim_rate_limited_total": (sim_state.get("counters") or {}).get("rate_limited_responses", 0),
            },
            "outcomes": dict(outcomes),
            "retried_events": retried,
            "slowest": [
                {
                    "group": s.person.group,
                    "ms": round(dnd_ms(s), 1),
                    "ghl_calls": len(s.ghl_calls),
                    "at_s": round(s.accepted_at - started, 1),
                }
                for s in slowest
            ],
            "seconds": round(ended - started, 1),
            **extra,
            "commit": extra["server_code"].get("commit"),
        }
        return result

    @staticmethod
    def breakdown(members: list[Stop], events: dict[str, dict[str, Any]], latency_s: float) -> dict[str, Any]:
        """Median ms of each leg, in time order: the sender's round trip; 2xx → the opt-out decision
        recorded (the first sync_log row: wake-up, claim, handler start, registry write); → the
        first GHL request sent (its arrival at the simulator); → the DND applied (the PUT's arrival
        plus the injected latency); the DND → the event marked done. Also the GHL round trip per
        call before the PUT (arrival to next arrival, injected latency included)."""
        legs: dict[str, list[float]] = {
            "sender_round_trip": [],
            "accepted_to_optout_recorded": [],
            "optout_recorded_to_first_ghl_request": [],
            "first_ghl_request_to_dnd_applied": [],
            "dnd_applied_to_event_done": [],
            "ghl_round_trip_per_call_before_dnd": [],
        }
        for s in members:
            assert s.dnd_put_at is not None
            legs["sender_round_trip"].append((s.accepted_at - s.sent_at) * 1000)
            event = events.get(s.event_id.hex, {})
            recorded = event.get("first_log_at")
            first_sent = s.ghl_calls[0]["at"] if s.ghl_calls else None
            if recorded is not None:
                legs["accepted_to_optout_recorded"].append((recorded - s.accepted_at) * 1000)
                if first_sent is not None:
                    legs["optout_recorded_to_first_ghl_request"].append((first_sent - recorded) * 1000)
            if first_sent is not None:
                legs["first_ghl_request_to_dnd_applied"].append((s.dnd_put_at - first_sent) * 1000)
                if len(s.ghl_calls) > 1:
                    put_sent = s.dnd_put_at - latency_s
                    legs["ghl_round_trip_per_call_before_dnd"].append(
                        (put_sent - first_sent) * 1000 / (len(s.ghl_calls) - 1)
                    )
            if event.get("processed_at") is not None:
                legs["dnd_applied_to_event_done"].append((event["processed_at"] - s.dnd_put_at) * 1000)
        return {k: round(statistics.median(v), 1) if v else None for k, v in legs.items()}


def _sets_sms_dnd(request: dict[str, Any]) -> bool:
    """A logged `PUT /contacts/{id}` that GHL accepted, setting SMS DND active."""
    if request["method"] != "PUT" or not request["path"].startswith("/contacts/") or request["status"] != 200:
        return False
    body = request["body"] if isinstance(request["body"], dict) else {}
    return ((body.get("dndSettings") or {}).get("SMS") or {}).get("status") == "active"


def _max_in_window(times: Sequence[float], window: float) -> int:
    """Most calls within any `window` seconds (sorted arrival times)."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _uncommitted_files(package: str | None) -> list[str]:
    """Files of the measured package that differ from its commit: others may be editing the same
    work tree, and then the commit alone does not say what code ran."""
    if not package:
        return []
    status = subprocess.run(
        ["git", "-C", package, "status", "--porcelain", "--untracked-files=no", "--", "."],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in status.stdout.splitlines() if line.strip()]


def _simulator_pids(url: str) -> set[int]:
    """The simulator's process (`… simulate ghl --port P`), for the CPU figures."""
    port = url.rsplit(":", 1)[1]
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"simulate" in argv and b"--port" in argv and port.encode() in argv:
                pids.add(int(entry.name))
    return pids


# --- entry point ---------------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Postgres]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=200, help="Measured STOPs (default 200).")
    parser.add_argument(
        "--contacts",
        choices=("mixed", "known", "unknown"),
        default="mixed",
        help="Whose GHL contact exists beforehand: alternately (default), all, none.",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="Mean pause between one STOP done (DND set, queue empty) and the next send (random "
        "0.5-1.5x). Default 1.0 keeps about half of GHL's budget unused.",
    )
    parser.add_argument(
        "--ghl-latency-ms", type=float, default=0.0, help="Latency the GHL simulator adds to every call."
    )
    parser.add_argument(
        "--shape",
        choices=("split", "in-process"),
        help="split: serve --no-worker + worker (default on PostgreSQL); in-process: serve with the "
        "worker inside (default with --sqlite).",
    )
    parser.add_argument("--sqlite", action="store_true", help="A SQLite file instead of PostgreSQL.")
    parser.add_argument("--seed", type=int, help="Seed of the random pauses.")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"Wait up to this long for other processes to use under {BACKGROUND_WARN_PCT:.0f}%% of a "
        "core before starting. Default: only warn.",
    )
    parser.add_argument("--pg-host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--pg-user", default=os.environ.get("PGUSER", "postgres"))
    args = parser.parse_args(argv)
    if args.stops < 1:
        parser.error("--stops must be at least 1")
    options = Options(
        stops=args.stops,
        contacts=args.contacts,
        interval=args.interval,
        ghl_latency_ms=args.ghl_latency_ms,
        shape=args.shape or ("in-process" if args.sqlite else "split"),
        sqlite=args.sqlite,
        seed=args.seed,
        wait_idle=args.wait_idle,
    )
    return options, Postgres(args.pg_host, args.pg_port, args.pg_user)


def main(argv: Sequence[str] | None = None) -> int:
    options, pg = parse_options(argv)
    result = run_stoppable("dfm-bench-stop-", lambda workdir: StopLatencyBenchmark(options, pg, workdir))
    if isinstance(result, int):
        return result
    say(
        f"STOP → DND: median {result['latency_ms']['all']['median']} ms, "
        f"p99 {result['latency_ms']['all']['p99']} ms (target: median < {TARGET_MEDIAN_MS:.0f})"
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
