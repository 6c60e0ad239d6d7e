"""Bop (Helwegen et al., NeurIPS 2019; larq's ``Bop``) per equation, against the hand values of
``docs/specs/bop.md`` §7, written from the spec and the contract without the implementation.

Spec lines tested:

* §1.1 / §6.2 the update: m <- m + γ(g - m) (γ weights the *new* gradient, no bias
  correction, m never reset), flip where w·m > τ strictly, w <- -w (exactly ±1); None grads
  untouched; sign initialisation at construction (sign(0) = +1); validation (§6.5, §8 traps
  1-3, 9, 10).
* §6.3 the CaseOptimizer (shared group dicts, default first; AMP unscale; nested state dict),
  the recipe's ``optimizer.binary`` and ``gamma_at`` (tests K, L); §6.1 the ``bop`` method.
* §7.3 routing (N), refusals (O), AMP (P), checkpoints (Q) and the engine.
"""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.binarize import ApproxSign, ClippedSTESign, IdentitySTESign
from bnnkit.config import load_recipe
from bnnkit.config.schema import GammaScheduleConfig
from bnnkit.data import DataConfig, build_data
from bnnkit.errors import ConfigError
from bnnkit.methods import TrainState, binary_layers
from bnnkit.training import Trainer, build_optimizer
from bnnkit.training.bop import Bop, CaseOptimizer, gamma_at

F32 = torch.float32


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F32)


def par(values) -> nn.Parameter:
    return nn.Parameter(t(values))


def close(actual, expected, atol=1e-7) -> None:
    expected = expected if torch.is_tensor(expected) else t(expected)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def m_of(opt, p):
    return opt.state[p]["m"]


def has_m(opt, p) -> bool:
    return p in opt.state and "m" in opt.state[p]


def step(opt, p, g) -> None:
    p.grad = t(g)
    opt.step()


def children(opt) -> tuple[torch.optim.Optimizer, Bop]:
    """(default, binary) of a CaseOptimizer, found by type (attribute names are not in the contract)."""
    found = []
    for v in vars(opt).values():
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list | tuple) else [v]
        found += [o for o in items if isinstance(o, torch.optim.Optimizer) and o is not opt]
    binary = [o for o in found if isinstance(o, Bop)]
    default = [o for o in found if not isinstance(o, Bop)]
    assert len(binary) == 1 and len(default) == 1, found
    return default[0], binary[0]


# -- 7.1 the update rule -------------------------------------------------------------------------

A_W0 = [1.0, 1.0, -1.0, -1.0]
A_STEPS = [  # (g_t, m_t, w_t), test A
    ([0.4, -0.4, 0.4, -0.4], [0.2, -0.2, 0.2, -0.2], [-1.0, 1.0, -1.0, 1.0]),
    ([0.1, 0.1, 0.1, 0.1], [0.15, -0.05, 0.15, -0.05], [-1.0, 1.0, -1.0, 1.0]),
    ([0.3, 0.3, -0.3, 0.3], [0.225, 0.125, -0.075, 0.125], [-1.0, -1.0, -1.0, -1.0]),
]


