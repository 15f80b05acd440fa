"""Kernel-level latency predictor per device, runtime and precision, in the spirit of nn-Meter.

nn-Meter (Zhang et al., MobiSys 2021; shared/reference/methods.md section 2.7) predicts a model's
latency as the sum of its *kernels'* latencies, a kernel being the fused op group the runtime runs
as one unit, with one regressor per kernel type trained on measured kernels chosen by adaptive
sampling. Here, for onnxruntime on the host (the only device measurable from this machine):

* kernels (``kernels_of``) are the fusion units onnxruntime runs for a Q/DQ INT8 model: the stem,
  **one unit per block** (``irb``, ``e2gc``, ``tvconv``, ``resnet``, ``fused``) and the head (pool +
  linear). Inside a block, the quantized convs hand each other INT8 tensors in onnxruntime's NHWC
  layout (QLinearConv chains, layout transposes only at the block's ends), so splitting a block into
  conv-bn-relu kernels measured alone mis-states it (measured here: 4 of 57 subnets within 10% that
  way); a block's output is the float tensor the next block quantizes, so blocks compose. This is
  nn-Meter's rule (ops are one kernel when running them together saves time) applied to this
  runtime, and the block-level INT8 predictor SpaceEvo used. Features: (H_in, C_in, C_out, k,
  stride, e, first-of-stage) plus log MACs, log activations and the hidden width;
* each unit is measured (``measure_kernel``) as its own one-unit ONNX model in onnxruntime, in
  the target precision (INT8: exported with the same LSQ+ Q/DQ wrapping, BN folding and freezing as
  a deployed subnet); latency = the median over rounds of the per-round minimum
  (``MeasureSettings``: the CPU here is shared, and a plain minimum still moved by 20-40%);
* one ``RandomForestRegressor`` per kernel type over log-latency; adaptive sampling: kernels of a
  held-out set predicted off by more than ``tolerance`` (10%) are measured, with ``neighbours``
  perturbed configurations each (channels +-8, as nn-Meter's fine-grained sampling), and added;
* model latency = a * sum(kernel predictions) + b * (number of kernels) + c, with (a, b, c) fitted
  by least squares on whole subnets measured the same way (the per-model overhead term: the
  per-call cost that each one-kernel model pays once, and the model's own session overhead).

Saved as JSON (the measured samples and the fitted overhead); ``load`` refits the forests from the
samples with a fixed seed, so nothing is pickled. Written by hand: nn-Meter is archived and has no
onnxruntime or INT8 predictor; scikit-learn does the regression.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.errors import BadInputError
from edgecompress.fileio import write_json_atomic
from edgecompress.nas.e2gc import conv_output_size
from edgecompress.nas.space import E2GC_GROUP_SIZE, Space, Subnet, materialize, resnet_mid

KINDS = ("stem", "irb", "e2gc", "tvconv", "resnet", "fused", "head")
MEASURABLE_DEVICES = ("host",)


@dataclass(frozen=True)
class Kernel:
    """One fused unit: ``stem``, a block of a type in ``BLOCKS``, or ``head``; ``h`` is the input size.

    ``e`` is the expansion, ``first`` whether the block opens its stage (the forced projection of
    ``resnet``). For ``head``, ``cout`` is the number of classes.
    """

    kind: str
    h: int
    cin: int
    cout: int
    k: int = 3
    stride: int = 1
    e: float = 1.0
    first: int = 0

    def features(self) -> list[float]:
        """(H, C_in, C_out, k, s, e, first, log MACs, log activation elements, hidden width)."""
        macs, acts, hidden = _cost(self)
        return [self.h, self.cin, self.cout, self.k, self.stride, self.e, self.first, math.log1p(macs),
                math.log1p(acts), hidden]

    def as_list(self) -> list:
        return [self.kind, self.h, self.cin, self.cout, self.k, self.stride, self.e, self.first]


def _conv_cost(h: int, cin: int, cout: int, k: int, s: int, groups: int) -> tuple[float, float, int]:
    h2 = conv_output_size(h, k, s)
    return h2 * h2 * k * k * cout * cin / groups, h2 * h2 * cout, h2


def _cost(kd: Kernel) -> tuple[float, float, int]:
    """(MACs, activation elements written, hidden width) of a unit, as ``nas/space.py`` builds it."""
    if kd.kind == "head":
        return kd.cin * kd.cout + kd.h * kd.h * kd.cin, kd.cout, kd.cin
    if kd.kind == "stem":
        m, a, _ = _conv_cost(kd.h, 3, kd.cout, 3, kd.stride, 1)
        return m, a, kd.cout
    convs: list[tuple[float, float, int]] = []
    if kd.kind in ("irb", "e2gc", "tvconv"):
        hid = int(round(kd.cin * kd.e))
        k = kd.k if kd.kind == "irb" else 3
        groups = hid if kd.kind != "e2gc" else hid // min(E2GC_GROUP_SIZE, hid)
        convs.append(_conv_cost(kd.h, kd.cin, hid, 1, 1, 1))
        convs.append(_conv_cost(kd.h, hid, hid, k, kd.stride, groups))
        convs.append(_conv_cost(convs[-1][2], hid, kd.cout, 1, 1, 1))
    elif kd.kind == "resnet":
        hid = resnet_mid(kd.cout, kd.e)
        convs.append(_conv_cost(kd.h, kd.cin, hid, kd.k, kd.stride, 1))
        convs.append(_conv_cost(convs[-1][2], hid, kd.cout, kd.k, 1, 1))
        if kd.first or kd.stride != 1 or kd.cin != kd.cout:
            convs.append(_conv_cost(kd.h, kd.cin, kd.cout, 1, kd.stride, 1))
    elif kd.kind == "fused":
        hid = int(round(kd.cin * kd.e))
        convs.append(_conv_cost(kd.h, kd.cin, hid, kd.k, kd.stride, 1))
        convs.append(_conv_cost(convs[-1][2], hid, kd.cout, 1, 1, 1))
    else:
        raise BadInputError(f"unknown kernel kind {kd.kind!r} (known: {', '.join(KINDS)})")
    return sum(c[0] for c in convs), sum(c[1] for c in convs), hid


def kernels_of(space: Space, subnet: Subnet, num_classes: int = 10) -> list[Kernel]:
    """The fused units a subnet runs, in order: stem, one per block, head."""
    h, c = space.input_size, space.stem_channels
    out = [Kernel("stem", h, 3, c, 3, space.stem_stride)]
    h = conv_output_size(h, 3, space.stem_stride)
    for st, choice in zip(space.stages, subnet.stages, strict=True):
        for j, (k, e) in enumerate(choice.blocks):
            s = st.stride if j == 0 else 1
            out.append(Kernel(st.block, h, c, choice.width, k, s, float(e), int(j == 0)))
            h, c = conv_output_size(h, 3, s), choice.width
    return [*out, Kernel("head", h, c, num_classes, 1, 1)]


# ------------------------------------------------------------------------------------ measurement
class _Head(nn.Module):
    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean((2, 3)))


def kernel_module(kernel: Kernel) -> nn.Module:
    """The plain torch module of one unit (quantize it with ``wrap_quantized``)."""
    from edgecompress.nas.blocks import ConvBNAct
    from edgecompress.nas.space import BLOCKS

    kd = kernel
    if kd.kind == "stem":
        return ConvBNAct(3, kd.cout, 3, kd.stride)
    if kd.kind == "head":
        return _Head(nn.Linear(kd.cin, kd.cout))
    if kd.kind not in KINDS:
        raise BadInputError(f"unknown kernel kind {kd.kind!r} (known: {', '.join(KINDS)})")
    h_out = conv_output_size(kd.h, 3, kd.stride)
    return BLOCKS.get(kd.kind).build(kd.cin, kd.cout, kd.stride, kd.k, kd.e, (h_out, h_out), bool(kd.first))


def wrap_quantized(model: nn.Module) -> nn.Module:
    """Replace every quantizable conv/linear by its LSQ+ fake-quant wrapper (min-max init on first use), in place."""
    from edgecompress.nas.lsq import ActQuant, QConv2d, QLinear, WeightQuant, host_weight_qmax
    from edgecompress.nas.supernet import quantizable

    qmax = host_weight_qmax()[0]
    for name, m in quantizable(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wq = WeightQuant(m.weight.shape[0], qmax)
        wq.init_from(m.weight)
        setattr(parent, child, (QConv2d if isinstance(m, nn.Conv2d) else QLinear)(m, ActQuant(), wq))
    return model


@dataclass(frozen=True)
class MeasureSettings:
    """How units and models are timed: onnxruntime threads, warmup, ``rounds`` x ``repeats`` runs.

    Latency = the median over rounds of the minimum within a round: on a shared CPU the minimum
    drops preempted runs and the median drops rounds that ran while a neighbour held the core.
    """

    threads: int = 1
    warmup: int = 10
    repeats: int = 40
    rounds: int = 5

    def __post_init__(self) -> None:
        for name in ("threads", "repeats", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup}: must be >= 0")

    def as_dict(self) -> dict:
        return {"threads": self.threads, "warmup": self.warmup, "repeats": self.repeats, "rounds": self.rounds,
                "statistic": "median over rounds of the min over repeats", "batch": 1}


class OnnxTimer:
    """One onnxruntime (CPU) session of ``path``, batch 1, warmed up once; ``latency()`` times it again each call
    (ms: median over ``settings.rounds`` rounds of the per-round minimum of ``settings.repeats`` runs)."""

    def __init__(self, path: str | Path, settings: MeasureSettings) -> None:
        from edgecompress.devices.timing import measure
        from edgecompress.runtime.engine import EngineOptions, load_engine

        self._measure, self.settings = measure, settings
        self.engine = load_engine(path, "onnxruntime", EngineOptions(threads=settings.threads))
        self.feeds = self.engine.check_feeds(self.engine.example_feeds(1))
        measure(self.run, warmup=settings.warmup, repeats=1)

    def run(self) -> None:
        self.engine.run(self.feeds)

    def latency(self) -> float:
        s = self.settings
        return float(np.median([min(self._measure(self.run, warmup=0, repeats=s.repeats)) for _ in range(s.rounds)]))


def measure_onnx(path: str | Path, settings: MeasureSettings) -> float:
    """Latency in ms of ``path`` in onnxruntime (CPU), batch 1, in a fresh session (``OnnxTimer``)."""
    return OnnxTimer(path, settings).latency()


def _export_quick(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.onnx export (TorchScript, opset 17) for timing-only one-kernel models; no parity check."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), opset_version=17, input_names=["input"],
                          output_names=["output"], dynamo=False, do_constant_folding=True)


@torch.no_grad()
def _deploy_and_measure(model: nn.Module, x: torch.Tensor, precision: str, settings: MeasureSettings,
                        path: Path) -> float:
    """Calibrate (BN, quantizers) on ``x``, fold and freeze as ``export_subnet`` does, export, time."""
    from edgecompress.nas.lsq import fold_all_bn, freeze_for_export
    from edgecompress.nas.supernet import calibrate_bn

    if precision == "int8":
        wrap_quantized(model)
    calibrate_bn(model, [(x, None)], 1)
    if precision == "int8":
        fold_all_bn(model)
        freeze_for_export(model)
    _export_quick(model, x[:1], path)
    return measure_onnx(path, settings)


def measure_kernel(kernel: Kernel, precision: str, settings: MeasureSettings, workdir: str | Path) -> float:
    """Measured latency (ms, min over repeats) of one unit alone, deployed as in a subnet, on the host."""
    torch.manual_seed(0)
    x = torch.randn(8, kernel.cin, kernel.h, kernel.h)
    return _deploy_and_measure(kernel_module(kernel), x, precision, settings, Path(workdir) / "kernel.onnx")


def measure_subnet(space: Space, subnet: Subnet, precision: str, settings: MeasureSettings,
                   workdir: str | Path, num_classes: int = 10) -> float:
    """Measured latency (ms, min) of a randomly initialised subnet deployed as it would be (INT8: Q/DQ)."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, space.input_size, space.input_size)
    return _deploy_and_measure(materialize(space, subnet, num_classes), x, precision, settings,
                               Path(workdir) / "subnet.onnx")


