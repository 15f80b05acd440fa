"""E2GC: energy-efficient group convolution with a constant group size G, and its cost model.

Source: Jha, Saini, Nag, Mittal, "E2GC: Energy-efficient Group Convolution in Deep Neural
Networks", VLSID 2020 (arXiv 2006.15100); see shared/reference/methods.md section 3.

What is verified from the paper (abstract): E2GC keeps the **group size** G (channels per group)
constant across the network, so a layer of C channels has g = C // G groups, instead of keeping g
constant; G balances computation against data movement, and is chosen by a cost model.

What is **not** from the paper: the paper's cost model could not be read, so ``e2gc_cost`` and
``choose_group_size`` are this project's first-principles reconstruction (methods.md section 3.3,
tagged [reconstruction]), written by hand because no library has it. It is to be validated against
energy and latency measured on the target device before its choices are trusted.

Cost of one K x K grouped conv, input C_in x H_in x W_in, output C_out x H x W, group size G:

    MACs(G)   = H * W * K^2 * C_out * G
    params(G) = K^2 * C_out * G
    D(G)      = C_in * H_in * W_in + K^2 * C_out * G + C_out * H * W     (elements moved, minimum)
    AI(G)     = MACs(G) / (b * D(G))                                     (MAC per byte)

AI grows with G towards H * W / b. The device's ridge point R = peak MAC/s / bandwidth B/s
separates memory-bound (AI < R) from compute-bound layers; ``choose_group_size`` picks the smallest
power-of-two G dividing C_in with AI(G) >= R. Solving AI(G) = R gives the continuous optimum
G* = R * b * A / (K^2 * C_out * (H * W - R * b)), A = C_in * H_in * W_in + C_out * H * W, valid
when H * W > R * b (``ridge_group_size``).

>>> cost = e2gc_cost(64, 64, 8, 8, kernel=3, stride=1, group_size=8)
>>> cost.macs, cost.params, cost.bytes_moved, cost.arithmetic_intensity
(294912, 4608, 51200, 5.76)
>>> choose_group_size(64, 64, 8, 8, 3, 1, peak_macs_per_s=5e9, bandwidth_bytes_per_s=1e9)
8
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from edgecompress.nas.blocks import InvertedResidual, conv_output_size


@dataclass(frozen=True)
class GroupConvCost:
    """Cost of one grouped conv layer: MACs, weights, bytes moved (minimum), MAC per byte."""

    macs: int
    params: int
    bytes_moved: int
    arithmetic_intensity: float


def _positive(**values: int | float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def e2gc_cost(
    c_in: int,
    c_out: int,
    h_in: int,
    w_in: int,
    kernel: int,
    stride: int,
    group_size: int,
    bytes_per_element: int = 4,
) -> GroupConvCost:
    """Cost of a K x K grouped conv with group size G (module docstring has the formulas).

    The output size is that of a 'same'-padded conv: H = floor((H_in + 2p - K) / s) + 1,
    p = (K - 1) // 2. Raises ``ValueError`` naming the argument when G does not divide C_in or the
    resulting groups do not divide C_out.
    """
    _positive(
        c_in=c_in,
        c_out=c_out,
        h_in=h_in,
        w_in=w_in,
        kernel=kernel,
        stride=stride,
        group_size=group_size,
        bytes_per_element=bytes_per_element,
    )
    if c_in % group_size:
        raise ValueError(f"group_size {group_size} does not divide c_in {c_in}")
    if c_out % (c_in // group_size):
        raise ValueError(f"groups c_in/group_size = {c_in // group_size} do not divide c_out {c_out}")
    h, w = conv_output_size(h_in, kernel, stride), conv_output_size(w_in, kernel, stride)
    macs = h * w * kernel**2 * c_out * group_size
    params = kernel**2 * c_out * group_size
    elements = c_in * h_in * w_in + params + c_out * h * w
    bytes_moved = bytes_per_element * elements
    return GroupConvCost(macs, params, bytes_moved, macs / bytes_moved)


def ridge_group_size(
    c_in: int,
    c_out: int,
    h_in: int,
    w_in: int,
    kernel: int,
    stride: int,
    ridge_point: float,
    bytes_per_element: int = 4,
) -> float:
    """Continuous G* solving AI(G) = R; ``math.inf`` when no G reaches R (H * W <= R * b).

    G* = R * b * A / (K^2 * C_out * (H * W - R * b)), A = C_in * H_in * W_in + C_out * H * W.
    """
    _positive(ridge_point=ridge_point)
    h, w = conv_output_size(h_in, kernel, stride), conv_output_size(w_in, kernel, stride)
    rb = ridge_point * bytes_per_element
    if h * w <= rb:
        return math.inf
    activations = c_in * h_in * w_in + c_out * h * w
    return rb * activations / (kernel**2 * c_out * (h * w - rb))


def _default_candidates(c_in: int, c_out: int) -> list[int]:
    """Powers of two G dividing C_in whose group count C_in / G also divides C_out."""
    out, g = [], 1
    while g <= c_in:
        if c_in % g == 0 and c_out % (c_in // g) == 0:
            out.append(g)
        g *= 2
    return out


def choose_group_size(
    c_in: int,
    c_out: int,
    h_in: int,
    w_in: int,
    kernel: int,
    stride: int,
    peak_macs_per_s: float,
    bandwidth_bytes_per_s: float,
    bytes_per_element: int = 4,
    candidates: Sequence[int] | None = None,
) -> int:
    """Smallest candidate G with AI(G) >= R = peak / bandwidth; else the largest candidate.

    Candidates default to the powers of two dividing C_in (1, 2, 4, ...). Reconstruction, not the
    paper's equation: see the module docstring.

    >>> choose_group_size(64, 64, 8, 8, 3, 1, peak_macs_per_s=1e9, bandwidth_bytes_per_s=1e9)
    1
    >>> choose_group_size(64, 64, 8, 8, 3, 1, peak_macs_per_s=16e9, bandwidth_bytes_per_s=1e9)
    64
    """
    _positive(peak_macs_per_s=peak_macs_per_s, bandwidth_bytes_per_s=bandwidth_bytes_per_s)
    ridge = peak_macs_per_s / bandwidth_bytes_per_s  # MAC per byte
    options = sorted(candidates) if candidates is not None else _default_candidates(c_in, c_out)
    if not options:
        raise ValueError("candidates is empty")
    for g in options:
        cost = e2gc_cost(c_in, c_out, h_in, w_in, kernel, stride, g, bytes_per_element)
        if cost.arithmetic_intensity >= ridge:
            return g
    return options[-1]


class E2GCConv(nn.Conv2d):
    """3x3 grouped conv with constant group size G: groups = C // G, bias-free, padding 1.

    ``group_size`` larger than ``channels`` is clamped to ``channels`` (one dense group), so a
    network-wide G also works on its narrow layers; otherwise G must divide ``channels``.

    >>> E2GCConv(32, stride=1, group_size=8).groups
    4
    """

    def __init__(self, channels: int, stride: int, group_size: int) -> None:
        _positive(channels=channels, group_size=group_size)
        g = min(group_size, channels)
        if channels % g:
            raise ValueError(f"group_size {group_size} does not divide channels {channels}")
        super().__init__(channels, channels, 3, stride, 1, groups=channels // g, bias=False)
        self.group_size = g


class E2GCInvertedResidual(InvertedResidual):
    """MobileNetV2 inverted residual whose 3x3 depthwise conv is an ``E2GCConv`` (+ BN + ReLU6).

    group_size=1 is the plain depthwise block. Layout otherwise as ``InvertedResidual``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float, group_size: int = 8) -> None:
        def spatial(hidden: int, s: int) -> nn.Module:
            return nn.Sequential(E2GCConv(hidden, s, group_size), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))

        super().__init__(inp, oup, stride, expand_ratio, spatial=spatial)
        self.group_size = group_size
