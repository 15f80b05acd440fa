"""Calibration data: from a DataLoader (or arrays) to checked numpy batches and an onnxruntime reader.

The statistics themselves (min-max, percentile, entropy histograms) are onnxruntime.quantization's
calibrators (``CalibrationMethod.MinMax | Percentile | Entropy``); this module only feeds them and
rejects data that does not fit the model (shape, dtype, empty).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgecompress.errors import BadInputError

CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


@dataclass
class CalibrationSet:
    """Inputs ``x`` (N, ...) float32 and, when the data carried them, integer ``labels`` (N,)."""

    x: np.ndarray
    labels: np.ndarray | None

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Batches of exactly ``batch_size`` samples (fewer only when there are fewer samples in all).

        onnxruntime's histogram calibrators (percentile, entropy) stack the per-batch activations and
        fail on a short last batch, so that batch is filled up with samples from the start (repeating a
        few samples leaves min-max ranges unchanged and shifts histograms negligibly).
        """
        n = self.x.shape[0]
        batch_size = min(batch_size, n)
        for i in range(0, n, batch_size):
            b = self.x[i:i + batch_size]
            if b.shape[0] < batch_size:
                b = np.concatenate([b, self.x[:batch_size - b.shape[0]]])
            yield b


def _to_numpy(t, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(t, torch.Tensor):
            return t.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(t, np.ndarray):
        return t
    raise BadInputError(f"calibration data: {what} is a {type(t).__name__}, expected a tensor or numpy array")


def collect(data: object, max_samples: int) -> CalibrationSet:
    """Take up to ``max_samples`` inputs (and labels) from a DataLoader, an iterable of batches or an array.

    A batch may be a tensor/array of inputs or a ``(inputs, labels, ...)`` tuple/list.
    """
    if isinstance(data, (np.ndarray,)) or type(data).__name__ == "Tensor":
        data = [data]
    if not isinstance(data, Iterable):
        raise BadInputError(f"calibration data: a {type(data).__name__} is not a DataLoader, array or iterable")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    have_labels = True
    n = 0
    for i, batch in enumerate(data):
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise BadInputError(f"calibration data: batch {i} is empty")
            x = _to_numpy(batch[0], f"batch {i} inputs")
            y = _to_numpy(batch[1], f"batch {i} labels") if len(batch) > 1 else None
        else:
            x, y = _to_numpy(batch, f"batch {i}"), None
        if x.ndim < 2:
            raise BadInputError(f"calibration data: batch {i} has shape {x.shape}; expected (batch, C, H, W) or "
                                f"(batch, features)")
        xs.append(x)
        if y is None or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            have_labels = False
        else:
            ys.append(y)
        n += x.shape[0]
        if n >= max_samples:
            break
    if n == 0:
        raise BadInputError("calibration data is empty: the loader yielded no samples")
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise BadInputError(f"calibration data: batches have different sample shapes {sorted(shapes)}")
    x = np.concatenate(xs)[:max_samples]
    if not np.issubdtype(x.dtype, np.floating):
        raise BadInputError(f"calibration data: inputs are {x.dtype}; the model takes float32 (normalise the data "
                            f"the same way as for training)")
    labels = np.concatenate(ys)[:max_samples].astype(np.int64) if have_labels and ys else None
    return CalibrationSet(np.ascontiguousarray(x, dtype=np.float32), labels)


def check_against_input(calib: CalibrationSet, name: str, shape: tuple, dtype: str) -> None:
    """Fail with a message naming the input when the data's sample shape or dtype does not fit.

    ``shape`` is the ONNX input's shape; symbolic dimensions (strings) match anything.
    """
    if dtype != "float32":
        raise BadInputError(f"model input {name!r} is {dtype}; INT8 calibration supports float32 inputs")
    sample = calib.x.shape[1:]
    want = tuple(shape[1:])
    if len(sample) != len(want) or any(isinstance(w, int) and w != s for w, s in zip(want, sample, strict=True)):
        raise BadInputError(f"calibration data samples have shape {tuple(sample)} but model input {name!r} expects "
                            f"{tuple(shape)} (batch first)")


class OrtCalibrationReader(CalibrationDataReader):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a ``CalibrationSet`` (one pass)."""

    def __init__(self, calib: CalibrationSet, input_name: str, batch_size: int) -> None:
        self._batches = calib.batches(batch_size)
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {self.input_name: x}
