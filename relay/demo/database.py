"""Where the demo's events go: an embedded PostgreSQL, or a schema of the database you name.

Without ``RELAY_DATABASE_URL`` the demo starts (or joins) an embedded server, the ``pgserver``
package, in ``.relay-demo/pgdata`` and uses database ``relay_demo`` in it. With it, the demo
uses schema ``relay_demo`` of that database. Either is emptied at the start of every run.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
from rich.console import Console

from relay import database
from relay.config import Settings
from relay.errors import ConfigurationError

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
    embedded: Any = None  # the pgserver handle, when the demo started one


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            raise ConfigurationError(
                "the embedded PostgreSQL needs the 'embedded' extra: "
                "pip install 'scalepoint-outbox-relay[embedded]'"
                " (or set RELAY_DATABASE_URL to use a PostgreSQL of yours)"
            ) from None
    return pgserver


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_exited_handles(pgdata: Path) -> None:
    """pgserver stops a server only when the last process using it leaves, counting them in
    ``.handle_pids.json``; a demo killed with SIGKILL would stay there and keep every later
    run from stopping the server. Forget processes that are gone."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _process_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first)
    except (OSError, ValueError):
        return None
    return pid if _process_exists(pid) else None


def start_embedded(directory: Path) -> Any:
    """Start (or join) the embedded server in ``directory/pgdata``; stopped by ``cleanup()``.

    As root, pgserver creates a system user ``pgserver`` (useradd), gives it the data
    directory, makes every parent directory world-traversable, and runs PostgreSQL as that
    user. It listens on a Unix socket only.
    """
    pgserver = _pgserver()
    directory.mkdir(parents=True, exist_ok=True)
    pgdata = (directory / "pgdata").resolve()
    _forget_exited_handles(pgdata)
    return pgserver.get_server(pgdata, cleanup_mode="stop")


def stop_embedded(directory: Path) -> bool:
    """Stop an embedded server left running by an earlier demo; False if none was."""
    pgdata = (directory / "pgdata").resolve()
    if _postmaster_pid(pgdata) is None:
        return False
    _forget_exited_handles(pgdata)
    _pgserver().get_server(pgdata, cleanup_mode="stop").cleanup()
    return True


def _embedded_target(stack: ExitStack, console: Console) -> Target:
    with console.status(f"Starting the embedded PostgreSQL in {DEMO_DIRECTORY / 'pgdata'}"):
        server = start_embedded(DEMO_DIRECTORY)
    stack.callback(server.cleanup)
    return Target(
        url=str(server.get_uri(DEMO_DATABASE)),
        schema="public",
        description=f"an embedded PostgreSQL in {DEMO_DIRECTORY / 'pgdata'}",
        fresh=f"dropped and re-created database {DEMO_DATABASE} in it",
        embedded=server,
    )


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
        admin = await connect(str(target.embedded.get_uri()))
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
