"""The compact checkpoint: bit-packed codes, fp16 codebooks and tensors, no pickle anywhere.

Hand-written file format (``.ecvq``), readable with numpy alone:

    bytes 0..7    magic b"ECVQ\\x00\\x00\\x00\\x01"
    bytes 8..11   H: length of the header, uint32 little-endian
    next H bytes  zlib-compressed UTF-8 JSON header
    the rest      the tensors' raw little-endian bytes, concatenated in header order

The header holds ``tensors``: ``[[name, dtype, shape], ...]`` (offsets follow from the order and
sizes), ``layers``: ``{module name: {"m", "d", "k", "identity", "n"}}`` for every quantised layer, and
``folded_bn``: the BatchNorms whose statistics were folded into weight/bias (their running mean/var,
0 and 1 - eps, are not stored and are restored on load).
Codes are stored with dtype ``"bitsB"``: ``n`` codes of ``B = ceil(log2 k)`` bits, packed little-endian
bit order (``np.packbits(..., bitorder="little")``), padded to a whole byte per layer. Every other
floating tensor is stored as float16 (the frozen model's values are already fp16-exact, so a reload
reproduces the model bit for bit), except the folded BatchNorm scales and shifts of a model frozen with
``bn_bits=8``: dtype ``"grid8"``, the grid's ``lo`` and ``step`` as two float16 then one uint8 code per
value (``value = q * step + lo`` in float32, ``accounting.grid8_values``). Integer buffers (BatchNorm's
``num_batches_tracked``) are not stored and keep the architecture's values on load.

Loading needs the architecture (the uncompressed model, e.g. a fresh zoo model or the pruned module that
was quantised): the named Conv2d/Linear layers are replaced by frozen ``LR2VQLayer`` blocks, then every
stored tensor is copied in.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.compress.lr2vq.accounting import (
    GRID_ATTR,
    grid8_codes,
    grid8_tensors,
    grid8_values,
    is_folded_bn,
    stored_state,
)
from edgecompress.compress.lr2vq.block import LR2VQLayer, code_bits
from edgecompress.errors import BadInputError
from edgecompress.fileio import atomic_path

MAGIC = b"ECVQ\x00\x00\x00\x01"
_FLOAT_DTYPES = {"float16": np.float16}


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """``n`` codes < 2**bits -> ``ceil(n bits / 8)`` bytes (little-endian bit order)."""
    codes = np.asarray(codes, dtype=np.int64).ravel()
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes outside [0, 2**{bits})")
    planes = ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8)  # (n, bits)
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``n`` codes as int64."""
    planes = np.unpackbits(np.asarray(packed, np.uint8), count=n * bits, bitorder="little").reshape(n, bits)
    return (planes.astype(np.int64) << np.arange(bits)).sum(1)


def _quantised_layers(model: nn.Module) -> dict[str, LR2VQLayer]:
    layers = {name: mod for name, mod in model.named_modules() if isinstance(mod, LR2VQLayer)}
    for name, mod in layers.items():
        if mod.phase != "frozen":
            raise ValueError(f"layer {name!r} is in phase {mod.phase!r}; freeze the model before saving")
    return layers


def save_compact(model: nn.Module, path: str | Path, meta: dict | None = None) -> dict:
    """Write ``model`` (frozen LR2VQ layers) to ``path`` atomically; returns ``{"path", "bytes", ...}``."""
    path = Path(path)
    layers = _quantised_layers(model)
    tensors, blobs, layer_meta = [], [], {}
    for name, mod in layers.items():
        layer_meta[name] = {"m": mod.m, "d": mod.d, "k": mod.k, "identity": mod.identity, "n": mod.n,
                            "kind": mod.kind, "weight_shape": list(mod.weight_shape)}
    stored = stored_state(model)
    grids = grid8_tensors(model)
    folded = [name for name, mod in model.named_modules() if is_folded_bn(mod)]
    for key, tensor in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if key not in stored and not (owner in layers and leaf == "codes"):
            continue  # integer buffers and folded BatchNorm statistics are not stored
        if owner in layers and leaf == "codes":
            bits = code_bits(layers[owner].k)
            blob = pack_bits(tensor.numpy().astype(np.int64), bits).tobytes()
            tensors.append([key, f"bits{bits}", [int(tensor.numel())]])
        elif key in grids:
            lo, step = grids[key]
            codes = grid8_codes(tensor, lo, step)
            if not torch.equal(grid8_values(codes, lo, step), tensor.detach().float()):
                raise ValueError(f"tensor {key!r} is not on its 8-bit grid; freeze the model before saving")
            blob = np.array([lo, step], "<f2").tobytes() + codes.numpy().tobytes()
            tensors.append([key, "grid8", list(tensor.shape)])
        else:
            array = tensor.detach().cpu().numpy().astype(np.float16)
            if not np.array_equal(array.astype(np.float32), tensor.detach().cpu().float().numpy()):
                raise ValueError(f"tensor {key!r} is not fp16-exact; freeze the model (round to fp16) before saving")
            blob = array.astype("<f2").tobytes()
            tensors.append([key, "float16", list(tensor.shape)])
        blobs.append(blob)
    header = zlib.compress(json.dumps({"format": "edgecompress-lr2vq", "version": 1, "tensors": tensors,
                                       "layers": layer_meta, "folded_bn": folded, "meta": meta or {}},
                                      separators=(",", ":")).encode(), 9)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        for blob in blobs:
            f.write(blob)
    payload = sum(len(b) for b in blobs)
    return {"path": str(path), "bytes": path.stat().st_size, "payload_bytes": payload,
            "header_bytes": len(MAGIC) + 4 + len(header), "tensors": len(tensors)}


