"""Running exported models in their runtimes: Larq Compute Engine's interpreter (``.tflite``)
and OpenVINO's CPU plugin (``.xml``), behind one interface (``predict(x) -> logits``) and the
header bnnkit stores in each file (model spec, method, recipe), for ``bnnkit predict``.

* LCE's Python interpreter (``larq_compute_engine.tflite.python.interpreter``) is imported
  without the package's ``__init__`` (which imports TensorFlow for LCE's converter). It is built
  against numpy 1.x: under numpy 2 it reads every input as 0 bytes, so it is refused there with
  the fix (``pip install "numpy<2"``; the ``runtimes`` extra pins it where LCE installs). On x86
  its kernels are portable C++ (its fast kernels are ARM's): use it to check a model here and
  run it on an ARM device.
* OpenVINO compiles for the CPU with ``INFERENCE_PRECISION_HINT`` ``f32`` unless told otherwise
  (the binary convolutions are exact either way; ``bf16`` rounds the float layers).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from bnnkit.errors import MissingDependencyError
from bnnkit.export.convert import ExportError

HEADER_KEY = "bnnkit"  # TFLite metadata name / OpenVINO rt_info key of bnnkit's header


def lce_interpreter_class() -> Any:
    """LCE's ``Interpreter`` class, imported without TensorFlow; a clear error where it cannot run."""
    loaded = sys.modules.get("larq_compute_engine")
    spec = (
        loaded.__spec__ if loaded is not None else importlib.util.find_spec("larq_compute_engine")
    )
    if spec is None or spec.submodule_search_locations is None:
        raise MissingDependencyError(
            'running a .tflite model needs Larq Compute Engine: pip install "bnnkit[runtimes]" '
            "(wheels for Python 3.10-3.12)"
        )
    if int(np.__version__.split(".")[0]) >= 2:
        raise MissingDependencyError(
            f"Larq Compute Engine's interpreter is built against numpy 1.x and reads wrong inputs "
            f'under numpy {np.__version__}: pip install "numpy<2" (the runtimes extra pins it)'
        )
    if "larq_compute_engine" not in sys.modules:  # its __init__ imports TensorFlow: skip it
        package = types.ModuleType("larq_compute_engine")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["larq_compute_engine"] = package
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter


class LCEModel:
    """A ``.tflite`` model in LCE's interpreter. Its tensors are NHWC: ``predict`` takes and
    returns NCHW (or ``(N, F)``) arrays as bnnkit models do, transposing them.

    Args:
        path_or_bytes: the ``.tflite`` file or its bytes.
        num_threads: interpreter threads.
        kernel: ``default`` (LCE's BGEMM), ``indirect`` (its indirect BGEMM) or ``reference``.
    """

    def __init__(
        self, path_or_bytes: str | Path | bytes, num_threads: int = 1, kernel: str = "default"
    ) -> None:
        data = (
            path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        )
        interpreter = lce_interpreter_class()
        self.interpreter = interpreter(data, num_threads=num_threads, use_reference_bconv=kernel == "reference",
                                       use_indirect_bgemm=kernel == "indirect")  # fmt: skip
        self.input_shape = tuple(self.interpreter.input_shapes[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_all(x)[0]

    def predict_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output: the model's, then the probes it was written with
        (:func:`~bnnkit.export.lce.to_tflite`), each NCHW where 4-d."""
        x = np.asarray(x, np.float32)
        if x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        batch = self.input_shape[0]
        if x.shape[0] % batch:
            raise ExportError(f"the model takes batches of {batch}; got {x.shape[0]} samples")
        chunks = [x[i : i + batch] for i in range(0, x.shape[0], batch)]
        runs = [self.interpreter.interpreter.predict([np.ascontiguousarray(c)]) for c in chunks]
        outs = [np.concatenate([run[k] for run in runs]) for k in range(len(runs[0]))]
        return [o.transpose(0, 3, 1, 2) if o.ndim == 4 else o for o in outs]  # back to NCHW


class OpenVINOModel:
    """An OpenVINO ``.xml`` model compiled for the CPU (NCHW input, as the bnnkit model).

    ``precision`` is the plugin's ``INFERENCE_PRECISION_HINT``: ``"f32"`` (the default here,
    so that float ops match PyTorch's within float rounding), ``"bf16"``, or ``None`` for the
    plugin's own choice (bf16 on CPUs with AVX-512 BF16 or AMX). Binary convolutions are exact
    at any precision; the float ops around them are not at bf16."""

    def __init__(self, path_or_model: str | Path | Any, num_threads: int | None = None,
                 precision: str | None = "f32") -> None:  # fmt: skip
        from bnnkit.export.openvino import openvino

        ov, _ = openvino()
        core = ov.Core()
        model = (
            core.read_model(str(path_or_model))
            if isinstance(path_or_model, (str, Path))
            else path_or_model
        )
        config: dict[str, Any] = (
            {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
        )
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.input_shape = tuple(model.inputs[0].get_shape())
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._request = self.compiled.create_infer_request()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_all(x)[0]

    def predict_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output: the model's, then the probes it was built with
        (:func:`~bnnkit.export.openvino.to_openvino`)."""
        x = np.asarray(x, np.float32)
        batch = self.input_shape[0]
        if x.shape[0] % batch:
            raise ExportError(f"the model takes batches of {batch}; got {x.shape[0]} samples")
        runs = []
        for i in range(0, x.shape[0], batch):
            result = self._request.infer([np.ascontiguousarray(x[i : i + batch])])
            runs.append([result[k].copy() for k in range(len(self.compiled.outputs))])
        return [np.concatenate([run[k] for run in runs]) for k in range(len(runs[0]))]

    def layer_types(self) -> dict[str, int]:
        """How many nodes of each type the plugin runs (``BinaryConvolution`` proves the
        binary kernel is used)."""
        counts: dict[str, int] = {}
        for node in self.compiled.get_runtime_model().get_ordered_ops():
            kind = node.get_rt_info()["layerType"].astype(str)
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def read_tflite_header(path: str | Path) -> dict[str, Any]:
    """bnnkit's header from a ``.tflite`` file's metadata (``{}`` when absent)."""
    from bnnkit.export.tflite import schema

    s = schema()
    model = s.Model.GetRootAs(Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if meta.Name() and meta.Name().decode() == HEADER_KEY:
            data = model.Buffers(meta.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return {}


def read_openvino_header(path: str | Path) -> dict[str, Any]:
    """bnnkit's header from an OpenVINO ``.xml`` file's runtime info (``{}`` when absent)."""
    from bnnkit.export.openvino import openvino

    ov, _ = openvino()
    model = ov.Core().read_model(str(path))
    if not model.has_rt_info(HEADER_KEY):
        return {}
    return json.loads(model.get_rt_info(HEADER_KEY).astype(str))


def load_runtime_model(
    path: str | Path, *, num_threads: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """``(model with predict(), header)`` of a ``.tflite`` or ``.xml`` file."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(
            f"no model file at {path}; write one with `bnnkit export ... --out {path.name}`"
        )
    if path.suffix == ".tflite":
        return LCEModel(path, num_threads=num_threads or 1), read_tflite_header(path)
    if path.suffix == ".xml":
        return OpenVINOModel(path, num_threads=num_threads), read_openvino_header(path)
    raise ExportError(
        f"{path}: not a runtime model (.tflite for Larq Compute Engine, .xml for OpenVINO)"
    )
