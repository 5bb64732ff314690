from __future__ import annotations

import io

import torch

from model_zoo.nets.scinti_resnet34 import CAM_LAYER, ScintiResNet34


def _net(seed: int = 0) -> ScintiResNet34:
    torch.manual_seed(seed)
    return ScintiResNet34().eval()


def test_output_and_feature_shapes() -> None:
    net = _net()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert net(x).shape == (2, 4)
        assert net.features(x).shape == (2, 512)


def test_backbone_is_a_resnet34() -> None:
    net = _net()
    n_backbone = sum(p.numel() for p in net.backbone.parameters())
    # torchvision's ResNet-34 without its FC: 21,284,672 parameters with a 3-channel stem. Here:
    # a 1-channel 7x7x64 stem (2 * 49 * 64 = 6,272 fewer) and MONAI's 1x1 shortcut convolutions
    # carry a bias (128 + 256 + 512 = 896 more).
    assert n_backbone == 21_284_672 - 6_272 + 896
    n_head = sum(p.numel() for p in net.head.parameters())
    assert n_head == 512 * 256 + 256 + 256 * 128 + 128 + 128 * 4 + 4
    assert CAM_LAYER in dict(net.named_modules())


def test_state_dict_round_trip_gives_identical_outputs() -> None:
    net = _net(1)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = _net(2)
    other.load_state_dict(torch.load(buf, weights_only=True))
    other.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), other(x))
