"""Q-T score of a search space for a device (SpaceEvo, methods.md section 2.3), written by hand.

For a candidate space A and latency limits {T_j} (INT8, *predicted* by ``nas/predictor.py``):

1. sample ``samples`` subnets of A; each has a quality loss L (lower is better) and a latency t;
2. p_j = fraction of samples with t <= T_j;
3. L_j = mean loss of the ``top`` (50) lowest-loss samples among those meeting T_j;
4. P_j = max(1, (t0 / p_j)^a), t0 = 0.1, a = 0.01: a penalty only when fewer than a fraction t0 of
   the space meets T_j;
5. score(A) = sum_j 1 / (P_j * L_j); a limit no sample meets adds 0. Higher is better.

The quality loss. SpaceEvo uses per-block knowledge-distillation NSR losses against an INT8
EfficientNet-B5 teacher, pre-tabulated per (stage, block, width window): far beyond this project's
compute budget. The default here, ``capacity_loss``, is a forward-free **capacity proxy**,
L = 1 / log(MACs): under a latency limit it favours spaces whose subnets fit the most computation in
the limit in INT8, i.e. the operators and widths that are fast in INT8 on the device -- the
quantization-friendliness the score exists to measure -- but it does not know that some operators
buy more accuracy per MAC than others. Any ``loss_fn(space, subnet) -> float`` can replace it.

>>> score, rows = qt_score_from([1.0, 2.0, 3.0], [0.5, 0.4, 0.2], [2.5], top=2)
>>> round(score, 6), rows[0]["fraction_meeting"]
(2.222222, 0.6666666666666666)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgecompress.nas.predictor import LatencyPredictor, _cost, kernels_of
from edgecompress.nas.space import Space, Subnet

LossFn = Callable[[Space, Subnet], float]


def subnet_macs(space: Space, subnet: Subnet) -> float:
    """Multiply-accumulates of one inference (convs, pooling and the linear head; adds left out)."""
    return float(sum(_cost(k)[0] for k in kernels_of(space, subnet)))


def capacity_loss(space: Space, subnet: Subnet) -> float:
    """Forward-free quality proxy L = 1 / log(MACs) (module docstring says what it can and cannot see)."""
    return 1.0 / math.log(max(subnet_macs(space, subnet), 2.0))


def qt_score_from(latencies: Sequence[float], losses: Sequence[float], limits: Sequence[float], top: int = 50,
                  t0: float = 0.1, a: float = 0.01) -> tuple[float, list[dict]]:
    """The Q-T score from per-sample latencies and losses (pure; module docstring has the formula)."""
    lat, loss = np.asarray(latencies, float), np.asarray(losses, float)
    if lat.shape != loss.shape or lat.size == 0:
        raise ValueError("latencies and losses must be non-empty and of equal length")
    score, rows = 0.0, []
    for limit in limits:
        ok = lat <= limit
        p = float(ok.mean())
        if p == 0:
            rows.append({"limit_ms": limit, "fraction_meeting": 0.0, "top_loss": None, "penalty": None, "term": 0.0})
            continue
        best = np.sort(loss[ok])[:top]
        l_j = float(best.mean())
        penalty = max(1.0, (t0 / p) ** a)
        term = 1.0 / (penalty * l_j)
        score += term
        rows.append({"limit_ms": limit, "fraction_meeting": p, "top_loss": l_j, "penalty": penalty, "term": term})
    return score, rows


@dataclass(frozen=True)
class QTConfig:
    """Latency limits (ms, INT8 predicted), samples per space, top-k, penalty t0 and a."""

    limits_ms: tuple[float, ...]
    samples: int = 300
    top: int = 50
    t0: float = 0.1
    a: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.limits_ms or min(self.limits_ms) <= 0:
            raise ValueError(f"limits_ms={self.limits_ms}: give one or more positive limits")
        if self.samples < 1 or self.top < 1:
            raise ValueError(f"samples={self.samples}, top={self.top}: must be >= 1")
        if not 0 < self.t0 <= 1 or self.a < 0:
            raise ValueError(f"t0={self.t0}, a={self.a}: need 0 < t0 <= 1 and a >= 0")


def qt_score(space: Space, predictor: LatencyPredictor, config: QTConfig,
             loss_fn: LossFn = capacity_loss) -> tuple[float, list[dict]]:
    """Q-T score of ``space``: sampled subnets, predicted INT8 latency, ``loss_fn`` quality."""
    rng = random.Random(config.seed)
    subnets = [space.sample(rng) for _ in range(config.samples)]
    latencies = predictor.predict_many(space, subnets)
    losses = [loss_fn(space, s) for s in subnets]
    return qt_score_from(latencies, losses, config.limits_ms, config.top, config.t0, config.a)
