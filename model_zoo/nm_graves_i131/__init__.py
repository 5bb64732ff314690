"""Seed 001: cure after a first I-131 therapy of Graves' disease from the pre-treatment
99mTc-pertechnetate scintigram.

ResNet50 (MONAI) trained end to end on cured / not cured; its global-pool features, standardised
and LASSO-selected (16 in the paper), into a random forest; Grad-CAM of the "cured" logit
(:mod:`.model`); trained on phantoms (:mod:`model_zoo.phantoms.nm_graves`) by :mod:`.train`.
"""

from model_zoo.nm_graves_i131.model import (
    GRAVES_LABELS,
    GravesPrediction,
    GravesResNet50,
    GravesSpec,
    NMGravesI131,
    ResNet50Spec,
    graves_spec,
)

__all__ = [
    "GRAVES_LABELS",
    "GravesPrediction",
    "GravesResNet50",
    "GravesSpec",
    "NMGravesI131",
    "ResNet50Spec",
    "graves_spec",
]
