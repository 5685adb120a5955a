"""What an operator sees of a run: /metrics, /readyz, the delivery log and the JSON log lines."""

from __future__ import annotations

import asyncio
import itertools
import platform
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families

from relay.config import load_settings
from relay.emulator import Emulator, Faults
from relay.metrics import relay_version
from relay.ops.admin import open_admin
from tests.helpers.engine import (
    engine_settings,
    eventually,
    insert_rows,
    relay_env,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import CLIENT_SECRET, running, secret_config

RELAY = str(Path(sys.executable).with_name("relay"))
EVENT_FIELDS = ("outbox_id", "event_type", "correlation_id", "route", "attempt")


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def scrape(port: int | None) -> defaultdict[str, float]:
    """Every sample of /metrics summed over its labels, by sample name."""
    _, text = await get(f"http://127.0.0.1:{port}/metrics")
    totals: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            totals[item.name] += item.value
    return totals


async def sample(port: int | None, name: str, **labels: str) -> float | None:
    _, text = await get(f"http://127.0.0.1:{port}/metrics")
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    return None


async def test_metrics_counters_move_during_a_run(
    db: asyncpg.Connection, database_url: str
) -> None:
    config = secret_config(faults=Faults(error_rate=0.3))
    async with running(config) as emulator:
        settings = engine_settings(database_url, emulator, circuit_threshold=1000)
        async with running_daemon(settings) as daemon:
            before = await scrape(daemon.http_port)
            assert before["relay_events_published_total"] == 0
            await insert_rows(db, 50)

            async def all_published() -> bool:
                return (await scrape(daemon.http_port))["relay_events_published_total"] == 50

            await eventually(all_published)
            after = await scrape(daemon.http_port)
            labelled = await sample(
                daemon.http_port,
                "relay_events_published_total",
                event_type="payment_status_updated",
            )
    assert labelled == 50
    retried = after["relay_events_retried_total"]
    assert retried > 0  # about 30% of the sends were refused
    assert after["relay_publish_latency_seconds_count"] == 50 + retried
    assert after["relay_claim_batch_size_count"] > before["relay_claim_batch_size_count"]
    assert after["relay_token_refreshes_total"] >= 1
    assert after["relay_requests_in_flight"] == 0
    assert after["relay_events_dead_lettered_total"] == 0
    assert await status_counts(db) == {"published": 50}


async def test_metrics_follow_prometheus_conventions_and_name_the_route(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        settings = engine_settings(database_url, emulator)
        async with running_daemon(settings) as daemon:
            _, before = await get(f"http://127.0.0.1:{daemon.http_port}/metrics")
            await insert_rows(db, 3)
            invalid = await insert_invalid(db)  # on route dk/budget: dead, never sent

            async def finished() -> bool:
                return await status_counts(db) == {"published": 3, "dead": 1}

            await eventually(finished)
            _, after = await get(f"http://127.0.0.1:{daemon.http_port}/metrics")
    assert invalid
    values = {
        (item.name, frozenset(item.labels.items())): item.value
        for family in text_string_to_metric_families(after)
        for item in family.samples
    }

    def at(name: str, **labels: str) -> float | None:
        return values.get((name, frozenset(labels.items())))

    # Before any event: no _created series, the build, the circuit as one series per state,
    # and a latency histogram for the default route.
    assert "_created" not in before + after
    build = f'relay_build_info{{python="{platform.python_version()}",version="{relay_version()}"}}'
    assert f"{build} 1.0" in before
    assert 'relay_circuit_state{state="closed"} 1.0' in before
    assert 'relay_circuit_state{state="open"} 0.0' in before
    assert 'relay_publish_latency_seconds_count{country="dk",tenant="abcinsurance"} 0.0' in before
    assert 'relay_rows_given_back_total{reason="shutdown"} 0.0' in before
    assert "relay_ready 1.0" in after
    event = {"event_type": "payment_status_updated"}
    default = {**event, "country": "dk", "tenant": "abcinsurance"}
    budget = {**event, "country": "dk", "tenant": "budget"}
    assert at("relay_events_published_total", **default) == 3
    assert at("relay_publish_latency_seconds_count", country="dk", tenant="abcinsurance") == 3
    assert at("relay_events_dead_lettered_total", **budget, outcome_class="invalid_event") == 1
    # Only what happened has a series: the cardinality follows the traffic (the dead-letter
    # alert catches a series born at its first count).
    assert at("relay_events_dead_lettered_total", **budget, outcome_class="http_400") is None
    assert at("relay_events_dead_lettered_total", **default, outcome_class="http_400") is None
    assert at("relay_events_retried_total", **default, outcome_class="http_503") is None
    assert at("relay_circuit_state", state="closed") == 1


async def test_a_route_refused_with_403_is_paused_per_route_and_the_process_stays_ready(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        settings = engine_settings(database_url, emulator, configuration_pause=0.5)
        async with running_daemon(settings) as daemon:
            readyz = f"http://127.0.0.1:{daemon.http_port}/readyz"
            assert (await get(readyz))[0] == 200
            emulator.set_faults(status=403)
            await insert_rows(db, 1)

            async def route_paused() -> bool:
                value = await sample(
                    daemon.http_port,
                    "relay_route_paused",
                    country="dk",
                    tenant="abcinsurance",
                    kind="configuration",
                )
                return value == 1

            await eventually(route_paused)
            # Written while the route is paused: held back, not sent.
            assert await sample(daemon.http_port, "relay_ready") == 1
            await insert_rows(db, 2)
            # One route's trouble is not the process's: it can still deliver every other route.
            status, body = await get(readyz)
            sent_while_paused = emulator.status_counts[403]
            emulator.clear_faults()

            async def sent() -> bool:
                return await status_counts(db) == {"published": 3}

            await eventually(sent)
    assert (status, orjson.loads(body)) == (200, {"status": "ready"})
    assert sent_while_paused == 1
    # A refusal of the route is the route's, not the row's: the refused attempt was given
    # back, and the rows held back by the pause used none either.
    attempts = [
        row["attempts"] for row in await db.fetch("SELECT attempts FROM outbox ORDER BY id")
    ]
    assert attempts == [1, 1, 1]


async def test_failed_twice_then_published_leaves_three_delivery_rows(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        # Retry-After: 1 spaces the attempts a second apart, so the fault can be lifted
        # between the second and third attempt without a race. (A 500: a 503 or 429 with
        # Retry-After is a throttle, which defers the row without using an attempt.)
        emulator.set_faults(status=500, retry_after="1")
        async with running_daemon(engine_settings(database_url, emulator)):
            [row_id] = await insert_rows(db, 1)

            async def failed_twice() -> bool:
                # Two answers recorded (attempts counts the one in flight too, from its claim).
                logged = await db.fetchval(
                    "SELECT count(*) FROM outbox_delivery WHERE outbox_id = $1", row_id
                )
                return bool(logged == 2)

            await eventually(failed_twice)
            emulator.clear_faults()

            async def published() -> bool:
                return await status_counts(db) == {"published": 1}

            await eventually(published)
    log = await db.fetch(
        "SELECT attempt, attempted_at, http_status, outcome, event_api_id, error "
        "FROM outbox_delivery WHERE outbox_id = $1 ORDER BY attempted_at",
        row_id,
    )
    assert [(r["attempt"], r["http_status"], r["outcome"]) for r in log] == [
        (1, 500, "http_500"),
        (2, 500, "http_500"),
        (3, 201, "created"),
    ]
    assert log[2]["event_api_id"] == "1"
    assert "HTTP 500" in log[0]["error"]
    gaps = [
        (b["attempted_at"] - a["attempted_at"]).total_seconds() for a, b in itertools.pairwise(log)
    ]
    assert min(gaps) >= 0.95  # Retry-After honoured
    row = await db.fetchrow("SELECT attempts, last_error, published_at FROM outbox")
    assert row is not None
    assert (row["attempts"], row["last_error"]) == (3, None)


async def test_a_dead_event_shows_each_of_its_attempts(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(status=503)
        settings = engine_settings(
            database_url, emulator, max_attempts=2, max_age=0, circuit_threshold=1000
        )
        async with running_daemon(settings):
            [row_id] = await insert_rows(db, 1)

            async def dead() -> bool:
                return await status_counts(db) == {"dead": 1}

            await eventually(dead)
    async with open_admin(load_settings(database_url=database_url)) as admin:
        detail = await admin.row(row_id)
        report = await admin.status()
    assert (detail.status, detail.attempts, detail.last_http_status) == ("dead", 2, 503)
    assert [(item.attempt, item.outcome) for item in detail.deliveries] == [
        (1, "http_503"),
        (2, "http_503"),
    ]
    assert report.dead_by_error_class == {"http_503": 1}


# The JSON log of a real `relay run --drain` -----------------------------------------------------


async def insert_invalid(db: asyncpg.Connection) -> int:
    """A row the relay cannot send (no timestamp): dead at its first attempt, no HTTP call."""
    document = {
        "eventType": "payment_status_updated",
        "payloadVersion": "1.0.0",
        "correlationId": str(uuid.uuid4()),
        "payment": {"uuid": str(uuid.uuid4()), "status": "secret-status-never-logged"},
    }
    row_id: int = await db.fetchval(
        "INSERT INTO outbox (event_type, payload, tenant, country) "
        "VALUES ('payment_status_updated', $1::jsonb, 'budget', 'dk') RETURNING id",
        orjson.dumps(document).decode(),
    )
    return row_id


async def relay_process(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        RELAY,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def secrets_in(emulator: Emulator, payloads: list[dict[str, Any]]) -> list[str]:
    """Strings that must never reach a log: the secret, every token, payload contents."""
    values = [CLIENT_SECRET, "Bearer ", "eyJ", *emulator.access_tokens]
    for document in payloads:
        values.append(document["payment"]["uuid"])
        values.append(orjson.dumps(document).decode())
    return values


async def test_json_log_lines_of_a_run_carry_context_and_no_secrets(
    db: asyncpg.Connection, database_url: str
) -> None:
    await insert_rows(db, 40)
    invalid = await insert_invalid(db)
    payloads = [
        orjson.loads(row["payload"]) for row in await db.fetch("SELECT payload FROM outbox")
    ]
    async with running(secret_config(faults=Faults(error_rate=0.5))) as emulator:
        env = relay_env(
            database_url,
            emulator,
            RELAY_LOG_LEVEL="debug",
            RELAY_MAX_ATTEMPTS="3",
            RELAY_MAX_AGE="0s",
            RELAY_CIRCUIT_THRESHOLD="1000",
            RELAY_BACKOFF_CAP="50ms",
            RELAY_POLL_INTERVAL="100ms",
        )
        code, _, stderr = await relay_process(env, "run", "--drain")
        assert code == 0, stderr[-2000:]
        shown = await relay_process(env, "dead", "show", str(invalid))

    lines = [orjson.loads(line) for line in stderr.splitlines() if line.strip()]
    # Where it listens and whom it talks to, first thing, for whoever reads the log.
    [started] = [line for line in lines if line["event"] == "relay.started"]
    assert started["http"].startswith("127.0.0.1:")
    assert (started["api_base_url"], started["token_url"]) == (
        emulator.base_url,
        emulator.base_url + "/connect/token",
    )
    assert started["environment"] == "sandbox"
    assert started["tracing"] == "off"
    events = [line for line in lines if "outbox_id" in line]
    for line in events:
        missing = [name for name in EVENT_FIELDS if line.get(name) is None]
        assert not missing, line
    names = Counter(line["event"] for line in events)
    counts = await status_counts(db)
    assert names["publish.retry_scheduled"] > 0
    assert names["publish.dead_lettered"] == counts["dead"]
    assert counts["published"] == 41 - counts["dead"]  # a publish logs no line of its own
    [dead] = [line for line in events if line["outbox_id"] == invalid]
    assert (dead["event"], dead["level"], dead["outcome"]) == (
        "publish.dead_lettered",
        "warning",
        "invalid_event",
    )
    assert [line for line in lines if line["level"] == "info" and "outbox_id" in line]
    assert not [line for line in lines if "payload" in line]
    for value in secrets_in(emulator, payloads):
        assert value not in stderr

    code, stdout, stderr = shown
    assert code == 0, stderr
    assert f"outbox row {invalid}: dead" in stdout
    assert "attempts:       1" in stdout
    assert "payload is missing timestamp" in stdout
    assert "secret-status-never-logged" in stdout  # the payload, shown on stdout only
    assert "delivery log (1 attempt):" in stdout
    assert "invalid_event" in stdout


async def test_relay_ready_is_what_readyz_answers(database_url: str) -> None:
    async with running() as emulator:
        settings = engine_settings(database_url, emulator, client_secret="not-the-secret")
        async with running_daemon(settings) as daemon:
            readyz = f"http://127.0.0.1:{daemon.http_port}/readyz"

            async def refused() -> bool:
                return (await get(readyz))[0] == 503

            await eventually(refused)
            not_ready = await sample(daemon.http_port, "relay_ready")
    assert not_ready == 0
