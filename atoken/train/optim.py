"""AdamW parameter groups and the warm-up + cosine learning-rate schedule.

Encoder parameters learn at ``lr * encoder_lr_mult`` (the encoder starts from SigLIP2 in the
paper); norms, biases, position tables and the pooling probe get no weight decay.

References: AToken (arXiv 2509.14476), "Curriculum and optimisation"; decay exclusions as in
common ViT training recipes (e.g. timm's ``param_groups_weight_decay``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from atoken.train.config import OptimizerConfig

GROUPS = ("encoder", "decoder", "head", "proj")


def group_of(name: str) -> str:
    """Which trainable group a parameter belongs to (``encoder.head.*`` is the head)."""
    if name.startswith("encoder.head."):
        return "head"
    for group in ("encoder", "decoder", "proj"):
        if name.startswith(group + "."):
            return group
    return "proj"  # anything else the tokenizer owns (e.g. quantizer parameters) trains with it


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return (
        param.ndim <= 1
        or "position_embedding" in name
        or name.endswith(".probe")
        or "rms_norm" in name
    )


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """AdamW groups: (encoder | rest) x (decay | no decay); each group records its base lr."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        key = (group_of(name) == "encoder", _no_decay(name, p))
        buckets.setdefault(key, []).append(p)
    groups = []
    for (is_encoder, no_decay), params in sorted(buckets.items()):
        lr = cfg.lr * (cfg.encoder_lr_mult if is_encoder else 1.0)
        groups.append(
            {
                "params": params,
                "lr": lr,
                "base_lr": lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"{'encoder' if is_encoder else 'rest'}{'/no_decay' if no_decay else ''}",
            }
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )


def lr_factor(step: int, *, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then cosine down to ``min_lr / lr``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = min_lr / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int):
    """A LambdaLR following `lr_factor` (its state_dict holds only the step count)."""
    warmup = min(cfg.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total=total_steps, warmup=warmup, lr=cfg.lr, min_lr=cfg.min_lr
        ),
    )


def set_trainable(model: nn.Module, groups: Iterable[str]) -> dict[str, int]:
    """Freeze every parameter outside ``groups``; returns trainable counts per group."""
    wanted = set(groups)
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        g = group_of(name)
        p.requires_grad_(g in wanted)
        if g in wanted:
            counts[g] += p.numel()
    return counts
