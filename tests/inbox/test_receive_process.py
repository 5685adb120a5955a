"""A receiving relay killed with SIGKILL mid-stream: nothing missing, nothing twice.

The page being stored when the process dies is either committed with its checkpoint or not
at all; the next poller (a restarted relay, or a standby replica that takes the route's lock
over) asks again from the checkpoint.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.helpers.engine import eventually, relay_env
from tests.helpers.partner import running
from tests.helpers.process import start_relay

ROUTE = ("dk", "abcinsurance")
EVENTS = 20_000


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM inbox"))


async def stored_ids(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch("SELECT event_id FROM inbox ORDER BY id")
    return [row["event_id"] for row in rows]


async def test_kill_9_mid_stream_then_restart_misses_and_doubles_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0.5, receive_page_size=50, receive_latency_ms=2)
        emulator.generate(*ROUTE, EVENTS)
        env = relay_env(database_url, emulator, RELAY_RECEIVE_ROUTES="dk/abcinsurance")
        first = await start_relay(env)
        try:
            await eventually(lambda: _at_least(db, 3_000), within=60)
        finally:
            first.kill()
            await first.wait()
        at_kill = await count(db)
        assert at_kill < EVENTS, "the stream ended before the kill: make it longer"
        second = await start_relay(env)
        try:
            await eventually(lambda: _at_least(db, EVENTS), within=120)
        finally:
            second.terminate()
            await asyncio.wait_for(second.wait(), 30)
        expected = [event.id for event in emulator.stream(*ROUTE).events]
    assert await stored_ids(db) == expected


async def test_a_standby_takes_a_killed_receivers_route_over_within_seconds(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=1)
        emulator.generate(*ROUTE, 10)
        env = relay_env(database_url, emulator, RELAY_RECEIVE_ROUTES="dk/abcinsurance")
        holder = await start_relay(env)
        standby = None
        try:
            await eventually(lambda: _at_least(db, 10), within=30)
            standby = await start_relay(env)
            # Both relays are up; only one polls.
            await eventually(lambda: _relays_connected(db, 2), within=30)
            holder.kill()
            await holder.wait()
            killed_at = time.monotonic()
            emulator.generate(*ROUTE, 10)
            await eventually(lambda: _at_least(db, 20), within=30)
            took = time.monotonic() - killed_at
        finally:
            for process in (holder, standby):
                if process is not None and process.returncode is None:
                    process.terminate()
                    await asyncio.wait_for(process.wait(), 30)
        stats = emulator.stream(*ROUTE).stats()
        expected = [event.id for event in emulator.stream(*ROUTE).events]
    assert await stored_ids(db) == expected
    assert stats["max_concurrent_polls"] == 1
    assert took < 5.0, f"{took:.1f}s before the standby received again"


async def _at_least(db: asyncpg.Connection, events: int) -> bool:
    return await count(db) >= events


async def _relays_connected(db: asyncpg.Connection, relays: int) -> bool:
    receivers = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'relay receiver' "
        "AND datname = current_database()"
    )
    return bool(receivers == relays)
