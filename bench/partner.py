"""The emulated partner as its own process (``relay emulator``), driven over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

CLIENT_ID = "bench"
CLIENT_SECRET = "bench-secret"  # the emulator's own, on 127.0.0.1 only
COUNTRY = "dk"
TENANT = "abcinsurance"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Arrival:
    """One event the emulator accepted: its correlationId and the emulator's monotonic clock
    at arrival (CLOCK_MONOTONIC is system-wide on Linux, so other processes can compare)."""

    correlation_id: str
    at: float
    tenant: str = TENANT


class Partner:
    """A running ``relay emulator`` with a fixed added latency."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, latency_ms: float) -> None:
        self.process = process
        self.base_url = f"http://127.0.0.1:{port}"
        self.token_url = f"{self.base_url}/connect/token"
        self.latency_ms = latency_ms
        self.http = requests.Session()

    @property
    def pid(self) -> int:
        return self.process.pid

    def reset(self) -> None:
        """Forget events, tokens and counters (between runs: keeps its memory flat)."""
        self.http.post(f"{self.base_url}/_emulator/reset", timeout=30).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self.http.get(f"{self.base_url}/_emulator/stats", timeout=30)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def arrivals(self) -> list[Arrival]:
        response = self.http.get(f"{self.base_url}/_emulator/events", timeout=120)
        response.raise_for_status()
        return [
            Arrival(
                str(event["body"]["correlationId"]),
                float(event["arrived_at"]),
                str(event["tenant"]),
            )
            for event in response.json()
        ]

    def set_faults(self, **faults: Any) -> None:
        """Faults by name (see relay.emulator.model.Faults): ``{}`` clears them all."""
        url = f"{self.base_url}/_emulator/faults"
        if faults:
            self.http.post(url, json=faults, timeout=30).raise_for_status()
        else:
            self.http.delete(url, timeout=30).raise_for_status()

    def relay_environment(self) -> dict[str, str]:
        """RELAY_* settings that point a relay at this emulator."""
        return {
            "RELAY_TOKEN_URL": self.token_url,
            "RELAY_API_BASE_URL": self.base_url,
            "RELAY_COUNTRY": COUNTRY,
            "RELAY_TENANT": TENANT,
            "RELAY_CLIENT_ID": CLIENT_ID,
            "RELAY_CLIENT_SECRET": CLIENT_SECRET,
        }


def wait_until_answering(
    process: subprocess.Popen[bytes],
    name: str,
    probe: Callable[[], object],
    log: Path,
    within: float,
) -> None:
    """Wait until ``probe`` stops raising a requests error; fail if ``process`` exits first."""
    deadline = time.monotonic() + within
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start; see {log}")
        try:
            probe()
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


@contextmanager
def running_partner(latency_ms: float, log: Path) -> Iterator[Partner]:
    """``relay emulator --latency-ms L`` on a free port, stopped on exit."""
    port = free_port()
    command = [
        str(BIN / "relay"),
        "emulator",
        "--port",
        str(port),
        "--latency-ms",
        f"{latency_ms:g}",
        "--client",
        f"{CLIENT_ID}:{CLIENT_SECRET}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    partner = Partner(process, port, latency_ms)
    try:
        wait_until_answering(partner.process, "relay emulator", partner.stats, log, 20.0)
        yield partner
    finally:
        partner.http.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
