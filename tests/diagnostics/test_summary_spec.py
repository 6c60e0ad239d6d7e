"""Hand-computed spec tests for ``bnnkit.summary``.

All expected numbers are integer literals worked out by hand from the contract:
  macs (conv)  = output elements * (C_in/groups) * kH * kW      (one sample)
  macs (linear)= in * out
  bops = macs if input_bits == weight_bits == 1 else 0 ; flops = macs - bops
  trained_bytes = 4 * all params of the layer
  deployed_bytes (binary weight) = C_out * ceil(C_in/groups*kH*kW / 64) * 8 + 4 * C_out
                                   + 4 * (float params not in the layer's `scale`)
  deployed_bytes (float weight)  = 4 * all params of the layer
  model deployed = sum(layers) + 4 * params outside conv/linear layers
  ops = flops + bops / 64 ; compression = trained_bytes / deployed_bytes
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.binarize import LearnableScale, approx_sign
from bnnkit.nn import BinaryConv2d, BinaryLinear

LAYER_FIELDS = (
    "input_bits",
    "weight_bits",
    "binary_params",
    "float_params",
    "macs",
    "bops",
    "flops",
    "trained_bytes",
    "deployed_bytes",
)


def check_layer(ls, expected: dict) -> None:
    for field in LAYER_FIELDS:
        value = getattr(ls, field)
        assert isinstance(value, int) and not isinstance(value, bool), (field, type(value))
        assert value == expected[field], f"{field}: got {value}, expected {expected[field]}"


def check_totals(s, expected: dict) -> None:
    for field, exp in expected.items():
        value = getattr(s, field)
        if field in ("ops", "compression"):
            assert value == pytest.approx(exp, rel=1e-12), f"{field}: got {value}, expected {exp}"
        else:
            assert value == exp, f"{field}: got {value}, expected {exp}"


# --------------------------------------------------------------------------------------------
# Model A: binary conv (1 word per channel) + float linear
# --------------------------------------------------------------------------------------------


def model_a() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            bconv=BinaryConv2d(
                4,
                8,
                3,
                padding=1,
                bias=False,
                weight_binarizer="clipped_ste",
                input_binarizer="approx_sign",
                scale="mean_abs",
            ),
            flat=nn.Flatten(),
            head=nn.Linear(200, 10),
        )
    )


# bconv, input (4, 5, 5), k3 p1 s1 -> output (8, 5, 5) = 200 elements
#   macs = 200 * 4*3*3 = 200 * 36 = 7200 ; bops = 7200 ; flops = 0
#   binary_params = 8*4*3*3 = 288 ; float_params = 0 (no bias, mean_abs has no params)
#   trained = 4 * 288 = 1152
#   deployed = 8 * ceil(36/64)=1 * 8 = 64  + 4*8 = 32  + 0  = 96
A_CONV = dict(
    input_bits=1,
    weight_bits=1,
    binary_params=288,
    float_params=0,
    macs=7200,
    bops=7200,
    flops=0,
    trained_bytes=1152,
    deployed_bytes=96,
)
# head: Linear(200, 10): params 2000 + 10 = 2010 ; macs 2000 ; trained = deployed = 8040
A_HEAD = dict(
    input_bits=32,
    weight_bits=32,
    binary_params=0,
    float_params=2010,
    macs=2000,
    bops=0,
    flops=2000,
    trained_bytes=8040,
    deployed_bytes=8040,
)
# totals: params 288 + 2010 = 2298 ; macs 9200 ; ops = 2000 + 7200/64 = 2000 + 112.5 = 2112.5
#         trained 4*2298 = 9192 ; deployed 96 + 8040 = 8136 ; compression 9192/8136
A_TOTALS = dict(
    total_params=2298,
    binary_params=288,
    float_params=2010,
    macs=9200,
    bops=7200,
    flops=2000,
    ops=2112.5,
    trained_bytes=9192,
    deployed_bytes=8136,
    compression=9192 / 8136,
)


def test_model_a_layers():
    s = bnnkit.summary(model_a(), (4, 5, 5))
    assert len(s.layers) == 2
    check_layer(s.layers[0], A_CONV)
    check_layer(s.layers[1], A_HEAD)


def test_model_a_totals():
    s = bnnkit.summary(model_a(), (4, 5, 5))
    check_totals(s, A_TOTALS)
    assert isinstance(s.ops, float)


def test_model_a_str_and_to_dict():
    s = bnnkit.summary(model_a(), (4, 5, 5))
    text = str(s)
    assert "bconv" in text and "head" in text
    d = s.to_dict()
    json.dumps(d)  # must be JSON-serialisable
    assert isinstance(d, dict)


def test_summary_is_repeatable_and_leaves_model_intact():
    m = model_a()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    s1 = bnnkit.summary(m, (4, 5, 5))
    s2 = bnnkit.summary(m, (4, 5, 5))
    assert len(s2.layers) == 2
    assert s2.macs == s1.macs == 9200
    assert s2.deployed_bytes == s1.deployed_bytes == 8136
    after = m.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_summary_counts_per_sample_not_per_batch():
    # input_size excludes the batch: a (4, 5, 5) input is one sample; a different spatial size
    # changes the conv MACs: (4, 3, 3) -> output 8*3*3 = 72 elements * 36 = 2592
    m = nn.Sequential(
        BinaryConv2d(
            4,
            8,
            3,
            padding=1,
            bias=False,
            weight_binarizer="clipped_ste",
            input_binarizer="approx_sign",
            scale="mean_abs",
        )
    )
    s = bnnkit.summary(m, (4, 3, 3))
    assert s.layers[0].macs == 2592
    assert s.bops == 2592


# --------------------------------------------------------------------------------------------
# Model B: two words per channel, stride 2, bias + learnable scale, BatchNorm outside layers,
# binary-weight / float-input conv, binary linear without scale
# --------------------------------------------------------------------------------------------


def model_b() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=BinaryConv2d(
                8,
                4,
                3,
                stride=2,
                padding=1,
                bias=True,
                weight_binarizer="clipped_ste",
                input_binarizer="approx_sign",
                scale="learnable",
            ),
            bn=nn.BatchNorm2d(4),
            conv2=BinaryConv2d(
                4,
                6,
                1,
                bias=False,
                weight_binarizer="clipped_ste",
                input_binarizer=None,
                scale="mean_abs",
            ),
            flat=nn.Flatten(),
            fc=BinaryLinear(
                54,
                5,
                bias=True,
                weight_binarizer="ste_sign",
                input_binarizer="approx_sign",
                scale=None,
            ),
        )
    )


# conv1, input (8, 6, 6), k3 s2 p1: out side = floor((6 + 2 - 3)/2) + 1 = 3 -> (4, 3, 3) = 36
#   C_in*k*k = 8*9 = 72 > 64 -> ceil(72/64) = 2 words per channel
#   macs = 36 * 72 = 2592 ; bops = 2592 ; flops 0
#   binary_params = 4*72 = 288 ; float_params = bias 4 + alpha 4 = 8
#   trained = 4 * (288 + 8) = 1184
#   deployed = 4*2*8 = 64  + 4*4 = 16  + 4 * bias 4 = 16  -> 96  (alpha is the scale's param)
B_CONV1 = dict(
    input_bits=1,
    weight_bits=1,
    binary_params=288,
    float_params=8,
    macs=2592,
    bops=2592,
    flops=0,
    trained_bytes=1184,
    deployed_bytes=96,
)
# bn: BatchNorm2d(4) -> 8 params outside conv/linear layers
# conv2, input (4, 3, 3), 1x1, binary weight / float input: out (6, 3, 3) = 54
#   macs = 54 * 4 = 216 -> flops 216, bops 0
#   binary_params = 6*4 = 24 ; float 0 ; trained 96
#   deployed = 6 * ceil(4/64)=1 * 8 = 48 + 4*6 = 24 + 0 -> 72
B_CONV2 = dict(
    input_bits=32,
    weight_bits=1,
    binary_params=24,
    float_params=0,
    macs=216,
    bops=0,
    flops=216,
    trained_bytes=96,
    deployed_bytes=72,
)
# fc: BinaryLinear(54, 5), binary both, no scale
#   macs = 54*5 = 270 = bops ; binary 270 ; float = bias 5 ; trained 4*275 = 1100
#   deployed = 5 * ceil(54/64)=1 * 8 = 40  + 4*5 = 20  + 4*5 (bias) = 20 -> 80
B_FC = dict(
    input_bits=1,
    weight_bits=1,
    binary_params=270,
    float_params=5,
    macs=270,
    bops=270,
    flops=0,
    trained_bytes=1100,
    deployed_bytes=80,
)
# totals: params 296 + 8 + 24 + 275 = 603 ; binary 288 + 24 + 270 = 582 ; float 8 + 8 + 5 = 21
#   macs 2592 + 216 + 270 = 3078 ; bops 2592 + 270 = 2862 ; flops 216
#   ops = 216 + 2862/64 = 216 + 44.71875 = 260.71875
#   trained = 4*603 = 2412 ; deployed = 96 + 72 + 80 + 4*8 (bn) = 280 ; compression 2412/280
B_TOTALS = dict(
    total_params=603,
    binary_params=582,
    float_params=21,
    macs=3078,
    bops=2862,
    flops=216,
    ops=260.71875,
    trained_bytes=2412,
    deployed_bytes=280,
    compression=2412 / 280,
)


def test_model_b_layers():
    s = bnnkit.summary(model_b(), (8, 6, 6))
    assert len(s.layers) == 3  # BatchNorm2d is not a conv/linear layer
    check_layer(s.layers[0], B_CONV1)
    check_layer(s.layers[1], B_CONV2)
    check_layer(s.layers[2], B_FC)


def test_model_b_totals():
    m = model_b()
    assert sum(p.numel() for p in m.parameters()) == 603  # sanity of the hand count
    s = bnnkit.summary(m, (8, 6, 6))
    check_totals(s, B_TOTALS)
    text = str(s)
    for name in ("conv1", "conv2", "fc"):
        assert name in text
    json.dumps(s.to_dict())


# --------------------------------------------------------------------------------------------
# Model C: float stride-2 stem, grouped binary conv, PReLU outside layers, float BinaryLinear
# --------------------------------------------------------------------------------------------


def model_c() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3, stride=2, padding=1),
            gconv=BinaryConv2d(
                8,
                8,
                3,
                padding=1,
                groups=2,
                bias=False,
                weight_binarizer="clipped_ste",
                input_binarizer="approx_sign",
                scale="mean_abs",
            ),
            act=nn.PReLU(8),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            cls=BinaryLinear(8, 3, bias=True),
        )
    )


# stem, input (3, 8, 8), k3 s2 p1: out side floor((8 + 2 - 3)/2) + 1 = 4 -> (8, 4, 4) = 128
#   macs = 128 * 27 = 3456 ; params 8*27 + 8 = 224 ; trained = deployed = 896
C_STEM = dict(
    input_bits=32,
    weight_bits=32,
    binary_params=0,
    float_params=224,
    macs=3456,
    bops=0,
    flops=3456,
    trained_bytes=896,
    deployed_bytes=896,
)
# gconv, groups 2: weight (8, 4, 3, 3) = 288 ; out (8, 4, 4) = 128 ; macs = 128 * 4*9 = 4608
#   deployed = 8 * ceil(36/64)=1 * 8 = 64 + 32 = 96 ; trained 1152
C_GCONV = dict(
    input_bits=1,
    weight_bits=1,
    binary_params=288,
    float_params=0,
    macs=4608,
    bops=4608,
    flops=0,
    trained_bytes=1152,
    deployed_bytes=96,
)
# cls: BinaryLinear(8, 3) without binarizers -> a float layer: params 24 + 3 = 27 ; macs 24
C_CLS = dict(
    input_bits=32,
    weight_bits=32,
    binary_params=0,
    float_params=27,
    macs=24,
    bops=0,
    flops=24,
    trained_bytes=108,
    deployed_bytes=108,
)
# totals: params 224 + 288 + 8 (PReLU) + 27 = 547 ; binary 288 ; float 224 + 8 + 27 = 259
#   macs 3456 + 4608 + 24 = 8088 ; bops 4608 ; flops 3480 ; ops = 3480 + 4608/64 = 3552
#   trained 4*547 = 2188 ; deployed 896 + 96 + 4*8 + 108 = 1132 ; compression 2188/1132
C_TOTALS = dict(
    total_params=547,
    binary_params=288,
    float_params=259,
    macs=8088,
    bops=4608,
    flops=3480,
    ops=3552.0,
    trained_bytes=2188,
    deployed_bytes=1132,
    compression=2188 / 1132,
)


def test_model_c_layers_and_totals():
    s = bnnkit.summary(model_c(), (3, 8, 8))
    assert len(s.layers) == 3
    check_layer(s.layers[0], C_STEM)
    check_layer(s.layers[1], C_GCONV)
    check_layer(s.layers[2], C_CLS)
    check_totals(s, C_TOTALS)


# --------------------------------------------------------------------------------------------
# Model D: a binarizer module with its own parameter, a LearnableScale module, and a bias
# --------------------------------------------------------------------------------------------


class BiasedSign(nn.Module):
    """RSign-like input binarizer with a learnable per-channel threshold (C params)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return approx_sign(x + self.bias)


