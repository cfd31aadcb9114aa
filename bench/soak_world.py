"""The soak's world: its PostgreSQL, the three simulators, and the service's processes.

- **PostgreSQL**: a private cluster (`private_postgres.PrivateCluster`), so restarting it mid-run
  disturbs nothing else on the machine.
- **Simulators**: GHL, Aloware and Verity served by uvicorn *in the soak's own event loop* (not in
  threads): the stream changes their state directly (a GHL user editing a contact, a contact
  created in the dialer) and reads it for the verdict, and one thread means no change races a
  request being answered. Faults (5 % of requests: 5xx, 429, timeouts and lost answers) and
  100-250 ms of latency are set through each simulator's fault plan.
- **Service processes**: `df-middleware serve --no-worker` and `df-middleware worker`, started as
  an operator starts them (a clean environment holding the settings, cwd an empty directory), each
  with its output in `<workdir>/<name>.log`. Readiness is a signal: `/healthz` answering for a
  server, the "worker started" log line for a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from large_bodies import rss_mb

from df_middleware.simulators.aloware import AlowareSimulator
from df_middleware.simulators.aloware import create_app as create_aloware
from df_middleware.simulators.common import FaultPlan
from df_middleware.simulators.ghl import GhlSimulator
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.verity import VeritySimulator
from df_middleware.simulators.verity import create_app as create_verity

LOCATION = "loc_sim"
PROVIDER = "soak-sms-provider"
CALL_PROVIDER = "soak-call-provider"
HELP_REPLY = "Reply STOP to opt out. Msg&data rates may apply. Call (919) 555-0000 for help."
#: The two agents of the sales floor (their GHL and Aloware users share the email).
AGENTS = (("ALICE", "Alice Moreno", "alice@example.com"), ("BOB", "Bob Okafor", "bob@example.com"))
READY_TIMEOUT_SECONDS = 120.0


def base_fault_plan(seed: int) -> FaultPlan:
    """5 % of a simulator's requests fail (1.5 % 5xx, 1 % 429, 1 % hang past the client's timeout,
    1.5 % processed but answered 504), and every answer takes 100-250 ms."""
    return FaultPlan(
        latency_ms=100,
        latency_jitter_ms=150,
        error_rate=0.015,
        error_status=503,
        rate_limit_rate=0.01,
        retry_after_seconds=1,
        timeout_rate=0.01,
        timeout_seconds=20.0,
        lost_response_rate=0.015,
        seed=seed,
    )


def outage_plan() -> FaultPlan:
    """GHL answers every request 503 (a partner outage)."""
    return FaultPlan(latency_ms=100, error_rate=1.0, error_status=503)


class LoopServer:
    """A uvicorn server for an ASGI app, run as a task of the current event loop."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("simulator did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 30)
        self.sock.close()


@dataclass
class Simulators:
    ghl: GhlSimulator
    aloware: AlowareSimulator
    verity: VeritySimulator
    ghl_app: Any
    aloware_app: Any
    verity_app: Any
    servers: dict[str, LoopServer] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return self.servers[name].url

    def set_faults(self, name: str, plan: FaultPlan) -> None:
        app = {"ghl": self.ghl_app, "aloware": self.aloware_app, "verity": self.verity_app}[name]
        app.state.faults.set_plan(plan)

    def request_log(self, name: str) -> list[Any]:
        app = {"ghl": self.ghl_app, "aloware": self.aloware_app, "verity": self.verity_app}[name]
        return list(app.state.request_log.items)


@dataclass
class Secrets:
    ghl_key: Ed25519PrivateKey
    aloware_api_token: str
    aloware_webhook_token: str
    verity_api_key: str
    texting_secret: str
    admin_secret: str

    @classmethod
    def generate(cls) -> Secrets:
        return cls(
            ghl_key=Ed25519PrivateKey.generate(),
            aloware_api_token=secrets.token_urlsafe(16),
            aloware_webhook_token=secrets.token_urlsafe(16),
            verity_api_key=secrets.token_urlsafe(16),
            texting_secret=secrets.token_urlsafe(16),
            admin_secret=secrets.token_urlsafe(24),
        )

    @property
    def ghl_public_pem(self) -> str:
        return (
            self.ghl_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )


