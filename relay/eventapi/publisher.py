"""One publish request to the EventApi, and the one table that turns its answer into an Outcome.

The engine sees only ``Outcome`` values: it never handles aiohttp exceptions or status codes.
``classify`` is a pure function over (status, headers, body); ``Publisher.publish`` adds what
only a live request can produce (timeouts, resets, token failures) and the one 401 retry.
docs/classification.md is the same table in prose; a test holds the two together.
"""

from __future__ import annotations

import codecs
import re
import ssl
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
import structlog

from relay.config import Settings, env_name
from relay.errors import ConfigurationError, TokenRejected, TokenUnavailable
from relay.eventapi.proxy import Proxy, proxy_for
from relay.metrics import Metrics
from relay.routes import route_problem

if TYPE_CHECKING:
    # Only for annotations: relay.eventapi.token uses this module's helpers for partner text.
    from relay.eventapi.token import AccessToken, TokenProvider

log = structlog.get_logger("relay.eventapi.publisher")

CONTENT_TYPE = "application/json;charset=utf-8"
MAX_ERROR_LENGTH = 1000
MAX_BODY_TEXT = 200  # characters of a non-JSON body quoted in an error: a page's first words
MAX_EVENT_ID_LENGTH = 200  # Scalepoint's ids are short ("_122047"); more is not an id to keep
# An answer is an _id or an error: anything longer is a page or an echo, and reading it
# whole would let one answer take the process's memory.
MAX_ANSWER_BYTES = 1 << 20
ELLIPSIS = "\u2026"
# C0 controls but tab and newline (and DEL): PostgreSQL refuses NUL in a text column, and the
# others garble the terminals and log viewers that show last_error.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
# Lone surrogates (undecodable bytes kept by surrogateescape) cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHARSET = re.compile(r"charset=\"?([\w.:-]+)", re.IGNORECASE)
# The longest Retry-After honoured unless the caller says otherwise: RELAY_RETRY_AFTER_CAP's
# default, so code built without settings behaves as the daemon does.
DEFAULT_RETRY_AFTER_CAP: timedelta = Settings.model_fields["retry_after_cap"].default
# RFC 9110 delta-seconds are ASCII digits; str.isdigit() also says yes to '²', which int() refuses.
_DELTA_SECONDS = re.compile(r"[0-9]+")
# More digits than this exceed any cap, and int() refuses strings of over 4300 digits.
_MAX_DELTA_DIGITS = 18


