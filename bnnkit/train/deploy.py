"""From a training run to a packed model and back: ``export_checkpoint`` and ``evaluate_packed``
(what ``bnnkit export`` and ``bnnkit predict`` call)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bnnkit.data import build_data
from bnnkit.export import ExportError
from bnnkit.export.files import load_packed, read_header, save_packed, size_report
from bnnkit.train import checkpoint as ck
from bnnkit.train.config import load_recipe
from bnnkit.train.distributed import Dist
from bnnkit.train.engine import evaluate
from bnnkit.train.run import check_data_overrides, model_from_checkpoint


def export_checkpoint(
    source: str | Path, out: str | Path, *, kernel: str = "auto"
) -> tuple[Path, dict[str, Any]]:
    """Convert a checkpoint (or a run directory's best checkpoint) and write the packed file.

    The recipe goes into the file's header (``extra.recipe``) so that ``bnnkit predict``
    knows the data and its normalisation. Returns the file and :func:`size_report`.
    """
    path = ck.resolve_checkpoint(source)
    ckpt = ck.load_checkpoint(path)
    model = model_from_checkpoint(ckpt, "cpu")
    extra = {"recipe": ckpt.get("recipe"), "source": str(path)}
    file = save_packed(model, out, model_spec=ckpt["model_spec"], extra=extra, kernel=kernel)
    return file, size_report(model, file)


def format_size_report(report: dict[str, Any], file: Path) -> str:
    """The size report as a table (one line per binary layer, then the totals)."""
    lines = [f"{'binary layer':<28} {'float KiB':>10} {'packed KiB':>11} {'ratio':>8}"]
    for layer in report["layers"]:
        packed = layer["packed_bytes"] + layer["scale_bytes"]
        lines.append(f"{layer['name']:<28} {layer['float_bytes'] / 1024:>10.1f} "
                     f"{packed / 1024:>11.2f} {layer['ratio']:>8.4f}")  # fmt: skip
    mib = 1024 * 1024
    ratios = sorted({round(1 / layer["ratio"]) for layer in report["layers"]})
    share = ", ".join(f"1/{r}" for r in ratios)
    lines.append(
        f"packed file {file}: {report['packed_file_bytes'] / mib:.2f} MiB; float state_dict "
        f"{report['float_state_bytes'] / mib:.2f} MiB; ratio {report['ratio']:.4f} "
        f"(1/{1 / report['ratio']:.1f}); binary layer weights {share} of float (1/32 when the "
        "input channels are a multiple of 64) plus a float scale and bias per output channel"
    )
    return "\n".join(lines)


def evaluate_packed(
    file: str | Path, overrides: Sequence[str] = (), *, kernel: str = "auto"
) -> dict[str, float]:
    """Top-1 / top-5 of a packed model on the validation split of its recipe's data
    (``data.*`` overrides, e.g. ``data.root=...``), on CPU; also images/s."""
    header = read_header(file)
    recipe = header["extra"].get("recipe")
    if recipe is None:
        raise ExportError(f"{file} stores no recipe (it was not written by `bnnkit export`); "
                          "evaluate it from Python with bnnkit.export.load_packed")  # fmt: skip
    check_data_overrides(overrides, "predict")
    cfg = load_recipe(recipe, list(overrides))
    data = build_data(cfg.data, device=torch.device("cpu"), rank=0, world_size=1)
    classes = header["model"]["num_classes"]
    if data.num_classes != classes:
        raise ValueError(f"the data has {data.num_classes} classes but the packed model {classes}")
    model = load_packed(file, kernel=kernel)
    t0 = time.perf_counter()
    with torch.inference_mode():
        metrics = evaluate(model, data.val, Dist(), contextlib.nullcontext)
    metrics["images_per_s"] = metrics["samples"] / max(time.perf_counter() - t0, 1e-9)
    return metrics
