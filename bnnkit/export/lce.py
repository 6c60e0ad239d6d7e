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
* float ops: TFLite's builtins (:mod:`bnnkit.export.tflite_ops`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bnnkit._io import atomic_write_bytes
from bnnkit.export.convert import ExportError
from bnnkit.export.graph import Graph, Op
from bnnkit.export.tflite import INT32, TFLiteModel
from bnnkit.export.tflite_ops import TFLiteBuilder, _nhwc, _same_plan, same_extension

__all__ = ["bitpack", "border_correction", "same_extension", "save_lce", "to_tflite"]

BITS = 32


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


class _Writer(TFLiteBuilder):
    """LCE's binary ops on top of the TFLite builtins (:class:`TFLiteBuilder`)."""

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

    # -- the graph ------------------------------------------------------------------------------
    def write(self, probes: Sequence[str] = ()) -> TFLiteModel:
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
        for name in probes:
            if name not in self.t or name == first.name:
                raise ExportError(f"probe {name!r} is not an op of the graph (its ops: "
                                  f"{', '.join(op.name for op in self.graph.ops[1:5])}, ...)")  # fmt: skip
            self.m.outputs.append(self.t[name])
        return self.m


def _flex(options: dict[str, int]) -> bytes:
    from flatbuffers import flexbuffers

    return bytes(flexbuffers.Dumps({k: int(v) for k, v in options.items()}))


def to_tflite(
    graph: Graph, header: dict[str, Any] | None = None, probes: Sequence[str] = ()
) -> bytes:
    """The lowered ``graph`` as a TFLite flatbuffer with LCE ops (bytes); ``header`` (JSON) goes
    into the model's metadata as ``bnnkit``. ``probes`` (op names) become extra outputs, after
    the model's, for finding where a runtime departs from the reference
    (:meth:`~bnnkit.export.runtimes.LCEModel.predict_all`)."""
    model = _Writer(graph).write(probes)
    if header is not None:
        model.metadata["bnnkit"] = json.dumps(header).encode()
    return model.to_bytes()


def save_lce(graph: Graph, path: str | Path, header: dict[str, Any] | None = None) -> Path:
    """Write ``graph`` to ``path`` (``.tflite``), atomically."""
    return atomic_write_bytes(to_tflite(graph, header), path)
