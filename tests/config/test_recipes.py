"""Recipes: loading, overrides, validation errors, and every shipped recipe."""

from __future__ import annotations

import pytest
import yaml

from bnnkit.config import (
    ConfigError,
    apply_overrides,
    list_recipes,
    load_recipe,
    parse_override,
)

BASE = {
    "data": {"name": "synthetic", "batch_size": 32},
    "model": {"name": "mlp", "hidden": 32},
    "method": {"name": "irnet", "t_min": 0.1},
    "optimizer": {"name": "sgd", "lr": "1e-3"},
    "training": {"epochs": 2},
}


def test_sections_become_typed_frozen_dataclasses():
    cfg = load_recipe(BASE)
    stage = cfg.stages[0]
    assert stage.optimizer.lr == 1e-3  # YAML's "1e-3" string is coerced to float
    assert stage.method.name == "irnet" and stage.method.t_min == 0.1
    assert cfg.model.options == {"hidden": 32}
    assert cfg.data.batch_size == 32 and stage.training.epochs == 2
    with pytest.raises(AttributeError):
        stage.training.epochs = 3  # frozen


def test_dotted_overrides_and_yaml_values():
    cfg = load_recipe(
        BASE,
        [
            "training.epochs=5",
            "data.rrc_scale=[0.08, 1.25]",
            "optimizer.nesterov=true",
            "method.t_max=5",
        ],
    )
    assert cfg.stages[0].training.epochs == 5
    assert cfg.data.rrc_scale == (0.08, 1.25)
    assert cfg.stages[0].optimizer.nesterov is True
    assert cfg.stages[0].method.t_max == 5.0


def test_method_fields_are_coerced_like_other_sections():
    # YAML 1.1 reads 9e-4 (no dot) as a string; method fields get their declared type
    cfg = load_recipe(BASE, ["method.name=ovsw", "method.lam=9e-4", "method.learnable_scale=true"])
    assert cfg.stages[0].method.lam == 9e-4 and cfg.stages[0].method.learnable_scale is True
    with pytest.raises(ConfigError, match=r"^method\.delta = 'big' must be a number$"):
        load_recipe(BASE, ["method.name=ovsw", "method.delta=big"])


def test_switching_method_drops_the_old_methods_fields():
    cfg = load_recipe(BASE, ["method.name=ste"])
    assert cfg.stages[0].method.name == "ste"
    cfg = load_recipe(BASE, ["method=reactnet", "method.weights=float"])
    assert cfg.stages[0].method.to_config() == {"name": "reactnet", "weights": "float"}


def test_model_name_and_method_name_switch_their_section_alike():
    cfg = load_recipe(BASE, ["model.name=resnet20"])  # mlp's hidden does not carry over
    assert cfg.model.name == "resnet20" and cfg.model.options == {}
    cfg = load_recipe(BASE, ["model.name=resnet20", "model.pad_value=1"])  # either order
    assert cfg.model.pad_value == 1.0 and cfg.model.options == {}
    cfg = load_recipe(BASE, ["model.depth=3", "model.name=mlp"])  # the same name keeps it
    assert cfg.model.options == {"hidden": 32, "depth": 3}
    cfg = load_recipe(BASE, ["method.name=irnet"])
    assert cfg.stages[0].method.t_min == 0.1
    with pytest.raises(ConfigError, match=r"model\.hidden: not an option of model resnet20"):
        load_recipe(BASE, ["model.hidden=8", "model.name=resnet20"])


def test_an_override_that_is_not_yaml_names_its_key():
    with pytest.raises(ConfigError, match=r"^training\.epochs = '\[1' is not a YAML value .*quote"):
        load_recipe(BASE, ["training.epochs=[1"])


def test_stages_merge_over_the_top_level():
    raw = {**BASE, "method": {"name": "reactnet"}, "stages": [
        {"name": "step1", "method": {"name": "reactnet", "weights": "float"}, "optimizer": {"weight_decay": 1e-5}},
        {"name": "step2", "training": {"epochs": 3}},
    ]}  # fmt: skip
    cfg = load_recipe(raw, ["stages.1.optimizer.lr=5e-4"])
    s1, s2 = cfg.stages
    assert (
        s1.method.weights == "float"
        and s1.optimizer.weight_decay == 1e-5
        and s1.optimizer.lr == 1e-3
    )
    assert (
        s2.method.weights == "binary"
        and s2.optimizer.weight_decay == 0.0
        and s2.optimizer.lr == 5e-4
    )
    assert (s1.training.epochs, s2.training.epochs) == (2, 3)


