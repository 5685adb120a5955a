"""The operator functions (relay.ops.admin) against a real PostgreSQL, with relays running."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from relay.config import load_settings
from relay.errors import RelayError, UsageError
from relay.ops.admin import Admin, open_admin
from relay.ops.selection import (
    DeadSelector,
    NoSelector,
    NoSuchRow,
    operator_name,
    parse_moment,
    resolve,
)
from tests.helpers.engine import (
    engine_settings,
    eventually,
    payload,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running
from tests.helpers.rows import EVENT, Attempt, add_dead, add_row


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[Admin]:
    async with open_admin(load_settings(database_url=database_url)) as handle:
        yield handle


# Times the operator types -----------------------------------------------------------------------


def test_parse_moment_takes_durations_and_timestamps() -> None:
    assert parse_moment("30d") == timedelta(days=30)
    assert parse_moment("2h") == timedelta(hours=2)
    assert parse_moment("2026-11-28T14:02:00Z") == datetime(2026, 11, 28, 14, 2, tzinfo=UTC)
    assert parse_moment("2026-11-28T15:02:00+01:00") == datetime(2026, 11, 28, 14, 2, tzinfo=UTC)
    naive = parse_moment("2026-11-28T14:02:00")
    assert isinstance(naive, datetime)
    assert naive.tzinfo is not None  # read in local time, then held in UTC
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert resolve(timedelta(hours=2), now) == datetime(2026, 11, 28, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_moment("yesterday")


# relay status ---------------------------------------------------------------------------------


async def test_status_reports_one_snapshot_of_everything(
    db: asyncpg.Connection, admin: Admin
) -> None:
    for minutes in (30, 20, 10):
        await add_row(
            db,
            status="published",
            age=timedelta(minutes=minutes),
            deliveries=[Attempt("created", 201, timedelta(minutes=minutes / 2), "seeded")],
        )
    await add_row(db, age=timedelta(minutes=10))  # the oldest unfinished row
    await add_row(db)
    await add_row(db, status="in_flight", attempts=1)
    soon = await add_row(
        db,
        attempts=2,
        available_in=timedelta(seconds=30),
        last_http_status=503,
        deliveries=[Attempt("http_503", 503, timedelta(seconds=9))] * 2,
    )
    await add_row(
        db,
        attempts=1,
        available_in=timedelta(minutes=1),
        deliveries=[Attempt("timeout", None, timedelta(seconds=5))],
    )
    await add_dead(db, outcome="http_400")
    await add_dead(db, outcome="invalid_event", http_status=None)
    await add_dead(db, event_type="case_created", ordering_key="case-1")
    # No delivery log: the class comes from last_http_status.
    await add_row(db, status="dead", event_type="case_created", attempts=3, last_http_status=409)
    await add_row(db, event_type="case_created", ordering_key="case-1")  # behind a dead row
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
        "('*', now() + interval '30 seconds', 'circuit', 'http_503: down', 'host:1'), "
        "('dk/other', now() - interval '1 second', 'retry_after', 'http_429', 'host:2')"
    )

    report = await admin.status(retrying_limit=1)

    assert report.counts == {"pending": 5, "in_flight": 1, "published": 3, "dead": 4, "blocked": 0}
    assert report.oldest_unfinished_age is not None
    assert 595 < report.oldest_unfinished_age < 660
    assert report.retrying == 2
    assert [row.id for row in report.retrying_rows] == [soon]
    first = report.retrying_rows[0]
    assert (first.attempts, first.error_class, first.last_http_status) == (2, "http_503", 503)
    assert report.next_retry_at == first.next_attempt_at
    assert 25 < (first.next_attempt_at - report.at).total_seconds() <= 30
    assert report.blocked_by_dead == 1
    assert report.dead_by_event_type == {"case_created": 2, EVENT: 2}
    assert report.dead_by_error_class == {"http_400": 2, "http_409": 1, "invalid_event": 1}
    assert report.last_published_at is not None
    assert 280 < (report.at - report.last_published_at).total_seconds() < 320  # 10 min / 2
    # A pause that ran out stays listed until a relay's probe succeeds on its route.
    assert [(p.route, p.kind, p.set_by) for p in report.pauses] == [
        ("*", "circuit", "host:1"),
        ("dk/other", "retry_after", "host:2"),
    ]
    assert 25 < report.pauses[0].remaining <= 30
    assert report.pauses[1].remaining <= 0

    document = report.to_json()
    orjson.dumps(document)  # JSON-ready all the way down
    assert document["counts"]["dead"] == 4
    assert document["pauses"][0]["until"].endswith("Z")
    text = "\n".join(report.lines())
    assert "circuit" in text
    assert "ran out, waiting for a probe" in text
    assert "http_409" in text
    assert "held behind a dead row" in text


async def test_status_of_an_empty_outbox(admin: Admin) -> None:
    report = await admin.status()
    assert report.counts == {"pending": 0, "in_flight": 0, "published": 0, "dead": 0, "blocked": 0}
    assert report.oldest_unfinished_age is None
    assert report.next_retry_at is None
    assert report.last_published_at is None
    assert report.pauses == []
    assert "pauses: none" in report.lines()


# relay dead list / show ------------------------------------------------------------------------


async def test_dead_list_filters_by_event_type_death_time_and_limit(
    db: asyncpg.Connection, admin: Admin
) -> None:
    old = await add_dead(db, died_ago=timedelta(hours=3))
    recent = await add_dead(db, died_ago=timedelta(minutes=5))
    other = await add_dead(db, event_type="case_created", died_ago=timedelta(minutes=1))
    await add_row(db)  # not dead

    assert [row.id for row in await admin.dead_list()] == [old, recent, other]
    assert [row.id for row in await admin.dead_list(event_type=EVENT)] == [old, recent]
    assert [row.id for row in await admin.dead_list(since=timedelta(hours=1))] == [recent, other]
    assert [row.id for row in await admin.dead_list(limit=1)] == [other]
    assert [row.id for row in await admin.dead_list(limit=2)] == [recent, other]
    row = (await admin.dead_list(event_type="case_created"))[0]
    assert (row.attempts, row.error_class, row.last_http_status) == (1, "http_400", 400)
    assert "payload" not in row.to_json()
    assert "refused" in row.line()


async def test_dead_show_has_the_payload_and_every_attempt(
    db: asyncpg.Connection, admin: Admin
) -> None:
    row_id = await add_row(
        db,
        status="dead",
        attempts=3,
        age=timedelta(hours=25),
        last_http_status=503,
        last_error="HTTP 503: injected",
        deliveries=[Attempt("http_503", 503, timedelta(hours=n), error="down") for n in (3, 2, 1)],
    )
    detail = await admin.row(row_id)
    assert (detail.status, detail.attempts, detail.last_http_status) == ("dead", 3, 503)
    assert [item.attempt for item in detail.deliveries] == [1, 2, 3]
    assert detail.error_class == "http_503"
    assert detail.last_attempt_at == detail.deliveries[-1].attempted_at
    document = detail.to_json()
    assert document["payload"]["eventType"] == EVENT
    assert len(document["deliveries"]) == 3
    text = "\n".join(detail.lines())
    assert "attempts:       3" in text
    assert "delivery log (3 attempts):" in text
    assert '"eventType": "payment_status_updated"' in text

    with pytest.raises(NoSuchRow, match="no row 999999"):
        await admin.row(999_999)


async def test_dead_show_names_the_trace_a_row_was_written_in(
    db: asyncpg.Connection, admin: Admin
) -> None:
    """An operator finds a dead row's trace by its id; a context that is no W3C one shows none."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    contexts = [f"00-{trace_id}-00f067aa0ba902b7-01", f"00-{trace_id}-00f067aa0ba902b7", "x"]
    shown = []
    for traceparent in contexts:
        row_id = await add_row(db, status="dead")
        await db.execute(
            "UPDATE outbox SET trace_context = jsonb_build_object('traceparent', $2::text) "
            "WHERE id = $1",
            row_id,
            traceparent,
        )
        shown.append(await admin.row(row_id))
    assert [detail.trace_id for detail in shown] == [trace_id, None, None]
    assert f"  trace id:       {trace_id}" in shown[0].lines()
    assert shown[0].to_json()["trace_id"] == trace_id


