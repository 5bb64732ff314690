"""3-D SE-ResNet of Gao et al. 2024 (seed 000): is a lung metastasis RAI-refractory?

Shapes (the paper's configuration, ``channels = (64, 128, 256, 512)``)
----------------------------------------------------------------------
input    ``(N, 1, 32, 48, 48)``   one CT patch per lesion, 1 mm isotropic, scaled to [0, 1]
stem     ``(N, 64, 32, 48, 48)``  3x3x3 conv + BN + ReLU
layer1   ``(N, 64, 32, 48, 48)``  SE residual block; ``pool1`` -> ``(N, 64, 16, 24, 24)``
layer2   ``(N, 128, 16, 24, 24)`` ``pool2`` -> ``(N, 128, 8, 12, 12)``
layer3   ``(N, 256, 8, 12, 12)``  ``pool3`` -> ``(N, 256, 4, 6, 6)``
layer4   ``(N, 512, 4, 6, 6)``    ``pool4`` -> ``(N, 512, 2, 3, 3)``
head     ``(N, 1)``               global average pool, FC 512 -> 1: one logit

An SE residual block is ``ReLU(SE(BN(conv(ReLU(BN(conv(x)))))) + shortcut(x))`` with 3x3x3
convolutions and a 1x1x1 conv + BN shortcut where the channels change; the SE block is MONAI's
``ChannelSELayer`` (global average pool -> FC to c/4 -> ReLU -> FC back to c -> sigmoid -> channel
re-weighting). Each block is followed by a 2x2x2 max-pool. The probability of RAI-refractory
(non-iodine-avid) status is the sigmoid of the logit. Grad-CAM hooks ``layer4`` (:data:`CAM_LAYER`),
the last stage's output before its pooling.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import torch
from monai.networks.blocks import ChannelSELayer
from torch import nn

logger = logging.getLogger(__name__)

CAM_LAYER: Final[str] = "layer4"
INPUT_SHAPE: Final[tuple[int, int, int, int]] = (1, 32, 48, 48)
PAPER_CHANNELS: Final[tuple[int, int, int, int]] = (64, 128, 256, 512)
SE_REDUCTION: Final[int] = 4


def _conv3(in_ch: int, out_ch: int) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)


class SEResBlock3d(nn.Module):
    """Two 3x3x3 conv + BN (ReLU between), SE re-weighting, residual add, ReLU.

    Parameters
    ----------
    in_channels, channels : int
        Input and output channels; a 1x1x1 conv + BN projects the shortcut when they differ.
    se_reduction : int
        The SE block's hidden FC has ``channels // se_reduction`` units.
    """

    def __init__(self, in_channels: int, channels: int, se_reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.conv1 = _conv3(in_channels, channels)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = _conv3(channels, channels)
        self.bn2 = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = ChannelSELayer(spatial_dims=3, in_channels=channels, r=se_reduction)
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == channels
            else nn.Sequential(nn.Conv3d(in_channels, channels, kernel_size=1, bias=False), nn.BatchNorm3d(channels))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, S)`` -> ``(N, channels, S)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        result: torch.Tensor = self.relu(out + self.shortcut(x))
        return result


class SEResNet3d(nn.Module):
    """The seed-000 classifier: stem, four SE residual stages each followed by a max-pool, GAP, FC.

    Parameters
    ----------
    channels : sequence of 4 int
        Stage widths; the stem has ``channels[0]``. The paper's ``(64, 128, 256, 512)`` by default;
        narrower widths give a lighter network of the same shape (e.g. for a CPU demo).
    in_channels : int
        Input channels (1: CT).
    se_reduction : int
        SE reduction ratio (the paper: 4).

    Notes
    -----
    The input must be ``(N, in_channels, 32, 48, 48)`` (:data:`INPUT_SHAPE`); anything else raises
    ``ValueError``. The output is one logit per patch.
    """

    def __init__(
        self,
        channels: Sequence[int] = PAPER_CHANNELS,
        in_channels: int = 1,
        se_reduction: int = SE_REDUCTION,
    ) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if len(widths) != 4:
            raise ValueError(f"channels must give 4 stage widths, got {tuple(channels)}")
        self.input_shape: tuple[int, int, int, int] = (in_channels, *INPUT_SHAPE[1:])
        self.stem = nn.Sequential(_conv3(in_channels, widths[0]), nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        self.layer1 = SEResBlock3d(widths[0], widths[0], se_reduction)
        self.pool1 = nn.MaxPool3d(2)
        self.layer2 = SEResBlock3d(widths[0], widths[1], se_reduction)
        self.pool2 = nn.MaxPool3d(2)
        self.layer3 = SEResBlock3d(widths[1], widths[2], se_reduction)
        self.pool3 = nn.MaxPool3d(2)
        self.layer4 = SEResBlock3d(widths[2], widths[3], se_reduction)
        self.pool4 = nn.MaxPool3d(2)
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[3], 1)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 32, 48, 48)`` -> ``(N, channels[3])`` pooled features."""
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != 5:
            raise ValueError(f"SEResNet3d takes (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        out = self.stem(x)
        out = self.pool1(self.layer1(out))
        out = self.pool2(self.layer2(out))
        out = self.pool3(self.layer3(out))
        out = self.pool4(self.layer4(out))
        pooled: torch.Tensor = self.gap(out).flatten(1)
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 32, 48, 48)`` -> ``(N, 1)`` logits; sigmoid gives P(RAI-refractory)."""
        logits: torch.Tensor = self.fc(self.features(x))
        return logits
