"""Export to Larq Compute Engine (LCE): a TFLite flatbuffer with LCE's binary ops, written
without TensorFlow (:mod:`bnnkit.export.tflite`), from the lowered graph (:mod:`bnnkit.export.graph`).

The LCE op contract (LCE v0.16.0 sources, ``github.com/larq/compute-engine`` at 8da5a19, and
https://docs.larq.dev/compute-engine/api/operators; each point checked in LCE's interpreter):

* Custom ops ``LceQuantize`` (float NHWC -> int32 ``[N, H, W, ceil(C/32)]``, empty options) and
  ``LceBconv2d``, operator-code version 1 (``tflite/kernels/lce_ops_register.h``); options are a
  FlexBuffer map (``mlir/ir/lce_ops.cc``).
* Bit packing (``core/bitpacking/bitpack.h``): 32 channels per int32 word along the last axis,
  channel ``c`` in word ``c // 32`` bit ``c % 32`` (LSB first); bit 1 = -1, set iff ``x < 0``
  (so 0 and -0 give +1, bnnkit's sign(0) = +1); unused tail bits 0.
* ``LceBconv2d`` (``tflite/kernels/bconv2d.cc``) has 5 inputs: the bitpacked input, the filter
  (int32, **OHWI**, bitpacked along I as above), ``post_activation_multiplier`` and
  ``post_activation_bias`` (float ``[O]``, required for float output: omitting them crashes the
  interpreter), and ``output_threshold`` (bitpacked output only; -1 here). All 8 option keys are
  required: ``channels_in`` (unpacked), ``dilation_height_factor``, ``dilation_width_factor``,
  ``fused_activation_function`` (0 here), ``pad_values`` (0 or 1), ``padding`` (SAME 0, VALID
  1), ``stride_height``, ``stride_width``. A float output is
  ``y = (K - 2 popcount) * multiplier + bias`` (``core/bconv2d/output_transform.h``), exact
  in its integer part.
* Padding: SAME with ``pad_values = 1`` pads with +1 on every kernel; SAME with
  ``pad_values = 0`` is true zero padding, allowed for a float output with no fused
  activation on LCE's optimized kernels (the reference kernel needs an even ``C``). TFLite's
  SAME pads ``total // 2`` before and the rest after (``tensorflow/lite/kernels/padding.h``),
  so at stride 2 on an even size it pads only after, where PyTorch pads before. Measured here: LCE 0.16's optimized
  kernels (the default and the indirect BGEMM) get the zero-padded border wrong when the image
  is smaller than the kernel (a 3x3 conv of a 1x1 or 2x2 image: errors up to 176); bnnkit
  uses its explicit path there.

What bnnkit writes for each lowered op (NHWC throughout; the model input is ``(N, H, W, C)``):

* ``bconv2d``: [ADD of the input shift] -> [PADV2 with -1 for ``pad_value`` -1] ->
  ``LceQuantize`` -> [PAD of the packed words] -> ``LceBconv2d`` (float output, the folded
  scale and batch norm as multiplier / bias) -> [SLICE]. Zero padding (what the papers train)
  and ``pad_value`` +1 use LCE's SAME (``pad_values`` 0 or 1) wherever TFLite's SAME can put
  its windows where PyTorch's padding does (:func:`same_extension`): at stride 1 directly, at
  ResNet's stride-2 convs on even sizes after appending one row and column that only an extra,
  cropped output reads. Elsewhere (e.g. an image smaller than the kernel) the packed words are
  padded with +1 bits and, for zero padding, an ADD of the exact border correction
  ``-scale[o] * sum over padded kernel positions of the weight signs`` follows (a constant
  ``[1, OH, OW, O]``).
* ``blinear``: LCE has no binary dense op, so a binary Linear is a 1x1 ``LceBconv2d`` on the
  ``(N, 1, 1, C)`` reshaped input.
* float ops: CONV_2D (OHWI; SAME as for ``bconv2d``, else an explicit PAD), FULLY_CONNECTED, MUL / ADD (batch norms, shifts), RELU_N1_TO_1 /
  RELU6 / MAXIMUM+MINIMUM (hardtanh), RELU, PRELU, ADD, CONCATENATION, AVERAGE_POOL_2D /
  MAX_POOL_2D (explicit PAD / PADV2 where PyTorch pads), MEAN, PAD (channel padding),
  TRANSPOSE + RESHAPE (flatten in PyTorch's channel-first order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bnnkit._io import atomic_write_bytes
from bnnkit.export.convert import ExportError
from bnnkit.export.graph import Graph, Op
from bnnkit.export.tflite import FLOAT32, INT32, TFLiteModel, schema

BITS = 32
NEG_INF = -3.4e38


def bitpack(x: np.ndarray) -> np.ndarray:
    """LCE's packing of the last axis: int32 words, bit ``c % 32`` of word ``c // 32`` is 1
    where ``x < 0``; tail bits 0."""
    c = x.shape[-1]
    words = -(-c // BITS)
    bits = np.zeros((*x.shape[:-1], words * BITS), dtype=np.uint64)
    bits[..., :c] = x < 0
    weights = np.left_shift(np.uint64(1), np.arange(BITS, dtype=np.uint64))
    packed = (bits.reshape(*x.shape[:-1], words, BITS) * weights).sum(-1).astype(np.uint32)
    return packed.view(np.int32)


def same_extension(size: int, kernel: int, stride: int, padding: int) -> int | None:
    """Rows (or columns) to append to an input of ``size`` so that TFLite's SAME padding puts
    its windows where PyTorch's symmetric ``padding`` does: the first PyTorch-many outputs are
    then PyTorch's, the rest is cropped. ``None`` where no extension does.

    TFLite's SAME pads ``total = max((ceil(n / s) - 1) s + k - n, 0)``, ``total // 2`` before
    (``tensorflow/lite/kernels/padding.h``); an appended row may only be read by a cropped
    window, so it is allowed only where PyTorch's windows read no bottom padding."""
    out = (size + 2 * padding - kernel) // stride + 1
    last = stride * (out - 1) - padding + kernel - 1  # the last input row PyTorch's windows read
    for extra in range(kernel + stride):
        n = size + extra
        n_out = -(-n // stride)
        total = max((n_out - 1) * stride + kernel - n, 0)
        if total // 2 == padding and n_out >= out and (extra == 0 or last < size):
            return extra
    return None


def _same_plan(kernel: tuple, stride: tuple, padding: tuple, hw: tuple) -> tuple[int, int] | None:
    plan = [
        same_extension(n, k, s, p) for n, k, s, p in zip(hw, kernel, stride, padding, strict=True)
    ]
    return None if None in plan else (plan[0], plan[1])


def border_correction(
    signs: np.ndarray, in_hw: tuple[int, int], stride: tuple, padding: tuple
) -> np.ndarray:
    """``[OH, OW, O]``: the sum of the weight signs over the kernel positions that fall in the
    padding, per output pixel (what +1 padding adds and zero padding does not)."""
    (ph, pw), (h, w) = padding, in_hw
    inside = F.pad(torch.ones(1, 1, h, w), (pw, pw, ph, ph))
    sums = torch.from_numpy(signs).sum(1, keepdim=True)  # (O, 1, kH, kW)
    corr = F.conv2d(1.0 - inside, sums, stride=stride)  # (1, O, OH, OW)
    return corr[0].permute(1, 2, 0).numpy()


class _Writer:
    """Translates lowered ops into a :class:`TFLiteModel` (one method per op kind)."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.m, self.s = (
            graph,
            TFLiteModel(description="bnnkit: Larq Compute Engine"),
            schema(),
        )
        self.t: dict[str, int] = {}  # op name -> output tensor

    # -- helpers --------------------------------------------------------------------------------
    def out(self, op: Op, shape: tuple[int, ...] | None = None, dtype: int = FLOAT32) -> int:
        return self.m.tensor(op.name, shape if shape is not None else _nhwc(op.shape), dtype)

    def tmp(self, name: str, shape: tuple[int, ...], dtype: int = FLOAT32) -> int:
        return self.m.tensor(name, shape, dtype)

    def const(self, name: str, value: Any, dtype: int = FLOAT32) -> int:
        return self.m.const(name, np.asarray(value), dtype)

    def builtin(
        self, code: str, inputs: list[int], output: int, opts: str | None = None, **fields: Any
    ) -> int:
        s = self.s
        options = None
        if opts is not None:

            def options(b, opts=opts, fields=fields):
                vectors = {k: v for k, v in fields.items() if isinstance(v, (list, tuple))}
                offs = {}
                for key, values in vectors.items():
                    getattr(s, f"{opts}Start{_camel(key)}Vector")(b, len(values))
                    for v in reversed(values):
                        b.PrependInt32(int(v))
                    offs[key] = b.EndVector()
                getattr(s, f"{opts}Start")(b)
                for key, value in fields.items():
                    getattr(s, f"{opts}Add{_camel(key)}")(b, offs.get(key, value))
                return getattr(s, f"{opts}End")(b)

        options_type = getattr(s.BuiltinOptions, opts) if opts is not None else 0
        self.m.op(getattr(s.BuiltinOperator, code), inputs, [output], options_type, options)
        return output

    def pad(
        self,
        x: int,
        name: str,
        pads: list[list[int]],
        value: float | None = None,
        dtype: int = FLOAT32,
    ) -> int:
        shape = tuple(d + a + b for d, (a, b) in zip(self.m.shape(x), pads, strict=True))
        y = self.tmp(name, shape, dtype)
        inputs = [x, self.const(f"{name}/paddings", np.array(pads, np.int32), INT32)]
        if value is None:
            return self.builtin("PAD", inputs, y, "PadOptions")
        inputs.append(self.const(f"{name}/value", np.array([value], np.float32)))
        return self.builtin("PADV2", inputs, y, "PadV2Options")

    def crop(self, x: int, op: Op) -> int:
        """The leading ``op.shape`` part of ``x`` (SLICE from the origin) as ``op``'s output."""
        out = self.out(op, (self.m.shape(x)[0], *_nhwc(op.shape)[1:]))
        shape, name = self.m.shape(out), op.name
        inputs = [x, self.const(f"{name}/begin", np.zeros(len(shape), np.int32), INT32),
                  self.const(f"{name}/size", np.array(shape, np.int32), INT32)]  # fmt: skip
        return self.builtin("SLICE", inputs, out, "SliceOptions")

    # -- binary ops -----------------------------------------------------------------------------
    def bconv(
        self, op: Op, x: int, signs: np.ndarray, stride: tuple, padding: tuple, pad_value: float
    ) -> int:
        t, (n, h, w, c) = op.tensors, self.m.shape(x)
        if "shift" in t:
            shifted = self.tmp(f"{op.name}/shifted", (n, h, w, c))
            x = self.builtin(
                "ADD", [x, self.const(f"{op.name}/shift", t["shift"])], shifted, "AddOptions"
            )
        kernel = signs.shape[2:]
        # LCE's optimized kernels get the border wrong where the image is smaller than the
        # kernel (measured: 2x2 input, 3x3 kernel); the explicit path is exact there
        same = _same_plan(kernel, stride, padding, (h, w))
        same_ok = same is not None and h >= kernel[0] and w >= kernel[1]
        ph, pw = padding
        padded = (ph, pw) != (0, 0)
        if padded and pad_value == -1.0:  # -1 bits for every channel: pad the floats first
            x, (ph, pw), padded = (
                self.pad(x, f"{op.name}/pad", [[0, 0], [ph, ph], [pw, pw], [0, 0]], -1.0),
                (0, 0),
                False,
            )
            n, h, w, c = self.m.shape(x)
        bits = self.tmp(f"{op.name}/bits", (n, h, w, -(-c // BITS)), INT32)
        self.m.custom_op("LceQuantize", [x], [bits])
        mode, pad_values, correction, crop = "VALID", 0, None, False
        if padded and same_ok:
            mode, pad_values = "SAME", int(pad_value == 1.0)  # LCE's +1 or zero padding
            if same != (0, 0):  # rows / columns only cropped windows read (see same_extension)
                bits = self.pad(bits, f"{op.name}/extend", [[0, 0], [0, same[0]], [0, same[1]], [0, 0]],
                                dtype=INT32)  # fmt: skip
        elif padded:  # TFLite's SAME is not PyTorch's here: pad the words with +1 bits
            if pad_value == 0.0:
                correction = border_correction(signs, (h, w), stride, (ph, pw))
            bits = self.pad(
                bits, f"{op.name}/pad_bits", [[0, 0], [ph, ph], [pw, pw], [0, 0]], dtype=INT32
            )
        filt = self.const(f"{op.name}/filter", bitpack(signs.transpose(0, 2, 3, 1)), INT32)
        scale, bias = t["scale"], t["bias"]
        out_shape = (n, *_nhwc(op.shape)[1:])
        if mode == "SAME":  # TFLite's SAME gives ceil(n / s) outputs: crop the extra ones
            hb, wb = self.m.shape(bits)[1:3]
            full = (n, -(-hb // stride[0]), -(-wb // stride[1]), out_shape[3])
            crop = full != out_shape
        if crop:
            y = self.tmp(f"{op.name}/bconv", full)
        elif correction is not None:
            y = self.tmp(f"{op.name}/bconv", out_shape)
        else:
            y = self.out(op, out_shape)
        inputs = [
            bits,
            filt,
            self.const(f"{op.name}/multiplier", scale),
            self.const(f"{op.name}/bias", bias),
            -1,
        ]
        options = _flex({"channels_in": c, "dilation_height_factor": 1, "dilation_width_factor": 1,
                         "fused_activation_function": 0, "pad_values": pad_values,
                         "padding": {"SAME": 0, "VALID": 1}[mode],
                         "stride_height": int(stride[0]), "stride_width": int(stride[1])})  # fmt: skip
        self.m.custom_op("LceBconv2d", inputs, [y], options)
        if crop:
            return self.crop(y, op)
        if correction is None:
            return y
        add = -scale[None, None, :] * correction  # (OH, OW, O) broadcast over the batch
        return self.builtin(
            "ADD",
            [y, self.const(f"{op.name}/border", add[None])],
            self.out(op, self.m.shape(y)),
            "AddOptions",
        )

    def op_bconv2d(self, op: Op, x: int) -> int:
        a = op.attrs
        return self.bconv(op, x, op.tensors["signs"], a["stride"], a["padding"], a["pad_value"])

    def op_blinear(self, op: Op, x: int) -> int:
        n, c = self.m.shape(x)
        image = self.builtin(
            "RESHAPE",
            [x],
            self.tmp(f"{op.name}/nhwc", (n, 1, 1, c)),
            "ReshapeOptions",
            new_shape=[n, 1, 1, c],
        )
        signs = op.tensors["signs"][:, :, None, None]
        conv = Op("bconv2d", f"{op.name}/conv", [], (n, signs.shape[0], 1, 1), {}, op.tensors)
        y = self.bconv(conv, image, signs, (1, 1), (0, 0), 0.0)
        o = signs.shape[0]
        return self.builtin(
            "RESHAPE", [y], self.out(op, (n, o)), "ReshapeOptions", new_shape=[n, o]
        )

    # -- float ops ------------------------------------------------------------------------------
    def op_conv2d(self, op: Op, x: int) -> int:
        a, t = op.attrs, op.tensors
        if a["groups"] != 1:
            raise ExportError(f"float conv {a['source']!r}: groups={a['groups']} has no LCE export")
        weight = t["weight"].transpose(0, 2, 3, 1)
        bias = t["bias"] if t["bias"] is not None else np.zeros(weight.shape[0], np.float32)
        mode, full = "VALID", None
        if tuple(a["padding"]) != (0, 0):
            n, h, w, _ = self.m.shape(x)
            same = _same_plan(weight.shape[1:3], a["stride"], a["padding"], (h, w))
            if same is not None:
                mode = "SAME"
                if same != (0, 0):  # rows / columns only cropped windows read (see same_extension)
                    x = self.pad(
                        x, f"{op.name}/extend", [[0, 0], [0, same[0]], [0, same[1]], [0, 0]]
                    )
                sh, sw = a["stride"]
                full = (n, -(-(h + same[0]) // sh), -(-(w + same[1]) // sw), weight.shape[0])
                full = None if full == (n, *_nhwc(op.shape)[1:]) else full
            else:
                ph, pw = a["padding"]
                x = self.pad(x, f"{op.name}/pad", [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        inputs = [x, self.const(f"{op.name}/weight", weight), self.const(f"{op.name}/bias", bias)]
        out = self.out(op) if full is None else self.tmp(f"{op.name}/full", full)
        y = self.builtin("CONV_2D", inputs, out, "Conv2DOptions", padding={"SAME": 0, "VALID": 1}[mode],
                         stride_w=a["stride"][1], stride_h=a["stride"][0], dilation_w_factor=1, dilation_h_factor=1)  # fmt: skip
        return y if full is None else self.crop(y, op)

    def op_linear(self, op: Op, x: int) -> int:
        t = op.tensors
        bias = t["bias"] if t["bias"] is not None else np.zeros(t["weight"].shape[0], np.float32)
        inputs = [
            x,
            self.const(f"{op.name}/weight", t["weight"]),
            self.const(f"{op.name}/bias", bias),
        ]
        return self.builtin("FULLY_CONNECTED", inputs, self.out(op), "FullyConnectedOptions")

    def op_affine(self, op: Op, x: int) -> int:
        t, shape = op.tensors, self.m.shape(x)
        if "mul" in t:
            scaled = self.tmp(f"{op.name}/mul", shape)
            x = self.builtin(
                "MUL", [x, self.const(f"{op.name}/scale", t["mul"])], scaled, "MulOptions"
            )
        return self.builtin(
            "ADD", [x, self.const(f"{op.name}/shift", t["add"])], self.out(op, shape), "AddOptions"
        )

    def op_clamp(self, op: Op, x: int) -> int:
        lo, hi = op.attrs["min"], op.attrs["max"]
        named = {(-1.0, 1.0): "RELU_N1_TO_1", (0.0, 6.0): "RELU6"}.get((lo, hi))
        if named:
            return self.builtin(named, [x], self.out(op, self.m.shape(x)))
        low = self.builtin(
            "MAXIMUM",
            [x, self.const(f"{op.name}/min", np.array([lo], np.float32))],
            self.tmp(f"{op.name}/max", self.m.shape(x)),
        )
        return self.builtin(
            "MINIMUM",
            [low, self.const(f"{op.name}/max", np.array([hi], np.float32))],
            self.out(op, self.m.shape(x)),
        )

    def op_relu(self, op: Op, x: int) -> int:
        return self.builtin("RELU", [x], self.out(op, self.m.shape(x)))

    def op_prelu(self, op: Op, x: int) -> int:
        slope = op.tensors["slope"]
        alpha = slope.reshape(1, 1, -1) if len(self.m.shape(x)) == 4 else slope
        return self.builtin(
            "PRELU", [x, self.const(f"{op.name}/alpha", alpha)], self.out(op, self.m.shape(x))
        )

    def op_add(self, op: Op, a: int, b: int) -> int:
        return self.builtin("ADD", [a, b], self.out(op, self.m.shape(a)), "AddOptions")

    def op_concat(self, op: Op, *xs: int) -> int:
        axis = len(self.m.shape(xs[0])) - 1  # channels: last in NHWC
        return self.builtin(
            "CONCATENATION", list(xs), self.out(op), "ConcatenationOptions", axis=axis
        )

    def _pool(self, op: Op, x: int, code: str, value: float) -> int:
        a = op.attrs
        if tuple(a["padding"]) != (0, 0):
            ph, pw = a["padding"]
            x = self.pad(x, f"{op.name}/pad", [[0, 0], [ph, ph], [pw, pw], [0, 0]], value)
        return self.builtin(code, [x], self.out(op), "Pool2DOptions", padding=1, stride_w=a["stride"][1],
                            stride_h=a["stride"][0], filter_width=a["kernel"][1], filter_height=a["kernel"][0])  # fmt: skip

    def op_avgpool(self, op: Op, x: int) -> int:
        return self._pool(op, x, "AVERAGE_POOL_2D", 0.0)  # PyTorch counts the zero padding

    def op_maxpool(self, op: Op, x: int) -> int:
        return self._pool(op, x, "MAX_POOL_2D", NEG_INF)

    def op_mean(self, op: Op, x: int) -> int:
        axes = self.const(f"{op.name}/axes", np.array([1, 2], np.int32), INT32)
        return self.builtin("MEAN", [x, axes], self.out(op), "ReducerOptions", keep_dims=True)

    def op_pad_channels(self, op: Op, x: int) -> int:
        pads = [[0, 0], [0, 0], [0, 0], [op.attrs["before"], op.attrs["after"]]]
        y = self.pad(x, f"{op.name}/pad", pads)
        self.m.tensors[y].name = op.name
        return y

    def op_flatten(self, op: Op, x: int) -> int:
        shape = self.m.shape(x)
        if len(shape) == 4 and shape[1] * shape[2] > 1:  # PyTorch flattens channel-first
            perm = self.const(f"{op.name}/perm", np.array([0, 3, 1, 2], np.int32), INT32)
            n, h, w, c = shape
            x = self.builtin(
                "TRANSPOSE",
                [x, perm],
                self.tmp(f"{op.name}/nchw", (n, c, h, w)),
                "TransposeOptions",
            )
        return self.builtin(
            "RESHAPE", [x], self.out(op), "ReshapeOptions", new_shape=list(op.shape)
        )

    # -- the graph ------------------------------------------------------------------------------
    def write(self) -> TFLiteModel:
        first = self.graph.ops[0]
        self.t[first.name] = self.m.tensor(first.name, _nhwc(first.shape))
        self.m.inputs.append(self.t[first.name])
        for op in self.graph.ops[1:]:
            handler = getattr(self, f"op_{op.kind}", None)
            if handler is None:
                raise ExportError(
                    f"{op.kind} ({op.attrs.get('source')}) has no Larq Compute Engine export"
                )
            self.t[op.name] = handler(op, *[self.t[i] for i in op.inputs])
        self.m.outputs.append(self.t[self.graph.output])
        return self.m


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def _camel(key: str) -> str:
    return "".join(
        part.capitalize() if part not in ("w", "h") else part.upper() for part in key.split("_")
    )


def _flex(options: dict[str, int]) -> bytes:
    from flatbuffers import flexbuffers

    return bytes(flexbuffers.Dumps({k: int(v) for k, v in options.items()}))


def to_tflite(graph: Graph, header: dict[str, Any] | None = None) -> bytes:
    """The lowered ``graph`` as a TFLite flatbuffer with LCE ops (bytes); ``header`` (JSON) goes
    into the model's metadata as ``bnnkit``."""
    model = _Writer(graph).write()
    if header is not None:
        model.metadata["bnnkit"] = json.dumps(header).encode()
    return model.to_bytes()


def save_lce(graph: Graph, path: str | Path, header: dict[str, Any] | None = None) -> Path:
    """Write ``graph`` to ``path`` (``.tflite``), atomically."""
    return atomic_write_bytes(to_tflite(graph, header), path)
