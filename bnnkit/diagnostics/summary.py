"""``bnnkit.summary``: parameters, memory and operations of a (binary) model, larq-style.

Definitions (per single sample; every figure is exact integer arithmetic):

* **input_bits / weight_bits**: 1 for a bnnkit binary layer with an input / weight binarizer
  attached, else 32.
* **MACs**: conv = output elements x (C_in / groups) x kH x kW; linear = in x out (x any
  leading non-batch dims). Only ``nn.Conv2d`` / ``nn.Linear`` (binary or not) are counted:
  BatchNorm, activations, pooling and additions are not (as in larq and the papers).
* **BOPs**: MACs of layers whose input *and* weight are 1-bit (xnor-popcount).
  **FLOPs**: all other MACs. **OPs** = FLOPs + BOPs / 64 (Bi-Real, ReActNet).
* **Params**: ``binary_params`` are latent weights of weight-binarized layers; everything
  else (biases, BatchNorm, scales, RSign shifts, float layers) is ``float_params``.
  BatchNorm running statistics are buffers, not counted (they fold into an affine at export).
* **trained_bytes**: every parameter in fp32 (what training holds).
* **deployed_bytes**: binary weights as sign bits packed along C_in x kH x kW into 64-bit
  words per output channel (``C_out * ceil(K / 64) * 8`` bytes, the format of
  ``bnnkit.export``), plus one fp32 scale per output channel, plus 4 bytes for every other
  parameter of the layer (a learnable scale is that stored scale, counted once); float
  layers and parameters outside conv/linear layers at 4 bytes each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from bnnkit.errors import ConfigError
from bnnkit.nn import BinaryLayer


@dataclass
class LayerSummary:
    """One conv/linear layer of a :class:`ModelSummary` (see the module docstring)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    input_bits: int
    weight_bits: int
    binary_params: int
    float_params: int
    macs: int
    bops: int
    flops: int
    trained_bytes: int
    deployed_bytes: int

    @property
    def params(self) -> int:
        return self.binary_params + self.float_params


@dataclass
class ModelSummary:
    """Per-layer and total figures; ``print(summary)`` shows a table, ``to_dict()`` is JSON-able."""

    layers: list[LayerSummary]
    other_params: int
    input_size: tuple[int, ...]
    title: str = ""
    totals: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        s = {
            k: sum(getattr(layer, k) for layer in self.layers)
            for k in (
                "binary_params",
                "float_params",
                "macs",
                "bops",
                "flops",
                "trained_bytes",
                "deployed_bytes",
            )
        }
        s["float_params"] += self.other_params
        s["trained_bytes"] += 4 * self.other_params
        s["deployed_bytes"] += 4 * self.other_params
        s["total_params"] = s["binary_params"] + s["float_params"]
        s["ops"] = s["flops"] + s["bops"] / 64
        s["compression"] = s["trained_bytes"] / s["deployed_bytes"] if s["deployed_bytes"] else 1.0
        s["binary_mac_fraction"] = s["bops"] / s["macs"] if s["macs"] else 0.0
        self.totals = s

    def __getattr__(self, name: str) -> Any:
        totals = self.__dict__.get("totals")
        if totals is not None and name in totals:
            return totals[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "input_size": list(self.input_size),
            "layers": [
                {**asdict(layer), "output_shape": list(layer.output_shape)} for layer in self.layers
            ],
            "other_params": self.other_params,
            "totals": dict(self.totals),
        }

    def __str__(self) -> str:
        return format_table(self)


def _layer_params(module: nn.Module) -> tuple[int, int, int]:
    """(binary, float, scale) parameter counts of one conv/linear module."""
    total = sum(p.numel() for p in module.parameters())
    binary = (
        module.weight.numel() if isinstance(module, BinaryLayer) and module.weight_bits == 1 else 0
    )
    scale = 0
    if isinstance(module, BinaryLayer) and module.scale is not None:
        scale = sum(p.numel() for p in module.scale.parameters())
    return binary, total - binary, scale


