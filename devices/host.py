"""Facts about the host this process runs on: CPU model, cores, OS, library versions."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def usable_cores() -> int:
    """Cores this process may run on (affinity mask), not the machine's total.

    Read once per process: TVM's thread pool pins the calling thread to one core
    (``runtime.config_threadpool``), after which ``sched_getaffinity(0)`` says 1 and the host target's
    ``num-cores`` (a key of the tuning database) would change under the caller.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def host_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
