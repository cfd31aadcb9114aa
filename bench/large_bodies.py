"""Server memory under many large signed webhooks at once (issue 9, R-PERF-5).

    python bench/large_bodies.py [--concurrency N] [--rounds R] [--body-bytes B] [--budget-mib M]
                                 [--sqlite] [--quick]

`df-middleware serve --no-worker` runs against a fresh PostgreSQL database on 127.0.0.1:5432 (or a
SQLite file with `--sqlite`). In each round, N senders post one signed ~1 MiB Verity texting
webhook each, all at the same moment; the server's resident memory is sampled from /proc every
50 ms meanwhile, and its true peak (VmHWM) is read at the end.

What it shows: with the body budget of `ingest/body_budget.py`, the bytes of webhook bodies one
process holds at once are at most INGEST_MAX_BYTES_IN_FLIGHT, so its RSS is its idle size plus a
multiple of that budget (measured in docs/benchmarks.md), however many large bodies arrive
together; the rest wait unread (TCP holds them at the sender) or get 503 with Retry-After.
`--budget-mib 256` is large enough never to bind at the default load (the behaviour before the
fix); running the script with `PYTHONPATH` set to another checkout's `src` measures that code
instead (the server inherits the environment, and the JSON says which source it imported).

Why it measures this way:

* The load generator is Python (asyncio streams), unlike bench/ingest.py's wrk: the measurement is
  the server's memory, not its throughput, and a few hundred requests of 1 MiB cost the generator
  little CPU. Bodies are built and signed before each round (unique message ids), and written in
  64 KiB pieces, so that a sender whose body waits in the socket holds no copy of it.
* The senders behave as a real one should: a 503 is retried after its Retry-After (at most
  `--max-attempts` times in all), so every event is eventually accepted. Every id the server
  acknowledged must then be a row of `texting_webhook_events` (`lost_events` must be 0), and no 5xx
  other than 503 may appear.
* RSS is summed over the server's process tree (one process with `serve --no-worker`); the
  samples give the time series, VmHWM the peak the samples may have missed.
* The per-source ingest limiter is disabled (INGEST_RATE_LIMIT_PER_SECOND=0): it would otherwise
  answer 429 to a burst, which is not what this benchmark is about.

Human-readable progress goes to stderr; stdout gets exactly one JSON line with the results.
Every process the script starts is stopped and the database dropped, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ingest import (
    BenchError,
    Postgres,
    Server,
    cpu_snapshot,
    cpu_usage,
    df_middleware_command,
    process_tree,
    say,
)

WEBHOOK_PATH = "/api/webhooks/texting"
#: The service's default MAX_WEBHOOK_BYTES; bodies are built just under it.
MAX_WEBHOOK_BYTES = 1_048_576
#: The service's default INGEST_MAX_BYTES_IN_FLIGHT (what the server uses without --budget-mib).
DEFAULT_BUDGET_MIB = 16
#: R-PERF-5: the server stays under this RSS under the ingest benchmark.
RSS_TARGET_MB = 200
#: How often the server's RSS is read during the load.
SAMPLE_INTERVAL_S = 0.05
#: Pieces a sender writes its body in (and so the most it copies into its socket's buffer).
WRITE_PIECE = 64 * 1024
#: A sender gives up on one attempt after this long without an answer.
ATTEMPT_TIMEOUT_S = 60.0
#: Wait before retrying an attempt that failed without an HTTP answer (a connection error).
ERROR_RETRY_S = 1.0


class _Stop(Exception):
    """SIGTERM or SIGINT: stop everything we started and leave."""


# --- the server's environment and database -------------------------------------------------------


@dataclass
class Target:
    """Where the server stores events: a fresh PostgreSQL database or a fresh SQLite file."""

    workdir: Path
    pg: Postgres | None
    name: str = field(default_factory=lambda: f"dfm_bench_large_{secrets.token_hex(4)}")
    created: bool = False

    @property
    def url(self) -> str:
        if self.pg is None:
            return f"sqlite:///{self.workdir / (self.name + '.db')}"
        return self.pg.url(self.name)

    @property
    def label(self) -> str:
        return "sqlite" if self.pg is None else "postgresql"

    def create(self, env: dict[str, str]) -> None:
        if self.pg is not None:
            say(f"creating database {self.name}")
            self.pg.psql(f"CREATE DATABASE {self.name}")
        self.created = True
        result = subprocess.run(
            [df_middleware_command(), "migrate"],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"df-middleware migrate failed:\n{result.stdout}\n{result.stderr}")
        say(f"migrated ({self.label}): {result.stdout.strip()[-200:]}")

    def stored_ids(self) -> set[str]:
        """Ids (32 hex digits) of every row of texting_webhook_events."""
        if self.pg is not None:
            text = self.pg.psql("SELECT id FROM texting_webhook_events", self.name)
            return {uuid.UUID(line).hex for line in text.split("\n") if line}
        with contextlib.closing(sqlite3.connect(self.workdir / (self.name + ".db"))) as conn:
            return {
                uuid.UUID(str(row[0])).hex for row in conn.execute("SELECT id FROM texting_webhook_events")
            }

    def drop(self) -> None:
        if self.pg is not None and self.created:
            with contextlib.suppress(BenchError, OSError):
                self.pg.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
                say(f"dropped database {self.name}")


def server_env(database_url: str, secret: str, budget_mib: float | None) -> dict[str, str]:
    """The caller's environment (PYTHONPATH included: it chooses the code) without any setting of
    the service that would change what is measured, plus the benchmark's own."""
    dropped = ("DATABASE_", "INGEST_", "VERITY_", "TEXTING_", "BROADCAST_", "MAX_WEBHOOK", "LOG_", "GHL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        DATABASE_URL=database_url,
        VERITY_WEBHOOK_SECRET=secret,
        INGEST_RATE_LIMIT_PER_SECOND="0",
        LOG_LEVEL="warning",
        LOG_FORMAT="json",
    )
    if budget_mib is not None:
        env["INGEST_MAX_BYTES_IN_FLIGHT"] = str(round(budget_mib * 1_048_576))
    return env


