"""One replica never sends a row twice: claims are fenced per claim token, leases are kept.

Today's failure this guards against: rows waited in the local queue with no deadline and no
lease extension, the claim took back expired rows (the worker's own included), and results
were fenced on the worker's name only, so two copies held by one worker could not be told
apart: with a lease of 3 s and a partner taking almost a second, 24 rows arrived as 26 to 31
events.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import asyncpg
import structlog

from relay.database import DatabaseCalls, create_pool
from relay.emulator import Faults
from relay.metrics import Metrics
from relay.outbox.leases import Holdings
from relay.outbox.recorder import Done, Recorder
from relay.outbox.store import Result, Store
from tests.helpers.engine import drain, engine_settings, insert_rows, status_counts
from tests.helpers.partner import running, secret_config


async def test_a_tight_lease_and_a_slow_partner_send_each_row_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 24)
    faults = Faults(latency_ms=950, token_latency_ms=900, token_lifetime=3)
    async with running(secret_config(faults=faults)) as emulator:
        settings = engine_settings(
            database_url,
            emulator,
            request_timeout=1,
            lease=3,
            concurrency=2,
            circuit_threshold=1000,
        )
        daemon = await drain(settings)
    assert await status_counts(db) == {"published": len(ids)}
    arrivals = Counter(event.body["correlationId"] for event in emulator.events)
    assert len(arrivals) == len(ids)
    assert arrivals.most_common(1)[0][1] == 1, "a row was sent twice by one relay"
    assert emulator.duplicates == 0
    # The rows outlived several leases while they waited: extensions, not luck, kept them.
    assert daemon.metrics.leases_lost._value.get() == 0


async def test_a_row_claimed_again_by_its_own_relay_is_sent_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Its lease ran out while this process still held it (the database was away, say) and
    this process claimed it again: one copy is sent, its result written under the newer token."""
    [row_id] = await insert_rows(db, 1)
    pool = await create_pool(database_url)
    try:
        store = Store(pool, "public", "w")
        first, _ = await store.claim(10, 1 << 32 | 1, lease_seconds=0.0, dead_blocks_key=True)
        holdings = Holdings(60.0)
        assert [row.id for row in holdings.take(first, 0.0)] == [row_id]
        again, _ = await store.claim(10, 1 << 32 | 2, lease_seconds=60.0, dead_blocks_key=True)
        assert [row.id for row in again] == [row_id]
        assert holdings.take(again, 0.0) == []  # not queued a second time
        recorder = Recorder(
            store, holdings, DatabaseCalls(), Metrics(), batch=1, busy=lambda: 0,
            on_written=lambda batch, written: None,
        )  # fmt: skip
        recorder.add(Done(first[0], published(first[0].id, first[0].token), None, None))
        await recorder.flush()
    finally:
        await pool.close()
    row = await db.fetchrow("SELECT status, event_api_id, claim_token FROM outbox")
    assert row is not None
    assert (row["status"], row["event_api_id"], row["claim_token"]) == (
        "published",
        "42",
        1 << 32 | 2,
    )


def published(row_id: int, token: int, event_api_id: str = "42") -> Result:
    return Result(
        id=row_id,
        token=token,
        status="published",
        attempts=1,
        delay=None,
        http_status=201,
        event_api_id=event_api_id,
        error=None,
        latency_ms=5.0,
        outcome="created",
        attempted_at=datetime.now(UTC),
    )


def failed(row_id: int, token: int, delay: float = 1.0, error: str = "HTTP 503") -> Result:
    return Result(
        id=row_id,
        token=token,
        status="pending",
        attempts=1,
        delay=delay,
        http_status=503,
        event_api_id=None,
        error=error,
        latency_ms=5.0,
        outcome="http_503",
        attempted_at=datetime.now(UTC),
    )


