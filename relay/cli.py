"""The ``relay`` command. One error boundary turns known errors into one line and an exit code."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from relay import DISTRIBUTION, database, schema
from relay.config import Settings, load_settings
from relay.errors import (
    EXIT_CODE_MEANINGS,
    ConfigurationError,
    ExitCode,
    InvalidEvent,
    RelayError,
    SchemaNotReady,
    UsageError,
)

P = ParamSpec("P")
R = TypeVar("R")


def error_boundary(function: Callable[P, R]) -> Callable[P, R]:
    """Print a RelayError as one line (with its causes) and exit with its class's code (see
    relay.errors.ExitCode); no traceback. Ctrl-C exits 130. Anything else is unexpected: Python
    prints its traceback and exits 1."""

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
        except KeyboardInterrupt:
            click.echo("relay: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except Exception as error:
            # A right the role lacks, met after the start-up checks: one line, too.
            refused = database.refused_right(error)
            if refused is None:
                raise
            click.echo(f"relay: {refused}", err=True)
            sys.exit(refused.exit_code)

    return wrapper


def settings_from_env(**overrides: object) -> Settings:
    return load_settings(**overrides)


LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(settings: Settings, floor: str | None = None) -> None:
    """Configure logging (RELAY_LOG_LEVEL, RELAY_LOG_FORMAT), then log each of the settings'
    warnings as ``settings.warning``.

    A command whose output is what it prints passes ``floor``: after the warnings it logs only
    at that level and above, unless RELAY_LOG_LEVEL is debug.
    """
    import structlog

    from relay import logs

    logs.configure(settings.log_level, settings.log_format)
    log = structlog.get_logger("relay.config")
    for warning in settings.warnings():
        log.warning("settings.warning", detail=warning)
    if floor is not None and settings.log_level != "debug":
        quieter = max(settings.log_level, floor, key=LOG_LEVELS.index)
        if quieter != settings.log_level:
            logs.configure(quieter, settings.log_format)


def _exit_codes_epilog() -> str:
    rows = [f"  {int(code):<4} {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items()]
    return "\b\nExit codes, the same for every command (docs/cli.md):\n" + "\n".join(rows)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_exit_codes_epilog(),
)
@click.version_option(package_name=DISTRIBUTION, prog_name="relay", message="%(prog)s %(version)s")
def main() -> None:
    """Deliver events from the insurer's outbox table to Scalepoint's EventApi.

    Configuration comes from RELAY_* environment variables (see README.md).
    """


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
    elif result.carried_over:
        line += (
            f" (its revision moved from {schema.SHARED_VERSION_TABLE}, the application's "
            f"Alembic table, to {schema.VERSION_TABLE})"
        )
    click.echo(line)


@main.command()
@click.option(
    "--drain",
    is_flag=True,
    help="Exit once every row is published or dead (waits out scheduled retries): 0, or 3 "
    "when rows remain blocked behind dead rows of their key.",
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
        if report.blocked:
            sys.exit(ExitCode.ATTENTION)  # requeue the dead rows (or delete them) to move on


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
@click.option(
    "--receive-route",
    "receive_routes",
    multiple=True,
    metavar="COUNTRY/TENANT",
    help="A route with a receive stream (repeatable); --receive-events pre-feeds each.",
)
@click.option(
    "--receive-events",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1_000_000),
    help="Realistic events fed to each --receive-route before it listens.",
)
@click.option(
    "--receive-type",
    default=None,
    metavar="EVENT_TYPE",
    help="Type of the pre-fed events (e.g. case_created)  [default: every type in turn]",
)
@click.option(
    "--receive-hold",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a receive poll waits for events before an empty page.",
)
@click.option(
    "--receive-page-size",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Events per receive page, at most.",
)
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
    receive_routes: tuple[str, ...],
    receive_events: int,
    receive_type: str | None,
    receive_hold: float,
    receive_page_size: int,
) -> None:
    """Run a local stand-in for Scalepoint's token endpoint and EventApi (send and receive).

    Faults can also be changed while it runs: POST /_emulator/faults with a JSON object,
    DELETE /_emulator/faults, POST /_emulator/revoke, POST /_emulator/reset,
    GET /_emulator/stats and GET /_emulator/events.

    \b
    Receiving: GET /api/events/v1/COUNTRY/external/TENANT/receive?lastEventId=ID
    long-polls a route's stream. Feed it while it runs with
    POST /_emulator/receive/COUNTRY/TENANT and a JSON list of events
    ({"type", "attributes"}, optional "timestamp" and "id") or {"generate": N, "type": T};
    GET /_emulator/receive reports each route's polls and events handed out.
    Example: relay emulator --receive-route dk/abcinsurance --receive-events 1000
    """
    import asyncio

    from relay import emulator as emulation

    # Settings are used only without --client, and a bad one is reported then.
    with contextlib.suppress(ConfigurationError):
        configure_logging(settings_from_env(), floor="warning")
    faults = emulation.Faults(
        token_lifetime=token_lifetime,
        latency_ms=latency_ms,
        error_rate=error_rate,
        error_status=error_status,
        drop_rate=drop_rate,
        receive_hold_seconds=receive_hold,
        receive_page_size=receive_page_size,
    )
    config = emulation.config_from_options(clients, certificates, routes, audience, faults)
    partner = emulation.Emulator(config)
    for route in receive_routes:
        country, _, tenant = route.partition("/")
        if not country or not tenant or "/" in tenant:
            raise click.BadParameter(
                f"{route!r} is not COUNTRY/TENANT", param_hint="--receive-route"
            )
        partner.generate(country, tenant, receive_events, receive_type)

    def announce(line: str) -> None:
        click.echo(f"relay emulator: {line}")

    try:
        asyncio.run(emulation.serve(partner, host, port, announce))
    except OSError as error:  # the address is taken, or not this machine's
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


# Operations: status, dead rows, requeue, purge ---------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from relay.ops.admin import Admin, Moment
    from relay.ops.reports import ReplayResult

T = TypeVar("T")


class MomentType(click.ParamType["Moment"]):
    """A duration back from now (30d, 2h, 15m) or an ISO 8601 timestamp."""

    name = "DURATION|TIMESTAMP"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Moment:
        from datetime import datetime, timedelta

        from relay.ops.admin import parse_moment

        if isinstance(value, timedelta | datetime):
            return value
        try:
            return parse_moment(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


MOMENT = MomentType()
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
OPERATOR_OPTION = click.option(
    "--operator",
    default=None,
    metavar="NAME",
    help="Who you are, for the audit log (default: $USER, $LOGNAME, else the OS user). Under "
    "kubectl exec there is no $USER: give your name.",
)


def _with_admin(work: Callable[[Admin], Awaitable[T]], operator: str | None = None) -> T:
    """Run one operator command against RELAY_DATABASE_URL / RELAY_SCHEMA, as ``operator``."""
    import asyncio

    from relay.ops.admin import open_admin, operator_name

    name = operator_name(operator)  # a bad --operator needs no database
    settings = settings_from_env()
    configure_logging(settings)

    async def go() -> T:
        async with open_admin(settings, name) as admin:
            return await work(admin)

    return asyncio.run(go())


def _attention(needed: bool) -> None:
    """Exit 3 when the command finished but left something for the operator to look at."""
    if needed:
        sys.exit(ExitCode.ATTENTION)


def _emit(document: object, lines: list[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            click.echo(line)


@main.command()
@JSON_OPTION
@error_boundary
def status(as_json: bool) -> None:
    """Show the outbox: rows per status, the oldest unfinished row, retrying rows and when
    they are next tried, dead rows by event type and by last error, the last publish and the
    pauses in force. Reads one snapshot; safe while relays run.
    """
    report = _with_admin(lambda admin: admin.status())
    _emit(report.to_json(), report.lines(), as_json)


@main.group()
def dead() -> None:
    """Find and inspect dead rows (requeue them with 'relay requeue')."""


@dead.command("list")
@click.option("--event-type", default=None, help="Only this event type.")
@click.option("--since", type=MOMENT, default=None, help="Only rows that died since then.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many."
)
@JSON_OPTION
@error_boundary
def dead_list(event_type: str | None, since: Moment | None, limit: int, as_json: bool) -> None:
    """List dead rows, oldest first: id, when it died, event type, attempts, last error.
    Never prints payloads (see 'relay dead show')."""
    rows = _with_admin(
        lambda admin: admin.dead_list(event_type=event_type, since=since, limit=limit)
    )
    _emit([row.to_json() for row in rows], [row.line() for row in rows], as_json)


@dead.command("show")
@click.argument("row_id", metavar="ID", type=int)
@JSON_OPTION
@error_boundary
def dead_show(row_id: int, as_json: bool) -> None:
    """Show one row in full: its last error, HTTP status, attempts, timestamps, its payload
    and every delivery attempt. The only command that prints a payload."""
    detail = _with_admin(lambda admin: admin.row(row_id))
    _emit(detail.to_json(), detail.lines(), as_json)


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--event-type", default=None, help="Dead rows of this event type.")
@click.option("--since", type=MOMENT, default=None, help="Dead rows that died since then.")
@click.option("--until", type=MOMENT, default=None, help="Dead rows that died before then.")
@click.option("--all-dead", is_flag=True, help="Every dead row (alone, without filters).")
@click.option("--dry-run", is_flag=True, help="Print what would be requeued; change nothing.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def requeue(
    ids: tuple[int, ...],
    event_type: str | None,
    since: Moment | None,
    until: Moment | None,
    all_dead: bool,
    dry_run: bool,
    operator: str | None,
    as_json: bool,
) -> None:
    """Send dead rows again: pending now, attempts back to 0, ids (and so ordering) kept.

    Choose rows by ID, --event-type and --since/--until (combined: all must match), or
    --all-dead. Running relays are woken at once. Recorded in the audit log (relay audit)
    with the operator's name. Exit code 3 when ids named were left alone (not dead).
    """
    from relay.ops.admin import DeadSelector

    selector = DeadSelector(ids, event_type, since, until, all_dead)
    selector.check()  # before connecting: a bad selection needs no database
    result = _with_admin(lambda admin: admin.requeue(selector, dry_run=dry_run), operator)
    _emit(result.to_json(), result.lines(), as_json)
    _attention(result.needs_attention)


# A replay of more rows than this needs --yes, or a confirmation at a terminal.
REPLAY_CONFIRM_ABOVE = 100


@main.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--event-type", default=None, help="Published rows of this event type.")
@click.option("--since", type=MOMENT, default=None, help="Rows published since then.")
@click.option("--until", type=MOMENT, default=None, help="Rows published before then.")
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@click.option(
    "--yes",
    is_flag=True,
    help=f"Replay more than {REPLAY_CONFIRM_ABOVE} rows without asking.",
)
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def replay(
    ids: tuple[int, ...],
    event_type: str | None,
    since: Moment | None,
    until: Moment | None,
    dry_run: bool,
    yes: bool,
    operator: str | None,
    as_json: bool,
) -> None:
    """Send published events again, for consumers that lost them (after Scalepoint restored
    their side, say).

    Choose rows by ID, --event-type and --since/--until (when they were published), combined:
    all must match. A replayed row is pending again: available now, attempts 0, its id (and so
    its place in its ordering key) kept, its earlier attempts kept in the delivery log; running
    relays are woken at once. The event keeps its correlationId, so consumers that deduplicate
    on it will drop it.

    A keyed row whose key has newer rows not yet published is held back: it would go before
    them. Replay it once they are published. More than 100 rows need --yes, or a confirmation
    at a terminal. Recorded in the audit log (relay audit). Exit code 3 when rows were held
    back or ids named were not published.
    """
    from relay.ops.admin import ReplaySelector

    selector = ReplaySelector(ids, event_type, since, until)
    selector.check()  # before connecting: a bad selection needs no database

    async def work(admin: Admin) -> ReplayResult:
        preview = await admin.replay(selector, dry_run=True)
        if dry_run:
            return preview
        if len(preview.rows) > REPLAY_CONFIRM_ABOVE and not yes:
            _confirm_replay(len(preview.rows))
        return await admin.replay(selector, confirmed=preview)

    result = _with_admin(work, operator)
    _emit(result.to_json(), result.lines(), as_json)
    _attention(result.needs_attention)


def _confirm_replay(rows: int) -> None:
    """Ask at a terminal; refuse anywhere else (a script, kubectl exec without -t)."""
    if not sys.stdin.isatty():
        raise UsageError(
            f"this would replay {rows} published rows, more than {REPLAY_CONFIRM_ABOVE}: "
            "look at them with --dry-run, then run again with --yes"
        )
    question = (
        f"relay: replay {rows} published rows? Consumers that deduplicate on correlationId "
        "will drop them"
    )
    try:
        confirmed = click.confirm(question, default=False, err=True)
    except click.exceptions.Abort:  # Ctrl-C or end of input at the prompt
        confirmed = False
    if not confirmed:
        raise UsageError("not confirmed: nothing was replayed")


@main.group()
def pause() -> None:
    """See and lift the pauses that hold the relays (a route's, or every route's)."""


@pause.command("list")
@JSON_OPTION
@error_boundary
def pause_list(as_json: bool) -> None:
    """List every pause: its route (* for all), kind, time left, who set it and why. A pause
    that ran out stays listed until a relay's probe succeeds."""
    from relay.ops.reports import fields_of, pause_lines

    pauses = _with_admin(lambda admin: admin.pauses())
    _emit([fields_of(pause) for pause in pauses], pause_lines(pauses), as_json)


