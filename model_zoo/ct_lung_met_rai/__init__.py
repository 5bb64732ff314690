"""Seed 000 (Gao et al. 2024): lung metastases of differentiated thyroid cancer on chest CT.

Segment lesions with an SE V-Net at 1 mm isotropic, then classify each lesion's patch as
RAI-refractory or not with a 3D SE-ResNet. :mod:`.volume` turns the received instances into the
volume the models see.
"""

from model_zoo.ct_lung_met_rai.volume import (
    CTVolume,
    IsoVolume,
    SeriesChoice,
    build_volume,
    check_chest,
    iso_to_canonical,
    lung_mask,
    resample_iso,
    select_series,
)

__all__ = [
    "CTVolume",
    "IsoVolume",
    "SeriesChoice",
    "build_volume",
    "check_chest",
    "iso_to_canonical",
    "lung_mask",
    "resample_iso",
    "select_series",
]
