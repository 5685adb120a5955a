"""docs/emulator.md lists every fault key the emulator takes, with its default, and nothing
else; each documented key is taken over HTTP, and an unknown one is refused naming it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import aiohttp

from relay.emulator.model import Faults
from tests.helpers.partner import running

DOCS = Path(__file__).resolve().parents[2] / "docs" / "emulator.md"
ROW = re.compile(r"^\| `([a-z_]+)` \| `([^`]*)` \|", re.MULTILINE)


def documented() -> dict[str, object]:
    section = DOCS.read_text(encoding="utf-8").split("## Fault keys", 1)[1]
    return {key: json.loads(default) for key, default in ROW.findall(section)}


def defaults() -> dict[str, object]:
    return dataclasses.asdict(Faults())


def test_every_fault_key_is_documented_with_its_default() -> None:
    assert documented() == defaults()


async def test_the_documented_keys_are_what_the_endpoint_takes() -> None:
    async with running() as emulator, aiohttp.ClientSession() as session:
        url = f"{emulator.base_url}/_emulator/faults"
        async with session.post(url, json=documented()) as taken:
            assert taken.status == 200, await taken.text()
            assert await taken.json() == defaults()
        async with session.post(url, json={"no_such_fault": 1}) as refused:
            assert refused.status == 400
            assert "no_such_fault" in (await refused.json())["error"]
