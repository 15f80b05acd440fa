"""TVM backend (apache-tvm 0.27, Relax): ONNX -> scheduled TIR -> a Relax VM executable.

The compile pipeline, in order (every step is TVM's own; nothing here schedules by hand):

1. ``relax.frontend.onnx.from_onnx`` with static shapes (the dynamic batch becomes ``batch``); FP32
   and explicit Q/DQ INT8 files both import. An operator TVM cannot import is a ``BadInputError``
   naming the node(s) and the op.
2. With ``layout="NHWC"``, Relax's ``ConvertLayout`` rewrites every conv2d to NHWC data and OHWI
   weights (the weight transposes fold into constants; the layout propagates through Relax ops).
   The frontend imports Clip (ReLU6) as a ``call_tir`` of TOPI maximum/minimum, which ConvertLayout
   cannot see through (a transpose pair per ReLU6), so ``clip_as_relax_ops`` first turns those calls
   with constant bounds back into ``R.maximum``/``R.minimum``. Then ``DecomposeOpsForInference``,
   ``CanonicalizeBindings`` and Relax's ``zero`` pipeline (legalize to TIR, fold constants, fuse)
   under the target.
3. Schedules. Untuned Relax code is one plain loop nest per operator: single-threaded, no SIMD
   (30-90x slower than onnxruntime, see shared/reference/baselines.md). MetaSchedule
   (``tvm.s_tir.meta_schedule``) searches schedules for every fused operator with a budget of
   ``trials_per_task`` measured trials each; its rules emit ``parallel`` loops (multi-threaded),
   vectorisation and unrolling. Records go into a JSON database cached per model and target under
   ``~/.cache/edgecompress/tvm/<model sha256>-<target hash>/`` (``EDGECOMPRESS_CACHE`` moves the
   root), so a second compile with the same or a smaller budget only applies the database.
   With ``prepack`` (the default) the weights are marked layout-free before the search
   (``AttachAttrLayoutFreeBuffers``), so MetaSchedule's ``RewriteLayout`` lets each tuned schedule read
   its weight in the layout its loops want (output-channel blocks for the vector lanes, as onnxruntime's
   MLAS packs them); after the records are applied, each rewrite is split into its own function and
   folded into the constant (``SplitLayoutRewritePreproc``, ``FoldConstant``), so the engine keeps the
   plain ONNX interface. TVM's docs call it the expected setting on CPUs; on MobileNetV2@224 it cut the
   tuned latency by a third at the same budget (bench/tvm). Its databases are separate (suffix ``-pp``).
   Operators with no record get DLight's CPU GEMV rule (``tvm.s_tir.dlight.cpu.GEMV``) where it
   applies and stay as TVM's default loop nests otherwise; the report counts each kind. (DLight's CPU
   ``Reduction`` rule also matches convolutions and made MobileNetV2 1.5x *slower* than the default
   loop nests here, so it is not applied.)
4. ``tvm.compile`` for the target, then a ``relax.VirtualMachine`` on the CPU. The thread pool is
   created with ``TVM_NUM_THREADS`` = the usable cores unless set (``tvm_targets.default_thread_pool_env``;
   TVM's own default is half the logical CPUs on x86) and sized with ``runtime.config_threadpool``
   (``EngineOptions.threads``; default all usable cores).
5. Parity: the engine's outputs on random inputs against onnxruntime's on the same ONNX file;
   ``CheckFailedError`` naming the worst output when ``max|tvm - ort| / max|ort|`` exceeds ``rtol``.

Cross targets (``rpi4``, ``rpi5``, ``aarch64``) compile here and are exported with
``export_library`` and an aarch64 cross compiler; they cannot run or be tuned here (tuning needs the
board over TVM's RPC), so they get the database's records when one exists for that target and
DLight/default schedules otherwise. ``elf_machine`` checks the produced shared object.

>>> engine = load_engine("m.onnx", "tvm", EngineOptions(extra={"tune_trials": 8}))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import BadInputError, CheckFailedError, MissingDependencyError
from edgecompress.fileio import write_json_atomic
from edgecompress.runtime.engine import RUNTIMES, Engine, EngineOptions, TensorSpec, relative_error
from edgecompress.runtime.tvm_targets import cross_compiler, default_thread_pool_env, is_cross, target_spec

EM_AARCH64 = 183
EM_X86_64 = 62
_EXTRA_KEYS = ("tune_trials", "batch", "rtol", "cache_dir", "check_parity", "layout", "prepack")
LAYOUTS = ("NCHW", "NHWC")  # NCHW: as the ONNX file has it


@dataclass(frozen=True)
class TvmCompileConfig:
    """How to compile: ``target`` (a device name), MetaSchedule ``trials_per_task`` (0 = no search;
    cached records are still applied), the static ``batch``, parity ``rtol`` vs onnxruntime, the
    tuning-database root (default ``~/.cache/edgecompress/tvm``) and the convolution ``layout``
    (``NCHW`` as imported, or ``NHWC``) and ``prepack``, weights rewritten into the tuned schedules'
    layouts at compile time (see the module docstring)."""

    target: str = "host"
    trials_per_task: int = 0
    batch: int = 1
    rtol: float = 1e-4
    cache_dir: Path | None = None
    check_parity: bool = True
    layout: str = "NCHW"
    prepack: bool = True

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise BadInputError(f"layout={self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.trials_per_task < 0:
            raise ValueError(f"trials_per_task={self.trials_per_task}: must be >= 0")
        if self.batch < 1:
            raise ValueError(f"batch={self.batch}: must be >= 1")
        if not self.rtol > 0:
            raise ValueError(f"rtol={self.rtol}: must be > 0")

    @classmethod
    def from_options(cls, options: EngineOptions) -> TvmCompileConfig:
        unknown = sorted(set(options.extra) - set(_EXTRA_KEYS))
        if unknown:
            raise BadInputError(f"unknown TVM option(s) {unknown} (known: {', '.join(_EXTRA_KEYS)})")
        extra = options.extra
        cache = extra.get("cache_dir")
        return cls(target=options.target, trials_per_task=int(extra.get("tune_trials", 0)),
                   batch=int(extra.get("batch", 1)), rtol=float(extra.get("rtol", 1e-4)),
                   cache_dir=Path(cache) if cache else None, check_parity=bool(extra.get("check_parity", True)),
                   layout=str(extra.get("layout", "NCHW")).upper(), prepack=bool(extra.get("prepack", True)))


@dataclass
class TvmBuild:
    """A compiled model: the executable, its target, tensor specs and what the compile did."""

    executable: Any
    target: dict[str, Any]
    target_name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    report: dict[str, Any] = field(default_factory=dict)

    def export(self, path: str | Path) -> Path:
        """Write the shared object (cross-compiled for another architecture) and check its ELF header."""
        path = Path(path)
        cxx = cross_compiler(self.target)
        fcompile = None
        if cxx is not None:
            import shutil

            from tvm.support import cc

            if shutil.which(cxx) is None:
                raise MissingDependencyError(
                    f"cross compiler {cxx} not found (Debian: apt-get install g++-aarch64-linux-gnu; "
                    "`make setup` installs it)")
            fcompile = cc.cross_compiler(cxx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.so")
        self.executable.export_library(str(tmp), fcompile=fcompile)
        expected = EM_AARCH64 if cxx and cxx.startswith("aarch64") else None
        machine, etype = elf_machine(tmp)
        if etype != 3 or (expected is not None and machine != expected):
            tmp.unlink(missing_ok=True)
            raise CheckFailedError(f"{path}: export_library produced ELF machine {machine} type {etype}, "
                                   f"expected a shared object (type 3) for machine {expected}")
        os.replace(tmp, path)
        return path


def elf_machine(path: str | Path) -> tuple[int, int]:
    """``(e_machine, e_type)`` of an ELF file (183 = aarch64, 62 = x86-64; type 3 = shared object).

    Reads the header as the ELF specification lays it out: magic ``7f 45 4c 46``, EI_DATA at byte 5
    (1 little-, 2 big-endian), then ``e_type`` and ``e_machine`` as 16-bit words at bytes 16 and 18.
    """
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise BadInputError(f"{path}: not an ELF file")
    order = "<" if head[5] == 1 else ">"
    etype, machine = struct.unpack(order + "HH", head[16:20])
    return machine, etype


def _import_tvm():
    default_thread_pool_env()
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("apache-tvm is not installed: pip install apache-tvm") from exc
    return tvm


def onnx_specs(model, batch: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Static input/output specs of an ONNX model; dynamic dimension 0 becomes ``batch``."""
    import onnx

    init = {i.name for i in model.graph.initializer}

    def spec(v, role: str) -> TensorSpec:
        t = v.type.tensor_type
        dims: list[int | str] = []
        for k, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif k == 0:
                dims.append(batch)
            else:
                dims.append(d.dim_param or "?")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        return TensorSpec(v.name, tuple(dims), dtype)

    inputs = [spec(v, "input") for v in model.graph.input if v.name not in init]
    for s in inputs:
        if any(not isinstance(d, int) for d in s.shape):
            raise BadInputError(f"input {s.name!r} has dynamic dimension(s) {s.shape} other than the batch; "
                                "the TVM backend compiles static shapes only")
    return inputs, [spec(v, "output") for v in model.graph.output]


