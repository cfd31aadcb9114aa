"""Ingest benchmark of DF-Middleware (SPEC §12: R-PERF-1, R-PERF-2, R-PERF-5).

    python bench/ingest.py [--quick]

One run, against the PostgreSQL on 127.0.0.1:5432, measures:

* accepted/s and p50/p99 latency of signed GHL webhooks at rising concurrency, with
  `serve --no-worker` (R-PERF-1), and what duplicates of already-stored events cost;
* the rate at which `pgbench` (16 clients) inserts the same rows into the same table, and the
  ratio of the two (target ≥ 0.5);
* p99 latency at a fixed rate of half the pgbench rate (target < 25 ms);
* peak RSS of each server process (R-PERF-5, target < 200 MB);
* accepted/s with `serve --workers N` (several HTTP processes), reported separately;
* accepted/s with the worker running in the server process, and, on an idle system, the time
  from a webhook's 200 to the start of its handler (R-PERF-2, target median < 100 ms).

Why it measures this way:

* The load comes from `wrk` (C, one thread) replaying requests that Python generated and signed
  *before* the step: on a 2-core machine a Python load generator would spend the CPU the server
  needs and measure itself. Bodies are generated right before each step so that their
  `timestamp` is inside the replay window, and there are enough of them that none repeats within
  a step (a repeat would be a duplicate, not a new event; the script says so if it happens).
* Only `200 {"status":"accepted"}` counts. The ids wrk saw accepted are checked against the
  table afterwards: an acknowledged event missing from the table is a lost event (must be 0).
  Rows without an acknowledgement are normal (requests in flight when wrk stops).
* pgbench inserts the rows the service inserts (every NOT NULL column, a ~1 KB jsonb payload,
  `ON CONFLICT (dedupe_key) DO NOTHING`, the NOTIFY trigger left in place) into the same table in
  the same database, so the ratio compares the service with the database's own ceiling on this
  machine, not with a number from another machine.
* The fixed-rate step paces requests with wrk's `delay()` hook against a per-thread schedule
  (slots every 1/rate s; a connection that becomes free takes the next slot), which is an
  approximately open-loop load; `late` counts sends that missed their slot because every
  connection was busy (then the server, not the schedule, set the pace).
* The machine must be quiet: every step reports the CPU used by the server, PostgreSQL, the load
  generator and everything else ("not ours"); `--wait-idle S` waits for quiet and repeats steps
  that other processes disturbed.
* The per-source ingest limiter is disabled (INGEST_RATE_LIMIT_PER_SECOND=0): it exists to
  protect the service from one noisy sender and would otherwise cap the benchmark at its limit.

Human-readable progress goes to stderr; stdout gets exactly one JSON line with the results.
Every process the script starts is stopped and the database dropped, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

LOCATION_ID = "loc_bench"
WEBHOOK_PATH = "/api/webhooks/ghl"
#: Distinct contacts the generated webhooks are about (their ordering keys).
CONTACTS = 20_000
#: wrk threads: one is plenty for a few thousand requests/s and leaves the CPU to the server.
WRK_THREADS = 1
#: Connections of the fixed-rate step: enough idle ones that the schedule, not them, sets the pace.
RATE_STEP_CONNECTIONS = 64
PGBENCH_CLIENTS = 16

_started = time.monotonic()


def say(message: str) -> None:
    """Progress for the human, on stderr."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The benchmark cannot go on (a tool missing, the server not starting, …)."""


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def connect_args(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql; return its unaligned, tuples-only output."""
        result = subprocess.run(
            ["psql", *self.connect_args(), "-d", database, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"psql failed: {result.stderr.strip()}\nSQL: {sql[:200]}")
        return result.stdout.strip()

    def scalar(self, sql: str, database: str) -> int:
        return int(self.psql(sql, database) or 0)


# --- processes ----------------------------------------------------------------------------------


def _proc_stats() -> Iterator[tuple[int, str]]:
    """(pid, contents of /proc/<pid>/stat) for every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "stat").read_text()
        except OSError:
            continue


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, stat in _proc_stats():
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children = _proc_children()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of one process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


#: Above this share of the machine, CPU used by processes that are not ours makes results noisy.
BACKGROUND_WARN_PCT = 20.0
#: With --wait-idle, a step disturbed by other processes is measured again at most this many times.
NOISY_RETRIES = 2


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds: the machine's busy time and that of our process groups."""

    wall: float
    machine_busy: float
    server: float
    postgres: float
    load: float


