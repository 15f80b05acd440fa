"""TVConv: translation-variant depthwise convolution with per-pixel kernels (CVPR 2022).

Source: Chen et al., "TVConv: Efficient Translation Variant Convolution for Layout-aware Visual
Processing", CVPR 2022 (arXiv 2203.10489), code JierunChen/TVConv
(``face_recognition/model/atoms/TVConv.py``); see shared/reference/methods.md section 4.2.

Learnable affinity maps A (1, c_A, h, w), initialised to ones, feed a weight-generating block B:

    B = Conv3x3(c_A -> c_mid) + LayerNorm([c_mid, h, w]) + ReLU,
        L x [Conv3x3(c_mid -> c_mid) + LayerNorm + ReLU],
        Conv3x3(c_mid -> k^2 * C)                                       (all bias-free)
    W = B(A) viewed as (1, C, k^2, h, w)      one k x k kernel per channel and output pixel
    y[n, c, p] = sum_{i, j} x_pad[n, c, s * p + (i, j)] * W[0, c, i * k + j, p]

h, w are the layer's output size, so the input resolution is fixed when the layer is built.

Applying the kernels: the paper unfolds the input (``nn.Unfold``); here the k^2 shifted, strided
slices of the padded input are multiplied and summed, which equals unfold (tested) without the
(N, C * k^2, h * w) im2col copy and exports to ONNX opset 17 as Pad/Slice/Mul/Add.

Inference: W depends on parameters only. ``module.eval()`` computes W once and caches it (outside
autograd, re-computed if a parameter of B changes in place); the cache is used in eval mode under
``torch.no_grad()`` and while tracing for ONNX export, so the exported graph holds W as a constant
and no generating block (no LayerNorm). In eval mode with autograd on, W is generated live so
gradients still reach B. ``fuse_for_inference()`` goes further, as the paper's
``model_transform_for_test``: stores W as the buffer ``fused_weight`` (C * k^2 * h * w values) and
drops A and B for good.

>>> import torch
>>> conv = TVConv(8, out_size=(16, 16), stride=2)
>>> conv(torch.randn(2, 8, 32, 32)).shape
torch.Size([2, 8, 16, 16])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import BadInputError
from edgecompress.nas.blocks import InvertedResidual, conv_output_size


def per_pixel_depthwise(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Depthwise conv with a separate k x k kernel per channel and output pixel, padding (k-1)//2.

    ``x`` (N, C, H_in, W_in), ``weight`` (1 or N, C, k^2, h, w) -> (N, C, h, w). Equals
    ``(F.unfold(x, k, padding=p, stride=s).view(N, C, k^2, h, w) * weight).sum(2)``.
    """
    k = math.isqrt(weight.shape[2])
    p = (k - 1) // 2
    h, w = weight.shape[-2], weight.shape[-1]
    x_pad = F.pad(x, (p, p, p, p))  # (N, C, H_in + 2p, W_in + 2p)
    terms = (
        x_pad[:, :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride]  # (N, C, h, w)
        * weight[:, :, i * k + j]  # (1, C, h, w)
        for i in range(k)
        for j in range(k)
    )
    out = next(terms)
    for term in terms:
        out = out + term
    return out  # (N, C, h, w)


@contextlib.contextmanager
def _not_traced() -> Iterator[None]:
    """Pause a TorchScript trace (ONNX export), so a cache refilled mid-trace enters it as a constant.

    Uses the private ``torch._C._get_tracing_state``/``_set_tracing_state`` that ``torch.jit``
    itself uses; without them, nothing is paused (the numbers stay right, B enters the graph).
    """
    get = getattr(torch._C, "_get_tracing_state", None)
    put = getattr(torch._C, "_set_tracing_state", None)
    state = get() if get is not None and put is not None else None
    if state is None:
        yield
        return
    put(None)
    try:
        yield
    finally:
        put(state)


def _weight_block(c_a: int, c_mid: int, c_out: int, size: tuple[int, int], num_layers: int) -> nn.Sequential:
    """B: Conv3x3 + LayerNorm([c_mid, h, w]) + ReLU, num_layers more of those, Conv3x3 -> c_out."""
    layers: list[nn.Module] = []
    c_prev = c_a
    for _ in range(num_layers + 1):
        layers += [nn.Conv2d(c_prev, c_mid, 3, 1, 1, bias=False), nn.LayerNorm([c_mid, *size]), nn.ReLU(inplace=True)]
        c_prev = c_mid
    layers.append(nn.Conv2d(c_mid, c_out, 3, 1, 1, bias=False))
    return nn.Sequential(*layers)


