"""Exact size accounting of a vector-quantised model, from real bits, per layer and in total.

Counting rules (PQF's ``src/utils/model_size.py`` counts the same way, shared/reference/methods.md §1.5):

- a quantised layer (``LR2VQLayer``) stores ``N * ceil(log2 k)`` bits of codes, ``k * d`` fp16 codebook
  entries, ``m * d`` fp16 projection entries (none for plain PQ, where ``P = I``) and its bias in fp16:
  ``bits = N ceil(log2 k) + 16 k d + 16 m d + 16 |bias|``;
- every other floating tensor of the state dict (BatchNorm weight/bias, layers left uncompressed) is
  stored in fp16: 16 bits each; BatchNorm running statistics are folded into its weight and bias before
  storing (``fold_batchnorm``; eval-mode identical), so a BatchNorm costs 2 x 16 bits per channel;
  with ``LR2VQConfig.bn_bits = 8`` its folded scale and shift are each stored as 8-bit codes on a
  uniform per-tensor grid (``value = q * step + lo``, ``lo`` and ``step`` in fp16): 8 bits per channel
  per tensor plus 2 x 16 bits per tensor (``quantise_folded_bn``);
- integer buffers (BatchNorm's ``num_batches_tracked``) are not stored (inference does not read them);
- the reference is the FP32 model: every floating tensor of its state dict at 32 bits (the quantised
  layers' original weights included), integer buffers excluded.

``ratio = reference bits / compressed bits``. The bytes of the files actually written (checkpoint
header, byte padding of each layer's packed codes, ONNX graph) are reported next to this figure by the
callers, never folded into it.

>>> vq_layer_bits(n=32, k=4, d=2, m=4, identity=False, bias=8)["total"]
448
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecompress.compress.lr2vq.block import LR2VQLayer, code_bits

FLOAT_BITS = 16  # storage precision of codebooks, projections and every uncompressed float tensor
GRID_ATTR = "ec_grid8"  # on a folded BatchNorm stored in 8 bits: {"weight": (lo, step), "bias": (lo, step)}
GRID_LEVELS = 255


def vq_layer_bits(n: int, k: int, d: int, m: int, identity: bool, bias: int) -> dict[str, int]:
    """Bits of one quantised layer: codes, codebook, projection, bias and their total."""
    bits = {"codes": n * code_bits(k), "codebook": FLOAT_BITS * k * d,
            "projection": 0 if identity else FLOAT_BITS * m * d,
            "bias": FLOAT_BITS * bias}
    bits["total"] = sum(bits.values())
    return bits


def is_folded_bn(module: nn.Module) -> bool:
    """A BatchNorm whose statistics were folded into its affine (``running_mean = 0``, ``running_var = 1 - eps``):
    only its weight and bias need storing, ``y = weight * x + bias`` in eval mode."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.affine or module.running_mean is None:
        return False
    var = torch.tensor(1.0 - module.eps, dtype=module.running_var.dtype)
    return bool((module.running_mean == 0).all()) and bool((module.running_var == var).all())


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every affine BatchNorm's running statistics into its weight and bias (eval-mode identical):
    ``w' = w / sqrt(var + eps)``, ``b' = b - mean w'``, then ``mean = 0``, ``var = 1 - eps``. Returns the names."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.affine \
                or module.running_mean is None:
            continue
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        module.bias.copy_(module.bias - module.running_mean * scale)
        module.weight.copy_(scale)
        module.running_mean.zero_()
        module.running_var.fill_(1.0 - module.eps)
        names.append(name)
    return names


def grid8_of(t: torch.Tensor) -> tuple[float, float]:
    """The uniform 8-bit grid ``(lo, step)`` of a tensor, both fp16 values (``lo`` at or below the minimum)."""
    lo = torch.tensor(t.min().item()).half()
    if lo.float() > t.min():  # fp16 rounding went up: take the next fp16 value below
        lo = torch.nextafter(lo, torch.tensor(float("-inf"), dtype=torch.float16))
    step = torch.tensor((t.max().item() - lo.item()) / GRID_LEVELS).half()
    return float(lo), float(step)


def grid8_codes(t: torch.Tensor, lo: float, step: float) -> torch.Tensor:
    """The 8-bit codes of ``t`` on the grid ``(lo, step)`` (nearest level, clamped to [0, 255])."""
    if step == 0:
        return torch.zeros(t.shape, dtype=torch.uint8)
    return torch.round((t.float() - lo) / step).clamp(0, GRID_LEVELS).to(torch.uint8)


