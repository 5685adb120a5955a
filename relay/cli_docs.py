"""docs/cli.md, written from the commands themselves: every command with its options, and the
exit codes they share. After changing a command, its options or its help:

    .venv/bin/python -m relay.cli_docs > docs/cli.md

tests/cli/test_help.py fails while docs/cli.md differs from what this writes.
"""

from __future__ import annotations

import inspect

import click

from relay.cli import main
from relay.errors import EXIT_CODE_MEANINGS, ExitCode

INTRODUCTION = """\
# The `relay` command

Written by `python -m relay.cli_docs` from the commands' own help (`relay COMMAND --help` says
the same); do not edit it by hand. Every command reads its settings from `RELAY_*` environment
variables ([configuration.md](configuration.md)); the operator commands need only
`RELAY_DATABASE_URL` (and `RELAY_SCHEMA` when it is not `public`). The runbook for using them
is [operations.md](operations.md).

Times (`DURATION|TIMESTAMP`) are a duration counted back from now (`30d`, `2h`, `15m`, `90s`)
or an ISO 8601 timestamp (`2026-11-28T14:02:00Z`); a timestamp without an offset is read in the
machine's local time zone. `--json` prints JSON for scripts: timestamps in UTC with a `Z`,
ages and durations in seconds.
"""

EXIT_CODES_INTRODUCTION = """\
## Exit codes

Every command exits with one of these codes, whatever the command (`relay.errors.ExitCode`). A
failure is printed as one line on standard error, starting with `relay:` (click's own usage
errors start with `Usage:` and `Error:`), naming what to fix; a secret or the database password
never appears in it. A representative failure of each class is tested for every command, as a
real process (`tests/cli/test_exit_codes.py`; `relay inbox`'s in `tests/ops/test_inbox_cli.py`).
"""

# For each code, what leads to it: the commands' representative cases.
EXAMPLES = {
    ExitCode.OK: "",
    ExitCode.FAILURE: "please report it",
    ExitCode.USAGE: (
        "an unknown option or a bad value; a missing or malformed `RELAY_*` setting; key "
        "material that cannot be used; the token endpoint refusing our client, or a TLS "
        "certificate not trusted (`check`); `requeue`, `replay` or `pause clear` naming no "
        "rows or routes; a bad `--operator`; `dead show` of a row that does not exist; "
        "`purge --older-than` in the future; a `replay` of more than 100 rows not confirmed; "
        "`emulator` on a port that is taken; `inbox retry` naming no events; `inbox show` of "
        "an event that does not exist; `inbox rewind` of a route without a checkpoint, or "
        "breaking the route rule"
    ),
    ExitCode.ATTENTION: (
        "`run --drain` left rows blocked behind dead rows; `requeue` or `replay` ids that were "
        "left alone (not dead, not published); `replay` rows held back behind newer rows of "
        "their key; `pause clear` of a route that had no pause; `migrate --check` with the "
        "schema behind; `inbox retry` choosing items that are not events (never made pending) "
        "or naming ids that are not failed; `inbox rewind` to an event the inbox does not hold"
    ),
    ExitCode.DATABASE: (
        "connection refused or timed out; an unknown host, database or role; a wrong "
        "password; a missing right (`permission denied for table outbox (SQLSTATE 42501)`), "
        "the audit log's included: a change that cannot be recorded is not made"
    ),
    ExitCode.SCHEMA: "run `relay migrate` (with the new release, when upgrading)",
    ExitCode.PARTNER: (
        "`check`: the token endpoint times out, refuses the connection or answers 5xx; try again"
    ),
    ExitCode.INTERRUPTED: "a change in progress is rolled back whole",
}

SERVICES = """\
`relay run` and `relay emulator` are services: SIGTERM or SIGINT stops them cleanly, and they
exit 0. `relay run --drain` exits 0 once everything it could send is published or dead, 3 when
rows are left blocked behind dead rows.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _help_markdown(text: str) -> str:
    """A command's help as Markdown: its paragraphs as they are, and a paragraph click keeps
    unwrapped (marked by a \\b line) as a block of text."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    shown = [
        "```text\n" + paragraph.removeprefix("\b\n") + "\n```"
        if paragraph.startswith("\b\n")
        else paragraph
        for paragraph in paragraphs
    ]
    return "\n\n".join(shown)


def exit_code_table() -> list[str]:
    lines = ["| code | meaning | for example |", "| --- | --- | --- |"]
    for code, meaning in EXIT_CODE_MEANINGS.items():
        lines.append(f"| {int(code)} | {meaning} | {_cell(EXAMPLES[code])} |")
    return lines


def _commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, path)
    return found


def _context(path: tuple[str, ...]) -> click.Context:
    context = click.Context(main, info_name="relay")
    command: click.Command = main
    for word in path:
        assert isinstance(command, click.Group)
        command = command.commands[word]
        context = click.Context(command, info_name=word, parent=context)
    return context


def command_section(path: tuple[str, ...], command: click.Command) -> list[str]:
    """One command: its usage (which names its arguments), its whole help, its options."""
    context = _context(path)
    usage = " ".join(command.collect_usage_pieces(context))
    lines = [f"## `relay {' '.join(path)}`", "", f"`relay {' '.join(path)} {usage}`", ""]
    lines += [_help_markdown(command.help or command.short_help or ""), ""]
    if isinstance(command, click.Group):
        lines += ["| command | what it does |", "| --- | --- |"]
        for name, sub in sorted(command.commands.items()):
            lines.append(f"| `relay {' '.join(path)} {name}` | {_cell(sub.short_help or '')} |")
        return [*lines, ""]
    options = [
        record
        for param in command.get_params(context)
        if isinstance(param, click.Option)
        and "--help" not in param.opts
        and (record := param.get_help_record(context)) is not None
    ]
    if options:
        lines += ["| option | meaning |", "| --- | --- |"]
        lines += [f"| `{_cell(names)}` | {_cell(meaning)} |" for names, meaning in options]
        lines.append("")
    return lines


def render() -> str:
    """The whole of docs/cli.md."""
    commands = _commands(main)
    lines = [INTRODUCTION, "| command | what it does |", "| --- | --- |"]
    for path, command in commands:
        name, anchor = " ".join(path), "-".join(path)
        lines.append(f"| [`relay {name}`](#relay-{anchor}) | {_cell(command.short_help or '')} |")
    lines += ["", EXIT_CODES_INTRODUCTION, *exit_code_table(), "", SERVICES]
    for path, command in commands:
        lines += command_section(path, command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
