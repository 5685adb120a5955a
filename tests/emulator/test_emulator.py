"""The emulator behaves as Scalepoint's documentation says, and its faults work."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from relay.emulator import Emulator, EmulatorConfig
from relay.emulator.replies import UNAUTHORIZED
from relay.eventapi.keys import CLIENT_ASSERTION_TYPE, certificate_thumbprint
from tests.helpers.keys import certificate, rsa_key
from tests.helpers.partner import CLIENT_ID, CLIENT_SECRET, FakeClock, event_body, running
from tests.helpers.partner import secret_config as base_config

SEND = "/api/events/v1/dk/external/abcinsurance/send"
SIGNING_KEY = rsa_key(0)
SIGNING_CERT = certificate(SIGNING_KEY)


def config(**overrides: Any) -> EmulatorConfig:
    result = base_config(**overrides)
    result.certificates.setdefault("jwt-client", [SIGNING_CERT])
    return result


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post_token(
    http: aiohttp.ClientSession,
    emulator: Emulator,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.post(emulator.token_url, data=form, headers=headers or {}) as response:
        return response.status, await response.json(), response


def secret_form(**extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": "events",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **extra,
    }


async def get_token(http: aiohttp.ClientSession, emulator: Emulator) -> str:
    status, body, _ = await post_token(http, emulator, secret_form())
    assert status == 200
    return str(body["access_token"])


async def send(
    http: aiohttp.ClientSession,
    emulator: Emulator,
    token: str | None,
    body: bytes | None = None,
    *,
    event_type: str | None = "payment_status_updated",
    content_type: str = "application/json;charset=utf-8",
    path: str = SEND,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if event_type is not None:
        headers["Event-Type"] = event_type
    async with http.post(
        emulator.base_url + path, data=body or event_body(), headers=headers
    ) as response:
        return response.status, orjson.loads(await response.read()), response


def assertion(**changes: Any) -> str:
    key = changes.pop("key", SIGNING_KEY)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "jwt-client",
        "sub": "jwt-client",
        "aud": changes.pop("aud"),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 10,
    }
    claims.update(changes)
    thumbprint = certificate_thumbprint(SIGNING_CERT)
    return jwt.encode(
        claims,
        key,
        algorithm="RS256",
        headers={"typ": "JWT", "kid": thumbprint, "x5t": thumbprint},
    )


def jwt_form(signed: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": "jwt-client",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": signed,
    }


# Token endpoint ------------------------------------------------------------------------------


async def test_token_success_is_a_standard_oauth_answer(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        emulator.set_faults(token_lifetime=5)
        status, body, response = await post_token(http, emulator, secret_form())
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 5
    assert body["scope"] == "events"
    assert response.headers["Cache-Control"] == "no-store"
    assert emulator.token_requests[0].auth_method == "client_secret_post"


@pytest.mark.parametrize(
    ("form", "headers", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),
        (secret_form(client_secret="wrong"), {}, 401, "invalid_client"),
        (secret_form(client_id="stranger"), {}, 401, "invalid_client"),
        (secret_form(grant_type=""), {}, 400, "invalid_request"),
        (secret_form(grant_type="password"), {}, 400, "unsupported_grant_type"),
        (secret_form(scope="events admin"), {}, 400, "invalid_scope"),
        (secret_form(), {"Authorization": "Basic eDp5"}, 400, "invalid_request"),
        (
            {"grant_type": "client_credentials"},
            {"Authorization": "Basic !!!"},
            401,
            "invalid_client",
        ),
    ],
)
async def test_token_errors_follow_rfc_6749(
    http: aiohttp.ClientSession,
    form: dict[str, str],
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    async with running(config()) as emulator:
        answer_status, body, response = await post_token(http, emulator, form, headers)
    assert (answer_status, body["error"]) == (status, error)
    assert body["error_description"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic")


async def test_token_request_must_be_a_form(http: aiohttp.ClientSession) -> None:
    async with (
        running(config()) as emulator,
        http.post(emulator.token_url, json=secret_form()) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


async def test_private_key_jwt_accepts_a_good_assertion(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        status, body, _ = await post_token(
            http, emulator, jwt_form(assertion(aud=emulator.token_url))
        )
    assert status == 200, body
    assert emulator.token_requests[0].assertion_claims is not None


async def test_private_key_jwt_accepts_the_configured_audience(
    http: aiohttp.ClientSession,
) -> None:
    audience = "https://sandbox-accounts.scalepoint.com/connect/token"
    async with running(config(audience=audience)) as emulator:
        status, _, _ = await post_token(http, emulator, jwt_form(assertion(aud=audience)))
    assert status == 200


@pytest.mark.parametrize(
    ("changes", "description"),
    [
        ({"aud": "https://elsewhere.example/connect/token"}, "Audience"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"nbf": int(time.time()) + 600, "exp": int(time.time()) + 610}, "not yet valid"),
        ({"exp": int(time.time()) + 3600}, "lives too long"),
        ({"sub": "someone-else"}, "must be equal"),
        ({"key": rsa_key(1)}, "no registered certificate"),
    ],
)
async def test_private_key_jwt_refuses_bad_assertions(
    http: aiohttp.ClientSession, changes: dict[str, Any], description: str
) -> None:
    async with running(config()) as emulator:
        signed = assertion(**{"aud": emulator.token_url, **changes})
        status, body, _ = await post_token(http, emulator, jwt_form(signed))
    assert (status, body["error"]) == (401, "invalid_client")
    assert description in body["error_description"]


NOW = 1_800_000_000  # the emulator's time of day in the skew tests


@pytest.mark.parametrize(
    ("iat", "nbf", "exp", "description"),
    [
        (NOW + 5, NOW + 5, NOW + 15, None),  # the client's clock 5 s ahead: tolerated
        (NOW - 14, NOW - 14, NOW - 4, None),  # 4 s past exp: tolerated
        (NOW + 6, NOW + 6, NOW + 16, "not yet valid"),
        (NOW + 6, NOW, NOW + 16, "not yet valid"),  # iat in the future counts too
        (NOW - 15, NOW - 15, NOW - 5, "expired"),
        (NOW, NOW, NOW + 301, "lives too long"),
        ("now", NOW, NOW + 10, "must be numbers"),
    ],
)
async def test_private_key_jwt_tolerates_5_seconds_of_clock_skew_and_no_more(
    http: aiohttp.ClientSession, iat: Any, nbf: int, exp: int, description: str | None
) -> None:
    async with running(config(), wall_clock=lambda: NOW) as emulator:
        signed = assertion(aud=emulator.token_url, iat=iat, nbf=nbf, exp=exp)
        status, body, _ = await post_token(http, emulator, jwt_form(signed))
    if description is None:
        assert status == 200, body
    else:
        assert (status, body["error"]) == (401, "invalid_client")
        assert description in body["error_description"]


async def test_private_key_jwt_refuses_a_replayed_jti(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        signed = assertion(aud=emulator.token_url)
        first, _, _ = await post_token(http, emulator, jwt_form(signed))
        second, body, _ = await post_token(http, emulator, jwt_form(signed))
    assert (first, second) == (200, 401)
    assert "already used" in body["error_description"]


async def test_private_key_jwt_needs_the_assertion_type(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        form = jwt_form(assertion(aud=emulator.token_url))
        form["client_assertion_type"] = "urn:example:other"
        status, body, _ = await post_token(http, emulator, form)
    assert (status, body["error"]) == (401, "invalid_client")


# Send endpoint -------------------------------------------------------------------------------


async def test_send_success_returns_increasing_ids(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        first = await send(http, emulator, token)
        second = await send(http, emulator, token)
    assert (first[0], first[1], second[0], second[1]) == (201, {"_id": 1}, 201, {"_id": 2})
    assert [event.event_id for event in emulator.events] == [1, 2]
    assert emulator.events[0].arrived_at <= emulator.events[1].arrived_at


@pytest.mark.parametrize("token", [None, "unknown-token"])
async def test_send_without_a_valid_token_is_401(
    http: aiohttp.ClientSession, token: str | None
) -> None:
    async with running(config()) as emulator:
        status, body, response = await send(http, emulator, token)
    assert (status, body) == (401, UNAUTHORIZED)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_send_with_an_expired_token_is_401(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with running(config(), clock) as emulator:
        emulator.set_faults(token_lifetime=5)
        token = await get_token(http, emulator)
        assert (await send(http, emulator, token))[0] == 201
        clock.advance(5)
        assert (await send(http, emulator, token))[0] == 401


async def test_send_with_a_token_lacking_the_events_scope_is_403(
    http: aiohttp.ClientSession,
) -> None:
    async with running(config(scopes={CLIENT_ID: frozenset({"events", "claims"})})) as emulator:
        _, body, _ = await post_token(http, emulator, secret_form(scope="claims"))
        status, answer, _ = await send(http, emulator, body["access_token"])
    assert (status, answer) == (
        403,
        {
            "error": "insufficient_scope",
            "error_description": "Insufficient scope for this resource",
            "scope": "events",
        },
    )


async def test_missing_event_type_is_a_spring_400(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        status, body, _ = await send(http, emulator, token, event_type=None)
    assert status == 400
    assert set(body) == {"timestamp", "status", "error", "exception", "message", "path"}
    assert body["status"] == 400
    assert body["error"] == "Bad Request"
    assert body["exception"] == "org.springframework.web.bind.ServletRequestBindingException"
    assert body["message"] == (
        "Missing request header 'Event-Type' for method parameter of type String"
    )
    assert body["path"] == SEND


@pytest.mark.parametrize("content_type", ["text/plain", "application/json;charset=latin-1"])
async def test_wrong_content_type_is_415(http: aiohttp.ClientSession, content_type: str) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        status, body, _ = await send(http, emulator, token, content_type=content_type)
    assert (status, body["status"]) == (415, 415)


@pytest.mark.parametrize("missing", ["eventType", "payloadVersion", "correlationId", "timestamp"])
async def test_incomplete_payload_is_400(http: aiohttp.ClientSession, missing: str) -> None:
    document = orjson.loads(event_body())
    del document[missing]
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        status, body, _ = await send(http, emulator, token, orjson.dumps(document))
    assert (status, body) == (
        400,
        {"message": f"Incorrect payload, missing [{missing}]", "valid": False},
    )


async def test_event_type_must_match_the_header(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        status, body, _ = await send(http, emulator, token, event_type="case_created")
    assert status == 400
    assert body["valid"] is False


async def test_routes_allow_list(http: aiohttp.ClientSession) -> None:
    async with running(config(routes=frozenset({("dk", "abcinsurance")}))) as emulator:
        token = await get_token(http, emulator)
        other = "/api/events/v1/se/external/abcinsurance/send"
        assert (await send(http, emulator, token, path=other))[0] == 404
        assert (await send(http, emulator, token))[0] == 201


async def test_duplicates_are_counted_by_correlation_id(http: aiohttp.ClientSession) -> None:
    body = event_body(correlationId="70c6d351-016f-4c9e-b1a9-d581fc3a596b")
    upper = event_body(correlationId="70C6D351-016F-4C9E-B1A9-D581FC3A596B")
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        for payload in (body, upper, event_body()):
            await send(http, emulator, token, payload)
    assert emulator.stats()["duplicates"] == 1


# Faults and the control endpoint --------------------------------------------------------------


async def control(
    http: aiohttp.ClientSession, emulator: Emulator, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, emulator.base_url + path, json=body) as response:
        return response.status, await response.json()


async def test_fixed_status_until_cleared(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        faults = {"status": 503, "retry_after": "3"}
        assert (await control(http, emulator, "POST", "/_emulator/faults", faults))[0] == 200
        status, _, response = await send(http, emulator, token)
        assert (status, response.headers["Retry-After"]) == (503, "3")
        await control(http, emulator, "DELETE", "/_emulator/faults")
        assert (await send(http, emulator, token))[0] == 201


async def test_fixed_status_for_a_time_window(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with running(config(), clock) as emulator:
        token = await get_token(http, emulator)
        await control(
            http, emulator, "POST", "/_emulator/faults", {"status": 403, "for_seconds": 2}
        )
        assert (await send(http, emulator, token))[0] == 403
        clock.advance(2)
        assert (await send(http, emulator, token))[0] == 201


async def test_error_rate_and_drop_rate(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        emulator.set_faults(error_rate=1.0, error_status=502)
        assert (await send(http, emulator, token))[0] == 502
        emulator.set_faults(error_rate=0.0, drop_rate=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await send(http, emulator, token)
        emulator.set_faults(error_rate=0.5, drop_rate=0.0)
        statuses = [(await send(http, emulator, token))[0] for _ in range(40)]
    assert set(statuses) == {201, 502}
    assert emulator.dropped == 1


async def test_latency_with_jitter(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        emulator.set_faults(latency_ms=50, latency_jitter_ms=20)
        started = time.monotonic()
        await send(http, emulator, token)
    assert 0.05 <= time.monotonic() - started < 1


async def test_failing_and_slow_token_endpoint(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        await control(http, emulator, "POST", "/_emulator/faults", {"token_status": 503})
        status, body, _ = await post_token(http, emulator, secret_form())
        assert (status, body["error"]) == (503, "temporarily_unavailable")
        emulator.set_faults(token_status=None, token_latency_ms=100)
        started = time.monotonic()
        assert (await post_token(http, emulator, secret_form()))[0] == 200
        assert time.monotonic() - started >= 0.1


async def test_unknown_fault_is_refused(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        status, body = await control(http, emulator, "POST", "/_emulator/faults", {"colour": 1})
    assert status == 400
    assert "colour" in body["error"]


async def test_revoke_stats_events_and_reset(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        await send(http, emulator, token)
        await control(http, emulator, "POST", "/_emulator/revoke")
        assert (await send(http, emulator, token))[0] == 401
        _, stats = await control(http, emulator, "GET", "/_emulator/stats")
        _, events = await control(http, emulator, "GET", "/_emulator/events")
        _, after_reset = await control(http, emulator, "POST", "/_emulator/reset")
    assert stats["events"] == 1
    assert stats["token_requests"] == 1
    assert stats["token_auth_methods"] == {"client_secret_post": 1}
    assert stats["statuses"] == {"201": 1, "401": 1}
    assert stats["max_concurrency"] >= 1
    assert events[0]["event_id"] == 1
    assert events[0]["tenant"] == "abcinsurance"
    assert events[0]["body"]["eventType"] == "payment_status_updated"
    assert after_reset["events"] == after_reset["token_requests"] == 0


# Fault answers the partner's infrastructure gives: raw bodies, echoes, routes, refused tokens --


async def raw_send(
    http: aiohttp.ClientSession, emulator: Emulator, token: str, body: bytes, path: str = SEND
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json;charset=utf-8",
        "Event-Type": "payment_status_updated",
    }
    async with http.post(emulator.base_url + path, data=body, headers=headers) as response:
        return response.status, await response.read(), response


async def test_error_body_replaces_the_fault_answer(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        emulator.set_faults(status=502, error_body="<html><h1>Bad Gateway</h1></html>")
        status, body, response = await raw_send(http, emulator, token, event_body())
    assert (status, body) == (502, b"<html><h1>Bad Gateway</h1></html>")
    assert response.headers["Content-Type"] == "text/html"


async def test_error_body_is_encoded_in_the_charset_of_its_content_type(
    http: aiohttp.ClientSession,
) -> None:
    text = '{"message": "Incorrect payload", "valid": false}'
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        faults = {
            "status": 400,
            "error_body": text,
            "error_content_type": "application/json; charset=utf-16",
        }
        assert (await control(http, emulator, "POST", "/_emulator/faults", faults))[0] == 200
        status, body, response = await raw_send(http, emulator, token, event_body())
    assert status == 400
    assert body == text.encode("utf-16")
    assert b"\x00" in body
    assert response.headers["Content-Type"] == "application/json; charset=utf-16"


async def test_echo_body_sends_the_request_back(http: aiohttp.ClientSession) -> None:
    payload = event_body(changedBy={"name": "Jens Hansen", "userName": "jh"})
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        emulator.set_faults(error_rate=1.0, error_status=500, echo_body=True, error_body="echo: ")
        status, body, _ = await raw_send(http, emulator, token, payload)
    assert (status, body) == (500, b"echo: " + payload)


async def test_retry_after_carries_any_text(http: aiohttp.ClientSession) -> None:
    absurd = ["99999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT", "-1", "soon"]
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        for value in absurd:
            emulator.set_faults(status=429, retry_after=value)
            _, _, response = await raw_send(http, emulator, token, event_body())
            assert response.headers["Retry-After"] == value


async def test_route_status_answers_one_route_only(http: aiohttp.ClientSession) -> None:
    misrouted = "/api/events/v1/dk/external/misrouted/send"
    async with running(config()) as emulator:
        token = await get_token(http, emulator)
        faults = {"route_status": {"dk/misrouted": 404}}
        assert (await control(http, emulator, "POST", "/_emulator/faults", faults))[0] == 200
        assert (await send(http, emulator, token, path=misrouted))[0] == 404
        assert (await send(http, emulator, token, path=misrouted))[0] == 404
        assert (await send(http, emulator, token))[0] == 201
        _, stats = await control(http, emulator, "GET", "/_emulator/stats")
    assert stats["sends_by_route"] == {"dk/misrouted": 2, "dk/abcinsurance": 1}
    assert [event.tenant for event in emulator.events] == ["abcinsurance"]


async def test_route_status_must_map_routes_to_statuses(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        for bad in ({"route_status": ["dk/misrouted"]}, {"route_status": {"dk/x": "404"}}):
            status, body = await control(http, emulator, "POST", "/_emulator/faults", bad)
            assert status == 400
            assert "route_status" in body["error"]


async def test_reject_tokens_refuses_even_a_fresh_token(http: aiohttp.ClientSession) -> None:
    async with running(config()) as emulator:
        await control(http, emulator, "POST", "/_emulator/faults", {"reject_tokens": True})
        for _ in range(2):
            token = await get_token(http, emulator)  # the token endpoint still issues tokens
            status, body, _ = await send(http, emulator, token)
            assert (status, body) == (401, UNAUTHORIZED)
        await control(http, emulator, "DELETE", "/_emulator/faults")
        assert (await send(http, emulator, token))[0] == 201


async def test_token_fault_answers_carry_retry_after_and_error_body(
    http: aiohttp.ClientSession,
) -> None:
    async with running(config()) as emulator:
        emulator.set_faults(
            token_status=429,
            retry_after="99999999999999999999",
            error_body="<html>slow down</html>",
        )
        async with http.post(emulator.token_url, data=secret_form()) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "99999999999999999999"
            assert await response.read() == b"<html>slow down</html>"


async def test_clearing_faults_does_not_keep_a_changed_route_status() -> None:
    async with running(config()) as emulator:
        emulator.faults.route_status["dk/x"] = 503
        emulator.clear_faults()
        assert emulator.faults.route_status == {}
        assert emulator.config.faults.route_status == {}
