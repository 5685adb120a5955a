"""Nothing secret or personal is kept or shown, whatever the partner echoes.

Canaries: a personal-data string in every event's payload, the client secret, every access
token the partner issues, and (with private_key_jwt) every client assertion. The partner echoes
each request every way it can: in a text body, in JSON fields, in an HTML page, in a
WWW-Authenticate header, with 400, 401 and 503 (and the receive endpoint too), and the token
endpoint echoes its form. Afterwards no run of eight characters of any canary's random part is
found in a dump of the relay's tables (the outbox's payload column aside), in its log at debug
level, in /metrics, or in what `relay status`, `dead list --json`, `dead show` (its payload
section aside), `pause list`, `audit`, `check`, `inbox status` and `inbox list` print.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from pathlib import Path

import asyncpg
import orjson
import pytest

from relay.emulator import EmulatorConfig
from tests.helpers.attacks import get
from tests.helpers.commands import operate, relay
from tests.helpers.engine import eventually, payload, relay_env
from tests.helpers.keys import certificate, rsa_key, write_pem
from tests.helpers.partner import CLIENT_ID, running
from tests.helpers.process import RelayProcess

pytestmark = pytest.mark.timeout(180)

RUN = 8
# (tenant, status, content type): one publish route per way of echoing.
ECHOING = [
    ("texted", 400, "text/plain"),
    ("jsoned", 401, "application/json"),
    ("paged", 503, "text/html"),
    ("wide", 400, "text/plain; charset=utf-16"),
]


def runs(secret: str) -> set[str]:
    return {secret[i : i + RUN] for i in range(len(secret) - RUN + 1)}


def found(texts: dict[str, str], canaries: dict[str, list[str]]) -> list[str]:
    """Where any eight-character run of a canary shows, as "canary in place"."""
    where = []
    for name, secrets in canaries.items():
        pieces = set().union(*(runs(secret) for secret in secrets)) if secrets else set()
        for place, text in texts.items():
            if any(piece in text for piece in pieces):
                where.append(f"{name} in {place}")
    return where


async def insert_for(db: asyncpg.Connection, tenant: str, personal: str, rows: int) -> None:
    for _ in range(rows):
        document = payload(claimant={"name": personal, "note": f"about {personal}"})
        await db.execute(
            "INSERT INTO outbox (event_type, payload, country, tenant) VALUES ($1, $2, 'dk', $3)",
            "payment_status_updated",
            orjson.dumps(document).decode(),
            tenant,
        )


async def tried(db: asyncpg.Connection, tenant: str) -> bool:
    """Every row of the tenant answered at least once (logged, or its route paused)."""
    count = await db.fetchval(
        "SELECT count(*) FROM outbox o WHERE o.tenant = $1 AND (o.last_error IS NOT NULL "
        "OR EXISTS (SELECT 1 FROM relay_pause p WHERE p.route = 'dk/' || $1))",
        tenant,
    )
    return bool(count)


async def dump(database_url: str, db: asyncpg.Connection) -> str:
    """pg_dump of the relay's tables' data, and the outbox's rows without their payload."""
    process = await asyncio.create_subprocess_exec(
        "pg_dump", "--data-only", "--exclude-table-data=outbox", database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    rows = await db.fetch("SELECT to_jsonb(o) - 'payload' AS row FROM outbox o")
    return out.decode() + "\n".join(str(row["row"]) for row in rows)


async def test_no_canary_is_kept_or_shown_whatever_the_partner_echoes(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    personal = f"Personal {uuid.uuid4().hex} Hansen"
    secret = f"secret-{uuid.uuid4().hex}"
    key = rsa_key()
    cert = certificate(key)
    key_path, cert_path = write_pem(tmp_path, key, cert)
    config = EmulatorConfig(clients={CLIENT_ID: secret}, certificates={CLIENT_ID: [cert]})
    async with running(config) as emulator:
        env = relay_env(
            database_url,
            emulator,
            RELAY_CLIENT_SECRET=secret,
            RELAY_LOG_LEVEL="debug",
            RELAY_CONFIGURATION_PAUSE="1s",
            RELAY_RECEIVE_ROUTES="dk/inboxed",
        )
        relay_run = await RelayProcess.start(env, "run")
        try:
            port = await relay_run.http_port()
            for tenant, status, content_type in ECHOING:
                emulator.set_faults(
                    route_status={f"dk/{tenant}": status},
                    receive_route_status={"dk/inboxed": 503},
                    error_content_type=content_type,
                    echo_request=True,
                )
                await insert_for(db, tenant, personal, 3)
                await eventually(partial(tried, db, tenant), within=30)
            # The token endpoint refuses, echoing its form (the secret) and its headers.
            emulator.set_faults(
                token_status=400, echo_request=True, error_content_type="application/json"
            )
            emulator.revoke_tokens()
            await insert_for(db, "abcinsurance", personal, 1)

            async def refused_everywhere() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM relay_pause WHERE route='*'"))

            await eventually(refused_everywhere, within=30)
            metrics = (await get(f"http://127.0.0.1:{port}/metrics"))[1]
        finally:
            relay_run.process.terminate()
            finished = await relay_run.finish(within=30)
        outputs = await printed(database_url, env, db)
        check = await relay(env, "check")
        key_env = {**env, "RELAY_PRIVATE_KEY_FILE": str(key_path)}
        key_env |= {"RELAY_CERTIFICATE_FILE": str(cert_path)}
        key_env.pop("RELAY_CLIENT_SECRET")
        key_check = await relay(key_env, "check")
    texts = {
        **outputs,
        "the tables": await dump(database_url, db),
        "the log": finished.stderr,
        "run's output": finished.stdout,
        "/metrics": metrics,
        "check": check.stdout + check.stderr,
        "check with a key": key_check.stdout + key_check.stderr,
    }
    tokens = list(emulator.access_tokens)
    assertions = [
        request.assertion.rsplit(".", 1)[-1]  # its signature: unique to each assertion
        for request in emulator.token_requests
        if request.assertion
    ]
    canaries = {
        "the personal data": [personal.split()[1]],
        "the client secret": [secret.split("-", 1)[1]],
        "an access token": tokens,
        "a client assertion": assertions,
    }
    # The run had something to leak: the partner did echo each canary.
    assert tokens
    assert assertions
    assert check.code == 2, check
    assert key_check.code == 2, key_check
    assert "invalid_request" in check.stderr
    assert "[masked]" in texts["the tables"]
    assert found(texts, canaries) == []


async def printed(database_url: str, env: dict[str, str], db: asyncpg.Connection) -> dict[str, str]:
    """What an operator's commands print, the payload `dead show` prints on purpose aside."""
    dead = await db.fetchval("SELECT min(id) FROM outbox WHERE status = 'dead'")
    assert dead is not None
    commands = {
        "status": ["status"],
        "dead list --json": ["dead", "list", "--json"],
        "pause list": ["pause", "list"],
        "audit": ["audit"],
        "inbox status": ["inbox", "status"],
        "inbox list": ["inbox", "list"],
    }
    texts = {}
    for name, args in commands.items():
        run = await operate(database_url, *args, env={**env, "USER": "ops"})
        assert run.code in (0, 3), run
        texts[name] = run.stdout + run.stderr
    shown = await operate(database_url, "dead", "show", str(dead), "--json", env=env)
    document = shown.json()
    assert "payload" in document
    document.pop("payload")
    texts["dead show"] = orjson.dumps(document).decode()
    return texts
