"""The database, as commands need it: opened with the pool settings, its schema brought to head
when AUTO_MIGRATE allows (else a one-line "run `df-middleware migrate`"), and a database that
cannot be used reported as one line instead of a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from df_middleware.cli.configuration import load_settings
from df_middleware.cli.output import command_log, fail, start_logging
from df_middleware.config import Settings

if TYPE_CHECKING:
    from df_middleware.db.migrate import SchemaState
    from df_middleware.db.session import Database

T = TypeVar("T")


def open_database(settings: Settings) -> Database:
    from df_middleware.db.session import Database

    return Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
    )


async def prepare_schema(db: Database, settings: Settings, *, existing_only: bool = False) -> SchemaState:
    """Bring the schema to head when AUTO_MIGRATE allows it, else insist that it is there.

    `existing_only`: a database that was never migrated (no SQLite file, no schema) is refused,
    not created: for commands whose answer would mislead on a new, empty database (an operator's
    opt-out recorded where the service never reads it, "no decision recorded" about a number the
    service has opted out).

    Raises `DatabaseUnavailable` or `SchemaNotCurrent`, whose messages are one line for an operator.
    """
    from df_middleware.db.migrate import SchemaNotCurrent, read_schema_state, upgrade_to_head
    from df_middleware.db.session import database_label

    state = await read_schema_state(db)
    if state.is_current:
        return state
    if existing_only and (not state.exists or state.current is None):
        raise SchemaNotCurrent(
            f"{state.where}: {state.describe()}: not the service's database, nothing recorded or "
            "created; run this where the service runs (its .env or DATABASE_URL), or make the "
            "database with `df-middleware migrate` first"
        )
    if not state.is_known or not settings.auto_migrate:
        raise state.not_current()
    log = command_log()
    log.info("database.migrating", database=database_label(db.database_url), schema=state.describe())
    await upgrade_to_head(db.database_url)
    log.info("database.migrated", revision=state.head)
    return state


def run_with_database(main: Coroutine[Any, Any, T], database_url: str) -> T:
    """Run `main`; a database that cannot be used, or has no current schema, is one line."""
    from df_middleware.db.migrate import SchemaNotCurrent
    from df_middleware.db.session import DatabaseUnavailable, explain_unavailable

    try:
        return asyncio.run(main)
    except (DatabaseUnavailable, SchemaNotCurrent) as exc:
        fail(str(exc))
    except Exception as exc:
        explained = explain_unavailable(database_url, exc)
        if explained is None:
            raise
        fail(str(explained))


def run_on_database(factory: Callable[[Any], Awaitable[T]], *, existing_only: bool = False) -> T:
    """Open the database (migrating it first when AUTO_MIGRATE allows; `existing_only`: see
    `prepare_schema`), run one coroutine with it, close the database."""
    settings = load_settings()
    start_logging(settings)

    async def main() -> T:
        db = open_database(settings)
        try:
            await prepare_schema(db, settings, existing_only=existing_only)
            return await factory(db)
        finally:
            await db.dispose()

    return run_with_database(main(), settings.database_url)
