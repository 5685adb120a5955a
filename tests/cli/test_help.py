"""``relay --help`` and every ``relay COMMAND --help`` as an operator reads them at a terminal of
80 columns (``kubectl exec`` without one gets the same width): every summary whole, never cut
with "...". And docs/cli.md is what the commands say about themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from relay import cli_docs
from relay.cli import main

RELAY = str(Path(sys.executable).with_name("relay"))
CLI_MD = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def command_paths(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group``, as the words that name it."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


PATHS = command_paths()


def help_text(path: tuple[str, ...], columns: int) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    run = subprocess.run(
        [RELAY, *path, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return run.returncode, run.stdout, run.stderr


@pytest.fixture(scope="module")
def helps() -> dict[tuple[tuple[str, ...], int], tuple[int, str, str]]:
    wanted = [(path, columns) for path in PATHS for columns in (80, 200)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda item: help_text(*item), wanted)
        return dict(zip(wanted, results, strict=True))


def listed_commands(text: str) -> dict[str, str]:
    """The "Commands:" section of a group's help: name -> summary (wrapped lines joined)."""
    listed: dict[str, str] = {}
    section = text.split("\nCommands:\n", 1)[1]
    name = ""
    for line in section.splitlines():
        if not line.strip():
            break
        words = line.split(maxsplit=1)
        if line.startswith("  ") and not line.startswith("    ") and len(words) == 2:
            name = words[0]
            listed[name] = words[1]
        else:  # a summary wrapped onto the next line
            listed[name] += " " + line.strip()
    return listed


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("path", PATHS, ids=[" ".join(path) or "relay" for path in PATHS])
def test_every_help_is_whole(
    path: tuple[str, ...],
    columns: int,
    helps: dict[tuple[tuple[str, ...], int], tuple[int, str, str]],
) -> None:
    code, stdout, stderr = helps[(path, columns)]
    assert (code, stderr) == (0, ""), stderr
    assert stdout.startswith(f"Usage: relay {' '.join(path)}".rstrip())
    command: click.Command = main
    for word in path:
        assert isinstance(command, click.Group)
        command = command.commands[word]
    if isinstance(command, click.Group):
        listed = listed_commands(stdout)
        assert sorted(listed) == sorted(command.commands)
        for name, summary in listed.items():
            assert not summary.endswith("..."), f"relay {' '.join(path)}: {name}: {summary}"
            assert summary.endswith(tuple("abcdefghijklmnopqrstuvwxyz)'")), summary
            assert len(summary) <= 60, f"{name}: {summary!r} is long for one line"


def test_docs_cli_md_is_what_the_commands_say() -> None:
    expected = cli_docs.render()
    assert CLI_MD.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is out of date: run .venv/bin/python -m relay.cli_docs > docs/cli.md"
    )
    for path in PATHS[1:]:
        assert f"## `relay {' '.join(path)}`" in expected
