"""TFLite's builtin ops for bnnkit's float ops: the part of the Larq Compute Engine export that
is plain TFLite (:mod:`bnnkit.export.lce` adds LCE's binary ops), NHWC throughout.

* CONV_2D (OHWI; TFLite's SAME where it can put its windows where PyTorch's padding does, see
  :func:`same_extension`, else an explicit PAD), FULLY_CONNECTED, MUL / ADD (batch norms,
  shifts), RELU_N1_TO_1 / RELU6 / MAXIMUM+MINIMUM (hardtanh), RELU, PRELU, ADD, CONCATENATION,
  AVERAGE_POOL_2D / MAX_POOL_2D (explicit PAD / PADV2 where PyTorch pads), MEAN, PAD (channel
  padding), TRANSPOSE + RESHAPE (flatten in PyTorch's channel-first order), SLICE (crops).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnnkit.export.convert import ExportError
from bnnkit.export.graph import Graph, Op
from bnnkit.export.tflite import FLOAT32, INT32, TFLiteModel, schema

NEG_INF = -3.4e38


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


class TFLiteBuilder:
    """Translates lowered float ops into a :class:`TFLiteModel` (one ``op_<kind>`` method per
    op kind) and holds the helpers the binary ops use too."""

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


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)


def _camel(key: str) -> str:
    return "".join(
        part.capitalize() if part not in ("w", "h") else part.upper() for part in key.split("_")
    )
