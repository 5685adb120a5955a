"""``relay demo`` as a user runs it: the installed command, a process, a directory of its own.

The embedded runs start a real PostgreSQL (about two seconds with initdb) on the binaries of
the ``embedded`` extra. As root it runs as the existing user ``nobody`` from a temporary
directory of its own; either way the demo leaves the machine as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay.demo.events import INVALID_ROWS
from relay.demo.receiving import CASES_TABLE, MALFORMED_PAGES, receive_plan
from relay.emulator.receive import MALFORMED_ITEMS

# Each test runs the command as a process (imports alone take a second or two): several
# seconds apiece. 'make test' runs them; deselect with -m "not slow" for a quick loop.
pytestmark = pytest.mark.slow

RELAY = str(Path(sys.executable).with_name("relay"))
RESULT = re.compile(
    r"^relay demo: (?P<published>\d+) published, (?P<dead>\d+) dead, (?P<left>\d+) left of "
    r"(?P<total>\d+) events \((?P<status>done|interrupted)\)$",
    re.MULTILINE,
)
INBOX_RESULT = re.compile(
    r"^relay demo: inbox: (?P<received>\d+) received of (?P<sent>\d+) sent \((?P<events>\d+) "
    r"events, (?P<malformed>\d+) malformed\), (?P<duplicates>\d+) duplicates, "
    r"(?P<missing>\d+) missing, (?P<processed>\d+) processed, (?P<failed>\d+) failed, "
    r"(?P<pending>\d+) pending \((?P<status>done|interrupted)\)$",
    re.MULTILINE,
)
LATENCY = re.compile(r"p50 (?P<p50>[\d.,]+) ms, p99 (?P<p99>[\d.,]+) ms, from the emulator's feed")
MALFORMED = MALFORMED_PAGES * len(MALFORMED_ITEMS)  # items that are not events, kept as failed
LOOK_FURTHER = ("relay status", "relay dead list", "relay inbox status", "relay inbox list")
EXPORTED_URL = re.compile(r"export RELAY_DATABASE_URL='([^']+)'")
REASONS = (
    "payload must be a JSON object, not a JSON array",
    "payload is missing correlationId",
    "payload eventType 'case_created' disagrees with event_type 'claim_updated'",
    "payload correlationId is not a UUID",
)
# Fields every event carries and the output may well name; everything else is the payload's.
ENVELOPE = frozenset({"eventType", "payloadVersion", "timestamp"})


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without any RELAY_* variable, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env.update(extra)
    return env


def relay_demo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RELAY, "demo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=90
    )


def result(output: str, pattern: re.Pattern[str] = RESULT) -> dict[str, Any]:
    match = pattern.search(output)
    assert match is not None, output
    return {
        name: int(value) if value.isdigit() else value for name, value in match.groupdict().items()
    }


def payload_strings(document: Any) -> Iterator[str]:
    """Every string in a payload outside the envelope, long enough to be recognisable."""
    if isinstance(document, dict):
        for name, value in document.items():
            if name not in ENVELOPE:
                yield from payload_strings(value)
    elif isinstance(document, list):
        for item in document:
            yield from payload_strings(item)
    elif isinstance(document, str) and len(document) >= 6:
        yield document


def assert_no_payload_contents(url: str, schema: str, output: str) -> None:
    """Nothing from a published or received payload (names, case tokens, claim ids...) is in
    the output; the reasons of the dead rows may quote their payloads, and only there."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            f'SELECT payload FROM "{schema}".outbox WHERE status = %s', ("published",)
        ).fetchall()
        rows += connection.execute(
            f'SELECT payload FROM "{schema}".inbox WHERE payload IS NOT NULL'
        ).fetchall()
    values = {value for (payload,) in rows for value in payload_strings(payload)}
    assert len(values) > 2 * len(rows)  # names, user names, tokens, numbers, uuids...
    leaked = sorted(value for value in values if value in output)
    assert leaked == []


def assert_complete(output: str, total: int) -> None:
    outcome = result(output)
    assert outcome == {
        "published": total - INVALID_ROWS,
        "dead": INVALID_ROWS,
        "left": 0,
        "total": total,
        "status": "done",
    }
    assert "relay demo: done" in output
    assert "duplicates 0" in output
    for reason in REASONS:
        assert reason in output
    assert_inbox_complete(output, total)


