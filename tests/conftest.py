"""Shared fixtures: a real database on both engines, settings, and signing keys.

- `database_url` is parametrised over SQLite (a migrated template file copied per test) and
  PostgreSQL (one private database per test session, migrated once, truncated before each
  test). PostgreSQL comes from TEST_DATABASE_URL or 127.0.0.1:5432. When it cannot be reached
  the PostgreSQL half is skipped locally, but with CI=true it fails: CI never goes green on the
  SQLite half alone.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from df_middleware.config import Settings
from df_middleware.db.migrate import upgrade_sync
from df_middleware.db.models import Base
from df_middleware.db.session import Database
from df_middleware.sync.agent_field import AgentField
from df_middleware.sync.list_registry import CallListRegistryStore

#: The sync tests' world (service + simulators + worker) is a fixture available to every test.
pytest_plugins = ["tests.sync_world", "tests.worker_processes"]

PG_ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: The shared contract examples live beside the repository (`../shared/contracts`), as in CI.
CONTRACTS = Path(
    os.environ.get("DF_CONTRACTS_DIR", Path(__file__).resolve().parents[2] / "shared" / "contracts")
)


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


async def _pg_exec(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A private, migrated PostgreSQL database for this test session."""
    name = f"dfm_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_exec(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the PostgreSQL half must run)")
        pytest.skip(message)
    url = _pg_url(name)
    upgrade_sync(url)
    yield url
    asyncio.run(_pg_exec(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; each test gets a copy (migrating per test would be slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_sync(f"sqlite:///{path}")
    return path


_DATA_TABLES = [t.name for t in Base.metadata.sorted_tables]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database of the parametrised engine."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "test.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("pg_database_url")
    asyncio.run(_pg_exec(url, f"TRUNCATE {', '.join(_DATA_TABLES)}"))
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


# --- keys and signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Test-only webhook keys (we cannot sign as GHL does, so we point the settings at our own)."""

    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: str
    ed25519_private: ed25519.Ed25519PrivateKey
    ed25519_public_pem: str

    def rsa_sign(self, body: bytes) -> str:
        signature = self.rsa_private.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode()

    def ed25519_sign(self, body: bytes) -> str:
        return base64.b64encode(self.ed25519_private.sign(body)).decode()


def _public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )


@pytest.fixture(autouse=True)
def _forget_remote_ids() -> None:
    """Every test starts with a new GHL and Aloware: the process-wide caches of their ids (the
    agent custom field's definition id, Aloware's power-dialer list ids) are forgotten, so no
    test reads another test's simulator's ids."""
    AgentField.forget()
    CallListRegistryStore.forget()


@pytest.fixture(scope="session")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return Keys(rsa_key, _public_pem(rsa_key), ed_key, _public_pem(ed_key))


TEST_SECRETS = {
    "ghl_location_id": "loc_test",
    "ghl_workflow_webhook_secret": "wf-secret-123",
    "aloware_webhook_basic_user": "aloware",
    "aloware_webhook_basic_pass": "basic-pass-456",
    "aloware_webhook_bearer_token": "bearer-789",
    "verity_webhook_secret": "verity-secret-abc",
}


@pytest.fixture
def make_settings(database_url: str, keys: Keys) -> Callable[..., Settings]:
    """Settings for a test: the test database, test keys and secrets, overridable per call."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "ghl_webhook_public_key": keys.rsa_public_pem,
            "ghl_webhook_ed25519_public_key": keys.ed25519_public_pem,
            "poll_seconds": 0.05,
            "retry_base_seconds": 1.0,
            "log_format": "json",
            **TEST_SECRETS,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory


@pytest.fixture
def contracts() -> Path:
    """The shared contract examples; tests that read them skip when the folder is absent."""
    if not CONTRACTS.exists():
        pytest.skip(f"contracts folder not found at {CONTRACTS}")
    return CONTRACTS
