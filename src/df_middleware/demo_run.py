"""`df-middleware demo`: the scripted day (demo.py) run end to end on this machine, in one process.

`demo_world` starts the GHL, Aloware and Verity simulators and the service itself on local ports,
with a throwaway SQLite database (or DATABASE_URL when `--database-url` is given), a freshly
generated GHL webhook signing key, test secrets and an admin secret; `DemoWorld.play_day` seeds
the day's agents (Alice and Bob) into the agent directory, with ALOWARE_CREATE_LISTS on so their
dialer lists are made as leads need them, plays the day through the real ingest, worker, handlers
and connectors, and reports what every system holds at the end (and the lists as `lists status`
sees them), and whether that is the expected end state. Nothing leaves 127.0.0.1.

Then, unless the newcomer asked only for the summary (`--exit`), `DemoWorld.keep_running` leaves it
all up to be looked around in (R-RUN-5): the service (its dashboard and admin API behind the admin
secret) with the worker and scheduler running as `serve` runs them, and the simulators now posting
their own signed webhooks to it, as the real systems would, so that a contact saved in the GHL
simulator or a text sent through the Verity simulator flows through the service like the day did.
During the day the driver delivers every webhook itself and processes the queue after each step
(that is what makes the day's end state exact); the simulators are wired to the service only after.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from df_middleware.app import create_app as create_service
from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.migrate import upgrade
from df_middleware.db.session import Database
from df_middleware.demo import (
    DaySimulators,
    Step,
    WorldSnapshot,
    expected_final_state,
    run_day,
    seed_agents,
)
from df_middleware.demo import snapshot_of_simulators as snapshot_of
from df_middleware.http_server import server_config
from df_middleware.queue.operations import queue_stats
from df_middleware.queue.scheduler import Scheduler
from df_middleware.queue.worker import Worker
from df_middleware.simulators.aloware import AlowareSimulator
from df_middleware.simulators.aloware import create_app as create_aloware
from df_middleware.simulators.ghl import GhlSimulator
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.serving import serve_app, serve_config
from df_middleware.simulators.verity import VeritySimulator
from df_middleware.simulators.verity import create_app as create_verity
from df_middleware.sync.agent_field import AgentField
from df_middleware.sync.list_operations import ListLine, lists_status
from df_middleware.sync.list_registry import CallListRegistryStore

LOCATION = "loc_sim"
PROVIDER = "demo-sms-provider"
CALL_PROVIDER = "demo-call-provider"


@dataclass
class DemoDeliverer:
    """Delivers webhooks to the service's real endpoints, signed as each system signs them (GHL
    Ed25519, Aloware Bearer, Verity HMAC), with GHL's `locationId`/`timestamp`/`webhookId` filled
    in. The demo and the test world (`tests/sync_world.py`) both deliver through it."""

    service_url: str
    ghl_key: Ed25519PrivateKey
    aloware_token: str
    texting_secret: str
    #: BROADCAST_WEBHOOK_SECRET; None: broadcasts are signed with the texting secret, as the
    #: service then expects (VERITY_WEBHOOK_SECRET signs both).
    broadcast_secret: str | None = None

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.service_url, timeout=10) as client:
            answer = await client.post(
                path, content=body, headers={"content-type": "application/json", **headers}
            )
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text[:500]}")
        return answer

    def _signed(self, body: bytes) -> dict[str, str]:
        return {"x-ghl-signature": base64.b64encode(self.ghl_key.sign(body)).decode()}

    async def deliver_ghl(self, payload: dict[str, Any]) -> httpx.Response:
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        body = orjson.dumps(
            {"locationId": LOCATION, "timestamp": stamp, "webhookId": str(uuid.uuid4()), **payload}
        )
        return await self._post("/api/webhooks/ghl", body, self._signed(body))

    async def deliver_provider_message(self, payload: dict[str, Any]) -> httpx.Response:
        body = orjson.dumps({"locationId": LOCATION, **payload})
        return await self._post("/api/webhooks/ghl/provider-delivery", body, self._signed(body))

    async def deliver_aloware(self, event: str, body: dict[str, Any]) -> httpx.Response:
        raw = orjson.dumps({"event": event, "body": body})
        return await self._post(
            "/api/webhooks/aloware", raw, {"authorization": f"Bearer {self.aloware_token}"}
        )

    async def deliver_texting(self, payload: dict[str, Any]) -> httpx.Response:
        raw = orjson.dumps(payload)
        signature = hmac.new(self.texting_secret.encode(), raw, hashlib.sha256).hexdigest()
        return await self._post("/api/webhooks/texting", raw, {"x-texting-signature": signature})

    async def deliver_broadcast(self, payload: dict[str, Any]) -> httpx.Response:
        raw = orjson.dumps(payload)
        secret = self.broadcast_secret or self.texting_secret
        signature = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        return await self._post("/api/webhooks/broadcast", raw, {"x-broadcast-signature": signature})


@dataclass
class DemoOutcome:
    snapshot: WorldSnapshot
    matches_expected: bool
    events: dict[str, int]
    database_url: str
    #: The agents' lists at the end, as `lists status` reports them (members, blocked).
    lists: list[ListLine]


@dataclass
class DemoWorld:
    """The simulators and the service the demo runs, and what a visitor needs to reach them."""

    sims: DaySimulators
    settings: Settings
    db: Database
    connectors: Connectors
    worker: Worker
    deliverer: DemoDeliverer
    service_url: str
    ghl_url: str
    aloware_url: str
    verity_url: str
    #: DF_ADMIN_SECRET of the service: the environment's, else one generated for this run.
    admin_secret: str
    admin_secret_generated: bool
    #: The port asked for (8000) when it was taken and another was used instead, else None.
    port_taken: int | None = None

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def dashboard_url(self) -> str:
        return f"{self.service_url}/admin"

    async def process(self) -> int:
        """Run the worker until the queue is settled (or 50 batches): the day's `Process`."""
        total = 0
        for _ in range(50):
            done = await self.worker.run_once()
            total += done
            if not done:
                break
        return total

    async def play_day(self, on_step: Callable[[Step, int], None] | None = None) -> DemoOutcome:
        """Seed the agents, play `DAY`, and compare every system's end state with the expected one."""
        await seed_agents(self.sims, self.db, self.connectors)
        await run_day(
            self.deliverer,
            self.process,
            self.sims,
            on_step=(lambda step, webhooks: on_step(step, len(webhooks))) if on_step else None,
        )
        stats = await queue_stats(self.db)
        lists = await lists_status(self.settings, self.db)
        snapshot = snapshot_of(self.sims)
        events = {f"{table}:{status}": count for table, status, count in stats.depth if count}
        return DemoOutcome(
            snapshot, snapshot == expected_final_state(), events, self.database_url, lists.lines
        )

    def open_to_visitors(self) -> None:
        """Point the simulators' own webhooks at the service, signed as the service expects:
        GHL's contact events and agent SMS (Ed25519, the key the service was given), Aloware's
        `/_sim/emit` (Bearer), Verity's texts, receipts and broadcasts (HMAC)."""
        ghl, aloware, verity = self.sims.ghl, self.sims.aloware, self.sims.verity
        ghl.webhook_signing_key = self.deliverer.ghl_key
        ghl.webhook_url = f"{self.service_url}/api/webhooks/ghl"
        ghl.provider_delivery_url = f"{self.service_url}/api/webhooks/ghl/provider-delivery"
        aloware.webhook_url = f"{self.service_url}/api/webhooks/aloware"
        aloware.webhook_bearer_token = self.deliverer.aloware_token
        verity.webhook_url = f"{self.service_url}/api/webhooks/texting"
        verity.webhook_secret = self.deliverer.texting_secret
        verity.broadcast_webhook_url = f"{self.service_url}/api/webhooks/broadcast"
        verity.broadcast_webhook_secret = self.deliverer.broadcast_secret or self.deliverer.texting_secret

    async def keep_running(self, stop: asyncio.Event) -> None:
        """Serve visitors until `stop` is set: the simulators post to the service, and the worker
        and scheduler run as `serve` runs them; on `stop` they shut down gracefully (R-Q-6)."""
        self.open_to_visitors()
        scheduler = Scheduler(self.settings, self.db)
        await asyncio.gather(self.worker.run(stop), scheduler.run(stop))


