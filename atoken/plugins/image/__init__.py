"""Built-in image adapter: PNG/JPEG/WebP/BMP/TIFF in, patch tokens (the model's geometry,
AToken's 4x16x16), PNG out."""

from __future__ import annotations

from atoken import hookimpl
from atoken.core.adapter_context import AdapterContext
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.plugins.image.data import atoken_register_data_sources as atoken_register_data_sources
from atoken.plugins.image.tasks import atoken_register_tasks as atoken_register_tasks


def _image(options: ImageOptions, context: AdapterContext) -> ImageAdapter:
    return ImageAdapter(options, context)


@hookimpl
def atoken_register_adapters(registry) -> None:
    registry.add(
        "image",
        _image,
        options=ImageOptions,
        description="still images; native aspect ratio, crop to multiples of the patch side,"
        " frame padding",
    )
