"""Exponential moving average (EMA) of a model's weights, kept in fp32.

The EMA model is what training publishes: every checkpoint writes its weights to the run's
``model/`` directory. The shadow is a full fp32 copy of the model (``ModelEma.module``), so it can
be evaluated or saved with the model's own methods (``ema.module.save_pretrained(path)``), and it
stays exact when the model trains in bf16, where a 1e-4 step would round away.

References: the parameter-and-buffer EMA with an fp32 copy follows timm's ``ModelEmaV3``; the
decay warm-up ``min(decay, (1 + n) / (10 + n))`` is the ``num_updates`` rule of TensorFlow's
``tf.train.ExponentialMovingAverage``. Code written here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from atoken.core.pretrained import load_state_dict_checked


class ModelEma:
    """An fp32 exponential moving average of a model's parameters and buffers.

    After each optimizer step call ``ema.update(model)``; every floating entry of the model's
    ``state_dict()`` then moves as ``shadow = lerp(shadow, value, 1 - d)``, i.e.
    ``shadow = d * shadow + (1 - d) * value``. Integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are copied. Non-persistent buffers are not averaged.

    With ``warmup=True`` (the default) the decay used by the ``n``-th update (counting from 0) is
    ``min(decay, (1 + n) / (10 + n))``: 0.1, 0.18, 0.25, ... so the average follows the
    fast-moving early weights instead of staying near the random initialisation for ~1/(1-decay)
    steps. With ``warmup=False`` every update uses ``decay``.

    Args:
        model: the model being trained (DDP / DataParallel / torch.compile wrappers are
            unwrapped here and in every method).
        decay: the target decay in (0, 1), e.g. 0.9999.
        warmup: ramp the decay up as described above.
        device: where the shadow lives (e.g. ``"cpu"`` to save accelerator memory);
            default: the model's device.

    Attributes:
        module: a deep copy of ``model`` holding the averaged weights in fp32, in eval mode and
            with ``requires_grad=False``. Use it to evaluate or save the EMA model.
        decay: the target decay.
        warmup: whether the decay warm-up is on.
        num_updates: how many updates have been applied (saved with checkpoints).
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        *,
        warmup: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = _fp32_copy(unwrap_model(model), device)

    # ------------------------------------------------------------------ averaging
    def decay_at(self, num_updates: int) -> float:
        """The decay that the update after ``num_updates`` earlier updates uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + num_updates) / (10 + num_updates))

    @property
    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        return self.decay_at(self.num_updates)

    @torch.no_grad()
    def update(
        self,
        model: nn.Module,
        *,
        step: int | None = None,
        state: Mapping[str, Tensor] | None = None,
    ) -> float:
        """Move the shadow towards ``model``'s current weights; returns the decay used.

        Args:
            model: the trained model (same architecture as the one the EMA was built from).
            step: the 0-based training step for the decay warm-up; default: `num_updates`
                (the same thing when the EMA is updated once per step from step 0).
            state: ``model``'s weights as whole tensors, when its ``state_dict()`` holds shards
                (FSDP); default ``model.state_dict()``.
        """
        decay = self.decay_at(self.num_updates if step is None else step)
        shadow_floats, model_floats = [], []
        for _, shadow, value in self._pairs(model, state):
            if shadow.is_floating_point():
                shadow_floats.append(shadow)
                model_floats.append(value.to(device=shadow.device, dtype=shadow.dtype))
            else:
                shadow.copy_(value)
        if shadow_floats:
            torch._foreach_lerp_(shadow_floats, model_floats, 1.0 - decay)
        self.num_updates += 1
        return decay

    def _pairs(
        self, model: nn.Module, state: Mapping[str, Tensor] | None = None
    ) -> Iterator[tuple[str, Tensor, Tensor]]:
        shadow = self.module.state_dict()
        current = unwrap_model(model).state_dict() if state is None else state
        if shadow.keys() != current.keys():
            missing = sorted(set(shadow) ^ set(current))
            raise ValueError(
                f"the model's state_dict does not match the EMA's (differing keys: "
                f"{', '.join(missing[:10])}); update the EMA with the model it was built from"
            )
        for name, tensor in shadow.items():
            yield name, tensor, current[name]

    # ------------------------------------------------------------------ applying
    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the EMA values (cast to its dtypes)."""
        for _, shadow, target in self._pairs(model):
            target.copy_(shadow)

    @contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``model``; its own weights come back on exit.

        Example::

            with ema.swapped_into(model):
                metrics = evaluate(model)
        """
        module = unwrap_model(model)
        with torch.no_grad():
            backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.copy_to(module)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, target in module.state_dict().items():
                    target.copy_(backup[name])

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, with the same names as ``model.state_dict()`` (fp32 floats).

        The counter `num_updates` is not a tensor; checkpoints store it next to these weights.
        """
        return self.module.state_dict()

    def load_state_dict(
        self, state: Mapping[str, Tensor], *, num_updates: int | None = None
    ) -> None:
        """Load averaged weights (strictly: every name must match) and optionally the counter."""
        load_state_dict_checked(self.module, state, source="EMA state")
        if num_updates is not None:
            self.num_updates = int(num_updates)

    def __repr__(self) -> str:
        return (
            f"ModelEma(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates},"
            f" module={type(self.module).__name__})"
        )


def _fp32_copy(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """A detached deep copy of ``model`` with floating parameters and buffers in fp32."""
    shadow = copy.deepcopy(model)
    if device is not None:
        shadow.to(device)
    shadow.float().eval().requires_grad_(False)
    for p in shadow.parameters():
        p.grad = None  # deepcopy copies .grad; the shadow never needs it
    return shadow


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
