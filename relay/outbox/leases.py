"""What this process holds, until when, and the task that keeps holding it.

Every claimed row is held under its claim's token with a local deadline: the monotonic time at
which its lease runs out as far as this process knows (measured from before the statement that
set it, so never later than the database's). A row is sent only while its deadline leaves room
for the request; the keeper extends the leases of every held row each quarter lease, and a row
whose extension is refused (another claim took it) is let go at once, never sent.

The keeper also rescues: once a second it ends the leases of rows whose holding process is
gone (see ``Queries.rescue``), so they are claimed again within a second or two of a crash
instead of after a whole lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from relay.database import DatabaseCalls
from relay.metrics import Metrics
from relay.outbox.store import ClaimedRow, Store

log = structlog.get_logger("relay.outbox.leases")

# How often the keeper looks for rows of dead processes (and at most how long between two
# extensions).
RESCUE_INTERVAL = 1.0


@dataclass(slots=True)
class Held:
    row: ClaimedRow
    token: int
    deadline: float
    sending: bool = False  # handed to a sender at least once
    resulted: bool = False  # a result (or give-back) waits to be written


class Holdings:
    """The rows this process holds, by id."""

    def __init__(self, lease: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.clock = clock
        self.rows: dict[int, Held] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self.rows

    def take(self, rows: Iterable[ClaimedRow], claimed_at: float) -> list[ClaimedRow]:
        """Hold a claim's rows; return those to queue.

        A row already held here (its lease ran out while this process still had it, and this
        process claimed it again) is not queued twice: the copy already queued or in flight is
        the one sent, and its result is written under the newer token.
        """
        fresh = []
        for row in rows:
            held = self.rows.get(row.id)
            if held is None:
                self.rows[row.id] = Held(row, row.token, claimed_at + self.lease)
                fresh.append(row)
            else:
                held.token, held.deadline = row.token, claimed_at + self.lease
        return fresh

    def token(self, row_id: int) -> int | None:
        held = self.rows.get(row_id)
        return None if held is None else held.token

    def remaining(self, row_id: int) -> float:
        """Seconds of lease this process can count on for the row (0 if not held)."""
        held = self.rows.get(row_id)
        return 0.0 if held is None else held.deadline - self.clock()

    def sending(self, row_id: int) -> None:
        held = self.rows.get(row_id)
        if held is not None:
            held.sending = True

    def resulted(self, row_id: int) -> None:
        held = self.rows.get(row_id)
        if held is not None:
            held.resulted = True

    def let_go(self, row_id: int) -> None:
        self.rows.pop(row_id, None)

    def pairs(self) -> list[tuple[int, int]]:
        """(id, token) of every held row."""
        return [(row_id, held.token) for row_id, held in self.rows.items()]

    def extended(self, asked: list[tuple[int, int]], kept: set[int], at: float) -> list[int]:
        """Record an extension asked for ``asked`` at ``at``; return the ids lost."""
        lost = []
        for row_id, token in asked:
            held = self.rows.get(row_id)
            if held is None or held.token != token:
                continue  # finished (or claimed again) meanwhile: nothing to learn
            if row_id in kept:
                held.deadline = at + self.lease
            else:
                lost.append(row_id)
        return lost


class LeaseKeeper:
    """Extends held leases every quarter lease and rescues rows of dead processes."""

    def __init__(
        self,
        store: Store,
        holdings: Holdings,
        calls: DatabaseCalls,
        metrics: Metrics,
        *,
        on_lost: Callable[[list[int]], None],
        on_rescued: Callable[[], None],
        incarnation: Callable[[], int],
    ) -> None:
        self.store = store
        self.holdings = holdings
        self.calls = calls
        self.metrics = metrics
        self.on_lost = on_lost
        self.on_rescued = on_rescued
        self.incarnation = incarnation  # this process's: its own rows are never rescued
        self.interval = min(RESCUE_INTERVAL, holdings.lease / 4)
        self.extend_every = holdings.lease / 4

    async def run(self) -> None:
        last_extension = self.holdings.clock()
        while True:
            await asyncio.sleep(self.interval)
            if self.holdings.clock() - last_extension >= self.extend_every - 1e-3:
                last_extension = self.holdings.clock()
                await self.extend()
            await self.rescue()

    async def extend(self) -> None:
        asked = self.holdings.pairs()
        if not asked:
            return
        at = self.holdings.clock()
        kept = await self.calls.run("extend", lambda: self.store.extend(asked, self.holdings.lease))
        lost = self.holdings.extended(asked, kept, at)
        if lost:
            self.metrics.leases_lost.inc(len(lost))
            log.warning("outbox.leases_lost", rows=len(lost), first_id=min(lost))
            self.on_lost(lost)

    async def rescue(self) -> None:
        rescued = await self.calls.run("rescue", lambda: self.store.rescue(self.incarnation()))
        if rescued:
            self.metrics.rescued.inc(rescued)
            log.info("outbox.rescued", rows=rescued)
            self.on_rescued()
