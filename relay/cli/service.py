"""The service's commands: ``relay migrate``, ``run``, ``enqueue`` and ``check``."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import click

from relay import database, schema
from relay.cli.main import (
    configure_logging,
    error_boundary,
    main,
    settings_from_env,
)
from relay.errors import (
    ExitCode,
    InvalidEvent,
    SchemaNotReady,
)

# relay migrate --check: the schema is older than this relay (the code of errors.SchemaBehind).
BEHIND_EXIT_CODE = 3


@main.command()
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it (for a DBA).")
@click.option(
    "--from",
    "start",
    metavar="REVISION",
    help="With --sql: the revision the database is at ('relay migrate --check' names it); "
    "the SQL upgrades from there instead of from an empty schema.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing: exit 0 when the schema is at this relay's revision (or a newer "
    f"relay's), {BEHIND_EXIT_CODE} when it is older, naming both revisions.",
)
@error_boundary
def migrate(sql: bool, start: str | None, check: bool) -> None:
    """Create or upgrade the outbox schema (RELAY_DATABASE_URL, RELAY_SCHEMA).

    Safe to run from several replicas at once; a no-op when the schema is current. Creates
    RELAY_SCHEMA only when it does not exist. The revision is kept in relay_alembic_version,
    apart from the application's own Alembic (alembic_version), whatever that one does; an
    older relay's revision found in alembic_version is moved over. The roles and their grants:
    docs/database.md.

    Exit codes: 0 done (with --check: current); 2 a setting; 3 with --check: the schema is
    older than this relay; 4 the database, or a right the role lacks.
    """
    if check and sql:
        raise click.UsageError("--check reads the database and --sql needs none: pick one")
    if start is not None and not sql:
        raise click.UsageError("--from goes with --sql")
    if start is not None and start not in schema.REVISIONS:
        known = ", ".join(reversed(schema.REVISIONS))
        raise click.BadParameter(
            f"{start!r} is not a revision of this relay ({known})", param_hint="'--from'"
        )
    settings = settings_from_env()
    configure_logging(settings, floor="warning")  # what it prints is the output
    if sql:
        click.echo(schema.migration_sql(settings.schema_name, start))
        return
    name = settings.schema_name
    if check:
        click.echo(f"relay: {schema.migration_check(settings.require_database_url(), name)}")
        return
    result = schema.migrate(settings.require_database_url(), name)
    line = f'relay: schema "{name}" is at revision {result.revision}'
    if result.newer:
        line += f", {schema.newer_than_relay()}"
    else:
        line += f": {result.what_happened()}"
        if result.carried_over:
            line += (
                f" (its revision moved from {schema.SHARED_VERSION_TABLE}, the application's "
                f"Alembic table, to {schema.VERSION_TABLE})"
            )
    click.echo(line)


@main.command()
@click.option(
    "--drain",
    is_flag=True,
    help="Exit once every row is published or dead, or left because it cannot go now: 0, or 3 "
    "when rows remain (behind dead rows of their key, on routes paused after a refusal, or "
    "not due within 30 s), named in the last line.",
)
@error_boundary
def run(drain: bool) -> None:
    """Run the relay: claim, publish and record until SIGTERM (or, with --drain, until done).

    Needs RELAY_DATABASE_URL, RELAY_CLIENT_ID with a secret or key material, RELAY_COUNTRY,
    RELAY_TENANT and (in the sandbox) RELAY_API_BASE_URL. Serves /healthz, /readyz and
    /metrics on RELAY_HTTP_PORT.
    """
    from relay import daemon

    settings = settings_from_env()
    configure_logging(settings)
    report = daemon.run_loop(daemon.run(settings, drain=drain))
    if report is not None:
        click.echo(report.line())
        if report.needs_attention:
            sys.exit(ExitCode.ATTENTION)  # requeue dead rows, mend a route, or run again later


def _read_payload(value: str) -> object:
    """The --payload JSON (or @FILE). Numbers with a fraction or exponent are read as Decimal,
    so they are stored digit for digit, as the producer API stores a Decimal; a float would
    turn 12345678901234567.89 into 12345678901234568."""
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise click.BadParameter(f"cannot read {value[1:]}: {error.strerror}") from None
    try:
        return json.loads(value, parse_float=Decimal)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON: {error}") from None


@main.command()
@click.argument("event_type")
@click.option("--payload", required=True, help="The event as JSON, or @FILE to read it.")
@click.option("--tenant", default=None, help="Overrides RELAY_TENANT for this event.")
@click.option("--country", default=None, help="Overrides RELAY_COUNTRY for this event.")
@click.option("--ordering-key", default=None, help="Events of one key are sent in order.")
@error_boundary
def enqueue(
    event_type: str, payload: str, tenant: str | None, country: str | None, ordering_key: str | None
) -> None:
    """Write one event into the outbox (for operators and scripts); prints its id."""
    import asyncio

    import asyncpg

    from relay.outbox import enqueue_async

    settings = settings_from_env()
    configure_logging(settings, floor="warning")  # stdout is the new row's id
    document = _read_payload(payload)
    if not isinstance(document, dict):
        raise InvalidEvent("--payload must be a JSON object")
    url = settings.require_database_url()

    async def write() -> int:
        try:
            connection = await asyncpg.connect(database.asyncpg_dsn(url), timeout=10)
        except database.CONNECTION_ERRORS as error:
            raise database.describe_connection_error(url, error) from None
        try:
            return await enqueue_async(
                connection,
                event_type,
                document,
                tenant=tenant,
                country=country,
                ordering_key=ordering_key,
                schema=settings.schema_name,
            )
        except asyncpg.UndefinedTableError:
            raise SchemaNotReady(
                f'the outbox table does not exist in schema "{settings.schema_name}"'
            ) from None
        except database.DATABASE_ERRORS as error:
            raise database.describe_connection_error(url, error) from None
        finally:
            await connection.close()

    click.echo(asyncio.run(write()))


def _route_option(
    context: click.Context, parameter: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    from relay.ops.check import parse_route

    routes = []
    for value in values:
        try:
            routes.append(parse_route(value))
        except ValueError as problem:
            raise click.BadParameter(f"{value!r}: {problem}") from None
    return routes


@main.command()
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="COUNTRY/TENANT",
    callback=_route_option,
    help="Also prove this route (repeat for more); RELAY_COUNTRY/RELAY_TENANT are optional then.",
)
@error_boundary
def check(routes: list[tuple[str, str]]) -> None:
    """Prove the partner settings: fetch a token, then prove each route; publish nothing.

    Each route (RELAY_COUNTRY/RELAY_TENANT, and every --route) gets a POST to its publish URL
    without the Event-Type header, which Scalepoint's EventApi answers with its 400 "Missing
    request header 'Event-Type'" when the route exists and the token is accepted. Any other
    answer (404: no such route, 401: token and API do not belong together, 403: missing scope
    or right, ...) is shown with its fix. Exits non-zero when anything is wrong.
    """
    import asyncio

    from relay.ops.check import run_check

    settings = settings_from_env()
    # The report and the one-line errors are the output; log lines only when asked for, but
    # for the settings' own warnings.
    configure_logging(settings, floor="error")
    report = asyncio.run(run_check(settings, routes))
    for line in report.lines():
        click.echo(line)
    if not report.passed:
        for failed in report.failures:
            click.echo(f"relay: route {failed.route}: {failed.finding}", err=True)
        sys.exit(ExitCode.ATTENTION)  # the check ran; what it found needs fixing
    click.echo("relay: check passed")
