"""Search spaces as data: elastic stages, a text encoding with a parse/format round trip, subnets.

SpaceEvo (Wang et al., ICCV 2023, arXiv 2303.08308; shared/reference/methods.md section 2.2) calls a
*candidate search space* one (block type, width window) pair per elastic stage of a fixed
*hyperspace*. Here a space is a ``Space``: a stem, then ``Stage`` s, each with a block type, a width
window, depth choices, kernel and expansion choices and a stride; a subnet is one choice of width,
depth and per-block (kernel, expansion) in every stage. Written by hand: no library has it.

Text encoding (stable; ``format_space(parse_space(t)) == t`` for any formatted ``t``)::

    r32:c16:s2|irb:w16-24:d1-2:k3,5:e3,6:s1|e2gc:w24-40:d1-3:k3:e3,6:s2|...

the head ``r<input size>:c<stem channels>:s<stem stride>``, then one stage per ``|``: block type,
widths ``w<lo>-<hi>`` (step ``WIDTH_STEP`` = 8), depths ``d<lo>-<hi>``, kernels, expansions, stride.
A subnet encodes as ``w16:k3e6,k5e3|w32:k3e3|...`` (per stage: width, then per block kernel and
expansion).

Block types (``BLOCKS``), all convs bias-free with BN:

* ``irb``: MobileNetV2 inverted residual (``nas/blocks.py``), k x k depthwise, ReLU6.
* ``e2gc``: the inverted residual with an E2GC 3x3 group conv of group size 8 (``nas/e2gc.py``).
* ``tvconv``: the inverted residual with a TVConv 3x3 (``nas/tvconv.py``; resolution fixed).
* ``resnet``: ResNet basic block, two k x k convs with ``mid = make_divisible(width * e)``; the
  first block of a stage always has a 1x1 projection shortcut (SpaceEvo's "forced residual").
* ``fused``: fused-MBConv, a k x k conv to ``round(inp * e)`` + BN + ReLU6, then 1x1 + BN.

>>> space = parse_space("r32:c16:s2|irb:w16-24:d1-2:k3,5:e3,6:s1|fused:w24-32:d1:k3:e1,2:s2")
>>> format_space(space) == "r32:c16:s2|irb:w16-24:d1-2:k3,5:e3,6:s1|fused:w24-32:d1:k3:e1,2:s2"
True
>>> net = materialize(space, space.max_subnet())
>>> net(torch.zeros(1, 3, 32, 32)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from edgecompress.errors import BadInputError
from edgecompress.nas.blocks import ConvBNAct, InvertedResidual, make_divisible
from edgecompress.nas.e2gc import E2GCInvertedResidual, conv_output_size
from edgecompress.nas.resnet import BasicBlock
from edgecompress.nas.tvconv import TVConvInvertedResidual
from edgecompress.registry import Registry

WIDTH_STEP = 8
E2GC_GROUP_SIZE = 8


# ----------------------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class BlockType:
    """A block type: its default kernel and expansion choices and how to build one block.

    ``build(inp, oup, stride, k, e, out_size, first)`` returns the plain ``nn.Module``; ``first`` is
    True for the first block of a stage (the one that may change shape).
    """

    name: str
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    build: Callable[[int, int, int, int, float, tuple[int, int], bool], nn.Module]
    allowed_kernels: tuple[int, ...] = (1, 3, 5, 7)
    min_expansion: float = 0.0


BLOCKS: Registry[BlockType] = Registry("block type")


def _irb(inp: int, oup: int, s: int, k: int, e: float, out_size: tuple[int, int], first: bool) -> nn.Module:
    return InvertedResidual(inp, oup, s, e, spatial=lambda h, st: ConvBNAct(h, h, k, st, groups=h))


def _e2gc(inp: int, oup: int, s: int, k: int, e: float, out_size: tuple[int, int], first: bool) -> nn.Module:
    return E2GCInvertedResidual(inp, oup, s, e, group_size=E2GC_GROUP_SIZE)


def _tvconv(inp: int, oup: int, s: int, k: int, e: float, out_size: tuple[int, int], first: bool) -> nn.Module:
    return TVConvInvertedResidual(inp, oup, s, e, out_size=out_size)


def resnet_mid(oup: int, e: float) -> int:
    """Middle width of a ``resnet`` block: make_divisible(oup * e, 8)."""
    return make_divisible(oup * e, WIDTH_STEP)


def _resnet(inp: int, oup: int, s: int, k: int, e: float, out_size: tuple[int, int], first: bool) -> nn.Module:
    block = BasicBlock(inp, oup, s)
    mid = resnet_mid(oup, e)
    block.conv1 = nn.Conv2d(inp, mid, k, s, k // 2, bias=False)
    block.bn1 = nn.BatchNorm2d(mid)
    block.conv2 = nn.Conv2d(mid, oup, k, 1, k // 2, bias=False)
    if first and block.downsample is None:  # forced projection: same layout for every width choice
        block.downsample = nn.Sequential(nn.Conv2d(inp, oup, 1, s, bias=False), nn.BatchNorm2d(oup))
    return block


class FusedMBConv(nn.Module):
    """Fused-MBConv (EfficientNetV2): k x k conv inp -> round(inp * e) + BN + ReLU6, 1x1 -> oup + BN.

    Residual ``x + F(x)`` when stride 1 and inp == oup. Children named as ``InvertedResidual``
    (``conv.0`` the fused conv, ``conv.1`` the projection, ``conv.2`` its BN).
    """

    def __init__(self, inp: int, oup: int, stride: int, kernel: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(ConvBNAct(inp, hidden, kernel, stride), nn.Conv2d(hidden, oup, 1, bias=False),
                                  nn.BatchNorm2d(oup))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, inp, H, W) -> (B, oup, H / s, W / s)
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _fused(inp: int, oup: int, s: int, k: int, e: float, out_size: tuple[int, int], first: bool) -> nn.Module:
    return FusedMBConv(inp, oup, s, k, e)


BLOCKS.add("irb", BlockType("irb", (3, 5), (3, 6), _irb, min_expansion=1.0 + 1e-9))
BLOCKS.add("e2gc", BlockType("e2gc", (3,), (3, 6), _e2gc, allowed_kernels=(3,), min_expansion=1.0 + 1e-9))
BLOCKS.add("tvconv", BlockType("tvconv", (3,), (3, 6), _tvconv, allowed_kernels=(3,), min_expansion=1.0 + 1e-9))
BLOCKS.add("resnet", BlockType("resnet", (3, 5), (0.5, 1.0), _resnet))
BLOCKS.add("fused", BlockType("fused", (3, 5), (1.0, 2.0), _fused))


# ----------------------------------------------------------------------------------------- spaces
def _fmt_num(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True)
class Stage:
    """One elastic stage: block type, width choices (a window), depth, kernel, expansion choices, stride."""

    block: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[float, ...]
    stride: int = 1

    def __post_init__(self) -> None:
        kind = BLOCKS.get(self.block)  # unknown block type -> BadInputError naming it
        if not self.widths or any(w < WIDTH_STEP or w % WIDTH_STEP for w in self.widths):
            raise BadInputError(f"stage {self.block}: widths {self.widths} must be multiples of {WIDTH_STEP}")
        if not self.depths or min(self.depths) < 1:
            raise BadInputError(f"stage {self.block}: depths {self.depths} must be >= 1")
        bad_k = [k for k in self.kernels if k not in kind.allowed_kernels]
        if not self.kernels or bad_k:
            raise BadInputError(f"stage {self.block}: kernel(s) {bad_k or '()'} not allowed "
                                f"(block {self.block} takes {kind.allowed_kernels})")
        if not self.expansions or min(self.expansions) < max(kind.min_expansion, 1e-9):
            raise BadInputError(f"stage {self.block}: expansions {self.expansions} too small for {self.block}")
        if self.stride not in (1, 2):
            raise BadInputError(f"stage {self.block}: stride must be 1 or 2, got {self.stride}")
        for name in ("widths", "depths", "kernels", "expansions"):
            values = getattr(self, name)
            if tuple(sorted(set(values))) != tuple(values):
                raise BadInputError(f"stage {self.block}: {name} {values} must be sorted and distinct")

    def format(self) -> str:
        w, d = self.widths, self.depths
        if w != tuple(range(w[0], w[-1] + 1, WIDTH_STEP)) or d != tuple(range(d[0], d[-1] + 1)):
            raise BadInputError(f"stage {self.block}: widths/depths must be contiguous ranges to encode")
        ws = f"w{w[0]}" if len(w) == 1 else f"w{w[0]}-{w[-1]}"
        ds = f"d{d[0]}" if len(d) == 1 else f"d{d[0]}-{d[-1]}"
        ks = ",".join(map(str, self.kernels))
        es = ",".join(map(_fmt_num, self.expansions))
        return f"{self.block}:{ws}:{ds}:k{ks}:e{es}:s{self.stride}"


@dataclass(frozen=True)
class StageChoice:
    """A subnet's choice in one stage: width, and (kernel, expansion) per block (len = depth)."""

    width: int
    blocks: tuple[tuple[int, float], ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Subnet:
    """One architecture of a space: a ``StageChoice`` per stage."""

    stages: tuple[StageChoice, ...]

    def format(self) -> str:
        return "|".join(f"w{s.width}:" + ",".join(f"k{k}e{_fmt_num(e)}" for k, e in s.blocks) for s in self.stages)


@dataclass(frozen=True)
class Space:
    """A search space: input size, stem (3x3 conv, ``stem_channels``, ``stem_stride``), stages, pool, linear."""

    stages: tuple[Stage, ...]
    input_size: int = 32
    stem_channels: int = 16
    stem_stride: int = 2
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.stages:
            raise BadInputError("a search space needs at least one stage")
        if self.input_size < 8 or self.stem_channels < 1 or self.stem_stride not in (1, 2):
            raise BadInputError(f"space head r{self.input_size}:c{self.stem_channels}:s{self.stem_stride} is invalid")

    # -- encoding
    def format(self) -> str:
        head = f"r{self.input_size}:c{self.stem_channels}:s{self.stem_stride}"
        return "|".join([head, *(s.format() for s in self.stages)])

    def hash(self) -> str:
        """Stable 12-hex-digit id: sha256 of the text encoding."""
        return hashlib.sha256(self.format().encode()).hexdigest()[:12]

    # -- geometry
    def resolutions(self) -> list[int]:
        """Spatial size at the output of each stage (stride applied by the stage's first block)."""
        size = conv_output_size(self.input_size, 3, self.stem_stride)
        out = []
        for st in self.stages:
            size = conv_output_size(size, 3, st.stride)
            out.append(size)
        return out

    # -- subnets
    def max_subnet(self) -> Subnet:
        return Subnet(tuple(StageChoice(s.widths[-1], ((s.kernels[-1], s.expansions[-1]),) * s.depths[-1])
                            for s in self.stages))

    def min_subnet(self) -> Subnet:
        return Subnet(tuple(StageChoice(s.widths[0], ((s.kernels[0], s.expansions[0]),) * s.depths[0])
                            for s in self.stages))

    def sample(self, rng: random.Random) -> Subnet:
        """A uniformly random subnet (width, depth, then kernel and expansion per block)."""
        return Subnet(tuple(StageChoice(rng.choice(s.widths), tuple(
            (rng.choice(s.kernels), rng.choice(s.expansions)) for _ in range(rng.choice(s.depths))))
            for s in self.stages))

    def validate(self, subnet: Subnet) -> Subnet:
        """Raise ``BadInputError`` naming the stage and field when ``subnet`` is not in this space."""
        if len(subnet.stages) != len(self.stages):
            raise BadInputError(f"subnet has {len(subnet.stages)} stages, the space {len(self.stages)}")
        for i, (c, s) in enumerate(zip(subnet.stages, self.stages, strict=True)):
            if c.width not in s.widths:
                raise BadInputError(f"stage {i}: width {c.width} not in {s.widths}")
            if c.depth not in s.depths:
                raise BadInputError(f"stage {i}: depth {c.depth} not in {s.depths}")
            for k, e in c.blocks:
                if k not in s.kernels or e not in s.expansions:
                    raise BadInputError(f"stage {i}: block k{k}e{e:g} not in k{s.kernels} e{s.expansions}")
        return subnet


def parse_stage(text: str) -> Stage:
    """``irb:w16-24:d1-2:k3,5:e3,6:s1`` -> ``Stage``; k/e/s may be left out (block defaults, s1)."""
    parts = text.strip().split(":")
    block = parts[0]
    kind = BLOCKS.get(block)
    fields: dict[str, str] = {}
    for p in parts[1:]:
        if not p or p[0] not in "wdkes" or p[0] in fields:
            raise BadInputError(f"stage {text!r}: bad or repeated field {p!r} (expected w, d, k, e, s)")
        fields[p[0]] = p[1:]
    try:
        def rng(v: str, step: int) -> tuple[int, ...]:
            lo, _, hi = v.partition("-")
            return tuple(range(int(lo), int(hi or lo) + 1, step))

        widths = rng(fields["w"], WIDTH_STEP)
        depths = rng(fields.get("d", "1"), 1)
        kernels = tuple(int(k) for k in fields["k"].split(",")) if "k" in fields else kind.kernels
        expansions = tuple(float(e) for e in fields["e"].split(",")) if "e" in fields else kind.expansions
        stride = int(fields.get("s", "1"))
    except KeyError as exc:
        raise BadInputError(f"stage {text!r}: missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise BadInputError(f"stage {text!r}: {exc}") from None
    return Stage(block, widths, depths, kernels, expansions, stride)


def parse_space(text: str) -> Space:
    """Parse a space's text encoding (module docstring); errors name the stage at fault."""
    parts = [p for p in text.strip().split("|") if p.strip()]
    if not parts:
        raise BadInputError("empty search space text")
    head = {"r": 32, "c": 16, "s": 2}
    if parts[0].startswith("r") and parts[0][1:2].isdigit():
        for f in parts.pop(0).split(":"):
            if f[:1] not in head or not f[1:].isdigit():
                raise BadInputError(f"space head field {f!r}: expected r<size>, c<channels>, s<stride>")
            head[f[0]] = int(f[1:])
    return Space(tuple(parse_stage(p) for p in parts), input_size=head["r"], stem_channels=head["c"],
                 stem_stride=head["s"])


def format_space(space: Space) -> str:
    return space.format()


def parse_subnet(text: str) -> Subnet:
    """``w16:k3e6,k5e3|w32:k3e3`` -> ``Subnet``."""
    stages = []
    for part in text.strip().split("|"):
        try:
            w, _, blocks = part.partition(":")
            choice = []
            for b in blocks.split(","):
                k, _, e = b[1:].partition("e")
                choice.append((int(k), float(e)))
            stages.append(StageChoice(int(w[1:]), tuple(choice)))
        except (ValueError, IndexError):
            raise BadInputError(f"subnet stage {part!r}: expected w<width>:k<k>e<e>,...") from None
    return Subnet(tuple(stages))


# ------------------------------------------------------------------------------------ materialise
class SearchNet(nn.Module):
    """A plain network of a space: ``stem``, ``stages.<i>.<j>`` blocks, global average pool, ``classifier``."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Sequential], classifier: nn.Linear,
                 input_size: int) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.classifier = classifier
        self.input_size = (3, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C0, H / s0, W / s0)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x.mean((2, 3)))  # (B, num_classes)


def materialize(space: Space, subnet: Subnet, num_classes: int = 10) -> SearchNet:
    """Build ``subnet`` of ``space`` as a plain ``nn.Module`` (randomly initialised, train mode)."""
    space.validate(subnet)
    if num_classes < 1:
        raise BadInputError(f"num_classes must be >= 1, got {num_classes}")
    stem = ConvBNAct(3, space.stem_channels, 3, space.stem_stride)
    inp, stages = space.stem_channels, []
    for st, choice, res in zip(space.stages, subnet.stages, space.resolutions(), strict=True):
        kind = BLOCKS.get(st.block)
        blocks = []
        for j, (k, e) in enumerate(choice.blocks):
            blocks.append(kind.build(inp, choice.width, st.stride if j == 0 else 1, k, e, (res, res), j == 0))
            inp = choice.width
        stages.append(nn.Sequential(*blocks))
    return SearchNet(stem, stages, nn.Linear(inp, num_classes), space.input_size)


# ------------------------------------------------------------------------------------- hyperspace
@dataclass(frozen=True)
class HyperStage:
    """One stage of a hyperspace: stride, the full width list, the window size, depth choices."""

    widths: tuple[int, ...]
    window: int
    depths: tuple[int, ...]
    stride: int


@dataclass(frozen=True)
class Hyperspace:
    """The fixed macro-architecture from which candidate spaces are drawn (methods.md section 2.2).

    A candidate space is ``(block type, window start)`` per stage; ``space(genes)`` builds it.
    """

    stages: tuple[HyperStage, ...]
    blocks: tuple[str, ...] = ("irb", "e2gc", "tvconv", "resnet", "fused")
    input_size: int = 32
    stem_channels: int = 16
    stem_stride: int = 2

    def __post_init__(self) -> None:
        for b in self.blocks:
            BLOCKS.get(b)
        for i, s in enumerate(self.stages):
            if not 1 <= s.window <= len(s.widths):
                raise BadInputError(f"hyperspace stage {i}: window {s.window} outside 1..{len(s.widths)}")

    def windows(self, i: int) -> int:
        """Number of window positions of stage ``i``."""
        return len(self.stages[i].widths) - self.stages[i].window + 1

    def space(self, genes: Sequence[tuple[str, int]]) -> Space:
        """Candidate space from (block type, window start) per stage."""
        if len(genes) != len(self.stages):
            raise BadInputError(f"{len(genes)} genes for {len(self.stages)} stages")
        stages = []
        for i, ((block, start), hs) in enumerate(zip(genes, self.stages, strict=True)):
            if not 0 <= start < self.windows(i):
                raise BadInputError(f"stage {i}: window start {start} outside 0..{self.windows(i) - 1}")
            kind = BLOCKS.get(block)
            stages.append(Stage(block, hs.widths[start:start + hs.window], hs.depths, kind.kernels, kind.expansions,
                                hs.stride))
        return Space(tuple(stages), self.input_size, self.stem_channels, self.stem_stride)

    def random_genes(self, rng: random.Random) -> tuple[tuple[str, int], ...]:
        return tuple((rng.choice(self.blocks), rng.randrange(self.windows(i))) for i in range(len(self.stages)))


def _widths(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, WIDTH_STEP))


#: The hyperspace used for 32x32 inputs (digits, CIFAR-sized data): stem 16 channels stride 2, then
#: four elastic stages at 16, 8, 4, 4 pixels.
CIFAR_HYPERSPACE = Hyperspace((
    HyperStage(_widths(16, 40), 2, (1, 2), 1),
    HyperStage(_widths(24, 64), 2, (1, 2), 2),
    HyperStage(_widths(32, 96), 3, (1, 2, 3), 2),
    HyperStage(_widths(48, 128), 3, (1, 2), 1),
))

#: The plain MobileNetV2 space in that hyperspace: inverted residuals everywhere, widths near
#: MobileNetV2-0.5's (16, 24/32, 48/64, 80/96) -- the baseline SpaceEvo compares against.
MOBILENETV2_GENES: tuple[tuple[str, int], ...] = (("irb", 0), ("irb", 0), ("irb", 2), ("irb", 4))


def mobilenetv2_space() -> Space:
    """The plain MobileNetV2 search space (``MOBILENETV2_GENES`` in ``CIFAR_HYPERSPACE``)."""
    return CIFAR_HYPERSPACE.space(MOBILENETV2_GENES)
