"""A trained checkpoint, used: evaluated (``bnnkit eval``), exported to a packed model
(``bnnkit export``), and the packed model evaluated (``bnnkit predict``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnkit.config import load_recipe
from bnnkit.data import build_data
from bnnkit.errors import ConfigError
from bnnkit.export import ExportError
from bnnkit.export.deploy import export_model, file_bytes, format_of
from bnnkit.export.files import (
    float_state_bytes,
    load_packed,
    read_header,
    save_packed,
    size_report,
)
from bnnkit.export.runtimes import load_runtime_model
from bnnkit.models import model_info
from bnnkit.runs.checkpoint import CheckpointError, load_checkpoint
from bnnkit.runs.rundir import resolve_checkpoint
from bnnkit.runs.stages import model_from_checkpoint
from bnnkit.training import Dist, evaluate, process_group


def check_data_overrides(overrides: Sequence[str], command: str) -> None:
    """Evaluation commands change the data only: refuse any other ``key=value``."""
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError("takes data.* overrides only (the model is the checkpoint's)",
                          location=(command,), value=bad)  # fmt: skip


def evaluate_checkpoint(
    path: str | Path, overrides: Sequence[str] = (), device: str = "auto"
) -> tuple[dict[str, float], Path]:
    """Top-1 / top-5 of a checkpoint on its recipe's validation data (``data.*`` overrides).

    A run directory means its ``best.pt`` (else ``last.pt``).
    """
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    check_data_overrides(overrides, "eval")
    cfg = load_recipe(ckpt.recipe, list(overrides))
    with process_group(device) as dist:
        data = build_data(cfg.data, device=dist.device, rank=dist.rank, world_size=dist.world_size)
        classes = ckpt.model_spec["num_classes"]
        if data.num_classes != classes:
            raise CheckpointError(f"the data has {data.num_classes} classes but the checkpoint's "
                                  f"model {classes}")  # fmt: skip
        model = model_from_checkpoint(ckpt, dist.device)
        return evaluate(model, data.val, dist, contextlib.nullcontext), path


def export_checkpoint(
    source: str | Path, out: str | Path, *, kernel: str = "auto", format: str | None = None,
    batch: int = 1,
) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Convert a checkpoint (or a run directory's best checkpoint) and write it in a deployment
    format: ``bnn`` (packed), ``lce`` (``.tflite``) or ``openvino`` (``.xml``); default from
    ``out``'s suffix.

    The recipe goes into the file's header (``extra.recipe``) so that ``bnnkit predict``
    knows the data and its normalisation. Returns the file and its size report: per packed
    layer for ``.bnn`` (:func:`size_report`), the file against the float ``state_dict`` for the
    runtimes (``batch``: their fixed batch).
    """
    path = resolve_checkpoint(source)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, "cpu")
    extra = {"recipe": ckpt.recipe, "source": str(path)}
    format = format or format_of(out)
    if format == "bnn":
        file = save_packed(model, out, model_spec=ckpt.model_spec, extra=extra, kernel=kernel)
        return file, size_report(model, file)
    shape = (batch, *model_info(ckpt.model_spec["name"]).input_size)
    file = export_model(model, out, format=format, input_shape=shape, model_spec=ckpt.model_spec,
                        extra=extra, kernel=kernel)  # fmt: skip
    float_bytes = float_state_bytes(model)
    return file, {"format": format, "file_bytes": file_bytes(file), "float_state_bytes": float_bytes,
                  "ratio": file_bytes(file) / float_bytes, "input_shape": list(shape)}  # fmt: skip


def format_size_report(report: dict[str, Any], file: Path) -> str:
    """The size report as a table (one line per binary layer, then the totals)."""
    if "layers" not in report:  # a runtime file
        mib = 1024 * 1024
        return (f"{report['format']} file {file}: {report['file_bytes'] / mib:.2f} MiB for input "
                f"{tuple(report['input_shape'])}; float state_dict {report['float_state_bytes'] / mib:.2f} "
                f"MiB; ratio {report['ratio']:.4f} (1/{1 / report['ratio']:.1f})")  # fmt: skip
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


class _RuntimeModule(nn.Module):
    """A runtime model (``predict`` on numpy arrays) as a module for :func:`evaluate`."""

    def __init__(self, runtime: Any) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runtime.predict(x.numpy()))


def evaluate_packed(
    file: str | Path, overrides: Sequence[str] = (), *, kernel: str = "auto",
    threads: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Top-1 / top-5 of a deployed model (``.bnn`` packed file, ``.tflite`` in Larq Compute
    Engine's interpreter, ``.xml`` in OpenVINO) on the validation split of its recipe's data
    (``data.*`` overrides, e.g. ``data.root=...``), on CPU; also images/s."""
    runtime = None
    if Path(file).suffix in (".tflite", ".xml"):
        runtime, header = load_runtime_model(file, num_threads=threads)
        if not header:
            raise ExportError(
                f"{file} holds no bnnkit header (it was not written by `bnnkit export`)"
            )
    else:
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
        raise ExportError(f"the data has {data.num_classes} classes but the packed model {classes}")
    model = load_packed(file, kernel=kernel) if runtime is None else _RuntimeModule(runtime)
    with torch.inference_mode():
        warm = next(iter(data.val), None)  # numba compiles (or loads its cache) on a first call,
        if warm is not None:  # a runtime allocates: not part of the images/s
            model(warm[0])
        t0 = time.perf_counter()
        metrics = evaluate(model, data.val, Dist(), contextlib.nullcontext)
    metrics["images_per_s"] = metrics["samples"] / max(time.perf_counter() - t0, 1e-9)
    return metrics
