"""Engines, sessions and the few places where SQLite and PostgreSQL differ.

Only this package knows dialects. Everything else asks a `Database` for a session or an
autocommit connection and uses SQLAlchemy Core/ORM constructs that compile on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
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


def install_sqlite_transactions(engine: AsyncEngine, *, foreign_keys: bool = True) -> None:
    """WAL, a busy timeout and explicit BEGIN IMMEDIATE for every transaction.

    pysqlite's own transaction handling starts transactions lazily and as DEFERRED, which turns
    a read-then-write transaction into an immediate SQLITE_BUSY under concurrency. Taking the
    write lock at BEGIN makes SQLite wait (busy timeout) instead, serialising writers cleanly.
    It also never opens a transaction before DDL, so without this a migration's CREATE TABLE
    commits on its own and a failed or interrupted migration is left half applied: the migration
    environment installs this too (without `foreign_keys`, which would make batch table rebuilds
    delete rows).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if foreign_keys:
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
            # An unusable path surfaces as OperationalError on first use (then 503), not here. A
            # missing directory is not created: a mistyped path must not start a second, empty
            # database while the real one sits elsewhere (`sqlite_location_problem` names it).
            if sqlite_path(database_url) is None:  # in-memory: one shared connection, no pool to size
                for key in ("pool_size", "max_overflow", "pool_timeout"):
                    kwargs.pop(key)
            kwargs.update(connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            install_sqlite_transactions(self.engine)
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


#: PostgreSQL's "operator intervention" codes: shutting down (admin or crash) or not accepting
#: connections yet ("the database system is starting up"): a restart in progress, not a bug.
_RESTARTING_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def is_unavailable(exc: BaseException) -> bool:
    """True when an exception means 'the database cannot be reached or is busy right now',
    including a PostgreSQL shutting down or starting up (break14 finding 7: those reached ingest
    as a plain DBAPIError and became an unhandled 500 instead of 503 with Retry-After)."""
    if isinstance(exc, OperationalError | PoolTimeout | asyncio.TimeoutError | ConnectionError | OSError):
        return True
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        codes = {
            getattr(o, attr, None)
            for o in (orig, getattr(orig, "__cause__", None))
            for attr in ("pgcode", "sqlstate")
        }
        if codes & _RESTARTING_SQLSTATES:
            return True
        return exc.connection_invalidated or "connection" in str(orig).lower()
    return False


# --- telling an operator what is wrong -----------------------------------------------------------


class DatabaseUnavailable(Exception):
    """The database cannot be used. The message is one line for an operator: where the database
    is (host and port, or the file; never a password) and what to check.

    `reached` is True when the server answered but refused us (unknown database or role, bad
    password): `df-middleware check` reports that as reachable but not authenticated.
    """

    def __init__(self, message: str, *, reached: bool = False) -> None:
        super().__init__(message)
        self.reached = reached


def database_label(database_url: str) -> str:
    """Where the database is, for messages: `PostgreSQL at host:port` or `SQLite file PATH`."""
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(database_url)
        return "an in-memory SQLite database" if path is None else f"SQLite file {path.absolute()}"
    if url.host:
        return f"PostgreSQL at {url.host}:{url.port or 5432}"
    return "PostgreSQL on the local socket"


def sqlite_location_problem(database_url: str) -> str | None:
    """Why the SQLite file of `database_url` cannot be opened or created, or None.

    Checked before connecting because SQLite itself only says "unable to open database file",
    and because a read-only command must fail without creating anything.
    """
    path = sqlite_path(database_url)
    if path is None:
        return None
    where = path.absolute()
    if where.is_dir():
        return f"DATABASE_URL names a directory, not a SQLite file: {where}"
    directory = where.parent
    if not directory.exists():
        return (
            f"the directory of the SQLite database does not exist: {directory} "
            "(create it, or fix DATABASE_URL)"
        )
    if not directory.is_dir():
        return f"cannot use the SQLite database {where}: {directory} is not a directory (fix DATABASE_URL)"
    # SQLite writes its -wal and -shm files beside the database: the directory must be writable.
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot use the SQLite database {where}: the directory {directory} is not writable"
    if where.exists() and not os.access(where, os.R_OK | os.W_OK):
        return f"cannot read and write the SQLite database {where}: check its permissions"
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver error it wraps, and what caused those, each once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend([getattr(current, "orig", None), current.__cause__, current.__context__])


def explain_unavailable(database_url: str, exc: BaseException) -> DatabaseUnavailable | None:
    """An operator's one-line account of `exc` when it means the database cannot be used (down,
    unknown host, refused credentials, no such database, an unusable SQLite file); None when it
    is something else (a bug deserves its traceback)."""
    where = database_label(database_url)
    url = async_url(database_url)
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.InvalidPasswordError):
            return DatabaseUnavailable(
                f"{where} refused the password of user {url.username!r}: check DATABASE_URL",
                reached=True,
            )
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return DatabaseUnavailable(
                f"{where} refused user {url.username!r} ({cause}): check DATABASE_URL's user "
                "and the server's pg_hba.conf",
                reached=True,
            )
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return DatabaseUnavailable(
                f"{where} has no database {url.database!r}: create it (createdb {url.database}) "
                "or fix DATABASE_URL",
                reached=True,
            )
        if isinstance(cause, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
            return DatabaseUnavailable(f"{where} does not accept connections now ({cause}): retry later")
        if isinstance(cause, socket.gaierror):
            return DatabaseUnavailable(
                f"cannot find the database host {url.host!r} ({cause.strerror}): check DATABASE_URL's host"
            )
        if isinstance(cause, TimeoutError | asyncio.TimeoutError | PoolTimeout):
            return DatabaseUnavailable(
                f"{where} did not answer in time: check DATABASE_URL's host and port, "
                "and that no firewall is in the way"
            )
        if isinstance(cause, ConnectionRefusedError):
            return DatabaseUnavailable(
                f"cannot connect to {where}: connection refused. Is PostgreSQL running there? "
                "Check DATABASE_URL's host and port"
            )
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause) or type(cause).__name__
            return DatabaseUnavailable(f"cannot connect to {where}: {reason}. Check DATABASE_URL")
        if isinstance(cause, sqlite3.DatabaseError):
            explanation = _sqlite_explanation(database_url, where, cause)
            if explanation is not None:
                return DatabaseUnavailable(explanation)
    return None


def _sqlite_explanation(database_url: str, where: str, error: sqlite3.DatabaseError) -> str | None:
    """The file-level SQLite failures an operator can act on (not SQL errors such as a missing
    table, which are the schema's business)."""
    message = str(error).lower()
    if "locked" in message or "busy" in message:
        return (
            f"{where} is locked by another process (waited {SQLITE_BUSY_TIMEOUT_MS // 1000} s): "
            "retry when it is done"
        )
    if "not a database" in message:
        return f"{where} is not a SQLite database: fix DATABASE_URL"
    if "readonly" in message or "read-only" in message:
        return f"{where} is read-only: check the permissions of the file and its directory"
    if "disk" in message or "unable to open" in message:
        return sqlite_location_problem(database_url) or f"cannot use {where}: {error}"
    return None
