"""Xception (Chollet 2017) with the classification head of Chen et al. 2023 (seed 004).

MONAI has no Xception; this is a plain-torch copy of the layer structure of Keras'
``applications.Xception`` (the network the paper fine-tuned), with a ``width`` multiplier on every
channel count (1.0 = the paper's network).

Shapes (``width=1.0``, input 299 x 299)
---------------------------------------
input         ``(N, 3, 299, 299)``  grey B-mode crop replicated to 3 channels, normalised
entry_conv1   ``(N, 32, 149, 149)`` 3x3 stride-2 conv (no padding) + BN + ReLU
entry_conv2   ``(N, 64, 147, 147)`` 3x3 conv (no padding) + BN + ReLU
block2        ``(N, 128, 74, 74)``  2 separable convs (the first without a leading ReLU), max-pool
block3        ``(N, 256, 37, 37)``  ReLU-sepconv-BN twice, 3x3 stride-2 max-pool, + 1x1 stride-2 shortcut
block4        ``(N, 728, 19, 19)``
block5..12    ``(N, 728, 19, 19)``  middle flow: 8 x (3 x ReLU-sepconv-BN) + identity
block13       ``(N, 1024, 10, 10)`` exit flow: sepconv 728, sepconv 1024, max-pool, + 1x1 shortcut
exit_conv1    ``(N, 1536, 10, 10)`` sepconv + BN + ReLU
exit_conv2    ``(N, 2048, 10, 10)`` sepconv + BN + ReLU: the last convolutional block (:data:`CAM_LAYER`)
pool          ``(N, 2048)``         global average pool
head          ``(N, 2)``            :class:`PaperHead`: FC 1024 -> 512 -> 512 -> 2, ReLU, dropout 0.5

A separable convolution is a 3x3 depthwise convolution followed by a 1x1 pointwise one, neither
with a bias (Keras ``SeparableConv2D(use_bias=False)``). The output is logits (benign, malignant);
the caller applies softmax. The paper's head (and this module) is shared with the DenseNets of
:mod:`model_zoo.nets.densenet2d`.
"""

from __future__ import annotations

import logging
from typing import Final

import torch
from torch import nn

logger = logging.getLogger(__name__)

INPUT_SIZE: Final[int] = 299
MIN_INPUT_SIZE: Final[int] = 71  # as Keras: two unpadded 3x3 convolutions and four stride-2 stages
CAM_LAYER: Final[str] = "features.exit_conv2"
PAPER_CHANNELS: Final[dict[str, int]] = {
    "stem1": 32, "stem2": 64, "block2": 128, "block3": 256, "middle": 728, "exit": 1024, "conv1": 1536, "conv2": 2048,
}
HEAD_UNITS: Final[tuple[int, int, int]] = (1024, 512, 512)


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8 (at least 8); exact at ``width=1``."""
    if width == 1.0:
        return channels
    return max(8, int(round(channels * width / 8.0)) * 8)


class PaperHead(nn.Module):
    """The head of Chen et al. 2023: FC 1024 -> ReLU -> dropout -> FC 512 -> ReLU -> dropout ->
    FC 512 -> ReLU -> dropout -> FC ``n_classes`` (logits).

    Parameters
    ----------
    in_features : int
        Pooled backbone features.
    n_classes : int
        Output logits (2: benign, malignant).
    dropout : float
        Dropout probability between the fully connected layers (the paper: 0.5).
    """

    def __init__(self, in_features: int, n_classes: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        a, b, c = HEAD_UNITS
        self.layers = nn.Sequential(
            nn.Linear(in_features, a), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(b, c), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(c, n_classes),
        )

    def penultimate(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, in_features)`` -> ``(N, 512)``: the activations (after ReLU) of the penultimate
        fully connected layer, before the last dropout. Dropout acts only in training mode."""
        out: torch.Tensor = self.layers[:-2](z)
        return out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, in_features)`` -> ``(N, n_classes)`` logits."""
        out: torch.Tensor = self.layers(z)
        return out


class SeparableConv2d(nn.Module):
    """3x3 depthwise + 1x1 pointwise convolution, no biases, ``same`` padding."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in, H, W)`` -> ``(N, out, H, W)``."""
        out: torch.Tensor = self.pointwise(self.depthwise(x))
        return out


