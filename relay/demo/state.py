"""What one demo run knows about itself: shared by the orchestration and the display."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console

from relay.demo.database import Target
from relay.demo.receiving import Receipts

if TYPE_CHECKING:
    from relay.daemon import Daemon


class Interrupted(Exception):
    """Ctrl-C arrived; raised inside an enqueue transaction so it rolls back whole."""


@dataclass
class Run:
    """What happened, for the progress bar and the summary."""

    target: Target
    events: int
    console: Console
    keep_server: bool
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    stage: str = "starting"
    committed: int = 0  # rows in committed transactions
    invalid: int = 0  # of which written with plain SQL
    given_back: int = 0  # rows the relay still held when it stopped
    transactions: int = 0
    relay_seconds: float = 0.0
    daemon: Daemon | None = None
    emulator: dict[str, Any] = field(default_factory=dict)
    routes: Counter[str] = field(default_factory=Counter)
    main_task: asyncio.Task[None] | None = None
    receipts: Receipts | None = None  # the receive side: what the emulator fed and saw
    gave_up: str | None = None  # why the demo stopped waiting before everything was done

    def interrupt(self) -> None:
        """First Ctrl-C: finish cleanly. Second: stop now."""
        if self.interrupted and self.main_task is not None:
            self.main_task.cancel()
            return
        self.interrupted = True
        if self.daemon is not None:
            self.daemon.stop.set()

    def check(self) -> None:
        if self.interrupted:
            raise Interrupted

    @property
    def server_left_running(self) -> bool:
        """The embedded server stays up afterwards: asked for with --keep (and not
        interrupted), or it ran before the demo started."""
        target = self.target
        kept = self.keep_server and not self.interrupted
        return target.embedded is not None and (target.joined or kept)
