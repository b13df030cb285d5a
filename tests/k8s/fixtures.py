"""The ``k8s`` fixture: the Kubernetes emulator on loopback, with KUBECONFIG pointing at it.

Test modules outside ``tests/k8s`` import it: ``from k8s.fixtures import k8s  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from k8s.emulator import EmulatorServer


@pytest.fixture()
def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with EmulatorServer(tmp_path / "k8s") as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig))
        yield server