@pause.command("clear")
@click.argument("routes", nargs=-1, metavar="[COUNTRY/TENANT | *]...")
@click.option("--all", "clear_all", is_flag=True, help="Lift every pause.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def pause_clear(
    routes: tuple[str, ...], clear_all: bool, operator: str | None, as_json: bool
) -> None:
    """Lift pauses now: running relays resume the route (probing it first) within one poll.

    Name the routes (dk/abcinsurance; * is the pause of every route), or --all. Recorded in
    the audit log (relay audit). Exit code 3 when a route named had no pause.
    """
    from relay.ops.admin import NoSelector

    if bool(routes) == clear_all:
        raise NoSelector("name the routes to lift (dk/abcinsurance, *), or --all; not both")
    settings = settings_from_env()
    defaults = (settings.country, settings.tenant)
    selected = None if clear_all else list(routes)
    result = _with_admin(lambda admin: admin.clear_pauses(selected, defaults=defaults), operator)
    _emit(result.to_json(), result.lines(), as_json)
    _attention(result.needs_attention)


@main.command()
@click.option(
    "--older-than",
    type=MOMENT,
    required=True,
    help="Published before this: a duration (30d) or a timestamp.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def purge(
    older_than: Moment, batch_size: int, dry_run: bool, operator: str | None, as_json: bool
) -> None:
    """Delete published rows (and their delivery log) published before --older-than, in
    small batches. Dead rows are never purged. Recorded in the audit log (relay audit).
    RELAY_RETENTION makes the relay do this hourly.
    """
    if dry_run:
        preview = _with_admin(lambda admin: admin.purge_preview(older_than), operator)
        _emit(preview.to_json(), preview.lines(), as_json)
        return
    result = _with_admin(lambda admin: admin.purge(older_than, batch_size=batch_size), operator)
    _emit(result.to_json(), result.lines(), as_json)


