"""``quantize``: INT8 PTQ/QAT of a torch model or an ONNX file, exported as Q/DQ ONNX and checked.

Pipeline (each step is a library call except the placement check and the floors):
1. torch model -> FP32 ONNX with ``export_onnx`` (batch norm folded into the convs by the exporter's
   constant folding in eval mode; QAT folds it first in torch, see ``qat.py``);
2. ``onnxruntime.quantization.quant_pre_process`` (shape inference, Conv+BN folding for ONNX inputs);
3. ``onnxruntime.quantization.quantize_static`` with the target runtime's placement (``placement.py``)
   and calibration method (min-max, percentile or entropy);
4. placement verification in the target runtime's terms (which layers run INT8, which stayed float);
5. checks against FP32 in onnxruntime on the same inputs: SQNR, top-1 agreement, accuracy when labels
   are given; below a floor of ``Int8Config`` it raises ``CheckFailedError``.

``Result.model`` is the ``Path`` of the INT8 ONNX file (for every input kind and method: INT8 here is a
deployable ONNX artefact, not a torch module); ``Result.report`` holds the rest.

>>> import edgecompress as ec                                                        # doctest: +SKIP
>>> train, val = ec.data.digits_loaders()                                             # doctest: +SKIP
>>> result = ec.quantize(model, train, ec.Int8Config(), output="model_int8.onnx")     # doctest: +SKIP
>>> result.report["placement"]["int8_layers"], result.report["checks"]["sqnr_db"]     # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecompress.compress.int8.calibrate import (
    CALIBRATION_METHODS,
    CalibrationSet,
    OrtCalibrationReader,
    check_against_input,
    collect,
)
from edgecompress.compress.int8.checks import compare, enforce_floors
from edgecompress.compress.int8.config import Int8Config
from edgecompress.compress.int8.placement import PLACEMENTS, require_quantizable, resolve_reduce_range
from edgecompress.compress.result import Result
from edgecompress.errors import BadInputError

CALIBRATION_BATCH = 32


def _ort_session(path: Path, threads: int = 1, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BadInputError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None


def run_onnx(path: Path, x: np.ndarray, batch_size: int = 64, threads: int = 1, optimize: bool = True) -> np.ndarray:
    """Outputs of the first graph output over ``x`` in batches (onnxruntime CPU).

    ``optimize=False`` runs the Q/DQ graph op by op (DequantizeLinear -> float Conv -> QuantizeLinear): the
    ONNX reference semantics, free of any CPU kernel's int16 saturation.
    """
    session = _ort_session(path, threads, optimize)
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch_size
    return np.concatenate([session.run(None, {name: x[i:i + step]})[0] for i in range(0, x.shape[0], step)])


def _input_spec(model: onnx.ModelProto, source: str) -> tuple[str, tuple, str]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInputError(f"{source}: INT8 quantization supports single-input models, found {len(inputs)} inputs")
    t = inputs[0].type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
    return inputs[0].name, shape, dtype


def _fp32_onnx(model_or_path: Any, calib: CalibrationSet, workdir: Path) -> tuple[Path, dict]:
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise BadInputError(f"{path}: no such ONNX file")
        return path, {"source": str(path), "path": str(path)}
    import torch
    import torch.nn as nn

    from edgecompress.export.onnx import export_onnx

    if not isinstance(model_or_path, nn.Module):
        raise BadInputError(f"quantize: expected an nn.Module or an .onnx path, got {type(model_or_path).__name__}")
    example = torch.from_numpy(calib.x[:1])
    try:
        with torch.no_grad():
            model_or_path.eval()(example)
    except Exception as exc:  # noqa: BLE001 - any failure here means the data does not fit the model
        raise BadInputError(f"calibration samples of shape {tuple(calib.x.shape[1:])} do not fit the model: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    path = workdir / "model_fp32.onnx"
    report = export_onnx(model_or_path, example, path)
    return path, {"source": type(model_or_path).__name__, "export_max_rel_error": report.max_rel_error}


def quantize_onnx(fp32_path: Path, calib: CalibrationSet, config: Int8Config, output: Path) -> dict:
    """Steps 2-4 of the pipeline on an FP32 ONNX file; writes ``output`` and returns the placement report."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(str(fp32_path))
    layers = require_quantizable(proto, str(fp32_path))
    name, shape, dtype = _input_spec(proto, str(fp32_path))
    check_against_input(calib, name, shape, dtype)
    placement = PLACEMENTS.get(config.target_runtime)
    kwargs = placement.quantize_kwargs(config)
    extra = dict(kwargs.pop("extra_options"))
    if config.calibration == "percentile":
        extra["CalibPercentile"] = config.percentile
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        staged = Path(tmp) / "int8.onnx"
        batch = shape[0] if isinstance(shape[0], int) else CALIBRATION_BATCH
        quantize_static(str(pre), str(staged), OrtCalibrationReader(calib, name, batch),
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[config.calibration]),
                        extra_options=extra, **kwargs)
        onnx.checker.check_model(str(staged))
        verified = placement.verify(staged, pre)
        shutil.move(str(staged), output)
    verified["fp32_layers_in_source"] = len(layers)
    if verified["float_layers"] or verified["unknown_layers"]:
        left = verified["float_layer_names"]
        names = ", ".join(left[:8]) + (" ..." if len(left) > 8 else "")
        verified["warning"] = (f"{len(left)} of {verified['layers']} layers do not run in INT8 on "
                               f"{config.target_runtime} ({verified['verified_by']}): {names}")
        warnings.warn(verified["warning"], stacklevel=3)
    verified["reduce_range"], verified["reduce_range_reason"] = resolve_reduce_range(config)
    return verified


