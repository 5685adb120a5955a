"""One table of exit codes for every command (relay.errors.ExitCode, docs/cli.md), as real
processes: for each command, a representative failure of each class that can happen to it.

The runs do not depend on one another, so they are started together, a few at a time, once per
module (the ``runs`` fixture); each parametrized test reads its own result.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from relay.cli import error_boundary
from relay.errors import DatabaseUnavailable, ExitCode
from tests.conftest import Databases, with_database

RELAY = str(Path(sys.executable).with_name("relay"))
TIMEOUT = 60
PASSWORD = "pw-that-must-not-show"
CLIENT_ID, CLIENT_SECRET = "relay-exit-codes", "the-right-secret"
DEAD, PUBLISHED, WAITING = 1001, 1002, 1003  # rows of every "ready" database


@dataclass(frozen=True)
class Case:
    """``relay ARGS`` run in environment ``where`` exits ``code`` and says ``says``."""

    args: tuple[str, ...]
    where: str
    code: ExitCode
    says: str

    @property
    def name(self) -> str:
        return f"{' '.join(self.args)} [{self.where}] -> {self.code.name}"


def case(where: str, code: ExitCode, says: str, *args: str) -> Case:
    return Case(args, where, code, says)


OK, USAGE, ATTENTION = ExitCode.OK, ExitCode.USAGE, ExitCode.ATTENTION
DATABASE, SCHEMA, PARTNER = ExitCode.DATABASE, ExitCode.SCHEMA, ExitCode.PARTNER
UNREACHABLE = "RELAY_DATABASE_URL: cannot use the database at 127.0.0.1:"
MALFORMED = "RELAY_DATABASE_URL: must be a postgresql:// URL"
UNMIGRATED = "run 'relay migrate'"
REFUSED = "lacks SELECT on table public.relay_alembic_version"


def database_cases(*args: str) -> list[Case]:
    """What every command that reads the outbox does without a usable database or schema."""
    return [
        case("malformed", USAGE, MALFORMED, *args),
        case("unreachable", DATABASE, UNREACHABLE, *args),
        case("bare", SCHEMA, UNMIGRATED, *args),
    ]


CASES = [
    # Reports.
    case("ready", OK, "outbox at ", "status"),
    case("ready", USAGE, "No such option '--colour'", "status", "--colour"),
    case("no rights", DATABASE, REFUSED, "status"),
    *database_cases("status"),
    case("ready", OK, f"{DEAD} ", "dead", "list"),
    case("ready", USAGE, "Invalid value for '--limit'", "dead", "list", "--limit", "0"),
    *database_cases("dead", "list"),
    case("ready", OK, f"outbox row {DEAD}: dead", "dead", "show", str(DEAD)),
    case("ready", USAGE, "the outbox holds no row 424242", "dead", "show", "424242"),
    *database_cases("dead", "show", str(DEAD)),
    case("ready", OK, "dk/abcinsurance  configuration", "pause", "list"),
    case("ready", USAGE, "No such option '--all'", "pause", "list", "--all"),
    *database_cases("pause", "list"),
    # Changes.
    case("ready", OK, f"relay: requeued 1 dead row: {DEAD}", "requeue", "--all-dead"),
    case("ready", USAGE, "name the dead rows to requeue", "requeue"),
    case("ready", ATTENTION, f"not dead (left alone): {PUBLISHED}", "requeue", str(PUBLISHED)),
    *database_cases("requeue", "--all-dead"),
    case("ready", OK, f"relay: replayed 1 published row: {PUBLISHED}", "replay", str(PUBLISHED)),
    case("ready", OK, "would replay 1 published row", "replay", "--since", "3d", "--dry-run"),
    case("ready", USAGE, "name the published rows to replay", "replay"),
    case("ready", ATTENTION, f"not published (left alone): {DEAD}", "replay", str(DEAD)),
    *database_cases("replay", str(PUBLISHED)),
    case("ready", OK, "relay: purged 1 published row", "purge", "--older-than", "1d"),
    case("ready", OK, "would purge 1 published row", "purge", "--older-than", "1d", "--dry-run"),
    case("ready", USAGE, "is in the future", "purge", "--older-than", "2999-01-01T00:00:00Z"),
    case("ready", USAGE, "neither a duration", "purge", "--older-than", "last tuesday"),
    *database_cases("purge", "--older-than", "30d"),
    case("ready", OK, "lifted:", "pause", "clear", "dk/abcinsurance"),
    case("ready", USAGE, "name the routes to lift", "pause", "clear"),
    case("ready", ATTENTION, "no pause to lift on: dk/nowhere", "pause", "clear", "dk/nowhere"),
    *database_cases("pause", "clear", "--all"),
    case("ready", OK, "the audit log holds no entries", "audit"),
    case("ready", USAGE, "neither a duration", "audit", "--since", "yesterday"),
    *database_cases("audit"),
    case("ready", USAGE, "--operator: give your name", "requeue", "--all-dead", "--operator", ""),
    case("ready", OK, "", "enqueue", "case_created", "--payload", "{}"),
    case("ready", USAGE, "not valid JSON", "enqueue", "case_created", "--payload", "{x}"),
    case(
        "ready",
        USAGE,
        "lower-case two-letter",
        "enqueue",
        "e",
        "--payload",
        "{}",
        "--country",
        "DK",
    ),
    *database_cases("enqueue", "case_created", "--payload", "{}"),
    # The schema.
    case("bare", OK, 'relay: schema "public" is at revision', "migrate"),
    case("ready", OK, 'relay: schema "public" is at revision', "migrate", "--check"),
    case("bare", ATTENTION, "this relay needs", "migrate", "--check"),
    case("malformed", USAGE, MALFORMED, "migrate"),
    case("unreachable", DATABASE, UNREACHABLE, "migrate"),
    # The daemon.
    case("partner", ATTENTION, "1 blocked", "run", "--drain"),
    case("partner bare", SCHEMA, UNMIGRATED, "run", "--drain"),
    case("partner unreachable", DATABASE, UNREACHABLE, "run", "--drain"),
    case("partner zero concurrency", USAGE, "RELAY_CONCURRENCY: ", "run", "--drain"),
    # The partner.
    case("emulator", OK, "relay: check passed", "check"),
    case("emulator wrong secret", USAGE, "invalid_client", "check"),
    case("emulator wrong api", ATTENTION, "route dk/abcinsurance: FAILED: no such route", "check"),
    case("partner", PARTNER, "cannot reach the token endpoint", "check"),
    case("no client", USAGE, "RELAY_CLIENT_ID: is not set", "check"),
    case("emulator", USAGE, "cannot listen on 127.0.0.1:", "emulator", "--port", "{emulator port}"),
    case("ready", USAGE, "Invalid value for '--events'", "demo", "--events", "5"),
    case("unreachable", DATABASE, UNREACHABLE, "demo", "--events", "10"),
]


def free_port() -> int:
    """A port nothing listens on (it was free a moment ago; nothing here starts servers on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def base_environment(**variables: str) -> dict[str, str]:
    """No RELAY_* setting from the shell running pytest; libpq's PG* variables do pass."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name in ("PATH", "HOME", "LANG") or name.startswith("PG")
    }
    return {**env, "USER": "ops-test", "RELAY_LOG_FORMAT": "json", **variables}


def seed(url: str) -> None:
    """A dead row, a published one, one waiting behind the dead row of its key, a pause."""
    row = "INSERT INTO outbox (id, event_type, payload, ordering_key) VALUES (%s, 'e', '{}', %s)"
    with psycopg.connect(url, autocommit=True) as connection:
        for row_id, key in ((DEAD, "k"), (PUBLISHED, None), (WAITING, "k")):
            # The insert trigger draws the id of a keyed row from the sequence.
            connection.execute("SELECT setval('outbox_id_seq', %s)", (row_id - 1,))
            connection.execute(row, (row_id, key))
        connection.execute(
            """
            UPDATE outbox SET status = 'dead', attempts = 1, last_error = 'HTTP 400: refused'
            WHERE id = %s""",
            (DEAD,),
        )
        connection.execute(
            """
            UPDATE outbox SET status = 'published', attempts = 1,
                              published_at = now() - interval '2 days'
            WHERE id = %s""",
            (PUBLISHED,),
        )
        connection.execute(
            "INSERT INTO relay_pause (route, until, kind, reason, set_by) VALUES "
            "('dk/abcinsurance', now() + interval '1 hour', 'configuration', 'http_403', 'h:1')"
        )
        ids = connection.execute("SELECT id FROM outbox ORDER BY id").fetchall()
    assert ids == [(DEAD,), (PUBLISHED,), (WAITING,)]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


class Emulator:
    """``relay emulator`` as a process, on a free port."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [RELAY, "emulator", "--port", "0", "--client", f"{CLIENT_ID}:{CLIENT_SECRET}"],
            env=base_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # relay emulator: token endpoint http://...
        assert "token endpoint http://127.0.0.1:" in line, line
        self.token_url = line.split()[-1]
        self.base_url = self.token_url.removesuffix("/connect/token")
        self.port = self.base_url.rsplit(":", 1)[1]

    def stop(self) -> Run:
        self.process.send_signal(signal.SIGTERM)
        stdout, stderr = self.process.communicate(timeout=TIMEOUT)
        return Run(self.process.returncode, stdout, stderr)


def partner(base_url: str, token_url: str, secret: str = CLIENT_SECRET) -> dict[str, str]:
    return {
        "RELAY_API_BASE_URL": base_url,
        "RELAY_TOKEN_URL": token_url,
        "RELAY_CLIENT_ID": CLIENT_ID,
        "RELAY_CLIENT_SECRET": secret,
        "RELAY_COUNTRY": "dk",
        "RELAY_TENANT": "abcinsurance",
        "RELAY_HTTP_PORT": "0",
        "RELAY_HTTP_HOST": "127.0.0.1",
        "RELAY_POLL_INTERVAL": "200ms",
    }


class Places:
    """The environments the cases run in; fresh databases are made on demand, dropped after."""

    def __init__(self, databases: Databases, emulator: Emulator) -> None:
        self.databases = databases
        self.emulator = emulator
        self.names: list[str] = []
        self.roles: list[str] = []

    def url(self, *, migrated: bool) -> str:
        name = self.databases.create() if migrated else self.databases.create_empty()
        self.names.append(name)
        return with_database(self.databases.admin_url, name)

    def ready(self) -> str:
        url = self.url(migrated=True)
        seed(url)
        return url

    def without_rights(self) -> str:
        """A role that may log in to a migrated database and read nothing in it."""
        url = self.ready()
        role = f"relay_norights_{uuid.uuid4().hex[:8]}"
        self.roles.append(role)
        with psycopg.connect(self.databases.admin_url, autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        login = psycopg.conninfo.conninfo_to_dict(url)
        host, port, dbname = login.get("host"), login.get("port", 5432), login["dbname"]
        return f"postgresql://{role}:{PASSWORD}@{host}:{port}/{dbname}"

    def environment(self, where: str) -> dict[str, str]:
        unreachable = f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/insurer"
        nowhere = f"http://127.0.0.1:{free_port()}"
        emulated = partner(self.emulator.base_url, self.emulator.token_url)
        urls: dict[str, Callable[[], dict[str, str]]] = {
            "ready": lambda: {"RELAY_DATABASE_URL": self.ready()},
            "bare": lambda: {"RELAY_DATABASE_URL": self.url(migrated=False)},
            "unreachable": lambda: {"RELAY_DATABASE_URL": unreachable},
            "malformed": lambda: {"RELAY_DATABASE_URL": f"mysql://relay:{PASSWORD}@db/x"},
            "no rights": lambda: {"RELAY_DATABASE_URL": self.without_rights()},
            "partner": lambda: {
                "RELAY_DATABASE_URL": self.ready(),
                **partner(nowhere, nowhere + "/connect/token"),
            },
            "partner bare": lambda: {
                "RELAY_DATABASE_URL": self.url(migrated=False),
                **partner(nowhere, nowhere + "/connect/token"),
            },
            "partner unreachable": lambda: {
                "RELAY_DATABASE_URL": unreachable,
                **partner(nowhere, nowhere + "/connect/token"),
            },
            "partner zero concurrency": lambda: {
                "RELAY_DATABASE_URL": self.ready(),
                "RELAY_CONCURRENCY": "0",
                **partner(nowhere, nowhere + "/connect/token"),
            },
            "emulator": lambda: emulated,
            "emulator wrong secret": lambda: {**emulated, "RELAY_CLIENT_SECRET": "not-it"},
            "emulator wrong api": lambda: {
                **emulated,
                "RELAY_API_BASE_URL": self.emulator.base_url + "/eventapi",
            },
            "no client": lambda: {
                **partner(nowhere, nowhere + "/connect/token"),
                "RELAY_CLIENT_ID": "",
            },
        }
        variables = urls[where]()
        return base_environment(**{k: v for k, v in variables.items() if v})

    def close(self) -> None:
        for name in self.names:
            self.databases.drop(name)
        with psycopg.connect(self.databases.admin_url, autocommit=True) as connection:
            for role in self.roles:
                connection.execute(f"DROP ROLE IF EXISTS {role}")


def run(env: dict[str, str], args: tuple[str, ...]) -> Run:
    process = subprocess.run(
        [RELAY, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(process.returncode, process.stdout, process.stderr)


@pytest.fixture(scope="module")
def runs(databases: Databases) -> Iterator[dict[str, Run]]:
    emulator = Emulator()
    places = Places(databases, emulator)
    try:
        planned = {
            item.name: (
                places.environment(item.where),
                tuple(arg.replace("{emulator port}", emulator.port) for arg in item.args),
            )
            for item in CASES
        }
        # A few at a time: each process spends a second or so importing, on a shared machine.
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(run, *plan) for name, plan in planned.items()}
            yield {name: future.result() for name, future in futures.items()}
    finally:
        stopped = emulator.stop()
        places.close()
    # The emulator, stopped by SIGTERM as a service manager stops it, exits 0.
    assert stopped.code == ExitCode.OK, stopped


@pytest.mark.parametrize("item", CASES, ids=[item.name for item in CASES])
def test_every_command_exits_with_the_code_of_its_class(item: Case, runs: dict[str, Run]) -> None:
    result = runs[item.name]
    assert result.code == item.code, result
    assert "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    if item.code == ExitCode.OK or item.code == ExitCode.ATTENTION:
        assert item.says in result.stdout + result.stderr, result
        return
    # A failure is one line on stderr, starting "relay:" (click's usage errors: "Error:").
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert any(item.says in line for line in errors), result
    if item.args[0] != "demo":  # the demo says which database it tries first
        assert result.stdout == "", result


WAITING_FOR_A_LOCK = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'relay'
      AND wait_event_type = 'Lock'"""


def test_ctrl_c_stops_a_command_with_130_and_changes_nothing(database_url: str) -> None:
    """An operator's Ctrl-C while requeue waits for a row lock: exit 130, nothing requeued."""
    seed(database_url)
    with (
        psycopg.connect(database_url) as holder,
        psycopg.connect(database_url, autocommit=True) as watcher,
    ):
        holder.execute("SELECT 1 FROM outbox WHERE id = %s FOR UPDATE", (DEAD,))
        requeue = subprocess.Popen(
            [RELAY, "requeue", "--all-dead"],
            env=base_environment(RELAY_DATABASE_URL=database_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while watcher.execute(WAITING_FOR_A_LOCK).fetchone() != (1,):
                assert requeue.poll() is None, requeue.communicate()
                assert time.monotonic() < deadline, "requeue never waited for the lock"
                time.sleep(0.05)
            requeue.send_signal(signal.SIGINT)
            stdout, stderr = requeue.communicate(timeout=TIMEOUT)
        finally:
            if requeue.poll() is None:
                requeue.kill()
        holder.rollback()
    assert requeue.returncode == ExitCode.INTERRUPTED, (stdout, stderr)
    assert "relay: interrupted" in stderr
    assert "Traceback" not in stderr
    with psycopg.connect(database_url) as connection:
        status = connection.execute("SELECT status FROM outbox WHERE id = %s", (DEAD,)).fetchone()
    assert status == ("dead",)


def test_an_error_a_ctrl_c_caused_is_reported_as_the_interrupt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C cancels a database call, and closing it fails in turn (a loaded machine once made
    that a TimeoutError): the operator sees what they did, exit 130, not a database error."""

    @error_boundary
    def command() -> None:
        async def cancelled_call() -> None:
            try:
                raise asyncio.CancelledError
            except asyncio.CancelledError:
                try:
                    raise TimeoutError
                except TimeoutError as error:
                    raise DatabaseUnavailable("cannot use the database: TimeoutError") from error

        asyncio.run(cancelled_call())

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == ExitCode.INTERRUPTED
    assert capsys.readouterr().err == "relay: interrupted\n"


def test_an_error_of_its_own_is_reported_as_itself(capsys: pytest.CaptureFixture[str]) -> None:
    @error_boundary
    def command() -> None:
        try:
            raise TimeoutError
        except TimeoutError as error:
            raise DatabaseUnavailable("cannot use the database: TimeoutError") from error

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == DatabaseUnavailable.exit_code
    assert "interrupted" not in capsys.readouterr().err
