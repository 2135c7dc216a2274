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


def lr_multiplier(name: str, cfg: OptimizerConfig) -> float:
    """The ``lr_mult`` of parameter ``name`` (longest matching prefix; 1.0 when none matches)."""
    best = max((k for k in cfg.lr_mult if name.startswith(k)), key=len, default=None)
    return 1.0 if best is None else cfg.lr_mult[best]


def unknown_prefixes(model: nn.Module, cfg: OptimizerConfig) -> list[str]:
    """``lr_mult`` prefixes that match no parameter of ``model`` (a typo must not pass)."""
    names = [n for n, _ in model.named_parameters()]
    return sorted(k for k in cfg.lr_mult if not any(n.startswith(k) for n in names))


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """AdamW groups: (encoder | rest) x (decay | no decay) x lr multiplier; each records its
    base lr. Frozen parameters (multiplier 0) get no weight decay."""
    buckets: dict[tuple[bool, bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        mult = lr_multiplier(name, cfg)
        key = (group_of(name) == "encoder", _no_decay(name, p) or mult == 0, mult)
        buckets.setdefault(key, []).append(p)
    groups = []
    for (is_encoder, no_decay, mult), params in sorted(buckets.items()):
        lr = cfg.lr * (cfg.encoder_lr_mult if is_encoder else 1.0) * mult
        label = f"{'encoder' if is_encoder else 'rest'}{'/no_decay' if no_decay else ''}"
        groups.append(
            {
                "params": params,
                "lr": lr,
                "base_lr": lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": label if mult == 1.0 else f"{label}/x{mult:g}",
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


def set_trainable(
    model: nn.Module, groups: Iterable[str], cfg: OptimizerConfig | None = None
) -> dict[str, int]:
    """Freeze every parameter outside ``groups`` (and those ``cfg.lr_mult`` sets to 0);
    returns trainable counts per group."""
    wanted = set(groups)
    counts = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        g = group_of(name)
        on = g in wanted and (cfg is None or lr_multiplier(name, cfg) > 0)
        p.requires_grad_(on)
        if on:
            counts[g] += p.numel()
    return counts
