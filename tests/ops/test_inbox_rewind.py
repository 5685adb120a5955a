"""``relay inbox rewind`` and ``relay inbox status`` against a running relay receiving from the
emulator over real sockets: the receiver in the middle of a long poll moves to the rewound
checkpoint, fills the gap, and stores nothing twice."""

from __future__ import annotations

from typing import Any

import asyncpg

from relay.config import Settings
from relay.daemon import Daemon
from relay.emulator import Emulator
from tests.helpers.commands import operate
from tests.helpers.engine import engine_settings, eventually, running_daemon
from tests.helpers.partner import running

ROUTE = ("dk", "abcinsurance")
RECEIVE = "/api/events/v1/dk/external/abcinsurance/receive"


def receive_settings(database_url: str, emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "receive_routes": "dk/abcinsurance",
        "receive_timeout": 60,
        "configuration_pause": 0.5,
    }
    values.update(overrides)
    return engine_settings(database_url, emulator, **values)


async def inbox_ids(db: asyncpg.Connection) -> dict[str, int]:
    """event_id -> the inbox row's id; each event at most once."""
    rows = await db.fetch("SELECT id, event_id FROM inbox ORDER BY id")
    found = {row["event_id"]: row["id"] for row in rows}
    assert len(found) == len(rows), "an event stored twice"
    return found


async def last_event(db: asyncpg.Connection) -> str | None:
    last: str | None = await db.fetchval("SELECT last_event_id FROM inbox_checkpoint")
    return last


def holding(emulator: Emulator) -> bool:
    return bool(emulator.stream(*ROUTE).stats()["concurrent_polls"] == 1)


async def test_a_rewind_reaches_a_receiver_mid_poll_and_fills_the_gap_without_duplicates(
    db: asyncpg.Connection, database_url: str
) -> None:
    names = [f"_{n}" for n in range(1, 31)]
    async with running() as emulator:
        # Polls are held until events arrive: the receiver is mid-poll when the rewind comes.
        emulator.set_faults(receive_hold_seconds=30)
        emulator.generate(*ROUTE, 30)
        async with running_daemon(receive_settings(database_url, emulator)):

            async def caught_up() -> bool:
                return await last_event(db) == "_30" and holding(emulator)

            await eventually(caught_up, within=30)
            # Consumers processed the first ten; ten after them went missing (deleted by
            # hand, say): a gap to fill.
            await db.execute(
                "UPDATE inbox SET status = 'processed', processed_at = now() "
                "WHERE event_id = ANY($1::text[])",
                names[:10],
            )
            await db.execute("DELETE FROM inbox WHERE event_id = ANY($1::text[])", names[10:20])
            before = await inbox_ids(db)

            status = (await operate(database_url, "inbox", "status", "--json")).json()
            [route] = status["routes"]
            assert (route["polled"], route["last_event_id"], route["pending"]) == (True, "_30", 10)
            assert route["answered_age"] < 30

            polls_before = len(emulator.polls)
            rewound = await operate(
                database_url, "inbox", "rewind", "dk/abcinsurance", "--to", "_10", "--json"
            )
            assert rewound.code == 0, rewound
            result = rewound.json()
            assert (result["known"], result["stored_after"]) == (True, 10)
            assert result["before"]["next_path"] == f"{RECEIVE}?lastEventId=_30"
            assert result["after"]["next_path"] == f"{RECEIVE}?lastEventId=_10"

            # The held poll, asked from _30, is answered by a new event.
            emulator.generate(*ROUTE, 1)

            async def filled() -> bool:
                return await last_event(db) == "_31" and len(await inbox_ids(db)) == 31

            await eventually(filled, within=30)
        after = await inbox_ids(db)
        polls = [(poll.last_event_id, poll.events) for poll in emulator.polls[polls_before:]]

    # The page from _30 was not stored (the checkpoint had moved under it): the receiver
    # asked again from _10 at once, and stored what was missing, _31 with it.
    assert polls[:2] == [("_30", 1), ("_10", 21)], polls
    assert list(after) == [*names[:10], *names[20:30], *names[10:20], "_31"]
    # Events the inbox held were fetched again and left as they were.
    assert {name: after[name] for name in before} == before
    processed = await db.fetchval(
        "SELECT count(*) FROM inbox WHERE status = 'processed' AND event_id = ANY($1::text[])",
        names[:10],
    )
    assert processed == 10
    refilled = await db.fetch(
        "SELECT status, attempts FROM inbox WHERE event_id = ANY($1::text[])", names[10:20]
    )
    assert {tuple(row) for row in refilled} == {("pending", 0)}
    entry = await db.fetchrow("SELECT action, detail::text FROM relay_admin_log")
    assert entry is not None
    assert entry["action"] == "inbox_rewind"
    assert f"{RECEIVE}?lastEventId=_30" in entry["detail"]


def receive_errors(daemon: Daemon, error_class: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "relay_inbox_receive_errors_total",
        {"country": "dk", "tenant": "abcinsurance", "error_class": error_class},
    )
    return value or 0.0


async def test_a_rewind_to_an_id_scalepoint_does_not_know_is_flagged_and_undone_by_another(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0.3)
        emulator.generate(*ROUTE, 5)
        async with running_daemon(receive_settings(database_url, emulator)) as daemon:

            async def received() -> bool:
                return await last_event(db) == "_5"

            await eventually(received, within=30)
            typo = await operate(database_url, "inbox", "rewind", "dk/abcinsurance", "--to", "_50")
            assert typo.code == 3, typo
            assert "the inbox holds no event _50 of dk/abcinsurance" in typo.stdout

            async def refused() -> bool:
                return receive_errors(daemon, "http_400") >= 1

            await eventually(refused, within=30)
            undone = await operate(database_url, "inbox", "rewind", "dk/abcinsurance", "--to", "_5")
            assert undone.code == 0, undone
            emulator.generate(*ROUTE, 2)

            async def resumed() -> bool:
                return await last_event(db) == "_7"

            # The receiver backs off after the 400s (full jitter, doubling from a second).
            await eventually(resumed, within=60)
        assert list(await inbox_ids(db)) == [f"_{n}" for n in range(1, 8)]
