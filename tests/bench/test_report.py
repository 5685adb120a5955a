"""The benchmark report's targets: the CPU per event of the relay against the ceiling client's
fails a full run when it is more than CPU_RATIO times as much."""

from __future__ import annotations

from typing import Any

from bench.report import CPU_RATIO, failed, targets


def throughput(ceiling_us: float, relay_us: float, latency_ms: float = 0) -> list[dict[str, Any]]:
    common = {"latency_ms": latency_ms, "concurrency": 32, "rate": 1000.0, "peak_rss_mb": 70}
    return [
        {**common, "kind": "ceiling", "cpu_per_event_us": ceiling_us},
        {**common, "kind": "relay", "cpu_per_event_us": relay_us},
    ]


def document(*runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"results": {"throughput": [run for pair in runs for run in pair]}}


def test_a_relay_within_the_ratio_fails_nothing() -> None:
    run = document(throughput(100, 100 * CPU_RATIO), throughput(200, 210, latency_ms=20))
    assert failed(run) == []
    met = {name: ok for name, _, _, ok in targets(run) if name.startswith("relay CPU")}
    assert met == {
        "relay CPU per event / ceiling's at 0 ms, c=32": True,
        "relay CPU per event / ceiling's at 20 ms, c=32": True,
    }


def test_a_relay_past_the_ratio_fails_the_run_naming_the_figure() -> None:
    run = document(throughput(100, 140), throughput(200, 210, latency_ms=20))
    assert failed(run) == ["relay CPU per event / ceiling's at 0 ms, c=32: 1.40x (target <= 1.3x)"]
