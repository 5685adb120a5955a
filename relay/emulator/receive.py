"""The emulated partner's receive side: per-route event streams served by long polling.

``GET {base}/api/events/v1/{country}/external/{tenant}/receive?lastEventId={id}`` answers
``{"links": {"next": ...}, "meta": {}, "data": [{"id", "type", "timestamp", "attributes"}]}``
with the events after ``lastEventId`` (from the stream's beginning without it), at most
``Faults.receive_page_size`` of them. With none there yet it holds the request up to
``Faults.receive_hold_seconds``, woken by the first event fed to the route, and answers an
empty page whose ``links.next`` repeats the position asked. An unknown ``lastEventId`` is a
Spring-style 400. Tokens are checked as the send endpoint checks them.

Tests feed streams in-process::

    emulator.feed("dk", "abcinsurance", [{"type": "case_created", "attributes": {...}}])
    emulator.generate("dk", "abcinsurance", 250)      # realistic events, mixed types
    emulator.streams["dk/abcinsurance"].events         # StreamEvent values, stream order
    emulator.polls                                     # ReceivePoll values, answer order
    emulator.set_faults(receive_drop_next=1, receive_malformed_next=1)

or over HTTP: ``POST /_emulator/receive/{country}/{tenant}`` with a JSON list of events or
``{"generate": N, "type": "case_created"}``, ``GET /_emulator/receive`` for every route's
counters and ``GET /_emulator/receive/{country}/{tenant}`` for a stream's items.

Ids are ``_1``, ``_2``, ... per route unless a fed event names its own (any unique string):
the API promises neither numbers nor density, so tests can feed ids that have neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from aiohttp import web

from relay.emulator import jsontext as emulator_json
from relay.emulator.replies import Reply, canned, spring_error

if TYPE_CHECKING:
    from relay.emulator import Emulator

RECEIVE_PATH = "/api/events/v1/{country}/external/{tenant}/receive"
# How links.next is written: a full URL (as the partner's notes show), or a reference the
# client must resolve against the URL it asked: "/api/...receive?lastEventId=_5" (path),
# "receive?lastEventId=_5" (relative) or "?lastEventId=_5" (query; "receive" at the start).
LINK_FORMS = ("absolute", "path", "relative", "query")
FOREIGN_ORIGIN = "http://elsewhere.example"
MAX_GENERATE = 1_000_000  # events one control request may generate
EVENT_TYPES = (
    "case_created",
    "claim_updated",
    "claimline_changed",
    "attachments_updated",
    "repair_service_requested",
    "payment_status_updated",
)
_FIELDS = frozenset({"id", "type", "timestamp", "attributes"})
# The malformed-item fault: a page item that is not an object, and an object without an id.
MALFORMED_ITEMS = (
    b"42",
    b'{"type":"case_created","timestamp":"2026-11-29T10:31:28.251Z","attributes":{}}',
)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a route's stream, as the receive endpoint hands it out."""

    id: str
    type: str
    timestamp: str
    attributes: Any  # as fed; bytes were put into the page verbatim
    item: bytes = field(repr=False)  # the page item, exactly as it is sent


@dataclass(frozen=True, slots=True)
class ReceivePoll:
    """One receive request and how it ended."""

    at: float  # emulator clock, when the answer went out
    route: str  # "dk/tenant"
    last_event_id: str | None  # as asked; None: from the stream's beginning
    status: int
    events: int  # events in the page (malformed items not counted)
    outcome: str  # page, refused, dropped (mid-body) or abandoned (the client left first)


