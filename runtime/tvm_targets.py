"""TVM targets by device name: ``host``, ``rpi4``, ``rpi5``, ``aarch64``.

TVM 0.27 only accepts JSON-dict targets (``Target({"kind": "llvm", "mcpu": ...})``; the CLI string
form ``"llvm -mcpu=..."`` raises). A target is looked up first in the device-profile registry
(``edgecompress.devices.profiles``, the ``tvm_target`` field of ``profiles/<name>.yaml``) and, for a
name it does not know, in the small table below. The host's ``mcpu`` is the CPU LLVM detects
(``tvm.target.codegen.llvm_get_system_cpu``, e.g. ``znver3``) and its ``num-cores`` the usable cores.

The Raspberry Pi entries follow TVM's own ``raspberry-pi/4b-aarch64`` tag (Cortex-A72, NEON, 4 cores);
the Pi 5 (Cortex-A76, which adds the dot-product extension) has no TVM tag, so its entry is ours.

>>> spec = target_spec("rpi4")
>>> spec["mtriple"], spec["mcpu"]
('aarch64-linux-gnu', 'cortex-a72')
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

from edgecompress.errors import BadInputError

_AARCH64 = "aarch64-linux-gnu"

# name -> JSON-dict TVM target; "host" is completed at run time (detected mcpu and cores)
TARGETS: dict[str, dict[str, Any]] = {
    "host": {"kind": "llvm"},
    "rpi4": {"kind": "llvm", "mtriple": _AARCH64, "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4},
    "rpi5": {"kind": "llvm", "mtriple": _AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"],
             "num-cores": 4},
    "aarch64": {"kind": "llvm", "mtriple": _AARCH64, "mattr": ["+neon"]},
}


def default_thread_pool_env() -> None:
    """Set ``TVM_NUM_THREADS`` to the usable cores unless the user set it.

    TVM sizes its CPU thread pool once, when first used, from ``TVM_NUM_THREADS``, else
    ``OMP_NUM_THREADS``, else half of ``std::thread::hardware_concurrency()`` on x86 (it assumes two
    hyper-threads per core). On a VM whose vCPUs are one thread per core that halves the pool (one thread
    on a 2-vCPU machine, measured: MobileNetV2@224 35 ms vs 17 ms with two), and
    ``runtime.config_threadpool`` cannot grow the pool later. ``OMP_NUM_THREADS`` is not taken as a TVM
    setting (it is usually meant for torch/BLAS; onnxruntime ignores it too): the pool gets every core
    and ``EngineOptions.threads`` picks how many an engine uses. Must run before TVM first runs a kernel
    in this process, and before processes that run TVM (tuning workers, an RPC server) are started.
    """
    from edgecompress.devices.host import usable_cores

    os.environ.setdefault("TVM_NUM_THREADS", str(usable_cores()))


def _from_profiles(name: str) -> dict[str, Any] | None:
    """The ``tvm_target`` of the device profile ``name``, or None when there is no such profile."""
    try:
        from edgecompress.devices.profiles import PROFILES
    except ImportError:  # the profile registry is optional for this module
        return None
    if name not in PROFILES:
        return None
    return dict(PROFILES.get(name).tvm_target)


def target_names() -> list[str]:
    names = set(TARGETS)
    try:
        from edgecompress.devices.profiles import PROFILES

        names |= {n for n in PROFILES.names() if PROFILES.get(n).kind == "cpu"}
    except ImportError:
        pass
    return sorted(names)


def target_spec(name: str) -> dict[str, Any]:
    """The JSON-dict target for a device name; ``BadInputError`` for an unknown name."""
    spec = _from_profiles(name) or (dict(TARGETS[name]) if name in TARGETS else None)
    if spec is None:
        raise BadInputError(f"unknown TVM target {name!r} (known: {', '.join(target_names())})")
    if spec.get("kind") != "llvm":
        raise BadInputError(f"device {name!r} has TVM target kind {spec.get('kind')!r}; the TVM backend "
                            "compiles for CPUs (kind 'llvm') only")
    if name == "host":
        spec = {**host_target_spec(), **{k: v for k, v in spec.items() if k != "kind"}}
    return spec


def host_target_spec() -> dict[str, Any]:
    """This machine: LLVM's detected CPU and the usable cores."""
    from tvm.target import codegen

    from edgecompress.devices.host import usable_cores

    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": usable_cores()}


def is_cross(spec: Mapping[str, Any]) -> bool:
    """True when code for ``spec`` cannot run on this machine (another architecture)."""
    triple = str(spec.get("mtriple", ""))
    if not triple:
        return False
    arch = triple.split("-")[0]
    here = platform.machine().lower()
    return not (arch == here or (arch in ("aarch64", "arm64") and here in ("aarch64", "arm64")))


def cross_compiler(spec: Mapping[str, Any]) -> str | None:
    """The C++ cross compiler that links a shared object for ``spec`` (None: the host's own)."""
    if not is_cross(spec):
        return None
    triple = str(spec["mtriple"])
    if triple.startswith("aarch64"):
        return "aarch64-linux-gnu-g++"
    raise BadInputError(f"no cross compiler known for mtriple {triple!r}")
