"""Tracing as an operator turns it on: ``relay run`` with the standard OTEL_* variables exports
its spans over OTLP/HTTP (to a receiver in this test, over a real socket), sends the
``traceparent`` only when told to, refuses a setting it cannot honour in one line, and loads
nothing of OpenTelemetry when tracing is off."""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.helpers.commands import relay
from tests.helpers.engine import payload, relay_env
from tests.helpers.partner import running

ROUTE = "dk/abcinsurance"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Collector:
    """An OTLP/HTTP receiver: what it was sent, decoded as the collector would."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.url = ""

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(resource, span) for span in scope_spans.spans]
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def named(self, prefix: str) -> list[Span]:
        return [span for _, span in self.spans if span.name.startswith(prefix)]


@asynccontextmanager
async def collector() -> AsyncIterator[Collector]:
    receiver = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def attributes(span: Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value") or "string_value")
    return values


async def insert_traced(db: asyncpg.Connection) -> int:
    row_id: int = await db.fetchval(
        "INSERT INTO outbox (event_type, payload, trace_context) "
        "VALUES ('payment_status_updated', $1::jsonb, $2::jsonb) RETURNING id",
        json.dumps(payload()),
        json.dumps({"traceparent": TRACEPARENT, "tracestate": "insurer=1"}),
    )
    return row_id


async def test_relay_run_exports_over_otlp_and_propagates_only_when_told(
    db: asyncpg.Connection, database_url: str
) -> None:
    first = await insert_traced(db)
    async with running() as emulator, collector() as otlp:
        tracing = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "OTEL_SERVICE_NAME": "relay-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # exported at shutdown, which must flush them
        }
        run = await relay(relay_env(database_url, emulator, **tracing), "run", "--drain")
        assert run.code == 0, run.stderr
        second = await insert_traced(db)
        propagating = relay_env(database_url, emulator, RELAY_PROPAGATE_TRACE="true", **tracing)
        run = await relay(propagating, "run", "--drain")
        assert run.code == 0, run.stderr
        arrived = [event.traceparent for event in emulator.events]

    sends = {attributes(span)["relay.outbox.id"]: span for span in otlp.named("send ")}
    assert set(sends) == {first, second}
    for span in sends.values():
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == PARENT_ID
        assert span.kind == Span.SPAN_KIND_PRODUCER
        assert attributes(span)["messaging.destination.name"] == ROUTE
    assert {resource["service.name"] for resource, _ in otlp.spans} == {"relay-under-test"}
    # Without RELAY_PROPAGATE_TRACE nothing but the documented headers; with it, the
    # attempt's own span is named as the parent.
    second_span = sends[second].span_id.hex()
    assert arrived == [None, f"00-{TRACE_ID}-{second_span}-01"]
    # Log lines carry the ids of the span they were written in: none here is, since the
    # relay logs nothing per published event.
    assert "trace_id" not in run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert [line["tracing"] for line in lines if line["event"] == "relay.started"] == ["otlp"]


async def test_a_tracing_setting_that_cannot_be_honoured_stops_start_up_in_one_line(
    database_url: str,
) -> None:
    async with running() as emulator:
        unknown = relay_env(database_url, emulator, OTEL_TRACES_EXPORTER="zipkin")
        (await relay(unknown, "run")).one_line(2, "OTEL_TRACES_EXPORTER", "zipkin")
        protocol = relay_env(
            database_url,
            emulator,
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
        )
        (await relay(protocol, "run")).one_line(2, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        for endpoint in ("otel-collector:4318", "ftp://collector", "http://[::1"):
            bad = relay_env(database_url, emulator, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
            (await relay(bad, "run")).one_line(2, "OTEL_EXPORTER_OTLP_ENDPOINT", "http(s) URL")
        alone = relay_env(database_url, emulator, RELAY_PROPAGATE_TRACE="true")
        (await relay(alone, "run")).one_line(2, "RELAY_PROPAGATE_TRACE", "tracing is off")


OFF = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import asyncpg
    from relay.config import Settings
    from relay.daemon import run
    from relay.inbox import consume
    from relay.outbox import enqueue_async

    async def main():
        url = os.environ["RELAY_DATABASE_URL"]
        db = await asyncpg.connect(url)
        await enqueue_async(db, "payment_status_updated", json.loads(sys.argv[1]))
        await db.execute(
            "INSERT INTO inbox (country, tenant, event_id, event_type, payload, trace_context) "
            "VALUES ('dk', 'abcinsurance', '_1', 'case_created', '{}', $1::jsonb)",
            json.dumps({"traceparent": sys.argv[2]}),
        )
        await db.close()
        await run(Settings(), drain=True)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        events = consume(pool, poll_interval=0.1)
        async with await anext(events):
            pass
        await events.aclose()
        await pool.close()

    asyncio.run(main())
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
    """
)


async def test_with_tracing_off_nothing_of_opentelemetry_is_loaded(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        # The emulator answers on this loop: the program runs beside it, not blocking it.
        program = await asyncio.create_subprocess_exec(
            sys.executable, "-c", OFF, json.dumps(payload()), TRACEPARENT,
            env=relay_env(database_url, emulator),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(program.communicate(), 120)
        assert program.returncode == 0, stderr.decode()
        assert len(emulator.events) == 1
    assert json.loads(stdout.decode().splitlines()[-1]) == []
    assert await db.fetchval("SELECT status FROM outbox") == "published"
    assert await db.fetchval("SELECT trace_context FROM outbox") is None
    assert await db.fetchval("SELECT status FROM inbox") == "processed"


async def test_a_collector_that_never_answers_costs_spans_not_events_nor_the_exit(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Spans leave from a thread of their own: a collector that takes requests and never
    answers holds no event back, and shutdown waits for it a bounded time only."""
    hung = asyncio.Event()

    async def never(_: web.Request) -> web.Response:
        hung.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_post("/v1/traces", never)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    for _ in range(50):
        await insert_traced(db)
    try:
        async with running() as emulator:
            env = relay_env(
                database_url,
                emulator,
                OTEL_EXPORTER_OTLP_ENDPOINT=url,
                OTEL_BSP_SCHEDULE_DELAY="10",  # export at once, into the hung collector
            )
            started = asyncio.get_running_loop().time()
            run = await relay(env, "run", "--drain")
            took = asyncio.get_running_loop().time() - started
            assert run.code == 0, run.stderr
            assert len(emulator.events) == 50
    finally:
        await runner.cleanup()
    assert hung.is_set()  # the relay did export, into a collector that never answered
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'published'") == 50
    # Start-up, fifty events, and at most CLOSE_WITHIN (5 s) waiting for the collector.
    assert took < 15, took
