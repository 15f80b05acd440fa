"""DHSPG: OTOv2's Dual Half-Space Projected Gradient optimizer (SGD, Adam and AdamW variants).

Source: Chen et al., "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023 (arXiv 2303.06862), Algorithm 2,
as summarised from the authors' legacy code in shared/reference/otov2-torchpruning.md section 3. Written by
hand (no maintained library ships DHSPG: OTOv3 dropped it). Notation: x_g one ZIG row, d_g its gradient
variant, alpha the learning rate.

1. Gradient variant: SGD d = grad + wd x (heavy-ball momentum, dampening); Adam/AdamW d = m_hat / (sqrt(v_hat) + 1e-8)
   (AdamW: decoupled x <- x - alpha wd x). Trial point x_hat = x - alpha d for every variable.
2. Once, at ``start_pruning_step``: score every prunable row by 0.5 cos(x_g, d_g) + 0.5 / (‖x_g‖/|g| + 1e-6), each
   term L2-normalised over all rows; the top K = floor(N min(target + tolerance, 0.999)) rows form G_p (to be
   pruned); per group the rows kept (G_np) are rounded up to a multiple of ``group_divisible`` channels.
   With ``group_divisible`` > 1 (ours) G_p is sized to the target instead (the smallest K whose rounded
   selection holds the target's rows, at most the tolerance above it) and all of it is zeroed, so every group
   ends with a multiple of the channel multiple; otherwise only part of a rounded G_p would be zeroed.
3. While the group sparsity is below the target, for g in G_p: adaptive group-lasso weight
   lambda_g = lmbda, or if <x_g, d_g> < 0 (a plain step would grow the row):
       lambda_lo = -<x,d>/‖x‖,  lambda_hi = -‖d‖² ‖x‖ / <x,d>,
       lambda_g = clip(amplify lambda_lo, lmbda, lmbda hat_coeff), and (lambda_lo + lambda_hi)/2 if >= lambda_hi;
   x_hat_g <- x_hat_g - alpha lambda_g x_g/‖x_g‖; then the half-space projection x_hat_g <- 0 when
   <x_hat_g, x_g> < epsilon ‖x_g‖² (from ``half_space_project_step``).
4. Zero rows stay zero (``fixed_zero_groups``).

Additions of ours (stated, not from the paper): the projection is capped so the number of zero rows never
exceeds round(target N) (the legacy code could overshoot), rows crossing the half space are projected most
deeply-crossed first; and an optional ``force_project_step``: from ``start_pruning_step`` to it the number
of zero rows is raised linearly to the target (``forced_quota``), projecting the G_p rows of smallest
‖x_g‖/sqrt|g| that the half space has not taken yet (a schedule like OTOv3's HESSO; a guarantee for
short training budgets; ``None`` = pure DHSPG); ``max_group_sparsity`` caps the fraction of one group's rows in
G_p (like torch-pruning's ``max_pruning_ratio``; 1.0 = the paper): the paper's s_norm divides by |g|, so
groups with long rows (a residual stream shared by many convs) are chosen first and can be cut to one channel;
and ``macs_exponent`` (beta): each row's score is multiplied by (MACs of the row / mean MACs of a row) ** beta
before G_p is chosen (0 = the paper). The paper counts sparsity in rows and its score ignores what a row
costs; on MobileNetV2 it picks the 1x1 head's 1280 cheap rows first, so half the rows removed only took 44%
of the MACs. ``OTO.dhspg`` computes the row MACs (``zig.row_macs``).

>>> import torch, edgecompress as ec
>>> oto = ec.OTO(ec.zoo.create("resnet_cifar_tiny"), torch.randn(1, 3, 32, 32))
>>> opt = oto.dhspg(variant="sgd", lr=0.1, target_group_sparsity=0.5)
"""

from __future__ import annotations

import math

import torch

from edgecompress.compress.otov2.zig import ZIG, row_dots

VARIANTS = ("sgd", "adam", "adamw")


# ---- pure math -----------------------------------------------------------------------------------------


