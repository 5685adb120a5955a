"""A real forward proxy (proxy.py, from PyPI) as a subprocess on 127.0.0.1, and its access log."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "relay-proxy-user"
PASSWORD = "proxy-pa55word"
# proxy.py's access log: "127.0.0.1:51234 - POST 127.0.0.1:8080/connect/token - 200 OK - ..."
# for a plain request, "127.0.0.1:51234 - CONNECT 127.0.0.1:8443 - 1234 bytes - ..." for a tunnel.
_ACCESS = re.compile(r"server\.access_log:\d+ - \S+ - (\S+) (\S+)")


@dataclass
class ForwardProxy:
    """One proxy.py process; ``requests()`` reads what its access log says it carried."""

    port: int
    log: Path
    credentials: bool

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it asks for them."""
        auth = f"{USER}:{PASSWORD}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    @property
    def shown(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request the proxy has finished, oldest first."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return [(match[1], match[2]) for match in _ACCESS.finditer(text)]

    def wait_for(self, method: str, fragment: str, within: float = 10.0) -> None:
        """Wait until the log shows a finished ``method`` request whose target holds
        ``fragment`` (a tunnel is logged when it closes)."""
        deadline = time.monotonic() + within
        while not any(m == method and fragment in t for m, t in self.requests()):
            assert time.monotonic() < deadline, f"no {method} {fragment} in {self.requests()}"
            time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def forward_proxy(directory: Path, *, credentials: bool = False) -> Iterator[ForwardProxy]:
    """proxy.py listening on a free port of 127.0.0.1; with ``credentials`` it answers 407 to
    requests without USER and PASSWORD. Stopped (and waited for) on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file, log = directory / "port", directory / "access.log"
    command = [
        sys.executable,
        "-m",
        "proxy",
        "--hostname",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--num-acceptors",
        "1",
        "--num-workers",
        "1",
        "--data-dir",
        str(directory / "data"),
        "--log-file",
        str(log),
        "--log-level",
        "INFO",
    ]
    if credentials:
        command += ["--basic-auth", f"{USER}:{PASSWORD}"]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        port = 0
        while not port or not _answers(port):
            if process.poll() is not None:
                assert process.stderr is not None
                raise RuntimeError(f"proxy.py exited: {process.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "proxy.py did not start within 30 s"
            time.sleep(0.05)
            text = port_file.read_text().strip() if port_file.exists() else ""
            port = int(text) if text.isdigit() else 0
        yield ForwardProxy(port, log, credentials)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
