"""Training: data plumbing, the trainer and checkpoints (sits on top of core and plugins).

The public training API, for scripts and for plugin tests that train (a plugin's own code never
imports train): `load_train_config` (a TOML file, validated in both phases), `validate_train_config`
(a mapping), `scale_steps` (the same curriculum in fewer steps), `Trainer` (``Trainer(config,
run_dir).fit()`` -> `TrainResult`) and `TrainConfig`. ``atoken train CONFIG`` is the same run from
the command line. The names load on first use, so importing a submodule stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "TrainConfig": "atoken.train.config",
    "load_train_config": "atoken.train.config",
    "validate_train_config": "atoken.train.config",
    "scale_steps": "atoken.train.config",
    "Trainer": "atoken.train.trainer",
    "TrainResult": "atoken.train.trainer",
}

if TYPE_CHECKING:
    from atoken.train.config import (
        TrainConfig,
        load_train_config,
        scale_steps,
        validate_train_config,
    )
    from atoken.train.trainer import Trainer, TrainResult


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'atoken.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_train_config",
    "scale_steps",
    "validate_train_config",
]
