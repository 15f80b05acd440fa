"""Quantized-for-all weight-sharing supernet over a ``Space`` (SpaceEvo, methods.md section 2.6).

The supernet *is* the space's largest subnet, materialised as a plain ``SearchNet`` (so every
parameter has the name it has in any subnet); its forward runs the *active* subnet by slicing:

* width / expansion: the first ``c`` output channels (and the first input channels) of each conv,
  BN and the classifier (BigNAS/OFA-style channel sorting is not done: leading channels are shared);
* depth: the first ``d`` blocks of each stage;
* kernel: the centre ``k x k`` crop of the largest kernel (BigNAS), no kernel transform matrices.

Training (``train_supernet``), both phases with the sandwich rule of BigNAS/AlphaNet: each step
sums the gradients of the max subnet (cross-entropy with label smoothing), the min subnet and
``num_random`` random subnets, the last three distilled in place from the max subnet's detached
logits (KL divergence; SpaceEvo uses an alpha-divergence). Phase 2 switches every conv and linear
to LSQ+ fake quantization (``nas/lsq.py``) with **one** set of quantization parameters per
weight-shared op, shared by all subnets and sliced with the weights, so ``extract(subnet,
quantized=True)`` gives an INT8 model that exports as Q/DQ ONNX with no retraining
(``export_subnet``). BN statistics are recalibrated per subnet (``calibrate_bn``), as SpaceEvo does.

TVConv's per-pixel kernels are Mul/Add, not convolutions: they stay FP32 in the INT8 model.
Written by hand: no library trains weight-sharing supernets of these blocks.

>>> from edgecompress.nas.space import mobilenetv2_space
>>> net = Supernet(mobilenetv2_space())
>>> net.set_active(net.space.min_subnet())(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from edgecompress.compress.train import cosine_lr, evaluate
from edgecompress.errors import BadInputError
from edgecompress.nas.lsq import (
    ActQuant,
    QConv2d,
    QLinear,
    WeightQuant,
    fold_all_bn,
    freeze_for_export,
    host_weight_qmax,
)
from edgecompress.nas.space import E2GC_GROUP_SIZE, SearchNet, Space, Subnet, materialize, resnet_mid
from edgecompress.nas.tvconv import TVConv, per_pixel_depthwise
from edgecompress.registry import Registry

ElasticForward = Callable[["Supernet", nn.Module, torch.Tensor, int, int, float, int], torch.Tensor]
ELASTIC: Registry[ElasticForward] = Registry("elastic block")


def _key(name: str) -> str:
    return name.replace(".", "__")


def quantizable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear that gets quantized: all but those inside a TVConv."""
    skip = {f"{n}." for n, m in model.named_modules() if isinstance(m, TVConv)}
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(n.startswith(p) for p in skip)]


