"""Deployment: bit-packed export and fast CPU inference of trained binary networks.

``convert(model)`` replaces every binary layer with a packed one (sign bits + folded
scale, XNOR-popcount kernels); ``save_packed`` / ``load_packed`` write and read the
safetensors file; :mod:`bnnkit.export.pack` is the bit layout, :mod:`bnnkit.export.kernels`
the kernels (pure-torch reference and numba CPU). ``export_model`` also writes the runtimes'
formats from the lowered graph (:mod:`bnnkit.export.graph`): Larq Compute Engine's TFLite
(:mod:`bnnkit.export.lce`) and OpenVINO's IR (:mod:`bnnkit.export.openvino`), which
:mod:`bnnkit.export.runtimes` runs.
"""

from bnnkit.export.convert import (
    ExportError,
    batchnorm_pairs,
    convert,
    input_shift,
    pack_layer,
    packed_layers,
)
from bnnkit.export.deploy import FORMATS, export_model, file_bytes, format_of
from bnnkit.export.files import load_packed, read_header, save_packed, size_report
from bnnkit.export.graph import Graph, Op, lower
from bnnkit.export.kernels import get_kernel, list_kernels
from bnnkit.export.layers import PackedConv2d, PackedLinear
from bnnkit.export.pack import (
    pack_activations,
    pack_conv_weight,
    pack_signs,
    popcount,
    unpack_signs,
)
from bnnkit.export.runtimes import LCEModel, OpenVINOModel, load_runtime_model

__all__ = [
    "FORMATS",
    "ExportError",
    "Graph",
    "LCEModel",
    "Op",
    "OpenVINOModel",
    "PackedConv2d",
    "PackedLinear",
    "batchnorm_pairs",
    "convert",
    "export_model",
    "file_bytes",
    "format_of",
    "get_kernel",
    "input_shift",
    "list_kernels",
    "load_packed",
    "load_runtime_model",
    "lower",
    "pack_activations",
    "pack_conv_weight",
    "pack_layer",
    "pack_signs",
    "packed_layers",
    "popcount",
    "read_header",
    "save_packed",
    "size_report",
    "unpack_signs",
]
