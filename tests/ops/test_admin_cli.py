"""``relay status``, ``relay dead``, ``relay requeue``, ``relay pause``, ``relay purge`` and
``relay audit`` as real processes."""

from __future__ import annotations

import asyncio
import os
import pwd
import uuid
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from relay.schema import RUNTIME_GRANTS
from tests.helpers.commands import OPERATOR, admin_env, operate
from tests.helpers.engine import (
    engine_settings,
    eventually,
    insert_rows,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running
from tests.helpers.rows import Attempt, add_dead, add_row


async def test_status_and_dead_commands(db: asyncpg.Connection, database_url: str) -> None:
    await add_row(
        db,
        status="published",
        age=timedelta(hours=1),
        deliveries=[Attempt("created", 201, timedelta(minutes=30), "seeded")],
    )
    await add_row(db, age=timedelta(minutes=3))
    await add_row(
        db,
        attempts=2,
        available_in=timedelta(minutes=2),
        deliveries=[Attempt("http_503", 503, timedelta(seconds=10))],
    )
    refused = await add_dead(db, event_type="case_created", died_ago=timedelta(hours=2))
    invalid = await add_dead(db, outcome="invalid_event", http_status=None)
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
        "('dk/abcinsurance', now() + interval '1 minute', 'configuration', 'http_403', 'vm:7')"
    )

    status_text, status_json, listed, shown, shown_json, newest = await asyncio.gather(
        operate(database_url, "status"),
        operate(database_url, "status", "--json"),
        operate(database_url, "dead", "list", "--since", "3h", "--json"),
        operate(database_url, "dead", "show", str(refused)),
        operate(database_url, "dead", "show", str(invalid), "--json"),
        operate(database_url, "dead", "list", "--limit", "1"),
    )

    assert status_text.code == 0, status_text.stderr
    assert "dead by last error:" in status_text.stdout
    assert "dk/abcinsurance  configuration" in status_text.stdout
    report = status_json.json()
    assert report["counts"] == {
        "pending": 2,
        "in_flight": 0,
        "published": 1,
        "dead": 2,
        "blocked": 0,
    }
    assert report["retrying"] == 1
    assert report["next_retry_at"].endswith("Z")
    assert 170 < report["oldest_unfinished_age"] < 240
    assert report["dead_by_event_type"] == {"case_created": 1, "payment_status_updated": 1}
    assert report["dead_by_error_class"] == {"http_400": 1, "invalid_event": 1}
    assert report["last_published_at"] is not None
    assert [pause["kind"] for pause in report["pauses"]] == ["configuration"]

    assert [row["id"] for row in listed.json()] == [refused, invalid]
    # Every list: the newest --limit items, oldest first; a line on stderr tells of the rest.
    assert [line.split()[0] for line in newest.stdout.splitlines()] == [str(invalid)]
    assert "relay: showing the newest 1 dead row, oldest first" in newest.stderr
    assert "showing" not in listed.stderr
    assert '"payload"' not in listed.stdout
    assert '"uuid"' not in listed.stdout  # nothing of the payload

    assert shown.code == 0, shown.stderr
    for expected in (
        f"outbox row {refused}: dead",
        "attempts:       1",
        "HTTP status:    400",
        "last error:     HTTP 400: refused",
        '"eventType": "case_created"',
        "delivery log (1 attempt):",
    ):
        assert expected in shown.stdout
    detail = shown_json.json()
    assert (detail["status"], detail["error_class"]) == ("dead", "invalid_event")
    assert detail["payload"]["eventType"] == "payment_status_updated"
    assert [item["outcome"] for item in detail["deliveries"]] == ["invalid_event"]
    # Payloads go to stdout only, never to the log.
    for run in (status_text, listed, shown, shown_json):
        assert '"uuid"' not in run.stderr


