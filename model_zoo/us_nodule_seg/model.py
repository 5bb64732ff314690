"""Thyroid-nodule segmentation on a B-mode ultrasound image (2D MONAI residual UNet).

The seed studies (004, 002) cropped hand-drawn nodule outlines; this model finds them. One
bundle holds the network (``models/unet.pt``) and a ``us_seg`` card section
(:class:`USSegSpec`) with the pre- and post-processing:

* the B-mode region (float32 in [0, 1]) resized so that its longer side is ``size`` pixels,
  keeping its aspect ratio (bilinear, anti-aliased), then padded at the bottom and right with
  black to a multiple of ``pad_multiple`` (the UNet's total stride);
* intensities standardised over the region (``zscore``) or kept in [0, 1] (``none``);
* the nodule probability (sigmoid of the one output channel, optionally averaged with the
  left-right flipped pass) mapped back onto the region's own pixels with bilinear interpolation
  *before* thresholding, so the outline keeps sub-pixel accuracy;
* nodules = 8-connected components of ``p >= decision_thresholds["nodule"]``, holes filled,
  at least ``min_area_mm2`` (``min_area_px`` source pixels when the image is uncalibrated),
  largest first, at most ``max_nodules``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage

from model_zoo.bundle import Bundle
from model_zoo.card import Label, ModelCard
from model_zoo.errors import BundleError, InputRejected

logger = logging.getLogger(__name__)

NETWORK = "monai_unet2d"
NODULE = "nodule"  # the label key whose decision threshold cuts the probability map
MIN_REGION_PX = 16  # smaller B-mode regions are refused
# The site-size network: MONAI UNet keyword arguments other than spatial_dims / in / out channels.
SITE_UNET: dict[str, Any] = {
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "batch",
}
_FIXED_KEYS = frozenset({"spatial_dims", "in_channels", "out_channels"})
_EIGHT = np.ones((3, 3), dtype=bool)

# Output classes (the card requires two): background, and the nodule (SNOMED CT 237495005 and
# DICOM 125040, both in PS3.16 CID 12322 as shipped in pydicom's code dictionaries).
US_SEG_LABELS: Final[tuple[Label, ...]] = (
    Label(key="background", code_value="125040", coding_scheme="DCM", code_meaning="Background"),
    Label(key=NODULE, code_value="237495005", coding_scheme="SCT", code_meaning="Thyroid nodule"),
)


class USSegSpec(BaseModel):
    """The card's ``us_seg`` section: network, working size and post-processing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unet: dict[str, Any] = Field(default_factory=dict)  # MONAI UNet kwargs; empty: SITE_UNET
    size: int = Field(256, ge=32, le=1024)  # longer side of the working image, pixels
    pad_multiple: int = Field(16, ge=1, le=256)  # working image padded to a multiple of this
    normalisation: Literal["zscore", "none"] = "zscore"
    min_area_mm2: float = Field(4.0, ge=0.0)  # smaller components are dropped (calibrated image)
    min_area_px: int = Field(300, ge=0)  # the same in source pixels for an uncalibrated image
    max_nodules: int = Field(4, ge=1, le=64)
    fill_holes: bool = True
    flip_tta: bool = False  # average with the left-right flipped pass
    amp: bool = True  # float16 autocast on CUDA

    @model_validator(mode="after")
    def _runnable(self) -> "USSegSpec":
        fixed = sorted(_FIXED_KEYS & set(self.unet))
        if fixed:
            raise ValueError(f"unet: {fixed} are fixed by the model (2D, 1 channel in, 1 out)")
        stride = total_stride(self.unet_kwargs())
        if self.pad_multiple % stride:
            raise ValueError(f"pad_multiple {self.pad_multiple} is not a multiple of the UNet's total stride {stride}")
        return self

    def unet_kwargs(self) -> dict[str, Any]:
        """The full MONAI ``UNet`` keyword arguments."""
        return {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, **(self.unet or SITE_UNET)}


def total_stride(kwargs: dict[str, Any]) -> int:
    """Product of a UNet's strides (its input sides must be multiples of it)."""
    strides = kwargs.get("strides", [])
    try:
        return int(math.prod(int(np.prod(s)) for s in strides)) or 1
    except (TypeError, ValueError):
        raise ValueError(f"unet.strides must be a list of integers, got {strides!r}") from None


