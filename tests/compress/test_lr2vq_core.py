"""LR²VQ pure core: k-means, soft assignment, bit packing, the block's reconstruction, the d-estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecompress.compress.lr2vq.block import LR2VQLayer, code_bits, code_dtype, lowrank_init, to_subvectors
from edgecompress.compress.lr2vq.estimate import estimate_d, layer_curves
from edgecompress.compress.lr2vq.kmeans import assign, kmeans, soft_assign
from edgecompress.compress.lr2vq.storage import pack_bits, unpack_bits


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])  # (150, 2)
    c, codes, error = kmeans(x, 3, seed=1)
    # every blob gets one code, and the centroids sit on the blob centres
    for b in range(3):
        assert len(set(codes[50 * b:50 * (b + 1)].tolist())) == 1
    assert torch.cdist(c, centres).min(1).values.max() < 0.1
    assert error == pytest.approx(float(((x - c[codes]) ** 2).sum()), rel=1e-5)
    assert error < 150 * 2 * 0.1 ** 2 * 1.5


def test_kmeans_rejects_k_larger_than_n():
    with pytest.raises(ValueError, match="k=5"):
        kmeans(torch.zeros(4, 2), 5)


def test_soft_assignment_rows_sum_to_one_and_harden_at_low_temperature():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(20, 3, generator=g), torch.randn(4, 3, generator=g)
    a = soft_assign(x, c, 1.0)
    assert torch.allclose(a.sum(1), torch.ones(20))
    hard = soft_assign(x, c, 1e-6)
    assert torch.equal(hard.argmax(1), assign(x, c))
    assert hard.max(1).values.min() > 0.999


@pytest.mark.parametrize("bits", [1, 3, 6, 8, 11])
def test_bit_packing_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=37)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(37 * bits / 8)
    assert np.array_equal(unpack_bits(packed, bits, 37), codes)


def test_code_bits_and_dtype():
    assert [code_bits(k) for k in (2, 4, 5, 64, 256, 257)] == [1, 2, 3, 6, 8, 9]
    assert code_dtype(256) == torch.uint8 and code_dtype(257) == torch.int16


def test_lowrank_init_is_the_best_rank_d_approximation():
    w = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    p, z = lowrank_init(w, 6)
    assert torch.allclose(z @ p.t(), w, atol=1e-5)
    p, z = lowrank_init(w, 2)
    s = torch.linalg.svdvals(w.double())
    assert float(((w - z @ p.t()) ** 2).sum()) == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-4)


def test_subvectors_follow_the_input_dimension():
    w = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3)
    sub = to_subvectors(w, 9)  # one 3x3 kernel per sub-vector
    assert torch.equal(sub[1], w[0, 1].flatten())
    assert torch.equal(sub[2], w[1, 0].flatten())


@pytest.mark.parametrize("layer", [
    nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=True),
    nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise: L = 9, m = 4 straddles rows
    nn.Linear(16, 5),
])
def test_block_reproduces_the_layer_at_full_rank(layer):
    block = LR2VQLayer(layer, m=4, d=4, k=4)
    x = torch.randn(2, 8, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(3, 16)
    with torch.no_grad():
        assert torch.allclose(block(x), layer(x), atol=1e-5)


def test_block_hard_weight_is_projection_of_codewords():
    layer = nn.Conv2d(4, 8, 3, bias=False)
    block = LR2VQLayer(layer, m=9, d=3, k=8)
    block.start_clustering(seed=0)
    z = block.z.detach().clone()
    block.finish_clustering()
    codes = block.codes.long()
    assert torch.equal(codes, assign(z, block.codebook.detach()))
    expected = (block.codebook[codes] @ block.proj.t()).reshape(8, 4, 3, 3)
    assert torch.allclose(block.weight(), expected)
    block.freeze()
    assert block.codebook.dtype == torch.float16 and block.proj.dtype == torch.float16
    assert block.codes.dtype == torch.uint8


def test_soft_phase_passes_gradients_to_z_and_projection():
    block = LR2VQLayer(nn.Linear(16, 8), m=4, d=2, k=4)
    block.start_clustering(seed=0)
    block.tau = 0.5 * block.tau_scale
    block.train()
    block(torch.randn(3, 16)).square().sum().backward()
    assert block.z.grad is not None and block.z.grad.abs().sum() > 0
    assert block.proj.grad is not None and block.proj.grad.abs().sum() > 0


def test_pq_block_stores_no_projection_and_needs_d_equal_m():
    block = LR2VQLayer(nn.Linear(16, 8), m=4, d=4, k=4, identity=True)
    assert block.proj is None
    with pytest.raises(ValueError, match="d == m"):
        LR2VQLayer(nn.Linear(16, 8), m=4, d=2, k=4, identity=True)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"m": 4, "d": 5, "k": 4}, "d=5"),
    ({"m": 4, "d": 2, "k": 64}, "k=64"),  # N = 32 sub-vectors
    ({"m": 5, "d": 2, "k": 4}, "m=5"),
])
def test_block_bad_arguments_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LR2VQLayer(nn.Linear(16, 8), **kwargs)
    with pytest.raises(TypeError, match="Conv2d or nn.Linear"):
        LR2VQLayer(nn.BatchNorm2d(4), m=4, d=2, k=4)


def test_estimate_errors_split_exactly_and_pick_the_crossing():
    g = torch.Generator().manual_seed(0)
    # sub-vectors of exact rank 2 in R^8: e_lr(d >= 2) = 0, so d = 2 balances both errors best
    w = torch.randn(256, 2, generator=g) @ torch.randn(2, 8, generator=g)
    lowrank, clustering = layer_curves(w, 8, [1, 2, 4, 8])
    assert lowrank[1] == pytest.approx(0.0, abs=1e-6) and lowrank[0] > 0
    est = estimate_d([("w", w, 32)], m=8, candidates=[1, 2, 4, 8])  # 32 codewords: 2-d clustering error is small
    assert est.d == 2
    i = est.candidates.index(2)
    assert est.as_dict()["total_error"][i] == pytest.approx(est.lowrank_error[i] + est.clustering_error[i])
    # Pythagoras: the rebuilt weight's error equals E_lr(d) + E_c(d)
    w2 = torch.randn(128, 6, generator=g)
    p, z = lowrank_init(w2, 3)
    c, codes, err_c = kmeans(z, 4, iters=10, seed=0)
    lr, cl = layer_curves(w2, 4, [3], iters=10, seed=0)
    rebuilt = c[codes] @ p.t()
    assert float(((w2 - rebuilt) ** 2).sum()) == pytest.approx(lr[0] + cl[0], rel=1e-3)


def test_estimate_weighs_the_lowrank_error():
    from edgecompress.compress.lr2vq.estimate import DEstimate

    g = torch.Generator().manual_seed(1)
    w = torch.randn(512, 8, generator=g)  # full rank: e_lr falls linearly-ish, e_c rises with d
    plain = estimate_d([("w", w, 16)], m=8, lowrank_weight=1.0)
    weighted = estimate_d([("w", w, 16)], m=8)
    assert weighted.lowrank_weight == 0.5 and weighted.d <= plain.d
    i = weighted.candidates.index(weighted.d)
    score = [max(0.5 * a, b) for a, b in zip(weighted.lowrank_error, weighted.clustering_error, strict=True)]
    assert score[i] == min(score)
    assert "w * e_lr" in DEstimate(1, [1], [0.0], [0.0]).rule
    with pytest.raises(ValueError, match="lowrank_weight"):
        estimate_d([("w", w, 16)], m=8, lowrank_weight=0.0)
