"""The ``Engine`` interface and the registry of runtime backends.

An engine runs one compiled model: ``engine.run({"input": x}) -> [y, ...]`` with numpy arrays. Each
backend lives in its own ``runtime/backend_<name>.py`` and registers itself in ``RUNTIMES``; it
imports its heavy library (onnxruntime, tvm, tensorrt) only when an engine is built, so discovering
backends is cheap and this module never imports torch.

>>> engine = load_engine("model.onnx", "onnxruntime", EngineOptions(threads=2))  # doctest: +SKIP
>>> outputs = engine.run({"input": x})                                        # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompress.devices.timing import measure
from edgecompress.errors import BadInputError
from edgecompress.registry import Registry


@dataclass(frozen=True)
class TensorSpec:
    """An input or output: name, shape (ints, or strings for dynamic axes) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine. ``threads=None`` uses every usable core.

    ``providers`` are onnxruntime execution providers (first wins); a requested provider that is not
    available is an error, never a silent fall-back. ``target`` names a device profile (``host``,
    ``rpi4``, ...) for compiling backends; ``precision`` applies to TensorRT (fp32|fp16|int8).
    """

    threads: int | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    target: str = "host"
    precision: str = "fp32"
    graph_optimization: str = "all"
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be >= 1")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision={self.precision!r}: choose fp32, fp16 or int8")
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ValueError(f"graph_optimization={self.graph_optimization!r}: disable|basic|extended|all")


class Engine(ABC):
    """A loaded, runnable model."""

    runtime: str = "?"

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    @property
    def name(self) -> str:
        return self.runtime

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run on checked inputs."""

    def settings(self) -> dict:
        """What the engine was built with (threads, providers, target, versions)."""
        return {"runtime": self.runtime}

    def run(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run once. ``feeds``: a dict by input name, a list in input order, or one array."""
        return self._run(self.check_feeds(feeds))

    __call__ = run

    def check_feeds(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray
                    ) -> dict[str, np.ndarray]:
        """Name, shape and dtype checks; raises ``BadInputError`` naming the tensor at fault."""
        if isinstance(feeds, np.ndarray):
            feeds = [feeds]
        if not isinstance(feeds, Mapping):
            feeds = list(feeds)
            if len(feeds) != len(self.inputs):
                raise BadInputError(f"expected {len(self.inputs)} inputs "
                                    f"({', '.join(s.name for s in self.inputs)}), got {len(feeds)}")
            feeds = {s.name: a for s, a in zip(self.inputs, feeds, strict=True)}
        expected = {s.name for s in self.inputs}
        if set(feeds) != expected:
            raise BadInputError(f"input names {sorted(feeds)} do not match the model's {sorted(expected)}")
        checked = {}
        for spec in self.inputs:
            a = np.asarray(feeds[spec.name])
            if a.dtype != np.dtype(spec.dtype):
                raise BadInputError(f"input {spec.name!r}: dtype {a.dtype}, the model expects {spec.dtype}")
            if len(a.shape) != len(spec.shape) or any(
                isinstance(d, int) and d != n for d, n in zip(spec.shape, a.shape, strict=True)
            ):
                raise BadInputError(f"input {spec.name!r}: shape {tuple(a.shape)}, the model expects "
                                    f"{tuple(spec.shape)}")
            checked[spec.name] = np.ascontiguousarray(a)
        return checked

    def example_feeds(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs matching the specs (dynamic axes get ``batch``)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for spec in self.inputs:
            shape = tuple(d if isinstance(d, int) else batch for d in spec.shape)
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return feeds

    def measure(self, feeds: Mapping[str, np.ndarray], warmup: int, repeats: int) -> list[float]:
        """Milliseconds per run; backends with a native timer (TVM, TensorRT) override this."""
        checked = self.check_feeds(feeds)
        return measure(lambda: self._run(checked), warmup=warmup, repeats=repeats)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max|expected|`` (inf when shapes differ): every parity check's formula."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
    return float(np.abs(actual - expected).max(initial=0.0)) / scale


EngineFactory = Callable[[Path, EngineOptions], Engine]
RUNTIMES: Registry[EngineFactory] = Registry("runtime")
_discovered = False


def discover_backends() -> None:
    """Import every ``runtime/backend_*.py`` once so it registers itself."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("edgecompress.runtime")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("backend_"):
            importlib.import_module(f"edgecompress.runtime.{info.name}")
    _discovered = True


def runtimes() -> list[str]:
    discover_backends()
    return RUNTIMES.names()


def load_engine(onnx_path: str | Path, runtime: str = "onnxruntime",
                options: EngineOptions | None = None) -> Engine:
    """Build an engine for an ONNX file with the named backend."""
    discover_backends()
    path = Path(onnx_path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX file")
    return RUNTIMES.get(runtime)(path, options or EngineOptions())
