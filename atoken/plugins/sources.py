"""atoken's modality-free data sources, registered through ``atoken_register_data_sources``.

``files`` (the files under ``path`` that the task's adapter reads, `atoken.core.files_source`)
and ``samples`` (the adapter's ``sample_assets()``) serve any modality; they take no crop options
(their samples need not be pixel arrays). A modality's plugin registers its own
``<modality>.<name>`` sources (the image and video plugins: ``samples``, ``folder``,
``webdataset``, ``files`` with crops), which win over these for that modality's tasks (see
`atoken.train.data.build` for what each option does).

Nothing heavy is imported here: the factories import their source modules when called.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from atoken import hookimpl
from atoken.core.config import Strict
from atoken.core.data_source import DataSourceRequest, DataSourceSpec
from atoken.core.files_source import DEFAULT_CACHE, FilesOptions


class AssetFilesOptions(FilesOptions):
    """``files``: no crop options, samples are whatever the adapter's ``load`` returns."""

    def build(self) -> None:
        return None


class AssetSamplesOptions(Strict):
    """``samples``: the adapter's ``sample_assets()``."""

    cache: int = Field(default=DEFAULT_CACHE, ge=0)
    adapter: dict[str, Any] = {}

    def build(self) -> None:
        return None


def _files(opts: AssetFilesOptions, req: DataSourceRequest):
    from atoken.core.files_source import FilesSource

    return FilesSource(
        req.path, req.adapter, recursive=opts.recursive, cache=opts.cache, max_tokens=req.max_tokens
    )


def _adapter_samples(opts: AssetSamplesOptions, req: DataSourceRequest):
    from atoken.core.files_source import AdapterSamplesSource

    return AdapterSamplesSource(req.adapter, cache=opts.cache, max_tokens=req.max_tokens)


@hookimpl
def atoken_register_data_sources(registry) -> None:
    registry.add(
        "files",
        DataSourceSpec(_files, needs_adapter=True),
        options=AssetFilesOptions,
        description="the files under path that the adapter reads",
    )
    registry.add(
        "samples",
        DataSourceSpec(_adapter_samples, needs_adapter=True),
        options=AssetSamplesOptions,
        description="the adapter's sample_assets()",
    )