def grid8_values(q: torch.Tensor, lo: float, step: float) -> torch.Tensor:
    """``q * step + lo`` in fp32, as two rounded operations (the compact ONNX computes Mul then Add the same way)."""
    return q.float().mul(torch.tensor(step, dtype=torch.float32)).add(torch.tensor(lo, dtype=torch.float32))


@torch.no_grad()
def quantise_folded_bn(model: nn.Module) -> list[str]:
    """Round every folded BatchNorm's scale and shift to its 8-bit grid in place (``GRID_ATTR`` records the
    grids for storage and accounting). Call after ``fold_batchnorm``. Returns the BatchNorms' names."""
    names = []
    for name, module in model.named_modules():
        if not is_folded_bn(module):
            continue
        grids = {}
        for leaf in ("weight", "bias"):
            tensor = getattr(module, leaf)
            lo, step = grid8_of(tensor)
            tensor.copy_(grid8_values(grid8_codes(tensor, lo, step), lo, step))
            grids[leaf] = (lo, step)
        setattr(module, GRID_ATTR, grids)
        names.append(name)
    return names


def grid8_tensors(model: nn.Module) -> dict[str, tuple[float, float]]:
    """``{state-dict key: (lo, step)}`` of every tensor stored on an 8-bit grid."""
    out = {}
    for name, module in model.named_modules():
        for leaf, grid in getattr(module, GRID_ATTR, {}).items():
            out[f"{name}.{leaf}" if name else leaf] = grid
    return out


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries that are stored: float tensors, minus folded BatchNorm statistics."""
    skip = set()
    for name, module in model.named_modules():
        if is_folded_bn(module):
            prefix = f"{name}." if name else ""
            skip.update({f"{prefix}running_mean", f"{prefix}running_var"})
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point() and k not in skip}


def account(model: nn.Module) -> dict:
    """Per-layer and total bits of ``model`` (with its ``LR2VQLayer`` blocks) against its FP32 reference.

    Returns ``{"layers": [...], "other": {...}, "reference_bytes", "compressed_bytes", "ratio"}``; byte
    figures are bits / 8 (exact, before any file padding). Source: counted from the tensors' shapes.
    """
    layers, covered = [], set()
    ref_bits = comp_bits = 0
    for name, module in model.named_modules():
        if not isinstance(module, LR2VQLayer):
            continue
        bias = 0 if module.bias is None else module.bias.numel()
        bits = vq_layer_bits(module.n, module.k, module.d, module.m, module.identity, bias)
        ref = 32 * (module.n * module.m + bias)
        layers.append({"name": name, "kind": module.kind, "weight_shape": list(module.weight_shape), "m": module.m,
                       "d": module.d, "k": module.k, "n_subvectors": module.n, "code_bits": code_bits(module.k),
                       "identity": module.identity, "bits": bits, "reference_bytes": ref / 8,
                       "compressed_bytes": bits["total"] / 8, "ratio": ref / bits["total"]})
        ref_bits += ref
        comp_bits += bits["total"]
        covered.add(name)
    other_ref = other_comp = 0
    other_tensors = 0
    stored = stored_state(model)
    grids = grid8_tensors(model)
    for key, tensor in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in covered or not tensor.is_floating_point():
            continue
        other_ref += 32 * tensor.numel()
        if key in grids:
            other_comp += 8 * tensor.numel() + 2 * FLOAT_BITS
            other_tensors += 1
        elif key in stored:
            other_comp += FLOAT_BITS * tensor.numel()
            other_tensors += 1
    ref_bits += other_ref
    comp_bits += other_comp
    return {
        "source": "counted from tensor shapes (exact bits; file headers/padding excluded)",
        "rules": "codes ceil(log2 k) bits; codebooks, projections, biases and every other float tensor fp16; "
                 "BatchNorm statistics folded into its weight/bias (2 fp16 values per channel, or with bn_bits=8 "
                 "2 8-bit codes per channel plus an fp16 lo and step per tensor); "
                 "integer buffers not stored; reference = every float tensor of the FP32 model at 32 bits",
        "layers": layers,
        "other": {"tensors": other_tensors, "reference_bytes": other_ref / 8, "compressed_bytes": other_comp / 8},
        "reference_bytes": ref_bits / 8,
        "compressed_bytes": comp_bits / 8,
        "ratio": ref_bits / comp_bits if comp_bits else float("inf"),
    }