def cpu_snapshot(server_pids: Collection[int] = ()) -> CpuSnapshot:
    """Read /proc once. A process's CPU includes that of its reaped children (cutime/cstime), so
    that PostgreSQL backends and wrk runs that end inside a step are still counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups = {"server": 0, "postgres": 0, "load": 0}
    me = os.getpid()
    for pid, stat in _proc_stats():
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        used = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        if pid in server_pids:
            groups["server"] += used
        elif comm == "postgres":
            groups["postgres"] += used
        elif pid == me or comm in {"wrk", "pgbench"}:
            groups["load"] += used
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(cpu) - cpu[3] - cpu[4]  # all but idle and iowait
    return CpuSnapshot(
        wall=time.monotonic(),
        machine_busy=busy / ticks,
        server=groups["server"] / ticks,
        postgres=groups["postgres"] / ticks,
        load=groups["load"] / ticks,
    )


def cpu_usage(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU used between two snapshots, in % of one core: ours by group, and everything else.

    `other` is the machine's busy time that none of our groups used (other people's processes,
    the kernel); a large value means the machine was not quiet and the figures are noisy.
    """
    wall = max(after.wall - before.wall, 1e-9)
    usage = {
        "server": after.server - before.server,
        "postgres": after.postgres - before.postgres,
        "load": after.load - before.load,
        "machine": after.machine_busy - before.machine_busy,
    }
    usage["other"] = max(0.0, usage["machine"] - usage["server"] - usage["postgres"] - usage["load"])
    return {name: round(100 * seconds / wall, 1) for name, seconds in usage.items()}


def background_cpu(seconds: float = 3.0) -> float:
    """% of one core the machine is busy while we run nothing."""
    before = cpu_snapshot()
    time.sleep(seconds)
    return cpu_usage(before, cpu_snapshot())["machine"]


