"""``relay demo``: the whole relay on one machine, end to end, in well under a minute.

Without ``RELAY_DATABASE_URL`` it starts an embedded PostgreSQL (the ``pgserver`` package, the
``embedded`` extra) in ``.relay-demo/pgdata`` under the current directory, re-created database
``relay_demo`` each run. With ``RELAY_DATABASE_URL`` it uses that database, in a schema of its
own (``relay_demo``, re-created each run), so an outbox that holds real events is never touched.

In one process it then starts the emulated partner with realistic latency and a few injected
failures, migrates, enqueues a realistic mix of events through the producer API (plus a handful
of invalid rows written with plain SQL, which must end dead), runs the relay until the queue is
drained with a live progress bar, and prints a summary.

Ctrl-C leaves nothing half-written: the enqueue commits whole transactions only, the relay
finishes the requests in flight and gives the rest back, and the embedded server is stopped
(exit code 130). A second Ctrl-C stops without waiting for requests in flight; the rows they
held are given back all the same.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import secrets
import signal
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import parse_qsl, urlsplit

import asyncpg
from prometheus_client import Counter as MetricCounter
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from relay import database, logs
from relay.config import Settings, load_settings
from relay.daemon import Daemon
from relay.emulator import Emulator, EmulatorConfig, Faults
from relay.errors import ConfigurationError
from relay.outbox import Store, enqueue_async

DEMO_DIRECTORY = Path(".relay-demo")
DEMO_DATABASE = "relay_demo"  # in the embedded server: dropped and created each run
DEMO_SCHEMA = "relay_demo"  # in a database named by RELAY_DATABASE_URL: dropped each run
CLIENT_ID = "relay-demo"
TRANSACTIONS = 6  # the enqueue commits in this many transactions
REFRESH_SECONDS = 0.2
INTERRUPTED = 130  # the shell's exit code for SIGINT
FAULTS = Faults(
    latency_ms=15.0,
    latency_jitter_ms=10.0,  # 15-25 ms, 20 ms on average
    error_rate=0.02,
    error_status=503,
    drop_rate=0.005,
)


class Interrupted(Exception):
    """Ctrl-C arrived; raised inside an enqueue transaction so it rolls back whole."""


# Realistic events ---------------------------------------------------------------------------

# (country, tenant, share of cases, currency, prefix of the insurer's claim ids). Rows of the
# relay's default route (RELAY_COUNTRY/RELAY_TENANT) carry no tenant or country of their own.
TENANTS = (
    ("dk", "abcinsurance", 0.6, "DKK", "ABC"),
    ("dk", "budgetinsurance", 0.3, "DKK", "BUD"),
    ("se", "abcforsakring", 0.1, "SEK", "ABS"),
)
DEFAULT_ROUTE = ("dk", "abcinsurance")
CASE_TYPES = ("contents", "building", "travel", "motor", "glass")
PEOPLE = (
    ("Mette Kjær Hansen", "mkh"),
    ("Lars Nielsen", "lni"),
    ("Sofie Dam Jensen", "sdj"),
    ("Anders Pedersen", "ape"),
    ("Karin Lindqvist", "kli"),
    ("Jonas Ravn", "jra"),
)
CLAIM_ITEMS = ("Television", "Bicycle", "Sofa", "Laptop", "Wedding ring", "Winter coat")
ATTACHMENTS = (("receipt.pdf", "application/pdf"), ("damage.jpg", "image/jpeg"))
REPAIRS = ("glass", "water damage", "locksmith", "roof")
PAYMENT_STATUSES = ("approved", "paid", "paid", "canceled")
CHANGES = ("ClaimantUpdated", "PolicyUpdated", "CaseReopened")


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One event as a producer would enqueue it."""

    event_type: str
    payload: dict[str, Any]
    tenant: str | None
    country: str | None
    ordering_key: str | None
    at: float  # position in the interleaved stream


@dataclass(frozen=True, slots=True)
class _Case:
    """What every event of one claim case shares."""

    case: dict[str, str]
    country: str
    tenant: str
    currency: str


