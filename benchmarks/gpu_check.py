"""The prepared GPU check (issue 16): every CUDA figure of atoken in one run, written to ``$OUT``.

``benchmarks/gpu_check.sh`` installs atoken on the device machine, runs the CUDA tests and then
this script, which measures, in this order (each part in its own ``try``, so one failure keeps
the rest; the JSON and the summary are rewritten after every part, so a run cut short still
leaves what it measured):

1. ``matmul``: the bf16 matrix-product rate (``8192^3``), the denominator of every MFU below.
2. ``inference``: atoken-so400m (random weights from the preset) ``decode(encode(x))`` and the
   encoder alone, images/s at 256² and 512², bf16 autocast through the execution plan, eager.
3. ``training``: one bf16 training step of atoken-base and atoken-so400m (forward, loss,
   backward, fused AdamW) under ``DistributedDataParallel`` with world size 1: tokens/s and
   ``torch.cuda.max_memory_allocated``.
4. ``attention``: every attention backend on a packed batch of so400m's shape (16 heads of 72):
   forward and forward+backward time, and the largest difference from ``reference``.
5. ``renderer``: the 3D plugin's torch Gaussian renderer against gsplat (equality and speed);
   gsplat rows are skipped, with the reason, when gsplat does not import.
6. ``compiled``: part 2 again, eager and then after `Tokenizer.compile` (regional
   ``torch.compile`` of the blocks, dynamic token counts): the speed-up. Last, because how long
   the first calls take to compile is the least predictable figure of the run.

A part starts only while the budget (``--budget-s``) leaves it its estimated need (`NEEDS`);
``--only`` reruns some parts.

FLOPs are counted as in ``benchmarks/README.md`` (`_support.encoder_flops` and friends): matmul
FLOPs only, 2 per multiply-add, i.e. ``2 x params x tokens`` for every linear layer plus
``4 x n_i^2 x D`` per sample and block for attention (``QK^T`` and ``AV``); norms, RoPE, GELU and
softmax are not counted. A training step counts 3x the forward FLOPs (forward + backward).
MFU = achieved FLOP/s / the bf16 matmul rate measured in the same run.

Without CUDA (or with ``--dry-run``) every part runs on the CPU with tiny sizes (atoken-tiny,
32²/64² images, 2 timed calls) so the code paths are exercised in under 3 minutes; those rows
are marked ``dry_run`` and the targets read ``n/a``. Parts that need CUDA (gsplat, CUDA-only
attention backends) are skipped with a line saying so.

Usage::

    OUT=$(mktemp -d) bash benchmarks/gpu_check.sh --dry-run      # CPU, here
    python3 benchmarks/gpu_check.py --out "$OUT" [--only matmul,inference] [--budget-s 360]

References: nanoGPT's ``estimate_mfu`` (matmul-only FLOP count); PyTorch's CUDA-event timing
(``torch.cuda.Event(enable_timing=True)``) and regional compilation recipe; the device notes'
method (warm up, median of several timed calls, random data, matmul ceiling in the same run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_3D_SRC = ROOT / "packages" / "atoken-plugin-3d" / "src"

SECTIONS = ("matmul", "inference", "training", "attention", "renderer", "compiled")
#: attention backends to time, in this order; any other registered backend is timed after them
ATTENTION_BACKENDS = ("reference", "sdpa", "flex", "varlen", "xformers")

# ------------------------------------------------------------------------------------- targets
#: issue 16's targets on an H200
ENCODER_MFU_TARGET = 0.45
ENCODE_DECODE_IMG_S_TARGET = 900.0
COMPILE_SPEEDUP_TARGET = 1.3


# ------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """What one run measures: the CUDA protocol, or tiny stand-ins for a CPU dry run.

    Attributes:
        infer_preset: the model of the inference part.
        resolutions: square image sides of the inference part.
        infer_tokens: tokens per inference call (images per call = this / tokens per image).
        train: ``(preset, tokens per step)`` of the training part, at ``train_res``.
        train_res: image side of the training batches.
        infer_warmup, infer_iters: untimed and timed inference calls.
        train_warmup, train_iters: untimed and timed training steps.
        matmul_n, matmul_dtype: the square matrix product of the ceiling.
        matmul_warmup, matmul_iters: its untimed and timed products.
        attn_seqlens, attn_heads, attn_head_dim, attn_dtype: the packed attention batch.
        attn_warmup, attn_iters: untimed and timed calls of each backend.
        gaussians, render_size, render_views: the renderer's random scene and views.
    """

    infer_preset: str
    resolutions: tuple[int, ...]
    infer_tokens: int
    train: tuple[tuple[str, int], ...]
    train_res: int
    infer_warmup: int
    infer_iters: int
    train_warmup: int
    train_iters: int
    matmul_n: int
    matmul_dtype: str
    matmul_warmup: int
    matmul_iters: int
    attn_seqlens: tuple[int, ...]
    attn_heads: int
    attn_head_dim: int
    attn_dtype: str
    attn_warmup: int
    attn_iters: int
    gaussians: int
    render_size: int
    render_views: int


#: token counts of the benchmark suite's "full" image mix (64² ... 512², see `_support.MIXES`)
FULL_MIX_SEQLENS = (16, 60, 64, 192, 256, 300, 768, 1024)

CUDA_SIZES = Sizes(
    infer_preset="atoken-so400m",
    resolutions=(256, 512),
    infer_tokens=65536,  # 256 images at 256², 64 at 512²
    train=(("atoken-base", 32768), ("atoken-so400m", 16384)),  # 128 / 64 images at 256²
    train_res=256,
    infer_warmup=2,
    infer_iters=5,
    train_warmup=3,
    train_iters=10,
    matmul_n=8192,
    matmul_dtype="bfloat16",
    matmul_warmup=3,
    matmul_iters=10,
    attn_seqlens=FULL_MIX_SEQLENS * 12,  # 96 samples, 32160 tokens
    attn_heads=16,
    attn_head_dim=72,
    attn_dtype="bfloat16",
    attn_warmup=2,
    attn_iters=5,
    gaussians=20000,
    render_size=256,
    render_views=4,
)

DRY_SIZES = Sizes(
    infer_preset="atoken-tiny",
    resolutions=(32, 64),
    infer_tokens=64,  # 16 images at 32², 4 at 64²
    train=(("atoken-tiny", 64),),
    train_res=32,
    infer_warmup=1,
    infer_iters=2,
    train_warmup=1,
    train_iters=2,
    matmul_n=512,
    matmul_dtype="float32",
    matmul_warmup=1,
    matmul_iters=3,
    attn_seqlens=(4, 16, 9, 25),
    attn_heads=2,
    attn_head_dim=72,
    attn_dtype="float32",
    attn_warmup=1,
    attn_iters=2,
    gaussians=300,
    render_size=32,
    render_views=2,
)

#: least time (s) a part needs; a part is skipped when less than this is left of the budget
NEEDS = {
    "matmul": 10,
    "inference": 30,
    "training": 45,
    "attention": 20,
    "renderer": 15,
    "compiled": 90,  # so400m's first calls compile the blocks
}


# ------------------------------------------------------------------------------------- results
@dataclass
class Target:
    """One of the issue's targets, judged on one measured figure."""

    name: str
    value: float | None
    threshold: float
    unit: str
    verdict: str  # "PASS" | "FAIL" | "n/a"

    def line(self) -> str:
        shown = "-" if self.value is None else _fmt(self.value, self.unit)
        return f"  {self.verdict:<4} {self.name}: {shown} (target >= {_fmt(self.threshold, self.unit)})"