def model_hash(path: str | Path) -> str:
    from edgecompress.fileio import sha256_file

    return sha256_file(path)


# the database suffix per layout; "-nhwc2": since Clip is rewritten before ConvertLayout (other tasks
# than the first NHWC pipeline's, whose databases would otherwise count as tuned)
_LAYOUT_SUFFIX = {"NCHW": "", "NHWC": "-nhwc2"}


def tuning_dir(onnx_sha256: str, target: Mapping[str, Any], batch: int, root: Path | None = None,
               layout: str = "NCHW", prepack: bool = True) -> Path:
    """``<root>/tvm/<model sha256[:16]>-b<batch>-<sha256(target JSON)[:12]><layout suffix>[-pp]``: one
    database per model, target and pipeline (NCHW has no layout suffix; ``-pp``: weights prepacked, whose
    tasks differ)."""
    base = root or Path(os.environ.get("EDGECOMPRESS_CACHE") or Path.home() / ".cache" / "edgecompress") / "tvm"
    key = hashlib.sha256(json.dumps(dict(target), sort_keys=True).encode()).hexdigest()[:12]
    return Path(base) / f"{onnx_sha256[:16]}-b{batch}-{key}{_LAYOUT_SUFFIX[layout]}{'-pp' if prepack else ''}"


