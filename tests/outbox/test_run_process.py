"""``relay run`` as a real process: killed, restarted, and stopped by signal."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import asyncpg

from relay.emulator import Faults
from tests.helpers.engine import insert_rows, relay_env, status_counts
from tests.helpers.partner import running, secret_config, wait_for
from tests.helpers.process import start_relay

RELAY = str(Path(sys.executable).with_name("relay"))


async def test_kill_9_mid_run_then_restart_loses_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 3000)
    concurrency = 16
    config = secret_config(faults=Faults(latency_ms=10))
    async with running(config) as emulator:
        env = relay_env(
            database_url,
            emulator,
            RELAY_CONCURRENCY=str(concurrency),
            RELAY_LEASE="1s",
            RELAY_REQUEST_TIMEOUT="300ms",
        )
        first = await start_relay(env)
        await wait_for(lambda: emulator.stats()["events"] >= 500, within=30)
        first.kill()
        await first.wait()
        leased = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'in_flight'")
        assert leased > 0  # the killed process held rows; their leases must bring them back
        second = await start_relay(env, "--drain")
        _, stderr = await asyncio.wait_for(second.communicate(), 60)
        assert second.returncode == 0, stderr.decode()[-2000:]
    assert await status_counts(db) == {"published": len(ids)}
    # Resent after the kill: requests in flight, plus answers received but not yet written
    # (results are written every few milliseconds, a quarter of the concurrency at a time).
    assert emulator.duplicates <= concurrency + concurrency // 2


async def test_sigterm_drains_and_exits_zero_within_the_grace_period(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 3000)
    config = secret_config(faults=Faults(latency_ms=200))
    async with running(config) as emulator:
        env = relay_env(database_url, emulator, RELAY_SHUTDOWN_GRACE="5s")
        relay = await start_relay(env)
        await wait_for(lambda: emulator.stats()["in_flight"] >= 16, within=30)
        signalled = time.monotonic()
        relay.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(relay.communicate(), 30)
        took = time.monotonic() - signalled
    assert relay.returncode == 0, stderr.decode()[-2000:]
    assert took < 5
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'in_flight'") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE claimed_by IS NOT NULL") == 0
    counts = await status_counts(db)
    assert counts["published"] >= 16  # the requests in flight finished and were recorded
    assert "dead" not in counts
    assert b'"relay.stopped"' in stderr
