"""Receiving Scalepoint's events into the inbox, against the emulator over real sockets.

Every event once, in order, with no gap, whatever the partner does: pages cut mid-body, 503s,
refused tokens, items that are not events, links that lead elsewhere; and one poller per route.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from relay.emulator import Emulator
from tests.helpers.engine import engine_settings, eventually, running_daemon
from tests.helpers.partner import running

ROUTE = ("dk", "abcinsurance")


def receive_settings(database_url: str, emulator: Emulator, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "receive_routes": "dk/abcinsurance",
        "receive_timeout": 5,
        "configuration_pause": 0.5,
    }
    values.update(overrides)
    return engine_settings(database_url, emulator, **values)


async def stored_ids(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        "SELECT event_id FROM inbox WHERE status = 'pending' AND country = 'dk' "
        "AND tenant = 'abcinsurance' ORDER BY id"
    )
    return [row["event_id"] for row in rows]


def stream_ids(emulator: Emulator) -> list[str]:
    return [event.id for event in emulator.stream(*ROUTE).events]


async def has(db: asyncpg.Connection, count: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM inbox") >= count)


async def test_20000_events_arrive_once_in_order_without_a_gap(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0.5)
        emulator.generate(*ROUTE, 20_000)
        async with running_daemon(receive_settings(database_url, emulator)):
            await eventually(lambda: has(db, 20_000), within=120)
        assert await stored_ids(db) == stream_ids(emulator)
    payloads = await db.fetch(
        "SELECT event_id, payload::text AS payload, event_type FROM inbox ORDER BY id LIMIT 50"
    )
    by_id = {event.id: event for event in emulator.stream(*ROUTE).events}
    for row in payloads:
        assert row["event_type"] == by_id[row["event_id"]].type
    checkpoint = await db.fetchrow("SELECT next_path, last_event_id FROM inbox_checkpoint")
    assert checkpoint is not None
    assert checkpoint["last_event_id"] == stream_ids(emulator)[-1]


async def test_a_feed_during_a_hold_is_stored_within_a_second(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=30)
        async with running_daemon(receive_settings(database_url, emulator, receive_timeout=60)):
            await eventually(lambda: _polling(emulator), within=10)
            fed_at = time.monotonic()
            emulator.generate(*ROUTE, 3)
            await eventually(lambda: has(db, 3), within=10)
            took = time.monotonic() - fed_at
    assert took < 1.0, f"{took:.2f}s from feed to inbox"


async def _polling(emulator: Emulator) -> bool:
    return bool(emulator.stream(*ROUTE).stats()["concurrent_polls"] == 1)


async def test_cut_pages_503s_and_refused_tokens_cost_retries_not_events(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0.2, receive_page_size=10)
        emulator.generate(*ROUTE, 40)
        emulator.set_faults(receive_drop_next=3)
        async with running_daemon(receive_settings(database_url, emulator)):
            await eventually(lambda: has(db, 40), within=30)
            emulator.set_faults(receive_status=503, retry_after="1", receive_status_next=2)
            emulator.generate(*ROUTE, 30)
            await eventually(lambda: has(db, 70), within=30)
            emulator.revoke_tokens()  # the next poll's token is refused: one fresh one, a retry
            emulator.generate(*ROUTE, 30)
            await eventually(lambda: has(db, 100), within=30)
        stats = emulator.stream(*ROUTE).stats()
        assert await stored_ids(db) == stream_ids(emulator)
    assert stats["polls_dropped"] == 3
    assert stats["polls_refused"] >= 2


async def test_items_that_are_not_events_are_kept_and_the_route_moves_on(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0.2, receive_page_size=5)
        emulator.generate(*ROUTE, 10)
        emulator.set_faults(receive_malformed_next=1)
        async with running_daemon(receive_settings(database_url, emulator)):
            await eventually(lambda: has(db, 12), within=30)
        assert await stored_ids(db) == stream_ids(emulator)
    failed = await db.fetch("SELECT raw::text, last_error FROM inbox WHERE status = 'failed'")
    assert sorted(row["last_error"] for row in failed) == [
        "not an event: a JSON number",
        "not an event: no id",
    ]


async def test_a_link_to_another_origin_is_not_followed_and_pauses_the_route(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(
            receive_hold_seconds=0.2, receive_page_size=5, receive_link_form="relative"
        )
        emulator.generate(*ROUTE, 10)
        emulator.set_faults(receive_foreign_next=1)
        async with running_daemon(receive_settings(database_url, emulator)) as daemon:

            async def paused() -> bool:
                reason = await db.fetchval("SELECT pause_reason FROM inbox_checkpoint")
                return reason is not None and "foreign_next_link" in reason

            await eventually(paused, within=30)
            # The relay stays ready: one route's trouble is not the process's.
            assert daemon.not_ready_reason() is None
            await eventually(lambda: has(db, 10), within=30)
        # Had the relay followed the link, its token would have gone to elsewhere.example
        # (unreachable) and the route would be failing with connection errors, not paused.
        assert await stored_ids(db) == stream_ids(emulator)
    errors = await db.fetchval("SELECT pause_reason FROM inbox_checkpoint")
    assert errors is None  # the pause ended with the first page stored after it


async def test_two_relays_never_poll_one_route_at_once_and_one_takes_over(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=1)
        emulator.generate(*ROUTE, 50)
        first = receive_settings(database_url, emulator)
        second = receive_settings(database_url, emulator)
        async with running_daemon(second) as standby:
            async with running_daemon(first):
                await eventually(lambda: has(db, 50), within=30)
                emulator.generate(*ROUTE, 50)
                await eventually(lambda: has(db, 100), within=30)
            stopped_at = time.monotonic()
            emulator.generate(*ROUTE, 50)
            await eventually(lambda: has(db, 150), within=30)
            took = time.monotonic() - stopped_at
            assert standby is not None
        stats = emulator.stream(*ROUTE).stats()
        assert await stored_ids(db) == stream_ids(emulator)
    assert stats["max_concurrent_polls"] == 1
    assert took < 5.0, f"{took:.1f}s before the other relay took the route over"
