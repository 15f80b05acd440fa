"""Zero-Invariant Groups (ZIGs) on top of torch-pruning's dependency graph.

Source: Chen et al., "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023 (arXiv 2303.06862), section 3
(automated ZIG partition); shared/reference/otov2-torchpruning.md sections 2 and 10.

A ZIG is the smallest set of variables that is removed together: if every variable of one *row* of the
group is zero, the row's channels (or conv groups, or heads) carry exactly zero to every consumer, so
removing the producer rows and the consumers' input columns leaves the network output unchanged.

What torch-pruning does for us (``tp.DependencyGraph``): tracing by autograd, coupling of residual adds,
concat/split/slice/flatten index mappings, depthwise convs, and the physical channel surgery.
What this module adds by hand (no library does it):

- the ZIG rows of each torch-pruning group: the producers' out-channel slices (conv/linear rows and bias,
  norm scale and shift, TVConv kernel rows) aligned by ``root_idxs``;
- a zero-invariance check per operator on every node the group's channels flow through; a group that
  passes an operator with f(0) != 0 or a channel-mixing one (LayerNorm, GroupNorm with several channels
  per group, sigmoid, adding a constant or the raw input, any operator not on the allow-list) is marked
  unprunable with the reason recorded;
- groups that reach a model output and groups touching a parameter shared by several modules are
  unprunable;
- grouped convolutions (1 < groups < channels, e.g. E2GC) are pruned by whole conv groups: the
  torch-pruning groups of their input and output channels are merged and one row is one conv group;
- ``nn.MultiheadAttention`` is pruned by whole heads (rows = heads: q, k, v rows of the head and their
  biases); its embedding channels are left alone.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edgecompress.errors import BadInputError

# grad_fn names (digits stripped) of element-wise operators with f(0) = 0 acting per channel, or pure
# data movement. Everything else found on a group's path makes it unprunable.
ZERO_INVARIANT_OPS = {
    "ReluBackward", "HardtanhBackward", "LeakyReluBackward", "GeluBackward", "SiluBackward", "HardswishBackward",
    "EluBackward", "TanhBackward", "MishBackward", "PreluKernelBackward", "ThresholdBackward",
    "MaxPool2DWithIndicesBackward", "MaxPool1DWithIndicesBackward", "AvgPool2DBackward", "AvgPool1DBackward",
    "AdaptiveAvgPool2DBackward", "AdaptiveMaxPool2DBackward", "AdaptiveAvgPool1DBackward", "MeanBackward",
    "SumBackward", "ConstantPadNdBackward", "UpsampleNearest2DBackward", "UpsampleBilinear2DBackward",
    "CloneBackward", "NativeDropoutBackward", "TBackward", "SqueezeBackward", "UnsqueezeBackward",
    "SliceBackward", "SelectBackward", "CatBackward", "SplitBackward", "SplitWithSizesBackward",
    "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "ExpandBackward", "AliasBackward",
    "FlattenBackward",
}
# binary operators: zero-invariant when every tensor operand carries the group's channels
LINEAR_COMBINATION_OPS = {"AddBackward0", "SubBackward0"}
# multiplication/division by anything keeps a zero channel zero
SCALING_OPS = {"MulBackward0", "MulBackward1", "DivBackward1", "DivBackward0"}
KNOWN_UNSAFE = {
    "SigmoidBackward": "sigmoid(0) = 0.5 (gating)",
    "HardsigmoidBackward": "hardsigmoid(0) = 0.5 (gating)",
    "SoftmaxBackward": "softmax mixes channels and maps 0 to a non-zero value",
    "LogSoftmaxBackward": "log-softmax mixes channels",
    "ExpBackward": "exp(0) = 1",
    "SoftplusBackward": "softplus(0) = log 2",
    "AddBackward1": "adds a constant (x + c != 0 at x = 0)",
    "SubBackward1": "subtracts a constant",
    "RsubBackward1": "subtracts from a constant",
    "NativeLayerNormBackward": "layer norm normalises over channels",
    "NativeGroupNormBackward": "group norm normalises over several channels",
    "BmmBackward": "matrix product mixes the channels",
    "MmBackward": "matrix product mixes the channels",
    "PermuteBackward": "permute moves the channel dimension",
    "TransposeBackward": "transpose moves the channel dimension",
}


@dataclass
class ParamSlice:
    """The variables of one parameter that belong to a ZIG: ``param.index_select(dim, index)``.

    ``row[i]`` is the ZIG row that slice ``index[i]`` belongs to.
    """

    name: str
    param: nn.Parameter
    dim: int
    index: torch.Tensor  # (M,) positions along ``dim``
    row: torch.Tensor  # (M,) ZIG row of each position


@dataclass
class PrunePart:
    """How to remove rows physically: ``prune_fn(module, channels of the rows)``, channels in root coordinates.

    ``channels`` is (rows, per_row). ``kind`` is "tp" (torch-pruning group rooted at ``module`` with
    ``handler``) or "heads" (multi-head attention, handled in ``subnet``).
    """

    kind: str
    module: nn.Module
    handler: object
    channels: torch.Tensor  # (rows, per_row)


@dataclass
class ZIG:
    """One zero-invariant group: ``num_rows`` rows, each removed as a whole when all its variables are zero."""

    id: int
    name: str
    kind: str  # "channels" | "conv-groups" | "heads"
    num_rows: int
    unit: int  # channels per row (1, the conv-group size, the head size)
    slices: list[ParamSlice]
    parts: list[PrunePart]
    modules: list[str]
    prunable: bool = True
    reasons: list[str] = field(default_factory=list)
    consumers: list[ParamSlice] = field(default_factory=list)  # input columns of the layers fed (cost only)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def params(self) -> list[str]:
        return sorted({s.name for s in self.slices})

    @property
    def row_size(self) -> int:
        """Variables per row."""
        total = 0
        for s in self.slices:
            total += s.index.numel() * (s.param.numel() // s.param.shape[s.dim])
        return total // max(1, self.num_rows)

    def mark_unprunable(self, reason: str) -> None:
        self.prunable = False
        if reason not in self.reasons:
            self.reasons.append(reason)

    def as_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "kind": self.kind, "rows": self.num_rows, "unit": self.unit,
                "row_size": self.row_size, "params": self.params, "modules": self.modules,
                "prunable": self.prunable, "reason": self.reason}

    @torch.no_grad()
    def row_norms(self) -> torch.Tensor:
        """‖x_g‖ of every row, (num_rows,)."""
        return row_sq_sums(self.slices, [s.param.data for s in self.slices], self.num_rows).sqrt()

    @torch.no_grad()
    def zero_rows(self, rows: torch.Tensor) -> None:
        """Set every variable of ``rows`` to zero, in place."""
        mask = torch.zeros(self.num_rows, dtype=torch.bool)
        mask[rows] = True
        for s in self.slices:
            pick = mask[s.row]
            if pick.any():
                s.param.data.index_fill_(s.dim, s.index[pick].to(s.param.device), 0.0)


def row_sq_sums(slices: list[ParamSlice], tensors: list[torch.Tensor], num_rows: int) -> torch.Tensor:
    """Σ over each row's variables of ``t**2``: the squared row norms of ``tensors`` (one per slice), (num_rows,)."""
    return row_dots(slices, tensors, tensors, num_rows)


