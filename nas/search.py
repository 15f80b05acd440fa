"""``edgecompress.search``: SpaceEvo end to end, resumable: predictor -> space -> supernet -> subnets.

Stages (one ``RunDir`` sub-directory each, written atomically; a finished stage is loaded, not re-run):

1. ``predictor``: the kernel latency predictor for the device (``nas/predictor.py``), measured here;
2. ``space``: aging evolution of candidate spaces of the hyperspace by Q-T score
   (``nas/evolution.py``, ``nas/qt_score.py``) at limits {0.8 T, T}; writes ``space.txt``;
3. ``supernet``: sandwich FP32 training then LSQ+ INT8 QAT of the space's supernet
   (``nas/supernet.py``); writes ``supernet.pt`` (a state dict);
4. ``subnets``: evolutionary subnet search under T, measured Pareto set (accuracy vs measured INT8
   latency), ``best.onnx`` (Q/DQ INT8).

>>> config = SearchConfig(latency_ms=5.0, budget="small")          # doctest: +SKIP
>>> result = search("digits", config, "runs/search")               # doctest: +SKIP
>>> result.report["best"]["measured_ms"] <= 5.0                     # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from edgecompress.compress.result import Result
from edgecompress.errors import BadInputError
from edgecompress.fileio import RunDir, write_text_atomic
from edgecompress.nas.evolution import SpaceEvolutionConfig, SubnetSearchConfig, evolve_space, search_subnets
from edgecompress.nas.predictor import LatencyPredictor, MeasureSettings, PredictorConfig, fit_predictor
from edgecompress.nas.qt_score import QTConfig
from edgecompress.nas.space import (
    CIFAR_HYPERSPACE,
    Hyperspace,
    HyperStage,
    Space,
    mobilenetv2_space,
    parse_space,
    parse_subnet,
)
from edgecompress.nas.supernet import Supernet, SupernetConfig, subnet_model, train_supernet
from edgecompress.registry import Registry

HYPERSPACES: Registry[Hyperspace] = Registry("hyperspace")
HYPERSPACES.add("cifar", CIFAR_HYPERSPACE)
#: A two-stage hyperspace for tests and smoke runs (milliseconds per subnet).
HYPERSPACES.add("tiny", Hyperspace((HyperStage((8, 16, 24), 2, (1,), 1), HyperStage((16, 24, 32), 2, (1,), 2)),
                                   blocks=("irb", "fused", "resnet"), input_size=16, stem_channels=8))


@dataclass(frozen=True)
class Budget:
    predictor: PredictorConfig
    qt_samples: int
    space_evolution: SpaceEvolutionConfig
    supernet: SupernetConfig
    subnet_search: SubnetSearchConfig


def _budget(name: str, settings: MeasureSettings, seed: int, progress: bool) -> Budget:
    if name == "tiny":
        return Budget(PredictorConfig(init_subnets=1, val_kernels=4, rounds=1, neighbours=1, calib_subnets=3,
                                      settings=settings, seed=seed), 20,
                      SpaceEvolutionConfig(population=4, sample=2, cycles=2, seed=seed),
                      SupernetConfig(epochs=1, qat_epochs=1, num_random=1, seed=seed, progress=progress),
                      SubnetSearchConfig(population=3, generations=1, measure_top=2, bn_batches=2, settings=settings,
                                         seed=seed))
    if name == "small":
        return Budget(PredictorConfig(init_subnets=30, val_kernels=30, rounds=1, calib_subnets=12, settings=settings,
                                      seed=seed), 300,
                      SpaceEvolutionConfig(population=20, sample=5, cycles=30, seed=seed),
                      SupernetConfig(epochs=6, qat_epochs=2, seed=seed, progress=progress),
                      SubnetSearchConfig(population=8, generations=3, measure_top=4, settings=settings, seed=seed))
    if name == "medium":
        return Budget(PredictorConfig(init_subnets=60, val_kernels=60, rounds=2, calib_subnets=20, settings=settings,
                                      seed=seed), 1000,
                      SpaceEvolutionConfig(population=50, sample=10, cycles=100, seed=seed),
                      SupernetConfig(epochs=30, qat_epochs=6, seed=seed, progress=progress),
                      SubnetSearchConfig(population=16, generations=6, measure_top=8, settings=settings, seed=seed))
    raise ValueError(f"budget={name!r}: choose tiny, small or medium")


@dataclass(frozen=True)
class SearchConfig:
    """What to search for: latency limit (ms, INT8, measured on ``device`` with ``runtime``), budget, spaces.

    ``space``: a fixed space text (skips the space evolution), ``"mobilenetv2"`` for the plain
    MobileNetV2 space, or None to evolve one. ``predictor``: a saved predictor JSON to reuse.
    """

    latency_ms: float
    device: str = "host"
    runtime: str = "onnxruntime"
    budget: str = "small"
    hyperspace: str = "cifar"
    space: str | None = None
    predictor: str | None = None
    threads: int = 1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.latency_ms > 0:
            raise ValueError(f"latency_ms={self.latency_ms}: must be > 0")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be >= 1")
        _budget(self.budget, MeasureSettings(), 0, False)
        HYPERSPACES.get(self.hyperspace)
        if self.device != "host":
            raise BadInputError(f"device {self.device!r} has no latency predictor or measured profile for search: "
                                "kernels must be measured on the device itself; only 'host' can be measured here")
        if self.runtime != "onnxruntime":
            raise BadInputError(f"runtime {self.runtime!r}: search measures onnxruntime only")


def _say(progress: bool):
    return (lambda msg: tqdm.write(msg)) if progress else (lambda _msg: None)


def search(data: str | tuple[DataLoader, DataLoader], config: SearchConfig, out_dir: str | Path) -> Result:
    """Run (or resume) the search into ``out_dir``; returns the best INT8 subnet (fake-quant module) and the report."""
    say = _say(config.progress)
    train_loader, val_loader = _loaders(data, config)
    hyper = HYPERSPACES.get(config.hyperspace)
    budget = _budget(config.budget, MeasureSettings(threads=config.threads), config.seed, config.progress)
    run = RunDir(out_dir)

    # 1. predictor
    if not run.done("predictor"):
        with run.stage("predictor") as (tmp, report):
            if config.predictor:
                predictor = LatencyPredictor.load(config.predictor)
            else:
                spaces = _predictor_spaces(hyper, config)
                predictor = fit_predictor(spaces, budget.predictor, progress=say)
            predictor.save(tmp / "predictor.json")
            report.update(kernels={k: len(v) for k, v in predictor.samples.items()}, overhead=predictor.overhead,
                          log=predictor.log, source=config.predictor or "measured here")
    predictor = LatencyPredictor.load(run.path("predictor") / "predictor.json")
    say(f"[search] predictor ready ({sum(len(v) for v in predictor.samples.values())} measured kernels)")

    # 2. space
    if not run.done("space"):
        with run.stage("space") as (tmp, report):
            if config.space is not None:
                space = mobilenetv2_space() if config.space == "mobilenetv2" else parse_space(config.space)
                history: list[dict] = []
            else:
                qt = QTConfig((0.8 * config.latency_ms, config.latency_ms), samples=budget.qt_samples,
                              seed=config.seed)
                space, history = evolve_space(hyper, predictor, qt, budget.space_evolution, progress=say)
            write_text_atomic(tmp / "space.txt", space.format() + "\n")
            (tmp / "history.json").write_text(json.dumps(history, indent=1))
            report.update(space=space.format(), hash=space.hash(), spaces_scored=len(history),
                          best_qt=max((h["qt_score"] for h in history), default=None))
    space = parse_space((run.path("space") / "space.txt").read_text())
    say(f"[search] space {space.format()}")

    # 3. supernet
    supernet = Supernet(space, _num_classes(train_loader))
    if not run.done("supernet"):
        with run.stage("supernet") as (tmp, report):
            logs = train_supernet(supernet, train_loader, budget.supernet)
            torch.save(supernet.state_dict(), tmp / "supernet.pt")
            report.update(config=asdict(budget.supernet), logs=logs, quantized=supernet.quantized)
    else:
        load_supernet(supernet, run.path("supernet") / "supernet.pt", train_loader,
                      run.report("supernet")["quantized"])

    # 4. subnets
    if not run.done("subnets"):
        with run.stage("subnets") as (tmp, report):
            found = search_subnets(supernet, predictor, config.latency_ms, train_loader, val_loader,
                                   budget.subnet_search, workdir=tmp / "candidates", progress=say)
            if found["best"] is not None:
                shutil.copy(tmp / "candidates" / found["candidates"][found["best"]]["onnx"], tmp / "best.onnx")
            report.update(found)
    report = run.report("subnets")
    if report["best"] is None:
        raise BadInputError(f"no candidate measured within {config.latency_ms:g} ms on re-measurement; "
                            f"the fastest measured {report['fastest']['measured_ms']:.3f} ms")
    best = report["candidates"][report["best"]]
    calib = [b for b, _ in zip(train_loader, range(budget.subnet_search.bn_batches), strict=False)]
    model = subnet_model(supernet, parse_subnet(best["subnet"]), calib, bn_batches=budget.subnet_search.bn_batches)
    summary = {"config": asdict(config), "space": space.format(), "best": best,
               "pareto": [report["candidates"][i] for i in report["pareto"]],
               "onnx": str(run.path("subnets") / "best.onnx"), "out_dir": str(Path(out_dir))}
    say(f"[search] best {best['subnet']}: INT8 accuracy {best['onnx_int8_accuracy']:.2%} (onnxruntime), "
        f"{best['measured_ms']:.3f} ms measured (limit {config.latency_ms:g} ms)")
    return Result(model, summary)


def load_supernet(supernet: Supernet, path: str | Path, loader: DataLoader, quantized: bool) -> Supernet:
    """Load a saved supernet state dict (creating its quantizers first when it was quantized)."""
    if quantized:
        supernet.enable_quantization(next(iter(loader))[0])
    supernet.load_state_dict(torch.load(path, weights_only=True))
    return supernet


def _predictor_spaces(hyper: Hyperspace, config: SearchConfig) -> list[Space]:
    """Spaces whose subnets' kernels the predictor is fitted on: every homogeneous space of the hyperspace."""
    if config.space is not None:
        return [mobilenetv2_space() if config.space == "mobilenetv2" else parse_space(config.space)]
    mid = [hyper.windows(i) // 2 for i in range(len(hyper.stages))]
    return [hyper.space(tuple((b, m) for m in mid)) for b in hyper.blocks]


def _num_classes(loader: DataLoader) -> int:
    ys = torch.cat([y for _, y in loader])
    return int(ys.max()) + 1


def _loaders(data: str | tuple[DataLoader, DataLoader], config: SearchConfig) -> tuple[DataLoader, DataLoader]:
    if isinstance(data, str):
        from edgecompress.data import load

        return load(data, batch_size=64, size=HYPERSPACES.get(config.hyperspace).input_size, seed=config.seed)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise BadInputError("data: give 'digits', a directory, a .npz file or (train_loader, val_loader)")
