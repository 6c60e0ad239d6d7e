"""Every registered method traces under torch.compile without graph breaks (registry-driven)."""

from __future__ import annotations

import pytest
import torch

from bnnkit.methods import binarize_, binary_layers, get_method, list_methods
from bnnkit.models import create_model

dynamo = pytest.importorskip("torch._dynamo")


@pytest.mark.parametrize("method", list_methods())
def test_no_graph_break_in_binary_layers_or_the_whole_model(method):
    model = binarize_(create_model("resnet20", num_classes=10), get_method(method)).train()
    _, layer = binary_layers(model)[1]
    dynamo.reset()
    explained = dynamo.explain(layer)(torch.randn(2, layer.in_channels, 8, 8))
    assert explained.graph_break_count == 0, explained.break_reasons
    explained = dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
