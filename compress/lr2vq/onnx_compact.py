"""ONNX files of a frozen LR²VQ model: a compact one (codes + codebook + projection) and a dense one.

Compact: each quantised layer's weight is computed inside the graph,

    codes (uint8 initializer) -> Cast(int64) -> Gather(codebook fp16 -> Cast fp32) -> MatMul(P^T)
        -> Reshape(weight shape) -> Conv / Gemm

so the file holds codes at one byte each (k <= 256; int16 up to 2**15) and fp16 codebooks and
projections. It is exported with the TorchScript exporter and constant folding OFF, and never passed
through onnxslim (either would fold the subgraph back into dense weights); after export, every other
fp32 initializer whose values are exactly representable in fp16 (the frozen model rounds BatchNorm
and uncompressed layers to fp16) is stored as fp16 followed by a Cast, which changes no value; a folded
BatchNorm scale or shift on an 8-bit grid (``bn_bits=8``) is stored as its uint8 codes followed by
``Cast -> Mul(step) -> Add(lo)``, the float32 operations ``accounting.grid8_values`` runs in torch.
onnxruntime folds the subgraph once, when the session is created, so inference runs plain Conv.
Codes are not bit-packed in ONNX (no standard op unpacks them cheaply), so for k < 256 the compact ONNX
is larger than the ``.ecvq`` checkpoint; both sizes are reported.

Dense: every block replaced by a plain Conv2d/Linear with its rebuilt weight, exported with
``edgecompress.export.onnx.export_onnx`` (onnxslim, checker, parity).

Both are checked against the frozen torch model in onnxruntime (``check_parity``); a mismatch raises
``CheckFailedError``. Hand-written: the graph rewrite below is ours; export and parity use the project's
export module.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from edgecompress.compress.lr2vq.accounting import grid8_codes, grid8_tensors
from edgecompress.compress.lr2vq.block import LR2VQLayer
from edgecompress.errors import CheckFailedError
from edgecompress.export.onnx import check_parity, export_onnx
from edgecompress.fileio import atomic_path


def dense_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``LR2VQLayer`` replaced by a plain Conv2d/Linear."""
    dense = copy.deepcopy(model)
    for name, module in list(dense.named_modules()):
        if isinstance(module, LR2VQLayer):
            parent_name, _, leaf = name.rpartition(".")
            setattr(dense.get_submodule(parent_name) if parent_name else dense, leaf, module.dense())
    return dense.eval()


def fp16_exact_initializers(proto: onnx.ModelProto, min_elements: int = 16) -> int:
    """Store fp32 initializers that are exactly fp16-representable as fp16 + Cast; returns how many."""
    graph = proto.graph
    converted = 0
    new_nodes = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements or not np.array_equal(array.astype(np.float16).astype(np.float32), array):
            continue
        half_name = f"{init.name}__fp16"
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float16), half_name))
        new_nodes.append(helper.make_node("Cast", [half_name], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=f"{init.name}__cast"))
        converted += 1
    for i, node in enumerate(new_nodes):
        graph.node.insert(i, node)
    return converted


def grid8_initializers(proto: onnx.ModelProto, grids: dict[str, tuple[float, float]]) -> int:
    """Store the initializers named in ``grids`` (state-dict keys -> (lo, step)) as uint8 codes + Cast, Mul, Add;
    returns how many. Raises ``CheckFailedError`` when one of them is not in the graph under its key."""
    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    nodes = []
    for key, (lo, step) in grids.items():
        init = inits.get(key)
        if init is None:
            if any(key in node.output for node in graph.node):
                continue  # deduplicated by the exporter into another initializer's Identity
            raise CheckFailedError(f"compact ONNX: the 8-bit tensor {key!r} is not an initializer of the graph")
        values = torch.from_numpy(numpy_helper.to_array(init).copy())
        codes = grid8_codes(values, lo, step)
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(codes.numpy(), f"{key}__q8"),
                                  numpy_helper.from_array(np.array(step, np.float32), f"{key}__step"),
                                  numpy_helper.from_array(np.array(lo, np.float32), f"{key}__lo")])
        nodes += [helper.make_node("Cast", [f"{key}__q8"], [f"{key}__qf"], to=onnx.TensorProto.FLOAT,
                                   name=f"{key}__cast"),
                  helper.make_node("Mul", [f"{key}__qf", f"{key}__step"], [f"{key}__scaled"], name=f"{key}__mul"),
                  helper.make_node("Add", [f"{key}__scaled", f"{key}__lo"], [key], name=f"{key}__add")]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    return len(nodes) // 3


def export_compact_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17,
                        rtol: float = 1e-4) -> dict:
    """Write the compact ONNX of a frozen model to ``path`` (atomic) and check it in onnxruntime."""
    path = Path(path)
    model = model.eval()
    blocks = [m for m in model.modules() if isinstance(m, LR2VQLayer)]
    if any(b.phase != "frozen" for b in blocks):
        raise ValueError("export_compact_onnx: freeze the model first (every LR2VQLayer in phase 'frozen')")
    with atomic_path(path, ".onnx.tmp") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), opset_version=opset, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              dynamo=False, do_constant_folding=False)
        proto = onnx.load(str(tmp))
        grid8 = grid8_initializers(proto, grid8_tensors(model))
        converted = fp16_exact_initializers(proto)
        onnx.checker.check_model(proto, full_check=True)
        ops = Counter(n.op_type for n in proto.graph.node)
        if ops["Gather"] < len(blocks):
            raise CheckFailedError(f"compact ONNX has {ops['Gather']} Gather nodes for {len(blocks)} quantised layers: "
                                   "the codebook lookup was folded away")
        onnx.save(proto, str(tmp))
        parity = check_parity(model, tmp, (example,), rtol=rtol)
    return {"path": str(path), "bytes": path.stat().st_size, "opset": opset, "op_counts": dict(ops),
            "fp16_initializers": converted, "grid8_initializers": grid8,
            "max_rel_error": max(p["max_rel_error"] for p in parity),
            "parity": parity}


def export_dense_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, rtol: float = 1e-4) -> dict:
    """Write the dense ONNX (plain weights) and check it against the quantised torch model too."""
    dense = dense_copy(model)
    report = export_onnx(dense, example, path, rtol=rtol)
    parity = check_parity(model.eval(), path, (example,), rtol=rtol)
    return {"path": report.path, "bytes": report.size_bytes, "opset": report.opset, "op_counts": report.op_counts,
            "max_rel_error": max(report.max_rel_error, *(p["max_rel_error"] for p in parity)), "parity": parity}
