"""INT8-vs-FP32 checks as pure numpy functions: SQNR, top-1 agreement, accuracy, and the floor check.

SQNR (signal-to-quantization-noise ratio) of outputs ``q`` against the FP32 reference ``r``:

    SQNR_dB = 10 * log10( sum(r^2) / sum((q - r)^2) )

(the definition used by NNCF's and PyTorch's numeric debuggers). Identical outputs give +inf.

>>> round(sqnr_db(np.array([1.0, 2.0]), np.array([1.1, 2.0])), 2)
26.99
"""

from __future__ import annotations

import numpy as np

from edgecompress.errors import BadInputError, CheckFailedError


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """10*log10(||r||^2 / ||q - r||^2) in dB; +inf when ``quantized == reference``."""
    r = np.asarray(reference, np.float64)
    q = np.asarray(quantized, np.float64)
    if r.shape != q.shape:
        raise BadInputError(f"SQNR needs equal shapes, got reference {r.shape} and quantized {q.shape}")
    noise = float(np.sum((q - r) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def top1_agreement(reference_logits: np.ndarray, quantized_logits: np.ndarray) -> float:
    """Fraction of rows whose argmax over the last axis is the same in both."""
    r, q = np.asarray(reference_logits), np.asarray(quantized_logits)
    if r.shape != q.shape or r.ndim < 2:
        raise BadInputError(f"agreement needs equal (N, classes) shapes, got {r.shape} and {q.shape}")
    return float(np.mean(r.argmax(-1) == q.argmax(-1)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise BadInputError(f"accuracy needs logits (N, classes) and labels (N,), got {logits.shape}, {labels.shape}")
    return float(np.mean(logits.argmax(-1) == labels))


def enforce_floors(checks: dict, min_sqnr_db: float | None, max_accuracy_drop: float | None) -> None:
    """Raise ``CheckFailedError`` when ``checks`` (from ``compare``) falls below a configured floor.

    ``checks`` needs ``sqnr_db``; ``fp32_accuracy``/``int8_accuracy`` are used when present.
    """
    if min_sqnr_db is not None and not checks["sqnr_db"] >= min_sqnr_db:
        raise CheckFailedError(
            f"INT8 output SQNR {checks['sqnr_db']:.2f} dB is below the floor min_sqnr_db={min_sqnr_db:g} dB "
            f"(top-1 agreement {checks.get('top1_agreement', float('nan')):.3f}); try calibration='percentile' or "
            f"'entropy', method='qat', or lower the floor")
    if max_accuracy_drop is not None and checks.get("int8_accuracy") is not None:
        drop = checks["fp32_accuracy"] - checks["int8_accuracy"]
        if drop > max_accuracy_drop:
            raise CheckFailedError(
                f"INT8 accuracy {checks['int8_accuracy']:.4f} is {100 * drop:.2f} points below FP32 "
                f"{checks['fp32_accuracy']:.4f}; the floor is max_accuracy_drop={max_accuracy_drop:g} "
                f"({100 * max_accuracy_drop:.2f} points); try method='qat' or lower the floor")


def compare(reference: np.ndarray, quantized: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """SQNR, top-1 agreement, max abs error and (with labels) both accuracies, as one dict."""
    out = {"sqnr_db": sqnr_db(reference, quantized),
           "top1_agreement": top1_agreement(reference, quantized),
           "max_abs_error": float(np.max(np.abs(np.asarray(quantized, np.float64) - reference))),
           "samples": int(np.asarray(reference).shape[0])}
    if labels is not None:
        out["fp32_accuracy"] = accuracy(reference, labels)
        out["int8_accuracy"] = accuracy(quantized, labels)
        out["accuracy_drop"] = out["fp32_accuracy"] - out["int8_accuracy"]
    return out
