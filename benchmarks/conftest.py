"""Fixtures of the throughput benchmarks and the summary printed at the end of the run.

Run with ``pytest benchmarks/`` (``make bench``); ``pytest`` from the repository root collects
``tests/`` only. ``$ATOKEN_BENCH_DEVICE`` picks the device (default ``cpu``), ``$ATOKEN_BENCH_MIX``
the image mix (``small`` on CPU, ``full`` on CUDA; see ``_support.MIXES``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import pytest
import torch
from _support import RESULTS_KEY, Mix, Record, bench_device, mix_name, mixed_samples
from _video_support import PRESET as VIDEO_PRESET
from _video_support import SIZE as VIDEO_SIZE
from _video_support import summary_lines as video_summary_lines
from _video_support import summary_rows as video_summary_rows
from _video_support import write_json

import atoken
from atoken.core.attention import AttentionBackend

#: targets from the performance issue
PACKED_OVER_PADDED_TARGET = 2.5
FLOPS_FRACTION_TARGET = 0.85
TARGET_MODEL = "atoken-base"  # the targets are about the real model; tiny rows are information


LOAD_KEY = pytest.StashKey[float | None]()


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS_KEY] = []
    config.stash[LOAD_KEY] = _load()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend_name`` over every registered attention backend."""
    if "backend_name" in metafunc.fixturenames:
        names = atoken.default_components().attention.names()
        metafunc.parametrize("backend_name", names, ids="backend={}".format)


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = bench_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"ATOKEN_BENCH_DEVICE={dev} but CUDA is not available")
    return dev


@pytest.fixture(scope="session")
def mix(device) -> Mix:
    """The variable-resolution batch of real photos (per-sample tokens, packed in each setup)."""
    name = mix_name(device)
    return Mix(name, tuple(mixed_samples(name)))


@pytest.fixture(scope="session")
def tokenizers(device) -> Callable[[str], atoken.Tokenizer]:
    """``tokenizers(preset)``: an eval-mode model on the bench device, built once per preset."""

    @cache
    def build(preset: str) -> atoken.Tokenizer:
        return atoken.build_tokenizer(preset).eval().to(device)

    return build