class XceptionBlock(nn.Module):
    """``[ReLU] sepconv BN`` repeated, then an optional 3x3 stride-2 max-pool, plus a shortcut.

    Parameters
    ----------
    channels : sequence of int
        Input channels followed by the output channels of each separable convolution.
    pool : bool
        Down-sample (max-pool 3, stride 2) and project the shortcut by a 1x1 stride-2 conv + BN;
        without it the shortcut is the identity (middle flow).
    first_relu : bool
        Whether the first separable convolution is preceded by a ReLU (not in block 2, which
        follows a ReLU already).
    """

    def __init__(self, channels: list[int], pool: bool, first_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            if i > 0 or first_relu:
                layers.append(nn.ReLU())  # never in place: the block's input also feeds the shortcut
            layers += [SeparableConv2d(c_in, c_out), nn.BatchNorm2d(c_out)]
        if pool:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(channels[0], channels[-1], 1, stride=2, bias=False), nn.BatchNorm2d(channels[-1]))
            if pool
            else nn.Identity()
        )
        if not pool and channels[0] != channels[-1]:
            raise ValueError(f"an identity shortcut needs equal in/out channels, got {channels}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out: torch.Tensor = self.body(x) + self.shortcut(x)
        return out


def _conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())


class Xception(nn.Module):
    """Xception backbone (entry, 8-block middle and exit flows) + :class:`PaperHead`.

    Parameters
    ----------
    width : float
        Multiplier on every backbone channel count (rounded to multiples of 8); 1.0 is the
        paper's (and Keras') network. The head keeps the paper's 1024-512-512 units.
    in_channels : int
        Input channels (3: grey replicated, as the ImageNet-initialised network expects).
    n_classes : int
        Output logits.
    dropout : float
        The head's dropout (0.5 in the paper).
    middle_blocks : int
        Middle-flow blocks (8 in the paper).

    Notes
    -----
    Inputs must be at least :data:`MIN_INPUT_SIZE` pixels on each side; the paper used 299.
    """

    def __init__(
        self,
        width: float = 1.0,
        in_channels: int = 3,
        n_classes: int = 2,
        dropout: float = 0.5,
        middle_blocks: int = 8,
    ) -> None:
        super().__init__()
        if not 0.0 < width <= 4.0:
            raise ValueError(f"width must lie in (0, 4], got {width}")
        c = {k: scaled(v, width) for k, v in PAPER_CHANNELS.items()}
        self.width = width
        feats: list[tuple[str, nn.Module]] = [
            ("entry_conv1", _conv_bn_relu(nn.Conv2d(in_channels, c["stem1"], 3, stride=2, bias=False), c["stem1"])),
            ("entry_conv2", _conv_bn_relu(nn.Conv2d(c["stem1"], c["stem2"], 3, bias=False), c["stem2"])),
            ("block2", XceptionBlock([c["stem2"], c["block2"], c["block2"]], pool=True, first_relu=False)),
            ("block3", XceptionBlock([c["block2"], c["block3"], c["block3"]], pool=True)),
            ("block4", XceptionBlock([c["block3"], c["middle"], c["middle"]], pool=True)),
        ]
        for i in range(middle_blocks):
            feats.append((f"block{5 + i}", XceptionBlock([c["middle"]] * 4, pool=False)))
        feats += [
            (f"block{5 + middle_blocks}", XceptionBlock([c["middle"], c["middle"], c["exit"]], pool=True)),
            ("exit_conv1", _conv_bn_relu(SeparableConv2d(c["exit"], c["conv1"]), c["conv1"])),
            ("exit_conv2", _conv_bn_relu(SeparableConv2d(c["conv1"], c["conv2"]), c["conv2"])),
        ]
        self.features = nn.Sequential()
        for name, module in feats:
            self.features.add_module(name, module)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c["conv2"]
        self.head = PaperHead(self.num_features, n_classes, dropout)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, num_features)`` globally average-pooled backbone features."""
        if x.ndim != 4 or min(x.shape[2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"Xception takes (N, C, H, W) with H, W >= {MIN_INPUT_SIZE}, got {tuple(x.shape)}")
        out: torch.Tensor = self.pool(self.features(x)).flatten(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, n_classes)`` logits; softmax gives (P(benign), P(malignant))."""
        out: torch.Tensor = self.head(self.pooled(x))
        return out