def import_onnx(path: Path, batch: int):
    """``(relax IRModule, onnx model, inputs, outputs)``; unsupported ops are named with their nodes."""
    import onnx

    tvm = _import_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others
        raise BadInputError(f"{path}: not a readable ONNX file ({exc})") from None
    inputs, outputs = onnx_specs(model, batch)
    try:
        mod = from_onnx(model, shape_dict={s.name: list(s.shape) for s in inputs},
                        dtype_dict={s.name: s.dtype for s in inputs}, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        raise BadInputError(f"{path}: TVM {tvm.__version__} cannot import "
                            f"{_unsupported_nodes(model, str(exc))}") from None
    except Exception as exc:  # the frontend raises ValueError/NotImplementedError/TVMError per op
        raise BadInputError(f"{path}: TVM {tvm.__version__} failed to import the model: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return mod, model, inputs, outputs


def _unsupported_nodes(model, message: str) -> str:
    listed = message.split(":", 1)[-1]
    ops = {op.strip() for op in listed.split(",") if op.strip()}
    nodes = [f"node {n.name or '<unnamed>'!r} (op {n.op_type})" for n in model.graph.node if n.op_type in ops]
    return ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "") if nodes else message


def compile_tvm(onnx_path: str | Path, config: TvmCompileConfig = TvmCompileConfig()) -> TvmBuild:
    """Import, schedule (MetaSchedule database + DLight) and compile an ONNX model for ``config.target``."""
    tvm = _import_tvm()

    path = Path(onnx_path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such ONNX file")
    spec = target_spec(config.target)
    target = tvm.target.Target(spec)
    t0 = time.perf_counter()
    mod, _, inputs, outputs = import_onnx(path, config.batch)
    t_import = time.perf_counter() - t0
    mod = _lower(mod, target, config.layout, config.prepack)
    sha = model_hash(path)
    work_dir = tuning_dir(sha, spec, config.batch, config.cache_dir, config.layout, config.prepack)
    tuning = _tune(path, config.batch, spec, work_dir, config.trials_per_task, config.layout, config.prepack)
    mod, schedules = _apply_schedules(mod, target, work_dir, config.prepack)
    t1 = time.perf_counter()
    executable = tvm.compile(mod, target=target)
    report = {"tvm_version": tvm.__version__, "target": spec, "target_name": config.target, "batch": config.batch,
              "layout": config.layout, "prepack": config.prepack,
              "onnx_sha256": sha, "import_s": round(t_import, 3), "compile_s": round(time.perf_counter() - t1, 3),
              "tuning": tuning, "schedules": schedules}
    return TvmBuild(executable, spec, config.target, inputs, outputs, report)


def _tune(onnx_path: Path, batch: int, spec: Mapping[str, Any], work_dir: Path, trials_per_task: int,
          layout: str = "NCHW", prepack: bool = False) -> dict[str, Any]:
    """Run MetaSchedule unless the cached database already holds at least this budget.

    The search runs in a child process: a crash inside TVM's tuner (the apache-tvm 0.27.0.post1 wheel with
    apache-tvm-ffi 0.1.15 segfaults in ``TuneContextInitialize``; pyproject pins the ffi below 0.1.15)
    becomes an error naming its exit status, not the caller's end.
    """
    import subprocess
    import sys

    from edgecompress.errors import EdgeCompressError

    meta_path = work_dir / "edgecompress.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    done = int(meta.get("trials_per_task", 0))
    info = {"database": str(work_dir), "trials_per_task_requested": trials_per_task,
            "trials_per_task_cached": done, "searched": False}
    if trials_per_task <= done:
        return {**info, **{k: meta[k] for k in ("tasks", "seconds", "cost_model", "searches") if k in meta}}
    if is_cross(spec):
        raise BadInputError(f"target {spec}: MetaSchedule must measure on the device itself; tuning a cross "
                            "target needs the board over TVM RPC, which this backend does not drive. Use "
                            "--tune-trials 0 (records tuned elsewhere in the cache are still applied)")
    work_dir.mkdir(parents=True, exist_ok=True)
    # the child blocks torch: tvm_ffi imports it eagerly when installed, and MetaSchedule's first use
    # (tvm.s_tir.tensor_intrin, which calls inspect.stack() per intrinsic) slows down with every loaded module
    # (a meta-path finder that refuses it, not ``sys.modules['torch'] = None``: scipy, which XGBoost's cost
    # model imports, looks modules up in ``sys.modules`` and would find the ``None``)
    code = ("import sys, json\n"
            "class _NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is not imported by the tuning process')\n"
            "sys.meta_path.insert(0, _NoTorch())\n"
            "from pathlib import Path\n"
            "from edgecompress.runtime.backend_tvm import _search\n"
            f"_search(Path({str(onnx_path)!r}), json.loads({json.dumps(dict(spec))!r}), {batch}, {trials_per_task}, "
            f"Path({str(work_dir)!r}), {done}, {layout!r}, {prepack!r})\n")
    cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not meta_path.is_file():
        tail = " | ".join([ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-3:])
        raise EdgeCompressError(f"MetaSchedule tuning of {onnx_path} for {spec} failed in its child process "
                                f"(exit status {proc.returncode}): {tail}")
    meta = json.loads(meta_path.read_text())
    info.update(searched=True, trials_per_task_cached=trials_per_task,
                **{k: meta[k] for k in ("tasks", "seconds", "cost_model", "searches") if k in meta})
    return info


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's builder and tuner both do) in seconds, not minutes.

    The module parses ~500 TVMScript intrinsics (CUDA, Metal, ROCm, ...) at import; TVMScript's decorator
    calls ``inspect.stack()`` for each, and ``inspect.stack`` resolves every frame's module by scanning
    ``sys.modules`` (``inspect.getmodule``): 55 s on the 2-core dev machine per process, so MetaSchedule's
    default 30 s builder timeout failed every trial. The parser only uses each frame's ``frame``,
    ``lineno`` and ``code_context``, so while importing, ``inspect.stack`` builds those from the frame
    objects and ``linecache`` directly (module-lookup free). Restored afterwards.
    """
    import inspect
    import linecache
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def fast_stack(context: int = 1) -> list:
        frames, frame = [], sys._getframe(1)
        while frame is not None:
            filename, lineno = frame.f_code.co_filename, frame.f_lineno
            line = linecache.getline(filename, lineno) if context > 0 else ""
            frames.append(inspect.FrameInfo(frame, filename, lineno, frame.f_code.co_name,
                                            [line] if line else None, 0 if line else None))
            frame = frame.f_back
        return frames

    original = inspect.stack
    inspect.stack = fast_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


def _search(onnx_path: Path, spec: Mapping[str, Any], batch: int, trials_per_task: int, work_dir: Path,
            done: int = 0, layout: str = "NCHW", prepack: bool = False) -> None:
    """The child process of ``_tune``: MetaSchedule over every fused operator, records into ``work_dir``.

    ``trials_per_task`` is the total budget per task; a database that already holds ``done`` trials per task
    is extended by the difference, and its best records seed the evolutionary search (MetaSchedule's
    database warm start). The budget is global (``(trials_per_task - done) x tasks``) and the gradient task
    scheduler spends it where the weighted latency falls fastest, up to twice the per-task average on one
    task. Builder workers, one per core, import the intrinsics through ``import_tensor_intrinsics`` (their
    initializer) and get a generous timeout: a worker's first build on a loaded 2-core machine can take tens
    of seconds.
    """
    import importlib.util

    import tvm
    from tvm.s_tir import meta_schedule as ms

    import_tensor_intrinsics()

    target = tvm.target.Target(dict(spec))
    mod = _lower(import_onnx(onnx_path, batch)[0], target, layout, prepack)
    t0 = time.perf_counter()
    tasks = ms.relax_integration.extract_tasks(mod, target)
    extra = trials_per_task - done
    # the default cost model is XGBoost (the tvm extra installs xgboost-cpu); without it, MetaSchedule's
    # random model, i.e. unguided evolutionary search
    cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
    ms.relax_integration.tune_relax(mod, {}, target, str(work_dir),
                                    max_trials_global=extra * len(tasks),
                                    max_trials_per_task=2 * extra,
                                    num_trials_per_iter=min(64, max(extra, 2)), cost_model=cost_model,
                                    builder=ms.builder.LocalBuilder(max_workers=max(1, os.cpu_count() or 1),
                                                                    timeout_sec=300,
                                                                    initializer=import_tensor_intrinsics),
                                    runner=ms.runner.LocalRunner(timeout_sec=60), seed=0)
    meta_path = work_dir / "edgecompress.json"
    previous = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    seconds = round(time.perf_counter() - t0, 1)
    earlier = previous.get("searches") or ([{k: previous.get(k) for k in ("trials_per_task", "cost_model", "seconds")}]
                                           if previous else [])
    searches = [*earlier, {"trials_per_task": extra, "cost_model": cost_model, "seconds": seconds}]
    write_json_atomic(meta_path,
                      {"trials_per_task": trials_per_task, "tasks": len(tasks), "target": dict(spec),
                       "cost_model": "+".join(dict.fromkeys(x["cost_model"] for x in searches)),
                       "seconds": round(sum(x["seconds"] for x in searches), 1), "searches": searches,
                       "tvm_version": tvm.__version__})


def _lower(mod, target, layout: str = "NCHW", prepack: bool = False):
    """The conv layout (``NHWC``: Clip as Relax ops, then ConvertLayout), inference decompositions, then
    Relax's ``zero`` pipeline (legalize, fold constants, fuse)."""
    import tvm
    from tvm import relax

    if layout == "NHWC":
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(clip_as_relax_ops(mod))
    with target:
        return tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                         relax.transform.CanonicalizeBindings(),
                                         relax.get_pipeline("zero"),
                                         *([relax.transform.AttachAttrLayoutFreeBuffers()] if prepack else [])])(mod)


