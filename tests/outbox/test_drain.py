"""``relay run --drain`` waits with a timer, and ends with its counts; ``relay run`` stops on time.

Every test runs the real command against a real database and the emulator, and measures what
an operator would: database load while it waits, how long it takes, its exit code and its
last line.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from relay.emulator import Faults
from tests.conftest import Databases, with_database
from tests.helpers.attacks import get, insert_text, payload_text
from tests.helpers.engine import (
    arrival_order_by_key,
    eventually,
    insert_rows,
    relay_env,
    status_counts,
)
from tests.helpers.partner import running, secret_config, wait_for
from tests.helpers.process import Finished, RelayProcess

# PostgreSQL folds a backend's counters into pg_stat_database at most once a second
# (PGSTAT_MIN_INTERVAL), so a window of the counter starts this long after the load it
# measures has settled, or it would count the start-up's statements too.
STATS_FLUSH = 1.0


@pytest.fixture
async def monitor(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for reading statistics and taking locks."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def committed(monitor: asyncpg.Connection) -> int:
    count: int = await monitor.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return count


async def ready(relay: RelayProcess) -> None:
    """Wait until the relay's /readyz says ready."""
    port = await relay.http_port()

    async def answers_ready() -> bool:
        return (await get(f"http://127.0.0.1:{port}/readyz"))[0] == 200

    await eventually(answers_ready, within=10)


# Waiting -----------------------------------------------------------------------------------------


async def test_a_key_held_by_an_open_producer_transaction_is_waited_for_not_polled(
    db: asyncpg.Connection, database_url: str, monitor: asyncpg.Connection
) -> None:
    [first] = await insert_rows(db, 1, ordering_key="k")
    producer = await asyncpg.connect(database_url)
    try:
        transaction = producer.transaction()
        await transaction.start()
        # The insert trigger holds key k's advisory lock (shared) until this transaction ends:
        # no relay can claim a row of k meanwhile, the committed one included.
        [second] = await insert_rows(producer, 1, ordering_key="k")
        async with running() as emulator:
            relay = await RelayProcess.start(relay_env(database_url, emulator), "run", "--drain")
            try:
                await ready(relay)
                await asyncio.sleep(STATS_FLUSH)  # see STATS_FLUSH
                before = await committed(monitor)
                await asyncio.sleep(3)  # the measurement window itself
                during = await committed(monitor) - before
                assert emulator.stats()["events"] == 0
                assert relay.process.returncode is None  # still waiting, not given up
                await transaction.commit()
                released = time.monotonic()
                finished = await relay.finish(within=20, since=released)
            finally:
                await relay.stop()
            order = await arrival_order_by_key(db, emulator)
    finally:
        await producer.close()
    # A claim and a count per poll (500 ms here), the pause reads, the lease keeper's rescue
    # once a second: about 20 in 3 s on a quiet machine, up to twice that on a loaded one,
    # where a busy loop made 150 a second (450 in the window).
    assert during <= 60, f"{during} transactions committed in 3 s of waiting"
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.took < 3, f"drain ended {finished.took:.1f}s after the producer committed"
    assert order == {"k": [first, second]}
    assert await status_counts(db) == {"published": 2}
    assert finished.stdout_lines[-1] == (
        "relay: drained: 2 published, 0 dead, 0 blocked behind dead rows"
    )


async def test_a_row_in_flight_without_a_lease_is_taken_as_expired(
    db: asyncpg.Connection, database_url: str
) -> None:
    """An older relay, or an operator by hand, left a row in flight with no lease_until."""
    [orphan] = await insert_rows(db, 1, ordering_key="case-7")
    [behind] = await insert_rows(db, 1, ordering_key="case-7")
    await db.execute(
        "UPDATE outbox SET status = 'in_flight', lease_until = NULL, claimed_by = 'relay-0.9', "
        "attempts = 1 WHERE id = $1",
        orphan,
    )
    async with running() as emulator:
        relay = await RelayProcess.start(relay_env(database_url, emulator), "run", "--drain")
        try:
            finished = await relay.finish(within=30)
        finally:
            await relay.stop()
        order = await arrival_order_by_key(db, emulator)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.took < 5, f"{finished.took:.1f}s"
    assert order == {"case-7": [orphan, behind]}
    assert await status_counts(db) == {"published": 2}


# The closing line --------------------------------------------------------------------------------


async def test_drain_ends_with_its_counts_and_exit_code_3_when_rows_wait_behind_a_dead_row(
    db: asyncpg.Connection, database_url: str
) -> None:
    [dead, *behind] = await insert_rows(db, 3, ordering_key="case-1")
    await db.execute("UPDATE outbox SET status = 'dead', last_error = 'hand' WHERE id = $1", dead)
    free = await insert_rows(db, 5)
    async with running() as emulator:
        relay = await RelayProcess.start(relay_env(database_url, emulator), "run", "--drain")
        try:
            finished = await relay.finish(within=30)
        finally:
            await relay.stop()
    assert finished.returncode == 3, finished.stderr[-3000:]
    assert finished.stdout_lines[-1] == (
        "relay: drained: 5 published, 0 dead, 2 blocked behind dead rows"
    )
    assert emulator.stats()["events"] == len(free)
    statuses = await db.fetch("SELECT status FROM outbox WHERE id = ANY($1) ORDER BY id", behind)
    # Not sent; parked (blocked) unless the drain ended before parking came to them.
    assert {row["status"] for row in statuses} <= {"pending", "blocked"}


