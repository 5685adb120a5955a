"""``relay check`` as a process, against the emulator, with each kind of client credentials."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from relay.emulator import Emulator, EmulatorConfig, Faults
from tests.helpers.keys import certificate, rsa_key, server_tls, write_pem, write_pkcs12
from tests.helpers.partner import CLIENT_ID, CLIENT_SECRET, running, secret_config
from tests.helpers.proxy import PASSWORD, forward_proxy

RELAY = str(Path(sys.executable).parent / "relay")


def environment(emulator: Emulator | str, **variables: str) -> dict[str, str]:
    """A clean environment: only the RELAY_* variables this test sets."""
    base_url = emulator if isinstance(emulator, str) else emulator.base_url
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    env.update(
        RELAY_TOKEN_URL=base_url + "/connect/token",
        RELAY_API_BASE_URL=base_url,
        RELAY_COUNTRY="dk",
        RELAY_TENANT="abcinsurance",
        RELAY_CLIENT_ID=CLIENT_ID,
        RELAY_REQUEST_TIMEOUT="5s",
    )
    env.update(variables)
    return env


async def relay_check(env: dict[str, str], *options: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        RELAY,
        "check",
        *options,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_check_with_client_secret() -> None:
    async with running() as emulator:
        code, out, err = await relay_check(environment(emulator, RELAY_CLIENT_SECRET=CLIENT_SECRET))
    assert code == 0, err
    assert f"token endpoint: {emulator.token_url}" in out
    assert f"client id:      {CLIENT_ID}" in out
    assert "auth method:    client_secret_post" in out
    assert "scope:          events" in out
    assert "token lifetime: 3600 s" in out
    assert f"publish URL:    {emulator.base_url}/api/events/v1/dk/external/abcinsurance/send" in out
    assert CLIENT_SECRET not in out + err
    assert emulator.access_tokens[0] not in out + err
    assert emulator.events == []  # a check sends no event
    assert len(emulator.token_requests) == 1


async def test_check_with_private_key_jwt_from_encrypted_pem(tmp_path: Path) -> None:
    key = rsa_key(0)
    cert = certificate(key)
    key_file, cert_file = write_pem(tmp_path, key, cert, password="pem-pass")
    config = EmulatorConfig(certificates={CLIENT_ID: [cert]})
    async with running(config) as emulator:
        env = environment(
            emulator,
            RELAY_PRIVATE_KEY_FILE=str(key_file),
            RELAY_CERTIFICATE_FILE=str(cert_file),
            RELAY_PRIVATE_KEY_PASSWORD="pem-pass",
        )
        code, out, err = await relay_check(env)
    assert code == 0, err
    assert "auth method:    private_key_jwt (certificate thumbprint " in out
    assert emulator.token_requests[0].auth_method == "private_key_jwt"
    assert "pem-pass" not in out + err


async def test_check_with_private_key_jwt_from_pkcs12(tmp_path: Path) -> None:
    key = rsa_key(0)
    cert = certificate(key)
    pfx = write_pkcs12(tmp_path, key, cert, "pfx-pass")
    password_file = tmp_path / "pfx-password"
    password_file.write_text("pfx-pass\n")
    config = EmulatorConfig(certificates={CLIENT_ID: [cert]})
    async with running(config) as emulator:
        env = environment(
            emulator, RELAY_PKCS12_FILE=str(pfx), RELAY_PKCS12_PASSWORD_FILE=str(password_file)
        )
        code, out, err = await relay_check(env)
    assert code == 0, err
    assert "private_key_jwt" in out


async def test_check_reports_a_rejected_secret_in_one_line() -> None:
    async with running() as emulator:
        code, out, err = await relay_check(
            environment(emulator, RELAY_CLIENT_SECRET="not-the-secret")
        )
    assert code == 2  # configuration: our client is refused
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"relay: token endpoint refused client '{CLIENT_ID}'")
    assert "invalid_client" in err
    assert "not-the-secret" not in err


async def test_check_names_the_ca_bundle_when_the_certificate_is_not_trusted(
    tmp_path: Path,
) -> None:
    server_context, ca_file = server_tls(tmp_path)
    async with running() as emulator:
        await emulator.stop()
        await emulator.start(ssl_context=server_context)
        env = environment(emulator, RELAY_CLIENT_SECRET=CLIENT_SECRET)
        code, out, err = await relay_check(env)
        trusted, _, trusted_err = await relay_check({**env, "RELAY_CA_BUNDLE": str(ca_file)})
    assert (code, out) == (2, "")  # configuration: RELAY_CA_BUNDLE
    assert err.count("\n") == 1
    assert "RELAY_CA_BUNDLE" in err
    assert trusted == 0, trusted_err


async def test_check_refuses_a_key_that_does_not_match_its_certificate(tmp_path: Path) -> None:
    key_file, cert_file = write_pem(tmp_path, rsa_key(0), certificate(rsa_key(1)))
    async with running() as emulator:
        env = environment(
            emulator, RELAY_PRIVATE_KEY_FILE=str(key_file), RELAY_CERTIFICATE_FILE=str(cert_file)
        )
        code, _, err = await relay_check(env)
    assert code == 2
    assert "does not match the certificate's public key" in err
    assert emulator.token_requests == []  # refused before any request


@pytest.mark.parametrize(
    ("variables", "code", "message"),
    [
        ({"RELAY_CLIENT_ID": ""}, 2, "RELAY_CLIENT_ID: is not set"),
        ({}, 2, "RELAY_CLIENT_SECRET: is not set"),
        ({"RELAY_CLIENT_SECRET": "x"}, 6, "cannot reach the token endpoint"),
    ],
)
async def test_check_fails_clearly_without_a_partner(
    variables: dict[str, str], code: int, message: str
) -> None:
    env = environment("http://127.0.0.1:9", **variables)
    if not variables.get("RELAY_CLIENT_ID", CLIENT_ID):
        del env["RELAY_CLIENT_ID"]
    returned, _, err = await relay_check(env)
    assert (returned, message in err) == (code, True), err


async def test_check_against_a_relay_emulator_process() -> None:
    env = environment("http://unused.invalid")
    process = await asyncio.create_subprocess_exec(
        RELAY,
        "emulator",
        "--port",
        "0",
        "--client",
        f"{CLIENT_ID}:{CLIENT_SECRET}",
        "--token-lifetime",
        "300",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            await process.stdout.readline()  # the token endpoint line
            line = (await process.stdout.readline()).decode()
        base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        code, out, err = await relay_check(environment(base_url, RELAY_CLIENT_SECRET=CLIENT_SECRET))
        assert code == 0, err
        assert "token lifetime: 300 s" in out
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0


# Proving the route ----------------------------------------------------------------------------

SEND = "/api/events/v1/{}/external/{}/send"


def said(before: str, after: str) -> re.Pattern[str]:
    """What the partner said, as the relay words it: ``before``, then the answer's content
    type and size, then ``after``."""
    return re.compile(re.escape(before) + r" \(application/json, \d+ bytes\)" + re.escape(after))


async def test_check_proves_the_route_and_publishes_nothing() -> None:
    async with running() as emulator:
        code, out, err = await relay_check(environment(emulator, RELAY_CLIENT_SECRET=CLIENT_SECRET))
    assert code == 0, err
    assert said(
        "route dk/abcinsurance: ok: the API knows the route and accepts the token (HTTP 400: "
        "Bad Request; Missing request header 'Event-Type' for method parameter of type String",
        "; nothing published)",
    ).search(out)
    assert out.endswith("relay: check passed\n")
    assert emulator.sends_by_route == {"dk/abcinsurance": 1}
    assert emulator.status_counts == {400: 1}
    assert emulator.events == []


async def test_check_fails_for_a_wrong_api_base_url() -> None:
    async with running() as emulator:
        env = environment(
            emulator,
            RELAY_CLIENT_SECRET=CLIENT_SECRET,
            RELAY_API_BASE_URL=emulator.base_url + "/eventapi",
        )
        code, out, err = await relay_check(env)
    assert code == 3
    assert "route dk/abcinsurance: FAILED: no such route (HTTP 404: " in out
    assert err.splitlines() == [
        "relay: route dk/abcinsurance: "
        + out.split("route dk/abcinsurance: FAILED: ", 1)[1].splitlines()[0]
    ]
    assert err.rstrip().endswith("check RELAY_API_BASE_URL, RELAY_COUNTRY and RELAY_TENANT")
    assert "check passed" not in out


@pytest.mark.parametrize(
    ("config", "variables", "expected"),
    [
        (
            secret_config(routes=frozenset({("dk", "other")})),
            {},
            (
                "no such route (HTTP 404: Not Found; injected by the emulator",
                "): check RELAY_API_BASE_URL, RELAY_COUNTRY and RELAY_TENANT",
            ),
        ),
        (
            secret_config(faults=Faults(reject_tokens=True)),
            {},
            (
                "token not accepted by the API (HTTP 401: unauthorized; Full authentication is "
                "required to access this resource",
                "): the token endpoint ",
            ),
        ),
        (
            secret_config(scopes={CLIENT_ID: frozenset({"events", "claims"})}),
            {"RELAY_SCOPE": "claims"},
            (
                "missing scope or right (HTTP 403: insufficient_scope; Insufficient scope for "
                "this resource; events",
                "): the client needs the events scope (RELAY_SCOPE is 'claims')",
            ),
        ),
        (
            secret_config(faults=Faults(route_status={"dk/abcinsurance": 503})),
            {},
            (
                "the API is failing (HTTP 503: Service Unavailable; injected by the emulator",
                "): try again later",
            ),
        ),
        (
            secret_config(faults=Faults(route_status={"dk/abcinsurance": 418})),
            {},
            (
                "unexpected answer (HTTP 418: I'm a Teapot; injected by the emulator",
                "): check RELAY_API_BASE_URL",
            ),
        ),
    ],
    ids=["404", "401", "403", "503", "418"],
)
async def test_check_names_the_fix_for_each_refusal(
    config: EmulatorConfig, variables: dict[str, str], expected: tuple[str, str]
) -> None:
    async with running(config) as emulator:
        env = environment(emulator, RELAY_CLIENT_SECRET=CLIENT_SECRET, **variables)
        code, out, err = await relay_check(env)
    assert code == 3, err
    assert said(f"route dk/abcinsurance: FAILED: {expected[0]}", expected[1]).search(out)
    assert said(f"relay: route dk/abcinsurance: {expected[0]}", expected[1]).match(err)
    assert err.count("\n") == 1
    assert emulator.events == []


async def test_check_proves_every_route_given_and_names_the_failing_one() -> None:
    routes = frozenset({("dk", "abcinsurance"), ("se", "budget")})
    async with running(secret_config(routes=routes)) as emulator:
        env = environment(emulator, RELAY_CLIENT_SECRET=CLIENT_SECRET)
        code, out, err = await relay_check(env, "--route", "se/budget", "--route", "no/typo")
        without_default = {
            k: v for k, v in env.items() if k not in ("RELAY_COUNTRY", "RELAY_TENANT")
        }
        alone, alone_out, alone_err = await relay_check(without_default, "--route", "se/budget")
    assert code == 3
    assert "route dk/abcinsurance: ok: " in out
    assert "route se/budget: ok: " in out
    assert said(
        "relay: route no/typo: no such route (HTTP 404: Not Found; injected by the emulator",
        "): check RELAY_API_BASE_URL, --route no/typo\n",
    ).fullmatch(err)
    assert alone == 0, alone_err
    assert f"publish URL:    {emulator.base_url}{SEND.format('se', 'budget')}" in alone_out
    assert emulator.sends_by_route == {"dk/abcinsurance": 1, "se/budget": 2, "no/typo": 1}


@pytest.mark.parametrize("route", ["dk", "dk/..", "DK/abc", "dk/"])
async def test_a_route_that_breaks_the_rule_is_a_usage_error(route: str) -> None:
    code, out, err = await relay_check(environment("http://127.0.0.1:9"), "--route", route)
    assert code == 2
    assert "--route" in err
    assert out == ""


async def test_an_api_host_that_does_not_resolve_names_the_setting() -> None:
    async with running() as emulator:
        env = environment(
            emulator,
            RELAY_CLIENT_SECRET=CLIENT_SECRET,
            RELAY_API_BASE_URL="http://relay-check.invalid",
        )
        code, out, err = await relay_check(env)
    assert code == 3
    assert err == (
        "relay: route dk/abcinsurance: cannot resolve relay-check.invalid, the host of "
        "RELAY_API_BASE_URL: check RELAY_API_BASE_URL\n"
    )
    assert "token lifetime: 3600 s" in out  # the token endpoint was fine


async def test_a_token_host_that_does_not_resolve_names_the_setting() -> None:
    async with running() as emulator:
        env = environment(
            emulator,
            RELAY_CLIENT_SECRET=CLIENT_SECRET,
            RELAY_TOKEN_URL="http://relay-check.invalid/connect/token",
        )
        code, out, err = await relay_check(env)
    assert (code, out) == (6, "")
    assert err.count("\n") == 1
    assert (
        "cannot resolve relay-check.invalid, the host of RELAY_TOKEN_URL: check RELAY_TOKEN_URL"
        in err
    )


async def test_check_through_a_proxy(tmp_path: Path) -> None:
    with forward_proxy(tmp_path / "proxy", credentials=True) as proxy:
        async with running() as emulator:
            port = emulator.base_url.rsplit(":", 1)[1]
            env = environment(
                emulator, RELAY_CLIENT_SECRET=CLIENT_SECRET, RELAY_HTTPS_PROXY=proxy.url
            )
            code, out, err = await relay_check(env)
            proxy.wait_for("POST", f"127.0.0.1:{port}{SEND.format('dk', 'abcinsurance')}")
            proxy.wait_for("POST", f"127.0.0.1:{port}/connect/token")
    assert code == 0, err
    assert f"proxy:          {proxy.shown} (RELAY_HTTPS_PROXY)" in out
    assert PASSWORD not in out + err