@pytest.fixture
def backend(backend_name: str, device) -> AttentionBackend:
    """The attention backend under test; skipped where it cannot run."""
    entry = atoken.default_components().attention.get(backend_name)
    reason = entry.obj.unavailable_reason(device)
    if reason is not None:
        pytest.skip(f"attention backend {backend_name!r} {reason}")
    return entry.obj


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``record(kind, label={...}, **values)`` keeps a row for the end-of-run summary."""

    def add(kind: str, *, label: dict[str, str], **values) -> None:
        request.config.stash[RESULTS_KEY].append(Record(kind, label, values))

    return add


# ---------------------------------------------------------------------------------------- summary


def _rate(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def pytest_terminal_summary(
    terminalreporter, exitstatus: int, config: pytest.Config
) -> None:  # pragma: no cover - output only
    records: list[Record] = config.stash.get(RESULTS_KEY, [])
    tr = terminalreporter
    video = [r for r in records if r.kind == "video"]
    if video:
        _video_summary(tr, config, video)
    records = [r for r in records if r.kind != "video"]
    compiled = [r for r in records if r.kind == "compile"]
    records = [r for r in records if r.kind != "compile"]
    if compiled:
        _compile_summary(tr, compiled)
    if not records:
        return
    tr.section("atoken throughput summary")
    first = records[0].values
    tr.write_line(
        f"device {first.get('device')}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads; {first.get('mix')}"
    )
    start, end = config.stash.get(LOAD_KEY, None), _load()
    if start is not None and end is not None:
        tr.write_line(
            f"1-min load average {start:.1f} at start, {end:.1f} at end, on {os.cpu_count()} CPUs"
            " (a load above the CPU count means other jobs shared the machine)"
        )
    tr.write_line("rates use the best round of each benchmark; FLOPs are matmul FLOPs only")

    rows = [r for r in records if r.kind == "throughput"]
    if rows:
        tr.write_line("")
        tr.write_line("tokens/s (real tokens), packed varlen batch")
        tr.write_line(
            f"  {'model':<13} {'backend':<10} {'encoder':>12} {'decoder':>12} {'enc+dec FLOP/s':>16}"
        )
        table: dict[tuple[str, str], dict[str, dict]] = {}
        for r in rows:
            key = (r.label["model"], r.label["backend"])
            table.setdefault(key, {})[r.label["stage"]] = r.values
        for (model, backend), v in table.items():
            enc, dec = v.get("encoder"), v.get("decoder")
            both = (
                (enc["flops"] + dec["flops"]) / (enc["seconds"] + dec["seconds"])
                if enc and dec
                else None
            )
            tr.write_line(
                f"  {model:<13} {backend:<10} {_rate(enc and enc['tokens_per_s']):>12}"
                f" {_rate(dec and dec['tokens_per_s']):>12} {_rate(both, 'FLOP/s'):>16}"
            )

    pad = {r.label["model"]: r.values for r in records if r.kind == "padding"}
    if pad:
        tr.write_line("")
        tr.write_line(
            "encoder, packed vs padded to the longest sample (useful tokens/s; padded = dense"
            " batch + key mask; packed timed between the padded rounds)"
        )
        tr.write_line(
            f"  {'model':<13} {'packed':>12} {'padded':>12} {'ratio':>7} {'FLOP ratio':>11}"
            f"  target >= {PACKED_OVER_PADDED_TARGET}x"
        )
        for model, v in sorted(pad.items()):
            ratio = v["packed_tokens_per_s"] / v["padded_tokens_per_s"]
            verdict = (
                _verdict(ratio >= PACKED_OVER_PADDED_TARGET) if model == TARGET_MODEL else "(info)"
            )
            tr.write_line(
                f"  {model:<13} {_rate(v['packed_tokens_per_s']):>12}"
                f" {_rate(v['padded_tokens_per_s']):>12} {ratio:>6.2f}x {v['flop_ratio']:>10.2f}x"
                f"  {verdict}"
            )

    flops = {
        r.label["name"]: {"name": r.label["name"], **r.values} for r in records if r.kind == "flops"
    }
    if flops:
        ref = flops.get("matmul")
        tr.write_line("")
        tr.write_line(
            "achieved FLOP/s vs the fp32 matmul: the matmul test, and the same matmul timed"
            " between the rounds of each test (paired)"
        )
        tr.write_line(
            f"  {'what':<44} {'FLOP/s':>14} {'of matmul':>10} {'of paired':>10}"
            f"  target >= {100 * FLOPS_FRACTION_TARGET:.0f}% (paired)"
        )
        order = ("matmul", "torch_encoder", "atoken-base")
        for v in sorted(flops.values(), key=lambda v: order.index(v["name"])):
            share = v["flops_per_s"] / ref["flops_per_s"] if ref else None
            paired = v.get("paired_matmul_flops_per_s")
            paired_share = v["flops_per_s"] / paired if paired else None
            note = ""
            if v.get("target") and paired_share is not None:
                note = f"  {_verdict(paired_share >= FLOPS_FRACTION_TARGET)}"
            tr.write_line(
                f"  {v['title']:<44} {_rate(v['flops_per_s'], 'FLOP/s'):>14} {_pct(share):>10}"
                f" {_pct(paired_share):>10}{note}"
            )
            if paired:
                tr.write_line(f"  {'  (paired matmul: ' + _rate(paired, 'FLOP/s') + ')':<44}")


def _compile_summary(tr, records: list[Record]) -> None:  # pragma: no cover - output only
    """The eager vs compiled table (`test_compile.py`)."""
    tr.section("atoken torch.compile summary")
    first = records[0].values
    tr.write_line(
        f"decode(encode(x)), regional torch.compile of the blocks (dynamic, fullgraph), device"
        f" {first['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads;"
        f" {first['mix']}; eager timed before every compiled round (paired), best rounds"
    )
    tr.write_line(f"  {'model':<13} {'eager':>14} {'compiled':>14} {'speed-up':>9} {'compile':>9}")
    for r in records:
        v = r.values
        tr.write_line(
            f"  {r.label['model']:<13} {_rate(v['eager_tokens_per_s'], 'tok/s'):>14}"
            f" {_rate(v['compiled_tokens_per_s'], 'tok/s'):>14} {v['speedup']:>8.2f}x"
            f" {v['compile_s']:>8.1f}s"
        )


def _video_summary(tr, config: pytest.Config, records: list[Record]) -> None:  # pragma: no cover
    """The video table, also written to ``.benchmarks/atoken-video.json``."""
    rows = video_summary_rows(records)
    tr.section("atoken video summary")
    device = next((r.values["device"] for r in records if "device" in r.values), "-")
    tr.write_line(
        f"{VIDEO_PRESET}, generated {VIDEO_SIZE}x{VIDEO_SIZE} clips, device {device},"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads; time = best round;"
        " peak = fresh process, peak minus memory before the call minus the output"
    )
    for line in video_summary_lines(rows):
        tr.write_line(line)
    path = config.rootpath / ".benchmarks" / "atoken-video.json"
    doc = {
        "preset": VIDEO_PRESET,
        "size": VIDEO_SIZE,
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [config.stash.get(LOAD_KEY, None), _load()],
        "rows": rows,
    }
    write_json(path, doc)
    tr.write_line(f"written to {path}")
