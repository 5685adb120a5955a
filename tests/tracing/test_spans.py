"""Tracing against a real PostgreSQL and the emulator: the engine's spans, made with the SDK and
kept by its in-memory exporter, follow an event from the span that wrote its row to
Scalepoint's ``_id``, and a received event from its page to the consumer."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import cast

import asyncpg
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from relay.config import Settings
from relay.daemon import Daemon
from relay.errors import InvalidEvent
from relay.inbox import InboxEvent, consume
from relay.logs import add_trace_ids
from relay.outbox import enqueue_async
from relay.tracing.spans import Tracing
from tests.helpers.engine import engine_settings, eventually, payload, running_daemon
from tests.helpers.partner import running

ROUTE = "dk/abcinsurance"
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
# relay.inbox.consume makes its spans with the application's provider: the global one. It is
# set once per process, here, to this module's provider.
trace.set_tracer_provider(PROVIDER)
TRACER = PROVIDER.get_tracer("insurer-app")


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def named(prefix: str) -> list[ReadableSpan]:
    return [span for span in EXPORTER.get_finished_spans() if span.name.startswith(prefix)]


def for_row(row_id: int) -> list[ReadableSpan]:
    spans = [s for s in named("send ") if (s.attributes or {}).get("relay.outbox.id") == row_id]
    return sorted(spans, key=lambda span: int(str((span.attributes or {})["relay.attempt"])))


async def drain(settings: Settings) -> Daemon:
    daemon = Daemon(settings, tracing=Tracing(PROVIDER))
    await daemon.run(drain=True)
    return daemon


def every_value(spans: Sequence[ReadableSpan]) -> str:
    """Every name and attribute value of ``spans``, as one text to search."""
    return json.dumps(
        [[span.name, {k: str(v) for k, v in (span.attributes or {}).items()}] for span in spans]
    )


async def test_an_event_written_inside_a_span_is_delivered_in_its_trace(
    db: asyncpg.Connection, database_url: str
) -> None:
    document = payload()
    with TRACER.start_as_current_span("POST /payments") as request:
        async with db.transaction():
            row_id = await enqueue_async(db, "payment_status_updated", document)
    asked = request.get_span_context()
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
    row = await db.fetchrow("SELECT event_api_id, trace_context FROM outbox WHERE id = $1", row_id)
    assert row is not None
    stored = json.loads(row["trace_context"])
    assert stored["traceparent"].startswith(f"00-{asked.trace_id:032x}-{asked.span_id:016x}-")

    (send,) = for_row(row_id)
    assert send.name == f"send {ROUTE}"
    assert send.kind is SpanKind.PRODUCER
    assert send.context is not None
    assert send.context.trace_id == asked.trace_id
    assert send.parent is not None
    assert send.parent.span_id == asked.span_id
    assert send.status.status_code is not StatusCode.ERROR
    assert dict(send.attributes or {}) == {
        "messaging.system": "scalepoint_eventapi",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": ROUTE,
        "messaging.message.conversation_id": document["correlationId"],
        "messaging.message.id": row["event_api_id"],
        "relay.outbox.id": row_id,
        "relay.attempt": 1,
        "relay.event_type": "payment_status_updated",
        "relay.outcome": "created",
        "relay.status": "published",
        "http.response.status_code": 201,
    }
    # The claim and the record are traces of their own, linked to the row's and the attempt's.
    (claim,) = named("claim outbox")
    assert [link.context.span_id for link in claim.links] == [asked.span_id]
    assert claim.parent is None
    (record,) = named("record outbox")
    assert [link.context.span_id for link in record.links] == [send.context.span_id]
    assert (record.attributes or {})["relay.written"] == 1
    # No span holds the payload, or any of its values.
    text = every_value(EXPORTER.get_finished_spans())
    assert document["payment"]["uuid"] not in text
    assert "canceled" not in text


async def test_a_retried_row_gives_one_span_per_attempt(
    db: asyncpg.Connection, database_url: str
) -> None:
    row_id = await enqueue_async(db, "payment_status_updated", payload(), trace_context=None)
    async with running() as emulator:
        emulator.set_faults(route_status={ROUTE: 503})
        settings = engine_settings(database_url, emulator, circuit_threshold=1000)
        async with running_daemon(settings, Tracing(PROVIDER)):
            await eventually(lambda: _attempts_at_least(db, row_id, 3), within=30)
            emulator.clear_faults()
            await eventually(lambda: _published(db, row_id), within=30)
    attempts = await db.fetchval("SELECT attempts FROM outbox WHERE id = $1", row_id)
    logged = await db.fetch(
        "SELECT http_status FROM outbox_delivery WHERE outbox_id = $1 ORDER BY id", row_id
    )
    spans = for_row(row_id)
    assert [(s.attributes or {})["relay.attempt"] for s in spans] == list(range(1, attempts + 1))
    assert [(s.attributes or {}).get("http.response.status_code") for s in spans] == [
        entry["http_status"] for entry in logged
    ]
    *failed, last = spans
    for span in failed:
        attributes = span.attributes or {}
        assert span.status.status_code is StatusCode.ERROR
        assert attributes["relay.status"] == "pending"
        assert attributes["error.type"] == attributes["relay.outcome"]
        assert "relay.retry_in_s" in attributes
    assert (last.attributes or {})["relay.status"] == "published"
    assert len({span.context.trace_id for span in spans if span.context}) == len(spans)


async def test_a_context_a_table_holds_is_read_with_care(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Whatever plain SQL put in trace_context costs the link, never the event."""
    good = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    stored = [
        None,
        '"00-not-an-object"',
        "[1, 2]",
        '{"traceparent": 5}',
        '{"traceparent": "00-zz-yy-01"}',
        json.dumps({"traceparent": "00-" + "a" * 100_000}),
        json.dumps({"traceparent": good, "tracestate": "x" * 100_000}),
        json.dumps({"traceparent": good, "tracestate": "vendor=1", "other": {"deep": [1]}}),
    ]
    ids = []
    for context in stored:
        ids.append(
            await db.fetchval(
                "INSERT INTO outbox (event_type, payload, trace_context) "
                "VALUES ('payment_status_updated', $1::jsonb, $2::jsonb) RETURNING id",
                json.dumps(payload()),
                context,
            )
        )
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'published'") == len(ids)
    parents = [(for_row(row_id)[0].parent or None) for row_id in ids]
    assert [parent is not None for parent in parents] == [False] * 6 + [True, True]
    assert {f"{p.span_id:016x}" for p in parents if p is not None} == {good[36:52]}


