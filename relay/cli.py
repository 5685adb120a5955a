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
