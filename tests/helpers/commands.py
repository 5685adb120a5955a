"""``relay`` commands as real processes: an environment of their own, the exit code and output."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

RELAY = str(Path(sys.executable).with_name("relay"))
TIMEOUT = 60


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """What it printed, as JSON (it must have succeeded)."""
        assert self.code == 0, self.stderr
        return orjson.loads(self.stdout)

    def log(self) -> list[dict[str, Any]]:
        """The JSON log lines it wrote to stderr."""
        return [orjson.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def one_line(self, code: int, *fragments: str) -> str:
        """Assert the command failed with ``code`` and said why in one line on stderr, with no
        traceback; return the line."""
        assert self.code == code, self
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        return lines[0]


def relay_env(database_url: str, schema: str = "public", **extra: str) -> dict[str, str]:
    """The environment of a relay command: nothing RELAY_* from the shell running pytest."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    env.update(RELAY_DATABASE_URL=database_url, RELAY_SCHEMA=schema, RELAY_LOG_FORMAT="json")
    env.update(extra)
    return env


def minimal_environment(**variables: str) -> dict[str, str]:
    """Only what a command needs: no RELAY_* setting leaks in from the shell running pytest
    (libpq's PG* variables do, as the test server may rely on them)."""
    base = {
        name: value
        for name, value in os.environ.items()
        if name in ("PATH", "HOME", "LANG") or name.startswith("PG")
    }
    return {**base, **variables}


# The operator the operator commands' audit records name ($USER).
OPERATOR = "ops-alice"


def admin_env(database_url: str) -> dict[str, str]:
    """An operator's environment: the database, JSON logs, and $USER."""
    return relay_env(database_url, USER=OPERATOR)


async def operate(database_url: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """An operator command against ``database_url`` (or with ``env``)."""
    return await relay(admin_env(database_url) if env is None else env, *args)


async def relay(env: dict[str, str], *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        RELAY,
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())