class OutcomeKind(StrEnum):
    """What the engine does with a row: done, retry later, give up, or pause everything."""

    PUBLISHED = "published"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFIGURATION = "configuration"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one publish, as a value."""

    kind: OutcomeKind
    error_class: str  # short stable label for metrics and status, e.g. "http_503"
    http_status: int | None = None
    event_api_id: str | None = None  # Scalepoint's _id, as text
    error: str | None = None  # human-readable, storable(), for outbox.last_error
    retry_after: timedelta | None = None
    latency: float = 0.0  # seconds spent on the request, set by Publisher
    # A CONFIGURATION outcome that no route can escape (our client, its token, TLS trust):
    # pause publishing everywhere, not only on this row's route.
    for_all_routes: bool = False

    def __post_init__(self) -> None:
        # error often quotes the partner; whoever builds an Outcome, what is stored is safe.
        if self.error is not None:
            object.__setattr__(self, "error", storable(self.error))


def storable(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    """``text`` made safe for a PostgreSQL ``text`` column and a terminal: no control characters
    but tab and newline, nothing UTF-8 cannot encode, at most ``limit`` characters (a cut ends
    in an ellipsis). Applying it twice changes nothing more."""
    clean = _SURROGATE.sub("\ufffd", _CONTROL.sub("", text))
    if len(clean) <= limit:
        return clean
    return clean[: limit - 1] + ELLIPSIS if limit > 0 else ""


P = OutcomeKind.PERMANENT
T = OutcomeKind.TRANSIENT
C = OutcomeKind.CONFIGURATION

# The table. 200, 201 and 202 are PUBLISHED when the body carries an _id (see _success).
# Other statuses not listed fall to CLASS_DEFAULTS by their first digit. 400 looks at the
# body for its error_class. Every TRANSIENT answer honours Retry-After.
STATUS_TABLE: dict[int, OutcomeKind] = {
    400: P,  # invalid_payload / missing_header / http_400 by body
    401: C,  # token_not_accepted: seen only after one retry with a fresh token
    403: C,  # insufficient_scope: the client lacks the events scope
    404: C,  # wrong API base URL, country or tenant
    405: P,
    409: P,
    410: P,
    413: P,
    415: P,
    422: P,
    408: T,
    425: T,
    429: T,
    500: T,
    502: T,
    503: T,
    504: T,
}
CLASS_DEFAULTS: dict[int, OutcomeKind] = {1: T, 2: T, 3: C, 4: P, 5: T}
PUBLISHED_STATUSES = frozenset({200, 201, 202})
PROXY_AUTHENTICATION_REQUIRED = 407


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    retry_after_cap: timedelta = DEFAULT_RETRY_AFTER_CAP,
) -> Outcome:
    """Turn an EventApi answer into an Outcome. Pure: the same input gives the same value.

    A transient answer's Retry-After is honoured up to ``retry_after_cap``."""
    document = _json(body)
    if status in PUBLISHED_STATUSES:
        return _success(status, document)
    kind = STATUS_TABLE.get(status, CLASS_DEFAULTS.get(status // 100, T))
    retry_after = parse_retry_after(headers, retry_after_cap) if kind is T else None
    return Outcome(
        kind=kind,
        error_class=_error_class(status, document),
        http_status=status,
        error=f"HTTP {status}: {_describe(document, body, headers)}",
        retry_after=retry_after,
        # Publisher classifies a 401 only after retrying with a fresh token: the API refuses
        # what the token endpoint issues, whatever the route.
        for_all_routes=status == 401,
    )


def _error_class(status: int, document: object) -> str:
    if status == 400:
        return _bad_request_class(document)
    if status == 401:
        return "token_not_accepted"
    if 300 <= status < 400:
        return "redirect"
    return f"http_{status}"


def _success(status: int, document: object) -> Outcome:
    event_id = document.get("_id") if isinstance(document, dict) else None
    if isinstance(event_id, bool) or not isinstance(event_id, int | str) or event_id == "":
        # A 2xx without an id may be a proxy, not Scalepoint: sending again may duplicate
        # (consumers dedupe by correlationId) but never loses the event.
        return Outcome(
            kind=T,
            error_class="bad_response",
            http_status=status,
            error=f"HTTP {status} without an _id in the body",
        )
    label = "created" if status == 201 else f"http_{status}"
    # Stored in a text column like any partner text; the event is delivered whatever the id.
    event_api_id = storable(str(event_id), MAX_EVENT_ID_LENGTH)
    return Outcome(OutcomeKind.PUBLISHED, label, http_status=status, event_api_id=event_api_id)


def _bad_request_class(document: object) -> str:
    if not isinstance(document, dict):
        return "http_400"
    if document.get("valid") is False:
        return "invalid_payload"
    message = document.get("message")
    if isinstance(message, str) and message.startswith("Missing request header"):
        return "missing_header"
    return "http_400"


def _describe(document: object, body: bytes, headers: Mapping[str, str]) -> str:
    if isinstance(document, dict):
        parts = [
            str(document[key])
            for key in ("error", "error_description", "message", "scope")
            if isinstance(document.get(key), str | int)
        ]
        if parts:
            return "; ".join(parts)
    location = headers.get("Location")
    if location:
        return f"redirected to {location} (check RELAY_API_BASE_URL)"
    text = storable(body_text(body, headers), MAX_BODY_TEXT).strip()
    return text or "(empty body)"


def body_text(body: bytes, headers: Mapping[str, str]) -> str:
    """An answer's body as text, in the charset its Content-Type or byte order mark names,
    else UTF-8; undecodable bytes become U+FFFD. Not yet storable()."""
    named = _CHARSET.search(headers.get("Content-Type", ""))
    charset = named.group(1) if named else None
    if charset is None and body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        charset = "utf-16"
    prefix = body[: MAX_BODY_TEXT * 4]  # enough bytes for the characters quoted
    try:
        return prefix.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError):  # unknown, not a text encoding, or strict-only (idna)
        return prefix.decode("utf-8", errors="replace")


async def read_bounded(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The answer's body, or its first ``limit`` bytes when it is longer."""
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) >= limit:
            break  # the connection is closed rather than reused; that is cheap
    return bytes(data[:limit])


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def parse_retry_after(
    headers: Mapping[str, str], cap: timedelta = DEFAULT_RETRY_AFTER_CAP
) -> timedelta | None:
    """Retry-After as delta-seconds or HTTP-date (RFC 9110 10.2.3), between 0 and ``cap``.

    Any value the partner sends, however large or malformed, gives a bounded wait or None. A
    date is measured against the response's own Date header when there is one, so the
    partner's clock and ours need not agree; otherwise against our clock.
    """
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return _capped_seconds(value, cap)
    when = _http_date(value)
    if when is None:
        return None
    now = _http_date(headers.get("Date", "")) or datetime.now(UTC)
    return min(max(when - now, timedelta(0)), cap)


def _capped_seconds(digits: str, cap: timedelta) -> timedelta:
    significant = digits.lstrip("0") or "0"
    # Compared as a number before any timedelta exists: timedelta overflows at 10**14 s.
    if len(significant) > _MAX_DELTA_DIGITS or int(significant) >= cap.total_seconds():
        return cap
    return timedelta(seconds=int(significant))


def _http_date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# Token requests are single-flight: one in flight, and a spare while a closed one lingers.
TOKEN_POOL_SIZE = 2
USER_AGENT = "relay (outbox relay for Scalepoint EventApi)"


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for publishes: ``RELAY_CONCURRENCY`` pooled keep-alive connections, TLS
    always verified, through the proxy the settings and the environment name for the API."""
    # A receive route's long poll holds a connection for as long as Scalepoint waits.
    limit = settings.concurrency + len(settings.receive_routes)
    return _session(settings, limit, settings.resolved_api_base_url)


def create_token_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for token requests: its own small pool, the same TLS trust and timeouts,
    and the proxy for the token endpoint.

    With one pool for both, a token request waited for a connection behind a full round of
    publishes, which all wait for that token when it has expired, and timed out.
    """
    return _session(settings, TOKEN_POOL_SIZE, settings.resolved_token_url)


def _session(settings: Settings, limit: int, url: str | None) -> aiohttp.ClientSession:
    proxy = proxy_for(url, settings) if url is not None else None
    connector = aiohttp.TCPConnector(
        limit=limit, ssl=_tls_context(settings), keepalive_timeout=30, enable_cleanup_closed=True
    )
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout.total_seconds())
    # trust_env stays off: it would read the environment again on every request (in a
    # thread), and add ~/.netrc credentials to requests. relay.eventapi.proxy reads it once.
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        proxy=proxy.url if proxy is not None else None,
    )


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_bundle is not None:
        try:
            # Added to the system store, not replacing it: the token endpoint and the API
            # may sit behind different CAs.
            context.load_verify_locations(cafile=str(settings.ca_bundle))
        except (OSError, ssl.SSLError) as error:
            raise ConfigurationError(
                f"{env_name('ca_bundle')}: cannot load {settings.ca_bundle} as PEM CA "
                f"certificates ({type(error).__name__})"
            ) from None
    return context


