"""Evolution over search spaces (Q-T score) and over subnets (accuracy under a latency limit).

Space evolution (SpaceEvo, methods.md section 2.5): aging (regularised) evolution; the population
starts with every homogeneous space (one block type everywhere, each window position), filled up
with random spaces; each cycle takes the best of ``sample`` random members and appends two children,
one with one stage's block type mutated, one with one stage's width window moved, dropping the
oldest two. Fitness is the Q-T score (``nas/qt_score.py``). The best space ever seen is returned.

Subnet search (SpaceEvo ``search_subnet.py``, scaled down): evolution over subnets of a trained
supernet whose *predicted* INT8 latency meets the limit; fitness is the fake-quantized INT8 top-1
of the extracted, BN-recalibrated subnet. The best ``measure_top`` are then exported as Q/DQ ONNX,
**measured** in onnxruntime (latency and INT8 accuracy), and the Pareto set of (accuracy, measured
latency) is kept; every candidate is reported with its figures and why it was kept or rejected.
Written by hand (no library evolves these spaces).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.errors import BadInputError, CheckFailedError
from edgecompress.nas.predictor import LatencyPredictor, MeasureSettings, measure_onnx
from edgecompress.nas.qt_score import LossFn, QTConfig, capacity_loss, qt_score
from edgecompress.nas.space import Hyperspace, Space, Subnet

Genes = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SpaceEvolutionConfig:
    """Aging evolution budget: population, tournament sample, cycles (two children per cycle)."""

    population: int = 20
    sample: int = 5
    cycles: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2 or not 1 <= self.sample <= self.population or self.cycles < 0:
            raise ValueError(f"population={self.population}, sample={self.sample}, cycles={self.cycles}: need "
                             "population >= 2, 1 <= sample <= population, cycles >= 0")


def mutate_block(genes: Genes, hyper: Hyperspace, rng: random.Random) -> Genes:
    """Change one random stage's block type to another."""
    i = rng.randrange(len(genes))
    block, start = genes[i]
    others = [b for b in hyper.blocks if b != block] or [block]
    return genes[:i] + ((rng.choice(others), start),) + genes[i + 1:]


def mutate_window(genes: Genes, hyper: Hyperspace, rng: random.Random) -> Genes:
    """Move one random stage's width window to another position."""
    i = rng.randrange(len(genes))
    block, start = genes[i]
    others = [s for s in range(hyper.windows(i)) if s != start] or [start]
    return genes[:i] + ((block, rng.choice(others)),) + genes[i + 1:]


def evolve_space(hyper: Hyperspace, predictor: LatencyPredictor, qt: QTConfig,
                 config: SpaceEvolutionConfig = SpaceEvolutionConfig(), loss_fn: LossFn = capacity_loss,
                 progress: Callable[[str], None] | None = None) -> tuple[Space, list[dict]]:
    """Aging evolution of candidate spaces by Q-T score; returns (best space, history of every scored space)."""
    say = progress or (lambda _m: None)
    rng = random.Random(config.seed)
    scores: dict[Genes, float] = {}
    history: list[dict] = []

    def score(genes: Genes) -> float:
        if genes not in scores:
            space = hyper.space(genes)
            value, rows = qt_score(space, predictor, qt, loss_fn)
            scores[genes] = value
            history.append({"space": space.format(), "hash": space.hash(), "qt_score": value, "limits": rows})
        return scores[genes]

    n_win = min(hyper.windows(i) for i in range(len(hyper.stages)))
    seeds: list[Genes] = [tuple((b, min(w, hyper.windows(i) - 1)) for i in range(len(hyper.stages)))
                          for b in hyper.blocks for w in range(n_win)]
    rng.shuffle(seeds)
    population = seeds[: config.population]
    while len(population) < config.population:
        population.append(hyper.random_genes(rng))
    for g in population:
        score(g)
    for cycle in range(config.cycles):
        parent = max(rng.sample(population, config.sample), key=score)
        for child in (mutate_block(parent, hyper, rng), mutate_window(parent, hyper, rng)):
            score(child)
            population.append(child)
            population.pop(0)
        if cycle % 10 == 0:
            say(f"space evolution cycle {cycle + 1}/{config.cycles}: best Q-T {max(scores.values()):.4f}")
    best = max(scores, key=scores.get)
    return hyper.space(best), history