# relay requeue ---------------------------------------------------------------------------------


async def dead_ids(db: asyncpg.Connection) -> set[int]:
    return {row["id"] for row in await db.fetch("SELECT id FROM outbox WHERE status = 'dead'")}


async def test_requeue_selectors(db: asyncpg.Connection, admin: Admin) -> None:
    a = await add_dead(db, died_ago=timedelta(hours=3))
    b = await add_dead(db, died_ago=timedelta(minutes=30))
    c = await add_dead(db, event_type="case_created", died_ago=timedelta(minutes=30))
    d = await add_dead(db, event_type="case_created", died_ago=timedelta(minutes=5))
    pending = await add_row(db)

    with pytest.raises(NoSelector, match="--all-dead"):
        await admin.requeue(DeadSelector())
    with pytest.raises(NoSelector, match="no ids or filters"):
        await admin.requeue(DeadSelector(ids=(a,), all_dead=True))

    preview = await admin.requeue(DeadSelector(all_dead=True), dry_run=True)
    assert preview.ids == [a, b, c, d]
    assert await dead_ids(db) == {a, b, c, d}  # a dry run changes nothing

    by_id = await admin.requeue(DeadSelector(ids=(a, pending, 424242)))
    assert (by_id.ids, by_id.not_dead) == ([a], [pending, 424242])
    window = DeadSelector(
        event_type="case_created", since=timedelta(hours=1), until=timedelta(minutes=10)
    )
    assert (await admin.requeue(window)).ids == [c]
    assert (await admin.requeue(DeadSelector(until=timedelta(minutes=10)))).ids == [b]
    assert (await admin.requeue(DeadSelector(all_dead=True))).ids == [d]
    assert await dead_ids(db) == set()


