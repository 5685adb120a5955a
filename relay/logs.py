"""Structured logging: JSON lines off a terminal, readable console output on one.

A processor redacts secrets, tokens and assertions wherever they appear. Payloads are never
passed to a logger in the first place.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values are never shown, whatever they hold.
SECRET_KEYS = re.compile(
    r"(secret|password|passwd|token|assertion|authorization|private_key|payload|cookie)",
    re.IGNORECASE,
)
ALLOWED_KEYS = frozenset({"token_url", "token_lifetime", "token_refreshes"})
# Values that look like bearer tokens or JWTs, wherever they appear in text.
SECRET_VALUES = re.compile(
    r"(Bearer\s+[A-Za-z0-9\-._~+/]+=*)"
    r"|(eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"
    r"|((client_secret|client_assertion|access_token|password)=[^&\s\"']+)"
)
REDACTED = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, dict):
        return {key: _redact_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def _redact_item(key: str, value: Any) -> Any:
    if key not in ALLOWED_KEYS and SECRET_KEYS.search(key) and value is not None:
        return REDACTED
    return _scrub(value)


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop secret-looking keys and scrub secret-looking text."""
    for key in list(event_dict):
        event_dict[key] = _redact_item(key, event_dict[key])
    return event_dict


def trace_fields(context: Any) -> dict[str, str]:
    """A span's ids (an OpenTelemetry SpanContext) as log lines carry them."""
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: a line written inside a span carries its ``trace_id`` and
    ``span_id``. Free when OpenTelemetry is not loaded (nothing is imported here)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is not None and "trace_id" not in event_dict:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict.update(trace_fields(context))
    return event_dict


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging (aiohttp, asyncpg) alike."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Filtering at the call keeps a disabled level nearly free on the hot path.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print a line per scrape; asyncpg is quiet enough.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
