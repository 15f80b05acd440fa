"""ONNX export, checked: ``onnx.checker``, graph simplification, then parity in onnxruntime.

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset
17. The baselines (shared/reference/baselines.md) measured the dynamo exporter on torch 2.13: it
silently ends at opset 18 when asked for 17, writes an external ``.onnx.data`` file, and takes ~8x
longer, for the same onnxruntime latency. Opset 17 is what TensorRT 10, TVM's Relax importer and
onnxruntime all consume. The legacy exporter's DeprecationWarning is filtered here, on purpose.

>>> report = export_onnx(model, torch.randn(1, 3, 32, 32), "model.onnx")  # doctest: +SKIP
>>> report.max_rel_error < 1e-4                                            # doctest: +SKIP
True
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from edgecompress.errors import BadInputError, CheckFailedError
from edgecompress.fileio import atomic_path
from edgecompress.runtime.engine import EngineOptions, load_engine, relative_error

DEFAULT_OPSET = 17


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely onnxruntime matches torch on it."""

    path: str
    opset: int
    exporter: str
    size_bytes: int
    inputs: list[dict]
    outputs: list[dict]
    nodes: int
    op_counts: dict[str, int]
    simplified: bool
    max_rel_error: float
    parity: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _as_tuple(example_inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise BadInputError("example_inputs must be a tensor or a tuple of tensors")


def _io_names(n: int, base: str) -> list[str]:
    return [base] if n == 1 else [f"{base}_{i}" for i in range(n)]


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's constant folding and dead-node removal; the input is returned if it fails."""
    import onnxslim

    try:
        return onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - simplification is an optimisation, never a requirement
        warnings.warn(f"onnxslim could not simplify the graph ({exc}); keeping it as exported", stacklevel=2)
        return model


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    do_simplify: bool = True,
    rtol: float = 1e-4,
    random_checks: int = 2,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ``path`` and check it against torch in onnxruntime.

    The file is written next to ``path`` under a temporary name and renamed only after every check
    passes, so a failed export leaves nothing behind. Parity is checked on ``example_inputs`` and on
    ``random_checks`` random inputs of the same shape (batch 2 when ``dynamic_batch``): the worst
    output's relative error (``relative_error``) must not exceed ``rtol``, else ``CheckFailedError``.
    """
    start = time.perf_counter()
    path = Path(path)
    inputs = _as_tuple(example_inputs)
    model = model.eval()
    with torch.no_grad():
        reference = model(*inputs)
    outs = reference if isinstance(reference, (tuple, list)) else (reference,)
    in_names, out_names = _io_names(len(inputs), "input"), _io_names(len(outs), "output")
    dynamic_axes = {n: {0: "batch"} for n in in_names + out_names} if dynamic_batch else None

    with atomic_path(path, ".onnx.tmp") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs, str(tmp), opset_version=opset, input_names=in_names,
                              output_names=out_names, dynamic_axes=dynamic_axes, dynamo=False,
                              do_constant_folding=True)
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto, full_check=True)
        if do_simplify:
            proto = simplify(proto)
            onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        parity = check_parity(model, tmp, inputs, rtol, random_checks, dynamic_batch, seed)
    engine_io = load_engine(path, "onnxruntime", EngineOptions(threads=1))
    return ExportReport(
        path=str(path), opset=opset, exporter="torchscript (dynamo=False)", size_bytes=path.stat().st_size,
        inputs=[s.as_dict() for s in engine_io.inputs], outputs=[s.as_dict() for s in engine_io.outputs],
        nodes=len(proto.graph.node), op_counts=dict(Counter(n.op_type for n in proto.graph.node)),
        simplified=do_simplify, max_rel_error=max(p["max_rel_error"] for p in parity), parity=parity,
        seconds=time.perf_counter() - start)


def check_parity(model: nn.Module, onnx_path: str | Path, example_inputs: tuple[torch.Tensor, ...],
                 rtol: float = 1e-4, random_checks: int = 2, dynamic_batch: bool = True,
                 seed: int = 0) -> list[dict]:
    """Compare torch and onnxruntime outputs; raise ``CheckFailedError`` naming the worst output."""
    engine = load_engine(onnx_path, "onnxruntime", EngineOptions(threads=1))
    generator = torch.Generator().manual_seed(seed)
    cases = [("example inputs", example_inputs)]
    for i in range(random_checks):
        batch = 2 if dynamic_batch else example_inputs[0].shape[0]
        cases.append((f"random inputs #{i + 1} (batch {batch})", tuple(
            torch.randn((batch, *t.shape[1:]), generator=generator).to(t.dtype) if t.is_floating_point()
            else t[:1].expand(batch, *t.shape[1:]).clone() for t in example_inputs)))
    results = []
    for label, case in cases:
        with torch.no_grad():
            expected = model(*case)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = engine.run([t.numpy() for t in case])
        errors = [relative_error(g, e.numpy()) for g, e in zip(got, expected, strict=True)]
        worst = int(np.argmax(errors))
        results.append({"case": label, "max_rel_error": errors[worst], "worst_output": engine.outputs[worst].name})
        if errors[worst] > rtol:
            raise CheckFailedError(
                f"ONNX parity failed on {label}: output {engine.outputs[worst].name!r} differs from torch by "
                f"relative error {errors[worst]:.3g} > {rtol:g} ({onnx_path})")
    return results
