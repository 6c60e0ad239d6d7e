"""``convert(model)``: a trained bnnkit model -> a packed inference model.

Every binary layer (``BinaryConv2d`` / ``BinaryLinear`` with binarized weights *and*
inputs) becomes a :class:`~bnnkit.export.layers.PackedConv2d` / ``PackedLinear`` holding the
weight sign bits and the folded per-output-channel scale; a batch norm that directly and
only follows a binary layer is folded into it (``fold_bn``); everything else stays as it is
(float). The method's inference-time input transform is kept: its per-channel shift, which
the input binarizer states itself (:meth:`bnnkit.binarize.Binarizer.inference_shift`). Zero
padding of the binarized input is reproduced exactly.

A layer the packed path cannot reproduce exactly is refused with :class:`ExportError`
naming it: float inputs or weights (W1A32 / W32A1), groups or dilation other than 1,
non-zero padding modes, weights that are not ``±alpha_c`` per output channel, input binarizers
that do not state their inference function as ``sign(x + b)``. ``check=True`` (default) also runs every packed layer against
the original one on a random input and refuses on any difference beyond float rounding.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from bnnkit.binarize import Binarizer
from bnnkit.errors import BnnkitError
from bnnkit.export.layers import PackedConv2d, PackedLinear
from bnnkit.export.pack import pack_conv_weight, pack_signs
from bnnkit.nn import BinaryConv2d, BinaryLayer, BinaryLinear, binary_layers

log = logging.getLogger("bnnkit")


class ExportError(BnnkitError, ValueError):
    """A model or layer that the packed path cannot reproduce exactly."""


def input_shift(binarizer: nn.Module) -> Tensor | None:
    """The per-channel shift ``b`` an input binarizer adds before ``sign`` at inference
    (``sign(x + b)``), or ``None`` for a plain ``sign(x)``, as the binarizer states it
    (:meth:`~bnnkit.binarize.Binarizer.inference_shift`).

    Raises:
        ExportError: ``binarizer`` is not a :class:`~bnnkit.binarize.Binarizer`, or it does
            not state its inference function as ``sign(x + b)``. To export your own binarizer,
            derive it from ``Binarizer`` and override ``inference_shift``.
    """
    if not isinstance(binarizer, Binarizer):
        raise ExportError(
            f"input binarizer {type(binarizer).__name__} is not a bnnkit.binarize.Binarizer, so "
            "its inference function is unknown; derive it from Binarizer and override "
            "inference_shift() (its output must be sign(x + b))"
        )
    try:
        return binarizer.inference_shift()
    except NotImplementedError as err:
        raise ExportError(f"input binarizer {type(binarizer).__name__}: {err}") from None


def _refuse(name: str, why: str) -> ExportError:
    return ExportError(f"cannot pack binary layer {name!r}: {why}")


def _weight_bits_and_scale(name: str, layer: BinaryLayer) -> tuple[Tensor, Tensor]:
    """Sign bits of the binarized weight and its per-output-channel magnitude ``alpha``."""
    with torch.no_grad():
        wb = layer.binarized_weight().detach().float()
    mag = wb.abs().flatten(1)
    alpha = mag[:, 0]
    if not torch.equal(mag, alpha[:, None].expand_as(mag)):
        raise _refuse(name, "its binarized weight is not +-alpha_c per output channel")
    bits = pack_conv_weight(wb) if wb.ndim == 4 else pack_signs(wb)
    return bits, alpha.clone()


def _pad2(name: str, layer: BinaryConv2d) -> tuple[int, int]:
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        if any(k % 2 == 0 for k in layer.kernel_size):
            raise _refuse(name, "padding='same' with an even kernel pads asymmetrically")
        return tuple((k - 1) // 2 for k in layer.kernel_size)
    return tuple(int(p) for p in layer.padding)


def pack_layer(name: str, layer: BinaryLayer, kernel: str = "auto") -> PackedConv2d | PackedLinear:
    """The packed equivalent of one binary layer (eval-mode semantics), or :class:`ExportError`."""
    if not layer.binary_weight or layer.input_binarizer is None:
        raise _refuse(name, f"it is W{layer.weight_bits}A{layer.input_bits}; only W1A1 layers "
                      "run on XNOR-popcount (keep it float or train it binary)")  # fmt: skip
    try:
        shift = input_shift(layer.input_binarizer)
    except ExportError as err:
        raise _refuse(name, str(err)) from None
    bits, alpha = _weight_bits_and_scale(name, layer)
    if isinstance(layer, BinaryConv2d):
        if layer.groups != 1 or tuple(layer.dilation) != (1, 1):
            raise _refuse(name, f"groups={layer.groups}, dilation={layer.dilation} (need 1 and 1)")
        if layer.padding_mode != "zeros":
            raise _refuse(name, f"padding_mode={layer.padding_mode!r} (only 'zeros' is packed)")
        packed = PackedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              layer.stride, _pad2(name, layer), has_shift=shift is not None,
                              kernel=kernel, pad_value=layer.pad_value)  # fmt: skip
    elif isinstance(layer, BinaryLinear):
        packed = PackedLinear(layer.in_features, layer.out_features,
                              has_shift=shift is not None, kernel=kernel)  # fmt: skip
    else:
        raise _refuse(name, f"unknown binary layer type {type(layer).__name__}")
    with torch.no_grad():
        packed.weight_bits.copy_(bits)
        packed.scale.copy_(alpha)
        if layer.bias is not None:
            packed.bias.copy_(layer.bias.detach().float())
        if shift is not None:
            packed.input_shift.copy_(shift)
    return packed


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, BinaryLayer) or super().is_leaf_module(m, qualname)


def batchnorm_pairs(model: nn.Module) -> dict[str, str]:
    """``{binary layer name: batch norm name}`` where the batch norm's only input is the binary
    layer's output and nothing else uses that output (found by ``torch.fx`` tracing; ``{}``
    with a log note when the model cannot be traced)."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:
        log.info("batch-norm folding skipped: the model cannot be traced (%s)", exc)
        return {}
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), BinaryLayer):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = modules.get(users[0].target)
        if (isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d) and bn.track_running_stats
                and bn.running_mean is not None and users[0].args[0] is node):  # fmt: skip
            pairs[node.target] = users[0].target
    return pairs


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    inv = torch.rsqrt(bn.running_var.float() + bn.eps)
    mul = inv if bn.weight is None else bn.weight.detach().float() * inv
    add = -bn.running_mean.float() * mul
    return mul, add if bn.bias is None else add + bn.bias.detach().float()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _check_layer(name: str, layer: BinaryLayer, packed: nn.Module) -> None:
    """Run both on a random input; refuse on a difference beyond float rounding."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(layer, BinaryConv2d):
        shape = (2, layer.in_channels, *(k + 4 for k in layer.kernel_size))
    else:
        shape = (2, layer.in_features)
    x = torch.randn(shape, generator=gen)
    with torch.no_grad():
        want = layer(x.to(layer.weight.device, layer.weight.dtype)).float().cpu()
        got = packed(x)
    tol = 1e-4 * (1.0 + want.abs().max())
    if want.shape != got.shape or (want - got).abs().max() > tol:
        raise _refuse(name, "its packed output differs from the layer's on a random input "
                      "(an unsupported binarizer or scale?)")  # fmt: skip


def convert(model: nn.Module, *, fold_bn: bool = True, kernel: str = "auto",
            check: bool = True) -> nn.Module:  # fmt: skip
    """A packed inference copy of ``model`` (``model`` itself is not changed).

    Args:
        model: a bnnkit model with a method attached (:func:`bnnkit.binarize_`), trained or not.
        fold_bn: fold each batch norm that only follows a binary layer into its scale and bias.
        kernel: ``"auto"``, ``"numba"`` or ``"reference"`` (see :mod:`bnnkit.export.kernels`).
        check: compare each packed layer with the original on a random input.

    Returns:
        The converted model in eval mode (CPU, float32 outside the packed layers).

    Raises:
        ExportError: a layer that cannot be packed exactly (named), or no binary layer at all.
    """
    src = copy.deepcopy(model).cpu().float().eval()
    layers = binary_layers(src)
    if not any(m.weight_binarizer is not None or m.input_binarizer is not None for _, m in layers):
        raise ExportError("the model has no binarized layer to pack (a float model, or the "
                          "'float' method); train it with a binary method first")  # fmt: skip
    pairs = batchnorm_pairs(src) if fold_bn else {}
    for name, layer in layers:
        if layer.weight_binarizer is None and layer.input_binarizer is None:
            _set_module(src, name, layer.to_float())  # W32A32: a plain float layer
            continue
        packed = pack_layer(name, layer, kernel)
        if check:
            _check_layer(name, layer, packed)
        if name in pairs:
            packed.fold_affine(*_bn_affine(src.get_submodule(pairs[name])))
            packed.folded_bn = pairs[name]
            _set_module(src, pairs[name], nn.Identity())
        _set_module(src, name, packed)
    return src


def packed_layers(model: nn.Module) -> list[tuple[str, PackedConv2d | PackedLinear]]:
    """The packed layers of a converted model, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PackedConv2d | PackedLinear)]
