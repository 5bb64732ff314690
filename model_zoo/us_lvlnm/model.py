"""Seed 002 at inference: large-volume lymph-node metastasis (LVLNM, > 5 metastatic nodes) from a
papillary carcinoma's B-mode image and outline (Ni et al. 2024, "Thy-DL-Radiomics").

Steps for one nodule (``bmode`` in [0, 1], ``mask`` its outline, ``spacing_mm`` or None):

1. **crop** = the mask's minimum bounding rectangle (the paper's ROI), grown on each side by
   ``crop_margin`` of its height / width (at least one pixel) so that the margin of the nodule
   is in view, clipped to the image; resized (bilinear, antialiased) to ``input_size`` squared
   without keeping the aspect ratio (the paper resizes the rectangle); grey -> 3 channels;
   normalised by ``mean`` / ``std`` per channel (ImageNet's, so that a site's ImageNet-initialised
   DenseNet121 fits);
2. **deep features**: DenseNet121 (:func:`model_zoo.nets.densenet2d.densenet_classifier`, fine-tuned
   on the task) -> the 512 activations of the head's penultimate fully connected layer -> the
   training set's PCA (128 components, ``dl_pca_000``...);
3. **radiomics**: pyradiomics on the image + mask (:mod:`.radiomics`, the card's parameter set);
4. the named features concatenated, standardised (the training set's StandardScaler; a feature
   pyradiomics could not compute, NaN, becomes the training mean, i.e. 0 after scaling);
5. the LASSO-selected features (``models/selected_features.json``) -> the MLP -> probability of
   LVLNM. The decision threshold is the card's ``decision_thresholds["lvlnm"]``.

The fitted scikit-learn parts live in ``models/fitted.skops`` (:mod:`skops.io`, loaded only when it
holds no type outside :data:`TRUSTED_TYPES`): never a pickle.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.decomposition import PCA
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from model_zoo.bundle import Bundle
from model_zoo.card import Label, ModelCard
from model_zoo.fitted import skops_types
from model_zoo.errors import BundleError, InputRejected
from model_zoo.nets.densenet2d import PENULTIMATE_FEATURES, DenseNetClassifier, densenet_classifier, penultimate_features
from model_zoo.us_lvlnm.radiomics import LIGHT_PARAMS, RadiomicsExtractor

logger = logging.getLogger(__name__)

NAME: Final[str] = "us_lvlnm"
DENSENET_FILE: Final[str] = "models/densenet121.pt"
FITTED_FILE: Final[str] = "models/fitted.skops"
SELECTED_FILE: Final[str] = "models/selected_features.json"
DL_PREFIX: Final[str] = "dl_pca_"
IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)
# Every type fitted.skops may construct (its schema is read first; anything else is refused).
TRUSTED_TYPES: Final[frozenset[str]] = frozenset({
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "numpy.ndarray", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32",
    "numpy.random.mtrand.RandomState",
    "sklearn.decomposition._pca.PCA",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.preprocessing._label.LabelBinarizer",
})

# No SNOMED CT concept says "more than 5 metastatic lymph nodes"; private codes of the node's
# scheme, like the CT model's classes.
LVLNM_LABELS: Final[tuple[Label, ...]] = (
    Label(key="no_lvlnm", code_value="NO-LVLNM", coding_scheme="99THYAI",
          code_meaning="No large-volume lymph node metastasis"),
    Label(key="lvlnm", code_value="LVLNM", coding_scheme="99THYAI",
          code_meaning="Large-volume lymph node metastasis (>5 nodes)"),
)


class LVLNMSpec(BaseModel):
    """The card's ``us_lvlnm`` section: pre-processing and the fitted parts' shapes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    densenet121: dict[str, Any] = {}  # densenet_classifier("densenet121", **kwargs); empty: the paper's
    input_size: int = Field(224, ge=32, le=512)
    crop_margin: float = Field(0.1, ge=0.0, le=1.0)  # of the box's height/width, each side
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pca_components: int = Field(128, ge=1, le=PENULTIMATE_FEATURES)
    radiomics: dict[str, Any] = Field(default_factory=lambda: copy.deepcopy(LIGHT_PARAMS))  # pyradiomics, verbatim
    radiomics_features: int = Field(ge=1)  # how many pyradiomics returns with these parameters
    selected_dl: int = Field(ge=0)
    selected_radiomics: int = Field(ge=0)

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError(f"std must be positive, got {value}")
        return value


