"""SE V-Net: a 3-D V-Net (Milletari et al. 2016) with squeeze-and-excitation in every residual block.

Seed 000 (Gao et al. 2024) segments lung metastases on a 1 mm isotropic chest CT with an "SE V-Net".
MONAI's :class:`monai.networks.nets.VNet` hard-codes 16 base channels, 5x5x5 kernels and batch norm;
this network keeps its layout and parts (MONAI's ``Convolution``, ``ChannelSELayer`` and the
V-Net's ``get_acti_layer``) and makes width, kernel, depth and convolutions per level configurable,
so that a light configuration can run on a CPU.

Shapes (``levels = L``, ``c_i = base_channels * 2**i``, ``S = D, H, W``)
-------------------------------------------------------------------------
input           ``(N, in_channels, D, H, W)``; D, H and W each divisible by ``2**(L - 1)``
input_tr        ``(N, c_0, S)``            convs, SE, residual = the input repeated to ``c_0``
down_trs[i-1]   ``(N, c_i, S / 2**i)``     strided 2x2x2 conv, convs, SE, residual; i = 1..L-1
up_trs[j]       ``(N, 2 c_l, S / 2**l)``   2x2x2 transposed conv to ``c_l``, concat the skip
                                           ``c_l``, convs, SE, residual; l = L-2-j, down to 0
output_tr       ``(N, out_channels, S)``   kxkxk conv, activation, 1x1x1 conv: logits

Every residual block is ``act(SE(convs(x)) + x)``, each conv being conv + norm + activation;
``convs_per_level[i]`` convolutions at level ``i`` on both sides of the V (Milletari: 1, 2, 3, 3, 3).
The output is logits; the caller applies sigmoid (one channel) or softmax.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import torch
from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.nets.vnet import get_acti_layer
from torch import nn

logger = logging.getLogger(__name__)

ActSpec = str | tuple[str, dict[str, Any]]
NormSpec = str | tuple[str, dict[str, Any]]

SPATIAL_DIMS: Final[int] = 3


def _act_spec(act: ActSpec, channels: int) -> ActSpec:
    """MONAI activation spec for ``channels`` channels; PReLU gets one parameter per channel, as in
    :func:`monai.networks.nets.vnet.get_acti_layer`."""
    return ("prelu", {"num_parameters": channels}) if act == "prelu" else act


def _conv_unit(in_ch: int, out_ch: int, kernel_size: int, norm: NormSpec, act: ActSpec) -> Convolution:
    """``kxkxk`` convolution (same padding, no bias) + norm + activation."""
    return Convolution(
        spatial_dims=SPATIAL_DIMS,
        in_channels=in_ch,
        out_channels=out_ch,
        kernel_size=kernel_size,
        norm=norm,
        act=_act_spec(act, out_ch),
        bias=False,
    )


class SEResidualBlock(nn.Module):
    """``act(SE(convs(x)) + residual)``: the convolutions of one V-Net level, with SE.

    Parameters
    ----------
    in_channels, channels : int
        Channels into the first convolution; channels of every other tensor of the block.
    n_convs : int
        Convolutions (conv + norm + activation), at least 1.
    kernel_size : int
        Odd kernel size of the convolutions.
    norm, act : str or tuple
        MONAI norm and activation specifications.
    se_reduction : int
        Reduction ``r`` of the SE block (hidden FC of ``channels // r``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        n_convs: int,
        kernel_size: int,
        norm: NormSpec,
        act: ActSpec,
        se_reduction: int,
    ) -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"a residual block needs at least one convolution, got {n_convs}")
        units = [_conv_unit(in_channels, channels, kernel_size, norm, act)]
        units += [_conv_unit(channels, channels, kernel_size, norm, act) for _ in range(n_convs - 1)]
        self.convs = nn.Sequential(*units)
        self.se = ChannelSELayer(SPATIAL_DIMS, channels, r=se_reduction)
        self.act = get_acti_layer(act, channels)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, S)``, ``(N, channels, S)`` -> ``(N, channels, S)``."""
        out: torch.Tensor = self.act(self.se(self.convs(x)) + residual)
        return out


class InputTransition(nn.Module):
    """Level 0: convolutions from ``in_channels`` to ``channels``; residual = the input repeated."""

    def __init__(self, in_channels: int, channels: int, block_kwargs: dict[str, Any]) -> None:
        super().__init__()
        if channels % in_channels != 0:
            raise ValueError(f"base_channels ({channels}) must be a multiple of in_channels ({in_channels})")
        self.repeats = channels // in_channels
        self.block = SEResidualBlock(in_channels, channels, **block_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, S)`` -> ``(N, channels, S)``."""
        out: torch.Tensor = self.block(x, x.repeat(1, self.repeats, 1, 1, 1))
        return out


