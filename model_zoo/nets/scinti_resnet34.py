"""ResNet-34 with the head of Zhao et al. 2023 (thyroid scintigraphy, 4 classes).

Shapes
------
input      ``(B, 1, H, W)``  float, one grey channel scaled to [0, 1]
backbone   ``(B, 512)``      MONAI ``ResNet`` (basic blocks [3, 4, 6, 3], 7x7 stride-2 stem,
                             ``feed_forward=False``: global average pool, no FC)
head       ``(B, 4)``        FC 512->256, LeakyReLU, Dropout(p) -> FC 256->128, LeakyReLU -> FC 128->4

The output is logits; the caller applies softmax. The last convolutional stage is
``backbone.layer4`` (:data:`CAM_LAYER`), the layer Grad-CAM hooks.
"""

from __future__ import annotations

from typing import Final

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

CAM_LAYER: Final[str] = "backbone.layer4"
FEATURES: Final[int] = 512


class ScintiResNet34(nn.Module):
    """ResNet-34 feature extractor and the paper's three-layer classification head.

    Parameters
    ----------
    n_classes : int
        Output logits.
    in_channels : int
        Input channels (1 for a planar scintigram).
    dropout : float
        Dropout after the first FC layer (the paper's p = 0.8).
    """

    def __init__(self, n_classes: int = 4, in_channels: int = 1, dropout: float = 0.8) -> None:
        super().__init__()
        self.backbone = ResNet(
            block="basic",
            layers=[3, 4, 6, 3],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
        )
        # zero-init the last BN of each residual branch (Goyal et al. 2017): every block starts
        # as an identity, which speeds up early training from scratch
        for module in self.backbone.modules():
            if hasattr(module, "bn2") and isinstance(module.bn2, nn.BatchNorm2d):
                nn.init.zeros_(module.bn2.weight)
        self.head = nn.Sequential(
            nn.Linear(FEATURES, 256),
            nn.LeakyReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(256, 128),
            nn.LeakyReLU(),
            nn.Linear(128, n_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 512)`` pooled backbone features."""
        out: torch.Tensor = self.backbone(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, n_classes)`` logits."""
        out: torch.Tensor = self.head(self.features(x))
        return out
