"""PostgreSQL goes away during ingest and comes back (R-IN-2, R-REL-2).

A private, throwaway cluster (initdb on a free port, as user postgres) is stopped and started
under a running application: while it is down every webhook gets 503 with Retry-After (never a
2xx for an event that is not stored), and once it is back the same application, not restarted,
stores the senders' retries and has lost nothing it acknowledged.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.db.migrate import upgrade
from df_middleware.db.models import WebhookEvent
from df_middleware.db.session import Database
from tests.conftest import IN_CI, TEST_SECRETS, Keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from private_postgres import PrivateCluster, can_run_private_cluster, pg_bin_dir

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    reason = can_run_private_cluster()
    if reason is not None:
        if IN_CI and pg_bin_dir() is not None:
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PrivateCluster.create(settings={"fsync": "off"})
    try:
        yield cluster
    finally:
        cluster.destroy()


def _webhook(n: int, keys: Keys) -> tuple[bytes, dict[str, str]]:
    body = f'{{"type":"ContactUpdate","id":"c-{n}","webhookId":"wh-{n}","locationId":"loc_test"}}'.encode()
    return body, {"content-type": "application/json", "x-ghl-signature": keys.ed25519_sign(body)}


async def test_outage_answers_503_and_recovers_without_restart(
    private_cluster: PrivateCluster, keys: Keys
) -> None:
    """R-IN-2, R-REL-2: down → 503 + Retry-After, never 2xx; back → the same process stores the
    retries; nothing acknowledged is lost; nothing is stored twice."""
    await upgrade(private_cluster.url())
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=private_cluster.url(),
        ghl_webhook_ed25519_public_key=keys.ed25519_public_pem,
        auto_migrate=False,
        log_format="json",
        **TEST_SECRETS,
    )
    app = create_app(settings, run_worker=False)
    acknowledged: set[str] = set()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:

        async def post(n: int) -> Any:
            body, headers = _webhook(n, keys)
            return await client.post("/api/webhooks/ghl", content=body, headers=headers)

        for n in range(5):
            response = await post(n)
            assert response.status_code == 200
            acknowledged.add(response.json()["id"])

        private_cluster.stop()
        for n in range(5, 10):
            response = await post(n)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
        assert (await client.get("/readyz")).status_code == 503

        private_cluster.start()
        # The first requests after the restart may still meet connections the outage broke;
        # the senders retry (that is what 503 asked of them) until each is stored.
        for n in range(0, 10):
            for _attempt in range(5):
                response = await post(n)
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
            assert response.status_code == 200, response.text
            assert response.json()["status"] == ("duplicate" if n < 5 else "accepted")
            acknowledged.add(response.json()["id"])
        assert (await client.get("/readyz")).status_code == 200
    await app.state.db.dispose()

    db = Database(private_cluster.url())
    try:
        async with db.session() as session:
            stored = {str(i) for i in await session.scalars(select(WebhookEvent.id))}
    finally:
        await db.dispose()
    assert stored == acknowledged
    assert len(stored) == 10
