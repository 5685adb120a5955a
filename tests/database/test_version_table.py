"""relay's revision lives in relay_alembic_version, beside an application's own Alembic.

The application here is a real, throwaway Alembic environment in the test's tmp dir, with its
own ``alembic_version`` in the same schema, a revision named ``0001`` (as relay's first is) and
one with a random id; it runs through Alembic's command API against the test database. An
older relay's layout (its revision in ``alembic_version``) is made by running relay's own
migrations the way relays before this one did.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import asyncpg
import psycopg
import pytest
from alembic import command
from alembic.config import Config

from relay.errors import SchemaNotReady
from relay.schema import (
    REVISIONS,
    Migrated,
    check_schema,
    downgrade,
    head_revision,
    migrate,
    migration_sql,
    schema_state,
)
from tests.conftest import Databases, with_database
from tests.helpers.commands import RELAY, relay, relay_env
from tests.helpers.schema import relations, schema_snapshot

APPLICATION_ENV = """
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

REVISION = """
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE {table} (id bigint PRIMARY KEY)")


def downgrade() -> None:
    op.execute("DROP TABLE {table}")
"""

# relay's env.py as relays before relay_alembic_version had it: Alembic's default version table.
OLDER_RELAY_ENV = """
from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config
schema = config.attributes["schema"]
engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, version_table_schema=schema, transactional_ddl=True)
    with context.begin_transaction():
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.run_migrations()
engine.dispose()
"""


def psycopg_url(url: str) -> str:
    return "postgresql+psycopg://" + url.removeprefix("postgresql://")


def read_versions(url: str, table: str = "alembic_version") -> list[str] | None:
    """The revisions in public.<table>; None when there is no such table."""
    with psycopg.connect(url) as connection:
        found = connection.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()
        if found is None or found[0] is None:
            return None
        rows = connection.execute(f"SELECT version_num FROM public.{table} ORDER BY 1")
        return [row[0] for row in rows]


class Application:
    """An application's own Alembic environment: revision 0001 (app_account), then one with a
    random id (app_claim), kept in alembic_version in the public schema."""

    def __init__(self, directory: Path, url: str, env: str = APPLICATION_ENV) -> None:
        self.head = uuid.uuid4().hex[:12]
        versions = directory / "versions"
        versions.mkdir(parents=True)
        (directory / "env.py").write_text(env, encoding="utf-8")
        for revision, down, table in (
            ("0001", None, "app_account"),
            (self.head, "0001", "app_claim"),
        ):
            text = REVISION.format(revision=revision, down=down, table=table)
            (versions / f"{revision}_{table}.py").write_text(text, encoding="utf-8")
        self.config = Config()
        self.config.set_main_option("script_location", str(directory))
        self.config.set_main_option("sqlalchemy.url", psycopg_url(url))
        self.url = url

    def upgrade(self, revision: str = "head") -> None:
        command.upgrade(self.config, revision)

    def revisions(self) -> list[str] | None:
        return read_versions(self.url)


def older_relay_migrate(directory: Path, url: str, revision: str) -> None:
    """Migrate to ``revision`` as relays before this one did: the revision in alembic_version."""
    directory.mkdir()
    (directory / "env.py").write_text(OLDER_RELAY_ENV, encoding="utf-8")
    config = Config()
    config.set_main_option("script_location", str(directory))
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", str(resources.files("relay.migrations") / "versions")
    )
    config.set_main_option("sqlalchemy.url", psycopg_url(url))
    config.attributes["schema"] = "public"
    command.upgrade(config, revision)


@pytest.fixture
def application(tmp_path: Path, empty_database_url: str) -> Application:
    return Application(tmp_path / "application", empty_database_url)


@pytest.fixture
def fresh_url(databases: Databases) -> Iterator[str]:
    """A database migrated by this relay alone, to compare against."""
    name = databases.create()
    yield with_database(databases.admin_url, name)
    databases.drop(name)