def _macs(module: nn.Module, out_shape: tuple[int, ...]) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return math.prod(out_shape) * (module.in_channels // module.groups) * kh * kw
    return math.prod(out_shape[:-1]) * module.in_features * module.out_features


def _summarize_layer(name: str, module: nn.Module, out_shape: tuple[int, ...]) -> LayerSummary:
    binary, floats, scale = _layer_params(module)
    in_bits = module.input_bits if isinstance(module, BinaryLayer) else 32
    w_bits = module.weight_bits if isinstance(module, BinaryLayer) else 32
    macs = _macs(module, out_shape)
    bops = macs if (in_bits == 1 and w_bits == 1) else 0
    if w_bits == 1:
        c_out = module.weight.shape[0]
        k = module.weight[0].numel()
        deployed = c_out * math.ceil(k / 64) * 8 + 4 * c_out + 4 * (floats - scale)
    else:
        deployed = 4 * (binary + floats)
    kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
    return LayerSummary(
        name,
        kind,
        out_shape,
        in_bits,
        w_bits,
        binary,
        floats,
        macs,
        bops,
        macs - bops,
        4 * (binary + floats),
        deployed,
    )


def summary(
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    print_table: bool = False,
) -> ModelSummary:
    """Parameters, memory and operations of ``model`` for one input of ``input_size``.

    Runs one forward pass in eval mode under ``no_grad`` (the model's training mode is
    restored) to find each layer's output size. See the module docstring for definitions.

    Args:
        model: any ``nn.Module``; bnnkit binary layers count as binary where a binarizer is
            attached (a bnnkit model without a method is full precision).
        input_size: one sample's shape, ``(C, H, W)`` (``(features,)`` for a linear
            model), or with the batch first, ``(N, C, H, W)`` as torchinfo takes it. Which one
            is meant is read from the model's first conv or linear layer (a conv takes
            ``(C, H, W)`` samples); the figures are per sample either way (the papers' OPs
            are per image), so ``N`` only sets the batch of the shape-finding pass.
        device: where to run the pass (default: the model's parameters' device).
        print_table: also print the table.
    """
    if not input_size or not all(isinstance(d, int) and d > 0 for d in input_size):
        raise ConfigError("must be positive ints, (C, H, W) or (N, C, H, W)",
                          location=("input_size",), value=input_size)  # fmt: skip
    batch, sample = _split_batch(model, tuple(input_size))
    ref = next(iter(model.parameters()), None)
    device = device or (ref.device if ref is not None else "cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    shapes: dict[str, tuple[int, ...]] = {}
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(_shape_hook(shapes, n)) for n, m in targets]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(batch, *sample, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers = [_summarize_layer(n, m, shapes[n]) for n, m in targets if n in shapes]
    counted = {id(p) for _, m in targets for p in m.parameters()}
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    result = ModelSummary(layers, other, sample, title=type(model).__name__)
    if print_table:
        print(result)
    return result


def _split_batch(model: nn.Module, size: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """``(batch, sample shape)``: a conv model's samples are ``(C, H, W)``, a linear model's
    ``(features,)``; one more leading dimension is the batch."""
    layers = (m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    first = next(layers, None)
    if first is None:
        return 1, size
    sample_ndim = 3 if isinstance(first, nn.Conv2d) else 2 if isinstance(first, nn.Conv1d) else 1
    if len(size) == sample_ndim + 1:
        return size[0], size[1:]
    return 1, size


def _shape_hook(shapes: dict[str, tuple[int, ...]], name: str):
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(output.shape[1:]))

    return hook


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def _bytes(n: float) -> str:
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{int(n)} B"


def format_table(s: ModelSummary) -> str:
    """The printed form of a :class:`ModelSummary`."""
    head = (
        "layer",
        "kind",
        "in/w bits",
        "1-bit params",
        "32-bit params",
        "MACs",
        "BOPs",
        "FLOPs",
        "trained",
        "deployed",
    )
    rows = [head]
    for layer in s.layers:
        rows.append(
            (
                layer.name,
                layer.kind,
                f"{layer.input_bits}/{layer.weight_bits}",
                _human(layer.binary_params),
                _human(layer.float_params),
                _human(layer.macs),
                _human(layer.bops),
                _human(layer.flops),
                _bytes(layer.trained_bytes),
                _bytes(layer.deployed_bytes),
            )
        )
    rows.append(
        (
            "(other: BN, PReLU...)",
            "",
            "32",
            "0",
            _human(s.other_params),
            "",
            "",
            "",
            _bytes(4 * s.other_params),
            _bytes(4 * s.other_params),
        )
    )
    t = s.totals
    rows.append(
        (
            "total",
            "",
            "",
            _human(t["binary_params"]),
            _human(t["float_params"]),
            _human(t["macs"]),
            _human(t["bops"]),
            _human(t["flops"]),
            _bytes(t["trained_bytes"]),
            _bytes(t["deployed_bytes"]),
        )
    )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]

    def fmt(r):
        return "  ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    rule = "-" * len(fmt(head))
    lines = [f"{s.title} summary, input {tuple(s.input_size)}", rule, fmt(head), rule]
    lines += [fmt(r) for r in rows[1:-1]] + [rule, fmt(rows[-1]), rule]
    lines.append(
        f"params {t['total_params']:,} ({t['binary_params']:,} binary) | "
        f"OPs = FLOPs + BOPs/64 = {_human(t['ops'])} | binarized MACs "
        f"{100 * t['binary_mac_fraction']:.1f}% | memory {_bytes(t['trained_bytes'])} trained (fp32) "
        f"-> {_bytes(t['deployed_bytes'])} deployed (1-bit packed), {t['compression']:.1f}x smaller"
    )
    return "\n".join(lines)
