"""Alembic environment: migrations run on the relay's own connection settings.

The schema that holds the outbox comes from ``config.attributes["schema"]``; the database URL
from ``config.attributes["url"]`` (online) or is not needed at all (``--sql``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relay.database import MIGRATION_LOCK_KEY, sqlalchemy_url

config = context.config
schema: str = config.attributes["schema"]


def run_offline() -> None:
    context.configure(
        url="postgresql://",
        dialect_name="postgresql",
        literal_binds=True,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, version_table_schema=schema, transactional_ddl=True)
    with context.begin_transaction():
        # Several replicas may start at once and all run 'relay migrate': the first takes the
        # lock and migrates, the others wait here and then find the schema at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(sqlalchemy_url(config.attributes["url"]))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
