"""A dead row that blocks its key is handled in the tool, never with SQL.

The runbook once said to delete such a row with SQL: the rows behind it then stayed blocked
until a sweep minutes later, `relay status` showed them blocked with no reason, `relay requeue`
answered "not dead", and no metric counted them. Now `relay dead discard` gives the row up
(audited, with the operator's reason) and the rows behind it go at once; `relay status`, `dead
show` and `relay_blocked_rows` say what holds a row back.
"""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from tests.helpers.attacks import Watch
from tests.helpers.commands import operate
from tests.helpers.engine import (
    arrival_order_by_key,
    engine_settings,
    eventually,
    insert_rows,
    running_daemon,
)
from tests.helpers.partner import running, wait_for

POLL = 0.3


async def test_discarding_a_dead_row_lets_the_rows_behind_it_go_at_once(
    db: asyncpg.Connection, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.daemon.SAMPLE_INTERVAL", 0.2)  # the gauges sampled often
    dead, *behind = await insert_rows(db, 4, ordering_key="case-7")
    await db.execute(
        "UPDATE outbox SET status = 'dead', last_error = 'HTTP 422: x' WHERE id = $1", dead
    )
    async with running() as emulator:
        settings = engine_settings(database_url, emulator, poll_interval=POLL)
        async with running_daemon(settings) as daemon, Watch(daemon) as watch:

            async def parked() -> bool:
                count = await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'blocked'")
                return bool(count == len(behind))

            await eventually(parked, within=30)

            async def counted() -> bool:
                seen = await watch.look()
                return seen.metric("relay_blocked_rows", reason="dead_row") == len(behind)

            await eventually(counted, within=10)
            status = await operate(database_url, "status")
            shown = await operate(database_url, "dead", "show", str(behind[0]), "--json")
            preview = await operate(
                database_url, "dead", "discard", str(dead), "--reason", "sent by hand", "--dry-run"
            )
            assert await db.fetchval("SELECT status FROM outbox WHERE id = $1", dead) == "dead"
            discarded = await operate(
                database_url, "dead", "discard", str(dead), "--reason", "sent by hand"
            )
            await wait_for(lambda: len(emulator.events) == len(behind), within=POLL + 5)
            order = await arrival_order_by_key(db, emulator)
    assert status.code == 0, status
    assert "blocked             3   3 behind dead rows" in status.stdout
    assert shown.json()["waits_for"] == (
        f"dead row {dead} of its ordering key: relay requeue {dead}, "
        f"or relay dead discard {dead} --reason ..."
    )
    assert preview.code == 0, preview
    assert f"relay: would discard 1 dead row: {dead}" in preview.stdout
    assert discarded.code == 0, discarded
    assert discarded.stdout.splitlines()[:2] == [
        f"relay: discarded 1 dead row: {dead}",
        "relay: the rows behind them in their ordering keys go now",
    ]
    assert order == {"case-7": behind}
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE id = $1", dead) == 0
    entry = await db.fetchrow("SELECT * FROM relay_admin_log WHERE action = 'discard'")
    assert entry is not None
    assert orjson.loads(entry["parameters"])["reason"] == "sent by hand"
    assert (entry["row_ids"], entry["rows_affected"], entry["outcome"]) == ([dead], 1, "done")


async def test_discard_refuses_what_it_would_not_do(
    db: asyncpg.Connection, database_url: str
) -> None:
    (published,) = await insert_rows(db, 1)
    await db.execute("UPDATE outbox SET status = 'published' WHERE id = $1", published)
    no_reason = await operate(database_url, "dead", "discard", str(published))
    no_rows = await operate(database_url, "dead", "discard", "--reason", "x")
    empty = await operate(database_url, "dead", "discard", "1", "--reason", " ")
    not_dead = await operate(database_url, "dead", "discard", str(published), "--reason", "x")
    no_reason.one_line(2, "Missing option '--reason'")
    no_rows.one_line(2, "name the dead rows to discard")
    empty.one_line(2, "--reason: say why")
    assert not_dead.code == 3, not_dead
    assert f"relay: not dead (left alone): {published}" in not_dead.stdout
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1