@main.command()
@click.option("--since", type=MOMENT, default=None, help="Only entries written since then.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many."
)
@JSON_OPTION
@error_boundary
def audit(since: Moment | None, limit: int, as_json: bool) -> None:
    """Show the audit log, newest first: every requeue, replay, purge and pause clear, and
    every inbox retry, rewind and purge, who ran it (and from which host), its selection, the
    rows it changed and its outcome.
    """
    from relay.ops.reports import audit_lines

    entries = _with_admin(lambda admin: admin.audit(since=since, limit=limit))
    _emit([entry.to_json() for entry in entries], audit_lines(entries), as_json)


# The inbox: Scalepoint's events received ------------------------------------------------------

if TYPE_CHECKING:
    from relay.ops.inbox import InboxAdmin

INBOX_STATUSES = ("pending", "processed", "failed")


class RouteType(click.ParamType["tuple[str, str]"]):
    """COUNTRY/TENANT, held to the route rule (relay.routes)."""

    name = "COUNTRY/TENANT"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        from relay.ops.check import parse_route

        if isinstance(value, tuple):
            return value
        try:
            return parse_route(str(value))
        except ValueError as problem:
            self.fail(f"{str(value)[:60]!r}: {problem}", param, ctx)


ROUTE = RouteType()


def _with_inbox(work: Callable[[InboxAdmin], Awaitable[T]], operator: str | None = None) -> T:
    """Run one ``relay inbox`` command against RELAY_DATABASE_URL / RELAY_SCHEMA."""
    from relay.ops.inbox import InboxAdmin

    return _with_admin(lambda admin: work(InboxAdmin(admin)), operator)


