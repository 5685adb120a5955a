"""What the demo shows: a live progress bar while it enqueues, delivers, receives and consumes,
and afterwards a summary of the outbox and the inbox as the database has them, beside what the
emulator saw, with the commands to look further."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter as MetricCounter
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from relay.demo.database import Target, connect
from relay.demo.receiving import CASES_TABLE, InboxTally, Receipts
from relay.demo.state import Run
from relay.emulator.receive import MALFORMED_ITEMS

REFRESH_SECONDS = 0.2

# The progress bar -----------------------------------------------------------------------------


def metric_total(counter: MetricCounter) -> int:
    """A Prometheus counter's value summed over all its labels."""
    return int(
        sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
    )


class RateColumn(ProgressColumn):
    """Events per second, as rich measures the task's progress."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed or 0:,.0f} events/s", style="progress.data.speed")


def progress_bar(console: Console) -> Progress:
    """One line per stage: its count, rate, detail and elapsed time."""
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(bar_width=12),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=1 / REFRESH_SECONDS,
    )


# The summary ----------------------------------------------------------------------------------

SUMMARY_COUNTS = """
    SELECT count(*) AS total,
           count(*) FILTER (WHERE status = 'published') AS published,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'in_flight') AS in_flight,
           min(published_at) AS first_published,
           max(published_at) AS last_published
    FROM "{schema}".outbox"""
# Dead rows grouped by their reason, the most common first, with one id to look at.
SUMMARY_DEAD = """
    SELECT last_error AS reason, count(*) AS rows, min(id) AS example
    FROM "{schema}".outbox WHERE status = 'dead'
    GROUP BY last_error ORDER BY count(*) DESC, min(id)"""


@dataclass(frozen=True, slots=True)
class Tally:
    """The outbox after the run, as the database has it."""

    total: int
    published: int
    pending: int
    in_flight: int  # 0 after any clean stop: held rows are given back
    dead: list[tuple[str, int, int]]  # reason, rows, an example id
    first_published: datetime | None
    last_published: datetime | None

    @property
    def dead_count(self) -> int:
        return sum(rows for _, rows, _ in self.dead)

    @property
    def left(self) -> int:
        return self.pending + self.in_flight

    def rate(self) -> float | None:
        if self.first_published is None or self.last_published is None or self.published < 2:
            return None
        seconds = (self.last_published - self.first_published).total_seconds()
        return self.published / seconds if seconds > 0 else None


async def read_tally(target: Target) -> Tally:
    """The outbox as it is now."""
    connection = await connect(target.url)
    try:
        counts = await connection.fetchrow(SUMMARY_COUNTS.format(schema=target.schema))
        dead = await connection.fetch(SUMMARY_DEAD.format(schema=target.schema))
    finally:
        await connection.close()
    assert counts is not None
    return Tally(
        total=counts["total"],
        published=counts["published"],
        pending=counts["pending"],
        in_flight=counts["in_flight"],
        dead=[
            (row["reason"] or "(no reason recorded)", row["rows"], row["example"]) for row in dead
        ],
        first_published=counts["first_published"],
        last_published=counts["last_published"],
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _emulator_line(stats: dict[str, Any]) -> str:
    answered_503 = stats.get("statuses", {}).get("503", 0)
    return (
        f"received {stats.get('events', 0):,}, duplicates {stats.get('duplicates', 0)}, "
        f"answered 503 {answered_503} times, dropped {stats.get('dropped', 0)} connections"
    )


def _summary_rows(run: Run, tally: Tally) -> list[tuple[str, str]]:
    retried = metric_total(run.daemon.metrics.retried) if run.daemon is not None else 0
    elapsed = time.monotonic() - run.started
    rows = [
        ("Database", f"{run.target.description}; fresh: {run.target.fresh}"),
        (
            "Events",
            f"{tally.total:,} in {run.transactions} transactions, {run.invalid} of them "
            "invalid on purpose (written with plain SQL)",
        ),
        ("Published", f"{tally.published:,}"),
        ("Dead", f"{tally.dead_count:,}"),
        ("Retried attempts", f"{retried:,}"),
        ("Events per second", f"{_number(tally.rate())} (first publish to last)"),
        ("Elapsed", f"relay {run.relay_seconds:.1f} s, whole demo {elapsed:.1f} s"),
        ("Emulator", _emulator_line(run.emulator)),
        (
            "Published by route",
            ", ".join(f"{route} {n:,}" for route, n in sorted(run.routes.items())),
        ),
    ]
    if tally.left:
        left = f"{tally.pending:,} pending"
        if tally.in_flight:
            left += f", {tally.in_flight:,} still leased (their lease brings them back)"
        rows.insert(4, ("Not sent", left + "; committed whole, nothing half-written"))
    if run.given_back:
        back = f"{run.given_back:,} rows the relay still held when it stopped: pending again now"
        rows.insert(5, ("Given back", back))
    return rows


def _inbox_rows(receipts: Receipts, inbox: InboxTally) -> list[tuple[str, str]]:
    sent = receipts.fed + receipts.malformed_sent
    routes = len(inbox.routes)
    rows = [
        (
            "Received",
            f"{inbox.received:,} of the {sent:,} items the emulator sent on {routes} routes: "
            f"{inbox.events:,} events ({receipts.backlog:,} waiting at the start, "
            f"{receipts.live:,} fed while the relay polled) and {inbox.malformed} malformed items",
        ),
        ("Stored once", _stored_once(inbox)),
        (
            "Processed",
            f"{inbox.processed:,} by a consumer per route (relay.inbox.consume), each counted "
            f"in {CASES_TABLE} in the transaction that marked it processed; that table "
            f"counts {inbox.counted_cases:,} cases",
        ),
        ("Failed", _failed(inbox)),
    ]
    if inbox.pending:
        rows.append(("Not consumed", f"{inbox.pending:,} pending: a consumer takes them next"))
    for route, reason in inbox.paused.items():
        rows.append(("Paused", f"{route} by the relay: {reason}"))
    polls = sum(stream.get("polls", 0) for stream in receipts.stream_stats.values())
    pages = receipts.malformed_sent // len(MALFORMED_ITEMS)
    faults = (
        f"{_count(receipts.dropped_polls, 'poll')} dropped halfway through the answer and "
        f"asked again; {_count(pages, 'page')} ended with {receipts.malformed_sent} items that "
        f"are not events; {_count(polls, 'poll')} in all"
    )
    rows.append(("Receive faults", faults))
    p50, p99 = inbox.percentile(0.5), inbox.percentile(0.99)
    if p50 is not None and p99 is not None:
        latency = (
            f"p50 {_milliseconds(p50)}, p99 {_milliseconds(p99)}, from the emulator's feed to "
            f"received_at, of the {len(inbox.latencies):,} events fed while the relay polled"
        )
        rows.append(("Receive latency", latency))
    return rows


def _stored_once(inbox: InboxTally) -> str:
    routes = inbox.routes.values()
    duplicates = inbox.duplicates
    unknown = sum(route.unknown for route in routes)
    missing = inbox.missing
    if duplicates or unknown or not all(route.in_stream_order for route in routes):
        return (
            f"no: {duplicates} duplicates, {unknown} events the emulator never sent, "
            f"{missing} missing, against the emulator's streams"
        )
    if missing and not inbox.events:
        return "nothing yet: the relay stopped before it stored an event"
    if missing:
        return (
            f"so far: each route holds the first events of its stream at the emulator, once "
            f"each, in order (0 duplicates); the other {missing:,} wait there, after the "
            "route's checkpoint"
        )
    return (
        "yes: each route holds its stream at the emulator, every event once, in order "
        "(0 duplicates)"
    )


def _failed(inbox: InboxTally) -> str:
    reasons: dict[str, int] = {}
    for route in inbox.routes.values():
        for reason, items in route.malformed.items():
            reasons[reason] = reasons.get(reason, 0) + items
    text = f"{inbox.failed:,}"
    if reasons:
        listed = ", ".join(f"{reason} ({items})" for reason, items in sorted(reasons.items()))
        text += f": malformed items kept raw, as received: {listed}"
    given_up = inbox.failed - inbox.malformed
    if given_up:
        text += f"; {given_up:,} events the consumer gave up on"
    return text


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _title(run: Run) -> str:
    if run.interrupted:
        return "relay demo: interrupted"
    if run.gave_up:
        return f"relay demo: stopped waiting ({run.gave_up})"
    return "relay demo: done"


def _summary_table(run: Run, tally: Tally, inbox: InboxTally | None) -> Table:
    table = Table(title=_title(run), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in _summary_rows(run, tally):
        table.add_row(name, Text(value))
    if inbox is not None and run.receipts is not None:
        table.add_section()
        for name, value in _inbox_rows(run.receipts, inbox):
            table.add_row(name, Text(value))
    return table


def _dead_table(tally: Tally) -> Table:
    table = Table(title="Dead rows by reason", title_justify="left")
    table.add_column("Rows", justify="right")
    table.add_column("Reason")
    table.add_column("id", justify="right")  # one of them, for relay dead show
    for reason, rows, example in tally.dead:
        table.add_row(str(rows), Text(reason), str(example))
    return table


def _inbox_table(inbox: InboxTally) -> Table:
    """What each route received, in all and by type: stored, processed, failed, and the
    consumer's own count."""
    table = Table(
        title="Received by route and type",
        title_justify="left",
        caption=f"Counted: the cases the consumer counted in {CASES_TABLE}",
        caption_justify="left",
    )
    table.add_column("Route, type")
    for name in ("Received", "Processed", "Failed", "Counted"):
        table.add_column(name, justify="right")
    for route, tally in sorted(inbox.routes.items()):
        malformed = sum(tally.malformed.values())
        rows: list[tuple[str, list[int | None]]] = [
            (
                f"  {event_type}",
                [
                    sum(statuses.values()),
                    statuses.get("processed", 0),
                    statuses.get("failed", 0),
                    inbox.counted.get((route, event_type), 0),
                ],
            )
            for event_type, statuses in sorted(tally.by_type.items())
        ]
        if malformed:
            rows.append(("  (not an event)", [malformed, 0, malformed, None]))
        totals = [sum(numbers[n] or 0 for _, numbers in rows) for n in range(4)]
        table.add_row(Text(route, style="bold"), *(f"{n:,}" for n in totals))
        for name, numbers in rows:
            table.add_row(name, *("-" if n is None else f"{n:,}" for n in numbers))
        table.add_section()
    return table


