"""LSQ+ fake quantization for the quantized-for-all supernet, and Q/DQ-exportable wrapped layers.

Sources: LSQ (Esser et al., ICLR 2020, arXiv 1902.08153) and LSQ+ (Bhalgat et al., CVPRW 2020,
arXiv 2004.09576), as SpaceEvo implements them (shared/reference/methods.md section 2.6):

* weights: symmetric signed, per output channel, ``w_hat = clamp(round(w / s_c), -127, 127) * s_c``,
  initialised ``s_c = 2 max|w_c| / 255``; the range is [-127, 127] (not -128) so that folding a BN
  of either sign into the weights commutes exactly with quantization (``Q(a w; |a| s) = a Q(w; s)``).
* activations: asymmetric unsigned, ``x_hat = (clamp(round(x / s) + z, 0, 255) - z) * s`` with the
  zero point ``z = round(-beta / s)`` (LSQ+'s offset beta, rounded so that the same numbers are an
  ONNX ``QuantizeLinear``/``DequantizeLinear`` pair); initialised ``s = (max - min) / 255``, ``beta = min``.
* rounding by a straight-through estimator; the gradient of each scale is multiplied by
  ``g = 1 / sqrt(N * Q_p)`` (LSQ's gradient scale).

Written by hand: torch's ``_fake_quantize_learnable_*`` ops are LSQ but do not export to ONNX, and
NNCF/onnxruntime quantize one fixed network, not weight-shared subnets. In eval mode the wrappers
call ``torch.fake_quantize_per_tensor_affine``/``per_channel_affine`` with the learned values, which
the TorchScript ONNX exporter writes as QuantizeLinear/DequantizeLinear.

>>> w = torch.tensor([[0.5, -1.0], [0.2, 0.1]])
>>> s = torch.tensor([1 / 127, 0.2 / 127])
>>> (fake_quant_weight(w, s) / s.view(-1, 1)).round().tolist()  # integer codes, clamped to [-127, 127]
[[64.0, -127.0], [127.0, 64.0]]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

W_QMAX = 127
A_QMAX = 255


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward, gradient times g backward."""
    return (x - x * g).detach() + x * g


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, qmax: int = W_QMAX) -> torch.Tensor:
    """Symmetric per-channel: clamp(round(w / s_c), -q, q) * s_c; ``scale`` (C_out,), ``w`` (C_out, ...)."""
    g = 1.0 / math.sqrt(max(w[0].numel(), 1) * qmax)
    s = grad_scale(scale.abs().clamp_min(1e-8), g).view(-1, *([1] * (w.dim() - 1)))  # (C_out, 1, ...)
    return round_ste(w / s).clamp(-qmax, qmax) * s


def host_weight_qmax() -> tuple[int, str]:
    """127 (8-bit weights), or 63 (7-bit) on x86 hosts without VNNI, whose onnxruntime U8S8 kernels
    saturate int16 pair sums with full-range weights (rule and detection: ``compress/int8/placement.py``)."""
    from edgecompress.compress.int8.placement import host_needs_reduce_range

    reduce, why = host_needs_reduce_range()
    return (63 if reduce else 127), why


def fake_quant_act(x: torch.Tensor, scale: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Asymmetric unsigned: (clamp(round(x / s) + z, 0, 255) - z) * s, z = round(-beta / s)."""
    g = 1.0 / math.sqrt(max(x[0].numel(), 1) * A_QMAX)
    s = grad_scale(scale.abs().clamp_min(1e-8), g)
    z = round_ste(-grad_scale(beta, g) / s).clamp(0, A_QMAX)
    return (round_ste(x / s) + z).clamp(0, A_QMAX).sub(z) * s


class ActQuant(nn.Module):
    """LSQ+ activation quantizer (scalar scale and offset), min-max initialised on its first batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 1e-6)
        self.scale.fill_((hi - lo) / A_QMAX)
        self.beta.fill_(lo)
        self.initialized.fill_(True)

    def qparams(self) -> tuple[float, int]:
        """(scale, uint8 zero point) as ONNX QuantizeLinear takes them."""
        s = max(float(self.scale.detach().abs()), 1e-8)
        return s, int(min(max(round(-float(self.beta.detach()) / s), 0), A_QMAX))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(x)
        if self.training:
            return fake_quant_act(x, self.scale, self.beta)
        s, z = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, s, z, 0, A_QMAX)


