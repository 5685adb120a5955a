"""The benchmarks. Each function runs one and returns plain data for the JSON report."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.counting import METHODS
from bench.database import BenchDatabase
from bench.events import body
from bench.measure import CpuMeter, CpuWindow, Usage, machine_busy, run_measured
from bench.otlp_sink import Sink, running_sink
from bench.partner import Arrival, Partner, running_partner
from bench.relay_process import clean_environment, drain, relay_environment, running_relay
from relay.outbox import enqueue_async

PYTHON = sys.executable
Result = dict[str, Any]


@dataclass
class Context:
    """What every benchmark shares: the database, the emulators, where logs go."""

    db: BenchDatabase
    logs: Path
    stack: ExitStack
    quiet_limit: float = 0.25  # busy fraction of the machine we wait to drop below
    noisy_cores: float = 0.15  # a run with more foreign load than this is repeated ...
    tries: int = 3  # ... up to this many times in all; the least disturbed one is kept
    partners: dict[float, Partner] = field(default_factory=dict)
    sink: Sink | None = None
    startup_cpu: dict[str, float] = field(default_factory=dict)  # program -> CPU seconds
    runs: int = 0

    def partner(self, latency_ms: float) -> Partner:
        """One emulator process per latency, started on first use, kept for the suite."""
        if latency_ms not in self.partners:
            log = self.logs / f"emulator-{latency_ms:g}ms.log"
            self.partners[latency_ms] = self.stack.enter_context(running_partner(latency_ms, log))
        return self.partners[latency_ms]

    def relay_startup(self, traced: bool = False) -> float:
        """The relay's CPU seconds for an empty drain (with tracing on: measured on first use,
        as loading the SDK and the exporter costs more at start-up)."""
        if traced and "relay-traced" not in self.startup_cpu:
            self.db.clear()
            env = relay_environment(self.partner(0), self.db.url, 32)
            env.update(OTEL_EXPORTER_OTLP_ENDPOINT=self.otlp().url)
            self.startup_cpu["relay-traced"] = drain(env, self.log("startup-relay-traced")).cpu
        return self.startup_cpu.get("relay-traced" if traced else "relay", 0.0)

    def otlp(self) -> Sink:
        """The OTLP receiver traced runs export to, started on first use."""
        if self.sink is None:
            self.sink = self.stack.enter_context(running_sink(self.logs / "otlp-sink.log"))
        return self.sink

    def log(self, name: str) -> Path:
        self.runs += 1
        return self.logs / f"{self.runs:02d}-{name}.log"

    def meter(self, partner: Partner) -> CpuMeter:
        return CpuMeter(partner.pid, self.db.admin_url, self.db.name)

    def measure(self, run: Callable[[], Result]) -> Result:
        """Run a measurement, again while other work disturbed it; keep the quietest try."""
        kept: Result | None = None
        foreign: list[float] = []
        for _ in range(self.tries):
            result = run()
            foreign.append(result["foreign_cores"])
            if kept is None or result["foreign_cores"] < kept["foreign_cores"]:
                kept = result
            if result["foreign_cores"] <= self.noisy_cores:
                break
        assert kept is not None
        kept["tries"] = len(foreign)
        kept["foreign_cores_per_try"] = foreign
        return kept


def wait_for_quiet(limit: float, timeout: float = 30.0) -> float:
    """Wait until the machine is mostly idle (other people's test suites share it); return
    the busy fraction of the last one-second sample, recorded with each run as noise."""
    deadline = time.monotonic() + timeout
    while True:
        busy_start, total_start = machine_busy()
        time.sleep(1.0)
        busy, total = machine_busy()
        fraction = (busy - busy_start) / max(total - total_start, 1e-9)
        if fraction <= limit or time.monotonic() > deadline:
            return round(fraction, 3)


def arrival_rate(arrivals: Sequence[Arrival], count: int | None = None) -> float:
    """Events per second from the first arrival to the last (of the first ``count``)."""
    times = sorted(arrival.at for arrival in arrivals)[:count]
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _per_event(seconds: float, events: int) -> float:
    return round(seconds / max(events, 1) * 1e6, 1)


def _costs(
    events: int, usage: Usage, window: CpuWindow, background: float, startup: float = 0.0
) -> Result:
    """CPU per event is net of the program's start-up and shutdown (``startup``)."""
    return {
        "events": events,
        "wall_s": round(usage.wall, 2),
        "cpu_s": round(usage.cpu, 2),
        "startup_cpu_s": round(startup, 2),
        "cpu_per_event_us": _per_event(usage.cpu - startup, events),
        "peak_rss_mb": round(usage.max_rss_mb, 1),
        "emulator_cpu_per_event_us": _per_event(window.emulator, events),
        "postgres_cpu_per_event_us": _per_event(window.backends, events),
        "postgres_all_cpu_per_event_us": _per_event(window.postgres, events),
        "machine_busy_cores": round(window.machine / window.seconds, 2),
        "foreign_cores": round(window.foreign_cores(usage.cpu), 2),
        "background_busy_before": background,
    }


# Start-up cost -----------------------------------------------------------------------------


def startup(ctx: Context) -> Result:
    """CPU and memory of the relay and the ceiling client doing nothing: ``relay run --drain``
    on an empty table, the ceiling with one event. Subtracted from per-event CPU."""
    partner = ctx.partner(0)
    ctx.db.clear()
    env = relay_environment(partner, ctx.db.url, 32)
    relay = drain(env, ctx.log("startup-relay"))
    command = [PYTHON, "-m", "bench.ceiling", "--base-url", partner.base_url, "--events", "1"]
    client = run_measured(command, clean_environment(), ctx.log("startup-ceiling"), 60)
    ctx.startup_cpu = {"relay": relay.cpu, "ceiling": client.cpu}
    return {
        "kind": "startup",
        "relay_cpu_s": round(relay.cpu, 2),
        "relay_peak_rss_mb": round(relay.max_rss_mb, 1),
        "ceiling_cpu_s": round(client.cpu, 2),
        "ceiling_peak_rss_mb": round(client.max_rss_mb, 1),
    }


# HTTP ceiling ------------------------------------------------------------------------------


def ceiling(ctx: Context, latency_ms: float, concurrency: int, events: int) -> Result:
    """The relay's HTTP client alone (``bench.ceiling``) against the same emulator."""
    partner = ctx.partner(latency_ms)
    partner.reset()
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    command = [PYTHON, "-m", "bench.ceiling", "--base-url", partner.base_url]
    command += ["--events", str(events), "--concurrency", str(concurrency)]
    log = ctx.log(f"ceiling-{latency_ms:g}ms-c{concurrency}")
    usage = run_measured(command, clean_environment(), log, 600)
    window = meter.read()
    arrivals = partner.arrivals()
    summary = json.loads(log.read_text().strip().splitlines()[-1])
    return {
        "kind": "ceiling",
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "rate": round(arrival_rate(arrivals), 1),
        "request_ms_p50": summary["request_ms_p50"],
        **_costs(len(arrivals), usage, window, background, ctx.startup_cpu.get("ceiling", 0)),
    }


# Naive baseline ----------------------------------------------------------------------------


def naive(ctx: Context, rows: int) -> Result:
    """``bench.naive`` (psycopg + requests, one row at a time) over ``rows`` pending rows."""
    partner = ctx.partner(0)
    ctx.db.clear()
    ctx.db.load_pending(rows)
    ctx.db.vacuum_analyze()
    partner.reset()
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    command = [PYTHON, "-m", "bench.naive", "--database-url", ctx.db.url]
    command += ["--base-url", partner.base_url]
    usage = run_measured(command, clean_environment(), ctx.log("naive"), 900)
    window = meter.read()
    arrivals = partner.arrivals()
    return {
        "kind": "naive",
        "latency_ms": 0,
        "concurrency": 1,
        "rate": round(arrival_rate(arrivals), 1),
        "rate_db": round(ctx.db.span().rate, 1),
        **_costs(len(arrivals), usage, window, background),
    }


# The relay draining a backlog --------------------------------------------------------------


def _prepare_table(
    db: BenchDatabase, pending: int, published: int, sampled: float | None = None
) -> None:
    db.clear()
    if published:
        db.load_published(published)
    db.load_pending(pending, sampled=sampled)
    db.vacuum_analyze()


def relay_drain(
    ctx: Context, latency_ms: float, concurrency: int, rows: int, *, sampled: float | None = None
) -> Result:
    """``relay run --drain`` over ``rows`` pending rows; with ``sampled``, rows written inside
    spans (that fraction of them sampled by the producer) and the relay exporting its own spans
    to an OTLP receiver (bench.otlp_sink)."""
    partner = ctx.partner(latency_ms)
    _prepare_table(ctx.db, rows, 0, sampled)
    partner.reset()
    env = relay_environment(partner, ctx.db.url, concurrency)
    if sampled is not None:
        ctx.otlp().reset()
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=ctx.otlp().url, OTEL_SERVICE_NAME="relay-bench")
    transactions = ctx.db.transactions()
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    usage = drain(env, ctx.log(f"relay-{latency_ms:g}ms-c{concurrency}"))
    window = meter.read()
    time.sleep(0.5)  # the relay's backends report their statistics as they exit
    transactions = ctx.db.transactions() - transactions - 1  # minus our own first read
    arrivals = partner.arrivals()
    counts = ctx.db.counts()
    return {
        "kind": "relay",
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        **(
            {"tracing": f"on, {sampled:.0%} sampled", "spans": ctx.otlp().spans()}
            if sampled is not None
            else {}
        ),
        "rate": round(arrival_rate(arrivals), 1),
        "rate_db": round(ctx.db.span().rate, 1),
        "request_ms_p50": ctx.db.request_ms_p50(),
        "transactions_per_event": round(transactions / max(len(arrivals), 1), 3),
        "all_published": counts == {"published": rows},
        "duplicates": partner.stats()["duplicates"],
        **_costs(len(arrivals), usage, window, background, ctx.relay_startup(sampled is not None)),
    }


