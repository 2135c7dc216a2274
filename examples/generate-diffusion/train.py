"""A diffusers UNet trained on atoken's dense latents of the sample photos; samples decode through
atoken.

    python examples/generate-diffusion/train.py --out runs/gen-diffusion        # ~3 CPU minutes
    python examples/generate-diffusion/train.py --out /tmp/g --steps 3 --bank 8 --crop 64 \
        --samples 2 --sample-steps 2                                           # a smoke run

1. `AutoencoderAToken.from_pretrained("atoken-tiny-photo")` (the shipped model) encodes a bank
   of random crops of the built-in training photos (`atoken.plugins.image.samples`, split
   ``train``) to dense posterior means ``[N, 48, crop/16, crop/16]``.
2. The latents are normalised per channel: by the model's stored statistics (``atoken stats``)
   when it has them, else by statistics computed here on the bank
   (`atoken.core.latent_stats.LatentAccumulator`, set on the tokenizer as ``atoken stats``
   would store them). A generator trains on ``(z - latents_mean) / latents_std``.
3. A small `diffusers.UNet2DModel` learns to predict the noise of a `DDPMScheduler`
   (cosine schedule, 1000 steps), AdamW; the bank holds each crop and its mirror image, both encoded.
4. A `DDIMScheduler` with the same schedule samples ``--samples`` latents, which are
   denormalised and decoded by atoken (``vae.decode(z).sample``).
5. ``OUT/samples.png``: a labelled grid, one row of training crops decoded through atoken (what
   the generator aims at) and rows of generated samples; ``OUT/timings.json``: the wall-clock
   of each stage, the loss curve, sizes and settings. Both files land together (or neither).

References: Ho et al., "Denoising Diffusion Probabilistic Models" (2020); Song et al.,
"Denoising Diffusion Implicit Models" (2021); Nichol & Dhariwal (2021) cosine schedule;
diffusers' unconditional training example (UNet2DModel + DDPMScheduler), written here.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from atoken.core.latent_stats import LatentAccumulator
from atoken.core.pictures import to_uint8
from atoken.core.progress import rate_progress
from atoken.core.serialization import atomic_write_bytes, atomic_write_json, outputs_together
from atoken.integrations.diffusers import AutoencoderAToken  # imports diffusers (shimmed)

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

# diffusers itself is imported inside the functions: after atoken.integrations.diffusers has
# made torchvision importable (the venv's CUDA torchvision breaks `import diffusers` on CPU torch)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for samples.png, timings.json")
    p.add_argument("--model", default="atoken-tiny-photo", help="atoken model name or directory")
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--batch", type=int, default=32, help="latents per training step")
    p.add_argument("--bank", type=int, default=512, help="random training crops encoded")
    p.add_argument("--crop", type=int, default=128, help="crop side in pixels (multiple of 32)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--width", type=int, default=64, help="UNet channels of the first level")
    p.add_argument("--samples", type=int, default=16, help="samples generated")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--no-frames", action="store_true", help="photos only (skip decoding the video frames)"
    )
    args = p.parse_args(argv)
    if args.crop % 32 or args.crop < 32:
        p.error(
            f"--crop must be a multiple of 32 (two UNet levels over 16-pixel patches), got {args.crop}"
        )
    for name in ("steps", "batch", "bank", "samples", "sample_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def training_photos(video_frames: bool = True) -> list[tuple[str, torch.Tensor]]:
    """The built-in ``train`` split as ``(key, [H, W, 3] in [-1, 1])``."""
    from atoken.plugins.image.samples import SampleImagesSource

    return SampleImagesSource("train", video_frames=video_frames).images()


def random_crops(
    photos: list[tuple[str, torch.Tensor]], n: int, crop: int, generator: torch.Generator
) -> torch.Tensor:
    """``[n, 3, crop, crop]``: each from a random photo, its shorter side first resized to a
    random length in [crop, 2 crop] (so a crop sees a large part of the photo), then cut at a
    random place."""
    out = []
    for _ in range(n):
        _, img = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        x = img.permute(2, 0, 1)[None]  # [1, 3, H, W]
        side = crop + int(torch.randint(crop + 1, (1,), generator=generator))
        scale = side / min(x.shape[-2:])
        size = (max(crop, round(x.shape[-2] * scale)), max(crop, round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top = int(torch.randint(size[0] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(size[1] - crop + 1, (1,), generator=generator))
        out.append(x[0, :, top : top + crop, left : left + crop].clamp(-1, 1))
    return torch.stack(out)  # [n, 3, crop, crop]


@torch.no_grad()
def encode_bank(vae: AutoencoderAToken, pixels: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Posterior means ``[N, Cz, h, w]`` of pixels ``[N, 3, H, W]``."""
    return torch.cat(
        [vae.encode(pixels[i : i + batch]).latent_dist.mode() for i in range(0, len(pixels), batch)]
    )


def with_stats(
    vae: AutoencoderAToken, latents: torch.Tensor, data: str
) -> tuple[AutoencoderAToken, str]:
    """``vae`` with latent statistics: its own, else computed on ``latents [N, Cz, h, w]``."""
    tok = vae.tokenizer
    if tok.latent_stats is not None:
        return vae, "stored with the model (atoken stats)"
    acc = LatentAccumulator(latents.shape[1])
    acc.update(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]), samples=len(latents))
    tok.latent_stats = acc.result(model_id=tok.model_id, of="posterior means", data=data)
    return AutoencoderAToken(tok).eval(), "computed on the training bank"


