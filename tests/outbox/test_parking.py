"""Rows that cannot move cost the claim nothing, and come back when their reason ends.

100,000 rows behind a dead row of their key, or on a paused route, sat in the ready index
where every claim walked past them: a claim took half a second, and everything else crawled.
The claim now takes rows without a key from an index of their own and looks at one row per
ordering key, stepping through the keys in turn; rows that cannot move are also parked
(``status = 'blocked'``) off the claim's path. These tests hold rows without a key, beside such
a backlog, to half their rate without it, from the relay's first second on; and check that
parked rows come back when their reason ends and that every key gets its turn. The claim's
work is also counted in pages, which no load on the machine moves; the rates themselves (0.8
and more) are the benchmarks' (docs/benchmarks.md, "Beside a blocked backlog").
"""

from __future__ import annotations

import time

import asyncpg
import orjson
import pytest

from relay.database import create_pool
from relay.emulator import Emulator
from relay.outbox.queries import Queries
from relay.outbox.store import Store
from tests.helpers.engine import (
    drain,
    engine_settings,
    eventually,
    insert_rows,
    payload,
    running_daemon,
)
from tests.helpers.partner import running, wait_for

FREE = 3_000
BLOCKED = 100_000


def rate(emulator: Emulator, skip: int = 0) -> float:
    """Events per second from the first to the last arrival."""
    times = [event.arrived_at for event in emulator.events[skip:]]
    return (len(times) - 1) / (max(times) - min(times))


async def insert_blocked_behind_dead(db: asyncpg.Connection, rows: int = BLOCKED) -> None:
    """A dead row of key case-dead and ``rows`` rows of that key behind it, available before
    anything else. Written dead, so that a running relay never claims it first."""
    dead = await db.fetchval(
        "INSERT INTO outbox (event_type, payload, ordering_key, status, last_error) "
        "VALUES ('payment_status_updated', $1::jsonb, 'case-dead', 'dead', 'test') RETURNING id",
        orjson.dumps(payload()).decode(),
    )
    await db.execute(
        "INSERT INTO outbox (event_type, payload, ordering_key, available_at) "
        "SELECT event_type, payload, ordering_key, now() - interval '1 hour' "
        f"FROM outbox, generate_series(1, {rows}) WHERE id = $1",
        dead,
    )


async def pages_one_claim_reads(db: asyncpg.Connection) -> int:
    """The pages (shared buffers hit or read) one claim of 64 rows touches, its calls of
    ``outbox_key_ready`` included; rolled back. A count of work, whatever the machine's load."""
    transaction = db.transaction()
    await transaction.start()
    try:
        plan = await db.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + Queries("public").claim,
            64, "w", "dk", "abcinsurance", True, 60.0, 1 << 32 | 1, "", 128, [],
        )  # fmt: skip
    finally:
        await transaction.rollback()
    top = orjson.loads(plan)[0]["Plan"]
    assert top["Actual Rows"] == 64
    return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])


async def backlog(db: asyncpg.Connection, kind: str) -> None:
    """100,000 keyed rows that a claim must not walk, before any other row."""
    if kind == "behind a dead row":
        await insert_blocked_behind_dead(db)
    elif kind in ("behind a row in flight", "of one key"):
        await db.execute(
            "INSERT INTO outbox (event_type, payload, ordering_key, available_at) "
            "SELECT 'e', '{}', 'case-hot', now() - interval '1 hour' "
            f"FROM generate_series(1, {BLOCKED})"
        )
        if kind == "behind a row in flight":
            await db.execute(
                "UPDATE outbox SET status = 'in_flight', lease_until = now() + interval '1 hour'"
                " WHERE id = (SELECT min(id) FROM outbox WHERE ordering_key = 'case-hot')"
            )
    await db.execute("VACUUM ANALYZE outbox")


@pytest.mark.parametrize("kind", ["behind a dead row", "behind a row in flight", "of one key"])
async def test_a_claim_reads_as_many_pages_beside_any_keyed_backlog(
    db: asyncpg.Connection, kind: str
) -> None:
    """The claim's work is counted in pages, so no load on the machine moves it: beside
    100,000 rows of one key that cannot go (or of which one can), it grows only as the
    indexes deepen (a level for a larger table), never with the rows it must not walk. A
    claim that walked them read a page or more for each: over 100,000."""
    await insert_rows(db, FREE)
    await db.execute("VACUUM ANALYZE outbox")
    alone = await pages_one_claim_reads(db)
    await backlog(db, kind)
    beside = await pages_one_claim_reads(db)
    assert beside < 2 * alone, f"{beside} pages beside the backlog, {alone} without"