async def test_drain_leaves_the_rows_of_a_refused_route_and_says_so(
    db: asyncpg.Connection, database_url: str
) -> None:
    """A route the partner answers 403 is paused after one refusal; its rows cannot go until
    the refusal is mended, so --drain does not wait for them (before: up to 24 hours of
    retries): it sends the others, names what it left and why, and exits 3 within seconds."""
    free = await insert_rows(db, 20)
    refused = [await insert_text(db, payload_text(), tenant="refused") for _ in range(5)]
    async with running() as emulator:
        emulator.set_faults(route_status={"dk/refused": 403})
        relay = await RelayProcess.start(relay_env(database_url, emulator), "run", "--drain")
        try:
            finished = await relay.finish(within=30)
        finally:
            await relay.stop()
    assert finished.returncode == 3, finished.stderr[-3000:]
    assert finished.stdout_lines[-1] == (
        "relay: drained: 20 published, 0 dead, 0 blocked behind dead rows; "
        "5 rows of dk/refused, paused after a refusal (http_403)"
    )
    assert emulator.stats()["events"] == len(free)
    # One round (the eighth of the 32 senders a route gets before it answers), then paused.
    assert emulator.sends_by_route["dk/refused"] <= 32 // 8
    rows = await db.fetch("SELECT status, attempts FROM outbox WHERE id = ANY($1)", refused)
    assert {(row["status"], row["attempts"]) for row in rows} <= {("pending", 0), ("blocked", 0)}


async def test_drain_without_blocked_rows_exits_0_and_counts_the_rows_it_killed(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 5)
    await insert_text(db, payload_text(fields={"timestamp": "null"}))  # dead at its first try
    async with running() as emulator:
        relay = await RelayProcess.start(relay_env(database_url, emulator), "run", "--drain")
        try:
            finished = await relay.finish(within=30)
        finally:
            await relay.stop()
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout_lines[-1] == (
        "relay: drained: 5 published, 1 dead, 0 blocked behind dead rows"
    )


# Starting and stopping ---------------------------------------------------------------------------


async def test_a_taken_http_port_exits_2_with_one_line_naming_the_setting(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running() as emulator:
            env = relay_env(database_url, emulator, RELAY_HTTP_PORT=str(port))
            relay = await RelayProcess.start(env, "run")
            try:
                finished = await relay.finish(within=30)
            finally:
                await relay.stop()
    assert finished.returncode == 2, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr
    assert finished.stderr.splitlines() == [finished.stderr.strip()], finished.stderr
    assert "RELAY_HTTP_PORT" in finished.stderr
    assert f"127.0.0.1:{port}" in finished.stderr
    assert finished.stdout == ""
    assert emulator.stats()["events"] == 0  # nothing was sent by a relay that could not start
    assert await status_counts(db) == {"pending": 3}


@dataclass(frozen=True)
class BlockedStop:
    """A ``relay run`` stopped while every statement it ran on the outbox waited on a lock."""

    grace: float
    took: float  # from SIGTERM to exit
    returncode: int
    stderr: str
    rows: int
    after: dict[str, int]  # rows by status after a following --drain
    drain_returncode: int


async def blocked_stop(database_url: str) -> BlockedStop:
    grace = 2.0
    db = await asyncpg.connect(database_url)
    monitor = await asyncpg.connect(database_url)
    try:
        ids = await insert_rows(db, 400)
        config = secret_config(faults=Faults(latency_ms=500))
        async with running(config) as emulator:
            env = relay_env(
                database_url, emulator, RELAY_SHUTDOWN_GRACE="2s", RELAY_CONCURRENCY="16"
            )
            relay = await RelayProcess.start(env, "run")
            try:
                await wait_for(lambda: emulator.stats()["in_flight"] >= 16, within=20)
                finished = await stop_while_locked(relay, db, monitor, grace)
            finally:
                await relay.stop()
            # Whatever it could not write or give back comes back to the next relay.
            after = await RelayProcess.start(relay_env(database_url, emulator), "run", "--drain")
            try:
                drained = await after.finish(within=60)
            finally:
                await after.stop()
        return BlockedStop(
            grace,
            finished.took,
            finished.returncode,
            finished.stderr,
            len(ids),
            await status_counts(db),
            drained.returncode,
        )
    finally:
        await db.close()
        await monitor.close()


async def stop_while_locked(
    relay: RelayProcess, db: asyncpg.Connection, monitor: asyncpg.Connection, grace: float
) -> Finished:
    """Lock the outbox from ``monitor``, wait until the relay waits on it, send SIGTERM."""
    locker = monitor.transaction()
    await locker.start()
    await monitor.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
    try:

        async def relay_blocked() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'relay' AND wait_event_type = 'Lock'"
            )
            return bool(waiting > 0)

        await eventually(relay_blocked, within=10)
        signalled = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        return await relay.finish(within=grace + 20, since=signalled)
    finally:
        await locker.rollback()


@pytest.fixture(scope="module")
def stopped_while_blocked(databases: Databases) -> Iterator[BlockedStop]:
    """One run shared by the tests below (it takes ten seconds)."""
    name = databases.create()
    try:
        yield asyncio.run(blocked_stop(with_database(databases.admin_url, name)))
    finally:
        databases.drop(name)


def test_a_stop_while_the_database_blocks_loses_nothing(stopped_while_blocked: BlockedStop) -> None:
    run = stopped_while_blocked
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.drain_returncode == 0
    assert run.after == {"published": run.rows}


def test_a_stop_while_the_database_blocks_ends_within_grace_plus_7_seconds(
    stopped_while_blocked: BlockedStop,
) -> None:
    run = stopped_while_blocked
    assert run.took <= run.grace + 7, f"stopped {run.took:.1f}s after SIGTERM"
