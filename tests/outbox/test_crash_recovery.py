"""A relay killed with SIGKILL: its rows are sent again within about a second, not a lease.

Each relay holds an advisory lock for as long as its process lives and writes its incarnation
into its claims; the lock goes with the process, and another relay (or the restarted one)
ends those rows' leases at once. Today's main waited out the whole lease (60 s by default),
and named its claims after hostname:pid, which repeats across container restarts (pid 1).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from relay.database import create_pool
from relay.emulator import Faults
from relay.outbox.queries import LIVENESS_LOCK_CLASS
from relay.outbox.store import Store
from tests.helpers.engine import (
    drain,
    engine_settings,
    eventually,
    insert_rows,
    relay_env,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running, secret_config, wait_for
from tests.helpers.process import start_relay

ROWS = 8
CONCURRENCY = 4
# Both relays call themselves what a container's only process would.
WORKER_ID = "relay-0:1"


async def live_relays(db: asyncpg.Connection) -> int:
    count = await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 "
        "AND objsubid = 2 AND granted",
        LIVENESS_LOCK_CLASS,
    )
    return int(count)


async def all_held(db: asyncpg.Connection) -> bool:
    held = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'in_flight'")
    return bool(held == ROWS)


async def published(db: asyncpg.Connection) -> bool:
    return await status_counts(db) == {"published": ROWS}


async def test_a_surviving_relay_sends_a_killed_relays_rows_within_two_seconds(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, ROWS)
    async with running(secret_config(faults=Faults(latency_ms=3000))) as emulator:
        env = relay_env(
            database_url,
            emulator,
            RELAY_CONCURRENCY=str(CONCURRENCY),
            RELAY_WORKER_ID=WORKER_ID,
            RELAY_POLL_INTERVAL="5s",
        )
        doomed = await start_relay(env)
        survivor = None
        try:
            # The doomed relay holds every row: one in flight (a route it has not yet seen
            # answer gets an eighth of the senders), the others queued behind it.
            await eventually(lambda: all_held(db), within=30)
            await wait_for(lambda: emulator.stats()["in_flight"] >= 1, within=30)
            survivor = await start_relay(env)
            await eventually(lambda: _count_is(db, 2), within=30)
            held = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'in_flight'")
            emulator.set_faults(latency_ms=0)
            killed_at = time.monotonic()
            doomed.kill()
            await doomed.wait()
            await eventually(lambda: published(db), within=30)
            took = time.monotonic() - killed_at
        finally:
            for process in (doomed, survivor):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
    assert took <= 2.0, f"the killed relay's rows took {took:.2f}s to be sent again"
    # Taken back from a relay that stopped: counted, so a row that kills relays dies.
    stops = await db.fetchval("SELECT sum(stops) FROM outbox")
    assert stops == held


async def _count_is(db: asyncpg.Connection, relays: int) -> bool:
    return await live_relays(db) == relays


async def test_a_restarted_relay_sends_its_predecessors_rows_as_soon_as_it_is_up(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, ROWS)
    async with running(secret_config(faults=Faults(latency_ms=3000))) as emulator:
        env = relay_env(
            database_url,
            emulator,
            RELAY_CONCURRENCY=str(CONCURRENCY),
            RELAY_WORKER_ID=WORKER_ID,
        )
        first = await start_relay(env)
        await eventually(lambda: all_held(db), within=30)
        emulator.set_faults(latency_ms=0)
        first.kill()
        await first.wait()
        second = await start_relay(env, "--drain")
        try:
            await eventually(lambda: _count_is(db, 1), within=30)
            up_at = time.monotonic()
            await eventually(lambda: published(db), within=30)
            took = time.monotonic() - up_at
            await asyncio.wait_for(second.wait(), 30)
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
    assert second.returncode == 0
    assert took <= 2.0, f"the restarted relay took {took:.2f}s to send the rows again"


async def test_a_row_that_keeps_stopping_relays_is_dead_after_max_attempts_stops(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Taken back from a relay that stopped with it once already: with RELAY_MAX_ATTEMPTS=2,
    this second stop makes it dead, unsent, with the reason, instead of stopping a third relay."""
    [row_id] = await insert_rows(db, 1)
    await db.execute(
        "UPDATE outbox SET status = 'in_flight', attempts = 1, stops = 1, "
        "claim_token = (12345::bigint << 32) | 1, lease_until = now() - interval '1 second' "
        "WHERE id = $1",
        row_id,
    )
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator, max_attempts=2))
    row = await db.fetchrow("SELECT status, stops, last_error FROM outbox WHERE id = $1", row_id)
    assert row is not None
    assert (row["status"], row["stops"]) == ("dead", 2)
    assert row["last_error"] == "the relay stopped while sending it 2 times"
    assert emulator.stats()["events"] == 0


async def test_a_relay_that_loses_its_liveness_connection_sends_none_of_its_queued_rows(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Its liveness lock went with the connection, so another relay may take its rows at once:
    it gives back what it had queued (unsent, no attempt used) and takes its lock again."""
    await insert_rows(db, 12)
    async with running(secret_config(faults=Faults(latency_ms=400))) as emulator:
        settings = engine_settings(database_url, emulator, concurrency=2)
        async with running_daemon(settings) as daemon:
            assert daemon.worker is not None
            worker = daemon.worker
            await wait_for(lambda: len(worker.queue) >= 2, within=10)
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'relay liveness' AND datname = current_database()"
            )
            assert killed == 1
            counter = daemon.metrics.given_back.labels("liveness_lost")
            # The loss is seen at once (the server closes the connection) and the lock taken
            # again within milliseconds: wait for what the loss did, not for the gap.
            await wait_for(lambda: counter._value.get() >= 1, within=5)
            await wait_for(lambda: worker.liveness.alive.is_set(), within=10)
            await eventually(lambda: _all_published(db, 12), within=30)
            given_back = counter._value.get()
    assert given_back >= 2
    assert emulator.duplicates == 0


async def _all_published(db: asyncpg.Connection, rows: int) -> bool:
    return await status_counts(db) == {"published": rows}


async def test_a_relay_never_rescues_its_own_rows(
    db: asyncpg.Connection, database_url: str
) -> None:
    """While its liveness connection is made again (the database restarted, say), a relay's
    lock is briefly free: its own rescue must not end the leases of the rows it still holds,
    or its next claim takes them anew and the results it was about to write are fenced out."""
    await insert_rows(db, 3)
    pool = await create_pool(database_url)
    try:
        store = Store(pool, "public", "w")
        await store.claim(10, 7 << 32 | 1, lease_seconds=60.0, dead_blocks_key=True)
        # No liveness lock is held for incarnation 7: to anyone else it is gone.
        assert await store.rescue(own_incarnation=7) == 0
        assert await store.rescue(own_incarnation=8) == 3
    finally:
        await pool.close()
