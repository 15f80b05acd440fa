"""Quantized-for-all supernet: slicing equals the extracted subnet, LSQ+ math, Q/DQ export matches fake-quant."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.compress.train import evaluate
from edgecompress.data import digits_loaders
from edgecompress.errors import BadInputError
from edgecompress.nas.evolution import _onnx_accuracy
from edgecompress.nas.lsq import (
    ActQuant,
    QConv2d,
    WeightQuant,
    fake_quant_act,
    fake_quant_weight,
    fold_all_bn,
    freeze_for_export,
)
from edgecompress.nas.space import parse_space
from edgecompress.nas.supernet import Supernet, SupernetConfig, export_subnet, slice_like, subnet_model, train_supernet

ALL_BLOCKS = "r16:c8:s2|irb:w8-16:d1-2:k3,5:e3,6:s1|e2gc:w16-24:d1-2:s2|tvconv:w16:d1-2:s1|fused:w16-24:d1-2:s1|" \
             "resnet:w16-24:d1-2:s2"


def _randomise_bn(net: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@torch.no_grad()
def test_active_subnet_equals_extracted_plain_module_fp32_and_int8():
    torch.manual_seed(0)
    space = parse_space(ALL_BLOCKS)
    supernet = Supernet(space)
    _randomise_bn(supernet)
    x = torch.randn(4, 3, 16, 16)
    rng = random.Random(0)
    subnets = [space.max_subnet(), space.min_subnet(), *(space.sample(rng) for _ in range(3))]
    for quantized in (False, True):
        if quantized:
            supernet.enable_quantization(x)
        supernet.eval()
        for sub in subnets:
            expected = supernet.set_active(sub)(x)
            got = supernet.extract(sub).eval()(x)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = supernet.extract(space.min_subnet(), quantized=True)
    assert sum(isinstance(m, QConv2d) for m in plain.modules()) > 5


def test_extract_quantized_before_qat_is_an_error():
    supernet = Supernet(parse_space("r16:c8:s2|irb:w8:d1"))
    with pytest.raises(BadInputError, match="quantization-aware"):
        supernet.extract(supernet.space.max_subnet(), quantized=True)


def test_slice_like_takes_leading_channels_and_centre_kernel():
    w = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = slice_like(w, torch.Size([1, 2, 3, 3]))
    assert torch.equal(out, w[:1, :2, 1:4, 1:4])
    with pytest.raises(BadInputError):
        slice_like(w, torch.Size([3, 3, 5, 5]))


def test_lsq_act_equals_torch_fake_quant_and_weights_are_symmetric():
    x = torch.linspace(-3, 9, 101)
    scale, beta = torch.tensor(0.05), torch.tensor(-1.0)
    expected = torch.fake_quantize_per_tensor_affine(x, 0.05, 20, 0, 255)  # z = round(1.0 / 0.05)
    torch.testing.assert_close(fake_quant_act(x, scale, beta), expected)
    w = torch.tensor([[2.0, -2.0, 0.3]])
    q = fake_quant_weight(w, torch.tensor([1.0 / 127]))
    assert q.tolist() == [[1.0, -1.0, pytest.approx(38 / 127)]]  # clamped to +-127 steps, symmetric


def test_lsq_scales_receive_gradients():
    w = torch.randn(4, 3, requires_grad=True)
    scale = torch.full((4,), 0.01, requires_grad=True)
    fake_quant_weight(w, scale).pow(2).sum().backward()
    assert scale.grad is not None and scale.grad.abs().sum() > 0 and w.grad.abs().sum() > 0


@torch.no_grad()
def test_bn_folding_is_exact_for_either_sign_of_gamma():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    wq = WeightQuant(6)
    wq.init_from(conv.weight)
    bn = nn.BatchNorm2d(6)
    _randomise_bn(nn.Sequential(bn))
    bn.weight.mul_(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -0.2]))
    model = nn.Sequential(QConv2d(conv, ActQuant(), wq), bn).eval()
    x = torch.randn(2, 4, 8, 8)
    expected = model(x)
    assert fold_all_bn(model) == 1 and freeze_for_export(model) == 1
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train, val = digits_loaders(batch_size=64, size=16, seed=0)
    space = parse_space("r16:c8:s2|irb:w16-24:d1-2:k3,5:e3,6:s1|fused:w24-32:d1:k3:e1,2:s2|resnet:w32:d1:s2")
    supernet = Supernet(space)
    logs = train_supernet(supernet, train, SupernetConfig(epochs=2, qat_epochs=1, lr=5e-3, num_random=1,
                                                          progress=False))
    calib = [b for b, _ in zip(train, range(5), strict=False)]
    return supernet, calib, val, logs


def test_sandwich_training_learns_and_ends_quantized(trained):
    supernet, calib, val, logs = trained
    assert supernet.quantized and [log["phase"] for log in logs][-1] == "supernet int8 qat"
    assert logs[1]["max_subnet_loss"] < logs[0]["max_subnet_loss"]
    assert evaluate(subnet_model(supernet, supernet.space.max_subnet(), calib), val) > 0.6


def test_sampled_subnets_export_as_qdq_int8_and_match_fake_quant_accuracy(trained, tmp_path):
    supernet, calib, val, _ = trained
    rng = random.Random(1)
    space = supernet.space
    for i, sub in enumerate([space.min_subnet(), space.sample(rng), space.sample(rng)]):
        model = subnet_model(supernet, sub, calib)
        fake_quant = evaluate(model, val)
        path = tmp_path / f"subnet{i}.onnx"
        export_subnet(model, path, input_size=16, data=calib[0][0])
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "BatchNormalization" not in ops
        onnx_acc = _onnx_accuracy(path, val)
        assert abs(onnx_acc - fake_quant) <= 0.01, (sub.format(), fake_quant, onnx_acc)
        assert fake_quant > 0.3


def test_int8_weights_in_the_graph_are_8_bit(trained, tmp_path):
    supernet, calib, _, _ = trained
    path = tmp_path / "max.onnx"
    export_subnet(subnet_model(supernet, supernet.space.max_subnet(), calib), path, 16, calib[0][0])
    graph = onnx.load(str(path)).graph
    zero_points = [n.input[2] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    dtypes = {init.data_type for init in graph.initializer if init.name in zero_points}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    dtypes |= {consts[z].attribute[0].t.data_type for z in zero_points if z in consts}
    assert dtypes and dtypes <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    assert np.isfinite(_onnx_accuracy(path, [(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long))]))


def test_weight_grid_follows_the_host_rule():
    from edgecompress.nas.lsq import host_weight_qmax

    supernet = Supernet(parse_space("r16:c8:s2|irb:w8:d1"))
    assert supernet.weight_qmax == host_weight_qmax()[0] in (63, 127)
    supernet.enable_quantization(torch.randn(2, 3, 16, 16))
    wq = next(iter(supernet.weight_quant.values()))
    w = torch.randn(8, 3, 3, 3)
    codes = (wq.eval()(w) / wq.scale.detach().view(-1, 1, 1, 1)).round()
    assert codes.abs().max() <= supernet.weight_qmax
