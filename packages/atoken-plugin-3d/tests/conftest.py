"""Shared fixtures of the atoken-plugin-3d tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

#: the release's fixture files (official tiny checkpoints and their outputs), when present
OFFICIAL_FIXTURES = Path(
    os.environ.get(
        "ATOKEN_OFFICIAL_FIXTURES",
        Path(__file__).resolve().parents[4] / "shared" / "reference" / "official",
    )
)


@pytest.fixture(scope="session")
def official_files() -> Callable[..., list[Path]]:
    """``official_files(*names)``: the paths of those fixture files, in order.

    The calling test skips, naming the folder and what is missing, when any file is absent
    (``$ATOKEN_OFFICIAL_FIXTURES``, default ``<workspace>/shared/reference/official``).
    """

    def need(*names: str) -> list[Path]:
        paths = [OFFICIAL_FIXTURES / n for n in names]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            pytest.skip(f"official fixtures absent from {OFFICIAL_FIXTURES}: {missing}")
        return paths

    return need


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread, then restore the setting.

    The renderer's and decoder's tensors in these tests are tiny: extra threads only contend
    (seconds per test on a shared 2-core CPU).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
