"""Hook implementations of atoken-plugin-grayscale: the module the ``atoken`` entry point names.

atoken imports this module every time it builds its plugin manager (every ``atoken`` command,
``atoken plugins`` included), so it holds only hook implementations and cheap imports. The
adapter module (Pillow, NumPy, tensor code) is imported inside the factory, the first time the
adapter is actually built; a missing optional dependency would then fail only there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atoken import hookimpl
from atoken.plugin import TaskSpec
from atoken_plugin_grayscale.options import GrayscaleOptions

if TYPE_CHECKING:
    from atoken.plugin import AdapterContext, BoundRegistry
    from atoken_plugin_grayscale.adapter import GrayscaleAdapter


def make_grayscale_adapter(options: GrayscaleOptions, context: AdapterContext) -> GrayscaleAdapter:
    """Factory atoken calls with the validated options and the context of the model the adapter
    serves (its token geometry); returns a ``ModalityAdapter``."""
    from atoken_plugin_grayscale.adapter import GrayscaleAdapter

    return GrayscaleAdapter(options, context)


@hookimpl
def atoken_register_adapters(registry: BoundRegistry) -> None:
    registry.add(
        "grayscale",
        make_grayscale_adapter,
        options=GrayscaleOptions,
        description="single-channel PGM/PNM images (8/16-bit); gray replicated to RGB patches",
    )


@hookimpl
def atoken_register_tasks(registry: BoundRegistry) -> None:
    # what `atoken train` needs to train the modality: the adapter that feeds the task and its
    # objective (the stage's reconstruction losses); data comes from any source the adapter
    # reads: ``files`` (PGM/PBM/PNM under a folder) or ``samples`` (its ``sample_assets()``)
    registry.add(
        "grayscale_rec",
        TaskSpec(modality="grayscale"),
        description="grayscale image reconstruction (the stage's reconstruction losses)",
    )