def row_dots(slices: list[ParamSlice], a: list[torch.Tensor], b: list[torch.Tensor], num_rows: int) -> torch.Tensor:
    """⟨a_g, b_g⟩ for every row g; ``a``/``b`` hold one full-size tensor per slice, (num_rows,)."""
    out = torch.zeros(num_rows, dtype=torch.float64)
    for s, ta, tb in zip(slices, a, b, strict=True):
        idx = s.index.to(ta.device)
        pa = ta.index_select(s.dim, idx).movedim(s.dim, 0).reshape(len(idx), -1)  # (M, rest)
        pb = pa if tb is ta else tb.index_select(s.dim, idx).movedim(s.dim, 0).reshape(len(idx), -1)
        out.index_add_(0, s.row, (pa.double() * pb.double()).sum(1).cpu())
    return out


@torch.no_grad()
def row_macs(model: nn.Module, example_inputs, zigs: list[ZIG]) -> dict[int, torch.Tensor]:
    """Multiply-accumulates per sample that each ZIG row carries, ``{zig.id: (num_rows,) float64}``.

    A weight element of a convolution or linear layer costs one MAC per output position (a Conv2d weight:
    H_out x W_out; a Linear weight: one per token), measured with forward hooks on ``example_inputs``
    (its batch divided out). A row's cost sums the elements of its producer rows and of the input columns it
    feeds (``ZIG.consumers``); removing two adjacent rows double-counts the MACs they share (an estimate for
    ranking, not a figure: the subnet's MACs are counted after construction). Rows whose weights the hooks
    do not see (functional attention, custom operators) get the mean cost of the rows that were seen.
    """
    positions: dict[str, int] = {}
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

    def hook(name: str):
        def record(module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 1:
                batch = output.shape[0] if output.dim() > 1 else 1
                channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
                positions[name] = output.numel() // max(1, batch * channels)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        model(*(example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    costs: dict[int, torch.Tensor] = {}
    seen: list[torch.Tensor] = []
    for z in zigs:
        c = torch.zeros(z.num_rows, dtype=torch.float64)
        for s in [*z.slices, *z.consumers]:
            module, _, leaf = s.name.rpartition(".")
            if leaf != "weight" or module not in positions:
                continue
            per = s.param.numel() // s.param.shape[s.dim] * positions[module]
            c.index_add_(0, s.row, torch.full((s.row.numel(),), float(per), dtype=torch.float64))
        costs[z.id] = c
        seen.append(c[c > 0])
    known = torch.cat(seen) if seen else torch.zeros(0, dtype=torch.float64)
    fill = float(known.mean()) if known.numel() else 1.0
    for c in costs.values():
        c[c == 0] = fill
    return costs


# ---- torch-pruning custom pruners for our own modules --------------------------------------------------


def _tvconv_pruner():
    import torch_pruning as tp

    class TVConvPruner(tp.pruner.function.BasePruningFunc):
        """TVConv is depthwise: channel c uses kernel rows c*k^2 .. c*k^2 + k^2 - 1 of its weight block's last conv."""

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.channels)) - set(int(i) for i in idxs))
            k2 = layer.kernel_size**2
            rows = torch.tensor([c * k2 + t for c in keep for t in range(k2)], dtype=torch.long)
            if layer.weight_block is not None:
                last = layer.weight_block[-1]
                last.weight = nn.Parameter(last.weight.data.index_select(0, rows.to(last.weight.device)).clone())
                last.out_channels = len(rows)
            if layer.fused_weight is not None:
                layer.fused_weight = layer.fused_weight[:, keep].clone()
            layer.channels = len(keep)
            layer._cache, layer._cache_key = None, None
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.channels

        def get_in_channels(self, layer):
            return layer.channels

    return TVConvPruner()


