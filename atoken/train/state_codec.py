"""Exact JSON encoding of checkpoint state, and optimizer state split into tensors + JSON.

`to_json` / `from_json` round-trip scheduler state, data positions and other small values
(tuples, non-string dict keys, small tensors and numpy values are tagged with ``"__type__"``);
`optimizer_state_to_tensors` / `load_optimizer_state` split an optimizer's state dict into a
safetensors part and a JSON part and put it back together. Nothing here is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from atoken.core.serialization import CheckpointError

_TYPE = "__type__"
_JSON_TENSOR_LIMIT = 4096  # elements; larger tensors belong in a safetensors file


# ====================================================================== JSON codec
def to_json(obj: Any, where: str = "state") -> Any:
    """Encode ``obj`` as JSON data that `from_json` turns back into an equal object.

    Plain JSON values pass through (floats keep every bit; nan and inf are allowed). Tuples,
    dicts with non-string keys, small tensors and numpy values are tagged with ``"__type__"``
    so they come back as the same types.

    Args:
        obj: the value (scheduler state, data position, optimizer hyper-parameters, ...).
        where: what is being encoded, for the error message.

    Raises:
        CheckpointError: ``obj`` holds something JSON cannot represent exactly.
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, list):
        return [to_json(x, where) for x in obj]
    if isinstance(obj, tuple):
        return {_TYPE: "tuple", "items": [to_json(x, where) for x in obj]}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and _TYPE not in obj:
            return {k: to_json(v, f"{where}.{k}") for k, v in obj.items()}
        return {
            _TYPE: "dict",
            "items": [[to_json(k, where), to_json(v, where)] for k, v in obj.items()],
        }
    if isinstance(obj, Tensor | np.ndarray):
        return _array_to_json(obj, where)
    raise CheckpointError(
        f"{where}: cannot store a {type(obj).__qualname__} in a checkpoint's JSON state; use"
        " numbers, strings, lists, tuples, dicts, or small tensors"
    )


def _array_to_json(obj: Tensor | np.ndarray, where: str) -> dict[str, Any]:
    size = obj.numel() if isinstance(obj, Tensor) else obj.size
    if size > _JSON_TENSOR_LIMIT:
        raise CheckpointError(
            f"{where}: an array of {size} elements is too large for the JSON state (limit"
            f" {_JSON_TENSOR_LIMIT}); keep large state in tensors"
        )
    if isinstance(obj, Tensor):
        t = obj.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        return {
            _TYPE: "tensor",
            "dtype": dtype,
            "shape": list(t.shape),
            "data": t.reshape(-1).tolist(),
        }
    return {
        _TYPE: "ndarray",
        "dtype": obj.dtype.str,
        "shape": list(obj.shape),
        "data": obj.reshape(-1).tolist(),
    }


def from_json(data: Any) -> Any:
    """Decode what `to_json` produced (tensors come back on the CPU)."""
    if isinstance(data, list):
        return [from_json(x) for x in data]
    if not isinstance(data, dict):
        return data
    kind = data.get(_TYPE)
    if kind is None:
        return {k: from_json(v) for k, v in data.items()}
    if kind == "tuple":
        return tuple(from_json(x) for x in data["items"])
    if kind == "dict":
        return {from_json(k): from_json(v) for k, v in data["items"]}
    if kind == "tensor":
        dtype = getattr(torch, data["dtype"])
        return torch.tensor(data["data"], dtype=dtype).reshape(data["shape"])
    if kind == "ndarray":
        return np.array(data["data"], dtype=np.dtype(data["dtype"])).reshape(data["shape"])
    raise CheckpointError(f"unknown encoded value of type {kind!r} in a checkpoint's JSON state")


# ====================================================================== optimizer state
def optimizer_state_to_tensors(
    optimizer: torch.optim.Optimizer, state: Mapping[str, Any] | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` (or ``state``, a state dict of that optimizer with
    whole tensors, e.g. gathered from FSDP shards) into safetensors tensors and JSON metadata.

    Per-parameter tensors (AdamW's ``exp_avg``, ``exp_avg_sq``, ``step``) become
    ``state.{param_index}.{name}``; other per-parameter values and the ``param_groups``
    hyper-parameters (lr, betas, weight decay, names, ...) go into the JSON part.

    Returns:
        ``(tensors, meta)``; `load_optimizer_state` rebuilds an identical state dict from them.
    """
    sd = optimizer.state_dict() if state is None else state
    tensors: dict[str, Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        if not isinstance(index, int):
            raise CheckpointError(f"optimizer state is keyed by {index!r}; expected int indices")
        entry: dict[str, Any] = {}
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                key = f"state.{index}.{name}"
                tensors[key] = value
                entry[name] = {"tensor": key}
            else:
                entry[name] = {"value": to_json(value, f"optimizer state {index}.{name}")}
        state_meta[str(index)] = entry
    meta = {
        "class": type(optimizer).__qualname__,
        "state": state_meta,
        "param_groups": to_json(sd["param_groups"], "optimizer param_groups"),
    }
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    convert: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> None:
    """Restore what `optimizer_state_to_tensors` split, into ``optimizer``.

    ``convert(param, tensor)`` turns each saved per-parameter tensor into what the parameter
    needs (e.g. this rank's shard of an FSDP parameter); default: as saved.

    Raises:
        CheckpointError: another optimizer class, other parameter groups, or missing tensors.
    """
    saved_class = meta.get("class")
    if saved_class != type(optimizer).__qualname__:
        raise CheckpointError(
            f"the checkpoint holds {saved_class} state but the optimizer is"
            f" {type(optimizer).__qualname__}; resume with the same optimizer or start a new run"
        )
    state: dict[int, dict[str, Any]] = {}
    for index, entry in meta["state"].items():
        per_param = {}
        for name, spec in entry.items():
            if "tensor" in spec:
                if spec["tensor"] not in tensors:
                    raise CheckpointError(f"optimizer tensor {spec['tensor']!r} is missing")
                per_param[name] = tensors[spec["tensor"]]
            else:
                per_param[name] = from_json(spec["value"])
        state[int(index)] = per_param
    if convert is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, per_param in state.items():
            if 0 <= index < len(params):  # others: load_state_dict names the mismatch
                for name, value in per_param.items():
                    if isinstance(value, Tensor):
                        per_param[name] = convert(params[index], value)
    groups = from_json(meta["param_groups"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except ValueError as exc:
        raise CheckpointError(
            f"the optimizer state does not fit this optimizer ({exc}); the model's trainable"
            " parameters or groups differ from the run that saved it"
        ) from None


__all__ = ["from_json", "load_optimizer_state", "optimizer_state_to_tensors", "to_json"]