def test_a_three_steps_gamma_half_tau_tenth():
    p = par(A_W0)
    opt = Bop([p], gamma=0.5, threshold=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["gamma"] == 0.5 and opt.param_groups[0]["threshold"] == 0.1
    assert not has_m(opt, p)  # created lazily, at the first step with a gradient
    opt.param_groups[0]["lr"] = 123.0  # what set_lr writes: ignored
    for g, m, w in A_STEPS:
        step(opt, p, g)
        assert m_of(opt, p).dtype == F32 and m_of(opt, p).shape == p.shape
        close(m_of(opt, p), m)
        assert torch.equal(p.detach(), t(w))  # exactly ±1; +g on a +1 weight flips it to -1


def test_defaults_and_closure():
    p = par(A_W0)
    opt = Bop([p])
    assert opt.param_groups[0]["gamma"] == 1e-4 and opt.param_groups[0]["threshold"] == 1e-8

    def closure():
        p.grad = t([1.0, 1.0, 1.0, 1.0])
        return torch.tensor(3.0)

    assert float(opt.step(closure)) == 3.0
    close(m_of(opt, p), [1e-4] * 4, atol=1e-12)


def test_b_c_ema_weights_the_new_gradient_and_is_not_reset_by_a_flip():
    # γ = 0.25, τ = 0.5, g = 1: m = 0.25, 0.4375, 0.578125 (flip at step 3), 0.68359375 (held).
    # The swapped form γ·m + (1 - γ)·g gives 0.75 and a flip at step 1; a reset gives m_4 = 0.25.
    p = par([1.0])  # a single element is not refused by the one-sign check
    opt = Bop([p], gamma=0.25, threshold=0.5)
    for m, w in ((0.25, 1.0), (0.4375, 1.0), (0.578125, -1.0), (0.68359375, -1.0)):
        step(opt, p, [1.0])
        close(m_of(opt, p), [m])
        assert p.item() == w


ONE_STEP = {  # w_0, γ, τ, g_1, m_1, w_1
    # D: w·m = τ exactly is not a flip (larq's literal rule: [+1, +1]; torch.sign: 0); just above
    "d_tie": ([1.0, -1.0], 1.0, 0.5, [0.5, -0.5], [0.5, -0.5], [1.0, -1.0]),
    "d_above": ([1.0, -1.0], 1.0, 0.4999, [0.5, -0.5], [0.5, -0.5], [-1.0, 1.0]),
    # E: a zero gradient at τ = 0 keeps both weights
    "e_zero_grad": ([1.0, -1.0], 0.5, 0.0, [0.0, 0.0], [0.0, 0.0], [1.0, -1.0]),
    # G: γ = 1 is a sign step: m = g, -sign(g) wherever sign(g) = sign(w)
    "g_sign_step": (A_W0, 1.0, 0.0, [0.3, -0.3, 0.3, -0.3], [0.3, -0.3, 0.3, -0.3],
                    [-1.0, 1.0, -1.0, 1.0]),
    # J: bnnkit decides on sign(w_0)·m_1 = 1e-7 > τ (larq: 0.05·1e-7 < τ, no flip)
    "j_first_step": ([0.05, -0.05], 1e-4, 1e-8, [1e-3, 1e-3], [1e-7, 1e-7], [-1.0, -1.0]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ONE_STEP))
def test_one_step_cases(case):
    w0, gamma, tau, g, m, w = ONE_STEP[case]
    p = par(w0)
    opt = Bop([p], gamma=gamma, threshold=tau)
    step(opt, p, g)
    close(m_of(opt, p), m, atol=1e-12)
    assert torch.equal(p.detach(), t(w))


def test_f_a_none_gradient_leaves_w_and_m_untouched():
    p1, p2 = par(A_W0), par([1.0, -1.0])
    opt = Bop([p1, p2], gamma=0.5, threshold=0.1)
    p1.grad, p2.grad = t(A_STEPS[0][0]), None
    opt.step()
    close(m_of(opt, p1), A_STEPS[0][1])
    assert torch.equal(p1.detach(), t(A_STEPS[0][2]))
    assert torch.equal(p2.detach(), t([1.0, -1.0])) and not has_m(opt, p2)
    # next step: p1 has state and no grad (its m must not decay), p2 gets its first gradient
    p1.grad, p2.grad = None, t([0.4, 0.4])
    opt.step()
    close(m_of(opt, p1), A_STEPS[0][1])
    assert torch.equal(p1.detach(), t(A_STEPS[0][2]))
    close(m_of(opt, p2), [0.2, 0.2])  # fresh zeros state: 0 + 0.5·(0.4 - 0)
    assert torch.equal(p2.detach(), t([-1.0, -1.0]))  # w·m = [0.2, -0.2]


def test_h_sign_initialisation_at_construction():
    p = par([0.3, -0.0, 0.0, -2.0])
    ptr = p.data_ptr()
    Bop([p])
    assert torch.equal(p.detach(), t([1.0, 1.0, 1.0, -1.0])) and p.data_ptr() == ptr  # in place
    assert not torch.signbit(p.detach()[1])  # -0.0 maps to +1, not -1
    q, r = par([1.0, -1.0, -1.0]), par([0.25])
    Bop([q, r])
    assert torch.equal(q.detach(), t([1.0, -1.0, -1.0])) and r.item() == 1.0  # idempotent; one
    for values in ([0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]):  # element is not refused, one sign is
        with pytest.raises(ConfigError):
            Bop([par(values)])


def test_i_back_and_forth_needs_a_large_reversal():
    p = par([1.0])
    opt = Bop([p], gamma=0.5, threshold=0.1)
    for g, m, w in ((0.4, 0.2, -1.0), (-0.8, -0.3, 1.0), (0.0, -0.15, 1.0)):
        step(opt, p, [g])
        close(m_of(opt, p), [m])
        assert p.item() == w


# -- 7.2 M: validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [({"gamma": 0.0}, "gamma"), ({"gamma": 1.5}, "gamma"), ({"gamma": -0.1}, "gamma"),
     ({"threshold": -1e-9}, "threshold")],
)  # fmt: skip
def test_m_bad_hyperparameters_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Bop([par(A_W0)], **kwargs)