def model_d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            dconv=BinaryConv2d(
                2,
                3,
                2,
                bias=True,
                weight_binarizer="clipped_ste",
                input_binarizer=BiasedSign(2),
                scale=LearnableScale(3, init="ones"),
            )
        )
    )


# dconv, input (2, 3, 3), k2 s1 p0: out (3, 2, 2) = 12 ; macs = 12 * 2*2*2 = 96 = bops
#   binary = 3*8 = 24 ; float = bias 3 + input binarizer 2 + alpha 3 = 8 ; trained 4*32 = 128
#   deployed = 3 * ceil(8/64)=1 * 8 = 24 + 4*3 = 12 + 4*(3 + 2) = 20 -> 56
D_CONV = dict(
    input_bits=1,
    weight_bits=1,
    binary_params=24,
    float_params=8,
    macs=96,
    bops=96,
    flops=0,
    trained_bytes=128,
    deployed_bytes=56,
)
# totals: ops = 0 + 96/64 = 1.5 ; compression 128/56
D_TOTALS = dict(
    total_params=32,
    binary_params=24,
    float_params=8,
    macs=96,
    bops=96,
    flops=0,
    ops=1.5,
    trained_bytes=128,
    deployed_bytes=56,
    compression=128 / 56,
)


def test_model_d_binarizer_and_scale_parameters():
    s = bnnkit.summary(model_d(), (2, 3, 3))
    assert len(s.layers) == 1
    check_layer(s.layers[0], D_CONV)
    check_totals(s, D_TOTALS)


@pytest.mark.parametrize(
    ("model", "sample", "batched"),
    [("resnet20", (3, 32, 32), (1, 3, 32, 32)), ("resnet20", (3, 32, 32), (8, 3, 32, 32)),
     ("mlp", (64,), (4, 64))],
)  # fmt: skip
def test_input_size_takes_the_sample_shape_or_the_batched_one(model, sample, batched):
    """``(C, H, W)`` and torchinfo's ``(N, C, H, W)`` give the same per-sample figures."""
    net = bnnkit.binarize_(bnnkit.create_model(model), "reactnet")
    a, b = bnnkit.summary(net, input_size=sample), bnnkit.summary(net, input_size=batched)
    assert a.input_size == b.input_size == sample
    assert (a.ops, a.to_dict()["layers"]) == (b.ops, b.to_dict()["layers"])
    assert a.ops > 0


def test_input_size_errors_name_the_argument():
    net = bnnkit.binarize_(bnnkit.create_model("resnet20"), "ste")
    with pytest.raises(bnnkit.ConfigError, match=r"input_size = \(3, 0, 32\) must be positive"):
        bnnkit.summary(net, input_size=(3, 0, 32))
