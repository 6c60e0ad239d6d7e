"""Export to OpenVINO (x86 CPUs): the lowered graph (:mod:`bnnkit.export.graph`) built with
OpenVINO's Python API, binary layers as ``BinaryConvolution`` on ``u1`` weights.

How OpenVINO's CPU plugin runs a binary layer (its ``BinaryConvolution-1`` and
``FakeQuantize-1`` specifications, https://docs.openvino.ai/latest/openvino_docs_ops_convolution_BinaryConvolution_1.html,
and ``intel_cpu/src/nodes/bin_conv.cpp`` / ``fake_quantize.cpp``; checked on OpenVINO 2026.4):

* ``BinaryConvolution`` (mode ``xnor-popcount``) takes 0/1 activations (0 = -1) and ``u1``
  weights, the flat OIHW bit stream, least significant bit first
  (``np.packbits(bits, bitorder="little")`` of the raveled 0/1 array; 1 = +1); its float output
  is the ±1 convolution. The plugin runs it with its JIT kernel (``vpopcntd`` on AVX-512
  VPOPCNTDQ) and fuses the following float ops (the scale and bias multiply / add) into it.
* The binarization in front of it is a ``FakeQuantize`` with 2 levels, ``input_low ==
  input_high = t`` per channel and outputs 0 / 1: bit 1 where ``x > t``. With
  ``t = nextafter(-b, -inf)``, ``x > t`` is exactly ``fl(x + b) >= 0``: bnnkit's
  ``sign(x + b)`` with sign(0) = +1, the shift ``b`` folded in (for ``b = 0`` the threshold is
  the largest negative denormal: keep the plugin's ``CPU_DENORMALS_OPTIMIZATION`` off, its
  default).
* ``pad_value``: 0 is true zero padding on the CPU plugin (padded taps skipped), 1 pads with
  +1, anything else with -1; bnnkit's ``pad_value`` maps to it one to one. (OpenVINO's
  reference implementation reads 0 as -1: such a model is exact on the CPU plugin, which is
  what bnnkit targets.)
* The plugin needs a multiple of 8 input channels; other counts are padded with zero channels
  (binarized to +1) whose weights alternate +1 / -1 and cancel, the remainder corrected by an
  exact constant.

Float layers are the corresponding OpenVINO ops (Convolution, MatMul, Multiply / Add, Clamp,
Relu, PRelu, Add, Concat, AvgPool, MaxPool, ReduceMean, Pad, Reshape), all in NCHW. The model is
saved with ``compress_to_fp16=False`` (fp16 would change the float weights and the thresholds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bnnkit.errors import MissingDependencyError
from bnnkit.export.convert import ExportError
from bnnkit.export.graph import Graph, Op

F32 = np.float32


def openvino() -> tuple[Any, Any]:
    """``(openvino, its newest opset)``, or a clear error naming the extra."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError as exc:
        raise MissingDependencyError(
            'the OpenVINO export needs openvino: pip install "bnnkit[runtimes]"'
        ) from exc
    return ov, ops


def _u1(bits01: np.ndarray) -> Any:
    """A ``u1`` constant of the 0/1 array (its own copy of the packed bytes)."""
    ov, _ = openvino()
    packed = np.packbits(bits01.astype(np.uint8).ravel(), bitorder="little")
    return ov.op.Constant(
        ov.Tensor(packed, ov.Shape(list(bits01.shape)), ov.Type.u1), shared_memory=False
    )


def _const(ops: Any, value: Any, dtype: Any = F32) -> Any:
    return ops.constant(np.asarray(value, dtype=dtype))


def _channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v, F32).reshape(1, -1, *([1] * (ndim - 2)))


