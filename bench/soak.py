"""The soak: the whole product, scaled out, under a steady mixed stream and faults (SPEC §12, §13).

    python bench/soak.py [--minutes 30] [--people 2000] [--rate 3] [--seed 1] [--kill-every 180]
                         [--outage-seconds 45] [--clock-skew 60] [--no-echoes] [--spare-worker]
                         [--keep]

A benchmark, not a test (tests/test_soak.py runs a two-minute version). One run:

1. starts a private PostgreSQL cluster (bench/private_postgres.py) and migrates a database in it;
2. serves the GHL, Aloware and Verity simulators in this process, each failing 5 % of requests
   (5xx, 429, hangs past the client's timeout, answers lost after the work was done) with
   100-250 ms of latency, GHL enforcing its 100 requests / 10 s;
3. starts two `df-middleware serve --no-worker` and two `df-middleware worker` processes on that
   database, as an operator would (soak_world.py);
4. plays the stream for `--minutes` at `--rate` steps per second (soak_stream.py): a population of
   `--people` (leads created in GHL, contacts made in the dialer, unknown numbers texting in, leads
   whose DND a GHL user toggles; two agents) and broadcasts, every webhook signed and posted to
   either server, 20 % delivered twice, some out of order;
5. injects faults while it plays: `kill -9` of a worker every `--kill-every` seconds (restarted
   at once), one server restarted (SIGTERM, start) at 30 % of the run, PostgreSQL restarted (fast
   shutdown, start) at 50 %, and GHL answering only 503 for `--outage-seconds` at 70 %;
   GHL and Aloware also post their webhooks about the service's own writes (contact creates and
   updates, DND, tags), as the real ones do, to the second server: the echoes the service must
   recognise as its own (R-LOOP-1) rather than act on again (`--no-echoes` turns them off); and
   the partners' clocks disagree with ours (`--clock-skew`, default GHL 60 s ahead, Verity 30 s
   ahead, Aloware 60 s behind): every timestamp a partner writes is its own clock's;
6. drains: waits until every webhook is acknowledged, every Verity receipt delivered and the
   queue holds nothing pending or processing (or `--settle-minutes` pass);
7. judges (soak_verdict.py) the simulators' final state against the stream's own oracle.

Progress goes to stderr; the report is one JSON line on stdout (see docs/benchmarks.md, "Soak").
Exit status 0 when the verdict is clean: nothing lost, no duplicated effect, no SMS to an opted-out
number, no mismatch, no dead letter other than a send held for the operator (R-IDEM-2), every
webhook acknowledged; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from private_postgres import PrivateCluster
from soak_stream import Broadcast, Deliverer, Person, Stream, make_population, stored_identity
from soak_verdict import judge, lost, unexplained_dead_letters
from soak_world import (
    Secrets,
    ServiceProcess,
    Simulators,
    base_fault_plan,
    echo_partner_writes,
    echo_report,
    make_processes,
    outage_plan,
    service_env,
    start_simulators,
)

from df_middleware.db.migrate import upgrade
from df_middleware.simulators.common import set_clock_skew

TABLES = ("webhook_events", "texting_webhook_events", "broadcast_webhook_events")
SAMPLE_SECONDS = 5.0
#: GHL's rate window (100 requests / 10 s per location).
GHL_WINDOW_SECONDS = 10.0


def progress(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def rss_trend(samples: list[float]) -> float | None:
    """Growth over a process's life: the mean RSS of its last quarter of samples minus that of
    its first quarter (after the first minute's warm-up); None for a life under two minutes."""
    samples = samples[int(60 / SAMPLE_SECONDS) :]
    if len(samples) < 24:
        return None
    quarter = len(samples) // 4
    return round(statistics.fmean(samples[-quarter:]) - statistics.fmean(samples[:quarter]), 1)


#: Each partner's clock skew as a multiple of `--clock-skew`: GHL ahead, Verity a little ahead,
#: Aloware behind, so events of one person from two systems are dated by clocks that disagree.
CLOCK_SKEW_FACTORS = {"ghl": 1.0, "verity": 0.5, "aloware": -1.0}


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self._phase = "start"
        #: (wall-clock time, phase) at every change, to place the simulators' requests in phases.
        self.timeline: list[tuple[float, str]] = [(time.time(), "start")]
        self.fault_log: list[dict[str, Any]] = []
        self.depth_series: list[dict[str, Any]] = []
        self.rss_series: dict[str, list[float]] = defaultdict(list)
        #: What GHL and Aloware posted about the service's own writes (`echo_report`).
        self.echoes: dict[str, Any] | None = None
        self.started = time.monotonic()

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = value
        self.timeline.append((time.time(), value))

    def phase_at(self, moment: float) -> str:
        current = "start"
        for at, phase in self.timeline:
            if at > moment:
                break
            current = phase
        return current

    def now(self) -> float:
        return round(time.monotonic() - self.started, 1)

    # --- database reads (reporting only) -------------------------------------------------------

    async def queue_counts(self) -> dict[str, int] | None:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return None
        try:
            counts: Counter[str] = Counter()
            for table in TABLES:
                for row in await conn.fetch(f"SELECT status, count(*) AS n FROM {table} GROUP BY status"):
                    counts[row["status"]] += row["n"]
            return dict(counts)
        except (OSError, asyncpg.PostgresError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def stored_identities(self) -> set[str]:
        conn = await asyncpg.connect(self.dsn)
        stored: set[str] = set()
        try:
            for table, channels in (
                ("webhook_events", ("ghl", "provider", "aloware")),
                ("texting_webhook_events", ("texting",)),
                ("broadcast_webhook_events", ("broadcast",)),
            ):
                for row in await conn.fetch(f"SELECT payload_json FROM {table}"):
                    payload = row["payload_json"]
                    body = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
                    for channel in channels:
                        stored.add(stored_identity(channel, body))
        finally:
            await conn.close()
        return stored

    async def dead_letters(self) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.dsn)
        try:
            found = []
            for table in TABLES:
                rows = await conn.fetch(
                    f"SELECT event_type, attempts, error_message FROM {table} WHERE status = 'error'"
                )
                found += [
                    {
                        "table": table,
                        "event_type": r["event_type"],
                        "attempts": r["attempts"],
                        "reason": (r["error_message"] or "")[:300],
                    }
                    for r in rows
                ]
            return found
        finally:
            await conn.close()

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.workdir = Path(tempfile.mkdtemp(prefix="dfm-soak-"))
        progress(f"workdir {self.workdir}")
        cluster = await asyncio.to_thread(PrivateCluster.create, settings={"max_connections": "200"})
        self.cluster = cluster
        try:
            return await self._run_with(cluster)
        finally:
            if not args.keep:
                await asyncio.to_thread(cluster.destroy)

    async def _run_with(self, cluster: PrivateCluster) -> dict[str, Any]:
        args = self.args
        admin = await asyncpg.connect(cluster.url())
        await admin.execute("CREATE DATABASE soak")
        await admin.close()
        self.dsn = cluster.url("soak")
        await upgrade(self.dsn)
        keys = Secrets.generate()
        for system, factor in CLOCK_SKEW_FACTORS.items():
            set_clock_skew(system, factor * args.clock_skew)
        sims = await start_simulators(keys, seed=args.seed)
        env = service_env(self.dsn, sims, keys, self.workdir)
        servers, workers = make_processes(env, self.workdir)
        self.processes = [*servers, *workers]
        for proc in self.processes:
            proc.start()
        for proc in self.processes:
            await proc.wait_ready()
        progress("2 servers and 2 workers ready")
        server_urls = [f"http://127.0.0.1:{s.port}" for s in servers]
        # Verity posts its receipts to a server and, like a provider, keeps retrying through a
        # restart or a database outage (about a minute and a half).
        sims.verity.webhook_url = f"{server_urls[0]}/api/webhooks/texting"
        sims.verity.webhooks.attempts = 60
        if args.echoes:
            echo_partner_writes(sims, keys, server_urls[1])
        deliverer = Deliverer(server_urls, keys, lambda: self.phase, self.rng)
        stream = Stream(sims, deliverer, self.rng, copy_chance=args.duplicates)
        people = make_population(args.people, self.rng)
        broadcasts: list[Broadcast] = []
        sampler = asyncio.create_task(self.sample_forever())
        try:
            self.phase = "steady"
            stream_started = time.monotonic()
            ghl_requests_before = len(sims.request_log("ghl"))
            faults = asyncio.create_task(self.inject_faults(servers, workers, sims, args.minutes * 60))
            await self.play(stream, people, broadcasts, args.minutes * 60)
            await faults
            self.phase = "drain"
            progress("stream over; draining")
            drain_started = time.monotonic()
            settled = await self.settle(deliverer, sims)
            self.drain_seconds = round(time.monotonic() - drain_started, 1)
            stream_seconds = time.monotonic() - stream_started
            verdict = judge(people, broadcasts, sims, echoes=args.echoes)
            self.write_oracle(people)
            stored = await self.stored_identities()
            lost_count, lost_examples = lost(deliverer.deliveries, stored)
            dead = await self.dead_letters()
            ghl_log = sims.request_log("ghl")[ghl_requests_before:]
            self.echoes = echo_report(sims) if args.echoes else None
        finally:
            sampler.cancel()
            for proc in self.processes:
                await proc.terminate()
            await deliverer.aclose()
            for server in sims.servers.values():
                await server.stop()
        return self.report(
            args,
            deliverer,
            stream,
            people,
            broadcasts,
            verdict,
            lost_count,
            lost_examples,
            dead,
            ghl_log,
            stream_seconds,
            settled,
        )

    def write_oracle(self, people: list[Person]) -> None:
        """What the oracle expected of every person reached, for whoever reads a failed verdict."""
        reached = [p for p in people if p.played]
        (self.workdir / "oracle.json").write_text(
            json.dumps(
                [
                    {
                        "phone": p.phone,
                        "kind": p.kind,
                        "agent": p.agent,
                        "tags": sorted(p.tags),
                        "opted_out": p.opted_out_now(),
                        "consent": p.consent,
                        "dnd_active": p.dnd_active,
                        "history": p.history,
                    }
                    for p in reached
                ],
                indent=1,
            )
        )

    async def play(
        self, stream: Stream, people: list[Person], broadcasts: list[Broadcast], seconds: float
    ) -> None:
        """Start one step every 1/rate seconds: a started person's next step (their scripts are
        short, so most people get to finish), a new person's first, or now and then a broadcast."""
        deadline = time.monotonic() + seconds
        waiting = list(people)
        self.rng.shuffle(waiting)
        started: list[Person] = []
        tasks: set[asyncio.Task[Any]] = set()
        interval = 1.0 / self.args.rate
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            next_at += interval
            if self.rng.random() < self.args.broadcast_share:
                broadcast = Broadcast(
                    f"bc_SOAK{len(broadcasts) + 1:04d}",
                    f"Soak broadcast {len(broadcasts) + 1}",
                    self.rng.randint(200, 2000),
                    ["burst"],
                )
                broadcasts.append(broadcast)
                broadcast.busy = True
                task = asyncio.create_task(stream.play_broadcast(broadcast))
            else:
                person = self._next_person(stream, started, waiting)
                task = asyncio.create_task(stream.play(person)) if person is not None else None
            if task is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for person in people:
            if person.steps and person in started:
                person.stranded = list(person.steps)

    def _next_person(self, stream: Stream, started: list[Person], waiting: list[Person]) -> Person | None:
        candidates = [p for p in self.rng.sample(started, min(len(started), 30)) if not p.busy and p.steps]
        for person in candidates:
            if stream.ready(person):
                person.busy = True
                return person
            stream.waits[person.steps[0]] += 1
        if waiting and (not candidates or self.rng.random() < 0.5):
            person = waiting.pop()
            started.append(person)
            person.busy = True
            return person
        return None

    async def inject_faults(
        self, servers: list[ServiceProcess], workers: list[ServiceProcess], sims: Simulators, seconds: float
    ) -> None:
        args = self.args
        begin = time.monotonic()
        plan: list[tuple[float, str]] = [
            (seconds * 0.3, "server_restart"),
            (seconds * 0.5, "pg_restart"),
            (seconds * 0.7, "ghl_outage"),
        ]
        at = args.kill_every * 0.5
        while at < seconds * 0.95:
            plan.append((at, "worker_kill"))
            at += args.kill_every
        plan.sort()
        kills = 0
        for when, action in plan:
            await asyncio.sleep(max(0.0, begin + when - time.monotonic()))
            record: dict[str, Any] = {"action": action, "at_s": self.now()}
            self.phase = action
            if action == "worker_kill":
                victims = workers[:1] if args.spare_worker else workers
                victim = victims[kills % len(victims)]
                kills += 1
                victim.kill9()
                record["process"] = victim.name
                victim.start()
                await victim.wait_ready()
                # The killed worker's last calls still count in GHL's window, which the new process
                # cannot know of: the phase lasts one window more (429s there are the kill's).
                await asyncio.sleep(GHL_WINDOW_SECONDS)
            elif action == "server_restart":
                victim = servers[1]
                record["process"] = victim.name
                record["exit"] = await victim.terminate()
                victim.start()
                await victim.wait_ready()
            elif action == "pg_restart":
                await asyncio.to_thread(self.cluster.restart)
                record["database_back_at_s"] = self.now()
                await asyncio.sleep(10)  # the recovery period is part of the phase
            elif action == "ghl_outage":
                sims.set_faults("ghl", outage_plan())
                await asyncio.sleep(args.outage_seconds)
                sims.set_faults("ghl", base_fault_plan(args.seed))
            record["done_at_s"] = self.now()
            self.fault_log.append(record)
            progress(f"fault {action} done: {record}")
            self.phase = "steady"

    async def sample_forever(self) -> None:
        while True:
            counts = await self.queue_counts()
            depth = None if counts is None else counts.get("pending", 0) + counts.get("processing", 0)
            self.depth_series.append(
                {
                    "t": self.now(),
                    "phase": self.phase,
                    "queued": depth,
                    "error": None if counts is None else counts.get("error", 0),
                }
            )
            for proc in self.processes:
                rss = proc.sample_rss()
                if rss is not None:
                    self.rss_series[f"{proc.name}#{proc.starts}"].append(round(rss, 1))
            await asyncio.sleep(SAMPLE_SECONDS)

    async def settle(self, deliverer: Deliverer, sims: Simulators) -> bool:
        """Until nothing is in flight anywhere (three quiet samples in a row), or the limit."""
        await deliverer.drain()
        deadline = time.monotonic() + self.args.settle_minutes * 60
        quiet = 0
        while time.monotonic() < deadline:
            counts = await self.queue_counts()
            busy = (
                counts is None
                or counts.get("pending", 0) + counts.get("processing", 0) > 0
                or sims.verity.receipts_pending > 0
                or sims.ghl.webhooks.pending > 0
                or sims.aloware.webhooks.pending > 0
            )
            quiet = 0 if busy else quiet + 1
            if quiet >= 3:
                return True
            await asyncio.sleep(2)
        return False

    # --- the report --------------------------------------------------------------------------------

    def report(
        self,
        args: argparse.Namespace,
        deliverer: Deliverer,
        stream: Stream,
        people: list[Person],
        broadcasts: list[Broadcast],
        verdict: dict[str, Any],
        lost_count: int,
        lost_examples: list[str],
        dead: list[dict[str, Any]],
        ghl_log: list[Any],
        stream_seconds: float,
        settled: bool,
    ) -> dict[str, Any]:
        deliveries = deliverer.deliveries
        by_phase: dict[str, list[float]] = defaultdict(list)
        for d in deliveries:
            if d.acked and d.latency_ms is not None:
                by_phase[d.phase].append(d.latency_ms)
        failures: Counter[str] = Counter()
        for d in deliveries:
            failures.update(d.failures)
        limiter_429: Counter[str] = Counter(
            self.phase_at(r.at) for r in ghl_log if r.status == 429 and r.fault is None
        )
        injected = Counter(r.fault for r in ghl_log if r.fault)
        unacked = [d for d in deliveries if not d.acked]
        depths = [s["queued"] for s in self.depth_series if s["queued"] is not None]
        result: dict[str, Any] = {
            "benchmark": "soak",
            "config": {
                "minutes": args.minutes,
                "people": args.people,
                "rate_steps_per_s": args.rate,
                "duplicates": args.duplicates,
                "kill_every_s": args.kill_every,
                "spare_worker": args.spare_worker,
                "outage_seconds": args.outage_seconds,
                "clock_skew_seconds": {k: f * args.clock_skew for k, f in CLOCK_SKEW_FACTORS.items()},
                "echoes": args.echoes,
                "seed": args.seed,
                "servers": 2,
                "workers": 2,
                "database": "PostgreSQL (private cluster)",
            },
            "verdict": {
                "clean": False,
                "lost": lost_count,
                "duplicated_effects": verdict["duplicated_effects"],
                "sms_to_opted_out": verdict["sms_to_opted_out"],
                "mismatches": verdict["mismatches"],
                "dead_letters": len(dead),
                "dead_letters_unexplained": len(unexplained_dead_letters(dead)),
                "unacknowledged": len(unacked),
                "settled": settled,
                "drain_seconds": self.drain_seconds,
                "stream_errors": len(stream.errors),
            },
            "webhooks": {
                "sent": len(deliveries),
                "copies": sum(1 for d in deliveries if d.copy),
                "acknowledged": sum(1 for d in deliveries if d.acked),
                "by_channel": dict(Counter(d.channel for d in deliveries)),
                "retried_answers": dict(failures),
                "lost_examples": lost_examples,
            },
            "accept_latency_ms": {
                phase: {"n": len(v), "p50": percentile(v, 0.5), "p99": percentile(v, 0.99)}
                for phase, v in sorted(by_phase.items())
            },
            "steps": dict(stream.steps_played),
            "waits": dict(stream.waits),
            "stranded_steps": dict(Counter(s for p in people for s in p.stranded)),
            "people": dict(Counter(p.kind for p in people)),
            "broadcasts": len(broadcasts),
            "dead_letters": dead[:20],
            "dead_letter_reasons": dict(Counter(d["reason"][:120] for d in dead)),
            "faults": self.fault_log,
            "queue_depth": {
                "max": max(depths) if depths else None,
                "mean": round(statistics.fmean(depths), 1) if depths else None,
                "series": [
                    (s["t"], s["queued"]) for s in self.depth_series[:: max(1, len(self.depth_series) // 60)]
                ],
            },
            "rss_mb": {
                proc.name: {
                    "starts": proc.starts,
                    "at_ready": proc.rss_at_start,
                    "before_stop": proc.rss_at_end,
                    "max": max(
                        (v for k, vs in self.rss_series.items() if k.startswith(f"{proc.name}#") for v in vs),
                        default=None,
                    ),
                    "trend_mb": rss_trend(self.rss_series.get(f"{proc.name}#{proc.starts}") or []),
                    # Each life's RSS every 5 s, as (first, after 1 min, after 3 min, max, last).
                    "lives": [
                        [v[0], v[min(12, len(v) - 1)], v[min(36, len(v) - 1)], max(v), v[-1]]
                        for n in range(1, proc.starts + 1)
                        if (v := self.rss_series.get(f"{proc.name}#{n}"))
                    ],
                }
                for proc in self.processes
            },
            "ghl": {
                "requests": len(ghl_log),
                "budget_used": round(len(ghl_log) / (stream_seconds * 10), 3) if stream_seconds else None,
                "rate_limited_429": sum(limiter_429.values()),
                "rate_limited_429_by_phase": dict(limiter_429),
                "injected_faults": dict(injected),
                "seconds": round(stream_seconds, 1),
            },
            "oracle": {
                k: verdict[k]
                for k in (
                    "mismatches_by_kind",
                    "held_for_operator",
                    "duplicated_by_kind",
                    "examples",
                    "verity_sends",
                    "ghl_contacts",
                    "aloware_contacts",
                )
            },
            "echoes": self.echoes,
            "stream_errors": stream.errors[:20],
        }
        v = result["verdict"]
        v["clean"] = (
            lost_count == 0
            and v["duplicated_effects"] == 0
            and v["sms_to_opted_out"] == 0
            and v["mismatches"] == 0
            and v["dead_letters_unexplained"] == 0
            and not unacked
            and (result["echoes"] is None or result["echoes"]["unacknowledged"] == 0)
            and settled
            and not stream.errors
        )
        return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="How long the stream plays.")
    parser.add_argument("--people", type=int, default=2000, help="Population size.")
    parser.add_argument("--rate", type=float, default=3.0, help="Steps started per second.")
    parser.add_argument("--duplicates", type=float, default=0.2, help="Share of webhooks delivered twice.")
    parser.add_argument(
        "--broadcast-share", type=float, default=0.01, help="Share of steps that are broadcasts."
    )
    parser.add_argument("--kill-every", type=float, default=180.0, help="Seconds between worker kill -9s.")
    parser.add_argument("--outage-seconds", type=float, default=45.0, help="How long GHL answers only 503.")
    parser.add_argument(
        "--settle-minutes", type=float, default=12.0, help="Longest wait for the queue to drain."
    )
    parser.add_argument(
        "--no-echoes",
        dest="echoes",
        action="store_false",
        help="GHL and Aloware do not post webhooks about the service's own writes (they do by default).",
    )
    parser.add_argument(
        "--spare-worker",
        action="store_true",
        help="Kill only worker1, so worker2 lives the whole run: its RSS shows a long life's trend.",
    )
    parser.add_argument(
        "--clock-skew",
        type=float,
        default=60.0,
        help="Seconds GHL's clock runs ahead of ours; Verity's runs half that ahead, Aloware's that behind.",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the database cluster and logs (workdir).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    result = asyncio.run(Soak(args).run())
    print(json.dumps(result, default=str))
    return 0 if result["verdict"]["clean"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