def clip_as_relax_ops(mod):
    """Rewrite the ONNX frontend's Clip, ``call_tir`` of TOPI ``maximum``/``minimum`` with a scalar bound,
    into ``R.maximum``/``R.minimum``, so Relax passes that reason about ops (``ConvertLayout``) see through
    it. Bounds are the frontend's ``where(isnan(c), +-inf, c)`` of a constant ``c``; a NaN or non-constant
    bound is left as it was. The unused TIR functions are dropped."""
    import numpy as np
    import tvm
    from tvm import relax
    from tvm.relax import PyExprMutator, expr_functor

    ops = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}

    def is_op(expr, name: str) -> bool:
        return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name

    @expr_functor.mutator
    class Rewrite(PyExprMutator):
        def scalar(self, expr):
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            if isinstance(expr, tvm.ir.expr.Constant) and expr.ty.ndim == 0:
                return None if np.isnan(expr.value.numpy()) else expr
            if is_op(expr, "relax.where"):  # where(isnan(c), inf, c): c, when c is a number
                return self.scalar(expr.args[2])
            return None

        def visit_call_(self, call):
            if is_op(call, "relax.call_tir") and len(call.args[1].fields) == 2:
                op = ops.get(call.args[0].name_hint.rstrip("0123456789"))
                bound = self.scalar(call.args[1].fields[1]) if op is not None else None
                if bound is not None:
                    return op(self.visit_expr(call.args[1].fields[0]), bound)
            return super().visit_call_(call)

    rewrite = Rewrite(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewrite.builder_.update_func(gv, rewrite.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewrite.builder_.get())


def _apply_schedules(mod, target, work_dir: Path, prepack: bool = False):
    """MetaSchedule records where the database has them, DLight's CPU GEMV rule elsewhere; counts of each."""
    import tvm
    from tvm import relax, tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir import meta_schedule as ms

    def scheduled(m) -> int:
        return sum(1 for _, f in m.functions.items()
                   if isinstance(f, tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs)

    total = sum(1 for _, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))
    with target:
        if (work_dir / "database_workload.json").is_file():
            with ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=False):
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        tuned = scheduled(mod)
        mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV())(mod)
        dlight = scheduled(mod) - tuned
        if prepack:  # each weight's rewrite into its tuned layout becomes its own function, folded here
            mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(),
                                            relax.transform.LiftTransformParams(),
                                            relax.transform.FoldConstant(),
                                            relax.transform.DeadCodeElimination()])(mod)
    return mod, {"primfuncs": total, "metaschedule": tuned, "dlight": dlight, "default": total - tuned - dlight}


