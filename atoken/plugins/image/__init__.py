"""Built-in image adapter: PNG/JPEG/WebP/BMP/TIFF in, 4x16x16 patch tokens, PNG out."""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.plugins.image.data import atoken_register_data_sources as atoken_register_data_sources
from atoken.plugins.image.tasks import atoken_register_tasks as atoken_register_tasks


def _image(options: ImageOptions) -> ImageAdapter:
    return ImageAdapter(options)


@hookimpl
def atoken_register_adapters(registry) -> None:
    registry.add(
        "image",
        _image,
        options=ImageOptions,
        description="still images; native aspect ratio, crop to multiples of 16, 4-frame padding",
    )

