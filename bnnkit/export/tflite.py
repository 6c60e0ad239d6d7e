"""A minimal TFLite flatbuffer writer (no TensorFlow): tensors, constant buffers, builtin and
custom operators, one subgraph.

It uses ``flatbuffers`` and the flatc-generated TFLite schema of the ``tflite`` package (both
Apache-2.0; ``pip install "bnnkit[runtimes]"``). What a model needs, from TFLite's
``schema.fbs`` (version 3, file identifier ``TFL3``):

* ``buffers[0]`` is an empty sentinel; every constant tensor has its own buffer of
  ``prod(shape) * itemsize`` little-endian bytes (aligned to 16 here: the generated Python
  ignores the schema's ``force_align``); other tensors use buffer 0;
* an operator code holds ``builtin_code`` and ``deprecated_builtin_code`` (``min(code, 127)``);
  TFLite reads the larger; a custom op is ``CUSTOM`` (32) with ``custom_code`` and version 1;
* an operator's omitted optional input is index -1; a builtin op sets its options union
  (``builtin_options_type`` + table), a custom op FlexBuffer ``custom_options``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnnkit.errors import MissingDependencyError


def schema() -> Any:
    """The generated TFLite schema module (``tflite``), or a clear error naming the extra."""
    try:
        import flatbuffers  # noqa: F401
        import tflite
    except ImportError as exc:
        raise MissingDependencyError(
            f"writing a TFLite model needs flatbuffers and tflite ({exc.name} is missing): "
            'pip install "bnnkit[runtimes]"'
        ) from exc
    return tflite


FLOAT32, INT32 = 0, 2  # TensorType
_DTYPES = {FLOAT32: np.float32, INT32: np.int32}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    buffer: int = 0


@dataclass
class _Operator:
    opcode: int
    inputs: list[int]
    outputs: list[int]
    options_type: int = 0
    options: Callable[[Any], int] | None = None  # builder -> offset of the options table
    custom_options: bytes | None = None


@dataclass
class TFLiteModel:
    """Tensors and operators collected in Python, serialized by :meth:`to_bytes`."""

    description: str = "bnnkit"
    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])
    opcodes: list[tuple[int, str | None]] = field(default_factory=list)
    operators: list[_Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    metadata: dict[str, bytes] = field(default_factory=dict)  # name -> bytes (own buffer each)

    # -- tensors --------------------------------------------------------------------------------
    def tensor(self, name: str, shape: tuple[int, ...], dtype: int = FLOAT32) -> int:
        self.tensors.append(_Tensor(name, tuple(int(s) for s in shape), dtype))
        return len(self.tensors) - 1

    def const(self, name: str, value: np.ndarray, dtype: int = FLOAT32) -> int:
        array = np.ascontiguousarray(np.asarray(value, dtype=_DTYPES[dtype]))
        self.buffers.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        index = self.tensor(name, array.shape, dtype)
        self.tensors[index].buffer = len(self.buffers) - 1
        return index

    def shape(self, index: int) -> tuple[int, ...]:
        return self.tensors[index].shape

    # -- operators ------------------------------------------------------------------------------
    def _opcode(self, builtin: int, custom: str | None = None) -> int:
        if (builtin, custom) not in self.opcodes:
            self.opcodes.append((builtin, custom))
        return self.opcodes.index((builtin, custom))

    def op(self, builtin: int, inputs: list[int], outputs: list[int], options_type: int = 0,
           options: Callable[[Any], int] | None = None) -> None:  # fmt: skip
        self.operators.append(
            _Operator(self._opcode(builtin), inputs, outputs, options_type, options)
        )

    def custom_op(
        self, name: str, inputs: list[int], outputs: list[int], options: bytes = b""
    ) -> None:
        code = self._opcode(schema().BuiltinOperator.CUSTOM, name)
        self.operators.append(_Operator(code, inputs, outputs, custom_options=options))

    # -- serialization --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        import flatbuffers

        s, b = schema(), flatbuffers.Builder(1 << 16)
        meta_buffers = {}
        for name, data in self.metadata.items():
            self.buffers.append(data)
            meta_buffers[name] = len(self.buffers) - 1

        def ints(values: list[int], start: Callable) -> int:
            start(b, len(values))
            for v in reversed(values):
                b.PrependInt32(int(v))
            return b.EndVector()

        def raw(data: bytes, alignment: int = 1) -> int:
            b.StartVector(1, len(data), alignment)
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            return b.EndVector()

        def offsets(items: list[int], start: Callable) -> int:
            start(b, len(items))
            for off in reversed(items):
                b.PrependUOffsetTRelative(off)
            return b.EndVector()

        buffers = []
        for data in self.buffers:
            data_off = raw(data, 16) if data else None
            s.BufferStart(b)
            if data_off is not None:
                s.BufferAddData(b, data_off)
            buffers.append(s.BufferEnd(b))
        tensors = []
        for t in self.tensors:
            name, shape = b.CreateString(t.name), ints(list(t.shape), s.TensorStartShapeVector)
            s.TensorStart(b)
            s.TensorAddShape(b, shape)
            s.TensorAddType(b, t.dtype)
            s.TensorAddBuffer(b, t.buffer)
            s.TensorAddName(b, name)
            tensors.append(s.TensorEnd(b))
        operators = []
        for o in self.operators:
            ins = ints(o.inputs, s.OperatorStartInputsVector)
            outs = ints(o.outputs, s.OperatorStartOutputsVector)
            opts = o.options(b) if o.options is not None else None
            custom = raw(o.custom_options) if o.custom_options is not None else None
            s.OperatorStart(b)
            s.OperatorAddOpcodeIndex(b, o.opcode)
            s.OperatorAddInputs(b, ins)
            s.OperatorAddOutputs(b, outs)
            if opts is not None:
                s.OperatorAddBuiltinOptionsType(b, o.options_type)
                s.OperatorAddBuiltinOptions(b, opts)
            if custom is not None:
                s.OperatorAddCustomOptions(b, custom)
                s.OperatorAddCustomOptionsFormat(b, s.CustomOptionsFormat.FLEXBUFFERS)
            operators.append(s.OperatorEnd(b))
        tensors_v = offsets(tensors, s.SubGraphStartTensorsVector)
        operators_v = offsets(operators, s.SubGraphStartOperatorsVector)
        inputs_v = ints(self.inputs, s.SubGraphStartInputsVector)
        outputs_v = ints(self.outputs, s.SubGraphStartOutputsVector)
        graph_name = b.CreateString("main")
        s.SubGraphStart(b)
        s.SubGraphAddTensors(b, tensors_v)
        s.SubGraphAddInputs(b, inputs_v)
        s.SubGraphAddOutputs(b, outputs_v)
        s.SubGraphAddOperators(b, operators_v)
        s.SubGraphAddName(b, graph_name)
        subgraph = s.SubGraphEnd(b)
        codes = []
        for builtin, custom in self.opcodes:
            custom_off = b.CreateString(custom) if custom is not None else None
            s.OperatorCodeStart(b)
            s.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
            s.OperatorCodeAddBuiltinCode(b, builtin)
            s.OperatorCodeAddVersion(b, 1)
            if custom_off is not None:
                s.OperatorCodeAddCustomCode(b, custom_off)
            codes.append(s.OperatorCodeEnd(b))
        codes_v = offsets(codes, s.ModelStartOperatorCodesVector)
        subgraphs_v = offsets([subgraph], s.ModelStartSubgraphsVector)
        buffers_v = offsets(buffers, s.ModelStartBuffersVector)
        metas = []
        for name, index in meta_buffers.items():
            name_off = b.CreateString(name)
            s.MetadataStart(b)
            s.MetadataAddName(b, name_off)
            s.MetadataAddBuffer(b, index)
            metas.append(s.MetadataEnd(b))
        metadata_v = offsets(metas, s.ModelStartMetadataVector) if metas else None
        for index in sorted(meta_buffers.values(), reverse=True):
            del self.buffers[index]  # serializing twice gives the same bytes
        description = b.CreateString(self.description)
        s.ModelStart(b)
        s.ModelAddVersion(b, 3)
        s.ModelAddOperatorCodes(b, codes_v)
        s.ModelAddSubgraphs(b, subgraphs_v)
        s.ModelAddDescription(b, description)
        s.ModelAddBuffers(b, buffers_v)
        if metadata_v is not None:
            s.ModelAddMetadata(b, metadata_v)
        b.Finish(s.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())