class Server:
    """One `df-middleware serve` subprocess, in its own session so that we alone stop it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"server-{name}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [df_middleware_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        say(f"starting server '{name}': {' '.join(command[1:])}")
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=workdir,  # no stray .env file from the caller's directory
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"server '{self.name}' exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    connection.close()
                    say(f"server '{self.name}' ready on port {self.port} (pid {self.process.pid})")
                    return
                connection.close()
            time.sleep(0.2)
        raise BenchError(f"server '{self.name}' not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def peak_rss(self) -> dict[str, Any]:
        """Peak RSS of every process of the server (uvicorn spawns children with --workers)."""
        per_process = {pid: peak_rss_mb(pid) for pid in self.pids()}
        values = [v for v in per_process.values() if v is not None]
        return {
            "max_process_mb": round(max(values), 1) if values else None,
            "total_mb": round(sum(values), 1) if values else None,
            "processes": len(values),
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            say(f"stopping server '{self.name}'")
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say(f"server '{self.name}' ignored SIGTERM for 30 s: killing its process group")
        # Its session is ours alone: nothing of it may outlive the benchmark.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def df_middleware_command() -> str:
    beside = Path(sys.executable).with_name("df-middleware")
    found = str(beside) if beside.exists() else shutil.which("df-middleware")
    if not found:
        raise BenchError("df-middleware is not installed (run with the project's .venv/bin/python)")
    return found


# --- signed webhooks ----------------------------------------------------------------------------


class WebhookFactory:
    """≈1 KB ContactUpdate webhooks as GHL sends them, signed with a throw-away Ed25519 key."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public_pem = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self._serial = 0

    def body(self, webhook_id: str | None = None) -> bytes:
        self._serial += 1
        contact = secrets.randbelow(CONTACTS)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        payload = {
            "type": "ContactUpdate",
            "locationId": LOCATION_ID,
            "webhookId": webhook_id or str(uuid.uuid4()),
            "timestamp": now,
            "id": f"benchContact{contact:08d}",
            "address1": "3535 1st St N",
            "city": "Birmingham",
            "state": "AL",
            "companyName": "Loram Ipsum Holdings",
            "country": "US",
            "source": "xyz form",
            "dateAdded": "2021-11-26T12:41:02.193Z",
            "dateOfBirth": "2000-01-05T00:00:00.000Z",
            "dnd": False,
            "email": f"contact{contact}@example.com",
            "name": f"Bench Contact {contact}",
            "firstName": "Bench",
            "lastName": f"Contact {contact}",
            "phone": f"+1919{200 + contact // 10_000:03d}{contact % 10_000:04d}",
            "postalCode": "35203",
            "tags": ["bench", "id magna sed Lorem", "Duis dolor commodo aliqua"],
            "website": "https://www.example.com/",
            "attachments": [],
            "assignedTo": "nmFmQEsNgz6AVpgLVUJ0",
            "customFields": [
                {"id": "BcdmQEsNgz6AVpgLVUJ0", "value": "XYZ Corp"},
                {"id": "assignedAgent", "value": "agent-7"},
                {"id": "leadSourceDetail", "value": f"campaign {self._serial % 97} / landing page B"},
                {"id": "notes", "value": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do."},
            ],
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self._key.sign(body)).decode()

    def write_requests(self, path: Path, count: int) -> list[bytes]:
        """`count` fresh signed requests, one per line: `<signature>\\t<body>` (JSON has no raw tabs)."""
        bodies = [self.body() for _ in range(count)]
        with path.open("wb") as out:
            for body in bodies:
                out.write(self.sign(body).encode() + b"\t" + body + b"\n")
        return bodies

    def write_lines(self, path: Path, bodies: Sequence[bytes]) -> None:
        """Re-sign given bodies (for the duplicate step) into a request file."""
        with path.open("wb") as out:
            for body in bodies:
                out.write(self.sign(body).encode() + b"\t" + body + b"\n")


# --- wrk ----------------------------------------------------------------------------------------

# Lua for wrk: cycle through pre-signed requests, count `accepted`/`duplicate` answers, keep the
# accepted ids (checked against the table afterwards) and report one JSON line from done().
WRK_LUA = r"""
local threads = {}
function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local requests, count, position = {}, 0, 0
accepted, duplicates, other_200, non_200, wrapped, late, max_lag_ms = 0, 0, 0, 0, 0, 0, 0
ids = {}
ids_path = nil

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  rate_interval_ms = 0
  if tonumber(args[3]) > 0 then rate_interval_ms = 1000 * nthreads / tonumber(args[3]) end
  ids_path = args[4]
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == thread_index then
      local tab = line:find("\t", 1, true)
      local headers = {["Content-Type"] = "application/json", ["x-ghl-signature"] = line:sub(1, tab - 1)}
      count = count + 1
      requests[count] = wrk.format("POST", nil, headers, line:sub(tab + 1))
    end
    i = i + 1
  end
end

function request()
  position = position + 1
  if position > count then
    position = 1
    wrapped = wrapped + 1
  end
  return requests[position]
end

function response(status, headers, body)
  if status ~= 200 then
    non_200 = non_200 + 1
  elseif body:find('"accepted"', 1, true) then
    accepted = accepted + 1
    ids[accepted] = body:match('"id":"([^"]+)"')
  elseif body:find('"duplicate"', 1, true) then
    duplicates = duplicates + 1
  else
    other_200 = other_200 + 1
  end
end

function done(summary, latency, requests_)
  local t = {accepted = 0, duplicates = 0, other_200 = 0, non_200 = 0, wrapped = 0, late = 0}
  local lag, path = 0, nil
  local out_ids = {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(t) do t[k] = v + thread:get(k) end
    lag = math.max(lag, thread:get("max_lag_ms"))
    path = thread:get("ids_path")
    for _, id in ipairs(thread:get("ids")) do out_ids[#out_ids + 1] = id end
  end
  local f = assert(io.open(path, "w"))
  f:write(table.concat(out_ids, "\n"))
  f:close()
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"accepted":%d,"duplicates":%d,"other_200":%d,' ..
    '"non_200":%d,"wrapped":%d,"late":%d,"max_lag_ms":%.1f,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.duration, summary.requests, t.accepted, t.duplicates, t.other_200, t.non_200, t.wrapped,
    t.late, lag, e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""

# Only in the fixed-rate script: wrk calls delay() before every request when the function exists.
WRK_LUA_RATE = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end
local next_slot = nil

-- A connection that is free takes the thread's next send slot (one every rate_interval_ms).
function delay()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  local slot = next_slot
  next_slot = next_slot + rate_interval_ms
  local wait = slot - now
  if wait < 0 then
    if -wait > 1 then
      late = late + 1
      if -wait > max_lag_ms then max_lag_ms = -wait end
    end
    return 0
  end
  return math.floor(wait)
end
"""


@dataclass
class Step:
    """One wrk run."""

    name: str
    connections: int
    duration_s: float
    requests: int
    accepted: int
    duplicates: int
    non_200: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_pct: dict[str, float]
    wrapped: int = 0
    late: int = 0
    max_lag_ms: float = 0.0
    target_per_s: float | None = None
    db_sessions_opened: int = 0
    accepted_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.duration_s

    @property
    def duplicates_per_s(self) -> float:
        return self.duplicates / self.duration_s


def run_wrk(
    workdir: Path,
    server: Server,
    request_file: Path,
    *,
    name: str,
    connections: int,
    duration: float,
    rate: float = 0.0,
) -> Step:
    script = workdir / ("rate.lua" if rate > 0 else "load.lua")
    if not script.exists():
        script.write_text(WRK_LUA + (WRK_LUA_RATE if rate > 0 else ""))
    ids_path = workdir / f"ids-{name}.txt"
    threads = min(WRK_THREADS, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        server.url + WEBHOOK_PATH,
        "--",
        str(request_file),
        str(threads),
        f"{rate:.3f}",
        str(ids_path),
    ]
    pids = set(server.pids())
    cpu_before = cpu_snapshot(pids)
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration + 120)
    cpu = cpu_usage(cpu_before, cpu_snapshot(pids))
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    ids = [i for i in ids_path.read_text().split("\n") if i] if ids_path.exists() else []
    step = Step(
        name=name,
        connections=connections,
        duration_s=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        accepted=raw["accepted"],
        duplicates=raw["duplicates"],
        non_200=raw["non_200"] + raw["other_200"],
        socket_errors=sum(raw[f"errors_{kind}"] for kind in ("connect", "read", "write", "timeout")),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        cpu_pct=cpu,
        wrapped=raw["wrapped"],
        late=raw["late"],
        max_lag_ms=raw["max_lag_ms"],
        target_per_s=rate or None,
        accepted_ids=ids,
    )
    rate_text = f", target {rate:.0f}/s, {step.late} late sends" if rate else ""
    say(
        f"  {name}: {connections:>3} conn  {step.accepted_per_s:8.1f} accepted/s  "
        f"{step.duplicates_per_s:8.1f} dup/s  p50 {step.p50_ms:6.2f} ms  p99 {step.p99_ms:7.2f} ms  "
        f"non-200 {step.non_200}  socket errors {step.socket_errors}{rate_text}"
    )
    say(
        f"  {' ' * len(name)}  CPU (% of a core): server {cpu['server']:.0f}, "
        f"postgres {cpu['postgres']:.0f}, wrk+bench {cpu['load']:.0f}, not ours {cpu['other']:.0f}"
    )
    if cpu["other"] > BACKGROUND_WARN_PCT:
        say(f"  WARNING: other processes used {cpu['other']:.0f}% of a core during {name}: figures are noisy")
    if step.wrapped and name != "duplicates":  # the duplicate step cycles on purpose
        say(f"  WARNING: {name} ran out of distinct requests ({step.wrapped} wraps): repeats were duplicates")
    return step


