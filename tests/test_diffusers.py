"""The dense diffusers interface (`AutoencoderAToken`), tested against diffusers itself: a tiny
UNet2DModel + DDPMScheduler trains on atoken latents of real photos, samples, and the samples
decode through atoken; the example runs tiny."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import atoken
from atoken.core.errors import InputError
from atoken.core.latent_stats import compute_latent_stats
from atoken.core.reconstruct import adapter_for, reconstruct_sample

diffusers = pytest.importorskip("atoken.integrations.diffusers")  # imports diffusers (shimmed)
AutoencoderAToken = diffusers.AutoencoderAToken

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.configuration_utils import ConfigMixin  # noqa: E402
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generate-diffusion" / "train.py"


@pytest.fixture
def one_thread():
    """One torch thread for the tiny UNet (its ops are too small to share; on a busy 2-core
    machine two threads were 10x slower), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vae() -> AutoencoderAToken:
    return AutoencoderAToken.from_pretrained("atoken-tiny-photo")


def chw(img: torch.Tensor) -> torch.Tensor:
    return img.permute(2, 0, 1)


def crops(photos, side: int) -> torch.Tensor:
    """``[6, 3, side, side]``: two crops of each real photo."""
    out = []
    for img in photos.values():
        out += [chw(img[:side, :side]), chw(img[-side:, -side:])]
    return torch.stack(out)


def test_is_a_diffusers_model_with_documented_scaling(vae) -> None:
    assert isinstance(vae, ModelMixin) and isinstance(vae, ConfigMixin)
    cfg = vae.config
    assert cfg.latent_channels == 48 and cfg.spatial_compression_ratio == 16
    assert cfg.temporal_compression_ratio == 4 and not cfg.discrete
    # the shipped model has no statistics: identity scaling, and the config says so
    assert (cfg.scaling_factor, cfg.shift_factor) == (1.0, 0.0)
    assert cfg.latents_mean is None and "atoken stats" in cfg.latents_stats_note


def test_round_trip_equals_the_tokenizers_own_reconstruction(vae, photos) -> None:
    images = [photos["astronaut"][:64, :128], photos["coffee"][-64:, -128:]]
    x = torch.stack([chw(i) for i in images])  # [2, 3, 64, 128]
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        assert dist.mode().shape == (2, 48, 4, 8)
        out = vae.decode(dist.mode()).sample
    assert out.shape == x.shape
    tok = vae.tokenizer
    adapter = adapter_for("x.png", model=tok)
    for b, img in enumerate(images):
        ref = reconstruct_sample(tok, adapter, img)
        torch.testing.assert_close(out[b], chw(ref.reconstruction), atol=1e-6, rtol=0)
        # position [:, :, i, j] is the token at patch row i, column j
        with torch.no_grad():
            latents = tok.encode([adapter.to_tokens(img)])
        row = int(
            ((latents.tokens.coords[:, 1] == 3) & (latents.tokens.coords[:, 2] == 7)).nonzero()
        )
        torch.testing.assert_close(dist.mode()[b, :, 3, 7], latents.mean[row], atol=1e-6, rtol=0)
    # a posterior sample differs from the mode by about the posterior std
    z = dist.sample(generator=torch.Generator().manual_seed(0))
    assert 0 < (z - dist.mode()).abs().mean() < 10 * dist.std.mean()


def test_video_latents_are_five_dimensional(vae, photos) -> None:
    img = photos["chelsea"]
    clip = torch.stack([chw(img[40:72, 8 * t : 8 * t + 48]) for t in range(8)], 1)[None]
    with torch.no_grad():
        z = vae.encode(clip).latent_dist.mode()  # [1, 48, 2, 2, 3]
        out = vae.decode(z).sample
    assert z.shape == (1, 48, 2, 2, 3) and out.shape == clip.shape
    tok = vae.tokenizer
    ref = reconstruct_sample(tok, adapter_for("x.mp4", model=tok), clip[0].permute(1, 2, 3, 0))
    torch.testing.assert_close(out[0].permute(1, 2, 3, 0), ref.reconstruction, atol=1e-6, rtol=0)


def test_bad_shapes_are_one_clear_line(vae) -> None:
    with pytest.raises(InputError, match=r"H=40 not divisible by the patch.*multiples of 16"):
        vae.encode(torch.zeros(1, 3, 40, 48))
    with pytest.raises(InputError, match=r"T=6 not divisible.*T of 4"):
        vae.encode(torch.zeros(1, 3, 6, 32, 32))
    with pytest.raises(InputError, match=r"expected pixels \[B, 3, H, W\]"):
        vae.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(InputError, match=r"expected latents \[B, 48, h, w\]"):
        vae.decode(torch.zeros(1, 16, 2, 2))