class Stream:
    """One route's events, its waiting polls and its counters."""

    def __init__(self, route: str) -> None:
        self.route = route
        self.events: list[StreamEvent] = []
        self._after: dict[str, int] = {}  # id -> how many events up to and including it
        self._number = 1  # the next _n id to try
        self._changed = asyncio.Event()
        self._generation = 0  # bumped to end every hold (a reset or a stop)
        self.closed = False  # reset: this stream is gone, its holds answer empty pages
        self._polls: list[web.BaseRequest] = []  # in progress
        self.polls = 0
        self.polls_answered = 0  # 200 pages sent whole, empty ones included
        self.empty_pages = 0
        self.handed_out = 0  # events in the pages sent whole
        self.polls_refused = 0
        self.polls_dropped = 0
        self.polls_abandoned = 0
        self.max_concurrent_polls = 0

    def append(self, events: list[StreamEvent]) -> None:
        for event in events:
            self._after[event.id] = len(self.events) + 1
            self.events.append(event)
        self.interrupt(ended=False)

    def new_id(self, taken: set[str]) -> str:
        while f"_{self._number}" in self._after or f"_{self._number}" in taken:
            self._number += 1
        self._number += 1
        return f"_{self._number - 1}"

    def has(self, event_id: str) -> bool:
        return event_id in self._after

    def position(self, last_event_id: str | None) -> int | None:
        """How many events come up to and including ``last_event_id``; None if unknown."""
        return 0 if last_event_id is None else self._after.get(last_event_id)

    def interrupt(self, *, ended: bool = True) -> None:
        """Wake every waiting poll; ``ended``: also end their holds, events or not."""
        if ended:
            self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self.interrupt()

    async def wait(self, position: int, seconds: float) -> None:
        """Until an event exists after ``position``, ``seconds`` pass or the hold is ended."""
        generation = self._generation
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                while len(self.events) <= position and self._generation == generation:
                    await self._changed.wait()

    def poll_started(self, request: web.BaseRequest) -> None:
        # A poll whose client has gone is no longer in progress, though its handler may still
        # be holding: a relay that stops and a successor that polls are not concurrent.
        self._polls = [poll for poll in self._polls if not gone(poll)]
        self._polls.append(request)
        self.polls += 1
        self.max_concurrent_polls = max(self.max_concurrent_polls, len(self._polls))

    def poll_ended(self, request: web.BaseRequest) -> None:
        self._polls = [poll for poll in self._polls if poll is not request]

    def count(self, outcome: str, events: int) -> None:
        if outcome == "page":
            self.polls_answered += 1
            self.handed_out += events
            self.empty_pages += events == 0
        elif outcome == "refused":
            self.polls_refused += 1
        elif outcome == "dropped":
            self.polls_dropped += 1
        else:
            self.polls_abandoned += 1

    def stats(self) -> dict[str, Any]:
        return {
            "fed": len(self.events),
            "last_event_id": self.events[-1].id if self.events else None,
            "polls": self.polls,
            "polls_answered": self.polls_answered,
            "empty_pages": self.empty_pages,
            "handed_out": self.handed_out,
            "polls_refused": self.polls_refused,
            "polls_dropped": self.polls_dropped,
            "polls_abandoned": self.polls_abandoned,
            "concurrent_polls": sum(not gone(poll) for poll in self._polls),
            "max_concurrent_polls": self.max_concurrent_polls,
        }


def gone(request: web.BaseRequest) -> bool:
    """The client closed the connection (or it was closed under it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def utc_timestamp(seconds: float) -> str:
    """``2026-11-29T10:31:28.251Z``: UTC, milliseconds, as the partner's pages show."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def stream_events(
    stream: Stream, events: Iterable[Mapping[str, Any]], timestamp: str
) -> list[StreamEvent]:
    """``events`` checked and given ids and page items; ValueError (naming the first bad
    event) before any is taken."""
    made: list[StreamEvent] = []
    taken: set[str] = set()
    for number, event in enumerate(events):
        try:
            made.append(_stream_event(stream, event, timestamp, taken))
        except (ValueError, TypeError) as error:
            raise ValueError(f"event {number}: {error}") from None
    return made


def _stream_event(
    stream: Stream, event: Mapping[str, Any], timestamp: str, taken: set[str]
) -> StreamEvent:
    if not isinstance(event, Mapping):
        raise ValueError("an event is an object with type and attributes")
    unknown = set(event) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    event_type, attributes = event.get("type"), event.get("attributes")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("type must be a non-empty string")
    if not isinstance(attributes, dict | bytes):
        raise ValueError("attributes must be an object")
    stamp = event.get("timestamp", timestamp)
    if not isinstance(stamp, str):
        raise ValueError("timestamp must be a string")
    event_id = event.get("id")
    if event_id is None:
        event_id = stream.new_id(taken)
    elif not isinstance(event_id, str) or not event_id:
        raise ValueError("id must be a non-empty string")
    elif stream.has(event_id) or event_id in taken:
        raise ValueError(f"id {event_id!r} is already in the stream")
    taken.add(event_id)
    encoded = attributes if isinstance(attributes, bytes) else emulator_json.dump(attributes)
    head = orjson.dumps({"id": event_id, "type": event_type, "timestamp": stamp})
    item = head[:-1] + b',"attributes":' + encoded + b"}"
    return StreamEvent(event_id, event_type, stamp, attributes, item)


