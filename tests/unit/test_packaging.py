"""What the project ships: its distribution name, and where every file that names it agrees."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from relay import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# The wheel's file name spells the distribution with underscores (PEP 427).
WHEEL_PREFIX = DISTRIBUTION.replace("-", "_") + "-"


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


def test_the_image_installs_the_wheel_of_that_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"/wheels/{WHEEL_PREFIX}*.whl" in dockerfile


def test_the_docs_install_that_name() -> None:
    for path in ("README.md", "deploy/README.md", "relay/demo_database.py"):
        text = (ROOT / path).read_text(encoding="utf-8")
        # A wheel or an install spelt with the old name: relay-0.1.0-..., 'relay[embedded]'.
        assert not re.search(r"(?<![\w-])relay(-\d|\[)", text), path
    assert f"pip install {DISTRIBUTION}" in (ROOT / "README.md").read_text(encoding="utf-8")
