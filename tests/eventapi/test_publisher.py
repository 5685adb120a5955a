"""The publisher against the emulated EventApi, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from relay.config import load_settings
from relay.emulator import Emulator, EmulatorConfig
from relay.errors import ConfigurationError, TokenRejected, TokenUnavailable
from relay.eventapi.keys import load_pem
from relay.eventapi.outcome import Outcome, OutcomeKind
from relay.eventapi.publisher import InvalidRoute, Publisher, path_segment
from relay.eventapi.session import (
    create_session,
    create_token_session,
    read_bounded,
    unreachable,
)
from relay.routes import route_problem
from tests.helpers.keys import certificate, rsa_key, server_tls, write_pem
from tests.helpers.partner import (
    CLIENT_ID,
    CLIENT_SECRET,
    Client,
    FakeClock,
    client,
    event_body,
    partner_settings,
    running,
    secret_config,
    wait_for,
)

EVENT = "payment_status_updated"


def in_flight_metric(relay: Client) -> float:
    """relay_requests_in_flight as a scrape reads it."""
    [family] = [m for m in relay.metrics.registry.collect() if m.name == "relay_requests_in_flight"]
    [sample] = family.samples
    return sample.value


async def publish_one(publisher: Publisher, body: bytes | None = None) -> Outcome:
    return await publisher.publish(EVENT, body or event_body(), "dk", "abcinsurance")


async def test_publish_sends_the_documented_request() -> None:
    body = event_body(EVENT, correlationId="70C6D351-016F-4C9E-B1A9-D581FC3A596B")
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        outcome = await publish_one(relay.publisher, body)
        assert relay.publisher.in_flight == 0
        assert in_flight_metric(relay) == 0
    assert outcome.kind is OutcomeKind.PUBLISHED
    assert (outcome.error_class, outcome.http_status, outcome.event_api_id) == ("created", 201, "1")
    assert outcome.latency > 0
    received = emulator.events[0]
    assert (received.country, received.tenant, received.event_type) == ("dk", "abcinsurance", EVENT)
    assert received.content_type == "application/json;charset=utf-8"
    assert received.body == orjson.loads(body)


def test_url() -> None:
    publisher = Publisher(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "https://www.scalepoint.com/",
        timedelta(seconds=5),
    )
    assert publisher.url("dk", "abcinsurance") == (
        "https://www.scalepoint.com/api/events/v1/dk/external/abcinsurance/send"
    )
    assert publisher.url("se", "Budget.Insurance_2-x").endswith(
        "/v1/se/external/Budget.Insurance_2-x/send"
    )
    with pytest.raises(InvalidRoute, match="tenant 'a/b c' is not"):
        publisher.url("dk", "a/b c")


@pytest.mark.parametrize("segment", [".", "..", ""])
def test_no_path_segment_is_a_dot_segment(segment: str) -> None:
    with pytest.raises(InvalidRoute):
        path_segment(segment)
    assert path_segment("a/../b") == "a%2F..%2Fb"


BAD_ROUTES = [
    ("dk", ".."),
    ("..", "abcinsurance"),
    ("dk", "."),
    ("dk", "a/b"),
    ("dk", "../../admin"),
    ("dk", "%2F"),
    ("dk", "%2e%2e"),
    ("dk", "x" * 6080),
    ("DK", "abcinsurance"),
    ("dk", ""),
    ("dk", "abc\ninsurance"),
]


@pytest.mark.parametrize(("country", "tenant"), BAD_ROUTES)
async def test_a_bad_route_is_permanent_without_any_request(country: str, tenant: str) -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        outcome = await relay.publisher.publish(EVENT, event_body(), country, tenant)
    problem = route_problem(country, tenant)
    assert problem is not None
    assert outcome == Outcome(
        OutcomeKind.PERMANENT,
        "invalid_route",
        error=problem,
        latency=outcome.latency,
        sent=False,
    )
    assert len(outcome.error or "") < 200  # a 6,080-character tenant is not quoted whole
    assert emulator.token_requests == []
    assert emulator.stats()["sends_by_route"] == {}


async def test_200_concurrent_publishes_cause_exactly_one_token_request() -> None:
    async with running() as emulator:
        emulator.set_faults(latency_ms=20)  # keeps requests overlapping, as over a real network
        settings = partner_settings(emulator, concurrency=200)
        async with client(settings) as relay:
            outcomes = await asyncio.gather(*(publish_one(relay.publisher) for _ in range(200)))
    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.PUBLISHED}
    assert sorted(int(outcome.event_api_id or 0) for outcome in outcomes) == list(range(1, 201))
    assert len(emulator.token_requests) == 1
    assert emulator.max_concurrency > 1


async def test_sustained_load_with_5_second_tokens_never_uses_an_expired_token() -> None:
    # Emulator and relay share a fake clock: 60 simulated seconds (12 token lifetimes) of
    # steady publishing run in well under a second of real time.
    clock = FakeClock()
    config = secret_config()
    config.faults.token_lifetime = 5
    async with (
        running(config, clock) as emulator,
        client(partner_settings(emulator), clock=clock) as relay,
    ):
        for _ in range(240):
            outcomes = await asyncio.gather(*(publish_one(relay.publisher) for _ in range(4)))
            assert {outcome.kind for outcome in outcomes} == {OutcomeKind.PUBLISHED}
            clock.advance(0.25)
    assert emulator.status_counts == {201: 960}  # no 401: no request carried an expired token
    # Refreshed once per 4 s (80% of 5 s), never more than necessary.
    assert 12 <= len(emulator.token_requests) <= 16


async def test_sustained_load_in_real_time_with_short_tokens() -> None:
    config = secret_config()
    config.faults.token_lifetime = 1
    async with running(config) as emulator, client(partner_settings(emulator)) as relay:

        async def worker() -> None:
            deadline = time.monotonic() + 2.2
            while time.monotonic() < deadline:
                outcome = await publish_one(relay.publisher)
                assert outcome.kind is OutcomeKind.PUBLISHED

        await asyncio.gather(*(worker() for _ in range(4)))
    # Every publish succeeded (asserted in worker). In real time, on a loaded machine, a
    # request can leave with a token a few milliseconds from its end and arrive after it: it
    # is refused once and retried with a fresh one. The fake-clock test above holds that no
    # token is used past its local expiry; this one holds refreshes to once per lifetime.
    sent = sum(emulator.status_counts.values())
    assert emulator.status_counts[401] <= max(2, sent // 100)
    assert 3 <= len(emulator.token_requests) <= 4 + emulator.status_counts[401]


async def test_a_forced_401_costs_exactly_one_token_request() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        await publish_one(relay.publisher)
        emulator.revoke_tokens()
        outcome = await publish_one(relay.publisher)
    assert outcome.kind is OutcomeKind.PUBLISHED
    assert len(emulator.token_requests) == 2
    assert emulator.status_counts == {201: 2, 401: 1}
    assert len(emulator.events) == 2


async def test_many_401s_at_once_share_one_new_token() -> None:
    async with (
        running() as emulator,
        client(partner_settings(emulator, concurrency=50)) as relay,
    ):
        await publish_one(relay.publisher)
        emulator.revoke_tokens()
        outcomes = await asyncio.gather(*(publish_one(relay.publisher) for _ in range(50)))
    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.PUBLISHED}
    assert len(emulator.token_requests) == 2


async def test_a_401_after_the_retry_is_a_configuration_problem() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(status=401)
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "token_not_accepted")
    assert "Full authentication is required" in (outcome.error or "")
    assert len(emulator.token_requests) == 2
    assert emulator.status_counts == {401: 2}


async def test_a_fresh_token_refused_is_a_refusal_of_the_route() -> None:
    """Retried once with a fresh token, then classified as the route's refusal: the engine
    pauses that route (and any other route the API refuses the same way: each its own)."""
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(reject_tokens=True)
        outcome = await publish_one(relay.publisher)
        other = await relay.publisher.publish(EVENT, event_body(), "se", "budget")
    for refused in (outcome, other):
        assert (refused.kind, refused.error_class, refused.http_status) == (
            OutcomeKind.CONFIGURATION,
            "token_not_accepted",
            401,
        )
        assert not refused.for_all_routes
    assert emulator.stats()["tokens_issued"] == 3  # each refusal was retried with a new token
    assert emulator.status_counts == {401: 4}


@pytest.mark.parametrize(
    ("status", "error_class"), [(404, "http_404"), (403, "http_403"), (301, "redirect")]
)
async def test_a_route_refused_is_that_routes_problem(status: int, error_class: str) -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(route_status={"dk/misrouted": status})
        refused = await relay.publisher.publish(EVENT, event_body(), "dk", "misrouted")
        published = await publish_one(relay.publisher)
    assert (refused.kind, refused.error_class) == (OutcomeKind.CONFIGURATION, error_class)
    assert not refused.for_all_routes
    assert published.kind is OutcomeKind.PUBLISHED
    assert emulator.stats()["sends_by_route"] == {"dk/misrouted": 1, "dk/abcinsurance": 1}


# Each outcome row, produced over the wire --------------------------------------------------


async def test_503_with_retry_after_for_a_time_window() -> None:
    clock = FakeClock()
    async with (
        running(secret_config(), clock) as emulator,
        client(partner_settings(emulator), clock=clock) as relay,
    ):
        emulator.set_faults(status=503, retry_after="7", for_seconds=10)
        outcome = await publish_one(relay.publisher)
        assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "http_503")
        assert outcome.retry_after == timedelta(seconds=7)
        clock.advance(10)
        assert (await publish_one(relay.publisher)).kind is OutcomeKind.PUBLISHED


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("99999999999999999999", timedelta(minutes=5)),
        ("9" * 4000, timedelta(minutes=5)),
        ("Fri, 31 Dec 9999 23:59:59 GMT", timedelta(minutes=5)),
        ("Mon, 01 Jan 1900 00:00:00 GMT", timedelta(0)),
        ("180", timedelta(minutes=3)),
    ],
)
async def test_an_absurd_retry_after_is_capped(retry_after: str, expected: timedelta) -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(status=429, retry_after=retry_after)
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "http_429")
    assert outcome.retry_after == expected


async def test_the_retry_after_cap_is_a_setting() -> None:
    settings = partner_settings("http://unused.invalid", retry_after_cap="30s")
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        capped = Publisher(
            relay.session,
            relay.tokens,
            emulator.base_url,
            settings.request_timeout,
            retry_after_cap=settings.retry_after_cap,
        )
        emulator.set_faults(status=503, retry_after="99999999999999999999")
        outcome = await capped.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert outcome.retry_after == timedelta(seconds=30)


async def test_insufficient_scope_is_configuration() -> None:
    config = secret_config(scopes={CLIENT_ID: frozenset({"events", "claims"})})
    async with (
        running(config) as emulator,
        client(partner_settings(emulator, scope="claims")) as relay,
    ):
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "http_403")
    assert "insufficient_scope" in (outcome.error or "")


async def test_unknown_route_is_configuration() -> None:
    config = secret_config(routes=frozenset({("dk", "abcinsurance")}))
    async with running(config) as emulator, client(partner_settings(emulator)) as relay:
        outcome = await relay.publisher.publish(EVENT, event_body(), "se", "abcinsurance")
        assert (await publish_one(relay.publisher)).kind is OutcomeKind.PUBLISHED
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "http_404")


@pytest.mark.parametrize(
    ("event_type", "body", "error_class", "message"),
    [
        (EVENT, b'{"eventType": "x"}', "invalid_payload", "missing [payloadVersion]"),
        ("case_created", event_body(EVENT), "invalid_payload", "does not match"),
        ("", event_body(EVENT), "missing_header", "Missing request header 'Event-Type'"),
        (EVENT, b"[1, 2]", "http_400", "Could not read document"),
    ],
)
async def test_bad_events_are_permanent(
    event_type: str, body: bytes, error_class: str, message: str
) -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        outcome = await relay.publisher.publish(event_type, body, "dk", "abcinsurance")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.PERMANENT, error_class)
    assert message in (outcome.error or "")


async def test_event_type_with_a_control_character_is_permanent() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        outcome = await relay.publisher.publish("a\r\nX-Injected: 1", event_body(), "dk", "x")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.PERMANENT, "invalid_event_type")
    assert emulator.token_requests == []


async def test_timeout_is_transient() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(latency_ms=1000)
        slow = Publisher(relay.session, relay.tokens, emulator.base_url, timedelta(seconds=0.1))
        outcome = await slow.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "timeout")
    assert 0.1 <= outcome.latency < 1


async def test_dropped_connection_is_transient() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(drop_rate=1.0)
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "connection")
    assert emulator.dropped == 1


async def test_refused_connection_is_transient() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        await relay.tokens.get()
        closed = Publisher(relay.session, relay.tokens, "http://127.0.0.1:9", timedelta(seconds=2))
        outcome = await closed.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "connection")


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("http://127.0.0.1:9", "cannot connect to 127.0.0.1:9 (RELAY_API_BASE_URL): "),
        (
            "http://relay-test.invalid",
            "cannot resolve relay-test.invalid, the host of RELAY_API_BASE_URL: check "
            "RELAY_API_BASE_URL",
        ),
    ],
)
async def test_an_unreachable_api_is_named_with_the_setting_to_check(
    base_url: str, message: str
) -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        unreachable = Publisher(relay.session, relay.tokens, base_url, timedelta(seconds=5))
        outcome = await unreachable.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "connection")
    assert outcome.error is not None
    assert outcome.error.startswith(message), outcome.error


async def test_unreadable_answer_is_transient() -> None:
    # A truncated body: the emulator always answers well, so a raw socket server does this.
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"_id"')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncated, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, running() as emulator, client(partner_settings(emulator)) as relay:
        broken = Publisher(
            relay.session, relay.tokens, f"http://127.0.0.1:{port}", timedelta(seconds=2)
        )
        outcome = await broken.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "bad_response")


async def test_token_endpoint_failure_is_transient() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(token_status=503)
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "token_unavailable")
    assert emulator.events == []


async def test_rejected_client_is_configuration() -> None:
    async with (
        running() as emulator,
        client(partner_settings(emulator, client_secret="wrong")) as relay,
    ):
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "token_rejected")
    assert outcome.for_all_routes
    assert "invalid_client" in (outcome.error or "")


# Nothing ends the process -------------------------------------------------------------------


async def test_an_unexpected_exception_becomes_a_transient_outcome() -> None:
    async with aiohttp.ClientSession() as closed:
        pass  # a closed session raises RuntimeError, which no except clause expects
    with capture_logs() as logged:
        async with running() as emulator, client(partner_settings(emulator)) as relay:
            broken = Publisher(closed, relay.tokens, emulator.base_url, timedelta(seconds=2))
            outcome = await broken.publish(EVENT, event_body(), "dk", "abcinsurance")
            assert (await publish_one(relay.publisher)).kind is OutcomeKind.PUBLISHED
    assert outcome == Outcome(
        OutcomeKind.TRANSIENT, "unexpected", error="RuntimeError", latency=outcome.latency
    )
    assert outcome.latency > 0
    unexpected = [entry for entry in logged if entry["event"] == "publish.unexpected_error"]
    assert [entry["error_class"] for entry in unexpected] == ["RuntimeError"]
    assert emulator.events != []


async def test_an_unexpected_exception_fetching_a_token_is_token_unavailable() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        await relay.token_session.close()
        outcome = await publish_one(relay.publisher)
        with pytest.raises(TokenUnavailable, match="RuntimeError"):
            await relay.tokens.get()
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "token_unavailable")
    assert "RuntimeError" in (outcome.error or "")
    assert emulator.token_requests == []


async def test_cancelling_a_publish_still_cancels_it() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(latency_ms=5000)
        task = asyncio.create_task(publish_one(relay.publisher))
        await wait_for(lambda: emulator.stats()["in_flight"] == 1)
        assert in_flight_metric(relay) == 1  # read from the publisher at the scrape
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert relay.publisher.in_flight == 0
        assert in_flight_metric(relay) == 0


# TLS -----------------------------------------------------------------------------------------


async def test_tls_is_verified_and_the_ca_bundle_extends_the_trust_store(tmp_path: Path) -> None:
    server_context, ca_file = server_tls(tmp_path)
    emulator_config = secret_config()
    async with running(emulator_config) as plain:
        await plain.stop()
        await plain.start(ssl_context=server_context)
        untrusted = partner_settings(plain)
        async with client(untrusted) as relay:
            outcome = await publish_one(relay.publisher)
            with pytest.raises(TokenRejected, match="RELAY_CA_BUNDLE"):
                await relay.tokens.get()
        # The token endpoint's certificate is not trusted: a configuration error, everywhere.
        assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "token_rejected")
        assert outcome.for_all_routes
        assert "RELAY_CA_BUNDLE" in (outcome.error or "")
        assert plain.token_requests == []
        async with client(partner_settings(plain, ca_bundle=ca_file)) as relay:
            outcome = await publish_one(relay.publisher)
        assert outcome.kind is OutcomeKind.PUBLISHED


@asynccontextmanager
async def tls_api(tmp_path: Path) -> AsyncIterator[tuple[Emulator, Emulator, Path]]:
    """A token endpoint over plain HTTP and an EventApi over TLS with a self-signed
    certificate, and that certificate's PEM file."""
    server_context, ca_file = server_tls(tmp_path)
    async with running() as tokens_only:
        api = Emulator(secret_config())
        await api.start(ssl_context=server_context)
        try:
            yield tokens_only, api, ca_file
        finally:
            await api.stop()