@main.group()
def inbox() -> None:
    """See and repair the inbox: Scalepoint's events, received into the database.

    status, list and show only read; retry, rewind and purge change the inbox and are recorded
    in the audit log (relay audit). Every one is safe while relays and consumers run. Receiving
    and consuming: docs/inbox.md; the runbook: docs/operations.md, "The inbox".
    """


@inbox.command("status")
@JSON_OPTION
@error_boundary
def inbox_status(as_json: bool) -> None:
    """Show each receive route: its checkpoint (the next path, the last event id), its lag
    (now minus the newest received event's own timestamp), when Scalepoint last answered, a
    pause in force, whether a relay polls it now, its events pending, processed and failed,
    and how long the oldest pending one has waited. Reads one snapshot; safe while relays run.

    The routes are those with a checkpoint, those events are stored under, and those in
    RELAY_RECEIVE_ROUTES where the command runs.
    """
    configured = settings_from_env().receive_routes
    report = _with_inbox(lambda inbox: inbox.status(configured))
    _emit(report.to_json(), report.lines(), as_json)


@inbox.command("list")
@click.option("--route", type=ROUTE, default=None, help="Only this route.")
@click.option(
    "--status",
    type=click.Choice(INBOX_STATUSES),
    default=None,
    help="Only events in this status.",
)
@click.option("--event-type", default=None, help="Only this event type.")
@click.option("--since", type=MOMENT, default=None, help="Only events received since then.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many."
)
@JSON_OPTION
@error_boundary
def inbox_list(
    route: tuple[str, str] | None,
    status: str | None,
    event_type: str | None,
    since: Moment | None,
    limit: int,
    as_json: bool,
) -> None:
    """List received events, newest first: id, when received, route, event id, type, status,
    attempts and last error. Never prints payloads (see 'relay inbox show')."""
    from relay.ops.inbox_reports import event_lines

    rows = _with_inbox(
        lambda inbox: inbox.events(
            route=route, status=status, event_type=event_type, since=since, limit=limit
        )
    )
    _emit([row.to_json() for row in rows], event_lines(rows), as_json)


