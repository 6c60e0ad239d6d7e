"""A packed model as a list of runtime-neutral operations: what the runtime exporters (Larq
Compute Engine's TFLite, OpenVINO) translate, op by op.

:func:`lower` traces a converted model (:func:`bnnkit.export.convert`, packed layers kept as
leaves) with ``torch.fx``, runs it once on a sample input to know every tensor's shape, and
maps each node to one :class:`Op` of this vocabulary (NCHW semantics, float32 tensors):

==============  =========================================  ==================================
kind            from                                       attrs / tensors
==============  =========================================  ==================================
``input``       the model's input                          ``shape``
``bconv2d``     ``PackedConv2d``                           ``stride``, ``padding`` and
                                                           ``pad_value`` (0, 1 or -1: what
                                                           the ±1 input is padded with),
                                                           ``kernel_size``; ``signs`` (O, C,
                                                           kH, kW) ±1, ``shift`` (C) or
                                                           absent, ``scale`` (O), ``bias`` (O)
``blinear``     ``PackedLinear``                           ``signs`` (O, C), ``shift``,
                                                           ``scale``, ``bias``
``conv2d``      ``nn.Conv2d``                              ``stride``, ``padding``,
                                                           ``groups``; ``weight``, ``bias``
``linear``      ``nn.Linear``                              ``weight``, ``bias``
``affine``      ``BatchNorm`` (eval), ``LearnableBias``    ``mul`` (C) or absent, ``add`` (C):
                                                           per channel (dim 1)
``clamp``       ``hardtanh``                               ``min``, ``max``
``relu``        ``ReLU``
``prelu``       ``PReLU``                                  ``slope`` (C)
``add``         ``a + b`` of two tensors
``concat``      ``torch.cat(..., dim=1)``
``avgpool``     ``AvgPool2d`` / ``F.avg_pool2d``           ``kernel``, ``stride``, ``padding``
``maxpool``     ``MaxPool2d``                              ``kernel``, ``stride``, ``padding``
``mean``        ``AdaptiveAvgPool2d(1)``                   (global mean over H, W, kept 1x1)
``pad_channels``  ``F.pad(x, (0, 0, 0, 0, a, b))``         ``before``, ``after`` (zeros)
``flatten``     ``flatten(1)``, ``nn.Flatten``
==============  =========================================  ==================================

Every op has a unique ``name`` (the fx node's), its ``inputs`` (names) and its output
``shape``. A node outside the vocabulary is refused with an :class:`ExportError` naming the
module or function and what is supported. ``Identity`` nodes (folded batch norms) are skipped.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from bnnkit.export.convert import ExportError
from bnnkit.export.layers import PackedConv2d, PackedLinear
from bnnkit.export.pack import unpack_signs
from bnnkit.nn import LearnableBias

KINDS = (
    "input", "bconv2d", "blinear", "conv2d", "linear", "affine", "clamp", "relu", "prelu",
    "add", "concat", "avgpool", "maxpool", "mean", "pad_channels", "flatten",
)  # fmt: skip


@dataclass
class Op:
    """One operation of a lowered model (see the module docstring for the vocabulary)."""

    kind: str
    name: str
    inputs: list[str]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Graph:
    """A lowered model: ``ops`` in execution order, the input's and the output's names."""

    ops: list[Op]
    input: str
    output: str

    def op(self, name: str) -> Op:
        return next(o for o in self.ops if o.name == name)

    def consumers(self, name: str) -> list[Op]:
        return [o for o in self.ops if name in o.inputs]

    @classmethod
    def of_op(cls, op: Op, input_shape: tuple[int, ...]) -> Graph:
        """A graph of ``op`` alone on an input of ``input_shape`` (to run one layer of a
        lowered model in a runtime)."""
        return cls([Op("input", "x", [], tuple(input_shape)), dataclasses.replace(op, inputs=["x"])],
                   "x", op.name)  # fmt: skip


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaves = (PackedConv2d, PackedLinear, LearnableBias)
        return isinstance(m, leaves) or super().is_leaf_module(m, qualname)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy().copy()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _packed(m: PackedConv2d | PackedLinear) -> dict[str, np.ndarray]:
    cin = m.in_channels if isinstance(m, PackedConv2d) else m.in_features
    signs = unpack_signs(m.weight_bits, cin).float()  # (O, kH, kW, C) or (O, C), ±1
    if signs.ndim == 4:
        signs = signs.permute(0, 3, 1, 2)
    tensors = {"signs": _np(signs), "scale": _np(m.scale), "bias": _np(m.bias)}
    if m.input_shift is not None:
        tensors["shift"] = _np(m.input_shift)
    return tensors


def _bn(m: nn.modules.batchnorm._BatchNorm) -> dict[str, np.ndarray]:
    if m.training or m.running_mean is None:
        raise ExportError(f"batch norm {m} has no running statistics to export (eval mode)")
    inv = torch.rsqrt(m.running_var.float() + m.eps)
    mul = inv if m.weight is None else m.weight.detach().float() * inv
    add = -m.running_mean.float() * mul
    return {"mul": _np(mul), "add": _np(add if m.bias is None else add + m.bias.detach().float())}


def _module_op(m: nn.Module, target: str) -> tuple[str, dict, dict]:
    """``(kind, attrs, tensors)`` of a leaf module, or an ExportError naming it."""
    if isinstance(m, PackedConv2d):
        attrs = {"stride": m.stride, "padding": m.padding, "kernel_size": m.kernel_size,
                 "pad_value": m.pad_value}  # fmt: skip
        return "bconv2d", attrs, _packed(m)
    if isinstance(m, PackedLinear):
        return "blinear", {}, _packed(m)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str) or _pair(m.dilation) != (1, 1):
            raise ExportError(f"float conv {target!r}: only zero padding given as numbers, "
                              "dilation 1 is exported")  # fmt: skip
        attrs = {"stride": _pair(m.stride), "padding": _pair(m.padding), "groups": m.groups}
        return "conv2d", attrs, {"weight": _np(m.weight), "bias": _np(m.bias)}
    if isinstance(m, nn.Linear):
        return "linear", {}, {"weight": _np(m.weight), "bias": _np(m.bias)}
    if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
        return "affine", {}, _bn(m)
    if isinstance(m, LearnableBias):
        return "affine", {}, {"add": _np(m.bias)}
    if isinstance(m, nn.Hardtanh):
        return "clamp", {"min": float(m.min_val), "max": float(m.max_val)}, {}
    if isinstance(m, nn.ReLU):
        return "relu", {}, {}
    if isinstance(m, nn.PReLU):
        return "prelu", {}, {"slope": _np(m.weight)}
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode or (_pair(m.padding) != (0, 0) and not m.count_include_pad):
            raise ExportError(f"avg pool {target!r}: ceil_mode / count_include_pad=False")
        attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                 "padding": _pair(m.padding)}  # fmt: skip
        return "avgpool", attrs, {}
    if isinstance(m, nn.MaxPool2d):
        if m.ceil_mode or _pair(m.dilation) != (1, 1):
            raise ExportError(f"max pool {target!r}: ceil_mode or dilation is not exported")
        attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                 "padding": _pair(m.padding)}  # fmt: skip
        return "maxpool", attrs, {}
    if isinstance(m, nn.AdaptiveAvgPool2d) and _pair(m.output_size) == (1, 1):
        return "mean", {}, {}
    if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return "flatten", {}, {}
    raise ExportError(
        f"module {target!r} ({type(m).__name__}) has no runtime export; supported: packed "
        "binary layers, Conv2d, Linear, BatchNorm, Hardtanh, ReLU, PReLU, RPReLU, AvgPool2d, "
        "MaxPool2d, AdaptiveAvgPool2d(1), Flatten, add, cat, channel padding"
    )


def _function_op(node: torch.fx.Node) -> tuple[str, dict, list[torch.fx.Node]]:
    """``(kind, attrs, tensor inputs)`` of a call_function / call_method node."""
    fn, args, kwargs = node.target, node.args, node.kwargs
    tensors = [a for a in args if isinstance(a, torch.fx.Node)]
    if fn in (operator.add, torch.add) and len(tensors) == 2 and not kwargs:
        return "add", {}, tensors
    if fn is torch.cat and kwargs.get("dim", args[1] if len(args) > 1 else 0) == 1:
        return "concat", {}, list(args[0])
    if fn is F.hardtanh:
        lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        return "clamp", {"min": float(lo), "max": float(hi)}, tensors[:1]
    if fn is F.relu:
        return "relu", {}, tensors[:1]
    if fn is F.avg_pool2d:
        k = _pair(args[1] if len(args) > 1 else kwargs["kernel_size"])
        s = args[2] if len(args) > 2 else kwargs.get("stride")
        return "avgpool", {"kernel": k, "stride": _pair(s) if s else k, "padding": (0, 0)}, tensors[:1]  # fmt: skip
    if fn is F.pad:
        pad = tuple(args[1] if len(args) > 1 else kwargs["pad"])
        value = kwargs.get("value", args[3] if len(args) > 3 else 0.0) or 0.0
        if len(pad) == 6 and pad[:4] == (0, 0, 0, 0) and value == 0.0:
            return "pad_channels", {"before": int(pad[4]), "after": int(pad[5])}, tensors[:1]
    if fn == "flatten" and (args[1:] == (1,) or kwargs == {"start_dim": 1}):
        return "flatten", {}, tensors[:1]
    where = node.stack_trace.strip().splitlines()[-1] if node.stack_trace else node.name
    raise ExportError(f"operation {fn!r} ({node.format_node()}; {where}) has no runtime export")


def lower(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """The converted ``model``'s operations for an input of ``input_shape`` (with the batch,
    e.g. ``(1, 3, 32, 32)``)."""
    model = model.eval()
    try:
        gm = torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:
        raise ExportError(f"the model cannot be traced for a runtime export: {exc}") from None
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(input_shape))
    modules = dict(gm.named_modules())
    ops: list[Op] = []
    alias: dict[str, str] = {}  # skipped nodes -> the node they pass through
    out_name = None
    for node in gm.graph.nodes:

        def name_of(n: torch.fx.Node) -> str:
            return alias.get(n.name, n.name)

        if node.op == "placeholder":
            ops.append(Op("input", node.name, [], tuple(input_shape)))
            continue
        if node.op == "output":
            out_name = name_of(node.args[0])
            continue
        if node.op == "get_attr":
            raise ExportError(
                f"model parameter {node.target!r} used outside a module has no export"
            )
        shape = tuple(node.meta["tensor_meta"].shape)
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, nn.Identity | nn.Dropout):
                alias[node.name] = name_of(node.args[0])
                continue
            kind, attrs, tensors = _module_op(m, node.target)
            inputs = [name_of(node.args[0])]
        else:
            kind, attrs, args = _function_op(node)
            tensors, inputs = {}, [name_of(a) for a in args]
        attrs["source"] = str(node.target) if node.op == "call_module" else node.name
        ops.append(Op(kind, node.name, inputs, shape, attrs, tensors))
    return Graph(ops, ops[0].name, out_name)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def _channels(v: np.ndarray, ndim: int) -> torch.Tensor:
    return torch.from_numpy(v).view(1, -1, *([1] * (ndim - 2)))


def _run_op(op: Op, xs: list[torch.Tensor]) -> torch.Tensor:
    t, a = op.tensors, op.attrs
    x = xs[0] if xs else None
    if op.kind in ("bconv2d", "blinear"):
        z = x if "shift" not in t else x + _channels(t["shift"], x.ndim)
        w = torch.from_numpy(t["signs"])
        if op.kind == "bconv2d":
            (ph, pw), value = a["padding"], a["pad_value"]
            zb = F.pad(_sign(z), (pw, pw, ph, ph), value=value)
            y = F.conv2d(zb, w, stride=a["stride"])
        else:
            y = F.linear(_sign(z), w)
        return y * _channels(t["scale"], y.ndim) + _channels(t["bias"], y.ndim)
    if op.kind == "conv2d":
        bias = None if t["bias"] is None else torch.from_numpy(t["bias"])
        return F.conv2d(x, torch.from_numpy(t["weight"]), bias, a["stride"], a["padding"],
                        groups=a["groups"])  # fmt: skip
    if op.kind == "linear":
        bias = None if t["bias"] is None else torch.from_numpy(t["bias"])
        return F.linear(x, torch.from_numpy(t["weight"]), bias)
    if op.kind == "affine":
        y = x if "mul" not in t else x * _channels(t["mul"], x.ndim)
        return y + _channels(t["add"], x.ndim)
    simple = {
        "clamp": lambda: x.clamp(a["min"], a["max"]),
        "relu": lambda: x.clamp_min(0.0),
        "prelu": lambda: F.prelu(x, torch.from_numpy(t["slope"])),
        "add": lambda: xs[0] + xs[1],
        "concat": lambda: torch.cat(xs, dim=1),
        "avgpool": lambda: F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"]),
        "maxpool": lambda: F.max_pool2d(x, a["kernel"], a["stride"], a["padding"]),
        "mean": lambda: x.mean(dim=(2, 3), keepdim=True),
        "pad_channels": lambda: F.pad(x, (0, 0, 0, 0, a["before"], a["after"])),
        "flatten": lambda: x.flatten(1),
    }
    return simple[op.kind]()


@torch.no_grad()
def run(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Execute the lowered ops in float64-free plain torch (a reference for the runtimes: the
    binary products are exact integers, so it matches the packed model up to float rounding)."""
    return run_all(graph, x)[graph.output]


def run_all(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every op's output of :func:`run`, by op name (the input under ``graph.input``): what a
    runtime's probes are compared with."""
    values = {graph.input: x.float()}
    with torch.no_grad():
        for op in graph.ops[1:]:
            values[op.name] = _run_op(op, [values[i] for i in op.inputs])
    return values