def test_m_weight_decay_and_non_float32_are_refused_edges_accepted():
    with pytest.raises(ConfigError, match="weight_decay"):
        Bop([{"params": [par(A_W0)], "weight_decay": 1e-4}])
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        with pytest.raises(ConfigError):
            Bop([nn.Parameter(torch.tensor(A_W0, dtype=dtype))])
    Bop([{"params": [par(A_W0)], "weight_decay": 0.0}])
    Bop([par(A_W0)], gamma=1.0, threshold=0.0)


# -- 7.2 K, L: gamma schedules -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1000, 500])  # steps per epoch: the same values at any n
def test_k_step_decay_in_epochs(n):
    s = GammaScheduleConfig(name="step", milestones=(100, 200, 300, 400), factor=0.1)
    for e, want in ((0.0, 1e-4), (99 + (n - 1) / n, 1e-4), (100.0, 1e-5), (100 + 1 / n, 1e-5),
                    (250.0, 1e-6), (499 + (n - 1) / n, 1e-8)):  # fmt: skip
        assert gamma_at(s, 1e-4, e, 500) == pytest.approx(want, rel=1e-9), e


def test_l_linear_to_a_final_value_per_step_and_constant():
    s = GammaScheduleConfig(name="linear", final=1e-6)
    for e, want in ((0.0, 1e-4), (50.0, 5.05e-5), (100.0, 1e-6), (0.5, 9.9505e-5)):  # 0.5: not 1e-4
        assert gamma_at(s, 1e-4, e, 100) == pytest.approx(want, rel=1e-9), e
    c = GammaScheduleConfig()
    assert c.name == "constant" and [gamma_at(c, 3e-4, e, 10) for e in (0, 4.5, 10)] == [3e-4] * 3


# -- recipes ---------------------------------------------------------------------------------------


def recipe(binary=..., method="bop", **optimizer):
    r = {
        "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 3,
                 "synthetic_train": 32, "synthetic_val": 16, "batch_size": 8},
        "model": {"name": "mlp", "in_features": 12, "hidden": 16, "depth": 1},
        "method": method,
        "optimizer": {"name": "adam", "lr": 0.01, **optimizer},
        "schedule": {"name": "constant"},
        "training": {"epochs": 2},
    }  # fmt: skip
    if binary is ...:
        binary = {"name": "bop", "gamma": 1e-4, "threshold": 1e-8,
                  "gamma_schedule": {"name": "step", "milestones": [100], "factor": 0.1}}  # fmt: skip
    if binary is not None:
        r["optimizer"]["binary"] = binary
    return r


def test_recipe_optimizer_binary_section():
    b = load_recipe(recipe()).stages[0].optimizer.binary
    assert (b.name, b.gamma, b.threshold) == ("bop", 1e-4, 1e-8)
    s = b.gamma_schedule
    assert (s.name, tuple(s.milestones), s.factor) == ("step", (100,), 0.1)


@pytest.mark.parametrize("key, value", [("gamma", 0.0), ("gamma", 1.5), ("threshold", -1e-9)])
def test_recipe_bad_binary_values_name_the_field(key, value):
    binary = {"name": "bop", "gamma": 1e-4, "threshold": 1e-8, key: value}
    with pytest.raises(ConfigError, match=rf"optimizer\.binary\.{key}"):
        load_recipe(recipe(binary))


# -- 6.1 the method ------------------------------------------------------------------------------


def bop_model(method="bop", w=((1.0, -1.0, 1.0), (-1.0, 1.0, 1.0))):
    torch.manual_seed(0)
    lin = bnnkit.nn.BinaryLinear(3, 2, bias=True)
    with torch.no_grad():
        lin.weight.copy_(t(w))
    return bnnkit.binarize_(nn.Sequential(lin, nn.BatchNorm1d(2)), method), lin


@pytest.mark.parametrize("inputs, cls, gx0", [("ste_sign", ClippedSTESign, 1.0),
                                                ("approx_sign", ApproxSign, 1.5)])  # fmt: skip