def lambda_bounds(xd: torch.Tensor, x_norm: torch.Tensor,
                  d_norm_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda_lo, lambda_hi) per row where <x,d> < 0: lo = -<x,d>/‖x‖, hi = -‖d‖²‖x‖/<x,d>.

    Any lambda in (lo, hi) makes d + lambda x/‖x‖ shrink ‖x‖ and stay a descent direction. Rows with
    <x,d> >= 0 get lo = 0, hi = +inf.
    """
    neg = xd < 0
    safe_xd = torch.where(neg, xd, torch.full_like(xd, -1.0))
    lo = torch.where(neg, -xd / x_norm.clamp_min(1e-12), torch.zeros_like(xd))
    hi = torch.where(neg, -d_norm_sq * x_norm / safe_xd, torch.full_like(xd, math.inf))
    return lo, hi


def adaptive_lambda(xd: torch.Tensor, x_norm: torch.Tensor, d_norm_sq: torch.Tensor, lmbda: float,
                    amplify: float, hat_coeff: float) -> torch.Tensor:
    """lambda_g per row: ``lmbda``; where <x,d> < 0: clip(amplify lo, lmbda, lmbda hat_coeff), (lo+hi)/2 if >= hi."""
    lo, hi = lambda_bounds(xd, x_norm, d_norm_sq)
    lam = (amplify * lo).clamp(min=lmbda, max=lmbda * hat_coeff)
    lam = torch.where(lam >= hi, (lo + hi) / 2, lam)
    return torch.where(xd < 0, lam, torch.full_like(xd, lmbda))


def half_space_mask(xhat_dot_x: torch.Tensor, x_norm_sq: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Rows to project to zero: <x_hat_g, x_g> < epsilon ‖x_g‖² (and x_g != 0)."""
    return (xhat_dot_x < epsilon * x_norm_sq) & (x_norm_sq > 0)


def partition_scores(xd: torch.Tensor, x_norm: torch.Tensor, d_norm: torch.Tensor,
                     row_size: torch.Tensor) -> torch.Tensor:
    """Redundancy score per row: 0.5 s_cos/‖s_cos‖ + 0.5 s_norm/‖s_norm‖.

    s_cos = cos(x, d), s_norm = 1/(‖x‖/|g| + 1e-6).
    """
    s_cos = xd / (x_norm * d_norm).clamp_min(1e-12)
    s_norm = 1.0 / (x_norm / row_size + 1e-6)
    return 0.5 * s_cos / s_cos.norm().clamp_min(1e-12) + 0.5 * s_norm / s_norm.norm().clamp_min(1e-12)


def cost_weighted(scores: torch.Tensor, costs: torch.Tensor, exponent: float) -> torch.Tensor:
    """Scores of rows scaled by ``(cost / mean cost) ** exponent``: expensive rows rank as more redundant.

    Scores can be negative (s_cos); they are shifted to be positive first so the scaling keeps its sense.
    """
    if exponent == 0:
        return scores
    if (costs <= 0).any():
        raise ValueError("cost_weighted: every row cost must be > 0")
    shifted = scores - scores.min() + 1e-12
    return shifted * (costs.double() / costs.double().mean()) ** exponent


