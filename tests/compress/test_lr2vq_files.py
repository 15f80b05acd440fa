"""LR²VQ accounting on hand-computed examples, the pickle-free checkpoint, and both ONNX files' parity."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from edgecompress.compress.lr2vq.accounting import GRID_ATTR, account, fold_batchnorm, is_folded_bn
from edgecompress.compress.lr2vq.api import _to_stored_form
from edgecompress.compress.lr2vq.block import LR2VQLayer
from edgecompress.compress.lr2vq.onnx_compact import export_compact_onnx, export_dense_onnx
from edgecompress.compress.lr2vq.storage import MAGIC, load_compact, read_compact, save_compact
from edgecompress.errors import BadInputError


def _quantise(model: nn.Module, specs: dict[str, tuple[int, int, int, bool]], bn_bits: int = 16) -> nn.Module:
    """Replace named layers by blocks (m, d, k, identity), cluster, harden and freeze them."""
    for name, (m, d, k, identity) in specs.items():
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        block = LR2VQLayer(getattr(owner, leaf), m=m, d=d, k=k, identity=identity)
        block.start_clustering(seed=0)
        block.finish_clustering()
        setattr(owner, leaf, block)
    _to_stored_form(model, bn_bits)
    return model.eval()


class Net(nn.Module):
    """Conv+BN, depthwise conv, 1x1 conv, a 3-channel stem left dense, a Linear head: odd (pruned-like) widths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.pw = nn.Conv2d(12, 20, 1, bias=True)
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.pw(self.dw(x)))
        return self.fc(x.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial BN statistics
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net.eval()


def test_ratio_of_a_linear_layer_matches_the_hand_count():
    model = _quantise(nn.Sequential(nn.Linear(16, 8)), {"0": (4, 2, 4, False)})
    acc = account(model)
    # N = 8*16/4 = 32 codes x 2 bits + codebook 4x2 fp16 + P 4x2 fp16 + bias 8 fp16 = 64+128+128+128 = 448 bits
    assert acc["layers"][0]["bits"] == {"codes": 64, "codebook": 128, "projection": 128, "bias": 128, "total": 448}
    assert acc["compressed_bytes"] == 56
    assert acc["reference_bytes"] == (128 + 8) * 4  # 544
    assert acc["ratio"] == pytest.approx(544 / 56)


def test_ratio_with_folded_batchnorm_and_pq_matches_the_hand_count():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8))
    model = _quantise(model, {"0": (9, 9, 4, True)})
    acc = account(model)
    # conv: N = 288/9 = 32 codes x 2 bits + codebook 4x9 fp16 (no projection: PQ) = 64 + 576 = 640 bits
    # BN folded: weight + bias, 16 values x 16 bits = 256 bits; total 896 bits = 112 bytes
    # reference: 288 weights + 4 x 8 BN values at 32 bits = 1280 bytes
    assert acc["compressed_bytes"] == 112
    assert acc["reference_bytes"] == 1280
    assert acc["ratio"] == pytest.approx(1280 / 112)


def test_8bit_batchnorm_matches_the_hand_count_and_stays_within_half_a_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    model = _quantise(model, {"0": (9, 9, 4, True)}, bn_bits=8)
    acc = account(model)
    # conv as above: 640 bits; BN: 2 tensors x (8 codes x 8 bits + lo and step in fp16) = 192 bits; 832 bits = 104 B
    assert acc["compressed_bytes"] == 104
    assert acc["reference_bytes"] == 1280
    for leaf in ("weight", "bias"):
        lo, step = getattr(model[1], GRID_ATTR)[leaf]
        assert step > 0 and np.float16(lo) == lo and np.float16(step) == step
        error = (getattr(model[1], leaf) - getattr(folded[1], leaf)).abs().max().item()
        assert error <= step / 2 * (1 + 1e-3)


def test_8bit_batchnorm_reloads_bit_exact_and_is_uint8_in_the_compact_onnx(tmp_path):
    model = _quantise(_net(), {"stem": (4, 2, 16, False), "dw": (4, 3, 8, False), "pw": (4, 2, 16, False),
                               "fc": (4, 4, 8, True)}, bn_bits=8)
    info = save_compact(model, tmp_path / "m.ecvq")
    acc = account(model)
    assert acc["compressed_bytes"] <= info["payload_bytes"] < acc["compressed_bytes"] + 4
    header, _ = read_compact(tmp_path / "m.ecvq")
    assert [t[1] for t in header["tensors"] if t[0].startswith("bn.")] == ["grid8", "grid8"]
    reloaded = load_compact(tmp_path / "m.ecvq", _net())
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    assert account(reloaded)["compressed_bytes"] == acc["compressed_bytes"]
    compact = export_compact_onnx(model, x[:1], tmp_path / "c.onnx")
    assert compact["grid8_initializers"] == 2 and compact["max_rel_error"] < 1e-4
    inits = {i.name: i.data_type for i in onnx.load(str(tmp_path / "c.onnx")).graph.initializer}
    assert inits["bn.weight__q8"] == inits["bn.bias__q8"] == onnx.TensorProto.UINT8
    assert "bn.weight" not in inits


