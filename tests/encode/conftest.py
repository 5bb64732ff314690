"""Phantom sources shared by the encoder tests."""

from __future__ import annotations

import pydicom
import pytest

from model_zoo.phantoms.nm import nm_phantom_dataset

@pytest.fixture(scope="session")
def nm_source() -> pydicom.Dataset:
    """A single-frame anterior scintigram (Graves' pattern)."""
    return nm_phantom_dataset("graves", 11)


@pytest.fixture(scope="session")
def nm_source_2frames() -> pydicom.Dataset:
    """A two-head static image: anterior (frame 1) and posterior (frame 2)."""
    return nm_phantom_dataset("thyroid_tumour", 12, frames=2)
