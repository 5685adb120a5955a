"""Delivery resumes within seconds of a fault's end, whatever the fault's length.

* The partner answers 503 to everything, or the token endpoint 500, for 30 s: a paused route
  is probed at least every 2 s (RELAY_CIRCUIT_PAUSE_CAP) and the token endpoint asked at least
  every 2 s (RELAY_TOKEN_BACKOFF_CAP), so the first publish comes within 3 s of the end. Before,
  the circuit's pause doubled (5, 10, 20 s...) and the token backoff grew to a minute: 19 to
  52 s. An unreachable token endpoint spends no row's attempt and writes no delivery-log row:
  nothing reached the EventApi.
* The database is killed (a private cluster, ``pg_ctl -m immediate``) and started 10 s later:
  the first publish comes within 2 s of it accepting connections. Before, the reconnects had
  backed off to 30 s.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from relay.emulator import Emulator
from tests.helpers.cluster import private_cluster
from tests.helpers.engine import engine_settings, insert_rows, running_daemon
from tests.helpers.partner import running, wait_for

pytestmark = pytest.mark.timeout(180)

OUTAGE = 30.0
RESUMED_WITHIN = 3.0  # README, "Guarantees"


async def first_publish_after(emulator: Emulator, moment: float, within: float = 30) -> float:
    """Seconds from ``moment`` (the emulator's clock) to the first event accepted after it."""
    await wait_for(lambda: any(e.arrived_at > moment for e in emulator.events), within=within)
    return min(e.arrived_at for e in emulator.events if e.arrived_at > moment) - moment


async def partner_outage(database_url: str) -> tuple[float, int]:
    async with running() as emulator:
        emulator.set_faults(status=503, for_seconds=OUTAGE)
        ends = emulator.faults.status_until
        assert ends is not None
        async with running_daemon(engine_settings(database_url, emulator)):
            db = await asyncpg.connect(database_url)
            try:
                ids = await insert_rows(db, 200)
                took = await first_publish_after(emulator, ends, within=OUTAGE + 30)
                await wait_for(lambda: len(emulator.events) == len(ids), within=30)
            finally:
                await db.close()
        return took, emulator.status_counts[503]


async def token_outage(database_url: str) -> tuple[float, int, int]:
    async with running() as emulator:
        emulator.set_faults(token_status=500)
        async with running_daemon(engine_settings(database_url, emulator)):
            db = await asyncpg.connect(database_url)
            try:
                ids = await insert_rows(db, 200)
                await asyncio.sleep(OUTAGE)  # the outage itself: the endpoint answers 500
                ends = emulator.clock()
                attempts = await db.fetchval("SELECT coalesce(max(attempts), 0) FROM outbox")
                logged = await db.fetchval("SELECT count(*) FROM outbox_delivery")
                emulator.set_faults(token_status=None)
                took = await first_publish_after(emulator, ends)
                await wait_for(lambda: len(emulator.events) == len(ids), within=30)
            finally:
                await db.close()
        return took, attempts, logged


async def test_delivery_resumes_within_3_s_of_a_30_s_outage_of_the_partner_or_its_tokens(
    database_url: str, second_database_url: str
) -> None:
    """Both outages at once, each against its own database and partner."""
    (partner_took, refusals), (token_took, attempts, logged) = await asyncio.gather(
        partner_outage(database_url), token_outage(second_database_url)
    )
    assert partner_took <= RESUMED_WITHIN, f"{partner_took:.1f}s after the partner came back"
    # One probe every two seconds or so once the route's circuit opened, not a retry per row.
    assert refusals <= 200, f"{refusals} requests refused during the outage"
    assert token_took <= RESUMED_WITHIN, f"{token_took:.1f}s after the token endpoint came back"
    assert (attempts, logged) == (0, 0)  # no row paid for the token endpoint's outage


async def test_delivery_resumes_within_2_s_of_the_database_coming_back() -> None:
    """Rows wait (the partner refuses them for now) when the server is killed; the partner is
    well again while the server is down, so only the database stands between them and it."""
    async with private_cluster() as cluster, running() as emulator:
        url = cluster.url(host="127.0.0.1")
        emulator.set_faults(status=500)
        settings = engine_settings(url, emulator, circuit_threshold=10**9)
        async with running_daemon(settings):
            db = await asyncpg.connect(url)
            await insert_rows(db, 20)
            await db.close()
            await wait_for(lambda: emulator.status_counts[500] >= 20, within=30)
            await asyncio.to_thread(cluster.kill)
            emulator.clear_faults()
            await asyncio.sleep(10)  # the outage itself: the server is down
            await asyncio.to_thread(cluster.start)
            back = await asyncio.to_thread(cluster.wait_accepting)
            took = await first_publish_after(emulator, back)
            await wait_for(lambda: len(emulator.events) == 20, within=30)
    assert took <= 2.0, f"first publish {took:.1f}s after the database accepted connections"
