"""Pure k-means on small tensors: squared distances, k-means++ seeding, Lloyd iterations, soft assignment.

Hand-written (torch has no k-means; scikit-learn's would force numpy round trips inside training and
cannot be differentiated through). Every function is pure: tensors in, tensors out, a seed instead of
global random state.

Formulas:
- squared distance ``D_ij = ||x_i||^2 - 2 x_i . c_j + ||c_j||^2``
- k-means++ (Arthur & Vassilvitskii, SODA 2007): next centre drawn with probability ``∝ min_j D_ij``
- Lloyd: ``codes_i = argmin_j D_ij``, ``c_j = mean{x_i : codes_i = j}`` (empty clusters re-seeded
  on the worst-served point)
- soft assignment (DKM, Cho et al., ICLR 2022): ``a_ij = softmax_j(-D_ij / tau)``

>>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
>>> c, codes, err = kmeans(x, 2, seed=0)
>>> sorted(c.flatten().tolist())
[0.05000000074505806, 5.050000190734863]
"""

from __future__ import annotations

import torch


def sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(N, k)`` between rows of ``x`` (N, d) and ``c`` (k, d), clamped at 0."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.t() + (c * c).sum(1)[None, :]  # (N, k)
    return d.clamp_min(0.0)


def assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Hard codes ``(N,)``: index of the nearest centroid for every row of ``x``."""
    return sq_dist(x, c).argmin(1)


def distortion(x: torch.Tensor, c: torch.Tensor, codes: torch.Tensor) -> float:
    """Clustering error ``sum_i ||x_i - c_{codes_i}||^2``."""
    return float(((x - c[codes]) ** 2).sum())


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: ``k`` rows of ``x`` (N, d), each drawn ∝ its squared distance to the chosen ones."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    best = ((x - x[first]) ** 2).sum(1)  # (N,)
    for _ in range(1, k):
        total = float(best.sum())
        if total <= 0.0:  # fewer distinct points than k: repeat points (their clusters stay empty/duplicate)
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(best / total, 1, generator=generator))
        centres.append(x[idx])
        best = torch.minimum(best, ((x - x[idx]) ** 2).sum(1))
    return torch.stack(centres)  # (k, d)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0, init: torch.Tensor | None = None,
           tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means of ``x`` (N, d) into ``k`` centroids; returns ``(centroids (k, d), codes (N,), error)``.

    ``error`` is the distortion ``sum_i ||x_i - c_{codes_i}||^2``. Stops after ``iters`` iterations or when
    the error improves by less than ``tol`` (relative). ``init`` replaces k-means++ seeding.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be (N, d), got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: k={k} must lie in [1, N={x.shape[0]}]")
    x = x.detach().float()
    generator = torch.Generator().manual_seed(seed)
    c = kmeans_pp(x, k, generator) if init is None else init.detach().float().clone()
    previous = float("inf")
    codes = assign(x, c)
    for _ in range(iters):
        counts = torch.bincount(codes, minlength=k).float()  # (k,)
        sums = torch.zeros_like(c).index_add_(0, codes, x)  # (k, d)
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
        if not bool(nonempty.all()):  # re-seed empty clusters on the worst-served points
            err_i = ((x - c[codes]) ** 2).sum(1)
            worst = err_i.argsort(descending=True)[: int((~nonempty).sum())]
            c[~nonempty] = x[worst]
        codes = assign(x, c)
        error = distortion(x, c, codes)
        if previous - error <= tol * max(previous, 1e-30):
            break
        previous = error
    return c, codes, distortion(x, c, codes)


def soft_assign(x: torch.Tensor, c: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """DKM's differentiable assignment ``a_ij = softmax_j(-||x_i - c_j||^2 / tau)``, shape (N, k)."""
    return torch.softmax(-sq_dist(x, c) / tau, dim=1)