# Realistic events ------------------------------------------------------------------------------

_CHANGED_BY = frozenset({"claim_updated", "claimline_changed", "attachments_updated"})
_CASE_TYPES = ("Contents", "Building", "Motor", "Travel")
_PLUS_TWO = timezone(timedelta(hours=2))  # Danish summer time, as in the partner's examples
_PEOPLE = (
    ("Jens Hansen", "jhansen"),
    ("Mette Sørensen", "msorensen"),
    ("Åse Kjærgaard", "akjaergaard"),
    ("Lars Østergaard", "lostergaard"),
)


def realistic_events(
    rng: random.Random, count: int, event_type: str | None, now: float
) -> list[dict[str, Any]]:
    """``count`` events shaped like the partner's catalogue (a ``case``, and a ``changedBy``
    person for the types that name one), of ``event_type`` or of every type in turn."""
    return [
        {
            "type": (kind := event_type or EVENT_TYPES[number % len(EVENT_TYPES)]),
            "attributes": _attributes(rng, kind, number, now),
        }
        for number in range(count)
    ]


def _attributes(rng: random.Random, event_type: str, number: int, now: float) -> dict[str, Any]:
    correlation = _uuid(rng)
    attributes: dict[str, Any] = {
        "eventType": event_type,
        "payloadVersion": "1.0.0",
        "correlationId": correlation.upper() if number % 5 == 4 else correlation,
        "timestamp": _partner_timestamp(now, number),
        "case": {
            "uuid": _uuid(rng),
            "token": f"c{rng.getrandbits(64):016x}",
            "number": str(rng.randint(100_000, 9_999_999)),
            "caseType": rng.choice(_CASE_TYPES),
            "externalClaimId": f"CLM-{rng.randint(1, 999_999):06d}",
        },
    }
    if number % 3 == 0:
        attributes["$schema"] = f"{event_type}.schema.json"
        attributes["$schema_base"] = "https://schemas.example/eventapi/"
    if event_type in _CHANGED_BY:
        name, user_name = rng.choice(_PEOPLE)
        attributes["changedBy"] = {"name": name, "userName": user_name}
    attributes.update(_own_objects(rng, event_type))
    return attributes


def _own_objects(rng: random.Random, event_type: str) -> dict[str, Any]:
    """What each type carries besides its case."""
    if event_type == "claim_updated":
        return {"changes": [rng.choice(("CaseClosed", "CaseReopened"))]}
    if event_type == "claimline_changed":
        return {"claimLine": {"uuid": _uuid(rng), "description": "Sofa, 3 seats"}}
    if event_type == "attachments_updated":
        return {"attachments": [{"uuid": _uuid(rng), "fileName": "receipt.pdf"}]}
    if event_type == "repair_service_requested":
        return {"repairService": {"uuid": _uuid(rng), "type": "Glass"}}
    if event_type == "payment_status_updated":
        status = rng.choice(("approved", "paid", "canceled"))
        return {"payment": {"uuid": _uuid(rng), "status": status, "statusReason": "by handler"}}
    return {}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _partner_timestamp(now: float, number: int) -> str:
    """The forms the partner's own examples use, in turn."""
    utc = datetime.fromtimestamp(now, UTC)
    local = utc.astimezone(_PLUS_TWO)
    seven = f"{utc.microsecond:06d}0"  # 7 fractional digits
    return (
        utc_timestamp(now),
        f"{utc:%Y-%m-%dT%H:%M:%S}.{seven}Z",
        f"{local:%Y-%m-%dT%H:%M:%S}+0200",
        f"{local:%Y-%m-%dT%H:%M:%S}.{seven}+02:00",
    )[number % 4]


