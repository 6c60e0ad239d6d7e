"""Model registry and conformance tests generated over ``list_models()``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.errors import ConfigError
from bnnkit.methods import binarize_, binary_layers
from bnnkit.models import create_model, list_models, model_info
from bnnkit.nn import BinaryConv2d, BinaryLinear

# Binary-layer counts from methods.md (2.6, 1.6, 4.5) and the issue.
BINARY_COUNT = {
    "resnet20": 18,
    "resnet18_cifar": 16,
    "vgg_small": 5,
    "resnet18": 16,
    "resnet34": 32,
    "reactnet_resnet18": 16,
    "reactnet_resnet34": 32,
    "reactnet_a": 31,
    "mlp": 2,
}

# Layers the papers keep in full precision (stem, downsample 1x1, classifier).
FLOAT_LAYERS = {
    "resnet20": ["conv1", "fc"],
    "resnet18_cifar": ["conv1", "fc"],
    "vgg_small": ["conv0", "fc"],
    "resnet18": [
        "conv1",
        "layer2.0.shortcut.0",
        "layer3.0.shortcut.0",
        "layer4.0.shortcut.0",
        "fc",
    ],
    "resnet34": ["conv1", "layer2.0.shortcut.0", "layer4.0.shortcut.0", "fc"],
    "reactnet_resnet18": ["conv1", "layer2.0.downsample.1", "layer4.0.downsample.1", "fc"],
    "reactnet_resnet34": ["conv1", "layer3.0.downsample.1", "fc"],
    "reactnet_a": ["conv1", "fc"],
    "mlp": ["fc_in", "fc"],
}


def small_input(name: str) -> torch.Tensor:
    info = model_info(name)
    size = (3, 64, 64) if info.dataset == "imagenet" else info.input_size
    return torch.randn(2, *size)


def test_every_registered_model_is_covered():
    assert set(list_models()) == set(BINARY_COUNT) == set(FLOAT_LAYERS)


@pytest.mark.parametrize("name", list_models())
def test_binary_layer_count(name):
    assert len(binary_layers(create_model(name))) == BINARY_COUNT[name]


@pytest.mark.parametrize("name", list_models())
def test_paper_float_layers_stay_float(name):
    modules = dict(create_model(name).named_modules())
    for layer in FLOAT_LAYERS[name]:
        assert type(modules[layer]) in (nn.Conv2d, nn.Linear), layer


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_at_small_input_with_a_method(name):
    model = binarize_(create_model(name, num_classes=7), "reactnet")
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_resnet20_parameter_count_by_hand():
    # stem 3*16*9 + BN 32; stage1 6 x 16*16*9 + 6 BN(16) = 13824 + 192;
    # stage2 16*32*9 + 5 x 32*32*9 + 6 BN(32) = 4608 + 46080 + 384;
    # stage3 32*64*9 + 5 x 64*64*9 + 6 BN(64) = 18432 + 184320 + 768; head BN1d 128 + FC 650
    expected = 432 + 32 + 13824 + 192 + 4608 + 46080 + 384 + 18432 + 184320 + 768 + 128 + 650
    assert sum(p.numel() for p in create_model("resnet20").parameters()) == expected == 269850


def test_resnet18_cifar_ovsw_variant_has_binary_shortcuts_and_conv_head():
    model = create_model("resnet18_cifar", variant="ovsw")
    layers = dict(binary_layers(model))
    assert len(layers) == 19
    shortcut = layers["layers.2.shortcut.0"]
    assert shortcut.kernel_size == (1, 1) and shortcut.stride == (2, 2)
    assert isinstance(model.bn_head, nn.BatchNorm2d) and type(model.fc) is nn.Conv2d
    assert model.fc.bias is not None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_pools_and_zero_pads():
    block = create_model("resnet20").layers[3]  # first block of stage 2: 16 -> 32, stride 2
    x = torch.randn(1, 16, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :8], torch.zeros(1, 8, 4, 4)) and torch.equal(
        y[:, 24:], torch.zeros(1, 8, 4, 4)
    )
    assert torch.allclose(y[:, 8:24], nn.functional.avg_pool2d(x, 2))


def test_imagenet_one_stage_bn2d_weights_start_at_1e_8():
    model = create_model("resnet18")
    bn2d = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn2d and all(torch.all(m.weight == 1e-8) for m in bn2d)
    assert torch.all(model.bn_head.weight == 1.0)  # BatchNorm1d keeps its default


def test_vgg_small_init_and_prelu_option():
    torch.manual_seed(0)
    model = create_model("vgg_small", last_activation="prelu")
    conv = model.features[4][0]  # 512 -> 512, std = sqrt(2 / (9 * 512))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert isinstance(model.features[4][-1], nn.PReLU)
    # pool before BN in the pooled stages
    assert [type(m).__name__ for m in model.features[0]] == [
        "BinaryConv2d",
        "MaxPool2d",
        "BatchNorm2d",
        "Hardtanh",
    ]


def test_reactnet_a_widening_blocks_have_two_parallel_pointwise_convs():
    model = create_model("reactnet_a")
    widening = [b for b in model.features if len(b.pw) == 2]
    assert len(widening) == 5
    strides = [b.conv3x3.stride[0] for b in model.features]
    # stride 2 where the width changes to something other than 64
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_reactnet_small_uniform_init_is_positive_and_small():
    model = create_model("reactnet_resnet18", binary_init="small_uniform")
    for _, layer in binary_layers(model):
        assert (layer.weight >= 0).all() and (layer.weight < 0.001).all()


def test_create_model_errors_name_the_fix():
    # ConfigError (a ValueError): the option, the bad value and what is allowed
    with pytest.raises(ConfigError, match=r"'resnet21' is not a known model; allowed: .*resnet20"):
        create_model("resnet21")
    with pytest.raises(
        ConfigError, match=r"depth: not an option of model resnet18_cifar; allowed: variant"
    ):
        create_model("resnet18_cifar", depth=3)
    with pytest.raises(ConfigError, match=r"variant = 'bnn' is not valid; allowed: 'recu', 'ovsw'"):
        create_model("resnet18_cifar", variant="bnn")
    with pytest.raises(ConfigError, match="num_classes = 0 must be a positive int"):
        create_model("resnet20", num_classes=0)


# -- binarize_ on models bnnkit did not define ---------------------------------------------------


class ForeignCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=2),
        )
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.body(self.stem(x)).mean((2, 3))
        return self.head(torch.relu(self.proj(x)))


def test_binarize_swaps_a_foreign_cnn_keeping_first_conv_and_last_linear(caplog):
    model = ForeignCNN()
    x = torch.randn(2, 3, 8, 8)
    reference = model(x)
    weight = model.body[2].weight
    with caplog.at_level("INFO", logger="bnnkit"):
        binarize_(model, "float")
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    assert isinstance(model.body[2], BinaryConv2d) and isinstance(model.body[5], BinaryConv2d)
    assert isinstance(model.proj, BinaryLinear)
    assert model.body[5].groups == 2
    assert model.body[2].weight is weight  # same Parameter: optimizers built earlier stay valid
    assert type(model.attn.out_proj) is not BinaryLinear  # subclasses are left alone
    assert [n for n, _ in binary_layers(model)] == ["body.2", "body.5", "proj"]
    assert torch.equal(model(x), reference)  # float method: identical computation
    assert (
        "kept float: stem (first conv)" in caplog.text
        and "kept float: head (last linear)" in caplog.text
    )


def test_binarize_foreign_cnn_trains_with_a_binary_method(run_steps):
    model = binarize_(ForeignCNN(), "bireal")
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    losses = run_steps(model, bnnkit.get_method("bireal"), x, y)
    assert all(math.isfinite(v) for v in losses)
    assert model.body[2].binarized_weight().abs().unique().numel() <= 16


def test_keep_float_patterns_and_filter_fn():
    model = binarize_(ForeignCNN(), "ste", keep_float=["stem", "head", "body.5"])
    assert [n for n, _ in binary_layers(model)] == ["body.2", "proj"]
    model = binarize_(ForeignCNN(), "ste", filter_fn=lambda m, name: isinstance(m, nn.Conv2d))
    assert [n for n, _ in binary_layers(model)] == ["stem", "body.2", "body.5"]


def test_filter_on_a_bnnkit_model_turns_excluded_layers_back_to_float():
    model = create_model("resnet20")
    binarize_(model, "ste", keep_float=["layers.0.*"])
    names = [n for n, _ in binary_layers(model)]
    assert len(names) == 16 and not any(n.startswith("layers.0.") for n in names)
    assert type(model.layers[0].conv1) is nn.Conv2d


def test_binarize_with_nothing_left_is_an_error():
    with pytest.raises(ValueError, match="no layer to binarize"):
        binarize_(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(3, 2)), "ste")


def test_binarize_moves_built_modules_to_the_weight_dtype_and_state_dict_round_trips():
    model = binarize_(create_model("resnet20").double(), "reactnet")
    rsign = binary_layers(model)[0][1].input_binarizer
    assert rsign.bias.dtype == torch.float64
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fresh = binarize_(create_model("resnet20").double(), "reactnet")
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_rebinarizing_replaces_the_method():
    step1 = bnnkit.get_method("reactnet", weights="float")
    model = binarize_(create_model("resnet20"), step1)
    assert all(layer.weight_bits == 32 for _, layer in binary_layers(model))
    binarize_(model, "reactnet")
    assert all(layer.weight_bits == 1 for _, layer in binary_layers(model))