# ------------------------------------------------------------------------------------ subnet search
@dataclass(frozen=True)
class SubnetSearchConfig:
    """Evolution over subnets: population, generations, mutation probability, how many to measure."""

    population: int = 8
    generations: int = 3
    mutate_prob: float = 0.3
    measure_top: int = 4
    bn_batches: int = 5
    min_agreement: float = 0.9
    settings: MeasureSettings = MeasureSettings()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 0 or self.measure_top < 1 or self.bn_batches < 1:
            raise ValueError(f"population={self.population}, generations={self.generations}, "
                             f"measure_top={self.measure_top}, bn_batches={self.bn_batches}: out of range")
        if not 0 < self.mutate_prob <= 1:
            raise ValueError(f"mutate_prob={self.mutate_prob}: must lie in (0, 1]")


def mutate_subnet(space: Space, subnet: Subnet, prob: float, rng: random.Random) -> Subnet:
    """Resample each stage's choice with probability ``prob``."""
    fresh = space.sample(rng)
    return Subnet(tuple(f if rng.random() < prob else s for s, f in zip(subnet.stages, fresh.stages, strict=True)))


def crossover(a: Subnet, b: Subnet, rng: random.Random) -> Subnet:
    """Each stage from either parent."""
    return Subnet(tuple(x if rng.random() < 0.5 else y for x, y in zip(a.stages, b.stages, strict=True)))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (accuracy, latency) points no other point beats on both (>= accuracy, <= latency, one strict)."""
    keep = []
    for i, (acc, lat) in enumerate(points):
        dominated = any((a2 >= acc and l2 <= lat) and (a2 > acc or l2 < lat) for j, (a2, l2) in enumerate(points)
                        if j != i)
        if not dominated:
            keep.append(i)
    return keep


def _onnx_accuracy(path: Path, loader: Iterable) -> float:
    from edgecompress.runtime.engine import EngineOptions, load_engine

    engine = load_engine(path, "onnxruntime", EngineOptions(threads=1))
    correct = total = 0
    for x, y in loader:
        logits = engine.run([x.numpy()])[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def search_subnets(supernet, predictor: LatencyPredictor, limit_ms: float, train_loader: Iterable,
                   val_loader: Iterable, config: SubnetSearchConfig = SubnetSearchConfig(),
                   workdir: str | Path | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Evolutionary subnet search under ``limit_ms`` (INT8, onnxruntime on the host); see the module docstring.

    Returns a report: ``candidates`` (every evaluated subnet: predicted ms, fake-quant accuracy, and for the
    measured ones measured ms and onnxruntime INT8 accuracy, with ``status`` and ``reason``), ``pareto``
    (indices into candidates) and ``best``. Raises ``BadInputError`` stating the fastest reachable latency
    when even the smallest subnet measures above the limit.
    """
    from edgecompress.compress.train import evaluate
    from edgecompress.nas.supernet import export_subnet, subnet_model

    if limit_ms <= 0:
        raise BadInputError(f"latency limit {limit_ms} ms: must be > 0")
    say = progress or (lambda _m: None)
    space: Space = supernet.space
    rng = random.Random(config.seed)
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="ec-search-")
        workdir = own_tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    calib = [batch for batch, _ in zip(train_loader, range(config.bn_batches), strict=False)]  # fixed BN batches
    try:
        # 1. reachability, on the measured fastest subnet
        fastest = space.min_subnet()
        model = subnet_model(supernet, fastest, calib, bn_batches=config.bn_batches)
        export_subnet(model, work / "fastest.onnx", space.input_size, calib[0][0],
                      min_agreement=config.min_agreement)
        fastest_ms = measure_onnx(work / "fastest.onnx", config.settings)
        if fastest_ms > limit_ms:
            raise BadInputError(
                f"latency limit {limit_ms:g} ms is unreachable in space {space.format()}: the fastest subnet "
                f"({fastest.format()}) measures {fastest_ms:.3f} ms (onnxruntime INT8, host, "
                f"{config.settings.threads} thread(s), median of {config.settings.rounds} round minima)")

        # 2. evolution on predicted latency and fake-quantized accuracy
        evaluated: dict[Subnet, dict] = {}

        def fitness(s: Subnet) -> float:
            if s not in evaluated:
                acc = evaluate(subnet_model(supernet, s, calib, bn_batches=config.bn_batches), val_loader)
                evaluated[s] = {"subnet": s.format(), "predicted_ms": float(predictor.predict(space, s)),
                                "fake_quant_accuracy": acc}
            return evaluated[s]["fake_quant_accuracy"]

        def feasible(s: Subnet) -> bool:
            return predictor.predict(space, s) <= limit_ms

        rejected_pred: list[dict] = []
        population = [fastest]
        tries = 0
        while len(population) < config.population and tries < 50 * config.population:
            tries += 1
            s = space.sample(rng)
            if feasible(s):
                population.append(s)
            elif len(rejected_pred) < 20:
                rejected_pred.append({"subnet": s.format(), "predicted_ms": float(predictor.predict(space, s)),
                                      "status": "rejected", "reason": "predicted latency over the limit"})
        for g in range(config.generations + 1):
            ranked = sorted(population, key=fitness, reverse=True)
            say(f"subnet search generation {g}/{config.generations}: best fake-quant INT8 accuracy "
                f"{fitness(ranked[0]):.2%} ({len(evaluated)} evaluated)")
            if g == config.generations:
                break
            parents = ranked[: max(2, len(ranked) // 2)]
            children: list[Subnet] = []
            for _ in range(8 * config.population):
                if len(children) >= config.population - len(parents):
                    break
                child = (mutate_subnet(space, rng.choice(parents), config.mutate_prob, rng) if rng.random() < 0.5
                         else crossover(*rng.sample(parents, 2), rng))
                if child in parents or child in children:
                    continue
                if feasible(child):
                    children.append(child)
            population = parents + children

        # 3. measure the best, Pareto set on measured latency and onnxruntime INT8 accuracy
        ranked = sorted(evaluated, key=lambda s: evaluated[s]["fake_quant_accuracy"], reverse=True)
        to_measure = ranked[: config.measure_top]
        if fastest not in to_measure:
            to_measure.append(fastest)
        failed: dict[Subnet, str] = {}
        for i, s in enumerate(to_measure):
            path = work / f"candidate_{i}.onnx"
            model = subnet_model(supernet, s, calib, bn_batches=config.bn_batches)
            row = evaluated[s]
            try:
                export_subnet(model, path, space.input_size, calib[0][0], min_agreement=config.min_agreement)
            except CheckFailedError as exc:  # recorded as a rejection, the search goes on
                failed[s] = str(exc)
                continue
            row["fake_quant_accuracy"] = evaluate(model, val_loader)  # the very model exported
            row["measured_ms"] = measure_onnx(path, config.settings)
            row["onnx_int8_accuracy"] = _onnx_accuracy(path, val_loader)
            row["onnx"] = path.name
        to_measure = [s for s in to_measure if s not in failed]
        measured = [s for s in to_measure if evaluated[s]["measured_ms"] <= limit_ms]
        points = [(evaluated[s]["onnx_int8_accuracy"], evaluated[s]["measured_ms"]) for s in measured]
        front = {measured[i] for i in pareto_front(points)}
        for s, row in evaluated.items():
            if s in failed:
                row.update(status="rejected", reason=f"INT8 export check failed: {failed[s]}")
            elif s not in to_measure:
                row.update(status="rejected", reason=f"fake-quant accuracy not in the top {config.measure_top}; "
                                                     "not measured")
            elif row["measured_ms"] > limit_ms:
                row.update(status="rejected", reason=f"measured {row['measured_ms']:.3f} ms > limit {limit_ms:g} ms "
                                                     f"(predicted {row['predicted_ms']:.3f})")
            elif s in front:
                row.update(status="kept", reason="Pareto-optimal: no measured candidate is both faster and more "
                                                 "accurate")
            else:
                by = next(f for f in front if evaluated[f]["onnx_int8_accuracy"] >= row["onnx_int8_accuracy"]
                          and evaluated[f]["measured_ms"] <= row["measured_ms"])
                row.update(status="rejected", reason=f"dominated by {by.format()} "
                                                     f"({evaluated[by]['onnx_int8_accuracy']:.2%}, "
                                                     f"{evaluated[by]['measured_ms']:.3f} ms)")
        candidates = list(evaluated.values())
        pareto = sorted((i for i, s in enumerate(evaluated) if s in front),
                        key=lambda i: candidates[i]["measured_ms"])
        best_i = (max(pareto, key=lambda i: (candidates[i]["onnx_int8_accuracy"], -candidates[i]["measured_ms"]))
                  if pareto else None)  # None: every measured candidate measured above the limit this time
        return {
            "limit_ms": limit_ms, "space": space.format(),
            "fastest": {"subnet": fastest.format(), "measured_ms": fastest_ms},
            "latency_source": "measured_ms: onnxruntime CPU on the host, INT8 Q/DQ, batch 1; predicted_ms: the "
                              "latency predictor", "measure_settings": config.settings.as_dict(),
            "accuracy_source": "fake_quant_accuracy: torch LSQ+ fake-quant on the validation split; "
                               "onnx_int8_accuracy: the exported Q/DQ model in onnxruntime",
            "candidates": candidates, "pareto": pareto, "best": best_i,
            "rejected_before_evaluation": rejected_pred,
            "median_abs_pred_error": float(np.median([abs(c["predicted_ms"] / c["measured_ms"] - 1)
                                                      for c in candidates if "measured_ms" in c])),
        }
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()

