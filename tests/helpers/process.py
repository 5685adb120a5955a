"""``relay`` as a real process: started, watched through its JSON log, signalled, finished."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

RELAY = str(Path(sys.executable).with_name("relay"))


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    took: float  # seconds from the start (or the signal) to the exit

    @property
    def stdout_lines(self) -> list[str]:
        return self.stdout.splitlines()


@dataclass
class RelayProcess:
    """A running ``relay`` command whose stderr is read line by line as it comes."""

    process: asyncio.subprocess.Process
    started_at: float
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, env: dict[str, str], *args: str) -> RelayProcess:
        process = await asyncio.create_subprocess_exec(
            RELAY,
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        relay = cls(process, time.monotonic())
        relay.reader = asyncio.create_task(relay._read_stderr())
        return relay

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace"))

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """The JSON log lines so far, from line ``after`` on (other lines are skipped)."""
        parsed = []
        for line in self.lines[after:]:
            with contextlib.suppress(orjson.JSONDecodeError):
                item = orjson.loads(line)
                if isinstance(item, dict):
                    parsed.append(item)
        return parsed

    async def logged(self, *events: str, within: float = 20.0, after: int = 0) -> dict[str, Any]:
        """Wait for the first log line of any of ``events`` (from line ``after`` on: ``len(
        process.lines)`` taken before the cause); fail if the process exits first."""
        async with asyncio.timeout(within):
            while True:
                found = [item for item in self.events(after) if item.get("event") in events]
                if found:
                    return found[0]
                assert self.process.returncode is None, "".join(self.lines)[-3000:]
                await asyncio.sleep(0.02)

    async def http_port(self, within: float = 20.0) -> int:
        """The port of /readyz, from the relay.started line."""
        started = await self.logged("relay.started", within=within)
        return int(str(started["http"]).rsplit(":", 1)[1])

    async def finish(self, within: float, *, since: float | None = None) -> Finished:
        """Wait for the exit (killing the process if it takes longer than ``within``)."""
        assert self.process.stdout is not None
        assert self.reader is not None
        try:
            async with asyncio.timeout(within):
                stdout = await self.process.stdout.read()
                await self.process.wait()
                await self.reader
        except TimeoutError:
            await self.stop()
            raise
        took = time.monotonic() - (self.started_at if since is None else since)
        assert self.process.returncode is not None
        return Finished(self.process.returncode, stdout.decode(), "".join(self.lines), took)

    async def stop(self) -> None:
        """Kill the process if it still runs, and reap it (for ``finally`` blocks)."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        if self.reader is not None:
            await self.reader


async def start_relay(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        RELAY,
        "run",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
