"""``vq(model, train_data, LR2VQConfig(...), val_data=None) -> Result``: LR²VQ or plain PQ, end to end.

The stateful shell around the pure pieces (kmeans.py, estimate.py, accounting.py) and the block
(block.py): it plans which layers are quantised, picks ``d``, runs the three training phases with the
project's training loop (``compress.train.train``), freezes the model to its stored precision and
reports accuracy and exact sizes. ``write_artifacts`` writes the compact checkpoint, both ONNX files and
``report.json``.

Per-layer policy (each decision is a line in ``report["layers"]``):
- every ``nn.Conv2d`` and ``nn.Linear`` is a candidate, wherever it sits (zoo widths are never assumed:
  a pruned model is just a module with other shapes);
- sub-vectors are cut along the input dimension of each output row when ``m`` divides the row length
  ``L = C_in/groups * kh * kw`` (``in_features`` for Linear); when it does not but divides the number of
  weights (depthwise 3x3, L = 9; a 3-channel first conv, L = 27) they are consecutive elements of the
  flattened weight and straddle rows (a note says so); when ``m`` divides neither, the layer is left
  uncompressed and stored in fp16;
- with ``N`` sub-vectors, a layer uses ``k_l = k`` when ``k <= N / s`` (``s = subvectors_per_code``,
  default 4), else the largest power of two ``<= N / s`` (a codebook nearly as large as the data keeps
  little and costs much); ``k_l < min(k, 16)`` leaves it uncompressed (a handful of codewords for a
  tiny layer, e.g. MobileNetV2's first 16 -> 8 projection, costs accuracy for a few bytes);
- a layer whose quantised size is not at least ``min_saving`` (default 2) times smaller than its fp16
  size is left uncompressed (tiny layers: little to gain, much accuracy to lose);
- names in ``config.exclude`` are left uncompressed.

Schedule (``epochs`` split into lowrank ``e//4``, soft ``e - 2(e//4)``, hard ``e//4``): low-rank
training of (P, Z) from the truncated SVD; k-means of Z; DKM soft assignment with the temperature
annealed geometrically ``tau_t = tau_0 (tau_1/tau_0)^(t/T)`` (relative to each layer's mean squared
distance to its nearest centroid at the k-means init); hard codes with codebook and projection
fine-tuned. ``method="pq"`` runs the same schedule with ``d = m`` and ``P = I`` fixed: the first phase
then fine-tunes the raw weights, the rest is DKM on raw sub-vectors ("vanilla DKM"; with ``epochs=0``
it is plain k-means PQ as in BGD/PQF without the permutation).

Distillation (``distill > 0``): every phase trains on ``(1 - distill) CE + distill T^2 KL(teacher_T || student_T)``
with the uncompressed model, frozen in eval mode, as the teacher (BGD fine-tunes its codebooks by distilling
the uncompressed network's outputs in the same way). It costs one teacher forward per step.

>>> result = vq(model, train_loader, LR2VQConfig(k=64, m=16, epochs=4), val_data=val_loader)  # doctest: +SKIP
>>> result.report["accounting"]["ratio"]                                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from edgecompress.compress.lr2vq.accounting import (
    FLOAT_BITS,
    account,
    fold_batchnorm,
    grid8_tensors,
    quantise_folded_bn,
    stored_state,
    vq_layer_bits,
)
from edgecompress.compress.lr2vq.block import LR2VQLayer, row_length, to_subvectors
from edgecompress.compress.lr2vq.estimate import DEstimate, estimate_d
from edgecompress.compress.result import Result
from edgecompress.compress.train import TrainConfig, evaluate, train
from edgecompress.errors import BadInputError

METHODS = ("lr2vq", "pq")
MIN_CODEWORDS = 16  # a layer whose codebook would shrink below min(k, 16) codewords stays fp16


@dataclass(frozen=True)
class LR2VQConfig:
    """Settings of ``vq``.

    Args:
        k: codebook size per layer (codes take ``ceil(log2 k)`` bits).
        m: sub-vector size; sets the compression ratio.
        d: clustering dimensionality ``1 <= d <= m``; ``None`` estimates it from the weights
            (``estimate.estimate_d``). Ignored by ``method="pq"`` (d = m). With ``d = m`` there is no
            rank to reduce and the projection is the identity, fixed and not stored: LR²VQ is then PQ (a
            learned full-rank projection gave the same accuracy on MobileNetV2 at m=4, k=256 on the same data
            order, 94.17 % both, and costs m x m fp16 per layer).
        method: ``"lr2vq"`` or ``"pq"`` (the baseline: k-means on raw sub-vectors, P = I).
        epochs: total training epochs, split into low-rank / soft / hard phases (see module docstring).
        lr: AdamW learning rate of every phase (cosine-decayed within a phase).
        tau: (start, end) relative temperature of the soft phase.
        kmeans_iters: Lloyd iterations of the k-means init.
        d_candidates: the ``d`` values the estimate tries (default: ``estimate.default_candidates(m)``).
        exclude: module names left uncompressed.
        subvectors_per_code: a layer with N sub-vectors uses at most ``N / subvectors_per_code`` codewords.
        min_saving: a layer is quantised only if its fp16 size is at least ``min_saving`` times its
            quantised size (tiny layers cost little in fp16 and lose much accuracy when quantised).
        bn_bits: storage of each BatchNorm's folded scale and shift: 16 (fp16) or 8 (8-bit codes on a
            uniform per-tensor grid, ``accounting.quantise_folded_bn``; applied when the model is frozen).
        distill: weight of the distillation term in [0, 1] (0: cross-entropy only; 1: distillation only).
        distill_temperature: softmax temperature ``T`` of the distillation term.
        seed: seed of k-means and training.
        progress: show progress bars.
    """

    k: int = 256
    m: int = 16
    d: int | None = None
    method: str = "lr2vq"
    epochs: int = 4
    lr: float = 1e-3
    tau: tuple[float, float] = (1.0, 0.01)
    kmeans_iters: int = 25
    d_candidates: tuple[int, ...] | None = None
    exclude: tuple[str, ...] = ()
    subvectors_per_code: int = 4
    min_saving: float = 2.0
    bn_bits: int = 16
    distill: float = 0.0
    distill_temperature: float = 1.0
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.subvectors_per_code < 1:
            raise ValueError(f"subvectors_per_code={self.subvectors_per_code}: must be >= 1")
        if self.min_saving < 1.0:
            raise ValueError(f"min_saving={self.min_saving}: must be >= 1 (a layer must not grow)")
        if self.k < 2:
            raise ValueError(f"k={self.k}: must be >= 2")
        if self.m < 1:
            raise ValueError(f"m={self.m}: must be >= 1")
        if self.d is not None and not 1 <= self.d <= self.m:
            raise ValueError(f"d={self.d}: must lie in [1, m={self.m}] (d > m would not reduce the dimension)")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {METHODS}")
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs}: must be >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if len(self.tau) != 2 or not self.tau[0] > 0 or not self.tau[1] > 0:
            raise ValueError(f"tau={self.tau}: must be two positive temperatures (start, end)")
        if self.bn_bits not in (8, 16):
            raise ValueError(f"bn_bits={self.bn_bits}: choose 16 (fp16) or 8 (8-bit grid per tensor)")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill={self.distill}: must lie in [0, 1] (the weight of the distillation term)")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature={self.distill_temperature}: must be > 0")
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters={self.kmeans_iters}: must be >= 1")
        if self.d_candidates is not None and (not self.d_candidates or
                                              any(not 1 <= d <= self.m for d in self.d_candidates)):
            raise ValueError(f"d_candidates={self.d_candidates}: each must lie in [1, m={self.m}]")

    def phase_epochs(self) -> tuple[int, int, int]:
        """(low-rank, soft, hard) epochs."""
        side = self.epochs // 4
        return side, self.epochs - 2 * side, side


@dataclass
class LayerPlan:
    """One Conv2d/Linear: quantised (``k`` set) or left uncompressed (``reason`` set)."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    row_length: int
    n_subvectors: int | None = None
    k: int | None = None
    reason: str | None = None
    note: str | None = None

    @property
    def quantised(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["status"] = "quantised" if self.quantised else "uncompressed (fp16)"
        return out


def _pow2_floor(x: int) -> int:
    return 1 << (x.bit_length() - 1) if x >= 1 else 0


def plan_layers(model: nn.Module, config: LR2VQConfig) -> list[LayerPlan]:
    """The per-layer decisions of the module docstring (before ``d`` is known)."""
    plans = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        length = row_length(module)
        plan = LayerPlan(name, kind, tuple(module.weight.shape), length)
        if name in config.exclude:
            plan.reason = "excluded by config.exclude"
        elif isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            plan.reason = f"padding_mode={module.padding_mode!r} is not supported"
        elif module.weight.numel() % config.m:
            plan.reason = (f"m={config.m} divides neither the row length L={length} "
                           f"nor the {module.weight.numel()} weights")
        else:
            if length % config.m:
                plan.note = f"m={config.m} does not divide L={length}: sub-vectors straddle rows of the flat weight"
            plan.n_subvectors = module.weight.numel() // config.m
            cap = plan.n_subvectors // config.subvectors_per_code
            k = config.k if config.k <= cap else _pow2_floor(cap)
            if k < min(config.k, MIN_CODEWORDS):
                plan.reason = (f"only {plan.n_subvectors} sub-vectors: at most {max(k, 0)} codewords fit "
                               f"(fewer than min(k, {MIN_CODEWORDS}))")
            else:
                plan.k = k
        plans.append(plan)
    unknown = set(config.exclude) - {p.name for p in plans}
    if unknown:
        raise BadInputError(f"config.exclude names {sorted(unknown)}: not Conv2d/Linear modules of the model")
    if not plans:
        raise BadInputError("the model has no nn.Conv2d or nn.Linear layer to vector-quantise")
    return plans


def _note(plan: LayerPlan, config: LR2VQConfig) -> str | None:
    notes = [plan.note] if plan.note else []
    if plan.quantised and plan.k != config.k:
        cap = plan.n_subvectors // config.subvectors_per_code
        notes.append(f"k={config.k} > N/{config.subvectors_per_code} = {cap}: k={plan.k} for this layer")
    return "; ".join(notes) or None


def _size_check(plans: list[LayerPlan], modules: dict[str, nn.Module], m: int, d: int, identity: bool,
                min_saving: float) -> None:
    for plan in plans:
        if not plan.quantised:
            continue
        bias = modules[plan.name].bias
        nb = 0 if bias is None else bias.numel()
        bits = vq_layer_bits(plan.n_subvectors, plan.k, d, m, identity, nb)["total"]
        dense_bits = FLOAT_BITS * (plan.n_subvectors * m + nb)
        if bits * min_saving > dense_bits:
            plan.reason = (f"quantised size {bits / 8:.0f} B vs fp16 size {dense_bits // 8} B: saves less than "
                           f"min_saving={min_saving:g}x, not worth quantising")
            plan.k = None


def distillation_loss(teacher: nn.Module, weight: float, temperature: float):
    """``loss_fn(model, x, y)`` for ``train``: ``(1 - w) CE(y) + w T^2 KL(softmax(t/T) || softmax(s/T))``."""
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), target, log_target=True, reduction="batchmean")
        return (1.0 - weight) * F.cross_entropy(logits, y) + weight * temperature ** 2 * kd

    return loss_fn


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


