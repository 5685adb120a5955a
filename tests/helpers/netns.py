"""A second host on this machine: a network namespace joined to this one by a veth pair.

A process started inside it (``exec``) reaches this host at ``host_address`` and is reached at
``address``. ``cut`` sets the host's end of the link down: from then on no packet crosses
either way and nobody sends a reset, as when a machine loses its power or its network.
Needs root and iproute2; tests that need one skip, saying why, elsewhere.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

_numbers = itertools.count(1)


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Namespace:
    name: str
    host_link: str  # this host's end of the veth pair
    host_address: str  # this host, as the namespace reaches it
    address: str  # the namespace, as this host reaches it

    def exec_prefix(self) -> list[str]:
        """Put before a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """No packet crosses any more, either way; no reset is sent."""
        _ip("link", "set", self.host_link, "down")

    def mend(self) -> None:
        _ip("link", "set", self.host_link, "up")


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    """A fresh namespace with its link up; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    if shutil.which("ip") is None:
        pytest.skip("a network namespace needs iproute2 (ip)")
    number = next(_numbers)
    tag = f"{os.getpid() % 100_000}{number}"
    name, host_link, inner_link = f"relay-{tag}", f"rlh{tag}"[:15], f"rln{tag}"[:15]
    # A /30 of its own per process and namespace, so test runs side by side never meet.
    block = (os.getpid() * 8 + number) % (250 * 64)
    prefix = f"10.{200 + block // (64 * 64) % 50}.{block // 64 % 250}.{(block % 64) * 4}"
    base = prefix.rsplit(".", 1)[0]
    last = int(prefix.rsplit(".", 1)[1])
    host_address, address = f"{base}.{last + 1}", f"{base}.{last + 2}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot make a network namespace here: {error.stderr!r}")
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", inner_link)
        _ip("link", "set", inner_link, "netns", name)
        _ip("addr", "add", f"{host_address}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{address}/30", "dev", inner_link)
        _ip("netns", "exec", name, "ip", "link", "set", inner_link, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Namespace(name, host_link, host_address, address)
    finally:
        _ip("link", "del", host_link, check=False)
        _ip("netns", "del", name, check=False)
