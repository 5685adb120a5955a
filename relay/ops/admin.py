"""What an operator does to a running outbox: look, find dead rows, requeue them, purge.

Behind ``relay status``, ``relay dead list|show``, ``relay requeue``, ``relay pause``,
``relay purge`` and ``relay audit``. Every function here is safe while relays run: the reports
read one snapshot and lock nothing, requeue touches only dead rows (which no relay claims) and
wakes the relays with the same notification an insert sends, and purge deletes published rows
in small batches, each in its own transaction, so producers inserting meanwhile never wait long.

Every change (not a dry run) is recorded in the audit log, ``relay_admin_log``, in the
transaction that makes it, with the operator's name: a change that cannot be recorded is not
made. It also writes an ``admin.*`` log line, to the caller's standard error.

Times are measured against the database's clock. A time given by the operator is either a
duration counted back from now (``30d``, ``2h``) or an ISO 8601 timestamp.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from relay import database, schema
from relay.config import Settings
from relay.errors import DatabaseRefused
from relay.ops.formatting import iso, jsonable
from relay.ops.queries import AdminQueries
from relay.ops.reports import ActivePause, DeadRow, Delivery, RetryingRow, RowDetail, StatusReport
from relay.ops.results import (
    AuditEntry,
    DiscardResult,
    PauseClearResult,
    PurgePreview,
    PurgeResult,
    ReplayResult,
    ReplayRow,
    RequeueResult,
)
from relay.ops.selection import (
    DeadSelector,
    Moment,
    NoSuchRow,
    ReplaySelector,
    operator_name,
    purge_cutoff,
    resolve,
)
from relay.outbox.queries import Queries

log = structlog.get_logger("relay.ops.admin")

STATUSES = ("pending", "in_flight", "published", "dead", "blocked")
# The audit log and line name at most this many ids; the count is always exact.
MAX_LOGGED_IDS = 1000
DEFAULT_PURGE_BATCH = 1000


def _id(row: ReplayRow) -> int:
    return row.id


Purged = TypeVar("Purged", bound=PurgeResult)


# The operator's handle on one outbox schema -----------------------------------------------------


class Admin:
    """The operator functions over one outbox schema. Owns no connection."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        operator: str,
        *,
        dead_blocks_key: bool = True,
        defaults: tuple[str | None, str | None] = (None, None),
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.operator = operator
        self.host = socket.gethostname()
        # RELAY_DEAD_BLOCKS_KEY as the relays have it: whether a dead row holds back its key.
        self.dead_blocks_key = dead_blocks_key
        # RELAY_COUNTRY / RELAY_TENANT as the relays have them: the route of rows without one.
        self.defaults = defaults
        self.queries = AdminQueries(schema)

    async def record(
        self,
        connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        action: str,
        parameters: dict[str, Any],
        *,
        rows: int,
        ids: list[int] | None,
        outcome: str,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Write one audit-log entry on ``connection``, inside the transaction of the change."""
        entry: int = await connection.fetchval(
            self.queries.audit_record,
            self.operator,
            self.host,
            action,
            json.dumps(jsonable(parameters)),
            rows,
            None if ids is None else ids[:MAX_LOGGED_IDS],
            outcome,
            None if detail is None else json.dumps(jsonable(detail)),
        )
        return entry

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
            reasons = await connection.fetch(q.blocked_reasons)
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
            blocked_reasons={row["reason"] or "none": row["rows"] for row in reasons},
            blocked_ended=sum(row["ended"] for row in reasons),
        )

    async def dead_list(
        self,
        *,
        event_type: str | None = None,
        since: Moment | None = None,
        limit: int = 100,
    ) -> list[DeadRow]:
        """The newest ``limit`` dead rows, oldest id first; ``since`` filters on when they died
        (last attempt)."""
        after = None if since is None else resolve(since, await self.now())
        rows = await self.pool.fetch(self.queries.dead_list, None, event_type, after, None, limit)
        return [DeadRow(**dict(row)) for row in rows]

    async def row(self, row_id: int) -> RowDetail:
        """One row in full with its delivery log; NoSuchRow when there is none."""
        async with (
            self.pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await connection.fetchrow(self.queries.row, row_id, *self.defaults)
            deliveries = await connection.fetch(self.queries.deliveries, row_id)
        if row is None:
            raise NoSuchRow(f"the outbox holds no row {row_id}")
        return RowDetail(**dict(row), deliveries=[Delivery(**dict(item)) for item in deliveries])

    async def requeue(self, selector: DeadSelector, *, dry_run: bool = False) -> RequeueResult:
        """Make the chosen dead rows pending again, attempts 0, available now, ids kept.

        Wakes every relay listening on this schema. Writes the ``admin.requeued`` audit line.
        """
        selector.check()
        entry = None
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
            ids = sorted(row["id"] for row in rows)
            not_dead = sorted(set(selector.ids) - set(ids))
            if not dry_run:
                entry = await self.record(
                    connection,
                    "requeue",
                    selector.describe(now),
                    rows=len(ids),
                    ids=ids,
                    outcome="partial" if not_dead else "done",
                    detail={"not_dead": not_dead} if not_dead else None,
                )
                # Delivered at COMMIT, like the insert trigger's notification.
                await connection.execute(self.queries.notify, self.schema)
        result = RequeueResult(
            ids=ids,
            not_dead=not_dead,
            selector=selector.describe(now),
            dry_run=dry_run,
            audit_id=entry,
            operator=self.operator,
        )
        if not dry_run:
            log.info(
                "admin.requeued",
                count=len(ids),
                ids=ids[:MAX_LOGGED_IDS],
                selector=result.selector,
                operator=self.operator,
                schema=self.schema,
                audit_id=entry,
            )
        return result

    async def discard(
        self, selector: DeadSelector, reason: str, *, dry_run: bool = False
    ) -> DiscardResult:
        """Delete the chosen dead rows and their delivery log, for good, with ``reason``:
        the rows behind them in their keys go at once (relays are woken). Recorded in the
        audit log (the ids, the event types, the reason) with the ``admin.discarded`` line."""
        selector.check("discard")
        entry = None
        async with self.pool.acquire() as connection, connection.transaction():
            now = await connection.fetchval(self.queries.now)
            parameters = selector.parameters(now)
            if dry_run:
                rows = await connection.fetch(self.queries.dead_list, *parameters, None)
            else:
                rows = await connection.fetch(self.queries.discard, *parameters)
                keys = sorted({row["ordering_key"] for row in rows if row["ordering_key"]})
                if keys:
                    await connection.execute(self.queries.unpark_keys, keys)
            ids = sorted(row["id"] for row in rows)
            not_dead = sorted(set(selector.ids) - set(ids))
            described = {**selector.describe(now), "reason": reason}
            types = sorted({row["event_type"] for row in rows})
            if not dry_run:
                entry = await self.record(
                    connection,
                    "discard",
                    described,
                    rows=len(ids),
                    ids=ids,
                    outcome="partial" if not_dead else "done",
                    detail={"event_types": types, **({"not_dead": not_dead} if not_dead else {})},
                )
                await connection.execute(self.queries.notify, self.schema)
        result = DiscardResult(
            ids=ids,
            not_dead=not_dead,
            reason=reason,
            selector=described,
            dry_run=dry_run,
            audit_id=entry,
            operator=self.operator,
        )
        if not dry_run:
            log.info(
                "admin.discarded",
                count=len(ids),
                ids=ids[:MAX_LOGGED_IDS],
                selector=result.selector,
                operator=self.operator,
                schema=self.schema,
                audit_id=entry,
            )
        return result

    async def replay(
        self,
        selector: ReplaySelector,
        *,
        dry_run: bool = False,
        confirmed: ReplayResult | None = None,
    ) -> ReplayResult:
        """Send published rows again: pending now, attempts 0, ids kept. A keyed row with a
        newer row of its key not yet published is held back (see
        ``AdminQueries.replay_candidates``). Wakes the relays, records it in the audit log and
        writes the ``admin.replayed`` line.

        ``confirmed`` is the dry run the operator confirmed: only its rows are replayed (none
        published since then), and the rows it held back are reported again.
        """
        selector.check()
        entry = None
        async with self.pool.acquire() as connection, connection.transaction():
            now = await connection.fetchval(self.queries.now)
            candidates = [
                ReplayRow(**dict(row))
                for row in await connection.fetch(
                    self.queries.replay_candidates,
                    *selector.parameters(now),
                    self.dead_blocks_key,
                    None if confirmed is None else confirmed.ids,
                )
            ]
            held = [row for row in candidates if row.held]
            if confirmed is not None:
                seen = {row.id for row in held}
                held = sorted([*held, *(r for r in confirmed.held if r.id not in seen)], key=_id)
            chosen = [row for row in candidates if not row.held]
            if not dry_run and chosen:
                replayed = await connection.fetch(self.queries.replay, [row.id for row in chosen])
                done = {row["id"] for row in replayed}
                chosen = [row for row in chosen if row.id in done]
            result = ReplayResult(
                rows=chosen,
                held=held,
                not_published=sorted(set(selector.ids) - {row.id for row in chosen + held}),
                selector=selector.describe(now),
                dry_run=dry_run,
                operator=self.operator,
            )
            if not dry_run:
                entry = await self._record_replay(connection, result)
                await connection.execute(self.queries.notify, self.schema)
        if dry_run:
            return result
        log.info(
            "admin.replayed",
            count=len(result.ids),
            ids=result.ids[:MAX_LOGGED_IDS],
            held_back=[row.id for row in result.held][:MAX_LOGGED_IDS],
            selector=result.selector,
            operator=self.operator,
            schema=self.schema,
            audit_id=entry,
        )
        return dataclasses.replace(result, audit_id=entry)

    async def _record_replay(
        self, connection: asyncpg.pool.PoolConnectionProxy, result: ReplayResult
    ) -> int:
        left = {"held_back": [row.id for row in result.held], "not_published": result.not_published}
        return await self.record(
            connection,
            "replay",
            result.selector,
            rows=len(result.ids),
            ids=result.ids,
            outcome="partial" if result.needs_attention else "done",
            detail={key: value[:MAX_LOGGED_IDS] for key, value in left.items() if value} or None,
        )

    async def pauses(self) -> list[ActivePause]:
        """Every pause row: in force, or run out and waiting for a probe."""
        rows = await self.pool.fetch(self.queries.active_pauses)
        return [ActivePause(**dict(row)) for row in rows]

    async def clear_pauses(
        self, routes: list[str] | None, *, defaults: tuple[str | None, str | None]
    ) -> PauseClearResult:
        """Lift the pauses of ``routes`` (every pause when None): delete their rows, make
        every row waiting on those routes due now (parked, or deferred by a throttle or a
        retry; attempts untouched), and wake the relays, which pick the change up at once.

        Records it in the audit log; writes the ``admin.pauses_cleared`` audit line.
        """
        async with self.pool.acquire() as connection, connection.transaction():
            before = {
                row["route"]: ActivePause(**dict(row))
                for row in await connection.fetch(self.queries.active_pauses)
            }
            cleared = sorted(
                row["route"] for row in await connection.fetch(self.queries.clear_pauses, routes)
            )
            released = 0
            if cleared:
                # --all: every route, whatever defaults the relays give rows without one.
                named = ["*"] if routes is None else cleared
                released = len(await connection.fetch(self.queries.unpark_routes, named, *defaults))
                await connection.execute(self.queries.notify, self.schema)
            not_paused = sorted(set(routes or ()) - set(cleared))
            entry = await self.record(
                connection,
                "pause_clear",
                {"all": True} if routes is None else {"routes": routes},
                rows=len(cleared),
                ids=None,
                outcome="partial" if not_paused else "done",
                detail={"lifted": cleared, "not_paused": not_paused, "released": released},
            )
        log.info(
            "admin.pauses_cleared",
            routes=cleared,
            released=released,
            operator=self.operator,
            schema=self.schema,
            audit_id=entry,
        )
        return PauseClearResult(
            lifted=[before[route] for route in cleared if route in before],
            not_paused=not_paused,
            released=released,
            audit_id=entry,
            operator=self.operator,
        )

    async def purge(
        self, older_than: Moment, *, batch_size: int = DEFAULT_PURGE_BATCH
    ) -> PurgeResult:
        """Delete published rows (and their delivery log) published before ``older_than``.

        Small batches, each its own transaction, through the same statement the daemon's
        RELAY_RETENTION uses (see :meth:`purge_in_batches`). Dead rows are never purged.
        """
        statement = Queries(self.schema).purge_published
        return await self.purge_in_batches(
            statement, "purge", older_than, batch_size, PurgeResult, "admin.purged"
        )

    async def purge_in_batches(
        self,
        statement: str,
        action: str,
        older_than: Moment,
        batch_size: int,
        result: type[Purged],
        event: str,
    ) -> Purged:
        """Run a retention ``statement`` ($1: older than this many seconds, $2: batch size)
        until it deletes nothing, each batch in its own transaction, recorded as ``action``
        and logged as ``event``; what it deleted comes back as ``result``.

        The audit-log entry is written with the first batch and brought up to date in each
        batch's transaction, so it counts what was deleted even when the purge is stopped
        half-way (its outcome stays ``running``).
        """
        now = await self.now()
        cutoff = purge_cutoff(older_than, now)
        base = (now - cutoff).total_seconds()
        parameters = {"older_than": cutoff, "batch_size": batch_size}
        started = time.monotonic()
        rows = batches = 0
        entry: int | None = None
        async with self.pool.acquire() as connection:
            while True:
                async with connection.transaction():
                    # The statement counts back from the database's now(), which moves on
                    # while we purge; widen the window as it does, so the cut-off stays put.
                    window = base + time.monotonic() - started
                    status = await connection.execute(statement, window, batch_size)
                    deleted = int(status.split()[-1])
                    outcome = "running" if deleted else "done"
                    detail = {"batches": batches + (1 if deleted else 0)}
                    if entry is None:
                        entry = await self.record(
                            connection,
                            action,
                            parameters,
                            rows=deleted,
                            ids=None,
                            outcome=outcome,
                            detail=detail,
                        )
                    else:
                        await connection.execute(
                            self.queries.audit_progress, entry, deleted, outcome, json.dumps(detail)
                        )
                if deleted == 0:
                    break
                rows += deleted
                batches += 1
        log.info(
            event,
            rows=rows,
            batches=batches,
            cutoff=iso(cutoff),
            operator=self.operator,
            schema=self.schema,
            audit_id=entry,
        )
        return result(
            cutoff=cutoff,
            rows=rows,
            batches=batches,
            seconds=time.monotonic() - started,
            audit_id=entry,
            operator=self.operator,
        )

    async def purge_preview(self, older_than: Moment) -> PurgePreview:
        """What ``purge`` would delete now, counted; nothing is changed or recorded."""
        now = await self.now()
        cutoff = purge_cutoff(older_than, now)
        row = await self.pool.fetchrow(self.queries.purge_preview, cutoff)
        assert row is not None
        return PurgePreview(cutoff=cutoff, **dict(row))

    async def audit(self, *, since: Moment | None = None, limit: int = 50) -> list[AuditEntry]:
        """The newest ``limit`` entries of the audit log, oldest first."""
        after = None if since is None else resolve(since, await self.now())
        rows = await self.pool.fetch(self.queries.audit_list, after, limit)
        return [AuditEntry.from_row(dict(row)) for row in rows]


@asynccontextmanager
async def open_admin(settings: Settings, operator: str | None = None) -> AsyncIterator[Admin]:
    """A small pool on RELAY_DATABASE_URL, the schema checked, closed afterwards. ``operator``
    names who acts (--operator); by default :func:`operator_name` finds out."""
    name = operator_name(operator)
    url = settings.require_database_url()
    try:
        pool = await database.create_pool(url, min_size=1, max_size=2)
    except database.DATABASE_ERRORS as error:  # unreachable, or refused: login, database
        raise database.describe_connection_error(url, error) from None
    try:
        await schema.check_schema(pool, settings.schema_name)
        yield Admin(
            pool,
            settings.schema_name,
            name,
            dead_blocks_key=settings.dead_blocks_key,
            defaults=(settings.country, settings.tenant),
        )
    except asyncpg.PostgresError as error:
        if isinstance(error, database.CONNECTION_ERRORS):
            raise database.describe_connection_error(url, error) from None
        # A right missing (named, with the grants that hold it), a statement refused: one
        # line, its SQLSTATE, never a value.
        refused = database.refused_right(error)
        if refused is not None:
            raise refused from None
        raise DatabaseRefused(
            f"the database refused: {database.describe_database_error(error)}"
        ) from None
    except (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError) as error:
        raise database.describe_connection_error(url, error) from None
    finally:
        await pool.close()
