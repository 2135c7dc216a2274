"""Built-in video adapter: MP4/MOV/WebM/MKV/GIF in, 4x16x16 space-time patch tokens, MP4 out."""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions
from atoken.plugins.video.data import atoken_register_data_sources as atoken_register_data_sources
from atoken.plugins.video.tasks import atoken_register_tasks as atoken_register_tasks


def _video(options: VideoOptions) -> VideoAdapter:
    return VideoAdapter(options)


@hookimpl
def atoken_register_adapters(registry) -> None:
    registry.add(
        "video",
        _video,
        options=VideoOptions,
        description="video clips; crop to multiples of 16, frames padded to a multiple of 4",
    )

