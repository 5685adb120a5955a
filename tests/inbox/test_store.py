"""The inbox's writes and reads on a real PostgreSQL: pages stored once, in order, exactly as
sent; consumers process each event once.

The receiver (relay/inbox/receiver.py) runs ``store_page`` on the connection that holds its
route's lock; here the statement is driven directly with pages written by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence

import asyncpg
import orjson
import psycopg
import pytest
from prometheus_client import generate_latest

from relay.inbox import consume
from relay.inbox.queries import InboxQueries
from relay.inbox.store import InboxStore
from relay.metrics import Metrics
from tests.helpers.engine import eventually

Q = InboxQueries("public")
START = "/api/events/v1/dk/external/abc/receive"


def page(ids: Sequence[object], after: str | None = None, **extra: object) -> str:
    data = [
        item
        if not isinstance(item, str)
        else {
            "id": item,
            "type": "case_created",
            "timestamp": "2026-11-29T10:31:28.251Z",
            "attributes": {"case": {"number": item, "amount": 12345678901234567.89}},
        }
        for item in ids
    ]
    last = next((i for i in reversed(ids) if isinstance(i, str)), after)
    body: dict[str, object] = {
        "links": {"next": f"{START}?lastEventId={last}"},
        "meta": {},
        "data": data,
    }
    body.update(extra)
    return json.dumps(body)


async def store(
    db: asyncpg.Connection, text: str, asked: str | None, next_path: str, path: str = START
) -> asyncpg.Record:
    row = await db.fetchrow(
        Q.store_page, "dk", "abc", asked, next_path, text, None, None, path, None
    )
    assert row is not None
    return row


async def test_a_page_is_stored_once_in_order_and_moves_the_checkpoint(
    db: asyncpg.Connection,
) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    first = page(["_1", "_2", "_3"])
    moved = await store(db, first, None, f"{START}?lastEventId=_3")
    assert (moved["moved"], moved["stored"], moved["malformed"]) == (1, 3, 0)
    # The same page again (a poller that crashed before it learnt its write committed):
    # the checkpoint has moved on, so nothing is stored twice.
    again = await store(db, first, None, f"{START}?lastEventId=_3")
    assert (again["moved"], again["stored"]) == (0, 0)
    # Asked again from the new checkpoint, overlapping events are stored once.
    second = await store(
        db, page(["_3", "_4"]), f"{START}?lastEventId=_3", f"{START}?lastEventId=_4"
    )
    assert (second["moved"], second["stored"]) == (1, 1)
    rows = await db.fetch("SELECT event_id FROM inbox ORDER BY id")
    assert [row["event_id"] for row in rows] == ["_1", "_2", "_3", "_4"]
    checkpoint = await db.fetchrow("SELECT next_path FROM inbox_checkpoint")
    assert checkpoint is not None
    assert checkpoint["next_path"] == f"{START}?lastEventId=_4"


async def test_attributes_are_stored_exactly_as_sent(db: asyncpg.Connection) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    deep = "[" * 1500 + "]" * 1500
    text = (
        '{"links": {"next": "x"}, "data": [{"id": "_1", "type": "t", "attributes": '
        '{"amount": 12345678901234567.89, "big": 123456789012345678901234567890, '
        f'"tiny": 0.1000000000000000000001, "huge": 1e400, "deep": {deep}}}}}]}}'
    )
    await store(db, text, None, "x")
    stored = await db.fetchval("SELECT payload::text FROM inbox")
    for number in ("12345678901234567.89", "123456789012345678901234567890",
                   "0.1000000000000000000001"):  # fmt: skip
        assert number in stored
    assert await db.fetchval("SELECT payload -> 'huge' = '1e400'::jsonb FROM inbox")


async def test_items_that_are_not_events_are_kept_raw_as_failed_and_the_route_moves_on(
    db: asyncpg.Connection,
) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    text = page(["_1", 42, {"type": "case_created"}, {"id": "x" * 300}, "_2"])
    result = await store(db, text, None, "next")
    assert (result["moved"], result["stored"], result["malformed"]) == (1, 2, 3)
    rows = await db.fetch("SELECT event_id, status, raw::text, last_error FROM inbox ORDER BY id")
    assert [(r["status"], r["last_error"]) for r in rows] == [
        ("pending", None),
        ("failed", "not an event: a JSON number"),
        ("failed", "not an event: no id"),
        ("failed", "not an event: an id longer than 200 characters"),
        ("pending", None),
    ]
    assert rows[1]["raw"] == "42"
    # Asked again (same position, same page): the failed items are found, not stored twice.
    await db.execute("UPDATE inbox_checkpoint SET next_path = NULL")
    await store(db, text, None, "next")
    assert await db.fetchval("SELECT count(*) FROM inbox") == 5


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"id": "_1", "type": "case_created", "attributes": "not an object"},
         "its attributes are a JSON string"),
        ({"id": "_1", "type": "case_created", "attributes": [1]},
         "its attributes are a JSON array"),
        ({"id": "_1", "type": "case_created"}, "no attributes"),
        ({"id": "_1", "type": "case_created", "attributes": None},
         "its attributes are a JSON null"),
        ({"id": "_1", "attributes": {}}, "no type"),
        ({"id": "_1", "type": 7, "attributes": {}}, "its type is a JSON number"),
        ({"id": 1, "type": "case_created", "attributes": {}}, "its id is a JSON number"),
        ({"id": "", "type": "case_created", "attributes": {}}, "an empty id"),
    ],
)  # fmt: skip
async def test_an_item_is_an_event_only_with_a_string_id_and_type_and_object_attributes(
    db: asyncpg.Connection, item: dict[str, object], reason: str
) -> None:
    """A consumer is handed events, never a string where an event's attributes belong: the
    item is kept raw as failed with the reason, and the route moves on past it."""
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    text = orjson.dumps(
        {"links": {"next": "next"}, "data": [item, {"id": "_2", "type": "t", "attributes": {}}]}
    ).decode()
    result = await store(db, text, None, "next")
    assert (result["moved"], result["stored"], result["malformed"]) == (1, 1, 1)
    rows = await db.fetch("SELECT status, payload, raw, last_error FROM inbox ORDER BY id")
    assert [(r["status"], r["last_error"]) for r in rows] == [
        ("failed", f"not an event: {reason}"),
        ("pending", None),
    ]
    assert rows[0]["payload"] is None
    assert orjson.loads(rows[0]["raw"]) == item


async def test_two_consumers_process_every_event_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    ids = [f"_{n}" for n in range(1, 1001)]
    for start in range(0, 1000, 100):
        await store(db, page(ids[start : start + 100]), None if start == 0 else f"p{start}",
                    f"p{start + 100}")  # fmt: skip
    await db.execute("CREATE TABLE effect (event_id text, consumer int)")
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=6)

    async def consumer(number: int) -> None:
        async for event in consume(pool, poll_interval=0.05):
            async with event as connection:
                await connection.execute(
                    "INSERT INTO effect VALUES ($1, $2)", event.event_id, number
                )

    async def all_processed() -> bool:
        processed = await db.fetchval("SELECT count(*) FROM inbox WHERE status = 'processed'")
        return bool(processed == 1000)

    consumers = [asyncio.create_task(consumer(n)) for n in (1, 2)]
    try:
        await eventually(all_processed, within=60)
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await pool.close()
    effects = await db.fetch("SELECT event_id, count(*) AS n FROM effect GROUP BY event_id")
    assert len(effects) == 1000
    assert {row["n"] for row in effects} == {1}
    assert await db.fetchval("SELECT count(DISTINCT consumer) FROM effect") == 2


async def test_a_failing_consumer_rolls_back_its_change_and_the_event_ends_failed(
    db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    await store(db, page(["_1"]), None, "next")
    await db.execute("CREATE TABLE effect (event_id text)")
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=3)
    attempts = 0
    try:
        async with asyncio.timeout(30):
            async for event in consume(pool, max_attempts=3, retry_delay=0.01, poll_interval=0.05):
                async with event as connection:
                    attempts += 1
                    await connection.execute("INSERT INTO effect VALUES ($1)", event.event_id)
                    raise RuntimeError("the claim system is down")
                if attempts == 3:
                    break
    finally:
        await pool.close()
    row = await db.fetchrow("SELECT status, attempts, last_error FROM inbox")
    assert row is not None
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["last_error"] == "RuntimeError: the claim system is down"
    assert await db.fetchval("SELECT count(*) FROM effect") == 0


@pytest.mark.parametrize("types", [["case_created"], ["claim_updated"]])
async def test_consumers_choose_event_types(
    db: asyncpg.Connection, database_url: str, types: list[str]
) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    await store(db, page(["_1"]), None, "next")
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=3)
    got: list[str] = []

    async def take() -> None:
        async for event in consume(pool, event_types=types, poll_interval=0.05):
            async with event:
                got.append(event.event_id)

    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(take(), 0.5)
    finally:
        await pool.close()
    assert got == (["_1"] if types == ["case_created"] else [])


CLAIM_SQL = """
    SELECT id, event_id, event_type, payload
    FROM inbox
    WHERE status = 'pending' AND available_at <= now()
    ORDER BY available_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED"""
PROCESSED_SQL = """
    UPDATE inbox SET status = 'processed', processed_at = now(), attempts = attempts + 1,
                     last_error = NULL
    WHERE id = %s"""


def sql_consumer(url: str, number: int) -> int:
    """docs/inbox.md's plain SQL consumer, as a Java or .NET application would run it."""
    handled = 0
    with psycopg.connect(url) as connection:
        while True:
            with connection.transaction():
                row = connection.execute(CLAIM_SQL).fetchone()
                if row is None:
                    return handled
                connection.execute("INSERT INTO effect VALUES (%s, %s)", (row[1], number))
                connection.execute(PROCESSED_SQL, (row[0],))
            handled += 1


