"""Where the demo's events go: an embedded PostgreSQL, or a schema of the database you name.

Without ``RELAY_DATABASE_URL`` the demo starts (or joins) an embedded server
(``relay.demo.embedded``) in ``.relay-demo/pgdata`` and uses database ``relay_demo`` in it.
With it, the demo uses schema ``relay_demo`` of that database. Either is emptied at the start
of every run.
"""

from __future__ import annotations

import contextlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg
from rich.console import Console

from relay import database
from relay.config import Settings
from relay.demo import embedded
from relay.demo.embedded import EmbeddedServer

DEMO_DIRECTORY = Path(".relay-demo")
DEMO_DATABASE = "relay_demo"  # in the embedded server: dropped and created each run
DEMO_SCHEMA = "relay_demo"  # in a database named by RELAY_DATABASE_URL: dropped each run


@dataclass
class Target:
    """The database the demo uses, and how to describe it."""

    url: str
    schema: str
    description: str
    fresh: str
    embedded: EmbeddedServer | None = None  # the demo's own server, when it uses one
    joined: bool = False  # that server was running before the demo: left running afterwards
    keep: bool = False  # leave it running afterwards (--keep)

    def stop_unless_kept(self) -> None:
        if self.embedded is not None and not self.keep and not self.joined:
            self.embedded.stop(DEMO_DIRECTORY)

    @property
    def left_running(self) -> bool:
        return self.embedded is not None and (self.keep or self.joined)


def stop_embedded(directory: Path) -> EmbeddedServer | None:
    """Stop an embedded server left running by an earlier demo; the server, None if none was."""
    server = embedded.running_server(directory)
    if server is None:
        return None
    server.stop(directory)
    return server


def _embedded_target(stack: ExitStack, console: Console) -> Target:
    with console.status("Starting the embedded PostgreSQL"):
        server, joined = embedded.start(DEMO_DIRECTORY)
    target = Target(
        url=server.uri(DEMO_DATABASE),
        schema="public",
        description=_described(server, joined),
        fresh=f"dropped and re-created database {DEMO_DATABASE} in it",
        embedded=server,
        joined=joined,
    )
    stack.callback(target.stop_unless_kept)
    return target


def _described(server: EmbeddedServer, joined: bool) -> str:
    where = Path(server.pgdata)
    with contextlib.suppress(ValueError):
        where = where.relative_to(Path.cwd())
    text = f"an embedded PostgreSQL in {where}"
    if server.user is not None:
        text += f" (as user {server.user}: PostgreSQL refuses root; removed when it stops)"
    if joined:
        text += ", already running: left running afterwards"
    return text


def _external_target(url: str) -> Target:
    return Target(
        url=url,
        schema=DEMO_SCHEMA,
        description=f"the database of RELAY_DATABASE_URL ({_where(url)})",
        fresh=f'dropped and re-created schema "{DEMO_SCHEMA}" in it; no other schema is touched',
    )


def _where(url: str) -> str:
    """Host, port and database of a URL, never its password."""
    parts = urlsplit(database.asyncpg_dsn(url))
    host = parts.hostname or dict(parse_qsl(parts.query)).get("host", "localhost")
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


async def start_fresh(target: Target) -> None:
    """Every run starts empty: a new database (embedded) or a new schema (yours)."""
    if target.embedded is not None:
        admin = await connect(target.embedded.uri())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
        finally:
            await admin.close()
        return
    connection = await connect(target.url)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')
    finally:
        await connection.close()


async def connect(url: str) -> asyncpg.Connection:
    """One connection to ``url``; a failure explained as the relay explains it."""
    try:
        return await asyncpg.connect(database.asyncpg_dsn(url), timeout=10)
    except database.DATABASE_ERRORS as error:  # unreachable, or refused: login, database
        raise database.describe_connection_error(url, error) from None


def choose_target(settings: Settings, stack: ExitStack, console: Console) -> Target:
    """The database of RELAY_DATABASE_URL when it is set, else the embedded server (started)."""
    if settings.database_url:
        return _external_target(settings.database_url)
    return _embedded_target(stack, console)
