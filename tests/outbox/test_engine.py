"""The engine against a real PostgreSQL and the emulator over real sockets."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import asyncpg

from relay.daemon import Daemon
from relay.emulator import Faults
from tests.helpers.engine import (
    arrival_order_by_key,
    drain,
    engine_settings,
    insert_rows,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running, secret_config, wait_for


def claims(daemon: Daemon) -> float:
    """How many claim statements the daemon has run."""
    for metric in daemon.metrics.claim_batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def test_ten_thousand_rows_are_published_exactly_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 10_000)
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator, concurrency=32))
    assert await status_counts(db) == {"published": len(ids)}
    assert emulator.stats()["events"] == len(ids)
    assert emulator.duplicates == 0
    missing = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_api_id IS NULL OR published_at IS NULL"
    )
    assert missing == 0
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery") == len(ids)
    assert emulator.max_concurrency <= 32


async def test_concurrency_is_bounded_and_used(db: asyncpg.Connection, database_url: str) -> None:
    await insert_rows(db, 300)
    config = secret_config(faults=Faults(latency_ms=20))
    async with running(config) as emulator:
        await drain(engine_settings(database_url, emulator, concurrency=8))
    assert emulator.max_concurrency == 8


async def test_bad_rows_are_dead_lettered_before_any_request(
    db: asyncpg.Connection, database_url: str
) -> None:
    good = await insert_rows(db, 20)
    bad = {
        "array": "[1, 2]",
        "missing": '{"eventType": "payment_status_updated", "payloadVersion": "1.0.0"}',
        "mismatch": '{"eventType": "case_created", "payloadVersion": "1.0.0", '
        '"correlationId": "70c6d351-016f-4c9e-b1a9-d581fc3a596b", '
        '"timestamp": "2017-07-25T10:31:28Z"}',
    }
    for body in bad.values():
        await db.execute(
            "INSERT INTO outbox (event_type, payload) VALUES ('payment_status_updated', $1::jsonb)",
            body,
        )
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
    assert emulator.stats()["events"] == len(good)
    dead = await db.fetch("SELECT last_error FROM outbox WHERE status = 'dead' ORDER BY id")
    reasons = [row["last_error"] for row in dead]
    assert reasons[0] == "payload must be a JSON object, not a JSON array"
    assert reasons[1] == "payload is missing correlationId, timestamp"
    assert "disagrees with event_type" in reasons[2]


async def test_permanent_rejection_is_dead_with_the_partner_message(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 3)
    config = secret_config(faults=Faults(status=400))
    async with running(config) as emulator:
        await drain(engine_settings(database_url, emulator))
    rows = await db.fetch("SELECT status, last_http_status, attempts FROM outbox")
    assert {(r["status"], r["last_http_status"], r["attempts"]) for r in rows} == {("dead", 400, 1)}


async def test_outage_longer_than_the_backoff_cap_kills_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 300)
    config = secret_config(faults=Faults(status=503))
    async with running(config) as emulator:
        settings = engine_settings(
            database_url,
            emulator,
            concurrency=16,
            backoff_cap=0.05,
            circuit_threshold=5,
            circuit_pause=0.05,
            circuit_pause_cap=0.2,
            max_attempts=3,
            max_age=0,
        )
        async with running_daemon(settings) as daemon:
            await wait_for(
                lambda: daemon.worker is not None and daemon.worker.gate.circuit_state() != "closed"
            )
            # Stay down through five probes: pauses of 0.05, 0.1, 0.2, 0.2 and 0.2 s, far past
            # the 0.05 s backoff cap, so every row could have used all its attempts.
            opened_at = emulator.status_counts[503]
            await wait_for(lambda: emulator.status_counts[503] >= opened_at + 5, within=10)
            assert await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'dead'") == 0
            failed_requests = emulator.status_counts[503]
            emulator.set_faults(status=None)
            await wait_for(lambda: emulator.stats()["events"] == len(ids), within=20)
    assert await status_counts(db) == {"published": len(ids)}
    # Without the circuit each row would have used max_attempts (3) requests before dying.
    assert failed_requests < len(ids)
    assert await db.fetchval("SELECT count(*) FROM relay_pause") == 0


async def test_per_key_order_holds_under_random_transient_failures(
    db: asyncpg.Connection, database_url: str
) -> None:
    rng = random.Random(7)
    keys = [f"case-{rng.randrange(20)}" if rng.random() < 0.8 else None for _ in range(600)]
    await insert_rows(db, len(keys), keys=keys)  # type: ignore[arg-type]
    config = secret_config(faults=Faults(error_rate=0.2, error_status=503))
    async with running(config) as emulator:
        await drain(engine_settings(database_url, emulator, concurrency=16, circuit_threshold=1000))
    assert await status_counts(db) == {"published": len(keys)}
    for key, order in (await arrival_order_by_key(db, emulator)).items():
        delivered = [row_id for i, row_id in enumerate(order) if row_id not in order[:i]]
        assert delivered == sorted(delivered), key


async def test_replicas_share_one_table_without_duplicates(
    db: asyncpg.Connection, database_url: str
) -> None:
    rng = random.Random(3)
    keys = [f"k{rng.randrange(40)}" if rng.random() < 0.5 else None for _ in range(3000)]
    await insert_rows(db, len(keys), keys=keys)  # type: ignore[arg-type]
    for replicas in (2, 4):
        if replicas == 4:
            await db.execute("UPDATE outbox SET status = 'pending', event_api_id = NULL")
        config = secret_config(faults=Faults(latency_ms=1))
        async with running(config) as emulator:
            await asyncio.gather(
                *(
                    drain(engine_settings(database_url, emulator, concurrency=8))
                    for _ in range(replicas)
                )
            )
        assert await status_counts(db) == {"published": len(keys)}
        assert emulator.duplicates == 0
        assert Counter(e.body["correlationId"] for e in emulator.events).most_common(1)[0][1] == 1
        for key, order in (await arrival_order_by_key(db, emulator)).items():
            assert order == sorted(order), key
        workers = await db.fetchval("SELECT count(DISTINCT worker) FROM outbox_delivery")
        assert workers >= 2


async def test_terminated_connections_are_survived(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 2000)
    config = secret_config(faults=Faults(latency_ms=5))
    async with running(config) as emulator:
        settings = engine_settings(database_url, emulator, concurrency=16)
        run = asyncio.create_task(drain(settings))
        await wait_for(lambda: emulator.stats()["events"] >= 300, within=20)
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND application_name = 'relay'"
        )
        assert killed >= 1
        await asyncio.wait_for(run, 60)
    assert await status_counts(db) == {"published": len(ids)}
    assert emulator.duplicates == 0


async def test_a_key_waits_for_an_earlier_id_that_commits_later(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Two producers: the smaller id commits after the larger one; order must still hold."""
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    try:
        early = first.transaction()
        await early.start()
        (small_id,) = await insert_rows(first, 1, ordering_key="case-1")
        async with second.transaction():
            (large_id,) = await insert_rows(second, 1, ordering_key="case-1")
        assert small_id < large_id
        async with running() as emulator:
            settings = engine_settings(database_url, emulator, poll_interval=0.05)
            async with running_daemon(settings) as daemon:
                # The larger id is committed and visible, yet must not go first. Let the relay
                # claim several times, so it would make the mistake if it could.
                before = claims(daemon)
                await wait_for(lambda: claims(daemon) >= before + 5)
                assert emulator.stats()["events"] == 0
                await early.commit()
                await wait_for(lambda: emulator.stats()["events"] == 2)
            order = await arrival_order_by_key(db, emulator)
        assert order == {"case-1": [small_id, large_id]}
    finally:
        await first.close()
        await second.close()


async def test_a_dead_row_blocks_its_key_until_requeued(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 3, ordering_key="case-9")
    await db.execute(
        "UPDATE outbox SET status = 'dead', last_error = 'test' "
        "WHERE id = (SELECT min(id) FROM outbox)"
    )
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
        assert emulator.stats()["events"] == 0
        await drain(engine_settings(database_url, emulator, dead_blocks_key=False))
        assert emulator.stats()["events"] == 2


async def test_a_stop_mid_run_leaves_no_row_leased(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 2000)
    config = secret_config(faults=Faults(latency_ms=2))
    async with running(config) as emulator:
        for round_number in range(1, 4):
            settings = engine_settings(database_url, emulator, concurrency=16)
            target = 300 * round_number
            async with running_daemon(settings):
                await wait_for(lambda: emulator.stats()["events"] >= target)  # noqa: B023
            leased = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE status = 'in_flight' OR claimed_by IS NOT NULL"
            )
            assert leased == 0
    assert emulator.duplicates == 0
