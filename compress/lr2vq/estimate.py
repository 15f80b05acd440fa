"""Choosing the clustering dimensionality ``d`` from the weights alone, before any fine-tuning.

Hand-written; the paper (arXiv 2211.11397) says ``d`` trades low-rank approximation error against
clustering error and can be estimated before fine-tuning, but its estimator was not readable here
(shared/reference/methods.md §6). This module's estimate is our own [reconstruction]:

For a layer with sub-vector matrix ``W`` (N, m) and singular values ``s_1 >= ... >= s_m``, take
``P = V_d`` (the top-d right singular vectors) and ``Z = W V_d``. Because ``V_d`` has orthonormal
columns, the error of the rebuilt weight splits exactly (Pythagoras) into

    ||W - C[codes] V_d^T||^2 = E_lr(d) + E_c(d),
    E_lr(d) = sum_{j>d} s_j^2                       (low-rank approximation error, falls with d)
    E_c(d)  = min_{C, codes} ||Z - C[codes]||^2      (k-means error of the d-dim vectors, grows with d)

Summed over the layers and divided by ``sum ||W||^2`` these give relative curves ``e_lr(d)`` and
``e_c(d)``. Their sum is smallest at ``d = m`` (unconstrained k-means can only do better), but the
low-rank pre-training phase trains the network *through* the rank-d parameterisation and recovers much
of ``E_lr`` before clustering, while nothing recovers the clustering error of too large a ``d``. The
estimate therefore balances the two instead of summing them, counting the low-rank error at a weight
``w`` (default 1/2) for the share of it that the low-rank phase recovers:

    d^ = argmin_d max(w * e_lr(d), e_c(d))

(the crossing of the falling and the rising curve; ties go to the smaller ``d``). The benchmark
(bench/lr2vq/d_sweep.py, 3 seeds per d) checks it against a sweep of ``d`` with fine-tuning. ``w = 1``
(the plain crossing) picked a d 1.4 points below the best at m=8, k=32 on ResNet-20; ``w = 1/2`` was
read off that sweep, then checked on k=16 and k=64, which it had not seen (see the benchmark README).

>>> import torch
>>> est = estimate_d([("w", torch.randn(64, 4) @ torch.randn(4, 8), 8)], m=8)
>>> est.d <= 8
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from edgecompress.compress.lr2vq.kmeans import kmeans


def default_candidates(m: int) -> list[int]:
    """Every ``d`` in 1..m for m <= 16, else 1, 2, 3, 4, 6, 8, 12, 16, ... (x1.5 steps) and m."""
    if m <= 16:
        return list(range(1, m + 1))
    values, d = {1, 2, 3, m}, 4.0
    while d < m:
        values.add(int(d))
        d *= 1.5
    return sorted(values)


@dataclass
class DEstimate:
    """The chosen ``d`` and the curves it came from (relative errors, summed over layers)."""

    d: int
    candidates: list[int]
    lowrank_error: list[float]
    clustering_error: list[float]
    lowrank_weight: float = 0.5
    rule: str = ("d = argmin_d max(w * e_lr(d), e_c(d)), w = lowrank_weight (crossing of the weighted low-rank "
                 "and the clustering error curves)")
    source: str = "estimated from the pretrained weights (truncated SVD + k-means per layer), before fine-tuning"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["total_error"] = [a + b for a, b in zip(self.lowrank_error, self.clustering_error, strict=True)]
        return out


@torch.no_grad()
def layer_curves(w_sub: torch.Tensor, k: int, candidates: Sequence[int], iters: int = 10,
                 seed: int = 0) -> tuple[list[float], list[float]]:
    """Absolute ``(E_lr(d), E_c(d))`` for one layer's sub-vectors ``w_sub`` (N, m) over ``candidates``."""
    w = w_sub.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (N, r), (r,), (r, m)
    lowrank, clustering = [], []
    for d in candidates:
        lowrank.append(float((s[d:] ** 2).sum()))
        z = (u[:, :d] * s[:d]).float()  # (N, d) = W V_d
        clustering.append(kmeans(z, k, iters=iters, seed=seed)[2])
    return lowrank, clustering


def estimate_d(layers: Sequence[tuple[str, torch.Tensor, int]], m: int, candidates: Sequence[int] | None = None,
               iters: int = 10, seed: int = 0, lowrank_weight: float = 0.5) -> DEstimate:
    """Estimate ``d`` from ``layers`` = [(name, sub-vectors (N, m), k of that layer), ...] (module docstring)."""
    if not 0 < lowrank_weight <= 1:
        raise ValueError(f"lowrank_weight={lowrank_weight}: must lie in (0, 1]")
    if not layers:
        raise ValueError("estimate_d: no layers to estimate from")
    cands = sorted(set(candidates)) if candidates is not None else default_candidates(m)
    if not cands or cands[0] < 1 or cands[-1] > m:
        raise ValueError(f"candidates={cands}: every d must lie in [1, m={m}]")
    total = sum(float((w.double() ** 2).sum()) for _, w, _ in layers)
    if total <= 0:
        raise ValueError("estimate_d: all weights are zero")
    lr_sum, cl_sum = [0.0] * len(cands), [0.0] * len(cands)
    for _, w_sub, k in layers:
        lr, cl = layer_curves(w_sub, k, cands, iters=iters, seed=seed)
        lr_sum = [a + b for a, b in zip(lr_sum, lr, strict=True)]
        cl_sum = [a + b for a, b in zip(cl_sum, cl, strict=True)]
    e_lr = [v / total for v in lr_sum]
    e_c = [v / total for v in cl_sum]
    best = min(range(len(cands)), key=lambda i: (max(lowrank_weight * e_lr[i], e_c[i]), cands[i]))
    return DEstimate(d=cands[best], candidates=list(cands), lowrank_error=e_lr, clustering_error=e_c,
                     lowrank_weight=lowrank_weight)