class TVConv(nn.Module):
    """Translation-variant depthwise k x k conv (module docstring has the formula).

    Args:
        channels: C, input = output channels.
        out_size: (h, w), the output spatial size; the input must be the size that a 'same'-padded
            stride-s conv maps to it.
        stride: s, 1 or 2.
        kernel_size: k (odd).
        affinity_channels: c_A (paper default 4).
        mid_channels: c_mid (module default 16; the face-recognition script uses 64).
        num_layers: L, the extra Conv + LayerNorm + ReLU layers in B (module default 1).
    """

    def __init__(
        self,
        channels: int,
        out_size: tuple[int, int],
        stride: int = 1,
        kernel_size: int = 3,
        affinity_channels: int = 4,
        mid_channels: int = 16,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        h, w = out_size
        for name, value in [
            ("channels", channels),
            ("out_size", min(h, w)),
            ("affinity_channels", affinity_channels),
            ("mid_channels", mid_channels),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.channels, self.out_size, self.stride, self.kernel_size = channels, (h, w), stride, kernel_size
        self.affinity: nn.Parameter | None = nn.Parameter(torch.ones(1, affinity_channels, h, w))
        self.weight_block: nn.Sequential | None = _weight_block(
            affinity_channels, mid_channels, kernel_size**2 * channels, (h, w), num_layers
        )
        self.fused_weight: torch.Tensor | None
        self.register_buffer("fused_weight", None)
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def generate_weight(self) -> torch.Tensor:
        """W = B(A) viewed as (1, C, k^2, h, w), with autograd; the fused buffer once fused."""
        if self.fused_weight is not None:
            return self.fused_weight
        assert self.affinity is not None and self.weight_block is not None
        k2, (h, w) = self.kernel_size**2, self.out_size
        return self.weight_block(self.affinity).view(1, self.channels, k2, h, w)

    def _key(self) -> tuple:
        assert self.affinity is not None and self.weight_block is not None
        params = [self.affinity, *self.weight_block.parameters()]
        return (self.affinity.device, self.affinity.dtype, *((id(p), p._version) for p in params))

    def _cached_weight(self) -> torch.Tensor:
        key = self._key()
        if self._cache is None or self._cache_key != key:
            with torch.no_grad(), _not_traced():
                self._cache = self.generate_weight().detach()
            self._cache_key = key
        return self._cache

    def train(self, mode: bool = True) -> TVConv:
        """As ``nn.Module.train``; switching to eval computes and caches W, to train drops it."""
        super().train(mode)
        self._cache, self._cache_key = None, None
        if not mode and self.fused_weight is None:
            self._cached_weight()
        return self

    @torch.no_grad()
    def fuse_for_inference(self) -> None:
        """Store W = B(A) as the buffer ``fused_weight`` and delete A and B (irreversible)."""
        if self.fused_weight is not None:
            return
        self.fused_weight = self.generate_weight().detach().clone()
        self.affinity, self.weight_block = None, None
        self._cache, self._cache_key = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H_in, W_in) -> (N, C, h, w)
        k, s = self.kernel_size, self.stride
        if not torch.jit.is_tracing():  # a traced graph is specialised to the traced shape anyway
            h_in, w_in = x.shape[-2], x.shape[-1]
            if (conv_output_size(h_in, k, s), conv_output_size(w_in, k, s)) != self.out_size:
                raise BadInputError(
                    f"TVConv built for output {self.out_size} (stride {s}) got input {h_in}x{w_in}; "
                    "TVConv fixes the resolution at construction"
                )
        use_cache = (
            self.fused_weight is None
            and not self.training
            and (not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
        )
        weight = self._cached_weight() if use_cache else self.generate_weight()  # (1, C, k^2, h, w)
        return per_pixel_depthwise(x, weight, s)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, out_size={self.out_size}, stride={self.stride}, "
            f"kernel_size={self.kernel_size}, fused={self.fused_weight is not None}"
        )


def fuse_tvconv(model: nn.Module) -> int:
    """``fuse_for_inference()`` on every TVConv in ``model``, in place; returns how many."""
    convs = [m for m in model.modules() if isinstance(m, TVConv)]
    for m in convs:
        m.fuse_for_inference()
    return len(convs)


class TVConvInvertedResidual(InvertedResidual):
    """MobileNetV2 inverted residual with the 3x3 depthwise conv replaced by TVConv + BN + ReLU6.

    ``out_size`` is the block's output spatial size (h, w). Otherwise as ``InvertedResidual``.
    """

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: float,
        out_size: tuple[int, int],
        affinity_channels: int = 4,
        mid_channels: int = 16,
        num_layers: int = 1,
    ) -> None:
        def spatial(hidden: int, s: int) -> nn.Module:
            conv = TVConv(hidden, out_size, s, 3, affinity_channels, mid_channels, num_layers)
            return nn.Sequential(conv, nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))

        super().__init__(inp, oup, stride, expand_ratio, spatial=spatial)
        self.out_size = out_size
