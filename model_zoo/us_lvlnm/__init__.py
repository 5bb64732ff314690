"""Seed 002 (Ni et al. 2024): large-volume lymph-node metastasis (> 5 metastatic nodes) of a
papillary thyroid carcinoma from its B-mode image and outline.

DenseNet121 penultimate-layer features (PCA to 128) and pyradiomics features (:mod:`.radiomics`),
standardised, LASSO-selected, into an MLP (:mod:`.model`); trained on phantoms by :mod:`.train`.
"""

from model_zoo.us_lvlnm.model import LVLNM_LABELS, LVLNMResult, LVLNMSpec, USLVLNM, lvlnm_spec
from model_zoo.us_lvlnm.radiomics import LIGHT_PARAMS, PAPER_PARAMS, RadiomicsExtractor, extract_features

__all__ = [
    "LIGHT_PARAMS",
    "LVLNM_LABELS",
    "LVLNMResult",
    "LVLNMSpec",
    "PAPER_PARAMS",
    "RadiomicsExtractor",
    "USLVLNM",
    "extract_features",
    "lvlnm_spec",
]
