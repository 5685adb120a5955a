"""The layout holds: the producer and consumer APIs load none of the daemon, and the import
contracts (.importlinter: tools above the product, the protocol below the engines, no cycles)
are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAEMON_ONLY = ("aiohttp", "uvloop", "rich", "prometheus_client", "structlog", "click", "jwt")


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    program = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return set(output.split())


def test_the_producer_api_loads_none_of_the_daemon() -> None:
    loaded = loaded_by("from relay.outbox import enqueue, enqueue_async")
    assert not {name for name in loaded if name.split(".")[0] in DAEMON_ONLY}
    assert "relay.outbox.worker" not in loaded


def test_the_inbox_consumer_loads_none_of_the_daemon() -> None:
    loaded = loaded_by("from relay.inbox import consume")
    assert not {name for name in loaded if name.split(".")[0] in DAEMON_ONLY}
    assert "relay.inbox.receiver" not in loaded


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("lint-imports")), "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
