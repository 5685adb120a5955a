"""No row can end a process, and every payload arrives as it was written.

Each test writes rows with plain SQL, as a producer in any language can, puts them among
ordinary rows claimed in the same batches, and checks both the end state and how quickly the
other rows (and the process) get past them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from relay.emulator import Emulator
from tests.helpers.attacks import (
    Watch,
    arrivals_by_id,
    get,
    insert_text,
    nested,
    payload_text,
    stored_text,
    timed_drain,
)
from tests.helpers.engine import (
    engine_settings,
    eventually,
    insert_rows,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import CLIENT_ID, CLIENT_SECRET, running, wait_for

NUMBERS = ("12345678901234567.89", "123456789012345678901234567890", "0.1000000000000000000001")


def depth(value: Any) -> int:
    """How deeply ``value`` nests lists, counted without recursing."""
    levels = 0
    while isinstance(value, list):
        levels += 1
        value = value[0] if value else None
    return levels


# The emulated partner reads these bodies as Scalepoint (Jackson) does --------------------------


async def post_event(emulator: Emulator, body: bytes) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        async with http.post(emulator.token_url, data=form) as response:
            token = (await response.json())["access_token"]
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json;charset=utf-8",
            "Event-Type": "payment_status_updated",
        }
        url = emulator.base_url + "/api/events/v1/dk/external/abcinsurance/send"
        async with http.post(url, data=body, headers=headers) as response:
            return response.status, orjson.loads(await response.read())


async def test_the_emulated_partner_takes_any_number_and_any_depth_and_keeps_the_raw_body() -> None:
    """The premise of the tests below: the stand-in refuses nothing Scalepoint would take."""
    bodies = [
        payload_text(payment='{"amounts": [' + ", ".join(NUMBERS) + ", 1e400]}"),
        payload_text(deep=nested(1500)),
        payload_text(deeper=nested(5000, '{"amount": 0.1000000000000000000001}')),
        payload_text(huge="9" * 5000),
    ]
    async with running() as emulator:
        answers = [await post_event(emulator, body.encode()) for body in bodies]
        refused = [
            await post_event(emulator, payload_text(amount="NaN").encode()),
            await post_event(emulator, payload_text(fields={"correlationId": nested(3)}).encode()),
        ]
        events_status, listed = await get(emulator.base_url + "/_emulator/events")
    assert [status for status, _ in answers] == [201] * len(bodies)
    assert [event.raw for event in emulator.events] == [body.encode() for body in bodies]
    amounts = emulator.events[0].body["payment"]["amounts"]
    assert amounts == [Decimal(number) for number in NUMBERS] + [Decimal("1e400")]
    assert depth(emulator.events[1].body["deep"]) == 1500
    assert depth(emulator.events[2].body["deeper"]) == 5000
    assert emulator.events[3].body["huge"] == Decimal("9" * 5000)
    assert [status for status, _ in refused] == [400, 400]
    assert refused[1][1] == {
        "message": "Incorrect payload, [correlationId] must be a string",
        "valid": False,
    }
    # /_emulator/events gives each body back verbatim, however deep or precise.
    assert events_status == 200
    assert all(body in listed for body in bodies)


# Numbers -----------------------------------------------------------------------------------------


async def test_numbers_arrive_digit_for_digit(db: asyncpg.Connection, database_url: str) -> None:
    await insert_rows(db, 100)
    by_number = {
        number: await insert_text(
            db, payload_text(payment=f'{{"uuid": "{uuid.uuid4()}", "amount": {number}}}')
        )
        for number in NUMBERS
    }
    together = await insert_text(
        db, payload_text(payment='{"amounts": [' + ", ".join(NUMBERS) + "]}", total=NUMBERS[1])
    )
    await insert_rows(db, 100)
    async with running() as emulator:
        took = await timed_drain(engine_settings(database_url, emulator, concurrency=16))
    assert await status_counts(db) == {"published": 204}
    assert took < 5
    stored = await stored_text(db)
    arrived = await arrivals_by_id(db, emulator)
    assert len(arrived) == len(stored) == 204
    for row_id, text in stored.items():
        assert arrived[row_id].raw == text.encode(), row_id  # payload::text, byte for byte
    for number, row_id in by_number.items():
        assert number in arrived[row_id].raw.decode()
        assert arrived[row_id].body["payment"]["amount"] == Decimal(number)
    for number in NUMBERS:
        assert number in arrived[together].raw.decode()
    assert b"e+16" not in arrived[by_number[NUMBERS[0]]].raw  # not re-encoded as a double


# Depth ---------------------------------------------------------------------------------------


async def test_deep_nesting_and_huge_exponents_go_as_stored_and_a_deep_envelope_field_is_dead(
    db: asyncpg.Connection, database_url: str
) -> None:
    ordinary = await insert_rows(db, 100)
    deep = {
        levels: await insert_text(db, payload_text(deep=nested(levels))) for levels in (300, 1500)
    }
    huge = await insert_text(db, payload_text(payment='{"amount": 1e400}'))
    correlation = f'"{uuid.uuid4()}"'
    envelope = await insert_text(
        db, payload_text(fields={"correlationId": nested(300, correlation)})
    )
    ordinary += await insert_rows(db, 100)
    async with running() as emulator:
        # Two replicas: whichever claims a hostile row must live on, and so must the other.
        took = await asyncio.gather(
            *(timed_drain(engine_settings(database_url, emulator, concurrency=8)) for _ in "ab")
        )
    assert max(took) < 5
    assert await status_counts(db) == {"published": len(ordinary) + 3, "dead": 1}
    stored = await stored_text(db)
    arrived = await arrivals_by_id(db, emulator)
    for row_id in [*deep.values(), huge]:
        assert arrived[row_id].raw == stored[row_id].encode()
    for levels, row_id in deep.items():
        assert depth(arrived[row_id].body["deep"]) == levels
    assert arrived[huge].body["payment"]["amount"] == Decimal("1e400")
    dead = await db.fetchrow(
        "SELECT status, last_error, attempts FROM outbox WHERE id = $1", envelope
    )
    assert dead is not None
    assert dead["status"] == "dead"
    assert "must be JSON strings" in dead["last_error"]
    assert "correlationId is a JSON array" in dead["last_error"]
    # Refused before any request: every request the partner saw was an accepted event.
    assert envelope not in arrived
    assert dict(emulator.status_counts) == {201: len(ordinary) + 3}


# Routes ----------------------------------------------------------------------------------------

STEERING = [
    ("dk", ".."),
    ("..", "abcinsurance"),
    ("dk", "a/b"),
    ("dk", "t" * 6080),
    ("dk", "."),
    ("dk", "%2e%2e"),
]


async def test_no_row_can_steer_a_request(db: asyncpg.Connection, database_url: str) -> None:
    # Rows written before migration 0002 added the constraint (it is NOT VALID: old rows stay).
    await db.execute("ALTER TABLE outbox DROP CONSTRAINT outbox_route_check")
    ordinary = await insert_rows(db, 50)
    steering = {
        await insert_text(db, payload_text(), country=country, tenant=tenant): (country, tenant)
        for country, tenant in STEERING
    }
    ordinary += await insert_rows(db, 50)
    async with running() as emulator:
        took = await timed_drain(engine_settings(database_url, emulator, concurrency=16))
    assert took < 5
    assert await status_counts(db) == {"published": len(ordinary), "dead": len(steering)}
    rows = await db.fetch(
        "SELECT id, status, last_error, last_http_status FROM outbox WHERE id = ANY($1::bigint[])",
        list(steering),
    )
    for row in rows:
        country, tenant = steering[row["id"]]
        field, value = ("tenant", tenant) if country == "dk" else ("country", country)
        assert row["status"] == "dead"
        assert row["last_http_status"] is None  # no answer: no request
        assert row["last_error"].startswith(f"{field} '{value[:20]}"), row["last_error"]
        assert "is not" in row["last_error"]
        if len(value) > 40:  # quoted in part, with its length, never copied whole
            assert f"({len(value)} characters)" in row["last_error"]
            assert len(row["last_error"]) < 200
    # Not one request went anywhere but the ordinary route.
    assert emulator.sends_by_route == {"dk/abcinsurance": len(ordinary)}


@pytest.mark.parametrize(("country", "tenant"), STEERING)
async def test_the_table_refuses_a_steering_route_from_any_producer(
    db: asyncpg.Connection, country: str, tenant: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await insert_text(db, payload_text(), country=country, tenant=tenant)
    assert refused.value.constraint_name == "outbox_route_check"
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_misrouted_tenant_pauses_its_route_and_its_rows_keep_their_attempts(
    db: asyncpg.Connection, database_url: str
) -> None:
    """A route Scalepoint does not know (404) is the route's trouble, not the rows': the
    route is paused and probed once per pause, its rows wait with every attempt unspent
    (max_attempts=2 and max_age=0 would kill a row that spent one), the other rows go, and
    once the route answers its rows follow."""
    async with running() as emulator:
        emulator.set_faults(route_status={"dk/misrouted": 404})
        settings = engine_settings(
            database_url,
            emulator,
            max_attempts=2,
            max_age=0,
            configuration_pause=0.2,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        async with running_daemon(settings) as daemon, Watch(daemon) as watch:
            await watch.look()
            # Both kinds in one transaction: the first claims mix them.
            started = time.monotonic()
            async with db.transaction():
                misrouted = [
                    await insert_text(db, payload_text(), tenant="misrouted") for _ in range(4)
                ]
                normal = await insert_rows(db, 200)

            async def normal_published() -> bool:
                published = await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE status = 'published' AND id = ANY($1)",
                    normal,
                )
                return bool(published == len(normal))

            normal_took = await eventually(normal_published, within=10)
            # Several pauses of the route pass, each ending with one probe.
            first_round = emulator.sends_by_route["dk/misrouted"]
            pauses_passed = (time.monotonic() - started) / 0.2
            await wait_for(
                lambda: emulator.sends_by_route["dk/misrouted"] >= first_round + 3, within=10
            )
            waiting = await db.fetch(
                "SELECT status, attempts FROM outbox WHERE id = ANY($1)", misrouted
            )
            pause = await db.fetchrow(
                "SELECT kind, reason FROM relay_pause WHERE route = 'dk/misrouted'"
            )
            await watch.look()
            emulator.clear_faults()

            async def misrouted_published() -> bool:
                published = await db.fetchval(
                    "SELECT count(*) FROM outbox WHERE status = 'published' AND id = ANY($1)",
                    misrouted,
                )
                return bool(published == len(misrouted))

            await eventually(misrouted_published, within=10)
    assert normal_took < 2
    # One round before the pause held the route, then one probe per pause at most (a route
    # that was not held would be asked again every few milliseconds, attempts being spared).
    assert first_round <= len(misrouted) + pauses_passed + 1
    assert {row["status"] for row in waiting} <= {"pending", "blocked", "in_flight"}
    assert {row["attempts"] for row in waiting} <= {0, 1}  # 1: a probe in flight
    assert pause is not None
    assert pause["kind"] == "configuration"
    assert "404" in pause["reason"]
    # The route's trouble shows per route, never as the process's.
    assert {item.readyz for item in watch.seen} == {200}
    route_paused = watch.values(
        "relay_route_paused", country="dk", tenant="misrouted", kind="configuration"
    )
    assert 1.0 in route_paused
    assert set(watch.values("relay_paused", kind="configuration")) == {0.0}


# Numbers from the partner ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [
        (429, "99999999999999999999"),
        (503, "99999999999999999999"),
        (429, "Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
)
async def test_an_absurd_retry_after_costs_at_most_the_cap(
    db: asyncpg.Connection, database_url: str, status: int, retry_after: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(status=status, retry_after=retry_after)
        settings = engine_settings(database_url, emulator, retry_after_cap=1, concurrency=8)
        async with running_daemon(settings) as daemon:
            ids = await insert_rows(db, 60)
            # The first round (the route's first eighth of the senders) is refused, then,
            # after each pause of at most the 1 s cap, a probe.
            await wait_for_count(emulator, status, 8 // 8 + 2, within=5)
            assert daemon.worker is not None
            assert daemon.worker.running.is_set()
            assert (await get(f"http://127.0.0.1:{daemon.http_port}/healthz"))[0] == 200
            attempts = await db.fetchval(
                "SELECT coalesce(max(attempts), 0) FROM outbox WHERE status <> 'in_flight'"
            )
            in_flight_attempts = await db.fetchval(
                "SELECT coalesce(max(attempts), 1) FROM outbox WHERE status = 'in_flight'"
            )
            emulator.clear_faults()
            cleared = time.monotonic()

            async def all_published() -> bool:
                return await status_counts(db) == {"published": len(ids)}

            await eventually(all_published, within=15)
            recovered = time.monotonic() - cleared
    assert attempts == 0  # deferred, never counted
    assert in_flight_attempts == 1  # a claim counts one, given back unless it is published
    assert recovered < 3  # the 1 s cap, one probe, then the whole backlog
    published_attempts = await db.fetch("SELECT DISTINCT attempts FROM outbox")
    assert [row["attempts"] for row in published_attempts] == [1]


async def wait_for_count(emulator: Emulator, status: int, count: int, within: float) -> None:
    async with asyncio.timeout(within):
        while emulator.status_counts[status] < count:  # noqa: ASYNC110 - emulator state
            await asyncio.sleep(0.01)


# Partner text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_body", "content_type", "expected"),
    [
        ("bad\u0000gateway\u0000", "text/html", "badgateway"),
        (
            "<html>Gateway \u00e6rror</html>",
            "text/html; charset=utf-16",
            "<html>Gateway \u00e6rror</html>",
        ),
    ],
)
async def test_a_nul_in_an_error_body_is_stored_clean_and_costs_no_process(
    db: asyncpg.Connection, database_url: str, error_body: str, content_type: str, expected: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(status=500, error_body=error_body, error_content_type=content_type)
        settings = engine_settings(database_url, emulator, concurrency=8, circuit_threshold=10**9)
        async with running_daemon(settings) as daemon, Watch(daemon) as watch:
            ids = await insert_rows(db, 40)

            async def all_retried() -> bool:
                retried = await db.fetchval(
                    "SELECT count(*) FROM outbox "
                    "WHERE status = 'pending' AND attempts >= 2 AND last_error IS NOT NULL"
                )
                return bool(retried == len(ids))

            await eventually(all_retried, within=10)
            errors = await db.fetch("SELECT DISTINCT last_error FROM outbox")
            logged = await db.fetch("SELECT DISTINCT error FROM outbox_delivery")
            emulator.clear_faults()
            cleared = time.monotonic()

            async def all_published() -> bool:
                return await status_counts(db) == {"published": len(ids)}

            await eventually(all_published, within=10)
            recovered = time.monotonic() - cleared
            await watch.look()
            stopping = time.monotonic()
        stopped = time.monotonic() - stopping
    charset = "utf-16" if "utf-16" in content_type else "utf-8"
    size = len(error_body.encode(charset))
    described = f"HTTP 500: {expected} ({content_type.split(';')[0]}, {size} bytes)"
    assert [row["last_error"] for row in errors] == [described]
    assert [row["error"] for row in logged] == [described]
    assert recovered < 2
    assert stopped < 2
    assert "database unreachable" not in {item.reason for item in watch.seen}
    assert {item.metric("relay_database_errors_total") for item in watch.seen} <= {None, 0.0}


async def test_an_echoed_payload_is_neither_kept_nor_logged(
    db: asyncpg.Connection, database_url: str
) -> None:
    markers = [f"marker-{uuid.uuid4().hex}" for _ in range(20)]
    for marker in markers:
        await insert_text(db, payload_text(customer=f'{{"name": "{marker}"}}'))
    async with running() as emulator:
        emulator.set_faults(status=400, echo_body=True)
        with capture_logs() as logged:
            await timed_drain(engine_settings(database_url, emulator, concurrency=8))
    assert await status_counts(db) == {"dead": len(markers)}
    errors = [row["last_error"] for row in await db.fetch("SELECT last_error FROM outbox")]
    assert all("[masked]" in error for error in errors)  # echoed, and masked before it is kept
    assert not [error for error in errors if any(marker in error for marker in markers)]
    assert sum(1 for entry in logged if entry["event"] == "publish.dead_lettered") == len(markers)
    for entry in logged:
        text = repr(entry)
        assert not [marker for marker in markers if marker in text], entry
