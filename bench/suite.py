"""Run every benchmark in one go: ``python -m bench.suite`` (``make bench``).

Writes bench/results/<time>.json (and latest.json, latest.md) and prints the markdown
tables docs/benchmarks.md is made from. ``--quick`` runs a small version in about a minute
(a smoke test: its figures are not held against the targets); ``--only`` picks benchmarks.
See docs/benchmarks.md for what each one measures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench import receive, report, scenarios
from bench.database import BenchDatabase
from bench.machine import describe
from bench.measure import ROOT

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True, slots=True)
class Plan:
    rows: int  # pending rows per throughput run (and events per ceiling run)
    latencies: tuple[float, ...]
    concurrencies: tuple[int, ...]
    naive_rows: int
    trickle_per_second: float
    trickle_seconds: float
    backlog: tuple[tuple[str, int, int], ...]  # label, published rows, pending rows
    backlog_events: int
    blocked: tuple[tuple[str, int], ...] = (("alone", 0), ("100k blocked", 100_000))
    blocked_free: int = 10_000  # rows without a key published beside the blocked ones
    blocked_rounds: int = 3
    isolation_rows: int = 5_000  # the healthy route's rows
    isolation_latencies: tuple[float, ...] = (0, 20)
    isolation_rounds: int = 3
    outage_s: float = 60.0
    receive_backlog: int = 20_000  # events waiting for the receiver
    receive_trickle_per_second: float = 50
    receive_trickle_seconds: float = 20
    # Runs at 0 ms last a few seconds and drift with the machine by +-20 %: they are measured
    # in interleaved rounds (A B A B ..., A B C A B C ...) and each one's median run reported.
    throughput_rounds_at_0ms: int = 3
    backlog_rounds: int = 5
    concurrency: int = 32  # for naive comparison, trickle, backlog and database work


FULL = Plan(
    rows=20_000,
    latencies=(0, 20),
    concurrencies=(8, 32, 64),
    naive_rows=5_000,
    trickle_per_second=50,
    trickle_seconds=20,
    backlog=(
        ("10k published", 10_000, 20_000),
        ("1M published", 1_000_000, 20_000),
        ("1M pending", 0, 1_000_000),
    ),
    backlog_events=20_000,
    blocked=(("alone", 0), ("100k blocked", 100_000), ("1M blocked", 1_000_000)),
)
QUICK = Plan(
    rows=2_000,
    latencies=(0, 20),
    concurrencies=(32,),
    naive_rows=500,
    trickle_per_second=50,
    trickle_seconds=5,
    backlog=(("1k published", 1_000, 2_000), ("20k published", 20_000, 2_000)),
    backlog_events=2_000,
    throughput_rounds_at_0ms=1,
    backlog_rounds=1,
    receive_backlog=2_000,
    receive_trickle_seconds=5,
    blocked=(("alone", 0), ("20k blocked", 20_000)),
    blocked_free=2_000,
    blocked_rounds=1,
    isolation_rows=1_000,
    isolation_latencies=(0,),
    isolation_rounds=1,
    outage_s=5.0,
)
BENCHMARKS = (
    "throughput", "naive", "database", "trickle", "backlog", "blocked", "isolation", "recovery",
    "receive", "tracing",
)  # fmt: skip


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every run's rate beside it."""
    median = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
    return {**median, "rates": [r["rate"] for r in runs]}


