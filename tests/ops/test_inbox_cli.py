"""``relay inbox status|list|show|retry|rewind|purge`` as real processes: their output, their
exit codes (relay.errors.ExitCode, the table of docs/cli.md) and the audit log they write."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from relay.errors import ExitCode
from relay.schema import RUNTIME_GRANTS
from tests.helpers.commands import OPERATOR, Run, admin_env, minimal_environment, operate, relay
from tests.ops.inbox_rows import add_checkpoint, add_event, add_malformed, statuses

OK, USAGE, ATTENTION = ExitCode.OK, ExitCode.USAGE, ExitCode.ATTENTION
DATABASE, SCHEMA = ExitCode.DATABASE, ExitCode.SCHEMA
FUTURE = "2999-01-01T00:00:00Z"


async def seed(db: asyncpg.Connection) -> dict[str, int]:
    """A route received up to _3: one event processed long ago, one failed, one pending, and
    an item that was not an event."""
    await add_checkpoint(db, last_event_id="_3")
    return {
        "processed": await add_event(
            db, event_id="_1", status="processed", received_ago=timedelta(days=40)
        ),
        "failed": await add_event(
            db, event_id="_2", status="failed", attempts=5, last_error="KeyError: 'case'"
        ),
        "pending": await add_event(db, event_id="_3"),
        "malformed": await add_malformed(db),
    }


def code(run: Run, expected: ExitCode, *fragments: str) -> None:
    """``run`` exited ``expected``; a failure said why in one line, with no traceback."""
    if expected in (OK, ATTENTION):
        assert run.code == expected, run
        for fragment in fragments:
            assert fragment in run.stdout, run
        return
    run.one_line(expected, *fragments)


async def test_the_reports(db: asyncpg.Connection, database_url: str) -> None:
    ids = await seed(db)
    env = {**admin_env(database_url), "RELAY_RECEIVE_ROUTES": "dk/abcinsurance,dk/budget"}
    failed, malformed = str(ids["failed"]), str(ids["malformed"])
    runs = await asyncio.gather(
        relay(env, "inbox", "status"),
        relay(env, "inbox", "status", "--json"),
        operate(database_url, "inbox", "list", "--json"),
        operate(database_url, "inbox", "list", "--status", "failed", "--route", "dk/abcinsurance"),
        operate(database_url, "inbox", "show", failed),
        operate(database_url, "inbox", "show", failed, "--json"),
        operate(database_url, "inbox", "show", malformed),
    )
    status, status_json, listed, failed_list, shown, shown_json, raw = runs

    code(status, OK, "dk/abcinsurance  NOT polled by any relay now", "1 pending", "dk/budget")
    report = status_json.json()
    assert [route["route"] for route in report["routes"]] == ["dk/abcinsurance", "dk/budget"]
    first = report["routes"][0]
    assert (first["pending"], first["processed"], first["failed"], first["malformed"]) == (
        1,
        1,
        2,
        1,
    )
    assert (first["last_event_id"], first["polled"], first["configured"]) == ("_3", False, True)

    events = listed.json()
    assert [event["event_id"] for event in events][:-1] == ["_1", "_2", "_3"]  # oldest first
    assert all("payload" not in event for event in events)
    code(failed_list, OK, "_2  case_created  failed  attempts 5  KeyError: 'case'")
    assert "_3" not in failed_list.stdout

    code(shown, OK, "inbox event", ": failed", '"amount": 12345678901234567.89')
    document = json.loads(shown_json.stdout, parse_float=Decimal)
    assert document["payload"]["case"]["amount"] == Decimal("12345678901234567.89")
    code(raw, OK, "raw item (not an event; kept as received):", "  42")
    for run in runs:
        assert "12345678901234567" not in run.stderr  # a payload never reaches a log


async def test_the_changes_and_their_audit_log(db: asyncpg.Connection, database_url: str) -> None:
    ids = await seed(db)

    preview = await operate(database_url, "inbox", "retry", "--all-failed", "--dry-run", "--json")
    assert preview.code == ATTENTION, preview  # the item that is not an event is named
    assert json.loads(preview.stdout)["would_retry"] == 1
    assert (await statuses(db))[ids["failed"]] == ("failed", 5)

    retried = await operate(database_url, "inbox", "retry", "--all-failed")
    code(
        retried,
        ATTENTION,
        f"relay: retried 1 failed event: {ids['failed']}",
        f"left failed 1 item that is not an event (no payload to process; see relay inbox show "
        f"ID): {ids['malformed']}",
        "recorded as audit log entry",
    )
    assert (await statuses(db))[ids["failed"]] == ("pending", 0)
    assert (await statuses(db))[ids["malformed"]] == ("failed", 0)
    code(
        await operate(database_url, "inbox", "retry", str(ids["pending"])),
        ATTENTION,
        f"not failed (left alone): {ids['pending']}",
    )

    rewound = await operate(database_url, "inbox", "rewind", "dk/abcinsurance", "--to", "_1")
    code(rewound, OK, "rewound dk/abcinsurance", "after _1 (was after _3)", "3 events")
    unknown = await operate(
        database_url, "inbox", "rewind", "dk/abcinsurance", "--to", "_9", "--json"
    )
    assert unknown.code == ATTENTION, unknown
    assert json.loads(unknown.stdout)["known"] is False

    would = await operate(database_url, "inbox", "purge", "--older-than", "30d", "--dry-run")
    code(would, OK, "would purge 1 processed event")
    purged = await operate(database_url, "inbox", "purge", "--older-than", "30d", "--json")
    assert purged.json()["rows"] == 1
    assert ids["processed"] not in await statuses(db)

    entries = (await operate(database_url, "audit", "--json")).json()
    assert [(entry["action"], entry["operator"], entry["outcome"]) for entry in entries] == [
        ("inbox_retry", OPERATOR, "partial"),
        ("inbox_retry", OPERATOR, "partial"),
        ("inbox_rewind", OPERATOR, "done"),
        ("inbox_rewind", OPERATOR, "done"),
        ("inbox_purge", OPERATOR, "done"),
    ]
    assert entries[3]["detail"]["before"]["last_event_id"] == "_1"
    assert entries[3]["detail"]["after"]["last_event_id"] == "_9"
    assert entries[0]["row_ids"] == [ids["failed"]]
    assert entries[0]["detail"] == {"malformed": [ids["malformed"]]}
    text = await operate(database_url, "audit", "--limit", "1")
    assert " inbox_purge  1 row  done" in text.stdout


# Exit codes ------------------------------------------------------------------------------------

ID = "{id}"  # replaced by the seeded failed event's id


def refusal(expected: ExitCode, says: str, *args: str) -> tuple[ExitCode, str, tuple[str, ...]]:
    return expected, says, args


REFUSALS = [
    refusal(USAGE, "No such option '--colour'", "status", "--colour"),
    refusal(USAGE, "Invalid value for '--status'", "list", "--status", "dead"),
    refusal(USAGE, "Invalid value for '--route': 'DK/x': country 'DK'", "list", "--route", "DK/x"),
    refusal(USAGE, "Invalid value for '--limit'", "list", "--limit", "0"),
    refusal(USAGE, "neither a duration", "list", "--since", "yesterday"),
    refusal(USAGE, "the inbox holds no event 424242", "show", "424242"),
    refusal(USAGE, "name the failed events to retry", "retry"),
    refusal(USAGE, "--all-failed takes every failed event", "retry", "--all-failed", ID),
    refusal(USAGE, "--operator: give your name", "retry", ID, "--operator", ""),
    refusal(USAGE, "no receive checkpoint for dk/budget", "rewind", "dk/budget", "--to", "_1"),
    refusal(USAGE, "expected COUNTRY/TENANT", "rewind", "abcinsurance", "--to", "_1"),
    refusal(USAGE, "Missing option '--to'", "rewind", "dk/abcinsurance"),
    refusal(USAGE, "an event id is 1-200 characters", "rewind", "dk/abcinsurance", "--to", ""),
    refusal(USAGE, "is in the future", "purge", "--older-than", FUTURE),
    refusal(USAGE, "Missing option '--older-than'", "purge"),
]


async def test_what_each_command_refuses_exits_2_in_one_line(
    db: asyncpg.Connection, database_url: str
) -> None:
    ids = await seed(db)
    before = await statuses(db)
    limit = asyncio.Semaphore(4)  # each process spends a second importing, on a shared machine

    async def refuse(args: tuple[str, ...]) -> Run:
        async with limit:
            return await operate(
                database_url, "inbox", *(a.replace(ID, str(ids["failed"])) for a in args)
            )

    runs = await asyncio.gather(*(refuse(args) for _, _, args in REFUSALS))
    for (expected, says, args), run in zip(REFUSALS, runs, strict=True):
        assert run.code == expected, (args, run)
        assert says in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr
        if not run.stderr.startswith("Usage:"):  # click's own usage errors take three lines
            run.one_line(expected, says)
    assert await statuses(db) == before
    assert await db.fetchval("SELECT count(*) FROM relay_admin_log") == 0


COMMANDS = [
    ("status",),
    ("list",),
    ("show", "1"),
    ("retry", "--all-failed"),
    ("rewind", "dk/abcinsurance", "--to", "_1"),
    ("purge", "--older-than", "30d"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
async def test_without_a_usable_database_each_command_says_so(
    args: tuple[str, ...], empty_database_url: str
) -> None:
    unreachable = "postgresql://relay:pw-that-must-not-show@127.0.0.1:9/insurer"
    places = {
        "malformed": (USAGE, "RELAY_DATABASE_URL: must be a postgresql:// URL", "mysql://db/x"),
        "unreachable": (DATABASE, "RELAY_DATABASE_URL: cannot use the database at", unreachable),
        "bare": (SCHEMA, "run 'relay migrate'", empty_database_url),
    }
    runs = await asyncio.gather(
        *(
            relay(minimal_environment(RELAY_DATABASE_URL=url, USER="ops"), "inbox", *args)
            for _, _, url in places.values()
        )
    )
    for (expected, says, _), run in zip(places.values(), runs, strict=True):
        line = run.one_line(expected, says)
        assert "pw-that-must-not-show" not in line


def role_url(database_url: str, role: str, password: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.hostname}:{parts.port}"))


async def test_the_runtime_grants_are_enough_and_the_audit_log_cannot_be_skipped(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The runtime role of docs/database.md runs every inbox command; one that may not write
    the audit log changes nothing (exit 4)."""
    ids = await seed(db)
    suffix, password = uuid.uuid4().hex[:8], "an-operator-password"
    granted, ungranted = f"relay_inbox_ops_{suffix}", f"relay_inbox_nolog_{suffix}"
    for role in (granted, ungranted):
        await db.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        for grant in RUNTIME_GRANTS:
            if "relay_admin_log" not in grant.names or role == granted:
                await db.execute(grant.sql("public", role))
    await db.execute(f"GRANT SELECT ON relay_admin_log TO {ungranted}")
    try:
        refused = await operate(
            role_url(database_url, ungranted, password), "inbox", "retry", "--all-failed"
        )
        refused.one_line(DATABASE, f"the role '{ungranted}' lacks INSERT, UPDATE on table")
        assert (await statuses(db))[ids["failed"]] == ("failed", 5)

        url = role_url(database_url, granted, password)
        for args in (
            ("status",),
            ("list",),
            ("show", str(ids["failed"])),
            ("retry", str(ids["failed"])),
            ("rewind", "dk/abcinsurance", "--to", "_1"),
            ("purge", "--older-than", "30d"),
        ):
            run = await operate(url, "inbox", *args)
            assert run.code == OK, (args, run)
        assert await db.fetchval("SELECT count(*) FROM relay_admin_log") == 3
    finally:
        for role in (granted, ungranted):
            await db.execute(f"DROP OWNED BY {role}")
            await db.execute(f"DROP ROLE {role}")