async def start_simulators(keys: Secrets, *, seed: int) -> Simulators:
    """The three simulators with their users (the agents) and base fault plans, served in this loop."""
    ghl, aloware, verity = GhlSimulator(seed=seed), AlowareSimulator(), VeritySimulator()
    sims = Simulators(
        ghl=ghl,
        aloware=aloware,
        verity=verity,
        ghl_app=create_ghl(ghl),
        aloware_app=create_aloware(aloware, api_token=keys.aloware_api_token),
        verity_app=create_verity(
            verity, api_key=keys.verity_api_key, webhook_secret=keys.texting_secret, receipt_delay_seconds=0.2
        ),
    )
    # The request logs are the GHL budget's evidence: keep every request of a long run.
    for app in (sims.ghl_app, sims.aloware_app, sims.verity_app):
        app.state.request_log.limit = 5_000_000
    for _key, name, email in AGENTS:
        ghl.add_user(LOCATION, name, email)
        aloware.add_user(name, email)
    for name, app in (("ghl", sims.ghl_app), ("aloware", sims.aloware_app), ("verity", sims.verity_app)):
        server = LoopServer(app)
        await server.start()
        sims.servers[name] = server
    for offset, name in enumerate(("ghl", "aloware", "verity")):
        sims.set_faults(name, base_fault_plan(seed + offset))
    return sims


def agents_file(workdir: Path) -> Path:
    path = workdir / "agents.yaml"
    path.write_text(
        "".join(
            f"- agent_key: {key}\n  display_name: {name}\n  ghl_owner_email: {email}\n"
            for key, name, email in AGENTS
        )
    )
    return path