async def test_rows_without_a_key_go_at_full_rate_from_the_start_beside_a_blocked_backlog(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The backlog is there when the relay starts: nothing parked it yet. Rows without a key
    do not wait for parking (it runs beside the claims), and no claim walks the backlog."""
    await insert_rows(db, FREE)
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
        alone = rate(emulator)
        await insert_blocked_behind_dead(db)
        await insert_rows(db, FREE)
        settings = engine_settings(database_url, emulator)
        async with running_daemon(settings):
            started = time.monotonic()
            await wait_for(lambda: len(emulator.events) > FREE, within=30)
            first = emulator.events[FREE].arrived_at - started
            await wait_for(lambda: len(emulator.events) == 2 * FREE, within=60)
        beside = rate(emulator, skip=FREE)
    assert first < 1.0, f"the first row without a key went {first:.2f}s after the start"
    assert beside >= 0.5 * alone, f"{beside:.0f}/s beside blocked rows, {alone:.0f}/s alone"


async def test_a_backlog_written_behind_a_dead_row_while_the_relay_runs_costs_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Written after the relay started, the backlog is parked only by the next sweep (30 s
    away): until then the claim meets it, and must step over it."""
    async with running() as emulator:
        settings = engine_settings(database_url, emulator)
        async with running_daemon(settings):
            await insert_rows(db, FREE)
            await wait_for(lambda: len(emulator.events) == FREE, within=60)
            alone = rate(emulator)
            await insert_blocked_behind_dead(db)
            await insert_rows(db, FREE)
            await wait_for(lambda: len(emulator.events) == 2 * FREE, within=60)
            beside = rate(emulator, skip=FREE)
            pending = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE ordering_key = 'case-dead' "
                "AND status = 'pending'"
            )
    assert pending == BLOCKED  # not parked yet: the claim itself stepped over them
    assert beside >= 0.5 * alone, f"{beside:.0f}/s beside blocked rows, {alone:.0f}/s alone"


async def test_every_key_gets_its_turn_however_many_keys_cannot_go(database_url: str) -> None:
    """Fifty keys whose first row waits an hour for its retry come first in key order; a
    claim steps through twice its size in keys, from where the last one stopped, so the key
    after them is reached within a few claims, and a claim that takes nothing still moves on."""
    pool = await create_pool(database_url)
    try:
        await pool.execute(
            "INSERT INTO outbox (event_type, payload, ordering_key, available_at) "
            "SELECT 'e', '{}', 'a-' || lpad(n::text, 3, '0'), now() + interval '1 hour' "
            "FROM generate_series(1, 50) AS n"
        )
        (ready,) = await insert_rows(pool, 1, ordering_key="b-ready")  # type: ignore[arg-type]
        store = Store(pool, "public", "w")
        cursor, claims = "", 0
        claimed: list[int] = []
        while not claimed and claims < 20:
            claims += 1
            rows, cursor = await store.claim(
                5, 1 << 32 | claims, lease_seconds=60, dead_blocks_key=True, after_key=cursor
            )
            claimed = [row.id for row in rows]
            assert cursor, "every claim says where the next one begins"
    finally:
        await pool.close()
    assert claimed == [ready]
    assert claims == 6  # 51 keys, 10 a claim: the sixth claim reaches it


async def test_rows_behind_a_dead_row_are_parked_beside_the_claims(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Parking is off the claim's path: rows without a key go while it works, and it ends
    with every row behind the dead row parked, out of the indexes claims read."""
    await insert_blocked_behind_dead(db, 20_000)
    await insert_rows(db, FREE)
    async with running() as emulator, running_daemon(engine_settings(database_url, emulator)):

        async def parked() -> bool:
            count = await db.fetchval(
                "SELECT count(*) FROM outbox WHERE status = 'blocked' AND blocked_by = 'dead_row'"
            )
            return bool(count == 20_000)

        await wait_for(lambda: len(emulator.events) == FREE, within=60)
        await eventually(parked, within=60)
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'") == 0


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

            async def unparked() -> bool:
                count = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'blocked'")
                return bool(count == 0)

            await eventually(unparked, within=30)
            await wait_for(lambda: len(emulator.events) >= 2 * FREE + 1000, within=30)
    assert beside >= 0.5 * alone, f"{beside:.0f}/s beside a paused route, {alone:.0f}/s alone"
