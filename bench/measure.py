"""CPU, memory and timing measurements of processes, read from /proc and wait4(2)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # children run ``python -m bench.x`` from here


@dataclass(frozen=True, slots=True)
class Usage:
    """What one finished child process used."""

    wall: float  # seconds from start to exit
    cpu: float  # user + system seconds
    max_rss_mb: float  # peak resident set size
    exit_code: int


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (its reaped children included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14-17 of proc(5), counted from 1 with the comm field as 2.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime + cutime + cstime) / TICKS


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process, exited backends included (they are reaped by
    the postmaster, whose children's times count). Covers every database on the server."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            total += process_cpu(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # a backend that exited while we looked
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / TICKS, total / TICKS


@dataclass(frozen=True, slots=True)
class CpuWindow:
    """CPU seconds used over one measurement, by whom."""

    seconds: float  # wall time of the window
    emulator: float
    backends: float  # PostgreSQL processes serving the benchmark database
    postgres: float  # every PostgreSQL process (other databases on the server too)
    machine: float  # all cores, everything

    def foreign_cores(self, measured: float) -> float:
        """Cores busy with anything but ``measured`` seconds of the measured process, the
        emulator and our database's backends: other people's work (and PostgreSQL's shared
        background processes). High values mean a noisy run."""
        own = measured + self.emulator + self.backends
        return max(0.0, self.machine - own) / max(self.seconds, 1e-9)


class BackendSampler(threading.Thread):
    """Samples the CPU time of every backend connected to one database every 100 ms.

    The relay's backends exit with it, after which /proc has no record of them, so the last
    sample stands for each (it misses at most the final 100 ms, when they are idle).
    """

    def __init__(self, admin_url: str, database: str) -> None:
        super().__init__(name="backend-sampler", daemon=True)
        self.admin_url = admin_url
        self.database = database
        self.seen: dict[int, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            while not self.stopping.wait(0.1):
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
                ).fetchall()
                for (pid,) in rows:
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        self.seen[int(pid)] = process_cpu(int(pid))

    def total(self) -> float:
        self.stopping.set()
        self.join()
        return sum(self.seen.values())


class CpuMeter:
    """Start it just before a run and read it just after."""

    def __init__(self, emulator_pid: int, admin_url: str, database: str) -> None:
        self.emulator_pid = emulator_pid
        self.started = time.monotonic()
        self.emulator_start = process_cpu(emulator_pid)
        self.postgres_start = postgres_cpu()
        self.machine_start = machine_busy()[0]
        self.sampler = BackendSampler(admin_url, database)
        self.sampler.start()

    def read(self) -> CpuWindow:
        backends = self.sampler.total()
        return CpuWindow(
            seconds=time.monotonic() - self.started,
            emulator=process_cpu(self.emulator_pid) - self.emulator_start,
            backends=backends,
            postgres=postgres_cpu() - self.postgres_start,
            machine=machine_busy()[0] - self.machine_start,
        )


def peak_rss_mb(pid: int) -> float | None:
    """The process's own high-water RSS (VmHWM), or None once it has exited.

    Not ``ru_maxrss`` from wait4: on Linux a child's ru_maxrss starts from the RSS of the
    (v)forked parent before exec, so a large benchmark driver would inflate it.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def wait_for_exit(process: subprocess.Popen[bytes], started: float, timeout: float) -> Usage:
    """Wait for a child with wait4(2), which reports that one child's CPU time; read its
    peak RSS from /proc every 10 ms meanwhile (it only grows). Kill it after ``timeout``."""
    deadline = time.monotonic() + timeout
    peak = 0.0
    while True:
        peak = max(peak, peak_rss_mb(process.pid) or 0.0)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return Usage(
                wall=time.monotonic() - started,
                cpu=usage.ru_utime + usage.ru_stime,
                max_rss_mb=peak,
                exit_code=process.returncode,
            )
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            os.wait4(process.pid, 0)
            raise TimeoutError(f"{process.args!r} did not finish within {timeout:g}s")
        time.sleep(0.01)


def run_measured(command: Sequence[str], env: dict[str, str], log: Path, timeout: float) -> Usage:
    """Run a command to completion, its output going to ``log``; raise if it fails."""
    with log.open("wb") as output:
        started = time.monotonic()
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
        usage = wait_for_exit(process, started, timeout)
    if usage.exit_code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {usage.exit_code}; see {log}")
    return usage
