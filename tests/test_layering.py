"""The import contract: a package may import a lower layer, never a higher one (design notes).

Every ``import`` of every module under ``bnnkit/`` is read with ``ast``, including imports
inside functions (a lazy import against the direction is still a dependency against it).
Layers, highest first; packages on one line do not import each other:

    cli
    runs
    training
    diagnostics, export
    config
    data, models, methods
    nn
    binarize
    _registry, _io, _version
    errors

``bnnkit/__init__.py`` and ``bnnkit/__main__.py`` are the public entry points and may import any
layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bnnkit"
LAYERS = [
    ["cli"],
    ["runs"],
    ["training"],
    ["diagnostics", "export"],
    ["config"],
    ["data", "models", "methods"],
    ["nn"],
    ["binarize"],
    ["_registry", "_io", "_version"],
    ["errors"],
]
RANK = {pkg: i for i, line in enumerate(LAYERS) for pkg in line}
ENTRY_POINTS = {"__init__", "__main__"}


def _package(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """``(line, bnnkit top-level package)`` of every import in ``tree`` (absolute or relative)."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module
                base = module.split(".")[: -node.level]
                names = [".".join([*base, node.module] if node.module else base)]
            elif node.module == "bnnkit":
                names = [f"bnnkit.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bnnkit" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def _violations(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        pkg = _package(path, root)
        if pkg in ENTRY_POINTS:
            continue
        assert pkg in RANK, (
            f"{path} is in no layer: add its package to LAYERS (and the design notes)"
        )
        module = ".".join(["bnnkit", *path.relative_to(root).with_suffix("").parts])
        where = path.relative_to(root.parent)
        for line, target in _imported(ast.parse(path.read_text()), module):
            if target == pkg or target in ENTRY_POINTS:
                if target in ENTRY_POINTS:
                    out.append(f"{where}:{line} imports the top-level bnnkit")
                continue
            if target not in RANK:
                out.append(f"{where}:{line} imports unknown bnnkit.{target}")
            elif RANK[target] <= RANK[pkg]:
                out.append(f"{where}:{line}: {pkg} imports {target}, "
                           f"which is {'on the same line' if RANK[target] == RANK[pkg] else 'above it'}")  # fmt: skip
    return out


def test_no_import_against_the_layering():
    assert _violations() == []


def test_every_package_is_in_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py")} - ENTRY_POINTS
    assert packages | modules <= set(RANK), sorted((packages | modules) - set(RANK))


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import bnnkit.runs.run", "bnnkit.nn.layers", [(1, "runs")]),
        ("from bnnkit.training import Trainer", "bnnkit.nn.layers", [(1, "training")]),
        ("from bnnkit import train", "bnnkit.nn.layers", [(1, "train")]),
        ("def f():\n    from bnnkit.cli import main\n", "bnnkit.nn.layers", [(2, "cli")]),
        ("from ..runs import rundir", "bnnkit.nn.layers", [(1, "runs")]),
        ("from . import history", "bnnkit.nn.layers", [(1, "nn")]),
        ("import torch\nfrom torch import nn", "bnnkit.nn.layers", []),
    ],
)
def test_the_reader_finds_every_kind_of_import(source, module, expected):
    """The checker itself: absolute, from-bnnkit, in-function and relative imports are seen."""
    assert _imported(ast.parse(source), module) == expected


def test_a_violation_would_be_reported(tmp_path):
    """A lower layer importing a higher one (inside a function), or one on its own line, is
    caught."""
    fake = tmp_path / "bnnkit"
    (fake / "nn").mkdir(parents=True)
    (fake / "nn" / "bad.py").write_text("def f():\n    from bnnkit.runs import train\n")
    (fake / "data").mkdir()
    (fake / "data" / "odd.py").write_text("import bnnkit.models.registry\n")
    assert _violations(fake) == [
        "bnnkit/data/odd.py:1: data imports models, which is on the same line",
        "bnnkit/nn/bad.py:2: nn imports runs, which is above it",
    ]
