"""Built-in image adapter: PNG/JPEG/WebP/BMP/TIFF in, patch tokens (the model's geometry,
AToken's 4x16x16), PNG out."""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.plugins.image.data import atoken_register_data_sources as atoken_register_data_sources
from atoken.plugins.image.tasks import atoken_register_tasks as atoken_register_tasks


@hookimpl
def atoken_register_adapters(registry) -> None:
    registry.add(
        "image",
        ImageAdapter,  # built as ImageAdapter(options, context=AdapterContext)
        options=ImageOptions,
        description="still images; native aspect ratio, crop to multiples of the patch side,"
        " frame padding",
    )
