"""``mesh3d`` held to atoken's adapter contract and to the contract of every capability it
declares (atoken.testing), with samples from its own ``sample_assets()``.

Checks that compare tensors (pixel round trips, NaN inputs) skip with their reason: mesh3d's
samples are `Asset3D` and its reconstructions Gaussians; test_adapter_3d.py checks those.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from atoken.testing import CAPABILITY_CONTRACTS, AdapterContextContract, AdapterContract

#: fast options of the other tests: few views, small renders, a bunny at 0.3 of the cube
FAST = {"views": 6, "size": 64, "fill": 0.3, "heldout_views": 2, "eval_size": 32, "lpips": False}
_LOADED: dict[str, Any] = {}


class TestMesh3DContract(AdapterContract, AdapterContextContract, *CAPABILITY_CONTRACTS.values()):
    adapter_name: ClassVar[str] = "mesh3d"
    adapter_options: ClassVar[dict[str, Any]] = FAST

    def make_sample(self, generator: torch.Generator) -> Any:
        """One of the adapter's bundled assets, picked by ``generator`` (loaded once each)."""
        assets = self.adapter().sample_assets()
        key, source, _ = assets[int(torch.randint(len(assets), (1,), generator=generator))]
        if key not in _LOADED:
            _LOADED[key] = self.adapter().load(source)
        return _LOADED[key]


def test_mesh3d_declares_what_it_implements() -> None:
    import atoken

    entry = atoken.default_components().adapters.get("mesh3d")
    assert entry.capabilities == {"comparison_suffix", "sample_assets", "save_labelled_comparison"}
    assert not entry.has("stream_sink") and not entry.has("example")


@pytest.mark.parametrize("capability", ["sample_assets"])
def test_declared_capability_contracts_run_for_mesh3d(capability) -> None:
    contract = CAPABILITY_CONTRACTS[capability]()
    contract.adapter_name = "mesh3d"
    assert contract.capable_adapter(capability).name == "mesh3d"  # declared: no skip