def test_method_binarizers_forward_and_backward(inputs, cls, gx0):
    method = bnnkit.get_method("bop", inputs=inputs)
    lin = bnnkit.nn.BinaryLinear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(t([[0.3, -5.0]]))  # a float weight: the identity STE passes its gradient
    bnnkit.binarize_(nn.Sequential(lin), method)
    assert isinstance(lin.weight_binarizer, IdentitySTESign) and lin.scale is None
    assert isinstance(lin.input_binarizer, cls)
    x = t([[0.25, -2.0]]).requires_grad_(True)
    out = lin(x)  # sign(x)·sign(w) = 1·1 + (-1)(-1)
    assert out.item() == 2.0
    out.sum().backward()
    close(lin.weight.grad, [[1.0, -1.0]])  # = sign(x), unclipped at |w| = 5
    close(x.grad, [[gx0, 0.0]])  # clipped STE: 1; ApproxSign: 2 - 2·0.25
    assert bnnkit.get_method("bop").inputs == "ste_sign"


def test_method_param_groups():
    model = bnnkit.binarize_(bnnkit.create_model("mlp", in_features=12, hidden=16, depth=2,
                                                 num_classes=3), "bop")  # fmt: skip
    groups = {g["name"]: g for g in bnnkit.get_method("bop").param_groups(model)}
    binary = groups["binary"]
    assert binary["optimizer"] == "binary" and binary["weight_decay"] == 0.0
    weights = {id(layer.weight) for _, layer in binary_layers(model)}
    assert len(weights) == 2 and {id(p) for p in binary["params"]} == weights
    rest = {id(p) for p in model.parameters() if p.requires_grad} - weights
    assert {id(p) for p in groups["all"]["params"]} == rest


def test_composition_on_bop_is_refused():
    for top in ("ovsw", "rebnn"):
        with pytest.raises(ConfigError) as err:
            bnnkit.get_method({"name": top, "base": "bop"})
        assert top in str(err.value) and "bop" in str(err.value)


# -- 7.3 N, O: routing and refusals --------------------------------------------------------------


def test_n_case_routing_one_training_step():
    model, lin = bop_model()
    cfg = load_recipe(recipe(weight_decay=5e-4, decay_rule="all")).stages[0].optimizer
    opt = build_optimizer(model, bnnkit.get_method("bop"), cfg)
    assert isinstance(opt, CaseOptimizer) and isinstance(opt, torch.optim.Optimizer)
    default, bop = children(opt)
    assert isinstance(default, torch.optim.Adam)
    assert all(g["gamma"] == 1e-4 and g["threshold"] == 1e-8 for g in bop.param_groups)
    # the same group dicts, default first
    assert len(opt.param_groups) == len(default.param_groups) + len(bop.param_groups)
    assert all(a is b for a, b in zip(opt.param_groups, default.param_groups + bop.param_groups,
                                      strict=True))  # fmt: skip
    for g in opt.param_groups:
        assert g.get("weight_decay", 0.0) == (0.0 if "gamma" in g else 5e-4)
    assert [id(p) for g in bop.param_groups for p in g["params"]] == [id(lin.weight)]
    for g in opt.param_groups:
        g["lr"] = 0.05
    assert default.param_groups[0]["lr"] == 0.05
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    model.train()
    model(x).pow(2).sum().backward()
    bias0 = lin.bias.detach().clone()
    opt.step()
    assert set(lin.weight.detach().abs().flatten().tolist()) == {1.0}
    floats = [lin.bias, model[1].weight, model[1].bias]
    assert {id(p) for p in default.state} == {id(p) for p in floats}
    assert {id(p) for p in bop.state} == {id(lin.weight)} and "m" in bop.state[lin.weight]
    assert not torch.equal(lin.bias.detach(), bias0)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_o_case_optimizer_refuses_a_shared_parameter():
    p = par(A_W0)
    with pytest.raises(ConfigError):
        CaseOptimizer(torch.optim.SGD([p], lr=0.1), Bop([p]))


@pytest.mark.parametrize("method, binary, other", [("bop", None, "bop"), ("ste", ..., "ste")])
def test_o_binary_section_iff_the_method_has_a_binary_group(method, binary, other):
    with pytest.raises(ConfigError) as err:
        stage = load_recipe(recipe(binary, method=method)).stages[0]
        model = bnnkit.create_model("mlp", in_features=12, hidden=16, depth=1, num_classes=3)
        build_optimizer(bnnkit.binarize_(model, stage.method), stage.method, stage.optimizer)
    msg = str(err.value)
    assert "optimizer.binary" in msg and re.search(rf"\b{other}\b", msg), msg


# -- 7.3 P, Q: AMP unscale and checkpoints -------------------------------------------------------


def two_param_case(f0=0.5, momentum=0.0):
    p, f = par(A_W0), par([f0])
    opt = CaseOptimizer(torch.optim.SGD([f], lr=0.1, momentum=momentum),
                        Bop([p], gamma=0.5, threshold=0.1))  # fmt: skip
    return p, f, opt