def certificate_problem(error: BaseException) -> str | None:
    """How TLS verification failed (``self-signed certificate``, ``Hostname mismatch ...``)
    when that is what ``error`` is, else None."""
    cause: BaseException | None = error
    for _ in range(8):  # a few links of __cause__ at most; never round a cycle
        if isinstance(cause, aiohttp.ClientConnectorCertificateError):
            cause = cause.certificate_error
        if isinstance(cause, ssl.SSLCertVerificationError):
            return getattr(cause, "verify_message", None) or "certificate verification failed"
        if cause is None:
            return None
        cause = cause.__cause__
    return None


def untrusted_message(url: str, problem: str) -> str:
    """What to do about a certificate that failed verification: a setting, not an outage."""
    return (
        f"TLS certificate of {urlsplit(url).hostname} not accepted ({problem}); if the "
        f"endpoint is right, set {env_name('ca_bundle')} to a PEM file with the CA that "
        "issued its certificate"
    )


def unreachable(
    error: aiohttp.ClientError,
    url: str,
    setting: str,
    proxy: Proxy | None,
    *,
    default: str | None = None,
) -> str | None:
    """Why a request to ``url`` got no answer, naming the host and what to fix: ``setting``
    (the variable holding ``url``; ``default`` says where ``url`` came from while it is not
    set), or the proxy and the variable it came from. None when ``error`` is no failure to
    reach anything."""
    host = urlsplit(url).hostname
    variable = setting
    if default is not None:
        setting = f"{setting} (not set: {default})"
    if isinstance(error, aiohttp.ClientProxyConnectionError):
        where = proxy or f"{error.host}:{error.port}"
        return f"cannot connect to the proxy {where}: {type(error.os_error).__name__}"
    if isinstance(error, aiohttp.ClientHttpProxyError):
        if error.status == PROXY_AUTHENTICATION_REQUIRED:
            return proxy_refusal(error.status, error.message, proxy)
        where = f"the proxy {proxy}" if proxy is not None else "the proxy"
        return f"{where} refused a tunnel to {host}: HTTP {error.status} {error.message}"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        if proxy is not None and error.host != host:
            return f"cannot resolve {error.host}, the host of the proxy {proxy}"
        fix = "set" if default is not None else "check"
        return f"cannot resolve {error.host}, the host of {setting}: {fix} {variable}"
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = type(error.os_error).__name__
        return f"cannot connect to {error.host}:{error.port} ({setting}): {reason}"
    return None


