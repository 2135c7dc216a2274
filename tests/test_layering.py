"""The rooms import each other one way only: core <- plugins <- train / eval <- cli / pipeline.

Every ``.py`` file under ``atoken/`` (and the sources and tests of ``atoken-plugin-3d`` and the
grayscale example) is parsed with `ast`, nothing is imported, and every ``import`` /
``from ... import`` is collected, including the ones inside functions and ``TYPE_CHECKING``
blocks (a lazy import is still a dependency). The rules, from DESIGN.md's layout:

- ``atoken/core`` imports only ``atoken.core`` (and `atoken.models`, data that imports nothing).
- ``atoken/__init__.py`` (the user API) imports only core; ``atoken/plugin.py`` (the SDK) only
  core and the user API.
- ``atoken/plugins/<name>`` imports core, the user API and the SDK, and its own plugin; never
  another plugin, nor ``train``, ``eval``, ``cli`` or ``pipeline``.
- ``atoken/train`` and ``atoken/eval`` import anything below them and each other, but never
  ``cli`` or ``pipeline``, and never a plugin's modules (they reach plugins through registries).
- ``atoken/report`` (the ``atoken report`` page) sits at the level of ``cli`` and ``pipeline``:
  it imports core, the user API, the SDK, ``train`` and ``eval``, never a plugin; nothing below
  it imports it.
- A separate distribution (``atoken-plugin-3d``, the example) imports only ``atoken``,
  ``atoken.plugin`` and its own package; its tests may also use ``atoken.testing``, the
  ``atoken`` command (``atoken.cli``) and the public training API (``atoken.train``, the package
  itself: ``from atoken.train import Trainer``, never its submodules).

Nothing breaks them today: `KNOWN` (module -> module, each with the issue that removes it) is
empty, and it only shrinks. A new violation fails, and so does a `KNOWN` entry that no longer
occurs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest

import atoken.plugin
from atoken.core.option_pairs import parse_options

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "atoken"
DISTRIBUTIONS = {  # folder -> its own top-level package
    ROOT / "packages" / "atoken-plugin-3d": "atoken_plugin_3d",
    ROOT / "examples" / "atoken-plugin-grayscale": "atoken_plugin_grayscale",
}

#: (importing module, imported module) -> why it is tolerated for now. Empty: the layering holds.
#: An entry may be added only with the issue that removes it, and never for a plugin.
KNOWN: dict[tuple[str, str], str] = {}


# --- the scanner ----------------------------------------------------------------------------


def module_name(path: Path, base: Path) -> str:
    """``base/a/b/c.py`` -> ``a.b.c``; ``base/a/b/__init__.py`` -> ``a.b``."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan(base: Path, top: str, known: set[str] = frozenset()) -> dict[str, set[str]]:
    """Module name -> the ``atoken`` modules it imports, for every ``.py`` under ``base/top``.

    ``from X import name`` counts as importing ``X.name`` when that is a module (in the tree or
    in ``known``), as in ``from atoken.eval import metrics``; else ``X``. Relative imports are
    resolved against the importing module's package.
    """
    modules = {module_name(p, base): p for p in sorted((base / top).rglob("*.py"))}
    known = set(known) | set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    anchor = parts[: len(parts) - node.level + 1]
                    source = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    found.add(sub if sub in known else source)
        graph[name] = {m for m in found if m == "atoken" or m.startswith("atoken.")}
    return graph


def atoken_graph() -> dict[str, set[str]]:
    return scan(PKG.parent, "atoken")


# --- the rules ------------------------------------------------------------------------------


def room(module: str) -> str:
    """``atoken.plugins.image.io`` -> ``plugins.image``; ``atoken.core.x`` -> ``core``; ..."""
    if module == "atoken":
        return "api"
    if module == "atoken.plugin":
        return "sdk"
    parts = module.split(".")
    if parts[1] == "plugins":
        return "plugins" if len(parts) == 2 else f"plugins.{parts[2]}"
    return parts[1]


BELOW_ALL = {"core", "api", "sdk", "models"}


def allowed(importer: str, imported: str) -> bool:
    """Whether atoken module ``importer`` may import atoken module ``imported``."""
    src, dst = room(importer), room(imported)
    if dst == "models":  # data only; it imports nothing from atoken (test below)
        return True
    if src == "core":
        return dst == "core"
    if src == "api":
        return dst == "core"
    if src == "sdk":
        return dst in {"core", "api"}
    if src == "models":
        return False
    if src.startswith("plugins"):
        return dst in BELOW_ALL or dst == src
    if src in {"train", "eval"}:
        return dst in BELOW_ALL or dst in {"train", "eval", "convert", "latents_file"}
    if src in {"convert", "latents_file", "testing"}:
        return dst in BELOW_ALL or dst == src
    if src == "report":  # beside cli and pipeline: reads what train/eval write, no plugin
        return dst in BELOW_ALL or dst in {"train", "eval", "report"}
    return True  # cli, pipeline, __main__ sit on top


def internal_violations() -> set[tuple[str, str]]:
    return {
        (importer, imported)
        for importer, targets in atoken_graph().items()
        for imported in targets
        if not allowed(importer, imported)
    }


def distribution_violations() -> set[tuple[str, str]]:
    """(file, atoken module) pairs a separate distribution imports but may not.

    Files are named by their path from the repository root (``packages/.../x.py``).
    """
    atoken_modules = set(atoken_graph())
    out: set[tuple[str, str]] = set()
    for folder, own in DISTRIBUTIONS.items():
        for base, top, extra in (
            (folder / "src", own, set()),
            (folder, "tests", {"atoken.testing", "atoken.cli", "atoken.train"}),
        ):
            if not (base / top).is_dir():
                continue
            for module, targets in scan(base, top, atoken_modules).items():
                path = base / (module.replace(".", "/") + ".py")
                if not path.is_file():
                    path = base / module.replace(".", "/") / "__init__.py"
                for imported in targets - {"atoken", "atoken.plugin"} - extra:
                    out.add((path.relative_to(ROOT).as_posix(), imported))
    return out