async def check(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await check_schema(connection, "public")
    finally:
        await connection.close()


# Beside the application's Alembic, in either order -------------------------------------------


@pytest.mark.parametrize("first", ["application at 0001", "application at head", "relay"])
def test_relay_and_the_applications_alembic_migrate_in_either_order(
    application: Application, empty_database_url: str, first: str
) -> None:
    url = empty_database_url
    if first == "application at 0001":
        application.upgrade("0001")
    elif first == "application at head":
        application.upgrade("head")
    found = application.revisions()

    assert migrate(url, "public") == Migrated(None, head_revision(), carried_over=False)
    assert application.revisions() == found  # relay neither read nor wrote it
    application.upgrade("head")  # and the application's own upgrade still works after it

    assert application.revisions() == [application.head]
    assert read_versions(url, "relay_alembic_version") == [head_revision()]
    assert {"app_account", "app_claim", "outbox", "relay_pause"} <= relations(schema_snapshot(url))
    asyncio.run(check(url))  # relay run and the operator commands start
    before = schema_snapshot(url)
    assert migrate(url, "public") == Migrated(head_revision(), head_revision(), False)
    assert schema_snapshot(url) == before


def test_the_application_keeps_its_own_history_after_relay(
    application: Application, empty_database_url: str
) -> None:
    migrate(empty_database_url, "public")
    application.upgrade("head")
    command.downgrade(application.config, "0001")
    assert application.revisions() == ["0001"]
    command.downgrade(application.config, "base")
    assert application.revisions() == []
    asyncio.run(check(empty_database_url))


def test_the_applications_env_py_can_run_relay_migrate(
    tmp_path: Path, empty_database_url: str
) -> None:
    # docs/database.md, "One deploy step for both": one 'alembic upgrade head' does both.
    env = APPLICATION_ENV + (
        "\nimport os, subprocess\n\n"
        f"relay = {RELAY!r}\n"
        f"environment = {{**os.environ, 'RELAY_DATABASE_URL': {empty_database_url!r}, "
        "'RELAY_SCHEMA': 'relay'}\n"
        "subprocess.run([relay, 'migrate'], env=environment, check=True)\n"
    )
    application = Application(tmp_path / "application", empty_database_url, env)
    application.upgrade("head")
    application.upgrade("head")
    assert application.revisions() == [application.head]
    assert relations(schema_snapshot(empty_database_url)) == {
        "alembic_version",
        "alembic_version_pkc",
        "app_account",
        "app_account_pkey",
        "app_claim",
        "app_claim_pkey",
    }
    assert schema_snapshot(empty_database_url, "relay")["revision"] == [(head_revision(),)]


# An older relay's layout: its revision in alembic_version --------------------------------------


@pytest.mark.parametrize("revision", REVISIONS)
def test_an_older_relays_revision_moves_to_its_own_table(
    tmp_path: Path, empty_database_url: str, fresh_url: str, revision: str
) -> None:
    url = empty_database_url
    older_relay_migrate(tmp_path / "older", url, revision)
    with psycopg.connect(url) as connection:
        connection.execute("INSERT INTO outbox (event_type, payload) VALUES ('e', '{}')")
    assert read_versions(url) == [revision]

    assert migrate(url, "public") == Migrated(revision, head_revision(), carried_over=True)

    # alembic_version held relay's revision alone, so it was relay's: it goes. What is left is
    # exactly what this relay makes in an empty database.
    assert read_versions(url) is None
    assert schema_snapshot(url) == schema_snapshot(fresh_url)
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT count(*) FROM outbox").fetchone() == (1,)


def test_a_shared_alembic_version_keeps_what_else_it_holds(
    tmp_path: Path, empty_database_url: str
) -> None:
    url = empty_database_url
    older_relay_migrate(tmp_path / "older", url, head_revision())
    with psycopg.connect(url) as connection:
        connection.execute("INSERT INTO alembic_version VALUES ('b7d1e0c2a9f4')")

    assert migrate(url, "public").carried_over
    assert read_versions(url, "relay_alembic_version") == [head_revision()]
    assert read_versions(url) == sorted([head_revision(), "b7d1e0c2a9f4"])


def test_an_application_at_0001_is_not_taken_for_relay(
    application: Application, empty_database_url: str
) -> None:
    application.upgrade("0001")
    assert migrate(empty_database_url, "public") == Migrated(None, head_revision(), False)
    assert application.revisions() == ["0001"]


async def test_the_older_layout_stops_relay_run_with_one_line(
    tmp_path: Path, empty_database_url: str
) -> None:
    await asyncio.to_thread(older_relay_migrate, tmp_path / "older", empty_database_url, "0002")
    connection = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(SchemaNotReady) as refused:
            await check_schema(connection, "public")
        state = await schema_state(connection, "public")
    finally:
        await connection.close()
    assert str(refused.value) == (
        'the outbox schema "public" is at revision 0002 in alembic_version, the application\'s '
        f"Alembic table (an older relay's layout), this relay needs {head_revision()} in "
        "relay_alembic_version: run 'relay migrate'"
    )
    assert (state.shared, state.shared_revision, state.revision) == (True, "0002", None)


# relay migrate --check and --sql ---------------------------------------------------------------


async def test_check_passes_at_head_and_changes_nothing(database_url: str) -> None:
    before = schema_snapshot(database_url)
    run = await relay(relay_env(database_url), "migrate", "--check")
    assert (run.code, run.stdout, run.stderr) == (
        0,
        f'relay: schema "public" is at revision {head_revision()}\n',
        "",
    )
    assert schema_snapshot(database_url) == before


async def test_check_names_both_revisions_when_behind(database_url: str) -> None:
    await asyncio.to_thread(downgrade, database_url, "public", "0001")
    before = schema_snapshot(database_url)
    run = await relay(relay_env(database_url), "migrate", "--check")
    run.one_line(
        3,
        'relay: the outbox schema "public" is at revision 0001, this relay needs '
        f"{head_revision()}: run 'relay migrate'",
    )
    assert run.stdout == ""
    assert schema_snapshot(database_url) == before


async def test_check_on_an_empty_database_and_on_an_older_layout(
    tmp_path: Path, empty_database_url: str, fresh_url: str
) -> None:
    empty = await relay(relay_env(empty_database_url), "migrate", "--check")
    empty.one_line(3, "has no relay revision (no outbox table), this relay needs")
    assert relations(schema_snapshot(empty_database_url)) == set()

    await asyncio.to_thread(older_relay_migrate, tmp_path / "older", empty_database_url, "0001")
    older = await relay(relay_env(empty_database_url), "migrate", "--check")
    older.one_line(3, "is at revision 0001 in alembic_version", "run 'relay migrate'")
    assert read_versions(empty_database_url) == ["0001"]


async def test_a_newer_relays_schema_is_left_as_it_is(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute("UPDATE relay_alembic_version SET version_num = '0099'")
    before = schema_snapshot(database_url)
    newer = f"newer than this relay's {head_revision()}: nothing to do"
    checked, migrated = await asyncio.gather(
        relay(relay_env(database_url), "migrate", "--check"),
        relay(relay_env(database_url), "migrate"),
    )
    for run in (checked, migrated):
        assert (run.code, run.stderr) == (0, ""), run
        assert run.stdout == f'relay: schema "public" is at revision 0099, {newer}\n'
    assert schema_snapshot(database_url) == before


def apply(url: str, sql: str) -> None:
    """Run a script as a DBA would with psql: its own BEGIN and COMMIT."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(sql.encode())


def test_the_sql_for_a_dba_makes_the_same_schema(empty_database_url: str, fresh_url: str) -> None:
    apply(empty_database_url, migration_sql("public"))
    assert schema_snapshot(empty_database_url) == schema_snapshot(fresh_url)


def test_the_sql_from_a_revision_carries_an_older_layout_over(
    tmp_path: Path, empty_database_url: str, fresh_url: str
) -> None:
    older_relay_migrate(tmp_path / "older", empty_database_url, "0001")
    apply(empty_database_url, migration_sql("public", "0001"))
    assert read_versions(empty_database_url) is None
    assert schema_snapshot(empty_database_url) == schema_snapshot(fresh_url)