def _tvconv_slices(module, name: str, idx: list[int], rows: list[int]) -> list[ParamSlice]:
    if module.weight_block is None:
        return []
    k2 = module.kernel_size**2
    last_i = len(module.weight_block) - 1
    index = torch.tensor([c * k2 + t for c in idx for t in range(k2)], dtype=torch.long)
    row = torch.tensor([r for r in rows for _ in range(k2)], dtype=torch.long)
    return [ParamSlice(f"{name}.weight_block.{last_i}.weight", module.weight_block[last_i].weight, 0, index, row)]


def custom_pruners() -> dict:
    """``{module class: torch-pruning pruner}`` for edgecompress's own modules (TVConv)."""
    from edgecompress.nas.tvconv import TVConv

    return {TVConv: _tvconv_pruner()}


# ---- the partition ------------------------------------------------------------------------------------


def _op_name(node) -> str:
    fn = node.grad_fn
    return type(fn).__name__ if fn is not None else ""


def _base(name: str) -> str:
    return re.sub(r"\d+$", "", name)


def _producer_slices(node, name: str, idx: list[int], rows: list[int]) -> tuple[list[ParamSlice], str | None]:
    """Param slices of a module whose out channels ``idx`` are in the group, or a reason it breaks zero-invariance."""
    import torch_pruning as tp

    m = node.module
    T = tp.ops.OPTYPE
    index = torch.tensor(idx, dtype=torch.long)
    row = torch.tensor(rows, dtype=torch.long)
    out: list[ParamSlice] = []

    def add(pname: str, dim: int) -> None:
        p = getattr(m, pname, None)
        if isinstance(p, nn.Parameter):
            out.append(ParamSlice(f"{name}.{pname}", p, dim, index, row))

    if node.type in (T.CONV, T.DEPTHWISE_CONV):
        add("weight", 1 if m.transposed else 0)
        add("bias", 0)
    elif node.type == T.LINEAR:
        add("weight", 0)
        add("bias", 0)
    elif node.type == T.BN:
        if not m.affine:
            return [], f"{name}: batch norm without affine parameters maps 0 to -mean/std"
        add("weight", 0)
        add("bias", 0)
    elif node.type == T.IN:
        add("weight", 0)
        add("bias", 0)
    elif node.type == T.GN:
        if m.num_groups != m.num_channels:
            per = m.num_channels // m.num_groups
            return [], f"{name}: GroupNorm with {per} channels per group normalises across channels"
        add("weight", 0)
        add("bias", 0)
    elif node.type == T.LN:
        return [], f"{name}: LayerNorm normalises over the channels"
    elif node.type == T.PRELU:
        if m.num_parameters > 1:
            add("weight", 0)
    elif node.type == T.EMBED:
        add("weight", 1)
    elif node.type == T.CUSTOMIZED:
        from edgecompress.nas.tvconv import TVConv

        if isinstance(m, TVConv):
            return _tvconv_slices(m, name, idx, rows), None
        return [], f"{name}: custom module {type(m).__name__} has no known zero-invariance rule"
    elif node.type == T.MHA:
        return [], f"{name}: embedding channels of multi-head attention (attention is pruned by whole heads instead)"
    elif node.type == T.PARAMETER:
        return [], f"{name}: a standalone nn.Parameter acts on these channels (effect on zeros unknown)"
    elif node.type == T.LSTM:
        return [], f"{name}: LSTM mixes channels"
    return out, None


