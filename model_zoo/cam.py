"""Grad-CAM on a named layer, with hooks that never outlive the call.

MONAI's ``GradCAM`` registers hooks on the model it wraps and never removes them; on a model
shared by a serving process they would pile up. Here a forward hook captures the layer's
activation for the duration of one call and is removed in a ``finally``. The gradient of the
class score is taken with ``torch.autograd.grad`` with respect to that captured activation,
which is the gradient a backward hook would see, without accumulating ``.grad`` on the
parameters of the shared model and without the caveats of full backward hooks around in-place
operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class _Capture:
    activation: torch.Tensor | None = None
    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)


@contextmanager
def capture_activation(model: nn.Module, layer_name: str) -> Iterator[_Capture]:
    """Capture ``layer_name``'s output during the ``with`` block; always unhook afterwards.

    Raises
    ------
    KeyError
        No submodule of that name.
    """
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise KeyError(f"no layer named {layer_name!r} in {type(model).__name__}")
    layer = modules[layer_name]
    cap = _Capture()

    def _hook(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        cap.activation = out

    cap.handles.append(layer.register_forward_hook(_hook))
    try:
        yield cap
    finally:
        for handle in cap.handles:
            handle.remove()
        cap.handles.clear()


@dataclass(frozen=True)
class CamResult:
    """One Grad-CAM map.

    Attributes
    ----------
    heatmap : numpy.ndarray
        ``(H, W)`` or ``(D, H, W)`` float32 in [0, 1], the input's spatial size.
    target : int
        Class index explained.
    logits : numpy.ndarray
        ``(n_classes,)`` float32 logits of the same forward pass.
    """

    heatmap: np.ndarray
    target: int
    logits: np.ndarray


def grad_cam(model: nn.Module, x: torch.Tensor, layer_name: str, target: int | None = None) -> CamResult:
    """Grad-CAM (Selvaraju et al. 2017) for one 2D image or 3D volume.

    Parameters
    ----------
    model : torch.nn.Module
        Left in the mode it is in (use eval mode for inference); its parameters' ``.grad`` are
        not touched.
    x : torch.Tensor
        ``(1, C, H, W)`` or ``(1, C, D, H, W)`` on the model's device.
    layer_name : str
        Dotted module name, e.g. ``"backbone.layer4"``.
    target : int, optional
        Class to explain; the arg-max class when omitted.

    Returns
    -------
    CamResult
    """
    if x.ndim not in (4, 5) or x.shape[0] != 1:
        raise ValueError(f"grad_cam takes one image (1, C, H, W) or volume (1, C, D, H, W), got {tuple(x.shape)}")
    spatial = tuple(range(2, x.ndim))
    x = x.detach().requires_grad_(True)  # activations need a graph even if weights are frozen
    with torch.enable_grad(), capture_activation(model, layer_name) as cap:
        logits = model(x)
        if cap.activation is None:
            raise RuntimeError(f"layer {layer_name!r} did not run in the forward pass")
        activation = cap.activation
        cls = int(logits[0].argmax()) if target is None else int(target)
        (grads,) = torch.autograd.grad(logits[0, cls], activation)
    weights = grads.mean(dim=spatial, keepdim=True)  # (1, K, 1, 1[, 1])
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))  # (1, 1, [d,] h, w)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)[0, 0]
    peak = cam.max()
    cam = cam / peak if float(peak) > 0 else torch.zeros_like(cam)
    heatmap = cam.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    return CamResult(heatmap=heatmap, target=cls, logits=logits.detach()[0].cpu().numpy().astype(np.float32))
