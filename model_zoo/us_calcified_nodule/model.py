"""Seed 004 at inference: benign vs malignant calcified thyroid nodule on a B-mode crop.

One bundle holds up to two networks of Chen et al. 2023, each with the paper's head
(FC 1024 -> 512 -> 512 -> 2, dropout 0.5): Xception (``models/xception.pt``, the paper's best) and
DenseNet169 (``models/densenet169.pt``). The card's ``us_calcified`` section
(:class:`USCalcifiedSpec`) says which are present, each one's input size and width, the crop
margin and the normalisation. Per nodule:

* the crop is the nodule mask's bounding rectangle grown by ``crop_margin`` of its height/width on
  each side and clipped to the B-mode region (the paper cropped the radiologists' rectangle);
* it is resized (aspect not kept, as the paper did) to the backbone's input size, replicated to
  3 channels and normalised with ImageNet mean/std;
* P(malignant) is the softmax of each chosen backbone, averaged over the chosen backbones;
* the heatmap is each backbone's Grad-CAM of the malignant logit on its last convolutional block,
  resized back onto the crop box and averaged (then rescaled to a peak of 1).

Which backbones run is the caller's choice (node configuration); ``None`` runs all in the bundle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from model_zoo.bundle import Bundle
from model_zoo.cam import grad_cam
from model_zoo.card import Label, ModelCard
from model_zoo.errors import BundleError, InputRejected
from model_zoo.nets import densenet2d, xception
from model_zoo.nets.densenet2d import densenet_classifier
from model_zoo.nets.xception import Xception

logger = logging.getLogger(__name__)

NETWORK: Final[str] = "xception+densenet169"
Backbone = Literal["xception", "densenet169"]
BACKBONES: Final[tuple[str, ...]] = ("xception", "densenet169")
WEIGHTS_FILES: Final[dict[str, str]] = {"xception": "models/xception.pt", "densenet169": "models/densenet169.pt"}
CAM_LAYERS: Final[dict[str, str]] = {"xception": xception.CAM_LAYER, "densenet169": densenet2d.CAM_LAYER}
PAPER_INPUT_SIZES: Final[dict[str, int]] = {"xception": xception.INPUT_SIZE, "densenet169": densenet2d.INPUT_SIZE}
MIN_INPUT_SIZES: Final[dict[str, int]] = {"xception": xception.MIN_INPUT_SIZE, "densenet169": densenet2d.MIN_INPUT_SIZE}
_NET_KEYS: Final[dict[str, frozenset[str]]] = {
    "xception": frozenset({"width", "dropout", "middle_blocks"}),
    "densenet169": frozenset({"init_features", "growth_rate", "dropout"}),
}
IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)

# Output classes in network order. The ground truth of the paper is the pathology result (surgery
# or FNA, Bethesda II/VI); SCT 30807003 "Benign" and 21594007 "Malignant" are the two results of
# DICOM CID 6063 (checked in pydicom's copy of PS3.16). "Neoplasm, benign" (SCT 3898006) would
# misname the many benign calcified nodules that are nodular goitre, not neoplasms.
US_CALCIFIED_LABELS: Final[tuple[Label, ...]] = (
    Label(key="benign", code_value="30807003", coding_scheme="SCT", code_meaning="Benign"),
    Label(key="malignant", code_value="21594007", coding_scheme="SCT", code_meaning="Malignant"),
)


class USCalcifiedSpec(BaseModel):
    """The card's ``us_calcified`` section: backbones present, their inputs and pre-processing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbones: tuple[Backbone, ...] = Field(min_length=1)
    input_sizes: dict[str, int] = Field(default_factory=lambda: dict(PAPER_INPUT_SIZES))
    xception: dict[str, Any] = {}  # Xception keyword arguments (empty: width 1.0, the paper's network)
    densenet169: dict[str, Any] = {}  # densenet_classifier keyword arguments (empty: 64 / 32, the paper's)
    crop_margin: float = Field(0.1, ge=0.0, le=1.0)  # of the box height/width, on each side
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, on grey in [0, 1] replicated to RGB
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _runnable(self) -> "USCalcifiedSpec":
        if len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"backbones must not repeat, got {list(self.backbones)}")
        unknown_sizes = sorted(set(self.input_sizes) - set(BACKBONES))
        if unknown_sizes:
            raise ValueError(f"input_sizes: unknown backbones {unknown_sizes}; known {list(BACKBONES)}")
        for b in self.backbones:
            size = self.input_size(b)
            if not MIN_INPUT_SIZES[b] <= size <= 1024:
                raise ValueError(f"input_sizes.{b} must lie in [{MIN_INPUT_SIZES[b]}, 1024], got {size}")
        for name in BACKBONES:
            unknown = sorted(set(self.network_kwargs(name)) - _NET_KEYS[name])
            if unknown:
                raise ValueError(f"{name}: unknown network arguments {unknown}; allowed {sorted(_NET_KEYS[name])}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    def input_size(self, backbone: str) -> int:
        """Square input side of ``backbone`` (the paper's 299 / 224 unless the card says otherwise)."""
        return int(self.input_sizes.get(backbone, PAPER_INPUT_SIZES[backbone]))

    def network_kwargs(self, backbone: str) -> dict[str, Any]:
        """Keyword arguments that build ``backbone`` as trained."""
        return dict(self.xception if backbone == "xception" else self.densenet169)


def us_spec(card: ModelCard) -> USCalcifiedSpec:
    """The validated ``us_calcified`` section of a card (BundleError naming the field if invalid)."""
    raw = (card.model_extra or {}).get("us_calcified")
    if raw is None:
        raise BundleError(f"{card.ident}: model card has no 'us_calcified' section")
    try:
        return USCalcifiedSpec.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{card.ident}: invalid 'us_calcified' section: {exc}") from exc


def build_network(backbone: str, spec: USCalcifiedSpec) -> nn.Module:
    """``backbone``'s network as the card describes it, untrained."""
    kwargs = spec.network_kwargs(backbone)
    if backbone == "xception":
        return Xception(**kwargs)
    if backbone == "densenet169":
        return densenet_classifier("densenet169", **kwargs)
    raise BundleError(f"unknown backbone {backbone!r}; known: {list(BACKBONES)}")


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def nodule_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """``(row0, col0, row1, col1)``, end exclusive: the mask's bounding rectangle grown by
    ``margin`` of its height (rows) and width (columns) on each side, clipped to the image.

    Raises
    ------
    model_zoo.errors.InputRejected
        The mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise InputRejected("the nodule mask is empty")
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    mr, mc = int(round(margin * (r1 - r0))), int(round(margin * (c1 - c0)))
    return max(r0 - mr, 0), max(c0 - mc, 0), min(r1 + mr, mask.shape[0]), min(c1 + mc, mask.shape[1])


def resize2d(image: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a 2D float image to ``shape`` (anti-aliased when shrinking), float32."""
    t = torch.as_tensor(image, dtype=torch.float32)[None, None]
    if tuple(t.shape[2:]) == tuple(shape):
        return t[0, 0].clone()
    shrink = shape[0] < t.shape[2] or shape[1] < t.shape[3]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=shrink)[0, 0]


