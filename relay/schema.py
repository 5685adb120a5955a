"""The relay's schema: its Alembic migrations and revisions, the version table of its own, the
state a schema is found in, and the grants each role needs (docs/database.md).

Alembic is imported where it is used: it costs most of a CLI command's start-up otherwise;
``relay run`` checks the schema with the revisions listed here.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import asyncpg
import structlog

from relay.database import (
    CONNECTION_ERRORS,
    DATABASE_ERRORS,
    GRANTS_DOC,
    asyncpg_dsn,
    describe_connection_error,
    describe_database_error,
    postgres_error,
    privilege_error,
    role_in,
)
from relay.errors import PrivilegeMissing, SchemaBehind, SchemaNotReady
from relay.names import TABLES

if TYPE_CHECKING:
    from alembic.config import Config

log = structlog.get_logger("relay.schema")

# Arbitrary, fixed: the advisory lock that serialises concurrent 'relay migrate' runs.
MIGRATION_LOCK_KEY = 7_261_690_001


def _alembic_config(url: str | None, schema: str) -> Config:
    from alembic.config import Config

    config = Config()
    location = Path(str(resources.files("relay.migrations")))
    config.set_main_option("script_location", str(location))
    config.attributes["url"] = url
    config.attributes["schema"] = schema
    return config


# relay keeps its revision in a version table of its own. An application's own Alembic keeps
# its revision in "alembic_version", often in the same schema; sharing that table made each
# read the other's revision as its own.
VERSION_TABLE = TABLES[-1]
# Where relays before this one kept it (see carry_over_sql).
SHARED_VERSION_TABLE = "alembic_version"
# Tables every relay schema has had since its first revision: an application whose Alembic
# happens to be at a revision named like one of relay's has not got them.
RELAY_TABLES = ("outbox", "relay_pause")


@dataclass(frozen=True)
class Migrated:
    """What 'relay migrate' found and left."""

    before: str | None  # the revision it found (None: no relay objects yet)
    revision: str  # the revision it left
    carried_over: bool  # it moved relay's revision out of the shared alembic_version

    @property
    def newer(self) -> bool:
        """The schema was migrated by a newer relay; nothing was done."""
        return self.revision not in REVISIONS

    def what_happened(self) -> str:
        """Created, upgraded (from which revision) or already current."""
        if self.before is None:
            return "created relay's tables in it"
        if self.before != self.revision:
            return f"upgraded from revision {self.before}"
        return "already current, nothing to do"


def migrate(url: str, schema: str) -> Migrated:
    """Upgrade the schema to head; a no-op when current (or migrated by a newer relay); safe
    to run from several replicas. Raises PrivilegeMissing naming a right the role lacks."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    config = _alembic_config(url, schema)
    try:
        command.upgrade(config, "head")
    except (*DATABASE_ERRORS, DBAPIError) as error:
        original = postgres_error(error)
        if isinstance(original, asyncpg.InsufficientPrivilegeError):
            role = config.attributes.get("role") or role_in(url)
            raise privilege_error(original, role, "migration grants") from None
        raise describe_connection_error(url, error) from None
    before: str | None = config.attributes["before"]
    revision = head_revision() if before is None or before in REVISIONS else before
    return Migrated(before, revision, carried_over=config.attributes["carried_over"])


def create_schema_sql(schema: str) -> str:
    """CREATE SCHEMA only when it is missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the
    database even when the schema exists, which a role that owns the schema may not have."""
    return f"""DO $relay$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{schema}') THEN
        CREATE SCHEMA "{schema}";
    END IF;
END
$relay$"""


def carry_over_sql(schema: str) -> str:
    """Move relay's revision from the shared alembic_version into relay_alembic_version.

    Relays before this one kept their revision in ``alembic_version``, the table an
    application's own Alembic uses. It is relay's revision when the schema has no
    relay_alembic_version yet, has relay's tables, and alembic_version holds one of relay's
    revisions. The row is copied; alembic_version is dropped only when it held nothing else
    (it was then relay's alone), and left as it is otherwise. A no-op on any other schema.
    """
    s = schema
    revisions = ", ".join(f"'{revision}'" for revision in REVISIONS)
    tables = "\n       ".join(
        f"AND to_regclass('\"{s}\".{table}') IS NOT NULL" for table in RELAY_TABLES
    )
    return f"""DO $relay$
BEGIN
    IF to_regclass('"{s}".{VERSION_TABLE}') IS NULL
       AND to_regclass('"{s}".{SHARED_VERSION_TABLE}') IS NOT NULL
       {tables} THEN
        IF EXISTS (SELECT FROM "{s}".{SHARED_VERSION_TABLE} WHERE version_num IN ({revisions})) THEN
            CREATE TABLE "{s}".{VERSION_TABLE} (
                version_num VARCHAR(32) NOT NULL,
                CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num));
            INSERT INTO "{s}".{VERSION_TABLE} (version_num)
                SELECT version_num FROM "{s}".{SHARED_VERSION_TABLE}
                WHERE version_num IN ({revisions});
            IF NOT EXISTS (
                SELECT FROM "{s}".{SHARED_VERSION_TABLE} WHERE version_num NOT IN ({revisions})
            ) THEN
                DROP TABLE "{s}".{SHARED_VERSION_TABLE};
            END IF;
        END IF;
    END IF;
END
$relay$"""