def service_env(database_url: str, sims: Simulators, keys: Secrets, workdir: Path) -> dict[str, str]:
    """The environment an operator would give every process (settings only, plus PATH/PYTHONPATH)."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        {
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": "false",
            "LOG_LEVEL": "info",
            "DATA_DIR": str(workdir),
            "GHL_LOCATION_ID": LOCATION,
            "GHL_BASE_URL": sims.url("ghl"),
            "GHL_API_KEY": "pit-sim",
            "GHL_WEBHOOK_ED25519_PUBLIC_KEY": keys.ghl_public_pem,
            "GHL_CONVERSATION_PROVIDER_ID": PROVIDER,
            "GHL_CALL_PROVIDER_ID": CALL_PROVIDER,
            "ALOWARE_BASE_URL": f"{sims.url('aloware')}/api/v1",
            "ALOWARE_API_TOKEN": keys.aloware_api_token,
            "ALOWARE_WEBHOOK_BEARER_TOKEN": keys.aloware_webhook_token,
            "ALOWARE_CREATE_LISTS": "true",
            "VERITY_BASE_URL": sims.url("verity"),
            "VERITY_API_KEY": keys.verity_api_key,
            "VERITY_WEBHOOK_SECRET": keys.texting_secret,
            "DF_ADMIN_SECRET": keys.admin_secret,
            "AGENTS_FILE": str(agents_file(workdir)),
            "OPTOUT_REMOVES_FROM_DIALER": "true",
            "HELP_REPLY_TEXT": HELP_REPLY,
            # A killed worker's events return after this lease, not the default 5 minutes, and a
            # failed event is retried within a short run (the production defaults are longer).
            "LEASE_SECONDS": "30",
            "RETRY_BASE_SECONDS": "2",
            "RETRY_MAX_SECONDS": "60",
            "RECONCILE_INTERVAL": "0",
            # Two workers share the location's GHL budget: each takes half (docs/operations.md).
            "GHL_RATE_LIMIT_PROCESSES": "2",
        }
    )
    return env


@dataclass
class ServiceProcess:
    """One `df-middleware` process of the service (a server or a worker), restartable."""

    name: str
    args: list[str]
    env: dict[str, str]
    workdir: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: Words put between the interpreter and `-m df_middleware.cli` (an investigation wrapper such
    #: as bench/memtrace.py or `-m memray run -o FILE`); empty for the product as an operator runs it.
    wrap: list[str] = field(default_factory=list)
    #: RSS (MB) right after each start became ready, and the last seen before each stop.
    rss_at_start: list[float] = field(default_factory=list)
    rss_at_end: list[float] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n--- soak: start #{self.starts} at {time.time():.3f} ---\n".encode())
        log.flush()
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, *self.wrap, "-m", "df_middleware.cli", *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    _log_offset: int = 0

    async def wait_ready(self) -> None:
        """Until the server answers `/healthz`, or the worker has logged "worker started"."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        assert self.proc is not None
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log_path}")
                if self.port is not None:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                            break
                else:
                    with self.log_path.open("rb") as log:
                        log.seek(self._log_offset)
                        if b"worker started" in log.read():
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(
                    f"{self.name} not ready after {READY_TIMEOUT_SECONDS}s: see {self.log_path}"
                )
        if (rss := rss_mb(self.proc.pid)) is not None:
            self.rss_at_start.append(round(rss, 1))

    def sample_rss(self) -> float | None:
        return rss_mb(self.proc.pid) if self.proc is not None and self.proc.poll() is None else None

    def kill9(self) -> None:
        assert self.proc is not None
        if (rss := self.sample_rss()) is not None:
            self.rss_at_end.append(round(rss, 1))
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    async def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a graceful stop) and wait; SIGKILL when it does not end in `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        if (rss := self.sample_rss()) is not None:
            self.rss_at_end.append(round(rss, 1))
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_processes(env: dict[str, str], workdir: Path) -> tuple[list[ServiceProcess], list[ServiceProcess]]:
    """Two `serve --no-worker` and two `worker` processes (not started)."""
    servers = []
    for index in (1, 2):
        port = free_port()
        servers.append(
            ServiceProcess(
                f"server{index}",
                ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
                env,
                workdir,
                port=port,
            )
        )
    workers = [ServiceProcess(f"worker{index}", ["worker"], env, workdir) for index in (1, 2)]
    # Opt-in, for investigating the never-killed worker's memory (`--spare-worker`): e.g.
    # DFM_SOAK_WORKER2_WRAP="/abs/path/bench/memtrace.py /tmp/w2mem" (absolute paths: cwd is workdir).
    workers[1].wrap = shlex.split(os.environ.get("DFM_SOAK_WORKER2_WRAP", ""))
    return servers, workers


def echo_partner_writes(sims: Simulators, keys: Secrets, server_url: str) -> None:
    """GHL and Aloware post their webhooks about the service's own writes to `server_url`, signed
    and authenticated as the real ones are, retrying (about a minute and a half) through a server
    restart or a database outage as a provider does: the echoes of R-LOOP-1."""
    sims.ghl.webhook_url = f"{server_url}/api/webhooks/ghl"
    sims.ghl.webhook_signing_key = keys.ghl_key
    sims.ghl.webhooks.attempts = 60
    sims.ghl.webhooks.deliveries_kept = 1_000_000  # every echo of the run is judged
    sims.aloware.webhook_url = f"{server_url}/api/webhooks/aloware"
    sims.aloware.webhook_bearer_token = keys.aloware_webhook_token
    sims.aloware.emit_contact_events = True
    sims.aloware.webhooks.attempts = 60
    sims.aloware.webhooks.deliveries_kept = 1_000_000


def echo_report(sims: Simulators) -> dict[str, Any]:
    """What the partners posted about the service's own writes: by system and event, and how many
    were never acknowledged (every one must be: an echo refused is a lost webhook too)."""
    by_event: Counter[str] = Counter()
    unacknowledged: list[dict[str, Any]] = []
    for system, sender in (("ghl", sims.ghl.webhooks), ("aloware", sims.aloware.webhooks)):
        for delivery in sender.deliveries:
            by_event[f"{system}:{delivery.event}"] += 1
            if not delivery.ok:
                unacknowledged.append(
                    {
                        "system": system,
                        "event": delivery.event,
                        "status": delivery.status,
                        "error": delivery.error,
                    }
                )
    return {
        "sent": sum(by_event.values()),
        "by_event": dict(sorted(by_event.items())),
        "unacknowledged": len(unacknowledged),
        "unacknowledged_examples": unacknowledged[:5],
        "background_errors": [*sims.ghl.webhooks.background_errors, *sims.aloware.webhooks.background_errors][
            :5
        ],
    }