async def test_an_untrusted_api_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    async with tls_api(tmp_path) as (tokens_only, api, _):
        settings = partner_settings(tokens_only, api_base_url=api.base_url)
        async with client(settings) as relay:
            outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "tls_certificate")
    assert outcome.for_all_routes
    assert "RELAY_CA_BUNDLE" in (outcome.error or "")
    assert "self-signed certificate" in (outcome.error or "")
    assert len(tokens_only.token_requests) == 1
    assert api.stats()["sends_by_route"] == {}


async def test_a_certificate_for_another_host_is_a_configuration_error(tmp_path: Path) -> None:
    async with tls_api(tmp_path) as (tokens_only, api, ca_file):
        # Trusted, but issued for 127.0.0.1, not for the name the relay connects to.
        by_name = api.base_url.replace("127.0.0.1", "localhost")
        settings = partner_settings(tokens_only, api_base_url=by_name, ca_bundle=ca_file)
        async with client(settings) as relay:
            outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.CONFIGURATION, "tls_certificate")
    assert "RELAY_CA_BUNDLE" in (outcome.error or "")


async def test_unreadable_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="RELAY_CA_BUNDLE: cannot load"):
        create_session(load_settings(ca_bundle=bundle))


async def test_session_pool_is_limited_to_the_concurrency() -> None:
    async with create_session(load_settings(concurrency=7)) as session:
        assert session.connector is not None
        assert session.connector.limit == 7


