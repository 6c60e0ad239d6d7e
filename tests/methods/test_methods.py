"""Method registry, validation and conformance tests generated over ``list_methods()``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.binarize import (
    ApproxSign,
    ClippedSTESign,
    EDESign,
    IdentitySTESign,
    LearnableScale,
    MeanAbsScale,
    PeriodicSign,
    StdNormApproxSign,
)
from bnnkit.errors import ConfigError
from bnnkit.methods import Method, TrainState, binarize_, binary_layers, get_method, list_methods
from bnnkit.methods.adabin import AdaBinActivation, AdaBinAffineScale, AdaBinWeightSign
from bnnkit.methods.irnet import LibraPBSign, PowerOfTwoScale, ede_schedule
from bnnkit.methods.ovsw import StandardizedMeanAbsScale
from bnnkit.methods.rbnn import RBNNActSign, RBNNWeightSign
from bnnkit.methods.rebnn import GradRecordingScale
from bnnkit.methods.recu import ReCUSign
from bnnkit.nn import RSign

# What each built-in method attaches: (weight binarizer, input binarizer, scale) types.
# A new method must declare itself here, so the conformance test below covers it.
EXPECTED = {
    "float": (None, None, None),
    "adabin": (AdaBinWeightSign, AdaBinActivation, AdaBinAffineScale),
    "ste": (ClippedSTESign, ClippedSTESign, None),
    "xnor": (ClippedSTESign, ClippedSTESign, MeanAbsScale),
    "bireal": (ClippedSTESign, ApproxSign, MeanAbsScale),
    "irnet": (LibraPBSign, EDESign, PowerOfTwoScale),
    "reactnet": (ClippedSTESign, RSign, MeanAbsScale),
    "recu": (ReCUSign, StdNormApproxSign, LearnableScale),
    "rebnn": (ClippedSTESign, RSign, GradRecordingScale),
    "ovsw": (IdentitySTESign, StdNormApproxSign, StandardizedMeanAbsScale),
    "biper": (PeriodicSign, StdNormApproxSign, LearnableScale),
    "rbnn": (RBNNWeightSign, RBNNActSign, LearnableScale),
    "bop": (IdentitySTESign, ClippedSTESign, None),
}


def small_model(num_classes: int = 4) -> nn.Module:
    return bnnkit.create_model("resnet20", num_classes=num_classes)


def _type(m):
    return None if m is None else type(m)


def test_every_registered_method_is_covered():
    assert set(list_methods()) == set(EXPECTED)


@pytest.mark.parametrize("name", list_methods())
def test_method_is_a_frozen_dataclass_with_a_name(name):
    method = get_method(name)
    assert isinstance(method, Method) and method.name == name
    assert dataclasses.is_dataclass(method)
    for f in dataclasses.fields(method):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(method, f.name, getattr(method, f.name))
    assert get_method(method.to_config()) == method


@pytest.mark.parametrize("name", list_methods())
def test_binarize_attaches_the_right_modules(name):
    model = binarize_(small_model(), name)
    layers = binary_layers(model)
    assert len(layers) == 18
    for _, layer in layers:
        got = (_type(layer.weight_binarizer), _type(layer.input_binarizer), _type(layer.scale))
        assert got == EXPECTED[name]
        assert layer.method_name == name


# RBNN at its default θ = π/2 passes no task gradient to the latent weights (∂w3/∂w2 =
# 1 - |sin θ| = 0 exactly; docs/specs/rbnn.md 2.5): the conformance run starts it off π/2.
STEP_FIELDS = {"rbnn": {"theta_init": 1.0}}


@pytest.mark.parametrize("name", list_methods())
def test_three_steps_give_finite_loss_and_move_latent_weights(name, run_steps):
    method = get_method(name, **STEP_FIELDS.get(name, {}))
    model = binarize_(small_model(), method)
    before = [layer.weight.detach().clone() for _, layer in binary_layers(model)]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    losses = run_steps(model, method, x, y, steps=3)
    assert all(math.isfinite(v) for v in losses)
    after = [layer.weight.detach() for _, layer in binary_layers(model)]
    changed = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed == len(before)


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).binarizes_weights])
def test_binarized_weights_take_two_values_per_output_channel(name):
    """±α per channel; for a method with affine sets (AdaBin), {c - d, c + d} with the centre
    the channel mean and the half-gap the channel's population std."""
    model = binarize_(small_model(), name)
    symmetric = get_method(name).symmetric_weight_set
    for _, layer in binary_layers(model):
        w = layer.binarized_weight().detach().flatten(1)
        latent = layer.weight.detach().flatten(1)
        for row, wrow in zip(w, latent, strict=True):
            values = row.unique()
            assert len(values) <= 2
            if not symmetric:
                assert len(values) == 2
                centre, half = values.mean(), (values[1] - values[0]) / 2
                assert torch.isclose(centre, wrow.mean(), atol=1e-6)
                assert torch.isclose(half, wrow.std(unbiased=False), atol=1e-6)
                continue
            assert torch.allclose(values.abs(), values.abs()[0].expand_as(values))
            assert values.abs()[0] > 0
            if len(values) == 2:
                assert torch.isclose(values[0], -values[1])


def test_non_binary_weight_methods_keep_real_weights():
    model = binarize_(small_model(), get_method("reactnet", weights="float"))
    _, layer = binary_layers(model)[0]
    assert torch.equal(layer.binarized_weight(), layer.weight)
    assert isinstance(layer.input_binarizer, RSign)


