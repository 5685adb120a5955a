"""A partner outage costs retries and the time it lasts, never events, and not much more time.

Today's main doubled the shared circuit pause on every failure of a request already in flight
(77 pauses in 140 ms, from 5 s to the 300 s cap) and kept sending the rows it had queued:
a 20 s outage stopped delivery for five minutes.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.helpers.engine import insert_rows, relay_env, status_counts
from tests.helpers.partner import running
from tests.helpers.process import start_relay

ROWS = 500


async def test_a_20_second_outage_at_the_start_of_a_drain_costs_about_20_seconds(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, ROWS)
    async with running() as emulator:
        # Every setting at its default: the circuit opens after 20 failures for 5 s, doubling
        # with each failed probe; retries back off from 1 s.
        env = relay_env(
            database_url,
            emulator,
            RELAY_BACKOFF_BASE="1s",
            RELAY_BACKOFF_CAP="10m",
            RELAY_POLL_INTERVAL="5s",
        )
        emulator.set_faults(status=503, for_seconds=20)
        started = time.monotonic()
        relay = await start_relay(env, "--drain")
        _, stderr = await asyncio.wait_for(relay.communicate(), 90)
        took = time.monotonic() - started
        requests = sum(emulator.status_counts.values())
    assert relay.returncode == 0, stderr.decode()[-2000:]
    assert await status_counts(db) == {"published": ROWS}
    assert emulator.stats()["events"] == ROWS
    assert took <= 45, f"the drain took {took:.1f}s"
    assert requests <= 600, f"{requests} requests for {ROWS} rows"
