"""`df-middleware demo`: the scripted day (demo.py) run end to end on this machine, in one process.

It starts the GHL, Aloware and Verity simulators and the service itself on local ports, with a
throwaway SQLite database (or DATABASE_URL when `--database-url` is given), a freshly generated
GHL webhook signing key and test secrets; seeds the day's agents (Alice and Bob) into the agent
directory, with ALOWARE_CREATE_LISTS on so their dialer lists are made as leads need them; plays
the day through the real ingest, worker, handlers and connectors; and reports what every system
holds at the end (and the lists as `lists status` sees them), and whether that is the expected end
state. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import tempfile
import uuid
from collections.abc import Callable
from contextlib import ExitStack
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


async def run_demo(
    database_url: str | None = None, *, on_step: Callable[[Step, int], None] | None = None
) -> DemoOutcome:
    """Play the day against in-process simulators and service; see the module docstring."""
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
            data_dir=str(workdir),
            auto_migrate=False,
            log_level="warning",
            aloware_create_lists=True,
        )
        service = create_service(settings, run_worker=False)
        # The service as `serve` runs it: its own protocol and limits (http_server).
        service_url = stack.enter_context(
            serve_config(server_config(service, settings, host="127.0.0.1", port=0))
        )
        sims.verity.webhook_url = f"{service_url}/api/webhooks/texting"
        db = Database(database_url)
        connectors = Connectors.from_settings(settings, db)
        worker = Worker(settings, db, connectors=connectors)

        async def process() -> int:
            total = 0
            for _ in range(50):
                done = await worker.run_once()
                total += done
                if not done:
                    break
            return total

        deliverer = DemoDeliverer(service_url, ghl_key, aloware_hook_token, texting_secret)
        try:
            await seed_agents(sims, db, connectors)
            await run_day(
                deliverer,
                process,
                sims,
                on_step=(lambda step, webhooks: on_step(step, len(webhooks))) if on_step else None,
            )
            stats = await queue_stats(db)
            lists = await lists_status(settings, db)
        finally:
            await connectors.aclose()
            await db.dispose()
    snapshot = snapshot_of(sims)
    events = {f"{table}:{status}": count for table, status, count in stats.depth if count}
    return DemoOutcome(snapshot, snapshot == expected_final_state(), events, database_url, lists.lines)
