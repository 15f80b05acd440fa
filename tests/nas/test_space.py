"""Search spaces as data: encoding round trip, stable hash, validation errors, sampling, materialising."""

from __future__ import annotations

import random

import pytest
import torch

from edgecompress.errors import BadInputError
from edgecompress.export.onnx import export_onnx
from edgecompress.nas.space import (
    BLOCKS,
    CIFAR_HYPERSPACE,
    FusedMBConv,
    materialize,
    mobilenetv2_space,
    parse_space,
    parse_subnet,
)

TEXT = "r32:c16:s2|irb:w16-24:d1-2:k3,5:e3,6:s1|e2gc:w32-40:d1-2:k3:e3,6:s2|resnet:w48:d1:k3,5:e0.5,1:s2"


def test_format_parse_round_trip_for_every_block_type():
    rng = random.Random(0)
    for _ in range(20):
        space = CIFAR_HYPERSPACE.space(CIFAR_HYPERSPACE.random_genes(rng))
        text = space.format()
        assert parse_space(text) == space
        assert parse_space(text).format() == text
        for _ in range(5):
            sub = space.sample(rng)
            assert parse_subnet(sub.format()) == sub
            space.validate(sub)
    assert parse_space(TEXT).format() == TEXT
    assert set(BLOCKS.names()) == {"irb", "e2gc", "tvconv", "resnet", "fused"}


def test_hash_is_stable_and_distinguishes_spaces():
    assert parse_space(TEXT).hash() == parse_space(TEXT).hash()
    assert parse_space(TEXT).hash() == "385f68f71400"  # sha256 of the text: must not change between versions
    assert parse_space(TEXT.replace("w48", "w56")).hash() != parse_space(TEXT).hash()


def test_defaults_fill_kernels_and_expansions():
    space = parse_space("fused:w16-24:d1")
    assert space.stages[0].kernels == (3, 5) and space.stages[0].expansions == (1.0, 2.0)
    assert space.input_size == 32 and space.stages[0].stride == 1


@pytest.mark.parametrize("text, needle", [
    ("r32|conv7:w16:d1", "conv7"),                  # unknown block type is named
    ("e2gc:w16:d1:k5", "kernel"),                   # E2GC is 3x3 only
    ("irb:w12:d1", "multiples of 8"),
    ("irb:w16:d1:e1", "expansions"),                # an inverted residual needs e > 1
    ("irb:w16:d1:x3", "bad or repeated field"),
    ("irb:d1", "missing field 'w'"),
    ("irb:w16:d1:s3", "stride"),
])
def test_bad_space_text_names_the_fault(text, needle):
    with pytest.raises(BadInputError, match=needle):
        parse_space(text)


def test_validate_rejects_subnets_outside_the_space():
    space = parse_space(TEXT)
    with pytest.raises(BadInputError, match="width 64"):
        space.validate(parse_subnet("w64:k3e3|w32:k3e3|w48:k3e1"))
    with pytest.raises(BadInputError, match="stages"):
        space.validate(parse_subnet("w16:k3e3"))


def test_materialize_builds_the_chosen_architecture():
    space = parse_space(TEXT)
    sub = parse_subnet("w24:k5e6,k3e3|w32:k3e6|w48:k5e0.5")
    net = materialize(space, sub, num_classes=7)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert len(net.stages[0]) == 2 and net.stages[0][0].conv[1][0].kernel_size == (5, 5)
    assert net.stages[1][0].conv[1][0].groups == 24 * 6 // 8  # hidden = inp * e = 144, group size 8
    assert net.stages[2][0].conv1.out_channels == 24 and net.stages[2][0].downsample is not None
    assert isinstance(materialize(parse_space("fused:w16:d1:e2"), parse_subnet("w16:k3e2")).stages[0][0], FusedMBConv)


def test_sampling_covers_the_choices():
    space = mobilenetv2_space()
    rng = random.Random(0)
    subs = [space.sample(rng) for _ in range(200)]
    assert {s.stages[0].width for s in subs} == set(space.stages[0].widths)
    assert {s.stages[2].depth for s in subs} == set(space.stages[2].depths)


def test_every_block_type_exports_to_onnx(tmp_path):
    space = parse_space("r16:c8:s2|irb:w8-16:d1-2:s1|tvconv:w16:d1:s2|fused:w16:d1:s1|e2gc:w16:d1|resnet:w24:d1:s2")
    net = materialize(space, space.sample(random.Random(3))).eval()
    report = export_onnx(net, torch.randn(1, 3, 16, 16), tmp_path / "subnet.onnx")
    assert report.max_rel_error < 1e-4
