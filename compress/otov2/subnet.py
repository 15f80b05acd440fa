"""Subnet construction: remove the zero rows of every ZIG physically, then check the outputs.

Source: OTOv2 (arXiv 2303.06862) section 3.3 "automated compressed model construction";
shared/reference/otov2-torchpruning.md section 4.

Removal uses torch-pruning's channel surgery (``DependencyGraph.get_pruning_group(...).prune()``,
producer rows and consumers' input columns together) on a deep copy of the model; written by hand here:
grouped convolutions lose whole conv groups (torch-pruning's in-channel slicing of grouped convs is a
heuristic, so their weights are re-sliced from the original rows) and ``nn.MultiheadAttention`` loses
whole heads (replaced by ``PrunedMultiheadAttention``, which has per-head dims smaller than the
embedding). The result is checked: on the same inputs, its outputs equal the group-sparse full model's
within ``rtol`` (relative error max|a - b| / max|b|), or ``CheckFailedError`` is raised.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.compress.otov2.zig import ZIG, _is_grouped_conv, build_dependency_graph
from edgecompress.errors import CheckFailedError


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (packed q/k/v) with some heads removed: embed E -> H heads of size d -> E.

    y = out_proj(concat_h softmax(q_h k_h^T / sqrt(d) + mask) v_h), q = x W_q^T + b_q, ... (Vaswani et al.).
    Same call signature and return ``(output, weights or None)``; attention weights are averaged over
    the kept heads only.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, batch_first: bool = False):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim, self.batch_first = embed_dim, num_heads, head_dim, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_module(cls, m: nn.MultiheadAttention, keep_heads: list[int]) -> PrunedMultiheadAttention:
        d = m.head_dim
        e = m.embed_dim
        new = cls(e, len(keep_heads), d, m.in_proj_bias is not None, m.batch_first)
        cols = torch.tensor([h * d + i for h in keep_heads for i in range(d)], dtype=torch.long)
        rows = torch.cat([cols, cols + e, cols + 2 * e])
        with torch.no_grad():
            new.in_proj_weight.copy_(m.in_proj_weight[rows])
            if new.in_proj_bias is not None:
                new.in_proj_bias.copy_(m.in_proj_bias[rows])
            new.out_proj.weight.copy_(m.out_proj.weight[:, cols])
            if new.out_proj.bias is not None:
                new.out_proj.bias.copy_(m.out_proj.bias)
        return new.to(m.in_proj_weight.device)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, _ = query.shape
        lk = key.shape[1]
        h, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, w_q, b_q).view(b, lq, h, d).transpose(1, 2)  # (B, H, Lq, d)
        k = F.linear(key, w_k, b_k).view(b, lk, h, d).transpose(1, 2)  # (B, H, Lk, d)
        v = F.linear(value, w_v, b_v).view(b, lk, h, d).transpose(1, 2)  # (B, H, Lk, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, Lq, Lk)
        if attn_mask is not None:
            is_bool = attn_mask.dtype == torch.bool
            scores = scores.masked_fill(attn_mask, float("-inf")) if is_bool else scores + attn_mask
        if is_causal and attn_mask is None:
            causal = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        if key_padding_mask is not None:
            pad = key_padding_mask.view(b, 1, 1, lk)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        attn = scores.softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, lq, h * d)  # (B, Lq, H*d)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
        return out, weights


def _to_dense(conv: nn.Module) -> None:
    """Grouped conv -> the same conv with groups=1 and a block-diagonal weight (identical outputs)."""
    w, g = conv.weight.data, conv.groups  # (O, I/g, k, k)
    po, pi = w.shape[0] // g, w.shape[1]
    dense = w.new_zeros(w.shape[0], pi * g, *w.shape[2:])  # (O, I, k, k)
    for j in range(g):
        dense[j * po:(j + 1) * po, j * pi:(j + 1) * pi] = w[j * po:(j + 1) * po]
    conv.weight = nn.Parameter(dense)
    conv.groups = 1


def _to_grouped(conv: nn.Module, groups: int) -> None:
    """Inverse of ``_to_dense`` after surgery: the diagonal blocks of the dense weight, ``groups`` of them."""
    dense = conv.weight.data  # (O', I', k, k)
    po, pi = dense.shape[0] // groups, dense.shape[1] // groups
    blocks = [dense[j * po:(j + 1) * po, j * pi:(j + 1) * pi] for j in range(groups)]
    conv.weight = nn.Parameter(torch.cat(blocks).clone())
    conv.groups = groups


def _outputs(model: nn.Module, example_inputs) -> list[torch.Tensor]:
    args = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    with torch.no_grad():
        out = model(*args)
    flat: list[torch.Tensor] = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            flat.append(o.detach().float().cpu())
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)

    walk(out)
    return flat


def relative_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """max over outputs of max|actual - expected| / max|expected|; inf on a shape mismatch."""
    if len(actual) != len(expected):
        return float("inf")
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            return float("inf")
        scale = max(float(e.double().abs().max()) if e.numel() else 0.0, 1e-12)
        worst = max(worst, float((a.double() - e.double()).abs().max()) / scale if e.numel() else 0.0)
    return worst


def zero_rows_of(zig: ZIG, tol: float = 0.0) -> list[int]:
    """Rows whose variables are all zero (‖x_g‖ <= tol); at least one row is always kept."""
    norms = zig.row_norms()
    zero = [i for i, v in enumerate(norms.tolist()) if v <= tol]
    if len(zero) >= zig.num_rows:
        zero = zero[1:]
    return zero


@torch.no_grad()
def construct(model: nn.Module, zigs: list[ZIG], example_inputs, rtol: float = 1e-5,
              check_inputs=None) -> tuple[nn.Module, dict]:
    """A pruned deep copy of ``model`` without the zero rows of its prunable ZIGs, checked against ``model``.

    ``check_inputs`` (default ``example_inputs``) are the tensors both models are compared on, in eval
    mode. Returns ``(subnet, info)`` with the rows removed per group and the relative error.
    """
    was_training = model.training
    model.eval()
    plan = {z.id: zero_rows_of(z) for z in zigs if z.prunable}
    plan = {k: v for k, v in plan.items() if v}
    names = {m: n for n, m in model.named_modules()}
    sub = copy.deepcopy(model).eval()
    sub_modules = dict(sub.named_modules())
    DG = build_dependency_graph(sub, example_inputs)

    # grouped convs lose whole conv groups: torch-pruning slices a block-diagonal dense copy, then the
    # diagonal blocks become the grouped weight again
    grouped = {n: m.groups for n, m in sub_modules.items() if _is_grouped_conv(m)}
    for n in grouped:
        _to_dense(sub_modules[n])
    removed_groups: dict[str, set[int]] = {}
    heads: dict[str, list[int]] = {}
    by_id = {z.id: z for z in zigs}
    for zid, rows in plan.items():
        z = by_id[zid]
        rows_t = torch.tensor(rows, dtype=torch.long)
        for part in z.parts:
            name = names[part.module]
            if part.kind == "heads":
                heads[name] = sorted(set(range(z.num_rows)) - set(rows))
                continue
            chans = part.channels[rows_t].flatten()
            chans = sorted(int(c) for c in chans if c >= 0)
            target = sub_modules[name]
            pruner = DG.get_pruner_of_module(target)
            DG.get_pruning_group(target, pruner.prune_out_channels, chans).prune()
        if z.kind == "conv-groups":
            for mname in z.modules:
                if mname in grouped:
                    removed_groups[mname] = set(rows)

    for mname, groups in grouped.items():
        _to_grouped(sub_modules[mname], groups - len(removed_groups.get(mname, ())))

    for name, keep in heads.items():
        parent_name, _, child = name.rpartition(".")
        parent = sub_modules[parent_name] if parent_name else sub
        setattr(parent, child, PrunedMultiheadAttention.from_module(sub_modules[name], keep))

    inputs = example_inputs if check_inputs is None else check_inputs
    expected = _outputs(model, inputs)
    try:
        actual = _outputs(sub, inputs)
    except Exception as exc:  # noqa: BLE001 - a subnet that does not run is a failed construction
        raise CheckFailedError(f"subnet construction broke the model: {type(exc).__name__}: {exc}") from exc
    err = relative_error(actual, expected)
    model.train(was_training)
    if not err <= rtol:
        raise CheckFailedError(f"subnet outputs differ from the group-sparse model: relative error {err:.3e} > "
                               f"{rtol:g} "
                               f"(groups pruned: {sorted(plan)})")
    info = {"relative_error": err, "rtol": rtol, "rows_removed": {by_id[k].name: len(v) for k, v in plan.items()},
            "groups_pruned": len(plan)}
    return sub, info
