"""onnxruntime backend: explicit threads, explicit execution providers, no silent fall-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompress.errors import BadInputError, MissingDependencyError
from edgecompress.runtime.engine import RUNTIMES, Engine, EngineOptions, TensorSpec

# ONNX tensor element type string -> numpy dtype name
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


def session_options(options: EngineOptions, optimized_model_path: str | None = None):
    """onnxruntime SessionOptions from ``EngineOptions``: sequential, intra-op threads, opt level."""
    import onnxruntime as ort

    from edgecompress.devices.host import usable_cores

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads or usable_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[options.graph_optimization])
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = optimized_model_path
    return so


class OrtEngine(Engine):
    runtime = "onnxruntime"

    def __init__(self, path: Path, options: EngineOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime") from exc
        available = ort.get_available_providers()
        missing = [p for p in options.providers if p not in available]
        if missing:
            raise MissingDependencyError(
                f"execution provider(s) {missing} are not available in this onnxruntime "
                f"({ort.__version__}; available: {available}); refusing to fall back silently")
        self.options = options
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options(options),
                                                providers=list(options.providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BadInputError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        super().__init__(
            [TensorSpec(i.name, tuple(_dim(d) for d in i.shape), _ORT_DTYPES.get(i.type, i.type))
             for i in self.session.get_inputs()],
            [TensorSpec(o.name, tuple(_dim(d) for d in o.shape), _ORT_DTYPES.get(o.type, o.type))
             for o in self.session.get_outputs()],
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    def settings(self) -> dict:
        import onnxruntime as ort

        so = self.session.get_session_options()
        return {"runtime": self.runtime, "version": ort.__version__,
                "providers": self.session.get_providers(), "threads": so.intra_op_num_threads,
                "graph_optimization": self.options.graph_optimization}


def _dim(d: object) -> int | str:
    return d if isinstance(d, int) else str(d or "dynamic")


RUNTIMES.add("onnxruntime", OrtEngine)
