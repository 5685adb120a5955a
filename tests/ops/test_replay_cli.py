"""``relay replay`` as an operator runs it: a process, with or without a terminal."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg
import orjson

from tests.helpers.commands import OPERATOR, admin_env, operate
from tests.helpers.engine import status_counts
from tests.helpers.rows import add_dead, add_row

RELAY = str(Path(sys.executable).with_name("relay"))


async def published_rows(db: asyncpg.Connection, count: int, *, hours_ago: float) -> list[int]:
    """``count`` published rows (no key), published ``hours_ago``."""
    rows = await db.fetch(
        """
        INSERT INTO outbox (event_type, payload, status, attempts, created_at, published_at,
                            event_api_id)
        SELECT 'case_created', jsonb_build_object('eventType', 'case_created', 'n', n),
               'published', 1, now() - make_interval(hours => $2 * 2),
               now() - make_interval(hours => $2), 'api-' || n
        FROM generate_series(1, $1::int) AS n
        RETURNING id""",
        count,
        hours_ago,
    )
    return [row["id"] for row in rows]


async def test_dry_run_lists_what_would_go_and_replay_sends_it_again(
    db: asyncpg.Connection, database_url: str
) -> None:
    old = await published_rows(db, 2, hours_ago=30)
    recent = await published_rows(db, 3, hours_ago=1)
    dead = await add_dead(db)
    # A keyed row published, with a newer row of its key still waiting: held back.
    keyed = await add_row(db, status="published", ordering_key="case-5", age=timedelta(hours=2))
    await add_row(db, ordering_key="case-5", available_in=timedelta(hours=1))

    listed, listed_json = await asyncio.gather(
        operate(database_url, "replay", "--since", "1d", "--dry-run"),
        operate(database_url, "replay", "--since", "1d", "--event-type", "case_created",
              "--dry-run", "--json"),
    )  # fmt: skip
    assert listed.code == 3, listed.stderr  # the keyed row is held back
    lines = listed.stdout.splitlines()
    assert lines[0] == "relay: would replay 3 published rows"
    assert [int(line.split()[0]) for line in lines[1:4]] == recent
    assert all("published " in line and "case_created" in line for line in lines[1:4])
    assert "relay: held back 1 row, whose ordering key has newer rows" in listed.stdout
    preview = listed_json.json()
    assert (preview["would_replay"], preview["ids"], preview["dry_run"]) == (3, recent, True)
    assert await db.fetchval("SELECT count(*) FROM relay_admin_log") == 0
    assert await status_counts(db) == {"published": 6, "dead": 1, "pending": 1}

    replayed = await operate(
        database_url, "replay", *map(str, [old[0], recent[0], dead]), "--operator", "bob"
    )
    assert replayed.code == 3, replayed.stderr  # the dead row named was left alone
    assert f"relay: replayed 2 published rows: {old[0]}, {recent[0]}" in replayed.stdout
    assert f"relay: not published (left alone): {dead}" in replayed.stdout
    assert "operator bob" in replayed.stdout
    [line] = [line for line in replayed.log() if line["event"] == "admin.replayed"]
    assert (line["ids"], line["operator"]) == ([old[0], recent[0]], "bob")
    rows = await db.fetch(
        "SELECT id, status, attempts, event_api_id FROM outbox WHERE id = ANY($1::bigint[]) "
        "ORDER BY id",
        [old[0], recent[0]],
    )
    assert [tuple(row) for row in rows] == [
        (old[0], "pending", 0, "api-1"),
        (recent[0], "pending", 0, "api-1"),
    ]
    audit = (await operate(database_url, "audit", "--json")).json()
    assert [(e["action"], e["operator"], e["outcome"]) for e in audit] == [
        ("replay", "bob", "partial")
    ]
    assert audit[0]["detail"] == {"not_published": [dead]}
    assert keyed not in audit[0]["row_ids"]


async def test_more_than_100_rows_need_yes_off_a_terminal(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await published_rows(db, 101, hours_ago=1)
    refused = await operate(database_url, "replay", "--since", "2h")
    assert refused.code == 2
    assert "this would replay 101 published rows, more than 100" in refused.stderr
    assert "--dry-run" in refused.stderr
    assert "--yes" in refused.stderr
    assert await status_counts(db) == {"published": 101}

    few = await operate(database_url, "replay", *map(str, ids[:100]), "--json")
    assert few.json()["replayed"] == 100  # 100 need no confirmation
    confirmed = await operate(database_url, "replay", str(ids[100]), "--since", "2h", "--yes")
    assert confirmed.code == 0, confirmed.stderr
    assert await status_counts(db) == {"pending": 101}
    entries = await db.fetch("SELECT operator, rows_affected FROM relay_admin_log ORDER BY id")
    assert [tuple(entry) for entry in entries] == [(OPERATOR, 100), (OPERATOR, 1)]


def replay_at_a_terminal(database_url: str, answer: bytes) -> tuple[int, str, str]:
    """``relay replay --since 2h`` with a terminal on standard input, answering ``answer``."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [RELAY, "replay", "--since", "2h"],
            env=admin_env(database_url),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(terminal)
        os.write(controller, answer)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        os.close(controller)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_more_than_100_rows_are_confirmed_at_a_terminal(
    db: asyncpg.Connection, database_url: str
) -> None:
    await published_rows(db, 150, hours_ago=1)
    code, _, stderr = await asyncio.to_thread(replay_at_a_terminal, database_url, b"n\n")
    assert code == 2, stderr
    assert "replay 150 published rows? Consumers that deduplicate on correlationId" in stderr
    assert "not confirmed: nothing was replayed" in stderr
    assert await status_counts(db) == {"published": 150}

    code, stdout, stderr = await asyncio.to_thread(replay_at_a_terminal, database_url, b"y\n")
    assert code == 0, stderr
    assert "relay: replayed 150 published rows" in stdout
    assert await status_counts(db) == {"pending": 150}
    entry = await db.fetchrow("SELECT parameters::text AS p, rows_affected FROM relay_admin_log")
    assert entry is not None
    assert entry["rows_affected"] == 150
    assert orjson.loads(entry["p"])["since"].endswith("Z")


async def test_replay_without_a_selection_is_refused(database_url: str) -> None:
    run = await operate(database_url, "replay", "--yes")
    assert run.code == 2
    assert "name the published rows to replay" in run.stderr
