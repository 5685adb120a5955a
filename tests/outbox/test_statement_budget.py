"""Database work per published event stays within budget at full load.

2,000 rows drain through the in-process daemon (default concurrency and claim batch) against
the in-process emulator while every query method of asyncpg's ``Connection`` is wrapped to
count its calls and forward them unchanged to the real database. The relay claims and
records in batches, so its statements per published event must stay far below one.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from asyncpg.connection import Connection

from relay.outbox.queries import Queries
from tests.helpers.engine import drain, engine_settings, insert_rows, status_counts
from tests.helpers.partner import running

ROWS = 2_000
# Statements per published event. The shipped engine needs about a third of this at full
# load (bench: docs/benchmarks.md); a per-row statement anywhere pushes it past 1.
BUDGET = 0.2
METHODS = ("execute", "executemany", "fetch", "fetchrow", "fetchval")


class Calls:
    """Calls per statement, named after ``relay.outbox.queries`` (``claim``, ``record``, ...)."""

    def __init__(self) -> None:
        queries = Queries("public")
        self.names = {
            getattr(queries, name): name
            for name in dir(Queries)
            if isinstance(getattr(Queries, name), property)
        }
        self.counts: Counter[str] = Counter()

    def count(self, connection: Connection, query: str) -> None:
        if query in self.names:
            self.counts[self.names[query]] += 1
        elif query == connection.get_reset_query():
            self.counts["pool_reset"] += 1  # asyncpg's, sent on each release to the pool
        else:
            self.counts["other"] += 1

    @property
    def statements(self) -> int:
        """The relay's own statements (the pool's reset query is the driver's)."""
        return sum(n for name, n in self.counts.items() if name != "pool_reset")


def _counting(
    calls: Calls, original: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def counted(connection: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        calls.count(connection, query)
        return await original(connection, query, *args, **kwargs)

    return counted


@contextmanager
def counting() -> Iterator[Calls]:
    """Count every query sent on any asyncpg connection inside the block."""
    calls = Calls()
    with pytest.MonkeyPatch.context() as patch:
        for method in METHODS:
            patch.setattr(Connection, method, _counting(calls, getattr(Connection, method)))
        yield calls


async def test_statements_per_published_event_within_budget(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, ROWS)
    async with running() as emulator:
        with counting() as calls:
            await drain(engine_settings(database_url, emulator))
    assert await status_counts(db) == {"published": ROWS}
    assert emulator.stats()["events"] == ROWS
    # The counter must have seen the engine at work, or the budget proves nothing.
    assert calls.counts["claim"] > 0
    assert calls.counts["record"] > 0
    per_event = calls.statements / ROWS
    assert per_event <= BUDGET, (
        f"{per_event:.3f} statements per published event (budget {BUDGET}); "
        f"calls: {dict(calls.counts)}"
    )