# One dialect: every message starts with the dotted location, then the bad value (when there is
# one), what is wrong, and what is allowed; whatever the section or method.
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.epochz=3"], r"^training\.epochz: not a key of training; allowed: epochs, "),
        (["trainig.epochs=3"], r"^trainig: not a top-level key of a recipe; allowed: name, base, "),
        (["training.epochs=three"], r"^training\.epochs = 'three' must be an integer$"),
        (["training.epochs=true"], r"^training\.epochs = True must be an integer$"),
        (["training.epochs=0"], r"^training\.epochs = 0 is out of range; allowed: a number >= 1$"),
        (
            ["optimizer.name=lamb"],
            r"^optimizer\.name = 'lamb' is not valid; allowed: 'sgd', 'adam', 'adamw'$",
        ),
        (
            ["method.name=recuu"],
            r"^method\.name = 'recuu' is not a known method; allowed: adabin, biper, bireal, .* \(did you mean 'recu'\?\)$",
        ),
        (
            ["method.t_mni=1"],
            r"^method\.t_mni: not a hyperparameter of irnet; allowed: t_min, t_max$",
        ),
        (
            ["method.t_min=-1"],
            r"^method\.t_min = -1\.0 is out of range for irnet; allowed: \(0, inf\)$",
        ),
        (
            ["model.name=resnet99"],
            r"^model\.name = 'resnet99' is not a known model; allowed: mlp, ",
        ),
        (["model.depthh=3"], r"^model\.depthh: not an option of model mlp; allowed: in_features, "),
        (["data.name=mnist"], r"^data\.name = 'mnist' is not valid; allowed: digits, synthetic"),
        (["data.batch_size=0"], r"^data\.batch_size = 0 is not valid; allowed: an integer >= 1$"),
        (["data.rrc_scale=[0.5]"], r"^data\.rrc_scale = \[0\.5\] has the wrong number of values$"),
        (
            ["schedule.step_at=middle"],
            r"^schedule\.step_at = 'middle' is not valid; allowed: 'start', 'end'$",
        ),
        (
            ["training.label_smoothing=1.5"],
            r"^training\.label_smoothing = 1\.5 is out of range; allowed: \[0, 1\)$",
        ),
        (
            ["stages=[{name: a, training: {epochs: 0}}]"],
            r"^stages\.0\.training\.epochs = 0 is out of range; allowed: a number >= 1$",
        ),
        (
            ["stages=[{name: a, method: {name: recu, tau_min: 2}}]"],
            r"^stages\.0\.method\.tau_min = 2\.0 is out of range for recu; allowed: \[0\.5, 1\)$",
        ),
        (
            ["method={name: ovsw, base: {name: rebnn, gamma_mode: x}}"],
            r"^method\.base\.gamma_mode = 'x' is not valid for rebnn; allowed: 'paper', ",
        ),
        (["method={name: ste, base: xnor}"], r"^method: cannot compose ste on xnor: "),
        (["training.epochs"], r"^'training.epochs' must look like key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_valid_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(BASE, overrides)


def test_unknown_top_level_key_in_a_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "optimiser": {}}))
    with pytest.raises(ConfigError, match=r"^optimiser: not a top-level key of a recipe"):
        load_recipe(path)
    path.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="neither a file nor a shipped recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_to_dict_round_trips():
    cfg = load_recipe(BASE, ["training.epochs=4"])
    again = load_recipe(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_parse_override():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("data.root=/x/y") == (["data", "root"], "/x/y")


def test_override_through_a_string_method():
    raw = apply_overrides({"method": "irnet"}, ["method.t_min=0.5"])
    assert raw["method"] == {"name": "irnet", "t_min": 0.5}


SHIPPED = list_recipes()


def test_the_expected_recipes_are_shipped():
    expected = {"quickstart", "imagenet/resnet18_irnet", "imagenet/reactnet_resnet18_reactnet"}
    for model in ("resnet20", "resnet18_cifar", "vgg_small"):
        for method in ("ste", "xnor", "bireal", "irnet", "reactnet"):
            expected.add(f"cifar10/{model}_{method}")
    assert expected <= set(SHIPPED), sorted(expected - set(SHIPPED))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_validates_and_takes_overrides(name):
    cfg = load_recipe(name, ["training.epochs=1", "data.root=/tmp/elsewhere"])
    assert all(s.training.epochs == 1 for s in cfg.stages)
    assert cfg.data.root == "/tmp/elsewhere"
    assert cfg.name


def test_model_pad_value_is_a_bnnkit_option_of_every_model():
    cfg = load_recipe({**BASE, "model": {"name": "resnet20", "pad_value": -1}})
    assert cfg.model.pad_value == -1.0 and cfg.model.options == {}
    assert cfg.to_dict()["model"] == {"name": "resnet20", "pad_value": -1.0}
    assert load_recipe(BASE).to_dict()["model"] == {"name": "mlp", "hidden": 32}  # 0: not written
    with pytest.raises(ConfigError, match=r"^model\.pad_value = 2\.0 is not valid; allowed: 0"):
        load_recipe(BASE, ["model={name: resnet20, pad_value: 2}"])
