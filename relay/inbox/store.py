"""The daemon's pooled view of the inbox: the sampled gauges and retention.

Receiving itself runs on each route's own connection (``relay.inbox.receiver``); this is what
the daemon does beside it, one short statement at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from relay.inbox.queries import InboxQueries


@dataclass(frozen=True, slots=True)
class RouteSample:
    country: str
    tenant: str
    lag: float | None  # seconds behind the newest received event's own time
    age: float  # seconds since the route last answered
    pending: int  # events waiting for the insurer's consumers
    oldest_pending: float  # seconds since the oldest of them was received; 0 when none


class InboxStore:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.queries = InboxQueries(schema)

    async def route_sample(self) -> list[RouteSample]:
        rows = await self.pool.fetch(self.queries.route_sample)
        return [RouteSample(**dict(row)) for row in rows]

    async def purge_processed(self, older_than_seconds: float, batch: int = 1000) -> int:
        """Delete one batch of processed events; return how many went."""
        status = await self.pool.execute(self.queries.purge_processed, older_than_seconds, batch)
        return int(status.split()[-1])
