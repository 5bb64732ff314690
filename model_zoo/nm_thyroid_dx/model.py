"""Serving wrapper: bundle -> network -> prediction with a Grad-CAM heatmap."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from model_zoo.bundle import Bundle
from model_zoo.cam import grad_cam
from model_zoo.card import ModelCard
from model_zoo.errors import BundleError
from model_zoo.nets.scinti_resnet34 import CAM_LAYER, ScintiResNet34
from model_zoo.nm_thyroid_dx.preprocess import prepare

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NMPrediction:
    """Result for one NM image; knows nothing of DICOM encoding.

    Attributes
    ----------
    frame_index : int or None
        0-based source frame used; ``None`` when all frames were summed (dynamic image).
    frame_choice : str
        Why that frame.
    probabilities : dict of str to float
        Softmax probabilities in the card's label order.
    label : str
        Arg-max label key.
    heatmap : numpy.ndarray
        Grad-CAM of the predicted class on ``backbone.layer4``, float32 in [0, 1], shaped like
        the source frame ``(rows, cols)``.
    """

    frame_index: int | None
    frame_choice: str
    probabilities: dict[str, float]
    label: str
    heatmap: np.ndarray


def default_device() -> str:
    """``"cuda"`` when available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_network(card: ModelCard) -> ScintiResNet34:
    """The network the card names, untrained."""
    if card.network != "scinti_resnet34":
        raise BundleError(f"{card.ident}: unknown network {card.network!r}")
    return ScintiResNet34(n_classes=len(card.labels), in_channels=card.input.channels)


class NMThyroidDx:
    """4-class thyroid scintigraphy classifier.

    Parameters
    ----------
    net : ScintiResNet34
        In eval mode on ``device``.
    card : ModelCard
    device : torch.device
    """

    def __init__(self, net: ScintiResNet34, card: ModelCard, device: torch.device) -> None:
        self.net = net
        self.card = card
        self.device = device
        self._cam_lock = threading.Lock()  # hooks are per module: one CAM pass at a time

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str | None = None) -> "NMThyroidDx":
        """Build the network, load the bundle's state dict, move to ``device``, eval mode.

        Parameters
        ----------
        bundle : Bundle
            From :func:`model_zoo.bundle.load_bundle` (checksums already verified).
        device : str, optional
            ``"cuda"`` when available, else ``"cpu"``.
        """
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

    def predict(self, ds: Dataset) -> NMPrediction:
        """Classify one NM dataset and explain the predicted class.

        Raises
        ------
        model_zoo.errors.InputRejected
            The image cannot be used (see :func:`~model_zoo.nm_thyroid_dx.preprocess.prepare`).
        """
        prepared = prepare(ds, self.card.input.size)
        x = prepared.tensor.to(self.device)
        with torch.no_grad():
            probs = F.softmax(self.net(x), dim=1)[0].cpu().numpy()
        keys = self.card.label_keys
        target = int(np.argmax(probs))
        with self._cam_lock:
            cam = grad_cam(self.net, x, CAM_LAYER, target=target)
        heat = torch.from_numpy(cam.heatmap)[None, None]
        heat = F.interpolate(heat, size=prepared.shape, mode="bilinear", align_corners=False)[0, 0]
        heatmap = heat.clamp(0.0, 1.0).numpy().astype(np.float32)
        return NMPrediction(
            frame_index=prepared.frame_index,
            frame_choice=prepared.frame_choice,
            probabilities={k: float(p) for k, p in zip(keys, probs)},
            label=keys[target],
            heatmap=heatmap,
        )
