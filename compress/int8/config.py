"""``Int8Config``: how ``edgecompress.quantize`` quantizes, for which runtime, and which floors it enforces."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("ptq", "qat")
CALIBRATIONS = ("minmax", "percentile", "entropy")
TARGET_RUNTIMES = ("onnxruntime", "tensorrt", "tvm")


@dataclass(frozen=True)
class Int8Config:
    """INT8 quantization settings.

    Weights are always symmetric INT8 (per output channel when ``per_channel``); activations are
    per tensor, UINT8 asymmetric for onnxruntime/TVM and INT8 symmetric for TensorRT (which accepts only
    zero points of 0). The target runtime chooses the Q/DQ placement (``compress/int8/placement.py``).

    ``reduce_range=None`` (auto) quantizes weights to 7 bits when the runtime would run them on an x86 CPU
    without VNNI, where onnxruntime's U8S8 kernels (``vpmaddubsw``) saturate int16 pair sums: measured on
    the AVX2 dev machine, full-range weights cost a digits MobileNetV2 ~15 dB of SQNR (9.6 vs 24-26 dB).

    ``calibration_samples`` caps how many samples are read from the calibration data (default 1024: on the
    digits MobileNetV2 min-max ranges from all 1437 training images lost 0.28 point against 0.56 from 256).

    Floors (``None`` disables one): the output SQNR against FP32 must reach ``min_sqnr_db``; when the
    calibration data carries labels, accuracy may drop at most ``max_accuracy_drop`` (a fraction, 0.01
    = one point). Below a floor ``quantize`` raises ``CheckFailedError``.

    >>> Int8Config(method="ptq", calibration="percentile").percentile
    99.99
    """

    method: str = "ptq"
    target_runtime: str = "onnxruntime"
    calibration: str = "minmax"
    percentile: float = 99.99
    calibration_samples: int = 1024
    per_channel: bool = True
    reduce_range: bool | None = None
    min_sqnr_db: float | None = 10.0
    max_accuracy_drop: float | None = 0.01
    qat_epochs: int = 2
    qat_lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {METHODS}")
        if self.target_runtime not in TARGET_RUNTIMES:
            raise ValueError(f"target_runtime={self.target_runtime!r}: expected one of {TARGET_RUNTIMES}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration={self.calibration!r}: expected one of {CALIBRATIONS}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile}: must be in (50, 100]")
        if self.calibration_samples < 1:
            raise ValueError(f"calibration_samples={self.calibration_samples}: must be >= 1")
        if self.min_sqnr_db is not None and self.min_sqnr_db < 0:
            raise ValueError(f"min_sqnr_db={self.min_sqnr_db}: must be >= 0 dB or None")
        if self.max_accuracy_drop is not None and not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ValueError(f"max_accuracy_drop={self.max_accuracy_drop}: must be in [0, 1] or None")
        if self.qat_epochs < 1:
            raise ValueError(f"qat_epochs={self.qat_epochs}: must be >= 1")
        if not self.qat_lr > 0:
            raise ValueError(f"qat_lr={self.qat_lr}: must be > 0")
        if self.target_runtime == "tensorrt" and self.reduce_range:
            raise ValueError("reduce_range=True: TensorRT's INT8 is full-range symmetric; use reduce_range=False")