def _new_case(rng: random.Random) -> _Case:
    country, tenant, _, currency, prefix = rng.choices(TENANTS, [t[2] for t in TENANTS])[0]
    case = {
        "uuid": _uuid(rng),
        "token": "c." + rng.randbytes(12).hex(),
        "number": f"2026-{rng.randrange(100_000, 999_999)}",
        "caseType": rng.choice(CASE_TYPES),
        "externalClaimId": f"{prefix}-{rng.randrange(10_000_000, 99_999_999)}",
    }
    return _Case(case, country, tenant, currency)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _person(rng: random.Random, tenant: str) -> dict[str, str]:
    name, initials = rng.choice(PEOPLE)
    return {"name": name, "userName": f"{initials}@{tenant}.example"}


def _money(rng: random.Random, currency: str) -> dict[str, Any]:
    return {"amount": round(rng.uniform(300, 40_000), 2), "currency": currency}


def _case_story(rng: random.Random, claim: _Case) -> list[tuple[str, dict[str, Any]]]:
    """The events of one case, in the order they happen."""
    who = _person(rng, claim.tenant)
    story: list[tuple[str, dict[str, Any]]] = [("case_created", {"changedBy": who})]
    for _ in range(rng.randint(1, 3)):
        line = {
            "uuid": _uuid(rng),
            "description": rng.choice(CLAIM_ITEMS),
            "price": _money(rng, claim.currency),
        }
        story.append(("claimline_changed", {"claimLine": line, "changedBy": who}))
    if rng.random() < 0.6:
        chosen = rng.sample(ATTACHMENTS, rng.randint(1, 2))
        files = [{"uuid": _uuid(rng), "fileName": name, "mimeType": mime} for name, mime in chosen]
        story.append(("attachments_updated", {"attachments": files}))
    if rng.random() < 0.3:
        repair = {"type": rng.choice(REPAIRS), "requestedBy": _person(rng, claim.tenant)}
        story.append(("repair_service_requested", {"repairService": repair}))
    story.append(("claim_updated", {"changes": [rng.choice(CHANGES)], "changedBy": who}))
    story.append(("payment_status_updated", {"payment": _payment(rng, claim.currency)}))
    story.append(("claim_updated", {"changes": ["CaseClosed"], "changedBy": who}))
    return story


def _payment(rng: random.Random, currency: str) -> dict[str, Any]:
    status = rng.choice(PAYMENT_STATUSES)
    payment: dict[str, Any] = {
        "uuid": _uuid(rng),
        "status": status,
        **_money(rng, currency),
    }
    if status == "canceled":
        payment["statusReason"] = "Payment rejected by claimant's bank"
    return payment


def _case_events(rng: random.Random) -> list[DemoEvent]:
    claim = _new_case(rng)
    default_route = (claim.country, claim.tenant) == DEFAULT_ROUTE
    at = rng.random()
    events = []
    for event_type, body in _case_story(rng, claim):
        payload: dict[str, Any] = {"case": claim.case, **body}
        if rng.random() < 0.05:
            payload["correlationId"] = str(uuid.uuid4()).upper()  # the partner sees these too
        # Payments are independent of each other; every other event keeps its case's order.
        key = None if event_type == "payment_status_updated" else f"case:{claim.case['uuid']}"
        events.append(
            DemoEvent(
                event_type,
                payload,
                None if default_route else claim.tenant,
                None if default_route else claim.country,
                key,
                at,
            )
        )
        at += rng.expovariate(20)
    return events


def realistic_events(count: int, rng: random.Random | None = None) -> list[DemoEvent]:
    """``count`` events of many cases, interleaved as they would arrive, each case in order."""
    rng = rng or random.Random()
    events: list[DemoEvent] = []
    while len(events) < count:
        events.extend(_case_events(rng))
    events.sort(key=lambda event: event.at)
    return events[:count]


def _invalid_payloads() -> list[tuple[str, str]]:
    """Rows the producer API would refuse, written with plain SQL: each must end dead."""

    def body(event_type: str, **fields: Any) -> str:
        document = {"eventType": event_type, "payloadVersion": "1.0.0", **fields}
        return json.dumps(document)

    now = "2026-11-28T10:31:28.251Z"
    return [
        ("claim_updated", json.dumps([{"changes": ["CaseClosed"]}])),
        ("attachments_updated", json.dumps(["receipt.pdf"])),
        ("payment_status_updated", body("payment_status_updated", timestamp=now)),
        ("claim_updated", body("case_created", correlationId=str(uuid.uuid4()), timestamp=now)),
        ("case_created", body("case_created", correlationId="case-4711", timestamp=now)),
    ]