class _Builder:
    """Translates lowered ops into OpenVINO nodes (one method per op kind)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ov, self.ops = openvino()
        self.nodes: dict[str, Any] = {}

    def bconv(
        self,
        op: Op,
        x: Any,
        signs: np.ndarray,
        stride: tuple,
        padding: tuple,
        pad_value: float,
        in_hw: tuple,
    ) -> Any:
        ops, t = self.ops, op.tensors
        o, c, kh, kw = signs.shape
        shift = t.get("shift", np.zeros(c, F32)).astype(F32)
        thresholds = np.nextafter(-shift, F32(-np.inf)).astype(F32)
        extra = -c % 8
        weights = signs.astype(np.float64)
        if extra:  # zero channels (x = 0 > -1: bit 1, +1) with cancelling +1 / -1 weights
            x = ops.pad(
                x,
                _const(ops, [0, 0, 0, 0], np.int64),
                _const(ops, [0, extra, 0, 0], np.int64),
                "constant",
                _const(ops, 0.0),
            )
            thresholds = np.concatenate([thresholds, np.full(extra, -1.0, F32)])
            fill = np.ones((o, extra, kh, kw))
            fill[:, 1::2] = -1.0
            weights = np.concatenate([weights, fill], axis=1)
        fq_t = _const(ops, thresholds.reshape(1, -1, 1, 1))
        xb = ops.fake_quantize(x, fq_t, fq_t, _const(ops, F32(0)), _const(ops, F32(1)), 2)
        xb.set_friendly_name(f"{_source(op)}/sign")
        ph, pw = padding
        y = ops.binary_convolution(
            xb,
            _u1(weights > 0),
            list(stride),
            [ph, pw],
            [ph, pw],
            [1, 1],
            "xnor-popcount",
            float(pad_value),
        )
        y.set_friendly_name(f"{_source(op)}/binary_conv")
        corr = _extra_channel_correction(weights, c, in_hw, stride, padding, pad_value)
        if corr is not None:
            y = ops.add(y, _const(ops, corr))
        y = ops.multiply(y, _const(ops, _channel(t["scale"], 4)))
        y.set_friendly_name(f"{_source(op)}/scale")
        return ops.add(y, _const(ops, _channel(t["bias"], 4)))

    def op_bconv2d(self, op: Op, x: Any) -> Any:
        a = op.attrs
        in_hw = tuple(self.graph.op(op.inputs[0]).shape[2:])
        return self.bconv(
            op, x, op.tensors["signs"], a["stride"], a["padding"], a["pad_value"], in_hw
        )

    def op_blinear(self, op: Op, x: Any) -> Any:
        ops = self.ops
        n, c = self.graph.op(op.inputs[0]).shape
        image = ops.reshape(x, _const(ops, [n, c, 1, 1], np.int64), False)
        y = self.bconv(
            op, image, op.tensors["signs"][:, :, None, None], (1, 1), (0, 0), 0.0, (1, 1)
        )
        return ops.reshape(y, _const(ops, [n, op.shape[1]], np.int64), False)

    def op_conv2d(self, op: Op, x: Any) -> Any:
        ops, a, t = self.ops, op.attrs, op.tensors
        if a["groups"] != 1:
            raise ExportError(
                f"float conv {a['source']!r}: groups={a['groups']} has no OpenVINO export"
            )
        ph, pw = a["padding"]
        y = ops.convolution(
            x, _const(ops, t["weight"]), list(a["stride"]), [ph, pw], [ph, pw], [1, 1]
        )
        return y if t["bias"] is None else ops.add(y, _const(ops, _channel(t["bias"], 4)))

    def op_linear(self, op: Op, x: Any) -> Any:
        ops, t = self.ops, op.tensors
        y = ops.matmul(x, _const(ops, t["weight"]), False, True)
        return y if t["bias"] is None else ops.add(y, _const(ops, t["bias"].reshape(1, -1)))

    def op_affine(self, op: Op, x: Any) -> Any:
        ops, t, ndim = self.ops, op.tensors, len(op.shape)
        if "mul" in t:
            x = ops.multiply(x, _const(ops, _channel(t["mul"], ndim)))
            x.set_friendly_name(f"{_source(op)}/mul")
        return ops.add(x, _const(ops, _channel(t["add"], ndim)))

    def op_clamp(self, op: Op, x: Any) -> Any:
        return self.ops.clamp(x, op.attrs["min"], op.attrs["max"])

    def op_relu(self, op: Op, x: Any) -> Any:
        return self.ops.relu(x)

    def op_prelu(self, op: Op, x: Any) -> Any:
        return self.ops.prelu(x, _const(self.ops, op.tensors["slope"]))

    def op_add(self, op: Op, a: Any, b: Any) -> Any:
        return self.ops.add(a, b)

    def op_concat(self, op: Op, *xs: Any) -> Any:
        return self.ops.concat(list(xs), 1)

    def op_avgpool(self, op: Op, x: Any) -> Any:
        a = op.attrs
        pads = list(a["padding"])
        return self.ops.avg_pool(
            x, list(a["stride"]), pads, pads, list(a["kernel"]), False, "floor"
        )

    def op_maxpool(self, op: Op, x: Any) -> Any:
        a = op.attrs
        pads = list(a["padding"])
        return self.ops.max_pool(
            x, list(a["stride"]), [1, 1], pads, pads, list(a["kernel"]), "floor"
        ).output(0)

    def op_mean(self, op: Op, x: Any) -> Any:
        return self.ops.reduce_mean(x, _const(self.ops, [2, 3], np.int64), True)

    def op_pad_channels(self, op: Op, x: Any) -> Any:
        ops, a = self.ops, op.attrs
        begin, end = (
            _const(ops, [0, a["before"], 0, 0], np.int64),
            _const(ops, [0, a["after"], 0, 0], np.int64),
        )
        return ops.pad(x, begin, end, "constant", _const(ops, 0.0))

    def op_flatten(self, op: Op, x: Any) -> Any:
        return self.ops.reshape(x, _const(self.ops, list(op.shape), np.int64), False)

    def build(self, probes: Sequence[str] = ()) -> Any:
        first = self.graph.ops[0]
        param = self.ops.parameter(list(first.shape), self.ov.Type.f32, name="input")
        self.nodes[first.name] = param
        for op in self.graph.ops[1:]:
            handler = getattr(self, f"op_{op.kind}", None)
            if handler is None:
                raise ExportError(f"{op.kind} ({op.attrs.get('source')}) has no OpenVINO export")
            node = handler(op, *[self.nodes[i] for i in op.inputs])
            # profiling (PERF_COUNT) and error messages name the bnnkit layer
            (node.get_node() if isinstance(node, self.ov.Output) else node).set_friendly_name(
                _source(op)
            )
            self.nodes[op.name] = node
        for name in probes:
            if name not in self.nodes or name == first.name:
                raise ExportError(f"probe {name!r} is not an op of the graph")
        outs = [self.nodes[self.graph.output], *(self.nodes[name] for name in probes)]
        outs = [o if isinstance(o, self.ov.Output) else o.output(0) for o in outs]
        return self.ov.Model(outs, [param], "bnnkit")


def _source(op: Op) -> str:
    """The module an op comes from (``layer1.0.conv1``), else the op's own name."""
    return str(op.attrs.get("source") or op.name)