def test_fold_batchnorm_keeps_eval_outputs():
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    folded = copy.deepcopy(net)
    assert fold_batchnorm(folded) == ["bn"]
    assert is_folded_bn(folded.bn) and not is_folded_bn(net.bn)
    assert torch.allclose(folded(x), before, atol=1e-5)


def _quantised_net() -> nn.Module:
    # stem: m=4 divides 324 weights, not L=27 (straddles rows); dw: PQ-free LR2VQ over 3x3 kernels
    return _quantise(_net(), {"stem": (4, 2, 16, False), "dw": (4, 3, 8, False), "pw": (4, 2, 16, False),
                              "fc": (4, 4, 8, True)})


def test_checkpoint_reloads_bit_exact_without_pickle(tmp_path):
    model = _quantised_net()
    info = save_compact(model, tmp_path / "m.ecvq")
    data = (tmp_path / "m.ecvq").read_bytes()
    assert data[:8] == MAGIC and b"torch" not in data and not data.startswith(b"PK")
    assert info["bytes"] == info["header_bytes"] + info["payload_bytes"]
    acc = account(model)
    # payload = exact bits, padded to whole bytes per packed code array (4 code arrays: < 4 bytes of padding)
    assert acc["compressed_bytes"] <= info["payload_bytes"] < acc["compressed_bytes"] + 4
    reloaded = load_compact(tmp_path / "m.ecvq", _net())
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    header, arrays = read_compact(tmp_path / "m.ecvq")
    assert header["folded_bn"] == ["bn"] and set(header["layers"]) == {"stem", "dw", "pw", "fc"}
    assert np.array_equal(arrays["pw.codes"], model.pw.codes.numpy())


def test_checkpoint_bad_files_and_wrong_architecture(tmp_path):
    model = _quantised_net()
    save_compact(model, tmp_path / "m.ecvq")
    other = _net()
    other.pw = nn.Conv2d(12, 24, 1)
    with pytest.raises(BadInputError, match="'pw' has weight shape"):
        load_compact(tmp_path / "m.ecvq", other)
    (tmp_path / "bad.ecvq").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match="bad magic"):
        load_compact(tmp_path / "bad.ecvq", _net())
    (tmp_path / "cut.ecvq").write_bytes((tmp_path / "m.ecvq").read_bytes()[:-10])
    with pytest.raises(BadInputError, match="truncated"):
        read_compact(tmp_path / "cut.ecvq")


def test_unfrozen_model_is_refused_by_save(tmp_path):
    model = nn.Sequential(LR2VQLayer(nn.Linear(16, 8), m=4, d=2, k=4))
    with pytest.raises(ValueError, match="freeze"):
        save_compact(model, tmp_path / "m.ecvq")


def test_compact_and_dense_onnx_match_torch(tmp_path):
    model = _quantised_net()
    x = torch.randn(1, 3, 8, 8)
    compact = export_compact_onnx(model, x, tmp_path / "c.onnx")
    dense = export_dense_onnx(model, x, tmp_path / "d.onnx")
    assert compact["max_rel_error"] < 1e-4 and dense["max_rel_error"] < 1e-4
    assert compact["op_counts"]["Gather"] == 4 and "Gather" not in dense["op_counts"]
    proto = onnx.load(str(tmp_path / "c.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    codes = [i for name, i in inits.items() if name.endswith("codes")]
    assert len(codes) == 4 and all(i.data_type == onnx.TensorProto.UINT8 for i in codes)
    books = [i for name, i in inits.items() if "codebook" in name]
    assert books and all(i.data_type == onnx.TensorProto.FLOAT16 for i in books)
    # run it in onnxruntime on a batch of 5 and compare with torch
    import onnxruntime as ort

    xb = torch.randn(5, 3, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": xb.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model(xb).numpy(), rtol=1e-4, atol=1e-5)


def test_compact_onnx_is_smaller_than_dense_for_a_larger_layer(tmp_path):
    model = _quantise(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False)), {"0": (16, 4, 64, False)})
    x = torch.randn(1, 64, 6, 6)
    compact = export_compact_onnx(model, x, tmp_path / "c.onnx")
    dense = export_dense_onnx(model, x, tmp_path / "d.onnx")
    # 36864 weights: dense ~147 kB; compact: 2304 uint8 codes + 64x4 + 16x4 fp16 + graph
    assert dense["bytes"] > 147_000
    assert compact["bytes"] < 6_000
