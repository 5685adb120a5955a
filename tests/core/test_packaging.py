"""What the project ships: its distribution name, and where every file that names it agrees."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from relay import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_distribution_is_not_the_unrelated_relay_on_the_package_index() -> None:
    # 'relay' on the public index is someone else's project: a pip install by that name, or a
    # resolver looking for it, must never reach it.
    assert PYPROJECT["project"]["name"] == DISTRIBUTION
    assert canonicalize_name(DISTRIBUTION) == DISTRIBUTION != "relay"


def test_the_installed_distribution_is_the_relay_package_and_command() -> None:
    distribution = metadata.distribution(DISTRIBUTION)
    assert canonicalize_name(distribution.metadata["Name"]) == DISTRIBUTION
    scripts = {entry.name: entry.value for entry in distribution.entry_points}
    assert scripts["relay"] == "relay.cli:main"


def test_the_license_is_an_spdx_expression_so_installs_do_not_warn() -> None:
    # A TOML table (license = {text = ...}) makes setuptools print a deprecation three times
    # per install, and it stops building such projects after 2027-02-18. An expression needs
    # setuptools 77, which the build system asks for.
    assert isinstance(PYPROJECT["project"]["license"], str)
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]
    expression = metadata.distribution(DISTRIBUTION).metadata["License-Expression"]
    assert expression == PYPROJECT["project"]["license"]


def test_the_image_installs_that_name_with_tracing_from_its_own_wheels() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "--no-index --find-links /wheels" in dockerfile
    wheel = DISTRIBUTION.replace("-", "_")  # as a wheel's file name spells it (PEP 427)
    assert f'"$(echo /wheels/{wheel}-*.whl)[otel]"' in dockerfile
    assert "--wheel-dir /wheels '.[otel]'" in dockerfile


def test_the_docs_install_that_name() -> None:
    for path in ("README.md", "deploy/README.md", "relay/demo/database.py"):
        text = (ROOT / path).read_text(encoding="utf-8")
        # A wheel or an install spelt with the old name: relay-0.1.0-..., 'relay[embedded]'.
        assert not re.search(r"(?<![\w-])relay(-\d|\[)", text), path
    assert f"pip install {DISTRIBUTION}" in (ROOT / "README.md").read_text(encoding="utf-8")


# constraints.txt: the tested resolution -------------------------------------------------------

CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> dict[str, Version]:
    pinned: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        assert not requirement.extras, line
        assert requirement.marker is None, line
        name = canonicalize_name(requirement.name)
        assert name not in pinned, f"{name} pinned twice"
        pinned[name] = Version(specifier.version)
    return pinned


def closure(name: str, extras: frozenset[str]) -> dict[str, frozenset[str]]:
    """Every distribution installed because of ``name[extras]``, with the extras asked of it."""
    wanted: dict[str, frozenset[str]] = {}
    pending = [(canonicalize_name(name), extras)]
    while pending:
        current, asked = pending.pop()
        known = wanted.get(current, frozenset())
        if current in wanted and asked <= known:
            continue
        wanted[current] = known | asked
        for text in metadata.requires(current) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(
                marker.evaluate({"extra": extra}) for extra in wanted[current] | {""}
            ):
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return wanted


def test_every_dependency_is_pinned_and_installed_at_its_pin() -> None:
    pinned = pins()
    needed = set(closure(DISTRIBUTION, frozenset({"test", "embedded", "otel"}))) - {DISTRIBUTION}
    assert needed - set(pinned) == set(), "not pinned: run 'make constraints'"
    assert set(pinned) - needed == set(), "pinned but not needed: run 'make constraints'"
    # The suite runs on exactly these versions ('make install' installs them).
    drift = {
        name: (str(version), metadata.version(name))
        for name, version in pinned.items()
        if Version(metadata.version(name)) != version
    }
    assert drift == {}, "installed versions differ from constraints.txt: run 'make install'"


def test_the_pins_keep_within_the_declared_ranges() -> None:
    pinned = pins()
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    declared += project["optional-dependencies"]["embedded"]
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(pinned[name], prereleases=True), text


def test_install_and_image_build_use_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-c $(CONSTRAINTS) -e '.[test,embedded,otel]'" in makefile
    assert "CONSTRAINTS := constraints.txt" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", dockerfile, re.MULTILINE)
    assert "pip wheel --constraint constraints.txt" in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
