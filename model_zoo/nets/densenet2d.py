"""2-D DenseNet121 / DenseNet169 (MONAI) with the classification head of Chen et al. 2023.

Used by seed 004 (DenseNet169, second best after Xception) and seed 002 (DenseNet121, whose
"penultimate fully connected layer" activations feed a PCA).

Shapes (``init_features=64, growth_rate=32``, input 224 x 224)
-------------------------------------------------------------
input       ``(N, 3, 224, 224)``  grey crop replicated to 3 channels, normalised
features    ``(N, F, 7, 7)``      MONAI ``DenseNet121``/``DenseNet169`` ``features``: 7x7 stride-2 conv,
                                  max-pool, four dense blocks ((6, 12, 24, 16) or (6, 12, 32, 32)
                                  layers) with transitions, final BN (``norm5``);
                                  F = 1024 (121) or 1664 (169)
relu5       ``(N, F, 7, 7)``      ReLU: the last convolutional feature map (:data:`CAM_LAYER`)
pool        ``(N, F)``            global average pool
head        ``(N, 2)``            :class:`~model_zoo.nets.xception.PaperHead`: FC 1024 -> 512 -> 512 -> 2

The output is logits; the caller applies softmax. :func:`penultimate_features` gives the 512
activations of the head's third fully connected layer.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

import torch
from monai.networks.nets import DenseNet121, DenseNet169
from torch import nn

from model_zoo.nets.xception import PaperHead

logger = logging.getLogger(__name__)

INPUT_SIZE: Final[int] = 224
MIN_INPUT_SIZE: Final[int] = 32  # five stride-2 stages
CAM_LAYER: Final[str] = "relu5"
PENULTIMATE_FEATURES: Final[int] = 512
Variant = Literal["densenet121", "densenet169"]
_BUILDERS: Final[dict[str, type[DenseNet121] | type[DenseNet169]]] = {
    "densenet121": DenseNet121,
    "densenet169": DenseNet169,
}


class DenseNetClassifier(nn.Module):
    """MONAI DenseNet feature extractor, a (non in-place) ReLU, global average pool, paper head.

    Build it with :func:`densenet_classifier`.

    Parameters
    ----------
    features : torch.nn.Module
        MONAI ``DenseNet.features`` (ends with ``norm5``).
    num_features : int
        Channels of the last feature map.
    n_classes, dropout
        Passed to :class:`~model_zoo.nets.xception.PaperHead`.
    variant : str
        ``"densenet121"`` or ``"densenet169"``, for messages.
    """

    def __init__(self, features: nn.Module, num_features: int, n_classes: int, dropout: float, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.features = features
        self.relu5 = nn.ReLU()  # not in place: Grad-CAM keeps its output
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = num_features
        self.head = PaperHead(num_features, n_classes, dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, num_features)`` pooled backbone features."""
        if x.ndim != 4 or min(x.shape[2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"{self.variant} takes (N, C, H, W) with H, W >= {MIN_INPUT_SIZE}, got {tuple(x.shape)}")
        out: torch.Tensor = self.pool(self.relu5(self.features(x))).flatten(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, n_classes)`` logits."""
        out: torch.Tensor = self.head(self.pooled(x))
        return out


def densenet_classifier(
    variant: Variant,
    *,
    init_features: int = 64,
    growth_rate: int = 32,
    in_channels: int = 3,
    dropout: float = 0.5,
    n_classes: int = 2,
) -> DenseNetClassifier:
    """A DenseNet121/169 feature extractor (MONAI) with the paper's head.

    Parameters
    ----------
    variant : {"densenet121", "densenet169"}
        Block configuration (6, 12, 24, 16) or (6, 12, 32, 32).
    init_features, growth_rate : int
        Stem width and growth rate k (64 and 32 in the papers; smaller for a CPU demo).
    in_channels : int
        Input channels (3: grey replicated).
    dropout : float
        Dropout between the head's fully connected layers (0.5 in the paper). The dense layers
        themselves have none, as in the original DenseNets.
    n_classes : int
        Output logits.

    Returns
    -------
    DenseNetClassifier
    """
    if variant not in _BUILDERS:
        raise ValueError(f"variant must be one of {sorted(_BUILDERS)}, got {variant!r}")
    if init_features < 1 or growth_rate < 1:
        raise ValueError(f"init_features and growth_rate must be positive, got {init_features}, {growth_rate}")
    net = _BUILDERS[variant](spatial_dims=2, in_channels=in_channels, out_channels=n_classes,
                             init_features=init_features, growth_rate=growth_rate)
    linear = net.class_layers.out
    assert isinstance(linear, nn.Linear)
    return DenseNetClassifier(net.features, linear.in_features, n_classes, dropout, variant)


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Activations of the penultimate fully connected layer (512 per image, after its ReLU).

    Seed 002 takes these as its deep-learning features (then PCA to 128). Call it with the model
    in eval mode: in training mode the head's dropout would act.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`DenseNetClassifier` or :class:`~model_zoo.nets.xception.Xception` (anything with
        ``pooled(x)`` and a :class:`~model_zoo.nets.xception.PaperHead` named ``head``).
    x : torch.Tensor
        ``(N, C, H, W)`` network input.

    Returns
    -------
    torch.Tensor
        ``(N, 512)``.
    """
    head = getattr(model, "head", None)
    pooled = getattr(model, "pooled", None)
    if not isinstance(head, PaperHead) or pooled is None:
        raise TypeError(f"{type(model).__name__} has no PaperHead 'head' and 'pooled' method")
    out: torch.Tensor = head.penultimate(pooled(x))
    return out