async def test_results_are_fenced_per_claim_but_an_accepted_publish_is_always_kept(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 2)
    pool = await create_pool(database_url)
    try:
        store = Store(pool, "public", "w")
        await store.claim(10, 7 << 32 | 1, lease_seconds=0.0, dead_blocks_key=True)
        # Another claim takes both rows over (the first claim's leases ran out).
        await store.claim(10, 9 << 32 | 1, lease_seconds=60.0, dead_blocks_key=True)
        written = await store.record(
            [failed(ids[0], 7 << 32 | 1), published(ids[1], 7 << 32 | 1, "first")]
        )
        # The second claim's own publish of the second row comes back too.
        second = await store.record([published(ids[1], 9 << 32 | 1, "second")])
    finally:
        await pool.close()
    assert written == {ids[1]}
    assert second == set()
    rows = await db.fetch("SELECT id, status, event_api_id FROM outbox ORDER BY id")
    assert [(r["status"], r["event_api_id"]) for r in rows] == [
        ("in_flight", None),  # the stale failure did not touch the row the new claim holds
        ("published", "first"),  # Scalepoint has it: its _id is never thrown away
    ]
    log = await db.fetch("SELECT outbox_id, event_api_id FROM outbox_delivery ORDER BY id")
    # Both accepted publishes are in the delivery log, the fenced failure is not.
    assert [(r["outbox_id"], r["event_api_id"]) for r in log] == [
        (ids[1], "first"),
        (ids[1], "second"),
    ]


async def test_a_result_written_twice_logs_its_attempt_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The write of a batch committed, its answer was lost with the connection, and the
    write was retried: the accepted publish is kept once, and so is its delivery-log row (the
    table refuses a second row for one claim). Also after the row's lease ran out and another
    claim, rescued, published it again: one row for each claim."""
    ids = await insert_rows(db, 2)
    pool = await create_pool(database_url)
    try:
        store = Store(pool, "public", "w")
        await store.claim(10, 7 << 32 | 1, lease_seconds=0.0, dead_blocks_key=True)
        first = [published(ids[0], 7 << 32 | 1), failed(ids[1], 7 << 32 | 1, delay=0.0)]
        assert await store.record(first) == set(ids)
        assert await store.record(first) == set()  # the retry: the fence and the log hold
        again, _ = await store.claim(10, 9 << 32 | 1, lease_seconds=60.0, dead_blocks_key=True)
        assert [row.id for row in again] == [ids[1]]
        rescued = published(ids[1], 9 << 32 | 1, "second")
        assert await store.record([rescued]) == {ids[1]}
        assert await store.record([rescued]) == set()
    finally:
        await pool.close()
    log = await db.fetch(
        "SELECT outbox_id, outcome, claim_token FROM outbox_delivery ORDER BY outbox_id, id"
    )
    assert [(r["outbox_id"], r["outcome"], r["claim_token"]) for r in log] == [
        (ids[0], "created", 7 << 32 | 1),
        (ids[1], "http_503", 7 << 32 | 1),
        (ids[1], "created", 9 << 32 | 1),
    ]


async def test_a_batch_the_database_refuses_is_written_row_by_row(
    db: asyncpg.Connection, database_url: str
) -> None:
    """One row's data breaks the batched statement (here a delay no timestamp can hold); the
    other rows' results are still written, and the refused one is left to its lease."""
    ids = await insert_rows(db, 3)
    pool = await create_pool(database_url)
    try:
        store = Store(pool, "public", "w")
        token = 5 << 32 | 1
        rows, _ = await store.claim(10, token, lease_seconds=60.0, dead_blocks_key=True)
        holdings = Holdings(60.0)
        holdings.take(rows, 0.0)
        recorder = Recorder(
            store, holdings, DatabaseCalls(), Metrics(), batch=3, busy=lambda: 0,
            on_written=lambda batch, written: None,
        )  # fmt: skip
        results = [
            published(ids[0], token),
            failed(ids[1], token, delay=1e300),
            failed(ids[2], token),
        ]
        for row, result in zip(rows, results, strict=True):
            recorder.add(Done(row, result, None, None))
        with structlog.testing.capture_logs() as logs:
            await recorder.flush()
    finally:
        await pool.close()
    states = await db.fetch("SELECT status FROM outbox ORDER BY id")
    assert [row["status"] for row in states] == ["published", "in_flight", "pending"]
    events = [entry["event"] for entry in logs]
    assert "outbox.batch_refused" in events
    assert "outbox.result_refused" in events
