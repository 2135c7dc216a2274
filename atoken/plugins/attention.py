"""Built-in attention backends: reference, sdpa, flex, varlen (CUDA), xformers (CUDA)."""

from __future__ import annotations

from atoken import hookimpl
from atoken.core.attention import BUILTIN_BACKENDS


@hookimpl
def atoken_register_attention_backends(registry) -> None:
    for backend in BUILTIN_BACKENDS.values():
        registry.add(backend.name, backend, description=backend.description)
