"""Connections to the insurer's PostgreSQL, and the Alembic migration entry points."""

from __future__ import annotations

import asyncio
import getpass
import io
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import asyncpg
import structlog

from relay.errors import (
    DatabaseRefused,
    DatabaseUnavailable,
    PrivilegeMissing,
    RelayError,
    SchemaBehind,
    SchemaNotReady,
)

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: it costs most of a CLI command's start-up otherwise.
log = structlog.get_logger("relay.database")
T = TypeVar("T")

# Arbitrary, fixed: the advisory lock that serialises concurrent 'relay migrate' runs.
MIGRATION_LOCK_KEY = 7_261_690_001


def asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg wants it (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy's asyncpg dialect wants it."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url).removeprefix("postgresql://")


def _alembic_config(url: str | None, schema: str) -> Config:
    from alembic.config import Config

    config = Config()
    location = Path(str(resources.files("relay.migrations")))
    config.set_main_option("script_location", str(location))
    config.attributes["url"] = url
    config.attributes["schema"] = schema
    return config


# For a long-lived connection whose loss must be noticed (a relay's liveness lock, a receive
# route's lock): the server probes its peer, so a vanished host frees its locks in about
# idle + interval * count = 25 s instead of the kernel's two hours.
KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


def describe_connection_error(url: str, error: BaseException) -> RelayError:
    """A one-line error naming RELAY_DATABASE_URL, its host and database, never its password;
    or, for a right the role lacks (SQLSTATE 42501), the right and the grants that include it."""
    if isinstance(_postgres_error(error), asyncpg.InsufficientPrivilegeError):
        return privilege_error(_postgres_error(error), _role_in(url), "grants")
    parts = urlsplit(asyncpg_dsn(url))
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
    original: BaseException = getattr(error, "orig", None) or error
    reason = (
        str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    )
    return DatabaseUnavailable(f"RELAY_DATABASE_URL: cannot use the database at {where}: {reason}")


# The connection or the server is away, restarting, overloaded or failing over, or the
# statement lost a race it can win on a second try: wait and try again. InternalClientError
# comes from asyncpg when a connection is terminated under a running statement.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # 08: connection exceptions
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, cannot connect now, canceled
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock, serialization failure
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a standby during failover
)
# Anything the database can raise. What is not a connection error is an answer about the
# statement or its data (a missing table or right, a value it cannot store): retrying the same
# statement cannot help.
DATABASE_ERRORS = (*CONNECTION_ERRORS, asyncpg.PostgresError)


def describe_database_error(error: BaseException) -> str:
    """One line for a refusal: the server's message and its SQLSTATE, never a value."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    sqlstate = getattr(error, "sqlstate", None)
    return f"{message} (SQLSTATE {sqlstate})" if sqlstate else message


# relay keeps its revision in a version table of its own. An application's own Alembic keeps
# its revision in "alembic_version", often in the same schema; sharing that table made each
# read the other's revision as its own.
VERSION_TABLE = "relay_alembic_version"
# Where relays before this one kept it (see carry_over_sql).
SHARED_VERSION_TABLE = "alembic_version"
# Tables every relay schema has had since its first revision: an application whose Alembic
# happens to be at a revision named like one of relay's has not got them.
RELAY_TABLES = ("outbox", "relay_pause")

# Where the grants are explained, for the one line a missing right gives.
GRANTS_DOC = "docs/database.md"


def _postgres_error(error: BaseException) -> BaseException:
    """The asyncpg error under a SQLAlchemy one (``error.orig.__cause__``), else the error."""
    original: BaseException = getattr(error, "orig", None) or error
    cause = original.__cause__
    return cause if isinstance(cause, asyncpg.PostgresError) else original


def _role_in(url: str) -> str:
    """The role a URL logs in as: its user, else libpq's default."""
    return urlsplit(asyncpg_dsn(url)).username or os.environ.get("PGUSER") or getpass.getuser()


def privilege_error(error: BaseException, role: str | None, grants: str) -> PrivilegeMissing:
    """One line for a refused right: the server's message, then which grants include it."""
    who = f"the role '{role}'" if role else "the role"
    return PrivilegeMissing(
        f"{describe_database_error(error)}: {who} needs the {grants} in {GRANTS_DOC}"
    )


