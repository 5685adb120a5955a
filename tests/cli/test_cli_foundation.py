"""``relay migrate`` and ``relay enqueue`` as an operator runs them: a process, an environment,
an exit code and what it prints.

Each run of the command pays about a second of imports, so the runs that do not depend on one
another are started together, once per module (the ``batch`` fixture), and each test reads its
own result.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay import DISTRIBUTION
from relay.schema import head_revision
from tests.conftest import Databases, with_database
from tests.helpers.commands import minimal_environment as environment
from tests.helpers.schema import schema_snapshot

RELAY = str(Path(sys.executable).with_name("relay"))
TIMEOUT = 60
PASSWORD = "pw-that-must-not-show"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


@dataclass(frozen=True)
class Command:
    env: dict[str, str]
    args: tuple[str, ...]


def start(command: Command) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [RELAY, *command.args],
        env=command.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> Run:
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    return Run(process.returncode, stdout, stderr)


def relay(env: dict[str, str], *args: str) -> Run:
    return finish(start(Command(env, args)))


def free_port() -> int:
    """A port nothing listens on (it was free a moment ago; nothing here starts servers on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_one_line(run: Run, code: int, *fragments: str) -> str:
    assert run.returncode == code, run
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.error_lines) == 1, run.stderr
    line = run.error_lines[0]
    for fragment in fragments:
        assert fragment in line, line
    assert PASSWORD not in line
    return line


# The independent runs, started together ------------------------------------------------------

FILE_PAYLOAD = {
    "eventType": "case_created",
    "payloadVersion": "1.2.0",
    "correlationId": "70c6d351-016f-4c9e-b1a9-d581fc3a596b",
    "timestamp": "2017-07-25T10:31:28.2519514Z",
    "case": {"uuid": "d3c1", "number": "CLM-42", "caseType": "contents"},
}
DATABASES = ("migrated", "fresh", "racing", "bare")  # the last three start empty