def lvlnm_spec(card: ModelCard) -> LVLNMSpec:
    """The validated ``us_lvlnm`` section of a card (BundleError naming the field if invalid)."""
    raw = (card.model_extra or {}).get(NAME)
    if raw is None:
        raise BundleError(f"{card.ident}: model card has no '{NAME}' section")
    try:
        return LVLNMSpec.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{card.ident}: invalid '{NAME}' section: {exc}") from exc


@dataclass(frozen=True)
class LVLNMResult:
    """The model's answer for one nodule."""

    probability: float  # of LVLNM, 0..1
    features: dict[str, float]  # the selected features' raw (unscaled) values, for the SR and the logs
    dl_features: int  # how many of the selected features are deep (PCA) features
    radiomics_features: int  # how many are radiomics features


@dataclass(frozen=True)
class FittedParts:
    """The scikit-learn parts fitted in training and the feature names they expect."""

    pca: PCA
    scaler: StandardScaler
    mlp: MLPClassifier
    feature_names: tuple[str, ...]  # the scaler's columns: dl_pca_000... then radiomics names
    selected: tuple[str, ...]  # the MLP's columns, a subset of feature_names


def crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """``(row0, col0, row1, col1)`` (end exclusive): the mask's bounding rectangle grown by
    ``margin`` of its height / width on each side (at least 1 pixel), clipped to the image."""
    where = np.argwhere(mask)
    if len(where) == 0:
        raise InputRejected("the nodule mask is empty")
    (r0, c0), (r1, c1) = where.min(axis=0), where.max(axis=0) + 1
    dr = max(1, int(round(margin * (r1 - r0))))
    dc = max(1, int(round(margin * (c1 - c0))))
    rows, cols = mask.shape
    return max(int(r0) - dr, 0), max(int(c0) - dc, 0), min(int(r1) + dr, rows), min(int(c1) + dc, cols)


