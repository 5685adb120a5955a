"""A throttle costs seconds, not minutes, and no attempts.

The partner says "come back in 2 s" (429 or 503 with Retry-After) for 6 s while a backlog
waits. With ``max_attempts=1`` and ``max_age=0`` a single counted attempt would kill a row, so
the tests see at once whether a throttle is (wrongly) charged to the rows; and after each pause
exactly one request may test the water before the rest follow.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import asyncpg
import pytest
from structlog.testing import capture_logs

from relay.emulator import Emulator
from tests.helpers.attacks import Watch
from tests.helpers.engine import (
    engine_settings,
    eventually,
    insert_rows,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running

CONCURRENCY = 32  # the default: a whole round is in flight when the throttle begins


@dataclass
class Throttled:
    """What a run through a throttle did."""

    throttle_ends: float  # emulator clock: the partner's last refusal is before this
    finished: float  # when every row was published
    refused: int  # answers with the throttle's status
    statuses: dict[str, int]  # rows by status at the end
    circuit_opened: int  # circuit.opened log events
    circuit_states: set[float | None]  # relay_circuit_state{state="open"} as /metrics showed


async def throttled(
    db: asyncpg.Connection, database_url: str, status: int, *, seconds: float, retry_after: int
) -> Throttled:
    """200 rows waiting when the partner starts answering ``status`` with Retry-After for
    ``seconds``; with max_attempts=1 and max_age=0 any attempt the throttle costs kills a row."""
    ids = await insert_rows(db, 200)
    async with running() as emulator:
        emulator.set_faults(status=status, retry_after=str(retry_after), for_seconds=seconds)
        throttle_ends = emulator.faults.status_until
        assert throttle_ends is not None
        settings = engine_settings(
            database_url, emulator, max_attempts=1, max_age=0, concurrency=CONCURRENCY
        )
        with capture_logs() as logged:
            async with running_daemon(settings) as daemon, Watch(daemon, every=0.05) as watch:

                async def finished() -> bool:
                    unfinished = await db.fetchval(
                        "SELECT count(*) FROM outbox WHERE status NOT IN ('published', 'dead')"
                    )
                    return bool(unfinished == 0)

                await eventually(finished, within=seconds + 15)
                finished_at = time.monotonic()
                await watch.look()
    assert len(ids) == 200
    return Throttled(
        throttle_ends=throttle_ends,
        finished=finished_at,
        refused=emulator.status_counts[status],
        statuses=await status_counts(db),
        circuit_opened=sum(1 for entry in logged if entry["event"] == "circuit.opened"),
        circuit_states=set(watch.values("relay_circuit_state", state="open")),
    )


@pytest.mark.parametrize("status", [429, 503])
async def test_a_throttle_kills_nothing_opens_no_circuit_and_ends_when_the_partner_does(
    db: asyncpg.Connection, database_url: str, status: int
) -> None:
    run = await throttled(db, database_url, status, seconds=3, retry_after=1)
    assert run.statuses == {"published": 200}  # no row dead: no attempt was counted
    # The whole backlog within 4 s of the partner's last refusal, not a circuit pause later.
    assert run.finished <= run.throttle_ends + 4, f"{run.finished - run.throttle_ends:.1f}s"
    # A throttle is the partner's pace, not an outage: the circuit never opens.
    assert run.circuit_opened == 0
    assert run.circuit_states == {0.0}


@pytest.mark.parametrize("status", [429, 503])
async def test_after_each_retry_after_pause_one_request_goes_alone(
    db: asyncpg.Connection, database_url: str, status: int
) -> None:
    seconds, retry_after = 6.0, 2
    run = await throttled(db, database_url, status, seconds=seconds, retry_after=retry_after)
    assert run.statuses == {"published": 200}
    assert run.finished <= run.throttle_ends + 4
    assert run.circuit_opened == 0
    assert run.circuit_states == {0.0}
    # The first round was in flight when the first refusal came back; after that, each pause
    # ends with one request alone, not with a whole claim (today: 32 per pause).
    windows = math.ceil(seconds / retry_after)
    assert run.refused <= CONCURRENCY + windows + 2, f"{run.refused} refusals"


async def test_a_refused_fresh_token_pauses_each_refused_route_and_heals_once_accepted(
    db: asyncpg.Connection, database_url: str
) -> None:
    """401 to a token the token endpoint just issued (after one retry with a fresh token) is
    a refusal of the route: each route the API refuses is paused with the reason and probed
    once per pause, its rows keep every attempt, and the process stays ready for the routes
    that work."""
    pause = 1.0
    concurrency = 8
    async with running() as emulator:
        emulator.set_faults(reject_tokens=True)
        settings = engine_settings(
            database_url,
            emulator,
            configuration_pause=pause,
            max_attempts=1,
            max_age=0,
            concurrency=concurrency,
        )
        async with running_daemon(settings) as daemon, Watch(daemon) as watch:
            # Rows of two routes: each is refused, and each is paused on its own.
            ids = await insert_rows(db, 50)
            await db.execute("UPDATE outbox SET tenant = 'othertenant' WHERE id = $1", ids[0])

            async def both_paused() -> bool:
                routes = await db.fetch(
                    "SELECT route, kind, reason FROM relay_pause ORDER BY route"
                )
                return [(r["route"], r["kind"]) for r in routes] == [
                    ("dk/abcinsurance", "configuration"),
                    ("dk/othertenant", "configuration"),
                ]

            await eventually(both_paused, within=5)
            reasons = await db.fetch("SELECT reason FROM relay_pause")
            # Hold the refusal through more than one pause: each ends with one probe.
            first_refusal = emulator.refusals[0].at
            await wait_for_refusals(emulator, after=first_refusal + pause, within=pause + 3)
            attempts = await db.fetchval(
                "SELECT max(attempts) FROM outbox WHERE status <> 'in_flight'"
            )
            dead = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'dead'")
            # The route's pause shows while it holds; between a pause's end and its probe's
            # refusal it does not (a gap a loaded machine widens): look until it shows.
            seen = await watch.look()

            async def pause_shown() -> bool:
                nonlocal seen
                seen = await watch.look()
                paused = seen.metric(
                    "relay_route_paused", country="dk", tenant="abcinsurance", kind="configuration"
                )
                return paused == 1.0

            await eventually(pause_shown, within=pause + 3)
            emulator.set_faults(reject_tokens=False)
            healed = time.monotonic()

            async def all_published() -> bool:
                return await status_counts(db) == {"published": len(ids)}

            await eventually(all_published, within=pause + 10)
            recovered = time.monotonic() - healed
            last = await watch.look()
    assert all("token_not_accepted" in row["reason"] for row in reasons), reasons
    assert (attempts, dead) == (0, 0)  # the refusal costs no row an attempt
    assert seen.readyz == 200  # a route's refusal is not the process's trouble
    assert recovered < pause + 3
    assert last.metric("relay_paused", kind="configuration") == 0.0
    # Each refused publish is sent once more with a fresh token; one probe per route and pause.
    windows = math.ceil((healed - first_refusal) / pause)
    assert emulator.status_counts[401] <= 2 * (concurrency + 2 * windows + 2)


async def wait_for_refusals(emulator: Emulator, *, after: float, within: float) -> None:
    """Wait for a refusal answered after emulator time ``after``."""
    async with asyncio.timeout(within):
        while not [item for item in emulator.refusals if item.at > after]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
