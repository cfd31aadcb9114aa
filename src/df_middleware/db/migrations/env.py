"""Alembic environment: runs the one migration history on SQLite or PostgreSQL.

The URL comes from the Alembic config (`sqlalchemy.url`, set by `df_middleware.db.migrate`).
On PostgreSQL an advisory lock serialises concurrent starts of several servers and workers.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from df_middleware.db.migrate import MIGRATION_LOCK_ID
from df_middleware.db.models import Base
from df_middleware.db.session import async_url, install_sqlite_transactions

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # The whole upgrade is one transaction on SQLite too (alembic assumes SQLite cannot do
        # transactional DDL; it can, once BEGIN is ours): never half applied, and concurrent
        # starts serialise on the write lock taken before the version is read.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = async_url(config.get_main_option("sqlalchemy.url") or "")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    if url.get_backend_name() == "sqlite":
        install_sqlite_transactions(engine, foreign_keys=False)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
                await connection.commit()
            try:
                await connection.run_sync(_run)
            finally:
                if connection.dialect.name == "postgresql":
                    await connection.execute(text(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"))
                    await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