async def test_two_plain_sql_consumers_process_every_event_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    ids = [f"_{n}" for n in range(1, 1001)]
    for start in range(0, 1000, 100):
        await store(db, page(ids[start : start + 100]), None if start == 0 else f"p{start}",
                    f"p{start + 100}")  # fmt: skip
    await db.execute("CREATE TABLE effect (event_id text, consumer int)")
    handled = await asyncio.gather(
        asyncio.to_thread(sql_consumer, database_url, 1),
        asyncio.to_thread(sql_consumer, database_url, 2),
    )
    assert sum(handled) == 1000
    assert all(count > 0 for count in handled)
    effects = await db.fetch("SELECT event_id, count(*) AS n FROM effect GROUP BY event_id")
    assert len(effects) == 1000
    assert {row["n"] for row in effects} == {1}


SLEEP_AT_COMMIT = """
CREATE FUNCTION sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER sleep_at_commit AFTER INSERT ON effect
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sleep_at_commit();
"""


@pytest.mark.parametrize("moment", ["in its own statement", "in the commit"])
async def test_a_consumer_cancelled_while_it_holds_an_event_hands_everything_back(
    db: asyncpg.Connection, database_url: str, moment: str
) -> None:
    """Its change rolls back, the event is due again, and the pool closes at once, even though
    the caller keeps the generator (a loop left by an exception does not close it)."""
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    await store(db, page(["_1"]), None, "next")
    await db.execute("CREATE TABLE effect (event_id text)")
    if moment == "in the commit":
        await db.execute(SLEEP_AT_COMMIT)
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=3)
    events = consume(pool, poll_interval=0.05)

    async def consumer() -> None:
        async for event in events:
            async with event as connection:
                await connection.execute("INSERT INTO effect VALUES ($1)", event.event_id)
                if moment == "in its own statement":
                    await connection.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(consumer())

    async def sleeping() -> bool:
        query = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
            "AND state = 'active' AND datname = current_database()"
        )
        return bool(query)

    await eventually(sleeping)  # cancelled in the middle of a statement, the worst moment
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.wait_for(pool.close(), 5)
    row = await db.fetchrow("SELECT status, attempts FROM inbox")
    assert row is not None
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert await db.fetchval("SELECT count(*) FROM effect") == 0


