"""Zero-invariance: random zero groups -> construct the subnet -> outputs equal the group-sparse model.

Covers every tiny zoo model plus test architectures (residual add chains, DenseNet-style concat, depthwise
and grouped convs, flatten -> linear, multi-head attention, tied weights), and checks that unsafe groups
(LayerNorm over channels, GroupNorm with several channels per group, sigmoid gating, raw input added) are
marked unprunable with a reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecompress.compress.otov2.api import OTO
from edgecompress.nas import zoo


def _randomize_norms(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _sanity(model: nn.Module, x: torch.Tensor, target: float = 0.5) -> OTO:
    _randomize_norms(model)
    oto = OTO(model.eval(), x[:1])
    before = oto.compute_num_params()
    zeroed = oto.random_zero_groups(target, seed=0)
    assert zeroed > 0, "no group was zeroed"
    sub = oto.construct_subnet(check_inputs=x)  # raises CheckFailedError past rel. err 1e-5
    assert oto.last_construction["relative_error"] <= 1e-5
    assert sum(p.numel() for p in sub.parameters()) < before
    return oto


@pytest.mark.parametrize("name", [n for n in zoo.names() if zoo.info(n).tiny])
def test_random_zero_groups_keep_outputs_on_tiny_zoo_models(name):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10)
    oto = _sanity(model, torch.randn(3, *model.input_size))
    head = [z for z in oto.groups if not z.prunable]
    assert head and all("output" in z.reason for z in head)  # only the classifier is left alone


class ResidualChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 8, 3, padding=1),
                          nn.BatchNorm2d(8)) for _ in range(3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.head(x.mean((2, 3)))


class DenseConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.l1 = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
        self.l2 = nn.Sequential(nn.BatchNorm2d(10), nn.ReLU(), nn.Conv2d(10, 4, 3, padding=1))
        self.bn = nn.BatchNorm2d(14)
        self.head = nn.Linear(14, 4)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = torch.cat([x0, self.l1(x0)], 1)
        x2 = torch.cat([x1, self.l2(x1)], 1)
        return self.head(torch.relu(self.bn(x2)).mean((2, 3)))


class GroupedAndDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.gc = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1, groups=4), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(self.gc(self.dw(self.a(x))).mean((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc1 = nn.Linear(8 * 8 * 8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.conv(x), 1))))


class Attention(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.ff = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 3)
        self.batch_first = batch_first

    def forward(self, x):  # (B, L, 12)
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a, _ = self.attn(h, h, h, need_weights=False)
        if not self.batch_first:
            a = a.transpose(0, 1)
        h = h + a if self.batch_first else h.transpose(0, 1) + a
        h = h + self.ff(h)
        return self.head(h.mean(1))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 16)
        self.b.weight = self.a.weight
        self.mid = nn.Linear(16, 8)
        self.c = nn.Linear(16, 12)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.a(x))))
        return self.head(torch.relu(self.c(torch.relu(self.b(h)))))


@pytest.mark.parametrize("arch, shape", [
    (ResidualChain, (3, 3, 16, 16)),
    (DenseConcat, (3, 3, 16, 16)),
    (GroupedAndDepthwise, (3, 3, 16, 16)),
    (FlattenLinear, (3, 3, 32, 32)),
    (Attention, (3, 5, 12)),
    (Tied, (3, 8)),
])
def test_random_zero_groups_keep_outputs_on_test_architectures(arch, shape):
    torch.manual_seed(0)
    _sanity(arch(), torch.randn(*shape))


def test_grouped_conv_loses_whole_conv_groups():
    torch.manual_seed(0)
    oto = _sanity(GroupedAndDepthwise(), torch.randn(2, 3, 16, 16))
    gc = oto.subnet.gc[0]
    assert gc.in_channels // gc.groups == 4 and gc.out_channels // gc.groups == 6
    assert gc.groups < 4
    assert [z.kind for z in oto.groups if "gc.0" in z.modules] == ["conv-groups"]


def test_attention_pruned_by_whole_heads():
    torch.manual_seed(0)
    oto = _sanity(Attention(), torch.randn(2, 5, 12))
    heads = [z for z in oto.groups if z.kind == "heads"]
    assert len(heads) == 1 and heads[0].num_rows == 4 and heads[0].unit == 4 and heads[0].prunable
    assert oto.subnet.attn.num_heads == 2 and oto.subnet.attn.head_dim == 4
    embed = [z for z in oto.groups if "embed" in z.modules][0]
    assert not embed.prunable and "attention" in embed.reason


def test_tied_weights_are_never_half_pruned():
    oto = OTO(Tied().eval(), torch.randn(1, 8))
    for z in oto.groups:
        if {"a", "b", "mid", "c"} & set(z.modules) and z.name in ("a", "b", "mid"):
            assert not z.prunable and "shared" in z.reason
    assert [z.prunable for z in oto.groups if z.name == "c"] == [True]


class Unsafe(nn.Module):
    """Four branches, each with one operator that does not keep zero channels zero."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = {"layernorm": nn.LayerNorm([8, 8, 8]), "groupnorm": nn.GroupNorm(2, 8)}.get(kind, nn.Identity())
        self.conv2 = nn.Conv2d(8, 3 if kind == "input" else 6, 1)
        self.head = nn.Linear(3 if kind == "input" else 6, 2)

    def forward(self, x):
        h = self.norm(self.conv(x))
        if self.kind == "sigmoid":
            h = torch.sigmoid(h)
        h = self.conv2(h)
        if self.kind == "input":
            h = h + x
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("kind, words", [("layernorm", "LayerNorm"), ("groupnorm", "GroupNorm"),
                                         ("sigmoid", "sigmoid"), ("input", "raw model input")])
