"""What the emulator is told (its configuration and the faults to inject) and what it records
(the events it accepted, the sends it refused, the token requests it answered)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from relay.emulator import receive as emulator_receive


@dataclass
class Faults:
    """What to break. Every field can be set from a test or over HTTP."""

    latency_ms: float = 0.0  # added before the send endpoint answers
    latency_jitter_ms: float = 0.0  # plus a uniform random 0..jitter
    status: int | None = None  # answer every send with this status ...
    status_until: float | None = None  # ... until this emulator-clock time (None: until cleared)
    retry_after: str | None = None  # Retry-After header on fault answers, any text (absurd too)
    error_rate: float = 0.0  # fraction of sends answered with error_status
    error_status: int = 503
    drop_rate: float = 0.0  # fraction of sends whose connection is closed unanswered
    token_latency_ms: float = 0.0
    token_status: int | None = None  # answer every token request with this status
    token_lifetime: float = 3600.0  # expires_in of new tokens, seconds
    # Proxies and gateways answer with bodies of their own: HTML pages, other charsets, or the
    # request echoed back (personal data and all). These shape every fault answer.
    error_body: str | None = None  # raw body instead of the partner's own error body ...
    error_content_type: str = "text/html"  # ... sent as this; a charset in it encodes the body
    echo_body: bool = False  # fault answers carry the request body (after error_body, if set)
    # Fault answers carry the whole request, every way a partner echoes one: its body and its
    # Authorization header in the body (as JSON fields when error_content_type is JSON, an
    # HTML page when it is HTML, else text) and in a WWW-Authenticate header.
    echo_request: bool = False
    route_status: dict[str, int] = field(default_factory=dict)  # "dk/tenant" -> fixed status
    # "dk/tenant" -> "hang" (take the request, never answer) or "stall" (201 headers and part
    # of the body, then nothing): until cleared; the client's timeout is what ends them.
    route_fault: dict[str, str] = field(default_factory=dict)
    reject_tokens: bool = False  # every send and receive answers 401, however fresh its token
    # Receiving (relay.emulator.receive). Of the fields above only reject_tokens, retry_after,
    # error_body, error_content_type and echo_body touch receive calls.
    receive_hold_seconds: float = 20.0  # how long a poll waits for events before an empty page
    receive_page_size: int = 100  # events per page, at most
    receive_latency_ms: float = 0.0  # added before the receive endpoint answers
    receive_status: int | None = None  # answer receive calls with this status ...
    receive_status_next: int | None = None  # ... for this many, then clear it (None: until cleared)
    receive_route_status: dict[str, int] = field(default_factory=dict)  # "dk/tenant" -> status
    receive_drop_next: int = 0  # the next N polls: headers and half the page, then a close
    receive_malformed_next: int = 0  # the next N pages end with 42 and an item without an id
    receive_foreign_next: int = 0  # the next N pages' links.next is on receive_foreign_origin
    receive_foreign_origin: str = emulator_receive.FOREIGN_ORIGIN
    receive_link_form: str = "absolute"  # links.next as: absolute, path, relative or query


@dataclass
class EmulatorConfig:
    """Clients, certificates, routes and the initial faults."""

    clients: dict[str, str] = field(default_factory=dict)  # client_id -> client_secret
    certificates: dict[str, list[x509.Certificate]] = field(default_factory=dict)
    scopes: dict[str, frozenset[str]] = field(default_factory=dict)  # default: {"events"}
    audience: str | None = None  # accepted as aud besides the URL the client called
    routes: frozenset[tuple[str, str]] | None = None  # (country, tenant); None: all
    faults: Faults = field(default_factory=Faults)
    max_assertion_lifetime: float = 300.0


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One accepted event, as the emulator saw it."""

    country: str
    tenant: str
    event_type: str
    body: dict[str, Any]
    event_id: int
    arrived_at: float  # emulator clock
    content_type: str
    raw: bytes = field(repr=False)  # the request body exactly as it arrived
    traceparent: str | None = None  # a W3C traceparent header, when the relay sent one


@dataclass(frozen=True, slots=True)
class Refusal:
    """One send the emulator did not accept, and when its answer went out."""

    at: float  # emulator clock
    route: str  # "dk/tenant"
    status: int


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request to the token endpoint and how it ended."""

    auth_method: str  # client_secret_post, client_secret_basic, private_key_jwt or none
    client_id: str | None
    status: int
    error: str | None
    at: float
    assertion_header: dict[str, Any] | None = None
    assertion_claims: dict[str, Any] | None = None
    assertion: str | None = field(default=None, repr=False)  # for leak tests only
