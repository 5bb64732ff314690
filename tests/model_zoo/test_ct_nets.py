"""The CT networks of seed 000: SE V-Net (segmentation) and 3-D SE-ResNet (per-lesion classifier)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from monai.networks.blocks import ChannelSELayer
from torch import nn

from model_zoo.cam import capture_activation, grad_cam
from model_zoo.nets.se_resnet3d import CAM_LAYER, INPUT_SHAPE, SEResNet3d
from model_zoo.nets.se_vnet import DownTransition, SEResidualBlock, SEVNet, UpTransition

DEMO_VNET: dict[str, Any] = {"base_channels": 8, "kernel_size": 3, "levels": 4, "convs_per_level": (1, 1, 2, 2)}
LIGHT_CHANNELS = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def paper_classifier() -> SEResNet3d:
    torch.manual_seed(0)
    return SEResNet3d().eval()


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _round_trip(net: nn.Module, fresh: nn.Module, x: torch.Tensor) -> None:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))


# --- SE V-Net ------------------------------------------------------------------------------------


def test_se_vnet_demo_config_keeps_the_input_size() -> None:
    torch.manual_seed(0)
    net = SEVNet(**DEMO_VNET).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
        two = SEVNet(out_channels=2, **DEMO_VNET).eval()
        assert two(torch.rand(2, 1, 16, 32, 24)).shape == (2, 2, 16, 32, 24)


def test_se_vnet_default_config_on_its_smallest_input() -> None:
    torch.manual_seed(0)
    net = SEVNet().eval()
    assert net.divisor == 16
    with torch.no_grad():
        out = net(torch.rand(1, 1, 16, 16, 16))
    assert out.shape == (1, 1, 16, 16, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cfg", [{}, DEMO_VNET], ids=["default", "demo"])
def test_every_vnet_residual_block_carries_an_se_block(cfg: dict[str, Any]) -> None:
    net = SEVNet(**cfg)
    levels = net.levels
    convs = list(cfg.get("convs_per_level", (1, 2, 3, 3, 3)))[:levels]
    kernel = cfg.get("kernel_size", 5)
    blocks = [m for m in net.modules() if isinstance(m, SEResidualBlock)]
    # input transition + (levels - 1) down + (levels - 1) up transitions
    assert len(blocks) == 2 * levels - 1
    assert all(isinstance(b.se, ChannelSELayer) for b in blocks)
    assert sum(isinstance(m, ChannelSELayer) for m in net.modules()) == len(blocks)
    # V-Net shape: convolutions per level mirrored on both sides, channels doubling per level
    assert len(net.input_tr.block.convs) == convs[0]
    downs = [d for d in net.down_trs if isinstance(d, DownTransition)]
    ups = [u for u in net.up_trs if isinstance(u, UpTransition)]
    assert [len(d.block.convs) for d in downs] == convs[1:]
    assert [len(u.block.convs) for u in ups] == convs[levels - 2 :: -1]
    base = cfg.get("base_channels", 16)
    strided = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.stride == (2, 2, 2)]
    transposed = [m for m in net.modules() if isinstance(m, nn.ConvTranspose3d)]
    assert [m.out_channels for m in strided] == [base * 2**i for i in range(1, levels)]
    assert [m.in_channels for m in transposed] == [base * 2 ** (levels - 1)] + [
        base * 2 ** (level + 2) for level in range(levels - 3, -1, -1)
    ]
    level_convs = [m for b in blocks for m in b.convs.modules() if isinstance(m, nn.Conv3d)]
    assert {m.kernel_size for m in level_convs} == {(kernel,) * 3}


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 1, 20, 32, 32), "divisible by 8"),
        ((1, 1, 32, 32, 36), "divisible by 8"),
        ((1, 2, 32, 32, 32), r"\(N, 1, D, H, W\)"),
        ((1, 32, 32, 32), r"\(N, 1, D, H, W\)"),
    ],
)
def test_se_vnet_rejects_illegal_inputs(shape: tuple[int, ...], match: str) -> None:
    net = SEVNet(**DEMO_VNET).eval()
    with pytest.raises(ValueError, match=match):
        net(torch.rand(*shape))


def test_se_vnet_rejects_bad_configs() -> None:
    with pytest.raises(ValueError, match="convs_per_level"):
        SEVNet(levels=5, convs_per_level=(1, 2, 3))
    with pytest.raises(ValueError, match="odd"):
        SEVNet(kernel_size=4)
    with pytest.raises(ValueError, match="se_reduction"):
        SEVNet(base_channels=2, se_reduction=4)


def test_se_vnet_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    net = SEVNet(**DEMO_VNET).eval()
    torch.manual_seed(2)
    _round_trip(net, SEVNet(**DEMO_VNET), torch.rand(1, 1, 16, 16, 16))


# --- 3-D SE-ResNet -------------------------------------------------------------------------------


def _expected_classifier_params(widths: tuple[int, int, int, int], in_ch: int = 1, r: int = 4) -> int:
    """The paper's layer formula, independent of the module code.

    stem: 3x3x3 conv (no bias) + BN (weight, bias); per stage: two 3x3x3 convs + 2 BN, SE FCs with
    bias (c -> c/r -> c), a 1x1x1 conv + BN shortcut where the channels change; FC c -> 1 with bias.
    """
    total = 27 * in_ch * widths[0] + 2 * widths[0]
    c_in = widths[0]
    for c in widths:
        total += 27 * c_in * c + 2 * c + 27 * c * c + 2 * c
        total += c * (c // r) + c // r + (c // r) * c + c
        if c_in != c:
            total += c_in * c + 2 * c
        c_in = c
    return total + widths[-1] + 1


def test_classifier_output_shape(paper_classifier: SEResNet3d) -> None:
    x = torch.rand(2, *INPUT_SHAPE)
    with torch.no_grad():
        assert paper_classifier(x).shape == (2, 1)
        assert SEResNet3d(LIGHT_CHANNELS).eval().features(x).shape == (2, LIGHT_CHANNELS[-1])


def test_classifier_parameter_count_matches_the_paper_architecture(paper_classifier: SEResNet3d) -> None:
    expected = _expected_classifier_params((64, 128, 256, 512))
    assert expected == 14_511_089
    assert _n_params(paper_classifier) == expected
    assert _n_params(SEResNet3d(LIGHT_CHANNELS)) == _expected_classifier_params(LIGHT_CHANNELS)


def test_classifier_se_blocks_are_the_papers(paper_classifier: SEResNet3d) -> None:
    """GAP -> FC(c/4) -> ReLU -> FC(c) -> sigmoid -> channel re-weighting, checked numerically."""
    for name, width in zip(("layer1", "layer2", "layer3", "layer4"), (64, 128, 256, 512), strict=True):
        se = getattr(paper_classifier, name).se
        assert isinstance(se, ChannelSELayer)
        fc1, fc2 = se.fc[0], se.fc[2]
        assert (fc1.in_features, fc1.out_features, fc2.out_features) == (width, width // 4, width)
    se = paper_classifier.layer1.se
    x = torch.randn(2, 64, 3, 4, 5)
    with torch.no_grad():
        z = x.mean(dim=(2, 3, 4))
        gate = torch.sigmoid(se.fc[2](torch.relu(se.fc[0](z))))
        assert torch.allclose(se(x.clone()), x * gate[:, :, None, None, None], atol=1e-6)


@pytest.mark.parametrize(
    "shape", [(1, 1, 32, 48, 47), (1, 1, 48, 48, 32), (1, 2, 32, 48, 48), (1, 32, 48, 48), (1, 1, 64, 96, 96)]
)
def test_classifier_rejects_other_patch_shapes(shape: tuple[int, ...]) -> None:
    net = SEResNet3d(LIGHT_CHANNELS).eval()
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 48, 48\)"):
        net(torch.rand(*shape))


def test_classifier_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    net = SEResNet3d(LIGHT_CHANNELS).eval()
    torch.manual_seed(2)
    _round_trip(net, SEResNet3d(LIGHT_CHANNELS), torch.rand(1, *INPUT_SHAPE))


def test_cam_layer_is_the_last_stage_before_pooling() -> None:
    net = SEResNet3d(LIGHT_CHANNELS).eval()
    with torch.no_grad(), capture_activation(net, CAM_LAYER) as cap:
        net(torch.rand(1, *INPUT_SHAPE))
    assert cap.activation is not None and cap.activation.shape == (1, LIGHT_CHANNELS[-1], 4, 6, 6)


def test_grad_cam_on_the_classifier_gives_a_volume(paper_classifier: SEResNet3d) -> None:
    res = grad_cam(paper_classifier, torch.rand(1, *INPUT_SHAPE), CAM_LAYER)
    assert res.heatmap.shape == INPUT_SHAPE[1:]
    assert res.heatmap.dtype == np.float32
    assert 0.0 <= float(res.heatmap.min()) and float(res.heatmap.max()) <= 1.0
    assert res.target == 0 and res.logits.shape == (1,)
    assert all(p.grad is None for p in paper_classifier.parameters())
