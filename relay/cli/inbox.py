"""The operators' commands on the inbox: ``relay inbox status|list|show|retry|rewind|purge``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

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

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from relay.ops.inbox import InboxAdmin
    from relay.ops.selection import Moment

T = TypeVar("T")


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

    return with_admin(lambda admin: work(InboxAdmin(admin)), operator)


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
    emit(report.to_json(), report.lines(), as_json)


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
@click.option("--limit", type=COUNT, default=100, show_default=True, help="At most this many.")
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
    """List the newest received events, oldest first: id, when received, route, event id,
    type, status, attempts and last error. Never prints payloads (see 'relay inbox show')."""
    from relay.ops.inbox_reports import event_lines

    rows = _with_inbox(
        lambda inbox: inbox.events(
            route=route, status=status, event_type=event_type, since=since, limit=one_more(limit)
        )
    )
    emit_list(rows, limit, event_lines, ("event", "events"), as_json)


@inbox.command("show")
@click.argument("event_id", metavar="ID", type=ROW_ID)
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
@click.argument("ids", nargs=-1, type=ROW_ID)
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
    emit(result.to_json(), result.lines(), as_json)
    attention(result.needs_attention)


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
    emit(result.to_json(), result.lines(), as_json)
    attention(result.needs_attention)


@inbox.command("purge")
@click.option(
    "--older-than",
    type=MOMENT,
    required=True,
    help="Processed before this: a duration (30d) or a timestamp.",
)
@click.option(
    "--batch-size",
    type=BATCH,
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
        emit(preview.to_json(), preview.lines(), as_json)
        return
    result = _with_inbox(lambda inbox: inbox.purge(older_than, batch_size=batch_size), operator)
    emit(result.to_json(), result.lines(), as_json)
