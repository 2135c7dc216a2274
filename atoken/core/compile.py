"""Regional ``torch.compile`` of the transformer blocks, with dynamic token counts.

A tokenizer's batches differ in every call: images of different sizes, clips of different
lengths, temporal tiles, a KV cache on some steps and not others. Compiling the whole model would
specialise on all of that; compiling each `TransformerBlock` (the work) with dynamic shapes
compiles a handful of graphs that every block and every batch reuses.

Two things make a block one graph:

- **Attention is one opaque op.** Variable-length attention splits the packed rows by per-sample
  lengths held as Python ints, which dynamo would specialise on (one graph per batch layout) or
  break on. Inside a compiled region `SelfAttention` calls ``torch.ops.atoken.varlen_attention``
  instead: a `torch.library.custom_op` taking the lengths as a small CPU tensor and the backend
  by name. Dynamo sees one node with a shape-only fake; the eager backend runs inside it. Its
  backward (a second op) recomputes the attention, the cost of one attention forward as
  activation checkpointing pays, and takes its vector-Jacobian product; eager code never goes
  through either op.
- **The block's inputs are tensors and a few flags.** `AttentionLayout` carries the lengths as
  tensors; the temporal cache's bookkeeping (carried keys present or not, keys kept or not) is
  a handful of guards, so a streamed clip compiles at most four variants per block class.

`compile_blocks` compiles each block's ``forward`` (module hooks, e.g. FSDP's, stay eager) and
is idempotent; `Tokenizer.compile` calls it. Gradients and state-dict keys are unchanged.

References: PyTorch's regional compilation recipe (torch.compile per repeated block) and its
custom-operator guide (``torch.library.custom_op``, ``register_fake``, ``register_autograd``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from atoken.core.attention import NON_LEAF_GRAD_WARNING, backend_named

__all__ = ["RECOMPILE_LIMIT", "compile_blocks", "compiled_blocks", "varlen_attention_op"]

#: graphs one block's code may compile (2 block kinds x 2 batch kinds x 4 cache states x 2 grad
#: modes); `compile_blocks` raises dynamo's recompile limit to at least this
RECOMPILE_LIMIT = 32


@torch.library.custom_op("atoken::varlen_attention", mutates_args=())
def varlen_attention_op(
    q: Tensor, k: Tensor, v: Tensor, seqlens_q: Tensor, seqlens_k: Tensor, backend: str
) -> Tensor:
    """Block-diagonal attention of packed ``q [N, H, D]`` over ``k, v [M, H, D]``.

    ``seqlens_q [B]`` / ``seqlens_k [B]`` are per-sample lengths (int64, CPU); ``backend`` names
    a backend `atoken.core.attention.resolve_backend` has returned.
    """
    fn = backend_named(backend)
    return fn(q, k, v, seqlens_q.tolist(), seqlens_k.tolist())  # [N, H, D]


@varlen_attention_op.register_fake
def _(q, k, v, seqlens_q, seqlens_k, backend):
    return torch.empty_like(q)


@torch.library.custom_op("atoken::varlen_attention_backward", mutates_args=())
def _varlen_attention_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seqlens_q: Tensor,
    seqlens_k: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of `varlen_attention_op`, by recomputing it.

    An op's body runs below autograd (nothing it computes records a graph), so the vector-Jacobian
    product is taken with `torch.func.vjp`, which carries its own autograd level.
    """
    fn = backend_named(backend)
    lq, lk = seqlens_q.tolist(), seqlens_k.tolist()
    _, vjp = torch.func.vjp(lambda q_, k_, v_: fn(q_, k_, v_, lq, lk), q, k, v)
    dq, dk, dv = vjp(grad)
    return dq, dk, dv


@_varlen_attention_backward.register_fake
def _(grad, q, k, v, seqlens_q, seqlens_k, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seqlens_q, seqlens_k, backend = inputs
    ctx.save_for_backward(q, k, v, seqlens_q, seqlens_k)
    ctx.backend = backend


def _backward(ctx, grad):
    q, k, v, seqlens_q, seqlens_k = ctx.saved_tensors
    dq, dk, dv = _varlen_attention_backward(grad, q, k, v, seqlens_q, seqlens_k, ctx.backend)
    return dq, dk, dv, None, None, None


varlen_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _blocks(module: nn.Module) -> Iterator[nn.Module]:
    from atoken.core.layers.block import TransformerBlock

    return (m for m in module.modules() if isinstance(m, TransformerBlock))


def compiled_blocks(module: nn.Module) -> int:
    """How many of ``module``'s transformer blocks run compiled."""
    return sum(1 for block in _blocks(module) if "forward" in vars(block))


def compile_blocks(
    module: nn.Module, *, dynamic: bool = True, fullgraph: bool = True, **options
) -> nn.Module:
    """Compile every `TransformerBlock` inside ``module`` with `torch.compile`; returns ``module``.

    Each block's ``forward`` is replaced by its compiled version (the module, its parameters and
    its state-dict keys stay as they are; hooks around the block run eagerly). Blocks already
    compiled are left alone, so calling it twice is harmless.

    Args:
        module: a tokenizer, an encoder/decoder stack, or anything holding blocks.
        dynamic: compile for symbolic token counts (True) rather than per shape.
        fullgraph: refuse graph breaks inside a block (each block is one graph).
        **options: passed to `torch.compile` (``mode``, ``backend``, ``options``).

    Raises:
        ValueError: ``module`` holds no transformer block.
    """
    blocks = list(_blocks(module))
    if not blocks:
        raise ValueError(f"compile_blocks: {type(module).__name__} holds no TransformerBlock")
    # One code object serves every block: encoder and decoder blocks, one sample or several,
    # and the temporal cache's four states (with or without carried keys, keys kept or not),
    # with and without gradients, are up to 32 graphs. Dynamo's default limit (8) would give up
    # on the rest (or, with fullgraph, fail): raise it to what this module can need.
    limit = RECOMPILE_LIMIT
    if torch._dynamo.config.recompile_limit < limit:
        torch._dynamo.config.recompile_limit = limit
    for block in blocks:
        if "forward" not in vars(block):  # not compiled yet
            compiled = torch.compile(block.forward, dynamic=dynamic, fullgraph=fullgraph, **options)
            block.forward = functools.wraps(block.forward)(functools.partial(_quiet, compiled))
    return module


def _quiet(compiled, *args, **kwargs):
    """Call ``compiled``, hiding the warning dynamo raises while it traces a block under
    autograd (it reads ``.grad`` of the non-leaf input; nothing is wrong in the caller's code,
    and with ``-W error`` it would abort the compile)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NON_LEAF_GRAD_WARNING, category=UserWarning)
        return compiled(*args, **kwargs)