def build_unet(channels: int, side: int, width: int) -> UNet2DModel:
    """Two levels (side -> side/2), attention at the coarse level."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=side,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=2,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=min(32, width // 2),
        attention_head_dim=32,
    )


def train(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    data: torch.Tensor,
    *,
    steps: int,
    batch: int,
    lr: float,
    generator: torch.Generator,
) -> list[float]:
    """Denoiser training on normalised latents ``data [N, Cz, h, w]`` (the target is the
    scheduler's ``prediction_type``: the noise, or v); losses per step."""
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    losses: list[float] = []
    unet.train()
    n_train = scheduler.config.num_train_timesteps
    with rate_progress("denoiser training", steps, unit="steps") as advance:
        for _ in range(steps):
            idx = torch.randint(len(data), (batch,), generator=generator)
            x0 = data[idx]  # [b, Cz, h, w]
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(n_train, (batch,), generator=generator)
            xt = scheduler.add_noise(x0, noise, t)
            if scheduler.config.prediction_type == "v_prediction":
                target = scheduler.get_velocity(x0, noise, t)
            else:
                target = noise
            loss = F.mse_loss(unet(xt, t).sample, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            advance()
    unet.eval()
    return losses


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDIMScheduler,
    shape: tuple[int, ...],
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """DDIM samples ``shape`` (normalised latents)."""
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        eps = unet(x, t).sample
        x = scheduler.step(eps, t, x).prev_sample
    return x


def labelled_grid(rows: list[tuple[str, torch.Tensor]], per_row: int, gap: int = 4) -> bytes:
    """PNG bytes: each row ``(label, [n, 3, H, W] in [-1, 1])`` under a text strip."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1].shape[-2:]
    strip = 14
    width = per_row * w + (per_row + 1) * gap
    height = len(rows) * (strip + h + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for label, images in rows:
        draw.text((gap, y), label, fill=(0, 0, 0))
        y += strip
        for i, img in enumerate(images[:per_row]):
            tile = Image.fromarray(to_uint8(img.permute(1, 2, 0)))
            canvas.paste(tile, (gap + i * (w + gap), y))
        y += h + gap
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    vae = AutoencoderAToken.from_pretrained(args.model)
    photos = training_photos(video_frames=not args.no_frames)
    pixels = random_crops(photos, args.bank, args.crop, gen)  # [N, 3, crop, crop]
    times["load_and_crop_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    # flips are made in pixels and encoded: flipping the latent grid would mirror the patches'
    # layout but not their content, which no image encodes to
    pixels = torch.cat([pixels, pixels.flip(-1)])
    latents = encode_bank(vae, pixels)  # [2N, 48, crop/16, crop/16]
    times["encode_s"] = time.perf_counter() - t
    vae, stats_from = with_stats(
        vae, latents, f"{args.bank} random {args.crop}px crops of the train photos"
    )
    data = vae.normalize_latents(latents)  # [N, 48, h, w], ~N(0, 1) per channel

    from diffusers import DDIMScheduler, DDPMScheduler

    unet = build_unet(latents.shape[1], latents.shape[-1], args.width)
    # diffusers clips the predicted x0 to [-1, 1] by default (pixel data); normalised latents
    # are ~N(0, 1), so the range is +-3 (99.7% of them). v-prediction, as SD 2 does with a
    # cosine-like schedule, keeps the target bounded at every noise level.
    ddpm = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample_range=3.0,
        prediction_type="v_prediction",
    )
    t = time.perf_counter()
    losses = train(unet, ddpm, data, steps=args.steps, batch=args.batch, lr=args.lr, generator=gen)
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ddim = DDIMScheduler.from_config(ddpm.config)
    z = sample(unet, ddim, (args.samples, *data.shape[1:]), args.sample_steps, gen)
    times["sample_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        decoded = vae.decode(vae.denormalize_latents(z)).sample.clamp(-1, 1)  # [S, 3, crop, crop]
        references = vae.decode(latents[: min(args.samples, 8)]).sample.clamp(-1, 1)
    times["decode_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    per_row = min(8, args.samples)
    rows = [("training crops, encoded and decoded by atoken", references)]
    for r in range(0, args.samples, per_row):
        rows.append(
            (
                f"DDIM samples {r + 1}-{min(args.samples, r + per_row)}, decoded by atoken",
                decoded[r : r + per_row],
            )
        )
    window = max(1, min(50, len(losses) // 10))
    report = {
        "model": args.model,
        "model_id": vae.tokenizer.model_id,
        "latent_shape": list(latents.shape[1:]),
        "latent_stats": stats_from,
        "normalized_data_mean": float(data.mean()),
        "normalized_data_std": float(data.std()),
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "loss_curve": [
            float(np.mean(losses[i : i + window])) for i in range(0, len(losses), window)
        ],
        "samples_finite": bool(torch.isfinite(decoded).all()),
        "timings_s": {k: round(v, 3) for k, v in times.items()},
    }
    with outputs_together():
        atomic_write_bytes(args.out / "samples.png", labelled_grid(rows, per_row))
        atomic_write_json(args.out / "timings.json", report)
    print(json.dumps({k: v for k, v in report.items() if k != "loss_curve"}, indent=2))
    print(f"samples -> {args.out / 'samples.png'}")
    return report


if __name__ == "__main__":
    main()