def server_source(env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Which df_middleware the server imports (PYTHONPATH may point at another checkout), and the
    commit of that checkout, so that the JSON says what code was measured."""
    found = subprocess.run(
        [sys.executable, "-c", "import df_middleware, os; print(os.path.dirname(df_middleware.__file__))"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    package = found.stdout.strip()
    source: dict[str, Any] = {"package": package or None}
    if package:
        head = subprocess.run(
            ["git", "-C", package, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", package, "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            check=False,
        )
        if head.returncode == 0:
            source["commit"] = head.stdout.strip()
            source["uncommitted_changes_in_package"] = bool(dirty.stdout.strip())
    budget_code = Path(package, "ingest", "body_budget.py") if package else None
    source["has_body_budget"] = bool(budget_code and budget_code.exists())
    return source


# --- memory samples ------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """VmRSS (current resident set) of one process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """A thread that reads the RSS of the server's process tree every SAMPLE_INTERVAL_S.

    A thread, not a task of the load's event loop: a loop busy with a hundred sockets would sample
    late exactly when memory moves fastest."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.samples: list[tuple[float, float]] = []  # (monotonic time, MB summed over the tree)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        pids = process_tree(self.root_pid)
        tree_read_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - tree_read_at > 1.0:  # `serve --workers N` children: re-read the tree now and then
                pids, tree_read_at = process_tree(self.root_pid), now
            values = [v for v in map(rss_mb, pids) if v is not None]
            if values:
                self.samples.append((now, sum(values)))
            self._stop.wait(SAMPLE_INTERVAL_S)

    def between(self, start: float, end: float) -> list[float]:
        return [mb for at, mb in self.samples if start <= at <= end]

    def series(self, start: float, end: float, bucket_s: float = 0.5) -> list[list[float]]:
        """[seconds since start, highest MB in the bucket] per bucket, for the JSON."""
        buckets: dict[int, float] = {}
        for at, mb in self.samples:
            if start <= at <= end:
                index = int((at - start) / bucket_s)
                buckets[index] = max(buckets.get(index, 0.0), mb)
        return [[round(i * bucket_s, 1), round(mb, 1)] for i, mb in sorted(buckets.items())]


# --- the load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    message_id: str
    head: bytes
    body: bytes


def build_webhooks(prefix: str, count: int, body_bytes: int, secret: bytes, port: int) -> list[Webhook]:
    """`count` signed message.received webhooks of exactly `body_bytes` bytes, unique message ids."""
    webhooks = []
    for i in range(count):
        message_id = f"{prefix}-{i:05d}"
        payload = {
            "eventType": "message.received",
            "messageId": message_id,
            "from": f"+1919555{i % 10_000:04d}",
            "to": "+19195550100",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "body": "",
        }
        frame = json.dumps(payload, separators=(",", ":")).encode()
        room = body_bytes - len(frame)
        if room < 0:
            raise BenchError(f"--body-bytes {body_bytes} is smaller than an empty webhook ({len(frame)})")
        # Base64 of random bytes: JSON-safe ASCII, distinct per message.
        text = base64.b64encode(os.urandom(room * 3 // 4 + 3))[:room].decode()
        body = json.dumps({**payload, "body": text}, separators=(",", ":")).encode()
        signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Texting-Signature: {signature}\r\n\r\n"
        ).encode()
        webhooks.append(Webhook(message_id, head, body))
    return webhooks


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def post(port: int, webhook: Webhook) -> Answer:
    """One attempt on a fresh connection. The body is written while the answer is awaited: a 503
    comes before the server has read it, and then the rest is not sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(webhook.head)
        view = memoryview(webhook.body)
        for start in range(0, len(view), WRITE_PIECE):
            writer.write(view[start : start + WRITE_PIECE])
            await writer.drain()

    sending = asyncio.create_task(send())
    try:
        async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            content = await reader.readexactly(int(headers.get("content-length", "0")))
        return Answer(int(status_line.split()[1]), headers, content)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sending
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class Tally:
    """What the senders saw, over all rounds."""

    statuses: Counter[str] = field(default_factory=Counter)  # every HTTP answer, by status
    connection_errors: int = 0
    retries: int = 0
    retry_after_seen: Counter[str] = field(default_factory=Counter)
    gave_up: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # ids of 200 accepted/duplicate, 32 hex
    accepted: int = 0
    duplicates: int = 0
    accepted_bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)  # first send → final 200, per event
    unexpected: list[str] = field(default_factory=list)