async def test_the_token_session_has_a_small_pool_of_its_own() -> None:
    settings = load_settings(concurrency=200, request_timeout="7s")
    async with create_session(settings) as publishing, create_token_session(settings) as tokens:
        assert tokens.connector is not None
        assert publishing.connector is not None
        assert tokens.connector is not publishing.connector
        assert 1 <= tokens.connector.limit <= 4
        assert tokens.timeout.total == publishing.timeout.total == 7


async def test_the_token_session_refuses_an_unreadable_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="RELAY_CA_BUNDLE: cannot load"):
        create_token_session(load_settings(ca_bundle=bundle))


async def test_a_token_request_does_not_wait_behind_publishes() -> None:
    async with running() as emulator:
        emulator.set_faults(latency_ms=1000)
        async with client(partner_settings(emulator, concurrency=2)) as relay:
            first = await relay.tokens.get()
            sends = [asyncio.create_task(publish_one(relay.publisher)) for _ in range(2)]
            await wait_for(lambda: emulator.stats()["in_flight"] == 2)  # the pool is in use
            relay.tokens.invalidate(first)
            assert await relay.tokens.get() is not first
            assert not any(task.done() for task in sends)  # the token did not wait for them
            outcomes = await asyncio.gather(*sends)
    assert {outcome.kind for outcome in outcomes} == {OutcomeKind.PUBLISHED}
    assert len(emulator.token_requests) == 2


