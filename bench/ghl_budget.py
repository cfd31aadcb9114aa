"""How much of GHL's rate budget the connector uses, and whether it ever gets a 429 (not a test).

`python bench/ghl_budget.py [--seconds 30] [--concurrency 16] [--processes 1|2]` starts the GHL
simulator as its own process (`df-middleware simulate ghl`, 100 requests / 10 s per location, the
published figures), then runs `--processes` client processes, each with `--concurrency` coroutines
calling `GET /contacts/{id}` through `GhlClient` as fast as the shared limiter lets them, with
`GHL_RATE_LIMIT_PROCESSES` set to the number of processes. It prints one JSON line:

- `calls_per_second` and `budget_used` (calls per second / (100 / 10 s)) — R-PERF-3 wants ≥ 0.90;
- `rate_limited` — 429 answers seen by the simulator; R-PERF-3 wants 0 in steady state;
- `call_latency_p50_ms` — how long a call waited for its turn.

The first window is included: a client starts with a full budget, as a worker does after idling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx

from df_middleware.connectors.ghl import GhlClient, StaticToken
from df_middleware.connectors.http import ServiceClient
from df_middleware.connectors.ratelimit import SlidingWindowLimiter
from df_middleware.observability import configure_logging

LOC, PIT = "loc_sim", "pit-sim"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def client_run(url: str, seconds: float, concurrency: int, processes: int) -> dict[str, float]:
    """One client process: hammer GET /contacts/{id} through the limiter for `seconds`."""
    limiter = SlidingWindowLimiter(100, 10.0, processes=processes)
    ghl = GhlClient(ServiceClient("ghl", url, limiter=limiter), StaticToken(LOC, PIT), LOC)
    created = await ghl.http.request(
        "POST",
        "/contacts/",
        endpoint="POST /contacts/",
        json={"locationId": LOC, "phone": f"+1919555{_free_port() % 10000:04d}"},
        headers={"Authorization": f"Bearer {PIT}", "Version": "2021-07-28"},
        rate_key=LOC,
    )
    contact_id = created["contact"]["id"]
    deadline = time.monotonic() + seconds
    waits: list[float] = []
    calls = 0

    async def loop() -> None:
        nonlocal calls
        while time.monotonic() < deadline:
            started = time.monotonic()
            await ghl.get_contact(contact_id)
            waits.append(time.monotonic() - started)
            calls += 1

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await ghl.aclose()
    return {"calls": calls + 1, "elapsed": elapsed, "wait_p50": statistics.median(waits) if waits else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one client against URL
    args = parser.parse_args()
    if args.client:
        configure_logging("warning", "json")
        result = asyncio.run(client_run(args.client, args.seconds, args.concurrency, args.processes))
        print(json.dumps(result))
        return

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    sim = subprocess.Popen(
        [sys.executable, "-m", "df_middleware.cli", "simulate", "ghl", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/_sim/state", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--client",
                    url,
                    "--seconds",
                    str(args.seconds),
                    "--concurrency",
                    str(args.concurrency),
                    "--processes",
                    str(args.processes),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.processes)
        ]
        results = [json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in clients]
        counters = httpx.get(f"{url}/_sim/state").json()["counters"]
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    calls = sum(r["calls"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    rate = calls / elapsed
    print(
        json.dumps(
            {
                "bench": "ghl_budget",
                "processes": args.processes,
                "concurrency": args.concurrency,
                "seconds": round(elapsed, 1),
                "calls": calls,
                "calls_per_second": round(rate, 2),
                "budget_used": round(rate / 10.0, 3),
                "rate_limited": counters.get("rate_limited_responses", 0),
                "call_latency_p50_ms": round(1000 * statistics.median(r["wait_p50"] for r in results), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