INVALID_ROWS = len(_invalid_payloads())
# Unkeyed and on the default route: a dead row would hold back the rest of its key.
INSERT_INVALID = 'INSERT INTO "{schema}".outbox (event_type, payload) VALUES ($1, $2::jsonb)'


# Where the events go ------------------------------------------------------------------------


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
                "the embedded PostgreSQL needs the 'embedded' extra: pip install 'relay[embedded]'"
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


async def _start_fresh(target: Target) -> None:
    """Every run starts empty: a new database (embedded) or a new schema (yours)."""
    if target.embedded is not None:
        admin = await _connect(str(target.embedded.get_uri()))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
        finally:
            await admin.close()
        return
    connection = await _connect(target.url)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')
    finally:
        await connection.close()


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database.asyncpg_dsn(url), timeout=10)
    except database.CONNECTION_ERRORS as error:
        raise database.describe_connection_error(url, error) from None


# Running ------------------------------------------------------------------------------------


@dataclass
class Run:
    """What happened, for the progress bar and the summary."""

    target: Target
    events: int
    console: Console
    keep_server: bool
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    stage: str = "starting"
    committed: int = 0  # rows in committed transactions
    invalid: int = 0  # of which written with plain SQL
    given_back: int = 0  # rows the relay still held when it stopped
    transactions: int = 0
    relay_seconds: float = 0.0
    daemon: Daemon | None = None
    emulator: dict[str, Any] = field(default_factory=dict)
    routes: Counter[str] = field(default_factory=Counter)
    main_task: asyncio.Task[None] | None = None

    def interrupt(self) -> None:
        """First Ctrl-C: finish cleanly. Second: stop now."""
        if self.interrupted and self.main_task is not None:
            self.main_task.cancel()
            return
        self.interrupted = True
        if self.daemon is not None:
            self.daemon.stop.set()

    def check(self) -> None:
        if self.interrupted:
            raise Interrupted