def service_port(preferred: int) -> tuple[int, bool]:
    """`preferred` when it is free on 127.0.0.1, else 0 (the system picks one when the service
    binds); and whether `preferred` was taken. Probed with the options `serve_config` binds with
    (SO_REUSEADDR), so a port only in TIME_WAIT counts as free and one a process listens on does
    not. Only a first guess: another demo may take it before the bind (`demo_world` then falls
    back to 0), and a port "free a moment ago" is never handed out (break13b finding 6)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return 0, True
    return preferred, False


@asynccontextmanager
async def demo_world(
    database_url: str | None = None, *, port: int | None = None, admin_secret: str | None = None
) -> AsyncIterator[DemoWorld]:
    """Start the simulators and the service (see the module docstring) and stop them on exit.

    `port`: the service's port, or the next free one when it is taken (None: any free port, for a
    demo that only plays the day). `admin_secret`: DF_ADMIN_SECRET (None: a fresh random one).
    """
    workdir = Path(tempfile.mkdtemp(prefix="df-middleware-demo-"))
    database_url = database_url or f"sqlite:///{workdir / 'demo.db'}"
    ghl_key = Ed25519PrivateKey.generate()
    public_pem = (
        ghl_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    aloware_token, aloware_hook_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    verity_key, texting_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    generated = not admin_secret
    admin_secret = admin_secret or secrets.token_urlsafe(24)
    sims = DaySimulators(
        ghl=GhlSimulator(seed=1),
        aloware=AlowareSimulator(),
        verity=VeritySimulator(),
        location_id=LOCATION,
        conversation_provider_id=PROVIDER,
    )
    await upgrade(database_url)
    # A new Aloware and GHL: nothing this process learnt of another run's lists or fields holds.
    CallListRegistryStore.forget()
    AgentField.forget()
    bind_port, port_taken = service_port(port) if port else (0, False)
    with ExitStack() as stack:
        ghl_url = stack.enter_context(serve_app(create_ghl(sims.ghl)))
        aloware_url = stack.enter_context(serve_app(create_aloware(sims.aloware, api_token=aloware_token)))
        verity_url = stack.enter_context(
            serve_app(
                create_verity(
                    sims.verity, api_key=verity_key, webhook_secret=texting_secret, receipt_delay_seconds=0.02
                )
            )
        )
        settings = Settings(
            _env_file=None,
            database_url=database_url,
            host="127.0.0.1",
            port=bind_port or 8000,
            ghl_location_id=LOCATION,
            ghl_base_url=ghl_url,
            ghl_api_key="pit-sim",
            ghl_webhook_ed25519_public_key=public_pem,
            ghl_conversation_provider_id=PROVIDER,
            ghl_call_provider_id=CALL_PROVIDER,
            aloware_base_url=f"{aloware_url}/api/v1",
            aloware_api_token=aloware_token,
            aloware_webhook_bearer_token=aloware_hook_token,
            verity_base_url=verity_url,
            verity_api_key=verity_key,
            verity_webhook_secret=texting_secret,
            df_admin_secret=admin_secret,
            data_dir=str(workdir),
            auto_migrate=False,
            log_level="warning",
            aloware_create_lists=True,
        )
        service = create_service(settings, run_worker=False)
        # The service as `serve` runs it: its own protocol and limits (http_server).
        try:
            service_url = stack.enter_context(
                serve_config(server_config(service, settings, host="127.0.0.1", port=bind_port))
            )
        except (OSError, RuntimeError):
            if not bind_port:
                raise
            # Taken since the probe (another demo starting at the same moment): the system's pick,
            # bound at once, so no one can take it in between (break13b finding 6).
            service_url = stack.enter_context(
                serve_config(server_config(service, settings, host="127.0.0.1", port=0))
            )
            port_taken = True
        sims.verity.webhook_url = f"{service_url}/api/webhooks/texting"
        db = Database(database_url)
        connectors = Connectors.from_settings(settings, db)
        try:
            yield DemoWorld(
                sims=sims,
                settings=settings,
                db=db,
                connectors=connectors,
                worker=Worker(settings, db, connectors=connectors),
                deliverer=DemoDeliverer(service_url, ghl_key, aloware_hook_token, texting_secret),
                service_url=service_url,
                ghl_url=ghl_url,
                aloware_url=aloware_url,
                verity_url=verity_url,
                admin_secret=admin_secret,
                admin_secret_generated=generated,
                port_taken=port if port_taken else None,
            )
        finally:
            await connectors.aclose()
            await db.dispose()


async def run_demo(
    database_url: str | None = None, *, on_step: Callable[[Step, int], None] | None = None
) -> DemoOutcome:
    """Play the day against in-process simulators and service, then stop them (`demo --exit`)."""
    async with demo_world(database_url) as world:
        return await world.play_day(on_step)
