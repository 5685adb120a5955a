"""Kubernetes mounts secret volumes 0644 unless told otherwise: every user in the pod could read
the key material, and the relay would warn about it at every start (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

MANIFESTS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "kubernetes").glob("*.yaml"))


def secret_volumes(document: dict[str, Any]) -> list[dict[str, Any]]:
    pod = document.get("spec", {}).get("template", {}).get("spec", {})
    return [volume for volume in pod.get("volumes", []) if "secret" in volume]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_secret_volumes_are_not_readable_by_others(manifest: Path) -> None:
    for document in yaml.safe_load_all(manifest.read_text(encoding="utf-8")):
        for volume in secret_volumes(document or {}):
            mode = volume["secret"].get("defaultMode", 0o644)
            assert not mode & 0o004, f"{manifest.name}: volume {volume['name']}: {mode:04o}"


def test_both_workloads_mount_the_secret() -> None:
    mounted = [
        path.name
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if secret_volumes(document or {})
    ]
    assert sorted(mounted) == ["deployment.yaml", "migration-job.yaml"]