def read_compact(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the stored arrays of a compact checkpoint (codes unpacked to int64, 8-bit grids
    dequantised to float32; their ``(lo, step)`` are added to the header as ``grid8``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such compact checkpoint")
    data = path.read_bytes()
    if data[:8] != MAGIC:
        raise BadInputError(f"{path}: not an edgecompress LR2VQ checkpoint (bad magic)")
    (h,) = struct.unpack("<I", data[8:12])
    try:
        header = json.loads(zlib.decompress(data[12:12 + h]))
    except (zlib.error, ValueError) as exc:
        raise BadInputError(f"{path}: corrupt header ({exc})") from None
    arrays, offset = {}, 12 + h
    header["grid8"] = {}
    for key, dtype, shape in header["tensors"]:
        n = int(np.prod(shape)) if shape else 1
        if dtype.startswith("bits") and dtype[4:].isdigit():
            bits = int(dtype[4:])
            size = (n * bits + 7) // 8
        elif dtype == "float16":
            size = 2 * n
        elif dtype == "grid8":
            size = 4 + n
        else:
            raise BadInputError(f"{path}: tensor {key!r} has unknown dtype {dtype!r}")
        if offset + size > len(data):
            raise BadInputError(f"{path}: truncated at tensor {key!r}")
        if dtype == "float16":
            arrays[key] = np.frombuffer(data, "<f2", n, offset).reshape(shape)
        elif dtype == "grid8":
            lo, step = (float(v) for v in np.frombuffer(data, "<f2", 2, offset))
            codes = torch.from_numpy(np.frombuffer(data, np.uint8, n, offset + 4).copy())
            arrays[key] = grid8_values(codes, lo, step).numpy().reshape(shape)
            header["grid8"][key] = (lo, step)
        else:
            arrays[key] = unpack_bits(np.frombuffer(data, np.uint8, size, offset), bits, n)
        offset += size
    if offset != len(data):
        raise BadInputError(f"{path}: {len(data) - offset} trailing bytes after the last tensor")
    return header, arrays


def load_compact(path: str | Path, architecture: nn.Module) -> nn.Module:
    """Rebuild the frozen quantised model from ``path`` into ``architecture`` (modified in place, returned)."""
    header, arrays = read_compact(path)
    modules = dict(architecture.named_modules())
    for name, spec in header["layers"].items():
        layer = modules.get(name)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise BadInputError(f"{path}: layer {name!r} is not a Conv2d/Linear of the given architecture")
        if list(layer.weight.shape) != spec["weight_shape"]:
            raise BadInputError(f"{path}: layer {name!r} has weight shape {spec['weight_shape']} in the checkpoint, "
                                f"the architecture has {list(layer.weight.shape)}")
        block = LR2VQLayer.frozen_like(layer, spec["m"], spec["d"], spec["k"], spec["identity"])
        parent_name, _, leaf = name.rpartition(".")
        setattr(architecture.get_submodule(parent_name) if parent_name else architecture, leaf, block)
    for name in header.get("folded_bn", []):
        bn = modules.get(name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            raise BadInputError(f"{path}: {name!r} is not a BatchNorm with running statistics in the architecture")
        with torch.no_grad():
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    state = architecture.state_dict()
    folded_stats = {f"{n}.{stat}" if n else stat for n in header.get("folded_bn", [])
                    for stat in ("running_mean", "running_var")}
    missing = [k for k, v in state.items() if v.is_floating_point() and k not in arrays and k not in folded_stats]
    unknown = [k for k in arrays if k not in state]
    if missing or unknown:
        raise BadInputError(f"{path}: checkpoint does not fit the architecture (missing {missing[:5]}, "
                            f"unknown {unknown[:5]})")
    for key, array in arrays.items():
        target = state[key]
        state[key] = torch.from_numpy(np.array(array)).to(target.dtype).reshape(target.shape)
    architecture.load_state_dict(state)
    for key, grid in header["grid8"].items():
        owner, _, leaf = key.rpartition(".")
        module = architecture.get_submodule(owner) if owner else architecture
        if not hasattr(module, GRID_ATTR):
            setattr(module, GRID_ATTR, {})
        getattr(module, GRID_ATTR)[leaf] = grid
    return architecture.eval()
