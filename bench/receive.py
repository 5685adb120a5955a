"""Benchmarks of the receive direction: Scalepoint's events into the inbox.

* **backlog**: a route with 20,000 events waiting at the emulator; a ``relay run`` with that
  receive route starts and stores them: events per second from the first to the last stored
  (the inbox's ``received_at``), and the relay's CPU per event.
* **trickle**: an idle ``relay run`` long-polling a route; events are fed one at a time at a
  steady rate: the latency from the feed (the control request returning, wall clock) to the
  event's ``received_at`` in the inbox (the database's clock: one machine, one clock).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from bench.partner import COUNTRY, TENANT, Partner
from bench.relay_process import relay_environment, running_relay

Result = dict[str, Any]
ROUTE = f"{COUNTRY}/{TENANT}"
HOLD_SECONDS = 20  # how long the emulator holds an idle poll; the relay waits longer
RECEIVE_TIMEOUT = "60s"


def _clear_inbox(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("TRUNCATE inbox, inbox_checkpoint RESTART IDENTITY")


def _stored(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM inbox").fetchone()
    assert row is not None
    return int(str(row[0]))


def _wait_for_stored(url: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while _stored(url) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} events stored within {within:g}s")
        time.sleep(0.05)


def _prepare(partner: Partner) -> None:
    partner.reset()
    response = partner.http.post(
        f"{partner.base_url}/_emulator/faults",
        json={"receive_hold_seconds": HOLD_SECONDS},
        timeout=30,
    )
    response.raise_for_status()


def _feed(partner: Partner, count: int) -> None:
    response = partner.http.post(
        f"{partner.base_url}/_emulator/receive/{ROUTE}", json={"generate": count}, timeout=120
    )
    response.raise_for_status()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def backlog(partner: Partner, url: str, log: Any, events: int) -> Result:
    """Store a route's backlog of ``events``."""
    _clear_inbox(url)
    _prepare(partner)
    _feed(partner, events)
    env = relay_environment(partner, url, 32, receive_routes=ROUTE, receive_timeout=RECEIVE_TIMEOUT)
    with running_relay(env, log) as relay:
        _wait_for_stored(url, events, 300)
        usage = relay.stop()
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*), count(DISTINCT event_id), "
            "extract(epoch FROM max(received_at) - min(received_at)) FROM inbox"
        ).fetchone()
    assert row is not None
    stored, distinct, seconds = int(str(row[0])), int(str(row[1])), float(str(row[2]))
    return {
        "kind": "receive_backlog",
        "events": events,
        "stored": stored,
        "duplicates": stored - distinct,
        "rate": round((stored - 1) / seconds) if seconds else None,
        "relay_cpu_per_event_us": round(usage.cpu / stored * 1e6),
        "peak_rss_mb": round(usage.max_rss_mb, 1),
    }


def trickle(partner: Partner, url: str, log: Any, per_second: float, seconds: float) -> Result:
    """Feed one event at a time to an idle receiver; latency feed -> inbox."""
    _clear_inbox(url)
    _prepare(partner)
    env = relay_environment(partner, url, 32, receive_routes=ROUTE, receive_timeout=RECEIVE_TIMEOUT)
    count = round(per_second * seconds)
    warmup = 10
    fed: list[float] = []
    with running_relay(env, log) as relay:
        for n in range(warmup):
            _feed(partner, 1)
            _wait_for_stored(url, n + 1, 30)
        start = time.monotonic()
        for n in range(count):
            time.sleep(max(0.0, start + n / per_second - time.monotonic()))
            _feed(partner, 1)
            fed.append(time.time())
        _wait_for_stored(url, warmup + count, 60)
        relay.stop()
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT extract(epoch FROM received_at) FROM inbox ORDER BY id OFFSET %s",
            (warmup,),
        ).fetchall()
    received = [float(str(row[0])) for row in rows]
    latencies = [(got - sent) * 1000 for got, sent in zip(received, fed, strict=True)]
    return {
        "kind": "receive_trickle",
        "per_second": per_second,
        "seconds": seconds,
        "events": count,
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }
