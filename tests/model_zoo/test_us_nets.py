"""The US networks of seeds 004 / 002: Xception and DenseNet121/169, each with the paper's head."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from model_zoo.cam import capture_activation, grad_cam
from model_zoo.nets import densenet2d, xception
from model_zoo.nets.densenet2d import DenseNetClassifier, densenet_classifier, penultimate_features
from model_zoo.nets.xception import PaperHead, Xception, scaled

NARROW_XCEPTION = 0.25
NARROW_DENSENET = {"init_features": 16, "growth_rate": 8}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread in this module: on a shared 2-core machine, OpenMP stalls otherwise."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


def _expected_xception_backbone(width: float = 1.0, in_ch: int = 3) -> int:
    """Trainable parameters of Keras' Xception without top, from the layer formula.

    Conventions: convolutions have no bias; a separable conv c_in -> c_out has 9 c_in (3x3
    depthwise) + c_in c_out (1x1 pointwise) weights; BN has 2 trainable parameters per channel
    (gamma, beta; Keras' moving mean/variance are non-trainable, torch keeps them as buffers).
    Entry: 3x3 conv in -> 32 + BN, 3x3 conv 32 -> 64 + BN; blocks 2-4: two separable convs + 2 BN
    and a 1x1 conv + BN shortcut (64 -> 128 -> 256 -> 728); middle: 8 x 3 separable 728 -> 728 + BN;
    block 13: sep 728 -> 728, sep 728 -> 1024, 1x1 shortcut 728 -> 1024, BNs; exit: sep 1024 -> 1536,
    sep 1536 -> 2048, BNs.
    """
    c = {k: scaled(v, width) for k, v in xception.PAPER_CHANNELS.items()}

    def sep(a: int, b: int) -> int:
        return 9 * a + a * b + 2 * b

    def conv(k: int, a: int, b: int) -> int:
        return k * k * a * b + 2 * b

    total = conv(3, in_ch, c["stem1"]) + conv(3, c["stem1"], c["stem2"])
    for a, b in ((c["stem2"], c["block2"]), (c["block2"], c["block3"]), (c["block3"], c["middle"])):
        total += sep(a, b) + sep(b, b) + conv(1, a, b)
    total += 8 * 3 * sep(c["middle"], c["middle"])
    total += sep(c["middle"], c["middle"]) + sep(c["middle"], c["exit"]) + conv(1, c["middle"], c["exit"])
    total += sep(c["exit"], c["conv1"]) + sep(c["conv1"], c["conv2"])
    return total


def test_xception_backbone_has_keras_parameter_count() -> None:
    """Keras: ``Xception(include_top=False).count_params() == 20_861_480``, of which the BN moving
    means and variances (2 per BN channel) are non-trainable. BN channels: entry 32 + 64; blocks 2-4
    (2 + 1 shortcut) x (128, 256, 728); middle 24 x 728; block 13 728 + 2 x 1024; exit 1536 + 2048:
    27,264 channels, 54,528 non-trainable, 20,806,952 trainable."""
    bn_channels = 32 + 64 + 3 * (128 + 256 + 728) + 24 * 728 + 728 + 2 * 1024 + 1536 + 2048
    assert bn_channels == 27_264
    keras_trainable = 20_861_480 - 2 * bn_channels
    assert _expected_xception_backbone() == keras_trainable == 20_806_952
    net = Xception()
    assert _n_params(net.features) == keras_trainable
    assert sum(m.num_features for m in net.features.modules() if isinstance(m, nn.BatchNorm2d)) == bn_channels
    assert _n_params(Xception(width=NARROW_XCEPTION).features) == _expected_xception_backbone(NARROW_XCEPTION)


@pytest.mark.parametrize(("variant", "torchvision_total", "features"),
                         [("densenet121", 7_978_856, 1024), ("densenet169", 14_149_480, 1664)])
def test_densenet_feature_extractor_matches_torchvision(variant: densenet2d.Variant, torchvision_total: int,
                                                        features: int) -> None:
    """torchvision's totals include the 1000-class classifier (features x 1000 + 1000)."""
    net = densenet_classifier(variant)
    assert net.num_features == features
    assert _n_params(net.features) == torchvision_total - (features * 1000 + 1000)


@pytest.mark.parametrize("net_factory", [
    lambda: Xception(width=NARROW_XCEPTION),
    lambda: densenet_classifier("densenet121", **NARROW_DENSENET),
    lambda: densenet_classifier("densenet169", dropout=0.5, **NARROW_DENSENET),
], ids=["xception", "densenet121", "densenet169"])
def test_head_is_the_papers(net_factory: object) -> None:
    net = net_factory()  # type: ignore[operator]
    assert isinstance(net.head, PaperHead)
    linears = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (net.num_features, 1024), (1024, 512), (512, 512), (512, 2)]
    drops = [m for m in net.head.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.5 for d in drops)
    kinds = [type(m) for m in net.head.layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout] * 3 + [nn.Linear]


