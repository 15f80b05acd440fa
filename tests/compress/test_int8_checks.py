"""Pure checks of INT8 quantization: SQNR, agreement, accuracy, floors, config validation, host rule."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.compress.int8.checks import accuracy, compare, enforce_floors, sqnr_db, top1_agreement
from edgecompress.compress.int8.config import Int8Config
from edgecompress.compress.int8.placement import host_needs_reduce_range
from edgecompress.compress.int8.qat import activation_qparams, fake_quant_weight, weight_qmax
from edgecompress.errors import BadInputError, CheckFailedError


def test_sqnr_matches_formula_and_edge_cases():
    r = np.array([3.0, 4.0])
    q = np.array([3.0, 4.5])
    assert sqnr_db(r, q) == pytest.approx(10 * np.log10(25.0 / 0.25))
    assert sqnr_db(r, r) == float("inf")
    # noise as large as the signal -> 0 dB
    assert sqnr_db(np.array([1.0]), np.array([0.0])) == pytest.approx(0.0)
    with pytest.raises(BadInputError, match="equal shapes"):
        sqnr_db(np.zeros(3), np.zeros(4))


def test_agreement_and_accuracy():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    q = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
    assert top1_agreement(ref, q) == pytest.approx(0.75)
    assert accuracy(q, np.array([0, 1, 0, 1])) == pytest.approx(0.75)
    out = compare(ref, q, np.array([0, 1, 0, 1]))
    assert out["fp32_accuracy"] == 1.0 and out["int8_accuracy"] == 0.75 and out["accuracy_drop"] == 0.25
    with pytest.raises(BadInputError):
        accuracy(q, np.array([0, 1]))


def test_floors_raise_below_and_pass_when_lowered():
    checks = {"sqnr_db": 12.0, "top1_agreement": 0.9, "fp32_accuracy": 0.98, "int8_accuracy": 0.96}
    with pytest.raises(CheckFailedError, match="SQNR 12.00 dB is below the floor"):
        enforce_floors(checks, min_sqnr_db=15.0, max_accuracy_drop=None)
    with pytest.raises(CheckFailedError, match="2.00 points below"):
        enforce_floors(checks, min_sqnr_db=10.0, max_accuracy_drop=0.01)
    enforce_floors(checks, min_sqnr_db=10.0, max_accuracy_drop=0.03)
    enforce_floors(checks, min_sqnr_db=None, max_accuracy_drop=None)
    # a NaN SQNR never passes a floor
    with pytest.raises(CheckFailedError):
        enforce_floors({**checks, "sqnr_db": float("nan")}, min_sqnr_db=0.0, max_accuracy_drop=None)


@pytest.mark.parametrize("field, value", [("method", "awq"), ("target_runtime", "openvino"),
                                          ("calibration", "mse"), ("percentile", 20.0),
                                          ("calibration_samples", 0), ("min_sqnr_db", -1.0),
                                          ("max_accuracy_drop", 2.0), ("qat_epochs", 0), ("qat_lr", 0.0)])
def test_config_rejects_bad_fields(field, value):
    with pytest.raises(ValueError, match=field):
        Int8Config(**{field: value})


def test_config_rejects_reduced_range_for_tensorrt():
    with pytest.raises(ValueError, match="reduce_range"):
        Int8Config(target_runtime="tensorrt", reduce_range=True)


def test_reduce_range_rule_reads_vnni_flag():
    avx2 = "processor : 0\nflags : fpu sse4_1 avx avx2 fma\n"
    vnni = "processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n"
    assert host_needs_reduce_range(avx2)[0] is True
    assert host_needs_reduce_range(vnni)[0] is False


def test_fake_quant_weight_is_on_the_onnxruntime_grid():
    w = np.array([[0.5, -1.0, 0.26], [0.01, 0.02, -0.04]], np.float32)
    import torch

    for reduce_range in (False, True):
        qmax = weight_qmax(reduce_range)
        wq = fake_quant_weight(torch.from_numpy(w), qmax).numpy()
        scale = np.abs(w).max(1, keepdims=True) / qmax  # per output channel, symmetric
        codes = wq / scale
        assert np.allclose(codes, np.round(codes), atol=1e-4)
        assert np.abs(codes).max() <= qmax + 1e-4
        assert np.abs(wq - w).max() <= scale.max() / 2 + 1e-7
        # rounding again changes nothing: what onnxruntime re-quantizes is exactly what QAT trained
        assert np.allclose(fake_quant_weight(torch.from_numpy(wq), qmax).numpy(), wq, atol=1e-7)


def test_activation_qparams_cover_zero_and_range():
    scale, zp = activation_qparams(0.5, 6.0)  # range widened to [0, 6]
    assert zp == 0 and scale == pytest.approx(6.0 / 255)
    scale, zp = activation_qparams(-1.0, 1.0)
    assert scale == pytest.approx(2.0 / 255) and zp in (127, 128)
