"""Test settings: fixed seeds, 1 thread (tiny models; no oversubscription on 2 shared cores),
and hardware markers that say why they are skipped."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# Each test session gets its own cache (host peak/bandwidth, calibrations, measured ratios, TVM tuning
# records): a test must neither read the user's ~/.cache/edgecompress nor overwrite it (a session under
# load once replaced the host's measured peak there).
_CACHE = tempfile.mkdtemp(prefix="edgecompress-tests-")
os.environ["EDGECOMPRESS_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


def _has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return _has_nvidia_gpu()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = _has_nvidia_gpu()
    trt = _has_tensorrt()
    run_slow = os.environ.get("EDGECOMPRESS_SLOW") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow tier (full-size models or timing-sensitive): `make test-all` "
                                                    "or EDGECOMPRESS_SLOW=1 runs it"))
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU; CI and the dev machines have none "
                                                    "(run on a lent GPU machine)"))
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and an NVIDIA GPU; not installed here"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
