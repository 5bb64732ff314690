"""Radiomics features of one nodule on a 2-D B-mode image (pyradiomics), seed 002's handcrafted branch.

The image and the nodule's mask become 2-D SimpleITK images whose spacing is the pixel size in mm
(``(1.0, 1.0)`` when the image is uncalibrated: sizes are then in pixels). With 2-D input
pyradiomics works in 2-D throughout: shape features are ``shape2D``, texture matrices use the
in-plane angles and the wavelet is the in-plane (2-D) stationary wavelet. That is what its
``force2D`` setting does to a 3-D volume; the setting is deliberately *not* set here, because on a
2-D input it would drop one of the two in-plane axes from the wavelet.

Parameter sets (pyradiomics' own dictionary format, stored verbatim in the bundle's card):

* :data:`PAPER_PARAMS`: original + LoG (sigma 1-5 mm) + wavelet + square, square root, logarithm,
  exponential images; first order, shape2D, GLCM, GLRLM, GLSZM, GLDM, NGTDM: 1,311 features on a
  2-D image (the paper reports 1,357 from an unpublished parameter file; the difference is in
  which filters were enabled);
* :data:`LIGHT_PARAMS`: original + LoG (sigma 1 mm), the same classes: 195 features, about a
  fifth of the time (the demo's set).

Grey levels: the [0, 1] B-mode is scaled to 0-255 and discretised into 32 bins per image (a fixed
bin count: B-mode grey levels are not calibrated units, so a fixed bin width would mean nothing
across devices).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import SimpleITK as sitk

from model_zoo.errors import InputRejected

logger = logging.getLogger(__name__)

_CLASSES: Final[dict[str, list[str]]] = {
    "firstorder": [], "shape2D": [], "glcm": [], "glrlm": [], "glszm": [], "gldm": [], "ngtdm": [],
}
_SETTING: Final[dict[str, Any]] = {"binCount": 32, "label": 1, "minimumROIDimensions": 2, "minimumROISize": 9}

PAPER_PARAMS: Final[dict[str, Any]] = {
    "imageType": {
        "Original": {},
        "LoG": {"sigma": [1.0, 2.0, 3.0, 4.0, 5.0]},
        "Wavelet": {},
        "Square": {},
        "SquareRoot": {},
        "Logarithm": {},
        "Exponential": {},
    },
    "featureClass": _CLASSES,
    "setting": _SETTING,
}
LIGHT_PARAMS: Final[dict[str, Any]] = {
    "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}},
    "featureClass": _CLASSES,
    "setting": _SETTING,
}
GREY_SCALE: Final[float] = 255.0  # [0, 1] B-mode -> grey levels handed to pyradiomics
_MIN_PAD_PX: Final[int] = 8


def silence_pyradiomics() -> None:
    """Raise the ``radiomics`` logger to ERROR (it logs INFO/WARNING chatter for every image through
    its own stderr handler) and its schema checker ``pykwalify`` to WARNING; no global logging
    configuration is touched."""
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)


def _to_sitk(array: np.ndarray, spacing: tuple[float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((float(spacing[1]), float(spacing[0])))  # SimpleITK: (x = column, y = row)
    return image


def _pad_px(params: Mapping[str, Any], spacing: tuple[float, float]) -> int:
    """Context kept around the mask's box before filtering: 3 sigma of the widest LoG (pixels)."""
    sigmas = (params.get("imageType", {}).get("LoG") or {}).get("sigma", [])
    widest = max([float(s) for s in sigmas], default=0.0)
    return _MIN_PAD_PX + int(math.ceil(3.0 * widest / min(spacing)))


class RadiomicsExtractor:
    """A pyradiomics feature extractor for 2-D B-mode nodules, from a parameter dictionary.

    Parameters
    ----------
    params : mapping
        pyradiomics parameters (``imageType``, ``featureClass``, ``setting``), e.g.
        :data:`LIGHT_PARAMS`. Validated by pyradiomics' schema.

    Raises
    ------
    ValueError
        Parameters pyradiomics refuses.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        from radiomics import featureextractor  # imports pywavelets and the C extensions

        silence_pyradiomics()
        self.params: dict[str, Any] = copy.deepcopy(dict(params))
        try:
            self._extractor = featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(self.params))
        except Exception as exc:  # pykwalify's SchemaError and friends
            raise ValueError(f"pyradiomics refused the parameters: {exc}") from exc

    def extract(
        self, bmode: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float] | None
    ) -> dict[str, float]:
        """Features of the nodule ``mask`` on ``bmode``.

        Parameters
        ----------
        bmode : numpy.ndarray
            ``(rows, cols)`` B-mode intensities in [0, 1].
        mask : numpy.ndarray
            Bool, same shape: the nodule.
        spacing_mm : tuple of float or None
            ``(row, column)`` pixel size in mm; None for an uncalibrated image (1.0: pixels).

        Returns
        -------
        dict of str to float
            Feature name (``original_shape2D_PixelSurface``...) to value, in pyradiomics' order,
            diagnostics excluded. Values may be NaN where a feature is undefined.

        Raises
        ------
        InputRejected
            Shapes differ, not 2-D, or a mask too small for the features (fewer than 9 pixels).
        """
        if bmode.ndim != 2 or bmode.shape != mask.shape:
            raise InputRejected(f"radiomics needs a 2-D image and a mask of its shape, got {bmode.shape} and {mask.shape}")
        spacing = (1.0, 1.0) if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
        if min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
            raise InputRejected(f"pixel spacing must be positive, got {spacing_mm}")
        where = np.argwhere(mask)
        if len(where) < 9:
            raise InputRejected(f"nodule mask of {len(where)} pixel(s) is too small for radiomics")
        pad = _pad_px(self.params, spacing)
        (r0, c0), (r1, c1) = where.min(axis=0), where.max(axis=0) + 1
        box = (slice(max(r0 - pad, 0), min(r1 + pad, mask.shape[0])),
               slice(max(c0 - pad, 0), min(c1 + pad, mask.shape[1])))
        grey = np.asarray(bmode[box], dtype=np.float32) * np.float32(GREY_SCALE)
        label = np.asarray(mask[box], dtype=np.uint8)
        try:
            raw = self._extractor.execute(_to_sitk(grey, spacing), _to_sitk(label, spacing))
        except ValueError as exc:  # pyradiomics: ROI too small / not found
            raise InputRejected(f"radiomics failed on this nodule: {exc}") from exc
        return {name: float(value) for name, value in raw.items() if not name.startswith("diagnostics_")}


def extract_features(
    bmode: np.ndarray,
    mask: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    params: Mapping[str, Any] = LIGHT_PARAMS,
) -> dict[str, float]:
    """One-off :meth:`RadiomicsExtractor.extract` (build an extractor once for many nodules)."""
    return RadiomicsExtractor(params).extract(bmode, mask, spacing_mm)