def configure_threads(threads: int | None) -> int:
    """Size TVM's CPU thread pool (``runtime.config_threadpool``, mode 1 = all big cores); returns the
    threads TVM will really use (``runtime.NumThreads``), which can be fewer than asked when the pool was
    created smaller (``TVM_NUM_THREADS``; see ``tvm_targets.default_thread_pool_env``): a warning says so.

    TVM pins the calling thread to one core while it configures the pool; the caller's affinity is put back
    afterwards, or every thread the process starts later (onnxruntime's and torch's pools) would inherit a
    one-core mask.
    """
    tvm = _import_tvm()

    from edgecompress.devices.host import usable_cores

    n = threads or usable_cores()
    mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    if mask is not None:
        os.sched_setaffinity(0, mask)
    used = int(tvm.get_global_func("runtime.NumThreads")())
    if used < n:
        warnings.warn(f"TVM runs {used} thread(s), not {n}: its pool was created with "
                      f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')!r} and cannot grow; set "
                      f"TVM_NUM_THREADS={n} before TVM first runs in this process", RuntimeWarning, stacklevel=2)
    return used


class TvmEngine(Engine):
    """A Relax VM over a compiled executable or a loaded ``.so``."""

    runtime = "tvm"

    def __init__(self, module, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                 threads: int | None = None, info: Mapping[str, Any] | None = None) -> None:
        tvm = _import_tvm()
        from tvm import relax

        super().__init__(inputs, outputs)
        self.threads = configure_threads(threads)
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(module, self.device)
        self.info = dict(info or {})

    @classmethod
    def from_library(cls, path: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                     threads: int | None = None, info: Mapping[str, Any] | None = None) -> TvmEngine:
        """Load an exported ``.so`` (needs only TVM's runtime; it must be built for this machine)."""
        tvm = _import_tvm()
        machine, _ = elf_machine(path)
        here = {"x86_64": EM_X86_64, "amd64": EM_X86_64, "aarch64": EM_AARCH64, "arm64": EM_AARCH64}
        import platform

        if here.get(platform.machine().lower()) not in (None, machine):
            raise BadInputError(f"{path}: built for ELF machine {machine}, this machine is {platform.machine()}; "
                                "run it on the board it was compiled for")
        return cls(tvm.runtime.load_module(str(path)), inputs, outputs, threads=threads, info=info)

    def _tensors(self, feeds: Mapping[str, np.ndarray]) -> list:
        import tvm

        return [tvm.runtime.tensor(feeds[s.name], self.device) for s in self.inputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.vm["main"](*self._tensors(feeds))
        items = [out] if hasattr(out, "numpy") else list(out)
        return [np.asarray(o.numpy()) for o in items]

    def measure(self, feeds: Mapping[str, np.ndarray], warmup: int, repeats: int) -> list[float]:
        """Milliseconds per run from TVM's ``time_evaluator`` (``number=1``, ``repeat=repeats``); input
        copies are outside the timed region, as in onnxruntime's timing of ``session.run`` on host arrays."""
        if warmup < 0 or repeats < 1:
            raise ValueError(f"warmup={warmup}, repeats={repeats}: need warmup >= 0 and repeats >= 1")
        args = self._tensors(self.check_feeds(feeds))
        for _ in range(warmup):
            self.vm["main"](*args)
        timer = self.vm.time_evaluator("main", self.device, number=1, repeat=repeats, min_repeat_ms=0)
        return [float(t) * 1e3 for t in timer(*args).results]

    def settings(self) -> dict:
        import tvm

        return {"runtime": self.runtime, "version": tvm.__version__, "threads": self.threads,
                "timer": "tvm time_evaluator", **{k: self.info[k] for k in ("target", "target_name", "schedules",
                                                                             "tuning") if k in self.info}}


def check_against_onnxruntime(engine: Engine, onnx_path: Path, rtol: float, seed: int = 0) -> dict[str, Any]:
    """Relative error of every output vs onnxruntime on random inputs; raises on the worst one.

    A model with explicit Q/DQ nodes is compared with onnxruntime's graph optimisations off, so that
    onnxruntime executes the Q/DQ nodes as written (float arithmetic between them) like TVM's import
    does; with them on, onnxruntime fuses to integer kernels whose requantisation rounds differently.
    """
    import onnx

    from edgecompress.runtime.backend_onnxruntime import OrtEngine

    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    qdq = bool(ops & {"QuantizeLinear", "DequantizeLinear"})
    ort_engine = OrtEngine(Path(onnx_path), EngineOptions(threads=1, graph_optimization="disable" if qdq else "all"))
    batch = next((d for s in engine.inputs for d in s.shape[:1] if isinstance(d, int)), 1)
    feeds = engine.example_feeds(batch=batch, seed=seed)
    got, want = engine.run(feeds), ort_engine.run(feeds)
    errors = {o.name: relative_error(g, w) for o, g, w in zip(engine.outputs, got, want, strict=True)}
    worst = max(errors, key=errors.get)
    if not errors[worst] <= rtol:
        raise CheckFailedError(f"{onnx_path}: {engine.runtime} output {worst!r} differs from onnxruntime by "
                               f"{errors[worst]:.3e} (relative; tolerance {rtol:.1e})")
    reference = "onnxruntime, graph optimisations off (Q/DQ executed as written)" if qdq else "onnxruntime"
    return {"reference": reference, "max_rel_error": errors[worst], "per_output": errors, "rtol": rtol}


def build_engine(onnx_path: str | Path, config: TvmCompileConfig, threads: int | None = None
                 ) -> tuple[TvmEngine, TvmBuild]:
    """Compile for the host and return the engine (parity-checked vs onnxruntime) and the build."""
    build = compile_tvm(onnx_path, config)
    if is_cross(build.target):
        raise BadInputError(f"target {config.target!r} ({build.target.get('mtriple')}) cannot run on this machine; "
                            "use compile_bundle / `edgecompress compile` to export its library")
    engine = TvmEngine(build.executable, build.inputs, build.outputs, threads=threads, info=build.report)
    if config.check_parity:
        build.report["parity"] = check_against_onnxruntime(engine, Path(onnx_path), config.rtol)
        engine.info["parity"] = build.report["parity"]
    return engine, build


def _factory(path: Path, options: EngineOptions) -> Engine:
    return build_engine(path, TvmCompileConfig.from_options(options), threads=options.threads)[0]


RUNTIMES.add("tvm", _factory)


# -- bundles: engine.so next to model.onnx -------------------------------------------------------------

ENGINE_FILE = "engine.so"


def _bundle_build(req):
    from edgecompress.runtime.bundle import BuiltPart

    config = TvmCompileConfig(target=req.device, trials_per_task=req.tune_trials)
    build = compile_tvm(req.onnx_path, config)
    if is_cross(build.target) and not req.cross_parity:
        build.report["parity"] = "not checked: cross target, and the host check was switched off (cross_parity)"
    elif is_cross(build.target):
        # the aarch64 code cannot run here: check the same import and lowering compiled for the host
        _, host_build = build_engine(req.onnx_path, TvmCompileConfig(target="host"), threads=req.threads)
        build.report["parity"] = {**host_build.report["parity"],
                                  "checked_on": "a host (x86-64) build of the same Relax module; the aarch64 "
                                                "code itself was not run"}
    else:
        engine = TvmEngine(build.executable, build.inputs, build.outputs, threads=req.threads, info=build.report)
        build.report["parity"] = check_against_onnxruntime(engine, req.onnx_path, config.rtol)
    build.export(req.out_dir / ENGINE_FILE)
    machine, _ = elf_machine(req.out_dir / ENGINE_FILE)
    build.report["engine_elf_machine"] = {EM_AARCH64: "aarch64", EM_X86_64: "x86-64"}.get(machine, str(machine))
    import tvm

    return BuiltPart(ENGINE_FILE, build.inputs, build.outputs, build.target, tvm.__version__, build.report)


def _bundle_load(bundle_dir: Path, manifest: Mapping[str, Any], threads: int | None) -> Engine:
    engine_file = (manifest.get("engine") or {}).get("file") or ENGINE_FILE
    info = {"target": manifest.get("target"), "target_name": manifest.get("device"),
            **{k: v for k, v in (manifest.get("compile") or {}).items() if k in ("schedules", "tuning")}}
    return TvmEngine.from_library(bundle_dir / engine_file,
                                  [TensorSpec.from_dict(d) for d in manifest["inputs"]],
                                  [TensorSpec.from_dict(d) for d in manifest["outputs"]], threads=threads, info=info)


def _register_bundle_format() -> None:
    from edgecompress.runtime.bundle import BUNDLE_FORMATS, BundleFormat

    BUNDLE_FORMATS.add("tvm", BundleFormat(_bundle_build, _bundle_load))


_register_bundle_format()

