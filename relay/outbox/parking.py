"""Keeping rows that cannot move out of the claim's way, and letting them back in.

Rows behind a dead row of their key (while dead rows block) and rows of a paused route cannot
be sent, yet they sit in the ready index where every claim would walk past them: with 100,000
of them a claim took half a second. They are parked as ``blocked``, outside that index:

* behind a dead row: after a batch that dead-letters keyed rows, and every ``SWEEP_INTERVAL``
  for rows written behind a dead row since; unparked by ``relay requeue`` (which locks the dead
  rows that parking locks, so neither misses the other's work);
* on a paused route: after the pause is set; unparked all at once when the pause is lifted (a
  success, or ``relay pause clear``; both lock the pause row that parking locks), and one row
  at a time while the pause has run out, so that exactly one probe goes first.

Parking is an optimisation, never a correctness condition: claims still check every rule, so
a row that is not (yet) parked is only skipped, not sent; and the claim looks at one row per
ordering key, so rows behind a dead row cost it one step until they are parked. When the
relay starts, and every few sweeps, rows whose reason is gone are unparked, whatever the
reason was lost to.

Jobs run one at a time on one task, off the path of the senders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from relay.database import DatabaseCalls
from relay.errors import DatabaseRefused
from relay.outbox.store import Store

log = structlog.get_logger("relay.outbox.parking")

SWEEP_INTERVAL = 30.0
# Every this many sweeps (a minute), also unpark rows whose reason is gone: a dead row deleted
# with SQL, a pause deleted by hand.
STALE_EVERY = 2
# Rows behind dead rows are parked this many per transaction, with a rest of REST times the
# batch's own time after each: parking 100,000 of them takes 1.5 s of the database's time,
# spread over 15 s, so the claims beside it keep their pace.
PARK_BATCH = 2_000
REST = 9.0

Job = Callable[[], Awaitable[int]]


class Parker:
    def __init__(self, store: Store, calls: DatabaseCalls, *, dead_blocks_key: bool) -> None:
        self.store = store
        self.calls = calls
        self.dead_blocks_key = dead_blocks_key
        self.jobs: asyncio.Queue[tuple[str, Job]] = asyncio.Queue()

    async def start(self) -> None:
        """Unpark what has no reason to wait, and park what waits behind a dead row: the
        first jobs of ``run``, off the claim's path (a million rows to park take seconds, and
        the claim steps over them meanwhile; see ``Queries.claim``)."""
        await self._do("unpark_stale", self._unpark_stale)
        if self.dead_blocks_key:
            await self._do("park_behind_dead", lambda: self._park_behind_dead(None))

    def behind_dead(self, dead_ids: list[int]) -> None:
        if self.dead_blocks_key and dead_ids:
            self.jobs.put_nowait(("park_behind_dead", lambda: self._park_behind_dead(dead_ids)))

    def route_paused(self, route: str) -> None:
        self.jobs.put_nowait(("park_route", lambda: self.store.park_route(route)))

    def route_lifted(self, route: str) -> None:
        """Its pause is gone: every parked row of the route goes back (whoever lifted the
        pause may not have known this relay's default country and tenant)."""
        self.jobs.put_nowait(("unpark_route", lambda: self.store.unpark_route(route, None)))

    def route_expired(self, route: str) -> None:
        """Let one row of a route whose pause ran out back in: it goes as the probe."""
        self.jobs.put_nowait(("unpark_probe", lambda: self.store.unpark_route(route, 1)))

    async def run(self) -> None:
        await self.start()
        sweeps = 0
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while True:
            try:
                async with asyncio.timeout(max(next_sweep - time.monotonic(), 0)):
                    name, job = await self.jobs.get()
            except TimeoutError:
                sweeps += 1
                next_sweep = time.monotonic() + SWEEP_INTERVAL
                if sweeps % STALE_EVERY == 0:
                    await self._do("unpark_stale", self._unpark_stale)
                if self.dead_blocks_key:
                    await self._do("park_behind_dead", lambda: self._park_behind_dead(None))
                continue
            await self._do(name, job)

    async def _park_behind_dead(self, dead_ids: list[int] | None) -> int:
        total = 0
        while True:
            started = time.monotonic()
            parked = await self.store.park_behind_dead(dead_ids, PARK_BATCH)
            total += parked
            if parked < PARK_BATCH:
                return total
            await asyncio.sleep((time.monotonic() - started) * REST)

    async def _unpark_stale(self) -> int:
        return await self.store.unpark_stale(dead_blocks_key=self.dead_blocks_key)

    async def _do(self, name: str, job: Job) -> None:
        try:
            rows = await self.calls.run(name, job)
        except DatabaseRefused as error:
            # Parked rows are unparked again by the next sweep of stale ones; rows not parked
            # are only skipped by claims, more slowly.
            log.error("parking.failed", job=name, error=str(error))
            return
        if rows:
            log.info("parking.done", job=name, rows=rows)