# ------------------------------------------------------------------------------------------ model
def _forest():
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=60, min_samples_leaf=1, random_state=0, n_jobs=1)


@dataclass
class LatencyPredictor:
    """Fitted predictor: measured kernel samples per kind, per-kind forests, the model-level overhead fit."""

    device: str
    runtime: str
    precision: str
    settings: MeasureSettings
    samples: dict[str, list[tuple[Kernel, float]]]
    overhead: tuple[float, float, float] = (1.0, 0.0, 0.0)
    log: list[dict] | None = None

    def __post_init__(self) -> None:
        self._forests: dict[str, object] = {}
        for kind, rows in self.samples.items():
            if rows:
                forest = _forest()
                forest.fit(np.array([k.features() for k, _ in rows]), np.log(np.array([t for _, t in rows])))
                self._forests[kind] = forest

    def predict_kernels(self, kernels: Sequence[Kernel]) -> np.ndarray:
        """Predicted ms per kernel (batched per kind)."""
        out = np.zeros(len(kernels))
        by_kind: dict[str, list[int]] = {}
        for i, k in enumerate(kernels):
            by_kind.setdefault(k.kind, []).append(i)
        for kind, idx in by_kind.items():
            if kind not in self._forests:
                raise BadInputError(f"latency predictor for {self.device}/{self.runtime}/{self.precision} has no "
                                    f"measurements of kernel type {kind!r}; refit it over this space")
            feats = np.array([kernels[i].features() for i in idx])
            out[idx] = np.exp(self._forests[kind].predict(feats))
        return out

    def raw_sum(self, kernels: Sequence[Kernel]) -> float:
        return float(self.predict_kernels(kernels).sum())

    def predict(self, space: Space, subnet: Subnet, num_classes: int = 10) -> float:
        """Predicted model latency in ms: a * sum(kernels) + b * n_kernels + c."""
        kernels = kernels_of(space, subnet, num_classes)
        a, b, c = self.overhead
        return a * self.raw_sum(kernels) + b * len(kernels) + c

    def predict_many(self, space: Space, subnets: Sequence[Subnet], num_classes: int = 10) -> np.ndarray:
        """``predict`` for many subnets with one forest call per kernel kind."""
        lists = [kernels_of(space, s, num_classes) for s in subnets]
        flat = [k for ks in lists for k in ks]
        preds = self.predict_kernels(flat) if flat else np.zeros(0)
        a, b, c = self.overhead
        out, i = np.zeros(len(subnets)), 0
        for j, ks in enumerate(lists):
            out[j] = a * preds[i:i + len(ks)].sum() + b * len(ks) + c
            i += len(ks)
        return out

    # -- data
    def to_dict(self) -> dict:
        return {"format": "edgecompress.latency_predictor/1", "device": self.device, "runtime": self.runtime,
                "precision": self.precision, "source": "measured kernels, random forest per kernel type",
                "settings": self.settings.as_dict(),
                "overhead": list(self.overhead), "log": self.log or [],
                "samples": {kind: [[*k.as_list(), t] for k, t in rows] for kind, rows in self.samples.items()}}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> LatencyPredictor:
        if d.get("format") != "edgecompress.latency_predictor/1":
            raise BadInputError(f"not a latency predictor file (format {d.get('format')!r})")
        s = d["settings"]
        samples = {kind: [(Kernel(r[0], *map(int, r[1:6]), float(r[6]), int(r[7])), float(r[8])) for r in rows]
                   for kind, rows in d["samples"].items()}
        settings = MeasureSettings(s["threads"], s["warmup"], s["repeats"], s.get("rounds", 1))
        return cls(d["device"], d["runtime"], d["precision"], settings,
                   samples, tuple(d["overhead"]), d.get("log"))

    @classmethod
    def load(cls, path: str | Path) -> LatencyPredictor:
        import json

        p = Path(path)
        if not p.is_file():
            raise BadInputError(f"{p}: no such latency predictor file")
        return cls.from_dict(json.loads(p.read_text()))