@dataclass
class Section:
    """One part of the check: its status, rows (one per figure) and summary lines."""

    name: str
    status: str = "pending"  # "ok" | "skipped" | "error" | "partial"
    reason: str | None = None
    seconds: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class Check:
    """The run: device, sizes, budget, progress lines, and the files under ``out``."""

    def __init__(self, out: Path, *, dry_run: bool, budget_s: float, device) -> None:
        self.out = out
        self.dry_run = dry_run
        self.budget_s = budget_s
        self.device = device
        self.sizes = DRY_SIZES if dry_run else CUDA_SIZES
        self.start = time.perf_counter()
        self.env: dict[str, Any] = {}
        self.sections: dict[str, Section] = {}
        self.targets: list[Target] = []
        self.tests: dict[str, Any] = {}

    # ---------------------------------------------------------------- progress
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, msg: str) -> None:
        print(f"[gpu_check {self.elapsed():6.1f}s] {msg}", flush=True)

    # ---------------------------------------------------------------- parts
    def run_section(self, name: str, fn: Callable[[Check, Section], None]) -> None:
        """Run one part in its own ``try``; record why it was skipped or what it raised."""
        sec = self.sections.setdefault(name, Section(name))
        need = NEEDS.get(name, 0) if not self.dry_run else 0
        if self.left() < need:
            sec.status = "skipped"
            sec.reason = (
                f"over the time budget ({self.left():.0f} s left of {self.budget_s:.0f} s,"
                f" this part needs about {need} s); rerun with --only {name}"
            )
            self.say(f"{name}: skipped: {sec.reason}")
            self.write()
            return
        self.say(f"{name}: start")
        t0 = time.perf_counter()
        try:
            fn(self, sec)
            if sec.status == "pending":
                sec.status = "ok"
        except Exception as err:  # noqa: BLE001 - one failing part must not lose the others
            sec.status = "error" if not sec.rows else "partial"
            sec.reason = f"{type(err).__name__}: {err}"
            sec.lines.append(f"  ERROR {sec.reason}")
            self.say(f"{name}: ERROR {sec.reason}")
            traceback.print_exc()
        finally:
            sec.seconds = time.perf_counter() - t0
            free_memory()
        self.say(f"{name}: {sec.status} in {sec.seconds:.1f}s")
        self.write()

    def target(self, name: str, value: float | None, threshold: float, unit: str) -> str:
        """Record a target; returns the ``[PASS ...]`` tag for the figure's line."""
        if self.dry_run or value is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if value >= threshold else "FAIL"
        self.targets.append(Target(name, value, threshold, unit, verdict))
        note = " (dry run)" if self.dry_run else ""
        return f"[{verdict}{note}: target >= {_fmt(threshold, unit)}]"

    # ---------------------------------------------------------------- files
    def summary_lines(self) -> list[str]:
        e = self.env
        what = e.get("device_name")
        if self.dry_run:
            what = "DRY RUN on CPU, tiny sizes: code paths only, no figure is a measurement"
        lines = [
            f"atoken GPU check — {what}",
            f"torch {e.get('torch')} (CUDA {e.get('cuda')}), python {e.get('python')},"
            f" atoken {e.get('atoken')}, commit {e.get('commit')}; {self.elapsed():.0f} s",
        ]
        if self.tests:
            t = self.tests
            rc = "" if t.get("rc") is None else f" (exit {t['rc']})"
            lines.append(f"CUDA tests (pytest -m gpu): {t.get('summary')}{rc}")
        for name in SECTIONS:
            sec = self.sections.get(name)
            if sec is None:
                continue
            head = f"{name}: {sec.status}"
            if sec.reason and sec.status != "ok":
                head += f" — {sec.reason}"
            lines.append(head)
            lines.extend(sec.lines)
        if self.targets:
            lines.append("targets (issue 16, H200):")
            lines.extend(t.line() for t in self.targets)
        return lines

    def write(self) -> None:
        """Rewrite ``gpu_check.json`` and ``summary.txt`` (called after every part)."""
        doc = {
            "schema": 1,
            "dry_run": self.dry_run,
            "elapsed_s": round(self.elapsed(), 1),
            "budget_s": self.budget_s,
            "env": self.env,
            "sizes": asdict(self.sizes),
            "gpu_tests": self.tests,
            "sections": {k: asdict(v) for k, v in self.sections.items()},
            "targets": [asdict(t) for t in self.targets],
        }
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "summary.txt").write_text("\n".join(self.summary_lines()) + "\n")


