"""The OTO API (familiar to only-train-once users) and the one-call ``prune``.

>>> import torch, edgecompress as ec
>>> model = ec.zoo.create("resnet_cifar_tiny")
>>> oto = ec.OTO(model, torch.randn(1, 3, 32, 32))
>>> oto.random_zero_groups(0.5, seed=0) > 0
True
>>> subnet = oto.construct_subnet()       # checked: outputs equal within rel. err 1e-5
>>> oto.compute_num_params(compressed=True) < oto.compute_num_params()
True

One call: ``ec.prune(model, example, train_loader, ec.OTOv2Config(target_group_sparsity=0.5), val_loader)``
trains with DHSPG, constructs and checks the subnet, and returns ``Result(subnet, report)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from edgecompress.compress.otov2.dhspg import DHSPG, VARIANTS
from edgecompress.compress.otov2.subnet import construct
from edgecompress.compress.otov2.zig import ZIG, partition, row_macs
from edgecompress.compress.result import Result
from edgecompress.errors import BadInputError


class OTO:
    """Zero-invariant groups of ``model`` (traced on ``example_inputs``), the DHSPG optimizer and the subnet."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor | tuple) -> None:
        if not isinstance(model, nn.Module):
            raise BadInputError(f"OTO: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.example_inputs = example_inputs
        self.groups: list[ZIG]
        self.groups, self.dependency_graph = partition(model, example_inputs)
        self.subnet: nn.Module | None = None
        self.last_construction: dict | None = None

    @property
    def prunable_groups(self) -> list[ZIG]:
        return [z for z in self.groups if z.prunable]

    def _require_prunable(self) -> list[ZIG]:
        groups = self.prunable_groups
        if not groups:
            why = "; ".join(f"{z.name}: {z.reason}" for z in self.groups) or "no conv/linear layer found"
            raise BadInputError(f"{type(self.model).__name__} has no prunable group ({why})")
        return groups

    def dhspg(self, **hyperparameters) -> DHSPG:
        """A ``DHSPG`` optimizer over all of the model's parameters (see ``dhspg.DHSPG`` for the options)."""
        self._require_prunable()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if hyperparameters.get("macs_exponent") and hyperparameters.get("row_costs") is None:
            hyperparameters["row_costs"] = row_macs(self.model, self.example_inputs, self.prunable_groups)
        return DHSPG(params, self.groups, **hyperparameters)

    @torch.no_grad()
    def random_zero_groups(self, target_group_sparsity: float = 0.5, seed: int = 0) -> int:
        """Zero a random ``target_group_sparsity`` fraction of the prunable rows; returns how many.

        Every group keeps at least one row.

        The sanity check of zero-invariance: afterwards ``construct_subnet()`` must reproduce the outputs.
        """
        if not 0.0 < target_group_sparsity < 1.0:
            raise BadInputError(f"target_group_sparsity={target_group_sparsity}: must lie in (0, 1)")
        groups = self._require_prunable()
        gen = torch.Generator().manual_seed(seed)
        total = 0
        for z in groups:
            k = min(z.num_rows - 1, int(round(target_group_sparsity * z.num_rows)))
            if k > 0:
                z.zero_rows(torch.randperm(z.num_rows, generator=gen)[:k])
                total += k
        return total

    def group_sparsity(self) -> float:
        """Fraction of prunable rows whose variables are all zero."""
        groups = self.prunable_groups
        rows = sum(z.num_rows for z in groups)
        zero = sum(int((z.row_norms() == 0).sum()) for z in groups)
        return zero / rows if rows else 0.0

    def construct_subnet(self, check_inputs=None, rtol: float = 1e-5) -> nn.Module:
        """The compact model without the zero rows, checked against the group-sparse model.

        Raises ``CheckFailedError`` past ``rtol``.
        """
        self.subnet, self.last_construction = construct(self.model, self.groups, self.example_inputs, rtol,
                                                        check_inputs)
        return self.subnet

    def _target(self, compressed: bool) -> nn.Module:
        if not compressed:
            return self.model
        if self.subnet is None:
            raise BadInputError("no subnet yet: call construct_subnet() first")
        return self.subnet

    def compute_flops(self, compressed: bool = False) -> int:
        """FLOPs of one sample = 2 x MACs counted by torch-pruning's counter (source: counted)."""
        from edgecompress.compress.stats import model_stats

        return 2 * model_stats(self._target(compressed), _first(self.example_inputs))["macs"]

    def compute_num_params(self, compressed: bool = False) -> int:
        """Number of parameters (unique tensors) of the full model, or of the subnet with ``compressed=True``."""
        return sum(p.numel() for p in self._target(compressed).parameters())

    def summary(self) -> dict:
        groups = self.groups
        return {"groups": len(groups), "prunable": sum(z.prunable for z in groups),
                "prunable_rows": sum(z.num_rows for z in groups if z.prunable),
                "left_alone": [{"name": z.name, "reason": z.reason} for z in groups if not z.prunable]}


def _first(example):
    return example[0] if isinstance(example, (tuple, list)) else example


@dataclass(frozen=True)
class OTOv2Config:
    """Settings of ``prune``: DHSPG hyperparameters plus the training budget.

    Pruning starts (one-time partition) after ``start_pruning_fraction`` of the steps; with
    ``force_project_fraction`` set, the zero rows are raised linearly to the target by that point (see
    ``dhspg.forced_quota``), so the rest of training recovers with the final widths. ``epsilon`` 0.9 follows
    the OTOv2 tutorials. ``max_group_sparsity`` (ours) keeps at least a quarter of every group by default.
    ``warmup_epochs``: linear learning-rate warm-up before the cosine decay, as in ``TrainConfig``.
    ``macs_exponent`` (ours; 0 = the paper): rank rows for pruning by score x (row MACs / mean) ** exponent,
    so the rows removed are the ones that cost compute (see ``dhspg``).
    """

    target_group_sparsity: float = 0.5
    epochs: int = 10
    variant: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    epsilon: float = 0.9
    lmbda: float | None = None
    tolerance_group_sparsity: float = 0.05
    start_pruning_fraction: float = 0.1
    force_project_fraction: float | None = 0.4
    group_divisible: int = 1
    max_group_sparsity: float = 0.75
    warmup_epochs: float = 0.0
    macs_exponent: float = 0.0
    rtol: float = 1e-5
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.target_group_sparsity < 1.0:
            raise ValueError(f"target_group_sparsity={self.target_group_sparsity}: must lie in (0, 1)")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: must be >= 1")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}: choose one of {VARIANTS}")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon={self.epsilon}: must lie in [0, 1)")
        if not 0.0 <= self.start_pruning_fraction < 1.0:
            raise ValueError(f"start_pruning_fraction={self.start_pruning_fraction}: must lie in [0, 1)")
        if self.force_project_fraction is not None and not (
                self.start_pruning_fraction <= self.force_project_fraction <= 1.0):
            raise ValueError(f"force_project_fraction={self.force_project_fraction}: must lie in "
                             f"[start_pruning_fraction, 1] or be None")
        if self.group_divisible < 1:
            raise ValueError(f"group_divisible={self.group_divisible}: must be >= 1")
        if not 0.0 < self.max_group_sparsity <= 1.0:
            raise ValueError(f"max_group_sparsity={self.max_group_sparsity}: must lie in (0, 1]")
        if self.rtol <= 0:
            raise ValueError(f"rtol={self.rtol}: must be > 0")
        if self.macs_exponent < 0:
            raise ValueError(f"macs_exponent={self.macs_exponent}: must be >= 0")
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs}: must lie in [0, epochs={self.epochs})")


