"""ReCU, ReBNN and OvSW inside the engine: two-step stage 2, composition, checkpointed state,
and gradient rules seeing unscaled gradients."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import bnnkit
from bnnkit.config import load_recipe
from bnnkit.errors import ConfigError
from bnnkit.methods import Method, TrainState, binarize_, binary_layers, get_method
from bnnkit.methods.ovsw import SADState
from bnnkit.methods.rebnn import ReBNNState
from bnnkit.methods.recu import ReCUSign, recu_tau
from bnnkit.runs import load_checkpoint, train
from bnnkit.runs.checkpoint import load_stage_init
from bnnkit.training import TaskLoss, Trainer

STAGE2 = {
    "recu": {"name": "recu", "input_bias": True},
    "rebnn": {"name": "rebnn"},
    "ovsw": {"name": "ovsw", "input_bias": True},
}


@pytest.mark.parametrize("name", list(STAGE2))
def test_stage_two_of_the_reactnet_two_step_recipe(name):
    """W32A1 stage-1 weights (and RSign shifts) start each method's stage 2."""
    step1 = binarize_(
        bnnkit.create_model("reactnet_resnet18", num_classes=5),
        get_method("reactnet", weights="float"),
    )
    with torch.no_grad():
        for p in step1.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = step1.state_dict()
    step2 = binarize_(
        bnnkit.create_model("reactnet_resnet18", num_classes=5), get_method(STAGE2[name])
    )
    added = load_stage_init(step2, state, "step1")
    loaded = step2.state_dict()
    for key in (
        "layer1.0.binary_conv.weight",
        "layer1.0.binary_conv.input_binarizer.bias",
        "layer3.1.binary_conv.weight",
    ):
        assert torch.equal(loaded[key], state[key]), key
    assert all(".method_state." in k or ".scale." in k or k.endswith("tau") for k in added), added
    # one training step: the method's state is primed from the loaded weights, not the random init
    layers = binary_layers(step2)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2,))
    method = get_method(STAGE2[name])
    st = TrainState(step=0, epoch=0, epochs=2)
    method.on_step_start(layers, st)
    torch.nn.functional.cross_entropy(step2(x), y).backward()
    method.before_optimizer_step(layers, st)
    layer = layers[0][1]
    # the one sign history of the layer holds the loaded weights' signs, no flips
    assert torch.equal(layer.sign_history.negative, layer.sign_input() < 0)
    assert not layer.sign_history.flipped.any()
    if name == "ovsw":
        assert float(layer.method_state["ovsw"].tracker.abs().sum()) == 0.0  # no phantom flips


def test_two_step_recipe_structure():
    for name in STAGE2:
        cfg = load_recipe(f"imagenet/reactnet_resnet18_{name}")
        s1, s2 = cfg.stages
        assert s1.method.to_config() == {"name": "reactnet", "weights": "float"}
        assert s2.method.name == name and s2.optimizer.weight_decay == 0.0
        assert cfg.model.name == "reactnet_resnet18"
    assert load_recipe("imagenet/reactnet_resnet18_rebnn").stages[1].schedule.step_at == "end"
    assert load_recipe("imagenet/reactnet_resnet18_recu").stages[1].schedule.name == "cosine"


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "ovsw", "base": "recu", "delta": 0.04},
        {"name": "ovsw", "base": {"name": "reactnet"}},
        {"name": "rebnn", "base": "reactnet", "gamma_mode": "fixed", "gamma": 1e-3},
        {"name": "rebnn", "base": "bireal"},
    ],
)
def test_composed_methods_train(spec, run_steps):
    method = get_method(spec)
    model = binarize_(bnnkit.create_model("resnet20", num_classes=4), method)
    assert get_method(method.to_config()) == method
    before = [layer.weight.detach().clone() for _, layer in binary_layers(model)]
    losses = run_steps(model, method, torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))
    assert all(math.isfinite(v) for v in losses)
    assert all(
        not torch.equal(b, layer.weight)
        for b, (_, layer) in zip(before, binary_layers(model), strict=True)
    )


def test_ovsw_on_recu_keeps_the_tau_schedule_and_the_gradient_rules():
    method = get_method({"name": "ovsw", "base": "recu"})
    model = binarize_(bnnkit.create_model("resnet20", num_classes=4), method)
    layers = binary_layers(model)
    assert isinstance(layers[0][1].weight_binarizer, ReCUSign)
    assert isinstance(layers[0][1].method_state["ovsw"], SADState)
    method.on_step_start(layers, TrainState(epoch=3, epochs=10))
    assert float(layers[0][1].weight_binarizer.tau) == pytest.approx(recu_tau(3, 10))