def crop_input(bmode: np.ndarray, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The box of ``bmode`` resized to ``size`` x ``size`` (grey, float32 in [0, 1])."""
    r0, c0, r1, c1 = box
    return resize2d(bmode[r0:r1, c0:c1], (size, size)).clamp_(0.0, 1.0)


def to_network(grey: torch.Tensor, spec: USCalcifiedSpec) -> torch.Tensor:
    """``(S, S)`` or ``(N, S, S)`` grey in [0, 1] -> ``(N, 3, S, S)`` normalised network input."""
    g = grey[None] if grey.ndim == 2 else grey
    mean = torch.tensor(spec.mean, dtype=g.dtype, device=g.device)[None, :, None, None]
    std = torch.tensor(spec.std, dtype=g.dtype, device=g.device)[None, :, None, None]
    return (g[:, None].expand(-1, 3, -1, -1) - mean) / std


@dataclass(frozen=True)
class CalcifiedResult:
    """The malignancy score of one nodule.

    Attributes
    ----------
    probability : float
        P(malignant), the mean of the chosen backbones' softmax outputs.
    per_backbone : dict of str to float
        Each chosen backbone's P(malignant).
    backbones : tuple of str
        The backbones averaged, in the bundle's order.
    heatmap : numpy.ndarray
        Grad-CAM of the malignant logit, float32 in [0, 1], shaped like ``box``
        (``heatmap[r, c]`` is B-mode pixel ``(box[0] + r, box[1] + c)``).
    box : tuple of int
        ``(row0, col0, row1, col1)`` of the crop in B-mode pixels, end exclusive (margin included,
        clipped to the image).
    """

    probability: float
    per_backbone: dict[str, float]
    backbones: tuple[str, ...]
    heatmap: np.ndarray
    box: tuple[int, int, int, int]


class USCalcifiedNodule:
    """Seed-004 model: P(malignant) of a calcified thyroid nodule from its B-mode crop.

    Parameters
    ----------
    nets : dict of str to torch.nn.Module
        Backbone name -> network (eval mode, on ``device``), in the card's order.
    card : ModelCard
    device : torch.device
    """

    def __init__(self, nets: dict[str, nn.Module], card: ModelCard, device: torch.device) -> None:
        self.nets = nets
        self.card = card
        self.spec = us_spec(card)
        self.device = device
        keys = card.label_keys
        if sorted(keys) != ["benign", "malignant"]:
            raise BundleError(f"{card.ident}: labels must be 'benign' and 'malignant', got {keys}")
        self.malignant_index = keys.index("malignant")
        self.threshold = float(card.decision_thresholds.get("malignant", 0.5))
        self._lock = threading.Lock()  # CAM hooks live on the shared modules: one pass at a time

    @property
    def backbones(self) -> tuple[str, ...]:
        """The backbones this bundle holds."""
        return tuple(self.nets)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | None = None) -> "USCalcifiedNodule":
        """Build every backbone the card lists, load its weights, move to ``device``, eval mode.

        Parameters
        ----------
        bundle : Bundle
            From :func:`model_zoo.bundle.load_bundle` (checksums already verified).
        device : str, optional
            ``"cuda"`` when available, else ``"cpu"``.
        """
        card = bundle.card
        if card.network != NETWORK:
            raise BundleError(f"{card.ident}: unknown network {card.network!r}; expected {NETWORK!r}")
        spec = us_spec(card)
        dev = torch.device(device or default_device())
        files = {w.path: i for i, w in enumerate(card.weights)}
        nets: dict[str, nn.Module] = {}
        for backbone in spec.backbones:
            path = WEIGHTS_FILES[backbone]
            if path not in files:
                raise BundleError(f"{card.ident}: backbone {backbone!r} has no weights file {path} in the card")
            try:
                net = build_network(backbone, spec)
                state = torch.load(bundle.weights_path(files[path]), map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except (RuntimeError, OSError, ValueError, TypeError) as exc:
                raise BundleError(f"{card.ident}: cannot load {path}: {exc}") from exc
            nets[backbone] = net.to(dev).eval()
        logger.info("model %s ready on %s with %s", card.ident, dev, ", ".join(nets))
        return cls(nets, card, dev)

    def _chosen(self, backbones: Sequence[str] | None) -> tuple[str, ...]:
        if backbones is None:
            return self.backbones
        if isinstance(backbones, str):
            backbones = (backbones,)
        missing = [b for b in backbones if b not in self.nets]
        if missing:
            raise BundleError(
                f"{self.card.ident}: backbone(s) {missing} not in this bundle; it holds {list(self.backbones)}"
            )
        if not backbones:
            raise BundleError(f"{self.card.ident}: no backbone requested; it holds {list(self.backbones)}")
        return tuple(b for b in self.backbones if b in backbones)  # the bundle's order, no repeats

    def predict(self, bmode: np.ndarray, mask: np.ndarray, backbones: Sequence[str] | None = None) -> CalcifiedResult:
        """Score one nodule and explain the malignant class.

        Parameters
        ----------
        bmode : numpy.ndarray
            2D float B-mode region scaled to [0, 1] (values outside are clipped).
        mask : numpy.ndarray
            bool, same shape: the nodule.
        backbones : sequence of str, optional
            Backbones to average (a subset of :attr:`backbones`); all when omitted.

        Returns
        -------
        CalcifiedResult

        Raises
        ------
        model_zoo.errors.BundleError
            A requested backbone is not in the bundle.
        model_zoo.errors.InputRejected
            The mask is empty.
        ValueError
            ``bmode`` is not a 2D float array, or ``mask`` is not of its shape.
        """
        chosen = self._chosen(backbones)
        if bmode.ndim != 2 or not np.issubdtype(bmode.dtype, np.floating):
            raise ValueError(f"bmode must be a 2D float array in [0, 1], got {bmode.dtype} {bmode.shape}")
        if mask.shape != bmode.shape:
            raise ValueError(f"mask shape {mask.shape} differs from bmode shape {bmode.shape}")
        box = nodule_box(np.asarray(mask, dtype=bool), self.spec.crop_margin)
        box_shape = (box[2] - box[0], box[3] - box[1])
        grey = np.asarray(bmode, dtype=np.float32)
        per: dict[str, float] = {}
        heat = torch.zeros(box_shape, dtype=torch.float32)
        cuda = self.device.type == "cuda"
        with self._lock:
            for name in chosen:
                net = self.nets[name]
                x = to_network(crop_input(grey, box, self.spec.input_size(name)), self.spec).to(self.device)
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    logits = net(x)
                per[name] = float(torch.softmax(logits.float(), dim=1)[0, self.malignant_index])
                cam = grad_cam(net, x, CAM_LAYERS[name], target=self.malignant_index)
                heat += resize2d(cam.heatmap, box_shape).clamp_(0.0, 1.0)
        peak = float(heat.max())
        heatmap = (heat / peak if peak > 0 else heat).clamp_(0.0, 1.0).numpy().astype(np.float32)
        probability = float(np.mean([per[name] for name in chosen]))
        logger.debug("calcified-nodule score %.3f from %s on a %dx%d box", probability, per, *box_shape)
        return CalcifiedResult(probability=probability, per_backbone=per, backbones=chosen, heatmap=heatmap, box=box)