def test_unsafe_groups_are_unprunable_with_reason(kind, words):
    oto = OTO(Unsafe(kind).eval(), torch.randn(1, 3, 8, 8))
    group = [z for z in oto.groups if ("conv2" if kind == "input" else "conv") == z.name][0]
    assert not group.prunable
    assert words in group.reason


def test_no_prunable_group_is_a_clear_error():
    from edgecompress.errors import BadInputError

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    oto = OTO(model, torch.randn(1, 12))
    with pytest.raises(BadInputError, match="no prunable group"):
        oto.random_zero_groups(0.5, seed=0)


class PlainSelfAttention(nn.Module):
    """A hand-written attention block (qkv linear, reshape to heads, matmul, softmax, projection)."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):  # (B, L, dim)
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        y = self.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        return self.head((x + y).mean(1))


def test_plain_self_attention_is_left_alone_with_a_reason():
    oto = OTO(PlainSelfAttention().eval(), torch.randn(1, 5, 16))
    qkv = [z for z in oto.groups if z.name == "qkv"]
    assert qkv and not qkv[0].prunable and qkv[0].reason


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_cifar", "vgg11_bn"])
def test_random_zero_groups_keep_outputs_on_full_size_cifar_models(name):
    # the whole zoo (ImageNet sizes too) is checked by bench/otov2/zoo_sanity.py
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10)
    _sanity(model, torch.randn(2, *model.input_size))


def test_row_macs_counts_producer_rows_and_consumer_columns():
    from edgecompress.compress.otov2.zig import row_macs

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, stride=2),
                          nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    oto = OTO(model.eval(), torch.randn(2, 3, 8, 8))
    costs = row_macs(model, torch.randn(2, 3, 8, 8), oto.prunable_groups)
    by_module = {z.modules[0]: costs[z.id] for z in oto.prunable_groups}
    # a row of conv 0: its 3x3x3 filter at 8x8 outputs, plus its input column of conv 3 (1x1, 2 filters at 4x4)
    assert torch.equal(by_module["0"], torch.full((4,), 3 * 9 * 64 + 2 * 16, dtype=torch.float64))
    # a row of conv 3: its 4-input filter at 4x4 outputs, plus the 16 Linear inputs it feeds (5 outputs each)
    assert torch.equal(by_module["3"], torch.full((2,), 4 * 16 + 16 * 5, dtype=torch.float64))