def secret_file(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class Batch:
    urls: dict[str, str]
    runs: dict[str, Run]


def commands(urls: dict[str, str], admin_url: str, payload_file: Path) -> dict[str, Command]:
    unreachable = f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/insurer"
    missing = with_database(admin_url, f"relay_missing_{uuid.uuid4().hex[:8]}")
    migrated = environment(RELAY_DATABASE_URL=urls["migrated"])
    enqueue = ("enqueue", "payment_status_updated", "--payload")
    bare = environment(RELAY_DATABASE_URL=urls["bare"])
    url_file = secret_file(payload_file.parent / "database-url", urls["migrated"], 0o644)
    bad_url_file = secret_file(
        payload_file.parent / "bad-database-url", f"mysql://relay:{PASSWORD}@db/x\n", 0o600
    )
    return {
        "url file": Command(environment(RELAY_DATABASE_URL_FILE=str(url_file)), ("migrate",)),
        "url and url file": Command(
            environment(RELAY_DATABASE_URL=urls["migrated"], RELAY_DATABASE_URL_FILE=str(url_file)),
            ("migrate",),
        ),
        "malformed url file": Command(
            environment(RELAY_DATABASE_URL_FILE=str(bad_url_file)), ("migrate",)
        ),
        "enqueue with a typo": Command(
            {**migrated, "RELAY_CONCURENCY": "8"}, (*enqueue, '{"payment": {"uuid": "7b1e"}}')
        ),
        "malformed url": Command(
            environment(RELAY_DATABASE_URL=f"mysql://relay:{PASSWORD}@db/x"), ("migrate",)
        ),
        "unreachable port": Command(environment(RELAY_DATABASE_URL=unreachable), ("migrate",)),
        "missing database": Command(environment(RELAY_DATABASE_URL=missing), ("migrate",)),
        "concurrency 0": Command({**migrated, "RELAY_CONCURRENCY": "0"}, ("run",)),
        "sql": Command(environment(RELAY_DATABASE_URL=unreachable), ("migrate", "--sql")),
        "fresh": Command(environment(RELAY_DATABASE_URL=urls["fresh"]), ("migrate",)),
        "racing 1": Command(environment(RELAY_DATABASE_URL=urls["racing"]), ("migrate",)),
        "racing 2": Command(environment(RELAY_DATABASE_URL=urls["racing"]), ("migrate",)),
        "enqueue json": Command(
            migrated,
            (
                *enqueue,
                '{"payment": {"uuid": "8c3a", "status": "canceled"}}',
                *("--tenant", "abcinsurance", "--country", "dk", "--ordering-key", "pay-8c3a"),
            ),
        ),
        "enqueue file": Command(
            migrated, ("enqueue", "case_created", "--payload", f"@{payload_file}")
        ),
        "enqueue not json": Command(migrated, (*enqueue, "{payment: 1}")),
        "enqueue bad country": Command(migrated, (*enqueue, "{}", "--country", "DK")),
        "enqueue unmigrated": Command(bare, (*enqueue, "{}")),
    }


@pytest.fixture(scope="module")
def batch(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batch]:
    names = {"migrated": databases.create()}
    names.update({key: databases.create_empty() for key in DATABASES[1:]})
    urls = {key: with_database(databases.admin_url, name) for key, name in names.items()}
    payload_file = tmp_path_factory.mktemp("enqueue") / "event.json"
    payload_file.write_text(json.dumps(FILE_PAYLOAD), encoding="utf-8")
    planned = commands(urls, databases.admin_url, payload_file)
    processes = {key: start(command) for key, command in planned.items()}
    try:
        yield Batch(urls, {key: finish(process) for key, process in processes.items()})
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for name in names.values():
            databases.drop(name)


# Bad settings: exit 2, one line, the variable named, no traceback -----------------------------


@pytest.mark.parametrize(
    ("key", "fragments"),
    [
        ("malformed url", ["RELAY_DATABASE_URL: must be a postgresql:// URL"]),
        ("concurrency 0", ["RELAY_CONCURRENCY: ", "greater than or equal to 1"]),
        (
            "url and url file",
            ["RELAY_DATABASE_URL and RELAY_DATABASE_URL_FILE are both set"],
        ),
        (
            "malformed url file",
            ["RELAY_DATABASE_URL_FILE: ", "bad-database-url: must be a postgresql:// URL"],
        ),
    ],
)
def test_a_bad_setting_exits_2_with_one_line(batch: Batch, key: str, fragments: list[str]) -> None:
    run = batch.runs[key]
    line = assert_one_line(run, 2, *fragments)
    assert line.startswith("relay: RELAY_")
    assert run.stdout == ""


@pytest.mark.parametrize(
    ("key", "fragments"),
    [
        ("unreachable port", ["RELAY_DATABASE_URL: cannot use the database at 127.0.0.1:"]),
        ("missing database", ["RELAY_DATABASE_URL: cannot use the database", "does not exist"]),
    ],
)
def test_a_database_that_cannot_be_used_exits_4_with_one_line(
    batch: Batch, key: str, fragments: list[str]
) -> None:
    run = batch.runs[key]
    line = assert_one_line(run, 4, *fragments)
    assert run.stdout == ""
    assert line.startswith("relay: RELAY_DATABASE_URL: ")


# relay --version -------------------------------------------------------------------------------


def test_version_names_the_installed_release() -> None:
    run = relay(environment(), "--version")
    assert (run.returncode, run.stderr) == (0, ""), run
    assert run.stdout == f"relay {metadata.version(DISTRIBUTION)}\n"


# Settings' warnings: logged, and the command goes on ---------------------------------------------


def settings_warnings(run: Run) -> list[str]:
    """The ``detail`` of each settings.warning line the command logged (JSON off a terminal);
    anything else on stderr fails the test."""
    lines = [json.loads(line) for line in run.error_lines]
    assert all(line["event"] == "settings.warning" for line in lines), run.stderr
    assert all(line["level"] == "warning" for line in lines), run.stderr
    return [line["detail"] for line in lines]


def test_an_unknown_variable_is_a_warning_with_the_nearest_setting(batch: Batch) -> None:
    run = batch.runs["enqueue with a typo"]
    assert run.returncode == 0, run
    assert run.stdout.strip().isdigit()  # stdout is still only the id
    assert settings_warnings(run) == [
        "RELAY_CONCURENCY: not a setting of this relay (ignored); did you mean RELAY_CONCURRENCY?"
    ]


def test_the_database_url_from_a_file_others_can_read_works_with_a_warning(
    batch: Batch,
) -> None:
    run = batch.runs["url file"]
    assert run.returncode == 0, run
    assert run.stdout.startswith(f'relay: schema "public" is at revision {head_revision()}: ')
    (warning,) = settings_warnings(run)
    assert warning.startswith("RELAY_DATABASE_URL_FILE: ")
    assert "database-url can be read by any user (mode 0644)" in warning


# relay migrate ---------------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_a_second_run_changes_nothing(batch: Batch) -> None:
    url = batch.urls["fresh"]
    first = batch.runs["fresh"]
    assert first.returncode == 0, first
    head = f'relay: schema "public" is at revision {head_revision()}'
    assert first.stdout == f"{head}: created relay's tables in it\n"
    created = schema_snapshot(url)
    assert {"outbox", "outbox_delivery", "relay_pause"} <= {row[0] for row in created["relations"]}
    with psycopg.connect(url) as connection:
        connection.execute("INSERT INTO outbox (event_type, payload) VALUES ('e', '{}')")

    second = relay(environment(RELAY_DATABASE_URL=url), "migrate")
    assert (second.returncode, second.stdout) == (0, f"{head}: already current, nothing to do\n")
    assert schema_snapshot(url) == created
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT count(*) FROM outbox").fetchone() == (1,)


def test_two_migrations_at_the_same_moment_both_succeed(batch: Batch) -> None:
    # Both were started together on one empty database; one waits for the other's lock.
    for run in (batch.runs["racing 1"], batch.runs["racing 2"]):
        assert (run.returncode, run.stderr) == (0, ""), run
        assert run.stdout.startswith('relay: schema "public" is at revision')
    # The same schema as one migration alone.
    assert schema_snapshot(batch.urls["racing"]) == schema_snapshot(batch.urls["migrated"])


def test_migrate_sql_prints_the_ddl_without_a_database(batch: Batch) -> None:
    run = batch.runs["sql"]  # RELAY_DATABASE_URL points at a port nothing listens on
    assert (run.returncode, run.stderr) == (0, ""), run
    assert run.stdout.startswith("BEGIN;")
    assert 'CREATE TABLE "public".outbox (' in run.stdout
    assert "CREATE INDEX outbox_ready_idx" in run.stdout
    assert "CREATE TRIGGER outbox_before_insert" in run.stdout
    assert run.stdout.strip().endswith("COMMIT;")


# relay enqueue ---------------------------------------------------------------------------------


def stored(url: str, row_id: int) -> tuple[Any, ...]:
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT event_type, payload, tenant, country, ordering_key FROM outbox WHERE id = %s",
            (row_id,),
        ).fetchone()
    assert row is not None, f"no outbox row {row_id}"
    return row