@inbox.command("show")
@click.argument("event_id", metavar="ID", type=int)
@JSON_OPTION
@error_boundary
def inbox_show(event_id: int, as_json: bool) -> None:
    """Show one received event in full: its route, event id, type, timestamps, status,
    attempts, last error and its payload (the event's attributes, exactly as stored), or the
    raw item for one that was not an event. The only inbox command that prints a payload."""
    detail = _with_inbox(lambda inbox: inbox.event(event_id))
    # Its own JSON text: the payload as PostgreSQL stores it, never re-encoded.
    click.echo(detail.json_text() if as_json else "\n".join(detail.lines()))


@inbox.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--route", type=ROUTE, default=None, help="Failed events of this route.")
@click.option("--event-type", default=None, help="Failed events of this event type.")
@click.option("--since", type=MOMENT, default=None, help="Failed events received since then.")
@click.option("--until", type=MOMENT, default=None, help="Failed events received before then.")
@click.option("--all-failed", is_flag=True, help="Every failed event (alone, without filters).")
@click.option("--dry-run", is_flag=True, help="Print what would be retried; change nothing.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def inbox_retry(
    ids: tuple[int, ...],
    route: tuple[str, str] | None,
    event_type: str | None,
    since: Moment | None,
    until: Moment | None,
    all_failed: bool,
    dry_run: bool,
    operator: str | None,
    as_json: bool,
) -> None:
    """Have consumers process failed events again: pending, due now, attempts back to 0.

    Choose events by ID, --route, --event-type and --since/--until (when they were received),
    combined: all must match; or --all-failed. Consumers are woken at once (NOTIFY
    relay_inbox). Items that were not events (kept raw, with no payload) are never made
    pending: they are named and left failed, and the command exits 3; so do ids named that
    are not failed. Recorded in the audit log (relay audit).
    """
    from relay.ops.inbox import FailedSelector

    selector = FailedSelector(ids, route, event_type, since, until, all_failed)
    selector.check()  # before connecting: a bad selection needs no database
    result = _with_inbox(lambda inbox: inbox.retry(selector, dry_run=dry_run), operator)
    _emit(result.to_json(), result.lines(), as_json)
    _attention(result.needs_attention)