# --- the tests ------------------------------------------------------------------------------


def _report(pairs: set[tuple[str, str]]) -> str:
    return "\n".join(f"  {a} -> {b}" for a, b in sorted(pairs))


def test_no_new_layering_violations() -> None:
    found = internal_violations() | distribution_violations()
    new = found - set(KNOWN)
    assert not new, (
        "imports that break the layering (core <- plugins <- train/eval <- cli/pipeline; a"
        " plugin imports only core and atoken.plugin). Import the name from atoken.plugin, or"
        " move the helper down a room:\n" + _report(new)
    )


def test_known_violations_still_occur() -> None:
    found = internal_violations() | distribution_violations()
    gone = set(KNOWN) - found
    assert not gone, (
        "these KNOWN layering violations no longer occur; delete their lines from KNOWN in"
        " tests/test_layering.py so the list only shrinks:\n" + _report(gone)
    )


def test_models_is_data_only() -> None:
    graph = atoken_graph()
    models = {m: t for m, t in graph.items() if room(m) == "models"}
    assert models, "atoken/models was not found by the scanner"
    assert all(not targets for targets in models.values()), models


def test_scanner_sees_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The scanner is what the rules stand on: check it on a tree whose imports we know."""
    pkg = tmp_path / "atoken"
    for folder in ("core", "eval", "plugins/image"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "eval" / "metrics.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from ..eval import metrics\n")
    (pkg / "plugins" / "image" / "adapter.py").write_text(
        "from typing import TYPE_CHECKING\nimport atoken.core.a\n"
        "if TYPE_CHECKING:\n    from atoken.plugins.video import x\n"
        "from . import io\n"
    )
    (pkg / "plugins" / "image" / "io.py").write_text("import numpy\n")
    graph = scan(tmp_path, "atoken")
    assert graph["atoken.core.a"] == {"atoken.eval.metrics"}
    assert graph["atoken.plugins.image.adapter"] == {
        "atoken.core.a",
        "atoken.plugins.video",
        "atoken.plugins.image.io",
    }
    assert graph["atoken.plugins.image.io"] == set()
    assert not allowed("atoken.core.a", "atoken.eval.metrics")
    assert not allowed("atoken.plugins.image.adapter", "atoken.plugins.video")
    assert allowed("atoken.plugins.image.adapter", "atoken.plugins.image.io")
    assert allowed("atoken.plugins.image.adapter", "atoken.plugin")
    assert not allowed("atoken.train.trainer", "atoken.pipeline")
    assert not allowed("atoken.eval.x", "atoken.plugins.image.io")
    assert allowed("atoken.cli.model", "atoken.pipeline")
    assert allowed("atoken.cli.report", "atoken.report")
    assert allowed("atoken.report.sources", "atoken.train.monitor")
    assert not allowed("atoken.report.page", "atoken.plugins.video.reader")
    for below in ("atoken.core.x", "atoken.plugins.image.io", "atoken.train.x", "atoken.eval.x"):
        assert not allowed(below, "atoken.report"), below


# --- the SDK itself -------------------------------------------------------------------------


def test_sdk_exports_resolve() -> None:
    names = atoken.plugin.__all__
    assert len(names) == len(set(names)), "duplicate names in atoken.plugin.__all__"
    assert not [n for n in names if n.startswith("_")]
    missing = [n for n in names if getattr(atoken.plugin, n, None) is None]
    assert not missing, f"atoken.plugin.__all__ names that do not resolve: {missing}"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        atoken.plugin.nonexistent  # noqa: B018


def test_sdk_names_are_atokens_own_objects() -> None:
    from atoken.core.metrics import psnr
    from atoken.core.serialization import atomic_write

    assert atoken.plugin.atomic_write is atomic_write
    assert atoken.plugin.psnr is psnr  # a re-export, not a copy
    assert atoken.plugin.hookimpl is atoken.hookimpl


def test_sdk_import_loads_nothing_above_core() -> None:
    """``import atoken.plugin`` stays cheap: it loads core modules only (nothing of eval, convert, train)."""
    code = (
        "import sys, atoken.plugin\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('atoken.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    loaded = {room(m) for m in out}
    assert loaded <= {"core", "api", "sdk", "models"}, sorted(loaded)
    assert "atoken.core.tokens" in out  # the scan saw the modules that did load


def test_parse_options_decodes_json_values_and_keeps_strings() -> None:
    opts = parse_options(("size=64", "name=bunny", "views=[1, 2]", "lpips=false", "size=128"))
    assert opts == {"size": 128, "name": "bunny", "views": [1, 2], "lpips": False}
    assert parse_options(("path=a=b",)) == {"path": "a=b"}  # the first "=" splits
    assert parse_options(()) == {}


@pytest.mark.parametrize("pair", ["bogus", "=3"])
def test_parse_options_refuses_a_pair_without_key(pair: str) -> None:
    with pytest.raises(click.BadParameter, match="expected KEY=VALUE"):
        parse_options((pair,))


def test_cli_and_sdk_share_one_option_parser() -> None:
    from atoken.cli import latents, model, understanding
    from atoken.core.option_pairs import parse_adapter_options

    assert understanding.parse_options is parse_options is atoken.plugin.parse_options
    # every command that builds adapters reads -O with the one ADAPTER.KEY=VALUE parser
    for module in (latents, model, understanding):
        assert module.parse_adapter_options is parse_adapter_options
    assert atoken.plugin.parse_adapter_options is parse_adapter_options
