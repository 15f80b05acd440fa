"""Minimal MetaSchedule run (a 64x64x64 matmul, 4 trials) to show whether tuning works in this TVM build.

On this project's dev machine (apache-tvm 0.27.0.post1 wheel, Python 3.11, 2 vCPU Zen 3) it segfaults in
``TuneContext.__init__`` -> ``TuneContextInitialize`` (C++ frame ``tvm::ffi::ToJSONGraph``) before any
trial runs; see README.md. Usage: ``python bench/tvm/metaschedule_repro.py [--mcpu znver3]``.
"""

import argparse
import faulthandler
import sys
import tempfile
import time

sys.modules.setdefault("torch", None)  # tvm_ffi imports torch eagerly when installed; not needed here

import tvm  # noqa: E402
from tvm import te  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

faulthandler.enable(all_threads=True)  # after TVM's own handler, so Python frames are printed
p = argparse.ArgumentParser()
p.add_argument("--mcpu")
args = p.parse_args()
A, B = te.placeholder((64, 64), name="A"), te.placeholder((64, 64), name="B")
k = te.reduce_axis((0, 64), name="k")
C = te.compute((64, 64), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
spec = {"kind": "llvm", "num-cores": 2, **({"mcpu": args.mcpu} if args.mcpu else {})}
t0 = time.time()
with tempfile.TemporaryDirectory() as work:
    ms.tir_integration.tune_tir(tvm.IRModule({"main": te.create_prim_func([A, B, C])}), tvm.target.Target(spec),
                                work, max_trials_global=4, num_trials_per_iter=4, cost_model="random")
print(f"MetaSchedule OK for {spec} in {time.time() - t0:.1f} s")