async def test_a_consumer_cancelled_at_any_moment_of_its_polling_hands_every_connection_back(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Cancelled after 0, 1, 2, ... turns of the event loop, the consumer is stopped at each
    await of its claim and its wait in turn (its rollback of an empty claim included); each
    time both of its connections go back to the pool, and the pool then closes at once."""
    await db.execute(Q.ensure_checkpoint, "dk", "abc")
    await store(db, page(["_1"]), None, "next")  # a case_created: never due for this consumer
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=2)

    async def consumer() -> None:
        async for _event in consume(pool, event_types=["claim_updated"], poll_interval=0):
            raise AssertionError("no claim_updated event was stored")

    for turns in range(400):
        task = asyncio.create_task(consumer())
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        async with asyncio.timeout(5):  # both connections are free again
            first, second = await pool.acquire(), await pool.acquire()
        await pool.release(first)
        await pool.release(second)
    await asyncio.wait_for(pool.close(), 5)
    assert await db.fetchval("SELECT status FROM inbox") == "pending"


async def test_the_sampled_gauges_count_what_waits_for_consumers_per_route(
    db: asyncpg.Connection, database_url: str
) -> None:
    """An operator sees per route how many received events wait for the insurer's consumers
    and how long the oldest has waited; processed and failed events are not waiting."""
    for tenant, ids in (("abc", ["_1", "_2", "_3"]), ("quiet", ["_9"])):
        await db.execute(Q.ensure_checkpoint, "dk", tenant)
        start = f"/api/events/v1/dk/external/{tenant}/receive"
        row = await db.fetchrow(
            Q.store_page, "dk", tenant, None, "next", page(ids), None, None, start, None
        )
        assert row is not None
    await db.execute("UPDATE inbox SET received_at = now() - interval '10 minutes'")
    await db.execute("UPDATE inbox SET status = 'processed' WHERE event_id IN ('_1', '_9')")
    await db.execute(Q.ensure_checkpoint, "dk", "idle")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        samples = {
            sample.tenant: sample for sample in await InboxStore(pool, "public").route_sample()
        }
    finally:
        await pool.close()
    assert {tenant: samples[tenant].pending for tenant in samples} == {
        "abc": 2,
        "quiet": 0,
        "idle": 0,
    }
    assert 600 <= samples["abc"].oldest_pending < 660
    assert samples["quiet"].oldest_pending == samples["idle"].oldest_pending == 0

    metrics = Metrics()
    for sample in samples.values():
        metrics.show_receive_route(
            sample.country, sample.tenant, sample.lag, sample.age,
            (sample.pending, sample.oldest_pending),
        )  # fmt: skip
    exposition = generate_latest(metrics.registry).decode()
    assert 'relay_inbox_pending_events{country="dk",tenant="abc"} 2.0' in exposition
    assert 'relay_inbox_pending_events{country="dk",tenant="idle"} 0.0' in exposition
    assert re.search(
        r'relay_inbox_oldest_pending_age_seconds\{country="dk",tenant="abc"\} 6\d\d\.', exposition
    )