def select_redundant(scores: torch.Tensor, group_of_row: torch.Tensor, rows_per_group: list[int], k: int,
                     divisible: list[int], max_fraction: float = 1.0) -> torch.Tensor:
    """Boolean mask of G_p: the ``k`` highest scores, at most ``max_fraction`` of any group's rows (ours; 1.0 =
    the paper), then per group the kept rows rounded up to a multiple of ``divisible[g]``.

    A group with ``rows <= divisible`` keeps all its rows; every group keeps at least one row.
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    cap = [min(n - 1, int(math.floor(max_fraction * n))) for n in rows_per_group]
    taken = [0] * len(rows_per_group)
    chosen = 0
    for r in torch.argsort(scores, descending=True).tolist():
        if chosen >= k:
            break
        g = int(group_of_row[r])
        if taken[g] < cap[g]:
            mask[r] = True
            taken[g] += 1
            chosen += 1
    for g, n in enumerate(rows_per_group):
        rows = (group_of_row == g).nonzero().flatten()
        q = max(1, divisible[g])
        if n <= q:
            mask[rows] = False
            continue
        kept = int((~mask[rows]).sum())
        kept = max(q, -(-kept // q) * q)
        n_p = n - kept
        order = rows[torch.argsort(scores[rows], descending=True)]
        mask[rows] = False
        mask[order[:n_p]] = True
    return mask


def forced_quota(step: int, start: int, end: int, target_rows: int) -> int:
    """Zero rows required at ``step``: rises linearly from 0 at ``start`` to ``target_rows`` at ``end`` (ours)."""
    if step < start:
        return 0
    frac = min(1.0, (step - start + 1) / max(1, end - start))
    return int(math.ceil(target_rows * frac))


# ---- the optimizer -------------------------------------------------------------------------------------


class DHSPG(torch.optim.Optimizer):
    """Dual Half-Space Projected Gradient over all ``params``; ``zigs`` are the prunable groups it may zero.

    Parameters not in a ZIG get the plain ``variant`` update. Weight decay applies to tensors with
    ``ndim > 1``. ``group_sparsity`` is the fraction of prunable ZIG rows that are exactly zero.
    """

    def __init__(self, params, zigs: list[ZIG], *, lr: float = 0.1, variant: str = "sgd", lmbda: float | None = None,
                 lmbda_amplify: float | None = None, hat_lmbda_coeff: float | None = None, epsilon: float = 0.0,
                 weight_decay: float | None = None, first_momentum: float | None = None,
                 second_momentum: float | None = None, dampening: float = 0.0, target_group_sparsity: float = 0.5,
                 tolerance_group_sparsity: float = 0.05, start_pruning_step: int = 0,
                 half_space_project_step: int | None = None, force_project_step: int | None = None,
                 group_divisible: int = 1, fixed_zero_groups: bool = True,
                 max_group_sparsity: float = 1.0, macs_exponent: float = 0.0,
                 row_costs: dict[int, torch.Tensor] | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}: choose one of {VARIANTS}")
        if not 0.0 < target_group_sparsity < 1.0:
            raise ValueError(f"target_group_sparsity={target_group_sparsity}: must lie in (0, 1)")
        if lr <= 0:
            raise ValueError(f"lr={lr}: must be > 0")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon={epsilon}: must lie in [0, 1)")
        if group_divisible < 1:
            raise ValueError(f"group_divisible={group_divisible}: must be >= 1")
        if not 0.0 < max_group_sparsity <= 1.0:
            raise ValueError(f"max_group_sparsity={max_group_sparsity}: must lie in (0, 1]")
        if macs_exponent < 0:
            raise ValueError(f"macs_exponent={macs_exponent}: must be >= 0")
        self.max_group_sparsity = max_group_sparsity
        adam = variant != "sgd"
        defaults = dict(
            lr=lr,
            lmbda=lmbda if lmbda is not None else (1e-2 if adam else 1e-3),
            lmbda_amplify=lmbda_amplify if lmbda_amplify is not None else (20.0 if adam else 2.0),
            hat_lmbda_coeff=hat_lmbda_coeff if hat_lmbda_coeff is not None else (1e3 if adam else 10.0),
            weight_decay=weight_decay if weight_decay is not None else (1e-2 if variant == "adamw" else 0.0),
            first_momentum=first_momentum if first_momentum is not None else (0.9 if adam else 0.0),
            second_momentum=second_momentum if second_momentum is not None else (0.999 if adam else 0.0),
            dampening=dampening)
        super().__init__(params, defaults)
        self.variant, self.epsilon = variant, epsilon
        self.target, self.tolerance = target_group_sparsity, tolerance_group_sparsity
        self.start_pruning_step = start_pruning_step
        self.half_space_project_step = (start_pruning_step if half_space_project_step is None
                                        else half_space_project_step)
        self.force_project_step = force_project_step
        self.group_divisible, self.fixed_zero_groups = group_divisible, fixed_zero_groups
        self.zigs = [z for z in zigs if z.prunable]
        if not self.zigs:
            raise ValueError("DHSPG: the model has no prunable group")
        self.num_rows = sum(z.num_rows for z in self.zigs)
        self.target_rows = int(round(self.target * self.num_rows))
        self.redundant: list[torch.Tensor] | None = None  # G_p mask per ZIG
        self.zero_masks = [z.row_norms() == 0 for z in self.zigs]
        self.macs_exponent = macs_exponent
        if macs_exponent:
            missing = [z.name for z in self.zigs if row_costs is None or z.id not in row_costs]
            if missing:
                raise ValueError(f"macs_exponent={macs_exponent} needs row_costs for every prunable ZIG; missing "
                                 f"{missing[:3]}{'...' if len(missing) > 3 else ''} (OTO.dhspg computes them)")
            bad = [z.name for z in self.zigs if row_costs[z.id].shape != (z.num_rows,)]
            if bad:
                raise ValueError(f"row_costs: wrong shape for {bad[:3]}: one cost per row")
        self.row_costs = row_costs
        self.num_steps = 0
        self.log: list[dict] = []

    # -- state ---------------------------------------------------------------------------------------
    @property
    def num_zero_rows(self) -> int:
        return int(sum(int(m.sum()) for m in self.zero_masks))

    @property
    def group_sparsity(self) -> float:
        return self.num_zero_rows / self.num_rows

    def _grad_variant(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        state = self.state[p]
        grad = p.grad
        wd = group["weight_decay"] if p.ndim > 1 else 0.0
        if self.variant == "sgd":
            d = grad + wd * p.data if wd else grad.clone()
            mu = group["first_momentum"]
            if mu:
                buf = state.get("momentum")
                if buf is None:
                    buf = state["momentum"] = d.clone()
                else:
                    buf.mul_(mu).add_(d, alpha=1 - group["dampening"])
                d = buf.clone()
            return d
        if self.variant == "adam" and wd:
            grad = grad + wd * p.data
        b1, b2 = group["first_momentum"], group["second_momentum"]
        if "m" not in state:
            state["m"], state["v"], state["t"] = torch.zeros_like(p), torch.zeros_like(p), 0
        state["t"] += 1
        state["m"].mul_(b1).add_(grad, alpha=1 - b1)
        state["v"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = state["m"] / (1 - b1 ** state["t"])
        v_hat = state["v"] / (1 - b2 ** state["t"])
        return m_hat / (v_hat.sqrt() + 1e-8)

    def _partition(self, d_of: dict[int, torch.Tensor]) -> None:
        xds, norms, dnorms, sizes, owner = [], [], [], [], []
        for gi, z in enumerate(self.zigs):
            x = [s.param.data for s in z.slices]
            d = [d_of.get(id(s.param), torch.zeros_like(s.param)) for s in z.slices]
            xds.append(row_dots(z.slices, x, d, z.num_rows))
            norms.append(row_dots(z.slices, x, x, z.num_rows).sqrt())
            dnorms.append(row_dots(z.slices, d, d, z.num_rows).sqrt())
            sizes.append(torch.full((z.num_rows,), float(z.row_size), dtype=torch.float64))
            owner.append(torch.full((z.num_rows,), gi, dtype=torch.long))
        scores = partition_scores(torch.cat(xds), torch.cat(norms), torch.cat(dnorms), torch.cat(sizes))
        if self.macs_exponent:
            scores = cost_weighted(scores, torch.cat([self.row_costs[z.id] for z in self.zigs]), self.macs_exponent)
        k = int(math.floor(self.num_rows * min(self.target + self.tolerance, 0.999)))
        divisible = [max(1, -(-self.group_divisible // z.unit)) for z in self.zigs]
        rows = [z.num_rows for z in self.zigs]

        def select(n: int) -> torch.Tensor:
            return select_redundant(scores, torch.cat(owner), rows, n, divisible, self.max_group_sparsity)

        if max(divisible) == 1:
            mask = select(k)
        else:
            # every row of G_p will be zeroed, so each group keeps a multiple of its channel multiple: G_p is
            # the smallest selection (k searched from the target up to target + tolerance) that holds at least
            # the target's rows, and the target becomes its size
            lo, hi = min(self.target_rows, k), k
            while lo < hi:
                mid = (lo + hi) // 2
                if int(select(mid).sum()) >= self.target_rows:
                    hi = mid
                else:
                    lo = mid + 1
            mask = select(lo)
            self.target_rows = int(mask.sum())
        self.redundant = list(mask.split(rows))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: C901 - the algorithm reads top to bottom
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group0 = self.param_groups[0]
        lr = group0["lr"]
        d_of: dict[int, torch.Tensor] = {}
        xhat_of: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = self._grad_variant(p, group)
                d_of[id(p)] = d
                xhat = p.data - group["lr"] * d
                if self.variant == "adamw" and p.ndim > 1 and group["weight_decay"]:
                    xhat.add_(p.data, alpha=-group["lr"] * group["weight_decay"])
                xhat_of[id(p)] = xhat
        if self.redundant is None and self.num_steps >= self.start_pruning_step:
            self._partition(d_of)
        active = self.redundant is not None and self.num_zero_rows < self.target_rows
        if active:
            self._penalize_and_project(d_of, xhat_of, lr, group0)
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in xhat_of:
                    p.data.copy_(xhat_of[id(p)])
        if self.fixed_zero_groups:
            for z, mask in zip(self.zigs, self.zero_masks, strict=True):
                if mask.any():
                    z.zero_rows(mask.nonzero().flatten())
        else:  # zero rows may grow back: count what is zero now
            self.zero_masks = [z.row_norms() == 0 for z in self.zigs]
        self.num_steps += 1
        return loss

    def _penalize_and_project(self, d_of, xhat_of, lr, group) -> None:
        zero_now = self.num_zero_rows
        budget = self.target_rows - zero_now
        candidates = []  # (ratio, zig index, row)
        project = self.num_steps >= self.half_space_project_step
        force = self.force_project_step is not None
        quota = 0
        if force:
            quota = forced_quota(self.num_steps, self.start_pruning_step, self.force_project_step, self.target_rows)
        for gi, z in enumerate(self.zigs):
            live = self.redundant[gi] & ~self.zero_masks[gi]
            if not live.any():
                continue
            x = [s.param.data for s in z.slices]
            d = [d_of.get(id(s.param), torch.zeros_like(s.param)) for s in z.slices]
            xd = row_dots(z.slices, x, d, z.num_rows)
            x_sq = row_dots(z.slices, x, x, z.num_rows)
            d_sq = row_dots(z.slices, d, d, z.num_rows)
            x_norm = x_sq.sqrt()
            lam = adaptive_lambda(xd, x_norm, d_sq, group["lmbda"], group["lmbda_amplify"], group["hat_lmbda_coeff"])
            scale = torch.where(live & (x_norm > 0), lr * lam / x_norm.clamp_min(1e-12), torch.zeros_like(x_norm))
            for s, xs in zip(z.slices, x, strict=True):
                xh = xhat_of.get(id(s.param))
                if xh is None:
                    continue
                idx = s.index.to(xs.device)
                shape = [-1] + [1] * (xs.ndim - 1)
                rows_scale = scale[s.row].to(xs.dtype).to(xs.device).view(shape)  # (M, 1, ...)
                delta = xs.index_select(s.dim, idx).movedim(s.dim, 0) * rows_scale
                xh.index_add_(s.dim, idx, -delta.movedim(0, s.dim))
            if project or force:
                xh_list = [xhat_of.get(id(s.param), s.param.data) for s in z.slices]
                xhx = row_dots(z.slices, xh_list, x, z.num_rows)
                ratio = xhx / x_sq.clamp_min(1e-30)
                hit = half_space_mask(xhx, x_sq, self.epsilon) & live if project else torch.zeros_like(live)
                for r in hit.nonzero().flatten().tolist():
                    candidates.append((float(ratio[r]), 0, gi, r))
                if force:
                    size = max(1, z.row_size)
                    for r in (live & ~hit).nonzero().flatten().tolist():
                        candidates.append((float(x_norm[r]) / math.sqrt(size), 1, gi, r))
        hits = sorted(c for c in candidates if c[1] == 0)[:max(0, budget)]
        extra = max(0, min(budget, quota - zero_now) - len(hits))
        forced = sorted(c for c in candidates if c[1] == 1)[:extra]
        for _, _, gi, r in hits + forced:
            self.zero_masks[gi][r] = True
        for gi, z in enumerate(self.zigs):
            rows = self.zero_masks[gi].nonzero().flatten()
            if len(rows):
                mask = torch.zeros(z.num_rows, dtype=torch.bool)
                mask[rows] = True
                for s in z.slices:
                    xh = xhat_of.get(id(s.param))
                    pick = mask[s.row]
                    if xh is not None and pick.any():
                        xh.index_fill_(s.dim, s.index[pick].to(xh.device), 0.0)