async def test_requeue_command(db: asyncpg.Connection, database_url: str) -> None:
    first = await add_dead(db)
    second = await add_dead(db, event_type="case_created")
    third = await add_dead(db, event_type="case_created")
    unselected, dry = await asyncio.gather(
        operate(database_url, "requeue"),
        operate(database_url, "requeue", "--all-dead", "--dry-run", "--json"),
    )
    assert unselected.code == 2
    assert "--all-dead" in unselected.stderr
    assert dry.json()["would_requeue"] == 3
    assert await status_counts(db) == {"dead": 3}  # a dry run changes nothing
    assert not [line for line in dry.log() if line["event"] == "admin.requeued"]

    by_ids, by_type = await asyncio.gather(
        operate(database_url, "requeue", str(first), "99999"),
        operate(database_url, "requeue", "--event-type", "case_created", "--since", "1h", "--json"),
    )
    assert by_ids.code == 3, by_ids.stderr  # finished, but 99999 was left alone
    assert f"relay: requeued 1 dead row: {first}" in by_ids.stdout
    assert "not dead (left alone): 99999" in by_ids.stdout
    result = by_type.json()
    assert (result["requeued"], result["ids"]) == (2, [second, third])
    assert result["selector"]["event_type"] == "case_created"
    [audit] = [line for line in by_type.log() if line["event"] == "admin.requeued"]
    assert (audit["count"], audit["ids"], audit["operator"]) == (2, [second, third], OPERATOR)
    assert audit["selector"]["since"].endswith("Z")
    rows = await db.fetch("SELECT status, attempts FROM outbox ORDER BY id")
    assert [(row["status"], row["attempts"]) for row in rows] == [("pending", 0)] * 3


