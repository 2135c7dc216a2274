"""The plugin's own tests: atoken's adapter contract, plus what is special about this modality.

Run them against the installed plugin (they use the same registries as the ``atoken`` command)::

    pip install -c constraints.txt -e examples/atoken-plugin-grayscale
    pytest examples/atoken-plugin-grayscale/tests

atoken's own suite (tests/test_example_plugin.py) also runs the contract against this example,
registering it in process instead of installing it.
"""

from __future__ import annotations

import torch

import atoken
from atoken.testing import AdapterContract


class TestGrayscaleContract(AdapterContract):
    """Every contract test (tokens valid and deterministic, save/load, metrics, model round trip).

    Samples come from the adapter's ``example(generator)``; ``components`` defaults to the
    installed plugins, so this fails with "no adapter named 'grayscale'" until it is installed.
    """

    adapter_name = "grayscale"


def adapter():
    return atoken.default_components().adapters.build("grayscale")


def test_gray_is_replicated_to_rgb_and_averaged_back() -> None:
    a = adapter()
    x = a.example(torch.Generator().manual_seed(0))  # [40, 56]
    tokens = a.to_tokens(x)
    rgb = tokens.feats.view(-1, 4, 16, 16, 3)[:, 0]  # frame 0: [n, 16, 16, 3]
    assert torch.equal(rgb[..., 0], rgb[..., 1]) and torch.equal(rgb[..., 0], rgb[..., 2])
    assert torch.equal(a.from_tokens(tokens), x[4:36, 4:52])  # the centred 32 x 48 crop


def test_options_travel_in_the_tokens_meta() -> None:
    comps = atoken.default_components()
    x = adapter().example(torch.Generator().manual_seed(1))
    tokens = comps.adapters.build("grayscale", {"gamma": 2.0, "invert": True}).to_tokens(x)
    assert (tokens.meta["gamma"], tokens.meta["invert"]) == (2.0, True)
    # an adapter with default options (what `atoken decode` builds) still undoes both
    back = comps.adapters.build("grayscale").from_tokens(tokens)
    torch.testing.assert_close(back, x[4:36, 4:52], atol=1e-6, rtol=0)


def test_short_training_run_from_the_plugins_config_learns(tmp_path) -> None:
    """``train.toml`` beside this folder trains atoken-tiny on the plugin's task in seconds."""
    from pathlib import Path

    import numpy as np

    from atoken.train import Trainer, load_train_config, scale_steps

    config = load_train_config(Path(__file__).parents[1] / "train.toml")
    config = scale_steps(config, min(config.total_steps, 24))
    result = Trainer(config, tmp_path / "run", progress=False).fit()
    losses = [r["l1"] for r in result.history]
    assert len(losses) == config.total_steps and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    model = atoken.Tokenizer.from_pretrained(result.model_dir).eval()
    a = adapter()
    x = a.load(a.sample_assets()[0][1])
    with torch.inference_mode():
        out = model.decode(model.encode([a.to_tokens(x)]))
    assert a.from_tokens(out.split()[0].replace(feats=out.feats.float())).shape == x.shape