# Backlog: the same 20,000 publishes with a large table -------------------------------------


def _run_until(
    ctx: Context, partner: Partner, env: dict[str, str], events: int, name: str
) -> Usage:
    """``relay run`` until the emulator has seen ``events`` events, then SIGTERM."""
    with running_relay(env, ctx.log(name)) as relay:
        deadline = time.monotonic() + 600
        while partner.stats()["events"] < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: fewer than {events} events in 600 s")
            time.sleep(0.05)
        return relay.stop()


def _plan_summary(plan: str) -> Result:
    lines = plan.splitlines()
    execution = next((line for line in lines if line.startswith("Execution Time")), "")
    buffers = next((line.strip() for line in lines if "Buffers" in line), "")
    jit = next((line.strip() for line in lines if line.strip().startswith("Timing:")), None)
    return {
        "execution_ms": float(execution.split(":")[1].split()[0]) if execution else None,
        "top_buffers": buffers,
        "estimated_cost": lines[0].split("cost=")[1].split()[0] if "cost=" in lines[0] else None,
        "jit": jit,
        "plan": plan,
    }


def backlog(
    ctx: Context, label: str, *, published: int, pending: int, events: int, concurrency: int
) -> Result:
    """Publish ``events`` rows at 0 ms with ``published`` old rows and ``pending`` rows waiting:
    the per-row cost must not depend on the table's size."""
    partner = ctx.partner(0)
    _prepare_table(ctx.db, pending, published)
    plans = {
        "custom": _plan_summary(ctx.db.explain_claim(concurrency)),
        "generic": _plan_summary(ctx.db.explain_claim(concurrency, generic=True)),
        "generic_jit_off": _plan_summary(
            ctx.db.explain_claim(concurrency, generic=True, jit=False)
        ),
    }
    partner.reset()
    env = relay_environment(partner, ctx.db.url, concurrency)
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    usage = _run_until(ctx, partner, env, events, f"backlog-{label}")
    window = meter.read()
    arrivals = partner.arrivals()
    plans["after"] = _plan_summary(ctx.db.explain_claim(concurrency))
    rate = arrival_rate(arrivals, events)
    return {
        "kind": "backlog",
        "label": label,
        "published_rows": published,
        "pending_rows": pending,
        "concurrency": concurrency,
        "rate": round(rate, 1),
        "ms_per_event": round(1000 / rate, 3) if rate else None,
        "claim_plans": plans,
        **_costs(len(arrivals), usage, window, background, ctx.startup_cpu.get("relay", 0)),
    }