async def test_requeue_resets_the_row_keeps_its_id_and_history_and_wakes_relays(
    db: asyncpg.Connection, database_url: str, admin: Admin
) -> None:
    row_id = await add_dead(db, ordering_key="case-9")
    woken = asyncio.Event()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener("relay_outbox", lambda *_: woken.set())
    try:
        with capture_logs() as logged:
            result = await admin.requeue(DeadSelector(ids=(row_id,)))
        async with asyncio.timeout(5):
            await woken.wait()
    finally:
        await listener.close()
    assert result.ids == [row_id]
    row = await db.fetchrow("SELECT * FROM outbox WHERE id = $1", row_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["ordering_key"]) == ("pending", 0, "case-9")
    assert row["available_at"] <= await db.fetchval("SELECT now()")
    assert row["last_error"] == "HTTP 400: refused"  # kept until the next attempt
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery WHERE outbox_id = $1", row_id)
    audit = [entry for entry in logged if entry["event"] == "admin.requeued"]
    assert len(audit) == 1
    assert audit[0]["count"] == 1
    assert audit[0]["ids"] == [row_id]
    assert audit[0]["selector"] == {"ids": [row_id]}
    assert audit[0]["operator"] == admin.operator
    assert "payload" not in audit[0]


# relay purge -----------------------------------------------------------------------------------


async def test_purge_of_100000_rows_never_holds_up_inserts(
    db: asyncpg.Connection, database_url: str, admin: Admin
) -> None:
    rows = 100_000
    await db.execute(
        """
        INSERT INTO outbox (event_type, payload, status, attempts, created_at, published_at,
                            event_api_id)
        SELECT 'payment_status_updated', jsonb_build_object('n', n), 'published', 1,
               now() - interval '40 days', now() - interval '40 days', n::text
        FROM generate_series(1, $1::int) AS n""",
        rows,
    )
    await db.execute(
        """
        INSERT INTO outbox_delivery (outbox_id, attempt, attempted_at, http_status, latency_ms,
                                     outcome, event_api_id, worker)
        SELECT id, 1, published_at, 201, 5, 'created', event_api_id, 'seed' FROM outbox"""
    )
    young = await add_row(db, status="published", age=timedelta(days=1))
    dead = await add_dead(db, died_ago=timedelta(days=60))
    await db.execute("ANALYZE outbox; ANALYZE outbox_delivery")

    latencies: list[float] = []
    done = asyncio.Event()
    producer = await asyncpg.connect(database_url)

    async def insert_meanwhile() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await producer.execute(
                "INSERT INTO outbox (event_type, payload) VALUES ($1, $2::jsonb)",
                EVENT,
                orjson.dumps(payload()).decode(),
            )
            latencies.append(time.perf_counter() - started)

    inserting = asyncio.create_task(insert_meanwhile())
    try:
        result = await admin.purge(timedelta(days=30), batch_size=1000)
    finally:
        done.set()
        await inserting
        await producer.close()

    print(
        f"\npurge: {result.rows} rows in {result.batches} batches, {result.seconds:.2f}s; "
        f"{len(latencies)} concurrent inserts, max {max(latencies) * 1000:.1f}ms"
    )
    assert (result.rows, result.batches) == (rows, 100)
    assert len(latencies) > 50  # the producer really ran alongside
    assert max(latencies) < 0.5
    left = await db.fetch("SELECT id FROM outbox WHERE status <> 'pending' ORDER BY id")
    assert [row["id"] for row in left] == [young, dead]
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery") == 1  # the dead row's


