"""The README's steps "against your own database" with ``relay emulator``, run as written.

Only what cannot be the same here changes: the database URL (this test's), the emulator's port
(a free one: 8099 may be taken by a parallel run), the path of the ``relay`` command (the
interpreter's own) and the health port of ``relay run`` (any free one).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RELAY = str(Path(sys.executable).with_name("relay"))
# The roles of docs/database.md; the test's database URL stands in for each.
README_DATABASE = re.compile(r"postgresql://\w+@db\.internal:5432/insurer")


def own_database_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("Against your own database") : text.index("## Installing")]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def adapted(block: str, database_url: str, port: int) -> str:
    return (
        README_DATABASE.sub(database_url, block)
        .replace("127.0.0.1:8099", f"127.0.0.1:{port}")
        .replace(".venv/bin/relay", RELAY)
        .replace("relay emulator", f"relay emulator --port {port}")
    )


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_readme_steps_work_against_relay_emulator(empty_database_url: str) -> None:
    migrate, emulator, steps, sandbox = own_database_blocks()
    assert "RELAY_TOKEN_URL=http://127.0.0.1:8099/connect/token" in steps
    assert "relay emulator" in emulator
    assert "relay check" in sandbox
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    env["RELAY_HTTP_PORT"] = "0"
    # Its own process group, so that stopping it stops the emulator bash started.
    partner = subprocess.Popen(
        ["bash", "-c", adapted(emulator, empty_database_url, port)],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert partner.stdout is not None
        announced = partner.stdout.readline()
        assert f"token endpoint http://127.0.0.1:{port}/connect/token" in announced, announced
        # The first terminal: its exports carry on from the first block to the third.
        ran = bash(adapted(migrate + steps, empty_database_url, port), env)
    finally:
        os.killpg(partner.pid, signal.SIGTERM)
        partner.communicate(timeout=30)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "route dk/abcinsurance: ok: " in ran.stdout
    assert "relay: check passed" in ran.stdout
    assert "1 published" in ran.stdout, ran.stdout
