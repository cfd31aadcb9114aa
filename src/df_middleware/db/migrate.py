"""Apply and inspect the Alembic migration history from code (`df-middleware migrate`, `serve`).

Every upgrade runs in one transaction on both engines (PostgreSQL's DDL is transactional;
on SQLite the migration environment issues BEGIN IMMEDIATE itself, see
`session.install_sqlite_transactions`), so a failed or interrupted upgrade leaves the schema
where it was, never half applied.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

from df_middleware.db.session import (
    Database,
    DatabaseUnavailable,
    database_label,
    explain_unavailable,
    sqlite_location_problem,
    sqlite_path,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The PostgreSQL advisory lock that serialises concurrent upgrades (taken by migrations/env.py).
MIGRATION_LOCK_ID = 0x0DF0_0001
#: What an operator runs to bring the schema to head.
MIGRATE_COMMAND = "df-middleware migrate"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str | None:
    return _scripts().get_current_head()


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Runs its own event loop: call from a thread in async code."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade_sync, database_url, revision)


async def current_revision(conn: AsyncConnection) -> str | None:
    def _read(sync_conn: object) -> str | None:
        context = MigrationContext.configure(sync_conn, opts={"transactional_ddl": True})  # type: ignore[arg-type]
        return context.get_current_revision()

    return await conn.run_sync(_read)


# --- the schema's state, as the command line reports and acts on it -----------------------------


class SchemaNotCurrent(Exception):
    """The schema is missing or behind and may not be migrated here; the message (one line)
    says what to run."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands against this version's migrations."""

    #: The database, for messages (`session.database_label`: never a password).
    where: str
    current: str | None
    head: str | None
    #: False for a SQLite file that does not exist yet (nothing was created to find that out).
    exists: bool = True

    @property
    def is_current(self) -> bool:
        return self.exists and self.current == self.head

    @property
    def is_known(self) -> bool:
        """False when the database was migrated by a newer version than this one."""
        if self.current is None:
            return True
        try:
            return _scripts().get_revision(self.current) is not None
        except Exception:  # alembic raises for an id it cannot resolve
            return False

    def describe(self) -> str:
        if not self.exists:
            return "no database file yet"
        if self.current is None:
            return "no schema yet"
        if not self.is_known:
            return f"at migration {self.current}, unknown to this version (whose head is {self.head})"
        if self.current != self.head:
            return f"at migration {self.current}, head is {self.head}"
        return f"at migration {self.current} (head)"

    def not_current(self) -> SchemaNotCurrent:
        """The error of a command that needs the schema and may not migrate it (AUTO_MIGRATE is
        false, or the database is newer than this version)."""
        if not self.is_known:
            return SchemaNotCurrent(
                f"{self.where}: {self.describe()}: it was migrated by a newer df-middleware"
            )
        return SchemaNotCurrent(
            f"{self.where}: {self.describe()}; run `{MIGRATE_COMMAND}` (AUTO_MIGRATE is false)"
        )


async def read_schema_state(db: Database) -> SchemaState:
    """The schema's state. A SQLite file that does not exist is reported as such, not created.

    Raises `DatabaseUnavailable` (one line for the operator) when the database cannot be used.
    """
    head, where = head_revision(), database_label(db.database_url)
    problem = sqlite_location_problem(db.database_url)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    path = sqlite_path(db.database_url)
    if path is not None and not path.exists():
        return SchemaState(where, current=None, head=head, exists=False)
    try:
        async with db.engine.connect() as conn:
            current = await current_revision(conn)
    except Exception as exc:
        _raise_if_unavailable(db.database_url, exc)
        raise
    return SchemaState(where, current=current, head=head)


async def upgrade_to_head(database_url: str) -> None:
    """`upgrade`, with a database that cannot be used reported as `DatabaseUnavailable`."""
    problem = sqlite_location_problem(database_url)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    try:
        await upgrade(database_url)
    except Exception as exc:
        _raise_if_unavailable(database_url, exc)
        raise


def upgrade_to_head_sync(database_url: str) -> None:
    """`upgrade_to_head` for synchronous callers (`df-middleware migrate`)."""
    asyncio.run(upgrade_to_head(database_url))


def _raise_if_unavailable(database_url: str, exc: Exception) -> None:
    explained = explain_unavailable(database_url, exc)
    if explained is not None:
        raise explained from exc
