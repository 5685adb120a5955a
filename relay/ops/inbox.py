"""What an operator does to the inbox: look, find events, retry failed ones, rewind a route,
purge processed events.

Behind ``relay inbox status|list|show|retry|rewind|purge``. Everything here is safe while
relays and consumers run:

- the reports read one snapshot (repeatable read, read only) and lock nothing;
- retry touches only ``failed`` events, which no consumer claims, and wakes the consumers with
  the notification the inbox's insert trigger sends (``NOTIFY relay_inbox``);
- rewind moves one route's checkpoint in one short transaction. The receiver polling the route
  stores each page with a compare-and-set on that checkpoint, so the page it was fetching from
  the old position is not stored; it reads the checkpoint again and asks from the new one.
  Events already stored are not stored again (unique per route and event id): a rewind fills
  gaps, it does not make consumers process anything twice (``retry`` does that);
- purge deletes processed events in small batches, each its own transaction, through the
  statement the daemon's ``RELAY_RETENTION`` runs.

Every change (not a dry run) is recorded in the audit log, ``relay_admin_log``, in the
transaction that makes it, like the outbox's commands (``relay.ops.admin``), and writes an
``admin.inbox_*`` log line. Payloads never reach a log: only ``relay inbox show`` prints one,
to standard output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from relay.errors import UsageError
from relay.eventapi.receive import receive_path
from relay.inbox.queries import MALFORMED_PREFIX, MAX_EVENT_ID, InboxQueries
from relay.ops.admin import DEFAULT_PURGE_BATCH, MAX_LOGGED_IDS, Admin
from relay.ops.formatting import jsonable
from relay.ops.inbox_queries import InboxAdminQueries
from relay.ops.inbox_reports import (
    Checkpoint,
    InboxEventDetail,
    InboxEventRow,
    InboxPurgePreview,
    InboxPurgeResult,
    InboxRoute,
    InboxStatus,
    Malformed,
    RetryResult,
    RewindResult,
)
from relay.ops.selection import Moment, NoSelector, purge_cutoff, resolve
from relay.routes import route_name

log = structlog.get_logger("relay.ops.inbox")

STATUSES = ("pending", "processed", "failed")

Route = tuple[str, str]  # (country, tenant), checked by the route rule


class NoSuchEvent(UsageError):
    """The inbox holds no event with that id."""


class NoCheckpoint(UsageError):
    """A rewind of a route the relays have never received."""


@dataclass(frozen=True, slots=True)
class FailedSelector:
    """Which failed events to retry: by id, route, event type and when they were received
    (combined: all must match), or ``all_failed`` alone."""

    ids: tuple[int, ...] = ()
    route: Route | None = None
    event_type: str | None = None
    since: Moment | None = None
    until: Moment | None = None
    all_failed: bool = False

    def filters(self) -> bool:
        """Whether any filter is given."""
        return bool(self.ids) or any(
            value is not None for value in (self.route, self.event_type, self.since, self.until)
        )

    def check(self) -> None:
        """Refuse an empty selection, and ``all_failed`` mixed with filters."""
        if self.all_failed and self.filters():
            raise NoSelector("--all-failed takes every failed event; give it no ids or filters")
        if not self.all_failed and not self.filters():
            raise NoSelector(
                "name the failed events to retry: ids, --route, --event-type, --since/--until, "
                "or --all-failed for every one"
            )

    def parameters(self, now: datetime) -> tuple[object, ...]:
        """$1..$6 of the selecting statements."""
        country, tenant = self.route if self.route is not None else (None, None)
        return (
            list(self.ids) or None,
            country,
            tenant,
            self.event_type,
            None if self.since is None else resolve(self.since, now),
            None if self.until is None else resolve(self.until, now),
        )

    def describe(self, now: datetime) -> dict[str, Any]:
        """The selection as given, its times resolved, for the audit log and --json."""
        ids, _, _, event_type, since, until = self.parameters(now)
        described = {
            "ids": ids,
            "route": None if self.route is None else route_name(*self.route),
            "event_type": event_type,
            "since": since,
            "until": until,
            "all_failed": self.all_failed or None,
        }
        return {key: jsonable(value) for key, value in described.items() if value}


def check_event_id(event_id: str) -> str:
    """An event id a rewind may ask after: what Scalepoint's ids can be."""
    if not event_id or len(event_id) > MAX_EVENT_ID:
        raise UsageError(f"--to: an event id is 1-{MAX_EVENT_ID} characters")
    if event_id.startswith(MALFORMED_PREFIX):
        raise UsageError(
            f"--to {event_id[:40]}: that is the inbox's name for an item that was not an "
            "event, not an id Scalepoint knows"
        )
    return event_id


