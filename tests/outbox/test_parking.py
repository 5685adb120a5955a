"""Rows that cannot move are kept out of the claim's way.

100,000 rows behind a dead row of their key, or on a paused route, sat in the ready index
where every claim walked past them: a claim took half a second, and everything else crawled.
They are parked (``status = 'blocked'``) and the claim no longer sees them; these tests hold
delivery beside them to at least half the rate without them, and check that parked rows come
back when their reason ends.
"""

from __future__ import annotations

import asyncpg

from relay.emulator import Emulator
from tests.helpers.engine import drain, engine_settings, eventually, insert_rows, running_daemon
from tests.helpers.partner import running, wait_for

FREE = 3_000
BLOCKED = 100_000


def rate(emulator: Emulator, skip: int = 0) -> float:
    """Events per second from the first to the last arrival."""
    times = [event.arrived_at for event in emulator.events[skip:]]
    return (len(times) - 1) / (max(times) - min(times))


async def insert_blocked_behind_dead(db: asyncpg.Connection) -> None:
    (dead,) = await insert_rows(db, 1, ordering_key="case-dead")
    await db.execute("UPDATE outbox SET status = 'dead', last_error = 'test' WHERE id = $1", dead)
    await db.execute(
        "INSERT INTO outbox (event_type, payload, ordering_key, available_at) "
        "SELECT event_type, payload, ordering_key, now() - interval '1 hour' "
        f"FROM outbox, generate_series(1, {BLOCKED}) WHERE id = $1",
        dead,
    )


async def test_rows_behind_a_dead_row_cost_the_claim_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, FREE)
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
        alone = rate(emulator)
        await insert_blocked_behind_dead(db)
        await insert_rows(db, FREE)
        report = (await drain(engine_settings(database_url, emulator))).worker
        beside = rate(emulator, skip=FREE)
    assert report is not None
    assert len(emulator.events) == 2 * FREE
    assert beside >= 0.5 * alone, f"{beside:.0f}/s beside blocked rows, {alone:.0f}/s alone"
    parked = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE status = 'blocked' AND blocked_by = 'dead_row'"
    )
    assert parked == BLOCKED


async def test_rows_of_a_paused_route_cost_the_claim_nothing_and_come_back_after(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, FREE)
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
        alone = rate(emulator)
        await db.execute(
            "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
            "('dk/paused', now() + interval '1 hour', 'configuration', 'test', 'test')"
        )
        await db.execute(
            "INSERT INTO outbox (event_type, payload, tenant, available_at) "
            "SELECT event_type, payload, 'paused', now() - interval '1 hour' "
            f"FROM outbox, generate_series(1, {BLOCKED // FREE + 1}) LIMIT {BLOCKED}"
        )
        settings = engine_settings(database_url, emulator, poll_interval=0.2)
        async with running_daemon(settings) as daemon:

            async def parked() -> bool:
                count = await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE blocked_by = 'route_pause'"
                )
                return bool(count == BLOCKED)

            # Parked once, when the relay first sees the pause; claims never walk them again.
            await eventually(parked, within=30)
            await insert_rows(db, FREE)
            await wait_for(lambda: len(emulator.events) == 2 * FREE, within=60)
            beside = rate(emulator, skip=FREE)
            # Lifted (as `relay pause clear` or a success would): the parked rows come back.
            assert daemon.worker is not None
            await daemon.worker.store.clear_pauses(["dk/paused"])
            await wait_for(lambda: len(emulator.events) == 2 * FREE + BLOCKED, within=120)
    assert beside >= 0.5 * alone, f"{beside:.0f}/s beside a paused route, {alone:.0f}/s alone"
    left = await db.fetchval("SELECT count(*) FROM outbox WHERE status <> 'published'")
    assert left == 0
