"""The ``relay`` command group, its one error boundary (known errors become one line and an
exit code) and what every command shares: settings, logging, the one-line summaries."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import click

from relay import DISTRIBUTION, database
from relay.config import Settings, load_settings
from relay.errors import (
    EXIT_CODE_MEANINGS,
    ExitCode,
    RelayError,
    printable,
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
            if _interrupted(error):
                # Ctrl-C cancelled a database call, and closing it failed in turn (a cancel
                # that timed out, say): the operator's interrupt is what happened.
                click.echo("relay: interrupted", err=True)
                sys.exit(ExitCode.INTERRUPTED)
            message = str(error)
            cause = error.__cause__
            while cause is not None:
                message += f" (caused by {type(cause).__name__}: {cause})"
                cause = cause.__cause__
            lines = [printable(line) for line in message.splitlines() or [""]]
            click.echo("\n".join(f"relay: {line}" for line in lines), err=True)
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


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` arose from an interrupt: a cancellation or Ctrl-C among its causes
    or the errors it was raised while handling."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error.__cause__, error.__context__]
    while pending:
        cause = pending.pop()
        if cause is None or id(cause) in seen:
            continue
        if isinstance(cause, asyncio.CancelledError | KeyboardInterrupt):
            return True
        seen.add(id(cause))
        pending += [cause.__cause__, cause.__context__]
    return False


# Ids in the tables are bigint; a count the database is asked for fits one too.
INT64_MAX = 2**63 - 1
ROW_ID = click.IntRange(1, INT64_MAX)
COUNT = click.IntRange(1, INT64_MAX)
BATCH = click.IntRange(1, 100_000)  # rows a purge deletes in one transaction
# Characters an argument may not hold: lone surrogates (bytes that were not UTF-8, kept by
# Python's surrogateescape) and NUL (no PostgreSQL text holds one).
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


class RelayCommand(click.Command):
    """A command whose every text argument is refused, naming it, unless it is UTF-8 text."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        for param in self.get_params(ctx):
            value = ctx.params.get(param.name or "")
            values = value if isinstance(value, tuple | list) else (value,)
            if any(isinstance(item, str) and _NOT_TEXT.search(item) for item in values):
                raise click.BadParameter(
                    "is not text (not valid UTF-8, or a NUL)", ctx=ctx, param=param
                )
        return rest


class RelayGroup(click.Group):
    """The command group: its commands are RelayCommands, and a usage error (an unknown
    option, a missing one, a value refused) is one line starting ``relay:``, exit 2, as every
    other failure is, instead of click's three lines."""

    command_class = RelayCommand

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as error:
            context = getattr(error, "ctx", None)
            where = ""
            if isinstance(context, click.Context):
                where = f" (see '{context.command_path} --help')"
            click.echo(f"relay: {printable(error.format_message())}{where}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("relay: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)


RelayGroup.group_class = RelayGroup


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
    cls=RelayGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_exit_codes_epilog(),
)
@click.version_option(package_name=DISTRIBUTION, prog_name="relay", message="%(prog)s %(version)s")
def main() -> None:
    """Deliver events between the insurer's database and Scalepoint's EventApi: the outbox
    published, the inbox received.

    Configuration comes from RELAY_* environment variables (see README.md).
    """


# What the operator commands share ---------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from relay.ops.admin import Admin
    from relay.ops.selection import Moment

T = TypeVar("T")


class Printable(Protocol):
    """An item of a list: ``--json`` prints what ``to_json`` gives."""

    def to_json(self) -> dict[str, Any]: ...


Listed = TypeVar("Listed", bound=Printable)


class MomentType(click.ParamType["Moment"]):
    """A duration back from now (30d, 2h, 15m) or an ISO 8601 timestamp."""

    name = "DURATION|TIMESTAMP"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Moment:
        from datetime import datetime, timedelta

        from relay.ops.selection import parse_moment

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


def with_admin(work: Callable[[Admin], Awaitable[T]], operator: str | None = None) -> T:
    """Run one operator command against RELAY_DATABASE_URL / RELAY_SCHEMA, as ``operator``."""
    from relay.ops.admin import open_admin
    from relay.ops.selection import operator_name

    name = operator_name(operator)  # a bad --operator needs no database
    settings = settings_from_env()
    configure_logging(settings)

    interrupts: list[int] = []

    async def go() -> T:
        # Ctrl-C is the loop's to handle (asyncio.Runner's own handler is a Python one, which
        # a loaded machine once left unheard while a statement waited for a lock): it cancels
        # the command, and whatever the cancellation ends in, the command was interrupted.
        loop = asyncio.get_running_loop()
        command = asyncio.current_task()
        assert command is not None

        def interrupt() -> None:
            interrupts.append(signal.SIGINT)
            if len(interrupts) > 1:
                raise KeyboardInterrupt  # a second Ctrl-C does not wait for the first
            command.cancel()

        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            async with open_admin(settings, name) as admin:
                return await work(admin)
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(go())
    except BaseException:
        if interrupts:
            raise KeyboardInterrupt from None
        raise


def attention(needed: bool) -> None:
    """Exit 3 when the command finished but left something for the operator to look at."""
    if needed:
        sys.exit(ExitCode.ATTENTION)


def emit(document: object, lines: list[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            click.echo(line)


def one_more(limit: int) -> int:
    """How many items a list of ``limit`` fetches: one more, to tell whether older ones were
    left out (see :func:`emit_list`)."""
    return min(limit, INT64_MAX - 1) + 1


def emit_list(
    items: Sequence[Listed],
    limit: int,
    lines: Callable[[Sequence[Listed]], list[str]],
    what: tuple[str, str],
    as_json: bool,
) -> None:
    """Print a list as every list prints: the newest ``limit`` items, oldest first (the last
    line is the newest, next to the prompt). ``items`` were fetched with :func:`one_more`;
    when older ones were left out, one line on stderr says so and how to see them. ``what``
    names one item and several."""
    from relay.ops.formatting import counted

    if len(items) > limit:
        items = items[len(items) - limit :]
        click.echo(
            f"relay: showing the newest {counted(limit, *what)}, oldest first; for older ones "
            "raise --limit or choose a range with --since",
            err=True,
        )
    emit([item.to_json() for item in items], lines(items), as_json)


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
    ("dead", "discard"): "Give up on dead rows: delete them, so their keys go on",
    ("demo",): "Run everything end to end on this machine",
    ("emulator",): "Run a local stand-in for Scalepoint's EventApi",
    ("enqueue",): "Write one event into the outbox and print its id",
    ("inbox",): "See and repair the inbox of events received",
    ("inbox", "list"): "List received events, oldest first, without payloads",
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


def summarise() -> None:
    """Give every command its one-line summary (once they are all added to ``main``)."""
    for path, summary in SUMMARIES.items():
        command: click.Command = main
        for word in path:
            assert isinstance(command, click.Group)
            command = command.commands[word]
        command.short_help = summary