def test_bad_compositions_are_refused():
    with pytest.raises(ConfigError, match=r"cannot compose ovsw on ovsw: ovsw would appear twice"):
        get_method("ovsw", base="ovsw")
    with pytest.raises(ConfigError, match=r"cannot compose rebnn on reactnet: .*variant: paper"):
        get_method("rebnn", base="reactnet", variant="official_code")
    with pytest.raises(ConfigError, match="'recuu' is not a known method"):
        get_method("ovsw", base="recuu")


SYNTH = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
             "synthetic_train": 64, "synthetic_val": 32, "batch_size": 16},
    "model": {"name": "resnet20"},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "training": {"epochs": 2},
    "logging": {"progress": "off", "tensorboard": False},
}  # fmt: skip


@pytest.mark.parametrize("name", ["recu", "rebnn", "ovsw"])
def test_checkpoints_carry_the_method_state(name, tmp_path):
    recipe = {**SYNTH, "method": {"name": name}}
    train(recipe, out=tmp_path / "run")
    sd = load_checkpoint(tmp_path / "run").model
    if name == "recu":
        assert float(sd["layers.0.conv1.weight_binarizer.tau"]) == pytest.approx(recu_tau(1, 2))
    w = sd["layers.0.conv1.weight"]
    if name in ("rebnn", "ovsw"):  # the layer's one sign history: the signs after the last step
        assert torch.equal(sd["layers.0.conv1.sign_history.negative"], w < 0)
    if name == "rebnn":
        assert sd["layers.0.conv1.method_state.rebnn.gamma"].shape == (16,)
    if name == "ovsw":
        assert sd["layers.0.conv1.method_state.ovsw.tracker"].abs().sum() > 0  # flips tracked


@dataclass(frozen=True)
class GradProbe(Method):
    """Records the gradient norm that a gradient rule sees (not registered)."""

    name: ClassVar[str] = "probe"

    def build_weight_binarizer(self, layer):
        return bnnkit.binarize.IdentitySTESign()

    def before_optimizer_step(self, layers, state):
        SEEN.append(torch.stack([layer.weight.grad.norm() for _, layer in layers]))


SEEN: list[torch.Tensor] = []


def _one_step(scaler):
    torch.manual_seed(0)
    model = binarize_(
        bnnkit.create_model("mlp", in_features=12, hidden=16, num_classes=3), GradProbe()
    )
    stage = dataclasses.replace(
        load_recipe({**SYNTH, "method": "ste"}).stages[0], method=GradProbe()
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(stage, model, opt, scaler=scaler, loss_fn=TaskLoss())
    torch.manual_seed(1)
    trainer.train_step(torch.randn(8, 12), torch.randint(0, 3, (8,)), TrainState())
    return [p.detach().clone() for p in model.parameters()]


def test_gradient_rules_see_unscaled_gradients_under_a_grad_scaler():
    SEEN.clear()
    plain = _one_step(None)
    scaled = _one_step(torch.amp.GradScaler("cpu", init_scale=1024.0))
    assert torch.allclose(SEEN[0], SEEN[1], rtol=1e-5)  # the rule saw g, not 1024 g
    assert all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, scaled, strict=True)
    )


def test_rebnn_logs_its_reconstruction_loss_and_gamma(tmp_path):
    import json

    recipe = {
        **SYNTH,
        "method": {"name": "rebnn"},
        "logging": {"log_every": 2, "progress": "off", "tensorboard": False},
    }
    train(recipe, out=tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    assert all("method/rebnn/recon_loss" in r and "method/rebnn/gamma" in r for r in train_rows)
    assert train_rows[-1]["method/rebnn/gamma"] > 0  # gamma grows from 0 once signs flip
    # gamma is saved per layer in its ReBNN state, and the run's last log event shows its mean
    model = binarize_(bnnkit.create_model("resnet20", num_classes=4), get_method("rebnn"))
    load_checkpoint(tmp_path / "run").load_model(model, "last.pt")
    states = [layer.method_state["rebnn"] for _, layer in binary_layers(model)]
    assert all(isinstance(st, ReBNNState) for st in states)
    gammas = torch.cat([st.gamma for st in states])
    assert float(gammas.mean()) == pytest.approx(train_rows[-1]["method/rebnn/gamma"], rel=1e-5)
