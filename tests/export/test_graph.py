"""The runtime-neutral lowering of packed models (bnnkit.export.graph): every model x method
that convert() packs lowers to the op vocabulary, and running the ops gives the trained model."""

from __future__ import annotations

import collections

import pytest
import torch
from _helpers import packed_methods, sample_input, trained_like
from torch import nn

import bnnkit
from bnnkit.export import ExportError, convert
from bnnkit.export.graph import KINDS, lower, run

BINARY_METHODS = packed_methods()  # the others refuse: test_convert.py checks it
MODELS = ["resnet20", "resnet18_cifar", "vgg_small", "mlp", "resnet18", "reactnet_resnet18", "reactnet_a"]  # fmt: skip


@pytest.mark.parametrize("method", BINARY_METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_the_lowered_ops_compute_the_trained_model(name, method):
    model = trained_like(name, method)
    x = sample_input(name)
    graph = lower(convert(model, check=False), tuple(x.shape))  # convert is tested on its own
    kinds = collections.Counter(op.kind for op in graph.ops)
    assert set(kinds) <= set(KINDS)
    binary = len([m for _, m in bnnkit.binary_layers(model) if m.weight_binarizer is not None])
    assert kinds["bconv2d"] + kinds["blinear"] == binary  # every binary layer stays binary
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(run(graph, x), want, rtol=1e-4, atol=1e-5)
    assert graph.op(graph.output).shape == tuple(want.shape)


def test_a_bconv_op_holds_the_signs_scale_bias_and_shift():
    model = trained_like("resnet20", "reactnet")
    graph = lower(convert(model), (1, 3, 32, 32))
    op = next(o for o in graph.ops if o.kind == "bconv2d")
    layer = bnnkit.binary_layers(model)[0][1]
    w = layer.binarized_weight().detach()
    assert op.tensors["signs"].shape == tuple(w.shape)
    assert (op.tensors["signs"] == torch.where(w >= 0, 1.0, -1.0).numpy()).all()
    torch.testing.assert_close(
        torch.from_numpy(op.tensors["shift"]), layer.input_binarizer.bias.detach()
    )
    assert op.attrs["padding"] == (1, 1) and op.attrs["stride"] == (1, 1)


def test_an_operation_outside_the_vocabulary_is_refused_by_name():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = bnnkit.binarize_(
                bnnkit.create_model("mlp", in_features=8, num_classes=3), "ste"
            )

        def forward(self, x):
            return torch.sigmoid(self.body(x))

    with pytest.raises(
        ExportError, match=r"operation <built-in method sigmoid.*has no runtime export"
    ):
        lower(convert(Odd()), (1, 8))

    class OddModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = bnnkit.binarize_(
                bnnkit.create_model("mlp", in_features=8, num_classes=3), "ste"
            )
            self.gelu = nn.GELU()

        def forward(self, x):
            return self.gelu(self.body(x))

    with pytest.raises(
        ExportError, match=r"module 'gelu' \(GELU\) has no runtime export; supported"
    ):
        lower(convert(OddModule()), (1, 8))