# --- pgbench ------------------------------------------------------------------------------------


def pgbench_script(factory: WebhookFactory) -> str:
    """The row `EventStore` inserts, as SQL: same columns, ~1 KB jsonb payload, ON CONFLICT."""
    payload = factory.body(webhook_id="WEBHOOK_ID").decode().replace("'", "''")
    before, after = payload.split("WEBHOOK_ID", 1)
    return (
        "\\set contact random(1, 20000)\n"
        "INSERT INTO webhook_events (id, received_at, next_attempt_at, event_type, payload_json,\n"
        "  dedupe_key, status, attempts, ordering_key, signature_verified, request_id, source,\n"
        "  entity_type, entity_id)\n"
        "VALUES (gen_random_uuid(), now(), now(), 'ContactUpdate',\n"
        f"  ('{before}' || gen_random_uuid() || '{after}')::jsonb,\n"
        "  'pgbench:' || gen_random_uuid(), 'pending', 0, 'ghl:contact:c' || :contact, true,\n"
        "  md5(random()::text), 'ghl', 'contact', 'c' || :contact)\n"
        "ON CONFLICT (dedupe_key) DO NOTHING;\n"
    )


def run_pgbench(pg: Postgres, database: str, script: Path, duration: float) -> dict[str, Any]:
    seconds = str(max(1, round(duration)))
    command = ["pgbench", *pg.connect_args(), "-n", "-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", seconds]
    cpu_before = cpu_snapshot()
    result = subprocess.run(
        [*command, "-f", str(script), database], capture_output=True, text=True, check=False
    )
    cpu = cpu_usage(cpu_before, cpu_snapshot())
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    if result.returncode != 0 or found is None:
        raise BenchError(f"pgbench failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    latency = re.search(r"latency average = ([\d.]+) ms", result.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", result.stdout)
    return {
        "tps": float(found.group(1)),
        "transactions": int(done.group(1)) if done else None,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "cpu_pct": cpu,
    }


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool
    duration: float
    connections: list[int]
    http_workers: int
    idle_events: int
    skip_worker: bool
    wait_idle: float


