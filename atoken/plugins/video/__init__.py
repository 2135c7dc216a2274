"""Built-in video adapter: MP4/MOV/WebM/MKV/GIF in, space-time patch tokens (the model's
geometry, AToken's 4x16x16), MP4 out."""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions
from atoken.plugins.video.data import atoken_register_data_sources as atoken_register_data_sources
from atoken.plugins.video.tasks import atoken_register_tasks as atoken_register_tasks


@hookimpl
def atoken_register_adapters(registry) -> None:
    registry.add(
        "video",
        VideoAdapter,  # built as VideoAdapter(options, context=AdapterContext)
        options=VideoOptions,
        description="video clips; crop to multiples of the patch side, frames padded to whole"
        " patches",
    )
