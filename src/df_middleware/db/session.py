"""Engines, sessions and the few places where SQLite and PostgreSQL differ.

Only this package knows dialects. Everything else asks a `Database` for a session or an
autocommit connection and uses SQLAlchemy Core/ORM constructs that compile on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

#: How long a request waits for a connection or a lock before giving up (then 503).
CONNECT_TIMEOUT_SECONDS = 5.0
SQLITE_BUSY_TIMEOUT_MS = 30_000


def async_url(database_url: str) -> URL:
    """Turn the user-facing DATABASE_URL into the async driver URL.

    `postgresql://` and `postgres://` use asyncpg, `sqlite://` uses aiosqlite. libpq's `sslmode`
    query parameter is translated to asyncpg's `ssl`.
    """
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        query = dict(url.query)
        sslmode = query.pop("sslmode", None)
        if sslmode is not None:
            query["ssl"] = sslmode
        return url.set(drivername="postgresql+asyncpg", query=query)
    raise ValueError(f"unsupported database: {backend}")


def asyncpg_dsn(database_url: str) -> str:
    """A plain `postgresql://` DSN for a raw asyncpg connection (LISTEN, benchmarks)."""
    url = async_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def is_sqlite(database_url: str) -> bool:
    return async_url(database_url).get_backend_name() == "sqlite"


def sqlite_path(database_url: str) -> Path | None:
    url = async_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    """WAL, a busy timeout and explicit BEGIN IMMEDIATE for every transaction.

    pysqlite's own transaction handling starts transactions lazily and as DEFERRED, which turns
    a read-then-write transaction into an immediate SQLITE_BUSY under concurrency. Taking the
    write lock at BEGIN makes SQLite wait (busy timeout) instead, serialising writers cleanly.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The service's handle on its database: one engine, a session factory and dialect facts."""

    def __init__(
        self,
        database_url: str,
        *,
        pool_size: int = 25,
        pool_timeout: float = CONNECT_TIMEOUT_SECONDS,
        echo: bool = False,
    ) -> None:
        self.database_url = database_url
        self.url = async_url(database_url)
        self.dialect = self.url.get_backend_name()
        # hide_parameters: a failed statement's message must not carry payloads (PII) into logs.
        # No overflow: connections opened and closed per request under load cost PostgreSQL far
        # more than waiting for a pooled one (docs/benchmarks.md); past the timeout, 503.
        kwargs: dict[str, Any] = {
            "echo": echo,
            "hide_parameters": True,
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": pool_timeout,
        }
        if self.dialect == "postgresql":
            kwargs.update(connect_args={"timeout": CONNECT_TIMEOUT_SECONDS, "command_timeout": 60})
        else:
            path = sqlite_path(database_url)
            if path is None:  # in-memory: one shared connection, no pool to size
                for key in ("pool_size", "max_overflow", "pool_timeout"):
                    kwargs.pop(key)
            else:
                # Unusable paths surface as OperationalError on first use (then 503), not here.
                with contextlib.suppress(OSError):
                    path.parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            _install_sqlite_pragmas(self.engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection where each statement commits on its own: one round trip per statement.

        Used on hot paths (webhook ingest) where a transaction would add BEGIN/COMMIT trips.
        On SQLite a lone statement is its own transaction anyway.
        """
        async with self.engine.connect() as conn:
            if self.is_postgres:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
            else:
                yield conn
                await conn.commit()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def is_unavailable(exc: BaseException) -> bool:
    """True when an exception means 'the database cannot be reached or is busy right now'."""
    if isinstance(exc, OperationalError | PoolTimeout | asyncio.TimeoutError | ConnectionError | OSError):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or "connection" in str(exc.orig).lower()
    return False
