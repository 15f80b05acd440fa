"""Save a pruned model without pickle: its architecture as data plus a state dict; reload it safely.

A pruned model has the original class but smaller layers. ``save_pruned`` writes

- ``architecture.json``: the model spec (``zoo:NAME`` or ``package.module:factory``), ``num_classes`` and,
  per module, its type and channel attributes (``in_channels``, ``out_channels``, ``groups``,
  ``num_features``, ``num_heads``, ...);
- ``weights.pt``: the ``state_dict``.

``load_pruned`` builds the original model from the spec (or takes a fresh one), shrinks every listed
module to the recorded attributes and tensor shapes, and loads the weights with ``weights_only=True``.

>>> save_pruned(result.model, "out/", spec="zoo:resnet20")    # doctest: +SKIP
>>> model = load_pruned("out/")                               # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from edgecompress.compress.otov2.subnet import PrunedMultiheadAttention
from edgecompress.errors import BadInputError
from edgecompress.fileio import write_json_atomic

FORMAT = "edgecompress-pruned-v1"
ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features", "channels",
         "embed_dim", "num_heads", "head_dim", "num_channels", "num_groups", "batch_first")
SPECIAL = {"PrunedMultiheadAttention": PrunedMultiheadAttention}


def architecture(model: nn.Module) -> dict[str, dict]:
    """``{module name: {"type": class name, attribute: value}}`` for every module with channel attributes."""
    out = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in ATTRS if isinstance(getattr(m, a, None), (int, bool))}
        if attrs or type(m).__name__ in SPECIAL:
            out[name] = {"type": type(m).__name__, **attrs}
    return out


def save_pruned(model: nn.Module, directory: str | Path, spec: str, num_classes: int = 10) -> Path:
    """Write ``architecture.json`` and ``weights.pt`` into ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "weights.pt.tmp"
    torch.save(model.state_dict(), tmp)
    tmp.replace(directory / "weights.pt")
    write_json_atomic(directory / "architecture.json",
                      {"format": FORMAT, "model": spec, "num_classes": num_classes, "modules": architecture(model)})
    return directory


def load_pruned(directory: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The pruned model saved in ``directory``.

    ``model`` is a fresh instance of the original architecture; by default it is built from the saved spec.
    """
    import json

    from edgecompress.models import load_model, load_state_dict

    directory = Path(directory)
    arch_path = directory / "architecture.json"
    if not arch_path.is_file():
        raise BadInputError(f"{directory}: no architecture.json (not a saved pruned model)")
    arch = json.loads(arch_path.read_text())
    if arch.get("format") != FORMAT:
        raise BadInputError(f"{arch_path}: format {arch.get('format')!r}, expected {FORMAT!r}")
    state = load_state_dict(directory / "weights.pt")
    if model is None:
        model = load_model(arch["model"], num_classes=arch["num_classes"])
    modules = dict(model.named_modules())
    for name, spec in arch["modules"].items():
        attrs = {k: v for k, v in spec.items() if k != "type"}
        if spec["type"] in SPECIAL:
            cls = SPECIAL[spec["type"]]
            new = cls(attrs["embed_dim"], attrs["num_heads"], attrs["head_dim"],
                      f"{name}.in_proj_bias" in state, attrs.get("batch_first", False))
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, new)
            continue
        if name not in modules:
            raise BadInputError(f"{arch_path}: module {name!r} does not exist in {arch['model']}")
        for k, v in attrs.items():
            setattr(modules[name], k, v)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, tensor in state.items():
            mname, _, attr = key.rpartition(".")
            mod = modules.get(mname) if mname else model
            if mod is None:
                raise BadInputError(f"{directory / 'weights.pt'}: {key!r} has no module in {arch['model']}")
            current = getattr(mod, attr, None)
            if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
                if isinstance(current, nn.Parameter):
                    setattr(mod, attr, nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad))
                else:
                    mod.register_buffer(attr, torch.empty_like(tensor))
    model.load_state_dict(state, strict=True)
    return model.eval()
