"""A PostgreSQL cluster of a test's own, to stop, kill and start again, or to listen where the
test says, without touching the server every other test shares.

Made with ``initdb`` from the PostgreSQL found on the machine, in a temporary directory, on a
free port; as root (PostgreSQL refuses to run as root) it runs as the ``postgres`` user the
server's package created. Tests that need one skip, saying why, where none can be made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.schema import migrate

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
START_TIMEOUT = 30.0


def _bin_dir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    return next((path for path in PG_BIN_CANDIDATES if (path / "initdb").exists()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One private cluster: ``start``, ``kill`` (no shutdown checkpoint, as a crash), ``stop``."""

    def __init__(self, bin_dir: Path, root: Path, listen: str, port: int, user: str | None):
        self.bin_dir = bin_dir
        self.data = root / "data"
        self.log = root / "server.log"
        self.listen = listen
        self.port = port
        self.user = user  # run as this OS user (when the tests run as root)
        self.host = listen.split(",")[0].strip()

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        return f"postgresql://postgres@{host or self.host}:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(
            command, check=check, capture_output=True, text=True, timeout=START_TIMEOUT
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{self.listen}'\nport = {self.port}\n"
                "unix_socket_directories = ''\nfsync = off\nmax_connections = 50\n"
            )
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def kill(self) -> None:
        """Stop at once, as a crash: no shutdown checkpoint, connections cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def wait_accepting(self, within: float = START_TIMEOUT) -> float:
        """Wait until the server accepts connections; the monotonic time it did."""
        deadline = time.monotonic() + within
        while not self.accepting():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the private cluster did not start: {self.log.read_text()}")
            time.sleep(0.01)
        return time.monotonic()


@contextlib.asynccontextmanager
async def private_cluster(listen: str = "127.0.0.1") -> AsyncIterator[Cluster]:
    """A started cluster listening on ``listen`` (comma-separated addresses, 127.0.0.1 among
    them), its ``postgres`` database migrated; stopped and removed afterwards. Skips where
    initdb cannot run."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    user = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start a private cluster")
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="relay-cluster-"))
    if user is not None:
        shutil.chown(root, user)
    cluster = Cluster(bin_dir, root, listen, free_port(), user)
    try:
        try:
            await asyncio.to_thread(cluster.init)
        except (subprocess.CalledProcessError, KeyError) as error:
            pytest.skip(f"initdb could not make a private cluster: {error}")
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(migrate, cluster.url(host="127.0.0.1"), "public")
        yield cluster
    finally:
        await asyncio.to_thread(cluster.kill)
        shutil.rmtree(root, ignore_errors=True)