class DownTransition(nn.Module):
    """Strided 2x2x2 convolution doubling the channels, then an SE residual block."""

    def __init__(
        self, in_channels: int, norm: NormSpec, act: ActSpec, dropout: float, block_kwargs: dict[str, Any]
    ) -> None:
        super().__init__()
        channels = 2 * in_channels
        self.down_conv = Convolution(
            SPATIAL_DIMS,
            in_channels,
            channels,
            strides=2,
            kernel_size=2,
            padding=0,
            norm=norm,
            act=_act_spec(act, channels),
            bias=False,
        )
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.block = SEResidualBlock(channels, channels, **block_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S)`` -> ``(N, 2C, S / 2)``."""
        down = self.down_conv(x)
        out: torch.Tensor = self.block(self.dropout(down), down)
        return out


class UpTransition(nn.Module):
    """2x2x2 transposed convolution to ``skip_channels``, concat the skip, an SE residual block."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        norm: NormSpec,
        act: ActSpec,
        dropout: float,
        block_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        channels = 2 * skip_channels
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.up_conv = Convolution(
            SPATIAL_DIMS,
            in_channels,
            skip_channels,
            strides=2,
            kernel_size=2,
            padding=0,
            output_padding=0,  # MONAI's default (stride - 1) would give 2n + 1
            is_transposed=True,
            norm=norm,
            act=_act_spec(act, skip_channels),
            bias=False,
        )
        self.block = SEResidualBlock(channels, channels, **block_kwargs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, S / 2)``, ``(N, C_skip, S)`` -> ``(N, 2 C_skip, S)``."""
        cat = torch.cat((self.up_conv(self.dropout(x)), skip), dim=1)
        out: torch.Tensor = self.block(cat, cat)
        return out


class OutputTransition(nn.Module):
    """``kxkxk`` conv to ``out_channels`` + activation + 1x1x1 conv (the V-Net's output stage).

    No normalisation here, unlike MONAI's VNet: instance norm over a single output channel would fix
    the logits' per-volume mean and variance.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, act: ActSpec) -> None:
        super().__init__()
        self.conv = Convolution(
            SPATIAL_DIMS,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            norm=None,
            act=_act_spec(act, out_channels),
            bias=True,
        )
        self.head = nn.Conv3d(out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S)`` -> ``(N, out_channels, S)`` logits."""
        out: torch.Tensor = self.head(self.conv(x))
        return out


class SEVNet(nn.Module):
    """V-Net with a squeeze-and-excitation block in every residual block (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels (1: CT scaled to [0, 1]); output logit channels.
    base_channels : int
        Channels at full resolution, doubled at each level (V-Net: 16).
    levels : int
        Resolution levels including the full one (V-Net: 5, i.e. 4 down-samplings).
    kernel_size : int
        Odd kernel of the level convolutions and of the output convolution (V-Net: 5).
    convs_per_level : sequence of int
        Convolutions per residual block at each level, the first ``levels`` entries used.
    se_reduction : int
        SE reduction ratio; ``base_channels // se_reduction`` must be at least 1.
    dropout : float
        Channel dropout (``Dropout3d``) into the blocks of the two deepest levels, on the way down
        and on the way up (as MONAI's VNet, which uses 0.5); 0 disables it.
    act : str or tuple
        Activation, MONAI spec; ``"prelu"`` (V-Net) gets one parameter per channel.
    norm : str or tuple
        Normalisation, MONAI spec: ``"batch"`` or e.g. ``("instance", {"affine": True})``.

    Attributes
    ----------
    divisor : int
        ``2 ** (levels - 1)``: D, H and W of the input must be multiples of it.
    """

    SHAPES: ClassVar[str] = "(N, in_channels, D, H, W) -> (N, out_channels, D, H, W) logits"

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 16,
        levels: int = 5,
        kernel_size: int = 5,
        convs_per_level: Sequence[int] = (1, 2, 3, 3, 3),
        se_reduction: int = 4,
        dropout: float = 0.0,
        act: ActSpec = "prelu",
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        if len(convs_per_level) < levels:
            raise ValueError(f"convs_per_level needs {levels} entries, got {tuple(convs_per_level)}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        if base_channels // se_reduction < 1:
            raise ValueError(f"se_reduction ({se_reduction}) exceeds base_channels ({base_channels})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(act, str):
            act = act.lower()
        self.in_channels = in_channels
        self.levels = levels
        self.divisor = 2 ** (levels - 1)
        channels = [base_channels * 2**i for i in range(levels)]
        convs = [int(n) for n in convs_per_level[:levels]]

        def block_kwargs(level: int) -> dict[str, Any]:
            return {
                "n_convs": convs[level],
                "kernel_size": kernel_size,
                "norm": norm,
                "act": act,
                "se_reduction": se_reduction,
            }

        def level_dropout(level: int) -> float:
            return dropout if level >= levels - 2 else 0.0

        self.input_tr = InputTransition(in_channels, channels[0], block_kwargs(0))
        self.down_trs = nn.ModuleList(
            DownTransition(channels[i - 1], norm, act, level_dropout(i), block_kwargs(i)) for i in range(1, levels)
        )
        ups = []
        for level in range(levels - 2, -1, -1):
            in_ch = channels[-1] if level == levels - 2 else 2 * channels[level + 1]
            ups.append(UpTransition(in_ch, channels[level], norm, act, level_dropout(level + 1), block_kwargs(level)))
        self.up_trs = nn.ModuleList(ups)
        self.output_tr = OutputTransition(2 * channels[0], out_channels, kernel_size, act)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(N, in_channels, D, H, W)`` with D, H, W multiples of
        :attr:`divisor`."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"SEVNet takes (N, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        bad = [int(s) for s in x.shape[2:] if s % self.divisor != 0]
        if bad:
            raise ValueError(
                f"SEVNet with {self.levels} levels needs D, H, W divisible by {self.divisor}, "
                f"got {tuple(x.shape[2:])}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, D, H, W)`` -> ``(N, out_channels, D, H, W)`` logits."""
        self.check_input(x)
        out = self.input_tr(x)
        skips = []
        for down in self.down_trs:
            skips.append(out)
            out = down(out)
        for up in self.up_trs:
            out = up(out, skips.pop())
        logits: torch.Tensor = self.output_tr(out)
        return logits
