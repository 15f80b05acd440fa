"""The LR²VQ building block: a Conv2d/Linear whose weight is rebuilt from codebook, codes and projection.

Hand-written: no library implements LR²VQ (Zhu, Zhou, Zhong, arXiv 2211.11397; no public code). The
parameterisation is the reconstruction in shared/reference/methods.md §1.4, not verified against the
paper's equations:

- The weight ``W`` (C_out, C_in/g, kh, kw) or (out, in) is viewed as (C_out, L) with
  ``L = C_in/g * kh * kw`` (or ``in``) and every row is cut into ``L/m`` consecutive sub-vectors of size
  ``m`` (along the input dimension, as PQF and BGD do), giving ``N = numel / m`` rows ``w_i`` in R^m.
  When ``m`` does not divide ``L`` but divides ``numel`` (depthwise kernels, 3-channel first convs), the
  sub-vectors are consecutive elements of the flattened weight and straddle rows.
- Each ``w_i = P z_i`` with one projection ``P`` (m, d) per layer and low-rank vectors ``z_i`` in R^d.
- The ``z_i`` are clustered into ``k`` codewords ``C`` (k, d); the weight is ``w_i = P C[codes_i]``.

Phases (``LR2VQLayer.phase``):

1. ``lowrank``: ``w_i = P z_i``; ``P`` and ``Z`` start from the truncated SVD of the (N, m) sub-vector
   matrix (``Z = U_d S_d``, ``P = V_d``) and are trained on the task loss.
2. ``soft``: DKM (Cho et al., ICLR 2022): ``a_ij = softmax_j(-||z_i - c_j||^2 / tau)``; in training the
   centroids take one EM step inside the forward pass, ``c_j = sum_i a_ij z_i / sum_i a_ij``, and the
   layer uses ``z^_i = sum_j a_ij c_j``; gradients reach ``Z``, ``P`` and the rest of the network.
3. ``hard``: ``codes_i = argmin_j ||z_i - c_j||^2`` frozen; ``C`` and ``P`` fine-tuned (as PQF does
   for its codebooks).
4. ``frozen``: codebook and projection held as fp16 buffers and codes in the smallest unsigned/int
   dtype; this is the form that is measured, saved and exported.

Plain product quantisation (the PQ / "vanilla DKM" baseline) is the same block with ``d = m`` and
``P = I`` held fixed (``identity=True``); then no projection is stored.

>>> layer = LR2VQLayer(torch.nn.Linear(16, 8), m=4, d=2, k=4)
>>> layer.weight().shape
torch.Size([8, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.compress.lr2vq.kmeans import kmeans, soft_assign

PHASES = ("lowrank", "soft", "hard", "frozen")


def code_bits(k: int) -> int:
    """Bits of one code: ``ceil(log2 k)`` (at least 1)."""
    return max(1, math.ceil(math.log2(k)))


def code_dtype(k: int) -> torch.dtype:
    """The smallest integer dtype that holds codes ``0 .. k-1`` (uint8 up to 256 codewords)."""
    if k <= 256:
        return torch.uint8
    if k <= 2**15:
        return torch.int16
    return torch.int32


def row_length(layer: nn.Module) -> int:
    """``L``: the length of one output row of the weight, along which sub-vectors are cut."""
    w = layer.weight
    return int(w[0].numel())


def to_subvectors(weight: torch.Tensor, m: int) -> torch.Tensor:
    """(C_out, ...) weight -> (N, m): consecutive elements of the row-major flattened weight.

    When ``m | L`` every sub-vector lies inside one output row (cut along the input dimension, as PQ does);
    otherwise (e.g. depthwise 3x3 kernels, L = 9, with m = 16) sub-vectors straddle rows. Requires
    ``m | numel``.
    """
    if weight.numel() % m:
        raise ValueError(f"m={m} does not divide the number of weights {weight.numel()}")
    return weight.reshape(-1, m)  # (N, m)


def lowrank_init(w_sub: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of the (N, m) sub-vectors: ``P = V_d`` (m, d), ``Z = U_d S_d`` (N, d); ``Z P^T`` is the
    best rank-d approximation (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(w_sub.detach().double(), full_matrices=False)
    p = vh[:d].t()  # (m, d), orthonormal columns
    z = u[:, :d] * s[:d]  # (N, d)
    return p.float().contiguous(), z.float().contiguous()


class LR2VQLayer(nn.Module):
    """A Conv2d or Linear whose weight is ``reshape(P C[codes])`` (see the module docstring).

    Args:
        layer: the Conv2d/Linear to replace; its weight initialises the block, its bias is kept.
        m: sub-vector size (must divide the row length ``L``).
        d: clustering dimensionality, ``1 <= d <= m``.
        k: codebook size, ``2 <= k <= N``.
        identity: plain PQ: ``d = m`` and ``P = I`` fixed (not stored).
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, m: int, d: int, k: int, identity: bool = False) -> None:
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            if layer.padding_mode != "zeros":
                raise ValueError(f"padding_mode={layer.padding_mode!r} is not supported (only 'zeros')")
            self.kind = "conv"
            self.conv_args = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                              "groups": layer.groups}
        elif isinstance(layer, nn.Linear):
            self.kind = "linear"
            self.conv_args = {}
        else:
            raise TypeError(f"LR2VQLayer wraps nn.Conv2d or nn.Linear, got {type(layer).__name__}")
        self.weight_shape = tuple(layer.weight.shape)
        if layer.weight.numel() % m:
            raise ValueError(f"m={m} does not divide the number of weights {layer.weight.numel()}")
        self.m, self.n = m, layer.weight.numel() // m
        if identity and d != m:
            raise ValueError(f"identity projection (PQ) needs d == m, got d={d}, m={m}")
        if not 1 <= d <= m:
            raise ValueError(f"d={d} must lie in [1, m={m}]")
        if not 2 <= k <= self.n:
            raise ValueError(f"k={k} must lie in [2, N={self.n}] (N = number of sub-vectors)")
        self.d, self.k, self.identity = d, k, identity
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        w_sub = to_subvectors(layer.weight.detach().float(), m)  # (N, m)
        if identity:
            self.register_buffer("proj", None)
            self.z = nn.Parameter(w_sub.clone())
        else:
            p, z = lowrank_init(w_sub, d)
            self.proj = nn.Parameter(p)  # (m, d)
            self.z = nn.Parameter(z)  # (N, d)
        self.codebook = nn.Parameter(torch.zeros(k, d), requires_grad=False)  # (k, d)
        self.register_buffer("codes", torch.zeros(self.n, dtype=code_dtype(k)))  # (N,)
        self.phase = "lowrank"
        self.tau = 1.0  # absolute temperature of the soft phase (set by the schedule)
        self.tau_scale = 1.0  # mean squared distance to the nearest centroid when clustering started

    # ----------------------------------------------------------------------------------- phases
    @torch.no_grad()
    def start_clustering(self, iters: int = 25, seed: int = 0) -> float:
        """k-means of ``Z`` into the codebook; enters the soft phase. Returns the clustering error."""
        self._require("lowrank")
        c, codes, error = kmeans(self.z, self.k, iters=iters, seed=seed)
        self.codebook.data.copy_(c)
        self.codes.copy_(codes.to(self.codes.dtype))
        self.tau_scale = max(error / self.n, 1e-12)
        self.phase = "soft"
        return error

    @torch.no_grad()
    def finish_clustering(self) -> None:
        """Freeze hard codes ``argmin_j ||z_i - c_j||``; the codebook (and ``P``) stay trainable."""
        self._require("soft")
        from edgecompress.compress.lr2vq.kmeans import assign

        self.codes.copy_(assign(self.z, self.codebook).to(self.codes.dtype))
        self.codebook.requires_grad_(True)
        self.z = None  # the low-rank vectors are no longer part of the model
        self.phase = "hard"

    @torch.no_grad()
    def freeze(self) -> None:
        """Round codebook, projection and bias to fp16 and hold codebook/projection as fp16 buffers."""
        if self.phase == "frozen":
            return
        if self.phase != "hard":
            raise RuntimeError(f"freeze() needs the hard phase, the layer is in {self.phase!r}")
        codebook = self.codebook.detach().half()
        del self.codebook
        self.register_buffer("codebook", codebook)
        if not self.identity:
            proj = self.proj.detach().half()
            del self.proj
            self.register_buffer("proj", proj)
        if self.bias is not None:
            self.bias.data = self.bias.data.half().float()
        self.phase = "frozen"

    def _require(self, phase: str) -> None:
        if self.phase != phase:
            raise RuntimeError(f"LR2VQLayer is in phase {self.phase!r}, expected {phase!r}")

    # ---------------------------------------------------------------------------------- forward
    def _soft_z(self) -> torch.Tensor:
        c = self.codebook.detach()  # (k, d)
        a = soft_assign(self.z, c, self.tau)  # (N, k)
        if self.training:  # one EM step on the centroids, differentiated through (DKM)
            c = (a.t() @ self.z) / a.sum(0).clamp_min(1e-12)[:, None]  # (k, d)
            with torch.no_grad():
                self.codebook.data.copy_(c.detach())
            a = soft_assign(self.z, c, self.tau)
        return a @ c  # (N, d)

    def weight(self) -> torch.Tensor:
        """The reconstructed weight, shaped like the original layer's."""
        if self.phase == "lowrank":
            z = self.z
        elif self.phase == "soft":
            z = self._soft_z()
        else:
            z = self.codebook.float()[self.codes.long()]  # (N, d)
        w = z if self.identity else z @ self.proj.float().t()  # (N, m)
        return w.reshape(self.weight_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        bias = self.bias
        if self.kind == "conv":
            return F.conv2d(x, w, bias, **self.conv_args)  # (B, C_out, H', W')
        return F.linear(x, w, bias)

    def dense(self) -> nn.Conv2d | nn.Linear:
        """A plain Conv2d/Linear with the reconstructed weight (for runtimes that want plain weights)."""
        with torch.no_grad():
            w = self.weight().detach().clone()
            if self.kind == "conv":
                layer = nn.Conv2d(w.shape[1] * self.conv_args["groups"], w.shape[0], tuple(w.shape[2:]),
                                  bias=self.bias is not None, **self.conv_args)
            else:
                layer = nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None)
            layer.weight.copy_(w)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def extra_repr(self) -> str:
        return (f"{self.kind}, weight={self.weight_shape}, m={self.m}, d={self.d}, k={self.k}, N={self.n}, "
                f"identity={self.identity}, phase={self.phase}")

    @classmethod
    def frozen_like(cls, layer: nn.Conv2d | nn.Linear, m: int, d: int, k: int, identity: bool) -> LR2VQLayer:
        """An empty frozen block shaped for ``layer`` (its weights are ignored), to load a checkpoint into."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        block.conv_args = ({"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                            "groups": layer.groups} if block.kind == "conv" else {})
        block.weight_shape = tuple(layer.weight.shape)
        block.m, block.n, block.d, block.k, block.identity = m, layer.weight.numel() // m, d, k, identity
        block.bias = None if layer.bias is None else nn.Parameter(torch.zeros(layer.bias.shape))
        block.z = None
        block.register_buffer("codebook", torch.zeros(k, d, dtype=torch.float16))
        block.register_buffer("proj", None if identity else torch.zeros(m, d, dtype=torch.float16))
        block.register_buffer("codes", torch.zeros(block.n, dtype=code_dtype(k)))
        block.phase, block.tau, block.tau_scale = "frozen", 1.0, 1.0
        return block
