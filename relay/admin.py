"""What an operator does to a running outbox: look, find dead rows, requeue them, purge.

Behind ``relay status``, ``relay dead list|show``, ``relay requeue`` and ``relay purge``. Every
function here is safe while relays run: the reports read one snapshot and lock nothing,
requeue touches only dead rows (which no relay claims) and wakes the relays with the same
notification an insert sends, and purge deletes published rows in small batches, each in its
own transaction, so producers inserting meanwhile never wait long.

Times are measured against the database's clock. A time given by the operator is either a
duration counted back from now (``30d``, ``2h``) or an ISO 8601 timestamp.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from relay import database
from relay.admin_queries import AdminQueries
from relay.admin_reports import (
    ActivePause,
    DeadRow,
    Delivery,
    PurgeResult,
    RequeueResult,
    RetryingRow,
    RowDetail,
    StatusReport,
    iso,
    jsonable,
)
from relay.config import Settings, parse_duration
from relay.errors import DatabaseRefused, UsageError
from relay.outbox import Store

log = structlog.get_logger("relay.admin")

STATUSES = ("pending", "in_flight", "published", "dead", "blocked")
# The audit line names at most this many ids; the count is always exact.
MAX_LOGGED_IDS = 1000
DEFAULT_PURGE_BATCH = 1000

# A point in time as the operator gave it: a duration back from now, or a timestamp.
Moment = timedelta | datetime


class NoSuchRow(UsageError):
    """The outbox holds no row with that id."""


class NoSelector(UsageError):
    """A requeue named no rows; it never means "everything" by accident."""


# Times the operator gives --------------------------------------------------------------------


def parse_moment(value: str) -> Moment:
    """``30d``, ``2h``, ``90s`` (a duration back from now) or an ISO 8601 timestamp.

    A timestamp without an offset is read in this machine's local time zone.
    """
    try:
        duration = parse_duration(value)
    except ValueError:
        pass
    else:
        assert isinstance(duration, timedelta)
        return duration
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (30d, 2h, 15m) nor an ISO 8601 timestamp "
            "(2026-11-28T14:02:00Z)"
        ) from None
    return moment.astimezone(UTC)


def resolve(moment: Moment, now: datetime) -> datetime:
    """The point in time ``moment`` names, a duration counting back from ``now``."""
    return now - moment if isinstance(moment, timedelta) else moment


def operator_name() -> str:
    """Who is running the command, for the audit line: $USER, else $LOGNAME, else the uid."""
    return os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid:{os.getuid()}"


# Which dead rows to requeue ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadSelector:
    """Which dead rows to requeue. The filters combine (AND); ``all_dead`` stands alone."""

    ids: tuple[int, ...] = ()
    event_type: str | None = None
    since: Moment | None = None
    until: Moment | None = None
    all_dead: bool = False

    def check(self) -> None:
        """Refuse an empty selection, and ``all_dead`` mixed with filters."""
        filters = bool(self.ids) or any(
            value is not None for value in (self.event_type, self.since, self.until)
        )
        if self.all_dead and filters:
            raise NoSelector("--all-dead takes every dead row; give it no ids or filters")
        if not self.all_dead and not filters:
            raise NoSelector(
                "name the dead rows to requeue: ids, --event-type, --since/--until, "
                "or --all-dead for every one"
            )

    def parameters(self, now: datetime) -> tuple[object, ...]:
        """$1..$4 of the requeue statements."""
        return (
            list(self.ids) or None,
            self.event_type,
            None if self.since is None else resolve(self.since, now),
            None if self.until is None else resolve(self.until, now),
        )

    def describe(self, now: datetime) -> dict[str, Any]:
        """The selection as given, its times resolved, for the audit line and --json."""
        ids, event_type, since, until = self.parameters(now)
        described = {"ids": ids, "event_type": event_type, "since": since, "until": until}
        document = {key: jsonable(value) for key, value in described.items() if value}
        if self.all_dead:
            document["all_dead"] = True
        return document


# The operator's handle on one outbox schema -----------------------------------------------------


class Admin:
    """The operator functions over one outbox schema. Owns no connection."""

    def __init__(self, pool: asyncpg.Pool, schema: str, operator: str) -> None:
        self.pool = pool
        self.schema = schema
        self.operator = operator
        self.queries = AdminQueries(schema)

    async def now(self) -> datetime:
        """The database's clock."""
        now: datetime = await self.pool.fetchval(self.queries.now)
        return now

    async def status(self, *, retrying_limit: int = 10) -> StatusReport:
        """Counts, ages, retries, dead rows and pauses, read in one snapshot."""
        q = self.queries
        async with (
            self.pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            now = await connection.fetchval(q.now)
            counts = dict.fromkeys(STATUSES, 0)
            counts.update(
                {row["status"]: row["rows"] for row in await connection.fetch(q.status_counts)}
            )
            summary = await connection.fetchrow(q.unfinished_summary)
            assert summary is not None
            retrying = await connection.fetch(q.retrying_rows, retrying_limit)
            blocked = await connection.fetchval(q.blocked_by_dead)
            by_type = await connection.fetch(q.dead_by_event_type)
            by_error = await connection.fetch(q.dead_by_error_class)
            last_published = await connection.fetchval(q.last_published)
            pauses = await connection.fetch(q.active_pauses)
            on_routes = await connection.fetch(q.blocked_on_routes)
        return StatusReport(
            at=now,
            counts=counts,
            oldest_unfinished_at=summary["oldest_created_at"],
            oldest_unfinished_age=summary["oldest_age"],
            retrying=summary["retrying"],
            next_retry_at=summary["next_retry_at"],
            retrying_rows=[RetryingRow(**dict(row)) for row in retrying],
            blocked_by_dead=blocked,
            dead_by_event_type={row["key"]: row["rows"] for row in by_type},
            dead_by_error_class={row["key"]: row["rows"] for row in by_error},
            last_published_at=last_published,
            pauses=[ActivePause(**dict(row)) for row in pauses],
            blocked_on_routes={row["key"]: row["rows"] for row in on_routes},
        )

    async def dead_list(
        self,
        *,
        event_type: str | None = None,
        since: Moment | None = None,
        limit: int = 100,
    ) -> list[DeadRow]:
        """Dead rows, oldest id first; ``since`` filters on when they died (last attempt)."""
        after = None if since is None else resolve(since, await self.now())
        rows = await self.pool.fetch(self.queries.dead_list, None, event_type, after, None, limit)
        return [DeadRow(**dict(row)) for row in rows]

    async def row(self, row_id: int) -> RowDetail:
        """One row in full with its delivery log; NoSuchRow when there is none."""
        async with (
            self.pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await connection.fetchrow(self.queries.row, row_id)
            deliveries = await connection.fetch(self.queries.deliveries, row_id)
        if row is None:
            raise NoSuchRow(f"the outbox holds no row {row_id}")
        return RowDetail(**dict(row), deliveries=[Delivery(**dict(item)) for item in deliveries])

    async def requeue(self, selector: DeadSelector, *, dry_run: bool = False) -> RequeueResult:
        """Make the chosen dead rows pending again, attempts 0, available now, ids kept.

        Wakes every relay listening on this schema. Writes the ``admin.requeued`` audit line.
        """
        selector.check()
        async with self.pool.acquire() as connection, connection.transaction():
            now = await connection.fetchval(self.queries.now)
            parameters = selector.parameters(now)
            if dry_run:
                rows = await connection.fetch(self.queries.requeue_preview, *parameters)
            else:
                rows = await connection.fetch(self.queries.requeue, *parameters)
                keys = sorted({row["ordering_key"] for row in rows if row["ordering_key"]})
                if keys:
                    await connection.execute(self.queries.unpark_keys, keys)
                # Delivered at COMMIT, like the insert trigger's notification.
                await connection.execute(self.queries.notify, self.schema)
        ids = sorted(row["id"] for row in rows)
        result = RequeueResult(
            ids=ids,
            not_dead=sorted(set(selector.ids) - set(ids)),
            selector=selector.describe(now),
            dry_run=dry_run,
        )
        if not dry_run:
            log.info(
                "admin.requeued",
                count=len(ids),
                ids=ids[:MAX_LOGGED_IDS],
                selector=result.selector,
                operator=self.operator,
                schema=self.schema,
            )
        return result

    async def pauses(self) -> list[ActivePause]:
        """Every pause row: in force, or run out and waiting for a probe."""
        rows = await self.pool.fetch(self.queries.active_pauses)
        return [ActivePause(**dict(row)) for row in rows]

    async def clear_pauses(
        self, routes: list[str] | None, *, defaults: tuple[str | None, str | None]
    ) -> list[ActivePause]:
        """Lift the pauses of ``routes`` (every pause when None): delete their rows, let
        their parked rows go, and wake the relays, which pick the change up at once.

        Writes the ``admin.pauses_cleared`` audit line.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            before = {
                row["route"]: ActivePause(**dict(row))
                for row in await connection.fetch(self.queries.active_pauses)
            }
            cleared = [row["route"] for row in await connection.fetch(
                self.queries.clear_pauses, routes
            )]  # fmt: skip
            if cleared:
                await connection.execute(self.queries.unpark_routes, cleared, *defaults)
                await connection.execute(self.queries.notify, self.schema)
        log.info(
            "admin.pauses_cleared",
            routes=sorted(cleared),
            operator=self.operator,
            schema=self.schema,
        )
        return [before[route] for route in sorted(cleared) if route in before]

    async def purge(
        self, older_than: Moment, *, batch_size: int = DEFAULT_PURGE_BATCH
    ) -> PurgeResult:
        """Delete published rows (and their delivery log) published before ``older_than``.

        Small batches, each its own transaction, through the same statement the daemon's
        RELAY_RETENTION uses. Dead rows are never purged.
        """
        now = await self.now()
        cutoff = resolve(older_than, now)
        if cutoff > now:
            raise UsageError(f"--older-than {iso(cutoff)} is in the future; nothing to purge")
        store = Store(self.pool, self.schema, f"admin:{self.operator}")
        base = (now - cutoff).total_seconds()
        started = time.monotonic()
        rows = batches = 0
        while True:
            # The statement counts back from the database's now(), which moves on while we
            # purge; widen the window as it does, so the cut-off stays where it was.
            deleted = await store.purge_published(base + time.monotonic() - started, batch_size)
            if deleted == 0:
                break
            rows += deleted
            batches += 1
        seconds = time.monotonic() - started
        log.info(
            "admin.purged",
            rows=rows,
            batches=batches,
            cutoff=iso(cutoff),
            operator=self.operator,
            schema=self.schema,
        )
        return PurgeResult(cutoff=cutoff, rows=rows, batches=batches, seconds=seconds)


@asynccontextmanager
async def open_admin(settings: Settings) -> AsyncIterator[Admin]:
    """A small pool on RELAY_DATABASE_URL, the schema checked, closed afterwards."""
    url = settings.require_database_url()
    try:
        pool = await database.create_pool(url, min_size=1, max_size=2)
    except database.DATABASE_ERRORS as error:  # unreachable, or refused: login, database
        raise database.describe_connection_error(url, error) from None
    try:
        await database.check_schema(pool, settings.schema_name)
        yield Admin(pool, settings.schema_name, operator_name())
    except asyncpg.PostgresError as error:
        if isinstance(error, database.CONNECTION_ERRORS):
            raise database.describe_connection_error(url, error) from None
        # A right missing, a statement refused: one line, its SQLSTATE, never a value.
        raise DatabaseRefused(
            f"the database refused: {database.describe_database_error(error)}"
        ) from None
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as error:
        raise database.describe_connection_error(url, error) from None
    finally:
        await pool.close()