# Nothing secret in any log line --------------------------------------------------------------


@asynccontextmanager
async def jwt_client(tmp_path: Path) -> AsyncIterator[tuple[Emulator, Client]]:
    key = rsa_key(0)
    material = load_pem(*write_pem(tmp_path, key, certificate(key)))
    config = EmulatorConfig(certificates={"jwt-client": [material.certificate]})
    async with running(config) as emulator:
        settings = partner_settings(
            emulator,
            client_id="jwt-client",
            client_secret=None,
            client_auth_method="private_key_jwt",
        )
        async with client(settings, key_material=material) as relay:
            yield emulator, relay


def secrets_of(emulator: Emulator) -> list[str]:
    """Every access token and client assertion that crossed the wire."""
    assertions = [item.assertion for item in emulator.token_requests if item.assertion]
    return emulator.access_tokens + assertions


async def test_no_secret_assertion_or_token_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    candidates = [CLIENT_SECRET]
    texts: list[str] = []
    with capture_logs() as structured:
        async with running() as emulator, client(partner_settings(emulator)) as relay:
            texts.append(repr(await publish_one(relay.publisher)))
            emulator.revoke_tokens()
            texts.append(repr(await publish_one(relay.publisher)))
            emulator.set_faults(status=401)
            texts.append(repr(await publish_one(relay.publisher)))
            emulator.clear_faults()
            texts.append(repr(relay.tokens.token) + repr(relay.tokens.last_error))
            candidates += secrets_of(emulator)
        async with running() as emulator:
            basic = partner_settings(emulator, client_auth_method="client_secret_basic")
            async with client(basic) as relay:
                texts.append(repr(await publish_one(relay.publisher)))
            wrong = partner_settings(emulator, client_secret=CLIENT_SECRET + "-wrong")
            async with client(wrong) as relay:
                texts.append(repr(await publish_one(relay.publisher)))
                texts.append(repr(relay.tokens.last_error))
            candidates += secrets_of(emulator)
        async with jwt_client(tmp_path) as (emulator, relay):
            texts.append(repr(await publish_one(relay.publisher)))
            emulator.revoke_tokens()
            texts.append(repr(await publish_one(relay.publisher)))
            candidates += secrets_of(emulator)
    assert any(entry["event"] == "token.refreshed" for entry in structured)
    assert any(entry["event"] == "token.request_failed" for entry in structured)
    texts += [repr(entry) for entry in structured]
    texts += [record.getMessage() + repr(record.__dict__) for record in caplog.records]
    everything = "\n".join(texts)
    assert len(candidates) >= 8
    for secret in candidates:
        assert secret not in everything


