"""Method composition (``{name: A, base: B}``): which pairs compose, what a composed method
builds, and that one real training step applies every part's gradient rule, base first.

Everything is generated from the registry (``bnnkit.list_methods()``), so a newly registered
method is picked up automatically. The gradient references are written here from
``methods.md`` (no code shared with ``bnnkit.methods``):

* ReBNN §3.1 Eq. 3.144: δw += γ (w − ŵ), ŵ the weight the layer uses (its base's binarized
  weight); Eq. 3.151-3.152: δα += −γ Σ_j (w_ij − α_i b_ij) b_ij when α is learnable.
* OvSW §4.2 AGS per output channel: r = max(‖g‖, 1e-6) / max(‖w‖, 1e-3); if r < δ the channel's
  gradient is rescaled to δ·max(‖w‖, 1e-3)/max(‖g‖, 1e-6)·g.
* OvSW §4.3 SAD, right after AGS: tracker ← m·tracker + (1 − m)·flipped (tracker starts at 0;
  flips of the previous step, none at the first); g += λ·1[tracker < θ]·W.

Composition contract (``bnnkit.methods.compose``): A on B composes iff A adds training rules
(``adds_rules``), B binarizes weights, A ≠ B and no part-specific refusal applies (ReBNN's
``official_code`` variant); otherwise a ``ConfigError`` names both parts and why. Builders: every
part's state in ``layer.method_state[<part>]``, binarizers and scale from the base (a part above
may wrap the scale). Hooks: every part, base first; metrics merged.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import bnnkit
from bnnkit.config import load_recipe
from bnnkit.errors import ConfigError
from bnnkit.methods import Method, TrainState, binarize_, get_method, method_class
from bnnkit.nn import SignHistory
from bnnkit.training import Trainer, build_optimizer

NAMES: list[str] = list(bnnkit.list_methods())
LR = 0.05
BATCH = 8
# Two small models: resnet20 on 3x8x8 (BinaryConv2d, where AGS norms are over C_in*k*k) for the
# gradient checks, and a 2-hidden-layer binary MLP on 12 features (BinaryLinear, fast) for the
# structural checks over every pair.
MODELS: dict[str, dict[str, Any]] = {
    "resnet20": {"kwargs": {"num_classes": 4}, "shape": (3, 8, 8), "classes": 4},
    "mlp": {
        "kwargs": {"num_classes": 3, "in_features": 12, "hidden": 16},
        "shape": (12,),
        "classes": 3,
    },
}

# Hyperparameters of the rule parts in the gradient checks: large enough to be visible.
OVSW_FIELDS = {"delta": 0.5, "lam": 1e-2}
REBNN_FIELDS = {"gamma_mode": "fixed", "gamma": 0.05}
RULE_FIELDS = {"ovsw": OVSW_FIELDS, "rebnn": REBNN_FIELDS}

# float32 gradients compared with a float64 reference of the same float32 inputs.
RTOL, ATOL = 1e-5, 1e-7


def adds_rules(name: str) -> bool:
    return bool(method_class(name).adds_rules)


def binarizes(spec: Any) -> bool:
    return bool(get_method(spec).binarizes_weights)


def should_compose(top: str, base: str) -> bool:
    """The documented rule, for default fields (no part-specific refusal applies to them): a
    rule part on a different base whose weights are binary, latent (not Bop's ±1 weights) and
    with a sign monotone in w (BiPer's periodic sign(sin(omega w)) is not: the rules act
    through |w|); rebnn needs a base with symmetric ±α sets (AdaBin's are affine)."""
    b = get_method(base)
    if top == "rebnn" and not b.symmetric_weight_set:
        return False
    return (top != base and adds_rules(top) and binarizes(base) and b.monotone_weight_sign
            and not b.latent_free)  # fmt: skip


ALL_PAIRS = [(a, b) for a in NAMES for b in NAMES]  # A == B included
COMPOSABLE = [(a, b) for a, b in ALL_PAIRS if should_compose(a, b)]
REFUSED = [(a, b) for a, b in ALL_PAIRS if not should_compose(a, b)]


# -- the real engine, one step -------------------------------------------------------------------


def recipe_for(method: Method, model: str) -> dict[str, Any]:
    spec = MODELS[model]
    return {
        "data": {
            "name": "synthetic",
            "synthetic_shape": list(spec["shape"]),
            "synthetic_classes": spec["classes"],
            "batch_size": BATCH,
        },
        "model": {"name": model, **{k: v for k, v in spec["kwargs"].items() if k != "num_classes"}},
        "method": method.to_config(),
        "optimizer": {
            "name": "sgd",
            "lr": LR,
            "momentum": 0.9,
            "weight_decay": 0.0,
            # a latent-free method's ±1 weights take Bop (its defaults)
            **({"binary": {"name": "bop"}} if method.latent_free else {}),
        },
        "training": {"epochs": 1},
        "logging": {"progress": "off", "tensorboard": False},
    }


class Run:
    """A stage, a freshly built model, its optimizer (step recorded) and the engine's Trainer."""

    def __init__(self, method: Method, model: str = "resnet20") -> None:
        self.stage = load_recipe(recipe_for(method, model)).stages[0]
        self.method = self.stage.method
        self.model = binarize_(bnnkit.create_model(model, **MODELS[model]["kwargs"]), self.method)
        self.model_name = model
        self.opt = build_optimizer(self.model, self.method, self.stage.optimizer)
        self.trainer = Trainer(self.stage, self.model, self.opt)
        self.layers = bnnkit.binary_layers(self.model)
        self.seen: list[dict[str, Tensor]] = []  # per optimizer.step: the grads it used
        orig = self.opt.step

        def step(*args: Any, **kwargs: Any) -> Any:
            self.seen.append(
                {
                    **{n: lay.weight.grad.detach().clone() for n, lay in self.layers},
                    **{
                        f"{n}.scale.{pn}": p.grad.detach().clone()
                        for n, lay in self.layers
                        if lay.scale is not None
                        for pn, p in lay.scale.named_parameters()
                        if p.grad is not None
                    },
                }
            )
            return orig(*args, **kwargs)

        self.opt.step = step

    def batch(self, seed: int) -> tuple[Tensor, Tensor]:
        """A fixed batch for this run's model."""
        spec = MODELS[self.model_name]
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(BATCH, *spec["shape"], generator=g)
        y = torch.randint(0, spec["classes"], (BATCH,), generator=g)
        return x, y

    def step(self, x: Tensor, y: Tensor, state: TrainState) -> Any:
        return self.trainer.train_step(x, y, state)


def state_at(step: int) -> TrainState:
    return TrainState(step=step, epoch=0, epochs=1, progress=0.0, lr=LR)


def scale_types(layer: nn.Module) -> set[type]:
    return set() if layer.scale is None else {type(m) for m in layer.scale.modules()}


@functools.cache
def alone(name: str, model: str = "mlp") -> dict[str, Any]:
    """What ``name`` alone builds and reports after one real step (metric keys, per-layer state
    types, binarizer and scale types of the first binary layer)."""
    torch.manual_seed(0)
    run = Run(get_method(name), model)
    result = run.step(*run.batch(1), state_at(0))
    _, layer = run.layers[0]
    ms = layer.method_state
    return {
        "metrics": set(result.metrics),
        "state": {} if ms is None else {k: type(v) for k, v in ms.items()},
        "weight_binarizer": type(layer.weight_binarizer),
        "input_binarizer": type(layer.input_binarizer),
        "scale": None if layer.scale is None else type(layer.scale),
    }


# -- 1. every ordered pair: composes per the rule, or is refused ---------------------------------


def reason_words(message: str, *names: str) -> list[str]:
    words = re.findall(r"[a-z_]+", message.lower())
    return [w for w in words if w not in names]


def assert_refusal_names(err: ConfigError, top: str, base: str) -> None:
    msg = str(err)
    assert re.search(rf"\b{re.escape(top)}\b", msg), msg
    assert re.search(rf"\b{re.escape(base)}\b", msg), msg
    assert len(reason_words(msg, top, base)) >= 4, f"no reason in {msg!r}"


@pytest.mark.parametrize(("top", "base"), ALL_PAIRS, ids=[f"{a}-on-{b}" for a, b in ALL_PAIRS])
def test_every_ordered_pair_composes_per_the_rule_or_is_refused(top: str, base: str) -> None:
    """compose.py contract: A on B composes iff A.adds_rules, B binarizes weights and A ≠ B;
    a refused pair raises ConfigError (a ValueError) naming A and B with a reason; a composed
    one runs one real Trainer.train_step: finite loss, base's binarizers, every part's state
    under its name, every part's alone-metrics, sign histories updated, latent weights moved."""
    expected = should_compose(top, base)
    if not expected:
        for build in (
            lambda: get_method({"name": top, "base": base}),
            lambda: get_method(top, base=base),
            lambda: get_method(top, base=get_method(base)),
        ):
            with pytest.raises(ConfigError) as info:
                build()
            assert isinstance(info.value, ValueError)
            assert_refusal_names(info.value, top, base)
        return
    try:
        method = get_method({"name": top, "base": base})
    except ConfigError as err:
        pytest.fail(f"{top} on {base} should compose (rule) but was refused: {err}")
    assert [p.name for p in method.parts()] == [base, top]
    assert method.binarizes_weights

    torch.manual_seed(0)
    run = Run(method, "mlp")
    assert run.method == method
    before = {n: lay.weight.detach().clone() for n, lay in run.layers}
    neg_before = {n: lay.sign_history.negative.clone() for n, lay in run.layers}
    updates_before = {n: lay.sign_history.updates for n, lay in run.layers}
    result = run.step(*run.batch(1), state_at(0))

    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    want_state = {**alone(base)["state"], **alone(top)["state"]}
    for part in method.parts():
        assert set(alone(part.name)["state"]) <= {part.name}  # a part keys its state by its name
    want_metrics = alone(base)["metrics"] | alone(top)["metrics"]
    assert want_metrics <= set(result.metrics), sorted(result.metrics)
    for key, value in result.metrics.items():
        assert torch.is_tensor(value) and value.ndim == 0, key
        assert key.split("/")[0] in {base, top}, f"{key} is not named <part>/<metric>"
    b = alone(base)
    for name, layer in run.layers:
        assert type(layer.weight_binarizer) is b["weight_binarizer"], name
        assert type(layer.input_binarizer) is b["input_binarizer"], name
        if b["scale"] is not None:  # the base's scale, possibly wrapped by the part above
            assert b["scale"] in scale_types(layer), (name, scale_types(layer))
        assert isinstance(layer.method_state, nn.ModuleDict)
        assert {k: type(v) for k, v in layer.method_state.items()} == want_state, name
        hist = layer.sign_history
        assert isinstance(hist, SignHistory), name
        assert hist.updates == updates_before[name] + 1, name  # once per step
        neg_now = layer.sign_input().detach() < 0
        assert torch.equal(hist.negative, neg_now), name
        assert torch.equal(hist.flipped, neg_now != neg_before[name]), name
        assert not torch.equal(layer.weight.detach(), before[name]), f"{name} did not move"


def test_the_rule_matches_the_registry_today() -> None:
    """The generated rule is not vacuous: there are composing and refused pairs, float never
    composes either way, and every composing pair's top adds rules."""
    assert "float" in NAMES and not binarizes("float")
    assert COMPOSABLE and REFUSED
    assert all(adds_rules(a) for a, _ in COMPOSABLE)
    assert not any("float" in pair for pair in COMPOSABLE)
    assert {a for a in NAMES if adds_rules(a)} >= {"ovsw", "rebnn"}


@pytest.mark.parametrize("name", NAMES)
def test_a_single_methods_parts_is_itself(name: str) -> None:
    """``parts()`` of a plain method is ``(itself,)``."""
    method = get_method(name)
    assert method.parts() == (method,)


@pytest.mark.parametrize("name", NAMES)
def test_a_method_on_itself_is_refused_naming_it(name: str) -> None:
    """A on A: ConfigError naming A, for every form of ``base`` (name, dict, Method)."""
    for base in (name, {"name": name}, get_method(name)):
        with pytest.raises(ConfigError) as info:
            get_method(name, base=base)
        assert re.search(rf"\b{name}\b", str(info.value)), str(info.value)
        assert len(reason_words(str(info.value), name)) >= 4


# -- 2. each part's gradient rule, against an independent reference ----------------------------


def ref_ags(g: Tensor, w: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """§4.2 per output channel; returns (new gradient, the channels that were scaled)."""
    g2, w2 = g.reshape(len(g), -1), w.reshape(len(w), -1)
    gn = g2.norm(dim=1).clamp_min(1e-6)
    wn = w2.norm(dim=1).clamp_min(1e-3)
    scaled = gn / wn < delta
    factor = torch.where(scaled, delta * wn / gn, torch.ones_like(gn))
    return (g2 * factor[:, None]).reshape(g.shape), scaled


def ref_sad(g: Tensor, w: Tensor, flipped: Tensor, tracker: Tensor, p: Method) -> Tensor:
    """§4.3: tracker ← m·tracker + (1 − m)·flipped; g += λ·1[tracker < θ]·W."""
    tracker = p.m * tracker + (1 - p.m) * flipped.to(g.dtype)
    return g + p.lam * (tracker < p.theta).to(g.dtype) * w


def ref_rebnn_w(g: Tensor, w: Tensor, bw: Tensor, p: Method) -> Tensor:
    """§3.1 Eq. 3.144 with a fixed γ: δw += γ (w − ŵ)."""
    assert p.gamma_mode == "fixed"
    return g + p.gamma * (w - bw)


def ref_rebnn_alpha(ga: Tensor, alpha: Tensor, w: Tensor, bw: Tensor, p: Method) -> Tensor:
    """§3.1 Eq. 3.151-3.152: δα_i += −γ Σ_j (w_ij − α_i b_ij) b_ij, b = ŵ / α."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    b = bw / alpha.reshape(shape)
    term = -p.gamma * ((w - bw) * b).reshape(len(w), -1).sum(1)
    return ga + term.reshape(ga.shape)


REFERENCES: dict[str, str] = {"ovsw": "AGS then SAD (§4.2-4.3)", "rebnn": "Eq. 3.144 (§3.1)"}


def with_rule_fields(spec: str | dict[str, Any]) -> dict[str, Any]:
    """``spec`` (a name or a config with nested ``base``) with the rule parts' test fields."""
    cfg = {"name": spec} if isinstance(spec, str) else dict(spec)
    cfg.update(RULE_FIELDS.get(cfg["name"], {}))
    if "base" in cfg:
        cfg["base"] = with_rule_fields(cfg["base"])
    return cfg


GRAD_CASES: list[tuple[Any, str]] = (
    # every binarizing method alone: the rule methods on resnet20; the baselines (no rule: the
    # raw gradient) on the fast MLP
    [(n, "resnet20" if adds_rules(n) else "mlp") for n in NAMES if binarizes(n)]
    + [({"name": a, "base": b}, "resnet20") for a, b in COMPOSABLE]
    + [({"name": "ovsw", "base": {"name": "rebnn", "base": "reactnet"}}, "resnet20")]
    + [({"name": "rebnn", "base": {"name": "ovsw", "base": "recu"}}, "resnet20")]
)


def case_id(spec: Any) -> str:
    return get_method(spec).name if not isinstance(spec, str) else spec


def learnable_alpha(layer: nn.Module) -> tuple[str, Tensor] | None:
    """The scale's only trainable per-channel parameter (name, tensor), or None."""
    if layer.scale is None:
        return None
    params = [(n, p) for n, p in layer.scale.named_parameters() if p.requires_grad]
    if len(params) == 1 and params[0][1].numel() == layer.weight.shape[0]:
        return params[0]
    return None


def reference_grads(
    model: nn.Module,
    method: Method,
    x: Tensor,
    y: Tensor,
    state: TrainState,
    flipped: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """On a deep copy of ``model`` (as it is before the step): the method's schedules
    (``on_step_start``), forward, cross-entropy, backward; then every part's rule base first,
    from the references above. Returns (expected grads, raw task grads, AGS-scaled flags)."""
    ref = copy.deepcopy(model)
    layers = bnnkit.binary_layers(ref)
    method.on_step_start(layers, state)
    loss = nn.functional.cross_entropy(ref(x), y)
    ref.zero_grad(set_to_none=True)
    loss.backward()
    expected, raw, scaled = {}, {}, {}
    for name, layer in layers:
        w = layer.weight.detach().double()
        with torch.no_grad():
            bw = layer.binarized_weight().detach().double()
        g = layer.weight.grad.detach().double()
        raw[name] = g.float()
        alpha = learnable_alpha(layer)
        if alpha is not None:
            a_name, a = alpha
            ga = a.grad.detach().double()
            raw[f"{name}.scale.{a_name}"] = ga.float()
        flips = flipped[name] if flipped else torch.zeros_like(w, dtype=torch.bool)
        tracker = torch.zeros_like(w)  # before the update: 0 at steps 0 and 1 (no flips at 0)
        for part in method.parts():
            if part.name == "ovsw":
                g, scaled[name] = ref_ags(g, w, part.delta)
                g = ref_sad(g, w, flips, tracker, part)
            elif part.name == "rebnn":
                g = ref_rebnn_w(g, w, bw, part)
                if alpha is not None:
                    ga = ref_rebnn_alpha(ga, a.detach().double(), w, bw, part)
            else:
                assert not adds_rules(part.name), f"no reference for {part.name}'s rules"
        expected[name] = g.float()
        if alpha is not None:
            expected[f"{name}.scale.{a_name}"] = ga.float()
    return expected, raw, scaled


def assert_grads(seen: dict[str, Tensor], expected: dict[str, Tensor], label: str) -> None:
    for key, want in expected.items():
        assert key in seen, f"{label}: the optimizer saw no gradient for {key}"
        torch.testing.assert_close(
            seen[key], want, rtol=RTOL, atol=ATOL, msg=lambda m, k=key: f"{label} {k}: {m}"
        )


def test_every_method_that_adds_rules_has_a_reference_here() -> None:
    """Guard for the generated gradient checks: a newly registered rule method needs its
    reference in this file (REFERENCES)."""
    assert {n for n in NAMES if adds_rules(n)} <= set(REFERENCES)


@pytest.mark.parametrize(
    ("spec", "model"), GRAD_CASES, ids=[f"{case_id(s)}-{m}" for s, m in GRAD_CASES]
)
def test_first_step_gradient_is_every_parts_rule_base_first(spec: Any, model: str) -> None:
    """The gradient the optimizer uses at step 0 (recorded at optimizer.step) equals the raw
    task gradient (cross-entropy, deep copy of the model) with every part's rule applied base
    first: ReBNN γ(w − ŵ) (Eq. 3.144, fixed γ = 0.05) and its α term (Eq. 3.151-3.152); OvSW
    AGS (δ = 0.5, §4.2) then SAD with tracker 0 and no flips, so every weight gets λW (λ = 1e-2,
    §4.3). A plain baseline: the raw gradient, untouched."""
    method = get_method(with_rule_fields(spec))
    torch.manual_seed(0)
    run = Run(method, model)
    x, y = run.batch(1)
    expected, raw, scaled = reference_grads(run.model, method, x, y, state_at(0))
    result = run.step(x, y, state_at(0))
    assert result.extras == {}  # the task loss is the whole loss
    assert len(run.seen) == 1
    assert_grads(run.seen[0], expected, method.name)
    has_rules = any(p.adds_rules for p in method.parts())
    changed = any(not torch.allclose(expected[k], raw[k], rtol=RTOL, atol=ATOL) for k in raw)
    assert changed == has_rules  # the rules are visible at these settings, and only with rules
    if any(p.name == "ovsw" for p in method.parts()):
        assert any(s.any() for s in scaled.values()), "AGS scaled no channel: test too weak"


# Representative ovsw cases for two steps: alone, on a base whose sign is not sign(w) (recu), in
# both orders with rebnn, and three deep.
OVSW_CASES = [
    "ovsw",
    {"name": "ovsw", "base": "recu"},
    {"name": "ovsw", "base": "rebnn"},
    {"name": "rebnn", "base": "ovsw"},
    {"name": "ovsw", "base": {"name": "rebnn", "base": "reactnet"}},
]


@pytest.mark.parametrize("spec", OVSW_CASES, ids=[case_id(s) for s in OVSW_CASES])
def test_second_step_sad_reads_the_flips_of_the_first_step(spec: Any) -> None:
    """Step 1 (second step): SAD's tracker is (1 − m)·flipped, flipped = the sign-history flips
    of step 0's optimizer step (the base's sign), so the weights that flipped (tracker 1e-3 ≥ θ)
    get no λW and the others do (§4.3); all the rest as at step 0 (AGS on the new weights,
    ReBNN's γ(w − ŵ) in its place in the order)."""
    method = get_method(with_rule_fields(spec))
    torch.manual_seed(0)
    run = Run(method)
    neg0 = {n: lay.sign_history.negative.clone() for n, lay in run.layers}
    run.step(*run.batch(1), state_at(0))
    flipped = {n: lay.sign_history.negative != neg0[n] for n, lay in run.layers}
    assert sum(int(f.sum()) for f in flipped.values()) > 0, "no flip at step 0: test too weak"
    for n, lay in run.layers:
        assert torch.equal(lay.sign_history.flipped, flipped[n]), n
    x, y = run.batch(2)
    expected, _, _ = reference_grads(run.model, method, x, y, state_at(1), flipped=flipped)
    run.step(x, y, state_at(1))
    assert len(run.seen) == 2
    assert_grads(run.seen[1], expected, method.name)


@pytest.mark.parametrize(
    ("spec", "order"),
    [
        ({"name": "ovsw", "base": "rebnn"}, "rebnn term, then AGS of the sum, then SAD"),
        ({"name": "rebnn", "base": "ovsw"}, "AGS, SAD, then the rebnn term"),
    ],
    ids=["ovsw-on-rebnn", "rebnn-on-ovsw"],
)
def test_the_order_of_the_rules_matters_and_is_base_first(spec: dict, order: str) -> None:
    """The two orders of ovsw and rebnn give different gradients, and the optimizer sees the
    base-first one (documented order), not the reversed one."""
    method = get_method(with_rule_fields(spec))
    torch.manual_seed(0)
    run = Run(method)
    x, y = run.batch(1)
    expected, _, _ = reference_grads(run.model, method, x, y, state_at(0))
    reversed_method = _Reversed(method)
    wrong, _, _ = reference_grads(run.model, reversed_method, x, y, state_at(0))
    run.step(x, y, state_at(0))
    differs = [
        k for k in expected if not torch.allclose(expected[k], wrong[k], rtol=1e-4, atol=1e-6)
    ]
    assert differs, "both orders agree here: the check cannot tell them apart"
    assert_grads(run.seen[0], expected, f"{method.name} ({order})")


class _Reversed:
    """A stand-in whose parts run top first (only what reference_grads uses)."""

    def __init__(self, method: Method) -> None:
        self._method = method

    def parts(self) -> tuple[Method, ...]:
        return tuple(reversed(self._method.parts()))

    def on_step_start(self, layers: Any, state: TrainState) -> None:
        self._method.on_step_start(layers, state)


# -- 3. three parts; to_config round trip -------------------------------------------------------

THREE = {"name": "ovsw", "base": {"name": "rebnn", "base": "reactnet"}}


def test_three_part_composition_builds_and_steps() -> None:
    """ovsw on (rebnn on reactnet): parts (reactnet, rebnn, ovsw); reactnet's binarizers;
    both rule parts' state; one real step with the union of the parts' metrics."""
    method = get_method(THREE)
    assert [p.name for p in method.parts()] == ["reactnet", "rebnn", "ovsw"]
    torch.manual_seed(0)
    run = Run(method, "mlp")
    result = run.step(*run.batch(1), state_at(0))
    assert torch.isfinite(result.loss)
    want = set().union(*(alone(p.name)["metrics"] for p in method.parts()))
    assert want <= set(result.metrics)
    b = alone("reactnet")
    want_state = {k: v for p in method.parts() for k, v in alone(p.name)["state"].items()}
    assert set(want_state) == {"rebnn", "ovsw"}
    for name, layer in run.layers:
        assert type(layer.weight_binarizer) is b["weight_binarizer"], name
        assert type(layer.input_binarizer) is b["input_binarizer"], name
        assert b["scale"] in scale_types(layer), name
        assert {k: type(v) for k, v in layer.method_state.items()} == want_state, name


ROUND_TRIP = [
    *({"name": a, "base": b} for a, b in COMPOSABLE),
    with_rule_fields({"name": "ovsw", "base": "recu"}),
    with_rule_fields({"name": "rebnn", "base": {"name": "ovsw", "base": "bireal"}}),
    THREE,
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=[case_id(s) for s in ROUND_TRIP])
def test_to_config_round_trips(spec: dict[str, Any]) -> None:
    """get_method(m.to_config()) == m for composed methods (fields of every part kept), and
    the three spellings of a base (name/dict, keyword, Method) build the same method."""
    method = get_method(spec)
    cfg = method.to_config()
    assert cfg["name"] == spec["name"] and "base" in cfg
    assert get_method(cfg) == method
    assert get_method(copy.deepcopy(cfg)).to_config() == cfg
    base = spec["base"]
    top = {k: v for k, v in spec.items() if k != "base"}
    assert get_method(top, base=base) == method
    assert get_method(top, base=get_method(base)) == method
    assert [p.to_config() for p in method.parts()] == [
        p.to_config() for p in get_method(cfg).parts()
    ]
    for key, value in top.items():
        if key != "name":
            assert cfg[key] == value


# -- 4. refusals, explicitly ---------------------------------------------------------------------

EXPLICIT_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "ste", "base": "xnor"}, "ste", "xnor"),
    ({"name": "recu", "base": "ovsw"}, "recu", "ovsw"),
    ({"name": "ovsw", "base": "float"}, "ovsw", "float"),
    ({"name": "rebnn", "base": "float"}, "rebnn", "float"),
    ({"name": "ovsw", "base": "ovsw"}, "ovsw", "ovsw"),
    ({"name": "rebnn", "variant": "official_code", "base": "reactnet"}, "rebnn", "reactnet"),
    ({"name": "ovsw", "base": {"name": "reactnet", "weights": "float"}}, "ovsw", "reactnet"),
    ({"name": "ovsw", "base": {"name": "rebnn", "base": "ovsw"}}, "ovsw", "ovsw"),
]


@pytest.mark.parametrize(
    ("spec", "top", "base"),
    EXPLICIT_REFUSALS,
    ids=[f"{t}-on-{b}-{i}" for i, (_, t, b) in enumerate(EXPLICIT_REFUSALS)],
)
def test_representative_refusals_name_both_parts(spec: dict, top: str, base: str) -> None:
    """ConfigError (a ValueError) at construction, naming both parts and why: a top that only
    binarizes, a float base (float, reactnet weights: float), a part twice (also three deep),
    rebnn's official_code variant on a base."""
    with pytest.raises(ConfigError) as info:
        get_method(spec)
    assert isinstance(info.value, ValueError)
    assert_refusal_names(info.value, top, base)


@pytest.mark.parametrize("base", [n for n in NAMES if should_compose("rebnn", n)])
def test_rebnn_official_code_variant_is_refused_on_every_base(base: str) -> None:
    """The part-specific refusal: rebnn(variant="official_code") on any base; the default
    "paper" variant on the same base composes; official_code alone still builds."""
    assert get_method("rebnn", variant="official_code").parts()[0].variant == "official_code"
    with pytest.raises(ConfigError) as info:
        get_method({"name": "rebnn", "variant": "official_code", "base": base})
    assert_refusal_names(info.value, "rebnn", base)
    assert [p.name for p in get_method({"name": "rebnn", "base": base}).parts()] == [
        base,
        "rebnn",
    ]
