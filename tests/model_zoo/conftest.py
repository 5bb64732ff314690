"""Shared fixtures: the demo bundle is built once into the shared cache and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_zoo.bundle import Bundle, load_bundle
from model_zoo.demo import ensure_demo_bundle


@pytest.fixture(scope="session")
def demo_bundle() -> Bundle:
    """The cached nm_thyroid_dx demo bundle (built on first use, minutes on a CPU)."""
    path: Path = ensure_demo_bundle("nm_thyroid_dx")
    return load_bundle(path)
