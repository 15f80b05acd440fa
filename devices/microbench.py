"""Micro-benchmarks that calibrate the kernel model (``devices.ort_kernels``) on this machine.

The kernel model's terms are fitted on synthetic networks, not on the models it will predict (the
way nn-Meter builds its kernel predictors from sampled kernels): ``synthetic_models`` draws small
ONNX networks built from the blocks real edge networks use, at random widths, resolutions, kernel
sizes, strides and groups; ``calibrate`` times them on onnxruntime, each kernel under the profiler and
each network without it, interleaved, and fits a ``KernelModel``. The zoo is then entirely out of
sample (bench/profiler compares the two).

Blocks (each network is a stem convolution and one or two blocks, mostly of its own kind; up to
four position filters in a row, so their weights can outgrow the cache as in a whole TVConv network):

- ``dense``: a k x k convolution (k in 1, 3, 5, 7; stride 1 or 2) with ReLU, sometimes a residual 1x1;
- ``inverted``: MobileNetV2's 1x1 expand, 3x3 depthwise, 1x1 project (+ residual at stride 1);
- ``grouped``: the same with a grouped 3x3 convolution (2 to 16 channels per group, E2GC's shape);
- ``position``: a translation-variant 3x3 filter written as Pad, nine Slices, nine Muls by per-position
  weights and an Add chain, then BatchNormalization and Clip (the TVConv export's ops);
- ``pool``: 3x3 convolution, MaxPool;
- ``head``: an optional 1x1 convolution to 256-1280 channels, GlobalAveragePool or Flatten, then one or
  two Gemm layers;
- ``heavy``: three to six 3x3 convolutions at 384-512 channels on 4x4 or smaller maps (VGG's tail),
  weights of 15-70 MB, most beyond the last-level cache, so they come from DRAM on every run as in a
  large model (small networks alone keep every weight in cache: a calibration without these
  under-predicted VGG-16 by 30%, measured).

>>> [name for name, _ in synthetic_models(3, seed=0)]
['syn000_head', 'syn001_head', 'syn002_pool']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecompress.devices.ort_kernels import Kernel, KernelModel, ProfiledSession, fit_kernel_model

BLOCKS = ("dense", "inverted", "grouped", "position", "pool", "head", "heavy")
OPSET = 17
_WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 256, 320, 512)
_SIZES = (2, 4, 7, 8, 14, 16, 28, 32, 56)
MAX_MACS = 200e6  # per network: every run stays under a few milliseconds on 2 cores
MAX_WEIGHT_MB = 80.0


class _Net:
    """A sequential ONNX graph under construction: the current tensor and its (C, H, W) shape."""

    def __init__(self, c: int, h: int, rng: np.random.Generator) -> None:
        from onnx import TensorProto, helper

        self.rng, self.nodes, self.inits = rng, [], []
        self.x, self.shape, self.macs = "input", (c, h, h), 0
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, h, h])
        self._n = 0
        self.flat = False  # after a Gemm head: (1, features)

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name("w")
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        from onnx import helper

        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def act(self, kind: str | None) -> None:
        if kind == "Relu":
            self.x = self.op("Relu", [self.x])
        elif kind == "Clip":
            self.x = self.op("Clip", [self.x, self.const(np.array(0.0, np.float32)),
                                      self.const(np.array(6.0, np.float32))])

    def conv(self, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: str | None = "Relu",
             residual: bool = False) -> None:
        c, h, w = self.shape
        w_ = (self.rng.standard_normal((c_out, c // groups, k, k)) * 0.1).astype(np.float32)
        b = np.zeros(c_out, np.float32)
        skip = self.x
        self.x = self.op("Conv", [self.x, self.const(w_), self.const(b)], kernel_shape=[k, k],
                         strides=[stride, stride], pads=[k // 2] * 4, group=groups)
        ho, wo = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
        self.macs += c_out * ho * wo * (c // groups) * k * k
        if residual and (c_out, ho, wo) == self.shape:
            self.x = self.op("Add", [self.x, skip])
        self.shape = (c_out, ho, wo)
        self.act(act)

    def pool(self, k: int) -> None:
        """k x k MaxPool, stride 2 (padded at the end for k = 3)."""
        self.x = self.op("MaxPool", [self.x], kernel_shape=[k, k], strides=[2, 2], pads=[0, 0, k - 2, k - 2])
        c, h, w = self.shape
        self.shape = (c, (h - 2) // 2 + 1, (w - 2) // 2 + 1)

    def position_filter(self) -> None:
        """TVConv's export: Pad, a Slice per kernel offset, Mul by per-position weights, Add chain."""
        c, h, w = self.shape
        pads = self.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
        padded = self.op("Pad", [self.x, pads])
        acc = None
        for dy in range(3):
            for dx in range(3):
                s = self.op("Slice", [padded, self.const(np.array([dy, dx], np.int64)),
                                      self.const(np.array([dy + h, dx + w], np.int64)),
                                      self.const(np.array([2, 3], np.int64))])
                m = self.op("Mul", [s, self.const((self.rng.standard_normal((1, c, h, w)) * 0.1).astype(np.float32))])
                acc = m if acc is None else self.op("Add", [acc, m])
        ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
        self.x = self.op("BatchNormalization", [acc, self.const(ones), self.const(zeros), self.const(zeros),
                                                self.const(ones)])
        self.act("Clip")

    def model(self):
        from onnx import TensorProto, helper

        dims = [1, self.shape[0]] if self.flat else [1, *self.shape]
        out = helper.make_tensor_value_info(self.x, TensorProto.FLOAT, dims)
        graph = helper.make_graph(self.nodes, "synthetic", [self.input], [out], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _block(net: _Net, kind: str, rng: np.random.Generator) -> None:
    c, h, _ = net.shape
    pick = lambda xs: int(rng.choice(xs))  # noqa: E731
    if kind == "dense":
        net.conv(pick(_WIDTHS), k=pick((1, 3, 3, 3, 5, 7)), stride=pick((1, 1, 2)), act="Relu")
        if rng.random() < 0.5:
            net.conv(net.shape[0], 1, act="Relu", residual=True)
    elif kind in ("inverted", "grouped"):
        c_mid = c * pick((1, 2, 4, 6))
        stride = pick((1, 1, 2))
        net.conv(c_mid, 1, act="Clip")
        if kind == "inverted":
            net.conv(c_mid, 3, stride, groups=c_mid, act="Clip")
        else:
            per_group = pick(tuple(g for g in (2, 4, 8, 16) if c_mid % g == 0 and g < c_mid) or (c_mid,))
            net.conv(c_mid, 3, stride, groups=c_mid // per_group, act="Clip")
        net.conv(pick((c, c, *_WIDTHS)), 1, act=None, residual=True)
    elif kind == "position":
        net.conv(pick(_WIDTHS[:10]), 1, act="Clip")
        net.position_filter()
        net.conv(pick(_WIDTHS[:8]), 1, act=None)
    elif kind == "heavy":
        while net.shape[1] > 4:
            net.pool(2)
        for _ in range(pick((3, 4, 5, 6))):
            net.conv(pick((384, 512, 512)), 3, act="Relu")
    elif kind == "pool":
        net.conv(pick(_WIDTHS), 3, act="Relu")
        net.pool(pick((2, 3)))
    elif kind == "head":
        if rng.random() < 0.5:
            net.conv(pick((256, 512, 1024, 1280)), 1, act="Clip")
            c = net.shape[0]
        if rng.random() < 0.6 or c * h * h > 32768:
            net.x = net.op("GlobalAveragePool", [net.x])
            features = c
        else:
            features = c * h * h
        net.x = net.op("Flatten", [net.x], axis=1)
        for i, out in enumerate((pick((10, 64, 256, 512, 1000)), pick((10, 100, 1000)))[: pick((1, 2))]):
            w_ = (rng.standard_normal((out, features)) * 0.05).astype(np.float32)
            net.x = net.op("Gemm", [net.x, net.const(w_), net.const(np.zeros(out, np.float32))], transB=1)
            net.macs += out * features
            features = out
            if i == 0:
                net.act("Relu")
        net.shape, net.flat = (features, 1, 1), True
    else:
        raise ValueError(f"unknown block {kind!r}; blocks: {', '.join(BLOCKS)}")


def synthetic_models(count: int, seed: int = 0) -> list[tuple[str, object]]:
    """``count`` random networks (name, ``onnx.ModelProto``), cycling through ``BLOCKS`` by draw; each
    stays under ``MAX_MACS`` (a draw over it is redrawn)."""
    if count < 1:
        raise ValueError(f"count={count}: must be >= 1")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        kind = str(rng.choice(BLOCKS))
        net = _Net(int(rng.choice((3, *_WIDTHS[:6]))), int(rng.choice(_SIZES)), rng)
        net.conv(int(rng.choice(_WIDTHS[:8])), 3, act="Clip" if rng.random() < 0.5 else "Relu")
        # position filters come up to four in a row: their per-position weights then outgrow the cache
        # as in a whole TVConv network, and are read from DRAM on every run
        for _ in range(int(rng.integers(1, 5 if kind == "position" else 3))):
            if net.shape[1] < 2:
                break
            _block(net, kind if kind in ("head", "position", "heavy") else str(rng.choice((kind, kind, *BLOCKS[:5]))),
                   rng)
            if kind == "head":
                break
        weight_mb = sum(t.ByteSize() for t in net.inits) / 1e6
        if net.macs > MAX_MACS or weight_mb > MAX_WEIGHT_MB:
            continue
        out.append((f"syn{len(out):03d}_{kind}", net.model()))
    return out


def time_networks(paths: dict[str, Path], rounds: int = 3, runs: int = 20, threads: int = 1, group: int = 16,
                  progress: Callable[[str], None] | None = None,
                  between_rounds: Callable[[], None] | None = None) -> tuple[dict[str, list[Kernel]], dict[str, float]]:
    """Each network's kernels with their times under the profiler, and its latency without it (ms).

    Every round loads each network afresh, ``group`` at a time, and runs each one ``runs`` times under
    the profiler and ``runs`` times without it, in turn (a burst of machine noise hits a group alike);
    the figures are each kernel's and each network's 10th percentile over all rounds. Fresh sessions
    every round because one model's latency differs between sessions and processes by up to 1.7x on
    this host (bench/profiler README); groups, not all networks at once, because with 155 sessions open
    every network ran 10-50% slower. ``between_rounds`` runs after every round but the last
    (bench/profiler times the zoo there, so a drift in machine speed reaches both).
    """
    from edgecompress.devices.timing import interleaved
    from edgecompress.runtime.engine import EngineOptions, load_engine

    say = progress or (lambda s: None)
    if rounds < 1 or runs < 4 or group < 1:
        raise ValueError(f"rounds={rounds}, runs={runs}, group={group}: need rounds >= 1, runs >= 4, group >= 1")
    t0 = time.time()
    names = list(paths)
    listed: dict[str, list[Kernel]] = {}
    durs: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}
    warm = 3
    for r in range(rounds):
        for g in range(0, len(names), group):
            chunk = names[g:g + group]
            sessions = {n: ProfiledSession(paths[n], threads=threads) for n in chunk}
            engines = {n: load_engine(paths[n], "onnxruntime", EngineOptions(threads=threads)) for n in chunk}
            fns = {n: (lambda e=e, f=e.example_feeds(1): e._run(f)) for n, e in engines.items()}
            for s in sessions.values():
                s.run(warm + runs)
            for n, xs in interleaved(fns, warmup=warm, repeats=runs, rounds=1).items():
                samples[n].extend(xs)
            for n in chunk:
                kernels, times = sessions[n].finish(skip=warm)
                listed.setdefault(n, kernels)
                for name, xs in times.items():
                    durs[n].setdefault(name, []).extend(xs)
            del sessions, engines, fns
        say(f"round {r + 1}/{rounds}: {len(names)} networks timed ({time.time() - t0:.0f} s)")
        if between_rounds is not None and r < rounds - 1:
            between_rounds()
    kernels = {n: [replace(k, measured_us=float(np.percentile(durs[n][k.name], 10))) for k in listed[n]]
               for n in names}
    return kernels, {n: float(np.percentile(samples[n], 10)) for n in names}


def write_synthetic(workdir: str | Path, count: int = 200, seed: int = 0) -> dict[str, Path]:
    """``synthetic_models(count, seed)`` saved as ``workdir/NAME.onnx``; returns name -> path."""
    import onnx

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, model in synthetic_models(count, seed):
        paths[name] = workdir / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def calibrate(workdir: str | Path, count: int = 200, seed: int = 0, rounds: int = 3, runs: int = 20,
              threads: int = 1, progress: Callable[[str], None] | None = None,
              between_rounds: Callable[[], None] | None = None) -> tuple[KernelModel, dict]:
    """Write ``count`` synthetic networks to ``workdir``, time them (``time_networks``) and fit a
    ``KernelModel`` to them. Returns the model and the data it was fitted on, with the model's in-sample
    error (predicted / measured - 1) for each network."""
    from edgecompress.devices.host import last_level_cache_mb, package_version

    say = progress or (lambda s: None)
    t0 = time.time()
    paths = write_synthetic(workdir, count, seed)
    say(f"wrote {len(paths)} synthetic networks to {workdir}")
    kernels, measured = time_networks(paths, rounds, runs, threads, progress=progress,
                                      between_rounds=between_rounds)
    names = sorted(paths)
    # the machine's own last-level cache decides which models' weights stay cached between runs: fitted,
    # the threshold wandered between 4 and 16 MB from run to run of bench/profiler (the synthetic networks
    # seldom straddle it), and MobileNetV2's 8.9 MB of weights came out cold in some runs (+45%)
    llc = last_level_cache_mb()
    model = fit_kernel_model([kernels[n] for n in names], [measured[n] for n in names], *_host_peak(), llc_mb=llc,
                             ref=f"{len(names)} synthetic networks (devices.microbench, seed {seed}), onnxruntime "
                                 f"{package_version('onnxruntime')}, {threads} thread(s), batch 1, p10 latency")
    data = {"networks": {n: {"measured_ms": measured[n], "kernels": [k.as_dict() for k in kernels[n]],
                             "error": model.latency_ms(kernels[n]) / measured[n] - 1}  # in sample
                         for n in names}, "seed": seed, "rounds": rounds, "runs": runs, "threads": threads,
            "wall_s": time.time() - t0}
    return model, data


def _host_peak() -> tuple[float, float]:
    from edgecompress.devices.profiles import host_measurements

    host = host_measurements()
    return host["peak_fp32_gflops"], host["memory_bandwidth_gbs"]