def run_throughput(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    """Each relay run right after its ceiling run, same emulator, same concurrency."""
    results = []
    for latency in plan.latencies:
        rounds = plan.throughput_rounds_at_0ms if latency == 0 else 1
        for concurrency in plan.concurrencies:
            ceiling = partial(scenarios.ceiling, ctx, latency, concurrency, plan.rows)
            relay = partial(scenarios.relay_drain, ctx, latency, concurrency, plan.rows)
            ceilings, relays = [], []
            for _ in range(rounds):
                ceilings.append(ctx.measure(ceiling))
                relays.append(ctx.measure(relay))
                _progress([ceilings[-1], relays[-1]])
            results += [_median_run(ceilings), _median_run(relays)]
    return results


# Tracing off; on with every producer's trace sampled (every attempt exported); on with one in
# ten sampled, as head sampling at the insurer's edge leaves it.
TRACING = (None, 1.0, 0.1)


def run_tracing(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    """Interleaved rounds at 0 ms (off, on, on at 10 %, off, ...), each one's median run."""
    runs: dict[float | None, list[dict[str, Any]]] = {sampled: [] for sampled in TRACING}
    for _ in range(plan.throughput_rounds_at_0ms):
        for sampled in TRACING:
            run = partial(
                scenarios.relay_drain, ctx, 0, plan.concurrency, plan.rows, sampled=sampled
            )
            runs[sampled].append(ctx.measure(run))
            _progress(runs[sampled][-1:])
    return [_median_run(measured) for measured in runs.values()]


def run_naive(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    return [ctx.measure(partial(scenarios.naive, ctx, plan.naive_rows))]


def run_database(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    return [ctx.measure(partial(scenarios.database_work, ctx, plan.concurrency, plan.rows))]


def run_trickle(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    args = (plan.trickle_per_second, plan.trickle_seconds, plan.concurrency)
    return [ctx.measure(partial(scenarios.trickle, ctx, *args))]


def run_backlog(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in plan.backlog}
    for _ in range(plan.backlog_rounds):
        for label, published, pending in plan.backlog:
            run = partial(
                scenarios.backlog,
                ctx,
                label,
                published=published,
                pending=pending,
                events=plan.backlog_events,
                concurrency=plan.concurrency,
            )
            runs[label].append(ctx.measure(run))
            _progress(runs[label][-1:])
    return [_median_run(measured) for measured in runs.values()]


def run_blocked(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    """Interleaved rounds (alone, beside 100k, beside 1M, alone, ...), each one's median."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in plan.blocked}
    for _ in range(plan.blocked_rounds):
        for label, rows in plan.blocked:
            run = partial(
                scenarios.blocked,
                ctx,
                label,
                blocked=rows,
                free=plan.blocked_free,
                concurrency=plan.concurrency,
            )
            runs[label].append(ctx.measure(run))
            _progress(runs[label][-1:])
    return [_median_run(measured) for measured in runs.values()]


def run_isolation(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    """Per latency, interleaved rounds: alone, beside a hung route, beside a stalled one."""
    results = []
    for latency in plan.isolation_latencies:
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(plan.isolation_rounds):
            for fault in (None, "hang", "stall"):
                label = f"{fault or 'alone'} {latency:g}ms"
                run = partial(
                    scenarios.isolation, ctx, label, fault=fault, rows=plan.isolation_rows,
                    latency_ms=latency, concurrency=plan.concurrency,
                )  # fmt: skip
                runs.setdefault(label, []).append(run())
                _progress(runs[label][-1:])
        results += [_median_run(measured) for measured in runs.values()]
    return results


def run_recovery(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    results = []
    for label in ("partner", "token"):
        results.append(scenarios.recovery(ctx, label, outage_s=plan.outage_s, rows=2_000))
        _progress(results[-1:])
    return results


def run_receive(ctx: scenarios.Context, plan: Plan) -> list[dict[str, Any]]:
    partner = ctx.partner(0)
    stored = receive.backlog(partner, ctx.db.url, ctx.log("receive-backlog"), plan.receive_backlog)
    _progress([stored])
    latency = receive.trickle(
        partner,
        ctx.db.url,
        ctx.log("receive-trickle"),
        plan.receive_trickle_per_second,
        plan.receive_trickle_seconds,
    )
    return [stored, latency]


RUNNERS: dict[str, Callable[[scenarios.Context, Plan], list[dict[str, Any]]]] = {
    "throughput": run_throughput,
    "naive": run_naive,
    "database": run_database,
    "trickle": run_trickle,
    "backlog": run_backlog,
    "blocked": run_blocked,
    "isolation": run_isolation,
    "recovery": run_recovery,
    "receive": run_receive,
    "tracing": run_tracing,
}


def _progress(results: list[dict[str, Any]]) -> None:
    for result in results:
        keys = ["kind", "label", "latency_ms", "concurrency", "rate", "first_row_s"]
        keys += ["troubled_requests", "resumed_after_s", "most_attempts"]
        keys += ["cpu_per_event_us"]
        keys += ["foreign_cores", "tries"]
        print("  " + ", ".join(f"{key}={result[key]}" for key in keys if key in result), flush=True)


def _write(document: dict[str, Any], markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    text = json.dumps(document, indent=2)
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    (RESULTS / "latest.md").write_text(markdown)
    return path


def run(plan: Plan, selected: list[str], mode: str) -> dict[str, Any]:
    db = BenchDatabase()
    db.recreate()
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "machine": describe(db.server_version()),
        "mode": mode,
        "plan": asdict(plan),
        "results": {},
        "seconds": {},
    }
    with ExitStack() as stack:
        ctx = scenarios.Context(db, logs, stack)
        document["startup"] = scenarios.startup(ctx)
        for name in selected:
            print(f"{name} ...", flush=True)
            started = time.monotonic()
            document["results"][name] = RUNNERS[name](ctx, plan)
            document["seconds"][name] = round(time.monotonic() - started, 1)
    db.drop()
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke-test version (~70 s)")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
        help=f"run only these: {', '.join(BENCHMARKS)}",
    )  # fmt: skip
    options = parser.parse_args()
    started = time.monotonic()
    selected = [name for name in BENCHMARKS if name in options.only]
    document = run(QUICK if options.quick else FULL, selected, "quick" if options.quick else "full")
    document["total_seconds"] = round(time.monotonic() - started, 1)
    markdown = report.render(document)
    path = _write(document, markdown)
    print(markdown)
    print(f"results: {path}")
    missed = report.failed(document)
    if missed and not options.quick:
        for line in missed:
            print(f"bench: target missed: {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
