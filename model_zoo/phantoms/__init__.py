"""Synthetic studies with known ground truth, for tests and demo training."""

from model_zoo.phantoms.nm import (
    NM_LABELS,
    make_nm_image,
    nm_phantom_dataset,
    write_nm_study,
)

__all__ = ["NM_LABELS", "make_nm_image", "nm_phantom_dataset", "write_nm_study"]