async def test_requeued_dead_rows_are_published_by_a_running_relay(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(status=503)
        settings = engine_settings(
            database_url, emulator, max_attempts=2, max_age=0, circuit_threshold=1000
        )
        async with running_daemon(settings):
            ids = await insert_rows(db, 3)

            async def all_dead() -> bool:
                return await status_counts(db) == {"dead": 3}

            await eventually(all_dead)
            emulator.clear_faults()
            shown = await operate(database_url, "dead", "show", str(ids[0]))
            requeued = await operate(database_url, "requeue", "--all-dead")

            async def all_published() -> bool:
                return await status_counts(db) == {"published": 3}

            await eventually(all_published)
    assert shown.code == 0, shown.stderr
    assert "attempts:       2" in shown.stdout
    assert "delivery log (2 attempts):" in shown.stdout
    assert shown.stdout.count("HTTP 503") >= 2
    assert requeued.code == 0, requeued.stderr
    assert "relay: requeued 3 dead rows" in requeued.stdout
    assert len(emulator.events) == 3
    attempts = await db.fetch("SELECT attempts FROM outbox ORDER BY id")
    assert [row["attempts"] for row in attempts] == [1, 1, 1]  # counted afresh
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery") == 9


async def test_purge_command(db: asyncpg.Connection, database_url: str) -> None:
    for days in (45, 40, 35):
        await add_row(
            db,
            status="published",
            age=timedelta(days=days * 2),  # published `days` ago
            deliveries=[Attempt("created", 201, timedelta(days=days), "seeded")],
        )
    young = await add_row(db, status="published", age=timedelta(days=2))
    dead = await add_dead(db, died_ago=timedelta(days=90))
    purged, unreadable, future = await asyncio.gather(
        operate(database_url, "purge", "--older-than", "30d", "--batch-size", "2", "--json"),
        operate(database_url, "purge", "--older-than", "last tuesday"),
        operate(database_url, "purge", "--older-than", "2999-01-01T00:00:00Z"),
    )
    result = purged.json()
    assert (result["rows"], result["batches"]) == (3, 2)
    [audit] = [line for line in purged.log() if line["event"] == "admin.purged"]
    assert (audit["rows"], audit["operator"]) == (3, OPERATOR)
    assert unreadable.code == 2
    assert "neither a duration" in unreadable.stderr
    assert future.code == 2
    assert "in the future" in future.stderr
    left = await db.fetch("SELECT id FROM outbox ORDER BY id")
    assert [row["id"] for row in left] == [young, dead]


async def test_purge_dry_run_counts_and_changes_nothing(
    db: asyncpg.Connection, database_url: str
) -> None:
    for days in (45, 40):
        await add_row(
            db,
            status="published",
            age=timedelta(days=days * 2),  # published `days` ago
            deliveries=[
                Attempt("http_503", 503, timedelta(days=days, hours=1)),
                Attempt("created", 201, timedelta(days=days), "seeded"),
            ],
        )
    await add_row(db, status="published", age=timedelta(days=2))
    await add_dead(db, died_ago=timedelta(days=90))
    before = await db.fetch("SELECT * FROM outbox ORDER BY id")

    counted, text = await asyncio.gather(
        operate(database_url, "purge", "--older-than", "30d", "--dry-run", "--json"),
        operate(database_url, "purge", "--older-than", "30d", "--dry-run"),
    )
    preview = counted.json()
    assert (preview["rows"], preview["deliveries"], preview["dry_run"]) == (2, 4, True)
    assert preview["oldest"] < preview["newest"] < preview["cutoff"]
    assert text.code == 0, text.stderr
    assert text.stdout.startswith("relay: would purge 2 published rows (published before ")
    assert "and their 4 delivery-log entries" in text.stdout
    assert await db.fetch("SELECT * FROM outbox ORDER BY id") == before
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery") == 5
    assert await db.fetchval("SELECT count(*) FROM relay_admin_log") == 0
    assert not [line for line in counted.log() if line["event"] == "admin.purged"]


async def test_commands_on_a_database_without_the_schema(empty_database_url: str) -> None:
    run = await operate(empty_database_url, "status")
    assert run.code == 5
    assert "run 'relay migrate'" in run.stderr
    assert "Traceback" not in run.stderr


async def test_pause_list_and_clear(db: asyncpg.Connection, database_url: str) -> None:
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
        "('dk/abcinsurance', now() + interval '10 minutes', 'configuration', 'http_404: x', 'h:1'),"
        "('*', now() - interval '1 second', 'circuit', 'http_503: y', 'h:2')"
    )
    await db.execute(
        "INSERT INTO outbox (event_type, payload, tenant, country, status, blocked_by) VALUES "
        "('e', '{}', 'abcinsurance', 'dk', 'blocked', 'route_pause')"
    )
    listed = (await operate(database_url, "pause", "list", "--json")).json()
    assert [(p["route"], p["kind"]) for p in listed] == [
        ("dk/abcinsurance", "configuration"),
        ("*", "circuit"),
    ]
    text = (await operate(database_url, "pause", "list")).stdout
    assert "dk/abcinsurance  configuration  9m" in text
    assert "every route  circuit  ran out, waiting for a probe" in text

    refused = await operate(database_url, "pause", "clear")
    assert refused.code == 2
    assert "name the routes" in refused.stderr

    cleared = await operate(database_url, "pause", "clear", "dk/abcinsurance")
    assert cleared.code == 0, cleared.stderr
    assert "lifted:" in cleared.stdout
    audit = [line for line in cleared.log() if line["event"] == "admin.pauses_cleared"]
    assert audit[0]["routes"] == ["dk/abcinsurance"]
    assert audit[0]["operator"] == OPERATOR
    assert await db.fetchval("SELECT status FROM outbox") == "pending"
    assert [
        p["route"] for p in (await operate(database_url, "pause", "list", "--json")).json()
    ] == ["*"]
    assert (await operate(database_url, "pause", "clear", "--all")).code == 0
    assert await db.fetchval("SELECT count(*) FROM relay_pause") == 0


# The audit log ---------------------------------------------------------------------------------


