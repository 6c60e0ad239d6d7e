"""Hand-computed spec tests for ``bnnkit.diagnostics.Dynamics`` / ``FlipRatio``.

Written from the public contract only (independently of the implementation).  Every expected
number below is worked out by hand in the comments; nothing re-implements the tracker.

Sign convention: sign(w) = +1 for w >= 0, -1 for w < 0 (so sign(0) = +1).

The main hand-made sequence (model = Sequential(L0 = BinaryLinear(2, 2), L1 = BinaryLinear(2, 1)),
named "0" (4 weights) and "1" (2 weights), 6 tracked weights in all).  Weights are listed
flattened, L0 = [a, b, c, d] (row-major, rows = output channels), L1 = [e, f]:

  W0 (construction)  L0 = [ 0.5, -0.5,  1.0, -1.0]  signs + - + -
                     L1 = [ 0.2, -0.2]              signs + -
  W1 (update 1)      L0 = [-0.5, -0.5,  0.0, -1.0]  signs - - + -   flips: a        (c: 0.0 is +)
                     L1 = [ 0.2,  0.0]              signs + +       flips: f        (0.0 is +)
                     back-and-forth: none at the first update
  W2 (update 2)      L0 = [ 0.3, -0.5, -0.1, -1.0]  signs + - - -   flips: a, c     bf: a
                     L1 = [ 0.2, -0.3]              signs + -       flips: f        bf: f
  W3 (update 3)      L0 = [ 0.3,  0.5, -0.1, -1.0]  signs + + - -   flips: b        bf: none
                     L1 = [-0.2, -0.3]              signs - -       flips: e        bf: none

Per-update fractions:
            flip L0  flip L1  flip all   bf L0  bf L1  bf all
  update 1    1/4      1/2     2/6        0      0      0
  update 2    2/4      1/2     3/6       1/4    1/2    2/6
  update 3    1/4      1/2     2/6        0      0      0

Cumulative after update 3: flip counts L0 = [2, 1, 1, 0], L1 = [1, 2]; never flipped: only d;
silent L0 = 1/4, L1 = 0/2, all = 1/6.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnnkit.diagnostics import Dynamics, FlipRatio, laplace_entropy, quantization_error
from bnnkit.nn import BinaryConv2d, BinaryLinear

TOL = 1e-6

W0 = ([[0.5, -0.5], [1.0, -1.0]], [[0.2, -0.2]])
W1 = ([[-0.5, -0.5], [0.0, -1.0]], [[0.2, 0.0]])
W2 = ([[0.3, -0.5], [-0.1, -1.0]], [[0.2, -0.3]])
W3 = ([[0.3, 0.5], [-0.1, -1.0]], [[-0.2, -0.3]])


def two_layer_model() -> nn.Sequential:
    model = nn.Sequential(
        BinaryLinear(2, 2, bias=False, weight_binarizer="ste_sign"),
        BinaryLinear(2, 1, bias=False, weight_binarizer="ste_sign"),
    )
    set_weights(model, W0)
    return model


def set_weights(model: nn.Module, ws) -> None:
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(ws[0]))
        model[1].weight.copy_(torch.tensor(ws[1]))


def val(metrics: dict, key: str) -> float:
    assert key in metrics, f"missing key {key!r}; got {sorted(metrics)}"
    v = metrics[key]
    assert isinstance(v, torch.Tensor) and v.dim() == 0, f"{key} is not a 0-d tensor: {v!r}"
    return float(v)


def check(metrics: dict, expected: dict) -> None:
    for key, exp in expected.items():
        assert val(metrics, key) == pytest.approx(exp, abs=TOL), key


# Final weights W3: qerr / entropy by hand.
#   L0 = [[0.3, 0.5], [-0.1, -1.0]]
#     channel 0: alpha = (0.3 + 0.5) / 2 = 0.4, signs + + : (0.3-0.4)^2 = 0.01, (0.5-0.4)^2 = 0.01
#     channel 1: alpha = (0.1 + 1.0) / 2 = 0.55, signs - - : (-0.1+0.55)^2 = 0.2025, (-1+0.55)^2 = 0.2025
#     qerr = (0.01 + 0.01 + 0.2025 + 0.2025) / 4 = 0.425 / 4 = 0.10625
#     mean|w| = 1.9 / 4 = 0.475 -> entropy = 1 + ln(0.95)
#   L1 = [[-0.2, -0.3]]: alpha = 0.25, errors 0.0025, 0.0025 -> qerr = 0.0025
#     mean|w| = 0.25 -> entropy = 1 + ln(0.5)
#   all (numel weighted 4:2): qerr = (4*0.10625 + 2*0.0025)/6 = 0.43/6
#                             entropy = (4*(1+ln 0.95) + 2*(1+ln 0.5))/6
QERR_W3 = {"0": 0.10625, "1": 0.0025, "all": 0.43 / 6}
ENT_W3 = {
    "0": 1 + math.log(0.95),
    "1": 1 + math.log(0.5),
    "all": (4 * (1 + math.log(0.95)) + 2 * (1 + math.log(0.5))) / 6,
}


# --------------------------------------------------------------------------------------------
# Layer selection and errors
# --------------------------------------------------------------------------------------------


def test_default_selection_tracks_binarized_weights_in_module_order():
    model = nn.Sequential(
        BinaryLinear(2, 2, bias=False, weight_binarizer="ste_sign"),  # "0": tracked
        BinaryLinear(2, 2, bias=False, weight_binarizer=None),  # "1": float weight, not tracked
        nn.Linear(2, 2, bias=False),  # "2": plain, not tracked by default
        nn.Sequential(BinaryLinear(2, 3, bias=False, weight_binarizer="ste_sign")),  # "3.0"
        BinaryConv2d(1, 2, 3, bias=False, weight_binarizer="ste_sign"),  # "4": tracked
    )
    dyn = Dynamics(model)
    assert isinstance(dyn, nn.Module)
    assert dyn.layer_names == ["0", "3.0", "4"]
    counts = dyn.flip_counts()
    assert list(counts) == ["0", "3.0", "4"]
    assert counts["3.0"].shape == (3, 2)
    assert counts["4"].shape == (2, 1, 3, 3)


def test_explicit_layers_on_plain_linear_in_given_order():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    dyn = Dynamics(model, layers=["2", "0"])
    assert dyn.layer_names == ["2", "0"]
    # One update: layer "0" -> [[-1, -1], [1, -1]]: 1 flip of 4; layer "2" -> [[1, -1]]: 1 flip of 2.
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, -1.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
    dyn.update()
    counts = dyn.flip_counts()
    assert counts["0"].tolist() == [[1, 0], [0, 0]]
    assert counts["2"].tolist() == [[0, 1]]
    # flip/all = 2 / 6 (not the unweighted mean (1/4 + 1/2) / 2 = 3/8)
    check(dyn.step_metrics(), {"flip/0": 0.25, "flip/2": 0.5, "flip/all": 2 / 6})


def test_nothing_tracked_raises_mentioning_layers():
    plain = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match="layers"):
        Dynamics(plain)
    float_binary = nn.Sequential(BinaryLinear(2, 2, weight_binarizer=None))
    with pytest.raises(ValueError, match="layers"):
        Dynamics(float_binary)
    # layers=[] tracks exactly nothing (not "the default selection")
    with pytest.raises(ValueError, match="layers"):
        Dynamics(two_layer_model(), layers=[])


def test_unknown_layer_name_raises_naming_it():
    with pytest.raises(ValueError, match="no_such_layer"):
        Dynamics(two_layer_model(), layers=["0", "no_such_layer"])


# --------------------------------------------------------------------------------------------
# The main sequence
# --------------------------------------------------------------------------------------------


def test_sequence_per_update_window_metrics():
    model = two_layer_model()
    dyn = Dynamics(model)
    assert dyn.layer_names == ["0", "1"]

    set_weights(model, W1)
    dyn.update()
    m = dyn.step_metrics()
    # update 1 alone; silent after u1: L0 b,c,d = 3/4, L1 e = 1/2, all 4/6
    check(
        m,
        {
            "flip/0": 0.25, "flip/1": 0.5, "flip/all": 2 / 6,
            "backforth/0": 0.0, "backforth/1": 0.0, "backforth/all": 0.0,
            "silent/0": 0.75, "silent/1": 0.5, "silent/all": 4 / 6,
        },
    )  # fmt: skip
    assert not any(k.startswith("dead/") for k in m)

    set_weights(model, W2)
    dyn.update()
    # update 2 alone; silent after u2: L0 b,d = 2/4, L1 e = 1/2, all 3/6
    check(
        dyn.step_metrics(),
        {
            "flip/0": 0.5, "flip/1": 0.5, "flip/all": 0.5,
            "backforth/0": 0.25, "backforth/1": 0.5, "backforth/all": 2 / 6,
            "silent/0": 0.5, "silent/1": 0.5, "silent/all": 0.5,
        },
    )  # fmt: skip

    set_weights(model, W3)
    dyn.update()
    # update 3 alone: bf is 0 (b and e did not flip at update 2 even though a and f did)
    check(
        dyn.step_metrics(),
        {
            "flip/0": 0.25, "flip/1": 0.5, "flip/all": 2 / 6,
            "backforth/0": 0.0, "backforth/1": 0.0, "backforth/all": 0.0,
            "silent/0": 0.25, "silent/1": 0.0, "silent/all": 1 / 6,
        },
    )  # fmt: skip


def test_sequence_window_mean_over_three_updates_and_key_set():
    model = two_layer_model()
    dyn = Dynamics(model)
    for ws in (W1, W2, W3):
        set_weights(model, ws)
        dyn.update()
    m = dyn.step_metrics()
    # flip/0   = (1/4 + 2/4 + 1/4) / 3 = 1/3
    # flip/1   = (1/2 + 1/2 + 1/2) / 3 = 1/2
    # flip/all = (2/6 + 3/6 + 2/6) / 3 = 7/18   (unweighted layer mean would be 5/12)
    # bf/0 = (0 + 1/4 + 0)/3 = 1/12 ; bf/1 = (0 + 1/2 + 0)/3 = 1/6 ; bf/all = (2/6)/3 = 1/9
    check(
        m,
        {
            "flip/0": 1 / 3, "flip/1": 0.5, "flip/all": 7 / 18,
            "backforth/0": 1 / 12, "backforth/1": 1 / 6, "backforth/all": 1 / 9,
            "silent/0": 0.25, "silent/1": 0.0, "silent/all": 1 / 6,
        },
    )  # fmt: skip
    check(m, {f"qerr/{k}": v for k, v in QERR_W3.items()})
    check(m, {f"entropy/{k}": v for k, v in ENT_W3.items()})
    expected_keys = {
        f"{p}/{n}"
        for p in ("flip", "backforth", "silent", "qerr", "entropy")
        for n in ("0", "1", "all")
    }
    assert set(m) == expected_keys

    # A second call right after a reset: no update in the window -> no flip/backforth keys,
    # no record_gradients -> no dead keys; silent/qerr/entropy are current values.
    m2 = dyn.step_metrics()
    assert not any(k.split("/")[0] in ("flip", "backforth", "dead") for k in m2), sorted(m2)
    check(m2, {"silent/0": 0.25, "silent/1": 0.0, "silent/all": 1 / 6})
    check(m2, {f"qerr/{k}": v for k, v in QERR_W3.items()})

    # update 4 with no change at all: 0 flips; a weight that flipped at update 3 but not at 4
    # is not back-and-forth.
    dyn.update()
    check(
        dyn.step_metrics(),
        {
            "flip/0": 0.0, "flip/1": 0.0, "flip/all": 0.0,
            "backforth/0": 0.0, "backforth/1": 0.0, "backforth/all": 0.0,
            "silent/all": 1 / 6,
        },
    )  # fmt: skip


def test_counts_last_flip_steps_never_flipped_default_counter():
    model = two_layer_model()
    dyn = Dynamics(model)
    lf = dyn.last_flip_steps()
    assert lf["0"].tolist() == [[-1, -1], [-1, -1]] and lf["1"].tolist() == [[-1, -1]]
    assert dyn.flip_counts()["0"].tolist() == [[0, 0], [0, 0]]
    assert dyn.never_flipped()["1"].tolist() == [[True, True]]
    for ws in (W1, W2, W3):
        set_weights(model, ws)
        dyn.update()  # internal counter: 1, 2, 3
    counts = dyn.flip_counts()
    # a: u1,u2 -> 2 ; b: u3 -> 1 ; c: u2 -> 1 ; d: 0 ; e: u3 -> 1 ; f: u1,u2 -> 2
    assert counts["0"].dtype == torch.int32 and counts["1"].dtype == torch.int32
    assert counts["0"].shape == (2, 2) and counts["1"].shape == (1, 2)
    assert counts["0"].tolist() == [[2, 1], [1, 0]]
    assert counts["1"].tolist() == [[1, 2]]
    last = dyn.last_flip_steps()
    # last flips: a 2, b 3, c 2, d never ; e 3, f 2
    assert last["0"].dtype == torch.int64 and last["1"].dtype == torch.int64
    assert last["0"].tolist() == [[2, 3], [2, -1]]
    assert last["1"].tolist() == [[3, 2]]
    never = dyn.never_flipped()
    assert never["0"].dtype == torch.bool
    assert never["0"].tolist() == [[False, False], [False, True]]
    assert never["1"].tolist() == [[False, False]]


@pytest.mark.parametrize("max_steps", [None, 1000])
def test_last_flip_steps_explicit_steps_exact(max_steps):
    model = two_layer_model()
    dyn = Dynamics(model, max_steps=max_steps)
    for step, ws in zip((10, 20, 30), (W1, W2, W3), strict=True):
        set_weights(model, ws)
        dyn.update(step=step)
    last = dyn.last_flip_steps()
    # a last flipped at u2 (20), b at u3 (30), c at u2 (20), d never; e at u3 (30), f at u2 (20)
    assert last["0"].tolist() == [[20, 30], [20, -1]]
    assert last["1"].tolist() == [[30, 20]]
    assert dyn.flip_counts()["0"].tolist() == [[2, 1], [1, 0]]


def test_last_flip_steps_coarse_resolution_with_large_max_steps():
    # max_steps = 10**6: smallest k with 10**6 >> k <= 32767 is k = 5 (10**6 >> 5 = 31250,
    # 10**6 >> 4 = 62500), so a step is stored at a resolution of 32 and rounded down:
    # the returned value v satisfies step - 32 < v <= step; never-flipped stays -1.
    model = two_layer_model()
    dyn = Dynamics(model, max_steps=10**6)
    set_weights(model, W1)
    dyn.update(step=1000)
    set_weights(model, W2)
    dyn.update(step=777_777)
    last = dyn.last_flip_steps()["0"].flatten().tolist()  # a: 777777, b: -1, c: 777777, d: -1
    assert last[1] == -1 and last[3] == -1
    for v in (last[0], last[2]):
        assert 777_777 - 32 < v <= 777_777
    last1 = dyn.last_flip_steps()["1"].flatten().tolist()  # e: -1, f: 777777
    assert last1[0] == -1 and 777_777 - 32 < last1[1] <= 777_777


@pytest.mark.slow
def test_flip_count_saturates_and_flips_still_detected():
    # A single weight negated at every update: it flips every time.  After 32769 updates its
    # count saturates at 32767 (int32 result); the per-update flip detection is unaffected, so a
    # window of the last 3 updates still has flip/0 = 1 and (flipped at this AND the previous
    # update) backforth/0 = 1.  (Marked slow: ~33k updates take several seconds.)
    layer = BinaryLinear(1, 1, bias=False, weight_binarizer="ste_sign")
    with torch.no_grad():
        layer.weight.fill_(1.0)
    model = nn.Sequential(layer)
    dyn = Dynamics(model)
    n = 32769
    for i in range(n):
        with torch.no_grad():
            layer.weight.neg_()
        dyn.update()
        if i == n - 4:
            dyn.step_metrics()  # window = the last 3 updates
    assert dyn.flip_counts()["0"].tolist() == [[32767]]
    assert dyn.never_flipped()["0"].tolist() == [[False]]
    check(dyn.step_metrics(), {"flip/0": 1.0, "backforth/0": 1.0, "silent/0": 0.0})


# --------------------------------------------------------------------------------------------
# Window vs epoch accumulators
# --------------------------------------------------------------------------------------------


def test_window_and_epoch_accumulators_are_independent():
    model = two_layer_model()
    dyn = Dynamics(model)

    set_weights(model, W1)
    dyn.update()
    m = dyn.step_metrics()  # resets the window only: window = {u1}
    check(m, {"flip/0": 0.25, "flip/1": 0.5, "flip/all": 2 / 6, "backforth/all": 0.0})

    set_weights(model, W2)
    dyn.update()
    e = dyn.epoch_metrics()  # epoch = {u1, u2}; resets the epoch only
    # oscillation/0 = (1/4 + 2/4)/2 = 3/8 ; /1 = (1/2 + 1/2)/2 = 1/2 ; /all = (2/6 + 3/6)/2 = 5/12
    # backforth/0 = (0 + 1/4)/2 = 1/8 ; /1 = (0 + 1/2)/2 = 1/4 ; /all = (0 + 2/6)/2 = 1/6
    check(
        e,
        {
            "oscillation/0": 3 / 8, "oscillation/1": 0.5, "oscillation/all": 5 / 12,
            "backforth/0": 1 / 8, "backforth/1": 0.25, "backforth/all": 1 / 6,
            "silent/0": 0.5, "silent/1": 0.5, "silent/all": 0.5,
        },
    )  # fmt: skip
    assert not any(k.startswith("flip/") for k in e), sorted(e)
    assert not any(k.startswith("dead/") for k in e), sorted(e)
    assert any(k.startswith("qerr/") for k in e) and any(k.startswith("entropy/") for k in e)

    set_weights(model, W3)
    dyn.update()
    # window = {u2, u3} (the epoch reset did not touch it):
    # flip/0 = (2/4 + 1/4)/2 = 3/8 ; flip/1 = 1/2 ; flip/all = (3/6 + 2/6)/2 = 5/12
    # backforth/0 = (1/4 + 0)/2 = 1/8 ; /1 = (1/2 + 0)/2 = 1/4 ; /all = (2/6 + 0)/2 = 1/6
    expected_window = {
        "flip/0": 3 / 8, "flip/1": 0.5, "flip/all": 5 / 12,
        "backforth/0": 1 / 8, "backforth/1": 0.25, "backforth/all": 1 / 6,
    }  # fmt: skip
    check(dyn.step_metrics(reset=False), expected_window)
    check(dyn.step_metrics(reset=False), expected_window)  # reset=False keeps the window
    check(dyn.step_metrics(), expected_window)
    assert not any(k.startswith("flip/") for k in dyn.step_metrics())  # now empty

    # epoch = {u3} only (the window resets did not touch it)
    e = dyn.epoch_metrics(reset=False)
    expected_epoch = {
        "oscillation/0": 0.25, "oscillation/1": 0.5, "oscillation/all": 2 / 6,
        "backforth/0": 0.0, "backforth/1": 0.0, "backforth/all": 0.0,
        "silent/0": 0.25, "silent/1": 0.0, "silent/all": 1 / 6,
    }  # fmt: skip
    check(e, expected_epoch)
    check(e, {f"qerr/{k}": v for k, v in QERR_W3.items()})
    check(e, {f"entropy/{k}": v for k, v in ENT_W3.items()})
    check(dyn.epoch_metrics(), expected_epoch)  # reset=False above kept it
    assert not any(k.startswith("oscillation/") for k in dyn.epoch_metrics())


# --------------------------------------------------------------------------------------------
# Dead weights (record_gradients)
# --------------------------------------------------------------------------------------------


def test_dead_fraction_window_and_epoch_means():
    model = two_layer_model()
    l0, l1 = model[0], model[1]
    dyn = Dynamics(model)

    # call 1: L0 grad has two exact zeros (0.0 and -0.0; 1e-30 is not 0) -> 2/4 ;
    #         L1 grad None -> all dead 2/2 ; all = (2 + 2)/6 = 4/6
    l0.weight.grad = torch.tensor([[0.0, 1e-30], [-0.0, -2.0]])
    l1.weight.grad = None
    dyn.record_gradients()
    # call 2: L0 all zero -> 4/4 ; L1 no zero -> 0/2 ; all = 4/6
    l0.weight.grad = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    l1.weight.grad = torch.tensor([[0.5, -0.1]])
    dyn.record_gradients()

    m = dyn.step_metrics()
    # dead/0 = (1/2 + 1)/2 = 3/4 ; dead/1 = (1 + 0)/2 = 1/2 ; dead/all = (4/6 + 4/6)/2 = 2/3
    # (the unweighted layer mean would be 5/8)
    check(m, {"dead/0": 0.75, "dead/1": 0.5, "dead/all": 2 / 3})
    # no update in the window -> no flip / backforth keys; silent is still 1 (nothing flipped)
    assert not any(k.split("/")[0] in ("flip", "backforth") for k in m), sorted(m)
    check(m, {"silent/0": 1.0, "silent/1": 1.0, "silent/all": 1.0})

    assert not any(k.startswith("dead/") for k in dyn.step_metrics())  # window was reset

    # call 3: L0 one zero -> 1/4 ; L1 one zero -> 1/2 ; all = 2/6
    l0.weight.grad = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    l1.weight.grad = torch.tensor([[0.0, 1.0]])
    dyn.record_gradients()
    check(dyn.step_metrics(), {"dead/0": 0.25, "dead/1": 0.5, "dead/all": 2 / 6})
    # epoch = calls 1..3: dead/0 = (1/2 + 1 + 1/4)/3 = 7/12 ; dead/1 = (1 + 0 + 1/2)/3 = 1/2 ;
    # dead/all = (4/6 + 4/6 + 2/6)/3 = 10/18 = 5/9
    e = dyn.epoch_metrics()
    check(e, {"dead/0": 7 / 12, "dead/1": 0.5, "dead/all": 5 / 9})
    assert not any(k.startswith("oscillation/") for k in e), sorted(e)


# --------------------------------------------------------------------------------------------
# Quantization error and entropy
# --------------------------------------------------------------------------------------------


def test_quantization_error_pure_function():
    w = torch.tensor([[0.3, 0.5], [-0.1, -1.0]])
    q = quantization_error(w)
    assert isinstance(q, torch.Tensor) and q.dim() == 0
    assert float(q) == pytest.approx(0.10625, abs=TOL)  # see QERR_W3 above
    # sign(0) = +1: w = [[0, 2]] -> alpha = 1, errors (0-1)^2 = 1 and (2-1)^2 = 1 -> 1.0
    # (with sign(0) = 0 it would be (0 + 1)/2 = 0.5)
    assert float(quantization_error(torch.tensor([[0.0, 2.0]]))) == pytest.approx(1.0, abs=TOL)
    # per output channel (dim 0) of a 4-d weight: channel 0 = [1, -1] alpha 1, channel 1 =
    # [3, -3] alpha 3 -> exact -> 0.  (A single layer-wide alpha = 2 would give 1.0.)
    w4 = torch.tensor([[[[1.0, -1.0]]], [[[3.0, -3.0]]]])
    assert float(quantization_error(w4)) == pytest.approx(0.0, abs=TOL)


def test_laplace_entropy_pure_function():
    w = torch.tensor([[0.3, 0.5], [-0.1, -1.0]])
    h = laplace_entropy(w)
    assert isinstance(h, torch.Tensor) and h.dim() == 0
    assert float(h) == pytest.approx(1 + math.log(0.95), abs=TOL)  # 2 * 0.475 = 0.95
    # mean|w| = 0.5 -> 1 + ln(1) = 1 ; mean|w| = 2 -> 1 + ln 4
    assert float(laplace_entropy(torch.tensor([0.5, -0.5]))) == pytest.approx(1.0, abs=TOL)
    w4 = torch.tensor([[[[1.0, -1.0]]], [[[3.0, -3.0]]]])
    assert float(laplace_entropy(w4)) == pytest.approx(1 + math.log(4.0), abs=TOL)


def test_qerr_entropy_for_conv_layer_through_dynamics():
    conv = BinaryConv2d(1, 2, (1, 2), bias=False, weight_binarizer="ste_sign")  # weight (2,1,1,2)
    lin = BinaryLinear(2, 1, bias=False, weight_binarizer="ste_sign")
    model = nn.Sequential(conv, nn.Flatten(), lin)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0]]], [[[3.0, -3.0]]]]))
        lin.weight.copy_(torch.tensor([[0.0, 2.0]]))
    dyn = Dynamics(model)
    assert dyn.layer_names == ["0", "2"]
    m = dyn.step_metrics()
    # conv: qerr 0 (per channel exact), entropy 1 + ln 4 ; lin: qerr 1, entropy 1 + ln 2
    # all (4 : 2): qerr = (4*0 + 2*1)/6 = 1/3 ; entropy = (4*(1+ln4) + 2*(1+ln2))/6
    check(
        m,
        {
            "qerr/0": 0.0, "qerr/2": 1.0, "qerr/all": 1 / 3,
            "entropy/0": 1 + math.log(4.0), "entropy/2": 1 + math.log(2.0),
            "entropy/all": (4 * (1 + math.log(4.0)) + 2 * (1 + math.log(2.0))) / 6,
            "silent/0": 1.0, "silent/all": 1.0,
        },
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# reset / state_dict / memory
# --------------------------------------------------------------------------------------------


def test_reset_clears_counts_and_accumulators_and_rebases_reference():
    model = two_layer_model()
    dyn = Dynamics(model)
    for ws in (W1, W2):
        set_weights(model, ws)
        dyn.update()
    model[0].weight.grad = torch.zeros(2, 2)
    model[1].weight.grad = torch.zeros(1, 2)
    dyn.record_gradients()

    dyn.reset()  # reference signs = W2 signs: L0 + - - - ; L1 + -
    assert dyn.flip_counts()["0"].tolist() == [[0, 0], [0, 0]]
    assert dyn.flip_counts()["1"].tolist() == [[0, 0]]
    assert dyn.last_flip_steps()["0"].tolist() == [[-1, -1], [-1, -1]]
    assert dyn.never_flipped()["0"].tolist() == [[True, True], [True, True]]
    m = dyn.step_metrics()
    assert not any(k.split("/")[0] in ("flip", "backforth", "dead") for k in m), sorted(m)
    check(m, {"silent/0": 1.0, "silent/1": 1.0, "silent/all": 1.0})
    e = dyn.epoch_metrics()
    assert not any(k.split("/")[0] in ("oscillation", "backforth", "dead") for k in e), sorted(e)

    # W3 after the reset: flips b (L0) and e (L1), neither of which flipped at update 2, so
    # bf = 0 whatever the "previous update" flags were.  counts L0 [0,1,0,0], L1 [1,0];
    # silent L0 3/4, L1 1/2, all 4/6.
    set_weights(model, W3)
    dyn.update()
    assert dyn.flip_counts()["0"].tolist() == [[0, 1], [0, 0]]
    assert dyn.flip_counts()["1"].tolist() == [[1, 0]]
    check(
        dyn.step_metrics(),
        {
            "flip/0": 0.25, "flip/1": 0.5, "flip/all": 2 / 6,
            "backforth/all": 0.0,
            "silent/0": 0.75, "silent/1": 0.5, "silent/all": 4 / 6,
        },
    )  # fmt: skip
    check(dyn.epoch_metrics(), {"oscillation/0": 0.25, "oscillation/all": 2 / 6})


def test_reset_uses_current_signs_not_last_update_signs():
    # Weights change sign between the last update and reset(): after the reset those current
    # signs are the reference, so an update with no further change sees no flip.
    model = two_layer_model()
    dyn = Dynamics(model)
    set_weights(model, W1)
    dyn.update()
    # flip d (L0) and e (L1) without an update, then reset
    set_weights(model, ([[-0.5, -0.5], [0.0, 1.0]], [[-0.2, 0.0]]))
    dyn.reset()
    dyn.update()  # nothing changed since reset
    assert dyn.flip_counts()["0"].tolist() == [[0, 0], [0, 0]]
    assert dyn.flip_counts()["1"].tolist() == [[0, 0]]
    check(dyn.step_metrics(), {"flip/all": 0.0, "silent/all": 1.0})


def test_state_dict_continuation():
    model = two_layer_model()
    dyn1 = Dynamics(model)
    for step, ws in zip((10, 20), (W1, W2), strict=True):
        set_weights(model, ws)
        dyn1.update(step=step)
    state = dyn1.state_dict()

    dyn2 = Dynamics(model)  # built at W2 (its own reference would be W2's signs)
    dyn2.load_state_dict(state)
    # Continue with W3' = L0 [-0.3, -0.5, -0.1, -1.0], L1 [0.2, 0.3]:
    #   L0 signs after W2: + - - - -> - - - - : a flips; a flipped at update 2 -> back-and-forth
    #   L1 signs after W2: + -     -> + +     : f flips; f flipped at update 2 -> back-and-forth
    # counts: a 3, b 0, c 1, d 0 ; e 0, f 3   (continuing from a 2, c 1 ; f 2)
    # last flip: a 30, b -1, c 20, d -1 ; e -1, f 30
    # silent: L0 b,d -> 2/4 ; L1 e -> 1/2 ; all 3/6
    set_weights(model, ([[-0.3, -0.5], [-0.1, -1.0]], [[0.2, 0.3]]))
    dyn2.update(step=30)
    assert dyn2.flip_counts()["0"].tolist() == [[3, 0], [1, 0]]
    assert dyn2.flip_counts()["1"].tolist() == [[0, 3]]
    assert dyn2.last_flip_steps()["0"].tolist() == [[30, -1], [20, -1]]
    assert dyn2.last_flip_steps()["1"].tolist() == [[-1, 30]]
    assert dyn2.never_flipped()["0"].tolist() == [[False, True], [False, True]]
    m = dyn2.step_metrics()
    # window of dyn2 holds only this update whether or not dyn1's (un-reset) window of u1, u2
    # were part of the state... so check the metrics that do not depend on that: silent.
    check(m, {"silent/0": 0.5, "silent/1": 0.5, "silent/all": 0.5})


def test_state_dict_continuation_backforth_in_window():
    # Same as above, but dyn1's window/epoch are emptied before saving so that dyn2's window
    # holds exactly the one update after loading.
    model = two_layer_model()
    dyn1 = Dynamics(model)
    for ws in (W1, W2):
        set_weights(model, ws)
        dyn1.update()
    dyn1.step_metrics()
    dyn1.epoch_metrics()
    dyn2 = Dynamics(model)
    dyn2.load_state_dict(dyn1.state_dict())
    set_weights(model, ([[-0.3, -0.5], [-0.1, -1.0]], [[0.2, 0.3]]))
    dyn2.update()
    # flips: L0 a (1/4), L1 f (1/2), all 2/6 ; both back-and-forth (flipped at update 2 too)
    expected = {
        "backforth/0": 0.25, "backforth/1": 0.5, "backforth/all": 2 / 6,
        "silent/0": 0.5, "silent/1": 0.5, "silent/all": 0.5,
    }  # fmt: skip
    check(dyn2.step_metrics(), {"flip/0": 0.25, "flip/1": 0.5, "flip/all": 2 / 6, **expected})
    check(dyn2.epoch_metrics(), {"oscillation/0": 0.25, "oscillation/all": 2 / 6, **expected})


def test_memory_bound():
    model = nn.Sequential(
        BinaryLinear(64, 32, bias=False, weight_binarizer="ste_sign"),
        nn.ReLU(),
        BinaryLinear(32, 10, bias=False, weight_binarizer="ste_sign"),
    )
    numel = 64 * 32 + 32 * 10  # 2368 tracked weights
    bound = 4 * numel + 1024  # 10496 bytes

    def nbytes(d: Dynamics) -> int:
        return sum(b.numel() * b.element_size() for b in d.buffers())

    dyn = Dynamics(model, max_steps=10**6)
    assert nbytes(dyn) <= bound
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            for p in model.parameters():
                p.grad = torch.randn_like(p) * (torch.rand_like(p) > 0.5)
        dyn.record_gradients()
        dyn.update()
    dyn.step_metrics(reset=False)
    dyn.epoch_metrics(reset=False)
    assert nbytes(dyn) <= bound, nbytes(dyn)
    assert nbytes(Dynamics(model)) <= bound


# --------------------------------------------------------------------------------------------
# FlipRatio
# --------------------------------------------------------------------------------------------


def test_flip_ratio_metric():
    model = two_layer_model()
    fr = FlipRatio(model)
    for ws in (W1, W2, W3):
        set_weights(model, ws)
        fr.update_state()
    r = fr.result()
    # mean per-update flip fractions: 0 -> 1/3, 1 -> 1/2, all -> 7/18 (see module docstring)
    assert set(r) == {"0", "1", "all"}
    assert all(isinstance(v, float) for v in r.values()), r
    assert r["0"] == pytest.approx(1 / 3, abs=TOL)
    assert r["1"] == pytest.approx(0.5, abs=TOL)
    assert r["all"] == pytest.approx(7 / 18, abs=TOL)

    fr.reset_states()
    # update 4 compares with W3's signs (L0 + + - -, L1 - -), not with W0 / construction:
    #   L0 = [0.3, 0.5, -0.1, 1.0] -> only d flips -> 1/4 ; L1 unchanged -> 0 ; all 1/6
    # (compared with W0's signs L0 + - + -, L1 + -, it would be L0 3/4, L1 1/2)
    set_weights(model, ([[0.3, 0.5], [-0.1, 1.0]], W3[1]))
    fr.update_state()
    r = fr.result()
    assert r["0"] == pytest.approx(0.25, abs=TOL)
    assert r["1"] == pytest.approx(0.0, abs=TOL)
    assert r["all"] == pytest.approx(1 / 6, abs=TOL)


def test_flip_ratio_explicit_layers_plain_linear():
    model = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0, -1.0]]))
    fr = FlipRatio(model, layers=["0"])
    # two updates: [-1, 1, -1] (1 flip of 3), then [-1, 1, 0.0] (0.0 is +: 1 flip of 3)
    # mean = (1/3 + 1/3)/2 = 1/3 ; then [-1, 1, 0.0] again: 0 -> mean of 3 = 2/9
    for w in ([[-1.0, 1.0, -1.0]], [[-1.0, 1.0, 0.0]], [[-1.0, 1.0, 0.0]]):
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(w))
        fr.update_state()
    r = fr.result()
    assert set(r) == {"0", "all"}
    assert r["0"] == pytest.approx(2 / 9, abs=TOL)
    assert r["all"] == pytest.approx(2 / 9, abs=TOL)