def printed_id(run: Run) -> int:
    assert (run.returncode, run.stderr) == (0, ""), run
    assert run.stdout.strip().isdigit(), run.stdout
    return int(run.stdout)


def test_enqueue_writes_a_row_and_prints_its_id(batch: Batch) -> None:
    row_id = printed_id(batch.runs["enqueue json"])
    event_type, payload, tenant, country, key = stored(batch.urls["migrated"], row_id)
    assert (event_type, tenant, country, key) == (
        "payment_status_updated",
        "abcinsurance",
        "dk",
        "pay-8c3a",
    )
    assert payload["payment"] == {"uuid": "8c3a", "status": "canceled"}
    assert payload["eventType"] == "payment_status_updated"
    assert payload["payloadVersion"] == "1.0.0"
    assert uuid.UUID(payload["correlationId"]).version == 4
    assert payload["timestamp"].endswith("Z")


def test_enqueue_reads_the_payload_from_a_file(batch: Batch) -> None:
    row_id = printed_id(batch.runs["enqueue file"])
    expected = ("case_created", FILE_PAYLOAD, None, None, None)
    assert stored(batch.urls["migrated"], row_id) == expected


@pytest.mark.parametrize(
    ("key", "code", "fragment"),
    [
        ("enqueue not json", 2, "not valid JSON"),
        ("enqueue bad country", 2, "relay: country 'DK' is not a lower-case two-letter code"),
    ],
)
def test_a_bad_payload_exits_non_zero_with_a_clear_line(
    batch: Batch, key: str, code: int, fragment: str
) -> None:
    run = batch.runs[key]
    assert run.returncode == code, run
    assert "Traceback" not in run.stderr, run.stderr
    assert run.stdout == ""
    assert [line for line in run.error_lines if fragment in line], run.stderr


def test_refused_events_write_nothing(batch: Batch) -> None:
    with psycopg.connect(batch.urls["migrated"]) as connection:
        rows = connection.execute("SELECT event_type FROM outbox").fetchall()
    # The three enqueued: from JSON, from a file, and the one with a misspelt setting.
    assert sorted(rows) == [("case_created",), *[("payment_status_updated",)] * 2]


def test_enqueue_before_migrate_says_to_migrate(batch: Batch) -> None:
    assert_one_line(batch.runs["enqueue unmigrated"], 5, "run 'relay migrate'")
