"""BinaryConv2d / BinaryLinear / LearnableBias / RSign / RPReLU."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bnnkit
from bnnkit.binarize import ApproxSign, ClippedSTESign, EDESign, MeanAbsScale
from bnnkit.errors import ConfigError
from bnnkit.nn import BinaryConv2d, BinaryLinear, LearnableBias, RPReLU, RSign

BINARY_KW = ("weight_binarizer", "input_binarizer", "scale")


@pytest.mark.parametrize(
    ("binary", "torch_cls"), [(BinaryConv2d, nn.Conv2d), (BinaryLinear, nn.Linear)]
)
def test_signature_is_torch_layer_plus_three_keyword_only(binary, torch_cls):
    """The torch layer's arguments, then the binarizer keywords (and, for the conv, the
    pad_value of its binarized input, 0 by default: zero padding as the torch layer)."""
    ours = inspect.signature(binary).parameters
    theirs = inspect.signature(torch_cls).parameters
    positional = [p for p in ours.values() if p.kind is not p.KEYWORD_ONLY]
    assert [(p.name, p.default, p.kind) for p in positional] == [
        (p.name, p.default, p.kind) for p in theirs.values()
    ]
    kw_only = [p for p in ours.values() if p.kind is p.KEYWORD_ONLY]
    extra = [("pad_value", 0.0)] if binary is BinaryConv2d else []
    assert [(p.name, p.default) for p in kw_only] == [(k, None) for k in BINARY_KW] + extra


CONV_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 1), padding="same", dilation=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
]


@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv_without_binarizers_is_exactly_nn_conv2d(kw):
    ours, ref = BinaryConv2d(**kw).double(), nn.Conv2d(**kw).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x2)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(ours.weight.grad, ref.weight.grad)


def test_linear_without_binarizers_is_exactly_nn_linear():
    ours, ref = BinaryLinear(5, 3), nn.Linear(5, 3)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 5)
    assert torch.equal(ours(x), ref(x))


CONV_BINARIZERS = [
    dict(weight_binarizer="clipped_ste", input_binarizer="approx_sign", scale="mean_abs"),
    dict(weight_binarizer="identity_ste", input_binarizer=None, scale="learnable"),
    dict(weight_binarizer=None, input_binarizer="ede"),
    dict(weight_binarizer="magnitude_aware_sign", input_binarizer="swish_sign"),
    dict(weight_binarizer="clipped_ste", input_binarizer=RSign(4), scale=MeanAbsScale(True)),
]


@pytest.mark.parametrize("kw", CONV_BINARIZERS)
@pytest.mark.parametrize("conv_kw", CONV_CASES[:4])
def test_conv_output_is_conv_of_binarized_input_and_weight(kw, conv_kw):
    layer = BinaryConv2d(**conv_kw, **kw)
    x = torch.randn(2, 4, 9, 9)
    expected = F.conv2d(
        layer.binarized_input(x),
        layer.binarized_weight(),
        layer.bias,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
    )
    assert torch.allclose(layer(x), expected, atol=0, rtol=0)


def test_reflect_padding_pads_the_binarized_input():
    layer = BinaryConv2d(4, 6, 3, padding=1, padding_mode="reflect", input_binarizer="approx_sign")
    x = torch.randn(2, 4, 7, 7)
    padded = F.pad(layer.binarized_input(x), (1, 1, 1, 1), mode="reflect")
    expected = F.conv2d(padded, layer.binarized_weight(), layer.bias)
    assert torch.equal(layer(x), expected)
    assert set(padded.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("kw", CONV_BINARIZERS[:4])
def test_linear_output_is_linear_of_binarized_input_and_weight(kw):
    kw = {**kw, "input_binarizer": kw["input_binarizer"]}
    layer = BinaryLinear(4, 3, **kw)
    x = torch.randn(5, 4)
    expected = F.linear(layer.binarized_input(x), layer.binarized_weight(), layer.bias)
    assert torch.equal(layer(x), expected)


def test_binarized_weight_is_alpha_sign_with_hand_values():
    layer = BinaryConv2d(1, 2, 2, bias=False, weight_binarizer="clipped_ste", scale="mean_abs")
    w = torch.tensor([[[[0.5, -1.5], [0.0, 2.0]]], [[[-0.1, -0.2], [0.3, -0.4]]]])
    with torch.no_grad():
        layer.weight.copy_(w)
    # channel 0: mean|w| = (0.5 + 1.5 + 0 + 2) / 4 = 1.0; channel 1: (0.1+0.2+0.3+0.4)/4 = 0.25
    expected = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]], [[[-0.25, -0.25], [0.25, -0.25]]]])
    assert torch.allclose(layer.binarized_weight(), expected)


def test_layers_expose_bits_and_repr():
    layer = BinaryConv2d(3, 4, 3, weight_binarizer="clipped_ste")
    assert (layer.weight_bits, layer.input_bits) == (1, 32)
    assert "W1A32" in repr(layer)


def test_bad_binarizer_and_scale_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="approx_sign"):
        BinaryConv2d(3, 4, 3, input_binarizer="aprox_sign")
    with pytest.raises(ValueError, match="mean_abs"):
        BinaryLinear(3, 4, scale="meanabs")
    with pytest.raises(TypeError, match="Scale"):
        BinaryLinear(3, 4, scale=nn.Identity())


def test_from_float_and_to_float_share_parameters():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True)
    b = BinaryConv2d.from_float(conv)
    assert b.weight is conv.weight and b.bias is conv.bias
    assert (b.stride, b.padding) == (conv.stride, conv.padding)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(b(x), conv(x))
    back = b.to_float()
    assert type(back) is nn.Conv2d and back.weight is conv.weight
    lin = nn.Linear(3, 2)
    bl = BinaryLinear.from_float(lin)
    assert bl.weight is lin.weight and type(bl.to_float()) is nn.Linear


def test_binarizer_buffers_move_with_the_layer_and_are_saved():
    layer = BinaryConv2d(2, 2, 1, input_binarizer=EDESign(t=0.5, k=2.0)).double()
    sd = layer.state_dict()
    assert sd["input_binarizer.t"].dtype == torch.float64 and float(sd["input_binarizer.k"]) == 2.0
    other = BinaryConv2d(2, 2, 1, input_binarizer=EDESign()).double()
    other.load_state_dict(sd)
    assert float(other.input_binarizer.t) == 0.5


def test_learnable_bias_adds_per_channel():
    lb = LearnableBias(3)
    with torch.no_grad():
        lb.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.zeros(2, 3, 2, 2)
    assert torch.equal(lb(x)[0, :, 0, 0], torch.tensor([1.0, -2.0, 0.5]))
    assert torch.equal(lb(torch.zeros(4, 3))[1], torch.tensor([1.0, -2.0, 0.5]))


def test_rsign_forward_and_approx_sign_gradient_at_shifted_input():
    rs = RSign(2)
    with torch.no_grad():
        rs.bias.copy_(torch.tensor([0.5, -0.25]))
    x = torch.tensor([[[[-0.5]], [[0.5]]], [[[-0.75]], [[0.0]]]], requires_grad=True)
    y = rs(x)
    # x + b: [[0.0, 0.25], [-0.25, -0.25]] -> sign (sign(0) = +1)
    assert y.flatten().tolist() == [1.0, 1.0, -1.0, -1.0]
    y.sum().backward()
    # max(0, 2 - 2|x + b|): [2, 1.5, 1.5, 1.5]
    assert torch.allclose(x.grad.flatten(), torch.tensor([2.0, 1.5, 1.5, 1.5]))
    assert torch.allclose(rs.bias.grad, torch.tensor([2.0 + 1.5, 1.5 + 1.5]))


def test_rprelu_matches_its_formula():
    m = RPReLU(2)
    gamma, zeta, beta = (
        torch.tensor([0.5, -1.0]),
        torch.tensor([0.2, 0.3]),
        torch.tensor([0.1, 0.4]),
    )
    with torch.no_grad():
        m.shift_in.bias.copy_(-gamma)
        m.prelu.weight.copy_(beta)
        m.shift_out.bias.copy_(zeta)
    x = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    # f(x) = x - g + z if x > g else b (x - g) + z
    # ch0 (g .5, z .2, b .1): x=1 -> 0.7; x=0 -> 0.1*(-0.5)+0.2 = 0.15
    # ch1 (g -1, z .3, b .4): x=-2 -> 0.4*(-1)+0.3 = -0.1; x=0 -> 0+1+0.3 = 1.3
    expected = torch.tensor([[0.7, -0.1], [0.15, 1.3]])
    assert torch.allclose(m(x), expected)


def test_binary_layers_work_with_clipped_ste_module_instances():
    layer = BinaryLinear(3, 2, weight_binarizer=ClippedSTESign(0.5), input_binarizer=ApproxSign())
    assert isinstance(layer.weight_binarizer, ClippedSTESign)
    assert layer.weight_binarizer.clip_value == 0.5


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("padding", [1, (2, 1), "same"])
def test_pad_value_pads_the_binarized_input(pad_value, padding):
    """conv(pad(sign(x), pad_value), sign(w)): zero padding (the papers') or a ±1 border."""
    layer = BinaryConv2d(4, 3, 3, padding=padding, bias=False, weight_binarizer="clipped_ste",
                         input_binarizer="approx_sign", pad_value=pad_value)  # fmt: skip
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    ph, pw = (
        (1, 1) if padding == "same" else (padding, padding) if isinstance(padding, int) else padding
    )
    sx = torch.where(x >= 0, 1.0, -1.0)
    want = torch.nn.functional.conv2d(
        torch.nn.functional.pad(sx, (pw, pw, ph, ph), value=pad_value),
        torch.where(layer.weight >= 0, 1.0, -1.0),
    )
    out = layer(x)
    assert torch.equal(out, want)
    out.sum().backward()  # the surrogate gradient reaches the input and the weight
    assert x.grad is not None and torch.isfinite(x.grad).all() and layer.weight.grad is not None


def test_pad_value_is_validated_and_set_by_binarize():
    with pytest.raises(
        ConfigError, match=r"pad_value = 0\.5 is not valid; allowed: 0 \(zero padding\), 1 or -1"
    ):
        BinaryConv2d(2, 2, 3, pad_value=0.5)
    model = bnnkit.binarize_(bnnkit.create_model("resnet20"), "reactnet", pad_value=-1)
    convs = [m for _, m in bnnkit.binary_layers(model)]
    assert convs and all(m.pad_value == -1.0 for m in convs) and "pad_value=-1" in repr(convs[0])
    assert all(m.pad_value == 0.0 for _, m in bnnkit.binary_layers(
        bnnkit.binarize_(bnnkit.create_model("resnet20"), "reactnet")))  # fmt: skip
