"""``atoken env``: what a bug report needs: versions, the torch build, devices, the attention
backends usable here, and the installed plugins (``--json`` for a machine-readable copy)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import sys
from typing import Any

import click
import torch

from atoken.cli._group import cli

#: distributions whose versions a report lists when installed (atoken's optional companions)
OPTIONAL = (
    "atoken-plugin-3d",
    "safetensors",
    "numpy",
    "pillow",
    "av",
    "webdataset",
    "diffusers",
    "huggingface-hub",
    "transformers",
    "xformers",
    "gsplat",
    "trimesh",
    "pluggy",
    "click",
    "rich",
)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _devices() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"device": "cpu", "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(
                {
                    "device": f"cuda:{i}",
                    "name": p.name,
                    "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                }
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append({"device": "mps", "name": "Apple MPS"})
    return out


def environment() -> dict[str, Any]:
    """The report `atoken env` prints, as a JSON-able dict."""
    from atoken.core.plugins import default_components

    comps = default_components()
    devices = _devices()
    backends = []
    for entry in comps.attention.entries():
        backend = entry.obj
        usable = {}
        for d in devices:
            reason = backend.unavailable_reason(torch.device(d["device"]))
            usable[d["device"]] = "yes" if reason is None else reason
        backends.append({"name": entry.name, "provider": entry.provider.name, "usable": usable})
    return {
        "atoken": _version("atoken"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": devices,
        "attention_backends": backends,
        "plugins": [
            {"plugin": name, "provider": provider.name, "version": provider.version}
            for name, provider, _ in comps.plugins()
        ],
        "packages": {d: _version(d) for d in OPTIONAL},
    }


@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def env_cmd(as_json: bool) -> None:
    """Print what a bug report needs: versions, torch build, devices, attention backends usable
    on each device, and the installed plugins."""
    report = environment()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    build = f"CUDA {report['torch_cuda']}" if report["torch_cuda"] else "CPU-only build"
    lines = [
        f"atoken {report['atoken']}, Python {report['python']}, {report['platform']}",
        f"torch {report['torch']} ({build}"
        + (f", cuDNN {report['cudnn']})" if report["cudnn"] else ")"),
        "devices:",
        *(
            "  " + ", ".join(f"{k} {v}" if k != "device" else str(v) for k, v in d.items())
            for d in report["devices"]
        ),
        "attention backends (usable per device):",
        *(
            f"  {b['name']} ({b['provider']}): "
            + "; ".join(f"{dev}: {why}" for dev, why in b["usable"].items())
            for b in report["attention_backends"]
        ),
        "plugins:",
        *(
            f"  {p['plugin']} ({p['provider']} {p['version'] or ''})".rstrip()
            for p in report["plugins"]
        ),
        "packages:",
        "  "
        + ", ".join(f"{k} {v}" for k, v in report["packages"].items() if v is not None)
        + (
            "; not installed: " + ", ".join(k for k, v in report["packages"].items() if v is None)
            if any(v is None for v in report["packages"].values())
            else ""
        ),
    ]
    for line in lines:
        click.echo(line)
