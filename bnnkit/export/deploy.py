"""One entry point for every deployment format: bnnkit's packed file (``.bnn``), Larq Compute
Engine (``.tflite``, ARM) and OpenVINO (``.xml`` + ``.bin``, x86), and the sizes of each.

The runtime formats are written from the lowered graph of the packed model
(:func:`bnnkit.export.graph.lower`) for a fixed input shape (batch included, 1 by default) and
carry bnnkit's header (format, versions, model spec, method, input shape, ``extra``: the recipe
for ``bnnkit predict``) in their own metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnkit._version import __version__
from bnnkit.errors import ConfigError
from bnnkit.export.convert import ExportError, convert, packed_layers
from bnnkit.export.files import save_packed
from bnnkit.export.graph import lower
from bnnkit.export.lce import save_lce
from bnnkit.export.openvino import save_openvino
from bnnkit.nn import binary_layers

FORMATS = {"bnn": ".bnn", "lce": ".tflite", "openvino": ".xml"}


def format_of(path: str | Path) -> str:
    """The format a file name asks for (by its suffix)."""
    suffix = Path(path).suffix
    for name, ext in FORMATS.items():
        if suffix == ext:
            return name
    raise ConfigError("is not a deployment file name", location=("out",), value=str(path),
                      allowed="a .bnn (packed), .tflite (Larq Compute Engine) or .xml (OpenVINO) file")  # fmt: skip


def export_model(
    model: nn.Module, path: str | Path, *, format: str | None = None,
    input_shape: tuple[int, ...] | None = None, model_spec: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None, kernel: str = "auto",
) -> Path:  # fmt: skip
    """Write a trained bnnkit model in a deployment format. Returns the path.

    Args:
        model: a trained model (converted here) or a converted one.
        path: the file (``.bnn``, ``.tflite`` or ``.xml``).
        format: ``bnn``, ``lce`` or ``openvino`` (default: from the suffix).
        input_shape: the runtime formats' input, with the batch (e.g. ``(1, 3, 224, 224)``);
            default: batch 1 of the registered model's input size.
        model_spec: the registered model's spec (default: the one on the model).
        extra: JSON information stored in the header (``bnnkit export`` stores the recipe).
        kernel: the packed kernel of the conversion check.
    """
    format = format or format_of(path)
    if format not in FORMATS:
        raise ConfigError("is not a deployment format", location=("format",), value=format,
                          allowed=", ".join(FORMATS))  # fmt: skip
    spec = model_spec or getattr(model, "model_spec", None)
    if format == "bnn":
        return save_packed(model, path, model_spec=spec, extra=extra, kernel=kernel)
    if input_shape is None:
        if not spec:
            raise ExportError("pass input_shape=(N, C, H, W): the model has no registered spec")
        from bnnkit.models import model_info

        input_shape = (1, *model_info(spec["name"]).input_size)
    packed = model if packed_layers(model) else convert(model, kernel=kernel)
    graph = lower(packed, tuple(input_shape))
    methods = {m.method_name for _, m in binary_layers(model) if m.method_name}
    header = {"format": f"bnnkit-{format}", "bnnkit_version": __version__, "torch_version": str(torch.__version__),
              "model": spec, "method": methods.pop() if len(methods) == 1 else None,
              "input_shape": list(input_shape), "extra": extra or {}}  # fmt: skip
    return (save_lce if format == "lce" else save_openvino)(graph, path, header)


def file_bytes(path: str | Path) -> int:
    """Bytes on disk of a deployment file (an OpenVINO model: its ``.xml`` and ``.bin``)."""
    path = Path(path)
    total = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        total += path.with_suffix(".bin").stat().st_size
    return total