def test_fsq_model_gives_a_deterministic_distribution(photos) -> None:
    tok = atoken.build_tokenizer("atoken-tiny", quantizer={"name": "fsq"}).eval()
    fsq = AutoencoderAToken(tok).eval()
    x = chw(photos["coffee"][:64, :96])[None]
    with torch.no_grad():
        dist = fsq.encode(x).latent_dist
        assert torch.equal(dist.mode(), dist.sample())
        out = fsq.decode(dist.mode()).sample
    assert fsq.config.discrete and out.shape == x.shape
    ref = reconstruct_sample(tok, adapter_for("x.png", model=tok), photos["coffee"][:64, :96])
    torch.testing.assert_close(out[0], chw(ref.reconstruction), atol=1e-6, rtol=0)


def test_stats_become_latents_mean_std_and_survive_save(vae, photos, tmp_path) -> None:
    x = crops(photos, 64)
    tok = atoken.Tokenizer.from_pretrained("atoken-tiny-photo").eval()
    adapter = adapter_for("x.png", model=tok)
    tok.latent_stats = compute_latent_stats(
        tok, [[adapter.to_tokens(i.permute(1, 2, 0)) for i in x]], data="crops"
    )
    with_stats = AutoencoderAToken(tok)
    cfg = with_stats.config
    assert cfg.scaling_factor == 1.0 and cfg.shift_factor is None
    assert cfg.latents_mean == list(tok.latent_stats.mean) and len(cfg.latents_std) == 48
    with torch.no_grad():
        z = with_stats.normalize_latents(with_stats.encode(x).latent_dist.mode())  # [6, 48, 4, 4]
    per_channel = z.permute(1, 0, 2, 3).reshape(48, -1).double()
    assert per_channel.mean(1).abs().max() < 1e-5
    assert (per_channel.std(1, unbiased=False) - 1).abs().max() < 1e-4
    with_stats.save_pretrained(tmp_path / "m")
    again = AutoencoderAToken.from_pretrained(tmp_path / "m")
    assert again.config.latents_std == cfg.latents_std
    assert again.config.model_id == vae.config.model_id


def test_a_diffusers_unet_trains_on_atoken_latents_and_samples_decode(
    vae, photos, one_thread
) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        latents = vae.encode(crops(photos, 64)).latent_dist.mode()  # [6, 48, 4, 4]
    mean = latents.mean((0, 2, 3), keepdim=True)
    std = latents.std((0, 2, 3), keepdim=True)
    data = (latents - mean) / std
    unet = UNet2DModel(
        sample_size=4,
        in_channels=48,
        out_channels=48,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        attention_head_dim=16,
    )
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(data.shape, generator=gen)
    t = torch.randint(1000, (len(data),), generator=gen)
    xt = ddpm.add_noise(data, noise, t)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):  # one fixed batch: the loss must fall
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    ddim = DDIMScheduler.from_config(ddpm.config)
    ddim.set_timesteps(4)
    z = torch.randn((2, 48, 4, 4), generator=gen)
    with torch.no_grad():
        for step in ddim.timesteps:
            z = ddim.step(unet(z, step).sample, step, z).prev_sample
        pixels = vae.decode(z * std + mean).sample
    assert pixels.shape == (2, 3, 64, 64) and torch.isfinite(pixels).all()


def test_the_example_runs_tiny(tmp_path, one_thread) -> None:
    spec = importlib.util.spec_from_file_location("generate_diffusion_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--out", str(tmp_path), "--steps", "3", "--bank", "8", "--crop", "64", "--no-frames"]
    args += ["--samples", "2", "--sample-steps", "2", "--batch", "4", "--width", "32"]
    report = module.main(args)
    from PIL import Image

    with Image.open(tmp_path / "samples.png") as grid:
        assert grid.size[0] >= 2 * 64 and grid.size[1] >= 2 * 64
    saved = json.loads((tmp_path / "timings.json").read_text())
    assert saved["samples_finite"] and saved["latent_shape"] == [48, 4, 4]
    assert set(saved["timings_s"]) >= {"encode_s", "train_s", "sample_s", "decode_s", "total_s"}
    assert abs(report["normalized_data_mean"]) < 1e-4