# Beside a blocked backlog: rows without a key, behind rows no claim may send ---------------


def blocked(ctx: Context, label: str, *, blocked: int, free: int, concurrency: int) -> Result:
    """``free`` rows without a key, published by a relay that starts beside ``blocked`` rows
    of one key waiting behind a dead row (written first, available first, not yet parked):
    their rate and how soon the first of them goes must not depend on ``blocked``."""
    partner = ctx.partner(0)
    ctx.db.clear()
    if blocked:
        ctx.db.load_blocked(blocked)
    ctx.db.load_pending(free)
    ctx.db.vacuum_analyze()
    partner.reset()
    env = relay_environment(partner, ctx.db.url, concurrency)
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    with running_relay(env, ctx.log(f"blocked-{label}")) as relay:
        deadline = time.monotonic() + 600
        while partner.stats()["events"] < free:
            if time.monotonic() > deadline:
                raise TimeoutError(f"blocked {label}: fewer than {free} events in 600 s")
            time.sleep(0.05)
        usage = relay.stop()
    window = meter.read()
    arrivals = partner.arrivals()
    first = min(arrival.at for arrival in arrivals) - relay.started
    return {
        "kind": "blocked",
        "label": label,
        "blocked_rows": blocked,
        "concurrency": concurrency,
        "rate": round(arrival_rate(arrivals), 1),
        "first_row_s": round(first, 3),
        **_costs(len(arrivals), usage, window, background, ctx.startup_cpu.get("relay", 0)),
    }