def assert_inbox_complete(output: str, total: int) -> None:
    """Every event the emulator fed is received once, processed, and nothing else pending;
    the malformed items are kept as failed."""
    fed = sum(route.total for route in receive_plan(total))
    inbox = result(output, INBOX_RESULT)
    assert inbox == {
        "received": fed + MALFORMED,
        "sent": fed + MALFORMED,
        "events": fed,
        "malformed": MALFORMED,
        "duplicates": 0,
        "missing": 0,
        "processed": fed,
        "failed": MALFORMED,
        "pending": 0,
        "status": "done",
    }
    assert inbox["processed"] + inbox["failed"] == inbox["received"]
    # Events fed while a poll was held are answered at once, not when the hold ends (4 s).
    latency = LATENCY.search(output)
    assert latency is not None, output
    assert float(latency["p50"].replace(",", "")) < 1000


def inbox_counts(url: str, schema: str) -> dict[str, Any]:
    """The inbox and the consumer's table, as the database has them."""
    with psycopg.connect(url) as connection:
        statuses = connection.execute(
            f'SELECT status, count(*) FROM "{schema}".inbox GROUP BY status'
        ).fetchall()
        routes = connection.execute(
            f"SELECT country || '/' || tenant, count(*), count(DISTINCT event_id) "
            f'FROM "{schema}".inbox WHERE raw IS NULL GROUP BY 1'
        ).fetchall()
        counted = connection.execute(
            f'SELECT coalesce(sum(cases), 0) FROM "{schema}".{CASES_TABLE}'
        ).fetchone()
    assert counted is not None
    return {
        "statuses": dict(statuses),
        "events": {route: rows for route, rows, _ in routes},
        "distinct": {route: distinct for route, _, distinct in routes},
        "counted": int(counted[0]),
    }


def assert_inbox_rows(url: str, schema: str, total: int) -> None:
    """The inbox holds each route's planned events once, all processed, and the consumer
    counted each of them once."""
    plan = {route.name: route.total for route in receive_plan(total)}
    fed = sum(plan.values())
    counts = inbox_counts(url, schema)
    assert counts == {
        "statuses": {"processed": fed, "failed": MALFORMED},
        "events": plan,
        "distinct": plan,
        "counted": fed,
    }


