"""The relay's spans, after OpenTelemetry's messaging conventions; loaded only when tracing
is on (``relay.tracing.start``) or an application that traces consumes the inbox.

* ``send {country}/{tenant}`` (PRODUCER): one per delivery attempt, the child of the context
  the row was written in (a trace of its own when it has none): outbox id, attempt, route,
  event type, correlation id, HTTP status, outcome and Scalepoint's ``_id``, never the payload
  or the partner's words;
* ``claim outbox`` and ``record outbox`` (CLIENT): one per claim that took rows and per batch
  of results written, each a trace of its own with a link to every row's span;
* ``receive {country}/{tenant}`` (CLIENT): one per page of events stored, or per failed poll;
  the events' inbox rows keep its context;
* ``process {country}/{tenant}`` (CONSUMER): made by ``relay.inbox.consume`` around the
  caller's ``async with event`` block, the child of the page's span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Mapping, Sequence
from importlib import metadata
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay import DISTRIBUTION
from relay.errors import ConfigurationError
from relay.tracing import MAX_TRACEPARENT, MAX_TRACESTATE

SYSTEM = "scalepoint_eventapi"  # messaging.system: the partner's API, for both directions
OUTBOX = "outbox"
CLOSE_WITHIN = 5.0  # seconds shutdown waits for the last spans to be exported
_PROPAGATOR = TraceContextTextMapPropagator()
T = TypeVar("T")


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0"


def stored_context(traceparent: object, tracestate: object = None) -> Context | None:
    """The context a row holds, or None when it holds none that can be read: whatever a table
    holds is read with care, and a bad value costs the link, never the event."""
    if not isinstance(traceparent, str) or not traceparent or len(traceparent) > MAX_TRACEPARENT:
        return None
    carrier = {"traceparent": traceparent}
    if isinstance(tracestate, str) and tracestate and len(tracestate) <= MAX_TRACESTATE:
        carrier["tracestate"] = tracestate
    try:
        context = _PROPAGATOR.extract(carrier)
    except Exception:  # a propagator's bug must not cost an event
        return None
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def context_text(span: Span) -> str:
    """A span's W3C trace context as the JSON a trace_context column holds."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return json.dumps(carrier, separators=(",", ":"))


def _links(contexts: Sequence[SpanContext | None]) -> list[Link]:
    """Links to the sampled ones of ``contexts``: a trace that is not kept is not linked to
    (and costs nothing to export)."""
    return [
        Link(context)
        for context in contexts
        if context is not None and context.is_valid and context.trace_flags.sampled
    ]


