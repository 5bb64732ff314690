"""nm_thyroid_dx: 4-class planar thyroid scintigraphy (Zhao et al. 2023)."""

from model_zoo.nm_thyroid_dx.model import NMPrediction, NMThyroidDx

__all__ = ["NMPrediction", "NMThyroidDx"]