# Isolation: one route hung or stalled beside a healthy one -------------------------------

HEALTHY, TROUBLED = "abcinsurance", "troubled"


def isolation(
    ctx: Context, label: str, *, fault: str | None, rows: int, latency_ms: float,
    concurrency: int,
) -> Result:  # fmt: skip
    """The healthy route's rate over ``rows`` of its rows, alone or (``fault``: hang, stall)
    beside as many rows of a route whose every request hangs or stalls until the 3 s request
    timeout."""
    partner = ctx.partner(latency_ms)
    ctx.db.clear()
    ctx.db.load_pending(rows, (HEALTHY, TROUBLED) if fault else (HEALTHY,))
    ctx.db.vacuum_analyze()
    partner.reset()
    if fault:
        partner.set_faults(route_fault={f"dk/{TROUBLED}": fault})
    env = relay_environment(partner, ctx.db.url, concurrency, request_timeout="3s", lease="9s")
    background = wait_for_quiet(ctx.quiet_limit)
    try:
        with running_relay(env, ctx.log(f"isolation-{label}")) as relay:
            deadline = time.monotonic() + 600
            while _healthy(partner) < rows:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"isolation {label}: fewer than {rows} events in 600 s")
                time.sleep(0.05)
            usage = relay.stop()
    finally:
        partner.set_faults()
    arrivals = [arrival for arrival in partner.arrivals() if arrival.tenant == HEALTHY]
    stats = partner.stats()
    return {
        "kind": "isolation",
        "label": label,
        "fault": fault,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "rate": round(arrival_rate(arrivals), 1),
        "troubled_requests": stats["sends_by_route"].get(f"dk/{TROUBLED}", 0),
        "background_busy_before": background,
        "wall_s": round(usage.wall, 2),
        "foreign_cores": 0.0,
    }


def _healthy(partner: Partner) -> int:
    return int(partner.stats()["sends_by_route"].get(f"dk/{HEALTHY}", 0))


# Recovery: how soon delivery resumes after an outage ends -----------------------------------


def recovery(ctx: Context, label: str, *, outage_s: float, rows: int) -> Result:
    """A relay runs through an outage of ``outage_s`` seconds (``partner``: every send answers
    503; ``token``: the token endpoint answers 500, the relay starting without a token) while
    ``rows`` wait; the time from the outage's end to the first publish after it."""
    partner = ctx.partner(0)
    ctx.db.clear()
    ctx.db.load_pending(rows)
    ctx.db.vacuum_analyze()
    partner.reset()
    if label == "partner":
        partner.set_faults(status=503)
    else:
        partner.set_faults(token_status=500)
    env = relay_environment(partner, ctx.db.url, 32)
    with running_relay(env, ctx.log(f"recovery-{label}")) as relay:
        time.sleep(outage_s)  # the outage itself
        ended = time.monotonic()
        partner.set_faults()
        deadline = ended + 120
        while partner.stats()["events"] == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recovery {label}: nothing published 120 s after the end")
            time.sleep(0.01)
        _wait_for_events(partner, rows, 120)
        relay.stop()
    first = min(arrival.at for arrival in partner.arrivals())
    counts = ctx.db.counts()
    logged, most_attempts = ctx.db.delivery_summary()
    return {
        "kind": "recovery",
        "label": label,
        "outage_s": outage_s,
        "resumed_after_s": round(first - ended, 2),
        "all_published": counts == {"published": rows},
        "delivery_log_rows": int(str(logged)),
        "most_attempts": int(str(most_attempts)),
        "foreign_cores": 0.0,
    }