def _matmul_weight(grad_fn) -> nn.Parameter | None:
    """The parameter W of an ``addmm``/``mm`` node computing x @ W.t() (a Linear's own product), else None."""
    for nf, _ in grad_fn.next_functions:
        if nf is not None and type(nf).__name__.startswith("TBackward"):
            for leaf, _ in nf.next_functions:
                if leaf is not None and hasattr(leaf, "variable"):
                    return leaf.variable
    return None


def _elementwise_reason(node, consumer_weights: set[int]) -> str | None:
    op = _op_name(node)
    base = _base(op)
    if base in ("AddmmBackward", "MmBackward"):
        # torch-pruning may list a Linear's own x @ W.t() as a separate node before the Linear (its consumer)
        w = _matmul_weight(node.grad_fn)
        if w is not None and id(w) in consumer_weights:
            return None
    if op in LINEAR_COMBINATION_OPS:
        missing = [nf for nf, _ in node.grad_fn.next_functions if nf is None]
        if missing:
            return f"{op}: adds a tensor that is not computed from parameters (the raw model input or a buffer)"
        return None
    if op in SCALING_OPS:
        return None
    if base in ZERO_INVARIANT_OPS:
        return None
    if base in KNOWN_UNSAFE:
        return f"{op}: {KNOWN_UNSAFE[base]}"
    return f"{op or 'unnamed op'}: not known to map zero to zero per channel"


