"""One publish request to the EventApi, answered as an ``Outcome`` (see ``outcome``).

``Publisher.publish`` adds to ``classify`` what only a live request can produce (timeouts,
resets, token failures) and the one 401 retry with a fresh token. No row can steer the
request: its country and tenant must pass the route rule and become single path segments.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from urllib.parse import quote

import aiohttp
import structlog

from relay.eventapi.masks import Masks, json_values
from relay.eventapi.outcome import (
    CONTENT_TYPE,
    DEFAULT_RETRY_AFTER_CAP,
    PUBLISHED_STATUSES,
    Outcome,
    P,
    T,
    classify,
)
from relay.eventapi.proxy import Proxy
from relay.eventapi.session import exception_origin, no_answer, proxy_refused, read_bounded
from relay.eventapi.token import AccessToken, TokenProvider, bearer
from relay.metrics import Metrics
from relay.routes import route_problem

log = structlog.get_logger("relay.eventapi.publisher")


class InvalidRoute(ValueError):
    """A country or tenant that cannot name a publish URL; the message says why."""


# Routes are few and every publish needs its URL: checked and quoted once per route.
@functools.lru_cache(maxsize=1024)
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
        trace_headers: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        """``proxy``: the one ``session`` goes through, named in errors. ``trace_headers``:
        adds the current span's ``traceparent`` to a request (RELAY_PROPAGATE_TRACE)."""
        self._trace_headers = trace_headers
        self._session = session
        self._proxy = proxy
        self._tokens = tokens
        self._base = api_base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout.total_seconds())
        self._metrics = metrics
        self._retry_after_cap = retry_after_cap
        self.in_flight = 0  # requests sent and not yet answered
        if metrics is not None:
            metrics.in_flight.set_function(lambda: self.in_flight)  # read at each scrape

    def url(self, country: str, tenant: str) -> str:
        """The send endpoint for one country and tenant; raises InvalidRoute for a bad one."""
        return publish_url(self._base, country, tenant)

    async def publish(self, event_type: str, body: bytes, country: str, tenant: str) -> Outcome:
        """POST one event. ``body`` is the compact UTF-8 JSON, sent unchanged.

        Never raises but ``asyncio.CancelledError``: whatever happens is an Outcome."""
        started = time.perf_counter()
        self.in_flight += 1
        try:
            outcome = await self._publish(event_type, body, country, tenant)
        except Exception as error:  # CancelledError is a BaseException and goes through
            outcome = _unexpected(error)
        finally:
            latency = time.perf_counter() - started
            self.in_flight -= 1
            if self._metrics is not None:
                self._metrics.observe_publish(country, tenant, latency)
        # Every outcome is made for this call (classify and bearer build a new one each
        # time): its latency is filled in place, sparing a copy per event.
        object.__setattr__(outcome, "latency", latency)
        return outcome

    async def _publish(self, event_type: str, body: bytes, country: str, tenant: str) -> Outcome:
        try:
            url = self.url(country, tenant)
        except InvalidRoute as error:
            # Checked before the token too: a bad row costs no request at all.
            return Outcome(P, "invalid_route", error=str(error), sent=False)
        if not event_type.isprintable():
            # aiohttp refuses control characters in headers (header injection); no retry helps.
            return Outcome(
                P, "invalid_event_type", error=f"unusable Event-Type {event_type!r}", sent=False
            )
        first = await self._attempt(event_type, body, url)
        if not isinstance(first, tuple):
            return first
        token, status, headers, answer = first
        tokens = [token.value]
        if status == 401:
            # The token may have been revoked or rotated early: one fresh token, one retry.
            self._tokens.invalidate(token)
            log.info("publish.token_refused", url=url)
            second = await self._attempt(event_type, body, url)
            if not isinstance(second, tuple):
                return second
            fresh, status, headers, answer = second
            tokens.append(fresh.value)
        if status in PUBLISHED_STATUSES:
            # An accepted event: no text of the answer is kept, so there is nothing to mask
            # (the common case, spared reading the event's values).
            return classify(status, headers, answer)
        refused = proxy_refused(status, self._proxy)
        if refused is not None:
            return refused
        masks = Masks([*json_values(body), *tokens])
        return classify(status, headers, answer, retry_after_cap=self._retry_after_cap, masks=masks)

    async def _attempt(
        self, event_type: str, body: bytes, url: str
    ) -> Outcome | tuple[AccessToken, int, Mapping[str, str], bytes]:
        token = self._tokens.cached() or await bearer(self._tokens)
        if isinstance(token, Outcome):
            return token
        headers = {
            "Authorization": f"Bearer {token.value}",
            "Content-Type": CONTENT_TYPE,
            "Event-Type": event_type,
        }
        if self._trace_headers is not None:
            self._trace_headers(headers)
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                answer = await read_bounded(response)
                return token, response.status, response.headers, answer
        except (TimeoutError, aiohttp.ClientError) as error:
            return no_answer(error, url, self._timeout, self._proxy)