@torch.no_grad()
def _to_stored_form(model: nn.Module, bn_bits: int = 16) -> None:
    """Freeze every block, fold BatchNorm statistics (to 8-bit grids with ``bn_bits=8``), round every other float
    tensor to fp16 values: the stored form."""
    for module in model.modules():
        if isinstance(module, LR2VQLayer):
            module.freeze()
    fold_batchnorm(model)
    if bn_bits == 8:
        quantise_folded_bn(model)
    grids = grid8_tensors(model)
    for key, tensor in stored_state(model).items():  # folded BatchNorm statistics (0, 1 - eps) are not stored
        if tensor.dtype == torch.float32 and key not in grids:
            tensor.copy_(tensor.half().float())


def vq(model: nn.Module, train_data: DataLoader, config: LR2VQConfig = LR2VQConfig(),
       val_data: DataLoader | None = None) -> Result:
    """Vector-quantise a copy of ``model`` (LR²VQ or PQ) and return it frozen with its report.

    The returned model is exactly what ``write_artifacts`` stores: fp16 codebooks/projections/other
    tensors and integer codes. Accuracies are measured on ``val_data`` (top-1, torch, CPU).
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise BadInputError(f"vq: model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).cpu().float()
    loss_fn = (distillation_loss(copy.deepcopy(model), config.distill, config.distill_temperature)
               if config.distill > 0 else None)
    plans = plan_layers(model, config)
    modules = dict(model.named_modules())
    quantised = [p for p in plans if p.quantised]
    if not quantised:
        reasons = "; ".join(f"{p.name}: {p.reason}" for p in plans)
        raise BadInputError(f"vq: no layer can be quantised with m={config.m}, k={config.k} ({reasons})")
    fp32_accuracy = evaluate(model, val_data) if val_data is not None else None
    identity = config.method == "pq"
    estimate: DEstimate | None = None
    if identity:
        d = config.m
    elif config.d is not None:
        d = config.d
    else:
        layers = [(p.name, to_subvectors(modules[p.name].weight.detach().float(), config.m), p.k) for p in quantised]
        estimate = estimate_d(layers, config.m, config.d_candidates, seed=config.seed)
        d = estimate.d
    identity = identity or d == config.m  # no rank to reduce: P = I, nothing stored (LR2VQConfig.d)
    _size_check(plans, modules, config.m, d, identity, config.min_saving)
    quantised = [p for p in plans if p.quantised]
    if not quantised:
        raise BadInputError(f"vq: with d={d} no layer gets smaller than fp16 ("
                            + "; ".join(f"{p.name}: {p.reason}" for p in plans) + ")")
    blocks = []
    for plan in quantised:
        block = LR2VQLayer(modules[plan.name], m=config.m, d=d, k=plan.k, identity=identity)
        _replace(model, plan.name, block)
        blocks.append(block)

    e_lr, e_soft, e_hard = config.phase_epochs()
    phases: dict[str, dict] = {}

    def run_phase(name: str, epochs: int, on_step=None) -> None:
        if epochs == 0:
            return
        tcfg = TrainConfig(epochs=epochs, optimizer="adamw", lr=config.lr, weight_decay=0.0, seed=config.seed,
                           progress=config.progress)
        t0 = time.perf_counter()
        logs = train(model, train_data, val_data, tcfg, loss_fn=loss_fn, on_step=on_step, desc=f"vq {name}")
        phases[name] = {"epochs": epochs, "seconds": round(time.perf_counter() - t0, 2),
                        "log": [log.__dict__ for log in logs]}

    run_phase("lowrank" if not identity else "pretrain", e_lr)
    kmeans_error = sum(b.start_clustering(config.kmeans_iters, config.seed) for b in blocks)
    total_steps = max(1, e_soft * len(train_data) - 1)
    tau0, tau1 = config.tau

    def anneal(step: int) -> None:
        rel = tau0 * (tau1 / tau0) ** min(1.0, (step + 1) / total_steps)
        for b in blocks:
            b.tau = rel * b.tau_scale

    anneal(-1)
    run_phase("soft", e_soft, on_step=anneal)
    for b in blocks:
        b.finish_clustering()
    run_phase("hard", e_hard)
    _to_stored_form(model, config.bn_bits)
    model.eval()
    accuracy = evaluate(model, val_data) if val_data is not None else None
    accounting = account(model)
    layer_lines = []
    for plan in plans:
        line = plan.as_dict()
        line["note"] = _note(plan, config)
        layer_lines.append(line)
    report = {
        "method": config.method,
        "config": asdict(config),
        "d": d,
        "d_source": "pq: d = m" if config.method == "pq" else ("config" if config.d is not None else "estimated"),
        "projection": "identity (d = m: LR²VQ is PQ here)" if identity and config.method != "pq"
        else ("identity" if identity else "learned, m x d"),
        "d_estimate": estimate.as_dict() if estimate is not None else None,
        "layers": layer_lines,
        "quantised_layers": len(quantised),
        "uncompressed_layers": len(plans) - len(quantised),
        "kmeans_error": kmeans_error,
        "phases": phases,
        "accounting": accounting,
        "ratio": accounting["ratio"],
        "fp32_val_accuracy": fp32_accuracy,
        "val_accuracy": accuracy,
        "accuracy_source": "measured: top-1 on val_data, torch eager on CPU, frozen (fp16-stored) model"
        if val_data is not None else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return Result(model=model, report=report)


def write_artifacts(result: Result, out_dir: str | Path, example: torch.Tensor, rtol: float = 1e-4) -> dict:
    """Write ``model.ecvq``, ``model_compact.onnx``, ``model_dense.onnx`` and ``report.json`` to ``out_dir``.

    Returns the files' report (bytes of each file, parity of each ONNX) and adds it to ``result.report``.
    """
    from edgecompress.compress.lr2vq.onnx_compact import export_compact_onnx, export_dense_onnx
    from edgecompress.compress.lr2vq.storage import load_compact, save_compact

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_compact(result.model, out / "model.ecvq", meta={"method": result.report.get("method"),
                                                                "d": result.report.get("d")})
    reference_bytes = result.report["accounting"]["reference_bytes"]
    ckpt["ratio_vs_fp32"] = reference_bytes / ckpt["bytes"]
    # reload check: the checkpoint must rebuild the same outputs
    reloaded = load_compact(out / "model.ecvq", _architecture_of(result.model))
    with torch.no_grad():
        same = torch.equal(reloaded(example), result.model.eval()(example))
    if not same:
        from edgecompress.errors import CheckFailedError

        raise CheckFailedError(f"{out / 'model.ecvq'}: the reloaded model's outputs differ from the quantised model")
    ckpt["reload_identical"] = True
    files = {"checkpoint": ckpt,
             "compact_onnx": export_compact_onnx(result.model, example, out / "model_compact.onnx", rtol=rtol),
             "dense_onnx": export_dense_onnx(result.model, example, out / "model_dense.onnx", rtol=rtol),
             "fp32_reference_bytes": reference_bytes,
             "source": "measured: sizes of the files written (os.stat)"}
    for key in ("compact_onnx", "dense_onnx"):
        files[key]["ratio_vs_fp32"] = reference_bytes / files[key]["bytes"]
    result.report["files"] = files
    result.save_report(out / "report.json")
    return files


def _architecture_of(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its blocks turned back into plain layers (the architecture to load into)."""
    from edgecompress.compress.lr2vq.onnx_compact import dense_copy

    return dense_copy(model)
