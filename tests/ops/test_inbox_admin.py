"""The inbox's operator functions (relay.ops.inbox) against a real PostgreSQL: what status,
list and show report, what retry, rewind and purge change, and the audit log they write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from relay.config import load_settings
from relay.errors import UsageError
from relay.inbox import consume
from relay.inbox.queries import INBOX_LOCK_CLASS
from relay.ops.admin import open_admin
from relay.ops.inbox import FailedSelector, InboxAdmin, NoCheckpoint, NoSuchEvent
from relay.ops.selection import NoSelector
from tests.helpers.engine import eventually
from tests.ops.inbox_rows import (
    RECEIVE,
    ROUTE,
    add_checkpoint,
    add_event,
    add_malformed,
    statuses,
)

OTHER = ("dk", "budgetinsurance")


@pytest.fixture
async def inbox(database_url: str) -> AsyncIterator[InboxAdmin]:
    async with open_admin(load_settings(database_url=database_url), "ops-bob") as admin:
        yield InboxAdmin(admin)


async def audit(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT action, operator, parameters::text, rows_affected, row_ids, outcome, "
        "detail::text FROM relay_admin_log ORDER BY id"
    )


# relay inbox status ----------------------------------------------------------------------------


async def test_status_reports_each_route_in_one_snapshot(
    db: asyncpg.Connection, database_url: str, inbox: InboxAdmin
) -> None:
    await add_checkpoint(db, paused_for=timedelta(minutes=4), pause_reason="http_404: no route")
    await add_event(db, status="processed", received_ago=timedelta(hours=1))
    await add_event(db, received_ago=timedelta(minutes=3))
    await add_event(db, attempts=2, last_error="ValueError: no such case")
    await add_event(db, status="failed", attempts=5, last_error="KeyError: 'case'")
    await add_malformed(db)
    await add_event(db, route=("se", "nordic"))  # stored, yet no checkpoint
    # The receiver's lock on dk/abcinsurance, held as a polling relay holds it.
    poller = await asyncpg.connect(database_url)
    try:
        await poller.execute(
            "SELECT pg_advisory_lock($1, hashtext('dk/abcinsurance'))", INBOX_LOCK_CLASS
        )
        report = await inbox.status(configured=["dk/abcinsurance", "dk/budgetinsurance"])
    finally:
        await poller.close()

    routes = {route.route: route for route in report.routes}
    assert list(routes) == ["dk/abcinsurance", "dk/budgetinsurance", "se/nordic"]
    main = routes["dk/abcinsurance"]
    assert (main.polled, main.configured, main.has_checkpoint) == (True, True, True)
    assert main.next_path == f"{RECEIVE}?lastEventId=_3"
    assert main.last_event_id == "_3"
    assert main.lag is not None
    assert 295 < main.lag < 330
    assert main.answered_age is not None
    assert 5 < main.answered_age < 40
    assert main.paused
    assert main.pause_reason == "http_404: no route"
    assert (main.pending, main.retrying, main.processed, main.failed, main.malformed) == (
        2,
        1,
        1,
        2,
        1,
    )
    assert main.oldest_pending_age is not None
    assert 175 < main.oldest_pending_age < 240

    configured = routes["dk/budgetinsurance"]
    assert (configured.polled, configured.configured, configured.has_checkpoint) == (
        False,
        True,
        False,
    )
    assert configured.pending == 0
    assert not routes["se/nordic"].configured
    assert routes["se/nordic"].pending == 1

    document = report.to_json()
    orjson.dumps(document)  # JSON-ready all the way down
    assert document["routes"][0]["route"] == "dk/abcinsurance"
    assert document["routes"][0]["answered_at"].endswith("Z")
    assert document["routes"][0]["paused"] is True
    text = "\n".join(report.lines())
    for expected in (
        "dk/abcinsurance  polled by a relay now",
        "after _3; next /api/events/v1/dk/external/abcinsurance/receive?lastEventId=_3",
        "left): http_404: no route",
        "2 pending (1 retrying; oldest received 3m",
        "2 failed (1 is not an event)",
        "dk/budgetinsurance  NOT polled: in RELAY_RECEIVE_ROUTES here, and never polled",
        "none: no relay has polled it (yet 1 event is stored under it)",
    ):
        assert expected in text, text


async def test_an_idle_route_that_is_caught_up_is_not_called_behind(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    """The newest event is 55 s old, and the answers since brought nothing: caught up, not
    55 s behind. A route whose last answer brought events may have more coming."""
    await add_checkpoint(db, newest_ago=timedelta(seconds=55), answered_ago=timedelta(seconds=2))
    await add_event(db, status="processed", received_ago=timedelta(seconds=50))
    other = ("dk", "busy")
    await add_checkpoint(db, route=other, newest_ago=timedelta(seconds=55), answered_ago=None)
    await add_event(db, route=other, received_ago=timedelta(0))
    report = await inbox.status()
    routes = {route.route: route for route in report.routes}
    idle, busy = routes["dk/abcinsurance"], routes["dk/busy"]
    assert idle.caught_up
    assert not busy.caught_up
    text = "\n".join(report.lines())
    assert "lag:          none: caught up at the last answer" in text, text
    assert "(55s ago)" in text
    assert "behind" not in text
    assert "- (no answer yet; the newest event received is stamped" in text
    assert report.to_json()["routes"][0]["caught_up"] is True


async def test_status_of_an_inbox_never_used(inbox: InboxAdmin) -> None:
    report = await inbox.status()
    assert report.routes == []
    assert "no receive routes" in "\n".join(report.lines())


async def test_status_is_one_snapshot(db: asyncpg.Connection, inbox: InboxAdmin) -> None:
    await add_checkpoint(db)
    await add_event(db)
    report = await inbox.status()
    [route] = report.routes
    # Ages are measured against the snapshot's clock, not the machine's.
    assert route.answered_at is not None
    assert route.answered_age == pytest.approx(
        (report.at - route.answered_at).total_seconds(), abs=0.01
    )


# relay inbox list / show -----------------------------------------------------------------------


async def test_list_filters_and_never_shows_a_payload(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    old = await add_event(db, status="processed", received_ago=timedelta(hours=3))
    failed = await add_event(
        db, event_type="claim_updated", status="failed", attempts=5, last_error="boom\nagain"
    )
    pending = await add_event(db)
    other = await add_event(db, route=OTHER)
    malformed = await add_malformed(db)

    assert [row.id for row in await inbox.events()] == [old, failed, pending, other, malformed]
    assert [row.id for row in await inbox.events(route=OTHER)] == [other]
    assert [row.id for row in await inbox.events(status="failed")] == [failed, malformed]
    assert [row.id for row in await inbox.events(event_type="claim_updated")] == [failed]
    assert [row.id for row in await inbox.events(since=timedelta(hours=1), limit=2)] == [
        other,
        malformed,
    ]
    with pytest.raises(UsageError, match="--status"):
        await inbox.events(status="dead")

    rows = await inbox.events()
    for row in rows:
        document = row.to_json()
        assert "payload" not in document
        assert "raw" not in document
        assert "12345678901234567" not in row.line()
    shown = {row.id: row for row in rows}
    assert shown[malformed].malformed
    assert "(not an event)" in shown[malformed].line()
    assert "boom again" in shown[failed].line()
    assert shown[other].to_json()["route"] == "dk/budgetinsurance"


async def test_show_prints_the_payload_exactly_as_stored(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    event = await add_event(db, status="failed", attempts=3, last_error="ValueError: x")
    detail = await inbox.event(event)
    text = detail.json_text()
    document = json.loads(text, parse_float=Decimal)
    # Every digit, though no float holds 12345678901234567.89.
    assert document["payload"]["case"]["amount"] == Decimal("12345678901234567.89")
    assert "12345678901234567.89" in text
    assert document["raw"] is None
    assert (document["status"], document["attempts"], document["route"]) == (
        "failed",
        3,
        "dk/abcinsurance",
    )
    assert document["received_at"].endswith("Z")
    lines = "\n".join(detail.lines())
    assert "payload (the event's attributes):" in lines
    assert '"amount": 12345678901234567.89' in lines
    assert "last error:     ValueError: x" in lines

    raw = await inbox.event(await add_malformed(db, raw='[1, {"a": 2.50}]'))
    shown = json.loads(raw.json_text())
    assert shown["payload"] is None
    assert shown["raw"] == [1, {"a": 2.5}]
    assert shown["malformed"] is True
    assert "raw item (not an event; kept as received):" in "\n".join(raw.lines())

    with pytest.raises(NoSuchEvent, match="no event 424242"):
        await inbox.event(424_242)


# relay inbox retry -----------------------------------------------------------------------------


async def test_retry_selectors(db: asyncpg.Connection, inbox: InboxAdmin) -> None:
    a = await add_event(db, status="failed", attempts=5, received_ago=timedelta(hours=3))
    b = await add_event(db, status="failed", attempts=5, received_ago=timedelta(minutes=30))
    c = await add_event(
        db, event_type="claim_updated", status="failed", received_ago=timedelta(minutes=30)
    )
    d = await add_event(db, route=OTHER, status="failed", received_ago=timedelta(minutes=5))
    pending = await add_event(db)

    with pytest.raises(NoSelector, match="--all-failed"):
        await inbox.retry(FailedSelector())
    with pytest.raises(NoSelector, match="no ids or filters"):
        await inbox.retry(FailedSelector(route=ROUTE, all_failed=True))

    preview = await inbox.retry(FailedSelector(all_failed=True), dry_run=True)
    assert (preview.ids, preview.audit_id) == ([a, b, c, d], None)
    assert {s for s, _ in (await statuses(db)).values()} == {"failed", "pending"}
    assert await audit(db) == []  # a dry run is not recorded

    by_id = await inbox.retry(FailedSelector(ids=(a, pending, 424242)))
    assert (by_id.ids, by_id.not_failed) == ([a], [pending, 424242])
    assert by_id.needs_attention
    window = FailedSelector(
        event_type="claim_updated", since=timedelta(hours=1), until=timedelta(minutes=10)
    )
    assert (await inbox.retry(window)).ids == [c]
    assert (await inbox.retry(FailedSelector(route=ROUTE))).ids == [b]
    assert (await inbox.retry(FailedSelector(all_failed=True))).ids == [d]
    assert all(state == ("pending", 0) for state in (await statuses(db)).values())


async def test_retry_leaves_items_that_are_not_events_and_says_so(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    failed = await add_event(db, status="failed", attempts=5)
    malformed = await add_malformed(db)

    result = await inbox.retry(FailedSelector(all_failed=True))
    assert result.ids == [failed]
    assert [item.id for item in result.malformed] == [malformed]
    assert result.needs_attention
    assert "left failed 1 item that is not an event" in "\n".join(result.lines())
    by_id = await inbox.retry(FailedSelector(ids=(malformed,)))
    assert (by_id.ids, [item.id for item in by_id.malformed]) == ([], [malformed])
    row = await db.fetchrow("SELECT status, payload, raw::text FROM inbox WHERE id = $1", malformed)
    assert row is not None
    assert (row["status"], row["payload"], row["raw"]) == ("failed", None, "42")

    entries = await audit(db)
    assert [(e["action"], e["outcome"], e["rows_affected"]) for e in entries] == [
        ("inbox_retry", "partial", 1),
        ("inbox_retry", "partial", 0),
    ]
    assert json.loads(entries[0]["detail"]) == {"malformed": [malformed]}


async def test_retry_resets_the_event_records_it_and_wakes_consumers(
    db: asyncpg.Connection, database_url: str, inbox: InboxAdmin
) -> None:
    event = await add_event(db, status="failed", attempts=5, last_error="KeyError: 'case'")
    await db.execute(
        "UPDATE inbox SET available_at = now() + interval '1 hour', locked_by = 'c1', "
        "locked_until = now() + interval '1 minute' WHERE id = $1",
        event,
    )
    woken: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener("relay_inbox", lambda *args: woken.put_nowait(args[-1]))
    try:
        with capture_logs() as logged:
            result = await inbox.retry(FailedSelector(ids=(event,)))
        async with asyncio.timeout(5):
            assert await woken.get() == "public"  # the schema, as the insert trigger sends it
    finally:
        await listener.close()
    # A consumer takes it at once, and it has every attempt again.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    handled: list[tuple[int, int]] = []

    async def consumer() -> None:
        async for item in consume(pool, max_attempts=5):
            async with item:
                handled.append((item.id, item.attempts))

    async def consumed() -> bool:
        return bool(handled)

    task = asyncio.create_task(consumer())
    try:
        await eventually(consumed, within=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
    assert result.ids == [event]
    assert handled == [(event, 0)]
    row = await db.fetchrow("SELECT * FROM inbox WHERE id = $1", event)
    assert row is not None
    assert (row["status"], row["attempts"], row["locked_by"]) == ("processed", 1, None)

    [entry] = await audit(db)
    assert (entry["action"], entry["operator"], entry["outcome"]) == (
        "inbox_retry",
        "ops-bob",
        "done",
    )
    assert (entry["rows_affected"], list(entry["row_ids"])) == (1, [event])
    assert json.loads(entry["parameters"]) == {"ids": [event]}
    [line] = [item for item in logged if item["event"] == "admin.inbox_retried"]
    assert (line["ids"], line["operator"], line["audit_id"]) == (
        [event],
        "ops-bob",
        result.audit_id,
    )


async def test_retry_keeps_the_last_error_until_the_next_attempt(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    event = await add_event(db, status="failed", attempts=5, last_error="KeyError: 'case'")
    await inbox.retry(FailedSelector(ids=(event,)))
    row = await db.fetchrow("SELECT status, attempts, last_error FROM inbox WHERE id = $1", event)
    assert row is not None
    assert tuple(row) == ("pending", 0, "KeyError: 'case'")


async def test_two_retries_at_once_retry_each_event_once(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    events = [await add_event(db, status="failed", attempts=5) for _ in range(20)]
    first, second = await asyncio.gather(
        inbox.retry(FailedSelector(all_failed=True)), inbox.retry(FailedSelector(all_failed=True))
    )
    assert sorted(first.ids + second.ids) == events
    total = sum(e["rows_affected"] for e in await audit(db))
    assert total == len(events)


async def test_a_retry_that_cannot_be_recorded_changes_nothing(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    event = await add_event(db, status="failed", attempts=5)
    await db.execute(
        "ALTER TABLE relay_admin_log ADD CONSTRAINT refuse_all CHECK (rows_affected < 0) NOT VALID"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await inbox.retry(FailedSelector(ids=(event,)))
    assert (await statuses(db))[event] == ("failed", 5)


# relay inbox rewind ----------------------------------------------------------------------------


async def checkpoint(db: asyncpg.Connection, route: tuple[str, str] = ROUTE) -> tuple[str, str]:
    row = await db.fetchrow(
        "SELECT next_path, last_event_id FROM inbox_checkpoint WHERE country = $1 AND tenant = $2",
        *route,
    )
    assert row is not None
    return row["next_path"], row["last_event_id"]


async def test_rewind_moves_the_checkpoint_and_records_before_and_after(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    await add_checkpoint(db, last_event_id="_30")
    for number in range(1, 31):
        await add_event(db, event_id=f"_{number}")

    preview = await inbox.rewind(ROUTE, "_10", dry_run=True)
    assert (preview.known, preview.stored_after, preview.audit_id) == (True, 20, None)
    assert await checkpoint(db) == (f"{RECEIVE}?lastEventId=_30", "_30")
    assert await audit(db) == []

    with capture_logs() as logged:
        result = await inbox.rewind(ROUTE, "_10")
    assert await checkpoint(db) == (f"{RECEIVE}?lastEventId=_10", "_10")
    assert result.before.next_path == f"{RECEIVE}?lastEventId=_30"
    assert result.after.next_path == f"{RECEIVE}?lastEventId=_10"
    assert not result.needs_attention
    [entry] = await audit(db)
    assert (entry["action"], entry["rows_affected"], entry["outcome"]) == (
        "inbox_rewind",
        1,
        "done",
    )
    assert json.loads(entry["parameters"]) == {"route": "dk/abcinsurance", "to": "_10"}
    assert json.loads(entry["detail"]) == {
        "before": {"next_path": f"{RECEIVE}?lastEventId=_30", "last_event_id": "_30"},
        "after": {"next_path": f"{RECEIVE}?lastEventId=_10", "last_event_id": "_10"},
        "known": True,
        "stored_after": 20,
    }
    [line] = [item for item in logged if item["event"] == "admin.inbox_rewound"]
    assert (line["route"], line["to"], line["audit_id"]) == (
        "dk/abcinsurance",
        "_10",
        result.audit_id,
    )


async def test_rewind_quotes_the_id_as_the_receiver_does(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    await add_checkpoint(db)
    result = await inbox.rewind(ROUTE, "a b/c?d&e")
    assert result.after.next_path == f"{RECEIVE}?lastEventId=a%20b%2Fc%3Fd%26e"
    # The inbox holds no such event: the rewind is made, and said to need a look.
    assert (result.known, result.needs_attention) == (False, True)
    assert "holds no event a b/c?d&e" in "\n".join(result.lines())


async def test_rewind_refuses_what_it_cannot_do(db: asyncpg.Connection, inbox: InboxAdmin) -> None:
    await add_event(db, route=OTHER, event_id="_1")
    with pytest.raises(NoCheckpoint, match="no receive checkpoint for dk/budgetinsurance"):
        await inbox.rewind(OTHER, "_1")
    with pytest.raises(UsageError, match="1-200 characters"):
        await inbox.rewind(ROUTE, "")
    with pytest.raises(UsageError, match="1-200 characters"):
        await inbox.rewind(ROUTE, "x" * 201)
    with pytest.raises(UsageError, match="not an id Scalepoint knows"):
        await inbox.rewind(ROUTE, "!malformed:0123")
    assert await audit(db) == []


async def test_a_rewind_waits_for_a_page_being_stored_and_that_page_finds_it_moved(
    db: asyncpg.Connection, database_url: str, inbox: InboxAdmin
) -> None:
    """The receiver's compare-and-set, met half-way: a page's store holds the checkpoint's
    row lock when the rewind comes; the rewind waits, then wins, and the receiver's next
    store (from the position it had) moves nothing."""
    from relay.inbox.queries import InboxQueries

    queries = InboxQueries("public")
    await add_checkpoint(db, last_event_id="_2")
    at_2 = f"{RECEIVE}?lastEventId=_2"
    page = json.dumps({"links": {}, "data": [{"id": "_3", "type": "t", "attributes": {}}]})
    receiver = await asyncpg.connect(database_url)
    try:
        async with receiver.transaction():
            stored = await receiver.fetchrow(
                queries.store_page,
                *ROUTE,
                at_2,
                f"{RECEIVE}?lastEventId=_3",
                page,
                "_3",
                None,
                at_2,
                None,
            )
            assert stored is not None
            assert stored["moved"] == 1
            rewinding = asyncio.create_task(inbox.rewind(ROUTE, "_1"))
            await asyncio.sleep(0.3)
            assert not rewinding.done()  # waits for the page's transaction
        result = await rewinding
        assert result.before.last_event_id == "_3"  # it saw the page's move, and undid it
        again = await receiver.fetchrow(
            queries.store_page,
            *ROUTE,
            f"{RECEIVE}?lastEventId=_3",
            "x",
            page,
            "_3",
            None,
            "x",
            None,
        )
        assert again is not None
        assert (again["moved"], again["stored"]) == (0, 0)
    finally:
        await receiver.close()
    assert await checkpoint(db) == (f"{RECEIVE}?lastEventId=_1", "_1")


# relay inbox purge -----------------------------------------------------------------------------


async def test_purge_deletes_only_processed_events_older_than_the_cutoff(
    db: asyncpg.Connection, inbox: InboxAdmin
) -> None:
    old = [
        await add_event(db, status="processed", received_ago=timedelta(days=40)) for _ in range(5)
    ]
    recent = await add_event(db, status="processed", received_ago=timedelta(days=1))
    pending = await add_event(db, received_ago=timedelta(days=60))
    failed = await add_event(db, status="failed", received_ago=timedelta(days=60))
    malformed = await add_malformed(db)

    preview = await inbox.purge_preview(timedelta(days=30))
    assert preview.rows == 5
    assert preview.oldest is not None
    assert preview.newest is not None
    assert len(await statuses(db)) == 9
    assert await audit(db) == []

    with capture_logs() as logged:
        result = await inbox.purge(timedelta(days=30), batch_size=2)
    assert (result.rows, result.batches) == (5, 3)
    assert set(await statuses(db)) == {recent, pending, failed, malformed}
    assert not set(old) & set(await statuses(db))
    [entry] = await audit(db)
    assert (entry["action"], entry["rows_affected"], entry["outcome"]) == ("inbox_purge", 5, "done")
    assert json.loads(entry["detail"]) == {"batches": 3}
    assert [item["rows"] for item in logged if item["event"] == "admin.inbox_purged"] == [5]
    with pytest.raises(UsageError, match="in the future"):
        await inbox.purge(timedelta(days=-1))