async def test_purge_refuses_a_cutoff_in_the_future(admin: Admin) -> None:
    with pytest.raises(RelayError, match="in the future"):
        await admin.purge(datetime.now(UTC) + timedelta(days=1))


async def test_the_daemon_purges_after_relay_retention(
    db: asyncpg.Connection, database_url: str
) -> None:
    for _ in range(3):
        await add_row(
            db,
            status="published",
            age=timedelta(days=4),  # published two days ago
            deliveries=[Attempt("created", 201, timedelta(days=2), "seeded")],
        )
    young = await add_row(db, status="published", age=timedelta(hours=2))
    dead = await add_dead(db, died_ago=timedelta(days=30))

    async def purged() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM outbox") == 2)

    async with (
        running() as emulator,
        running_daemon(engine_settings(database_url, emulator, retention="1d")),
    ):
        await eventually(purged)
    left = await db.fetch("SELECT id FROM outbox ORDER BY id")
    assert [row["id"] for row in left] == [young, dead]
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery") == 1  # the dead row's


async def test_a_requeued_row_that_stopped_relays_gets_a_fresh_count_of_stops(
    db: asyncpg.Connection, database_url: str, admin: Admin
) -> None:
    # Dead because every claim of it ended with the relay stopping; the operator looked at it
    # and requeues it. Its stops start again from 0, as its attempts do, or the next claim
    # would dead-letter it unsent.
    row_id = await add_dead(db)
    await db.execute(
        "UPDATE outbox SET stops = 3, last_error = 'the relay stopped while sending it 3 times' "
        "WHERE id = $1",
        row_id,
    )
    await admin.requeue(DeadSelector(ids=(row_id,)))
    assert await db.fetchval("SELECT stops FROM outbox WHERE id = $1", row_id) == 0

    async def finished() -> bool:
        status = await db.fetchval("SELECT status FROM outbox WHERE id = $1", row_id)
        return status in ("published", "dead")

    async with (
        running() as emulator,
        running_daemon(engine_settings(database_url, emulator, max_attempts=3)),
    ):
        await eventually(finished)
    assert await db.fetchval("SELECT status FROM outbox WHERE id = $1", row_id) == "published"
    assert len(emulator.events) == 1


# The audit log ---------------------------------------------------------------------------------


async def audit_rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, at, operator, host, action, parameters::text AS parameters, rows_affected, "
        "row_ids, outcome, detail::text AS detail FROM relay_admin_log ORDER BY id"
    )