async def deliver(port: int, webhook: Webhook, tally: Tally, max_attempts: int) -> None:
    """Send one webhook as a well-behaved sender does: until accepted, waiting Retry-After on 503."""
    started = time.monotonic()
    for attempt in range(1, max_attempts + 1):
        if attempt > 1:
            tally.retries += 1
        try:
            answer = await post(port, webhook)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            tally.connection_errors += 1
            if tally.connection_errors <= 5:
                say(f"  {webhook.message_id}: attempt {attempt} failed without an answer: {exc!r}")
            await asyncio.sleep(ERROR_RETRY_S)
            continue
        tally.statuses[str(answer.status)] += 1
        if answer.status == 200:
            parsed = json.loads(answer.body)
            if parsed.get("status") in ("accepted", "duplicate") and "id" in parsed:
                tally.acknowledged.add(uuid.UUID(parsed["id"]).hex)
                if parsed["status"] == "accepted":
                    tally.accepted += 1
                    tally.accepted_bytes += len(webhook.body)
                else:
                    tally.duplicates += 1
                tally.latencies_s.append(time.monotonic() - started)
                return
            tally.unexpected.append(f"200 {answer.body[:200]!r}")
            return
        if answer.status == 503 and "retry-after" in answer.headers:
            retry_after = answer.headers["retry-after"]
            tally.retry_after_seen[retry_after] += 1
            await asyncio.sleep(min(60.0, max(0.0, float(retry_after))))
            continue
        tally.unexpected.append(f"{answer.status} {answer.body[:200]!r}")
        return
    tally.gave_up.append(webhook.message_id)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    concurrency: int
    rounds: int
    body_bytes: int
    budget_mib: float | None
    sqlite: bool
    quick: bool
    max_attempts: int


@dataclass
class RoundResult:
    index: int
    wall_s: float
    accepted: int
    peak_sampled_mb: float
    rss_after_mb: float | None


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


