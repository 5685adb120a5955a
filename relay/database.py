"""Connections to the insurer's PostgreSQL: the pool, the errors it can raise and what each
means, and how the engine runs its calls. The schema (migrations, revisions, grants) is
``relay.schema``."""

from __future__ import annotations

import asyncio
import getpass
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import structlog

from relay.errors import DatabaseRefused, DatabaseUnavailable, PrivilegeMissing, RelayError

log = structlog.get_logger("relay.database")
T = TypeVar("T")


def asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg wants it (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy's asyncpg dialect wants it."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url).removeprefix("postgresql://")


# For a long-lived connection whose loss must be noticed (a relay's liveness lock, a receive
# route's lock): the server probes its peer after 2 s of silence, once a second, and gives the
# connection up when 4 s pass without an answer (TCP_USER_TIMEOUT, which also bounds data the
# server sent), so a host that vanished without a word frees its locks about 6 s after it went
# quiet, instead of the kernel's two hours. A peer that is alive answers the probes from its
# kernel, however busy (or stopped) its process is. The relay's own side notices sooner (see
# relay.outbox.liveness), so it stops sending before another relay may take its rows.
KEEPALIVES = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "4000",
}


def describe_connection_error(url: str, error: BaseException) -> RelayError:
    """A one-line error naming RELAY_DATABASE_URL, its host and database, never its password;
    or, for a right the role lacks (SQLSTATE 42501), the right and the grants that include it."""
    if isinstance(postgres_error(error), asyncpg.InsufficientPrivilegeError):
        return privilege_error(postgres_error(error), role_in(url), "grants")
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


# Where the grants are explained, for the one line a missing right gives.
GRANTS_DOC = "docs/database.md"


def postgres_error(error: BaseException) -> BaseException:
    """The asyncpg error under a SQLAlchemy one (``error.orig.__cause__``), else the error."""
    original: BaseException = getattr(error, "orig", None) or error
    cause = original.__cause__
    return cause if isinstance(cause, asyncpg.PostgresError) else original


def role_in(url: str) -> str:
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
        if isinstance(original := postgres_error(seen), asyncpg.InsufficientPrivilegeError):
            return privilege_error(original, None, "grants")
        seen = seen.__cause__ or seen.__context__
    return None


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


# A database call that failed for the connection is tried again after at most this long
# (jittered): a server back after a restart or a failover is used within about a second,
# whatever the length of the outage. A relay asks a down server about once a second per
# part of its engine, which a server starting up can take.
RECONNECT_CAP = 1.0


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
        cap: float = RECONNECT_CAP,
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
    "CONNECTION_ERRORS",
    "DATABASE_ERRORS",
    "KEEPALIVES",
    "RECONNECT_CAP",
    "DatabaseCalls",
    "asyncpg_dsn",
    "create_pool",
    "describe_connection_error",
    "describe_database_error",
    "sqlalchemy_url",
]
