"""The store the engine claims from: claims, results, leases, parking and pauses.

With the producer API (``relay.outbox.producer``), the only module that runs the statements in
``relay.outbox.queries``. Owns no connection: every call takes one from the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from relay.outbox.queries import ENVELOPE_FIELDS, Queries


# Not frozen: made for every row claimed, and a frozen dataclass of this size costs ten
# times as much to build. Nothing changes one once made.
@dataclass(slots=True)
class ClaimedRow:
    """A row as a claim returns it: the payload as stored text, its envelope read out."""

    id: int
    token: int  # the claim's token: results are written only under it
    event_type: str
    payload: str  # the stored jsonb as PostgreSQL renders it; sent unchanged
    tenant: str | None
    country: str | None
    ordering_key: str | None
    attempts: int  # attempts used, this one included
    stops: int  # earlier claims of it that ended with the relay stopping
    created_at: datetime
    traceparent: str | None  # the stored trace context (outbox.trace_context), as text
    tracestate: str | None
    envelope_ok: bool  # the envelope is right (checked in the claim): nothing more to read
    correlation_id: str | None  # the payload's correlationId, when a JSON string
    payload_type: str | None  # when the envelope is not right: the payload's JSON type
    # When the envelope is not right: its JSON-string fields, and their JSON types.
    envelope: dict[str, str | None] = field(default_factory=dict)
    envelope_kinds: dict[str, str | None] = field(default_factory=dict)
    trace_parent: Any = None  # with tracing on: the stored context, read once at the claim


# (field, its value's column, its JSON type's column) in a row of ``Queries.claim``.
_ENVELOPE_COLUMNS = tuple(
    (name, f"value_{n}", f"kind_{n}") for n, name in enumerate(ENVELOPE_FIELDS)
)


def claimed_row(record: asyncpg.Record) -> ClaimedRow:
    """A ClaimedRow from one row of ``Queries.claim``."""
    ok = record["envelope_ok"]
    envelope = {} if ok else {name: record[value] for name, value, _ in _ENVELOPE_COLUMNS}
    kinds = {} if ok else {name: record[kind] for name, _, kind in _ENVELOPE_COLUMNS}
    return ClaimedRow(
        id=record["id"],
        token=record["token"],
        event_type=record["event_type"],
        payload=record["payload"],
        tenant=record["tenant"],
        country=record["country"],
        ordering_key=record["ordering_key"],
        attempts=record["attempts"],
        stops=record["stops"],
        created_at=record["created_at"],
        traceparent=record["traceparent"],
        tracestate=record["tracestate"],
        envelope_ok=ok,
        correlation_id=record["correlation_id"],
        payload_type=record["payload_type"],
        envelope=envelope,
        envelope_kinds=kinds,
    )


@dataclass(slots=True)  # not frozen, as ClaimedRow: one per attempt
class Result:
    """The outcome of one claim, as it will be written to the row and the delivery log."""

    id: int
    token: int  # the claim it belongs to: the fence
    status: str  # 'published', 'pending' (retry or give back) or 'dead'
    attempts: int
    delay: float | None  # seconds until the row may be tried again; None keeps available_at
    http_status: int | None
    event_api_id: str | None
    error: str | None
    latency_ms: float | None
    outcome: str
    attempted_at: datetime
    logged: bool = True  # False for a row given back unsent: no attempt to log


@dataclass(frozen=True, slots=True)
class Pause:
    route: str
    kind: str
    reason: str
    set_by: str
    remaining: float
    duration: float

    @property
    def active(self) -> bool:
        return self.remaining > 0


@dataclass(frozen=True, slots=True)
class Left:
    """Rows still to send, of one kind of wait (``Queries.unfinished``)."""

    verdict: str  # wait, behind_dead, refused or later
    route: str | None  # for refused and later
    rows: int
    kind: str | None  # the pause's kind, if one holds them
    reason: str | None  # and its reason
    next_in: float  # seconds until the first of them is due


@dataclass(frozen=True, slots=True)
class QueueSample:
    """The outbox as the sampled gauges show it."""

    depth: int  # rows still to send: pending, in flight or blocked
    oldest: float  # seconds since the oldest of them was written
    blocked: dict[str, int]  # blocked rows by why they wait (blocked_by)


@dataclass(frozen=True, slots=True)
class Defaults:
    """The route of rows that leave country or tenant NULL."""

    country: str | None
    tenant: str | None


class Store:
    """The engine's view of the outbox: claim, record, leases, parking, pauses.

    Owns no connection: every call takes one from the pool for one statement (or one short
    transaction) and gives it back.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        worker: str,
        defaults: Defaults = Defaults(None, None),
    ) -> None:
        self.pool = pool
        self.queries = Queries(schema)
        self.worker = worker
        self.defaults = defaults

    async def claim(
        self,
        limit: int,
        token: int,
        *,
        lease_seconds: float,
        dead_blocks_key: bool,
        after_key: str = "",
        key_steps: int | None = None,
        full_routes: Sequence[str] = (),
    ) -> tuple[list[ClaimedRow], str]:
        """Claim up to ``limit`` rows, none of ``full_routes`` but rows given up by a process
        that stopped; return them (by id) and the ordering key after which the next claim's
        step through the keys begins (see ``Queries.claim``)."""
        rows = await self.pool.fetch(
            self.queries.claim,
            limit,
            self.worker,
            self.defaults.country,
            self.defaults.tenant,
            dead_blocks_key,
            lease_seconds,
            token,
            after_key,
            key_steps if key_steps is not None else 2 * limit,
            list(full_routes),
        )
        claimed = [claimed_row(row) for row in rows if row["id"] is not None]
        claimed.sort(key=lambda row: row.id)
        return claimed, rows[0]["next_key"] if rows else ""

    async def record(self, results: Sequence[Result]) -> set[int]:
        """Write outcomes in one statement; return the ids written (fence held, or published)."""
        columns = list(zip(*((
            r.id, r.token, r.status, r.attempts, r.delay, r.http_status, r.event_api_id,
            r.error, r.latency_ms, r.outcome, r.attempted_at.timestamp(), r.logged,
        ) for r in results), strict=True))  # fmt: skip
        rows = await self.pool.fetch(self.queries.record, *columns, self.worker)
        return {row["id"] for row in rows}

    async def extend(self, held: Sequence[tuple[int, int]], lease_seconds: float) -> set[int]:
        """Extend the leases of (id, token) pairs; return the ids still held."""
        if not held:
            return set()
        ids, tokens = zip(*held, strict=True)
        rows = await self.pool.fetch(self.queries.extend, list(ids), list(tokens), lease_seconds)
        return {row["id"] for row in rows}

    async def rescue(self, own_incarnation: int) -> int:
        """End the leases of rows whose holding process is gone; return how many."""
        return len(await self.pool.fetch(self.queries.rescue, own_incarnation))

    async def release_orphans(self, incarnation: int, known: Sequence[int]) -> None:
        await self.pool.execute(self.queries.release_orphans, incarnation, list(known))

    async def release_all(self) -> None:
        await self.pool.execute(self.queries.release_all, self.worker)

    async def park_behind_dead(self, dead_ids: Sequence[int] | None, batch: int) -> int:
        """Block at most ``batch`` pending rows behind dead rows (``dead_ids``, or every dead
        keyed row); return how many."""
        async with self.pool.acquire() as connection, connection.transaction():
            dead = await connection.fetch(
                self.queries.park_behind_dead, None if dead_ids is None else list(dead_ids)
            )
            if not dead:
                return 0
            status = await connection.execute(
                self.queries.park_behind,
                [row["ordering_key"] for row in dead],
                [row["id"] for row in dead],
                batch,
            )
        return int(status.split()[-1])

    async def park_route(self, route: str) -> int:
        """Block the pending rows of a paused route; return how many (0 if its pause ended)."""
        async with self.pool.acquire() as connection, connection.transaction():
            if await connection.fetchval(self.queries.lock_pause, route) is None:
                return 0
            status = await connection.execute(
                self.queries.park_route, route, self.defaults.country, self.defaults.tenant
            )
        return int(status.split()[-1])

    async def unpark_route(self, route: str, limit: int | None) -> int:
        status = await self.pool.execute(
            self.queries.unpark_route, route, self.defaults.country, self.defaults.tenant, limit
        )
        return int(status.split()[-1])

    async def unpark_stale(self, *, dead_blocks_key: bool) -> int:
        status = await self.pool.execute(
            self.queries.unpark_stale,
            self.defaults.country,
            self.defaults.tenant,
            not dead_blocks_key,
        )
        return int(status.split()[-1])

    async def set_pause(self, route: str, seconds: float, kind: str, reason: str) -> None:
        await self.pool.execute(
            self.queries.set_pause, route, seconds, kind, reason[:500], self.worker
        )

    async def renew_pause(self, route: str, seconds: float, kind: str, reason: str) -> bool:
        """Pause again after a failed probe, unless someone already did; True if this did."""
        renewed = await self.pool.fetchval(
            self.queries.renew_pause, route, seconds, kind, reason[:500], self.worker
        )
        return renewed is not None

    async def clear_pauses(self, routes: Sequence[str]) -> list[str]:
        """End the pauses of ``routes`` and unblock their parked rows; return the routes that
        had a pause."""
        async with self.pool.acquire() as connection, connection.transaction():
            cleared = [
                row["route"]
                for row in await connection.fetch(self.queries.clear_pause, list(routes))
            ]
            for route in cleared:
                if route != "*":
                    await connection.execute(
                        self.queries.unpark_route,
                        route,
                        self.defaults.country,
                        self.defaults.tenant,
                        None,
                    )
        return cleared

    async def pauses(self) -> list[Pause]:
        return [Pause(**dict(row)) for row in await self.pool.fetch(self.queries.pauses)]

    async def unfinished(self, dead_blocks_key: bool, horizon: float) -> list[Left]:
        """The rows still to send, grouped by what they wait for (see ``Queries.unfinished``):
        what --drain waits for (``wait``), and what it cannot send now."""
        rows = await self.pool.fetch(
            self.queries.unfinished,
            dead_blocks_key,
            self.defaults.country,
            self.defaults.tenant,
            horizon,
        )
        return [Left(**dict(row)) for row in rows]

    async def queue_sample(self) -> QueueSample:
        row = await self.pool.fetchrow(self.queries.queue_sample)
        assert row is not None
        blocked = {"dead_row": row["behind_dead"], "route_pause": row["on_paused_routes"]}
        return QueueSample(int(row["depth"]), float(row["oldest"]), blocked)

    async def purge_published(self, older_than_seconds: float, batch: int = 1000) -> int:
        """Delete one batch of published rows; return how many went."""
        status = await self.pool.execute(self.queries.purge_published, older_than_seconds, batch)
        return int(status.split()[-1])
