"""A stand-in for Scalepoint: the token endpoint and the EventApi send and receive endpoints,
with faults.

It behaves as the partner's documentation says (bodies from the seed page, RFC 6749 errors)
so tests, the demo and benchmarks run without the partner. Start it in-process::

    async with Emulator(EmulatorConfig(clients={"relay": "secret"})) as emulator:
        emulator.token_url, emulator.base_url      # http://127.0.0.1:<port>/...
        emulator.set_faults(status=503, retry_after="2", for_seconds=1.5)
        emulator.set_faults(route_status={"dk/misrouted": 404}, reject_tokens=True)
        emulator.set_faults(status=502, error_body="<html>...", echo_body=True)
        emulator.events                            # ReceivedEvent values, arrival order
        emulator.refusals                          # Refusal values: every other answer
        emulator.generate("dk", "abcinsurance", 250)  # events to receive (see emulator_receive)

or as a process with ``relay emulator``; the same faults are set over HTTP by
``POST /_emulator/faults``, and ``GET /_emulator/stats`` reports what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import html
import random
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from relay.emulator import jsontext as emulator_json
from relay.emulator import receive as emulator_receive
from relay.emulator.auth import ClientAuthentication
from relay.emulator.model import EmulatorConfig, Faults, ReceivedEvent, Refusal, TokenRequest
from relay.emulator.receive import ReceivePoll, Receiving, Stream, StreamEvent
from relay.emulator.replies import (
    INSUFFICIENT_SCOPE,
    UNAUTHORIZED,
    Reply,
    canned,
    oauth_error,
    raw_reply,
    spring_error,
)

TOKEN_PATH = "/connect/token"  # noqa: S105 - a path, not a password
SEND_PATH = "/api/events/v1/{country}/external/{tenant}/send"
REQUIRED_FIELDS = ("eventType", "payloadVersion", "correlationId", "timestamp")
_CHARSET = re.compile(r"charset=\"?([\w.:-]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Issued:
    client_id: str
    scopes: frozenset[str]
    expires_at: float


class Emulator:
    """The emulated partner. See the module docstring for how tests drive it."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        """``clock`` times latency windows and token expiry; ``wall_clock`` is the time of day
        client assertions are checked against (a test may set it off the client's)."""
        self.config = config or EmulatorConfig()
        self.wall_clock = wall_clock
        self.faults = copy.deepcopy(self.config.faults)
        self.clock = clock
        self.seed = seed
        self._random = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.app = web.Application()
        self.app.router.add_post(TOKEN_PATH, self._token_endpoint)
        self.app.router.add_post(SEND_PATH, self._send_endpoint)
        self.app.router.add_post("/_emulator/faults", self._faults_endpoint)
        self.app.router.add_delete("/_emulator/faults", self._clear_endpoint)
        self.app.router.add_post("/_emulator/reset", self._reset_endpoint)
        self.app.router.add_post("/_emulator/revoke", self._revoke_endpoint)
        self.app.router.add_get("/_emulator/stats", self._stats_endpoint)
        self.app.router.add_get("/_emulator/events", self._events_endpoint)
        self._receiving = Receiving(self)
        self._stop_stuck = asyncio.Event()  # set when stopping: sends kept hanging end
        self._clear_records()

    def _clear_records(self) -> None:
        self.events: list[ReceivedEvent] = []
        self.token_requests: list[TokenRequest] = []
        self.status_counts: Counter[int] = Counter()
        self.refusals: list[Refusal] = []  # every send answered with anything but 201
        self.sends_by_route: Counter[str] = Counter()  # every send request, "dk/tenant" -> n
        self.duplicates = 0
        self.dropped = 0
        self.max_concurrency = 0
        self._active = 0
        # Sends open at once per route, now and at most: what a relay holds on one route.
        self.active_by_route: Counter[str] = Counter()
        self.max_active_by_route: Counter[str] = Counter()
        self._correlation_ids: set[str] = set()
        self._tokens: dict[str, _Issued] = {}
        self.access_tokens: list[str] = []  # every token issued, for leak tests
        self._client_auth = ClientAuthentication(self.config, self.wall_clock)
        self._next_id = 1
        self._receiving.clear()

    # In-process control ---------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        """The emulated token endpoint (after ``start``)."""
        return self.base_url + TOKEN_PATH

    def set_faults(self, *, for_seconds: float | None = None, **changes: Any) -> None:
        """Change faults by field name; ``for_seconds`` bounds a fixed ``status`` in time."""
        names = {item.name for item in dataclasses.fields(Faults)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        for name in ("route_status", "receive_route_status"):
            if name in changes:
                changes[name] = _route_status(changes[name], name)
        if "route_fault" in changes:
            changes["route_fault"] = _route_fault(changes["route_fault"])
        emulator_receive.check_faults(changes)
        self.faults = dataclasses.replace(self.faults, **changes)
        if for_seconds is not None:
            self.faults.status_until = self.clock() + float(for_seconds)

    def clear_faults(self) -> None:
        """Back to the configured faults (token lifetime included)."""
        # A deep copy: changing the running faults' route_status must not change the config.
        self.faults = copy.deepcopy(self.config.faults)

    def reset(self) -> None:
        """Clear faults, records, issued tokens, the id counter and the receive streams."""
        self.clear_faults()
        self._clear_records()

    # Receiving (see relay.emulator.receive) ----------------------------------------------------

    def feed(
        self, country: str, tenant: str, events: Iterable[Mapping[str, Any]]
    ) -> list[StreamEvent]:
        """Append events (``type``, ``attributes``; ``timestamp`` and ``id`` optional) to a
        route's stream and wake its waiting polls; returns them with their ids."""
        return self._receiving.feed(country, tenant, events)

    def generate(
        self, country: str, tenant: str, count: int, event_type: str | None = None
    ) -> list[StreamEvent]:
        """Feed ``count`` realistic events of ``event_type`` (None: every type in turn)."""
        return self._receiving.generate(country, tenant, count, event_type)

    def stream(self, country: str, tenant: str) -> Stream:
        """A route's stream (an empty one if nothing was fed or polled there yet)."""
        return self._receiving.stream(country, tenant)

    @property
    def streams(self) -> dict[str, Stream]:
        """Every route fed or polled, "dk/tenant" -> its stream."""
        return self._receiving.streams

    @property
    def polls(self) -> list[ReceivePoll]:
        """Every receive request, in the order they were answered."""
        return self._receiving.polls

    def receive_url(self, country: str, tenant: str) -> str:
        """The receive endpoint of a route (after ``start``)."""
        path = emulator_receive.RECEIVE_PATH.format(country=country, tenant=tenant)
        return self.base_url + path

    def serves(self, country: str, tenant: str) -> bool:
        """Whether the configured routes include this one."""
        return self.config.routes is None or (country, tenant) in self.config.routes

    def revoke_tokens(self) -> None:
        """Forget every issued token: the next send with one gets 401."""
        self._tokens.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for tests and ``GET /_emulator/stats``."""
        return {
            "events": len(self.events),
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "max_concurrency": self.max_concurrency,
            "in_flight": self._active,
            "token_requests": len(self.token_requests),
            "tokens_issued": sum(1 for item in self.token_requests if item.status == 200),
            "token_auth_methods": dict(Counter(item.auth_method for item in self.token_requests)),
            "statuses": {str(status): n for status, n in sorted(self.status_counts.items())},
            "sends_by_route": dict(self.sends_by_route),
            "max_active_by_route": dict(self.max_active_by_route),
            "receive": self._receiving.stats(),
        }

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen on a real socket (port 0: any free port); returns the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        self._stop_stuck = asyncio.Event()
        bound_port = self._runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Close the listening socket and open connections; held polls end at once."""
        self._receiving.end_holds()
        self._stop_stuck.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # Token endpoint -------------------------------------------------------------------------

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        await self.delay(self.faults.token_latency_ms, 0.0)
        record: dict[str, Any] = {"auth_method": "none", "client_id": None}
        error: str | None = None
        try:
            status = self.faults.token_status
            if status is not None:
                if request.content_type == "application/x-www-form-urlencoded":
                    # Kept for leak tests: what a refused request carried.
                    form = await request.post()
                    record["assertion"] = form.get("client_assertion")
                standard = oauth_error(status, "temporarily_unavailable", "fault")
                raise await self.fault_reply(request, standard)
            response = await self._grant(request, record)
        except Reply as reply:
            response, error = reply.response, reply.code
        self.token_requests.append(
            TokenRequest(
                status=response.status,
                error=error,
                at=self.clock(),
                **record,
            )
        )
        return response

    async def _grant(self, request: web.Request, record: dict[str, Any]) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            raise oauth_error(400, "invalid_request", "form-urlencoded body required")
        form = {key: str(value) for key, value in (await request.post()).items()}
        client_id = self._client_auth.authenticate(request, form, record)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise oauth_error(400, "invalid_request", "grant_type is missing")
        if grant_type != "client_credentials":
            raise oauth_error(400, "unsupported_grant_type", f"{grant_type} is not supported")
        allowed = self.config.scopes.get(client_id, frozenset({"events"}))
        requested = frozenset(form.get("scope", "").split())
        if not requested <= allowed:
            raise oauth_error(400, "invalid_scope", "scope not allowed for this client")
        granted = requested or allowed
        value = secrets.token_urlsafe(32)
        lifetime = self.faults.token_lifetime
        self._tokens[value] = _Issued(client_id, granted, self.clock() + lifetime)
        self.access_tokens.append(value)
        body = {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
            "scope": " ".join(sorted(granted)),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # Send endpoint --------------------------------------------------------------------------

    async def _send_endpoint(self, request: web.Request) -> web.StreamResponse:
        route = f"{request.match_info['country']}/{request.match_info['tenant']}"
        self.sends_by_route[route] += 1
        self._active += 1
        self.max_concurrency = max(self.max_concurrency, self._active)
        self.active_by_route[route] += 1
        self.max_active_by_route[route] = max(
            self.max_active_by_route[route], self.active_by_route[route]
        )
        try:
            await self.delay(self.faults.latency_ms, self.faults.latency_jitter_ms)
            if self._random.random() < self.faults.drop_rate:
                self.dropped += 1
                assert request.transport is not None
                request.transport.close()  # the client sees a reset, no answer
                return web.Response(status=499)
            fault = self.faults.route_fault.get(route)
            if fault is not None:
                return await self._stuck(request, fault)
            status = self._fault_status(route)
            if status is not None:
                raise await self.fault_reply(request, canned(status, request.path))
            response = await self._accept(request)
        except Reply as reply:
            response = reply.response
        finally:
            self._active -= 1
            self.active_by_route[route] -= 1
        self.status_counts[response.status] += 1
        if response.status != 201:
            self.refusals.append(Refusal(self.clock(), route, response.status))
        return response

    async def _stuck(self, request: web.Request, fault: str) -> web.StreamResponse:
        """A send that never ends: unanswered (``hang``), or 201 headers and the start of a
        body that never comes whole (``stall``); until the client gives up or the emulator
        stops. The event is not recorded: the relay cannot know whether it arrived."""
        if fault == "stall":
            response = web.StreamResponse(status=201, headers={"Content-Length": "64"})
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(b'{"_id": ')
        while request.transport is not None and not request.transport.is_closing():
            with contextlib.suppress(TimeoutError):  # look again for the client's going
                async with asyncio.timeout(0.05):
                    await self._stop_stuck.wait()
                    break
        return web.Response(status=499)

    def _fault_status(self, route: str) -> int | None:
        """The status a fault forces on this send, or None to answer it normally."""
        faults = self.faults
        status = faults.status
        expired = faults.status_until is not None and self.clock() >= faults.status_until
        if status is not None and expired:
            faults.status = faults.status_until = status = None
        if status is None and self._random.random() < faults.error_rate:
            status = faults.error_status
        if status is None and faults.reject_tokens:
            status = 401  # checked before the route, as the partner's security filter is
        if status is None:
            status = faults.route_status.get(route)
        return status

    async def fault_reply(self, request: web.Request, standard: Reply) -> Reply:
        """``standard`` (the partner's own words), or the raw body the faults ask for."""
        faults = self.faults
        reply = standard
        if faults.echo_request:
            reply = await _echo(request, standard.response.status, faults.error_content_type)
        elif faults.error_body is not None or faults.echo_body:
            body = _encoded(faults.error_body or "", faults.error_content_type)
            if faults.echo_body:
                body += await request.read()
            status = standard.response.status
            reply = raw_reply(status, body, faults.error_content_type)
        if faults.retry_after is not None:
            reply.response.headers["Retry-After"] = faults.retry_after
        return reply

    async def _accept(self, request: web.Request) -> web.Response:
        self.authorize(request)
        country, tenant = request.match_info["country"], request.match_info["tenant"]
        if not self.serves(country, tenant):
            raise canned(404, request.path)
        event_type = request.headers.get("Event-Type", "")
        if not event_type:
            raise spring_error(
                400,
                request.path,
                "org.springframework.web.bind.ServletRequestBindingException",
                "Missing request header 'Event-Type' for method parameter of type String",
            )
        content_type = request.headers.get("Content-Type", "")
        if request.content_type != "application/json" or request.charset not in (None, "utf-8"):
            raise spring_error(
                415,
                request.path,
                "org.springframework.web.HttpMediaTypeNotSupportedException",
                f"Content type '{content_type}' not supported",
            )
        raw = await request.read()
        body = _payload(raw, event_type, request.path)
        event = (country, tenant, event_type, body, raw, content_type)
        return self._record(*event, request.headers.get("traceparent"))

    def authorize(self, request: web.Request) -> None:
        """401 for an unknown or expired bearer token, 403 for one without scope events."""
        header = request.headers.get("Authorization", "")
        issued = (
            self._tokens.get(header.removeprefix("Bearer ")) if header[:7] == "Bearer " else None
        )
        if issued is None or self.clock() >= issued.expires_at:
            raise Reply(401, UNAUTHORIZED, **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if "events" not in issued.scopes:
            raise Reply(403, INSUFFICIENT_SCOPE)

    def _record(
        self,
        country: str,
        tenant: str,
        event_type: str,
        body: dict[str, Any],
        raw: bytes,
        content_type: str,
        traceparent: str | None,
    ) -> web.Response:
        event_id, self._next_id = self._next_id, self._next_id + 1
        correlation_id = body["correlationId"].lower()
        if correlation_id in self._correlation_ids:
            self.duplicates += 1
        self._correlation_ids.add(correlation_id)
        self.events.append(
            ReceivedEvent(
                country,
                tenant,
                event_type,
                body,
                event_id,
                self.clock(),
                content_type,
                raw,
                traceparent,
            )
        )
        return web.json_response({"_id": event_id}, status=201)

    async def delay(self, milliseconds: float, jitter: float) -> None:
        """Sleep ``milliseconds`` plus a uniform random 0..``jitter``."""
        delay = milliseconds + self._random.uniform(0, jitter) if jitter else milliseconds
        if delay > 0:
            await asyncio.sleep(delay / 1000)

    # Control endpoints ----------------------------------------------------------------------

    async def _faults_endpoint(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            self.set_faults(**changes)
        except (ValueError, TypeError) as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(dataclasses.asdict(self.faults))

    async def _clear_endpoint(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response(dataclasses.asdict(self.faults))

    async def _reset_endpoint(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())

    async def _revoke_endpoint(self, request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.json_response(self.stats())

    async def _stats_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _events_endpoint(self, request: web.Request) -> web.Response:
        """Every event with its body exactly as it arrived: re-encoding would round numbers
        and cannot nest as deep as a body may."""
        return web.Response(
            body=b"[" + b",".join(_event_json(event) for event in self.events) + b"]",
            content_type="application/json",
        )


def _encoded(text: str, content_type: str) -> bytes:
    """``text`` in the charset ``content_type`` names (UTF-8 when it names none or an unknown
    one): how a gateway's UTF-16 page comes to hold NULs."""
    charset = _CHARSET.search(content_type)
    try:
        return text.encode(charset.group(1) if charset else "utf-8")
    except (LookupError, UnicodeError):  # unknown, or a codec that cannot encode the text
        return text.encode("utf-8")


async def _echo(request: web.Request, status: int, content_type: str) -> Reply:
    """An answer that repeats the request, body and credentials, in the form the content type
    asks for, and in a WWW-Authenticate header (a leak test's partner)."""
    sent = (await request.read()).decode("utf-8", "replace")
    authorization = request.headers.get("Authorization", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        text = orjson.dumps(
            {
                "error": f"invalid_request: {authorization}",
                "error_description": f"refused {sent} with {authorization}",
                "message": sent,
                "status": status,
                "path": request.path,
            }
        ).decode()
    elif media == "text/html":
        text = f"<html><body><h1>{status}</h1><pre>{html.escape(sent)}</pre>"
        text += f"<p>{html.escape(authorization)}</p></body></html>"
    else:
        text = f"Incorrect payload: {sent} (sent with {authorization})"
    reply = raw_reply(status, _encoded(text, content_type), content_type)
    reply.response.headers["WWW-Authenticate"] = (
        f'Bearer error="invalid_token", error_description="{authorization}"'
    )
    return reply


ROUTE_FAULTS = ("hang", "stall")


def _route_fault(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(route, str) and fault in ROUTE_FAULTS for route, fault in value.items()
    ):
        raise ValueError('route_fault must map "country/tenant" to "hang" or "stall"')
    return dict(value)


def _route_status(value: object, name: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(route, str) and isinstance(status, int) and not isinstance(status, bool)
        for route, status in value.items()
    ):
        raise ValueError(f'{name} must map "country/tenant" to an HTTP status')
    return dict(value)


def _event_json(event: ReceivedEvent) -> bytes:
    """One event as a JSON object whose ``body`` is the request body itself (valid JSON, since
    the event was accepted)."""
    fields = {
        item.name: getattr(event, item.name)
        for item in dataclasses.fields(event)
        if item.name not in ("body", "raw")
    }
    return orjson.dumps(fields)[:-1] + b',"body":' + event.raw.strip() + b"}"


def _payload(raw: bytes, event_type: str, path: str) -> dict[str, Any]:
    """The body as Jackson reads it: any number, any depth (see ``relay.emulator.jsontext``)."""
    try:
        body = emulator_json.parse(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise spring_error(
            400,
            path,
            "org.springframework.http.converter.HttpMessageNotReadableException",
            "Could not read document: the body is not a JSON object",
        )
    for name in REQUIRED_FIELDS:
        value = body.get(name)
        if value is None or value == "":
            raise Reply(400, {"message": f"Incorrect payload, missing [{name}]", "valid": False})
        if not isinstance(value, str):
            message = f"Incorrect payload, [{name}] must be a string"
            raise Reply(400, {"message": message, "valid": False})
    if body["eventType"] != event_type:
        message = "Incorrect payload, eventType does not match the Event-Type header"
        raise Reply(400, {"message": message, "valid": False})
    return body
