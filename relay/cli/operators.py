"""The operators' commands on the outbox: ``relay status``, ``dead``, ``requeue``, ``replay``,
``pause``, ``purge`` and ``audit``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from relay.cli.main import (
    BATCH,
    COUNT,
    JSON_OPTION,
    MOMENT,
    OPERATOR_OPTION,
    ROW_ID,
    attention,
    emit,
    emit_list,
    error_boundary,
    main,
    one_more,
    settings_from_env,
    with_admin,
)
from relay.errors import (
    UsageError,
)
from relay.routes import route_problem

if TYPE_CHECKING:
    from relay.ops.admin import Admin
    from relay.ops.results import ReplayResult
    from relay.ops.selection import Moment


@main.command()
@JSON_OPTION
@error_boundary
def status(as_json: bool) -> None:
    """Show the outbox: rows per status, the oldest unfinished row, retrying rows and when
    they are next tried, dead rows by event type and by last error, the last publish and the
    pauses in force. Reads one snapshot; safe while relays run.
    """
    report = with_admin(lambda admin: admin.status())
    emit(report.to_json(), report.lines(), as_json)


@main.group()
def dead() -> None:
    """Find and inspect dead rows (requeue them with 'relay requeue')."""


@dead.command("list")
@click.option("--event-type", default=None, help="Only this event type.")
@click.option("--since", type=MOMENT, default=None, help="Only rows that died since then.")
@click.option("--limit", type=COUNT, default=100, show_default=True, help="At most this many.")
@JSON_OPTION
@error_boundary
def dead_list(event_type: str | None, since: Moment | None, limit: int, as_json: bool) -> None:
    """List the newest dead rows, oldest first: id, when it died, event type, attempts, last
    error. Never prints payloads (see 'relay dead show')."""
    rows = with_admin(
        lambda admin: admin.dead_list(event_type=event_type, since=since, limit=one_more(limit))
    )
    emit_list(
        rows, limit, lambda rows: [row.line() for row in rows], ("dead row", "dead rows"), as_json
    )


@dead.command("show")
@click.argument("row_id", metavar="ID", type=ROW_ID)
@JSON_OPTION
@error_boundary
def dead_show(row_id: int, as_json: bool) -> None:
    """Show one row in full: its last error, HTTP status, attempts, timestamps, its payload
    and every delivery attempt. The only command that prints a payload."""
    detail = with_admin(lambda admin: admin.row(row_id))
    emit(detail.to_json(), detail.lines(), as_json)


@main.command()
@click.argument("ids", nargs=-1, type=ROW_ID)
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
    from relay.ops.selection import DeadSelector

    selector = DeadSelector(ids, event_type, since, until, all_dead)
    selector.check()  # before connecting: a bad selection needs no database
    result = with_admin(lambda admin: admin.requeue(selector, dry_run=dry_run), operator)
    emit(result.to_json(), result.lines(), as_json)
    attention(result.needs_attention)


@dead.command("discard")
@click.argument("ids", nargs=-1, type=ROW_ID)
@click.option("--event-type", default=None, help="Dead rows of this event type.")
@click.option("--since", type=MOMENT, default=None, help="Dead rows that died since then.")
@click.option("--until", type=MOMENT, default=None, help="Dead rows that died before then.")
@click.option("--all-dead", is_flag=True, help="Every dead row (alone, without filters).")
@click.option(
    "--reason",
    required=True,
    metavar="TEXT",
    help="Why they are given up on, for the audit log (1-500 printable characters).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be discarded; change nothing.")
@OPERATOR_OPTION
@JSON_OPTION
@error_boundary
def dead_discard(
    ids: tuple[int, ...],
    event_type: str | None,
    since: Moment | None,
    until: Moment | None,
    all_dead: bool,
    reason: str,
    dry_run: bool,
    operator: str | None,
    as_json: bool,
) -> None:
    """Give up on dead rows: delete them and their delivery log, for good, so that the rows
    behind them in their ordering keys go at once (running relays are woken).

    Choose rows as requeue does: by ID, --event-type and --since/--until, or --all-dead.
    Recorded in the audit log (relay audit) with the ids, their event types, your name and
    --reason. Exit code 3 when ids named were left alone (not dead). Look first with
    --dry-run, or at each with relay dead show.
    """
    from relay.ops.selection import DeadSelector, audit_reason

    selector = DeadSelector(ids, event_type, since, until, all_dead)
    selector.check("discard")  # before connecting: a bad selection needs no database
    why = audit_reason(reason)
    result = with_admin(lambda admin: admin.discard(selector, why, dry_run=dry_run), operator)
    emit(result.to_json(), result.lines(), as_json)
    attention(result.needs_attention)


# A replay of more rows than this needs --yes, or a confirmation at a terminal.
REPLAY_CONFIRM_ABOVE = 100


@main.command()
@click.argument("ids", nargs=-1, type=ROW_ID)
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
    from relay.ops.selection import ReplaySelector

    selector = ReplaySelector(ids, event_type, since, until)
    selector.check()  # before connecting: a bad selection needs no database

    async def work(admin: Admin) -> ReplayResult:
        preview = await admin.replay(selector, dry_run=True)
        if dry_run:
            return preview
        if len(preview.rows) > REPLAY_CONFIRM_ABOVE and not yes:
            _confirm_replay(len(preview.rows))
        return await admin.replay(selector, confirmed=preview)

    result = with_admin(work, operator)
    emit(result.to_json(), result.lines(), as_json)
    attention(result.needs_attention)


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
    from relay.ops.formatting import fields_of
    from relay.ops.reports import pause_lines

    pauses = with_admin(lambda admin: admin.pauses())
    emit([fields_of(pause) for pause in pauses], pause_lines(pauses), as_json)


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
    from relay.ops.selection import NoSelector

    if bool(routes) == clear_all:
        raise NoSelector("name the routes to lift (dk/abcinsurance, *), or --all; not both")
    for route in routes:
        country, slash, tenant = route.partition("/")
        problem = "expected COUNTRY/TENANT or *" if not slash else route_problem(country, tenant)
        if route != "*" and problem is not None:
            raise UsageError(f"ROUTE {route[:40]!r}: {problem}")
    settings = settings_from_env()
    defaults = (settings.country, settings.tenant)
    selected = None if clear_all else list(routes)
    result = with_admin(lambda admin: admin.clear_pauses(selected, defaults=defaults), operator)
    emit(result.to_json(), result.lines(), as_json)
    attention(result.needs_attention)


@main.command()
@click.option(
    "--older-than",
    type=MOMENT,
    required=True,
    help="Published before this: a duration (30d) or a timestamp.",
)
@click.option(
    "--batch-size",
    type=BATCH,
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
        preview = with_admin(lambda admin: admin.purge_preview(older_than), operator)
        emit(preview.to_json(), preview.lines(), as_json)
        return
    result = with_admin(lambda admin: admin.purge(older_than, batch_size=batch_size), operator)
    emit(result.to_json(), result.lines(), as_json)


@main.command()
@click.option("--since", type=MOMENT, default=None, help="Only entries written since then.")
@click.option("--limit", type=COUNT, default=50, show_default=True, help="At most this many.")
@JSON_OPTION
@error_boundary
def audit(since: Moment | None, limit: int, as_json: bool) -> None:
    """Show the newest entries of the audit log, oldest first: every requeue, replay, purge,
    discard and pause clear, and every inbox retry, rewind and purge, who ran it (and from
    which host), its selection, the rows it changed and its outcome.
    """
    from relay.ops.results import audit_lines

    entries = with_admin(lambda admin: admin.audit(since=since, limit=one_more(limit)))
    emit_list(entries, limit, audit_lines, ("entry", "entries"), as_json)
