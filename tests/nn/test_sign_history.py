"""The per-layer sign history (bnnkit.nn.SignHistory): one record of each binary weight's sign,
updated once per step, read by the trackers, ReBNN and OvSW."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bnnkit
from bnnkit.diagnostics import Dynamics
from bnnkit.methods import TrainState, binarize_, binary_layers, get_method
from bnnkit.nn import SignHistory, SignHistoryError, reset_sign_history, update_sign_history


def test_by_hand_signs_flips_and_reset():
    h = SignHistory(torch.tensor([0.5, -0.2, 0.0, -0.0, 3.0]))
    # sign(0) = sign(-0) = +1: only strictly negative values are negative
    assert h.negative.tolist() == [False, True, False, False, False]
    assert h.flipped.tolist() == [False] * 5 and h.updates == 0
    h.update(torch.tensor([-0.1, -0.3, 0.0, 1.0, -2.0]))
    assert h.negative.tolist() == [True, True, False, False, True]
    assert h.flipped.tolist() == [True, False, False, False, True] and h.updates == 1
    h.update(torch.tensor([-0.1, 0.3, 0.0, 1.0, -2.0]))
    assert h.flipped.tolist() == [False, True, False, False, False] and h.updates == 2
    h.reset(torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0]))
    assert h.negative.tolist() == [False, False, True, False, False]
    assert not h.flipped.any() and h.updates == 3


def test_buffers_are_saved_bool_and_stay_bool_under_dtype_moves():
    h = SignHistory(torch.randn(4, 3))
    assert set(h.state_dict()) == {"negative", "flipped"}
    h = h.to(torch.float64)
    assert h.negative.dtype == torch.bool and h.flipped.dtype == torch.bool
    assert sum(b.numel() * b.element_size() for b in h.buffers()) == 2 * 12  # 2 bytes a weight


def test_a_second_read_without_an_update_is_refused():
    h = SignHistory(torch.randn(3))
    seen = h.checked(None, "reader")  # a first read is always fine
    with pytest.raises(SignHistoryError, match=r"reader read the sign history twice without an "
                       r"update: call bnnkit\.nn\.update_sign_history\(model\)"):  # fmt: skip
        h.checked(seen, "reader")
    h.update(torch.randn(3))
    assert h.checked(seen, "reader") == 1


@pytest.mark.parametrize("name", bnnkit.list_methods())
def test_binarize_gives_every_binary_weight_one_history_of_its_binarizers_sign(name):
    model = binarize_(bnnkit.create_model("resnet20", num_classes=4), get_method(name))
    for _, layer in binary_layers(model):
        if layer.weight_binarizer is None:  # float weights have no sign to record
            assert layer.sign_history is None
            continue
        assert isinstance(layer.sign_history, SignHistory)
        assert torch.equal(layer.sign_history.negative, layer.sign_input() < 0)
        # the binarized weight's sign is the sign of the binarizer's sign input
        signs = torch.sign(layer.binarized_weight().detach())
        assert torch.equal(signs < 0, layer.sign_input() < 0)
    assert (name == "float") == all(m.sign_history is None for _, m in binary_layers(model))


def test_recu_and_irnet_record_the_sign_of_the_channel_centred_weight():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-0.5, 0.1, 0.2, -0.6]])
    for name in ("recu", "irnet"):
        layer = bnnkit.nn.BinaryLinear(4, 2, bias=False)
        with torch.no_grad():
            layer.weight.copy_(w)
        binarize_(nn.Sequential(layer), name, filter_fn=lambda m, n: True)
        centred = w - w.mean(1, keepdim=True)
        assert torch.equal(layer.sign_history.negative, centred < 0), name  # not w < 0


def test_update_and_reset_take_a_model_or_its_layers():
    model = binarize_(bnnkit.create_model("mlp", in_features=6, hidden=8, num_classes=2), "ste")
    layers = binary_layers(model)
    with torch.no_grad():
        for _, layer in layers:
            layer.weight.neg_()
    update_sign_history(model)
    assert all(layer.sign_history.flipped.all() for _, layer in layers)  # every sign flipped
    reset_sign_history(layers)
    assert all(not layer.sign_history.flipped.any() for _, layer in layers)
    assert all(layer.sign_history.updates == 2 for _, layer in layers)


def _loop(method: str, *, update: bool, trackers: bool = True, steps: int = 4):
    torch.manual_seed(0)
    model = binarize_(bnnkit.create_model("mlp", in_features=6, hidden=32, num_classes=3), method)
    m = get_method(method)
    layers = binary_layers(model)
    dyn = Dynamics(model) if trackers else None
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(steps):
        state = TrainState(step=step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        m.before_optimizer_step(layers, state)
        opt.step()
        if update:
            update_sign_history(model)
        m.after_optimizer_step(layers, state)
        if dyn is not None:
            dyn.update()
    return dyn


def test_trackers_in_a_loop_of_your_own_update_the_history_themselves():
    """Dynamics in a loop without update_sign_history counts the same flips as with it."""
    with_update, without = _loop("ste", update=True), _loop("ste", update=False)
    counts = with_update.flip_counts()
    assert sum(int(c.sum()) for c in counts.values()) > 0  # lr 0.5 flips signs
    for name, c in without.flip_counts().items():
        assert torch.equal(c, counts[name])


@pytest.mark.parametrize("method", ["ovsw", "rebnn"])
def test_a_method_that_reads_the_history_refuses_a_loop_that_never_updates_it(method):
    with pytest.raises(SignHistoryError, match=f"{method} read the sign history twice"):
        _loop(method, update=False, trackers=False)
    _loop(method, update=True, trackers=False)  # the same loop with the update runs


def test_trackers_updating_the_history_at_the_step_end_is_enough_for_ovsw_not_for_rebnn():
    """OvSW reads the flips of the previous step (the trackers' update at its end gives them);
    ReBNN reads this step's, which must be recorded before its after hook: refused, not stale."""
    _loop("ovsw", update=False, trackers=True)
    with pytest.raises(SignHistoryError, match="rebnn read the sign history twice"):
        _loop("rebnn", update=False, trackers=True)


def test_a_deep_copy_keeps_the_history():
    model = binarize_(bnnkit.create_model("mlp", in_features=6, hidden=8, num_classes=2), "rebnn")
    twin = copy.deepcopy(model)
    for (_, a), (_, b) in zip(binary_layers(model), binary_layers(twin), strict=True):
        assert torch.equal(a.sign_history.negative, b.sign_history.negative)
        assert a.sign_history is not b.sign_history
        assert a.method_state["rebnn"] is not b.method_state["rebnn"]
