"""The demo's receive side: Scalepoint's events fed by the emulator, stored once by the relay's
receivers, consumed as an insurer's application would, and what the inbox holds afterwards.

Two routes are received. Most of their events wait at the emulator before the relay starts (a
backlog, read page by page); the rest are fed in small bursts once each route's long poll is
waiting, so the poll is seen answering within moments. The emulator drops one poll halfway
through its answer and ends one page with two items that are not events. A consumer per route
(``relay.inbox.consume``) counts each event's case in ``demo_cases_by_type``, in the
transaction that marks the event processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import asyncpg

from relay.demo.database import Target, connect
from relay.emulator import Emulator
from relay.emulator.receive import MALFORMED_ITEMS
from relay.inbox import InboxEvent, consume

# (country, tenant, share of the received events). Both are the demo insurer's own routes.
RECEIVE_ROUTES = (("dk", "abcinsurance", 0.6), ("dk", "budgetinsurance", 0.4))
MIN_RECEIVED, MAX_RECEIVED = 60, 1000  # events fed in all; a third of --events in between
BACKLOG_SHARE = 0.6  # waiting at the emulator before the relay starts; the rest fed live
LIVE_BURSTS = 8
LIVE_INTERVAL = 0.25  # seconds between live bursts
# As in production, the relay gives a receive call up (RECEIVE_TIMEOUT) only after the
# partner would have ended its hold (RECEIVE_HOLD) with an empty page; both are short here, so
# an idle route is seen answering within seconds rather than a minute and a half.
RECEIVE_TIMEOUT = timedelta(seconds=5)
RECEIVE_HOLD = 4.0
DROPPED_POLLS = 1  # answered halfway, then the connection closed: the relay asks again
MALFORMED_PAGES = 1  # pages that end with items that are not events: kept as failed
MALFORMED = MALFORMED_PAGES * len(MALFORMED_ITEMS)  # those items
CASES_TABLE = "demo_cases_by_type"

CREATE_CASES = """
    CREATE TABLE "{schema}".demo_cases_by_type (
        route      text    NOT NULL,
        event_type text    NOT NULL,
        cases      integer NOT NULL,
        last_case  text    NOT NULL,
        PRIMARY KEY (route, event_type)
    )"""
COUNT_CASE = """
    INSERT INTO "{schema}".demo_cases_by_type AS counted (route, event_type, cases, last_case)
    VALUES ($1, $2, 1, $3)
    ON CONFLICT (route, event_type)
    DO UPDATE SET cases = counted.cases + 1, last_case = excluded.last_case"""


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """What the emulator feeds one route."""

    country: str
    tenant: str
    backlog: int  # waiting before the relay starts
    burst: int  # events in each of LIVE_BURSTS bursts fed while the relay polls

    @property
    def name(self) -> str:
        return f"{self.country}/{self.tenant}"

    @property
    def total(self) -> int:
        return self.backlog + self.burst * LIVE_BURSTS


def receive_plan(events: int) -> list[RoutePlan]:
    """A third of the outbox's events (MIN_RECEIVED to MAX_RECEIVED), shared by the routes."""
    total = min(MAX_RECEIVED, max(MIN_RECEIVED, events // 3))
    plans = []
    left = total
    for number, (country, tenant, share) in enumerate(RECEIVE_ROUTES):
        mine = left if number == len(RECEIVE_ROUTES) - 1 else round(total * share)
        left -= mine
        burst = max(1, round(mine * (1 - BACKLOG_SHARE) / LIVE_BURSTS))
        plans.append(RoutePlan(country, tenant, max(0, mine - burst * LIVE_BURSTS), burst))
    return plans


@dataclass
class Receipts:
    """What the emulator was given to send and what it saw, for the bars and the summary."""

    plan: list[RoutePlan]
    backlog: int = 0  # events fed before the relay started
    live: int = 0  # events fed while it polled
    fed_at: dict[tuple[str, str], float] = field(default_factory=dict)  # live: time.time()
    streams: dict[str, list[str]] = field(default_factory=dict)  # route -> ids, stream order
    stream_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    malformed_sent: int = 0  # items that are not events, put on pages by the fault
    dropped_polls: int = 0

    @property
    def fed(self) -> int:
        return self.backlog + self.live

    @property
    def planned(self) -> int:
        """Events to feed in all."""
        return sum(route.total for route in self.plan)

    @property
    def routes(self) -> list[str]:
        return [route.name for route in self.plan]

    def observe(self, emulator: Emulator) -> None:
        """The emulator's side, as it is now."""
        faults = emulator.faults
        self.malformed_sent = (MALFORMED_PAGES - faults.receive_malformed_next) * len(
            MALFORMED_ITEMS
        )
        self.dropped_polls = DROPPED_POLLS - faults.receive_drop_next

    def capture(self, emulator: Emulator) -> None:
        """The emulator's streams at the end: what the inbox must hold, once each, in order."""
        self.observe(emulator)
        for route in self.plan:
            stream = emulator.stream(route.country, route.tenant)
            self.streams[route.name] = [event.id for event in stream.events]
            self.stream_stats[route.name] = stream.stats()


def feed_backlog(emulator: Emulator, receipts: Receipts) -> None:
    """The events waiting at the emulator before the relay starts."""
    for route in receipts.plan:
        receipts.backlog += len(emulator.generate(route.country, route.tenant, route.backlog))


def polls_waiting(emulator: Emulator, receipts: Receipts) -> bool:
    """Every route's backlog handed out and its next long poll held at the emulator."""
    for route in receipts.plan:
        stats = emulator.stream(route.country, route.tenant).stats()
        if stats["handed_out"] < route.backlog or stats["concurrent_polls"] == 0:
            return False
    return True


async def feed_live(emulator: Emulator, receipts: Receipts) -> None:
    """Once the long polls wait, feed LIVE_BURSTS bursts, each recorded with its feed time."""
    while not polls_waiting(emulator, receipts):  # noqa: ASYNC110 - the emulator has no event
        await asyncio.sleep(0.02)
    for _ in range(LIVE_BURSTS):
        await asyncio.sleep(LIVE_INTERVAL)
        for route in receipts.plan:
            fed = emulator.generate(route.country, route.tenant, route.burst)
            now = time.time()
            receipts.fed_at.update({(route.name, event.id): now for event in fed})
            receipts.live += len(fed)


async def create_cases_table(target: Target) -> None:
    """The consumer's own table, beside the inbox (dropped with the rest on the next run)."""
    connection = await connect(target.url)
    try:
        await connection.execute(CREATE_CASES.format(schema=target.schema))
    finally:
        await connection.close()


async def consume_route(pool: asyncpg.Pool, schema: str, route: str) -> None:
    """An insurer's consumer of one route: each event's case counted by type, in the
    transaction that marks the event processed. Runs until cancelled.

    Cancelled while it waits for an event, it stops at once; cancelled while it holds one, it
    first lets that event's transaction end (committed, or rolled back), so the event's
    connection goes back to the pool and the pool can close."""
    count_case = COUNT_CASE.format(schema=schema)
    # An async generator: closed here, in this task, rather than later by the event loop.
    events = cast(
        AsyncGenerator[InboxEvent, None],
        consume(pool, schema=schema, routes=[route], poll_interval=1.0),
    )
    async with contextlib.aclosing(events):
        async for event in events:
            work = asyncio.ensure_future(_count_case(event, count_case))
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.gather(work, return_exceptions=True)
                raise


async def _count_case(event: InboxEvent, count_case: str) -> None:
    async with event as connection:
        case = event.payload["case"]  # an event without one fails, and is retried
        route = f"{event.country}/{event.tenant}"
        await connection.execute(count_case, route, event.event_type, case["uuid"])


# Watching and summing up -----------------------------------------------------------------------

PROGRESS = """
    SELECT (SELECT count(*) FROM "{schema}".outbox
            WHERE status IN ('pending', 'in_flight')) AS outbox_left,
           count(*) FILTER (WHERE raw IS NULL) AS events,
           count(*) FILTER (WHERE raw IS NOT NULL) AS malformed,
           count(*) FILTER (WHERE status = 'processed') AS processed,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'failed' AND raw IS NULL) AS consumer_failed
    FROM "{schema}".inbox"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Both directions as the database has them now."""

    outbox_left: int
    events: int  # inbox rows that are events
    malformed: int  # inbox rows that are not (kept raw, failed)
    processed: int
    pending: int
    consumer_failed: int  # events the consumer gave up on


async def read_snapshot(connection: asyncpg.Connection, schema: str) -> Snapshot:
    row = await connection.fetchrow(PROGRESS.format(schema=schema))
    assert row is not None
    return Snapshot(**dict(row))


def finished(snapshot: Snapshot, receipts: Receipts, feeding: asyncio.Task[None]) -> bool:
    """Everything sent, received and consumed."""
    return (
        feeding.done()
        and snapshot.outbox_left == 0
        and snapshot.events == receipts.fed
        and snapshot.malformed == receipts.malformed_sent == MALFORMED
        and snapshot.pending == 0
    )


INBOX_ROWS = """
    SELECT country || '/' || tenant AS route, event_id, event_type, status, received_at,
           raw IS NOT NULL AS malformed, last_error
    FROM "{schema}".inbox ORDER BY id"""
PAUSED = """
    SELECT country || '/' || tenant AS route, pause_reason
    FROM "{schema}".inbox_checkpoint WHERE paused_until > now() ORDER BY 1"""
CASES_EXIST = """SELECT to_regclass('"{schema}".demo_cases_by_type') IS NOT NULL"""
COUNTED = 'SELECT route, event_type, cases FROM "{schema}".demo_cases_by_type'


@dataclass
class RouteTally:
    """One route's inbox against the emulator's stream."""

    stream: list[str]  # the ids the emulator fed, in stream order
    stored: list[str] = field(default_factory=list)  # the events' ids, in inbox order
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> status -> rows
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> items

    @property
    def in_stream_order(self) -> bool:
        """The inbox holds the stream's first events, once each, in its order."""
        return self.stored == self.stream[: len(self.stored)]

    @property
    def duplicates(self) -> int:
        return len(self.stored) - len(set(self.stored))

    @property
    def missing(self) -> int:
        return len(set(self.stream) - set(self.stored))

    @property
    def unknown(self) -> int:
        return len(set(self.stored) - set(self.stream))


@dataclass
class InboxTally:
    """The inbox after the run, as the database has it, beside what the emulator sent."""

    routes: dict[str, RouteTally]
    counted: dict[tuple[str, str], int]  # (route, type) -> cases, the consumer's own table
    latencies: list[float]  # seconds from feed to received_at, of the events fed live
    paused: dict[str, str] = field(default_factory=dict)  # route -> why the relay paused it

    def _sum(self, status: str | None = None) -> int:
        return sum(
            rows
            for route in self.routes.values()
            for statuses in route.by_type.values()
            for name, rows in statuses.items()
            if status is None or name == status
        )

    @property
    def events(self) -> int:
        return self._sum()

    @property
    def malformed(self) -> int:
        return sum(sum(route.malformed.values()) for route in self.routes.values())

    @property
    def received(self) -> int:
        """Rows in the inbox: events and the items that were not events."""
        return self.events + self.malformed

    @property
    def processed(self) -> int:
        return self._sum("processed")

    @property
    def pending(self) -> int:
        return self._sum("pending")

    @property
    def failed(self) -> int:
        """Malformed items and events the consumer gave up on."""
        return self.malformed + self._sum("failed")

    @property
    def duplicates(self) -> int:
        return sum(route.duplicates for route in self.routes.values())

    @property
    def missing(self) -> int:
        """Events the emulator sent that the inbox does not hold."""
        return sum(route.missing for route in self.routes.values())

    @property
    def counted_cases(self) -> int:
        return sum(self.counted.values())

    def percentile(self, share: float) -> float | None:
        """The latency below which ``share`` of the live events arrived (nearest rank)."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def read_inbox(target: Target, receipts: Receipts) -> InboxTally:
    """The inbox as it is now, against the emulator's streams."""
    connection = await connect(target.url)
    try:
        rows = await connection.fetch(INBOX_ROWS.format(schema=target.schema))
        paused = await connection.fetch(PAUSED.format(schema=target.schema))
        counted = []
        if await connection.fetchval(CASES_EXIST.format(schema=target.schema)):
            counted = await connection.fetch(COUNTED.format(schema=target.schema))
    finally:
        await connection.close()
    routes = {name: RouteTally(list(receipts.streams.get(name, []))) for name in receipts.routes}
    latencies = []
    for row in rows:
        route = routes.setdefault(row["route"], RouteTally([]))
        if row["malformed"]:
            reason = row["last_error"] or "(no reason recorded)"
            route.malformed[reason] = route.malformed.get(reason, 0) + 1
            continue
        route.stored.append(row["event_id"])
        statuses = route.by_type.setdefault(row["event_type"] or "(no type)", {})
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        fed_at = receipts.fed_at.get((row["route"], row["event_id"]))
        if fed_at is not None:
            latencies.append(max(0.0, row["received_at"].timestamp() - fed_at))
    return InboxTally(
        routes=routes,
        counted={(row["route"], row["event_type"]): row["cases"] for row in counted},
        latencies=latencies,
        paused={row["route"]: row["pause_reason"] or "" for row in paused},
    )
