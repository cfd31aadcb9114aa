"""GHL Marketplace OAuth: install routes, encrypted token store, refresh under a lock, install webhooks.

The GHL simulator runs over real HTTP (`serve_app`); the service's own routes are called in
process through ASGI. Tests that touch the database run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog
from cryptography.fernet import Fernet
from fastapi import FastAPI
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from pydantic import SecretStr
from sqlalchemy import select, update
from typer.testing import CliRunner

from df_middleware import cli
from df_middleware.admin.oauth import STATE_MAX_AGE_SECONDS, STATE_SALT, InvalidState, verify_state
from df_middleware.app import create_app
from df_middleware.config import Settings, get_settings
from df_middleware.connectors.http import ServiceClient
from df_middleware.connectors.tokens import (
    GhlCredentials,
    GhlTokenStore,
    InstallationBroken,
    MissingGhlCredentials,
    TokenCipher,
    TokenKeyError,
    TokenRefreshUnavailable,
    load_token_cipher,
    refresh_expiring_tokens,
    token_http_client,
    token_key_path,
)
from df_middleware.db.models import GhlOauthToken
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.observability import OAUTH_REFRESHES, configure_logging
from df_middleware.queue.scheduler import default_jobs
from df_middleware.queue.worker import Worker
from df_middleware.simulators.ghl import GhlSimulator
from df_middleware.simulators.ghl import create_app as create_ghl_simulator
from df_middleware.sync.registry import default_registry
from tests.event_factory import event_state, insert_event, log_rows
from tests.servers import serve_app

CLIENT_ID = "df-test-app-client"
CLIENT_SECRET = "df-test-client-secret-123"
ADMIN_SECRET = "admin-secret-for-tests"
LOCATION = "loc_oauth_1"
PUBLIC_URL = "http://df.test"
LOCATIONS = (LOCATION, "loc_oauth_2", "loc_test")


@dataclass
class Sim:
    """The GHL simulator of one test, served on a real port."""

    sim: GhlSimulator
    url: str

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"{self.url}/_sim/state").json()
        return state

    def refresh_calls(self) -> int:
        return int(self.state()["counters"]["oauth_refresh_calls"])

    def code_exchanges(self) -> int:
        return int(self.state()["counters"]["oauth_code_exchanges"])

    def code(self, location_id: str = LOCATION) -> str:
        return self.sim.issue_auth_code(location_id, CLIENT_ID)

    def spend_refresh_token(self, refresh_token: str) -> httpx.Response:
        """Use a refresh token directly, as another (misbehaving) client would."""
        return httpx.post(
            f"{self.url}/oauth/token",
            data={
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "user_type": "Location",
            },
        )


@pytest.fixture
def ghl() -> Iterator[Sim]:
    app = create_ghl_simulator()
    sim: GhlSimulator = app.state.sim
    sim.add_oauth_client(CLIENT_ID, CLIENT_SECRET)
    for location_id in LOCATIONS:
        sim.add_location(location_id)
    with serve_app(app) as url:
        yield Sim(sim, url)


@pytest.fixture
def oauth_settings(make_settings: Callable[..., Settings], ghl: Sim, tmp_path: Path) -> Settings:
    return make_settings(
        ghl_base_url=ghl.url,
        ghl_client_id=CLIENT_ID,
        ghl_client_secret=CLIENT_SECRET,
        ghl_oauth_authorize_url=f"{ghl.url}/oauth/chooselocation",
        public_base_url=PUBLIC_URL,
        df_admin_secret=ADMIN_SECRET,
        data_dir=str(tmp_path / "data"),
        token_encryption_key=Fernet.generate_key().decode(),
        auto_migrate=False,
    )


@pytest.fixture
def cipher(oauth_settings: Settings) -> TokenCipher:
    loaded = load_token_cipher(oauth_settings)
    assert loaded is not None
    return loaded


@pytest.fixture
async def http(oauth_settings: Settings) -> AsyncIterator[ServiceClient]:
    client = token_http_client(oauth_settings)
    yield client
    await client.aclose()


@pytest.fixture
def store(oauth_settings: Settings, db: Database, http: ServiceClient, cipher: TokenCipher) -> GhlTokenStore:
    return GhlTokenStore(oauth_settings, db, http, cipher)


@pytest.fixture
async def service(oauth_settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The service's app, called in process (its lifespan is not needed for these routes)."""
    app = create_app(oauth_settings, run_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as client:
        yield app, client
    await app.state.db.dispose()


ADMIN = {"Authorization": f"Bearer {ADMIN_SECRET}"}


async def token_rows(db: Database) -> list[GhlOauthToken]:
    async with db.session() as session:
        return list(await session.scalars(select(GhlOauthToken)))


async def set_expiry(db: Database, location_id: str, expires_in: timedelta) -> None:
    async with db.session() as session:
        await session.execute(
            update(GhlOauthToken)
            .where(GhlOauthToken.location_id == location_id)
            .values(expires_at=utcnow() + expires_in)
        )


async def stored_tokens(db: Database, cipher: TokenCipher, location_id: str = LOCATION) -> tuple[str, str]:
    """(access token, refresh token) of a location, decrypted."""
    (row,) = [r for r in await token_rows(db) if r.location_id == location_id]
    assert row.refresh_token is not None
    return cipher.decrypt(row.access_token), cipher.decrypt(row.refresh_token)


def _all_logged(captured: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(repr(entry) for entry in captured)


# --- start route and state (R-OA-1) ------------------------------------------------------------------


async def test_start_route_needs_the_admin_secret_and_signs_the_state(
    service: tuple[FastAPI, httpx.AsyncClient], oauth_settings: Settings, cipher: TokenCipher
) -> None:
    """R-OA-1, R-SEC-1, R-SEC-2: `/leadconnector/oauth/start` answers 401 without the admin secret
    (either header form is accepted), and with it 302s to GHL's choose-location page carrying our
    client id, redirect URI, scopes and a signed state that the callback will accept."""
    _app, client = service
    start = "/leadconnector/oauth/start"
    assert (await client.get(start)).status_code == 401
    wrong = await client.get(start, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "DF_ADMIN_SECRET" in wrong.json()["error"]
    assert ADMIN_SECRET not in wrong.text

    for headers in (ADMIN, {"X-DF-ADMIN-SECRET": ADMIN_SECRET}):
        answer = await client.get(start, headers=headers)
        assert answer.status_code == 302
        location = urlsplit(answer.headers["location"])
        assert (
            f"{location.scheme}://{location.netloc}{location.path}" == oauth_settings.ghl_oauth_authorize_url
        )
        query = {k: v[0] for k, v in parse_qs(location.query).items()}
        assert query["response_type"] == "code"
        assert query["client_id"] == CLIENT_ID
        assert query["redirect_uri"] == f"{PUBLIC_URL}/leadconnector/oauth"
        assert query["scope"] == oauth_settings.ghl_oauth_scopes
        verify_state(cipher, query["state"])  # raises if not ours


async def test_admin_routes_fail_closed_without_a_configured_secret(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """R-SEC-1: with DF_ADMIN_SECRET unset the start route is closed (401) and says which setting
    opens it; with OAuth unconfigured the routes answer 503 naming the missing settings."""
    app = create_app(make_settings(auto_migrate=False, data_dir=str(tmp_path)), run_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as client:
        closed = await client.get("/leadconnector/oauth/start", headers=ADMIN)
        assert closed.status_code == 401
        assert "DF_ADMIN_SECRET is not set" in closed.json()["error"]
        callback = await client.get("/leadconnector/oauth", params={"code": "c", "state": "s"})
        assert callback.status_code == 503
        assert "GHL_CLIENT_ID" in callback.text
        assert "GHL_CLIENT_SECRET" in callback.text
    await app.state.db.dispose()
    assert not token_key_path(make_settings(data_dir=str(tmp_path))).exists()  # nothing to encrypt yet


def _state_signed_at(cipher: TokenCipher, seconds_ago: int, nonce: str = "n") -> str:
    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds_ago

    serializer = URLSafeTimedSerializer(cipher.derive_key(STATE_SALT), salt=STATE_SALT, signer=PastSigner)
    return str(serializer.dumps({"nonce": nonce}))


async def test_callback_refuses_bad_states_and_stores_nothing(
    service: tuple[FastAPI, httpx.AsyncClient], ghl: Sim, db: Database, cipher: TokenCipher
) -> None:
    """R-OA-1: a missing, forged, tampered or expired state, or a GHL error, is a 400 page and
    nothing is exchanged or stored; a code GHL refuses is a 502 page and nothing is stored."""
    _app, client = service
    good = _state_signed_at(cipher, 0)
    other_key = TokenCipher(Fernet.generate_key().decode())
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    bad_states: dict[str, str | None] = {
        "missing": None,
        "garbage": "not-a-state",
        "other key": _state_signed_at(other_key, 0),
        "tampered": tampered,
        "expired": _state_signed_at(cipher, STATE_MAX_AGE_SECONDS + 60),
    }
    for name, state in bad_states.items():
        params = {"code": ghl.code()} | ({"state": state} if state is not None else {})
        answer = await client.get("/leadconnector/oauth", params=params)
        assert answer.status_code == 400, name
        assert "text/html" in answer.headers["content-type"]
        assert "/leadconnector/oauth/start" in answer.text
        assert answer.headers["referrer-policy"] == "no-referrer"
    with pytest.raises(InvalidState, match="expired"):
        verify_state(cipher, bad_states["expired"])

    denied = await client.get(
        "/leadconnector/oauth",
        params={"error": "access_denied", "error_description": "<b>no</b>", "state": good},
    )
    # GHL's error text is shown only with a state we issued, and escaped.
    unsigned_error = await client.get("/leadconnector/oauth", params={"error": "<i>x</i>"})
    assert unsigned_error.status_code == 400
    assert "x</i>" not in unsigned_error.text
    assert "&lt;i&gt;" not in unsigned_error.text
    assert denied.status_code == 400
    assert "&lt;b&gt;no&lt;/b&gt;" in denied.text
    assert "<b>no</b>" not in denied.text

    replayed = await client.get("/leadconnector/oauth", params={"code": ghl.code(), "state": good})
    assert replayed.status_code == 400  # a state is good for one callback
    assert "already used" in replayed.text

    fresh = _state_signed_at(cipher, 0, nonce="n2")
    refused = await client.get("/leadconnector/oauth", params={"code": "not-a-code", "state": fresh})
    assert refused.status_code == 502
    assert "Nothing was stored" in refused.text

    assert ghl.code_exchanges() <= 1  # only the refused code reached GHL
    assert await token_rows(db) == []


# --- the full install (R-OA-1, R-SEC-5) ------------------------------------------------------------------


async def test_full_install_flow_stores_the_token_encrypted(
    service: tuple[FastAPI, httpx.AsyncClient],
    ghl: Sim,
    db: Database,
    store: GhlTokenStore,
    cipher: TokenCipher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R-OA-1, R-SEC-5: start → GHL's choose-location page → callback: the code is exchanged once,
    the token is stored per location as Fernet ciphertext (the raw column is not the token), it
    works against GHL, and no token ever reaches a log line."""
    _app, client = service
    with structlog.testing.capture_logs() as captured:
        start = await client.get("/leadconnector/oauth/start", headers=ADMIN)
        chooser = urlsplit(start.headers["location"])
        chosen = httpx.get(
            f"{ghl.url}{chooser.path}?{chooser.query}&locationId={LOCATION}", follow_redirects=False
        )
        assert chosen.status_code == 302
        back = urlsplit(chosen.headers["location"])
        assert f"{back.scheme}://{back.netloc}{back.path}" == f"{PUBLIC_URL}/leadconnector/oauth"
        callback = await client.get(f"{back.path}?{back.query}")
        assert callback.status_code == 200, callback.text
        assert LOCATION in callback.text
        token = await store.access_token(LOCATION)

    assert ghl.code_exchanges() == 1
    (row,) = await token_rows(db)
    assert row.location_id == LOCATION
    assert row.access_token != token
    assert token not in row.access_token
    assert cipher.decrypt(row.access_token) == token
    assert row.refresh_token is not None
    assert cipher.decrypt(row.refresh_token) not in row.refresh_token
    assert row.expires_at - utcnow() > timedelta(hours=23)
    assert row.user_type == "Location"

    usable = httpx.get(
        f"{ghl.url}/users/",
        params={"locationId": LOCATION},
        headers={"Authorization": f"Bearer {token}", "Version": "2021-07-28"},
    )
    assert usable.status_code == 200, usable.text

    access, refresh = await stored_tokens(db, cipher)
    logged = _all_logged(captured) + caplog.text
    assert access not in logged
    assert refresh not in logged
    assert CLIENT_SECRET not in logged
    assert access not in repr(store)
    assert access not in repr(cipher)


# --- refresh (R-OA-3) --------------------------------------------------------------------------------------


async def test_token_is_refreshed_ahead_of_expiry(
    ghl: Sim, db: Database, store: GhlTokenStore, cipher: TokenCipher
) -> None:
    """R-OA-3: a token expiring within 5 minutes is refreshed before use, once; GHL's single-use
    refresh token is replaced (the old one is refused afterwards) and the expiry moves ~24 h on."""
    assert await store.exchange_code(ghl.code()) == LOCATION
    old_access, old_refresh = await stored_tokens(db, cipher)
    await set_expiry(db, LOCATION, timedelta(minutes=2))

    with structlog.testing.capture_logs() as captured:
        fresh = await store.access_token(LOCATION)
        again = await store.access_token(LOCATION)
    assert fresh == again != old_access
    assert ghl.refresh_calls() == 1
    new_access, new_refresh = await stored_tokens(db, cipher)
    assert (new_access, new_refresh != old_refresh) == (fresh, True)
    (row,) = await token_rows(db)
    assert row.expires_at - utcnow() > timedelta(hours=23)

    reused = ghl.spend_refresh_token(old_refresh)
    assert reused.status_code == 400
    assert "invalid_grant" in reused.text
    logged = _all_logged(captured)
    for secret in (old_access, old_refresh, new_access, new_refresh):
        assert secret not in logged


async def test_concurrent_refreshes_make_one_refresh_call(
    oauth_settings: Settings, ghl: Sim, database_url: str, cipher: TokenCipher
) -> None:
    """R-OA-3, R-RUN-4: two processes (two stores, each with its own database engine) refreshing
    one location at once make exactly one refresh call — the database row lock serialises them
    and the second sees the first's token — and every caller gets the same new token."""
    databases = [Database(database_url), Database(database_url)]
    clients = [token_http_client(oauth_settings) for _ in databases]
    stores = [GhlTokenStore(oauth_settings, d, c, cipher) for d, c in zip(databases, clients, strict=True)]
    try:
        await stores[0].exchange_code(ghl.code())
        old_access, _ = await stored_tokens(databases[0], cipher)

        await set_expiry(databases[0], LOCATION, timedelta(minutes=2))
        by_access = await asyncio.gather(*(s.access_token(LOCATION) for s in stores for _ in range(3)))
        assert ghl.refresh_calls() == 1
        assert len(set(by_access)) == 1
        assert by_access[0] != old_access

        forced = await asyncio.gather(*(s.refresh(LOCATION, force=True) for s in stores))
        assert ghl.refresh_calls() == 2
        assert len(set(forced)) == 1
        assert forced[0] != by_access[0]
        assert (await stored_tokens(databases[1], cipher))[0] == forced[0]
    finally:
        for client in clients:
            await client.aclose()
        for database in databases:
            await database.dispose()


async def test_after_unauthorized_refreshes_once(
    oauth_settings: Settings, ghl: Sim, db: Database, store: GhlTokenStore, cipher: TokenCipher
) -> None:
    """R-OA-3: after GHL refuses a token (401), the first caller refreshes; a second caller (here a
    second store, as another process would) holding the same rejected token gets the new token
    without another refresh call."""
    await store.exchange_code(ghl.code())
    rejected, _ = await stored_tokens(db, cipher)
    ghl.sim.expire_access_token(rejected)

    fresh = await store.after_unauthorized(LOCATION, rejected)
    assert fresh is not None
    assert fresh != rejected
    assert ghl.refresh_calls() == 1
    other = GhlTokenStore(oauth_settings, db, ServiceClient("ghl", ghl.url), cipher)
    try:
        assert await other.after_unauthorized(LOCATION, rejected) == fresh
    finally:
        await other.http.aclose()
    assert ghl.refresh_calls() == 1
    assert await store.after_unauthorized("loc_never_installed", "x") is None


async def test_failed_refresh_is_recorded_and_visible(
    ghl: Sim, db: Database, store: GhlTokenStore, cipher: TokenCipher
) -> None:
    """R-OA-3: invalid_grant (the refresh token is dead) is a permanent error asking for a
    re-install, recorded on the row and in `statuses()`; a GHL outage is a retryable error; the
    still-valid token keeps working meanwhile; a new install clears the failure."""
    await store.exchange_code(ghl.code())
    access, refresh = await stored_tokens(db, cipher)
    assert ghl.spend_refresh_token(refresh).status_code == 200  # someone else spent it
    errors_before = OAUTH_REFRESHES.labels(outcome="error")._value.get()

    with structlog.testing.capture_logs() as captured, pytest.raises(InstallationBroken) as broken:
        await store.refresh(LOCATION, force=True)
    assert isinstance(broken.value, PermanentError)
    assert "re-install" in str(broken.value)
    assert refresh not in str(broken.value)
    assert refresh not in _all_logged(captured)
    assert OAUTH_REFRESHES.labels(outcome="error")._value.get() == errors_before + 1
    (status,) = await store.statuses()
    assert status.state == "refresh_failed"
    assert status.refresh_failed_at is not None
    assert "invalid_grant" in (status.refresh_error or "")
    assert access not in repr(status.as_dict())
    (report,) = await store.check()
    assert report.authenticated is False
    assert "re-install" in (report.reason or "")

    # Expiring soon but still valid: the current token is used rather than failing the call.
    await set_expiry(db, LOCATION, timedelta(minutes=3))
    assert await store.access_token(LOCATION) == access

    await ghl_faults(ghl, error_rate=1.0)
    with pytest.raises(TokenRefreshUnavailable) as unavailable:
        await store.refresh(LOCATION, force=True)
    assert isinstance(unavailable.value, RetryableError)
    await ghl_faults(ghl, error_rate=0.0)

    await store.exchange_code(ghl.code())  # the operator re-installs
    (status,) = await store.statuses()
    assert (status.state, status.refresh_failed_at, status.refresh_error) == ("live", None, None)


async def ghl_faults(ghl: Sim, **plan: Any) -> None:
    async with httpx.AsyncClient() as client:
        (await client.put(f"{ghl.url}/_sim/faults", json=plan)).raise_for_status()


async def test_scheduler_refreshes_tokens_expiring_soon(
    oauth_settings: Settings, ghl: Sim, db: Database, store: GhlTokenStore
) -> None:
    """R-OA-3: the scheduler's job (leader-only, like every job) refreshes the tokens that expire
    within 30 minutes and leaves the others alone."""
    assert "oauth-refresh" in [job.name for job in default_jobs(oauth_settings, db)]
    without_oauth = oauth_settings.model_copy(update={"ghl_client_id": None})
    assert "oauth-refresh" not in [job.name for job in default_jobs(without_oauth, db)]
    (report,) = await store.check()
    assert "no location installed" in (report.reason or "")
    await store.exchange_code(ghl.code(LOCATION))
    await store.exchange_code(ghl.code("loc_oauth_2"))
    await set_expiry(db, LOCATION, timedelta(minutes=20))
    assert await refresh_expiring_tokens(oauth_settings, db) == {"due": 1, "refreshed": 1, "failed": 0}
    assert ghl.refresh_calls() == 1
    assert {s.location_id: s.state for s in await store.statuses()} == {
        LOCATION: "live",
        "loc_oauth_2": "live",
    }


async def test_credentials_prefer_oauth_then_the_private_integration_token(
    oauth_settings: Settings, ghl: Sim, db: Database, store: GhlTokenStore
) -> None:
    """R-OA-3: the GHL connector's credentials use a location's OAuth token when installed, the
    PIT for GHL_LOCATION_ID otherwise (nothing to refresh on a 401), and name the settings and
    the install route when a location has neither."""
    settings = oauth_settings.model_copy(update={"ghl_api_key": SecretStr("pit-secret-token")})
    credentials = GhlCredentials(settings, GhlTokenStore(settings, db, store.http, store.cipher))
    assert await credentials.access_token("loc_test") == "pit-secret-token"
    assert await credentials.after_unauthorized("loc_test", "pit-secret-token") is None
    with pytest.raises(MissingGhlCredentials, match="oauth/start"):
        await credentials.access_token("loc_elsewhere")

    await store.exchange_code(ghl.code("loc_test"))
    oauth_token = await credentials.access_token("loc_test")
    assert oauth_token != "pit-secret-token"
    assert "pit-secret-token" not in repr(credentials)


# --- install / uninstall webhooks (R-OA-2) ---------------------------------------------------------------


async def test_install_and_uninstall_webhooks(
    oauth_settings: Settings, ghl: Sim, db: Database, store: GhlTokenStore
) -> None:
    """R-OA-2: through the worker, `INSTALL` for a location whose callback has not run is skipped
    with the reason, a company-level install is skipped, `AppInstall` after the callback is a
    success; `UNINSTALL` deletes the location's token row, and a second one is `not installed`."""

    async def run(event_type: str, payload: dict[str, Any]) -> tuple[str, str, str | None]:
        event_id = await insert_event(
            db, event_type=event_type, entity_type="app", entity_id=LOCATION, payload=payload
        )
        await Worker(oauth_settings, db, default_registry()).run_once()
        assert (await event_state(db, event_id)).status == "done"
        (row,) = await log_rows(db, event_id)
        return row.status, row.direction, row.message

    install = {"type": "INSTALL", "appId": "app1", "locationId": LOCATION, "companyId": "co1"}
    status, direction, message = await run("INSTALL", install)
    assert (status, direction) == ("skipped", "internal")
    assert message is not None
    assert "OAuth callback" in message
    status, _, message = await run("INSTALL", {"type": "INSTALL", "appId": "app1", "companyId": "co1"})
    assert status == "skipped"
    assert message is not None
    assert "company-level" in message

    await store.exchange_code(ghl.code())
    assert (await run("AppInstall", install | {"type": "AppInstall"}))[::2] == ("success", "installed")

    uninstall = {"type": "UNINSTALL", "appId": "app1", "locationId": LOCATION}
    status, _, message = await run("UNINSTALL", uninstall)
    assert status == "success"
    assert message is not None
    assert "uninstalled" in message
    assert await token_rows(db) == []
    assert (await run("AppUninstall", uninstall))[::2] == ("skipped", "not installed")

    # A late (or replayed) uninstall that happened before a re-install keeps the newer install.
    await store.exchange_code(ghl.code())
    late = uninstall | {"timestamp": (utcnow() - timedelta(minutes=5)).isoformat()}
    status, _, message = await run("UNINSTALL", late)
    assert status == "skipped"
    assert message is not None
    assert "re-installed" in message
    assert len(await token_rows(db)) == 1


# --- the key (R-SEC-5) -----------------------------------------------------------------------------------


def test_generated_key_file_is_private_and_reused(tmp_path: Path) -> None:
    """R-SEC-5: with TOKEN_ENCRYPTION_KEY unset and OAuth configured, a key is generated into
    DATA_DIR (created) with mode 0600 and a warning, and reused on the next start; without OAuth
    nothing is generated; a malformed key is a clear startup error that does not echo the key."""
    data_dir = tmp_path / "nested" / "data"

    def settings(**values: Any) -> Settings:
        base: dict[str, Any] = {"data_dir": str(data_dir), "database_url": f"sqlite:///{tmp_path}/x.db"}
        return Settings(_env_file=None, **(base | values))

    assert load_token_cipher(settings()) is None
    assert not data_dir.exists()

    configured = settings(ghl_client_id=CLIENT_ID, ghl_client_secret=CLIENT_SECRET)
    with structlog.testing.capture_logs() as captured:
        first = load_token_cipher(configured)
    assert first is not None
    path = token_key_path(configured)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [e for e in captured if e["event"] == "token_encryption_key_generated"]
    assert path.read_text().strip() not in _all_logged(captured)
    second = load_token_cipher(configured)
    assert second is not None
    assert second.decrypt(first.encrypt("secret")) == "secret"
    assert os.listdir(data_dir) == ["token-encryption.key"]

    bad_key = "definitely-not-a-fernet-key"
    with pytest.raises(TokenKeyError, match="TOKEN_ENCRYPTION_KEY is not a valid Fernet key") as error:
        load_token_cipher(settings(token_encryption_key=bad_key))
    assert bad_key not in str(error.value)
    with pytest.raises(TokenKeyError):
        create_app(settings(token_encryption_key=bad_key, auto_migrate=False), run_worker=False)


# --- CLI twins ------------------------------------------------------------------------------------------


async def test_cli_start_url_and_status(
    oauth_settings: Settings,
    ghl: Sim,
    store: GhlTokenStore,
    cipher: TokenCipher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R-OA-1: `oauth start-url` prints the start route's URL with a state the callback accepts;
    `oauth status --json` lists installed locations with expiry and refresh errors, never tokens."""
    await store.exchange_code(ghl.code())
    access, refresh = await stored_tokens(store.db, cipher)
    env = {
        "DATABASE_URL": oauth_settings.database_url,
        "GHL_CLIENT_ID": CLIENT_ID,
        "GHL_CLIENT_SECRET": CLIENT_SECRET,
        "GHL_OAUTH_AUTHORIZE_URL": oauth_settings.ghl_oauth_authorize_url,
        "TOKEN_ENCRYPTION_KEY": cipher_key(oauth_settings),
        "PUBLIC_BASE_URL": PUBLIC_URL,
        "LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        started = runner.invoke(cli.app, ["oauth", "start-url"])
        assert started.exit_code == 0, started.output
        query = parse_qs(urlsplit(started.stdout.strip()).query)
        verify_state(cipher, query["state"][0])
        assert query["client_id"] == [CLIENT_ID]

        listed = await asyncio.to_thread(runner.invoke, cli.app, ["oauth", "status", "--json"])
        assert listed.exit_code == 0, listed.output
        assert '"location_id": "loc_oauth_1"' in listed.stdout
        assert '"state": "live"' in listed.stdout
        for secret in (access, refresh, CLIENT_SECRET):
            assert secret not in listed.output
            assert secret not in started.output
    finally:
        get_settings.cache_clear()
        # The CLI configured logging onto the runner's (now closed) stderr: point it back.
        configure_logging(oauth_settings.log_level, oauth_settings.log_format)


def cipher_key(settings: Settings) -> str:
    assert settings.token_encryption_key is not None
    return settings.token_encryption_key.get_secret_value()


async def test_ghl_client_refreshes_once_on_401_and_repeats_the_call(
    oauth_settings: Settings, ghl: Sim, db: Database, store: GhlTokenStore, cipher: TokenCipher
) -> None:
    """R-OA-3 through the connector: GHL refuses an (expired early) OAuth token; the GHL client
    refreshes once, repeats the call with the new token, and the caller sees only the answer."""
    from df_middleware.connectors.ghl import GhlClient
    from df_middleware.connectors.ratelimit import SlidingWindowLimiter

    await store.exchange_code(ghl.code())
    old_access, _ = await stored_tokens(db, cipher)
    ghl.sim.expire_access_token(old_access)
    ghl.sim.add_user(LOCATION, "Alice Agent", "alice@example.com")
    client = GhlClient(
        ServiceClient("ghl", ghl.url, limiter=SlidingWindowLimiter(100, 10.0)),
        GhlCredentials(oauth_settings, store),
        LOCATION,
    )
    try:
        users = await client.list_users()
    finally:
        await client.aclose()
    assert [u.email for u in users] == ["alice@example.com"]
    assert ghl.refresh_calls() == 1
    new_access, _ = await stored_tokens(db, cipher)
    assert new_access != old_access


async def test_a_cancelled_refresh_still_stores_the_rotated_tokens(
    oauth_settings: Settings,
    ghl: Sim,
    db: Database,
    store: GhlTokenStore,
    cipher: TokenCipher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R-OA-3: once GHL has rotated the single-use refresh token, the new pair reaches the database
    even when the caller is cancelled mid-call (a worker shutting down); otherwise the next refresh
    would spend a dead token and the installation would be broken.

    The simulator holds its answer after rotating until the caller is cancelled, so the cancel
    lands exactly there, however slow the machine."""
    await store.exchange_code(ghl.code())
    _, old_refresh = await stored_tokens(db, cipher)
    rotated, answer = threading.Event(), threading.Event()
    exchange_token = ghl.sim.exchange_token

    def rotate_then_hold(form: Mapping[str, str]) -> Any:
        tokens = exchange_token(form)
        rotated.set()
        answer.wait(timeout=60)  # GHL has rotated the tokens; its answer is not sent yet
        return tokens

    monkeypatch.setattr(ghl.sim, "exchange_token", rotate_then_hold)
    caller = asyncio.create_task(store.refresh(LOCATION, force=True))
    assert await asyncio.to_thread(rotated.wait, 60), "the token request never reached GHL"
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    answer.set()
    await store.wait_for_refreshes()
    _, new_refresh = await stored_tokens(db, cipher)
    assert new_refresh != old_refresh
    await store.refresh(LOCATION, force=True)  # spends the stored (new) refresh token: accepted
    assert ghl.refresh_calls() == 2


async def test_a_refused_fresh_token_does_not_refresh_again_and_again(
    oauth_settings: Settings, ghl: Sim, db: Database, store: GhlTokenStore, cipher: TokenCipher
) -> None:
    """A 401 that a refresh cannot fix (GHL also says 401 for a missing scope) costs at most one
    refresh per location per minute, not one per API call."""
    await store.exchange_code(ghl.code())
    first, _ = await stored_tokens(db, cipher)
    refreshed = await store.after_unauthorized(LOCATION, first)
    assert refreshed is not None
    assert refreshed != first
    again = await store.after_unauthorized(LOCATION, refreshed)  # the fresh token is refused too
    assert again == refreshed  # no second refresh: the caller surfaces the 401
    assert ghl.refresh_calls() == 1
