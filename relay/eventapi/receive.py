"""The receive side of the EventApi: one long poll for a route's next page of events.

``GET {api}/api/events/v1/{country}/external/{tenant}/receive?lastEventId={id}`` with the
bearer token; Scalepoint holds the request until events exist, then answers
``{"links": {"next": ...}, "meta": {}, "data": [{"id", "type", "timestamp", "attributes"}]}``.

This client only asks and hands back the answer's text: it never parses the events (the
database reads the page, so numbers and nesting arrive exactly as sent). It resolves
``links.next`` and follows it only on the API's own origin (scheme, host and port of
``RELAY_API_BASE_URL``): the bearer token never goes anywhere else. Positions are kept as the
path and query of a URL on that origin. Everything not pinned down by Scalepoint's notes is
treated as unknown and safe: ids are opaque, a page may be empty, unknown fields are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import aiohttp
import structlog

from relay.eventapi.masks import Masks
from relay.eventapi.outcome import DEFAULT_RETRY_AFTER_CAP, Outcome, OutcomeKind, classify
from relay.eventapi.proxy import Proxy
from relay.eventapi.publisher import InvalidRoute, path_segment
from relay.eventapi.session import no_answer, proxy_refused, read_bounded
from relay.eventapi.token import AccessToken, TokenProvider, bearer
from relay.routes import route_problem

log = structlog.get_logger("relay.eventapi.receive")

# A page can hold many events; more than this is not a page this relay will store.
MAX_PAGE_BYTES = 32 << 20
T, C = OutcomeKind.TRANSIENT, OutcomeKind.CONFIGURATION


@dataclass(frozen=True, slots=True)
class Page:
    """An answer with status 200: its text, for the database to read."""

    body: bytes
    latency: float = 0.0


def receive_path(country: str, tenant: str, after: str | None = None) -> str:
    """Where a route's stream starts: after event ``after``, or at its beginning."""
    problem = route_problem(country, tenant)
    if problem is not None:
        raise InvalidRoute(problem)
    path = f"/api/events/v1/{path_segment(country)}/external/{path_segment(tenant)}/receive"
    return path if after is None else f"{path}?lastEventId={quote(after, safe='')}"


class Receiver:
    """Long polls for pages; shares the publisher's HTTP session and token provider."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        api_base_url: str,
        *,
        timeout: timedelta,
        retry_after_cap: timedelta = DEFAULT_RETRY_AFTER_CAP,
        proxy: Proxy | None = None,
    ) -> None:
        """``proxy``: the one ``session`` goes through, named in errors."""
        self._session = session
        self._proxy = proxy
        self._tokens = tokens
        parts = urlsplit(api_base_url.rstrip("/"))
        self._origin = (parts.scheme, parts.netloc)
        self._prefix = parts.path  # a base URL with a path keeps it before /api/...
        self._timeout = aiohttp.ClientTimeout(total=timeout.total_seconds())
        self._retry_after_cap = retry_after_cap

    def url(self, path: str) -> str:
        """The full URL of a position (a path and query on the API's origin)."""
        scheme, netloc = self._origin
        return urlunsplit((scheme, netloc, "", "", "")) + self._prefix + path

    def next_path(self, link: str, asked: str) -> str | None:
        """``links.next`` as a position: resolved against the URL asked, and only when it is
        on the API's own origin (else None: the token must not follow it)."""
        resolved = urlsplit(urljoin(self.url(asked), link))
        if (resolved.scheme, resolved.netloc) != self._origin:
            return None
        path = resolved.path
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :]
        return path + (f"?{resolved.query}" if resolved.query else "")

    async def fetch(self, path: str) -> Page | Outcome:
        """One long poll. Never raises but ``asyncio.CancelledError``."""
        started = time.perf_counter()
        try:
            answer = await self._fetch(self.url(path))
        except Exception as error:  # a surprise from a library must not end the poller
            name = type(error).__name__
            log.error("receive.unexpected_error", error_class=name)
            answer = Outcome(T, "unexpected", error=name)
        return replace(answer, latency=time.perf_counter() - started)

    async def _fetch(self, url: str) -> Page | Outcome:
        first = await self._attempt(url)
        if not isinstance(first, tuple):
            return first
        token, status, headers, body = first
        sent: list[str | bytes | None] = [token.value]
        if status == 401:
            # One fresh token, one retry; refused again, it is our client, not the route.
            self._tokens.invalidate(token)
            second = await self._attempt(url)
            if not isinstance(second, tuple):
                return second
            fresh, status, headers, body = second
            sent.append(fresh.value)
        if status == 200:
            return Page(body)
        refused = proxy_refused(status, self._proxy)
        if refused is not None:
            return refused
        return classify(
            status, headers, body, retry_after_cap=self._retry_after_cap, masks=Masks(sent)
        )

    async def _attempt(
        self, url: str
    ) -> Outcome | tuple[AccessToken, int, Mapping[str, str], bytes]:
        token = await bearer(self._tokens)
        if isinstance(token, Outcome):
            return token
        headers = {"Authorization": f"Bearer {token.value}", "Accept": "application/json"}
        try:
            async with self._session.get(
                url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                body = await read_bounded(response, MAX_PAGE_BYTES)
                return token, response.status, response.headers, body
        except (TimeoutError, aiohttp.ClientError) as error:
            return no_answer(error, url, self._timeout, self._proxy)