def _next_steps(run: Run, tally: Tally) -> list[str]:
    """The commands to look further, while the database is still there."""
    target = run.target
    if target.embedded is not None and not run.server_left_running:
        return []  # run_demo says so once it has stopped it
    lines = ["Look further:"]
    if target.embedded is None:
        lines.append(f"  export RELAY_SCHEMA={target.schema}   # RELAY_DATABASE_URL is already set")
    else:
        lines.append(f"  export RELAY_DATABASE_URL='{target.url}'")
    relay = relay_command()
    lines += [f"  {relay} status", f"  {relay} dead list"]
    if tally.dead:
        lines.append(f"  {relay} dead show {tally.dead[0][2]}")
    lines += [f"  {relay} inbox status", f"  {relay} inbox list --status failed"]
    if run.server_left_running:
        lines.append(f"  {relay} demo --stop   # stops the embedded PostgreSQL when you are done")
    return lines


def relay_command() -> str:
    """``relay`` when the shell finds this very program by that name, else its path:
    ``make demo`` runs .venv/bin/relay, which a fresh shell does not have on its PATH."""
    own = Path(sys.argv[0]).absolute()
    if own.name != "relay":
        return "relay"
    found = shutil.which("relay")
    if found is not None and Path(found).resolve() == own.resolve():
        return "relay"
    try:
        return str(own.relative_to(Path.cwd()))
    except ValueError:
        return str(own)


