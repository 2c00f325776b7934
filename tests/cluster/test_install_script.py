"""scripts/install-k8s-tools.sh: real helm v4 and kubectl v1.33, installed idempotently."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.conftest import ROOT, run


def test_the_installed_tools_are_helm_4_and_kubectl_1_33(helm: str, kubectl: str) -> None:
    assert run([helm, "version", "--short"]).stdout.startswith("v4.")
    assert "v1.33." in run([kubectl, "version", "--client"]).stdout


def test_installing_again_into_the_same_folder_downloads_nothing(helm: str) -> None:
    result = run(["bash", ROOT / "scripts" / "install-k8s-tools.sh", Path(helm).parent])
    assert "already in" in result.stdout
    assert result.stdout.splitlines()[1].startswith("v4.")
