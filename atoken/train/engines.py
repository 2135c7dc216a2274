"""How the ranks of a ``torchrun`` job share the training work: one process, DDP or FSDP2.

- ``single``: one process; the model is called as it is.
- ``ddp``: `torch.nn.parallel.DistributedDataParallel`. Its bucketed all-reduce overlaps the
  backward pass, and ``gradient_as_bucket_view`` makes the gradients views into the buckets, so
  no second full-size gradient buffer exists. The wrapper is rebuilt when a stage changes which
  parameters train (DDP registers its hooks on the parameters that require grad when it is
  built); a stage that mixes tasks (some micro-batches leave parameters unused, e.g. the head
  on reconstruction batches) finds unused parameters. Gradient accumulation skips the
  all-reduce on all but the last micro-batch (``no_sync``).
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per transformer block,
  then the root for the remaining parameters. Parameters, gradients and AdamW state are
  sharded ``DTensor``s. Checkpoints are *gathered*: every rank gathers the full tensors
  (`full_state_dict`, `full_optimizer_state`) and rank 0 writes the same files a one-process run
  writes, so a run can resume under another world size or engine; on resume every rank reads
  the full tensors and keeps its own shard (`shard_like`). The EMA stays a full fp32 copy on
  every rank, updated from the gathered weights each step (one all-gather of the model per
  step; a sharded EMA is left for later).

Extra trainable parameters outside the model (the learnable SigLIP loss scale, a task
objective's own module) are averaged with one flat all-reduce after backward under ``ddp``;
``fsdp`` refuses a run that has them.

References: PyTorch DDP notes (buckets, ``no_sync``, ``find_unused_parameters``,
``gradient_as_bucket_view``); the FSDP2 ``fully_shard`` tutorial (per-block units, DTensor
parameters, full state dicts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from atoken.train.distributed import DistInfo

# encoder width from which ``activation_checkpointing = "auto"`` turns it on under fsdp
CHECKPOINTING_WIDTH = 1152


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor behind a (sharded) ``DTensor``; a plain tensor as it is (collective
    when sharded: every rank must call it in the same order)."""
    return t.full_tensor() if _is_dtensor(t) else t


class Engine:
    """The model as the training loop calls it, and the collective steps around it.

    Args:
        model: the tokenizer (moved to its device already).
        info: this process's place in the job.
        kind: ``"ddp"`` or ``"fsdp"`` (ignored in one process).
        activation_checkpointing: ``"auto"``, True or False (see `atoken.train.config.RunConfig`).
    """

    def __init__(
        self,
        model: nn.Module,
        info: DistInfo,
        kind: str = "ddp",
        *,
        activation_checkpointing: str | bool = "auto",
    ) -> None:
        self.model = model
        self.info = info
        self.kind = kind if info.enabled else "single"
        self._ddp: nn.Module | None = None
        width = int(getattr(getattr(model, "encoder", None), "width", 0))
        ckpt = activation_checkpointing
        if ckpt == "auto":
            ckpt = self.kind == "fsdp" and width >= CHECKPOINTING_WIDTH
        if ckpt:
            for part in ("encoder", "decoder"):
                if hasattr(model, part):
                    getattr(model, part).grad_checkpointing = True
        self.activation_checkpointing = bool(ckpt)
        if self.kind == "fsdp":
            self._shard()

    # ---------------------------------------------------------------- wrapping
    def _shard(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for part in ("encoder", "decoder"):
            for block in getattr(self.model, part).blocks:
                fully_shard(block)
        fully_shard(self.model)

    def prepare_stage(self, *, mixed: bool) -> None:
        """Re-wrap for a stage's trainable set (``mixed``: its micro-batches may leave some
        trainable parameters unused)."""
        if self.kind != "ddp":
            return
        from torch.nn.parallel import DistributedDataParallel

        if not any(p.requires_grad for p in self.model.parameters()):
            self._ddp = None  # nothing of the model trains in this stage
            return
        device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(
            self.model,
            device_ids=device_ids,
            find_unused_parameters=mixed,
            gradient_as_bucket_view=True,
            broadcast_buffers=False,  # every buffer is computed, never trained, and identical
        )

    @property
    def module(self) -> nn.Module:
        """What the loop calls for a forward pass."""
        return self._ddp if self._ddp is not None else self.model

    def sync_context(self, last: bool):
        """Within it, a backward pass averages gradients over ranks only when ``last``."""
        if self._ddp is not None and not last:
            return self._ddp.no_sync()
        return contextlib.nullcontext()

    @property
    def averages_model_gradients(self) -> bool:
        """True when the wrapper itself averages the model's gradients over ranks."""
        return self.kind == "fsdp" or self._ddp is not None

    # ---------------------------------------------------------------- states
    def full_state_dict(self) -> dict[str, Tensor]:
        """The model's state with whole tensors (collective under fsdp)."""
        return {k: full_tensor(v) for k, v in self.model.state_dict().items()}

    def full_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()`` with whole tensors (collective under fsdp)."""
        sd = optimizer.state_dict()
        if self.kind != "fsdp":
            return sd
        state = {
            index: {k: full_tensor(v) if isinstance(v, Tensor) else v for k, v in per.items()}
            for index, per in sorted(sd["state"].items())
        }
        return {"state": state, "param_groups": sd["param_groups"]}

    def shard_like(self, param: Tensor, value: Tensor) -> Tensor:
        """``value`` (a whole tensor shaped like ``param``) as this rank's part of ``param``:
        a ``DTensor`` with ``param``'s mesh and placements when ``param`` is sharded."""
        if not _is_dtensor(param) or value.shape != param.shape:
            return value
        from torch.distributed.tensor import distribute_tensor

        # every rank holds the whole value: no communication, each keeps its own shard
        return distribute_tensor(
            value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
        )

    def load_full_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state`` (whole tensors, by name) shaped for ``model.load_state_dict``."""
        current = self.model.state_dict()
        return {k: self.shard_like(current[k], v) if k in current else v for k, v in state.items()}

    def clip_grad_norm(self, params: list[Tensor], max_norm: float) -> float:
        """``clip_grad_norm_`` over ``params``; the norm of the whole (unsharded) gradient."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(full_tensor(norm))

    def parameters_in_order(self, optimizer: torch.optim.Optimizer) -> Iterator[Tensor]:
        """The optimizer's parameters in state-dict index order."""
        for group in optimizer.param_groups:
            yield from group["params"]