def test_unknown_method_and_bad_fields_are_clear_errors():
    # one error type (bnnkit.errors.ConfigError, a ValueError) naming the field, value and range
    with pytest.raises(ConfigError, match=r"'recuu' is not a known method; allowed: .*reactnet"):
        get_method("recuu")
    with pytest.raises(ConfigError, match=r"tmin: not a hyperparameter of irnet; allowed: t_min"):
        get_method("irnet", tmin=0.1)
    with pytest.raises(
        ConfigError, match=r"t_min = 0.0 is out of range for irnet; allowed: \(0, inf\)"
    ):
        get_method("irnet", t_min=0.0)
    with pytest.raises(ConfigError, match=r"t_min = 20.0 must not exceed t_max \(10.0\)"):
        get_method("irnet", t_min=20.0)
    with pytest.raises(ConfigError, match=r"weights = 'half' is not valid for reactnet"):
        get_method("reactnet", weights="half")
    with pytest.raises(ValueError, match="clip_value"):
        get_method("ste", clip_value=-1)
    with pytest.raises(ValueError, match="takes no hyperparameters"):
        get_method("xnor", alpha=1)


def test_get_method_accepts_dicts_and_instances():
    m = get_method({"name": "irnet", "t_min": 0.1})
    assert m == get_method("irnet", t_min=0.1)
    assert get_method(m, t_max=5.0).t_max == 5.0


# -- IR-Net --------------------------------------------------------------------------------------


def test_irnet_schedule_hand_values():
    # log10 t = log10(1e-3) + (log10(10) - log10(1e-3)) * e / E = -3 + 4 e / E
    assert ede_schedule(0, 400, 1e-3, 10.0) == pytest.approx((1e-3, 1e3))
    assert ede_schedule(200, 400, 1e-3, 10.0) == pytest.approx((0.1, 10.0))  # -3 + 2 = -1
    assert ede_schedule(300, 400, 1e-3, 10.0) == pytest.approx((1.0, 1.0))  # -3 + 3 = 0
    t, k = ede_schedule(399, 400, 1e-3, 10.0)  # last epoch stays below T_max
    assert t == pytest.approx(10 ** (-3 + 4 * 399 / 400)) and t < 10.0 and k == 1.0


def test_irnet_on_step_start_writes_t_and_k_into_every_layer():
    method = get_method("irnet")
    model = binarize_(small_model(), method)
    layers = binary_layers(model)
    method.on_step_start(layers, TrainState(step=0, epoch=200, epochs=400))
    for _, layer in layers:
        for b in (layer.weight_binarizer, layer.input_binarizer):
            assert float(b.t) == pytest.approx(0.1) and float(b.k) == pytest.approx(10.0)


def test_libra_pb_weights_and_power_of_two_scale_by_hand():
    layer = bnnkit.nn.BinaryConv2d(1, 2, (1, 8), bias=False)
    w = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 10.0], [1, 2, 3, 4, 5, 6, 7, 8.0]]).view(2, 1, 1, 8)
    with torch.no_grad():
        layer.weight.copy_(w)
    binarize_(nn.Sequential(layer), "irnet")
    # channel 0: mean 1.25, unbiased var = (7 * 1.25^2 + 8.75^2) / 7 = 12.5, std 3.5355;
    # |w_hat| = 0.35355 (x7), 2.47487 -> mean 0.61872 -> log2 = -0.693 -> round -1 -> s = 0.5.
    # signs: w_hat < 0 for the zeros, > 0 for the 10.
    # channel 1: w_hat symmetric around 0, mean|w_hat| = 0.8367 -> log2 -0.257 -> s = 1.
    bw = layer.binarized_weight().view(2, 8)
    assert torch.equal(bw[0], torch.tensor([-0.5] * 7 + [0.5]))
    assert torch.equal(bw[1], torch.tensor([-1.0] * 4 + [1.0] * 4))


# -- Bi-Real / ReActNet vs XNOR weight gradients ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "alpha_in_grad"), [("bireal", False), ("reactnet", False), ("xnor", True)]
)
def test_weight_gradient_with_and_without_alpha(name, alpha_in_grad):
    layer = bnnkit.nn.BinaryLinear(4, 2, bias=False)
    w = torch.tensor([[0.5, -1.5, 0.25, 2.0], [0.1, -0.2, 0.3, -0.4]])
    with torch.no_grad():
        layer.weight.copy_(w)
    binarize_(nn.Sequential(layer), name, filter_fn=lambda m, n: True)
    bw = layer.binarized_weight()
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 1.0, -2.0, 2.0]])
    bw.backward(g)
    mask = (w.abs() <= 1).float()
    alpha = w.abs().mean(dim=1, keepdim=True)  # [1.0625, 0.25]
    expected = g * mask * (alpha if alpha_in_grad else 1.0)
    assert torch.allclose(layer.weight.grad, expected)


def test_reactnet_param_groups_follow_the_official_rule():
    model = binarize_(bnnkit.create_model("reactnet_resnet18", num_classes=10), "reactnet")
    groups = {g["name"]: g for g in get_method("reactnet").param_groups(model)}
    decay = {id(p) for p in groups["decay"]["params"]}
    shift_suffixes = ("input_binarizer.bias", "shift_in.bias", "shift_out.bias")
    for n, p in model.named_parameters():
        # official: 4-D or 'conv' in name; LearnableBias params are (1, C, 1, 1) there, i.e. 4-D
        assert (id(p) in decay) == (p.ndim == 4 or "conv" in n or n.endswith(shift_suffixes)), n
    assert groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {n for n, p in model.named_parameters() if id(p) not in decay}
    assert "fc.weight" in no_decay and "layer1.0.rprelu.prelu.weight" in no_decay
    assert "layer1.0.rprelu.shift_in.bias" not in no_decay