# Partner text: stored safely, never logged ---------------------------------------------------

PERSONAL = "Jens Hansen"  # what an echoed payload carries: a person's name


@pytest.mark.parametrize(
    ("error_body", "content_type"),
    [
        ('{"message": "Incorrect payload", "valid": false}', "application/json; charset=utf-16"),
        ("<html><body>Bad Request</body></html>", "text/html; charset=utf-16-le"),
        ('{"message": "bad\\u0000value", "valid": false}', "application/json"),
        ("<html>\x00\x01\x1b[31m broken \x00</html>", "text/html"),
    ],
)
async def test_partner_error_text_is_accepted_by_a_postgresql_text_column(
    db: asyncpg.Connection, error_body: str, content_type: str
) -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(status=400, error_body=error_body, error_content_type=content_type)
        outcome = await publish_one(relay.publisher)
    assert (outcome.kind, outcome.http_status) == (OutcomeKind.PERMANENT, 400)
    assert outcome.error is not None
    assert "\x00" not in outcome.error
    await db.execute("CREATE TEMPORARY TABLE stored (error text)")
    await db.execute("INSERT INTO stored (error) VALUES ($1)", outcome.error)
    assert await db.fetchval("SELECT error FROM stored") == outcome.error


async def test_a_huge_echoing_error_body_is_stored_bounded() -> None:
    body = event_body(note="x" * 100_000, changedBy={"name": PERSONAL})
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(status=500, echo_body=True)
        outcome = await publish_one(relay.publisher, body)
    assert outcome.error_class == "http_500"
    assert outcome.error is not None
    assert len(outcome.error) <= 1000