class Supernet(nn.Module):
    """Weight-sharing supernet of ``space``; ``set_active(subnet)`` selects what ``forward`` runs."""

    def __init__(self, space: Space, num_classes: int = 10, weight_qmax: int | None = None) -> None:
        super().__init__()
        self.space, self.num_classes = space, num_classes
        #: weight grid [-q, q] of phase 2: None = the host's rule (``nas/lsq.py:host_weight_qmax``)
        self.weight_qmax = weight_qmax if weight_qmax is not None else host_weight_qmax()[0]
        self.net: SearchNet = materialize(space, space.max_subnet(), num_classes)
        self.act_quant = nn.ModuleDict()
        self.weight_quant = nn.ModuleDict()
        self.quantized = False
        self._names = {id(m): n for n, m in self.net.named_modules()}
        self.active: Subnet = space.max_subnet()

    # -- selection
    def set_active(self, subnet: Subnet) -> Supernet:
        self.active = self.space.validate(subnet)
        return self

    # -- elastic primitives
    def conv(self, x: torch.Tensor, m: nn.Conv2d, out_c: int, k: int | None = None, groups: int = 1) -> torch.Tensor:
        """``m`` sliced to ``out_c`` outputs, the input's channels, the centre k x k: (B, C, H, W) -> (B, out_c, ..)."""
        w = m.weight  # (C_out_max, C_in_max / g, K, K)
        big = w.shape[-1]
        k = k or big
        w = w[:out_c, : x.shape[1] // groups]
        if k < big:
            o = (big - k) // 2
            w = w[:, :, o:o + k, o:o + k]
        if self.quantized:
            key = _key(self._names[id(m)])
            x, w = self.act_quant[key](x), self.weight_quant[key](w)
        return F.conv2d(x, w, None, m.stride, k // 2, 1, groups)

    def bn(self, x: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        """Sliced BN; in training, batch statistics without touching the running ones (recalibrated per subnet)."""
        c = x.shape[1]
        if self.training:
            return F.batch_norm(x, None, None, m.weight[:c], m.bias[:c], True, 0.0, m.eps)
        return F.batch_norm(x, m.running_mean[:c], m.running_var[:c], m.weight[:c], m.bias[:c], False, 0.0, m.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.net.stem
        x = F.relu6(self.bn(self.conv(x, stem[0], stem[0].out_channels), stem[1]))  # (B, C0, H / s, W / s)
        for stage, spec, choice in zip(self.net.stages, self.space.stages, self.active.stages, strict=True):
            forward = ELASTIC.get(spec.block)
            for j, (k, e) in enumerate(choice.blocks):
                x = forward(self, stage[j], x, choice.width, k, e, spec.stride if j == 0 else 1)
        x = x.mean((2, 3))  # (B, C)
        lin = self.net.classifier
        w = lin.weight[:, : x.shape[1]]
        if self.quantized:
            key = _key(self._names[id(lin)])
            x, w = self.act_quant[key](x), self.weight_quant[key](w)
        return F.linear(x, w, lin.bias)  # (B, num_classes)

    # -- quantization
    @torch.no_grad()
    def enable_quantization(self, calibration: torch.Tensor) -> None:
        """Phase 2: one LSQ+ quantizer pair per weight-shared conv/linear, min-max initialised on the max subnet."""
        for name, m in quantizable(self.net):
            self.act_quant[_key(name)] = ActQuant()
            wq = WeightQuant(m.weight.shape[0], self.weight_qmax)
            wq.init_from(m.weight)
            self.weight_quant[_key(name)] = wq
        self.quantized = True
        was, active = self.training, self.active
        self.train().set_active(self.space.max_subnet())(calibration)  # batch-stat BN; activation min/max init
        self.train(was).set_active(active)

    # -- extraction
    def extract(self, subnet: Subnet, quantized: bool | None = None) -> SearchNet:
        """``subnet`` as a plain ``SearchNet`` with the shared weights sliced in (and quantizers if quantized).

        BN running statistics are the supernet's (unused in training): call ``calibrate_bn`` next.
        """
        quantized = self.quantized if quantized is None else quantized
        if quantized and not self.quantized:
            raise BadInputError("extract(quantized=True): the supernet has not been quantization-aware trained")
        plain = materialize(self.space, subnet, self.num_classes)
        shared = self.net.state_dict()
        state = {}
        for name, target in plain.state_dict().items():
            state[name] = slice_like(shared[name], target.shape)
        plain.load_state_dict(state)
        if quantized:
            for name, m in quantizable(plain):
                parent_name, _, child = name.rpartition(".")
                parent = plain.get_submodule(parent_name) if parent_name else plain
                act = copy.deepcopy(self.act_quant[_key(name)])
                wq = WeightQuant(m.weight.shape[0], self.weight_qmax)
                with torch.no_grad():
                    wq.scale.copy_(self.weight_quant[_key(name)].scale[: m.weight.shape[0]])
                wq.initialized.fill_(True)
                wrapped = QConv2d(m, act, wq) if isinstance(m, nn.Conv2d) else QLinear(m, act, wq)
                setattr(parent, child, wrapped)
        return plain


def slice_like(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Leading slice of ``src`` to ``shape``; 4-D tensors whose last two dims differ get a centre crop there."""
    if src.dim() != len(shape):
        raise BadInputError(f"cannot slice a tensor of shape {tuple(src.shape)} to {tuple(shape)}")
    index = []
    for d, (have, want) in enumerate(zip(src.shape, shape, strict=True)):
        if want > have:
            raise BadInputError(f"cannot slice a tensor of shape {tuple(src.shape)} to {tuple(shape)}")
        o = (have - want) // 2 if (src.dim() == 4 and d >= 2) else 0
        index.append(slice(o, o + want))
    return src[tuple(index)].clone()


# ---------------------------------------------------------------------------------- elastic blocks
@ELASTIC.register("irb")
def _irb(sn: Supernet, blk: nn.Module, x: torch.Tensor, width: int, k: int, e: float, stride: int) -> torch.Tensor:
    inp, hidden = x.shape[1], int(round(x.shape[1] * e))
    c = blk.conv
    h = F.relu6(sn.bn(sn.conv(x, c[0][0], hidden), c[0][1]))  # (B, hidden, H, W)
    h = F.relu6(sn.bn(sn.conv(h, c[1][0], hidden, k, groups=hidden), c[1][1]))  # depthwise k x k, stride s
    out = sn.bn(sn.conv(h, c[2], width), c[3])  # (B, width, H / s, W / s)
    return x + out if stride == 1 and inp == width else out


@ELASTIC.register("e2gc")
def _e2gc(sn: Supernet, blk: nn.Module, x: torch.Tensor, width: int, k: int, e: float, stride: int) -> torch.Tensor:
    inp, hidden = x.shape[1], int(round(x.shape[1] * e))
    c = blk.conv
    h = F.relu6(sn.bn(sn.conv(x, c[0][0], hidden), c[0][1]))
    groups = hidden // min(E2GC_GROUP_SIZE, hidden)
    h = F.relu6(sn.bn(sn.conv(h, c[1][0], hidden, 3, groups=groups), c[1][1]))  # group size 8
    out = sn.bn(sn.conv(h, c[2], width), c[3])
    return x + out if stride == 1 and inp == width else out


@ELASTIC.register("tvconv")
def _tvconv(sn: Supernet, blk: nn.Module, x: torch.Tensor, width: int, k: int, e: float, stride: int) -> torch.Tensor:
    inp, hidden = x.shape[1], int(round(x.shape[1] * e))
    c = blk.conv
    h = F.relu6(sn.bn(sn.conv(x, c[0][0], hidden), c[0][1]))
    tv: TVConv = c[1][0]
    weight = tv.generate_weight()[:, :hidden]  # (1, hidden, 9, h, w): the first channels' per-pixel kernels
    h = F.relu6(sn.bn(per_pixel_depthwise(h, weight, tv.stride), c[1][1]))
    out = sn.bn(sn.conv(h, c[2], width), c[3])
    return x + out if stride == 1 and inp == width else out


@ELASTIC.register("resnet")
def _resnet(sn: Supernet, blk: nn.Module, x: torch.Tensor, width: int, k: int, e: float, stride: int) -> torch.Tensor:
    mid = resnet_mid(width, e)
    out = F.relu(sn.bn(sn.conv(x, blk.conv1, mid, k), blk.bn1))
    out = sn.bn(sn.conv(out, blk.conv2, width, k), blk.bn2)
    identity = x if blk.downsample is None else sn.bn(sn.conv(x, blk.downsample[0], width), blk.downsample[1])
    return F.relu(out + identity)


@ELASTIC.register("fused")
def _fused(sn: Supernet, blk: nn.Module, x: torch.Tensor, width: int, k: int, e: float, stride: int) -> torch.Tensor:
    inp, hidden = x.shape[1], int(round(x.shape[1] * e))
    c = blk.conv
    h = F.relu6(sn.bn(sn.conv(x, c[0][0], hidden, k), c[0][1]))
    out = sn.bn(sn.conv(h, c[1], width), c[2])
    return x + out if stride == 1 and inp == width else out


# ------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class SupernetConfig:
    """Sandwich training settings: FP32 ``epochs``, then ``qat_epochs`` of LSQ+ QAT at ``lr * qat_lr_factor``."""

    epochs: int = 6
    qat_epochs: int = 2
    lr: float = 3e-3
    qat_lr_factor: float = 0.1
    weight_decay: float = 0.05
    num_random: int = 2
    label_smoothing: float = 0.1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "qat_epochs", "num_random"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        for name in ("lr", "qat_lr_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must lie in [0, 1)")


def sandwich_loss(supernet: Supernet, x: torch.Tensor, y: torch.Tensor, rng: random.Random, num_random: int,
                  label_smoothing: float) -> float:
    """One sandwich step's backward passes (gradients accumulate); returns the max subnet's loss.

    L_max = CE_ls(f_max(x), y); for the min and ``num_random`` random subnets
    L = KL(softmax(f_max(x).detach()) || softmax(f(x))) (in-place distillation).
    """
    space = supernet.space
    logits = supernet.set_active(space.max_subnet())(x)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    loss.backward()
    teacher = logits.detach().softmax(1)
    for subnet in [space.min_subnet(), *(space.sample(rng) for _ in range(num_random))]:
        student = supernet.set_active(subnet)(x).log_softmax(1)
        F.kl_div(student, teacher, reduction="batchmean").backward()
    return loss.item()


def _optimizer(supernet: Supernet, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for n, p in supernet.named_parameters() if p.dim() > 1 and "quant" not in n]
    other = [p for n, p in supernet.named_parameters() if not (p.dim() > 1 and "quant" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                             lr=lr)


def _run_phase(supernet: Supernet, loader: Iterable, epochs: int, lr: float, config: SupernetConfig,
               desc: str) -> list[dict]:
    opt = _optimizer(supernet, lr, config.weight_decay)
    rng = random.Random(config.seed)
    total, step, logs = epochs * len(loader), 0, []
    for epoch in range(epochs):
        supernet.train()
        losses = []
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=None if config.progress else True, leave=False)
        for x, y in bar:
            for g in opt.param_groups:
                g["lr"] = lr * cosine_lr(step, total, 1.0)
            opt.zero_grad(set_to_none=True)
            losses.append(sandwich_loss(supernet, x, y, rng, config.num_random, config.label_smoothing))
            opt.step()
            step += 1
        logs.append({"phase": desc, "epoch": epoch + 1, "max_subnet_loss": sum(losses) / len(losses)})
    supernet.set_active(supernet.space.max_subnet())
    return logs


def train_supernet(supernet: Supernet, train_loader: Iterable, config: SupernetConfig = SupernetConfig()) -> list[dict]:
    """Phase 1 (FP32 sandwich) then phase 2 (LSQ+ INT8 QAT sandwich, shared quantizers); in place."""
    torch.manual_seed(config.seed)
    logs = _run_phase(supernet, train_loader, config.epochs, config.lr, config, "supernet fp32")
    if config.qat_epochs:
        x, _ = next(iter(train_loader))
        supernet.enable_quantization(x)
        logs += _run_phase(supernet, train_loader, config.qat_epochs, config.lr * config.qat_lr_factor, config,
                           "supernet int8 qat")
    return logs


# ----------------------------------------------------------------------------------------- subnets
@torch.no_grad()
def calibrate_bn(model: nn.Module, loader: Iterable, batches: int = 10) -> nn.Module:
    """Reset every BN's running statistics and re-estimate them (cumulative mean) on ``batches`` batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
    model.eval()
    return model


def subnet_model(supernet: Supernet, subnet: Subnet, loader: Iterable, quantized: bool | None = None,
                 bn_batches: int = 10) -> SearchNet:
    """Extracted, BN-recalibrated, eval-mode subnet (fake-quantized when the supernet is quantized)."""
    return calibrate_bn(supernet.extract(subnet, quantized), loader, bn_batches)


def subnet_accuracy(supernet: Supernet, subnet: Subnet, train_loader: Iterable, val_loader: Iterable,
                    quantized: bool | None = None, bn_batches: int = 10) -> float:
    """Top-1 accuracy in [0, 1] of the extracted subnet (fake-quantized INT8 if the supernet is)."""
    return evaluate(subnet_model(supernet, subnet, train_loader, quantized, bn_batches), val_loader)


def export_subnet(model: nn.Module, path: str | Path, input_size: int = 32, data: torch.Tensor | None = None,
                  rtol: float = 0.5, min_agreement: float = 0.95):
    """Export an extracted (eval, BN-calibrated) subnet to ONNX; a quantized one becomes Q/DQ INT8.

    BNs after quantized convs are folded first (exact, see ``nas/lsq.py``), on a copy. FP32: parity
    with torch at 1e-4 by ``export_onnx``. INT8: onnxruntime's integer kernels round intermediate
    results where the fake-quantized torch model does not, so parity is checked on real inputs
    (``data``, a batch; random normal inputs are far outside the calibrated ranges): the first input's
    logits within ``rtol`` of their scale (a gross-error check: one INT8 rounding flip moves the logits
    of a briefly trained net by 10-20%), and the top-1 class of onnxruntime and torch
    agreeing on at least ``min_agreement`` of ``data``, else ``CheckFailedError``. Returns the ``ExportReport``.
    """
    from edgecompress.errors import CheckFailedError
    from edgecompress.export.onnx import export_onnx
    from edgecompress.runtime.engine import EngineOptions, load_engine

    model = copy.deepcopy(model).eval()
    quantized = any(isinstance(m, (QConv2d, QLinear)) for m in model.modules())
    if not quantized:
        example = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        return export_onnx(model, example, path, rtol=1e-4)
    if data is None:
        raise BadInputError("export_subnet: a quantized subnet needs a batch of real inputs (data) to check parity")
    fold_all_bn(model)
    freeze_for_export(model)
    report = export_onnx(model, data[:1], path, do_simplify=False, rtol=rtol, random_checks=0)
    engine = load_engine(path, "onnxruntime", EngineOptions(threads=1))
    with torch.no_grad():
        expected = model(data).argmax(1).numpy()
    got = engine.run([data.numpy()])[0].argmax(1)
    agreement = float((got == expected).mean())
    if agreement < min_agreement:
        Path(path).unlink(missing_ok=True)
        raise CheckFailedError(f"INT8 ONNX top-1 agrees with the fake-quantized model on only {agreement:.1%} of "
                               f"{len(data)} inputs (< {min_agreement:.0%}): {path}")
    report.parity.append({"case": f"top-1 agreement on {len(data)} real inputs", "agreement": agreement})
    return report
