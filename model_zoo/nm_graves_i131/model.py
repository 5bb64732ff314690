"""Seed 001 at inference: cure after a first I-131 therapy of Graves' disease, from the
pre-treatment 99mTc-pertechnetate scintigram (ResNet50 + LASSO-selected deep features + random
forest, with Grad-CAM).

Steps for one NM dataset:

1. **input**: seed 003's pre-processing (:func:`model_zoo.nm_thyroid_dx.preprocess.prepare`): the
   same frame choice (anterior view, dynamic frames summed...), rescale, counts / 99.5th
   percentile clipped to [0, 1], resized to the card's ``nm_graves.input_size``; one channel;
2. **ResNet50** (:class:`GravesResNet50`: MONAI ``ResNet``, bottleneck blocks [3, 4, 6, 3], 7x7
   stride-2 stem, no bias in the 1x1 shortcut convolutions, so that at the paper's widths it has
   exactly torchvision's ``resnet50`` parameters without the FC) trained end to end on
   cured / not cured: its own P(cured) is :attr:`GravesPrediction.resnet_probability`;
3. **deep features**: the global-average-pool output (2,048 at the paper's widths), standardised
   with the training set's ``StandardScaler``;
4. **LASSO-selected features** (16 in the paper; ``models/selected_features.json``) -> the
   **random forest** -> :attr:`GravesPrediction.probability_cured`, called cured at the card's
   ``decision_thresholds["cured"]``;
5. **Grad-CAM** of the ResNet's "cured" logit on ``backbone.layer4``, on the source frame's grid.

The fitted scikit-learn parts live in ``models/fitted.skops`` (:mod:`skops.io`, loaded only when
its schema holds no type outside :data:`TRUSTED_TYPES`): never a pickle.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.dataset import Dataset
from sklearn.ensemble import RandomForestClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from model_zoo.bundle import Bundle
from model_zoo.cam import grad_cam
from model_zoo.card import Label, ModelCard
from model_zoo.errors import BundleError, InputRejected
from model_zoo.nm_thyroid_dx.preprocess import prepare
from model_zoo.fitted import skops_types

logger = logging.getLogger(__name__)

NAME: Final[str] = "nm_graves_i131"
NETWORK: Final[str] = "monai_resnet50+lasso+rf"
RESNET_FILE: Final[str] = "models/resnet50.pt"
FITTED_FILE: Final[str] = "models/fitted.skops"
SELECTED_FILE: Final[str] = "models/selected_features.json"
CAM_LAYER: Final[str] = "backbone.layer4"
PAPER_BLOCK_INPLANES: Final[tuple[int, int, int, int]] = (64, 128, 256, 512)
PAPER_N_FEATURES: Final[int] = 16
BOTTLENECK_EXPANSION: Final[int] = 4
CURED: Final[int] = 1  # network output / label index of "cured"
RF_KEYS: Final[frozenset[str]] = frozenset({
    "n_estimators", "criterion", "max_depth", "min_samples_split", "min_samples_leaf", "max_features",
    "max_leaf_nodes", "bootstrap", "class_weight", "max_samples", "random_state",
})
# Every type fitted.skops may construct (its schema is read first; anything else is refused).
TRUSTED_TYPES: Final[frozenset[str]] = frozenset({
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "numpy.ndarray", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
})

# No SNOMED CT concept for "cured after I-131 therapy" or "remission of hyperthyroidism" could be
# confirmed offline. DICOM PS3.16 (pydicom's copy) has SCT 765205004 "In remission" (CID 3772
# Health Status) and 413322009 "Problem resolved" (CID 3770 Problem Status): statuses of a patient
# or a problem, not the predicted outcome of one therapy, so private codes of the node's scheme
# are used; a site's card may carry its own.
GRAVES_LABELS: Final[tuple[Label, ...]] = (
    Label(key="not_cured", code_value="GD-I131-NOTCURED", coding_scheme="99THYAI",
          code_meaning="Graves' disease not cured by first I-131 therapy"),
    Label(key="cured", code_value="GD-I131-CURED", coding_scheme="99THYAI",
          code_meaning="Graves' disease cured by first I-131 therapy"),
)


class ResNet50Spec(BaseModel):
    """MONAI ``ResNet`` arguments of the ResNet50 (the paper's unless the card says otherwise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: Literal["bottleneck"] = "bottleneck"
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    block_inplanes: tuple[int, int, int, int] = PAPER_BLOCK_INPLANES

    @field_validator("layers", "block_inplanes")
    @classmethod
    def _positive(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if min(value) < 1:
            raise ValueError(f"must be positive, got {list(value)}")
        return value

    @property
    def features(self) -> int:
        """Width of the global-pool output (bottleneck expansion 4 x the last stage's planes)."""
        return BOTTLENECK_EXPANSION * self.block_inplanes[-1]


class GravesSpec(BaseModel):
    """The card's ``nm_graves`` section: input, network and the fitted parts' shapes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: int = Field(ge=32, le=1024)
    resnet50: ResNet50Spec = ResNet50Spec()
    n_features: int = Field(PAPER_N_FEATURES, ge=1)  # LASSO-selected deep features fed to the forest
    random_forest: dict[str, Any] = {}  # RandomForestClassifier keyword arguments, as fitted

    @field_validator("random_forest")
    @classmethod
    def _known_rf_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - RF_KEYS)
        if unknown:
            raise ValueError(f"unknown RandomForestClassifier arguments {unknown}; allowed {sorted(RF_KEYS)}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> "GravesSpec":
        if self.n_features > self.resnet50.features:
            raise ValueError(f"n_features {self.n_features} exceeds the {self.resnet50.features} deep features")
        return self


def graves_spec(card: ModelCard) -> GravesSpec:
    """The validated ``nm_graves`` section of a card (BundleError naming the field if invalid)."""
    raw = (card.model_extra or {}).get("nm_graves")
    if raw is None:
        raise BundleError(f"{card.ident}: model card has no 'nm_graves' section")
    try:
        return GravesSpec.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{card.ident}: invalid 'nm_graves' section: {exc}") from exc


class GravesResNet50(nn.Module):
    """ResNet50 on one-channel scintigrams: pooled features and a 2-way FC (not cured, cured).

    Shapes
    ------
    input      ``(B, C, H, W)``  float in [0, 1]
    features   ``(B, 4 * block_inplanes[-1])``  MONAI ``ResNet`` with ``feed_forward=False``
               (global average pool, no FC); 2,048 at the paper's widths
    logits     ``(B, 2)``  ``fc``

    Parameters
    ----------
    spec : ResNet50Spec
    in_channels : int
        1 for a planar scintigram.
    """

    def __init__(self, spec: ResNet50Spec | None = None, in_channels: int = 1) -> None:
        super().__init__()
        spec = spec or ResNet50Spec()
        self.backbone = ResNet(
            block=spec.block,
            layers=list(spec.layers),
            block_inplanes=list(spec.block_inplanes),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,  # torchvision's shortcut: 1x1 conv without bias, then batch norm
        )
        # zero-init the last BN of each residual branch (Goyal et al. 2017): every block starts as
        # an identity, which speeds up training from scratch
        for module in self.backbone.modules():
            if hasattr(module, "bn3") and isinstance(module.bn3, nn.BatchNorm2d):
                nn.init.zeros_(module.bn3.weight)
        self.fc = nn.Linear(spec.features, len(GRAVES_LABELS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, F)`` global-pool features."""
        out: torch.Tensor = self.backbone(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 2)`` logits."""
        out: torch.Tensor = self.fc(self.features(x))
        return out


def forward_features(
    net: GravesResNet50, x: torch.Tensor, device: torch.device, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Deep features ``(N, F)`` (float64) and the ResNet's P(cured) ``(N,)`` of inputs ``(N, 1, S, S)``.

    Eval mode, fp16 autocast on CUDA. Training and serving both use it (no train/serve skew).
    """
    cuda = device.type == "cuda"
    feats, probs = [], []
    net.eval()
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
        for i in range(0, len(x), batch):
            f = net.features(x[i : i + batch].to(device))
            logits = net.fc(f).float()
            feats.append(f.float().cpu())
            probs.append(torch.softmax(logits, dim=1)[:, CURED].cpu())
    return torch.cat(feats).numpy().astype(np.float64), torch.cat(probs).numpy().astype(np.float64)


@dataclass(frozen=True)
class FittedParts:
    """The scikit-learn parts fitted in training and the selected deep-feature columns."""

    scaler: StandardScaler  # on all F deep features
    forest: RandomForestClassifier  # on the selected standardised columns
    selected: tuple[int, ...]  # column indices into the deep features, by decreasing |LASSO coefficient|
    lasso: dict[str, Any]  # how they were chosen (alpha, coefficients), for the record


def feature_name(index: int) -> str:
    """``deep_0007``: the name of global-pool output ``index``."""
    return f"deep_{index:04d}"


def save_fitted(folder: Path, parts: FittedParts) -> None:
    """Write ``fitted.skops`` and ``selected_features.json`` under ``folder`` (the bundle root)."""
    import skops.io as sio

    sio.dump({"scaler": parts.scaler, "forest": parts.forest}, folder / FITTED_FILE)
    record = {
        "deep_features": int(parts.scaler.n_features_in_),
        "selected": [int(i) for i in parts.selected],
        "names": [feature_name(i) for i in parts.selected],
        "lasso": parts.lasso,
    }
    (folder / SELECTED_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


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
        scaler, forest = raw["scaler"], raw["forest"]
    except BundleError:
        raise
    except Exception as exc:  # not a zip, no schema, a schema skops cannot read, keys missing
        raise BundleError(f"{ident}: cannot load {FITTED_FILE}: {exc}") from exc
    if not isinstance(scaler, StandardScaler) or not isinstance(forest, RandomForestClassifier):
        raise BundleError(f"{ident}: {FITTED_FILE} must hold a StandardScaler and a RandomForestClassifier")
    try:
        record = json.loads((folder / SELECTED_FILE).read_text(encoding="utf-8"))
        selected = tuple(int(i) for i in record["selected"])
        lasso = dict(record.get("lasso", {}))
        n_deep = int(record["deep_features"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{ident}: cannot read {SELECTED_FILE}: {exc}") from exc
    problems = []
    if int(scaler.n_features_in_) != n_deep:
        problems.append(f"scaler has {scaler.n_features_in_} inputs, {SELECTED_FILE} says {n_deep} deep features")
    if not selected or len(set(selected)) != len(selected) or not all(0 <= i < n_deep for i in selected):
        problems.append(f"selected columns must be distinct indices in [0, {n_deep}), got {list(selected)}")
    if int(forest.n_features_in_) != len(selected):
        problems.append(f"forest has {forest.n_features_in_} inputs, {len(selected)} features selected")
    if [int(c) for c in forest.classes_] != [0, 1]:
        problems.append(f"forest classes must be [0, 1] (1: cured), got {list(forest.classes_)}")
    if problems:
        raise BundleError(f"{ident}: inconsistent {FITTED_FILE} / {SELECTED_FILE}: {'; '.join(problems)}")
    return FittedParts(scaler, forest, selected, lasso)


@dataclass(frozen=True)
class GravesPrediction:
    """The model's answer for one pre-treatment scintigram; knows nothing of DICOM encoding.

    Attributes
    ----------
    probability_cured : float
        P(cured) of the random forest on the LASSO-selected deep features (the paper's final model).
    resnet_probability : float
        P(cured) of the end-to-end ResNet50 alone.
    heatmap : numpy.ndarray
        Grad-CAM of the "cured" logit on ``backbone.layer4``, float32 in [0, 1], shaped like the
        source frame ``(rows, cols)``.
    frame_index : int or None
        0-based source frame used; ``None`` when all frames were summed (dynamic image).
    frame_choice : str
        Why that frame.
    threshold : float
        The card's decision threshold on ``probability_cured``.
    selected_features : int
        How many deep features the forest used.
    """

    probability_cured: float
    resnet_probability: float
    heatmap: np.ndarray
    frame_index: int | None
    frame_choice: str
    threshold: float
    selected_features: int

    @property
    def cured(self) -> bool:
        """Called cured: ``probability_cured >= threshold``."""
        return self.probability_cured >= self.threshold


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _card_file(bundle: Bundle, path: str) -> Path:
    if path not in {w.path for w in bundle.card.weights}:
        raise BundleError(f"{bundle.card.ident}: card lists no weights file {path} (so it is not verified)")
    return bundle.path / path


class NMGravesI131:
    """Seed-001 model: P(cure after a first I-131 therapy) from a Graves' disease scintigram.

    Parameters
    ----------
    net : GravesResNet50
        In eval mode on ``device``.
    parts : FittedParts
    card : ModelCard
    device : torch.device
    """

    def __init__(self, net: GravesResNet50, parts: FittedParts, card: ModelCard, device: torch.device) -> None:
        self.net = net
        self.parts = parts
        self.card = card
        self.spec = graves_spec(card)
        self.device = device
        expected = [lab.key for lab in GRAVES_LABELS]
        if card.label_keys != expected:
            raise BundleError(f"{card.ident}: labels must be {expected} (output order), got {card.label_keys}")
        self.threshold = float(card.decision_thresholds.get("cured", 0.5))
        self._columns = np.array(parts.selected, dtype=np.intp)
        self._lock = threading.Lock()  # CAM hooks live on the shared network: one pass at a time

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | None = None) -> "NMGravesI131":
        """Build the ResNet50, load its state dict and the fitted parts (both checksummed by the
        bundle loader), move to ``device`` (CUDA when available), eval mode.

        Raises
        ------
        model_zoo.errors.BundleError
            Unknown network, invalid ``nm_graves`` section, a file the card does not list, weights
            or fitted parts that do not load or do not fit the card.
        """
        card = bundle.card
        if card.network != NETWORK:
            raise BundleError(f"{card.ident}: unknown network {card.network!r}; expected {NETWORK!r}")
        spec = graves_spec(card)
        if spec.input_size != card.input.size:
            raise BundleError(f"{card.ident}: nm_graves.input_size {spec.input_size} != input.size {card.input.size}")
        dev = torch.device(device or default_device())
        net = GravesResNet50(spec.resnet50, in_channels=card.input.channels)
        try:
            state = torch.load(_card_file(bundle, RESNET_FILE), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:
            raise BundleError(f"{card.ident}: cannot load {RESNET_FILE}: {exc}") from exc
        _card_file(bundle, SELECTED_FILE)
        _card_file(bundle, FITTED_FILE)
        parts = load_fitted(bundle.path, card.ident)
        if int(parts.scaler.n_features_in_) != spec.resnet50.features:
            raise BundleError(
                f"{card.ident}: {FITTED_FILE} was fitted on {parts.scaler.n_features_in_} deep features, "
                f"the network gives {spec.resnet50.features}"
            )
        if len(parts.selected) != spec.n_features:
            raise BundleError(f"{card.ident}: {len(parts.selected)} features selected, card says {spec.n_features}")
        net.to(dev).eval()
        logger.info("model %s ready on %s (%d selected deep features)", card.ident, dev, len(parts.selected))
        return cls(net, parts, card, dev)

    def forest_probability(self, features: np.ndarray) -> np.ndarray:
        """Random-forest P(cured) ``(N,)`` of deep features ``(N, F)``: standardise, select, forest."""
        z = np.asarray(self.parts.scaler.transform(features), dtype=np.float64)[:, self._columns]
        return np.asarray(self.parts.forest.predict_proba(z)[:, CURED], dtype=np.float64)

    def predict(self, ds: Dataset) -> GravesPrediction:
        """Predict the outcome of a first I-131 therapy from one pre-treatment NM dataset.

        Raises
        ------
        model_zoo.errors.InputRejected
            The image cannot be used (see :func:`~model_zoo.nm_thyroid_dx.preprocess.prepare`), or
            the model gives no finite probability.
        """
        prepared = prepare(ds, self.spec.input_size)
        x = prepared.tensor.to(self.device)
        with self._lock:
            feats, resnet_p = forward_features(self.net, x, self.device)
            cam = grad_cam(self.net, x, CAM_LAYER, target=CURED)
        probability = float(self.forest_probability(feats)[0])
        resnet_probability = float(resnet_p[0])
        if not (math.isfinite(probability) and math.isfinite(resnet_probability)):
            raise InputRejected("nm_graves_i131 produced no finite probability for this image")
        heat = F.interpolate(
            torch.from_numpy(cam.heatmap)[None, None], size=prepared.shape, mode="bilinear", align_corners=False
        )[0, 0]
        return GravesPrediction(
            probability_cured=probability,
            resnet_probability=resnet_probability,
            heatmap=heat.clamp(0.0, 1.0).numpy().astype(np.float32),
            frame_index=prepared.frame_index,
            frame_choice=prepared.frame_choice,
            threshold=self.threshold,
            selected_features=len(self.parts.selected),
        )