def crop_resized(bmode: np.ndarray, mask: np.ndarray, spec: LVLNMSpec) -> torch.Tensor:
    """The nodule's crop (:func:`crop_box`) resized to ``(1, 1, S, S)``, float32 in [0, 1]."""
    r0, c0, r1, c1 = crop_box(mask, spec.crop_margin)
    crop = torch.from_numpy(np.ascontiguousarray(bmode[r0:r1, c0:c1], dtype=np.float32))[None, None]
    size = (spec.input_size, spec.input_size)
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def normalise_input(x: torch.Tensor, spec: LVLNMSpec) -> torch.Tensor:
    """``(N, 1, S, S)`` grey in [0, 1] -> ``(N, 3, S, S)`` normalised by the card's mean / std."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def dl_input(bmode: np.ndarray, mask: np.ndarray, spec: LVLNMSpec) -> torch.Tensor:
    """The DenseNet input ``(1, 3, S, S)`` (float32, normalised) of one nodule."""
    return normalise_input(crop_resized(bmode, mask, spec), spec)


def deep_features(net: DenseNetClassifier, x: torch.Tensor, device: torch.device, batch: int = 32) -> np.ndarray:
    """Penultimate-layer activations ``(N, 512)`` (float64) of ``x`` ``(N, 3, S, S)``, eval mode,
    fp16 autocast on CUDA."""
    cuda = device.type == "cuda"
    out = []
    net.eval()
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
        for i in range(0, len(x), batch):
            out.append(penultimate_features(net, x[i : i + batch].to(device)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def dl_names(n: int) -> list[str]:
    """``dl_pca_000`` ... for ``n`` PCA components."""
    return [f"{DL_PREFIX}{i:03d}" for i in range(n)]


def finite_or_nan(x: np.ndarray) -> np.ndarray:
    """``x`` with infinities as NaN (missing: the scaler ignores them in fitting)."""
    return np.where(np.isfinite(x), x, np.nan)


def standardise(scaler: StandardScaler, x: np.ndarray) -> np.ndarray:
    """Scaled features; a feature pyradiomics could not compute (NaN, infinite) -> 0, the training mean."""
    z = np.asarray(scaler.transform(finite_or_nan(x)), dtype=np.float64)
    return np.where(np.isfinite(z), z, 0.0)


def save_fitted(folder: Path, parts: FittedParts) -> None:
    """Write ``fitted.skops`` and ``selected_features.json`` under ``folder`` (the bundle root)."""
    import skops.io as sio

    sio.dump({"pca": parts.pca, "scaler": parts.scaler, "mlp": parts.mlp}, folder / FITTED_FILE)
    names = {"feature_names": list(parts.feature_names), "selected": list(parts.selected)}
    (folder / SELECTED_FILE).write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")


def load_fitted(folder: Path, ident: str) -> FittedParts:
    """Read and cross-check the fitted parts; BundleError naming the file on any problem.

    The skops schema is checked against :data:`TRUSTED_TYPES` before anything is built; skops then
    loads with exactly the types it does not trust by default, all of them in that list.
    """
    import skops.io as sio

    path = folder / FITTED_FILE
    try:
        unexpected = sorted(skops_types(path) - TRUSTED_TYPES)
        if unexpected:
            raise BundleError(f"{ident}: {FITTED_FILE} holds types outside the trusted list: {unexpected}")
        raw = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    except BundleError:
        raise
    except Exception as exc:  # not a zip, no schema, a schema skops cannot read
        raise BundleError(f"{ident}: cannot load {FITTED_FILE}: {exc}") from exc
    try:
        names = json.loads((folder / SELECTED_FILE).read_text(encoding="utf-8"))
        parts = FittedParts(raw["pca"], raw["scaler"], raw["mlp"], tuple(names["feature_names"]), tuple(names["selected"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{ident}: cannot read {SELECTED_FILE} / {FITTED_FILE} contents: {exc}") from exc
    kinds = (PCA, StandardScaler, MLPClassifier)
    if not all(isinstance(p, k) for p, k in zip((parts.pca, parts.scaler, parts.mlp), kinds)):
        raise BundleError(f"{ident}: {FITTED_FILE} must hold a PCA, a StandardScaler and an MLPClassifier")
    n_dl = int(parts.pca.n_components_)
    problems = []
    if list(parts.feature_names[:n_dl]) != dl_names(n_dl):
        problems.append(f"the first {n_dl} feature names must be {DL_PREFIX}000...")
    if int(parts.scaler.n_features_in_) != len(parts.feature_names):
        problems.append(f"scaler has {parts.scaler.n_features_in_} inputs, {len(parts.feature_names)} names")
    if not parts.selected or not set(parts.selected) <= set(parts.feature_names):
        problems.append("selected features must be a non-empty subset of feature_names")
    if int(parts.mlp.n_features_in_) != len(parts.selected):
        problems.append(f"MLP has {parts.mlp.n_features_in_} inputs, {len(parts.selected)} selected")
    if [int(c) for c in parts.mlp.classes_] != [0, 1]:
        problems.append(f"MLP classes must be [0, 1] (1: lvlnm), got {list(parts.mlp.classes_)}")
    if int(parts.pca.n_features_in_) != PENULTIMATE_FEATURES:
        problems.append(f"PCA takes {parts.pca.n_features_in_} inputs, the network gives {PENULTIMATE_FEATURES}")
    if problems:
        raise BundleError(f"{ident}: inconsistent {FITTED_FILE} / {SELECTED_FILE}: {'; '.join(problems)}")
    return parts


def _card_file(bundle: Bundle, path: str) -> Path:
    if path not in {w.path for w in bundle.card.weights}:
        raise BundleError(f"{bundle.card.ident}: card lists no weights file {path} (so it is not verified)")
    return bundle.path / path


class USLVLNM:
    """Seed-002 model: LVLNM probability of one nodule from its B-mode image and outline."""

    def __init__(self, net: DenseNetClassifier, parts: FittedParts, card: ModelCard, device: torch.device) -> None:
        self.net = net
        self.parts = parts
        self.card = card
        self.spec = lvlnm_spec(card)
        self.device = device
        self.threshold = float(card.decision_thresholds.get("lvlnm", 0.5))
        self.radiomics = RadiomicsExtractor(self.spec.radiomics)
        self._index = {name: i for i, name in enumerate(parts.feature_names)}
        self._selected = np.array([self._index[name] for name in parts.selected])
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | None = None) -> "USLVLNM":
        """Build the DenseNet, load its state dict and the fitted parts (both checksummed by the
        bundle loader), move to ``device`` (CUDA when available), eval mode."""
        card = bundle.card
        if card.network != "densenet121+radiomics+mlp":
            raise BundleError(f"{card.ident}: unknown network {card.network!r}")
        spec = lvlnm_spec(card)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            net = densenet_classifier("densenet121", **spec.densenet121)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{card.ident}: invalid '{NAME}.densenet121': {exc}") from exc
        try:
            state = torch.load(_card_file(bundle, DENSENET_FILE), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:
            raise BundleError(f"{card.ident}: cannot load {DENSENET_FILE}: {exc}") from exc
        _card_file(bundle, SELECTED_FILE)
        _card_file(bundle, FITTED_FILE)
        parts = load_fitted(bundle.path, card.ident)
        if int(parts.pca.n_components_) != spec.pca_components:
            raise BundleError(f"{card.ident}: PCA has {parts.pca.n_components_} components, card says {spec.pca_components}")
        n_rad = len(parts.feature_names) - spec.pca_components
        if n_rad != spec.radiomics_features:
            raise BundleError(f"{card.ident}: {n_rad} radiomics features fitted, card says {spec.radiomics_features}")
        net.to(dev).eval()
        logger.info("model %s ready on %s (%d selected features)", card.ident, dev, len(parts.selected))
        return cls(net, parts, card, dev)

    def feature_vector(
        self, bmode: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float] | None
    ) -> np.ndarray:
        """All named features of one nodule, unscaled, in ``parts.feature_names`` order."""
        dl = deep_features(self.net, dl_input(bmode, mask, self.spec), self.device)
        pcs = self.parts.pca.transform(dl)[0]
        rad = self.radiomics.extract(bmode, mask, spacing_mm)
        row = np.empty(len(self.parts.feature_names), dtype=np.float64)
        row[: len(pcs)] = pcs
        for name, value in rad.items():
            i = self._index.get(name)
            if i is not None:
                row[i] = value
        missing = [n for n in self.parts.feature_names[len(pcs):] if n not in rad]
        if missing:
            raise BundleError(f"{self.card.ident}: pyradiomics gave no {missing[:3]}... (parameters changed?)")
        return row

    def predict(
        self, bmode: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float] | None
    ) -> LVLNMResult:
        """Probability of LVLNM for one nodule.

        Parameters
        ----------
        bmode : numpy.ndarray
            ``(rows, cols)`` float32 B-mode region in [0, 1].
        mask : numpy.ndarray
            Bool, same shape: the nodule's outline.
        spacing_mm : tuple of float or None
            ``(row, column)`` pixel size in mm; None when uncalibrated (shape features are then
            in pixels, unlike the training images: the probability is less trustworthy).

        Returns
        -------
        LVLNMResult

        Raises
        ------
        InputRejected
            Not 2-D, shapes differ, an empty or tiny mask.
        """
        if bmode.ndim != 2 or mask.shape != bmode.shape:
            raise InputRejected(f"us_lvlnm needs a 2-D image and a mask of its shape, got {bmode.shape}, {mask.shape}")
        mask = np.asarray(mask, dtype=bool)
        if spacing_mm is None:
            logger.warning("us_lvlnm on an uncalibrated image: shape features are in pixels")
        with self._lock:
            row = self.feature_vector(np.asarray(bmode, dtype=np.float32), mask, spacing_mm)
        z = standardise(self.parts.scaler, row[None])[:, self._selected]
        probability = float(self.parts.mlp.predict_proba(z)[0, 1])
        if not math.isfinite(probability):
            raise InputRejected("us_lvlnm produced no finite probability for this nodule")
        features = {name: float(row[self._index[name]]) for name in self.parts.selected}
        n_dl = sum(name.startswith(DL_PREFIX) for name in self.parts.selected)
        return LVLNMResult(probability, features, n_dl, len(self.parts.selected) - n_dl)