def print_report(run: Run, tally: Tally | None, inbox: InboxTally | None) -> None:
    """The summary, the dead rows by reason, the inbox by route and type, what to run next
    and the one-line results of both directions."""
    console = run.console
    console.print()
    if tally is None:
        console.print(f"relay demo: interrupted while {run.stage}; nothing was sent")
        return
    console.print(_summary_table(run, tally, inbox))
    if tally.dead:
        console.print(_dead_table(tally))
    if inbox is not None and inbox.received:
        console.print(_inbox_table(inbox))
    for line in _next_steps(run, tally):
        console.print(Text(line), soft_wrap=True)
    status = "interrupted" if run.interrupted else "stopped waiting" if run.gave_up else "done"
    console.print(
        f"relay demo: {tally.published} published, {tally.dead_count} dead, "
        f"{tally.left} left of {tally.total} events ({status})",
        soft_wrap=True,
    )
    if inbox is not None and run.receipts is not None:
        receipts = run.receipts
        console.print(
            f"relay demo: inbox: {inbox.received} received of "
            f"{receipts.fed + receipts.malformed_sent} sent ({receipts.fed} events, "
            f"{receipts.malformed_sent} malformed), {inbox.duplicates} duplicates, "
            f"{inbox.missing} missing, "
            f"{inbox.processed} processed, {inbox.failed} failed, {inbox.pending} pending "
            f"({status})",
            soft_wrap=True,
        )
