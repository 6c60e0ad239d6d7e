"""convert(): parity of packed models with the eval-mode trained models, over the registries."""

from __future__ import annotations

import pytest
import torch
from _helpers import NOT_PACKED, packed_methods, sample_input, trained_like
from torch import nn

import bnnkit
from bnnkit.export import (
    ExportError,
    PackedConv2d,
    PackedLinear,
    batchnorm_pairs,
    convert,
    get_kernel,
    pack_activations,
    pack_conv_weight,
    packed_layers,
)
from bnnkit.nn import BinaryConv2d, BinaryLayer

BINARY_METHODS = packed_methods()  # the others refuse: test_convert.py checks it
CIFAR_MODELS = ["resnet20", "resnet18_cifar", "vgg_small", "mlp"]
IMAGENET_MODELS = [n for n in bnnkit.list_models() if n not in CIFAR_MODELS]


_input, _trained_like = sample_input, trained_like


def _layer_io(model: nn.Module, x: torch.Tensor, kind: type) -> dict[str, tuple]:
    """Input and output of every module of type ``kind`` on one forward pass."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, kind):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0], out))))  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("method", sorted(NOT_PACKED))
def test_methods_the_packed_format_cannot_represent_are_refused_naming_the_layer(method):
    model = _trained_like("resnet20", method)
    with pytest.raises(ExportError, match=rf"cannot pack binary layer 'layers\.0\.conv1': .*{NOT_PACKED[method]}"):  # fmt: skip
        convert(model)


@pytest.mark.parametrize("method", BINARY_METHODS)
@pytest.mark.parametrize("name", [*CIFAR_MODELS, "resnet18", "reactnet_resnet18", "reactnet_a"])
def test_packed_model_matches_the_trained_model(name, method):
    model = _trained_like(name, method)
    packed = convert(model)
    x = _input(name)
    with torch.no_grad():
        want, got = model(x), packed(x)
    assert want.shape == got.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # every binary layer was packed, and each one is exact on the input the trained layer saw
    trained_io = _layer_io(model, x, BinaryLayer)
    assert {n for n, _ in packed_layers(packed)} == set(trained_io)
    for lname, layer in packed_layers(packed):
        inp, _ = trained_io[lname]
        ref = model.get_submodule(lname)
        xb = ref.binarized_input(inp)  # the ±1 input of the trained layer
        wb = torch.where(ref.binarized_weight() < 0, -1.0, 1.0)
        if isinstance(layer, PackedConv2d):
            dots = torch.nn.functional.conv2d(xb, wb, stride=layer.stride, padding=layer.padding)
            bits = layer._kernel.pack_activations(inp, layer.input_shift)
            got_dots = layer._kernel.conv2d(bits, layer.weight_bits, layer.in_channels,
                                            layer.kernel_size, layer.stride, layer.padding)  # fmt: skip
        else:
            dots = xb @ wb.t()
            bits = layer._kernel.pack_activations(inp, layer.input_shift)
            got_dots = layer._kernel.linear(bits, layer.weight_bits, layer.in_features)
        assert torch.equal(got_dots.to(torch.float32), dots), lname  # popcounts bit-exact


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_every_imagenet_model_converts_with_reactnet(name):
    model = _trained_like(name, "reactnet")
    x = _input(name, batch=1)
    packed = convert(model)
    with torch.no_grad():
        want, got = model(x), packed(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_convert_folds_batch_norms_that_only_follow_a_binary_layer():
    model = _trained_like("resnet20", "xnor")
    pairs = batchnorm_pairs(model)
    assert pairs["layers.0.conv1"] == "layers.0.bn1" and len(pairs) == 18
    packed = convert(model)
    assert isinstance(packed.layers[0].bn1, nn.Identity)
    assert packed.layers[0].conv1.folded_bn == "layers.0.bn1"
    kept = convert(model, fold_bn=False)
    assert isinstance(kept.layers[0].bn1, nn.BatchNorm2d)
    x = _input("resnet20")
    with torch.no_grad():
        torch.testing.assert_close(packed(x), kept(x), rtol=1e-4, atol=1e-4)


def test_convert_leaves_the_source_model_alone_and_keeps_float_layers():
    model = _trained_like("resnet20", "ste")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = convert(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(packed.conv1, nn.Conv2d) and isinstance(packed.fc, nn.Linear)
    assert torch.equal(packed.conv1.weight, model.conv1.weight)


def test_folded_scale_and_bias_by_hand():
    # one binary conv (1 -> 1 channel, 1x1), weight -0.5: mean-abs scale 0.5, then a BN
    layer = BinaryConv2d(1, 1, 1, bias=False, weight_binarizer="clipped_ste",
                         input_binarizer="clipped_ste", scale="mean_abs")  # fmt: skip
    bn = nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        layer.weight.fill_(-0.5)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0 - bn.eps)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.25)
    model = nn.Sequential(layer, bn).eval()
    packed = convert(model)
    conv = packed[0]
    # y = 3 * (0.5 * dot - 1) / 2 + 0.25 = 0.75 dot - 1.25
    assert conv.scale.tolist() == [0.75] and conv.bias.tolist() == [-1.25]
    x = torch.tensor([[[[2.0, -3.0]]]])  # sign: +1, -1; weight sign -1 -> dots -1, +1
    assert packed(x).flatten().tolist() == [-2.0, -0.5]


def test_refuses_layers_it_cannot_reproduce_and_names_them():
    w1a32 = nn.Sequential(BinaryConv2d(4, 4, 3, weight_binarizer="clipped_ste"))
    with pytest.raises(ExportError, match=r"'0'.*W1A32"):
        convert(w1a32)
    grouped = nn.Sequential(BinaryConv2d(4, 4, 3, groups=2, weight_binarizer="clipped_ste",
                                         input_binarizer="clipped_ste"))  # fmt: skip
    with pytest.raises(ExportError, match="groups=2"):
        convert(grouped)
    with pytest.raises(ExportError, match="no binarized layer"):
        convert(bnnkit.binarize_(bnnkit.create_model("resnet20"), bnnkit.get_method("float")))


def test_refuses_an_input_binarizer_without_a_packed_rule():
    class Halved(nn.Module):
        def forward(self, x):
            return torch.sign(x) * 0.5

    model = nn.Sequential(BinaryConv2d(4, 4, 3, weight_binarizer="clipped_ste",
                                       input_binarizer=Halved()))  # fmt: skip
    with pytest.raises(ExportError, match="Halved"):
        convert(model)


def test_refuses_a_weight_that_is_not_plus_minus_alpha_per_channel():
    class Ternary(nn.Module):
        def forward(self, w):
            return torch.round(w.clamp(-1, 1))

    layer = BinaryConv2d(4, 4, 3, weight_binarizer=Ternary(), input_binarizer="clipped_ste")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 4, 3, 3))
    with pytest.raises(ExportError, match="alpha_c"):
        convert(nn.Sequential(layer))


@pytest.mark.skipif("numba" not in bnnkit.export.list_kernels(), reason="numba not installed")
def test_numba_and_reference_models_agree_and_batches_are_independent():
    model = _trained_like("resnet18_cifar", "reactnet")
    fast, ref = convert(model, kernel="numba"), convert(model, kernel="reference")
    x = _input("resnet18_cifar", batch=3)
    with torch.no_grad():
        a, b = fast(x), ref(x)
        one = fast(x[1:2])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, a[1:2], rtol=1e-5, atol=1e-5)


def test_kernel_conv_affine_equals_scaled_dots():
    k = get_kernel("auto")
    x, w = torch.randn(2, 70, 6, 5), torch.randn(3, 70, 3, 3)
    xb, wb = pack_activations(x), pack_conv_weight(w)
    scale, bias = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([1.0, 0.0, 3.0])
    dots = k.conv2d(xb, wb, 70, (3, 3), (1, 1), (1, 1))
    out = k.conv2d(xb, wb, 70, (3, 3), (1, 1), (1, 1), scale, bias)
    torch.testing.assert_close(out, dots.float() * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))


def test_packed_layers_check_their_input_shape():
    conv = PackedConv2d(8, 4, (3, 3), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\)"):
        conv(torch.randn(1, 7, 4, 4))
    lin = PackedLinear(8, 4)
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        lin(torch.randn(2, 9))


@pytest.mark.parametrize("kernel", ["reference", "numba"])
@pytest.mark.parametrize("pad_value", [1.0, -1.0])
def test_packed_layers_reproduce_a_plus_minus_one_border(kernel, pad_value):
    """A model trained with pad_value ±1 packs exactly: the kernels fill padded positions with
    +1 words and correct by (1 - pad_value) times the weight sums per kernel position."""
    if kernel == "numba":
        pytest.importorskip("numba")
    model = bnnkit.binarize_(trained_like("resnet20", "reactnet"), "reactnet", pad_value=pad_value)
    model.eval()
    x = sample_input("resnet20")
    packed = convert(model, kernel=kernel)
    assert all(
        m.pad_value == pad_value for _, m in packed_layers(packed) if isinstance(m, PackedConv2d)
    )
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=1e-4, atol=1e-5)
        zero = convert(
            bnnkit.binarize_(trained_like("resnet20", "reactnet"), "reactnet"), kernel=kernel
        )
        assert not torch.allclose(zero(x), packed(x), rtol=1e-3)  # the border really differs