def migration_sql(schema: str, start: str | None = None) -> str:
    """The SQL 'relay migrate' would run, for a DBA to review and apply by hand: from an empty
    schema, or from revision ``start`` (an installation already at that revision)."""
    from alembic import command

    buffer = io.StringIO()
    config = _alembic_config(None, schema)
    config.output_buffer = buffer
    with redirect_stdout(buffer):
        command.upgrade(config, f"{start}:head" if start else "head", sql=True)
    return buffer.getvalue()


def downgrade(url: str, schema: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(_alembic_config(url, schema), revision)


# This relay's migrations, newest first. Kept here so that `relay run` checks the schema without
# importing Alembic and SQLAlchemy (0.5 s and 17 MB per start); a test holds it equal to the
# history in migrations/.
REVISIONS = ("0009", "0008", "0007", "0006", "0005", "0004", "0003", "0002", "0001")


def alembic_revisions() -> list[str]:
    """The revisions in migrations/, newest first, as Alembic reads them."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(None, "public"))
    return [revision.revision for revision in script.walk_revisions()]


def known_revisions() -> list[str]:
    """This relay's revisions, newest first."""
    return list(REVISIONS)


def head_revision() -> str:
    return known_revisions()[0]


# The schema as the relay finds it, read without Alembic ---------------------------------------


@dataclass(frozen=True)
class SchemaState:
    """What a schema holds of relay's, as far as the connected role may see."""

    schema: str
    role: str
    exists: bool = False  # the schema
    usable: bool = False  # the role has USAGE on it
    versioned: bool = False  # relay_alembic_version exists
    readable: bool = False  # and the role may read it
    revision: str | None = None  # its revision
    shared: bool = False  # an older relay's layout: relay's tables, no relay_alembic_version
    shared_revision: str | None = None  # relay's revision in alembic_version, when readable

    @property
    def current(self) -> str:
        """The revision found, in words: '0001', '0002 in alembic_version' or 'none'."""
        if self.shared:
            where = f"in {SHARED_VERSION_TABLE}, the application's Alembic table"
            return f"{self.shared_revision or 'unknown'} {where}"
        return self.revision or "none"

    @property
    def at_head(self) -> bool:
        return self.revision == head_revision()

    @property
    def newer(self) -> bool:
        """Migrated by a newer relay: this one runs against it (migrations only add)."""
        return self.revision is not None and self.revision not in REVISIONS

    def missing_right(self) -> PrivilegeMissing | None:
        """The right to see the schema's revision, when the role lacks it."""
        if self.exists and not self.usable:
            return self.lacks(f"USAGE on schema {self.schema}")
        if self.versioned and not self.readable:
            return self.lacks(f"SELECT on table {self.schema}.{VERSION_TABLE}")
        return None

    def lacks(self, rights: str) -> PrivilegeMissing:
        return PrivilegeMissing(
            f"the role '{self.role}' lacks {rights}: it needs the runtime grants in {GRANTS_DOC}"
        )

    def behind(self) -> str:
        """Why the schema is older than this relay, as one line: current and needed revision."""
        head = head_revision()
        if self.shared:
            return (
                f'the outbox schema "{self.schema}" is at revision {self.current} '
                f"(an older relay's layout), this relay needs {head} in {VERSION_TABLE}"
            )
        if self.revision is None:
            return (
                f'the outbox schema "{self.schema}" has no relay revision (no outbox table), '
                f"this relay needs {head}"
            )
        return (
            f'the outbox schema "{self.schema}" is at revision {self.revision}, '
            f"this relay needs {head}"
        )


async def schema_state(connection: asyncpg.Connection | asyncpg.Pool, schema: str) -> SchemaState:
    """Read relay's revision in ``schema``, and whether the role may read it."""
    found = await connection.fetchrow(
        "SELECT current_user::text AS role, n.oid IS NOT NULL AS exists, "
        "coalesce(has_schema_privilege(n.oid, 'USAGE'), false) AS usable "
        "FROM (SELECT) AS one LEFT JOIN pg_namespace n ON n.nspname = $1",
        schema,
    )
    assert found is not None
    state = SchemaState(schema, found["role"], found["exists"], found["usable"])
    if not state.usable:
        return state
    tables_named = (VERSION_TABLE, SHARED_VERSION_TABLE, *RELAY_TABLES)
    names = [f'"{schema}".{table}' for table in tables_named]
    tables = await connection.fetchrow(
        "SELECT v.oid IS NOT NULL AS versioned, "
        "coalesce(has_table_privilege(v.oid, 'SELECT'), false) AS readable, "
        "v.oid IS NULL AND a.oid IS NOT NULL AND o.oid IS NOT NULL AND p.oid IS NOT NULL "
        "AS shared, coalesce(has_table_privilege(a.oid, 'SELECT'), false) AS shared_readable "
        "FROM to_regclass($1) AS v(oid), to_regclass($2) AS a(oid), "
        "to_regclass($3) AS o(oid), to_regclass($4) AS p(oid)",
        *names,
    )
    assert tables is not None
    revision = shared_revision = None
    if tables["readable"]:
        revision = await connection.fetchval(
            f'SELECT version_num FROM "{schema}".{VERSION_TABLE} LIMIT 1'
        )
    if tables["shared"] and tables["shared_readable"]:
        held = await connection.fetch(f'SELECT version_num FROM "{schema}".{SHARED_VERSION_TABLE}')
        shared_revision = next(
            (r for r in REVISIONS if r in {row["version_num"] for row in held}), None
        )
    return SchemaState(
        schema,
        state.role,
        state.exists,
        state.usable,
        tables["versioned"],
        tables["readable"],
        revision,
        tables["shared"],
        shared_revision,
    )


async def current_revision(
    connection: asyncpg.Connection | asyncpg.Pool, schema: str
) -> str | None:
    """relay's revision in ``schema`` (None: not migrated, or not in relay_alembic_version)."""
    return (await schema_state(connection, schema)).revision


def migration_check(url: str, schema: str) -> str:
    """'relay migrate --check': the line to print when the schema is at this relay's revision
    (or a newer relay's); SchemaBehind naming both revisions when it is older. Changes nothing.
    """

    async def read() -> SchemaState:
        try:
            connection = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
        except DATABASE_ERRORS as error:
            raise describe_connection_error(url, error) from None
        try:
            return await schema_state(connection, schema)
        except DATABASE_ERRORS as error:
            raise describe_connection_error(url, error) from None
        finally:
            await connection.close()

    state = asyncio.run(read())
    if (refused := state.missing_right()) is not None:
        raise refused
    if state.newer:
        return f'schema "{schema}" is at revision {state.revision}, {newer_than_relay()}'
    if not state.at_head:
        raise SchemaBehind(state.behind())
    return f'schema "{schema}" is at revision {state.revision}'


def newer_than_relay() -> str:
    return f"newer than this relay's {head_revision()}: nothing to do"


@dataclass(frozen=True)
class Grant:
    """One GRANT statement: privileges on objects of one kind in the outbox schema."""

    privileges: tuple[str, ...]
    kind: Literal["SCHEMA", "TABLE", "SEQUENCE", "FUNCTION"]
    names: tuple[str, ...] = ()  # in the schema; a function with its argument types

    def targets(self, schema: str, *, quoted: bool = False) -> list[str]:
        """The objects, as a GRANT names them (or, ``quoted``, as has_*_privilege wants them:
        the schema's name as an identifier)."""
        if self.kind == "SCHEMA":
            return [schema]
        prefix = f'"{schema}"' if quoted else schema
        return [f"{prefix}.{name}" for name in self.names]

    def sql(self, schema: str, role: str) -> str:
        kind = "" if self.kind == "TABLE" else f"{self.kind} "
        targets = ", ".join(self.targets(schema))
        return f"GRANT {', '.join(self.privileges)} ON {kind}{targets} TO {role};"


# What 'relay run' and the operator commands use, and nothing more (docs/database.md prints
# these; a test runs every command with exactly them). Identity columns draw their values
# without a grant on their sequence; the insert trigger draws keyed rows' ids with nextval, so
# 'relay enqueue' needs USAGE on outbox_id_seq. Trigger functions run without EXECUTE; the
# claim calls outbox_key_ready. Advisory locks, LISTEN/NOTIFY and pg_locks need no grant.
RUNTIME_GRANTS = (
    Grant(("USAGE",), "SCHEMA"),
    Grant(("SELECT", "INSERT", "UPDATE", "DELETE"), "TABLE", ("outbox", "relay_pause")),
    Grant(("SELECT", "INSERT", "DELETE"), "TABLE", ("outbox_delivery",)),
    Grant(("SELECT",), "TABLE", (VERSION_TABLE,)),
    Grant(("USAGE",), "SEQUENCE", ("outbox_id_seq",)),
    Grant(("EXECUTE",), "FUNCTION", ("outbox_key_ready(text, bigint, boolean)",)),
    Grant(("SELECT", "INSERT", "UPDATE"), "TABLE", ("relay_admin_log",)),
    Grant(("SELECT", "INSERT", "UPDATE", "DELETE"), "TABLE", ("inbox",)),
    Grant(("SELECT", "INSERT", "UPDATE"), "TABLE", ("inbox_checkpoint",)),
)
# What an application that produces events uses: the producer's INSERT ... RETURNING id. The
# insert trigger runs as the application's role and draws keyed rows' ids from outbox_id_seq.
APPLICATION_GRANTS = (
    Grant(("USAGE",), "SCHEMA"),
    Grant(("INSERT", "SELECT (id)"), "TABLE", ("outbox",)),
    Grant(("USAGE",), "SEQUENCE", ("outbox_id_seq",)),
)

_HAS_PRIVILEGE = """
    SELECT c.privilege,
           CASE c.kind
               WHEN 'SCHEMA' THEN has_schema_privilege(c.target, c.privilege)
               WHEN 'TABLE' THEN has_table_privilege(c.target, c.privilege)
               WHEN 'SEQUENCE' THEN has_sequence_privilege(c.target, c.privilege)
               WHEN 'FUNCTION' THEN has_function_privilege(c.target, c.privilege)
           END AS held
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS c(kind, target, privilege, n)
    ORDER BY c.n"""


async def missing_grants(
    connection: asyncpg.Connection | asyncpg.Pool, schema: str, grants: Sequence[Grant]
) -> list[str]:
    """The rights of ``grants`` the connected role lacks, one entry per object, in order:
    'UPDATE, DELETE on table relay.outbox'."""
    checks = [
        (grant.kind, shown, quoted, privilege)
        for grant in grants
        for shown, quoted in zip(
            grant.targets(schema), grant.targets(schema, quoted=True), strict=True
        )
        for privilege in grant.privileges
    ]
    kinds, shown, quoted, privileges = (list(column) for column in zip(*checks, strict=True))
    rows = await connection.fetch(_HAS_PRIVILEGE, kinds, quoted, privileges)
    lacking: dict[str, list[str]] = {}
    for row, kind, target in zip(rows, kinds, shown, strict=True):
        if not row["held"]:
            lacking.setdefault(f"{kind.lower()} {target}", []).append(row["privilege"])
    return [f"{', '.join(held)} on {target}" for target, held in lacking.items()]


async def check_schema(connection: asyncpg.Connection | asyncpg.Pool, schema: str) -> None:
    """Raise unless the outbox schema is at this relay's head revision (SchemaNotReady) and
    the role holds the runtime grants (PrivilegeMissing, naming what it lacks)."""
    state = await schema_state(connection, schema)
    if not state.exists:
        raise SchemaNotReady(f'the outbox table does not exist in schema "{schema}"')
    if (refused := state.missing_right()) is not None:
        raise refused
    if state.shared:
        raise SchemaNotReady(state.behind())
    if state.revision is None:
        raise SchemaNotReady(f'the outbox table does not exist in schema "{schema}"')
    if state.newer:
        # Migrations come first in an upgrade and only add: a replica still on the previous
        # release keeps running against the newer schema until it is replaced.
        log.warning("schema.newer_than_relay", revision=state.revision, relay_head=head_revision())
    elif not state.at_head:
        raise SchemaNotReady(state.behind())
    try:
        lacking = await missing_grants(connection, schema, RUNTIME_GRANTS)
    except asyncpg.PostgresError as error:
        if isinstance(error, CONNECTION_ERRORS):
            raise
        # An object of relay's is missing although the revision says otherwise.
        raise SchemaNotReady(f'schema "{schema}": {describe_database_error(error)}') from None
    if lacking:
        raise state.lacks("; ".join(lacking))
