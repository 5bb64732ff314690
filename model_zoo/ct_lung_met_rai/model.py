"""Seed 000 at inference: SE V-Net lung-lesion segmentation + 3D SE-ResNet RAI-refractory classifier.

One bundle holds both networks (``models/se_vnet.pt``, ``models/se_resnet3d.pt``, in that order in
the card's ``weights``) and a ``ct`` section with the pre-processing the paper specifies:

* the CT resampled to 1 mm isotropic (:func:`~model_zoo.ct_lung_met_rai.volume.resample_iso`)
  and normalised to [0, 1] from a HU window;
* segmentation by sliding-window inference (MONAI) over the lung fields' bounding box only;
  Gaussian-weighted window blending; mixed precision and batched windows on CUDA;
* lesions = connected components (:mod:`~model_zoo.ct_lung_met_rai.lesions`), measured on the
  source voxels after mapping the probability back with sub-voxel (trilinear) accuracy;
* per lesion a (1, 32, 48, 48) patch at 1 mm around its centre into the classifier, and a 3D
  Grad-CAM of the RAI-refractory logit.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage

from model_zoo.bundle import Bundle
from model_zoo.cam import grad_cam
from model_zoo.card import ModelCard
from model_zoo.ct_lung_met_rai.lesions import Measurement, components, largest_component, measure, side_of
from model_zoo.ct_lung_met_rai.volume import CTVolume, IsoVolume, iso_to_canonical, lung_mask, resample_iso
from model_zoo.errors import BundleError
from model_zoo.nets.se_resnet3d import CAM_LAYER, INPUT_SHAPE, SEResNet3d
from model_zoo.nets.se_vnet import SEVNet

logger = logging.getLogger(__name__)

SEG_WEIGHTS = 0  # index in card.weights
CLS_WEIGHTS = 1


class CTSpec(BaseModel):
    """The card's ``ct`` section: pre-processing and inference settings of seed 000."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spacing_mm: float = Field(1.0, gt=0.2, le=4.0)
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    window: int = Field(96, ge=16, le=256)  # sliding-window side, voxels of the isotropic grid
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    patch: tuple[int, int, int] = (32, 48, 48)
    seg_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_lesion_mm3: float = Field(8.0, ge=0.0)
    lung_margin_mm: float = Field(6.0, ge=0.0)
    se_vnet: dict[str, Any] = {}  # SEVNet keyword arguments (empty: the paper-size V-Net)
    se_resnet3d: dict[str, Any] = {}  # SEResNet3d keyword arguments (empty: the paper's 64-128-256-512)

    @model_validator(mode="after")
    def _runnable(self) -> "CTSpec":
        if tuple(self.patch) != tuple(INPUT_SHAPE[1:]):
            raise ValueError(f"patch must be {tuple(INPUT_SHAPE[1:])}, the classifier's input, got {tuple(self.patch)}")
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        return self


