"""Fixtures for tests inside ``tests/k8s`` (the same ``k8s`` fixture other test modules import)."""

from k8s.fixtures import k8s

__all__ = ["k8s"]
