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

import json
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from relay import database
from relay.config import Settings, parse_duration
from relay.errors import RelayError
from relay.outbox import Store
from relay.queries import AdminQueries

log = structlog.get_logger("relay.admin")

STATUSES = ("pending", "in_flight", "published", "dead")
# The audit line names at most this many ids; the count is always exact.
MAX_LOGGED_IDS = 1000
DEFAULT_PURGE_BATCH = 1000

# A point in time as the operator gave it: a duration back from now, or a timestamp.
Moment = timedelta | datetime


class NoSuchRow(RelayError):
    """The outbox holds no row with that id."""


class NoSelector(RelayError):
    """A requeue named no rows; it never means "everything" by accident."""

    exit_code = 2


# Parsing and formatting ----------------------------------------------------------------------


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


def iso(moment: datetime | None) -> str | None:
    """UTC, millisecond precision, with a Z; None stays None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_duration(seconds: float) -> str:
    """``3d 4h``, ``2m 5s``, ``850ms``: the two largest units, for people."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    parts: list[str] = []
    remaining = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return " ".join(parts[:2])


def _relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    when = "in " + human_duration(delta) if delta > 0 else human_duration(-delta) + " ago"
    return f"{iso(moment)} ({when})"


def operator_name() -> str:
    """Who is running the command, for the audit line: $USER, else $LOGNAME, else the uid."""
    return os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid:{os.getuid()}"


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _fields(instance: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """A dataclass instance's fields (or the ``names`` given) as JSON-ready values."""
    if names is None:
        names = [item.name for item in fields(instance)]
    return {name: _jsonable(getattr(instance, name)) for name in names}


# Reports -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivePause:
    """A relay_pause row still in force."""

    route: str
    kind: str
    reason: str
    set_by: str
    set_at: datetime
    until: datetime
    remaining: float


@dataclass(frozen=True, slots=True)
class RetryingRow:
    """A pending row that has failed at least once, and when it may be tried again."""

    id: int
    event_type: str
    attempts: int
    next_attempt_at: datetime
    last_http_status: int | None
    error_class: str


@dataclass(frozen=True, slots=True)
class StatusReport:
    """``relay status``: one consistent snapshot of the outbox."""

    at: datetime
    counts: dict[str, int]
    oldest_unfinished_at: datetime | None
    oldest_unfinished_age: float | None
    retrying: int
    next_retry_at: datetime | None
    retrying_rows: list[RetryingRow]
    blocked_by_dead: int
    dead_by_event_type: dict[str, int]
    dead_by_error_class: dict[str, int]
    last_published_at: datetime | None
    pauses: list[ActivePause]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (timestamps as ISO 8601 strings, ages in seconds)."""
        document = _fields(
            self,
            [
                "at",
                "counts",
                "oldest_unfinished_at",
                "oldest_unfinished_age",
                "retrying",
                "next_retry_at",
                "blocked_by_dead",
                "dead_by_event_type",
                "dead_by_error_class",
                "last_published_at",
            ],
        )
        document["retrying_rows"] = [_fields(row) for row in self.retrying_rows]
        document["pauses"] = [_fields(pause) for pause in self.pauses]
        return document

    def lines(self) -> list[str]:
        """The report for people."""
        return [
            *self._queue_lines(),
            *self._retrying_lines(),
            *self._dead_lines(),
            *self._pause_lines(),
        ]

    def _queue_lines(self) -> list[str]:
        counts = self.counts
        oldest = (
            "-"
            if self.oldest_unfinished_age is None
            else f"{human_duration(self.oldest_unfinished_age)} old"
        )
        return [
            f"outbox at {iso(self.at)}",
            f"  pending    {counts['pending']:>10,}   oldest unfinished: {oldest}",
            f"  in_flight  {counts['in_flight']:>10,}",
            f"  published  {counts['published']:>10,}   last published: "
            + _relative(self.last_published_at, self.at),
            f"  dead       {counts['dead']:>10,}",
        ]

    def _retrying_lines(self) -> list[str]:
        lines = [
            f"retrying: {self.retrying:,} rows, next attempt "
            + _relative(self.next_retry_at, self.at)
        ]
        for row in self.retrying_rows:
            lines.append(
                f"  {row.id:>10}  {row.event_type}  attempts {row.attempts}  "
                f"last {row.error_class}  next {_relative(row.next_attempt_at, self.at)}"
            )
        if self.blocked_by_dead:
            lines.append(
                f"held behind a dead row of their ordering key: {self.blocked_by_dead:,} rows"
            )
        return lines

    def _dead_lines(self) -> list[str]:
        lines = ["dead by event type:" + ("" if self.dead_by_event_type else " none")]
        lines += [f"  {count:>10,}  {key}" for key, count in self.dead_by_event_type.items()]
        lines.append("dead by last error:" + ("" if self.dead_by_error_class else " none"))
        lines += [f"  {count:>10,}  {key}" for key, count in self.dead_by_error_class.items()]
        return lines

    def _pause_lines(self) -> list[str]:
        lines = ["pauses:" + ("" if self.pauses else " none")]
        for pause in self.pauses:
            lines.append(
                f"  {pause.route}  {pause.kind}  {human_duration(pause.remaining)} left"
                f"  set by {pause.set_by}: {pause.reason}"
            )
        return lines


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead row as ``relay dead list`` shows it: everything but the payload."""

    id: int
    event_type: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    attempts: int
    created_at: datetime
    died_at: datetime
    last_http_status: int | None
    last_error: str | None
    error_class: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return _fields(self)

    def line(self) -> str:
        """One line for people; the error shortened."""
        error = (self.last_error or "").replace("\n", " ")
        error = error if len(error) <= 80 else error[:77] + "..."
        return (
            f"{self.id:>10}  {iso(self.died_at)}  {self.event_type}  attempts {self.attempts}"
            f"  {self.error_class}  {error}"
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt from the delivery log."""

    attempt: int
    attempted_at: datetime
    http_status: int | None
    latency_ms: float | None
    outcome: str
    event_api_id: str | None
    error: str | None
    worker: str


@dataclass(frozen=True, slots=True)
class RowDetail:
    """``relay dead show``: one row in full, its payload and every attempt."""

    id: int
    event_type: str
    payload: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    status: str
    attempts: int
    available_at: datetime
    created_at: datetime
    published_at: datetime | None
    event_api_id: str | None
    last_http_status: int | None
    last_error: str | None
    claimed_by: str | None
    lease_until: datetime | None
    error_class: str
    last_attempt_at: datetime | None
    deliveries: list[Delivery] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values; the payload as the JSON object it is."""
        names = [item.name for item in fields(self) if item.name not in ("payload", "deliveries")]
        document = _fields(self, names)
        document["payload"] = json.loads(self.payload)
        document["deliveries"] = [_fields(item) for item in self.deliveries]
        return document

    def lines(self) -> list[str]:
        """The row for people: its state, the last error, the payload, the delivery log."""
        lines = [
            f"outbox row {self.id}: {self.status}",
            f"  event type:     {self.event_type}",
            f"  route:          {self.country or '(RELAY_COUNTRY)'}/"
            f"{self.tenant or '(RELAY_TENANT)'}",
            f"  ordering key:   {self.ordering_key or '-'}",
            f"  attempts:       {self.attempts}",
            f"  created:        {iso(self.created_at)}",
            f"  last attempt:   {iso(self.last_attempt_at) or '-'}",
            f"  available at:   {iso(self.available_at)}",
            f"  published:      {iso(self.published_at) or '-'}",
            f"  event_api_id:   {self.event_api_id or '-'}",
            f"  HTTP status:    {self.last_http_status or '-'}",
            f"  error class:    {self.error_class}",
            f"  last error:     {self.last_error or '-'}",
            "payload:",
        ]
        pretty = json.dumps(json.loads(self.payload), indent=2, ensure_ascii=False)
        lines += ["  " + line for line in pretty.splitlines()]
        lines.append(f"delivery log ({len(self.deliveries)} attempts):")
        for item in self.deliveries:
            latency = "-" if item.latency_ms is None else f"{item.latency_ms:.0f}ms"
            lines.append(
                f"  attempt {item.attempt}  {iso(item.attempted_at)}  "
                f"HTTP {item.http_status or '-'}  {latency}  {item.outcome}  "
                f"by {item.worker}  {item.error or ''}".rstrip()
            )
        return lines


# Requeue and purge ----------------------------------------------------------------------------


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
        document = {key: _jsonable(value) for key, value in described.items() if value}
        if self.all_dead:
            document["all_dead"] = True
        return document


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What a requeue did (or, with ``dry_run``, would do)."""

    ids: list[int]
    not_dead: list[int]  # ids asked for by number that are missing or not dead
    selector: dict[str, Any]
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "requeued": 0 if self.dry_run else len(self.ids),
            "would_requeue": len(self.ids) if self.dry_run else 0,
            "ids": self.ids,
            "not_dead": self.not_dead,
            "selector": self.selector,
            "dry_run": self.dry_run,
        }

    def lines(self) -> list[str]:
        """One summary line, and the ids asked for that were left alone."""
        shown = ", ".join(str(row_id) for row_id in self.ids[:50])
        if len(self.ids) > 50:
            shown += f", ... ({len(self.ids) - 50} more)"
        verb = "would requeue" if self.dry_run else "requeued"
        lines = [f"relay: {verb} {len(self.ids)} dead rows" + (f": {shown}" if shown else "")]
        if self.not_dead:
            left = ", ".join(str(row_id) for row_id in self.not_dead)
            lines.append(f"relay: not dead (left alone): {left}")
        return lines


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge deleted."""

    cutoff: datetime
    rows: int
    batches: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return _fields(self)

    def lines(self) -> list[str]:
        """One summary line."""
        return [
            f"relay: purged {self.rows} published rows (published before {iso(self.cutoff)}) "
            f"in {self.batches} batches, {self.seconds:.1f}s"
        ]


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
            raise RelayError(f"--older-than {iso(cutoff)} is in the future; nothing to purge")
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
    except database.CONNECTION_ERRORS as error:
        raise database.describe_connection_error(url, error) from None
    try:
        await database.check_schema(pool, settings.schema_name)
        yield Admin(pool, settings.schema_name, operator_name())
    finally:
        await pool.close()
