"""Least privilege: roles of their own, in a database of its own. Each test drops its database
and then its roles (roles belong to the whole server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from relay.database import (
    head_revision,
)
from tests.conftest import Databases, with_database
from tests.helpers.commands import Run, relay, relay_env

DOC_NAMES = ("relay_migrator", "relay_runtime", "billing_app", "insurer")
PASSWORD = "pw-for-a-test-role"
SCHEMA = "relay"


@dataclass
class Insurer:
    """A database of its own and roles of its own."""

    databases: Databases
    database: str
    names: dict[str, str]  # a role (or "insurer") -> its name in this test

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


def succeeded(run: Run) -> str:
    assert run.code == 0, run
    assert "Traceback" not in run.stderr, run.stderr
    return run.stdout


# relay migrate: the schema only when missing, and one line for a right it lacks ----------


async def test_migrate_without_create_on_the_database(insurer: Insurer) -> None:
    migrator = insurer.create_role("relay_migrator")
    env = insurer.env("relay_migrator")

    missing = await relay(env, "migrate")
    missing.one_line(
        2,
        f"relay: schema \"relay\" does not exist and the role '{migrator}' may not create it "
        f'(no CREATE on database "{insurer.database}"): have it created for the role '
        f"(CREATE SCHEMA relay AUTHORIZATION {migrator}), see docs/database.md",
    )

    insurer.run(f'CREATE SCHEMA relay AUTHORIZATION "{migrator}"')
    owned = await relay(env, "migrate")
    assert succeeded(owned) == f'relay: schema "relay" is at revision {head_revision()}\n'


async def test_migrate_in_a_schema_the_role_may_not_change(insurer: Insurer) -> None:
    role = insurer.create_role("relay_runtime")
    insurer.run(f'CREATE SCHEMA relay; GRANT USAGE ON SCHEMA relay TO "{role}"')
    run = await relay(insurer.env("relay_runtime"), "migrate")
    run.one_line(
        2,
        "relay: permission denied for schema relay (SQLSTATE 42501): "
        f"the role '{role}' needs the migration grants in docs/database.md",
    )
