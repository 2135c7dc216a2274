"""Shared fixtures of the atoken-plugin-3d tests."""

from __future__ import annotations

import pytest
import torch


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
