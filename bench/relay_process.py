"""``relay run`` as a child process, configured through RELAY_* variables as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import requests

from bench.measure import Usage, peak_rss_mb, run_measured, wait_for_exit
from bench.partner import Partner, free_port, wait_until_answering

RELAY = str(Path(sys.executable).parent / "relay")


def clean_environment() -> dict[str, str]:
    """This process's environment without any RELAY_* setting of its own."""
    return {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}


def relay_environment(
    partner: Partner, database_url: str, concurrency: int, **extra: str
) -> dict[str, str]:
    """A clean environment plus the settings that point the relay at ``partner``."""
    env = clean_environment()
    env.update(partner.relay_environment())
    env.update(
        {
            "RELAY_DATABASE_URL": database_url,
            "RELAY_CONCURRENCY": str(concurrency),
            "RELAY_HTTP_HOST": "127.0.0.1",
            "RELAY_HTTP_PORT": "0",
            "RELAY_WORKER_ID": "bench",
            "RELAY_LOG_FORMAT": "json",
        }
    )
    env.update({f"RELAY_{key.upper()}": value for key, value in extra.items()})
    return env


def drain(env: Mapping[str, str], log: Path, timeout: float = 600.0) -> Usage:
    """``relay run --drain``: returns once every row is published or dead."""
    return run_measured([RELAY, "run", "--drain"], dict(env), log, timeout)


class RunningRelay:
    """A ``relay run`` (no drain) serving /healthz on a known port."""

    def __init__(self, process: subprocess.Popen[bytes], started: float, port: int) -> None:
        self.process = process
        self.started = started
        self.port = port
        self.usage: Usage | None = None

    def stop(self, timeout: float = 60.0) -> Usage:
        """SIGTERM (the relay finishes what is in flight and gives back the rest)."""
        if self.usage is None:
            peak = peak_rss_mb(self.process.pid) or 0.0  # VmHWM: the peak so far
            self.process.send_signal(signal.SIGTERM)
            usage = wait_for_exit(self.process, self.started, timeout)
            self.usage = replace(usage, max_rss_mb=max(peak, usage.max_rss_mb))
        return self.usage


@contextmanager
def running_relay(env: Mapping[str, str], log: Path) -> Iterator[RunningRelay]:
    """``relay run`` until the block ends (or ``stop()`` is called in it)."""
    port = free_port()
    environment = {**env, "RELAY_HTTP_PORT": str(port)}
    with log.open("wb") as output:
        started = time.monotonic()
        process = subprocess.Popen(
            [RELAY, "run"], env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    relay = RunningRelay(process, started, port)
    try:
        url = f"http://127.0.0.1:{relay.port}/healthz"

        def healthy() -> None:
            requests.get(url, timeout=1).raise_for_status()

        wait_until_answering(relay.process, "relay run", healthy, log, 30.0)
        yield relay
    finally:
        if relay.usage is None:
            relay.stop()