def test_full_width_networks_at_the_papers_input_sizes() -> None:
    torch.manual_seed(0)
    nets = [(Xception().eval(), xception.INPUT_SIZE),
            (densenet_classifier("densenet169").eval(), densenet2d.INPUT_SIZE),
            (densenet_classifier("densenet121").eval(), densenet2d.INPUT_SIZE)]
    for net, size in nets:
        with torch.no_grad():
            out = net(torch.rand(1, 3, size, size))
        assert out.shape == (1, 2) and torch.isfinite(out).all()


def test_narrow_networks_batch_of_two_and_feature_map_sizes() -> None:
    torch.manual_seed(0)
    xc = Xception(width=NARROW_XCEPTION).eval()
    dn = densenet_classifier("densenet169", **NARROW_DENSENET).eval()
    with torch.no_grad(), capture_activation(xc, xception.CAM_LAYER) as cap:
        assert xc(torch.rand(2, 3, 299, 299)).shape == (2, 2)
    assert cap.activation is not None and cap.activation.shape == (2, scaled(2048, NARROW_XCEPTION), 10, 10)
    with torch.no_grad(), capture_activation(dn, densenet2d.CAM_LAYER) as cap:
        assert dn(torch.rand(2, 3, 224, 224)).shape == (2, 2)
    assert cap.activation is not None and cap.activation.shape == (2, dn.num_features, 7, 7)
    assert float(cap.activation.min()) >= 0.0  # after the final ReLU


def test_width_multiplier_rounds_to_multiples_of_eight() -> None:
    assert scaled(728, 1.0) == 728
    assert scaled(728, 0.25) == 184 and scaled(32, 0.125) == 8 and scaled(2048, 0.5) == 1024
    with pytest.raises(ValueError, match="width"):
        Xception(width=0.0)


def test_too_small_inputs_and_unknown_variants_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 71"):
        Xception(width=0.125)(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=">= 32"):
        densenet_classifier("densenet121", init_features=8, growth_rate=4)(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="variant"):
        densenet_classifier("densenet201")  # type: ignore[arg-type]


def test_penultimate_features_are_the_third_fc_activations() -> None:
    torch.manual_seed(0)
    net = densenet_classifier("densenet121", **NARROW_DENSENET).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        feats = penultimate_features(net, x)
        layers = net.head.layers
        manual = torch.relu(layers[6](torch.relu(layers[3](torch.relu(layers[0](net.pooled(x)))))))
        logits = layers[9](feats)
        assert feats.shape == (3, densenet2d.PENULTIMATE_FEATURES)
        assert torch.allclose(feats, manual, atol=1e-6)
        assert torch.allclose(logits, net(x), atol=1e-6)
        assert penultimate_features(Xception(width=0.125).eval(), torch.rand(1, 3, 80, 80)).shape == (1, 512)
    with pytest.raises(TypeError):
        penultimate_features(nn.Linear(2, 2), x)


def test_state_dict_round_trips() -> None:
    torch.manual_seed(1)
    xc, dn = Xception(width=0.125).eval(), densenet_classifier("densenet169", **NARROW_DENSENET).eval()
    torch.manual_seed(2)
    _round_trip(xc, Xception(width=0.125), torch.rand(1, 3, 96, 96))
    _round_trip(dn, densenet_classifier("densenet169", **NARROW_DENSENET), torch.rand(1, 3, 64, 64))
    assert isinstance(dn, DenseNetClassifier)


@pytest.mark.parametrize(("name", "size"), [("xception", 112), ("densenet169", 96)])
def test_grad_cam_on_the_cam_layer(name: str, size: int) -> None:
    torch.manual_seed(0)
    net: nn.Module = (Xception(width=NARROW_XCEPTION) if name == "xception"
                      else densenet_classifier("densenet169", **NARROW_DENSENET)).eval()
    layer = xception.CAM_LAYER if name == "xception" else densenet2d.CAM_LAYER
    res = grad_cam(net, torch.rand(1, 3, size, size), layer, target=1)
    assert res.heatmap.shape == (size, size) and res.heatmap.dtype == np.float32
    assert 0.0 <= float(res.heatmap.min()) and float(res.heatmap.max()) <= 1.0
    assert res.target == 1 and res.logits.shape == (2,)
    assert all(p.grad is None for p in net.parameters())
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0
