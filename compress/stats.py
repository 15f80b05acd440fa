"""Model size figures: parameters, MACs (torch-pruning's counter) and bytes of weights."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def model_stats(model: nn.Module, example_inputs: torch.Tensor) -> dict:
    """``{"params", "macs", "weight_bytes"}`` of ``model`` for one sample shaped like ``example_inputs``.

    MACs come from ``torch_pruning.utils.count_ops_and_params`` (it counts multiply-accumulates of
    conv/linear/norm layers on a forward pass at batch 1); weight bytes are the stored parameter and
    buffer bytes at their dtype.
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs[:1])
    model.train(was_training)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"params": int(params), "macs": int(macs), "weight_bytes": int(weight_bytes)}