def wait_for(condition: Callable[[], bool], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def embedded_pgdata(cwd: Path) -> Path:
    """Where the demo run in ``cwd`` keeps its server's data: .relay-demo/pgdata, or as root a
    temporary directory that .relay-demo/server.json names while the server runs."""
    with contextlib.suppress(OSError, ValueError):
        return Path(json.loads((cwd / ".relay-demo" / "server.json").read_text())["pgdata"])
    return cwd / ".relay-demo" / "pgdata"


def machine_state(cwd: Path) -> dict[str, object]:
    """What the demo must leave as it found it: the users and groups, the temporary
    directory's relay-demo entries, the modes of the directories above ``cwd``, the runtime
    directories a PostgreSQL helper might leave behind."""
    uid = os.getuid()
    runtime = [Path(f"/run/user/{uid}"), Path(tempfile.gettempdir()) / f"runtime-{uid}"]
    return {
        "passwd": Path("/etc/passwd").read_text(),
        "group": Path("/etc/group").read_text(),
        "tmp": sorted(
            path.name
            for path in Path(tempfile.gettempdir()).iterdir()
            if path.name.startswith("relay-demo")
        ),
        "parents": [(str(path), path.stat().st_mode) for path in cwd.parents],
        "runtime": [
            sorted(str(item) for item in path.rglob("*")) if path.exists() else None
            for path in runtime
        ],
    }


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def process_exists(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_demo_on_an_embedded_postgresql_kept_running_and_stopped(tmp_path: Path) -> None:
    env = environment()
    try:
        run = relay_demo(tmp_path, env, "--events", "300", "--keep")
        output = run.stdout + run.stderr
        assert run.returncode == 0, output
        pgdata = embedded_pgdata(tmp_path)
        if os.geteuid() == 0:
            assert f"using an embedded PostgreSQL in {pgdata} (as user nobody" in output
        else:
            assert "using an embedded PostgreSQL in .relay-demo/pgdata" in output
        assert "dropped and re-created database relay_demo" in output
        assert_complete(output, 300)
        for command in (*LOOK_FURTHER, "relay dead show ", "relay demo --stop"):
            assert command in run.stdout
        # --keep leaves the server running for the commands the summary lists, at its URL.
        exported = EXPORTED_URL.search(run.stdout)
        assert exported is not None
        server = postmaster_pid(pgdata)
        assert server is not None
        assert process_exists(server)
        assert_no_payload_contents(exported.group(1), "public", output)
        assert_inbox_rows(exported.group(1), "public", 300)
        # The inbox command the summary lists sees the same as the summary.
        status = subprocess.run(
            [RELAY, "inbox", "status", "--json"],
            env=environment(RELAY_DATABASE_URL=exported.group(1)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        routes = json.loads(status.stdout)["routes"]
        plan = {route.name: route.total for route in receive_plan(300)}
        assert {route["route"]: route["processed"] for route in routes} == plan
        assert sum(route["failed"] for route in routes) == MALFORMED
        assert sum(route["pending"] for route in routes) == 0
    finally:
        stop = relay_demo(tmp_path, env, "--stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped the embedded PostgreSQL" in stop.stdout
    assert postmaster_pid(pgdata) is None
    wait_for(lambda: not process_exists(server), within=10)
    if os.geteuid() == 0:
        assert not pgdata.exists()  # its temporary directory went with it


def run_watching_the_postmaster(cwd: Path, *args: str) -> tuple[int, str, int]:
    """``relay demo`` as a process; its exit code, its output, and the pid of the embedded
    postmaster it ran on (read while it delivered)."""
    with subprocess.Popen(
        [RELAY, "demo", *args],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            assert demo.stdout is not None
            lines = []
            for line in demo.stdout:
                lines.append(line)
                if line.startswith("relay demo: emulated EventApi"):
                    break
            server = postmaster_pid(embedded_pgdata(cwd))
            assert server is not None, "".join(lines)
            output = "".join(lines) + demo.stdout.read()
            code = demo.wait(timeout=90)
        finally:
            if demo.poll() is None:
                demo.kill()
                relay_demo(cwd, environment(), "--stop")
    return code, output, server


def test_demo_stops_its_embedded_postgresql_when_it_is_done(tmp_path: Path) -> None:
    before = machine_state(tmp_path)
    code, output, server = run_watching_the_postmaster(tmp_path, "--events", "300")
    assert code == 0, output
    assert_complete(output, 300)
    assert "relay demo: stopped the embedded PostgreSQL" in output
    assert "relay demo --keep" in output  # how to look further next time
    assert "export RELAY_DATABASE_URL" not in output  # nothing to connect to any more
    assert postmaster_pid(embedded_pgdata(tmp_path)) is None
    # pg_ctl stop returns once the pid file is gone, a moment before the process has exited.
    wait_for(lambda: not process_exists(server), within=10)
    again = relay_demo(tmp_path, environment(), "--stop")
    assert "no embedded PostgreSQL is running" in again.stdout
    # Nothing changed outside the directory it ran in: no user added, no parent opened up, no
    # temporary or runtime directory left behind.
    assert machine_state(tmp_path) == before
    left = {path.name for path in (tmp_path / ".relay-demo").iterdir()}
    assert left <= {"pgdata"}  # the data of a non-root run, kept for the next; make clean


def test_ctrl_c_stops_the_embedded_server(tmp_path: Path) -> None:
    with subprocess.Popen(
        [RELAY, "demo", "--events", "1000"],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            assert demo.stdout is not None
            lines = []
            for line in demo.stdout:
                lines.append(line)
                if line.startswith("relay demo: emulated EventApi"):
                    break
            pgdata = embedded_pgdata(tmp_path)
            server = postmaster_pid(pgdata)
            assert server is not None, "".join(lines)
            assert process_exists(server), "".join(lines)
            demo.send_signal(signal.SIGINT)
            output = "".join(lines) + demo.stdout.read()
            assert demo.wait(timeout=60) == 130, output
        finally:
            if demo.poll() is None:
                demo.kill()
                relay_demo(tmp_path, environment(), "--stop")
    assert "relay demo: interrupted" in output
    assert "relay demo: stopped the embedded PostgreSQL" in output
    assert postmaster_pid(pgdata) is None
    # pg_ctl stop returns once the pid file is gone, a moment before the process has exited.
    wait_for(lambda: not process_exists(server), within=10)


def test_demo_uses_the_database_of_relay_database_url(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO outbox (event_type, payload) VALUES ('payment_status_updated', '{}')"
        )
        connection.execute(
            "INSERT INTO inbox (country, tenant, event_id, event_type, payload) "
            "VALUES ('dk', 'abcinsurance', '_1', 'case_created', '{}')"
        )
    run = relay_demo(tmp_path, environment(RELAY_DATABASE_URL=database_url), "--events", "300")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "using the database of RELAY_DATABASE_URL" in output
    assert 'dropped and re-created schema "relay_demo"' in output
    assert "export RELAY_SCHEMA=relay_demo" in run.stdout
    for command in LOOK_FURTHER:
        assert command in run.stdout
    assert_complete(output, 300)
    assert_no_payload_contents(database_url, "relay_demo", output)
    assert_inbox_rows(database_url, "relay_demo", 300)
    assert not (tmp_path / ".relay-demo").exists()
    with psycopg.connect(database_url) as connection:
        counts: dict[str, int] = dict(
            connection.execute(
                "SELECT status, count(*) FROM relay_demo.outbox GROUP BY status"
            ).fetchall()
        )
        untouched = connection.execute("SELECT status FROM public.outbox").fetchall()
        unconsumed = connection.execute("SELECT status FROM public.inbox").fetchall()
    assert counts == {"published": 300 - INVALID_ROWS, "dead": INVALID_ROWS}
    assert untouched == [("pending",)]  # the application's own outbox is left alone
    assert unconsumed == [("pending",)]  # and its inbox too: the demo consumes its own only


def both_directions_moved(url: str) -> bool:
    """Some outbox rows are published and some received events processed."""
    with psycopg.connect(url) as connection:
        try:
            row = connection.execute(
                "SELECT (SELECT count(*) FROM relay_demo.outbox WHERE status = 'published'),"
                " (SELECT count(*) FROM relay_demo.inbox WHERE status = 'processed')"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return False
    assert row is not None
    return bool(row[0] and row[1])


def test_ctrl_c_during_delivery_finishes_in_flight_work_and_exits_130(
    database_url: str, tmp_path: Path
) -> None:
    with subprocess.Popen(
        [RELAY, "demo", "--events", "1000"],
        cwd=tmp_path,
        env=environment(RELAY_DATABASE_URL=database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            wait_for(lambda: both_directions_moved(database_url) or demo.poll() is not None)
            demo.send_signal(signal.SIGINT)
            output, _ = demo.communicate(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
    assert demo.returncode == 130, output
    outcome = result(output)
    assert outcome["status"] == "interrupted"
    assert "relay demo: interrupted" in output
    with psycopg.connect(database_url) as connection:
        counts: dict[str, int] = dict(
            connection.execute(
                "SELECT status, count(*) FROM relay_demo.outbox GROUP BY status"
            ).fetchall()
        )
    # Requests in flight were finished and recorded, queued rows given back: none is held.
    assert "in_flight" not in counts
    assert counts.get("published", 0) == outcome["published"] > 0
    assert sum(counts.values()) == outcome["total"]
    assert outcome["published"] + outcome["dead"] + outcome["left"] == outcome["total"]
    # What was received is stored once; each processed event was counted in its transaction.
    inbox = result(output, INBOX_RESULT)
    assert inbox["status"] == "interrupted"
    assert inbox["duplicates"] == 0
    assert inbox["processed"] > 0
    assert inbox["processed"] + inbox["failed"] + inbox["pending"] == inbox["received"]
    stored = inbox_counts(database_url, "relay_demo")
    assert sum(stored["statuses"].values()) == inbox["received"]
    assert stored["statuses"].get("processed", 0) == inbox["processed"] == stored["counted"]
    assert stored["events"] == stored["distinct"]


# The demo as a process whose emulator never answers one receive route but with 404, which
# pauses that route for a minute: the demo must not wait for it forever.
STALLING = """
import sys
from relay.demo import run
run.FAULTS.receive_route_status = {"dk/budgetinsurance": 404}
run.STALL_SECONDS = 2.0
sys.exit(run.run_demo(100, keep_server=False))
"""


def test_the_demo_stops_waiting_when_nothing_moves_and_says_so(
    database_url: str, tmp_path: Path
) -> None:
    demo = subprocess.run(
        [sys.executable, "-c", STALLING],
        cwd=tmp_path,
        env=environment(RELAY_DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 1, output
    assert "relay demo: stopped waiting (nothing moved for 2 s)" in output
    assert "(stopped waiting)" in output
    assert "dk/budgetinsurance by the relay: http_404" in output  # the reason, in the summary
    outcome = result(output.replace("(stopped waiting)", "(done)"))
    assert outcome["published"] + outcome["dead"] == outcome["total"]  # the outbox got through
    inbox = result(output.replace("(stopped waiting)", "(done)"), INBOX_RESULT)
    budget = next(route for route in receive_plan(100) if route.tenant == "budgetinsurance")
    assert inbox["missing"] == budget.backlog  # the paused route's events wait at the emulator
    assert inbox["duplicates"] == 0


def test_make_clean_removes_what_the_demo_leaves() -> None:
    root = Path(__file__).resolve().parents[2]
    planned = subprocess.run(
        ["make", "-n", "clean"], cwd=root, capture_output=True, text=True, timeout=30, check=True
    )
    assert ".relay-demo" in planned.stdout.split()