def prune(model: nn.Module, example_inputs: torch.Tensor, train_data, config: OTOv2Config = OTOv2Config(),
          val_data=None) -> Result:
    """Train ``model`` once with DHSPG on ``train_data`` and return the checked compact subnet.

    ``train_data``/``val_data`` are DataLoaders of ``(x, y)`` batches (classification, cross-entropy).
    The report holds the achieved group sparsity, params and MACs before/after (counted), the subnet
    check's relative error, validation accuracy of the group-sparse model and of the subnet, the groups
    left alone with their reasons, and the per-epoch log.
    """
    from edgecompress.compress.stats import model_stats
    from edgecompress.compress.train import TrainConfig, evaluate, train

    if not isinstance(config, OTOv2Config):
        raise BadInputError(f"prune: config must be an OTOv2Config, got {type(config).__name__}")
    try:
        steps_per_epoch = len(train_data)
    except TypeError:
        raise BadInputError("prune: train_data must be a DataLoader (or a sized iterable of (x, y) batches)") from None
    if steps_per_epoch == 0:
        raise BadInputError("prune: train_data is empty")
    start = time.perf_counter()
    example = _first(example_inputs)
    oto = OTO(model, example_inputs)
    oto._require_prunable()
    dense = model_stats(model, example)
    total = config.epochs * steps_per_epoch
    opt = oto.dhspg(
        lr=config.lr, variant=config.variant, lmbda=config.lmbda, epsilon=config.epsilon,
        weight_decay=config.weight_decay, target_group_sparsity=config.target_group_sparsity,
        tolerance_group_sparsity=config.tolerance_group_sparsity,
        start_pruning_step=int(config.start_pruning_fraction * total),
        force_project_step=(None if config.force_project_fraction is None
                            else int(config.force_project_fraction * total)),
        group_divisible=config.group_divisible, max_group_sparsity=config.max_group_sparsity,
        macs_exponent=config.macs_exponent)
    tcfg = TrainConfig(epochs=config.epochs, optimizer="adamw" if config.variant != "sgd" else "sgd", lr=config.lr,
                       weight_decay=config.weight_decay, seed=config.seed, progress=config.progress,
                       warmup_epochs=config.warmup_epochs)
    logs = train(model, train_data, val_data, tcfg, optimizer=opt, desc="dhspg")
    model.eval()
    check = example
    if val_data is not None:
        check = next(iter(val_data))[0][:16]
    subnet = oto.construct_subnet(check_inputs=check, rtol=config.rtol)
    pruned = model_stats(subnet, example)
    report = {
        "method": "OTOv2 (ZIGs on torch-pruning's dependency graph + DHSPG)",
        "config": asdict(config),
        "target_group_sparsity": config.target_group_sparsity,
        "group_sparsity": opt.group_sparsity,
        "zero_rows": opt.num_zero_rows, "prunable_rows": opt.num_rows,
        "groups": oto.summary(),
        "dense": dense, "pruned": pruned,
        "params_ratio": pruned["params"] / dense["params"], "macs_ratio": pruned["macs"] / dense["macs"],
        "stats_source": "counted (torch-pruning count_ops_and_params, batch 1)",
        "construction": oto.last_construction,
        "epochs": [asdict(log) for log in logs],
        "seconds": time.perf_counter() - start,
    }
    odd = unaligned_convs(subnet)
    if odd and config.group_divisible % 8:
        report["notes"] = [
            f"{len(odd)} convolutions keep channel counts that are not multiples of 8 ({', '.join(odd[:3])}"
            f"{', ...' if len(odd) > 3 else ''}): onnxruntime's blocked (NCHWc) CPU kernels need multiples of 8 "
            "(AVX2) or 16 (AVX-512) and run the others, depthwise ones especially, far slower; measured here, a "
            "MobileNetV2 subnet with 2.6x fewer MACs ran 0.69x as fast as the dense model "
            "(bench/otov2/README.md). Use group_divisible=8 (--group-divisible 8) for CPU deployment."]
    if val_data is not None:
        report["val_accuracy_group_sparse"] = evaluate(model, val_data)
        report["val_accuracy"] = evaluate(subnet, val_data)
    return Result(subnet, report)


def unaligned_convs(model: nn.Module, multiple: int = 8) -> list[str]:
    """Names of the convolutions whose input or output channel count (beyond 4) is not a multiple of ``multiple``."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
            and any(c > 4 and c % multiple for c in (m.in_channels, m.out_channels))]
