"""``relay check``: prove the partner settings work, end to end, without publishing an event.

It fetches a token, then sends each route's publish URL a POST **without** the ``Event-Type``
header (and ``{}`` as the body). Scalepoint's EventApi reads that header before the body, so
when the route exists and the token is accepted it answers its Spring 400 "Missing request
header 'Event-Type'" and publishes nothing; any other answer says which setting is wrong.

Usable as a deployment probe: a token failure is a RelayError whose message names the fix (the
CLI's error boundary prints it as one line), and the report says for each route whether it is
ok and, when not, its one-line fix; the CLI exits non-zero when any route failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp

from relay.config import Settings, env_name
from relay.eventapi.keys import KeyMaterial, load_key_material
from relay.eventapi.masks import Masks
from relay.eventapi.outcome import (
    CONTENT_TYPE,
    PROXY_AUTHENTICATION_REQUIRED,
    OutcomeKind,
    classify,
)
from relay.eventapi.proxy import Proxy, proxy_for
from relay.eventapi.publisher import publish_url
from relay.eventapi.session import (
    certificate_problem,
    create_session,
    create_token_session,
    proxy_refusal,
    read_bounded,
    unreachable,
    untrusted_message,
)
from relay.eventapi.token import AccessToken, TokenProvider
from relay.routes import route_name, route_problem

PROBE_BODY = b"{}"
API = env_name("api_base_url")
DEFAULT_ROUTE = f"{env_name('country')} and {env_name('tenant')}"


@dataclass(frozen=True, slots=True)
class RouteCheck:
    """What the EventApi said to one route's probe, and what it means."""

    route: str  # dk/abcinsurance
    url: str
    ok: bool
    finding: str  # one line: what the answer means and, when not ok, the fix

    def line(self) -> str:
        return f"route {self.route}: {'ok' if self.ok else 'FAILED'}: {self.finding}"


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What the check found; nothing secret."""

    token_url: str
    client_id: str
    auth_method: str
    scope: str
    token_lifetime: float
    publish_url: str
    certificate_thumbprint: str | None = None
    proxy: str | None = None
    routes: tuple[RouteCheck, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(route.ok for route in self.routes)

    @property
    def failures(self) -> list[RouteCheck]:
        return [route for route in self.routes if not route.ok]

    def lines(self) -> list[str]:
        """The report as aligned ``name: value`` lines, then one line per route."""
        method = self.auth_method
        if self.certificate_thumbprint is not None:
            method += f" (certificate thumbprint {self.certificate_thumbprint})"
        return [
            f"token endpoint: {self.token_url}",
            f"client id:      {self.client_id}",
            f"auth method:    {method}",
            f"scope:          {self.scope}",
            f"token lifetime: {self.token_lifetime:g} s",
            f"proxy:          {self.proxy or 'none'}",
            f"publish URL:    {self.publish_url}",
            *(route.line() for route in self.routes),
        ]


def parse_route(text: str) -> tuple[str, str]:
    """``dk/abcinsurance`` as (country, tenant); ValueError, saying why, for anything else."""
    country, slash, tenant = text.partition("/")
    problem = "expected COUNTRY/TENANT, e.g. dk/abcinsurance" if not slash else None
    problem = problem or route_problem(country, tenant)
    if problem is not None:
        raise ValueError(problem)
    return country, tenant


async def run_check(settings: Settings, routes: Iterable[tuple[str, str]] = ()) -> CheckReport:
    """Check settings and key material, fetch one token, and probe the default route
    (RELAY_COUNTRY/RELAY_TENANT, when set) and each of ``routes``.

    Raises RelayError when no token can be had; a route that fails is in the report."""
    extra = list(dict.fromkeys(routes))
    settings.require_partner(route=not extra)
    material: KeyMaterial | None = None
    if settings.uses_private_key_jwt:
        material = load_key_material(settings)
    # require_partner() guarantees these; the asserts narrow the types for mypy.
    assert settings.client_id is not None
    api_base_url = settings.resolved_api_base_url
    assert api_base_url is not None
    default = (
        [(settings.country, settings.tenant)]
        if settings.country is not None and settings.tenant is not None
        else []
    )
    checked = list(dict.fromkeys([*default, *extra]))
    async with create_token_session(settings) as session:
        tokens = TokenProvider(session, settings, key_material=material)
        try:
            token = await tokens.get()
        finally:
            await tokens.close()
    prober = _Prober(settings, api_base_url, token, tokens.token_url)
    results = []
    async with create_session(settings) as session:
        for country, tenant in checked:
            named_by = (
                DEFAULT_ROUTE
                if (country, tenant) in default
                else f"--route {route_name(country, tenant)}"
            )
            results.append(await prober.probe(session, country, tenant, named_by))
    return CheckReport(
        token_url=tokens.token_url,
        client_id=settings.client_id,
        auth_method=tokens.auth_method,
        scope=token.scope or settings.scope,
        token_lifetime=token.lifetime,
        publish_url=results[0].url,
        certificate_thumbprint=material.thumbprint if material is not None else None,
        proxy=str(prober.proxy) if prober.proxy is not None else None,
        routes=tuple(results),
    )


class _Prober:
    """Sends the probe and reads its answer."""

    def __init__(
        self, settings: Settings, api_base_url: str, token: AccessToken, token_url: str
    ) -> None:
        self.settings = settings
        self.api_base_url = api_base_url
        self.token = token
        self.token_url = token_url
        self.proxy: Proxy | None = proxy_for(api_base_url, settings)

    async def probe(
        self, session: aiohttp.ClientSession, country: str, tenant: str, named_by: str
    ) -> RouteCheck:
        route = route_name(country, tenant)
        url = publish_url(self.api_base_url, country, tenant)
        # No Event-Type: the one header whose absence Scalepoint answers before the body.
        headers = {"Authorization": f"Bearer {self.token.value}", "Content-Type": CONTENT_TYPE}
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout.total_seconds())
        try:
            async with session.post(
                url, data=PROBE_BODY, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                body = await read_bounded(response)
                status, answer = response.status, response.headers
        except TimeoutError:
            seconds = timeout.total
            finding = f"no answer within {seconds:g}s from {url}: check {API}"
            return RouteCheck(route, url, False, finding)
        except aiohttp.ClientError as error:
            return RouteCheck(route, url, False, self._unreachable(error, url))
        ok, finding = self._meaning(status, answer, body, tenant, named_by)
        return RouteCheck(route, url, ok, finding)

    def _unreachable(self, error: aiohttp.ClientError, url: str) -> str:
        problem = certificate_problem(error)
        if problem is not None:
            return untrusted_message(url, problem)
        return unreachable(error, url, API, self.proxy) or f"{type(error).__name__} from {url}"

    def _meaning(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        tenant: str,
        named_by: str,
    ) -> tuple[bool, str]:
        """(ok, one line) for the answer to a probe."""
        outcome = classify(status, headers, body, masks=Masks([self.token.value]))
        said = outcome.error or f"HTTP {status}"
        if outcome.error_class == "missing_header":
            return True, (
                f"the API knows the route and accepts the token ({said}; nothing published)"
            )
        if status == 404:
            return False, f"no such route ({said}): check {API}, {named_by}"
        if status == 401:
            return False, (
                f"token not accepted by the API ({said}): the token endpoint {self.token_url} "
                f"and the API {self.api_base_url} do not belong together (a sandbox token for "
                f"the production API, or the reverse): set {env_name('token_url')} and {API} "
                "for one environment"
            )
        if status == 403:
            return False, (
                f"missing scope or right ({said}): the client needs the events scope "
                f"({env_name('scope')} is '{self.settings.scope}') and Scalepoint's right to "
                f"publish for tenant '{tenant}'; ask Scalepoint to grant it"
            )
        if status == PROXY_AUTHENTICATION_REQUIRED:
            return False, proxy_refusal(status, None, self.proxy)
        if outcome.error_class == "redirect":
            return False, f"{said}: set {API} to the URL the API answers at (https://?)"
        if outcome.kind is OutcomeKind.PUBLISHED:
            return False, (
                f"HTTP {status} with _id {outcome.event_api_id} to a request without "
                f"Event-Type, which Scalepoint's EventApi refuses: check {API}"
            )
        if outcome.kind is OutcomeKind.TRANSIENT:
            return False, f"the API is failing ({said}): try again later"
        return False, f"unexpected answer ({said}): check {API}"