# Latency under a trickle --------------------------------------------------------------------


async def _produce(url: str, per_second: float, count: int) -> dict[str, float]:
    """Insert ``count`` events at a steady rate, each in its own transaction through the
    producer API; return each correlationId's commit time (CLOCK_MONOTONIC)."""
    committed: dict[str, float] = {}
    connection = await asyncpg.connect(url)
    try:
        start = time.monotonic()
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n / per_second - time.monotonic()))
            document = body()
            async with connection.transaction():
                await enqueue_async(connection, "payment_status_updated", document)
            committed[str(document["correlationId"])] = time.monotonic()
    finally:
        await connection.close()
    return committed


def _wait_for_events(partner: Partner, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while partner.stats()["events"] < count and time.monotonic() < deadline:
        time.sleep(0.05)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def trickle(ctx: Context, per_second: float, seconds: float, concurrency: int) -> Result:
    """A producer inserting ``per_second`` events into an idle ``relay run``: latency from
    the producer's COMMIT to the emulator's arrival, both on CLOCK_MONOTONIC."""
    partner = ctx.partner(0)
    ctx.db.clear()
    ctx.db.vacuum_analyze()
    partner.reset()
    env = relay_environment(partner, ctx.db.url, concurrency)
    warmup = 20
    count = round(per_second * seconds)
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    with running_relay(env, ctx.log("trickle")) as relay:
        # Warm-up: the first events pay for the token, the TCP connections and asyncpg's
        # statement preparation, which a long-running relay has long paid.
        asyncio.run(_produce(ctx.db.url, per_second, warmup))
        _wait_for_events(partner, warmup, 10)
        committed = asyncio.run(_produce(ctx.db.url, per_second, count))
        _wait_for_events(partner, warmup + count, 30)
        usage = relay.stop()
    window = meter.read()
    arrived = {arrival.correlation_id: arrival.at for arrival in partner.arrivals()}
    latencies = [(arrived[key] - at) * 1000 for key, at in committed.items() if key in arrived]
    return {
        "kind": "trickle",
        "per_second": per_second,
        "seconds": seconds,
        "produced": count,
        "delivered": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "peak_rss_mb": round(usage.max_rss_mb, 1),
        "foreign_cores": round(window.foreign_cores(usage.cpu), 2),
        "background_busy_before": background,
    }


# Database work per event -------------------------------------------------------------------


def database_work(ctx: Context, concurrency: int, rows: int) -> Result:
    """``relay run --drain`` at 0 ms with every asyncpg call counted (``bench.counting``)."""
    partner = ctx.partner(0)
    _prepare_table(ctx.db, rows, 0)
    partner.reset()
    counts_file = ctx.logs / "counts.json"
    env = relay_environment(partner, ctx.db.url, concurrency)
    env["BENCH_COUNTS_FILE"] = str(counts_file)
    transactions = ctx.db.transactions()
    background = wait_for_quiet(ctx.quiet_limit)
    meter = ctx.meter(partner)
    command = [PYTHON, "-m", "bench.counting", "run", "--drain"]
    usage = run_measured(command, env, ctx.log(f"counted-c{concurrency}"), 600)
    window = meter.read()
    time.sleep(0.5)
    transactions = ctx.db.transactions() - transactions - 1
    calls: dict[str, int] = json.loads(counts_file.read_text())
    published = ctx.db.counts().get("published", 0)
    statements = sum(n for name, n in calls.items() if name != "pool_reset")
    return {
        "kind": "database_work",
        "concurrency": concurrency,
        "published": published,
        "calls": calls,
        "counted_methods": list(METHODS),
        "statements_per_event": round(statements / max(published, 1), 4),
        "round_trips_per_event": round(sum(calls.values()) / max(published, 1), 4),
        "transactions_per_event": round(transactions / max(published, 1), 4),
        "foreign_cores": round(window.foreign_cores(usage.cpu), 2),
        "background_busy_before": background,
    }