async def test_a_dead_letter_line_names_its_attempts_span(
    db: asyncpg.Connection, database_url: str
) -> None:
    broken = dict(payload(), correlationId="not-a-uuid")
    row_id = await db.fetchval(
        "INSERT INTO outbox (event_type, payload) VALUES ('payment_status_updated', $1::jsonb) "
        "RETURNING id",
        json.dumps(broken),
    )
    async with running() as emulator:
        with structlog.testing.capture_logs() as lines:
            await drain(engine_settings(database_url, emulator))
        assert emulator.events == []
    (span,) = for_row(row_id)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["relay.outcome"] == "invalid_event"
    assert (span.attributes or {})["relay.given_back"] is True  # nothing was sent
    (line,) = [line for line in lines if line["event"] == "publish.dead_lettered"]
    assert span.context is not None
    assert line["trace_id"] == f"{span.context.trace_id:032x}"
    assert line["span_id"] == f"{span.context.span_id:016x}"


def test_a_log_line_written_inside_a_span_carries_its_ids() -> None:
    assert add_trace_ids(None, "info", {"event": "outside"}) == {"event": "outside"}
    with TRACER.start_as_current_span("inside") as span:
        line = add_trace_ids(None, "info", {"event": "inside"})
    context = span.get_span_context()
    assert line == {
        "event": "inside",
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    }


async def test_a_received_event_carries_its_pages_span_to_the_consumer(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0.2)
        fed = emulator.generate("dk", "abcinsurance", 3)
        settings = engine_settings(database_url, emulator, receive_routes=ROUTE)
        async with running_daemon(settings, Tracing(PROVIDER)):
            await eventually(lambda: _inbox_rows(db, 3), within=30)
    (page,) = named(f"receive {ROUTE}")
    assert page.kind is SpanKind.CLIENT
    assert (page.attributes or {})["messaging.batch.message_count"] == 3
    assert (page.attributes or {})["relay.inbox.stored"] == 3
    assert page.context is not None
    rows = await db.fetch("SELECT event_id, trace_context FROM inbox ORDER BY id")
    assert [row["event_id"] for row in rows] == [event.id for event in fed]
    expected = f"00-{page.context.trace_id:032x}-{page.context.span_id:016x}-"
    assert {json.loads(row["trace_context"])["traceparent"][:53] for row in rows} == {expected}

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        events = cast(AsyncGenerator[InboxEvent, None], consume(pool, poll_interval=0.1))
        event = await anext(events)
        async with event:
            with TRACER.start_as_current_span("handle case"):
                pass
        await events.aclose()
    finally:
        await pool.close()
    (process,) = named(f"process {ROUTE}")
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == page.context.span_id
    assert process.context is not None
    assert process.context.trace_id == page.context.trace_id
    assert (process.attributes or {})["messaging.message.id"] == fed[0].id
    # The application's own span inside the block is the process span's child.
    (handler,) = named("handle case")
    assert handler.parent is not None
    assert handler.parent.span_id == process.context.span_id


