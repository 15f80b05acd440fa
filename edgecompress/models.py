"""Where a command-line model comes from: ``zoo:NAME``, ``package.module:factory`` or a saved model.

Weights load with ``torch.load(..., weights_only=True)``: a state dict, never a pickled module.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn as nn

from edgecompress.errors import BadInputError


def load_model(spec: str, num_classes: int = 10, weights: str | Path | None = None) -> nn.Module:
    """Build the model named by ``spec`` and load ``weights`` (a state dict file) into it."""
    if spec.startswith("zoo:"):
        from edgecompress.nas import zoo

        model = zoo.create(spec[4:], num_classes=num_classes)
    elif ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise BadInputError(f"--model {spec!r}: cannot import {attr!r} from {module_name!r} ({exc})") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise BadInputError(f"--model {spec!r}: the factory returned a {type(model).__name__}, not an nn.Module")
    else:
        raise BadInputError(f"--model {spec!r}: expected zoo:NAME or package.module:factory "
                            f"(zoo names: `edgecompress zoo`)")
    if weights is not None:
        model.load_state_dict(load_state_dict(weights))
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` with ``weights_only=True``; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error means the file is not a state dict
        raise BadInputError(f"{path}: not a readable weights file ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"{path}: expected a state dict of tensors")
    return state