def ct_spec(card: ModelCard) -> CTSpec:
    """The validated ``ct`` section of a card (BundleError naming the field if invalid)."""
    raw = (card.model_extra or {}).get("ct")
    if raw is None:
        raise BundleError(f"{card.ident}: model card has no 'ct' section")
    try:
        return CTSpec.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{card.ident}: invalid 'ct' section: {exc}") from exc


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def normalise(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU clipped to ``window`` and scaled to [0, 1] (float32)."""
    lo, hi = window
    out = np.clip(hu, lo, hi, dtype=np.float32) if hu.dtype == np.float32 else np.clip(hu, lo, hi).astype(np.float32)
    out -= lo
    out /= hi - lo
    return out


def extract_patch(volume: np.ndarray, centre: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """A ``size`` patch of ``volume`` centred on index ``centre`` (rounded), padded with ``fill``."""
    out = np.full(size, fill, dtype=np.float32)
    start = np.round(centre).astype(int) - np.asarray(size) // 2
    src, dst = [], []
    for axis in range(3):
        a0, a1 = start[axis], start[axis] + size[axis]
        s0, s1 = max(a0, 0), min(a1, volume.shape[axis])
        if s1 <= s0:
            return out
        src.append(slice(s0, s1))
        dst.append(slice(s0 - a0, s1 - a0))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _midline_x(iso: IsoVolume, lungs: np.ndarray) -> float:
    """Patient x (mm) of the body's midline on the slices holding lung: the middle of the body's
    left-right extent there (a lung centroid would sit inside the remaining lung of a patient with one)."""
    ks = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if len(ks) == 0:
        return 0.0
    body = iso.hu[ks[0] : ks[-1] + 1 : 4, ::4, ::4] > -500
    cols = np.nonzero(body.any(axis=(0, 1)))[0] * 4
    rows = np.nonzero(body.any(axis=(0, 2)))[0] * 4
    if len(cols) == 0:
        return 0.0
    centre = np.array([0.5 * (ks[0] + ks[-1]), 0.5 * (rows[0] + rows[-1]), 0.5 * (cols[0] + cols[-1]), 1.0])
    return float((iso.affine @ centre)[0])


@dataclass(frozen=True)
class LesionFinding:
    """One lesion on the canonical grid of the CT volume (before mapping to the source grid)."""

    measurement: Measurement
    side: str
    probability: float
    box: tuple[slice, slice, slice]  # on the canonical grid
    mask: np.ndarray  # bool, the box's shape
    centre_index: tuple[float, float, float]  # canonical index of the centre
    heatmap_slice: np.ndarray  # Grad-CAM on the canonical axial slice through the centre (rows, cols)


@dataclass(frozen=True)
class CTAnalysis:
    lesions: tuple[LesionFinding, ...]
    lung_volume_ml: float
    seconds: dict[str, float]


def build_networks(card: ModelCard) -> tuple[SEVNet, SEResNet3d]:
    """The two networks the card describes, untrained."""
    if card.network != "se_vnet+se_resnet3d":
        raise BundleError(f"{card.ident}: unknown network {card.network!r}")
    spec = ct_spec(card)
    return SEVNet(**spec.se_vnet), SEResNet3d(**spec.se_resnet3d)


class CTLungMetRAI:
    """Seed-000 CT model: find lung lesions, measure them, score RAI-refractory status."""

    def __init__(self, seg: SEVNet, cls: SEResNet3d, card: ModelCard, device: torch.device) -> None:
        self.seg = seg
        self.cls = cls
        self.card = card
        self.spec = ct_spec(card)
        self.device = device
        self.threshold = float(card.decision_thresholds.get("refractory", 0.5))
        self._cam_lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | None = None) -> "CTLungMetRAI":
        """Build both networks, load their state dicts, move to ``device``, eval mode."""
        dev = torch.device(device or default_device())
        seg, clf = build_networks(bundle.card)
        for index, net in ((SEG_WEIGHTS, seg), (CLS_WEIGHTS, clf)):
            if index >= len(bundle.card.weights):
                raise BundleError(f"{bundle.card.ident}: card lists no weights file #{index + 1}")
            try:
                state = torch.load(bundle.weights_path(index), map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except (RuntimeError, OSError, ValueError) as exc:
                raise BundleError(f"{bundle.card.ident}: cannot load {bundle.card.weights[index].path}: {exc}") from exc
            net.to(dev).eval()
        logger.info("model %s ready on %s", bundle.card.ident, dev)
        return cls(seg, clf, bundle.card, dev)

    # -- segmentation -----------------------------------------------------------------------
    def segment(self, iso: IsoVolume, lungs: np.ndarray) -> np.ndarray:
        """Lesion probability on the isotropic grid (zero outside the lungs' bounding box)."""
        from monai.inferers import sliding_window_inference

        spec = self.spec
        prob = np.zeros(iso.hu.shape, dtype=np.float32)
        if not lungs.any():
            return prob
        margin = int(round(spec.lung_margin_mm / iso.spacing_mm))
        box = ndimage.find_objects(lungs.astype(np.uint8))[0]
        box = tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, lungs.shape))
        x = torch.from_numpy(normalise(iso.hu[box], spec.hu_window))[None, None]
        cuda = self.device.type == "cuda"
        roi = tuple(min(spec.window, max(16, s)) for s in x.shape[2:])
        roi = tuple(max(16, (r // 16) * 16) for r in roi)  # V-Net: divisible by 2^4
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
            logits = sliding_window_inference(
                x,
                roi_size=roi,
                sw_batch_size=8 if cuda else 2,  # CPU: batch-1 3D convolutions take a slow path
                predictor=self.seg,
                overlap=spec.overlap,
                mode="gaussian",
                padding_mode="constant",
                cval=0.0,
                sw_device=self.device,
                device="cpu",
            )
        assert isinstance(logits, torch.Tensor)
        prob[box] = torch.sigmoid(logits.float())[0, 0].numpy()
        return prob

    # -- classification ---------------------------------------------------------------------
    def classify(self, hu_iso: np.ndarray, centre_iso: np.ndarray) -> tuple[float, np.ndarray]:
        """RAI-refractory probability of the lesion centred at ``centre_iso`` and its 3D Grad-CAM."""
        lo = self.spec.hu_window[0]
        patch = normalise(extract_patch(hu_iso, centre_iso, self.spec.patch, fill=lo), self.spec.hu_window)
        x = torch.from_numpy(patch)[None, None].to(self.device)
        with self._cam_lock:
            cam = grad_cam(self.cls, x, CAM_LAYER, target=0)
        probability = float(torch.sigmoid(torch.tensor(cam.logits[0])))
        return probability, cam.heatmap

    # -- the whole analysis -----------------------------------------------------------------
    def analyse(self, volume: CTVolume, iso: IsoVolume | None = None, lungs: np.ndarray | None = None) -> CTAnalysis:
        """Segment, cut into lesions, measure on the source voxels, classify, explain."""
        import time

        t0 = time.monotonic()
        spec = self.spec
        iso = iso if iso is not None else resample_iso(volume, spec.spacing_mm)
        lungs = lungs if lungs is not None else lung_mask(iso)
        t1 = time.monotonic()
        prob = self.segment(iso, lungs)
        t2 = time.monotonic()
        lung_zone = ndimage.binary_dilation(lungs, iterations=max(1, int(round(3 / iso.spacing_mm))))
        found = components((prob >= spec.seg_threshold) & lung_zone, iso.spacing_mm, spec.min_lesion_mm3)
        to_canonical = np.linalg.inv(volume.affine) @ iso.affine
        midline_x = _midline_x(iso, lungs)
        lesions = []
        for iso_box, comp in found:
            finding = self._lesion(volume, iso, prob, iso_box, comp, to_canonical, midline_x)
            if finding is not None:
                lesions.append(finding)
        t3 = time.monotonic()
        lung_ml = float(lungs.sum()) * iso.spacing_mm**3 / 1000.0
        logger.info("CT analysis: %d lesion(s); lungs %.0f mL; %.1f s prepare, %.1f s segment, %.1f s lesions",
                    len(lesions), lung_ml, t1 - t0, t2 - t1, t3 - t2)
        return CTAnalysis(tuple(lesions), lung_ml, {"prepare": t1 - t0, "segment": t2 - t1, "lesions": t3 - t2})

    def _lesion(
        self,
        volume: CTVolume,
        iso: IsoVolume,
        prob: np.ndarray,
        iso_box: tuple[slice, slice, slice],
        comp: np.ndarray,
        to_canonical: np.ndarray,
        midline_x: float,
    ) -> LesionFinding | None:
        # This component's probability only, on a crop grown by 3 voxels (so that its border is
        # zero: iso_to_canonical extends edges): the component dilated by 2 voxels for its
        # sub-voxel edge, minus any other lesion's above-threshold voxels.
        grow = 2
        big = tuple(slice(max(b.start - grow - 1, 0), min(b.stop + grow + 1, n)) for b, n in zip(iso_box, prob.shape))
        core = np.zeros([b.stop - b.start for b in big], dtype=bool)
        inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(iso_box, big))
        core[inner] = comp
        own = ndimage.binary_dilation(core, iterations=grow)
        crop = prob[big]
        local = np.where((crop >= self.spec.seg_threshold) & ~core, 0.0, crop * own).astype(np.float32)
        shift = np.eye(4)
        shift[:3, 3] = [b.start for b in big]
        iso_crop = dataclasses.replace(iso, hu=iso.hu[big], affine=iso.affine @ shift)
        # the box on the canonical grid: map the iso box corners
        corners = np.array([[b.start - 1, b.stop] for b in big], dtype=np.float64)
        pts = np.array([[corners[0, i], corners[1, j], corners[2, k], 1.0]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        can = (to_canonical @ pts.T).T[:, :3]
        lo = np.maximum(np.floor(can.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(can.max(axis=0)).astype(int) + 1, np.asarray(volume.hu.shape))
        box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))
        p_can = iso_to_canonical(local, iso_crop, volume, box)
        mask = largest_component(p_can >= self.spec.seg_threshold)
        if not mask.any():
            return None
        origin = (box[0].start, box[1].start, box[2].start)
        m = measure(mask, volume.affine, origin)
        centre_index = np.argwhere(mask).mean(axis=0) + np.asarray(origin)
        # classifier patch centred on the lesion centre, on the iso grid
        centre_iso = (np.linalg.inv(iso.affine) @ np.array([*m.centre_mm, 1.0]))[:3]
        probability, cam = self.classify(iso.hu, centre_iso)
        heat = self._heatmap_slice(volume, iso, cam, centre_iso, int(round(centre_index[0])))
        return LesionFinding(
            measurement=m,
            side=side_of(m.centre_mm[0], midline_x),
            probability=probability,
            box=box,
            mask=mask,
            centre_index=(float(centre_index[0]), float(centre_index[1]), float(centre_index[2])),
            heatmap_slice=heat,
        )

    def _heatmap_slice(
        self, volume: CTVolume, iso: IsoVolume, cam: np.ndarray, centre_iso: np.ndarray, k: int
    ) -> np.ndarray:
        """The 3D CAM (on the classifier patch) sampled on canonical axial slice ``k``."""
        rows, cols = volume.hu.shape[1:]
        r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
        pts = np.stack([np.full(r.size, float(k)), r.ravel(), c.ravel(), np.ones(r.size)])
        to_iso = np.linalg.inv(iso.affine) @ volume.affine
        iso_idx = (to_iso @ pts)[:3]
        start = np.round(centre_iso) - np.asarray(self.spec.patch) // 2
        patch_idx = iso_idx - start[:, None]
        heat = ndimage.map_coordinates(cam, patch_idx, order=1, mode="constant", cval=0.0)
        return np.clip(heat.reshape(rows, cols), 0.0, 1.0).astype(np.float32)