def _torch_outputs(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch_size])).numpy()
                               for i in range(0, x.shape[0], batch_size)])


def quantize(model_or_onnx_path: Any, calibration_data: Any, config: Int8Config = Int8Config(),
             output: str | Path | None = None, eval_data: Any = None) -> Result:
    """INT8-quantize a torch model or FP32 ONNX file for ``config.target_runtime``; see the module docstring.

    ``calibration_data``: a DataLoader of ``(x, y)`` or ``x`` batches, or an array/tensor (N, C, H, W).
    ``eval_data`` (optional, same forms): inputs for the checks; defaults to the calibration samples.
    ``output``: the INT8 ``.onnx`` to write (default ``model_int8.onnx`` in a new temporary directory).
    Raises ``BadInputError`` for unusable input and ``CheckFailedError`` below a configured floor.
    """
    start = time.perf_counter()
    calib = collect(calibration_data, config.calibration_samples)
    evalset = collect(eval_data, 10**9) if eval_data is not None else calib
    output = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="ec-int8-")) / "model_int8.onnx"
    report: dict[str, Any] = {"method": config.method, "config": config.__dict__.copy(),
                              "calibration": {"method": config.calibration, "samples": int(calib.x.shape[0])}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = model_or_onnx_path
        if config.method == "qat":
            from edgecompress.compress.int8.qat import qat_finetune

            model, report["qat"] = qat_finetune(model, calibration_data, config)
        fp32_path, report["fp32"] = _fp32_onnx(model, calib, workdir)
        report["placement"] = quantize_onnx(fp32_path, calib, config, output)
        fp32_copy = output.with_name(output.stem.replace("_int8", "") + "_fp32.onnx")
        if not isinstance(model_or_onnx_path, (str, Path)) and fp32_copy != output:
            shutil.copyfile(fp32_path, fp32_copy)
            report["fp32"]["path"] = str(fp32_copy)
        if evalset is not calib:
            check_against_input(evalset, *_input_spec(onnx.load(str(fp32_path)), str(fp32_path)))
        reference = run_onnx(fp32_path, evalset.x)
        # onnxruntime runs its own target's INT8 kernels; for TensorRT/TVM files the checks use the ONNX
        # Q/DQ reference semantics (no fusion), since onnxruntime's x86 kernels are not what those run
        fused = config.target_runtime == "onnxruntime"
        quantized = run_onnx(output, evalset.x, optimize=fused)
        report["checks"] = compare(reference, quantized, evalset.labels)
        report["checks"]["data"] = "eval_data" if eval_data is not None else "calibration samples"
        report["checks"]["engine"] = ("onnxruntime CPU, fused INT8 kernels (ORT_ENABLE_ALL)" if fused else
                                      "onnxruntime CPU, Q/DQ reference semantics (ORT_DISABLE_ALL), not the target")
        if config.method == "qat":
            # the floors compare against the model the user gave, not the fine-tuned one
            original = _torch_outputs(model_or_onnx_path, evalset.x)
            report["checks"]["vs_fine_tuned_fp32"] = dict(report["checks"])
            report["checks"].update(compare(original, quantized, evalset.labels))
            report["checks"]["reference"] = "the original FP32 torch model (before QAT)"
        report["sizes"] = {"fp32_bytes": fp32_path.stat().st_size, "int8_bytes": output.stat().st_size}
    report["int8_path"] = str(output)
    report["seconds"] = round(time.perf_counter() - start, 2)
    try:
        enforce_floors(report["checks"], config.min_sqnr_db, config.max_accuracy_drop)
    except Exception:
        output.unlink(missing_ok=True)
        if report["fp32"].get("path") and not isinstance(model_or_onnx_path, (str, Path)):
            Path(report["fp32"]["path"]).unlink(missing_ok=True)
        raise
    return Result(output, report)