# Helpers ------------------------------------------------------------------------------------------


async def _attempts_at_least(db: asyncpg.Connection, row_id: int, attempts: int) -> bool:
    used = await db.fetchval("SELECT attempts FROM outbox WHERE id = $1", row_id)
    return bool(used >= attempts)


async def _published(db: asyncpg.Connection, row_id: int) -> bool:
    status = await db.fetchval("SELECT status FROM outbox WHERE id = $1", row_id)
    return bool(status == "published")


async def _inbox_rows(db: asyncpg.Connection, count: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM inbox") >= count)


async def test_an_event_of_an_unsampled_trace_is_delivered_without_a_span(
    db: asyncpg.Connection, database_url: str
) -> None:
    """The producer's sampling decision holds (the default sampler follows the parent), and
    the batch spans link only to traces that are kept."""
    span_id, other_span_id = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    ids = [
        await enqueue_async(
            db, "payment_status_updated", payload(),
            trace_context={"traceparent": f"00-{uuid.uuid4().hex}-{parent}-{flags}"},
        )
        for parent, flags in ((span_id, "01"), (other_span_id, "00"))
    ]  # fmt: skip
    kept, dropped = ids
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator))
        assert len(emulator.events) == 2
    assert [span.parent.span_id for span in for_row(kept) if span.parent] == [int(span_id, 16)]
    assert for_row(dropped) == []
    (claim,) = named("claim outbox")
    assert [f"{link.context.span_id:016x}" for link in claim.links] == [span_id]
    (record,) = named("record outbox")
    (send,) = for_row(kept)
    assert [link.context.span_id for link in record.links] == [send.context.span_id]


async def test_a_consumer_reads_an_inbox_rows_context_with_care(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Whatever an inbox row's trace_context holds, the event is processed; a context that
    cannot be read makes the process span a trace of its own."""
    stored = ['"not an object"', "[1, 2]", '{"traceparent": 7}', '{"traceparent": "00-zz"}']
    for number, context in enumerate(stored):
        await db.execute(
            "INSERT INTO inbox (country, tenant, event_id, event_type, payload, trace_context) "
            "VALUES ('dk', 'abcinsurance', $1, 'case_created', '{}', $2::jsonb)",
            f"_{number}",
            context,
        )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        events = cast(AsyncGenerator[InboxEvent, None], consume(pool, poll_interval=0.1))
        for _ in stored:
            async with await anext(events):
                pass
        await events.aclose()
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE status = 'processed'") == 4
    spans = named(f"process {ROUTE}")
    assert len(spans) == 4
    assert [span.parent for span in spans] == [None] * 4


async def test_a_trace_context_given_that_is_no_w3c_context_writes_nothing(
    db: asyncpg.Connection,
) -> None:
    good = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    refused = [
        ("00-abc", "trace_context must be a mapping"),
        ({"traceparent": 5}, "needs a traceparent string"),
        ({"tracestate": "a=1"}, "needs a traceparent string"),
        ({"traceparent": good, "baggage": "x"}, "only traceparent and tracestate"),
        ({"traceparent": good + "\n"}, "printable text"),
        ({"traceparent": good, "tracestate": "x" * 10_000}, "printable text"),
    ]
    for context, problem in refused:
        with pytest.raises(InvalidEvent, match=problem):
            await enqueue_async(
                db,
                "payment_status_updated",
                payload(),
                trace_context=context,  # type: ignore[arg-type]
            )
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    row_id = await enqueue_async(
        db, "payment_status_updated", payload(), trace_context={"traceparent": good}
    )
    stored = await db.fetchval("SELECT trace_context FROM outbox WHERE id = $1", row_id)
    assert json.loads(stored) == {"traceparent": good}
