"""Operators see and lift pauses; parked rows come back when their reason ends.

A route's pause parks its rows (``status = 'blocked'``); ``relay pause clear`` lifts it and a
running relay resumes the route within one poll. ``relay requeue`` of a dead row lets the rows
parked behind it go, in key order.
"""

from __future__ import annotations

import time

import asyncpg

from relay.config import load_settings
from relay.ops.admin import open_admin
from relay.ops.selection import DeadSelector
from tests.helpers.commands import operate
from tests.helpers.engine import (
    arrival_order_by_key,
    engine_settings,
    eventually,
    insert_rows,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running, wait_for

POLL = 0.3


async def pause_route(db: asyncpg.Connection, route: str, kind: str = "configuration") -> None:
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) "
        "VALUES ($1, now() + interval '1 hour', $2, 'http_404: test', 'test')",
        route,
        kind,
    )


async def test_a_lifted_pause_is_picked_up_within_one_poll(
    db: asyncpg.Connection, database_url: str
) -> None:
    await pause_route(db, "dk/abcinsurance")
    await insert_rows(db, 20)
    async with running() as emulator:
        settings = engine_settings(database_url, emulator, poll_interval=POLL)
        async with running_daemon(settings):

            async def parked() -> bool:
                count = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'blocked'")
                return bool(count == 20)

            await eventually(parked)
            assert emulator.stats()["events"] == 0
            async with open_admin(load_settings(database_url=database_url)) as admin:
                listed = await admin.pauses()
                cleared = await admin.clear_pauses(None, defaults=(None, None))
            lifted_at = time.monotonic()
            await wait_for(lambda: emulator.stats()["events"] == 20, within=10)
            took = time.monotonic() - lifted_at
    assert [(p.route, p.kind) for p in listed] == [("dk/abcinsurance", "configuration")]
    assert [p.route for p in cleared.lifted] == ["dk/abcinsurance"]
    assert took <= POLL + 1.0, f"{took:.2f}s to resume after the pause was lifted"
    assert await status_counts(db) == {"published": 20}


async def test_clearing_a_throttled_route_sends_every_deferred_row_at_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    """A 3 s outage answered 503 with an absurd Retry-After pauses the route for the cap
    (5 min). `relay pause clear --all` means "send now": every row the throttle deferred is
    due at once, none spends an attempt on it, and the audit log says how many were let go."""
    ids = await insert_rows(db, 200)
    async with running() as emulator:
        emulator.set_faults(status=503, retry_after="99999999999999999999", for_seconds=3)
        settings = engine_settings(database_url, emulator, poll_interval=POLL)
        async with running_daemon(settings):

            async def paused_for_the_cap() -> bool:
                left = await db.fetchval(
                    "SELECT extract(epoch FROM until - now()) FROM relay_pause "
                    "WHERE route = 'dk/abcinsurance'"
                )
                return left is not None and left > 250

            await eventually(paused_for_the_cap, within=10)
            fault_ends = emulator.faults.status_until
            assert fault_ends is not None
            await wait_for(lambda: emulator.clock() > fault_ends, within=10)
            cleared = await operate(database_url, "pause", "clear", "--all", "--json")
            cleared_at = time.monotonic()
            await wait_for(lambda: len(emulator.events) == len(ids), within=30)
            took = time.monotonic() - cleared_at
    assert cleared.code == 0, cleared.stderr
    assert 0 < cleared.json()["released"] <= len(ids)
    assert took <= POLL + 2.0, f"{took:.1f}s from the clear to the last row"
    assert await status_counts(db) == {"published": len(ids)}
    attempts = await db.fetch("SELECT DISTINCT attempts FROM outbox")
    assert [row["attempts"] for row in attempts] == [1]  # the throttle spent none
    detail = await db.fetchval("SELECT detail FROM relay_admin_log WHERE action = 'pause_clear'")
    assert '"released"' in detail


async def test_requeueing_a_dead_row_lets_the_rows_parked_behind_it_go_in_order(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await insert_rows(db, 5, ordering_key="case-7")
    await db.execute("UPDATE outbox SET status = 'dead', last_error = 'x' WHERE id = $1", ids[0])
    async with running() as emulator:
        settings = engine_settings(database_url, emulator, poll_interval=POLL)
        async with running_daemon(settings):

            async def parked() -> bool:
                count = await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE blocked_by = 'dead_row'"
                )
                return bool(count == 4)

            await eventually(parked)
            async with open_admin(load_settings(database_url=database_url)) as admin:
                await admin.requeue(DeadSelector(ids=(ids[0],)))
            await wait_for(lambda: emulator.stats()["events"] == 5, within=10)
        order = await arrival_order_by_key(db, emulator)
    assert order == {"case-7": ids}
    assert await status_counts(db) == {"published": 5}