def us_seg_spec(card: ModelCard) -> USSegSpec:
    """The validated ``us_seg`` section of a card (BundleError naming the field if invalid)."""
    raw = (card.model_extra or {}).get("us_seg")
    if raw is None:
        raise BundleError(f"{card.ident}: model card has no 'us_seg' section")
    try:
        return USSegSpec.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{card.ident}: invalid 'us_seg' section: {exc}") from exc


def build_network(card: ModelCard) -> UNet:
    """The untrained UNet the card describes."""
    if card.network != NETWORK:
        raise BundleError(f"{card.ident}: unknown network {card.network!r} (expected {NETWORK!r})")
    spec = us_seg_spec(card)
    try:
        return UNet(**spec.unet_kwargs())
    except (TypeError, ValueError, AssertionError, NotImplementedError) as exc:
        raise BundleError(f"{card.ident}: us_seg.unet does not build a MONAI UNet: {exc}") from exc


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- pre-processing shared with training ------------------------------------------------------
def working_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """(rows, cols) of a region of ``shape`` resized so that its longer side is ``size``."""
    h, w = shape
    scale = size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize_pad(images: torch.Tensor, size: int, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize ``(n, c, h, w)`` images to the working size (aspect kept) and pad bottom/right with 0.

    Returns the padded batch and the resized (unpadded) ``(rows, cols)``. Anti-aliased bilinear,
    so that a binary mask becomes its area fraction (a soft training target).
    """
    hr, wr = working_shape((int(images.shape[-2]), int(images.shape[-1])), size)
    x = F.interpolate(images, size=(hr, wr), mode="bilinear", align_corners=False, antialias=True)
    hp, wp = -(-hr // multiple) * multiple, -(-wr // multiple) * multiple
    return F.pad(x, (0, wp - wr, 0, hp - hr)), (hr, wr)


def normalise(x: torch.Tensor, valid: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-image intensity normalisation of ``(n, 1, h, w)`` images, statistics over ``valid`` pixels.

    ``zscore``: (x - mean) / std over the valid pixels; ``none``: unchanged. Padding becomes
    the value of black after normalisation.
    """
    if mode == "none":
        return x
    v = valid.to(x.dtype)
    count = v.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * v).sum(dim=(1, 2, 3), keepdim=True) / count
    var = (((x - mean) * v) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
    return (x - mean) / var.sqrt().clamp_min(1e-3)


def _flip_valid(x: torch.Tensor, width: int) -> torch.Tensor:
    """Left-right flip of the first ``width`` columns (the image), the padding left in place."""
    out = x.clone()
    out[..., :width] = x[..., :width].flip(-1)
    return out


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoduleMask:
    """One segmented nodule on the B-mode region's pixel grid.

    Attributes
    ----------
    mask : numpy.ndarray
        bool, the whole region's shape ``(h, w)``.
    box : tuple of int
        ``(row0, col0, row1, col1)`` of the mask in region pixels, end exclusive.
    probability : float
        Mean nodule probability inside the mask.
    area_px : int
        Pixels in the mask (region pixels).
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    probability: float
    area_px: int


class USNoduleSeg:
    """2D thyroid-nodule segmentation of a B-mode region.

    Parameters
    ----------
    net : monai.networks.nets.UNet
        In eval mode on ``device``.
    card : ModelCard
    device : torch.device
    """

    def __init__(self, net: UNet, card: ModelCard, device: torch.device) -> None:
        self.net = net
        self.card = card
        self.spec = us_seg_spec(card)
        self.device = device
        threshold = card.decision_thresholds.get(NODULE)
        if threshold is None or not 0.0 < threshold < 1.0:
            raise BundleError(f"{card.ident}: decision_thresholds must give '{NODULE}' in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self._lock = threading.Lock()  # one forward pass at a time on the shared network

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | None = None) -> "USNoduleSeg":
        """Build the UNet, load ``card.weights[0]``, move it to ``device`` (CUDA if any), eval mode."""
        dev = torch.device(device or default_device())
        net = build_network(bundle.card)
        try:
            state = torch.load(bundle.weights_path(0), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:
            raise BundleError(f"{bundle.card.ident}: cannot load {bundle.card.weights[0].path}: {exc}") from exc
        net.to(dev).eval()
        logger.info("model %s ready on %s", bundle.card.ident, dev)
        return cls(net, bundle.card, dev)

    def probability(self, bmode: np.ndarray) -> np.ndarray:
        """Nodule probability on the region's own pixels, float32 ``(h, w)`` in [0, 1].

        Raises
        ------
        InputRejected
            Not a 2D image, smaller than 16 pixels a side, or not finite.
        """
        img = np.asarray(bmode)
        if img.ndim != 2:
            raise InputRejected(f"B-mode region must be 2D (rows, cols), got shape {img.shape}")
        if min(img.shape) < MIN_REGION_PX:
            raise InputRejected(f"B-mode region {img.shape[0]}x{img.shape[1]} is too small to segment")
        if not np.isfinite(img).all():
            raise InputRejected("B-mode region holds non-finite values")
        spec = self.spec
        h, w = img.shape
        raw = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
        x, (hr, wr) = resize_pad(raw, spec.size, spec.pad_multiple)
        valid = torch.zeros_like(x, dtype=torch.bool)
        valid[..., :hr, :wr] = True
        x = normalise(x, valid, spec.normalisation).to(self.device)
        cuda = self.device.type == "cuda"
        with self._lock, torch.inference_mode(), torch.autocast(
            device_type="cuda", dtype=torch.float16, enabled=cuda and spec.amp
        ):
            batch = torch.cat([x, _flip_valid(x, wr)]) if spec.flip_tta else x
            prob = torch.sigmoid(self.net(batch).float())
            if spec.flip_tta:  # the flipped pass flipped back; padding stays at the right
                prob = 0.5 * (prob[:1] + _flip_valid(prob[1:], wr))
        prob = prob[..., :hr, :wr].float().cpu()
        out = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        return out[0, 0].clamp_(0.0, 1.0).numpy()

    def segment(self, bmode: np.ndarray, spacing_mm: tuple[float, float] | None) -> list[NoduleMask]:
        """Nodules on a B-mode region, largest first.

        Parameters
        ----------
        bmode : numpy.ndarray
            float32 ``(h, w)`` in [0, 1]: the B-mode region only.
        spacing_mm : tuple of float or None
            ``(row, column)`` pixel size in mm; ``None`` for an uncalibrated image, whose minimum
            area is then ``min_area_px`` pixels.

        Returns
        -------
        list of NoduleMask
            At most ``max_nodules``, each with a filled, 8-connected mask.
        """
        prob = self.probability(bmode)
        return self.components(prob, spacing_mm)

    def components(self, prob: np.ndarray, spacing_mm: tuple[float, float] | None) -> list[NoduleMask]:
        """Threshold a region-sized probability map into nodules (see :meth:`segment`)."""
        spec = self.spec
        if spacing_mm is None:
            min_px = float(spec.min_area_px)
        else:
            dr, dc = (float(s) for s in spacing_mm)
            if not (dr > 0 and dc > 0 and math.isfinite(dr * dc)):
                raise InputRejected(f"pixel spacing must be positive, got {spacing_mm}")
            min_px = spec.min_area_mm2 / (dr * dc)
        labels, n = ndimage.label(prob >= self.threshold, structure=_EIGHT)
        found: list[NoduleMask] = []
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            local = labels[sl] == i
            if spec.fill_holes:
                local = ndimage.binary_fill_holes(local)
            area = int(local.sum())
            if area < min_px or area == 0:
                continue
            mask = np.zeros(prob.shape, dtype=bool)
            mask[sl] = local
            box = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)  # the component spans its slice
            found.append(NoduleMask(mask, box, float(prob[sl][local].mean()), area))
        found.sort(key=lambda m: (-m.area_px, m.box))
        if len(found) > spec.max_nodules:
            logger.info("%d nodule candidates, keeping the %d largest", len(found), spec.max_nodules)
        return found[: spec.max_nodules]