class InboxAdmin:
    """The operator functions over one schema's inbox, on an :class:`Admin`'s pool, as its
    operator, recorded in its audit log."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.pool = admin.pool
        self.schema = admin.schema
        self.operator = admin.operator
        self.queries = InboxAdminQueries(admin.schema)

    async def status(self, configured: Sequence[str] = ()) -> InboxStatus:
        """Every receive route, read in one snapshot: the checkpoint routes, the routes events
        were stored under, and ``configured`` (RELAY_RECEIVE_ROUTES where the command runs)."""
        async with (
            self.pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            now = await connection.fetchval(self.admin.queries.now)
            rows = await connection.fetch(self.queries.routes, list(configured))
        return InboxStatus(at=now, routes=[InboxRoute(**dict(row)) for row in rows])

    async def events(
        self,
        *,
        route: Route | None = None,
        status: str | None = None,
        event_type: str | None = None,
        since: Moment | None = None,
        limit: int = 100,
    ) -> list[InboxEventRow]:
        """The newest ``limit`` events, oldest first, without payloads; ``since`` is when they
        were received."""
        if status is not None and status not in STATUSES:
            raise UsageError(f"--status: one of {', '.join(STATUSES)}")
        after = None if since is None else resolve(since, await self.admin.now())
        country, tenant = route if route is not None else (None, None)
        rows = await self.pool.fetch(
            self.queries.list_events, country, tenant, status, event_type, after, limit
        )
        return [InboxEventRow(**dict(row)) for row in rows]

    async def event(self, event_id: int) -> InboxEventDetail:
        """One event in full, payload included; NoSuchEvent when there is none."""
        row = await self.pool.fetchrow(self.queries.event, event_id)
        if row is None:
            raise NoSuchEvent(f"the inbox holds no event {event_id}")
        return InboxEventDetail(**dict(row))

    async def retry(self, selector: FailedSelector, *, dry_run: bool = False) -> RetryResult:
        """Make the chosen failed events pending again: due now, attempts 0, ids kept.

        Items that were not events (no payload) are never made pending: they are reported and
        left. Wakes the consumers; records the retry in the audit log and writes the
        ``admin.inbox_retried`` line.
        """
        selector.check()
        entry = None
        async with self.pool.acquire() as connection, connection.transaction():
            now = await connection.fetchval(self.admin.queries.now)
            statement = self.queries.retry_preview if dry_run else self.queries.retry_candidates
            rows = await connection.fetch(statement, *selector.parameters(now))
            malformed = [Malformed(row["id"], row["event_id"]) for row in rows if row["malformed"]]
            ids = [row["id"] for row in rows if not row["malformed"]]
            if not dry_run and ids:
                retried = await connection.fetch(self.queries.retry, ids)
                ids = sorted(row["id"] for row in retried)
            not_failed = sorted(set(selector.ids) - {row["id"] for row in rows})
            result = RetryResult(
                ids=ids,
                malformed=malformed,
                not_failed=not_failed,
                selector=selector.describe(now),
                dry_run=dry_run,
                operator=self.operator,
            )
            if not dry_run:
                entry = await self._record_retry(connection, result)
                if ids:
                    # Delivered at COMMIT, like the insert trigger's notification.
                    await connection.execute(self.queries.notify, self.schema)
        if dry_run:
            return result
        log.info(
            "admin.inbox_retried",
            count=len(ids),
            ids=ids[:MAX_LOGGED_IDS],
            malformed=[item.id for item in malformed][:MAX_LOGGED_IDS],
            not_failed=not_failed[:MAX_LOGGED_IDS],
            selector=result.selector,
            operator=self.operator,
            schema=self.schema,
            audit_id=entry,
        )
        return dataclasses.replace(result, audit_id=entry)

    async def _record_retry(
        self, connection: asyncpg.pool.PoolConnectionProxy, result: RetryResult
    ) -> int:
        left = {
            "malformed": [item.id for item in result.malformed],
            "not_failed": result.not_failed,
        }
        return await self.admin.record(
            connection,
            "inbox_retry",
            result.selector,
            rows=len(result.ids),
            ids=result.ids,
            outcome="partial" if result.needs_attention else "done",
            detail={key: value[:MAX_LOGGED_IDS] for key, value in left.items() if value} or None,
        )

    async def rewind(self, route: Route, to: str, *, dry_run: bool = False) -> RewindResult:
        """Move ``route``'s checkpoint so its next receive asks for the events after ``to``.

        The route must have a checkpoint (a relay has received it). Records the checkpoint
        before and after in the audit log, in the transaction that moves it, and writes the
        ``admin.inbox_rewound`` line. A running receiver moves with its next page.
        """
        check_event_id(to)
        name = route_name(*route)
        next_path = receive_path(*route, to)
        entry = None
        async with self.pool.acquire() as connection, connection.transaction():
            # Read first, unlocked: counting a route's events may take a while, and the
            # checkpoint's lock must be held only for as long as the move takes.
            stored = await connection.fetchrow(self.queries.stored_event, *route, to)
            locked = self.queries.checkpoint if dry_run else self.queries.checkpoint_for_update
            row = await connection.fetchrow(locked, *route)
            if row is None:
                raise NoCheckpoint(
                    f"no receive checkpoint for {name}: no relay has received it (a new route "
                    "starts at RELAY_RECEIVE_FROM; relay inbox status lists the routes)"
                )
            result = RewindResult(
                route=name,
                to=to,
                before=Checkpoint(row["next_path"], row["last_event_id"]),
                after=Checkpoint(next_path, to),
                known=stored is not None,
                status=None if stored is None else stored["status"],
                stored_after=None if stored is None else stored["stored_after"],
                dry_run=dry_run,
                operator=self.operator,
            )
            if not dry_run:
                await connection.execute(self.queries.rewind, *route, next_path, to)
                entry = await self.admin.record(
                    connection,
                    "inbox_rewind",
                    {"route": name, "to": to},
                    rows=1,
                    ids=None,
                    outcome="done",
                    detail={
                        "before": dataclasses.asdict(result.before),
                        "after": dataclasses.asdict(result.after),
                        "known": result.known,
                        "stored_after": result.stored_after,
                    },
                )
        if dry_run:
            return result
        log.info(
            "admin.inbox_rewound",
            route=name,
            to=to,
            before=result.before.next_path,
            after=next_path,
            known=result.known,
            operator=self.operator,
            schema=self.schema,
            audit_id=entry,
        )
        return dataclasses.replace(result, audit_id=entry)

    async def purge(
        self, older_than: Moment, *, batch_size: int = DEFAULT_PURGE_BATCH
    ) -> InboxPurgeResult:
        """Delete processed events processed before ``older_than``, in small batches through
        the statement the daemon's RELAY_RETENTION runs. Pending and failed events are never
        purged. Recorded in the audit log as it goes; writes ``admin.inbox_purged``."""
        statement = InboxQueries(self.schema).purge_processed
        return await self.admin.purge_in_batches(
            statement, "inbox_purge", older_than, batch_size, InboxPurgeResult, "admin.inbox_purged"
        )

    async def purge_preview(self, older_than: Moment) -> InboxPurgePreview:
        """What ``purge`` would delete now, counted; nothing is changed or recorded."""
        now = await self.admin.now()
        cutoff = purge_cutoff(older_than, now)
        row = await self.pool.fetchrow(self.queries.purge_preview, cutoff)
        assert row is not None
        return InboxPurgePreview(cutoff=cutoff, **dict(row))