@pytest.mark.parametrize("inf_in", ["binary", "default"])
def test_p_amp_unscales_bop_gradients_and_skips_inf_steps(inf_in):
    p, f, opt = two_param_case()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = t(A_STEPS[0][0])
    scaler.scale((p * g).sum() + 2.0 * f.sum()).backward()
    assert p.grad[0].item() == pytest.approx(1024 * 0.4)
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    bop = children(opt)[1]
    close(m_of(bop, p), A_STEPS[0][1])  # true gradient units, not 1024 times
    assert torch.equal(p.detach(), t(A_STEPS[0][2]))
    close(f.detach(), [0.3])
    m1, w1 = m_of(bop, p).clone(), p.detach().clone()
    opt.zero_grad(set_to_none=True)
    scaler.scale((p * g).sum() + 2.0 * f.sum()).backward()
    (p if inf_in == "binary" else f).grad[0] = math.inf
    scaler.unscale_(opt)
    scaler.step(opt)
    assert torch.equal(m_of(bop, p), m1) and torch.equal(p.detach(), w1)
    close(f.detach(), [0.3])


def test_q_state_dict_round_trip():
    holder = nn.Module()
    holder.p, holder.f, opt = two_param_case(f0=1.0, momentum=0.9)
    for g, _, _ in A_STEPS[:2]:
        holder.p.grad, holder.f.grad = t(g), t([1.0])
        opt.step()
    assert set(opt.state_dict()) == {"default", "binary"}
    torch.save({"model": holder.state_dict(), "opt": opt.state_dict()}, buf := io.BytesIO())
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = nn.Module()
    fresh.p, fresh.f, opt2 = two_param_case(f0=0.0, momentum=0.9)
    fresh.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    fresh.p.grad, fresh.f.grad = t(A_STEPS[2][0]), t([1.0])
    opt2.step()
    close(m_of(children(opt2)[1], fresh.p), A_STEPS[2][1])  # m_0 = 0 instead would flip idx 1, 2, 3
    assert torch.equal(fresh.p.detach(), t(A_STEPS[2][2]))
    close(fresh.f.detach(), [0.439], atol=1e-6)  # SGD momentum buffer restored (else 0.61)


# -- the engine ------------------------------------------------------------------------------------


def trainer_for(binary):
    stage = load_recipe(recipe(binary)).stages[0]
    torch.manual_seed(0)
    model = bnnkit.create_model("mlp", in_features=12, hidden=16, depth=1, num_classes=3)
    bnnkit.binarize_(model, stage.method)
    opt = build_optimizer(model, stage.method, stage.optimizer)
    data = build_data(DataConfig(**recipe()["data"]), seed=0)
    return Trainer(stage, model, opt), model, data


def test_engine_writes_the_gamma_schedule_every_step(monkeypatch):
    binary = {"name": "bop", "gamma": 1e-2, "threshold": 1e-8,
              "gamma_schedule": {"name": "linear", "final": 1e-6}}  # fmt: skip
    trainer, _, data = trainer_for(binary)
    seen = []
    original = Bop.step

    def recording(self, *args, **kwargs):
        seen.append([g["gamma"] for g in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Bop, "step", recording)
    trainer.train_epoch(data.train, 0)
    trainer.train_epoch(data.train, 1)
    n = len(data.train)
    assert n == 4 and len(seen) == 8
    expected = [1e-6 + (1e-2 - 1e-6) * (1 - (e + i / n) / 2) for e in (0, 1) for i in range(n)]
    for row, want in zip(seen, expected, strict=True):
        assert row == pytest.approx([want] * len(row), rel=1e-9)


def test_engine_train_step_flips_binary_weights_and_trains_floats():
    trainer, model, data = trainer_for({"name": "bop", "gamma": 1.0, "threshold": 0.0})
    ((_, layer),) = binary_layers(model)
    default, bop = children(trainer.optimizer)
    w0 = layer.weight.detach().clone()
    assert set(w0.abs().flatten().tolist()) == {1.0}  # sign-initialised by the optimizer
    fc0 = model.fc.weight.detach().clone()
    x, y = next(iter(data.train))
    trainer.train_step(x, y, TrainState())
    g = layer.weight.grad
    flip = w0 * g > 0  # γ = 1, τ = 0: m = g, flip where w·g > 0
    assert 0 < int(flip.sum()) < flip.numel()
    close(bop.state[layer.weight]["m"], g)
    assert torch.equal(layer.weight.detach(), torch.where(flip, -w0, w0))
    assert not torch.equal(model.fc.weight.detach(), fc0)
    assert id(layer.weight) not in {id(p) for p in default.state}
