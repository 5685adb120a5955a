"""The wheel, built as the image builds it: from the files the Dockerfile copies, nothing else.

It must hold the migrations (``relay migrate`` runs them from the installed package) and
``py.typed``, without which an application's type checker treats the whole producer API as
``Any``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from relay import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]
# What the Dockerfile COPYs into its build stage (and .dockerignore lets through).
BUILD_CONTEXT = ("pyproject.toml", "README.md", "relay", "migrations")
TIMEOUT = 120

# An application's code with two mistakes a type checker finds only if it sees relay's types.
APPLICATION = """\
import asyncpg

from relay.outbox import enqueue_async


async def write(connection: asyncpg.Connection) -> str:
    return await enqueue_async(connection, "case_created", {"case": {}}, tenant=42)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in BUILD_CONTEXT:
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", work, source],
        check=True,
        timeout=TIMEOUT,
        capture_output=True,
    )
    (built,) = work.glob("*.whl")
    return built


def test_the_wheel_is_named_after_the_distribution(wheel: Path) -> None:
    assert wheel.name.startswith(DISTRIBUTION.replace("-", "_") + "-")
    with zipfile.ZipFile(wheel) as archive:
        (metadata_file,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        headers = Parser().parsestr(archive.read(metadata_file).decode("utf-8"))
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode("utf-8")
    assert headers["Name"] == DISTRIBUTION
    assert "relay = relay.cli:main" in scripts


def test_the_wheel_holds_py_typed_and_every_migration(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "relay/py.typed" in names
    assert {"relay/migrations/env.py", "relay/migrations/script.py.mako"} <= names
    versions = {
        f"relay/migrations/versions/{path.name}" for path in ROOT.glob("migrations/versions/*.py")
    }
    assert len(versions) >= 2
    assert versions <= names


def type_check(site: Path, work: Path) -> str:
    """mypy --strict on APPLICATION, with ``site`` (an unpacked wheel) on the import path."""
    work.mkdir()
    (work / "application.py").write_text(APPLICATION, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "application.py"],
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return result.stdout + result.stderr


def test_an_application_type_checks_against_the_installed_api(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    typed = type_check(site, tmp_path / "typed")
    assert 'Argument "tenant" to "enqueue_async" has incompatible type "int"' in typed, typed
    assert 'Incompatible return value type (got "int", expected "str")' in typed, typed

    # The same files without the marker: mypy finds them (so the run above read these, not a
    # checkout elsewhere) but refuses to read their types.
    (site / "relay" / "py.typed").unlink()
    untyped = type_check(site, tmp_path / "untyped")
    assert "missing library stubs or py.typed marker" in untyped, untyped
