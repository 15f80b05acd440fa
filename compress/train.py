"""A small, honest training loop: SGD or AdamW, cosine schedule, progress bar, validation accuracy.

Used by the demo, the tests and every stage that trains (DHSPG, LR2VQ, QAT, the supernet). An
optimizer may be passed in (e.g. DHSPG) to replace the default one.

>>> import edgecompress as ec
>>> train_dl, val_dl = ec.data.digits_loaders()
>>> model = ec.zoo.create("mobilenetv2_cifar_tiny")
>>> history = ec.train(model, train_dl, val_dl, ec.TrainConfig(epochs=1))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. ``lr=None`` picks 0.05 for SGD and 2e-3 for AdamW."""

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs}: must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: choose one of {OPTIMIZERS}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must lie in [0, 1)")

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.05 if self.optimizer == "sgd" else 2e-3


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None
    lr: float
    seconds: float


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW; no weight decay on biases and norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.resolved_lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.resolved_lr)


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in [0, 1] of ``model`` over ``loader``; restores the train/eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(x.to(device))
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the validation loader is empty")
    return correct / total


def train(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None = None,
    config: TrainConfig = TrainConfig(),
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
    device: str | torch.device = "cpu",
    desc: str = "train",
) -> list[EpochLog]:
    """Train ``model`` in place; returns one log per epoch.

    ``loss_fn(model, x, y)`` replaces cross-entropy (distillation, penalties). ``on_step(step)`` runs
    after every optimizer step (e.g. to re-apply masks). The learning rate of every parameter group
    follows a cosine schedule scaled by the group's initial lr.
    """
    torch.manual_seed(config.seed)
    if len(train_loader) == 0:
        raise ValueError("train: the training loader is empty")
    opt = optimizer if optimizer is not None else make_optimizer(model, config)
    base_lrs = [g["lr"] for g in opt.param_groups]
    total = config.epochs * len(train_loader)
    warmup = int(config.warmup_epochs * len(train_loader))
    step, logs = 0, []
    model.to(device)
    for epoch in range(config.epochs):
        model.train()
        start = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{config.epochs}", disable=None if config.progress else True,
                   leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            scale = cosine_lr(step, total, 1.0, warmup)
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * scale
            if loss_fn is None:
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                correct += (logits.argmax(1) == y).sum().item()
            else:
                loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(step)
            step += 1
            loss_sum += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        val_acc = evaluate(model, val_loader, device) if val_loader is not None else None
        logs.append(EpochLog(epoch + 1, loss_sum / seen, correct / seen if loss_fn is None else float("nan"),
                             val_acc, opt.param_groups[0]["lr"], time.perf_counter() - start))
        if config.progress:
            acc = f", val acc {val_acc:.2%}" if val_acc is not None else ""
            tqdm.write(f"{desc} epoch {epoch + 1}/{config.epochs}: loss {loss_sum / seen:.4f}{acc}")
    return logs