class WeightQuant(nn.Module):
    """LSQ+ per-channel symmetric weight quantizer for ``channels`` outputs; ``forward(w)`` uses the first rows.

    ``qmax`` 127 is 8-bit [-127, 127]; 63 is 7-bit (``host_weight_qmax``).
    """

    def __init__(self, channels: int, qmax: int = W_QMAX) -> None:
        super().__init__()
        if not 1 <= qmax <= W_QMAX:
            raise ValueError(f"qmax={qmax}: must lie in [1, {W_QMAX}]")
        self.qmax = qmax
        self.scale = nn.Parameter(torch.ones(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.frozen = False

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        """s_c = max|w_c| / (q + 0.5) (= 2 max|w_c| / 255 at 8 bits) over the full (max-size) weight (C_out, ...)."""
        self.scale[: w.shape[0]] = (w.abs().flatten(1).amax(1) / (self.qmax + 0.5)).clamp_min(1e-8)
        self.initialized.fill_(True)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_from(w)
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        if self.frozen:  # weights on [-127 s, 127 s], scales > 0 already: the graph holds Q/DQ of initializers only
            return torch.fake_quantize_per_channel_affine(w, self.scale, zero, 0, -W_QMAX - 1, W_QMAX)
        scale = self.scale[: w.shape[0]]
        if self.training:
            return fake_quant_weight(w, scale, self.qmax)
        s = scale.detach().abs().clamp_min(1e-8)
        lim = (self.qmax * s).view(-1, *([1] * (w.dim() - 1)))
        return torch.fake_quantize_per_channel_affine(torch.minimum(torch.maximum(w, -lim), lim), s, zero, 0,
                                                      -W_QMAX - 1, W_QMAX)


class QConv2d(nn.Module):
    """A conv whose input and weight are fake-quantized: conv(Q_a(x), Q_w(W)) + b."""

    def __init__(self, conv: nn.Conv2d, act: ActQuant, weight: WeightQuant) -> None:
        super().__init__()
        self.conv, self.act_quant, self.weight_quant = conv, act, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(self.act_quant(x), self.weight_quant(c.weight), c.bias, c.stride, c.padding, c.dilation,
                        c.groups)


class QLinear(nn.Module):
    """A linear layer with fake-quantized input and weight."""

    def __init__(self, linear: nn.Linear, act: ActQuant, weight: WeightQuant) -> None:
        super().__init__()
        self.linear, self.act_quant, self.weight_quant = linear, act, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.linear.weight), self.linear.bias)


@torch.no_grad()
def fold_bn(conv: QConv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BN into ``conv`` in place (weights, bias and the per-channel weight scale).

    W' = a W, b' = beta + a (b - mu), s' = |a| s with a = gamma / sqrt(var + eps); exact for the
    symmetric [-127, 127] weight grid.
    """
    c = conv.conv
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = c.bias if c.bias is not None else torch.zeros_like(bn.running_mean)
    c.weight.mul_(a.view(-1, 1, 1, 1))
    c.bias = nn.Parameter(bn.bias + a * (bias - bn.running_mean))
    n = c.weight.shape[0]
    conv.weight_quant.scale[:n] = conv.weight_quant.scale[:n].abs() * a.abs()


def fold_all_bn(model: nn.Module) -> int:
    """Fold every BN that directly follows a ``QConv2d`` (in a Sequential, or ``convN``/``bnN`` pairs).

    The folded BN becomes ``nn.Identity``. Returns how many were folded. Eval mode only.
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, QConv2d) and isinstance(bn, nn.BatchNorm2d):
                    fold_bn(conv, bn)
                    module._modules[b] = nn.Identity()
                    folded += 1
        for i in (1, 2, 3):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, QConv2d) and isinstance(bn, nn.BatchNorm2d):
                fold_bn(conv, bn)
                setattr(module, f"bn{i}", nn.Identity())
                folded += 1
    return folded


@torch.no_grad()
def freeze_for_export(model: nn.Module) -> int:
    """Clamp every quantized weight to [-127 s, 127 s] and make its scales positive, in place (eval only).

    Numbers are unchanged; the exported graph then holds QuantizeLinear/DequantizeLinear on weight
    initializers directly (no Abs/Min/Max ops in front), which onnxruntime fuses into INT8 kernels.
    Returns how many layers were frozen.
    """
    layers = [m for m in model.modules() if isinstance(m, (QConv2d, QLinear))]
    for m in layers:
        weight = m.conv.weight if isinstance(m, QConv2d) else m.linear.weight
        wq = m.weight_quant
        n = weight.shape[0]
        s = wq.scale[:n].abs().clamp_min(1e-8)
        lim = (wq.qmax * s).view(-1, *([1] * (weight.dim() - 1)))
        weight.copy_(torch.minimum(torch.maximum(weight, -lim), lim))
        wq.scale = nn.Parameter(s.clone(), requires_grad=False)
        wq.frozen = True
    return len(layers)