async def test_every_change_is_recorded_with_its_operator_and_selection(
    db: asyncpg.Connection, admin: Admin
) -> None:
    first = await add_dead(db, died_ago=timedelta(minutes=30))
    second = await add_dead(db, event_type="case_created")
    for _ in range(3):
        await add_row(db, status="published", age=timedelta(days=80))
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
        "('dk/abcinsurance', now() + interval '1 hour', 'configuration', 'http_403', 'h:1')"
    )

    await admin.requeue(DeadSelector(all_dead=True), dry_run=True)
    assert await audit_rows(db) == []  # a dry run changes nothing, so records nothing

    requeued = await admin.requeue(DeadSelector(ids=(first, 424242), since=timedelta(hours=1)))
    await admin.requeue(DeadSelector(event_type="case_created"))
    purged = await admin.purge(timedelta(days=30), batch_size=2)
    cleared = await admin.clear_pauses(["dk/abcinsurance", "dk/nowhere"], defaults=("dk", None))

    entries = await audit_rows(db)
    assert [entry["action"] for entry in entries] == ["requeue", "requeue", "purge", "pause_clear"]
    assert {entry["operator"] for entry in entries} == {admin.operator}
    assert {entry["host"] for entry in entries} == {admin.host}
    assert requeued.audit_id is not None
    assert [entry["id"] for entry in entries] == [
        requeued.audit_id,
        requeued.audit_id + 1,
        purged.audit_id,
        cleared.audit_id,
    ]
    by_ids, by_type, purge, pauses = entries
    selection = orjson.loads(by_ids["parameters"])
    assert selection["ids"] == [first, 424242]
    assert selection["since"].endswith("Z")
    assert (by_ids["rows_affected"], by_ids["row_ids"], by_ids["outcome"]) == (
        1,
        [first],
        "partial",
    )
    assert orjson.loads(by_ids["detail"]) == {"not_dead": [424242]}
    assert orjson.loads(by_type["parameters"]) == {"event_type": "case_created"}
    assert (by_type["row_ids"], by_type["outcome"], by_type["detail"]) == ([second], "done", None)
    assert orjson.loads(purge["parameters"])["batch_size"] == 2
    assert (purge["rows_affected"], purge["row_ids"], purge["outcome"]) == (3, None, "done")
    assert orjson.loads(purge["detail"]) == {"batches": 2}
    assert orjson.loads(pauses["parameters"]) == {"routes": ["dk/abcinsurance", "dk/nowhere"]}
    assert (pauses["rows_affected"], pauses["outcome"]) == (1, "partial")
    assert orjson.loads(pauses["detail"]) == {
        "lifted": ["dk/abcinsurance"],
        "not_paused": ["dk/nowhere"],
        "released": 0,
    }
    for entry in entries:  # never a payload
        assert "correlationId" not in entry["parameters"] + (entry["detail"] or "")

    listed = await admin.audit()
    assert [entry.id for entry in listed] == [entry["id"] for entry in entries]
    assert [entry.id for entry in await admin.audit(limit=1)] == [cleared.audit_id]
    assert await admin.audit(since=timedelta(0)) == []
    text = "\n".join(line for entry in listed for line in entry.lines())
    assert f"{admin.operator} on {admin.host}  requeue  1 row  partial" in text
    assert "not dead: 424242" in text
    assert "not paused: dk/nowhere" in text


async def test_a_change_that_cannot_be_recorded_is_not_made(
    db: asyncpg.Connection, database_url: str
) -> None:
    # The audit log refuses the entry (here: an empty operator name, which its CHECK refuses;
    # in life, a role without INSERT on it): the change is rolled back with it.
    dead = await add_dead(db)
    await add_row(db, status="published", age=timedelta(days=80))
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
        "('*', now() + interval '1 hour', 'circuit', 'http_503', 'h:1')"
    )
    async with open_admin(load_settings(database_url=database_url)) as handle:
        nameless = Admin(handle.pool, handle.schema, "")
        with pytest.raises(asyncpg.CheckViolationError):
            await nameless.requeue(DeadSelector(ids=(dead,)))
        with pytest.raises(asyncpg.CheckViolationError):
            await nameless.purge(timedelta(days=30))
        with pytest.raises(asyncpg.CheckViolationError):
            await nameless.clear_pauses(None, defaults=(None, None))
    assert await status_counts(db) == {"dead": 1, "published": 1}
    assert await db.fetchval("SELECT count(*) FROM relay_pause") == 1
    assert await audit_rows(db) == []


def test_the_operator_is_named_by_option_then_environment_then_the_os(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pwd

    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice-login")
    assert operator_name("bob") == "bob"
    assert operator_name() == "alice"
    monkeypatch.delenv("USER")
    assert operator_name() == "alice-login"
    monkeypatch.setenv("LOGNAME", " ")
    assert operator_name() == pwd.getpwuid(os.getuid()).pw_name
    for bad in ("", "   ", "x" * 201, "tab\tbed"):
        with pytest.raises(UsageError, match="--operator"):
            operator_name(bad)