async def test_a_huge_answer_is_read_only_in_part() -> None:
    async with running() as emulator, client(partner_settings(emulator)) as relay:
        emulator.set_faults(status=503, error_body="<html>" + "x" * 5_000_000)
        outcome = await publish_one(relay.publisher)
        assert (await publish_one(relay.publisher)).error_class == "http_503"
    assert outcome.error_class == "http_503"
    assert (outcome.error or "").startswith("HTTP 503: <html>xxx")


async def test_an_echoing_error_body_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = event_body(changedBy={"name": PERSONAL, "userName": "jens.hansen"})
    with capture_logs() as structured:
        async with running() as emulator, client(partner_settings(emulator)) as relay:
            for status in (400, 500, 404, 401):
                emulator.set_faults(status=status, echo_body=True, error_body="Echo: ")
                outcome = await publish_one(relay.publisher, body)
                assert outcome.http_status == status
            emulator.set_faults(status=None, route_status={"dk/abcinsurance": 403})
            assert (await publish_one(relay.publisher, body)).http_status == 403
    logged = "\n".join(repr(entry) for entry in structured)
    logged += "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert structured  # the 401 retry logs, without the body
    assert PERSONAL not in logged
    assert "jens.hansen" not in logged
    assert "Echo" not in logged


async def test_a_token_endpoints_refusal_text_is_never_logged() -> None:
    refusal = orjson.dumps({"error": "invalid_client", "error_description": f"no {PERSONAL}"})
    clock = FakeClock()
    with capture_logs() as structured:
        async with (
            running() as emulator,
            client(partner_settings(emulator), clock=clock) as relay,
        ):
            emulator.set_faults(
                token_status=400,
                error_body=refusal.decode(),
                error_content_type="application/json",
            )
            outcome = await publish_one(relay.publisher)
            emulator.set_faults(token_status=503, echo_body=True, error_body=None)
            clock.advance(61)  # past the configuration pause
            second = await publish_one(relay.publisher)
    assert (outcome.error_class, second.error_class) == ("token_rejected", "token_unavailable")
    assert PERSONAL in (outcome.error or "")  # stored for the operator, ...
    failures = [entry for entry in structured if entry["event"] == "token.request_failed"]
    assert len(failures) == 2
    assert PERSONAL not in repr(structured)  # ... never logged
    assert CLIENT_SECRET not in repr(structured)
    assert [entry.get("status") for entry in failures] == [400, 503]