class Tracing:
    """The spans of one ``relay run``: made with ``provider`` (the SDK's, with its exporters),
    closed at shutdown when this made it (``owned``)."""

    def __init__(
        self, provider: trace.TracerProvider, *, owned: bool = False, shown: str = "on"
    ) -> None:
        self.provider = provider
        self.shown = shown  # how relay.started names it: the exporters
        self.tracer = provider.get_tracer("relay", _version())
        self.owned = owned
        self.drops_unsampled = _drops_unsampled(provider)

    # The outbox -------------------------------------------------------------------------------

    parent = staticmethod(stored_context)

    def claimed(self, started_ns: int, parents: Sequence[Context | None]) -> None:
        """A claim that took rows: a span of its own, linked to each row's stored context
        (``parent``, read once per row)."""
        links = _links(
            [trace.get_current_span(context).get_span_context() for context in parents if context]
        )
        span = self.tracer.start_span(
            f"claim {OUTBOX}",
            context=Context(),
            kind=SpanKind.CLIENT,
            links=links,
            start_time=started_ns,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "receive",
                "messaging.operation.name": "claim",
                "messaging.destination.name": OUTBOX,
                "messaging.batch.message_count": len(parents),
                "db.system.name": "postgresql",
            },
        )
        span.end()

    def delivery(
        self,
        *,
        outbox_id: int,
        attempt: int,
        route: str,
        event_type: str,
        correlation_id: str | None,
        parent: Context | None,
    ) -> Span:
        """The span of one delivery attempt, the child of the row's stored context (``parent``);
        the caller makes it current while it sends (``within``) and ends it with
        ``delivered``.

        A row written in a trace its producer did not sample gets no span of its own when the
        sampler would drop it anyway (the SDK's parent-based samplers, the default): its
        producer's span, unrecorded, stands in, at a tenth of the cost."""
        if parent is not None and self.drops_unsampled:
            stored = trace.get_current_span(parent)
            if not stored.get_span_context().trace_flags.sampled:
                return stored
        attributes: dict[str, str | int] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": route,
            "relay.outbox.id": outbox_id,
            "relay.attempt": attempt,
            "relay.event_type": event_type,
        }
        if correlation_id is not None:
            attributes["messaging.message.conversation_id"] = correlation_id
        return self.tracer.start_span(
            f"send {route}",
            context=parent or Context(),
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )

    @staticmethod
    async def within(span: Span, work: Awaitable[T]) -> T:
        """Await ``work`` with ``span`` current (log lines carry its ids; a propagated
        traceparent names it); an error escaping is named on the span, which then ends."""
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await work
        except BaseException as error:
            # Only the error's class: its text may hold what a payload held.
            span.set_attributes({"error.type": type(error).__qualname__})
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
            span.end()
            raise
        finally:
            otel_context.detach(token)

    @staticmethod
    def delivered(
        span: Span,
        *,
        status: str,
        outcome: str,
        http_status: int | None,
        message_id: str | None,
        delay: float | None,
        sent: bool,
    ) -> SpanContext:
        """End a delivery span with what became of the row; return its context (for links and
        for the log line of a dead or retried row)."""
        if not span.is_recording():  # not sampled: nothing to write on it
            return span.get_span_context()
        attributes: dict[str, str | int | float | bool] = {
            "relay.outcome": outcome,
            "relay.status": status,
        }
        if http_status is not None:
            attributes["http.response.status_code"] = http_status
        if message_id is not None:
            attributes["messaging.message.id"] = message_id
        if not sent:
            attributes["relay.given_back"] = True  # nothing was sent: no attempt used
        if delay is not None and status == "pending":
            attributes["relay.retry_in_s"] = round(delay, 3)
        if status != "published":
            attributes["error.type"] = outcome
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.set_attributes(attributes)
        span.end()
        return span.get_span_context()

    def recorded(
        self, started_ns: int, rows: int, written: int, deliveries: Sequence[SpanContext | None]
    ) -> None:
        """A batch of results written: a span of its own, linked to each delivery span."""
        span = self.tracer.start_span(
            f"record {OUTBOX}",
            context=Context(),
            kind=SpanKind.CLIENT,
            links=_links(deliveries),
            start_time=started_ns,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "settle",
                "messaging.operation.name": "record",
                "messaging.destination.name": OUTBOX,
                "messaging.batch.message_count": rows,
                "relay.written": written,
                "db.system.name": "postgresql",
            },
        )
        span.end()

    def inject(self, headers: dict[str, str]) -> None:
        """RELAY_PROPAGATE_TRACE: the current span's ``traceparent`` on a request."""
        _PROPAGATOR.inject(headers)

    # The inbox --------------------------------------------------------------------------------

    def page(self, started_ns: int, route: str, items: int) -> Span:
        """The span of a page of ``items`` events received; its context goes into their rows
        (``context_text``); the caller ends it with ``stored``."""
        return self.tracer.start_span(
            f"receive {route}",
            context=Context(),
            kind=SpanKind.CLIENT,
            start_time=started_ns,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "receive",
                "messaging.operation.name": "receive",
                "messaging.destination.name": route,
                "messaging.batch.message_count": items,
            },
        )

    context_text = staticmethod(context_text)

    @staticmethod
    def stored(span: Span, stored: int | None, malformed: int = 0, problem: str = "") -> None:
        """End a page's span: how many of its events were new (``stored``), or, when the
        page could not be stored, why (``problem``, an outcome such as unstorable_page)."""
        if stored is not None:
            span.set_attribute("relay.inbox.stored", stored)
            span.set_attribute("relay.inbox.malformed", malformed)
        if problem:
            span.set_attribute("error.type", problem)
            span.set_status(Status(StatusCode.ERROR, problem))
        span.end()

    def receive_failed(
        self, started_ns: int, route: str, outcome: str, http_status: int | None
    ) -> None:
        """A poll that brought nothing to store: a span of its own, marked an error."""
        span = self.tracer.start_span(
            f"receive {route}",
            context=Context(),
            kind=SpanKind.CLIENT,
            start_time=started_ns,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "receive",
                "messaging.operation.name": "receive",
                "messaging.destination.name": route,
                "error.type": outcome,
            },
        )
        if http_status is not None:
            span.set_attribute("http.response.status_code", http_status)
        span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()

    # Shutdown ---------------------------------------------------------------------------------

    async def close(self, within: float = CLOSE_WITHIN) -> None:
        """Export what is left and stop the exporters, for at most ``within`` seconds (a
        collector that does not answer does not hold the process)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if not self.owned or shutdown is None:
            return
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def run() -> None:
            try:
                shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_finish, finished)

        threading.Thread(target=run, name="relay-tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished, within)


def _drops_unsampled(provider: trace.TracerProvider) -> bool:
    """Whether ``provider`` samples with one of the SDK's parent-based samplers that drops a
    span whose remote parent is not sampled (asked of the sampler itself)."""
    sampler = getattr(provider, "sampler", None)
    if sampler is None:
        return False
    try:
        from opentelemetry.sdk.trace.sampling import Decision, ParentBased
    except ImportError:
        return False
    if not isinstance(sampler, ParentBased):
        return False
    unsampled = SpanContext(1, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    context = trace.set_span_in_context(trace.NonRecordingSpan(unsampled))
    return sampler.should_sample(context, 1, "send").decision is Decision.DROP


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# Consuming the inbox (the application's own provider) --------------------------------------------


def processing(
    *, route: str, event_id: str, inbox_id: int, event_type: str | None, attempt: int,
    trace_context: str | None,
) -> tuple[Span, object]:  # fmt: skip
    """``relay.inbox.consume``: the span of one event's handling, the child of the page's
    span it was stored under, made with the application's tracer provider and current until
    ``processed`` (the application's own spans inside ``async with event`` are its children).
    """
    parent: Context | None = None
    if trace_context is not None:
        try:
            stored = json.loads(trace_context)
        except ValueError:
            stored = None
        if isinstance(stored, Mapping):
            parent = stored_context(stored.get("traceparent"), stored.get("tracestate"))
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": route,
        "messaging.message.id": event_id,
        "relay.inbox.id": inbox_id,
        "relay.attempt": attempt,
    }
    if event_type is not None:
        attributes["relay.event_type"] = event_type
    span = trace.get_tracer("relay.inbox", _version()).start_span(
        f"process {route}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    )
    return span, otel_context.attach(trace.set_span_in_context(span))


def processed(started: tuple[Span, object], error: BaseException | None) -> None:
    span, token = started
    with contextlib.suppress(Exception):
        otel_context.detach(token)  # type: ignore[arg-type]
    if error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
    span.end()


# Setting up the SDK from OTEL_* -------------------------------------------------------------------


def from_environment(
    environ: Mapping[str, str], exporters: Sequence[str], *, instance: str
) -> Tracing:
    """A Tracing exporting with the SDK as the OTEL_* variables say (service name and resource
    attributes, sampler, OTLP endpoint, headers, timeout, batch sizes)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigurationError(_missing("opentelemetry-sdk")) from None
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "relay"}))
    defaults = {"service.instance.id": instance, "service.version": _version()}
    resource = Resource({k: v for k, v in defaults.items() if k not in resource.attributes}).merge(
        resource
    )

    class Frozen(Resource):
        """The resource, its hash computed once: the OTLP exporter groups every span by its
        resource, and the SDK's hash serialises the attributes each time (a few us a span)."""

        def __init__(self) -> None:
            super().__init__(dict(resource.attributes), resource.schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

        def __eq__(self, other: object) -> bool:
            return super().__eq__(other)

    provider = TracerProvider(resource=Frozen(), shutdown_on_exit=False)
    for name in exporters:
        exporter = _otlp_exporter(environ) if name == "otlp" else ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, owned=True, shown=",".join(exporters) or "none")


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigurationError(_missing("opentelemetry-exporter-otlp-proto-http")) from None
        _check_endpoints(environ)
        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: install opentelemetry-exporter-otlp-proto-grpc "
                "beside the relay, or use http/protobuf (the default)"
            ) from None
        return GrpcExporter()
    raise ConfigurationError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
    )


def _check_endpoints(environ: Mapping[str, str]) -> None:
    """An OTLP/HTTP endpoint the exporter could never reach stops start-up, naming it (the
    exporter itself would only log, span batch after span batch)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            host = None
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise ConfigurationError(
                f"{name}: must be an http(s) URL with a host, such as http://otel-collector:4318"
            )


def _missing(package: str) -> str:
    return (
        f"tracing is asked for (OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT), but "
        f"{package} is not installed: pip install 'scalepoint-outbox-relay[otel]'"
    )