class IngestBenchmark:
    def __init__(self, options: Options, pg: Postgres, workdir: Path) -> None:
        self.options = options
        self.pg = pg
        self.workdir = workdir
        self.database = f"dfm_bench_{secrets.token_hex(4)}"
        self.factory = WebhookFactory()
        self.key_path = workdir / "ghl-ed25519-public.pem"
        self.key_path.write_text(self.factory.public_pem)
        self.servers: list[Server] = []
        self.best_rate = 1000.0  # a guess until the warm-up measures one
        self.accepted_ids: set[str] = set()
        self.bodies_by_step: dict[str, list[bytes]] = {}
        self.steps_run: list[Step] = []
        self._files = 0

    # --- setup ---------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GHL_", "DATABASE_", "INGEST_"))}
        env.update(
            DATABASE_URL=self.pg.url(self.database),
            GHL_WEBHOOK_ED25519_PUBLIC_KEY=str(self.key_path),
            GHL_LOCATION_ID=LOCATION_ID,
            INGEST_RATE_LIMIT_PER_SECOND="0",
            LOG_LEVEL="warning",
            LOG_FORMAT="json",
        )
        env.update(extra)
        return env

    def create_database(self) -> None:
        say(f"creating database {self.database}")
        self.pg.psql(f"CREATE DATABASE {self.database}")
        result = subprocess.run(
            [df_middleware_command(), "migrate"],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"df-middleware migrate failed:\n{result.stdout}\n{result.stderr}")
        say(f"migrated: {result.stdout.strip()}")

    def drop_database(self) -> None:
        with contextlib.suppress(BenchError, OSError):
            self.pg.psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            say(f"dropped database {self.database}")

    def start_server(self, name: str, *args: str) -> Server:
        server = Server(name, list(args), self.env(), self.workdir)
        self.servers.append(server)
        server.wait_ready()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    # --- load steps ----------------------------------------------------------------------------
    def _request_file(self, step: str, count: int) -> Path:
        path = self.workdir / f"requests-{step}.txt"
        began = time.monotonic()
        self.bodies_by_step[step] = self.factory.write_requests(path, count)
        say(f"  {step}: {count} signed requests generated in {time.monotonic() - began:.1f} s")
        return path

    def new_events_step(
        self, server: Server, name: str, connections: int, duration: float, rate: float = 0.0
    ) -> Step:
        """Fresh signed webhooks (none stored yet) through wrk; repeated if disturbed (see _noisy)."""
        for attempt in itertools.count(1):
            expected = rate if rate > 0 else 2.0 * self.best_rate
            count = int(max(1000, expected * duration * 1.2 + 2 * connections))
            request_file = self._request_file(name, count)
            sessions_before = self._sessions()
            step = run_wrk(
                self.workdir,
                server,
                request_file,
                name=name,
                connections=connections,
                duration=duration,
                rate=rate,
            )
            self._record(step, sessions_before)
            if not self._noisy(step.cpu_pct, name, attempt):
                break
        if rate <= 0:
            self.best_rate = max(self.best_rate if name != "warmup" else 0.0, step.accepted_per_s)
        return step

    def duplicates_step(self, server: Server, source_step: str, connections: int, duration: float) -> Step:
        """Re-send bodies already stored (their webhookIds are in the table): every answer a duplicate."""
        stored = self._column("SELECT dedupe_key FROM webhook_events")
        bodies = [
            b for b in self.bodies_by_step[source_step] if f"ghl:{json.loads(b)['webhookId']}" in stored
        ]
        if not bodies:
            raise BenchError("no stored bodies to re-send as duplicates")
        path = self.workdir / "requests-duplicates.txt"
        self.factory.write_lines(path, bodies)
        say(f"  duplicates: re-sending {len(bodies)} stored bodies (cycled)")
        for attempt in itertools.count(1):
            sessions_before = self._sessions()
            step = run_wrk(
                self.workdir, server, path, name="duplicates", connections=connections, duration=duration
            )
            self._record(step, sessions_before)
            if not self._noisy(step.cpu_pct, "duplicates", attempt):
                return step
        raise AssertionError("unreachable")

    def pgbench_step(self, script: Path) -> dict[str, Any]:
        for attempt in itertools.count(1):
            result = run_pgbench(self.pg, self.database, script, self.options.duration)
            cpu = result["cpu_pct"]
            say(
                f"  pgbench: {result['tps']:.1f} tps (avg latency {result['latency_avg_ms']} ms, "
                f"CPU % of a core: postgres {cpu['postgres']:.0f}, pgbench {cpu['load']:.0f}, "
                f"not ours {cpu['other']:.0f})"
            )
            if not self._noisy(cpu, "pgbench", attempt):
                return result
        raise AssertionError("unreachable")

    def _noisy(self, cpu: dict[str, float], name: str, attempt: int) -> bool:
        """True when the step must be measured again: other processes disturbed it, the user asked
        for a quiet machine (--wait-idle) and the step has not been repeated twice already."""
        if cpu["other"] <= BACKGROUND_WARN_PCT or self.options.wait_idle <= 0 or attempt > NOISY_RETRIES:
            return False
        say(f"  repeating {name}: other processes disturbed it")
        self.wait_for_quiet_machine()
        return True

    def _sessions(self) -> int:
        """Sessions ever opened to the benchmark database (PostgreSQL >= 14 counts them)."""
        return self.pg.scalar(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()", self.database
        )

    def _record(self, step: Step, sessions_before: int) -> None:
        # Each psql call is a session too: the one that read `sessions_before` is not the server's.
        step.db_sessions_opened = max(0, self._sessions() - sessions_before - 1)
        if step.db_sessions_opened > 2 * step.connections:
            say(
                f"  note: the server opened {step.db_sessions_opened} database sessions during {step.name} "
                "(connections opened and closed per request: the pool is smaller than the concurrency)"
            )
        self.accepted_ids.update(step.accepted_ids)
        self.steps_run.append(step)

    def _column(self, sql: str) -> set[str]:
        return set(filter(None, self.pg.psql(sql, self.database).split("\n")))

    def verify_nothing_lost(self) -> dict[str, int]:
        """Every id the server acknowledged as accepted must be a row of webhook_events."""
        rows = self._column("SELECT id FROM webhook_events WHERE dedupe_key LIKE 'ghl:%'")
        lost = len(self.accepted_ids - rows)
        result = {
            "accepted_total": len(self.accepted_ids),
            "rows": len(rows),
            "lost_events": lost,
            "stored_not_acknowledged": len(rows - self.accepted_ids),
        }
        say(
            f"  check: {result['accepted_total']} accepted, {result['rows']} rows, "
            f"{lost} lost, {result['stored_not_acknowledged']} stored but not acknowledged "
            "(in flight when wrk stopped)"
        )
        if lost:
            say(f"  ERROR: {lost} acknowledged events are not in webhook_events")
        return result

    # --- phases --------------------------------------------------------------------------------
    def wait_for_quiet_machine(self) -> float:
        """CPU the machine spends on others' work before we start (waiting for quiet if asked)."""
        deadline = time.monotonic() + self.options.wait_idle
        while True:
            busy = background_cpu()
            if busy <= BACKGROUND_WARN_PCT:
                say(f"machine quiet: {busy:.0f}% of a core busy before the run")
                return busy
            if time.monotonic() >= deadline:
                say(f"WARNING: the machine is busy ({busy:.0f}% of a core) before the run: noisy figures")
                return busy
            say(f"machine busy ({busy:.0f}% of a core): waiting for it to be quiet")
            time.sleep(5)

    def run(self) -> dict[str, Any]:
        o = self.options
        background_before = self.wait_for_quiet_machine()
        self.create_database()
        say("limiter: INGEST_RATE_LIMIT_PER_SECOND=0 (the per-source ingest limit is off for the benchmark)")

        # 1. The HTTP server alone (R-PERF-1).
        server = self.start_server("no-worker", "--no-worker")
        self.new_events_step(server, "warmup", 16, min(3.0, o.duration))
        steps = [self.new_events_step(server, f"c{c}", c, o.duration) for c in o.connections]
        best = max(steps, key=lambda s: s.accepted_per_s)
        say(f"best: {best.accepted_per_s:.1f} accepted/s at {best.connections} connections")
        duplicates = self.duplicates_step(server, best.name, best.connections, o.duration)
        check = self.verify_nothing_lost()

        # 2. The database's own ceiling on this machine.
        script = self.workdir / "insert.sql"
        script.write_text(pgbench_script(self.factory))
        say(f"pgbench: {PGBENCH_CLIENTS} clients, -j 2, {o.duration:.0f} s, same row into webhook_events")
        pgbench = self.pgbench_step(script)
        ratio = best.accepted_per_s / pgbench["tps"]
        say(f"ratio: {ratio:.3f} (R-PERF-1 target >= 0.5)")

        # 3. Latency at half the pgbench rate.
        half = self.new_events_step(
            server, "half-rate", RATE_STEP_CONNECTIONS, o.duration, rate=0.5 * pgbench["tps"]
        )
        check = self.verify_nothing_lost()
        rss = server.peak_rss()
        say(f"server peak RSS: {rss['max_process_mb']} MB")
        server.stop()

        result: dict[str, Any] = {
            "bench": "ingest",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": o.quick,
            "cpus": os.cpu_count(),
            "rate_limiter": "disabled (INGEST_RATE_LIMIT_PER_SECOND=0)",
            "background_cpu_pct_before": round(background_before, 1),
            "accepted_per_s": round(best.accepted_per_s, 1),
            "best_connections": best.connections,
            "steps": [
                {
                    "connections": s.connections,
                    "accepted_per_s": round(s.accepted_per_s, 1),
                    "p50_ms": round(s.p50_ms, 2),
                    "p99_ms": round(s.p99_ms, 2),
                    "cpu_pct": s.cpu_pct,
                    "db_sessions_opened": s.db_sessions_opened,
                    "non_200": s.non_200,
                    "socket_errors": s.socket_errors,
                }
                for s in steps
            ],
            "duplicates_per_s": round(duplicates.duplicates_per_s, 1),
            "duplicates_vs_new_throughput": round(duplicates.duplicates_per_s / best.accepted_per_s, 2),
            "duplicate_p50_ms": round(duplicates.p50_ms, 2),
            "duplicate_p99_ms": round(duplicates.p99_ms, 2),
            "pgbench_tps": round(pgbench["tps"], 1),
            "pgbench_latency_avg_ms": pgbench["latency_avg_ms"],
            "pgbench_cpu_pct": pgbench["cpu_pct"],
            "ratio_to_pgbench": round(ratio, 3),
            "half_rate": {
                "target_per_s": round(0.5 * pgbench["tps"], 1),
                "achieved_per_s": round(half.accepted_per_s, 1),
                "connections": half.connections,
                "p50_ms": round(half.p50_ms, 2),
                "p99_ms": round(half.p99_ms, 2),
                "late_sends": half.late,
                "cpu_pct": half.cpu_pct,
            },
            "server_peak_rss_mb": rss["max_process_mb"],
        }

        # 4. Several HTTP processes (reported separately).
        if o.http_workers > 1:
            multi = self.start_server(
                f"workers{o.http_workers}", "--no-worker", "--workers", str(o.http_workers)
            )
            self.new_events_step(multi, f"warmup-w{o.http_workers}", 16, min(3.0, o.duration))
            multi_steps = [
                self.new_events_step(multi, f"w{o.http_workers}-c{c}", c, o.duration)
                for c in sorted({best.connections, max(o.connections)})
            ]
            multi_best = max(multi_steps, key=lambda s: s.accepted_per_s)
            multi_rss = multi.peak_rss()
            multi.stop()
            check = self.verify_nothing_lost()
            result["multi_process"] = {
                "http_workers": o.http_workers,
                "accepted_per_s": round(multi_best.accepted_per_s, 1),
                "connections": multi_best.connections,
                "p50_ms": round(multi_best.p50_ms, 2),
                "p99_ms": round(multi_best.p99_ms, 2),
                "cpu_pct": multi_best.cpu_pct,
                "ratio_to_pgbench": round(multi_best.accepted_per_s / pgbench["tps"], 3),
                "peak_rss_mb_per_process": multi_rss["max_process_mb"],
                "peak_rss_mb_total": multi_rss["total_mb"],
                "processes": multi_rss["processes"],
            }
        result.update(
            lost_events=check["lost_events"],
            accepted_total=check["accepted_total"],
            stored_not_acknowledged=check["stored_not_acknowledged"],
        )

        # 5. With the worker in the server process (R-PERF-1 "with the worker", R-PERF-2).
        if not o.skip_worker:
            result.update(self.worker_phase(best.connections))
        noisiest = max(self.steps_run, key=lambda s: s.cpu_pct["other"])
        result["noise"] = {
            "max_other_cpu_pct": noisiest.cpu_pct["other"],
            "step": noisiest.name,
            "note": "CPU used by processes that are not this benchmark's (% of one core); "
            f"above {BACKGROUND_WARN_PCT:.0f} the figures are disturbed",
        }
        return result

    def worker_phase(self, connections: int) -> dict[str, Any]:
        o = self.options
        # Start from an empty queue: the backlog of the earlier phases is not this phase's work.
        self.pg.psql("TRUNCATE webhook_events, sync_log", self.database)
        self.accepted_ids.clear()
        server = self.start_server("with-worker")
        # R-PERF-2 is about an idle system: measure it first, before the load step leaves a backlog.
        latency = self.accept_to_handler(server, o.idle_events)
        step = self.new_events_step(server, "worker", connections, o.duration)
        drain_started = time.monotonic()
        pending_after = self._pending()
        drained = self._wait_until_drained(timeout=max(60.0, 4 * o.duration))
        drain_s = time.monotonic() - drain_started
        if drained:
            say(f"  worker drained {pending_after} pending events in {drain_s:.1f} s")
        check = self.verify_nothing_lost()
        rss = server.peak_rss()
        say(f"with-worker server peak RSS: {rss['max_process_mb']} MB")
        server.stop()
        return {
            "with_worker": {
                "accepted_per_s": round(step.accepted_per_s, 1),
                "connections": connections,
                "p50_ms": round(step.p50_ms, 2),
                "p99_ms": round(step.p99_ms, 2),
                "cpu_pct": step.cpu_pct,
                "pending_after_step": pending_after,
                "drained": drained,
                "drain_s": round(drain_s, 1),
                "peak_rss_mb": rss["max_process_mb"],
                "lost_events": check["lost_events"],
            },
            "accept_to_handler_ms": latency,
        }

    def _pending(self) -> int:
        return self.pg.scalar(
            "SELECT count(*) FROM webhook_events WHERE status IN ('pending', 'processing')", self.database
        )

    def _wait_until_drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pending() == 0:
                return True
            time.sleep(0.5)
        say(f"  WARNING: the worker did not drain the queue within {timeout:.0f} s")
        return False

    def accept_to_handler(self, server: Server, count: int) -> dict[str, Any]:
        """Idle system: one webhook at a time, ~100 ms apart; 200 received → handler's started_at."""
        say(f"accept→handler latency: {count} webhooks, one at a time, 100 ms apart")
        received: dict[str, float] = {}
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            for _ in range(count):
                body = self.factory.body()
                headers = {"content-type": "application/json", "x-ghl-signature": self.factory.sign(body)}
                connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                at = time.time()
                parsed = json.loads(answer)
                if response.status != 200 or parsed.get("status") != "accepted":
                    raise BenchError(f"idle webhook answered {response.status}: {answer[:200]!r}")
                received[parsed["id"]] = at
                self.accepted_ids.add(parsed["id"])
                time.sleep(0.1)
        finally:
            connection.close()
        ids = ", ".join(f"'{i}'" for i in received)
        started: dict[str, float] = {}
        server_side: list[float] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = self.pg.psql(
                "SELECT l.correlation_id, extract(epoch FROM min(l.started_at)),"
                " extract(epoch FROM min(l.started_at) - min(e.received_at))"
                " FROM sync_log l JOIN webhook_events e ON e.id::text = l.correlation_id"
                f" WHERE l.correlation_id IN ({ids}) GROUP BY l.correlation_id",
                self.database,
            )
            started, server_side = {}, []
            for line in filter(None, rows.split("\n")):
                event_id, started_epoch, since_received = line.split("|")
                started[event_id] = float(started_epoch)
                server_side.append(float(since_received) * 1000)
            if len(started) == len(received):
                break
            time.sleep(0.5)
        latencies = sorted((started[i] - received[i]) * 1000 for i in started)
        if not latencies:
            raise BenchError("no sync_log row appeared for the idle webhooks: is the worker running?")
        result = {
            "p50": round(statistics.median(latencies), 1),
            "p95": round(percentile(latencies, 95), 1),
            "max": round(latencies[-1], 1),
            "events": len(received),
            "handled": len(latencies),
            "server_received_to_handler_p50": round(statistics.median(server_side), 1),
        }
        say(f"  accept→handler: median {result['p50']} ms, p95 {result['p95']} ms (target: median < 100)")
        return result


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# --- entry point --------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> tuple[Options, Postgres]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Short steps (a smoke run, ~1 min).")
    parser.add_argument("--duration", type=float, help="Seconds per step (default 10, quick 3).")
    parser.add_argument("--connections", help="Comma list of wrk connections (default 1,4,16,32,64).")
    parser.add_argument("--http-workers", type=int, default=2, help="`serve --workers N` phase; 0/1 skips.")
    parser.add_argument("--skip-worker", action="store_true", help="Skip the with-worker phase.")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="Wait up to this long for a quiet machine before the run, and repeat (up to "
        f"{NOISY_RETRIES} times, waiting again) any step during which other processes used more than "
        f"{BACKGROUND_WARN_PCT:.0f}%% of a core. Default: only warn.",
    )
    parser.add_argument("--pg-host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--pg-user", default=os.environ.get("PGUSER", "postgres"))
    args = parser.parse_args(argv)
    default_connections = "1,16,64" if args.quick else "1,4,16,32,64"
    options = Options(
        quick=args.quick,
        duration=args.duration or (3.0 if args.quick else 10.0),
        connections=[int(c) for c in (args.connections or default_connections).split(",")],
        http_workers=args.http_workers,
        idle_events=20 if args.quick else 50,
        skip_worker=args.skip_worker,
        wait_idle=args.wait_idle,
    )
    return options, Postgres(args.pg_host, args.pg_port, args.pg_user)


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dfm-bench-") as name:
        yield Path(name)


def main(argv: Sequence[str] | None = None) -> int:
    options, pg = parse_options(argv)
    for tool in ("wrk", "pgbench", "psql"):
        if shutil.which(tool) is None:
            hint = " (apt-get install -y wrk)" if tool == "wrk" else ""
            print(f"ingest benchmark: {tool} not found{hint}", file=sys.stderr)
            return 2
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    with _workdir() as workdir:
        bench = IngestBenchmark(options, pg, workdir)
        try:
            result = bench.run()
        except BenchError as exc:
            say(f"FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        finally:
            bench.stop_all()
            bench.drop_database()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
