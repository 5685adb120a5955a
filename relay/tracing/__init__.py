"""Tracing with OpenTelemetry: one event followed from the request that wrote its row to
Scalepoint's ``_id``, and from a received page to the consumer that handled the event.

Off unless the standard ``OTEL_*`` variables ask for traces (``wanted``); then ``relay run``
exports spans over OTLP (``relay.tracing.spans``, which needs the ``[otel]`` extra). This
module imports no OpenTelemetry module: the producer API and the consumer use it only to read
the caller's current span, and only when the application has loaded OpenTelemetry itself.

The trace context travels through the tables as W3C Trace Context: ``outbox.trace_context``
and ``inbox.trace_context`` hold ``{"traceparent": "00-...", "tracestate": "..."}``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from relay.errors import ConfigurationError, InvalidEvent

if TYPE_CHECKING:
    from relay.tracing.spans import Tracing

TRACE_FIELDS = ("traceparent", "tracestate")
# Longer than any valid value (a version-00 traceparent has 55 characters; a tracestate at most
# 32 members of 256): what a row holds beyond this is not read.
MAX_TRACEPARENT = 256
MAX_TRACESTATE = 8192
# Exporters ``relay run`` knows, by OTEL_TRACES_EXPORTER's names.
EXPORTERS = ("otlp", "console")
_OFF = ("", "none")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces: ``OTEL_TRACES_EXPORTER`` names an exporter,
    or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or its traces-only form), and
    ``OTEL_SDK_DISABLED`` is not true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return exporters.strip().lower() not in _OFF
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """OTEL_TRACES_EXPORTER's exporters (default otlp); ConfigurationError naming the variable
    for one ``relay run`` does not know."""
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip().lower() not in _OFF
    ]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} "
            f"(relay exports with {', '.join(EXPORTERS)} or none)"
        )
    return names


def start(environ: Mapping[str, str], *, instance: str, propagate: bool) -> Tracing | None:
    """``relay run``'s tracing: None when the environment does not ask for it (and nothing of
    OpenTelemetry is loaded). ConfigurationError, naming the variable, when it asks for what
    cannot be had: an unknown exporter, the SDK not installed, or ``RELAY_PROPAGATE_TRACE``
    without tracing."""
    if not wanted(environ):
        if propagate:
            raise ConfigurationError(
                "RELAY_PROPAGATE_TRACE: on, but tracing is off (set OTEL_EXPORTER_OTLP_ENDPOINT "
                "or OTEL_TRACES_EXPORTER: docs/operations.md, Tracing)"
            )
        return None
    exporters = exporter_names(environ)
    try:
        from relay.tracing import spans
    except ImportError:
        raise ConfigurationError(
            "tracing is asked for (OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT), but "
            "OpenTelemetry is not installed: pip install 'scalepoint-outbox-relay[otel]'"
        ) from None
    return spans.from_environment(environ, exporters, instance=instance)


def current_context() -> dict[str, str] | None:
    """The W3C trace context of the caller's current span, when the application has loaded
    OpenTelemetry and a span is active; None otherwise (and nothing is imported)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier or None


def given_context(value: object) -> dict[str, str] | None:
    """An explicit ``trace_context`` argument, checked: a mapping of ``traceparent`` (and
    ``tracestate``) to strings. Raises InvalidEvent, naming the problem, for anything else."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidEvent(
            f"trace_context must be a mapping such as {{'traceparent': '00-...'}}, "
            f"not {type(value).__name__}"
        )
    unknown = [key for key in value if key not in TRACE_FIELDS]
    if unknown:
        raise InvalidEvent(f"trace_context holds {unknown[0]!r}: only traceparent and tracestate")
    if not isinstance(value.get("traceparent"), str):
        raise InvalidEvent("trace_context needs a traceparent string")
    limits = {"traceparent": MAX_TRACEPARENT, "tracestate": MAX_TRACESTATE}
    for key, text in value.items():
        if not isinstance(text, str) or len(text) > limits[key] or not text.isprintable():
            raise InvalidEvent(f"trace_context {key} must be printable text of a W3C header")
    return dict(value)


__all__ = [
    "MAX_TRACEPARENT",
    "MAX_TRACESTATE",
    "TRACE_FIELDS",
    "current_context",
    "exporter_names",
    "given_context",
    "start",
    "wanted",
]
