"""edgecompress: compress PyTorch models for edge devices and measure them there.

>>> import edgecompress as ec
>>> model = ec.zoo.create("mobilenetv2_cifar_tiny", num_classes=10)

Names are imported lazily, so ``import edgecompress`` is cheap and loading a bundle
(``ec.load_bundle``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "zoo": ("edgecompress.nas.zoo", None),
    "data": ("edgecompress.data", None),
    "Result": ("edgecompress.compress.result", "Result"),
    "TrainConfig": ("edgecompress.compress.train", "TrainConfig"),
    "train": ("edgecompress.compress.train", "train"),
    "evaluate": ("edgecompress.compress.train", "evaluate"),
    "export_onnx": ("edgecompress.export.onnx", "export_onnx"),
    "ExportReport": ("edgecompress.export.onnx", "ExportReport"),
    "Engine": ("edgecompress.runtime.engine", "Engine"),
    "load_engine": ("edgecompress.runtime.engine", "load_engine"),
    "load_bundle": ("edgecompress.runtime.bundle", "load_bundle"),
    "compile_bundle": ("edgecompress.runtime.bundle", "compile_bundle"),
    "profile": ("edgecompress.profiler", "profile"),
    "ProfileConfig": ("edgecompress.profiler", "ProfileConfig"),
    "devices": ("edgecompress.devices", None),
    "load_profile": ("edgecompress.devices.profiles", "load_profile"),
    "detect_devices": ("edgecompress.devices.detect", "detect_devices"),
    "predict_for_device": ("edgecompress.devices.estimate", "predict_for_device"),
    "open_meter": ("edgecompress.devices.energy", "open_meter"),
    "demo": ("edgecompress.demo", "demo"),
    "EdgeCompressError": ("edgecompress.errors", "EdgeCompressError"),
    "BadInputError": ("edgecompress.errors", "BadInputError"),
    "CheckFailedError": ("edgecompress.errors", "CheckFailedError"),
    "vq": ("edgecompress.compress.lr2vq.api", "vq"),
    "LR2VQConfig": ("edgecompress.compress.lr2vq.api", "LR2VQConfig"),
    "LR2VQLayer": ("edgecompress.compress.lr2vq.block", "LR2VQLayer"),
    "quantize": ("edgecompress.compress.int8.api", "quantize"),
    "Int8Config": ("edgecompress.compress.int8.config", "Int8Config"),
    "op_quant_friendliness": ("edgecompress.compress.int8.op_report", "op_quant_friendliness"),
    "search": ("edgecompress.nas.search", "search"),
    "SearchConfig": ("edgecompress.nas.search", "SearchConfig"),
    "OTO": ("edgecompress.compress.otov2.api", "OTO"),
    "OTOv2Config": ("edgecompress.compress.otov2.api", "OTOv2Config"),
    "prune": ("edgecompress.compress.otov2.api", "prune"),
    "DHSPG": ("edgecompress.compress.otov2.dhspg", "DHSPG"),
    "save_pruned": ("edgecompress.compress.otov2.serialize", "save_pruned"),
    "load_pruned": ("edgecompress.compress.otov2.serialize", "load_pruned"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'edgecompress' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
