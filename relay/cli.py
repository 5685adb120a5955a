"""The ``relay`` command. One error boundary turns known errors into one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click

from relay import database
from relay.config import Settings, load_settings
from relay.errors import RelayError

P = ParamSpec("P")
R = TypeVar("R")


def error_boundary(function: Callable[P, R]) -> Callable[P, R]:
    """Print a RelayError as one line (with its causes) and exit with its code; no traceback."""

    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except RelayError as error:
            message = str(error)
            cause = error.__cause__
            while cause is not None:
                message += f" (caused by {type(cause).__name__}: {cause})"
                cause = cause.__cause__
            click.echo(f"relay: {message}", err=True)
            sys.exit(error.exit_code)

    return wrapper


def settings_from_env(**overrides: object) -> Settings:
    return load_settings(**overrides)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def main() -> None:
    """Deliver events from the insurer's outbox table to Scalepoint's EventApi.

    Configuration comes from RELAY_* environment variables (see README.md).
    """


@main.command()
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (for a DBA).")
@error_boundary
def migrate(sql: bool) -> None:
    """Create or upgrade the outbox schema (RELAY_DATABASE_URL, RELAY_SCHEMA).

    Safe to run from several replicas at once; a no-op when the schema is current.
    """
    settings = settings_from_env()
    if sql:
        click.echo(database.migration_sql(settings.schema_name))
        return
    database.migrate(settings.require_database_url(), settings.schema_name)
    click.echo(f'relay: schema "{settings.schema_name}" is at revision {database.head_revision()}')


@main.command()
@error_boundary
def check() -> None:
    """Check the partner settings: load key material and fetch a token; send no event.

    Prints the token endpoint, client id, auth method, scope, token lifetime and the default
    publish URL. Exits non-zero with the fix in one line when anything is wrong.
    """
    import asyncio

    from relay import logs
    from relay.check import run_check

    settings = settings_from_env()
    # The report and the one-line error are the output; log lines only when asked for.
    logs.configure("debug" if settings.log_level == "debug" else "error", settings.log_format)
    report = asyncio.run(run_check(settings))
    for line in report.lines():
        click.echo(line)
    click.echo("relay: check passed")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8099, show_default=True, help="Port (0: any free port).")
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="ID:SECRET",
    help="A client_secret client (repeatable; default RELAY_CLIENT_ID/RELAY_CLIENT_SECRET).",
)
@click.option(
    "--certificate",
    "certificates",
    multiple=True,
    metavar="ID:PEM_FILE",
    help="A private_key_jwt certificate (repeatable, several per client for rotation).",
)
@click.option("--audience", default=None, help="An extra accepted assertion audience.")
@click.option("--route", "routes", multiple=True, metavar="COUNTRY/TENANT", help="Allow-list.")
@click.option("--token-lifetime", default=3600.0, show_default=True, help="expires_in, seconds.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Added send latency.")
@click.option("--error-rate", default=0.0, show_default=True, help="Fraction answered in error.")
@click.option("--error-status", default=503, show_default=True, help="Status for --error-rate.")
@click.option("--drop-rate", default=0.0, show_default=True, help="Fraction of dropped sends.")
@error_boundary
def emulator(
    host: str,
    port: int,
    clients: tuple[str, ...],
    certificates: tuple[str, ...],
    audience: str | None,
    routes: tuple[str, ...],
    token_lifetime: float,
    latency_ms: float,
    error_rate: float,
    error_status: int,
    drop_rate: float,
) -> None:
    """Run a local stand-in for Scalepoint's token endpoint and EventApi.

    Faults can also be changed while it runs: POST /_emulator/faults with a JSON object,
    DELETE /_emulator/faults, POST /_emulator/revoke, POST /_emulator/reset,
    GET /_emulator/stats and GET /_emulator/events.
    """
    import asyncio

    from relay import emulator as emulation

    faults = emulation.Faults(
        token_lifetime=token_lifetime,
        latency_ms=latency_ms,
        error_rate=error_rate,
        error_status=error_status,
        drop_rate=drop_rate,
    )
    config = emulation.config_from_options(clients, certificates, routes, audience, faults)

    def announce(line: str) -> None:
        click.echo(f"relay emulator: {line}")

    asyncio.run(emulation.serve(emulation.Emulator(config), host, port, announce))