async def test_a_host_from_a_default_says_which_setting_to_set() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as failed:
            await session.post("http://relay-check.invalid/connect/token")
    message = unreachable(
        failed.value,
        "http://relay-check.invalid/connect/token",
        "RELAY_TOKEN_URL",
        None,
        default="the default for RELAY_ENVIRONMENT=sandbox",
    )
    assert message == (
        "cannot resolve relay-check.invalid, the host of RELAY_TOKEN_URL (not set: the default "
        "for RELAY_ENVIRONMENT=sandbox): set RELAY_TOKEN_URL"
    )


# Reading an answer: sizes the emulator never sends ----------------------------------------


@asynccontextmanager
async def answering(body: bytes, headers: dict[str, str]) -> AsyncIterator[str]:
    """A server on a real socket that answers every request with ``body`` as given."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if headers.get("Transfer-Encoding") != "chunked":
            return web.Response(status=200, body=body, headers=headers)
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        # a small answer that says its size: read whole
        (b'{"_id": "1"}', {}, b'{"_id": "1"}'),
        # a small compressed answer that unpacks past the limit: cut at the limit
        (gzip.compress(b"x" * 5_000_000), {"Content-Encoding": "gzip"}, b"x" * 1000),
        # no size given (chunked): cut at the limit
        (b"y" * 5000, {"Transfer-Encoding": "chunked"}, b"y" * 1000),
    ],
    ids=["sized", "gzip bomb", "chunked"],
)
async def test_an_answer_is_read_up_to_the_limit_whatever_it_says(
    body: bytes, headers: dict[str, str], expected: bytes
) -> None:
    async with (
        answering(body, headers) as url,
        aiohttp.ClientSession() as session,
        session.post(url, data=b"{}") as response,
    ):
        assert await read_bounded(response, limit=1000) == expected