def refused_right(error: BaseException) -> PrivilegeMissing | None:
    """A statement refused for want of a right (SQLSTATE 42501) anywhere in the error's chain,
    as one line; None for any other error."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            break
        if isinstance(original := _postgres_error(seen), asyncpg.InsufficientPrivilegeError):
            return privilege_error(original, None, "grants")
        seen = seen.__cause__ or seen.__context__
    return None


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


def migrate(url: str, schema: str) -> Migrated:
    """Upgrade the schema to head; a no-op when current (or migrated by a newer relay); safe
    to run from several replicas. Raises PrivilegeMissing naming a right the role lacks."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    config = _alembic_config(url, schema)
    try:
        command.upgrade(config, "head")
    except (*DATABASE_ERRORS, DBAPIError) as error:
        original = _postgres_error(error)
        if isinstance(original, asyncpg.InsufficientPrivilegeError):
            role = config.attributes.get("role") or _role_in(url)
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
REVISIONS = ("0005", "0004", "0003", "0002", "0001")


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


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Pool release hook that sends nothing.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` every
    time a connection goes back to the pool: one extra round trip per claim and per record,
    half of the relay's database traffic. The relay's pooled connections set no session state,
    take only transaction-level advisory locks, open no cursors and LISTEN elsewhere (on their
    own connection), so there is nothing to reset; asyncpg still rolls back an open transaction
    itself. Measured: PostgreSQL CPU per event -9 to -13 %.
    """


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 4, **kwargs: Any
) -> asyncpg.Pool:
    """A small asyncpg pool: the relay needs few connections, all statements are batched."""
    server_settings: Mapping[str, str] = {
        "application_name": "relay",
        # A claim touches a few dozen rows and never profits from JIT. With a million pending
        # rows the claim's generic plan (LIMIT $1 unknown to the planner) costs enough to be
        # JIT-compiled: 810 ms per claim instead of 2 ms (docs/benchmarks.md).
        "jit": "off",
    }
    pool = await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        server_settings=dict(server_settings),
        reset=_keep_session,
        **kwargs,
    )
    assert pool is not None
    return pool


class DatabaseCalls:
    """How the engine runs its database calls: a connection error is waited out with backoff
    (and reported once), anything else is the statement's own problem and is raised.

    ``problem`` says why the last call failed while the database is away, for /readyz.
    """

    def __init__(
        self,
        on_error: Callable[[str], None] | None = None,
        *,
        base: float = 0.1,
        cap: float = 30.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.on_error = on_error
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.problem: str | None = None

    async def run(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one call, retrying while the database is away; raise DatabaseRefused when it
        answers with an error about the statement."""
        attempt = 0
        while True:
            try:
                value = await make()
            except asyncpg.PostgresError as error:
                if isinstance(error, CONNECTION_ERRORS):
                    attempt += 1
                    self.failed(operation, error)
                    await asyncio.sleep(self._delay(attempt))
                    continue
                raise DatabaseRefused(
                    f"the database refused the {operation}: {describe_database_error(error)}"
                ) from error
            except CONNECTION_ERRORS as error:
                attempt += 1
                self.failed(operation, error)
                await asyncio.sleep(self._delay(attempt))
                continue
            if self.problem is not None:
                log.info("database.recovered", operation=operation)
                self.problem = None
            return value

    def _delay(self, attempt: int) -> float:
        return float(min(self.cap, self.base * 2 ** min(attempt, 20)) * (0.5 + self.jitter()))

    def failed(self, operation: str, error: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(operation)
        if self.problem is None:
            log.error(
                "database.unavailable", operation=operation, error=describe_database_error(error)
            )
        self.problem = "database unreachable"


__all__ = [
    "APPLICATION_GRANTS",
    "CONNECTION_ERRORS",
    "DATABASE_ERRORS",
    "MIGRATION_LOCK_KEY",
    "RUNTIME_GRANTS",
    "VERSION_TABLE",
    "DatabaseCalls",
    "Grant",
    "Migrated",
    "SchemaState",
    "asyncpg_dsn",
    "check_schema",
    "create_pool",
    "migrate",
    "migration_check",
    "migration_sql",
    "missing_grants",
    "schema_state",
    "sqlalchemy_url",
]
