"""Packed model files: ``save_packed(model, path)`` / ``load_packed(path)``.

A packed file is one safetensors file: every tensor of the converted model's ``state_dict``
(packed weight bits as int64 words, folded scales and biases, input shifts, and the float
layers' weights and buffers), plus a JSON header in the safetensors metadata::

    format: "bnnkit-packed", format_version: "3", bnnkit_version
    payload_sha256: SHA-256 of the tensor bytes (the data after safetensors' header), checked
            on load: a file damaged in transfer or storage is refused, not run (version 3)
    model:  {"name", "num_classes", "options"}   (a registered model: how to rebuild it)
    method: the training method's name
    layers: [{"name", "type", "in", "out", "kernel_size", "stride", "padding",
              "has_shift", "folded_bn"}, ...]   (every packed layer)
    extra:  free-form JSON (``bnnkit export`` stores the recipe's data section)

Loading builds the registered model (bnnkit's own code), puts packed layers and identities
(for folded batch norms) where the header says, and loads the tensors strictly: nothing in
the file is executed (safetensors and JSON only), and any missing, extra or misshapen
tensor is an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from bnnkit._io import atomic_write_bytes
from bnnkit._version import __version__
from bnnkit.export.convert import ExportError, _set_module, convert, packed_layers
from bnnkit.export.layers import PackedConv2d, PackedLinear
from bnnkit.models import create_model
from bnnkit.nn import SignHistory, binary_layers

FORMAT = "bnnkit-packed"
FORMAT_VERSION = "3"  # 2: conv layers record their pad_value; 3: payload_sha256
READABLE_VERSIONS = ("1", "2", "3")  # a version-1 file has zero padding everywhere
HEADER_FIELDS = ("model", "method", "layers", "extra")  # JSON-encoded metadata fields


def _layer_entry(name: str, m: PackedConv2d | PackedLinear) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "has_shift": m.input_shift is not None,
                             "folded_bn": m.folded_bn}  # fmt: skip
    if isinstance(m, PackedConv2d):
        entry.update(type="conv2d", **{"in": m.in_channels, "out": m.out_channels},
                     kernel_size=list(m.kernel_size), stride=list(m.stride),
                     padding=list(m.padding), pad_value=m.pad_value)  # fmt: skip
    else:
        entry.update(type="linear", **{"in": m.in_features, "out": m.out_features})
    return entry


def _method_name(model: nn.Module) -> str | None:
    names = {m.method_name for _, m in binary_layers(model) if m.method_name}
    return names.pop() if len(names) == 1 else None


def save_packed(model: nn.Module, path: str | Path, *, model_spec: dict[str, Any] | None = None,
                method: str | None = None, extra: dict[str, Any] | None = None,
                kernel: str = "auto") -> Path:  # fmt: skip
    """Write ``model`` as a packed file (atomically). Returns the path.

    Args:
        model: a trained bnnkit model (converted here with :func:`convert`) or a model already
            converted.
        model_spec: ``{"name", "num_classes", "options"}`` of the registered model; default
            the ``model_spec`` that :func:`bnnkit.create_model` recorded on the model.
        method: the training method's name (default: read from the binary layers).
        extra: JSON-serialisable information stored in the header (e.g. the data config).
        kernel: kernel of the conversion check (no effect on the file).

    Raises:
        ExportError: a layer cannot be packed, or the architecture is unknown (pass
            ``model_spec``).
    """
    spec = model_spec or getattr(model, "model_spec", None)
    if not spec or not {"name", "num_classes", "options"} <= set(spec):
        raise ExportError("save_packed needs the registered model's spec to rebuild it: build "
                          "the model with bnnkit.create_model or pass model_spec={'name': ..., "
                          "'num_classes': ..., 'options': {...}}")  # fmt: skip
    method = method or _method_name(model)
    packed = model if packed_layers(model) else convert(model, kernel=kernel)
    layers = [_layer_entry(n, m) for n, m in packed_layers(packed)]
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bnnkit_version": __version__,
        "model": json.dumps({k: spec[k] for k in ("name", "num_classes", "options")}),
        "method": json.dumps(method), "layers": json.dumps(layers),
        "extra": json.dumps(extra or {}),
    }  # fmt: skip
    tensors = {k: v.detach().cpu().contiguous() for k, v in packed.state_dict().items()}
    header["payload_sha256"] = payload_sha256(save(tensors, metadata=header))
    blob = save(tensors, metadata=header)  # the same tensor bytes, now with their digest
    return atomic_write_bytes(blob, Path(path))


def payload_sha256(blob: bytes) -> str:
    """SHA-256 of a safetensors file's tensor bytes: what follows its 8-byte length and JSON
    header (so it does not depend on the metadata that stores it)."""
    n = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + n :]).hexdigest()


def read_header(path: str | Path) -> dict[str, Any]:
    """The decoded JSON header of a packed file (no tensors loaded).

    Raises:
        ExportError: not a bnnkit packed file, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"no packed file at {path}; write one with `bnnkit export`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ExportError(f"{path} is not a safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ExportError(f"{path} is not a bnnkit packed model (format {meta.get('format')!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ExportError(f"{path} has packed format version {meta.get('format_version')!r}; "
                          f"this bnnkit ({__version__}) reads versions "
                          f"{', '.join(READABLE_VERSIONS)}: upgrade bnnkit")  # fmt: skip
    out: dict[str, Any] = {k: meta.get(k) for k in ("format", "format_version", "bnnkit_version",
                                                     "payload_sha256")}  # fmt: skip
    for key in HEADER_FIELDS:
        if key not in meta:
            raise ExportError(f"{path}: the header has no {key!r} field; the file is damaged or "
                              "was not written by bnnkit: export it again")  # fmt: skip
        try:
            out[key] = json.loads(meta[key])
        except json.JSONDecodeError as exc:
            raise ExportError(f"{path}: the header's {key!r} field is not valid JSON ({exc}); "
                              "the file is damaged: export it again") from None  # fmt: skip
    _check_header(path, out)
    return out


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """The decoded fields have the shapes :func:`load_packed` reads."""
    model, layers = header["model"], header["layers"]
    if not (isinstance(model, dict) and {"name", "num_classes", "options"} <= set(model)):
        raise ExportError(f"{path}: the header's 'model' field must hold name, num_classes and "
                          f"options; it holds {model!r:.120}")  # fmt: skip
    fields = {"name", "type", "in", "out", "has_shift", "folded_bn"}
    if not isinstance(layers, list) or not all(isinstance(e, dict) and fields <= set(e)
                                               for e in layers):  # fmt: skip
        raise ExportError(f"{path}: the header's 'layers' field must be a list of layers with "
                          f"{', '.join(sorted(fields))}")  # fmt: skip