def _pairs(item) -> list[tuple[int, int]] | None:
    """(index in the item's layer, index in the root layer) for every index of a torch-pruning group item."""
    roots = getattr(item, "root_idxs", None)
    if roots is None or any(r is None for r in roots):
        return None
    return [(int(i), int(r)) for i, r in zip(item.idxs, roots, strict=True)]


def _shared_params(model: nn.Module) -> dict[int, list[str]]:
    owners: dict[int, set[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), set()).add(f"{mname}.{pname}" if mname else pname)
    return {k: sorted(v) for k, v in owners.items() if len(v) > 1}


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _is_grouped_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups != m.out_channels


@contextlib.contextmanager
def _tvconv_weights_frozen(model: nn.Module) -> Iterator[None]:
    """Trace TVConv with its generated kernels as constants, so the graph holds x -> TVConv -> y only.

    The kernels' generating block (convs + LayerNorm) is internal to TVConv and pruned with it by
    ``TVConvPruner``; tracing through it would couple unrelated channels.
    """
    from edgecompress.nas.tvconv import TVConv

    frozen = [m for m in model.modules() if isinstance(m, TVConv) and m.fused_weight is None]
    with torch.no_grad():
        for m in frozen:
            m.fused_weight = m.generate_weight().detach()
    try:
        yield
    finally:
        for m in frozen:
            m.fused_weight = None


