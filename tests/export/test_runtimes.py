"""Exactness of the runtime exports (Larq Compute Engine's interpreter, OpenVINO's CPU plugin)
against bnnkit's reference, over the model and method registries.

* Every binary layer: given the same input, the runtime's binary product is the reference's
  integer popcount product exactly (checked layer by layer: a one-layer model per binary op of
  the lowered graph, fed the reference's input of that op).
* Whole models: logits within float rounding and the same top-1. The float layers round
  differently in each runtime (other summation orders, fused batch norms), so a value within
  rounding distance of a sign threshold can binarize differently and change the logits: the
  whole-model comparison uses inputs whose every binarized value is farther than that from its
  threshold (``_margin``), which is what makes it exact; the per-layer test has no such need.
* The ImageNet-size models (resnet18/34, reactnet_resnet18/34, reactnet_a at 64 px), x every
  method: every op read back from the whole exported model through probes and checked against
  the reference on the runtime's own inputs, then end to end (flipped signs only at near-ties,
  otherwise logits allclose and identical top-1).

The runtimes are optional (``pip install "bnnkit[runtimes]"``); each test skips with the reason
where one cannot run (LCE: Python 3.13+ or numpy 2; OpenVINO: not installed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import packed_methods, sample_input, trained_like

import bnnkit
from bnnkit.errors import MissingDependencyError
from bnnkit.export import convert
from bnnkit.export.files import float_state_bytes
from bnnkit.export.graph import Graph, Op, _run_op, lower
from bnnkit.export.lce import to_tflite
from bnnkit.export.runtimes import LCEModel, OpenVINOModel, lce_interpreter_class

BINARY_METHODS = packed_methods()  # the others refuse: test_convert.py checks it
MODELS = ["resnet20", "resnet18_cifar", "vgg_small", "mlp", "resnet18", "reactnet_resnet18", "reactnet_a"]  # fmt: skip


def _available(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (None when it can)."""
    try:
        if runtime == "lce":
            import flatbuffers  # noqa: F401
            import tflite  # noqa: F401

            lce_interpreter_class()
        else:
            import openvino  # noqa: F401
    except (ImportError, MissingDependencyError) as exc:
        return f"{runtime} cannot run here: {exc}"
    return None


RUNTIMES = [pytest.param(r, marks=pytest.mark.skipif(bool(_available(r)), reason=_available(r) or ""))
            for r in ("lce", "openvino")]  # fmt: skip


def _runtime(runtime: str, graph: Graph):
    if runtime == "lce":
        return LCEModel(to_tflite(graph))
    from bnnkit.export.openvino import to_openvino

    return OpenVINOModel(to_openvino(graph))


