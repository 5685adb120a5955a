"""The markdown tables (and the target check) for one suite run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

Result = dict[str, Any]


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pairs(results: list[Result]) -> list[tuple[Result, Result]]:
    ceilings = {(r["latency_ms"], r["concurrency"]): r for r in results if r["kind"] == "ceiling"}
    return [
        (ceilings[(r["latency_ms"], r["concurrency"])], r)
        for r in results
        if r["kind"] == "relay" and (r["latency_ms"], r["concurrency"]) in ceilings
    ]


def _relay_at(results: list[Result], latency: float, concurrency: int) -> Result | None:
    return next(
        (
            r
            for r in results
            if r["kind"] == "relay"
            and r["latency_ms"] == latency
            and r["concurrency"] == concurrency
        ),
        None,
    )


def throughput_table(results: list[Result]) -> str:
    rows = [
        (
            f"{relay['latency_ms']:g} ms",
            relay["concurrency"],
            ceiling["rate"],
            relay["rate"],
            f"{relay['rate'] / ceiling['rate']:.0%}",
            f"{ceiling['request_ms_p50']:.1f} / {relay['request_ms_p50']:.1f}",
            ceiling["cpu_per_event_us"],
            relay["cpu_per_event_us"],
            relay["postgres_cpu_per_event_us"],
            relay["emulator_cpu_per_event_us"],
            relay["transactions_per_event"],
            relay["peak_rss_mb"],
            relay["machine_busy_cores"],
            f"{ceiling['foreign_cores']:.2f} / {relay['foreign_cores']:.2f}",
            f"{ceiling['tries']} / {relay['tries']}",
            f"{_rates(ceiling)}; {_rates(relay)}",
        )
        for ceiling, relay in _pairs(results)
    ]
    header = (
        "emulator latency", "concurrency", "HTTP ceiling ev/s", "relay ev/s", "relay/ceiling",
        "request ms p50 (ceiling / relay)",
        "ceiling CPU µs/ev", "relay CPU µs/ev", "PostgreSQL CPU µs/ev", "emulator CPU µs/ev",
        "xacts/ev", "relay peak RSS MB", "cores busy", "foreign cores (ceiling / relay)",
        "tries", "ev/s of each round (ceiling; relay)",
    )  # fmt: skip
    return _table(header, rows)


def _rates(result: Result) -> str:
    return " / ".join(f"{rate:,.0f}" for rate in result.get("rates", [result["rate"]]))


def naive_table(naive: Result, relay: Result | None) -> str:
    multiple = f"{relay['rate'] / naive['rate']:.1f}x" if relay else "-"
    row = (naive["events"], naive["rate"], naive["cpu_per_event_us"], naive["peak_rss_mb"])
    header = ("rows", "naive ev/s", "naive CPU µs/ev", "naive peak RSS MB", "relay (c=32) ev/s")
    return _table((*header, "relay / naive"), [(*row, relay["rate"] if relay else None, multiple)])


def trickle_table(result: Result) -> str:
    header = ("rate", "events", "delivered", "p50 ms", "p99 ms", "max ms", "mean ms")
    row = (
        f"{result['per_second']:g}/s for {result['seconds']:g} s",
        result["produced"],
        result["delivered"],
        result["p50_ms"],
        result["p99_ms"],
        result["max_ms"],
        result["mean_ms"],
    )
    return _table(header, [row])


def backlog_table(results: list[Result]) -> str:
    base = results[0]
    rows = [
        (
            r["label"],
            r["published_rows"],
            r["pending_rows"],
            r["rate"],
            _rates(r),
            r["ms_per_event"],
            f"{r['ms_per_event'] / base['ms_per_event']:.2f}",
            r["cpu_per_event_us"],
            r["postgres_cpu_per_event_us"],
            r["claim_plans"]["custom"]["execution_ms"],
            r["claim_plans"]["generic"]["execution_ms"],
            r["claim_plans"]["generic_jit_off"]["execution_ms"],
            r["claim_plans"]["after"]["execution_ms"],
        )
        for r in results
    ]
    header = (
        "table", "published rows", "pending rows", "relay ev/s (median)", "ev/s of each round",
        "ms/event", "vs first",
        "relay CPU µs/ev", "PostgreSQL CPU µs/ev", "claim ms (custom plan)",
        "claim ms (generic plan)", "claim ms (generic, jit off)", "claim ms (after run)",
    )  # fmt: skip
    return _table(header, rows)


def blocked_table(results: list[Result]) -> str:
    base = results[0]
    rows = [
        (
            r["label"],
            f"{r['blocked_rows']:,}",
            r["rate"],
            _rates(r),
            f"{r['rate'] / base['rate']:.2f}",
            r["first_row_s"],
            r["cpu_per_event_us"],
            r["postgres_cpu_per_event_us"],
        )
        for r in results
    ]
    header = (
        "run", "rows behind a dead row", "ev/s without a key (median)", "ev/s of each round",
        "vs alone", "first row, s after the process started", "relay CPU µs/ev",
        "PostgreSQL CPU µs/ev",
    )  # fmt: skip
    return _table(header, rows)


def _blocked_targets(results: list[Result]) -> list[tuple[str, str, str, bool]]:
    if len(results) < 2:
        return []
    base = results[0]
    checks = []
    for r in results[1:]:
        ratio = r["rate"] / base["rate"]
        checks.append((f"rate beside {r['label']} vs alone", ">= 0.8x", f"{ratio:.2f}x",
                       ratio >= 0.8))  # fmt: skip
        later = r["first_row_s"] - base["first_row_s"]
        checks.append((f"first row beside {r['label']}, later than alone", "<= 1 s",
                       f"{later:+.2f} s", later <= 1.0))  # fmt: skip
    return checks


def isolation_table(results: list[Result]) -> str:
    alone = {r["latency_ms"]: r["rate"] for r in results if r["fault"] is None}
    rows = [
        (
            f"{r['latency_ms']:g} ms",
            r["fault"] or "alone",
            r["rate"],
            _rates(r),
            f"{r['rate'] / alone[r['latency_ms']]:.2f}",
            r["troubled_requests"],
        )
        for r in results
    ]
    header = (
        "partner latency", "other route", "healthy route ev/s (median)", "ev/s of each round",
        "vs alone", "requests to the other route",
    )  # fmt: skip
    return _table(header, rows)


def recovery_table(results: list[Result]) -> str:
    rows = [
        (
            r["label"],
            f"{r['outage_s']:g} s",
            f"{r['resumed_after_s']} s",
            r["most_attempts"],
            r["delivery_log_rows"],
            r["all_published"],
        )
        for r in results
    ]
    header = (
        "outage of", "length", "first publish after its end", "most attempts of a row",
        "delivery-log rows", "all published",
    )  # fmt: skip
    return _table(header, rows)


def _isolation_targets(results: list[Result]) -> list[tuple[str, str, str, bool]]:
    alone = {r["latency_ms"]: r["rate"] for r in results if r["fault"] is None}
    checks = []
    for r in results:
        if r["fault"] is not None:
            ratio = r["rate"] / alone[r["latency_ms"]]
            name = f"healthy route beside a {r['fault']}ing one, {r['latency_ms']:g} ms"
            checks.append((name, ">= 0.8x", f"{ratio:.2f}x", ratio >= 0.8))
    return checks


def _recovery_targets(results: list[Result]) -> list[tuple[str, str, str, bool]]:
    return [
        (f"delivery after a {r['outage_s']:g} s {r['label']} outage", "<= 3 s",
         f"{r['resumed_after_s']} s", r["resumed_after_s"] <= 3.0)
        for r in results
    ]  # fmt: skip


def tracing_table(results: list[Result]) -> str:
    """Tracing off and on, at 0 ms: what the spans cost per event."""
    off = results[0]
    rows = [
        (
            r.get("tracing", "off"),
            _rates(r),
            r["cpu_per_event_us"],
            f"{r['cpu_per_event_us'] / off['cpu_per_event_us'] - 1:+.0%}" if r is not off else "",
            r.get("spans", 0),
            r["peak_rss_mb"],
            r["all_published"],
        )
        for r in results
    ]
    header = (
        "tracing", "events/s (each round)", "relay CPU us/event", "vs off", "spans exported",
        "peak RSS MB", "all published",
    )  # fmt: skip
    return _table(header, rows)


def _tracing_targets(results: list[Result]) -> list[tuple[str, str, str, bool]]:
    checks = []
    for traced in results[1:]:
        extra = traced["cpu_per_event_us"] / results[0]["cpu_per_event_us"] - 1
        name = f"relay CPU per event, tracing {traced['tracing']} vs off"
        checks.append((name, "<= +15%", f"{extra:+.0%}", extra <= 0.15))
    return checks


def database_table(result: Result) -> str:
    published = max(result["published"], 1)
    rows = [
        (name, calls, round(calls / published, 4))
        for name, calls in sorted(result["calls"].items(), key=lambda item: -item[1])
    ]
    rows.append(("**relay statements**", None, result["statements_per_event"]))
    rows.append(
        ("**round trips** (statements + pool resets)", None, result["round_trips_per_event"])
    )
    rows.append(("**server transactions** (xact_commit)", None, result["transactions_per_event"]))
    return _table(("statement", "calls", "per published event"), rows)


# The relay's own CPU per event against the ceiling client's: the cost of the engine around
# the HTTP call. A full run that misses it fails (bench.suite exits 1).
CPU_TARGET = "relay CPU per event / ceiling's"
CPU_RATIO = 1.3


def failed(document: Result) -> list[str]:
    """The targets that fail a run when missed: what was measured for each."""
    return [
        f"{name}: {measured} (target {threshold})"
        for name, threshold, measured, met in targets(document)
        if name.startswith(CPU_TARGET) and not met
    ]


def targets(document: Result) -> list[tuple[str, str, str, bool]]:
    """(target, threshold, measured, met) for every target the run has data for."""
    results = document["results"]
    checks: list[tuple[str, str, str, bool]] = []
    for ceiling, relay in _pairs(results.get("throughput", [])):
        fraction = relay["rate"] / ceiling["rate"]
        if relay["latency_ms"] == 0 or relay["concurrency"] == 32:
            need = 0.8 if relay["latency_ms"] == 0 else 0.9
            name = f"relay / ceiling at {relay['latency_ms']:g} ms, c={relay['concurrency']}"
            checks.append((name, f">= {need:.0%}", f"{fraction:.0%}", fraction >= need))
    for ceiling, relay in _pairs(results.get("throughput", [])):
        if relay["concurrency"] == 32 and ceiling["cpu_per_event_us"]:
            ratio = relay["cpu_per_event_us"] / ceiling["cpu_per_event_us"]
            name = f"{CPU_TARGET} at {relay['latency_ms']:g} ms, c=32"
            checks.append((name, f"<= {CPU_RATIO}x", f"{ratio:.2f}x", ratio <= CPU_RATIO))
    fastest = _relay_at(results.get("throughput", []), 0, 32)
    for naive in results.get("naive", []):
        if fastest:
            multiple = fastest["rate"] / naive["rate"]
            checks.append(("relay / naive at 0 ms", ">= 5x", f"{multiple:.1f}x", multiple >= 5))
    for trickle in results.get("trickle", []):
        checks.append(("trickle p50", "<= 5 ms", f"{trickle['p50_ms']} ms", trickle["p50_ms"] <= 5))
        checks.append(
            ("trickle p99", "<= 25 ms", f"{trickle['p99_ms']} ms", trickle["p99_ms"] <= 25)
        )
    for work in results.get("database", []):
        value = work["statements_per_event"]
        checks.append(("statements per event", "<= 0.2", f"{value}", value <= 0.2))
    checks += _backlog_targets(results.get("backlog", []))
    checks += _blocked_targets(results.get("blocked", []))
    checks += _isolation_targets(results.get("isolation", []))
    checks += _recovery_targets(results.get("recovery", []))
    checks += _tracing_targets(results.get("tracing", []))
    relay_runs = [r for name in ("throughput", "backlog", "trickle") for r in results.get(name, [])]
    rss = [r["peak_rss_mb"] for r in relay_runs if r["kind"] != "ceiling"]
    if rss:
        checks.append(("relay peak RSS", "< 150 MB", f"{max(rss)} MB", max(rss) < 150))
    return checks


def _backlog_targets(results: list[Result]) -> list[tuple[str, str, str, bool]]:
    if len(results) < 2:
        return []
    base = results[0]["ms_per_event"]
    return [
        (
            f"per-row cost, {r['label']} vs {results[0]['label']}",
            "<= +10%",
            f"{r['ms_per_event'] / base - 1:+.0%}",
            r["ms_per_event"] <= base * 1.10,
        )
        for r in results[1:]
    ]


def receive_table(results: list[Result]) -> str:
    rows = []
    for result in results:
        if result["kind"] == "receive_backlog":
            rows.append((
                f"backlog of {result['events']:,}", f"{result['rate']:,} ev/s",
                f"{result['relay_cpu_per_event_us']} µs/ev", result["duplicates"], "-", "-",
            ))  # fmt: skip
        else:
            rows.append((
                f"trickle {result['per_second']:g}/s for {result['seconds']:g} s", "-", "-",
                "-", f"{result['p50_ms']} ms", f"{result['p99_ms']} ms",
            ))  # fmt: skip
    header = ("run", "stored", "relay CPU", "duplicates", "feed -> inbox p50", "p99")
    return _table(header, rows)


# Benchmarks whose results go into one table each: name, heading, table.
LIST_TABLES: tuple[tuple[str, str, Callable[[list[Result]], str]], ...] = (
    ("backlog", "### Scaling with backlog (0 ms, c=32)", backlog_table),
    ("blocked", "### Beside a blocked backlog (0 ms, c=32)", blocked_table),
    ("isolation", "### Isolation: a hung or stalled route beside a healthy one (c=32)",
     isolation_table),
    ("recovery", "### Recovery after an outage", recovery_table),
    ("receive", "### Receiving into the inbox (0 ms)", receive_table),
    ("tracing", "### Tracing off and on (0 ms, c=32)", tracing_table),
)  # fmt: skip


def render(document: Result) -> str:
    machine = document["machine"]
    results = document["results"]
    parts = [
        f"## Suite run {machine['date']} ({document['mode']}, {document.get('total_seconds')} s)",
        f"{machine['nproc']} cores ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"Python {machine['python']}, {machine['postgresql'].split(' on ')[0]}, "
        f"commit {machine['commit']}",
    ]
    if "throughput" in results:
        parts += ["### Throughput and HTTP ceiling", throughput_table(results["throughput"])]
    for naive in results.get("naive", []):
        relay = _relay_at(results.get("throughput", []), 0, 32)
        parts += ["### Naive baseline (0 ms)", naive_table(naive, relay)]
    for trickle in results.get("trickle", []):
        parts += ["### Latency under a trickle", trickle_table(trickle)]
    for name, heading, table in LIST_TABLES:
        if results.get(name):
            parts += [heading, table(results[name])]
    for work in results.get("database", []):
        parts += [f"### Database work per event (0 ms, c={work['concurrency']})"]
        parts += [database_table(work)]
    checks = targets(document)
    if checks:
        rows = [
            (name, need, got, "met" if met else "**missed**") for name, need, got, met in checks
        ]
        parts += ["### Targets", _table(("target", "threshold", "measured", ""), rows)]
    return "\n\n".join(parts) + "\n"