def build_dependency_graph(model: nn.Module, example_inputs):
    """torch-pruning's ``DependencyGraph`` of ``model`` with our custom pruners; a clear error if tracing fails."""
    import torch_pruning as tp

    try:
        with torch.enable_grad(), _tvconv_weights_frozen(model):
            return tp.DependencyGraph().build_dependency(
                model, example_inputs, customized_pruners=custom_pruners(), verbose=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the user's model; name it
        raise BadInputError(f"cannot trace {type(model).__name__} with torch-pruning's dependency graph: "
                            f"{type(exc).__name__}: {exc}") from exc


def partition(model: nn.Module, example_inputs) -> tuple[list[ZIG], object]:
    """The ZIG partition of ``model``: every torch-pruning group, checked for zero-invariance, plus attention heads.

    Returns ``(zigs, dependency_graph)``. Groups that are not zero-invariant stay in the list with
    ``prunable=False`` and their ``reasons``.
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    DG = build_dependency_graph(model, example_inputs)
    model.train(was_training)
    name_of = DG._module2name
    shared = _shared_params(model)
    tp_groups = list(DG.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)))

    # per torch-pruning group: its rows (unit 1 by default) and its facts
    infos = []
    for g in tp_groups:
        root_item = g[0]
        n = len(root_item.idxs)
        info = {"group": g, "n": n, "row_of": list(range(n)), "unit": 1, "reasons": [], "slices": [], "modules": [],
                "grouped_in": [], "grouped_out": [], "consumers": []}
        producers = []
        consumer_weights = {id(it.dep.target.module.weight) for it in g.items
                            if not DG.is_out_channel_pruning_fn(it.dep.handler)
                            and isinstance(it.dep.target.module, nn.Linear)}
        for item in g.items:
            node = item.dep.target
            mod = node.module
            out_fn = DG.is_out_channel_pruning_fn(item.dep.handler)
            mname = name_of.get(mod, node.name) if not isinstance(mod, nn.Parameter) else node.name
            pairs = _pairs(item)
            if pairs is None:
                info["reasons"].append(f"{mname}: index mapping without root indices")
                continue
            if node.type == tp.ops.OPTYPE.ELEMENTWISE:
                reason = _elementwise_reason(node, consumer_weights)
                if reason:
                    info["reasons"].append(reason)
                if not node.outputs and out_fn:
                    info["reasons"].append("reaches a model output")
                continue
            if isinstance(mod, nn.Module):
                for _pname, p in mod.named_parameters(recurse=False):
                    if id(p) in shared:
                        info["reasons"].append(f"parameter shared by {', '.join(shared[id(p)])}")
                        break
                if _is_grouped_conv(mod):
                    (info["grouped_out"] if out_fn else info["grouped_in"]).append((mod, item))
                elif not out_fn and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                    # the input columns this group removes from the layers it feeds (for row_macs; zeroing the
                    # producer rows already makes them irrelevant, so DHSPG never touches them)
                    info["consumers"].append(ParamSlice(f"{mname}.weight", mod.weight, 1,
                                                        torch.tensor([i for i, _ in pairs], dtype=torch.long),
                                                        torch.tensor([r for _, r in pairs], dtype=torch.long)))
            if out_fn and node.type not in (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE,
                                            tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND):
                if not node.outputs:
                    info["reasons"].append(f"{mname}: reaches a model output")
                producers.append((node, mname, item))
            elif node.type in (tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.SLICE,
                               tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND) and not node.outputs:
                info["reasons"].append("reaches a model output")
        for node, mname, item in producers:
            pairs = _pairs(item)
            idx = [i for i, _ in pairs]
            roots = [r for _, r in pairs]
            slices, reason = _producer_slices(node, mname, idx, roots)
            if reason:
                info["reasons"].append(reason)
            info["slices"] += slices
            if mname not in info["modules"]:
                info["modules"].append(mname)
        infos.append(info)

    # grouped convs: merge the groups of their input and output channels, one row per conv group
    uf = _UnionFind(len(infos))
    partitions: dict[int, list] = {}
    conv_sides: dict[nn.Module, dict] = {}
    for k, info in enumerate(infos):
        for mod, item in info["grouped_in"]:
            conv_sides.setdefault(mod, {})["in"] = (k, item)
        for mod, item in info["grouped_out"]:
            conv_sides.setdefault(mod, {})["out"] = (k, item)
    for mod, sides in conv_sides.items():
        mname = name_of.get(mod, "?")
        if "in" not in sides or "out" not in sides:
            for k, _ in sides.values():
                infos[k]["reasons"].append(f"{mname}: grouped conv whose input channels cannot be pruned")
            continue
        (ki, item_in), (ko, item_out) = sides["in"], sides["out"]
        uf.union(ki, ko)
        sides_rows = ((ki, item_in, mod.in_channels // mod.groups), (ko, item_out, mod.out_channels // mod.groups))
        for k, item, per in sides_rows:
            row_of = [-1] * infos[k]["n"]
            for i, r in _pairs(item):
                row_of[r] = i // per
            if -1 in row_of:
                infos[k]["reasons"].append(f"{mname}: grouped conv covers only part of the group's channels")
            prev = partitions.get(k)
            if prev is not None and prev[0] != row_of:
                infos[k]["reasons"].append(f"{mname}: conflicting conv-group structures in one group")
            partitions[k] = (row_of, per, mod.groups)

    zigs: list[ZIG] = []
    members: dict[int, list[int]] = {}
    for k in range(len(infos)):
        members.setdefault(uf.find(k), []).append(k)
    for ks in members.values():
        reasons, slices, parts, modules, consumers = [], [], [], [], []
        rows_counts = set()
        for k in ks:
            info = infos[k]
            row_of, unit, nrows = partitions.get(k, (info["row_of"], 1, info["n"]))
            rows_counts.add(nrows)
            reasons += info["reasons"]
            remap = torch.tensor([max(r, 0) for r in row_of], dtype=torch.long)
            for s in info["slices"]:
                slices.append(ParamSlice(s.name, s.param, s.dim, s.index, remap[s.row]))
            for s in info["consumers"]:
                consumers.append(ParamSlice(s.name, s.param, s.dim, s.index, remap[s.row]))
            chans = torch.full((nrows, unit), -1, dtype=torch.long)
            fill = [0] * nrows
            for c, r in enumerate(row_of):
                if r >= 0 and fill[r] < unit:
                    chans[r, fill[r]] = c
                    fill[r] += 1
            root = info["group"][0]
            parts.append(PrunePart("tp", root.dep.target.module, root.dep.handler, chans))
            modules += [m for m in info["modules"] if m not in modules]
        kind = "conv-groups" if len(ks) > 1 or any(k in partitions for k in ks) else "channels"
        if len(rows_counts) != 1:
            reasons.append("merged groups disagree on the number of conv groups")
        num_rows = max(rows_counts)
        unit = max(int(p.channels.shape[1]) for p in parts)
        z = ZIG(len(zigs), modules[0] if modules else f"group{len(zigs)}", kind, num_rows, unit, slices, parts, modules,
                consumers=consumers)
        if any((p.channels < 0).any() for p in parts):
            z.mark_unprunable("rows of unequal size")
        for r in dict.fromkeys(reasons):
            z.mark_unprunable(r)
        if not slices and z.prunable:
            z.mark_unprunable("no parameters act on these channels")
        if z.prunable and num_rows < 2:
            z.mark_unprunable("a single row (removing it would leave an empty layer)")
        zigs.append(z)

    zigs += _attention_zigs(model, len(zigs), shared)
    _check_disjoint(zigs)
    return zigs, DG


def _attention_zigs(model: nn.Module, start: int, shared: dict[int, list[str]]) -> list[ZIG]:
    """One ZIG per ``nn.MultiheadAttention``: rows = heads (q, k, v rows of the head and their biases)."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.MultiheadAttention):
            continue
        h, e = m.num_heads, m.embed_dim
        d = e // h
        z = ZIG(start + len(out), name, "heads", h, d, [], [PrunePart("heads", m, None, torch.arange(e).view(h, d))],
                [name])
        if not m._qkv_same_embed_dim or m.in_proj_weight is None:
            z.mark_unprunable(f"{name}: separate q/k/v projection weights are not supported")
        elif m.bias_k is not None or m.add_zero_attn:
            z.mark_unprunable(f"{name}: bias_k/bias_v or add_zero_attn attend to non-zero keys")
        else:
            base = torch.arange(e)
            index = torch.cat([base, base + e, base + 2 * e])  # q, k, v rows
            row = (base // d).repeat(3)
            z.slices.append(ParamSlice(f"{name}.in_proj_weight", m.in_proj_weight, 0, index, row))
            if m.in_proj_bias is not None:
                z.slices.append(ParamSlice(f"{name}.in_proj_bias", m.in_proj_bias, 0, index, row))
            for p in (m.in_proj_weight, m.out_proj.weight):
                if id(p) in shared:
                    z.mark_unprunable(f"parameter shared by {', '.join(shared[id(p)])}")
            if h < 2:
                z.mark_unprunable("a single head")
        out.append(z)
    return out


def _check_disjoint(zigs: list[ZIG]) -> None:
    """A variable belongs to at most one prunable ZIG; groups that overlap are made unprunable."""
    seen: dict[tuple[int, int, int], int] = {}
    for z in zigs:
        if not z.prunable:
            continue
        for s in z.slices:
            for i in s.index.tolist():
                key = (id(s.param), s.dim, i)
                other = seen.get(key)
                if other is not None and other != z.id:
                    z.mark_unprunable(f"{s.name}[{i}] also belongs to group {other}")
                    zigs[other].mark_unprunable(f"{s.name}[{i}] also belongs to group {z.id}")
                seen[key] = z.id
