"""Test harness: a real PostgreSQL for every test that needs one, never a mock.

The server is found in this order: ``RELAY_TEST_DATABASE_URL``; the server at 127.0.0.1:5432
when it answers; a testcontainers PostgreSQL when a Docker engine is available; otherwise an
embedded PostgreSQL, the demo's own (``relay.demo.embedded``). The schema is migrated once into
a template database; each test gets its own ``CREATE DATABASE ... TEMPLATE`` copy, dropped
afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
from hypothesis import settings as hypothesis_settings

from relay.schema import migrate

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

# Property-based tests draw the same examples on every run (a red CI is a finding, not luck),
# take as long as a loaded machine needs, and leave no example database in the clone.
hypothesis_settings.register_profile("relay", derandomize=True, deadline=None, database=None)
hypothesis_settings.load_profile("relay")

# The relay honours HTTPS_PROXY and HTTP_PROXY; the tests' servers are all on 127.0.0.1, which a
# proxy from the developer's environment could not reach. Tests that want a proxy set one.
for _variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
    os.environ.pop(_variable, None)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:  # any failure means "no engine here"
        return False
    return True


def _find_server(stack: ExitStack) -> str:
    """An admin URL (to the 'postgres' database) of a server the tests may use."""
    explicit = os.environ.get("RELAY_TEST_DATABASE_URL")
    if explicit:
        return explicit
    if _answers("127.0.0.1", 5432):
        return LOCAL_SERVER
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        container = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
        return str(container.get_connection_url())
    from relay.demo import embedded  # the demo's own server, on the 'embedded' extra

    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-test-pg-")))
    server, _joined = embedded.start(directory)
    stack.callback(server.stop, directory)
    return server.uri()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class Databases:
    """Creates and drops per-test databases on one server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.template = f"relay_template_{os.getpid()}"
        self._drop(self.template)
        self.admin.execute(f'CREATE DATABASE "{self.template}"')
        migrate(with_database(admin_url, self.template), "public")

    def _drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create(self) -> str:
        name = f"relay_test_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def create_empty(self) -> str:
        name = f"relay_test_{uuid.uuid4().hex[:12]}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop(self, name: str) -> None:
        self._drop(name)

    def close(self) -> None:
        self._drop(self.template)
        self.admin.close()


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    with ExitStack() as stack:
        dbs = Databases(_find_server(stack))
        stack.callback(dbs.close)
        yield dbs


@pytest.fixture
def database_url(databases: Databases) -> Iterator[str]:
    """URL of a fresh, migrated database that only this test uses."""
    name = databases.create()
    yield with_database(databases.admin_url, name)
    databases.drop(name)


@pytest.fixture
def second_database_url(databases: Databases) -> Iterator[str]:
    """Another fresh, migrated database, for a test that runs two relays apart at once."""
    name = databases.create()
    yield with_database(databases.admin_url, name)
    databases.drop(name)


@pytest.fixture
def empty_database_url(databases: Databases) -> Iterator[str]:
    """URL of a fresh database with no outbox table."""
    name = databases.create_empty()
    yield with_database(databases.admin_url, name)
    databases.drop(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to this test's database."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()
