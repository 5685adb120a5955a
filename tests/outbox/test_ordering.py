"""Rows of one ordering key go out one at a time, in id order, whatever races the producers,
the claims and the operators run.

The claim takes a key's advisory lock before it looks for earlier rows of the key, and looks
with a fresh snapshot (see ``outbox_key_ready`` in migration 0002). Today's main did both in
one statement with one snapshot: a producer that committed the earlier row between the
statement's start and the lock let the later row go first.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from relay.outbox.queries import Queries
from tests.helpers.engine import insert_rows

CLAIM = Queries("public").claim
# Rows of a paused route sit before the keyed rows in the ready index: the claim walks past
# them one by one, which holds its snapshot open long enough to commit a row meanwhile.
FILLER = 300_000


async def claim(
    connection: asyncpg.Connection, token: int, limit: int = 10, *, dead_blocks_key: bool = True
) -> list[int]:
    """The ids one claim takes (its keys stepped through from the first)."""
    rows = await connection.fetch(
        CLAIM, limit, "w", "dk", "abc", dead_blocks_key, 60.0, token, "", 2 * limit, []
    )
    return sorted(row["id"] for row in rows if row["id"] is not None)


async def executing(watcher: asyncpg.Connection, pid: int) -> bool:
    """The backend runs a statement and holds its snapshot (taken when it was bound)."""
    row = await watcher.fetchrow(
        "SELECT state, backend_xmin FROM pg_stat_activity WHERE pid = $1", pid
    )
    return row is not None and row["state"] == "active" and row["backend_xmin"] is not None


async def test_an_earlier_row_committed_during_the_claim_still_goes_first(
    database_url: str,
) -> None:
    producer = await asyncpg.connect(database_url)
    relay = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        await watcher.execute(
            "INSERT INTO relay_pause (route, until, kind, reason, set_by) "
            "VALUES ('dk/filler', now() + interval '1 hour', 'configuration', 'test', 'test')"
        )
        await watcher.execute(
            "INSERT INTO outbox (event_type, payload, tenant, available_at) "
            "SELECT 'e', '{}', 'filler', now() - interval '1 hour' "
            f"FROM generate_series(1, {FILLER})"
        )
        await watcher.execute("ANALYZE outbox")
        # Prepared now, so the claim below is bound (and takes its snapshot) at once.
        assert await claim(relay, 1 << 32) == []
        early = producer.transaction()
        await early.start()
        (small,) = await insert_rows(producer, 1, ordering_key="case-1")
        (large,) = await insert_rows(watcher, 1, ordering_key="case-1")  # committed
        assert small < large
        pid = relay.get_server_pid()
        claiming = asyncio.create_task(claim(relay, 1 << 32 | 1))
        while not await executing(watcher, pid):  # noqa: ASYNC110 - state in the server
            await asyncio.sleep(0.001)
        await early.commit()  # the smaller id commits after the claim took its snapshot
        during = await executing(watcher, pid)
        claimed = await claiming
        if not during:
            pytest.fail("the claim ended before the commit: raise FILLER to widen the window")
        assert large not in claimed, "the later row of the key was claimed before the earlier"
        # The earlier row goes next: in the next claim, or already in this one when its
        # execution snapshot came after the commit (the extended protocol can take it a moment
        # after the bind that made the backend active; on a busy machine that moment grows).
        # The later one goes only after it is finished.
        claimed += await claim(relay, 1 << 32 | 2)
        assert claimed == [small]
        assert await claim(relay, 1 << 32 | 3) == []
    finally:
        for connection in (producer, relay, watcher):
            await connection.close()


async def test_a_requeued_dead_row_waits_while_a_later_row_of_its_key_is_in_flight(
    db: asyncpg.Connection,
) -> None:
    """With RELAY_DEAD_BLOCKS_KEY=false the key moved on past its dead row; requeueing that
    row must not put two rows of the key in flight at once."""
    first, second, _third = await insert_rows(db, 3, ordering_key="case-2")
    await db.execute("UPDATE outbox SET status = 'dead' WHERE id = $1", first)
    assert await claim(db, 1 << 32 | 1, dead_blocks_key=False) == [second]
    await db.execute(
        "UPDATE outbox SET status = 'pending', attempts = 0 WHERE id = $1", first
    )  # what relay requeue does to the dead row
    # Neither the requeued row nor the third: the second is in flight.
    assert await claim(db, 1 << 32 | 2, dead_blocks_key=False) == []
    await db.execute("UPDATE outbox SET status = 'published' WHERE id = $1", second)
    assert await claim(db, 1 << 32 | 3, dead_blocks_key=False) == [first]