@inbox.command("rewind")
@click.argument("route", type=ROUTE, metavar="COUNTRY/TENANT")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="EVENT_ID",
    help="The next receive asks for the events after this one (e.g. _122047).",
)
@click.option("--dry-run", is_flag=True, help="Print what would move; change nothing.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def inbox_rewind(
    route: tuple[str, str], to: str, dry_run: bool, operator: str | None, as_json: bool
) -> None:
    """Move a route's checkpoint so that its next receive asks Scalepoint for the events
    after EVENT_ID: to fetch again what the inbox is missing (rows deleted, a gap).

    Rewind re-fetches to fill gaps; it does not re-process. Events the inbox holds are fetched
    again but never stored twice (each is stored once per route), so consumers do not see them
    again: 'relay inbox retry' makes failed events pending again. Events the inbox no longer
    holds (purged, deleted) are stored again as new pending events, and consumers process
    them. A running receiver moves with its next page, within one long poll; nothing needs a
    restart. The route needs a checkpoint (a relay has received it). Recorded in the audit
    log (relay audit) with the checkpoint before and after. Exit code 3 when the inbox holds
    no event EVENT_ID of the route (purged, or a typo): if Scalepoint does not know it
    either, the route's receives fail until it is rewound again.
    """
    from relay.ops.inbox import check_event_id

    check_event_id(to)  # before connecting
    result = _with_inbox(lambda inbox: inbox.rewind(route, to, dry_run=dry_run), operator)
    _emit(result.to_json(), result.lines(), as_json)
    _attention(result.needs_attention)


@inbox.command("purge")
@click.option(
    "--older-than",
    type=MOMENT,
    required=True,
    help="Processed before this: a duration (30d) or a timestamp.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Events per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def inbox_purge(
    older_than: Moment, batch_size: int, dry_run: bool, operator: str | None, as_json: bool
) -> None:
    """Delete processed events processed before --older-than, in small batches. Pending and
    failed events are never purged. Recorded in the audit log (relay audit). RELAY_RETENTION
    makes the relay do this hourly, with the outbox's published rows. A rewind to before
    purged events receives them again, as new pending events.
    """
    if dry_run:
        preview = _with_inbox(lambda inbox: inbox.purge_preview(older_than), operator)
        _emit(preview.to_json(), preview.lines(), as_json)
        return
    result = _with_inbox(lambda inbox: inbox.purge(older_than, batch_size=batch_size), operator)
    _emit(result.to_json(), result.lines(), as_json)