def proxy_refusal(status: int, reason: str | None, proxy: Proxy | None) -> str:
    """A 407: a proxy wants credentials. Never Scalepoint's answer, so never the event's fault."""
    where = f"the proxy {proxy}" if proxy is not None else "a proxy"
    fix = proxy.variable if proxy is not None else "RELAY_HTTPS_PROXY"
    return (
        f"{where} answered HTTP {status} {reason or 'Proxy Authentication Required'}: "
        f"give it a user and password in {fix} (http://user:password@host:port)"
    )


class InvalidRoute(ValueError):
    """A country or tenant that cannot name a publish URL; the message says why."""


def publish_url(api_base_url: str, country: str, tenant: str) -> str:
    """The EventApi send endpoint for one country and tenant; InvalidRoute for a route that
    relay.routes refuses, so no value from a row can point the request (and its bearer
    token) at another path."""
    problem = route_problem(country, tenant)
    if problem is not None:
        raise InvalidRoute(problem)
    return (
        f"{api_base_url.rstrip('/')}/api/events/v1/{path_segment(country)}"
        f"/external/{path_segment(tenant)}/send"
    )


def path_segment(value: str) -> str:
    """``value`` as exactly one path segment: percent-encoded, '/' included.

    The route rule already refuses '.' and '..'; this holds even if that rule is loosened,
    because a dot segment would be resolved away and move the request up the path.
    """
    segment = quote(value, safe="")
    if segment in ("", ".", ".."):
        raise InvalidRoute(f"{segment!r} cannot be a path segment of the publish URL")
    return segment


