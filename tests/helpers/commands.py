"""``relay`` commands as real processes: an environment of their own, the exit code and output."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

RELAY = str(Path(sys.executable).with_name("relay"))
TIMEOUT = 60


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

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
