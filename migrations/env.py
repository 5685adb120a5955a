"""Alembic environment: migrations run on the relay's own connection settings.

The schema that holds the outbox comes from ``config.attributes["schema"]``; the database URL
from ``config.attributes["url"]`` (online) or is not needed at all (``--sql``).

The revision lives in ``relay_alembic_version``, never in the ``alembic_version`` that an
application's own Alembic keeps, often in the same schema: relay migrates whatever that one
says, before or after it. An installation made by an older relay, whose revision is still in
``alembic_version``, is carried over first (``relay.schema.carry_over_sql``).

Online, ``config.attributes`` gets back ``role`` (the role that migrated), ``before`` (the
revision found, after any carry-over) and ``carried_over``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relay.database import sqlalchemy_url
from relay.errors import PrivilegeMissing
from relay.schema import (
    MIGRATION_LOCK_KEY,
    REVISIONS,
    VERSION_TABLE,
    carry_over_sql,
    create_schema_sql,
)

config = context.config
schema: str = config.attributes["schema"]
OPTIONS: dict[str, Any] = {
    "version_table": VERSION_TABLE,
    "version_table_schema": schema,
    "transactional_ddl": True,
}


def run_offline() -> None:
    context.configure(url="postgresql://", dialect_name="postgresql", literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.execute(create_schema_sql(schema))
        context.execute(carry_over_sql(schema))
        context.run_migrations()


def _create_schema_if_missing(connection: Connection, role: str) -> None:
    """CREATE SCHEMA only when there is none: a role that owns the schema but may not create
    schemas in the database migrates all the same."""
    exists, may_create, database = connection.execute(
        text(
            "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = :schema), "
            "has_database_privilege(current_database(), 'CREATE'), current_database()"
        ),
        {"schema": schema},
    ).one()
    if exists:
        return
    if not may_create:
        raise PrivilegeMissing(
            f"schema \"{schema}\" does not exist and the role '{role}' may not create it "
            f'(no CREATE on database "{database}"): have it created for the role '
            f"(CREATE SCHEMA {schema} AUTHORIZATION {role}), see docs/database.md"
        )
    connection.execute(text(f'CREATE SCHEMA "{schema}"'))


def _revision(connection: Connection) -> str | None:
    table = f'"{schema}".{VERSION_TABLE}'
    if connection.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        return None
    found: str | None = connection.execute(text(f"SELECT version_num FROM {table}")).scalar()
    return found


def _migrate(connection: Connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        # Several replicas may start at once and all run 'relay migrate': the first takes the
        # lock and migrates, the others wait here and then find the schema at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        role: str = connection.execute(text("SELECT current_user")).scalar_one()
        config.attributes["role"] = role
        _create_schema_if_missing(connection, role)
        versioned = _revision(connection) is not None
        connection.exec_driver_sql(carry_over_sql(schema))
        before = _revision(connection)
        config.attributes["before"] = before
        config.attributes["carried_over"] = not versioned and before is not None
        if before is not None and before not in REVISIONS:
            return  # migrated by a newer relay, which this one runs against as it is
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