# ------------------------------------------------------------------------------------- helpers
def _fmt(x: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * x:.1f}%"
    if unit == "x":
        return f"{x:.2f}x"
    return f"{x:,.1f} {unit}"


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.2f} {unit}"


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device, *, warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones.

    CUDA: device events around each call (the host work inside the call is included, since the
    end event is recorded after it); CPU: the wall clock.
    """
    import torch

    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def first_call(fn: Callable[[], Any], device) -> float:
    """Seconds of one call, synchronised (a compile's first call, say)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


@contextlib.contextmanager
def peak_memory(device) -> Iterator[dict[str, int | None]]:
    """``{"peak": bytes}``: ``torch.cuda.max_memory_allocated`` inside the block (None on CPU)."""
    import torch

    box: dict[str, int | None] = {"peak": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield box
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        box["peak"] = torch.cuda.max_memory_allocated(device)


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def build_model(preset: str, device, *, train: bool):
    """A preset with seeded random weights on ``device``.

    On CUDA the parameters are created on the GPU (``torch.device`` context: seconds instead of
    a CPU initialisation of ~850M parameters); if that fails, built on the CPU and moved.
    """
    import torch

    import atoken

    how = "cpu-built"
    model = None
    if device.type == "cuda":
        try:
            with torch.device(device):
                model = atoken.build_tokenizer(preset)
            how = "built on the GPU"
        except Exception:  # noqa: BLE001 - fall back to the ordinary path
            model = None
    if model is None:
        model = atoken.build_tokenizer(preset)
    model = model.to(device)  # anything a device context left on the CPU
    model.train(train)
    params = sum(p.numel() for p in model.parameters())
    return model, params, how


def image_batch(res: int, images: int, device):
    """``images`` random ``res x res`` photos through the image adapter, packed on ``device``.

    Four distinct random images repeated (values do not change the cost).
    """
    import torch

    import atoken
    from atoken.plugins.image.adapter import ImageAdapter

    adapter = ImageAdapter()
    gen = torch.Generator().manual_seed(res)
    distinct = [
        adapter.to_tokens(torch.rand(res, res, 3, generator=gen) * 2 - 1)
        for _ in range(min(4, images))
    ]
    samples = [distinct[i % len(distinct)] for i in range(images)]
    return atoken.collate(samples).to(device)


def tokens_per_image(res: int, patch: int = 16) -> int:
    return (res // patch) ** 2


# ------------------------------------------------------------------------------------- env
def collect_env(check: Check) -> None:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(check.device),
        "threads": torch.get_num_threads(),
        "commit": os.environ.get("GPU_CHECK_COMMIT") or _git_commit(),
        "host_cpus": os.cpu_count(),
    }
    for dist in ("atoken", "atoken-plugin-3d", "pydantic", "pydantic-core", "typing-extensions"):
        env[dist] = _dist_version(dist)
    for mod in ("xformers", "gsplat", "triton"):
        env[f"{mod}_importable"] = importlib.util.find_spec(mod) is not None
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        env.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
    check.env = env
    check.say(
        f"env: torch {env['torch']}, CUDA {env['cuda']}, {env.get('device_name', 'no CUDA')},"
        f" atoken {env['atoken']}, pydantic {env['pydantic']}, commit {env['commit']}"
    )


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown (no .git; set GPU_CHECK_COMMIT)"


def read_tests(check: Check, log: Path | None, rc: int | None) -> None:
    """The CUDA tests' outcome from the log `gpu_check.sh` wrote (its last summary line)."""
    if log is None or not log.is_file():
        check.tests = {"summary": "not run (gpu_check.sh runs them first)", "rc": rc}
        return
    summary = "no summary line found"
    pattern = re.compile(r"\d+ (passed|failed|skipped|deselected|errors?)|no tests ran")
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if pattern.search(line):
            summary = line.strip("= ").strip()
            break
    check.tests = {"summary": summary, "rc": rc, "log": log.name}


# ------------------------------------------------------------------------------------- 1. matmul
def section_matmul(check: Check, sec: Section) -> None:
    import torch

    s, dev = check.sizes, check.device
    n = s.matmul_n
    dtype = getattr(torch, s.matmul_dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    times = time_calls(lambda: a @ b, dev, warmup=s.matmul_warmup, iters=s.matmul_iters)
    flops = 2 * n**3
    rate, best = flops / median(times), flops / min(times)
    check.env["matmul_flops_per_s"] = rate
    proto = (
        f"{s.matmul_dtype} [{n}x{n}] @ [{n}x{n}], random normal data, median of"
        f" {s.matmul_iters} after {s.matmul_warmup} warm-ups"
    )
    sec.rows.append(
        {
            "name": "matmul",
            "protocol": proto,
            "flops": flops,
            "seconds": times,
            "flops_per_s": rate,
            "best_flops_per_s": best,
            "dry_run": check.dry_run,
        }
    )
    sec.lines.append(
        f"  {_si(rate, 'FLOP/s')} (best {_si(best, 'FLOP/s')}); {proto} — the MFU denominator"
    )


def matmul_rate(check: Check) -> float | None:
    return check.env.get("matmul_flops_per_s")


def mfu(check: Check, flops_per_s: float) -> float | None:
    ref = matmul_rate(check)
    return flops_per_s / ref if ref else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# ------------------------------------------------------------------------------------- 2. inference
class InferenceBench:
    """atoken-so400m (the sizes' inference preset) with random weights, its image batches and
    the bf16 plan: what the ``inference`` and ``compiled`` parts time.

    The plan is ``tok.plan(precision="bf16", stream=False)``: bf16 autocast entered by the
    stacks themselves (float32 outputs), tiled rather than streamed (images are one tile each,
    packed into passes of at most ``group_tokens`` tokens; the per-token layers see the whole
    batch).
    """

    def __init__(self, check: Check, sec: Section) -> None:
        s, dev = check.sizes, check.device
        self.check, self.sec = check, sec
        self.tok, params, how = build_model(s.infer_preset, dev, train=False)
        self.plan = self.tok.plan(precision="bf16", stream=False)
        plan = self.plan
        check.say(
            f"{sec.name}: {s.infer_preset} {params / 1e6:.0f}M parameters ({how}); plan mode"
            f" {plan.mode}, backend {plan.backend.name}, precision {plan.precision}, passes of"
            f" <= {plan.group_tokens} tokens"
        )
        sec.lines.append(
            f"  {s.infer_preset} ({params / 1e6:.0f}M params, random weights), bf16 autocast via"
            f" tok.plan(precision='bf16', stream=False) (mode {plan.mode}, backend"
            f" {plan.backend.name}); median of {s.infer_iters} calls after {s.infer_warmup}"
            " warm-ups; images/s = images per call / seconds per call"
        )
        self.batches = {
            res: image_batch(res, max(1, s.infer_tokens // tokens_per_image(res)), dev)
            for res in s.resolutions
        }
        #: the images/s target is the issue's at 256² (the dry run's first size stands in)
        self.img_target_res = s.resolutions[0] if check.dry_run else 256

    def encode_decode(self, res: int) -> None:
        import torch

        with torch.inference_mode():
            self.tok.decode(self.tok.encode(self.batches[res], plan=self.plan), plan=self.plan)

    def encoder(self, res: int) -> None:
        import torch

        with torch.inference_mode():
            self.tok.encode_dense(self.batches[res], plan=self.plan)

    def measure(self, res: int, mode: str, *, targets: bool = True) -> dict[str, Any]:
        """Time encode+decode and the encoder alone at ``res``; one row, two summary lines."""
        from _support import decoder_flops, encoder_flops, project_flops

        check, sec, s, dev = self.check, self.sec, self.check.sizes, self.check.device
        cfg, batch = self.tok.config, self.batches[res]
        n_img, seqlens = batch.batch_size, batch.seqlens
        f_enc = encoder_flops(cfg, seqlens)
        f_all = f_enc + project_flops(cfg, seqlens) + decoder_flops(cfg, seqlens)
        with peak_memory(dev) as peak:
            t_all = median(
                time_calls(
                    lambda: self.encode_decode(res), dev, warmup=s.infer_warmup, iters=s.infer_iters
                )
            )
        t_enc = median(
            time_calls(lambda: self.encoder(res), dev, warmup=s.infer_warmup, iters=s.infer_iters)
        )
        row = {
            "name": f"{mode} {res}",
            "mode": mode,
            "res": res,
            "images": n_img,
            "tokens": batch.num_tokens,
            "protocol": f"{res}x{res}, batch {n_img} ({batch.num_tokens} tokens), bf16 autocast,"
            f" plan {self.plan.mode}/{self.plan.backend.name}, median of {s.infer_iters} after"
            f" {s.infer_warmup} warm-ups",
            "encode_decode_s": t_all,
            "encode_decode_img_s": n_img / t_all,
            "encode_decode_flops": f_all,
            "encode_decode_mfu": mfu(check, f_all / t_all),
            "encoder_s": t_enc,
            "encoder_img_s": n_img / t_enc,
            "encoder_flops": f_enc,
            "encoder_mfu": mfu(check, f_enc / t_enc),
            "peak_bytes": peak["peak"],
            "dry_run": check.dry_run,
        }
        sec.rows.append(row)
        label = f"{s.infer_preset} {mode} {res}²"
        tag_img = tag_mfu = ""
        if targets and res == self.img_target_res:
            tag_img = " " + check.target(
                f"{label} encode+decode images/s",
                row["encode_decode_img_s"],
                ENCODE_DECODE_IMG_S_TARGET,
                "img/s",
            )
        if targets:
            tag_mfu = " " + check.target(
                f"{label} encoder MFU (bf16)", row["encoder_mfu"], ENCODER_MFU_TARGET, "%"
            )
        sec.lines.append(
            f"  {mode:<8} {res}² x{n_img:<4} enc+dec {row['encode_decode_img_s']:9.1f} img/s"
            f" (MFU {_pct(row['encode_decode_mfu'])}, peak {_gib(peak['peak'])}){tag_img}"
        )
        sec.lines.append(
            f"  {'':<8} {'':>{len(str(res)) + 7}} encoder {row['encoder_img_s']:9.1f} img/s"
            f" (MFU {_pct(row['encoder_mfu'])}){tag_mfu}"
        )
        check.say(
            f"{sec.name}: {mode} {res}²: enc+dec {row['encode_decode_img_s']:.1f} img/s, encoder"
            f" {row['encoder_img_s']:.1f} img/s (MFU {_pct(row['encoder_mfu'])})"
        )
        return row


def section_inference(check: Check, sec: Section) -> None:
    """Eager so400m images/s at each resolution, and the default (streamed) plan once."""
    import torch

    bench = InferenceBench(check, sec)
    s, dev, tok = check.sizes, check.device, bench.tok
    for res in s.resolutions:
        _unless_oom(check, sec, lambda r=res: bench.measure(r, "eager"), f"eager {res}")
    res0 = s.resolutions[0]
    batch = bench.batches[res0]
    try:  # the plan a plain tok.encode(x) gets with bf16, for information
        streamed = tok.plan(precision="bf16")

        def enc_dec_streamed():
            with torch.inference_mode():
                tok.decode(tok.encode(batch, plan=streamed), plan=streamed)

        t = median(time_calls(enc_dec_streamed, dev, warmup=1, iters=s.infer_iters))
    except Exception as err:  # noqa: BLE001 - information only
        msg = f"{type(err).__name__}: {err}"
        sec.rows.append({"name": f"eager-streamed {res0}", "error": msg})
        sec.lines.append(f"  streamed {res0}²: ERROR {msg} (the default plan, mode streamed)")
        check.say(f"inference: the streamed plan failed: {msg}")
        return
    sec.rows.append(
        {
            "name": f"eager-streamed {res0}",
            "mode": "eager-streamed",
            "res": res0,
            "images": batch.batch_size,
            "encode_decode_img_s": batch.batch_size / t,
            "protocol": f"tok.plan(precision='bf16') (mode {streamed.mode}, steps of <="
            f" {streamed.group_tokens} tokens), median of {s.infer_iters} after 1 warm-up",
        }
    )
    sec.lines.append(
        f"  streamed {res0}² x{batch.batch_size:<4} enc+dec {batch.batch_size / t:9.1f} img/s"
        f" (the default plan, mode {streamed.mode}: steps of <= {streamed.group_tokens} tokens;"
        " for information)"
    )


def section_compiled(check: Check, sec: Section) -> None:
    """`Tokenizer.compile` (regional torch.compile, dynamic token counts) against eager.

    Eager is timed again here, just before compiling, so the speed-up compares timings taken
    minutes apart at most; the first compiled calls (the compile) are timed on their own.
    """
    from atoken.core.tokenizer import Tokenizer

    if "compile" not in Tokenizer.__dict__:  # nn.Module.compile would compile the whole call
        sec.status, sec.reason = "skipped", "Tokenizer.compile is not available in this checkout"
        return
    bench = InferenceBench(check, sec)
    s, dev, tok = check.sizes, check.device, bench.tok
    eager = {}
    for res in s.resolutions:
        eager[res] = _unless_oom(
            check, sec, lambda r=res: bench.measure(r, "eager", targets=False), f"eager {res}"
        )
    t0 = time.perf_counter()
    tok.compile()
    setup_s = time.perf_counter() - t0
    for res in s.resolutions:

        def once(r=res):
            bench.encode_decode(r)
            bench.encoder(r)

        check.say(f"compiled: first calls at {res}² (they compile the blocks)")
        first = first_call(once, dev)
        sec.lines.append(
            f"  compiled {res}²: first encode+decode and encoder calls {first:.1f}s (the compile;"
            f" tok.compile() itself {setup_s:.1f}s)"
        )
        row = _unless_oom(check, sec, lambda r=res: bench.measure(r, "compiled"), f"compiled {res}")
        base = eager.get(res)
        if row is None or base is None:
            continue
        row["first_call_s"] = first
        speed = row["encode_decode_img_s"] / base["encode_decode_img_s"]
        speed_enc = row["encoder_img_s"] / base["encoder_img_s"]
        row.update(speedup_encode_decode=speed, speedup_encoder=speed_enc)
        tag = check.target(
            f"{s.infer_preset} {res}² compiled/eager (encode+decode)",
            speed,
            COMPILE_SPEEDUP_TARGET,
            "x",
        )
        sec.lines.append(
            f"  speed-up compiled/eager at {res}²: encode+decode {speed:.2f}x, encoder"
            f" {speed_enc:.2f}x {tag}"
        )
    from atoken.core.compile import compiled_blocks

    sec.lines.append(f"  ({compiled_blocks(tok)} blocks compiled)")


def _unless_oom(check: Check, sec: Section, fn: Callable[[], Any], what: str) -> Any:
    """``fn()``, or None (with a line) when it runs out of GPU memory."""
    try:
        return fn()
    except Exception as err:
        if not is_oom(err):
            raise
        sec.lines.append(f"  {what}: out of memory ({err}); not retried")
        check.say(f"{what}: out of memory")
        free_memory()
        return None


# ------------------------------------------------------------------------------------- 3. training
@contextlib.contextmanager
def process_group(device) -> Iterator[str]:
    """A one-process group (NCCL on CUDA, gloo on CPU) through a file store."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield backend
        finally:
            dist.destroy_process_group()


def section_training(check: Check, sec: Section) -> None:
    from _support import decoder_flops, encoder_flops, project_flops

    s, dev = check.sizes, check.device
    sec.lines.append(
        "  one step = forward (bf16 autocast via tok.plan(precision='bf16', stream=False)),"
        " loss = L1(patches) + 1e-6 KL + 1e-3 mean(embedding²) (a stand-in for the semantic"
        " loss, so every parameter gets a gradient), backward, AdamW"
        f" ({'fused' if dev.type == 'cuda' else 'foreach'}), zero_grad; plain"
        " torch.nn.parallel.DistributedDataParallel with world size 1 and the trainer's DDP"
        " options (gradient_as_bucket_view, no buffer broadcast), not the trainer's Engine;"
        f" {s.train_res}² images; median of {s.train_iters} steps after {s.train_warmup};"
        " MFU counts 3x the forward FLOPs (head excluded)"
    )
    with contextlib.ExitStack() as stack:
        try:
            backend = stack.enter_context(process_group(dev))
        except Exception as err:  # noqa: BLE001 - time without DDP rather than not at all
            backend = None
            sec.lines.append(f"  (no process group: {type(err).__name__}: {err}; no DDP)")
        for preset, tokens in s.train:
            try:
                row = _train_one(check, sec, preset, tokens, backend)
            except Exception as err:  # noqa: BLE001 - the next preset still runs
                sec.status = "partial"
                sec.rows.append({"name": preset, "error": f"{type(err).__name__}: {err}"})
                sec.lines.append(f"  {preset:<14} ERROR {type(err).__name__}: {err}")
                check.say(f"training: {preset}: ERROR {type(err).__name__}: {err}")
                traceback.print_exc()
                continue
            finally:
                free_memory()
            f = 3 * (
                encoder_flops(row["config"], row["seqlens"])
                + project_flops(row["config"], row["seqlens"])
                + decoder_flops(row["config"], row["seqlens"])
            )
            row["step_flops"] = f
            row["mfu"] = mfu(check, f / row["step_s"])
            del row["config"], row["seqlens"]
            sec.rows.append(row)
            sec.lines.append(
                f"  {preset:<14} {row['tokens']:>6} tokens/step ({row['images']} images):"
                f" {row['step_s'] * 1e3:8.1f} ms/step, {_si(row['tokens_per_s'], 'tok/s')},"
                f" peak {_gib(row['peak_bytes'])}, MFU {_pct(row['mfu'])}"
                f" [{row['wrapper']}]"
            )
            check.say(
                f"training: {preset}: {row['tokens_per_s']:.0f} tok/s, peak"
                f" {_gib(row['peak_bytes'])}"
            )


def _train_one(check: Check, sec: Section, preset: str, tokens: int, backend: str | None):
    """One preset's training steps; the row (with ``config`` and ``seqlens`` for the FLOPs)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    s, dev = check.sizes, check.device
    model, params, how = build_model(preset, dev, train=True)
    plan = model.plan(precision="bf16", stream=False)
    wrapper = "no DDP"
    net = model
    if backend is not None:
        net = DistributedDataParallel(
            model,
            device_ids=[dev.index or 0] if dev.type == "cuda" else None,
            gradient_as_bucket_view=True,
            broadcast_buffers=False,
        )
        wrapper = f"DDP world size 1, {backend}"
    fused = {"fused": True} if dev.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **fused)
    per_image = tokens_per_image(s.train_res)
    images = max(1, tokens // per_image)
    while True:
        batch = image_batch(s.train_res, images, dev)

        def step(batch=batch):
            out = net(batch, plan=plan)
            lat = out.latents
            kl = 0.5 * (lat.mean.pow(2) + lat.logvar.exp() - 1 - lat.logvar).mean()
            loss = F.l1_loss(out.reconstruction.feats, batch.feats) + 1e-6 * kl
            if out.embedding is not None:
                loss = loss + 1e-3 * out.embedding.float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        try:
            check.say(f"training: {preset} ({params / 1e6:.0f}M, {how}), {images} images")
            for _ in range(s.train_warmup):
                step()
            with peak_memory(dev) as peak:
                times = time_calls(step, dev, warmup=0, iters=s.train_iters)
            break
        except Exception as err:
            if not is_oom(err) or images <= 1:
                raise
        # out of memory; outside the except, whose traceback holds the step's activations
        opt.zero_grad(set_to_none=True)
        del step, batch
        free_memory()
        sec.lines.append(f"  {preset}: out of memory at {images} images; halving")
        check.say(f"training: {preset}: out of memory at {images} images; halving")
        images //= 2
    t = median(times)
    return {
        "name": preset,
        "params": params,
        "images": images,
        "tokens": images * per_image,
        "protocol": f"{images} x {s.train_res}² images, bf16 autocast, {wrapper}, AdamW,"
        f" median of {s.train_iters} steps after {s.train_warmup}",
        "step_s": t,
        "tokens_per_s": images * per_image / t,
        "peak_bytes": peak["peak"],
        "wrapper": wrapper,
        "dry_run": check.dry_run,
        "config": model.config,
        "seqlens": (per_image,) * images,
    }


# ------------------------------------------------------------------------------------- 4. attention
def section_attention(check: Check, sec: Section) -> None:
    import torch

    import atoken

    s, dev = check.sizes, check.device
    registry = atoken.default_components().attention
    registered = list(registry.names())
    names = list(dict.fromkeys([*ATTENTION_BACKENDS, *registered]))
    dtype = getattr(torch, s.attn_dtype)
    seqlens = list(s.attn_seqlens)
    n, h, d = sum(seqlens), s.attn_heads, s.attn_head_dim
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(n, h, d, device=dev, dtype=dtype, generator=gen) for _ in range(3))
    grad = torch.randn(n, h, d, device=dev, dtype=dtype, generator=gen)
    flops_fwd = 4 * h * d * sum(x * x for x in seqlens)
    proto = (
        f"{len(seqlens)} samples, {n} tokens (lengths {sorted(set(seqlens))}), {h} heads x {d},"
        f" {s.attn_dtype}; median of {s.attn_iters} after {s.attn_warmup} warm-ups; FLOPs"
        " 4 n² H D per sample forward, 2.5x that for backward"
    )
    sec.lines.append(f"  {proto}")
    ref_out = None
    best: tuple[float, str] | None = None
    for name in names:
        if name not in registered:
            _skip_row(check, sec, name, "not available in this checkout (not registered)")
            continue
        backend = registry.get(name).obj
        reason = backend.unavailable_reason(dev)
        if reason is not None:
            _skip_row(check, sec, name, reason)
            continue
        try:
            with torch.no_grad():
                first = first_call(lambda b=backend: b(q, k, v, seqlens, seqlens), dev)
                out = backend(q, k, v, seqlens, seqlens)
                if name == "reference":
                    ref_out = out
                diff = None if ref_out is None else float((out - ref_out).abs().max())
                t_fwd = median(
                    time_calls(
                        lambda b=backend: b(q, k, v, seqlens, seqlens),
                        dev,
                        warmup=s.attn_warmup,
                        iters=s.attn_iters,
                    )
                )
            qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

            def fwd_bwd(b=backend, qg=qg, kg=kg, vg=vg):
                b(qg, kg, vg, seqlens, seqlens).backward(grad)
                qg.grad = kg.grad = vg.grad = None

            try:
                t_bwd = median(time_calls(fwd_bwd, dev, warmup=s.attn_warmup, iters=s.attn_iters))
            except Exception as err:  # noqa: BLE001 - forward figures still count
                t_bwd, bwd_err = None, f"{type(err).__name__}: {err}"
            else:
                bwd_err = None
        except Exception as err:  # noqa: BLE001 - one backend failing keeps the others
            sec.rows.append(
                {"name": name, "status": "error", "error": f"{type(err).__name__}: {err}"}
            )
            sec.lines.append(f"  {name:<10} ERROR {type(err).__name__}: {err}")
            continue
        row = {
            "name": name,
            "status": "ok",
            "protocol": proto,
            "first_call_s": first,
            "forward_s": t_fwd,
            "forward_flops_per_s": flops_fwd / t_fwd,
            "forward_backward_s": t_bwd,
            "forward_backward_flops_per_s": None if t_bwd is None else 3.5 * flops_fwd / t_bwd,
            "max_abs_diff_vs_reference": diff,
            "backward_error": bwd_err,
            "dry_run": check.dry_run,
        }
        sec.rows.append(row)
        bwd = "-" if t_bwd is None else f"{t_bwd * 1e3:8.2f} ms"
        sec.lines.append(
            f"  {name:<10} fwd {t_fwd * 1e3:8.2f} ms ({_si(flops_fwd / t_fwd, 'FLOP/s')}),"
            f" fwd+bwd {bwd}, first call {first:.2f}s, max|out - reference|"
            f" {'-' if diff is None else f'{diff:.2e}'}"
            + (f", backward ERROR {bwd_err}" if bwd_err else "")
        )
        check.say(f"attention: {name}: fwd {t_fwd * 1e3:.2f} ms")
        if best is None or t_fwd < best[0]:
            best = (t_fwd, name)
    if best is not None:
        sec.lines.append(f"  fastest forward here: {best[1]} (informs the 'auto' choice)")


def _skip_row(check: Check, sec: Section, name: str, reason: str) -> None:
    sec.rows.append({"name": name, "status": "skipped", "reason": reason})
    sec.lines.append(f"  {name:<10} skipped: {reason}")
    check.say(f"attention: {name}: skipped: {reason}")


# ------------------------------------------------------------------------------------- 5. renderer
def section_renderer(check: Check, sec: Section) -> None:
    import torch

    if str(PLUGIN_3D_SRC) not in sys.path and importlib.util.find_spec("atoken_plugin_3d") is None:
        sys.path.insert(0, str(PLUGIN_3D_SRC))
    from atoken_plugin_3d.cameras import sphere_cameras
    from atoken_plugin_3d.render_gaussians import available_backends, render_tensors

    s, dev = check.sizes, check.device
    gen = torch.Generator().manual_seed(4)
    p = s.gaussians
    scene = [
        (torch.rand(p, 3, generator=gen) - 0.5) * 0.8,  # means
        torch.rand(p, 3, generator=gen) * 0.06 + 0.01,  # scales
        torch.randn(p, 4, generator=gen),  # quats
        torch.rand(p, generator=gen) * 0.8 + 0.1,  # opacities
        torch.rand(p, 3, generator=gen),  # colours
    ]
    scene = [t.to(dev) for t in scene]
    cams = sphere_cameras(s.render_views, size=s.render_size)
    proto = (
        f"{p} random Gaussians (the tests' random_scene recipe), {s.render_size}² views from"
        f" {s.render_views} sphere cameras, float32, tile 8; per view: median over the views"
        " after one warm-up view"
    )
    sec.lines.append(f"  {proto}")

    def render_all(backend: str) -> tuple[list[Any], list[float]]:
        """Every view's render and seconds (synchronised), after one warm-up view."""
        outs: list[Any] = []
        render_tensors(*scene, cams[0], backend=backend)  # warm-up
        times = [
            first_call(lambda c=cam: outs.append(render_tensors(*scene, c, backend=backend)), dev)
            for cam in cams
        ]
        return outs, times

    with torch.no_grad():
        ref, t_ref = render_all("torch")
    sec.rows.append(
        {
            "name": "torch",
            "protocol": proto,
            "seconds_per_view": median(t_ref),
            "views_per_s": 1 / median(t_ref),
            "dry_run": check.dry_run,
        }
    )
    sec.lines.append(
        f"  torch  {median(t_ref) * 1e3:9.1f} ms/view ({1 / median(t_ref):.2f} views/s)"
    )
    if dev.type != "cuda":
        reason = "needs CUDA (gsplat runs on CUDA tensors only)"
    elif "gsplat" not in available_backends():
        reason = (
            "gsplat does not import: it is not on the device machine and is not carried"
            " (PyPI's gsplat compiles its CUDA code at first use, minutes of nvcc; its prebuilt"
            " wheels are for older torch/CUDA pairs)"
        )
    else:
        reason = None
    if reason is not None:
        sec.rows.append({"name": "gsplat", "status": "skipped", "reason": reason})
        sec.lines.append(f"  gsplat skipped: {reason}")
        check.say(f"renderer: gsplat skipped: {reason}")
        return
    with torch.no_grad():
        got, t_gs = render_all("gsplat")
    diffs = [float((g.rgb - r.rgb).abs().max()) for g, r in zip(got, ref, strict=True)]
    mse = [float((g.rgb - r.rgb).pow(2).mean()) for g, r in zip(got, ref, strict=True)]
    alpha = [float((g.alpha - r.alpha).abs().mean()) for g, r in zip(got, ref, strict=True)]
    psnr = [10 * math.log10(1.0 / m) if m > 0 else math.inf for m in mse]
    row = {
        "name": "gsplat",
        "status": "ok",
        "protocol": proto,
        "seconds_per_view": median(t_gs),
        "views_per_s": 1 / median(t_gs),
        "speedup_vs_torch": median(t_ref) / median(t_gs),
        "max_abs_diff_rgb": max(diffs),
        "psnr_vs_torch_db": min(psnr),
        "mean_abs_diff_alpha": max(alpha),
        "dry_run": check.dry_run,
    }
    sec.rows.append(row)
    sec.lines.append(
        f"  gsplat {median(t_gs) * 1e3:9.1f} ms/view ({row['speedup_vs_torch']:.1f}x torch);"
        f" vs torch: max|rgb diff| {row['max_abs_diff_rgb']:.2e}, worst-view PSNR"
        f" {row['psnr_vs_torch_db']:.1f} dB, mean|alpha diff| {row['mean_abs_diff_alpha']:.2e}"
        " (gsplat clamps alpha at 0.999, torch at 0.99)"
    )


# ------------------------------------------------------------------------------------- install
#: the distributions that run from this checkout, and their pyproject files
CHECKOUT_DISTS = (
    ROOT / "pyproject.toml",
    ROOT / "packages" / "atoken-plugin-3d" / "pyproject.toml",
)
#: never carried: pip must not replace the machine's own CUDA stack
NOT_CARRIED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia[-_].*)$")
#: requirements the check does without (mesh files only; not on the device machine, not carried)
NOT_NEEDED_HERE = {"trimesh": "mesh files only", "embreex": "mesh renders only"}


def write_metadata(site: Path) -> int:
    """Write ``*.dist-info`` (METADATA, entry_points.txt) of atoken and atoken-plugin-3d to
    ``site``, so that a checkout on ``PYTHONPATH`` has its version and plugin entry points, as an
    editable install would (the device machine has no index to build one from)."""
    import tomllib

    site.mkdir(parents=True, exist_ok=True)
    for pyproject in CHECKOUT_DISTS:
        project = tomllib.loads(pyproject.read_text())["project"]
        name, version = project["name"], project["version"]
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in project.get("dependencies", [])]
        (info / "METADATA").write_text("\n".join(lines) + "\n")
        groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
        eps = [
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
            for group, entries in groups.items()
            if entries
        ]
        (info / "entry_points.txt").write_text("\n".join(eps))
        (info / "INSTALLER").write_text("gpu_check\n")
        print(f"gpu_check: wrote {info} (runs from {pyproject.parent})")
    return 0


def check_pins() -> int:
    """Check every requirement of atoken (and of each carried wheel) against the importable
    versions; print one line per requirement; 1 if one is not met."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, distributions, version

    try:
        from packaging.requirements import Requirement
    except ImportError:
        print("gpu_check: 'packaging' is not importable; pins not checked")
        return 0
    wanted: list[tuple[str, str]] = []  # (who asks, requirement)
    for pyproject in CHECKOUT_DISTS:
        project = tomllib.loads(pyproject.read_text())["project"]
        wanted += [(project["name"], r) for r in project.get("dependencies", [])]
    carried = {p.name.split("-")[0].lower().replace("_", "-") for p in ROOT.glob(".whl/*.whl")}
    bad = [n for n in carried if NOT_CARRIED.match(n)]
    if bad:
        print(
            f"gpu_check: refusing carried wheels of {bad}: the machine's torch stack stays as it is"
        )
        return 1
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in carried:
            wanted += [(name, r) for r in (dist.requires or [])]
    failures = 0
    seen = set()
    for who, text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = (who, str(req))
        if key in seen:
            continue
        seen.add(key)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            have = None
        ok = have is not None and req.specifier.contains(have, prereleases=True)
        if have is None and req.name in NOT_NEEDED_HERE:
            print(f"gpu_check: pin -   {who} needs {req}: absent ({NOT_NEEDED_HERE[req.name]})")
            continue
        mark = "ok " if ok else "BAD"
        failures += not ok
        print(f"gpu_check: pin {mark} {who} needs {req}: {have or 'not installed'}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------- main
RUNNERS: dict[str, Callable[[Check, Section], None]] = {
    "matmul": section_matmul,
    "inference": section_inference,
    "training": section_training,
    "attention": section_attention,
    "renderer": section_renderer,
    "compiled": section_compiled,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (also without CUDA)")
    ap.add_argument(
        "--only",
        default="",
        help=f"comma-separated parts to run (default all: {','.join(SECTIONS)})",
    )
    ap.add_argument("--budget-s", type=float, default=None, help="seconds for all parts")
    ap.add_argument("--pytest-log", type=Path, default=None, help="the CUDA tests' log")
    ap.add_argument("--pytest-rc", type=int, default=None, help="the CUDA tests' exit status")
    ap.add_argument(
        "--write-metadata", type=Path, metavar="SITE", help="write the checkout's dist-info, exit"
    )
    ap.add_argument("--check-pins", action="store_true", help="check atoken's pins, exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_metadata is not None:
        return write_metadata(args.write_metadata)
    if args.check_pins:
        return check_pins()
    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(SECTIONS)
    unknown = [x for x in only if x not in SECTIONS]
    if unknown:
        print(f"gpu_check: unknown part(s) {unknown}; choose from {', '.join(SECTIONS)}")
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _support
    import torch

    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    device = torch.device("cuda", 0) if cuda and not dry else torch.device("cpu")
    budget = args.budget_s if args.budget_s is not None else (170.0 if dry else 360.0)
    check = Check(args.out, dry_run=dry, budget_s=budget, device=device)
    if not cuda:
        check.say(
            "CUDA is not available: dry run on the CPU with tiny sizes (no figure here is a"
            " measurement; CUDA-only rows are skipped)"
        )
    elif args.dry_run:
        check.say("--dry-run: CPU with tiny sizes although CUDA is available")
    collect_env(check)
    read_tests(check, args.pytest_log, args.pytest_rc)
    check.write()
    for name in SECTIONS:
        if name in only:
            check.run_section(name, RUNNERS[name])
    check.write()
    print("\n".join(["", "=" * 100, *check.summary_lines(), "=" * 100]), flush=True)
    print(f"written: {check.out / 'gpu_check.json'}, {check.out / 'summary.txt'}")
    failed = [s.name for s in check.sections.values() if s.status in ("error", "partial")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