def _extra_channel_correction(weights: np.ndarray, c: int, in_hw: tuple, stride: tuple,
                              padding: tuple, pad_value: float) -> np.ndarray | None:  # fmt: skip
    """``(1, O, OH, OW)`` (or broadcastable) integer correction of the added channels (rows
    ``c:``) of ``weights``: they binarize to +1 at every valid tap (and to ``pad_value`` at
    padded ones, 0 for zero padding), so their contribution is removed exactly."""
    if weights.shape[1] == c:
        return None
    (h, w), (ph, pw) = in_hw, padding
    valid = F.pad(torch.ones(1, 1, h, w, dtype=torch.float64), (pw, pw, ph, ph))
    sums = torch.from_numpy(weights[:, c:]).sum(1, keepdim=True)
    corr = -F.conv2d(valid, sums, stride=stride)
    if pad_value:
        corr -= pad_value * F.conv2d(1.0 - valid, sums, stride=stride)
    corr = corr.numpy()
    return None if not corr.any() else corr.astype(F32)


def to_openvino(graph: Graph, probes: Sequence[str] = ()) -> Any:
    """The lowered ``graph`` as an ``openvino.Model``; ``probes`` (op names) become extra
    outputs, after the model's (:meth:`~bnnkit.export.runtimes.OpenVINOModel.predict_all`)."""
    return _Builder(graph).build(probes)


def save_openvino(graph: Graph, path: str | Path, header: dict[str, Any] | None = None) -> Path:
    """Write ``graph`` to ``path`` (``.xml`` and its ``.bin``); ``header`` goes into the model's
    runtime info (``bnnkit``), as JSON."""
    ov, _ = openvino()
    model = to_openvino(graph)
    if header is not None:
        model.set_rt_info(json.dumps(header), "bnnkit")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path