async def test_changes_are_recorded_under_the_operators_name(
    db: asyncpg.Connection, database_url: str
) -> None:
    dead = await add_dead(db)
    await add_row(db, status="published", age=timedelta(days=90))
    await db.execute(
        "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
        "('*', now() + interval '1 hour', 'circuit', 'http_503', 'h:1')"
    )
    # As under kubectl exec: no $USER, no $LOGNAME; the process's OS user is all there is.
    bare = {k: v for k, v in admin_env(database_url).items() if k not in ("USER", "LOGNAME")}
    requeued = await operate(database_url, "requeue", str(dead), "--operator", "alice")
    purged = await operate(database_url, "purge", "--older-than", "30d", "--json")
    cleared = await operate(database_url, "pause", "clear", "--all", env=bare)
    nameless = await operate(database_url, "requeue", "--all-dead", "--operator", " ")

    assert requeued.code == 0, requeued.stderr
    assert "recorded as audit log entry 1, operator alice" in requeued.stdout
    assert (purged.json()["audit_id"], purged.json()["operator"]) == (2, OPERATOR)
    assert cleared.code == 0, cleared.stderr
    assert nameless.code == 2
    assert "--operator: give your name" in nameless.stderr
    [line] = [line for line in requeued.log() if line["event"] == "admin.requeued"]
    assert (line["operator"], line["audit_id"]) == ("alice", 1)  # the log line stays

    listed = await operate(database_url, "audit", "--json")
    entries = listed.json()
    assert [(e["id"], e["action"], e["operator"]) for e in entries] == [
        (1, "requeue", "alice"),
        (2, "purge", OPERATOR),
        (3, "pause_clear", pwd.getpwuid(os.getuid()).pw_name),
    ]
    assert entries[0]["row_ids"] == [dead]
    assert entries[0]["parameters"] == {"ids": [dead]}
    assert entries[1]["rows_affected"] == 1
    assert entries[2]["detail"] == {"lifted": ["*"], "not_paused": [], "released": 0}
    assert entries[0]["at"].endswith("Z")
    text = await operate(database_url, "audit", "--since", "1h", "--limit", "2")
    assert text.code == 0, text.stderr
    assert " purge  1 row  done" in text.stdout
    assert "requeue" not in text.stdout  # the oldest of three, past the limit


def role_url(database_url: str, role: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(
        parts._replace(netloc=f"{role}:{ROLE_PASSWORD}@{parts.hostname}:{parts.port}")
    )


ROLE_PASSWORD = "an-operator-password"
# What the audit log asks of the role that runs the operator commands (the runtime role of
# docs/database.md), besides the runtime grants.
AUDIT_GRANTS = "GRANT SELECT, INSERT, UPDATE ON relay_admin_log TO {role}"


async def test_the_audit_grants_are_enough_and_the_log_cannot_be_skipped(
    db: asyncpg.Connection, database_url: str
) -> None:
    """A role with the runtime grants and the audit log's can run every operator command; one
    that may read the log but not write it can change nothing."""
    suffix = uuid.uuid4().hex[:8]
    granted, ungranted = f"relay_ops_{suffix}", f"relay_ops_no_log_{suffix}"
    admin = await asyncpg.connect(database_url)
    try:
        for role in (granted, ungranted):
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{ROLE_PASSWORD}'")
            for grant in RUNTIME_GRANTS:
                if "relay_admin_log" not in grant.names:
                    await admin.execute(grant.sql("public", role))
        await admin.execute(AUDIT_GRANTS.format(role=granted))
        await admin.execute(f"GRANT SELECT ON relay_admin_log TO {ungranted}")

        dead = await add_dead(db)
        await add_row(db, status="published", age=timedelta(days=90))
        await add_row(db, status="published", age=timedelta(hours=2), ordering_key="k")
        await db.execute(
            "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
            "('*', now() + interval '1 hour', 'circuit', 'http_503', 'h:1')"
        )
        refused = await operate(role_url(database_url, ungranted), "requeue", str(dead))
        assert refused.code == 4, refused
        # Named at start, before anything is touched: the audit log is in the runtime grants.
        assert refused.stderr == (
            f"relay: the role '{ungranted}' lacks INSERT, UPDATE on table "
            "public.relay_admin_log: it needs the runtime grants in docs/database.md\n"
        ), refused.stderr
        assert await status_counts(db) == {"dead": 1, "published": 2}  # nothing changed

        url = role_url(database_url, granted)
        for args in (
            ("status",),
            ("dead", "show", str(dead)),
            ("requeue", str(dead)),
            ("replay", "--since", "1d"),
            ("purge", "--older-than", "30d", "--batch-size", "1"),
            ("pause", "clear", "*"),
            ("audit",),
        ):
            run = await operate(url, *args)
            assert run.code == 0, (args, run)
        assert await db.fetchval("SELECT count(*) FROM relay_admin_log") == 4
        assert await status_counts(db) == {"pending": 2}
    finally:
        for role in (granted, ungranted):
            await admin.execute(f"DROP OWNED BY {role}")
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