def _packed_module(entry: dict[str, Any], kernel: str) -> PackedConv2d | PackedLinear:
    if entry["type"] == "conv2d":
        return PackedConv2d(entry["in"], entry["out"], entry["kernel_size"], entry["stride"],
                            entry["padding"], has_shift=entry["has_shift"], kernel=kernel,
                            pad_value=entry.get("pad_value", 0.0))  # fmt: skip
    if entry["type"] == "linear":
        return PackedLinear(entry["in"], entry["out"], has_shift=entry["has_shift"], kernel=kernel)
    raise ExportError(f"unknown packed layer type {entry['type']!r} for {entry['name']!r}")


def load_packed(path: str | Path, *, kernel: str = "auto") -> nn.Module:
    """Rebuild a packed model from its file (eval mode, CPU). Executes nothing from the file.

    The model has ``packed_header`` (the decoded header) as an attribute.

    Raises:
        ExportError: not a packed file, an unknown model, or tensors that do not match.
    """
    from safetensors.torch import load_file

    header = read_header(path)
    spec = header["model"]
    try:
        model = create_model(spec["name"], num_classes=spec["num_classes"], **spec["options"])
    except ValueError as exc:
        raise ExportError(f"{path}: cannot rebuild model {spec['name']!r}: {exc}") from exc
    modules = dict(model.named_modules())
    for entry in header["layers"]:
        for name in (entry["name"], entry["folded_bn"] or entry["name"]):
            if name not in modules:
                raise ExportError(f"{path}: the header names layer {name!r}, which model "
                                  f"{spec['name']!r} does not have: the header and the model "
                                  "disagree (a damaged or edited file): export it again")  # fmt: skip
        packed = _packed_module(entry, kernel)
        packed.folded_bn = entry["folded_bn"]
        _set_module(model, entry["name"], packed)
        if entry["folded_bn"]:
            _set_module(model, entry["folded_bn"], nn.Identity())
    state = load_file(str(path))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ExportError(f"{path}: tensors do not match model {spec['name']!r}: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")  # fmt: skip
    if header["payload_sha256"] is not None:
        if payload_sha256(Path(path).read_bytes()) != header["payload_sha256"]:
            raise ExportError(f"{path}: its tensors are damaged (their SHA-256 is not the one "
                              "the header records): do not use it; export it again or copy an "
                              "intact one")  # fmt: skip
    elif header["format_version"] not in ("1", "2"):
        raise ExportError(f"{path}: the header has no payload_sha256; the file is damaged or "
                          "edited: export it again")  # fmt: skip
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in sorted(own)
              if state[k].shape != own[k].shape]  # fmt: skip
    if shapes:
        raise ExportError(f"{path}: tensors do not match model {spec['name']!r}: shape "
                          f"mismatch {shapes[:5]}")  # fmt: skip
    model.load_state_dict(state, strict=False)
    model.packed_header = header
    return model.eval()


def float_state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s ``state_dict`` as the float network stores it: parameters and
    buffers, without bnnkit's training bookkeeping (the per-layer sign history, 2 bytes per
    binary weight, which no float or deployed model carries)."""
    history = {f"{name}.{key}" for name, m in model.named_modules() if isinstance(m, SignHistory)
               for key in m.state_dict()}  # fmt: skip
    return sum(
        v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in history
    )


def size_report(model: nn.Module, packed_path: str | Path) -> dict[str, Any]:
    """Sizes of a trained model's float ``state_dict`` and of its packed file, overall and
    per packed layer: the float latent weight's bytes against the bytes of the weight bits
    stored in the file (read from the file's tensor shapes) and of its scale and bias."""
    float_bytes = float_state_bytes(model)
    layers = []
    with safe_open(str(packed_path), framework="pt") as f:
        for entry in read_header(packed_path)["layers"]:
            name = entry["name"]
            bits = 8 * math.prod(f.get_slice(f"{name}.weight_bits").get_shape())
            fbytes = model.get_submodule(name).weight.numel() * 4
            layers.append({"name": name, "float_bytes": fbytes, "packed_bytes": bits,
                           "scale_bytes": 8 * entry["out"], "ratio": bits / fbytes})  # fmt: skip
    file_bytes = Path(packed_path).stat().st_size
    return {"float_state_bytes": float_bytes, "packed_file_bytes": file_bytes,
            "ratio": file_bytes / float_bytes, "layers": layers}  # fmt: skip