# Faults ----------------------------------------------------------------------------------------


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _status(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


def _origin(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "receive_hold_seconds": (_seconds, "a number of seconds, 0 or more"),
    "receive_page_size": (lambda value: _count(value) and value != 0, "a count, 1 or more"),
    "receive_latency_ms": (_seconds, "a number of milliseconds, 0 or more"),
    "receive_status": (lambda value: value is None or _status(value), "an HTTP status or null"),
    "receive_status_next": (
        lambda value: value is None or (_count(value) and value != 0),
        "a count of polls, 1 or more, or null (every poll)",
    ),
    "receive_drop_next": (_count, "a count of polls, 0 or more"),
    "receive_malformed_next": (_count, "a count of pages, 0 or more"),
    "receive_foreign_next": (_count, "a count of pages, 0 or more"),
    "receive_foreign_origin": (_origin, "an http:// or https:// origin"),
    "receive_link_form": (lambda value: value in LINK_FORMS, " or ".join(LINK_FORMS)),
}


def check_faults(changes: Mapping[str, object]) -> None:
    """ValueError naming the first receive fault given a value it cannot take."""
    for name, (valid, expected) in _CHECKS.items():
        if name in changes and not valid(changes[name]):
            raise ValueError(f"{name} must be {expected}")


# The endpoint ----------------------------------------------------------------------------------


class Receiving:
    """The receive endpoint and its control endpoints, on an emulator's application."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self.streams: dict[str, Stream] = {}
        self.polls: list[ReceivePoll] = []
        self.rng = random.Random(emulator.seed)
        router = emulator.app.router
        router.add_get(RECEIVE_PATH, self._receive_endpoint)
        router.add_post("/_emulator/receive/{country}/{tenant}", self._feed_endpoint)
        router.add_get("/_emulator/receive/{country}/{tenant}", self._items_endpoint)
        router.add_get("/_emulator/receive", self._stats_endpoint)

    def stream(self, country: str, tenant: str) -> Stream:
        route = f"{country}/{tenant}"
        found = self.streams.get(route)
        if found is None:
            found = self.streams[route] = Stream(route)
        return found

    def feed(
        self, country: str, tenant: str, events: Iterable[Mapping[str, Any]]
    ) -> list[StreamEvent]:
        stream = self.stream(country, tenant)
        now = utc_timestamp(self._emulator.wall_clock())
        made = stream_events(stream, events, now)
        stream.append(made)
        return made

    def generate(
        self, country: str, tenant: str, count: int, event_type: str | None = None
    ) -> list[StreamEvent]:
        events = realistic_events(self.rng, count, event_type, self._emulator.wall_clock())
        return self.feed(country, tenant, events)

    def clear(self) -> None:
        """Forget every stream and poll; holds on the old streams end with empty pages."""
        for stream in self.streams.values():
            stream.close()
        self.streams = {}
        self.polls = []

    def end_holds(self) -> None:
        for stream in self.streams.values():
            stream.interrupt()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {route: stream.stats() for route, stream in self.streams.items()}

    # GET .../receive -------------------------------------------------------------------------

    async def _receive_endpoint(self, request: web.Request) -> web.StreamResponse:
        stream = self.stream(request.match_info["country"], request.match_info["tenant"])
        asked = request.query.get("lastEventId")
        stream.poll_started(request)
        try:
            response, outcome, events = await self._answer(request, stream, asked)
        except Reply as reply:
            response, outcome, events = reply.response, "refused", 0
        finally:
            stream.poll_ended(request)
        stream.count(outcome, events)
        at = self._emulator.clock()
        self.polls.append(ReceivePoll(at, stream.route, asked, response.status, events, outcome))
        return response

    async def _answer(
        self, request: web.Request, stream: Stream, asked: str | None
    ) -> tuple[web.StreamResponse, str, int]:
        emulator, faults = self._emulator, self._emulator.faults
        await emulator.delay(faults.receive_latency_ms, 0.0)
        status = self._fault_status(stream.route)
        if status is not None:
            raise await emulator.fault_reply(request, canned(status, request.path))
        emulator.authorize(request)
        if not emulator.serves(request.match_info["country"], request.match_info["tenant"]):
            raise canned(404, request.path)
        position = stream.position(asked)
        if position is None:
            raise spring_error(
                400,
                request.path,
                "java.lang.IllegalArgumentException",
                f"Unknown lastEventId '{asked}'",
            )
        await stream.wait(position, faults.receive_hold_seconds)
        if gone(request):
            return web.Response(status=499), "abandoned", 0
        size = 0 if stream.closed else faults.receive_page_size
        page = stream.events[position : position + size]
        last = page[-1].id if page else asked
        if faults.receive_drop_next > 0:
            faults.receive_drop_next -= 1
            return await _drop(request, self._body(request, page, last, faults=False)), "dropped", 0
        body = self._body(request, page, last, faults=True)
        return web.Response(body=body, content_type="application/json"), "page", len(page)

    def _fault_status(self, route: str) -> int | None:
        """The status a fault forces on this poll, or None to answer it normally."""
        faults = self._emulator.faults
        status = faults.receive_status
        if status is not None and faults.receive_status_next is not None:
            faults.receive_status_next -= 1
            if faults.receive_status_next <= 0:
                faults.receive_status = faults.receive_status_next = None
        if status is None and faults.reject_tokens:
            status = 401  # checked before the route, as the partner's security filter is
        if status is None:
            status = faults.receive_route_status.get(route)
        return status

    def _body(
        self, request: web.Request, page: list[StreamEvent], last: str | None, *, faults: bool
    ) -> bytes:
        """The page's JSON; ``faults``: with the link and item faults due, counting them."""
        current = self._emulator.faults
        items = [event.item for event in page]
        origin = None
        if faults and current.receive_malformed_next > 0:
            current.receive_malformed_next -= 1
            items.extend(MALFORMED_ITEMS)
        if faults and current.receive_foreign_next > 0:
            current.receive_foreign_next -= 1
            origin = current.receive_foreign_origin
        link = next_link(request, last, current.receive_link_form, origin)
        head = b'{"links":{"next":' + orjson.dumps(link) + b'},"meta":{},"data":['
        return head + b",".join(items) + b"]}"

    # Control endpoints -----------------------------------------------------------------------

    async def _feed_endpoint(self, request: web.Request) -> web.Response:
        country, tenant = request.match_info["country"], request.match_info["tenant"]
        try:
            document = emulator_json.parse(await request.read())
            made = self._feed_document(country, tenant, document)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        stats = self.stream(country, tenant).stats()
        first = made[0].id if made else None
        return web.json_response({"route": f"{country}/{tenant}", "first_id": first, **stats})

    def _feed_document(self, country: str, tenant: str, document: object) -> list[StreamEvent]:
        if isinstance(document, list):
            return self.feed(country, tenant, document)
        if not isinstance(document, dict) or set(document) - {"generate", "type"}:
            raise ValueError('expected a list of events or {"generate": N, "type": "..."}')
        count, event_type = document.get("generate"), document.get("type")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_GENERATE:
            raise ValueError(f"generate must be a count from 0 to {MAX_GENERATE}")
        if event_type is not None and (not isinstance(event_type, str) or not event_type):
            raise ValueError("type must be a non-empty string")
        return self.generate(country, tenant, count, event_type)

    async def _items_endpoint(self, request: web.Request) -> web.Response:
        route = f"{request.match_info['country']}/{request.match_info['tenant']}"
        stream = self.streams.get(route)
        items = [event.item for event in stream.events] if stream is not None else []
        return web.Response(body=b"[" + b",".join(items) + b"]", content_type="application/json")

    async def _stats_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def next_link(request: web.Request, last: str | None, form: str, origin: str | None) -> str:
    """``links.next``: this endpoint after event ``last`` (at the beginning for None), on
    ``origin`` when one is given, else in ``form`` (see LINK_FORMS)."""
    path = request.rel_url.raw_path
    query = "" if last is None else "?lastEventId=" + quote(last, safe="")
    if origin is not None:
        return origin.rstrip("/") + path + query
    if form == "absolute":
        return f"{request.scheme}://{request.host}{path}{query}"
    if form == "path":
        return path + query
    if form == "query" and query:
        return query
    return path.rsplit("/", 1)[-1] + query


async def _drop(request: web.Request, body: bytes) -> web.StreamResponse:
    """Send the status line, headers (Content-Length the whole body's) and half the body,
    then close the connection."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