class LargeBodiesBenchmark:
    def __init__(self, options: Options, pg: Postgres, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.target = Target(workdir, None if options.sqlite else pg)
        self.secret = secrets.token_hex(32)
        self.env = server_env(self.target.url, self.secret, options.budget_mib)
        self.server: Server | None = None
        self.tally = Tally()
        self.run_id = secrets.token_hex(3)

    def stop_all(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()

    def run(self) -> dict[str, Any]:
        o = self.options
        source = server_source(self.env, self.workdir)
        say(f"server code: {source}")
        if not source["has_body_budget"]:
            say("  this code has no body budget: INGEST_MAX_BYTES_IN_FLIGHT is ignored by it")
        self.target.create(self.env)
        self.server = Server("large-bodies", ["--no-worker"], self.env, self.workdir)
        self.server.wait_ready()
        port = self.server.port

        # One small webhook first: what the first request imports and allocates is part of the
        # baseline, not of the load.
        asyncio.run(
            self._round_trip(build_webhooks(f"warmup-{self.run_id}", 1, 2048, self.secret.encode(), port))
        )
        time.sleep(0.5)  # let the warm-up's garbage be freed before the baseline is read
        pids = self.server.pids()
        baseline = sum(v for v in map(rss_mb, pids) if v is not None)
        say(f"baseline RSS after one small webhook: {baseline:.1f} MB")

        rounds: list[RoundResult] = []
        cpu_before = cpu_snapshot(pids)
        with RssSampler(self.server.process.pid) as sampler:
            load_started = time.monotonic()
            for index in range(1, o.rounds + 1):
                say(
                    f"round {index}/{o.rounds}: building {o.concurrency} signed bodies "
                    f"of {o.body_bytes} bytes"
                )
                webhooks = build_webhooks(
                    f"bench-{self.run_id}-r{index}", o.concurrency, o.body_bytes, self.secret.encode(), port
                )
                accepted_before = self.tally.accepted
                started = time.monotonic()
                asyncio.run(self._round_trip(webhooks))
                ended = time.monotonic()
                del webhooks
                during = sampler.between(started, ended)
                rounds.append(
                    RoundResult(
                        index=index,
                        wall_s=ended - started,
                        accepted=self.tally.accepted - accepted_before,
                        peak_sampled_mb=max(during, default=0.0),
                        rss_after_mb=sampler.samples[-1][1] if sampler.samples else None,
                    )
                )
                say(
                    f"  round {index}: {rounds[-1].accepted} accepted in {rounds[-1].wall_s:.1f} s, "
                    f"sampled RSS peak {rounds[-1].peak_sampled_mb:.1f} MB; statuses so far "
                    f"{dict(self.tally.statuses)}, retries {self.tally.retries}"
                )
            load_ended = time.monotonic()
            time.sleep(1.0)  # a second of samples after the load: does the memory come back?
        cpu = cpu_usage(cpu_before, cpu_snapshot(pids))
        settled = sampler.samples[-1][1] if sampler.samples else None
        peak = self.server.peak_rss()
        say(f"server peak RSS (VmHWM): {peak['max_process_mb']} MB; after the load {settled} MB")
        self.server.stop()

        stored = self.target.stored_ids()
        lost = self.tally.acknowledged - stored
        sent = o.concurrency * o.rounds + 1  # + the warm-up
        say(
            f"check: {len(self.tally.acknowledged)} acknowledged, {len(stored)} rows, {len(lost)} lost, "
            f"{len(self.tally.gave_up)} given up, {len(self.tally.unexpected)} unexpected answers"
        )
        during_load = sampler.between(load_started, load_ended)
        wall = load_ended - load_started
        other_5xx = sum(
            n for status, n in self.tally.statuses.items() if status.startswith("5") and status != "503"
        )
        budget_mib = o.budget_mib if o.budget_mib is not None else DEFAULT_BUDGET_MIB
        return {
            "bench": "large_bodies",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": o.quick,
            "cpus": os.cpu_count(),
            "database": self.target.label,
            "server_code": source,
            "settings": {
                "budget_mib": budget_mib if source["has_body_budget"] else None,
                "budget_set_by": "--budget-mib" if o.budget_mib is not None else "server default",
                "body_bytes": o.body_bytes,
                "concurrency": o.concurrency,
                "rounds": o.rounds,
                "max_attempts": o.max_attempts,
                "rate_limiter": "disabled (INGEST_RATE_LIMIT_PER_SECOND=0)",
            },
            "baseline_rss_mb": round(baseline, 1),
            "peak_rss_mb": peak["max_process_mb"],
            "peak_rss_mb_total": peak["total_mb"],
            "rss_target_mb": RSS_TARGET_MB,
            "under_rss_target": peak["max_process_mb"] is not None and peak["max_process_mb"] < RSS_TARGET_MB,
            "server_processes": peak["processes"],
            "rss_during_load_mb": {
                "samples": len(during_load),
                "max": round(max(during_load, default=0.0), 1),
                "p50": round(statistics.median(during_load), 1) if during_load else None,
                "p90": round(percentile(during_load, 90), 1) if during_load else None,
                "after_load": round(settled, 1) if settled is not None else None,
            },
            "rss_series_mb": sampler.series(load_started, load_ended + 1.0),
            "rounds": [
                {
                    "round": r.index,
                    "wall_s": round(r.wall_s, 2),
                    "accepted": r.accepted,
                    "peak_sampled_mb": round(r.peak_sampled_mb, 1),
                    "rss_after_mb": round(r.rss_after_mb, 1) if r.rss_after_mb is not None else None,
                }
                for r in rounds
            ],
            "statuses": dict(sorted(self.tally.statuses.items())),
            "retries": self.tally.retries,
            "retry_after_seen": dict(self.tally.retry_after_seen),
            "connection_errors": self.tally.connection_errors,
            "gave_up": len(self.tally.gave_up),
            "unexpected_answers": self.tally.unexpected[:10],
            "other_5xx": other_5xx,
            "accepted": self.tally.accepted,
            "duplicates": self.tally.duplicates,
            "events_sent": sent,
            "acknowledged": len(self.tally.acknowledged),
            "lost_events": len(lost),
            "rows": len(stored),
            "wall_s": round(wall, 2),
            "accepted_mb_per_s": round(self.tally.accepted_bytes / 1e6 / wall, 1),
            "event_latency_s": {
                "p50": round(statistics.median(self.tally.latencies_s), 2),
                "max": round(max(self.tally.latencies_s), 2),
            }
            if self.tally.latencies_s
            else None,
            "cpu_pct": cpu,
        }

    async def _round_trip(self, webhooks: list[Webhook]) -> None:
        assert self.server is not None
        port = self.server.port
        await asyncio.gather(*(deliver(port, w, self.tally, self.options.max_attempts) for w in webhooks))


# --- entry point ---------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Postgres]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, help="Senders at once (default 100, quick 40).")
    parser.add_argument("--rounds", type=int, help="Rounds of N bodies (default 3, quick 1).")
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=MAX_WEBHOOK_BYTES - 1024,
        help=f"Size of each body (default {MAX_WEBHOOK_BYTES - 1024}: just under MAX_WEBHOOK_BYTES).",
    )
    parser.add_argument(
        "--budget-mib",
        type=float,
        help=f"INGEST_MAX_BYTES_IN_FLIGHT in MiB (default: unset, the server's {DEFAULT_BUDGET_MIB}).",
    )
    parser.add_argument("--sqlite", action="store_true", help="A SQLite file instead of PostgreSQL.")
    parser.add_argument("--quick", action="store_true", help="One round of 40 (a smoke run).")
    parser.add_argument(
        "--max-attempts", type=int, default=20, help="Attempts per webhook before a sender gives up."
    )
    parser.add_argument("--pg-host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--pg-user", default=os.environ.get("PGUSER", "postgres"))
    args = parser.parse_args(argv)
    options = Options(
        concurrency=args.concurrency or (40 if args.quick else 100),
        rounds=args.rounds or (1 if args.quick else 3),
        body_bytes=args.body_bytes,
        budget_mib=args.budget_mib,
        sqlite=args.sqlite,
        quick=args.quick,
        max_attempts=args.max_attempts,
    )
    return options, Postgres(args.pg_host, args.pg_port, args.pg_user)


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(f"signal {signum}")


class StoppableBenchmark(Protocol):
    """A benchmark `run_stoppable` can run: it runs, stops what it started, drops its database."""

    target: Target

    def run(self) -> dict[str, Any]: ...

    def stop_all(self) -> None: ...


def run_stoppable(prefix: str, make: Callable[[Path], StoppableBenchmark]) -> dict[str, Any] | int:
    """Run the benchmark `make(workdir)` builds in a fresh temporary directory (`prefix`): its
    result, or the exit code when it failed (1) or was stopped by SIGTERM/SIGINT/Ctrl-C (130).
    Every process it started is stopped and its database dropped in every case."""
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        bench = make(Path(name))
        try:
            return bench.run()
        except BenchError as exc:
            say(f"FAILED: {exc}")
            return 1
        except (_Stop, KeyboardInterrupt):
            say("interrupted")
            return 130
        finally:
            bench.stop_all()
            bench.target.drop()


def main(argv: Sequence[str] | None = None) -> int:
    options, pg = parse_options(argv)
    result = run_stoppable("dfm-bench-large-", lambda workdir: LargeBodiesBenchmark(options, pg, workdir))
    if isinstance(result, int):
        return result
    print(json.dumps(result), flush=True)
    failed = result["lost_events"] or result["other_5xx"] or result["gave_up"] or result["unexpected_answers"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