@main.command()
@click.option(
    "--events",
    default=3000,
    show_default=True,
    type=click.IntRange(min=10, max=1_000_000),
    help="How many events to enqueue (a handful of them invalid on purpose).",
)
@click.option(
    "--keep",
    "keep_server",
    is_flag=True,
    help="Leave the embedded PostgreSQL running afterwards, for the commands the summary "
    "lists; 'relay demo --stop' stops it. Without it the demo stops the server when done.",
)
@click.option(
    "--stop",
    "stop_only",
    is_flag=True,
    help="Only stop an embedded PostgreSQL an earlier demo left running, and exit.",
)
@error_boundary
def demo(events: int, keep_server: bool, stop_only: bool) -> None:
    """Run the relay end to end on this machine: database, emulated EventApi, thousands of events.

    Without RELAY_DATABASE_URL it starts an embedded PostgreSQL in .relay-demo/pgdata (the
    'embedded' extra) and re-creates database relay_demo in it; with RELAY_DATABASE_URL it
    re-creates schema relay_demo in that database and touches no other schema. The emulator
    adds latency and a few failures; a live progress bar and a summary follow. The embedded
    PostgreSQL is stopped at the end, unless --keep leaves it running for a closer look
    ('relay demo --stop' stops it then). Ctrl-C stops cleanly (exit code 130).
    """
    try:
        from relay import demo as demonstration

        if stop_only:
            demonstration.stop()
            return
        configure_logging(settings_from_env(), floor="warning")
        code = demonstration.run_demo(events, keep_server=keep_server)
    except KeyboardInterrupt:  # before the demo could handle it (while importing, say)
        click.echo("relay demo: interrupted", err=True)
        code = 130
    if code:
        sys.exit(code)


# The one-line summaries `relay --help` lists ---------------------------------------------------

# click would cut each command's first sentence to the terminal's width and end it with "...";
# these fit 80 columns whole. Kept together so they read as one list; tests/cli/test_help.py
# holds every command to one.
SUMMARIES = {
    ("audit",): "Show the audit log: who changed what, and when",
    ("check",): "Check the partner settings by fetching a token",
    ("dead",): "List dead rows, or show one in full",
    ("dead", "list"): "List dead rows, oldest first, without payloads",
    ("dead", "show"): "Show one row in full, with its payload and attempts",
    ("demo",): "Run everything end to end on this machine",
    ("emulator",): "Run a local stand-in for Scalepoint's EventApi",
    ("enqueue",): "Write one event into the outbox and print its id",
    ("inbox",): "See and repair the inbox of events received",
    ("inbox", "list"): "List received events, newest first, without payloads",
    ("inbox", "purge"): "Delete processed events older than a cut-off",
    ("inbox", "retry"): "Have consumers process failed events again",
    ("inbox", "rewind"): "Fetch a route's events again, after an event id",
    ("inbox", "show"): "Show one received event in full, with its payload",
    ("inbox", "status"): "Show each receive route: checkpoint, lag, events",
    ("migrate",): "Create or upgrade the outbox schema",
    ("pause",): "List the pauses that hold the relays, or lift them",
    ("pause", "clear"): "Lift pauses now",
    ("pause", "list"): "List every pause: route, kind, time left, why",
    ("purge",): "Delete published rows older than a cut-off",
    ("replay",): "Send published events again",
    ("requeue",): "Send dead rows again",
    ("run",): "Run the relay until SIGTERM (or, with --drain, done)",
    ("status",): "Show the outbox: counts, ages, retries, dead rows",
}


def _summarise() -> None:
    for path, summary in SUMMARIES.items():
        command: click.Command = main
        for word in path:
            assert isinstance(command, click.Group)
            command = command.commands[word]
        command.short_help = summary


_summarise()