class _Stderr(io.TextIOBase):
    """Whatever ``sys.stderr`` is now: while the progress bar shows, rich swaps in a proxy
    that prints log lines above the bar instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def demo_settings(target: Target, emulator: Emulator, secret: str) -> Settings:
    """Relay settings aimed at the in-process emulator; short backoffs so the demo is quick."""
    return load_settings(
        database_url=target.url,
        RELAY_SCHEMA=target.schema,  # the field's alias: schema_name= would be ignored
        token_url=emulator.token_url,
        api_base_url=emulator.base_url,
        country=DEFAULT_ROUTE[0],
        tenant=DEFAULT_ROUTE[1],
        client_id=CLIENT_ID,
        client_secret=secret,
        client_auth_method="client_secret_post",
        http_host="127.0.0.1",
        http_port=0,
        concurrency=32,
        poll_interval=0.5,
        backoff_base=0.05,
        backoff_cap=1.0,
        shutdown_grace=3.0,
        dead_blocks_key=True,
        retention=None,
        log_level="warning",
        log_format="auto",
    )


async def _enqueue(run: Run, progress: Progress, task: TaskID) -> None:
    """The events through the producer API, in a few transactions, plus the invalid rows."""
    events = realistic_events(run.events - INVALID_ROWS)
    size = -(-len(events) // TRANSACTIONS)
    batches = [events[start : start + size] for start in range(0, len(events), size)]
    invalid: list[list[tuple[str, str]]] = [[] for _ in batches]
    for n, row in enumerate(_invalid_payloads()):
        invalid[n % len(batches)].append(row)
    connection = await _connect(run.target.url)
    try:
        for batch, extra in zip(batches, invalid, strict=True):
            await _enqueue_batch(run, connection, batch, extra, lambda: progress.advance(task))
    finally:
        await connection.close()


async def _enqueue_batch(
    run: Run,
    connection: asyncpg.Connection,
    batch: Sequence[DemoEvent],
    invalid: Sequence[tuple[str, str]],
    advance: Callable[[], None],
) -> None:
    """One transaction: all of it commits, or (Ctrl-C) none of it."""
    schema = run.target.schema
    async with connection.transaction():
        for event in batch:
            run.check()
            await enqueue_async(
                connection,
                event.event_type,
                event.payload,
                tenant=event.tenant,
                country=event.country,
                ordering_key=event.ordering_key,
                schema=schema,
            )
            advance()
        for event_type, body in invalid:
            await connection.execute(INSERT_INVALID.format(schema=schema), event_type, body)
            advance()
        run.check()
    run.committed += len(batch) + len(invalid)
    run.invalid += len(invalid)
    run.transactions += 1


def _total(counter: MetricCounter) -> int:
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


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=1 / REFRESH_SECONDS,
    )


async def _deliver(run: Run, daemon: Daemon, progress: Progress, task: TaskID) -> None:
    """Run the relay until it has drained the queue (or Ctrl-C), updating the bar."""
    metrics = daemon.metrics
    started = time.monotonic()
    relay = asyncio.create_task(daemon.run(drain=True), name="relay")
    try:
        while not relay.done():
            await asyncio.wait([relay], timeout=REFRESH_SECONDS)
            published, dead = _total(metrics.published), _total(metrics.dead)
            detail = f"{dead} dead, {_total(metrics.retried)} retried"
            progress.update(task, completed=published + dead, detail=detail)
        relay.result()
    finally:
        if not relay.done():  # a second Ctrl-C cancelled us; _summarise gives held rows back
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        run.relay_seconds = time.monotonic() - started


async def _demo(run: Run, secret: str) -> None:
    config = EmulatorConfig(clients={CLIENT_ID: secret}, faults=FAULTS)
    async with Emulator(config) as emulator:
        settings = demo_settings(run.target, emulator, secret)
        logs.configure(settings.log_level, settings.log_format, stream=cast(TextIO, _Stderr()))
        run.daemon = Daemon(settings)
        if run.interrupted:
            run.daemon.stop.set()
        try:
            await _prepare(run, emulator)
            await _send(run, run.daemon)
        finally:
            run.emulator = emulator.stats()
            run.routes = Counter(f"{e.country}/{e.tenant}" for e in emulator.events)


async def _prepare(run: Run, emulator: Emulator) -> None:
    echo = run.console.print
    echo(f"relay demo: using {run.target.description}", soft_wrap=True)
    run.stage = "migrating"
    await _start_fresh(run.target)
    echo(f"relay demo: fresh start: {run.target.fresh}", soft_wrap=True)
    # migrate() runs its own event loop (Alembic), so it needs a thread of its own.
    await asyncio.to_thread(database.migrate, run.target.url, run.target.schema)
    run.check()
    echo(f"relay demo: schema migrated to revision {database.head_revision()}")
    faults = emulator.faults
    echo(
        f"relay demo: emulated EventApi at {emulator.base_url} "
        f"(latency {faults.latency_ms:g}-{faults.latency_ms + faults.latency_jitter_ms:g} ms, "
        f"{faults.error_rate:.0%} answered 503, {faults.drop_rate:.1%} connections dropped)",
        soft_wrap=True,
    )


async def _send(run: Run, daemon: Daemon) -> None:
    with _progress(run.console) as progress:
        enqueue = progress.add_task("enqueue", total=run.events, detail="")
        run.stage = "enqueueing"
        await _enqueue(run, progress, enqueue)
        deliver = progress.add_task("deliver", total=run.committed, detail="")
        run.stage = "delivering"
        await _deliver(run, daemon, progress, deliver)
    run.stage = "done"


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


async def _tally(target: Target) -> Tally:
    connection = await _connect(target.url)
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
    retried = _total(run.daemon.metrics.retried) if run.daemon is not None else 0
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
        ("By route", ", ".join(f"{route} {n:,}" for route, n in sorted(run.routes.items()))),
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


def _summary_table(run: Run, tally: Tally) -> Table:
    title = "relay demo: interrupted" if run.interrupted else "relay demo: done"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in _summary_rows(run, tally):
        table.add_row(name, Text(value))
    return table


def _dead_table(tally: Tally) -> Table:
    table = Table(title="Dead rows by reason", title_justify="left")
    table.add_column("Rows", justify="right")
    table.add_column("Reason")
    table.add_column("e.g. id", justify="right")
    for reason, rows, example in tally.dead:
        table.add_row(str(rows), Text(reason), str(example))
    return table


def _next_steps(run: Run, tally: Tally) -> list[str]:
    target = run.target
    server_left_running = target.embedded is not None and run.keep_server and not run.interrupted
    if target.embedded is not None and not server_left_running:
        return ["relay demo: the embedded PostgreSQL is stopped"]
    lines = ["Look further:"]
    if target.embedded is None:
        lines.append(f"  export RELAY_SCHEMA={target.schema}   # RELAY_DATABASE_URL is already set")
    else:
        lines.append(f"  export RELAY_DATABASE_URL='{target.url}'")
    lines += ["  relay status", "  relay dead list"]
    if tally.dead:
        lines.append(f"  relay dead show {tally.dead[0][2]}")
    if server_left_running:
        lines.append("  relay demo --stop   # stops the embedded PostgreSQL when you are done")
    return lines


def _report(run: Run, tally: Tally | None) -> None:
    console = run.console
    console.print()
    if tally is None:
        console.print(f"relay demo: interrupted while {run.stage}; nothing was sent")
        return
    console.print(_summary_table(run, tally))
    if tally.dead:
        console.print(_dead_table(tally))
    for line in _next_steps(run, tally):
        console.print(Text(line), soft_wrap=True)
    status = "interrupted" if run.interrupted else "done"
    console.print(
        f"relay demo: {tally.published} published, {tally.dead_count} dead, "
        f"{tally.left} left of {tally.total} events ({status})",
        soft_wrap=True,
    )


async def _main(run: Run, secret: str) -> None:
    run.main_task = cast("asyncio.Task[None]", asyncio.current_task())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, run.interrupt)
    loop.add_signal_handler(signal.SIGTERM, run.interrupt)
    try:
        await _demo(run, secret)
    except Interrupted:
        pass
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


async def _summarise(run: Run) -> Tally | None:
    if run.stage in ("starting", "migrating"):
        return None
    tally = await _tally(run.target)
    if tally.in_flight and run.daemon is not None:
        await _give_back(run.target, run.daemon.settings.worker_id)
        run.given_back = tally.in_flight
        tally = await _tally(run.target)
    return tally


async def _give_back(target: Target, worker_id: str) -> None:
    """Rows the stopped relay still holds go back to pending now, as their lease would make
    them later: after a second Ctrl-C (requests abandoned) or a claim cut short at shutdown.
    The demo is the only worker on its database or schema, and it has stopped."""
    pool = await database.create_pool(target.url, min_size=1, max_size=1)
    try:
        await Store(pool, target.schema, worker_id).release_all()
    finally:
        await pool.close()


def _target(settings: Settings, stack: ExitStack, console: Console) -> Target:
    if settings.database_url:
        return _external_target(settings.database_url)
    return _embedded_target(stack, console)


def run_demo(events: int, *, keep_server: bool, console: Console | None = None) -> int:
    """Run the demo; return the exit code (0, or 130 when interrupted)."""
    started = time.monotonic()
    console = console or Console(highlight=False)
    settings = load_settings()  # RELAY_DATABASE_URL decides: embedded or yours
    with ExitStack() as stack:
        try:
            target = _target(settings, stack, console)
        except KeyboardInterrupt:
            _stop_leftover(console)
            console.print("relay demo: interrupted while starting PostgreSQL; nothing was written")
            return INTERRUPTED
        run = Run(target, events, console, keep_server, started)
        try:
            asyncio.run(_main(run, secrets.token_urlsafe(24)))
        except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C
            run.interrupted = True
        _report(run, asyncio.run(_summarise(run)))
        if target.embedded is not None and keep_server and not run.interrupted:
            target.embedded.cleanup_mode = None  # leave it running for the commands above
    return INTERRUPTED if run.interrupted else 0


def _stop_leftover(console: Console) -> None:
    if stop_embedded(DEMO_DIRECTORY):
        console.print("relay demo: stopped the embedded PostgreSQL")


def stop(console: Console | None = None) -> None:
    """``relay demo --stop``."""
    console = console or Console(highlight=False)
    if stop_embedded(DEMO_DIRECTORY):
        console.print(f"relay demo: stopped the embedded PostgreSQL in {DEMO_DIRECTORY / 'pgdata'}")
    else:
        console.print(f"relay demo: no embedded PostgreSQL is running in {DEMO_DIRECTORY}")
