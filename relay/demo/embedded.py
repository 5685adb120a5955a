"""A PostgreSQL of the demo's own, that leaves the machine as it found it.

The binaries come from the ``pgserver`` package (the ``embedded`` extra); nothing else of it is
used, because as root it adds a system user, opens parent directories to everyone and leaves
a lock directory in the user's runtime directory. This server:

- keeps its data in ``.relay-demo/pgdata`` under the current directory, and listens on a free
  port of 127.0.0.1 only (no Unix socket, so nothing is written elsewhere);
- as root, where PostgreSQL refuses to run, runs as the existing unprivileged user ``nobody``
  from a temporary directory of its own (the data, and a copy of the binaries when ``nobody``
  cannot reach them where they are), which is removed when the server stops;
- is described in ``.relay-demo/server.json`` while it runs, so that ``relay demo --stop``
  (and a later demo, which joins it) finds it. ``make clean`` removes ``.relay-demo``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from relay.errors import ConfigurationError

STATE = "server.json"
SUPERUSER = "postgres"
ROOT_RUNS_AS = "nobody"  # every Linux has it; PostgreSQL will not run as root
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def binaries() -> Path:
    """The ``bin`` directory of the PostgreSQL that ``pgserver`` ships, found without importing
    it (its import prepares a lock directory)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedded PostgreSQL needs the 'embedded' extra: "
            "pip install 'scalepoint-outbox-relay[embedded]'"
            " (or set RELAY_DATABASE_URL to use a PostgreSQL of yours)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class EmbeddedServer:
    """A running server: where its data is, its port, whom it runs as, and the temporary
    directory to remove once it has stopped (root only)."""

    pgdata: str
    port: int
    bin: str
    user: str | None = None
    scratch: str | None = None

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def running(self) -> bool:
        return postmaster_pid(Path(self.pgdata)) is not None

    def stop(self, directory: Path) -> None:
        """Stop the server (fast: sessions are ended), then remove what it left."""
        if self.running():
            _run(
                [f"{self.bin}/pg_ctl", "-D", self.pgdata, "-m", "fast", "-w", "stop"],
                self.user,
                STOP_TIMEOUT,
            )
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (directory / STATE).unlink()


def postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster's pid while one runs on ``pgdata``, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def running_server(directory: Path) -> EmbeddedServer | None:
    """The server ``server.json`` in ``directory`` describes, if it still runs."""
    try:
        described = json.loads((directory / STATE).read_text())
        server = EmbeddedServer(**described)
    except (OSError, ValueError, TypeError):
        return None
    return server if server.running() else None


def start(directory: Path) -> tuple[EmbeddedServer, bool]:
    """A running server for ``directory``: the one already running there (True: joined), or a
    new one (False). Raises ConfigurationError, naming the cause, when it cannot start."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = running_server(directory)
    if existing is not None:
        return existing, True
    bin_path = binaries()
    user = ROOT_RUNS_AS if os.geteuid() == 0 else None
    scratch = None
    if user is None:
        pgdata = directory.resolve() / "pgdata"
    else:
        scratch, bin_path = _scratch_for(user, bin_path)
        pgdata = scratch / "pgdata"
    try:
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_path, pgdata, user)
        return _start(directory, bin_path, pgdata, user, scratch), False
    except BaseException:  # Ctrl-C too: whatever was started is stopped and removed
        EmbeddedServer(str(pgdata), 0, str(bin_path), user, _str(scratch)).stop(directory)
        raise


def _scratch_for(user: str, bin_path: Path) -> tuple[Path, Path]:
    """As root: a temporary directory ``user`` owns, and binaries ``user`` can run (a copy in
    it when the installed ones are behind a directory ``user`` cannot enter)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(
            f"as root the embedded PostgreSQL runs as user {user}, which this machine lacks; "
            "run the demo as another user, or set RELAY_DATABASE_URL"
        ) from None
    scratch = Path(tempfile.mkdtemp(prefix="relay-demo-"))
    os.chown(scratch, entry.pw_uid, entry.pw_gid)
    if not _can_run(bin_path / "postgres", user):
        install = bin_path.parent
        shutil.copytree(install, scratch / "pginstall", symlinks=True)
        bin_path = scratch / "pginstall" / "bin"
    return scratch, bin_path


def _can_run(program: Path, user: str) -> bool:
    try:
        result = subprocess.run(  # noqa: S603 - the installed PostgreSQL's own program
            [str(program), "--version"], user=user, capture_output=True, timeout=30, check=False
        )
    except OSError:
        return False
    return result.returncode == 0


def _initdb(bin_path: Path, pgdata: Path, user: str | None) -> None:
    _run(
        [
            f"{bin_path}/initdb",
            "-D",
            str(pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ],
        user,
        START_TIMEOUT,
    )


def _start(
    directory: Path, bin_path: Path, pgdata: Path, user: str | None, scratch: Path | None
) -> EmbeddedServer:
    """pg_ctl start on a free port; another process may take that port between the look and
    the start, so a refusal is tried again on another. ``server.json`` is written first, so
    that a server whose start was interrupted is found and stopped."""
    for attempt in range(3):
        server = EmbeddedServer(str(pgdata), _free_port(), str(bin_path), user, _str(scratch))
        (directory / STATE).write_text(json.dumps(asdict(server)))
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories=''"
        try:
            _run(
                [
                    f"{bin_path}/pg_ctl",
                    "-D",
                    str(pgdata),
                    "-l",
                    str(pgdata / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT)),
                    "start",
                ],
                user,
                START_TIMEOUT + 5,
            )
        except ConfigurationError:
            if attempt == 2:
                raise
            time.sleep(0.2)
            continue
        return server
    raise AssertionError("unreachable")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run(command: list[str], user: str | None, timeout: float) -> None:
    """Run a PostgreSQL program (as ``user``); its failure as one line with its last words."""
    try:
        result = subprocess.run(  # noqa: S603 - the installed PostgreSQL's own programs
            command,
            user=user,
            cwd="/" if user is not None else None,  # a directory that user may be in
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        program = Path(command[0]).name
        raise ConfigurationError(f"the embedded PostgreSQL: {program}: {error}") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        last = said[-1] if said else f"exit code {result.returncode}"
        raise ConfigurationError(f"the embedded PostgreSQL: {Path(command[0]).name}: {last}")