def exception_origin(error: BaseException) -> str:
    """Where ``error`` was raised, as ``file.py:123 in function``: enough to find a bug from a
    log line that must not carry the exception's message (it may quote the partner)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def _unexpected(error: Exception) -> Outcome:
    # A bug or a surprise from a library. Retrying is safe (delivery is at least once);
    # letting it end the process would stop every route for the sake of one row.
    name = type(error).__name__
    log.error("publish.unexpected_error", error_class=name, where=exception_origin(error))
    return Outcome(T, "unexpected", error=name)


class Publisher:
    """Sends one event at a time to the EventApi and returns an Outcome; never raises."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        api_base_url: str,
        timeout: timedelta,
        metrics: Metrics | None = None,
        *,
        retry_after_cap: timedelta = DEFAULT_RETRY_AFTER_CAP,
        proxy: Proxy | None = None,
    ) -> None:
        """``proxy``: the one ``session`` goes through, named in errors."""
        self._session = session
        self._proxy = proxy
        self._tokens = tokens
        self._base = api_base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout.total_seconds())
        self._metrics = metrics
        self._retry_after_cap = retry_after_cap

    def url(self, country: str, tenant: str) -> str:
        """The send endpoint for one country and tenant; raises InvalidRoute for a bad one."""
        return publish_url(self._base, country, tenant)

    async def publish(self, event_type: str, body: bytes, country: str, tenant: str) -> Outcome:
        """POST one event. ``body`` is the compact UTF-8 JSON, sent unchanged.

        Never raises but ``asyncio.CancelledError``: whatever happens is an Outcome."""
        started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.in_flight.inc()
        try:
            outcome = await self._publish(event_type, body, country, tenant)
        except Exception as error:  # CancelledError is a BaseException and goes through
            outcome = _unexpected(error)
        finally:
            latency = time.perf_counter() - started
            if self._metrics is not None:
                self._metrics.in_flight.dec()
                self._metrics.observe_publish(country, tenant, latency)
        return replace(outcome, latency=latency)

    async def _publish(self, event_type: str, body: bytes, country: str, tenant: str) -> Outcome:
        try:
            url = self.url(country, tenant)
        except InvalidRoute as error:
            # Checked before the token too: a bad row costs no request at all.
            return Outcome(P, "invalid_route", error=str(error))
        if not event_type.isprintable():
            # aiohttp refuses control characters in headers (header injection); no retry helps.
            return Outcome(P, "invalid_event_type", error=f"unusable Event-Type {event_type!r}")
        first = await self._attempt(event_type, body, url)
        if not isinstance(first, tuple):
            return first
        token, status, headers, answer = first
        if status == 401:
            # The token may have been revoked or rotated early: one fresh token, one retry.
            self._tokens.invalidate(token)
            log.info("publish.token_refused", url=url)
            second = await self._attempt(event_type, body, url)
            if not isinstance(second, tuple):
                return second
            _, status, headers, answer = second
        if status == PROXY_AUTHENTICATION_REQUIRED:
            # A proxy's answer, not Scalepoint's: the event is not at fault, so it is retried.
            message = proxy_refusal(status, None, self._proxy)
            return Outcome(T, "connection", http_status=status, error=message)
        return classify(status, headers, answer, retry_after_cap=self._retry_after_cap)

    async def _attempt(
        self, event_type: str, body: bytes, url: str
    ) -> Outcome | tuple[AccessToken, int, Mapping[str, str], bytes]:
        try:
            token = await self._tokens.get()
        except TokenUnavailable as error:
            return Outcome(T, "token_unavailable", error=str(error))
        except TokenRejected as error:
            return Outcome(C, "token_rejected", error=str(error), for_all_routes=True)
        headers = {
            "Authorization": f"Bearer {token.value}",
            "Content-Type": CONTENT_TYPE,
            "Event-Type": event_type,
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                answer = await read_bounded(response)
                return token, response.status, response.headers, answer
        except (TimeoutError, aiohttp.ClientError) as error:
            return self._failure(error, url)

    def _failure(self, error: TimeoutError | aiohttp.ClientError, url: str) -> Outcome:
        """The outcome of a request that got no usable answer."""
        if isinstance(error, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
            seconds = self._timeout.total
            return Outcome(T, "timeout", error=f"no answer within {seconds:g}s from {url}")
        problem = certificate_problem(error)
        if problem is not None:
            # Retrying cannot help and every route shares the host: ask for the setting.
            message = untrusted_message(url, problem)
            return Outcome(C, "tls_certificate", error=message, for_all_routes=True)
        cause = unreachable(error, url, env_name("api_base_url"), self._proxy)
        if cause is not None:
            return Outcome(T, "connection", error=cause)
        if isinstance(error, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
            return Outcome(T, "bad_response", error=f"unreadable answer from {url}: {error}")
        return Outcome(T, "connection", error=f"{type(error).__name__} talking to {url}")
