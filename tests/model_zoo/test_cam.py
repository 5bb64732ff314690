from __future__ import annotations

import numpy as np
import pytest
import torch

from model_zoo.cam import capture_activation, grad_cam
from model_zoo.nets.scinti_resnet34 import CAM_LAYER, ScintiResNet34


def _hooks(net: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_grad_cam_map_and_hooks_removed() -> None:
    torch.manual_seed(0)
    net = ScintiResNet34().eval()
    x = torch.rand(1, 1, 96, 80)
    res = grad_cam(net, x, CAM_LAYER, target=2)
    assert res.heatmap.shape == (96, 80)
    assert res.heatmap.dtype == np.float32
    assert 0.0 <= float(res.heatmap.min()) and float(res.heatmap.max()) <= 1.0
    assert res.target == 2 and res.logits.shape == (4,)
    assert _hooks(net) == 0
    assert all(p.grad is None for p in net.parameters())


def test_hooks_removed_when_the_forward_pass_fails() -> None:
    net = ScintiResNet34().eval()
    with pytest.raises(RuntimeError):
        with capture_activation(net, CAM_LAYER):
            net(torch.rand(1, 3, 64, 64))  # wrong channel count
    assert _hooks(net) == 0


def test_unknown_layer() -> None:
    with pytest.raises(KeyError):
        grad_cam(ScintiResNet34().eval(), torch.rand(1, 1, 64, 64), "backbone.nope")


def test_grad_cam_works_under_no_grad() -> None:
    net = ScintiResNet34().eval()
    with torch.no_grad():
        res = grad_cam(net, torch.rand(1, 1, 64, 64), CAM_LAYER)
    assert res.heatmap.shape == (64, 64)
