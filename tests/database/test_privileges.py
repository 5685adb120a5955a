"""Least privilege: the three roles of docs/database.md, with exactly the grants it prints.

The SQL blocks are read from the document and run as they stand (the names made unique per
test: roles belong to the whole server). The database first loses what PostgreSQL gives every
role by default (CONNECT and TEMP on the database, USAGE on schema public, EXECUTE on new
functions), so the documented grants alone carry the commands. Each test drops its database
and then its roles.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

from relay.cli import error_boundary
from relay.errors import PrivilegeMissing
from relay.outbox import enqueue_async
from relay.schema import (
    APPLICATION_GRANTS,
    RUNTIME_GRANTS,
    check_schema,
    head_revision,
    migrate,
    missing_grants,
)
from tests.conftest import Databases, with_database
from tests.helpers.commands import Run, relay, relay_env
from tests.helpers.engine import payload
from tests.helpers.partner import CLIENT_ID, CLIENT_SECRET, running

DOC = Path(__file__).resolve().parents[2] / "docs" / "database.md"
DOC_NAMES = ("relay_migrator", "relay_runtime", "billing_app", "insurer")
PASSWORD = "pw-for-a-test-role"
SCHEMA = "relay"


def sql_block(first_line: str) -> str:
    """The ```sql block of docs/database.md that starts with ``first_line``."""
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/database.md has no single block starting {first_line!r}"
    block: str = found[0]
    return block


DBA_BLOCK = "-- As a DBA, once, in database insurer: the roles and the schema."
RUNTIME_BLOCK = "-- As relay_migrator, after 'relay migrate': the runtime role."
APPLICATION_BLOCK = "-- As relay_migrator, after 'relay migrate': the application role."


@dataclass
class Insurer:
    """A database of its own and roles of its own, named as docs/database.md names them."""

    databases: Databases
    database: str
    names: dict[str, str]  # the document's name -> this test's

    def sql(self, text: str) -> str:
        pattern = r"\b(" + "|".join(DOC_NAMES) + r")\b"
        return re.sub(pattern, lambda match: self.names[match.group(1)], text)

    def role(self, name: str) -> str:
        return self.names[name]

    def url(self, role: str | None = None) -> str:
        """The database's URL, as the server's admin or as one of the test's roles."""
        url = with_database(self.databases.admin_url, self.database)
        if role is None:
            return url
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"{self.role(role)}:{PASSWORD}@{host}:{parts.port or 5432}"
        return urlunsplit(parts._replace(netloc=netloc))

    def run(self, sql: str, role: str | None = None) -> None:
        with psycopg.connect(self.url(role), autocommit=True) as connection:
            connection.execute(sql.encode())

    def create_role(self, name: str) -> str:
        self.databases.admin.execute(f'CREATE ROLE "{self.role(name)}" LOGIN')
        self.set_password(name)
        return self.role(name)

    def set_password(self, name: str) -> None:
        self.databases.admin.execute(f"ALTER ROLE \"{self.role(name)}\" PASSWORD '{PASSWORD}'")

    def env(self, role: str, **extra: str) -> dict[str, str]:
        return relay_env(self.url(role), SCHEMA, **extra)


@pytest.fixture
def insurer(databases: Databases) -> Iterator[Insurer]:
    database = databases.create_empty()
    suffix = uuid.uuid4().hex[:8]
    names = {name: f"{name}_{suffix}" for name in DOC_NAMES[:3]}
    names["insurer"] = database
    try:
        yield Insurer(databases, database, names)
    finally:
        databases.drop(database)  # first: it holds the roles' privileges and objects
        for name in DOC_NAMES[:3]:
            databases.admin.execute(f'DROP ROLE IF EXISTS "{names[name]}"')


def harden(insurer: Insurer) -> None:
    """Take away what PostgreSQL gives every role by default, so only the grants count."""
    migrator = insurer.role("relay_migrator")
    insurer.run(
        f'REVOKE ALL ON DATABASE "{insurer.database}" FROM PUBLIC;'
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;"
        f'ALTER DEFAULT PRIVILEGES FOR ROLE "{migrator}" REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;'
    )


PARTNER = {
    "RELAY_COUNTRY": "dk",
    "RELAY_TENANT": "abcinsurance",
    "RELAY_CLIENT_ID": CLIENT_ID,
    "RELAY_CLIENT_SECRET": CLIENT_SECRET,
    "RELAY_HTTP_PORT": "0",
    "RELAY_HTTP_HOST": "127.0.0.1",
    "RELAY_BACKOFF_BASE": "10ms",
    "RELAY_BACKOFF_CAP": "100ms",
    "RELAY_POLL_INTERVAL": "500ms",
}


def partner_env(base_url: str) -> dict[str, str]:
    return {
        **PARTNER,
        "RELAY_TOKEN_URL": base_url + "/connect/token",
        "RELAY_API_BASE_URL": base_url,
    }


# The document's grants are the code's ------------------------------------------------------


def test_the_documented_grants_are_what_the_relay_checks() -> None:
    lines = sql_block(RUNTIME_BLOCK).splitlines()[1:]
    assert lines == [grant.sql(SCHEMA, "relay_runtime") for grant in RUNTIME_GRANTS]
    lines = sql_block(APPLICATION_BLOCK).splitlines()[1:]
    assert lines == [grant.sql(SCHEMA, "billing_app") for grant in APPLICATION_GRANTS]


def test_every_relay_object_is_in_the_runtime_grants(database_url: str) -> None:
    """A migration that adds a table, sequence or function adds it to RUNTIME_GRANTS (and so
    to docs/database.md), or says here why the runtime role does not need it."""
    not_needed = {
        "outbox_before_insert()",  # trigger functions run without EXECUTE
        "outbox_notify()",
        "inbox_notify()",
        "outbox_delivery_id_seq",  # an identity column needs no grant on its sequence
        "relay_admin_log_id_seq",
        "inbox_id_seq",
    }
    with psycopg.connect(database_url) as connection:
        relations = connection.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'p')"
        ).fetchall()
        functions = connection.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        ).fetchall()
    found = {row[0] for row in relations} | {row[0] for row in functions}
    granted = {name.replace(", ", ",") for grant in RUNTIME_GRANTS for name in grant.names}
    assert found - not_needed == granted


# The three roles, end to end ---------------------------------------------------------------


async def produce(url: str) -> None:
    """What an application does with its grants: plain INSERTs and the producer API, keyed and
    not, one of them an event the relay will refuse; and nothing more."""
    connection = await asyncpg.connect(url)
    try:
        for key in (None, "claim-1", "claim-1", "claim-2"):
            await connection.fetchval(
                "INSERT INTO relay.outbox (event_type, payload, ordering_key) "
                "VALUES ('payment_status_updated', $1::jsonb, $2) RETURNING id",
                json.dumps(payload()),
                key,
            )
        async with connection.transaction():
            for key in (None, "claim-2"):
                await enqueue_async(
                    connection,
                    "case_created",
                    {"case": {"number": "CLM-42"}},
                    ordering_key=key,
                    schema=SCHEMA,
                )
        # No envelope: dead at once, without a request.
        await connection.execute(
            "INSERT INTO relay.outbox (event_type, payload) VALUES ('case_created', '{}')"
        )
        for statement in (
            "SELECT payload FROM relay.outbox",
            "UPDATE relay.outbox SET status = 'dead'",
            "DELETE FROM relay.outbox",
            "SELECT * FROM relay.outbox_delivery",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
    finally:
        await connection.close()


async def cannot_change_the_schema(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in (
            "CREATE TABLE relay.extra (id int)",
            "ALTER TABLE relay.outbox ADD COLUMN extra int",
            "ALTER TABLE relay.outbox DROP CONSTRAINT outbox_route_check",
            "DROP TABLE relay.relay_pause",
            "TRUNCATE relay.outbox",
            "CREATE INDEX extra_idx ON relay.outbox (tenant)",
            "DROP FUNCTION relay.outbox_key_ready(text, bigint, boolean)",
            "UPDATE relay.relay_alembic_version SET version_num = '0001'",
            "CREATE TABLE public.extra (id int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
    finally:
        await connection.close()


async def dead_id(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        found: int = await connection.fetchval("SELECT id FROM relay.outbox WHERE status = 'dead'")
    finally:
        await connection.close()
    return found


async def counts(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT status, count(*) AS n FROM relay.outbox GROUP BY 1")
    finally:
        await connection.close()
    return {row["status"]: row["n"] for row in rows}


def succeeded(run: Run) -> str:
    assert run.code == 0, run
    assert "Traceback" not in run.stderr, run.stderr
    return run.stdout


async def test_the_documented_grants_carry_every_command(insurer: Insurer) -> None:
    insurer.run(insurer.sql(sql_block(DBA_BLOCK)))
    for name in DOC_NAMES[:3]:
        insurer.set_password(name)
    harden(insurer)
    migrator = insurer.role("relay_migrator")

    # The migration role owns the schema and may not create schemas in the database.
    migrated = await relay(insurer.env("relay_migrator"), "migrate")
    assert succeeded(migrated) == (
        f'relay: schema "relay" is at revision {head_revision()}: created relay\'s tables in it\n'
    )
    insurer.run(insurer.sql(sql_block(RUNTIME_BLOCK)), "relay_migrator")
    insurer.run(insurer.sql(sql_block(APPLICATION_BLOCK)), "relay_migrator")
    with psycopg.connect(insurer.url()) as connection:
        rights = connection.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CREATE'), "
            "has_function_privilege(%s, 'relay.outbox_key_ready(text, bigint, boolean)', "
            "'EXECUTE')",
            (migrator, insurer.role("billing_app")),
        ).fetchone()
    assert rights == (False, False)  # nor does PUBLIC lend the application EXECUTE

    await produce(insurer.url("billing_app"))

    async with running() as emulator:
        env = insurer.env("relay_runtime", **partner_env(emulator.base_url))
        drained = await relay(env, "run", "--drain")
        assert drained.code == 0, drained.stderr[-3000:]
        assert await counts(insurer.url()) == {"published": 6, "dead": 1}

        # Every operator command, as the runtime role: first those that only read ...
        dead = await dead_id(insurer.url())
        reads = [
            ("status",),
            ("dead", "list"),
            ("dead", "show", str(dead)),
            ("pause", "list"),
            ("migrate", "--check"),
            ("migrate",),  # current: nothing to do, and nothing it may not do
        ]
        for command, run in zip(
            reads, await asyncio.gather(*(relay(env, *args) for args in reads)), strict=True
        ):
            assert run.code == 0, (command, run)
        # ... then those that write, and the relay again.
        for command in (
            ("purge", "--older-than", "0s"),
            ("requeue", "--all-dead"),
            ("pause", "clear", "--all"),
            ("enqueue", "case_created", "--payload", '{"case": {}}', "--ordering-key", "k"),
        ):
            succeeded(await relay(env, *command))
        drained_again = await relay(env, "run", "--drain")
        assert drained_again.code == 0, drained_again.stderr[-3000:]
        assert await counts(insurer.url()) == {"published": 1, "dead": 1}

    await cannot_change_the_schema(insurer.url("relay_runtime"))


# Missing rights: one line each -------------------------------------------------------------


async def test_migrate_without_create_on_the_database(insurer: Insurer) -> None:
    migrator = insurer.create_role("relay_migrator")
    env = insurer.env("relay_migrator")

    missing = await relay(env, "migrate")
    missing.one_line(
        4,
        f"relay: schema \"relay\" does not exist and the role '{migrator}' may not create it "
        f'(no CREATE on database "{insurer.database}"): have it created for the role '
        f"(CREATE SCHEMA relay AUTHORIZATION {migrator}), see docs/database.md",
    )

    insurer.run(f'CREATE SCHEMA relay AUTHORIZATION "{migrator}"')
    owned = await relay(env, "migrate")
    assert succeeded(owned) == (
        f'relay: schema "relay" is at revision {head_revision()}: created relay\'s tables in it\n'
    )


async def test_migrate_in_a_schema_the_role_may_not_change(insurer: Insurer) -> None:
    role = insurer.create_role("relay_runtime")
    insurer.run(f'CREATE SCHEMA relay; GRANT USAGE ON SCHEMA relay TO "{role}"')
    run = await relay(insurer.env("relay_runtime"), "migrate")
    run.one_line(
        4,
        "relay: permission denied for schema relay (SQLSTATE 42501): "
        f"the role '{role}' needs the migration grants in docs/database.md",
    )


@pytest.fixture
async def migrated(insurer: Insurer) -> Insurer:
    """The schema migrated by the server's admin; the runtime role created, without grants."""
    await asyncio.to_thread(migrate, insurer.url(), SCHEMA)
    insurer.create_role("relay_runtime")
    return insurer


def grant_runtime(insurer: Insurer, *revoked: str) -> None:
    """The documented runtime grants, then ``revoked`` taken back."""
    block = sql_block(RUNTIME_BLOCK).replace("relay_runtime", insurer.role("relay_runtime"))
    role = insurer.role("relay_runtime")
    insurer.run(block + "".join(f'REVOKE {right} FROM "{role}";' for right in revoked))


async def test_status_and_run_without_rights_on_outbox(migrated: Insurer) -> None:
    grant_runtime(migrated, "ALL ON relay.outbox")
    role = migrated.role("relay_runtime")
    env = migrated.env("relay_runtime", **partner_env("http://127.0.0.1:9"))
    expected = (
        f"relay: the role '{role}' lacks SELECT, INSERT, UPDATE, DELETE on table relay.outbox: "
        "it needs the runtime grants in docs/database.md"
    )
    status, run, enqueued = await asyncio.gather(
        relay(env, "status"),
        relay(env, "run"),
        relay(env, "enqueue", "case_created", "--payload", "{}"),
    )
    assert status.one_line(4) == expected
    assert run.one_line(4) == expected
    enqueued.one_line(
        4,
        "relay: permission denied for table outbox (SQLSTATE 42501): "
        f"the role '{role}' needs the grants in docs/database.md",
    )


async def test_a_role_without_the_schema_is_told_which_right(migrated: Insurer) -> None:
    role = migrated.role("relay_runtime")
    run = await relay(migrated.env("relay_runtime"), "status")
    run.one_line(
        4,
        f"relay: the role '{role}' lacks USAGE on schema relay: "
        "it needs the runtime grants in docs/database.md",
    )
    migrated.run(f'GRANT USAGE ON SCHEMA relay TO "{role}"')
    checked = await relay(migrated.env("relay_runtime"), "migrate", "--check")
    checked.one_line(4, "lacks SELECT on table relay.relay_alembic_version")


@pytest.mark.parametrize(
    ("revoked", "lacking"),
    [
        ((), []),
        (("DELETE ON relay.outbox",), ["DELETE on table relay.outbox"]),
        (
            ("UPDATE ON relay.relay_pause", "USAGE ON SEQUENCE relay.outbox_id_seq"),
            ["UPDATE on table relay.relay_pause", "USAGE on sequence relay.outbox_id_seq"],
        ),
        (
            ("EXECUTE ON FUNCTION relay.outbox_key_ready(text, bigint, boolean)",),
            ["EXECUTE on function relay.outbox_key_ready(text, bigint, boolean)"],
        ),
    ],
)
async def test_the_start_check_names_each_missing_right(
    migrated: Insurer, revoked: tuple[str, ...], lacking: list[str]
) -> None:
    grant_runtime(migrated, *revoked)
    # EXECUTE comes from PUBLIC too unless the database revokes that default.
    migrated.run("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC")
    if not any("EXECUTE" in right for right in revoked):
        migrated.run(
            "GRANT EXECUTE ON FUNCTION relay.outbox_key_ready(text, bigint, boolean) "
            f'TO "{migrated.role("relay_runtime")}"'
        )
    connection = await asyncpg.connect(migrated.url("relay_runtime"))
    try:
        assert await missing_grants(connection, SCHEMA, RUNTIME_GRANTS) == lacking
        if lacking:
            with pytest.raises(PrivilegeMissing, match=re.escape("; ".join(lacking))):
                await check_schema(connection, SCHEMA)
        else:
            await check_schema(connection, SCHEMA)
    finally:
        await connection.close()


def test_a_right_refused_after_the_start_is_one_line_too(
    migrated: Insurer, capsys: pytest.CaptureFixture[str]
) -> None:
    grant_runtime(migrated)

    @error_boundary
    def command() -> None:
        async def statement() -> None:
            connection = await asyncpg.connect(migrated.url("relay_runtime"))
            try:
                await connection.execute("TRUNCATE relay.outbox")
            finally:
                await connection.close()

        asyncio.run(statement())

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == 4  # the database refused us
    assert capsys.readouterr().err == (
        "relay: permission denied for table outbox (SQLSTATE 42501): "
        "the role needs the grants in docs/database.md\n"
    )
