"""The token provider against the emulated token endpoint, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from relay.config import Settings
from relay.emulator import EmulatorConfig
from relay.errors import TokenRejected, TokenUnavailable
from relay.eventapi.keys import KeyMaterial, load_pem
from relay.eventapi.outcome import OutcomeKind
from relay.eventapi.session import create_token_session
from relay.eventapi.token import AccessToken, TokenProvider, basic_authorization
from relay.metrics import Metrics
from tests.helpers.keys import certificate, rsa_key, write_pem
from tests.helpers.partner import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeClock,
    client,
    event_body,
    partner_settings,
    running,
    secret_config,
    wait_for,
)


@asynccontextmanager
async def provider(
    settings: Settings,
    *,
    clock: Callable[[], float] | None = None,
    key_material: KeyMaterial | None = None,
    jitter: float = 1.0,
) -> AsyncIterator[TokenProvider]:
    """A TokenProvider with deterministic jitter (the top of the backoff range)."""
    async with create_token_session(settings) as session:
        tokens = TokenProvider(
            session,
            settings,
            key_material=key_material,
            metrics=Metrics(),
            clock=clock or FakeClock(),
            jitter=lambda: jitter,
        )
        try:
            yield tokens
        finally:
            await tokens.close()


@pytest.fixture
def key_material(tmp_path: Path) -> KeyMaterial:
    key = rsa_key(0)
    return load_pem(*write_pem(tmp_path, key, certificate(key)))


# Client authentication -----------------------------------------------------------------------


async def test_client_secret_post() -> None:
    async with running() as emulator, provider(partner_settings(emulator)) as tokens:
        token = await tokens.get()
        assert tokens.ready
        assert token.lifetime == 3600
        assert token.scope == "events"
    assert [request.auth_method for request in emulator.token_requests] == ["client_secret_post"]


async def test_client_secret_basic_form_urlencodes_id_and_secret() -> None:
    client_id, secret = "relay test:1", "p@ss word+/:%"
    config = EmulatorConfig(clients={client_id: secret})
    async with running(config) as emulator:
        settings = partner_settings(
            emulator,
            client_id=client_id,
            client_secret=secret,
            client_auth_method="client_secret_basic",
        )
        async with provider(settings) as tokens:
            await tokens.get()
    assert emulator.token_requests[0].auth_method == "client_secret_basic"
    assert emulator.token_requests[0].status == 200
    encoded = base64.b64decode(basic_authorization(client_id, secret).removeprefix("Basic "))
    assert encoded == b"relay+test%3A1:p%40ss+word%2B%2F%3A%25"


async def test_private_key_jwt_assertion_verifies_and_carries_the_claims(
    key_material: KeyMaterial,
) -> None:
    config = EmulatorConfig(certificates={CLIENT_ID: [key_material.certificate]})
    async with running(config) as emulator:
        settings = partner_settings(
            emulator, client_secret=None, client_auth_method="private_key_jwt"
        )
        async with provider(settings, key_material=key_material) as tokens:
            await tokens.get()
    request = emulator.token_requests[0]
    assert (request.auth_method, request.status) == ("private_key_jwt", 200)
    assert request.assertion is not None
    header = jwt.get_unverified_header(request.assertion)
    assert header == {
        "alg": "RS256",
        "typ": "JWT",
        "kid": key_material.thumbprint,
        "x5t": key_material.thumbprint,
    }
    claims: dict[str, Any] = jwt.decode(
        request.assertion,
        key_material.certificate.public_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience=emulator.token_url,
    )
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == emulator.token_url
    assert uuid.UUID(claims["jti"]).version == 4
    assert claims["iat"] == claims["nbf"]
    assert claims["exp"] == claims["iat"] + 15  # backdated 5 s, valid 10 s ahead


@pytest.mark.parametrize(("skew", "accepted"), [(-8, True), (0, True), (12, True), (-20, False)])
async def test_private_key_jwt_survives_a_token_endpoint_clock_a_little_off(
    key_material: KeyMaterial, skew: float, accepted: bool
) -> None:
    config = EmulatorConfig(certificates={CLIENT_ID: [key_material.certificate]})
    async with running(config, wall_clock=lambda: time.time() + skew) as emulator:
        settings = partner_settings(
            emulator, client_secret=None, client_auth_method="private_key_jwt"
        )
        async with provider(settings, key_material=key_material) as tokens:
            if accepted:
                await tokens.get()
            else:
                with pytest.raises(TokenRejected, match="not yet valid"):
                    await tokens.get()
    assert [request.status for request in emulator.token_requests] == [200 if accepted else 401]


async def test_private_key_jwt_with_rotated_certificates(key_material: KeyMaterial) -> None:
    old_key = rsa_key(1)
    config = EmulatorConfig(
        certificates={CLIENT_ID: [certificate(old_key), key_material.certificate]}
    )
    async with running(config) as emulator:
        settings = partner_settings(emulator, client_secret=None, private_key_file=Path("k"))
        settings = settings.model_copy(update={"certificate_file": Path("c")})
        assert settings.uses_private_key_jwt
        async with provider(settings, key_material=key_material) as tokens:
            await tokens.get()
            await tokens.get()
    assert [request.status for request in emulator.token_requests] == [200]


# Sharing and refreshing ----------------------------------------------------------------------


async def test_200_concurrent_callers_cause_one_token_request() -> None:
    async with running() as emulator, provider(partner_settings(emulator)) as tokens:
        results = await asyncio.gather(*(tokens.get() for _ in range(200)))
    assert len({id(token) for token in results}) == 1
    assert len(emulator.token_requests) == 1


async def test_refreshes_in_background_after_80_percent_and_serves_the_old_token() -> None:
    clock = FakeClock()
    config = secret_config()
    config.faults.token_lifetime = 100
    async with (
        running(config, clock) as emulator,
        provider(partner_settings(emulator), clock=clock) as tokens,
    ):
        first = await tokens.get()
        clock.advance(79)
        assert await tokens.get() is first
        assert len(emulator.token_requests) == 1
        clock.advance(2)
        # Many callers past the refresh point: all served at once, one refresh started.
        served = await asyncio.gather(*(tokens.get() for _ in range(50)))
        assert all(token is first for token in served)
        await wait_for(lambda: tokens.token is not first)
        assert len(emulator.token_requests) == 2
        assert await tokens.get() is not first


async def test_callers_of_an_expired_token_await_one_refresh() -> None:
    clock = FakeClock()
    config = secret_config()
    config.faults.token_lifetime = 10
    async with (
        running(config, clock) as emulator,
        provider(partner_settings(emulator), clock=clock) as tokens,
    ):
        first = await tokens.get()
        clock.advance(9.5)  # beyond the skew margin: no longer usable
        assert tokens.token is None
        served = await asyncio.gather(*(tokens.get() for _ in range(50)))
    assert {id(token) for token in served} == {id(served[0])}
    assert served[0] is not first
    assert len(emulator.token_requests) == 2


async def test_invalidate_drops_exactly_that_token() -> None:
    async with running() as emulator, provider(partner_settings(emulator)) as tokens:
        first = await tokens.get()
        tokens.invalidate(first)
        second = await tokens.get()
        assert second is not first
        tokens.invalidate(first)  # a late 401 for the old token must not drop the new one
        assert await tokens.get() is second
    assert len(emulator.token_requests) == 2


def test_access_token_repr_hides_the_value() -> None:
    token = AccessToken("very-secret-token-value", issued_at=0, lifetime=60, scope="events")
    assert "very-secret-token-value" not in repr(token)
    assert "very-secret-token-value" not in str(token)


# Failures ------------------------------------------------------------------------------------


async def test_transient_failure_backs_off_with_fail_fast() -> None:
    clock = FakeClock()
    async with running(secret_config(), clock) as emulator:
        emulator.set_faults(token_status=503)
        settings = partner_settings(emulator, token_backoff_base=1, token_backoff_cap=3)
        async with provider(settings, clock=clock) as tokens:
            for expected_wait in (1, 2, 3, 3):  # base * 2**n, capped (jitter pinned at 1.0)
                requests = len(emulator.token_requests)
                with pytest.raises(TokenUnavailable, match="HTTP 503"):
                    await tokens.get()
                assert len(emulator.token_requests) == requests + 1
                clock.advance(expected_wait - 0.1)
                with pytest.raises(TokenUnavailable, match="next token request in"):
                    await tokens.get()
                assert len(emulator.token_requests) == requests + 1  # failed fast
                clock.advance(0.2)
            assert not tokens.ready
            emulator.clear_faults()
            await tokens.get()
            assert tokens.ready
            assert tokens.last_error is None


async def test_full_jitter_spreads_the_backoff() -> None:
    clock = FakeClock()
    async with running(secret_config(), clock) as emulator:
        emulator.set_faults(token_status=500)
        settings = partner_settings(emulator, token_backoff_base=10)
        async with provider(settings, clock=clock, jitter=0.25) as tokens:
            with pytest.raises(TokenUnavailable):
                await tokens.get()
            clock.advance(2.6)  # 0.25 * 10 s
            with pytest.raises(TokenUnavailable, match="HTTP 500"):
                await tokens.get()
    assert len(emulator.token_requests) == 2


async def test_rejected_client_raises_token_rejected_and_waits_the_configuration_pause() -> None:
    clock = FakeClock()
    async with running(secret_config(), clock) as emulator:
        settings = partner_settings(emulator, client_secret="wrong-secret-value")
        async with provider(settings, clock=clock) as tokens:
            with pytest.raises(TokenRejected) as caught:
                await tokens.get()
            message = str(caught.value)
            assert "invalid_client" in message
            assert "unknown client or wrong secret" in message
            assert "wrong-secret-value" not in message
            assert isinstance(tokens.last_error, TokenRejected)
            assert not tokens.ready
            pause = settings.configuration_pause.total_seconds()
            clock.advance(pause - 1)
            with pytest.raises(TokenRejected):
                await tokens.get()
            assert len(emulator.token_requests) == 1
            clock.advance(2)
            with pytest.raises(TokenRejected):
                await tokens.get()
            assert len(emulator.token_requests) == 2


async def test_invalid_scope_is_rejected() -> None:
    async with (
        running() as emulator,
        provider(partner_settings(emulator, scope="events admin")) as tokens,
    ):
        with pytest.raises(TokenRejected, match="invalid_scope"):
            await tokens.get()


async def test_slow_token_endpoint_times_out() -> None:
    async with running() as emulator:
        emulator.set_faults(token_latency_ms=2000)
        async with provider(partner_settings(emulator, request_timeout="200ms")) as tokens:
            with pytest.raises(TokenUnavailable, match=r"did not answer within 0\.2s"):
                await tokens.get()


async def test_unreachable_token_endpoint_is_transient() -> None:
    async with running() as emulator:
        settings = partner_settings(emulator)
    # The emulator is stopped: its port now refuses connections.
    async with provider(settings) as tokens:
        with pytest.raises(TokenUnavailable, match="cannot reach the token endpoint"):
            await tokens.get()


# Answers the emulator never gives: a tiny stub server -----------------------------------------


@asynccontextmanager
async def stub(status: int, body: bytes, headers: dict[str, str]) -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/connect/token", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "expected", "match"),
    [
        (200, b"<html>login</html>", TokenUnavailable, "not JSON"),
        (200, b'{"access_token": "x", "expires_in": 60}', TokenUnavailable, "token_type"),
        (200, b'{"access_token": "x", "token_type": "mac"}', TokenUnavailable, "token_type"),
        (200, b'{"token_type": "Bearer"}', TokenUnavailable, "without an access_token"),
        (
            200,
            b'{"access_token": "x", "token_type": "Bearer", "expires_in": -1}',
            TokenUnavailable,
            "expires_in",
        ),
        (204, b"", TokenUnavailable, "HTTP 204 instead of 200"),
        (502, b"bad gateway", TokenUnavailable, "HTTP 502"),
        (
            400,
            b'{"error": "unauthorized_client", "error_description": "grant not allowed"}',
            TokenRejected,
            "unauthorized_client: grant not allowed",
        ),
        (400, b'{"error": "invalid_grant"}', TokenRejected, "HTTP 400 invalid_grant"),
        (401, b"", TokenRejected, "without an OAuth error body"),
        (302, b"", TokenRejected, "redirect"),
    ],
)
async def test_unusual_token_answers(
    status: int, body: bytes, expected: type[Exception], match: str
) -> None:
    async with stub(status, body, {"Content-Type": "application/json"}) as base_url:
        settings = partner_settings(base_url)
        async with provider(settings) as tokens:
            with pytest.raises(expected, match=match):
                await tokens.get()


async def test_retry_after_from_the_token_endpoint_is_honoured() -> None:
    clock = FakeClock()
    async with stub(429, b"", {"Retry-After": "30"}) as base_url:
        settings = partner_settings(base_url)
        async with provider(settings, clock=clock) as tokens:
            with pytest.raises(TokenUnavailable, match="HTTP 429"):
                await tokens.get()
            clock.advance(29)
            with pytest.raises(TokenUnavailable, match=r"next token request in 1\.0s"):
                await tokens.get()


@pytest.mark.parametrize(
    ("retry_after", "cap", "wait"),
    [
        ("99999999999999999999", None, 300.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", None, 300.0),
        ("99999999999999999999", "10s", 10.0),
    ],
)
async def test_an_absurd_retry_after_from_the_token_endpoint_is_capped(
    retry_after: str, cap: str | None, wait: float
) -> None:
    clock = FakeClock()
    async with running(secret_config(), clock) as emulator:
        emulator.set_faults(token_status=503, retry_after=retry_after)
        overrides = {"retry_after_cap": cap} if cap else {}
        async with provider(partner_settings(emulator, **overrides), clock=clock) as tokens:
            with pytest.raises(TokenUnavailable, match="HTTP 503"):
                await tokens.get()
            with pytest.raises(TokenUnavailable, match=rf"next token request in {wait:.1f}s"):
                await tokens.get()
            emulator.clear_faults()
            clock.advance(wait)
            await tokens.get()
    assert len(emulator.token_requests) == 2


async def test_an_absurd_token_lifetime_is_clamped_to_a_day_and_refreshed_at_80_percent() -> None:
    clock = FakeClock()
    config = secret_config()
    config.faults.token_lifetime = 1e308  # sent as a 309-digit integer
    async with (
        running(config, clock) as emulator,
        provider(partner_settings(emulator), clock=clock) as tokens,
    ):
        first = await tokens.get()
        assert first.lifetime == 86400
        clock.advance(0.8 * 86400 - 1)
        assert await tokens.get() is first
        assert len(emulator.token_requests) == 1
        clock.advance(2)
        assert await tokens.get() is first  # served while the refresh runs
        await wait_for(lambda: tokens.token is not first)
    assert len(emulator.token_requests) == 2


@pytest.mark.parametrize(("lifetime", "expected"), [(float("inf"), 86400), (float("nan"), 60)])
async def test_a_non_finite_token_lifetime_is_usable(lifetime: float, expected: float) -> None:
    config = secret_config()
    config.faults.token_lifetime = lifetime  # sent as Infinity or NaN, which JSON lacks
    async with running(config) as emulator, provider(partner_settings(emulator)) as tokens:
        assert (await tokens.get()).lifetime == expected


async def test_a_tiny_token_lifetime_still_works() -> None:
    clock = FakeClock()
    config = secret_config()
    config.faults.token_lifetime = 0.01
    async with running(config, clock) as emulator:
        settings = partner_settings(emulator)
        async with client(settings, clock=clock) as relay:
            for _ in range(3):
                outcome = await relay.publisher.publish(
                    "payment_status_updated", event_body(), "dk", "abcinsurance"
                )
                assert outcome.kind is OutcomeKind.PUBLISHED
                clock.advance(0.02)
    assert len(emulator.token_requests) == 3
    assert emulator.status_counts == {201: 3}


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (b"1e308", 86400),
        (b"100000000000000000000000000000", 86400),
        (b"1" + b"0" * 400, 86400),
        (b"1e400", 86400),
        (b"Infinity", 86400),
        (b"NaN", 60),
        (b'"1e308"', 86400),
        (b'"' + b"9" * 5000 + b'"', 86400),
        (b'"3600"', 3600),
        (b'"soon"', 60),
        (b"true", 60),
        (b"null", 60),
        (b"[3600]", 60),
        (b"0.5", 0.5),
        (b"86401", 86400),
        (b"7200", 7200),
    ],
)
async def test_expires_in_is_clamped(expires_in: bytes, lifetime: float) -> None:
    body = b'{"access_token": "x", "token_type": "Bearer", "expires_in": ' + expires_in + b"}"
    async with stub(200, body, {}) as base_url, provider(partner_settings(base_url)) as tokens:
        token = await tokens.get()
    assert token.lifetime == lifetime
    assert token.refresh_at - token.issued_at == pytest.approx(lifetime * 0.8)


async def test_missing_expires_in_gets_a_conservative_lifetime() -> None:
    body = b'{"access_token": "x", "token_type": "bearer"}'
    async with stub(200, body, {}) as base_url:
        settings = partner_settings(base_url)
        async with provider(settings) as tokens:
            token = await tokens.get()
    assert token.lifetime == 60


async def test_client_secret_appears_nowhere_in_token_requests_repr() -> None:
    async with running() as emulator, provider(partner_settings(emulator)) as tokens:
        await tokens.get()
        text = repr(tokens.token) + repr(emulator.token_requests)
    assert CLIENT_SECRET not in text