# ---------------------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class PredictorConfig:
    """Budget of ``fit_predictor``: sampled subnets for kernels, held-out kernels, rounds, model fits."""

    device: str = "host"
    runtime: str = "onnxruntime"
    precision: str = "int8"
    init_subnets: int = 30
    val_kernels: int = 40
    rounds: int = 2
    neighbours: int = 3
    tolerance: float = 0.10
    calib_subnets: int = 12
    settings: MeasureSettings = MeasureSettings()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in MEASURABLE_DEVICES:
            raise BadInputError(f"device {self.device!r} has no latency predictor: its kernels must be measured on "
                                f"it, and only {', '.join(MEASURABLE_DEVICES)} can be measured from this machine")
        if self.runtime != "onnxruntime":
            raise BadInputError(f"runtime {self.runtime!r}: the latency predictor measures onnxruntime only")
        if self.precision not in ("int8", "fp32"):
            raise ValueError(f"precision={self.precision!r}: choose int8 or fp32")
        for name in ("init_subnets", "val_kernels", "rounds", "neighbours"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.calib_subnets < 3:
            raise ValueError(f"calib_subnets={self.calib_subnets}: must be >= 3 (three overhead terms)")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance={self.tolerance}: must lie in (0, 1)")


def _neighbours(k: Kernel, rng: random.Random, n: int) -> list[Kernel]:
    """Fine-grained neighbours of a unit: input and output channels moved by multiples of 8."""
    out = []
    for _ in range(n):
        cin = k.cin if k.kind == "stem" else max(8, k.cin + 8 * rng.choice((-2, -1, 0, 1, 2)))
        cout = k.cout if k.kind == "head" else max(8, k.cout + 8 * rng.choice((-2, -1, 0, 1, 2)))
        out.append(Kernel(k.kind, k.h, cin, cout, k.k, k.stride, k.e, k.first))
    return out


def fit_overhead(raw: Sequence[float], counts: Sequence[int], measured: Sequence[float]) -> tuple[float, float, float]:
    """Least squares of the relative error: ``measured ~ a * raw + b * count + c``, weights 1 / measured.

    Falls back to ``a * raw + c`` when the three-term fit gives a <= 0 (too few or collinear subnets).
    """
    y = np.asarray(measured, float)
    w = 1.0 / np.maximum(y, 1e-9)
    full = np.column_stack([np.asarray(raw, float), np.asarray(counts, float), np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(full * w[:, None], y * w, rcond=None)
    if coef[0] > 0:
        return float(coef[0]), float(coef[1]), float(coef[2])
    coef, *_ = np.linalg.lstsq(full[:, [0, 2]] * w[:, None], y * w, rcond=None)
    return float(coef[0]), 0.0, float(coef[1])


def fit_predictor(spaces: Sequence[Space], config: PredictorConfig = PredictorConfig(),
                  progress: Callable[[str], None] | None = None, num_classes: int = 10) -> LatencyPredictor:
    """Measure kernels of random subnets of ``spaces``, fit forests with adaptive sampling, fit the overhead."""
    say = progress or (lambda _msg: None)
    rng = random.Random(config.seed)
    cache: dict[Kernel, float] = {}
    log: list[dict] = []

    def subnets(n: int) -> list[tuple[Space, Subnet]]:
        out = []
        for _ in range(n):
            sp = rng.choice(list(spaces))
            out.append((sp, sp.sample(rng)))
        return out

    with tempfile.TemporaryDirectory(prefix="ec-predictor-") as work:
        def measure(kernels: Iterable[Kernel]) -> None:
            todo = [k for k in dict.fromkeys(kernels) if k not in cache]
            for i, k in enumerate(todo):
                cache[k] = measure_kernel(k, config.precision, config.settings, work)
                if i % 20 == 0:
                    say(f"measured {len(cache)} kernels")

        first = [(sp, s) for sp in spaces for s in (sp.min_subnet(), sp.max_subnet())]
        pool = [k for sp, s in first + subnets(config.init_subnets) for k in kernels_of(sp, s, num_classes)]
        measure(pool)
        predictor = _make(config, cache, (1.0, 0.0, 0.0), log)
        for r in range(config.rounds):
            val = list(dict.fromkeys(k for sp, s in subnets(max(1, config.val_kernels // 8))
                                     for k in kernels_of(sp, s, num_classes)))[: config.val_kernels]
            pred = predictor.predict_kernels(val)
            measure(val)
            truth = np.array([cache[k] for k in val])
            err = np.abs(pred / truth - 1)
            bad = [k for k, e in zip(val, err, strict=True) if e > config.tolerance]
            within = float(np.mean(err <= config.tolerance))
            log.append({"round": r + 1, "held_out": len(val), "within_tolerance": within,
                        "added": len(bad) * (1 + config.neighbours)})
            say(f"adaptive round {r + 1}: {log[-1]['within_tolerance']:.0%} of {len(val)} held-out kernels within "
                f"{config.tolerance:.0%}; refining {len(bad)}")
            measure(n for k in bad for n in _neighbours(k, rng, config.neighbours))
            predictor = _make(config, cache, (1.0, 0.0, 0.0), log)
        calib = subnets(config.calib_subnets - 2) + [(spaces[0], spaces[0].min_subnet()),
                                                      (spaces[0], spaces[0].max_subnet())]
        raw, counts, measured = [], [], []
        for sp, s in calib:
            kernels = kernels_of(sp, s, num_classes)
            raw.append(predictor.raw_sum(kernels))
            counts.append(len(kernels))
            measured.append(measure_subnet(sp, s, config.precision, config.settings, work, num_classes))
        overhead = fit_overhead(raw, counts, measured)
        log.append({"overhead_fit": {"a": overhead[0], "b_ms_per_kernel": overhead[1], "c_ms": overhead[2],
                                     "subnets": len(calib)}})
        say(f"fitted model overhead on {len(calib)} measured subnets: a={overhead[0]:.3f}, "
            f"b={overhead[1] * 1e3:.1f} us/kernel, c={overhead[2] * 1e3:.1f} us")
    return _make(config, cache, overhead, log)


def _make(config: PredictorConfig, cache: dict[Kernel, float], overhead: tuple[float, float, float],
          log: list[dict]) -> LatencyPredictor:
    samples: dict[str, list[tuple[Kernel, float]]] = {}
    for k, t in cache.items():
        samples.setdefault(k.kind, []).append((k, t))
    return LatencyPredictor(config.device, config.runtime, config.precision, config.settings, samples, overhead,
                            list(log))

