"""Quantization-aware training: fake-quantized fine-tuning from an FP32 model (hand-written, small).

Written here rather than taken from ``torch.ao.quantization`` (deprecated in favour of torchao, which is
not a dependency) so that the fake quantization is *exactly* the scheme the ONNX export uses:

- batch norm folded into the convs first (``torch.fx.experimental.optimization.fuse``), so the weights
  that are fake-quantized are the ones that get exported;
- weights: symmetric per output channel, ``s_c = max|W_c| / q_max``, ``q_max = 127`` (64 with
  ``reduce_range``, onnxruntime's 7-bit grid), ``W_q = s_c * clamp(round(W / s_c), -q_max, q_max)``;
- activations entering each Conv/Linear: per tensor, UINT8 affine over an EMA (momentum 0.9) of the
  batch min/max (range widened to include 0);
- gradients pass straight through the rounding (STE), as in ``torch.fake_quantize_per_*_affine``.

After ``qat_epochs`` the wrappers are removed and each weight is replaced by its rounded value ``W_q``,
so onnxruntime's own per-channel min-max weight quantization reproduces it exactly; activation ranges
are then re-calibrated (min-max) on the same data by the normal PTQ path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.compress.int8.config import Int8Config
from edgecompress.errors import BadInputError


def weight_qmax(reduce_range: bool) -> int:
    """Largest INT8 weight magnitude onnxruntime uses: 64 with reduce_range, else 127."""
    return 64 if reduce_range else 127


def fake_quant_weight(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization of ``w`` (C_out, ...), STE gradient."""
    absmax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12)  # (C_out,)
    scale = (absmax / qmax).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """UINT8 affine (scale, zero point) for the range [lo, hi] widened to contain 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    zero_point = int(min(255, max(0, round(-lo / scale))))
    return scale, zero_point


class _FakeQuant(nn.Module):
    """Wraps a Conv/Linear: fake-quantizes its input (observed range) and its weight."""

    def __init__(self, layer: nn.Module, qmax: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.layer, self.qmax, self.momentum = layer, qmax, momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not bool(self.seen):
            lo, hi = x.detach().min(), x.detach().max()
            if bool(self.seen):
                lo = self.momentum * self.lo + (1 - self.momentum) * lo
                hi = self.momentum * self.hi + (1 - self.momentum) * hi
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen.fill_(True)
        scale, zero_point = activation_qparams(float(self.lo), float(self.hi))
        x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
        w = fake_quant_weight(self.layer.weight, self.qmax)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        conv = self.layer
        return conv._conv_forward(x, w, conv.bias)

    def rounded(self) -> nn.Module:
        with torch.no_grad():
            self.layer.weight.copy_(fake_quant_weight(self.layer.weight, self.qmax))
        return self.layer


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, str]:
    """Conv+BN folding with torch.fx (eval semantics); returns the model and what happened."""
    from torch.fx.experimental.optimization import fuse

    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if n_bn == 0:
        return model, "no batch norm"
    try:
        fused = fuse(model.eval(), inplace=False)
    except Exception as exc:  # noqa: BLE001 - fx tracing fails on data-dependent control flow
        return model, f"not folded ({type(exc).__name__}: fx could not trace the model); BN stays unquantized " \
                      f"in training and is folded by the ONNX exporter"
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    for name in ("input_size",):
        if hasattr(model, name):
            setattr(fused, name, getattr(model, name))
    return fused, f"folded {n_bn - left} of {n_bn} batch norms"


def _swap(module: nn.Module, qmax: int) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Linear)) and getattr(child, "padding_mode", "zeros") == "zeros":
            setattr(module, name, _FakeQuant(child, qmax))
            count += 1
        else:
            count += _swap(child, qmax)
    return count


def _unswap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, _FakeQuant):
            setattr(module, name, child.rounded())
        else:
            _unswap(child)


def qat_finetune(model: nn.Module, loader, config: Int8Config) -> tuple[nn.Module, dict]:
    """Fold BN, fake-quantize, fine-tune ``config.qat_epochs`` on ``loader`` (labelled), round the weights.

    Returns the fine-tuned FP32 model (weights on the INT8 grid) and a report. The input model is not
    modified.
    """
    import copy

    from edgecompress.compress.int8.placement import resolve_reduce_range
    from edgecompress.compress.train import TrainConfig, train

    if not isinstance(model, nn.Module):
        raise BadInputError("method='qat' needs a torch nn.Module (an ONNX file cannot be fine-tuned); use 'ptq'")
    if not hasattr(loader, "__iter__") or isinstance(loader, torch.Tensor):
        raise BadInputError("method='qat' needs a DataLoader of (inputs, labels) batches for fine-tuning")
    first = next(iter(loader), None)
    if first is None:
        raise BadInputError("calibration data is empty: the loader yielded no samples")
    if not isinstance(first, (tuple, list)) or len(first) < 2:
        raise BadInputError("method='qat' needs labelled batches (inputs, labels) to fine-tune on")
    reduce_range, _ = resolve_reduce_range(config)
    qmax = weight_qmax(reduce_range)
    folded, bn_note = fold_batch_norm(copy.deepcopy(model).eval())
    wrapped = _swap(folded, qmax)
    if wrapped == 0:
        raise BadInputError("method='qat': the model has no Conv/Linear layer to quantize")
    logs = train(folded, loader, None, TrainConfig(epochs=config.qat_epochs, optimizer="adamw", lr=config.qat_lr,
                                                   weight_decay=0.0, progress=False))
    folded.eval()
    _unswap(folded)
    return folded, {"epochs": config.qat_epochs, "lr": config.qat_lr, "fake_quant_layers": wrapped,
                    "weight_qmax": qmax, "batch_norm": bn_note,
                    "train_loss": [round(log.train_loss, 4) for log in logs]}