def _values(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    values = {graph.input: x}
    for op in graph.ops[1:]:
        values[op.name] = _run_op(op, [values[i] for i in op.inputs])
    return values


def _binary(graph: Graph) -> list[Op]:
    return [op for op in graph.ops if op.kind in ("bconv2d", "blinear")]


def _dot(op: Op, y: np.ndarray) -> np.ndarray:
    """The integer product back from a binary op's output ``scale * dot + bias``."""
    view = (1, -1, 1, 1) if y.ndim == 4 else (1, -1)
    return (y - op.tensors["bias"].reshape(view)) / op.tensors["scale"].reshape(view)


def _check_layers(runtime: str, name: str, method: str) -> int:
    model = trained_like(name, method)
    x = sample_input(name, batch=1)
    graph = lower(convert(model, check=False), tuple(x.shape))
    values = _values(graph, x)
    for op in _binary(graph):
        xin = values[op.inputs[0]]
        single = Graph.of_op(op, tuple(xin.shape))
        got = _dot(op, _runtime(runtime, single).predict(xin.numpy()))
        want = _dot(op, values[op.name].numpy())
        assert np.abs(got - np.round(got)).max() < 1e-2, op.name  # an integer product
        assert np.array_equal(np.round(got), np.round(want)), (op.name, np.abs(got - want).max())
    return len(_binary(graph))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", MODELS)
def test_every_binary_layer_of_every_model_is_exact(runtime, name):
    """Popcount products identical to the reference for each binary layer (ReActNet's
    shifted sign: the method with per-channel input shifts)."""
    assert _check_layers(runtime, name, "reactnet") > 0


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("method", BINARY_METHODS)
def test_every_method_binary_layers_are_exact(runtime, method):
    assert _check_layers(runtime, "resnet20", method) == 18


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("pad_value", [1.0, -1.0])
def test_plus_minus_one_padding_is_exact(runtime, pad_value):
    model = bnnkit.binarize_(trained_like("resnet20", "reactnet"), "reactnet", pad_value=pad_value)
    x = sample_input("resnet20", batch=1)
    graph = lower(convert(model.eval(), check=False), tuple(x.shape))
    values = _values(graph, x)
    op = _binary(graph)[6]  # a stride-2 layer: TFLite's SAME is not PyTorch's padding there
    assert op.attrs["stride"] == (2, 2)
    xin = values[op.inputs[0]]
    single = Graph.of_op(op, tuple(xin.shape))
    got = _dot(op, _runtime(runtime, single).predict(xin.numpy()))
    assert np.array_equal(np.round(got), np.round(_dot(op, values[op.name].numpy())))


def _margin(graph: Graph, x: torch.Tensor) -> float:
    """The smallest |value| a binary layer takes the sign of, relative to the largest."""
    values = _values(graph, x)
    worst = float("inf")
    for op in _binary(graph):
        z = values[op.inputs[0]]
        if "shift" in op.tensors:
            z = z + torch.from_numpy(op.tensors["shift"]).view(1, -1, *([1] * (z.ndim - 2)))
        worst = min(worst, float(z.abs().min() / z.abs().max()))
    return worst


def _candidates(name: str, n: int = 32) -> list[torch.Tensor]:
    shape = sample_input(name, batch=1).shape
    return [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in range(n)]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("method", BINARY_METHODS)
@pytest.mark.parametrize("name", ["resnet20", "resnet18_cifar", "vgg_small", "mlp"])
def test_whole_model_logits_and_top1(runtime, name, method):
    model = trained_like(name, method)
    graph = lower(convert(model, check=False), tuple(sample_input(name, batch=1).shape))
    x = max(_candidates(name), key=lambda c: _margin(graph, c))  # the farthest from a threshold
    # the float layers here deviate by up to ~1.2e-6 (relative) between runtimes (measured)
    assert _margin(graph, x) > 5e-6, "no input far enough from every threshold for an exact check"
    got = _runtime(runtime, graph).predict(x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    # LCE computes a binary layer's output as (2 popcount) * (-m) + (b + K m) in float32: its
    # rounding grows with K |m|, so the absolute tolerance follows the logits' scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_openvino_runs_its_binary_kernel_and_files_stay_small(runtime, tmp_path):
    """Each binary layer is one BinaryConvolution node of OpenVINO's CPU plugin (its JIT
    kernel), and both runtime files of resnet18 are under 1/10 of the float state_dict."""
    model = trained_like("resnet18", "reactnet", classes=1000)
    # the plain float network's state_dict (the binarized model's also holds its sign history,
    # which float_state_bytes leaves out, and ReActNet's learnable shifts: 0.03% more)
    float_bytes = float_state_bytes(bnnkit.create_model("resnet18", num_classes=1000))
    assert float_bytes <= float_state_bytes(model) < 1.001 * float_bytes
    path = bnnkit.export.export_model(
        model, tmp_path / ("m.tflite" if runtime == "lce" else "m.xml")
    )
    assert bnnkit.export.file_bytes(path) < float_bytes / 10
    if runtime == "openvino":
        types = OpenVINOModel(path).layer_types()
        assert types.get("BinaryConvolution") == 16, types  # resnet18's 16 binary convs
        import openvino as ov

        names = {node.get_friendly_name() for node in ov.Core().read_model(str(path)).get_ops()}
        # profiling (PERF_COUNT) names the bnnkit layers
        assert {
            "layer1.0.conv1/sign",
            "layer1.0.conv1/binary_conv",
            "layer4.1.conv2",
            "fc",
        } <= names


def _presign(op: Op, z: torch.Tensor) -> torch.Tensor:
    """What ``op`` (a binary op) takes the sign of: its input plus the method's shift."""
    if "shift" in op.tensors:
        z = z + torch.from_numpy(op.tensors["shift"]).view(1, -1, *([1] * (z.ndim - 2)))
    return z


IMAGENET_MODELS = ["resnet18", "resnet34", "reactnet_resnet18", "reactnet_resnet34", "reactnet_a"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("method", BINARY_METHODS)
@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_models_every_op_in_context_and_logits(runtime, name, method):
    """Every op of the whole exported model, read back through probes (extra outputs), against
    the reference given the runtime's own inputs: binary ops with identical popcounts, float ops
    within float rounding. Then end to end: a binarized value may get another sign than in
    the eval-mode model only where it lies within float rounding of its threshold (no input of
    these models is farther than that from every threshold, so the CIFAR test's margin
    selection cannot apply); where no sign differs (every case here, as measured), the logits
    are allclose and top-1 identical."""
    model = trained_like(name, method)
    graph = lower(convert(model, check=False), tuple(sample_input(name, batch=1).shape))
    x = max(_candidates(name, 8), key=lambda c: _margin(graph, c))
    probes = [op.name for op in graph.ops[1:]]
    if runtime == "lce":
        outs = LCEModel(to_tflite(graph, probes=probes)).predict_all(x.numpy())
    else:
        from bnnkit.export.openvino import to_openvino

        outs = OpenVINOModel(to_openvino(graph, probes=probes)).predict_all(x.numpy())
    got = {
        graph.input: x,
        **{n: torch.from_numpy(o) for n, o in zip(probes, outs[1:], strict=True)},
    }
    assert np.array_equal(outs[0], got[graph.output].numpy())

    for op in graph.ops[1:]:
        want = _run_op(op, [got[i] for i in op.inputs]).numpy()
        if op.kind in ("bconv2d", "blinear"):
            assert np.array_equal(
                np.round(_dot(op, got[op.name].numpy())), np.round(_dot(op, want))
            ), op.name
        else:
            np.testing.assert_allclose(got[op.name].numpy(), want, rtol=1e-4,
                                       atol=1e-4 * float(np.abs(want).max()) + 1e-6, err_msg=op.name)  # fmt: skip

    reference = _values(graph, x)
    differ = 0
    for op in _binary(graph):
        ref, run = _presign(op, reference[op.inputs[0]]), _presign(op, got[op.inputs[0]])
        flipped = (ref < 0) != (run < 0)
        differ += int(flipped.sum())
        # a sign may differ only at a near-tie: within the runtimes' float rounding of 0
        assert (ref[flipped].abs() < 5e-6 * ref.abs().max()).all(), op.name
        if differ:
            break  # past a flipped sign the two chains compute on different inputs
    if not differ:
        with torch.no_grad():
            logits = model(x).numpy()
        np.testing.assert_allclose(
            outs[0], logits, rtol=1e-4, atol=1e-4 * float(np.abs(logits).max())
        )
        assert (outs[0].argmax(1) == logits.argmax(1)).all()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_probe_that_is_no_op_is_refused_by_name(runtime):
    from bnnkit.export import ExportError
    from bnnkit.export.openvino import to_openvino

    graph = lower(
        convert(trained_like("mlp", "ste"), check=False), tuple(sample_input("mlp", 1).shape)
    )
    write = to_tflite if runtime == "lce" else to_openvino
    with pytest.raises(ExportError, match="probe 'no_such_op' is not an op"):
        write(graph, probes=["no_such_op"])
