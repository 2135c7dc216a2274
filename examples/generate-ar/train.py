"""Train a tiny autoregressive prior over atoken's FSQ indices (8 codes per position) on CPU,
sample from it, and decode the samples through atoken.

    python examples/generate-ar/train.py --out runs/generate-ar

1. An FSQ tokenizer (cached in ``OUT/fsq-tokenizer/``): the shipped ``atoken-tiny-photo`` (KL)
   weights in an ``atoken-tiny`` with the paper's So/D quantizer (``fsq``: 8 groups x 6 dims x 4
   levels), the projection's mean rows and the decoder's input columns rescaled per channel so
   the latents land in FSQ's range (``calibrate``), then fine-tuned with atoken's trainer
   (``fsq-tiny.toml``; a killed run resumes).
2. Data: random square crops of the built-in ``train`` photos, resized to ``--size`` pixels,
   encoded to ``indices [P, 8]`` per crop (positions in raster order).
3. The prior (`model.DepthARPrior`: spatial transformer over positions, depth transformer over
   the 8 codes of a position) trains with cross-entropy on every code.
4. ``--samples`` images are drawn, decoded by the tokenizer, and written as a labelled grid beside
   decoded training crops (``samples.png``); ``metrics.json`` holds the timings, the loss per
   code (first / last steps, a held-out loss on crops of the ``tune`` photos, and the unigram
   entropy of the codes as the baseline a model without context reaches) and samples/s.

References: AToken (arXiv 2509.14476), FSQ So/D (8 x 4096 codes per patch) and its stage-4
switch from continuous to discrete latents; RQ-Transformer (Lee et al., CVPR 2022) for the
spatial/depth factorisation (see model.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import atoken
from atoken.core.errors import InputError
from atoken.core.pictures import to_uint8
from atoken.core.serialization import (
    atomic_write_bytes,
    atomic_write_json,
    outputs_together,
    save_tensors,
)
from atoken.core.tokens import PatchTokens, collate

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "fsq-tiny.toml"
#: the FSQ of the paper's So/D tokenizer: 8 groups of 6 dims, 4 levels each (4096 per code)
FSQ = {"name": "fsq", "options": {"levels": [4, 4, 4, 4, 4, 4], "groups": 8}}
#: slope of FSQ's bound-then-scale at 0 for 4 levels: d/dz [tanh(z + shift) * half - offset] / 2
_FSQ_SLOPE = 1.5 * (1 + 1e-3) * (1 - (0.5 / (1.5 * (1 + 1e-3))) ** 2) / 2


def _load_model_module():
    """model.py beside this file, under a name of its own (no ``sys.path`` change)."""
    spec = importlib.util.spec_from_file_location("generate_ar_model", HERE / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- the tokenizer
def calibrate(model: atoken.Tokenizer, images: list[torch.Tensor], adapter, target: float) -> None:
    """Rescale an FSQ model made from continuous weights so each latent channel's posterior mean
    has standard deviation ``target`` (on ``images``), and undo the scale (and FSQ's slope at 0)
    in the decoder's input layer: without training, the decoder then sees its old latents plus
    FSQ's rounding error. Both layers have no bias, so a per-channel scale is exact."""
    c = model.config.latent_channels
    with torch.no_grad():
        mean = model.encode([adapter.to_tokens(im) for im in images]).mean  # [N, Cz]
        scale = target / mean.std(0).clamp_min(1e-6)  # [Cz]
        model.proj.weight[:c] *= scale[:, None]
        model.decoder.input_layer.weight /= (scale * _FSQ_SLOPE)[None, :]


def fsq_tokenizer(
    folder: Path,
    steps: int,
    *,
    target_std: float,
    tokens_per_batch: int | None,
    eval_res: int | None = None,
    log=print,
) -> tuple[atoken.Tokenizer, dict[str, Any]]:
    """The cached FSQ tokenizer in ``folder`` (made and fine-tuned there when missing)."""
    from atoken.plugins.image.samples import SampleImagesSource
    from atoken.train import Trainer, load_train_config, scale_steps

    done = folder / "tokenizer.json"
    model_dir = folder / "run" / "model"
    if done.is_file() and (model_dir / "config.json").is_file():
        info = json.loads(done.read_text(encoding="utf-8"))
        log(f"FSQ tokenizer: cached in {model_dir} ({info['steps']} fine-tuning steps)")
        return atoken.Tokenizer.from_pretrained(model_dir).eval(), {**info, "cached": True}

    comps = atoken.default_components()
    init_dir = folder / "init"
    if not (init_dir / "config.json").is_file():
        kl = atoken.Tokenizer.from_pretrained("atoken-tiny-photo")
        model = atoken.build_tokenizer("atoken-tiny", quantizer=FSQ).eval()
        model.load_state_dict(kl.state_dict())  # same layout: FSQ has no parameters
        adapter = comps.adapters.build("image", {"max_res": 256})
        calibrate(
            model, [im for _, im in SampleImagesSource("train").images()], adapter, target_std
        )
        model.save_pretrained(init_dir)
    config = load_train_config(CONFIG, components=comps)
    config = config.model_copy(
        update={"model": config.model.model_copy(update={"from_pretrained": str(init_dir)})}
    )
    config = scale_steps(config, steps)
    if tokens_per_batch is not None:
        stages = [
            s.model_copy(update={"tokens_per_batch": tokens_per_batch}) for s in config.stages
        ]
        config = config.model_copy(update={"stages": stages})
    if eval_res is not None:  # the monitor's held-out photos, downscaled (quick runs, tests)
        config = config.model_copy(
            update={"eval": config.eval.model_copy(update={"max_res": eval_res})}
        )
    log(f"FSQ tokenizer: fine-tuning {init_dir} for {steps} steps in {folder / 'run'}")
    start = time.perf_counter()
    result = Trainer(config, folder / "run", components=comps, resume=True, progress=False).fit()
    seconds = time.perf_counter() - start
    evals = [json.loads(line) for line in (folder / "run" / "eval.jsonl").read_text().splitlines()]
    info = {
        "base": "atoken-tiny-photo (KL), quantizer switched to fsq and calibrated",
        "quantizer": FSQ,
        "calibration_std": target_std,
        "steps": result.steps,
        "finetune_seconds": round(seconds, 1),
        "tune_psnr": {str(e["step"]): round(e["psnr"], 2) for e in evals},
        "model_dir": str(model_dir),
    }
    atomic_write_json(done, info)
    return atoken.Tokenizer.from_pretrained(model_dir).eval(), {**info, "cached": False}


# ---------------------------------------------------------------------------- data
def random_crops(
    images: list[torch.Tensor], n: int, size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """``n`` random square crops (side between ``size`` and the image's shorter side, random
    horizontal flip) of ``[H, W, 3]`` images, each resized to ``[size, size, 3]``."""
    out = []
    for _ in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = im.shape[:2]
        short = min(h, w)
        if short < size:
            raise InputError(f"an image of {h}x{w} pixels is smaller than --size {size}")
        side = int(torch.randint(size, short + 1, (1,), generator=generator))
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = im[top : top + side, left : left + side].permute(2, 0, 1)[None]  # [1, 3, s, s]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
        crop = crop[0].permute(1, 2, 0).clamp(-1, 1)  # [size, size, 3]
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(1)
        out.append(crop.contiguous())
    return out


def raster_order(coords: torch.Tensor) -> torch.Tensor:
    """Row order of one image's tokens ``coords [P, 4]`` that puts them in raster order."""
    cols = int(coords[:, 2].max()) + 1
    return torch.argsort(coords[:, 1].long() * cols + coords[:, 2].long())


@torch.no_grad()
def encode_indices(
    tokenizer: atoken.Tokenizer, adapter, crops: list[torch.Tensor], batch: int = 64
) -> torch.Tensor:
    """Square crops -> FSQ indices ``[n, P, G]`` int64, positions in raster order."""
    out = []
    for i in range(0, len(crops), batch):
        toks = [adapter.to_tokens(c) for c in crops[i : i + batch]]
        latents = tokenizer.encode(toks)
        if latents.indices is None:
            raise InputError("the tokenizer is continuous; the AR example needs an FSQ model")
        for s, part in enumerate(latents.tokens.split()):
            lo, hi = int(latents.tokens.cu_seqlens[s]), int(latents.tokens.cu_seqlens[s + 1])
            out.append(latents.indices[lo:hi][raster_order(part.coords)].long())  # [P, G]
    return torch.stack(out)  # [n, P, G]


@torch.no_grad()
def decode_indices(
    tokenizer: atoken.Tokenizer, adapter, indices: torch.Tensor, size: int
) -> list[torch.Tensor]:
    """Indices ``[n, P, G]`` (raster order) -> ``n`` images ``[size, size, 3]`` in [-1, 1]."""
    blank = adapter.to_tokens(torch.zeros(size, size, 3))  # the layout of one crop
    order = raster_order(blank.coords)
    n, p, g = indices.shape
    if p != blank.coords.shape[0]:
        raise InputError(f"indices hold {p} positions; a {size}x{size} image has {len(order)}")
    rows = torch.empty_like(indices)
    rows[:, order] = indices  # back to the adapter's row order
    layout = collate([blank] * n)
    latents = tokenizer.latents_from_indices(rows.reshape(n * p, g), layout)
    decoded = tokenizer.decode(latents)
    return [
        adapter.from_tokens(PatchTokens(t.feats, t.coords, "image", blank.meta)).clamp(-1, 1)
        for t in decoded.split()
    ]


# ---------------------------------------------------------------------------- pictures
def labelled_grid(
    panels: list[tuple[str, list[torch.Tensor], list[str]]], columns: int, scale: int
) -> Image.Image:
    """Panels side by side, each a titled grid of ``[H, W, 3]`` images with a caption each."""
    drawn = []
    for title, images, captions in panels:
        tiles = [Image.fromarray(to_uint8(im.float().cpu())) for im in images]
        tw, th = tiles[0].width * scale, tiles[0].height * scale
        cell_w, cell_h = max(tw, 6 * max(len(c) for c in captions) + 4), th + 14
        rows = math.ceil(len(tiles) / columns)
        panel = Image.new("RGB", (cell_w * columns, 18 + cell_h * rows), "white")
        draw = ImageDraw.Draw(panel)
        draw.text((2, 2), title, fill="black")
        for i, (tile, cap) in enumerate(zip(tiles, captions, strict=True)):
            x, y = cell_w * (i % columns), 18 + cell_h * (i // columns)
            panel.paste(tile.resize((tw, th), Image.NEAREST), (x, y + 12))
            draw.text((x + 2, y), cap, fill="black")
        drawn.append(panel)
    gap = 16
    canvas = Image.new(
        "RGB",
        (sum(p.width for p in drawn) + gap * (len(drawn) - 1), max(p.height for p in drawn)),
        "white",
    )
    x = 0
    for p in drawn:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return canvas


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- main
def unigram_entropy(indices: torch.Tensor, codebook: int) -> list[float]:
    """Entropy (nats) of each code's empirical distribution, ``indices [n, P, G]``: the loss of
    a model that knows only how often each value occurs."""
    out = []
    for g in range(indices.shape[2]):
        p = torch.bincount(indices[..., g].flatten(), minlength=codebook).double()
        p = p[p > 0] / p.sum()
        out.append(float(-(p * p.log()).sum()))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/generate-ar"), help="output folder")
    ap.add_argument("--tokenizer-steps", type=int, default=400, help="FSQ fine-tuning steps")
    ap.add_argument("--tokenizer-tokens", type=int, default=None, help="tokens per batch there")
    ap.add_argument("--tokenizer-eval-res", type=int, default=None, help="monitor's max side")
    ap.add_argument("--calibration-std", type=float, default=0.8)
    ap.add_argument("--size", type=int, default=64, help="crop side in pixels (multiple of 16)")
    ap.add_argument("--crops", type=int, default=2048, help="training crops")
    ap.add_argument("--steps", type=int, default=800, help="prior training steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--spatial-depth", type=int, default=4)
    ap.add_argument("--depth-depth", type=int, default=2)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    checks = {
        "--size": (args.size >= 16 and args.size % 16 == 0, "a positive multiple of 16"),
        "--steps": (args.steps >= 2, ">= 2"),
        "--tokenizer-steps": (args.tokenizer_steps >= 1, ">= 1"),
        "--crops": (args.crops >= args.batch, f">= --batch ({args.batch})"),
        "--batch": (args.batch >= 1, ">= 1"),
        "--samples": (args.samples >= 1, ">= 1"),
        "--temperature": (args.temperature > 0, "> 0"),
    }
    for flag, (ok, expected) in checks.items():
        if not ok:
            ap.error(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: expected {expected}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns what ``metrics.json`` holds."""
    from atoken.plugins.image.samples import SampleImagesSource

    args = parse_args(argv)
    out: Path = args.out
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.perf_counter()

    tokenizer, tok_info = fsq_tokenizer(
        out / "fsq-tokenizer",
        args.tokenizer_steps,
        target_std=args.calibration_std,
        tokens_per_batch=args.tokenizer_tokens,
        eval_res=args.tokenizer_eval_res,
    )
    adapter = atoken.default_components().adapters.build("image", {"lpips": False})
    fsq = tokenizer.quantizer
    groups, codebook = fsq.groups, fsq.codebook_size

    t0 = time.perf_counter()
    train_images = [im for _, im in SampleImagesSource("train").images()]
    tune_images = [im for _, im in SampleImagesSource("tune").images()]
    train = encode_indices(
        tokenizer, adapter, random_crops(train_images, args.crops, args.size, gen)
    )
    heldout_n = max(args.batch, min(256, args.crops // 4))
    heldout = encode_indices(
        tokenizer, adapter, random_crops(tune_images, heldout_n, args.size, gen)
    )
    encode_s = time.perf_counter() - t0
    n, positions, _ = train.shape
    print(
        f"data: {n} crops of {args.size}x{args.size} -> indices {list(train.shape)} ({encode_s:.1f} s)"
    )

    Prior = _load_model_module().DepthARPrior
    prior = Prior(
        positions,
        groups,
        codebook,
        width=args.width,
        spatial_depth=args.spatial_depth,
        depth_depth=args.depth_depth,
    )
    params = sum(p.numel() for p in prior.parameters())
    opt = torch.optim.AdamW(prior.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, min(100, args.steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    probe = train[: min(256, n)]

    @torch.no_grad()
    def per_code(data: torch.Tensor) -> list[float]:
        prior.eval()
        losses = torch.stack(
            [prior.loss_per_code(data[i : i + 64]) for i in range(0, len(data), 64)]
        )  # [chunks, G]
        sizes = torch.tensor([len(data[i : i + 64]) for i in range(0, len(data), 64)])
        prior.train()
        return [round(float(v), 4) for v in (losses * sizes[:, None]).sum(0) / sizes.sum()]

    before = {"train": per_code(probe), "heldout": per_code(heldout)}
    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    prior.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch = train[torch.randint(n, (args.batch,), generator=gen)]  # [B, P, G]
        codes_loss = prior.loss_per_code(batch)  # [G]
        loss = codes_loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            rec = {
                "step": step,
                "loss": round(float(loss.detach()), 4),
                "per_code": [round(float(v), 3) for v in codes_loss.detach()],
                "seconds": round(time.perf_counter() - t0, 1),
            }
            curve.append(rec)
            rate = (step + 1) / max(time.perf_counter() - t0, 1e-9)
            eta = time.strftime("%H:%M:%S", time.gmtime((args.steps - step - 1) / rate))
            print(
                f"step {step + 1}/{args.steps}  loss {rec['loss']:.3f}  per code"
                f" {rec['per_code']}  {rate:.3g} steps/s  ETA {eta}",
                flush=True,
            )
    train_s = time.perf_counter() - t0
    after = {"train": per_code(probe), "heldout": per_code(heldout)}

    prior.eval()
    t0 = time.perf_counter()
    sampled = prior.sample(
        args.samples, temperature=args.temperature, top_k=args.top_k, generator=gen
    )  # [S, P, G]
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = decode_indices(tokenizer, adapter, sampled, args.size)
    decode_s = time.perf_counter() - t0
    shown = min(args.samples, 16)
    references = decode_indices(tokenizer, adapter, train[:shown], args.size)
    columns = max(1, min(4, shown))
    grid = labelled_grid(
        [
            (
                f"AR samples (T={args.temperature}, top-k={args.top_k})",
                images[:shown],
                [f"sample {i}" for i in range(shown)],
            ),
            (
                "training crops through the FSQ tokenizer",
                references,
                [f"train {i}" for i in range(shown)],
            ),
        ],
        columns=columns,
        scale=max(1, 128 // args.size),
    )
    metrics = {
        "tokenizer": tok_info,
        "data": {
            "crop_size": args.size,
            "train_crops": n,
            "heldout_crops": len(heldout),
            "positions": positions,
            "codes_per_position": groups,
            "codebook_size": codebook,
            "encode_seconds": round(encode_s, 1),
            "unigram_entropy_per_code": [round(v, 4) for v in unigram_entropy(train, codebook)],
            "uniform_entropy": round(math.log(codebook), 4),
        },
        "prior": {
            "parameters": params,
            "width": args.width,
            "spatial_depth": args.spatial_depth,
            "depth_depth": args.depth_depth,
            "steps": args.steps,
            "batch": args.batch,
            "train_seconds": round(train_s, 1),
            "loss_per_code_before": before,
            "loss_per_code_after": after,
            "curve": curve,
        },
        "sampling": {
            "samples": args.samples,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "sample_seconds": round(sample_s, 2),
            "samples_per_second": round(args.samples / sample_s, 2),
            "decode_seconds": round(decode_s, 2),
            "decoded_size": list(images[0].shape),
            "all_finite": all(bool(torch.isfinite(im).all()) for im in images),
        },
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "threads": torch.get_num_threads(),
    }
    with outputs_together():
        atomic_write_bytes(out / "samples.png", _png_bytes(grid))
        save_tensors(out / "samples.safetensors", {"indices": sampled.to(torch.int32)})
        torch_state = {k: v.contiguous() for k, v in prior.state_dict().items()}
        save_tensors(out / "prior.safetensors", torch_state)
        atomic_write_json(out / "metrics.json", metrics)
    print(
        f"trained {args.steps} steps in {train_s:.0f} s; loss per code (train probe)"
        f" {before['train']} -> {after['train']}; held-out {after['heldout']}"
    )
    print(
        f"sampled {args.samples} in {sample_s:.1f} s; wrote {out / 'samples.png'}, {out / 'metrics.json'}"
    )
    return {**metrics, "_images": images, "_sampled": sampled, "_train": train}


if __name__ == "__main__":
    try:
        main()
    except (atoken.AtokenError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
