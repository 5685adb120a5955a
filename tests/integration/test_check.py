"""``relay check`` as a process, against the emulator, with each kind of client credentials."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from relay.emulator import Emulator, EmulatorConfig
from tests.helpers.keys import certificate, rsa_key, server_tls, write_pem, write_pkcs12
from tests.helpers.partner import CLIENT_ID, CLIENT_SECRET, running

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


async def relay_check(env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        RELAY,
        "check",
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
    assert code == 1
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
    assert (code, out) == (1, "")
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
        ({"RELAY_CLIENT_SECRET": "x"}, 1, "cannot reach the token endpoint"),
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
