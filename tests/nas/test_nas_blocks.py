"""Blocks of edgecompress.nas: make_divisible, the inverted residual, E2GC (+ cost model), TVConv."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import BadInputError
from edgecompress.nas.blocks import ConvBNAct, InvertedResidual, make_divisible
from edgecompress.nas.e2gc import (
    E2GCConv,
    E2GCInvertedResidual,
    choose_group_size,
    e2gc_cost,
    ridge_group_size,
)
from edgecompress.nas.mobilenetv2 import MobileNetV2
from edgecompress.nas.tvconv import TVConv, TVConvInvertedResidual, fuse_tvconv, per_pixel_depthwise


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- make_divisible, InvertedResidual ------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "divisor", "min_value", "expected"),
    [
        (32 * 0.5, 8, None, 16),  # exact multiple
        (3, 8, None, 8),  # never below min_value (= divisor)
        (91, 8, None, 88),  # nearest multiple, rounds down (88 >= 0.9 * 91)
        (100, 8, None, 104),  # int(104) // 8 * 8: halves round up
        (32 * 0.35, 8, None, 16),  # 11.2 -> 8 would lose > 10%, so 16
        (1280 * 1.4, 8, None, 1792),
        (5, 8, 4, 8),
        (10, 4, None, 12),
        (6, 4, 1, 8),
    ],
)
def test_make_divisible_matches_torchvision_rule(v: float, divisor: int, min_value: int | None, expected: int) -> None:
    assert make_divisible(v, divisor, min_value) == expected


def test_inverted_residual_layout_and_residual() -> None:
    t1 = InvertedResidual(16, 16, stride=1, expand_ratio=1)
    assert len(t1.conv) == 3  # no expand layer when t == 1
    assert t1.conv[0][0].groups == 16 and t1.conv[0][0].stride == (1, 1)

    t6 = InvertedResidual(16, 24, stride=2, expand_ratio=6)
    assert t6.hidden_dim == 96 and len(t6.conv) == 4
    assert t6.conv[0][0].kernel_size == (1, 1) and t6.conv[1][0].groups == 96
    assert isinstance(t6.conv[-1], nn.BatchNorm2d) and t6.conv[-2].kernel_size == (1, 1)  # linear bottleneck
    assert all(m.bias is None for m in t6.modules() if isinstance(m, nn.Conv2d))
    assert InvertedResidual(24, 24, 1, 6).use_res_connect
    assert not InvertedResidual(24, 24, 2, 6).use_res_connect
    assert not InvertedResidual(16, 24, 1, 6).use_res_connect
    assert InvertedResidual(10, 10, 1, 2.5).hidden_dim == 25  # round(inp * t), not rounded to 8


@pytest.mark.parametrize(("inp", "oup", "stride", "residual"), [(8, 8, 1, True), (8, 8, 2, False), (8, 16, 1, False)])
def test_inverted_residual_adds_input_only_when_shape_kept(inp: int, oup: int, stride: int, residual: bool) -> None:
    torch.manual_seed(0)
    block = InvertedResidual(inp, oup, stride, 6).eval()
    nn.init.zeros_(block.conv[-1].weight)  # last BN outputs 0: F(x) = 0
    nn.init.zeros_(block.conv[-1].bias)
    x = torch.randn(2, inp, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, oup, 8 // stride, 8 // stride)
    if residual:
        torch.testing.assert_close(y, x)
    else:
        assert torch.count_nonzero(y) == 0


def test_convbnact_is_same_padded_and_optionally_linear() -> None:
    layer = ConvBNAct(3, 8, kernel_size=5, stride=2, activation=None)
    assert len(layer) == 2 and layer[0].padding == (2, 2) and layer[0].bias is None
    assert layer(torch.zeros(1, 3, 9, 9)).shape == (1, 8, 5, 5)


# ---- MobileNetV2 ---------------------------------------------------------------------------------


def test_mobilenetv2_matches_paper_parameter_count() -> None:
    model = MobileNetV2(num_classes=1000)
    assert n_params(model) == 3_504_872  # torchvision's mobilenet_v2()
    assert model.features[0][0].out_channels == 32 and model.features[0][0].stride == (2, 2)
    assert model.last_channel == 1280 and len(model.features) == 1 + 17 + 1


@pytest.mark.parametrize(
    ("alpha", "stem", "last"), [(0.5, 16, 1280), (0.35, 16, 1280), (0.75, 24, 1280), (1.4, 48, 1792)]
)
def test_mobilenetv2_width_multiplier(alpha: float, stem: int, last: int) -> None:
    model = MobileNetV2(num_classes=10, width_mult=alpha)
    assert model.features[0][0].out_channels == stem
    assert model.last_channel == last
    assert model.features[-2].out_channels == make_divisible(320 * alpha)


def test_mobilenetv2_cifar_stem_keeps_4x4_at_32() -> None:
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, cifar_stem=True, input_size=32).eval()
    strides = [m.stride for m in model.features[1:-1]]
    assert model.features[0][0].stride == (1, 1)
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]  # the 24-channel stage: stride 1
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_mobilenetv2_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="block"):
        MobileNetV2(10, block="mbconv")
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2(10, width_mult=0)
    with pytest.raises(ValueError, match="stage_table"):
        MobileNetV2(10, stage_table=[(6, 24, 2, 3)])


# ---- E2GC ----------------------------------------------------------------------------------------


def test_e2gc_conv_has_constant_group_size() -> None:
    for channels in (16, 32, 96):
        conv = E2GCConv(channels, stride=1, group_size=8)
        assert conv.groups == channels // 8 and conv.weight.shape == (channels, 8, 3, 3)
    assert E2GCConv(4, stride=2, group_size=8).groups == 1  # G > C: one dense group
    with pytest.raises(ValueError, match="group_size"):
        E2GCConv(12, stride=1, group_size=8)


def test_e2gc_block_groups_follow_width_and_g1_is_depthwise() -> None:
    block = E2GCInvertedResidual(16, 24, stride=2, expand_ratio=6, group_size=8)
    spatial = block.conv[1][0]
    assert isinstance(spatial, E2GCConv) and spatial.groups == 96 // 8 and spatial.stride == (2, 2)
    assert n_params(E2GCInvertedResidual(16, 16, 1, 6, group_size=1)) == n_params(InvertedResidual(16, 16, 1, 6))


def test_e2gc_cost_hand_example_and_module() -> None:
    # C_in = C_out = 64, 8x8, K = 3, s = 1, G = 8, b = 4 bytes:
    # MACs = 8*8 * 9 * 64 * 8 = 294,912; params = 9 * 64 * 8 = 4,608;
    # D = 64*8*8 + 4,608 + 64*8*8 = 12,800 elements = 51,200 bytes; AI = 294,912 / 51,200 = 5.76
    cost = e2gc_cost(64, 64, 8, 8, kernel=3, stride=1, group_size=8)
    assert (cost.macs, cost.params, cost.bytes_moved) == (294_912, 4_608, 51_200)
    assert cost.arithmetic_intensity == pytest.approx(5.76)
    conv = E2GCConv(64, stride=1, group_size=8)
    assert cost.params == conv.weight.numel()
    out = conv(torch.zeros(1, 64, 8, 8))
    assert cost.macs == out.numel() * 9 * 8  # each output element: K^2 * G MACs

    # stride 2: H = W = 4; MACs = 16 * 9 * 64 * 8 = 73,728; D = 4,096 + 4,608 + 1,024 = 9,728
    cost2 = e2gc_cost(64, 64, 8, 8, kernel=3, stride=2, group_size=8)
    assert (cost2.macs, cost2.bytes_moved) == (73_728, 4 * 9_728)
    with pytest.raises(ValueError, match="group_size"):
        e2gc_cost(64, 64, 8, 8, 3, 1, group_size=3)


def test_choose_group_size_hand_example() -> None:
    # AI(G) = 36,864 G / (4 (8,192 + 576 G)) for the layer above: AI(1) = 1.05, AI(4) = 3.51,
    # AI(8) = 5.76, AI(64) = 13.09, sup = H*W/b = 16.
    def pick(peak: float, bandwidth: float = 1e9, **kw: object) -> int:
        return choose_group_size(64, 64, 8, 8, 3, 1, peak, bandwidth, **kw)

    assert pick(1e9) == 1  # R = 1: already compute-bound depthwise
    assert pick(5e9) == 8  # R = 5: G* = 6.46 -> next power of two
    assert pick(16e9) == 64  # R = 16 is never reached: largest candidate
    assert pick(5e9, candidates=[2, 4]) == 4
    with pytest.raises(ValueError, match="group_size"):
        pick(5e9, candidates=[3])
    assert ridge_group_size(64, 64, 8, 8, 3, 1, ridge_point=5.0) == pytest.approx(40_960 / 6_336)
    assert math.isinf(ridge_group_size(64, 64, 8, 8, 3, 1, ridge_point=16.0))


def test_choose_group_size_is_monotone_in_ridge_point() -> None:
    peaks = [0.5e9 * 2**i for i in range(8)]
    by_peak = [choose_group_size(128, 128, 14, 14, 3, 1, p, 1e9) for p in peaks]
    assert by_peak == sorted(by_peak) and by_peak[0] < by_peak[-1]  # more compute per byte: larger G
    by_bandwidth = [choose_group_size(128, 128, 14, 14, 3, 1, 8e9, 2**i * 1e8) for i in range(8)]
    assert by_bandwidth == sorted(by_bandwidth, reverse=True) and by_bandwidth[0] > by_bandwidth[-1]
    for peak, g in zip(peaks, by_peak, strict=True):
        g_star = ridge_group_size(128, 128, 14, 14, 3, 1, peak / 1e9)
        if g_star <= 128:
            assert g >= g_star and (g == 1 or g / 2 < g_star)  # smallest power of two >= G*


# ---- TVConv --------------------------------------------------------------------------------------


def unfold_reference(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """The paper's formulation: nn.Unfold, view (N, C, k^2, h, w), multiply, sum over k^2."""
    n, c = x.shape[:2]
    k2, h, w = weight.shape[2:]
    cols = F.unfold(x, int(math.isqrt(k2)), padding=(int(math.isqrt(k2)) - 1) // 2, stride=stride)
    return (cols.view(n, c, k2, h, w) * weight).sum(2)


@pytest.mark.parametrize(("stride", "k"), [(1, 3), (2, 3), (1, 5), (2, 1)])
def test_per_pixel_depthwise_equals_unfold(stride: int, k: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9)
    out = (9 + 2 * ((k - 1) // 2) - k) // stride + 1
    weight = torch.randn(1, 4, k * k, out, out)
    torch.testing.assert_close(per_pixel_depthwise(x, weight, stride), unfold_reference(x, weight, stride))


def test_per_pixel_depthwise_with_shared_kernels_is_depthwise_conv() -> None:
    torch.manual_seed(0)
    x, kernel = torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3)
    weight = kernel.view(1, 4, 9, 1, 1).expand(1, 4, 9, 4, 4)
    expected = F.conv2d(x, kernel, stride=2, padding=1, groups=4)
    torch.testing.assert_close(per_pixel_depthwise(x, weight, 2), expected)


def test_tvconv_shapes_and_structure() -> None:
    conv = TVConv(8, out_size=(6, 5), stride=2)
    assert conv.affinity.shape == (1, 4, 6, 5) and bool((conv.affinity == 1).all())
    block = conv.weight_block
    assert [type(m) for m in block] == [nn.Conv2d, nn.LayerNorm, nn.ReLU] * 2 + [nn.Conv2d]
    assert block[1].normalized_shape == (16, 6, 5) and block[-1].out_channels == 9 * 8
    assert all(m.bias is None for m in block if isinstance(m, nn.Conv2d))
    assert conv(torch.randn(2, 8, 12, 10)).shape == (2, 8, 6, 5)
    with pytest.raises(BadInputError, match="TVConv"):
        conv(torch.randn(2, 8, 16, 16))


def test_tvconv_is_translation_variant() -> None:
    torch.manual_seed(0)
    conv = TVConv(4, out_size=(12, 12))
    with torch.no_grad():
        conv.affinity.normal_()  # trained maps differ per pixel
    depthwise = nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False)
    x = torch.randn(1, 4, 12, 12)
    shifted = torch.roll(x, shifts=(2, 3), dims=(2, 3))
    with torch.no_grad():
        for layer, equivariant in ((depthwise, True), (conv, False)):
            y, y_shifted = layer(x), layer(shifted)
            # compare away from borders and the roll's wrap-around
            inner, inner_shifted = y[..., 2:8, 2:8], y_shifted[..., 4:10, 5:11]
            assert torch.allclose(inner, inner_shifted, atol=1e-5) is equivariant


def test_tvconv_cached_and_fused_paths_equal_training_path() -> None:
    torch.manual_seed(0)
    conv = TVConv(6, out_size=(8, 8), stride=1)
    with torch.no_grad():
        conv.affinity.normal_()
    x = torch.randn(2, 6, 8, 8)
    y_train = conv(x)

    conv.eval()
    with torch.no_grad():
        torch.testing.assert_close(conv(x), y_train.detach())
        conv.weight_block[-1].weight.mul_(2.0)  # in-place update (W doubles): the cache must notice
        y_changed = conv(x)
    conv.train()
    torch.testing.assert_close(y_changed, conv(x).detach())
    assert not torch.allclose(y_changed, y_train)

    conv.eval()
    conv(x).sum().backward()  # eval with autograd on: W is generated live, B gets gradients
    assert conv.affinity.grad is not None and conv.affinity.grad.abs().sum() > 0

    assert fuse_tvconv(nn.Sequential(conv)) == 1
    assert conv.affinity is None and conv.weight_block is None
    assert n_params(conv) == 0 and conv.fused_weight.shape == (1, 6, 9, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), y_changed)


def test_tvconv_inverted_residual() -> None:
    block = TVConvInvertedResidual(8, 8, stride=1, expand_ratio=4, out_size=(8, 8))
    assert isinstance(block.conv[1][0], TVConv) and isinstance(block.conv[1][2], nn.ReLU6)
    assert block.use_res_connect and block.conv[1][0].channels == 32
    assert block(torch.randn(2, 8, 8, 8)).shape == (2, 8, 8, 8)
    down = TVConvInvertedResidual(8, 16, stride=2, expand_ratio=4, out_size=(4, 4))
    assert down(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4) and not down.use_res_connect
