"""Built-in quantizers: ``kl`` (continuous, diagonal Gaussian) and ``fsq`` (discrete)."""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.quantizers.fsq import FSQOptions, FSQuantizer
from atoken.plugins.quantizers.kl import KLOptions, KLQuantizer


def _kl(options: KLOptions, *, latent_channels: int) -> KLQuantizer:
    return KLQuantizer(latent_channels, options)


def _fsq(options: FSQOptions, *, latent_channels: int) -> FSQuantizer:
    return FSQuantizer(latent_channels, options)


@hookimpl
def atoken_register_quantizers(registry) -> None:
    registry.add(
        "kl", _kl, options=KLOptions, description="continuous latents, diagonal Gaussian + KL"
    )
    registry.add(
        "fsq",
        _fsq,
        options=FSQOptions,
        description="finite scalar quantization (default 8 groups x 6 dims x 4 levels)",
    )
