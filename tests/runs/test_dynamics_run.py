"""The trackers inside the engine, the run directory's dynamics files, report and compare."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import yaml
from _helpers import events, merged
from safetensors.torch import load_file
from torch import nn

from bnnkit.cli.main import main
from bnnkit.diagnostics import Dynamics
from bnnkit.diagnostics import figures as figures_mod
from bnnkit.diagnostics import report as report_mod
from bnnkit.diagnostics.report import ReportError
from bnnkit.diagnostics.report import write_report as write_parsed_report
from bnnkit.methods import binarize_, get_method
from bnnkit.methods.recu import ReCUSign
from bnnkit.models import create_model
from bnnkit.nn import BinaryConv2d, BinaryLinear
from bnnkit.runs import CompareError, compare, load_checkpoint, load_run, train
from bnnkit.runs.run import RunInterrupted


def write_report(run_dir, out=None):
    """What ``bnnkit report RUN_DIR`` does: parse the run directory, write its report."""
    return write_parsed_report(load_run(run_dir), out)


METRICS = ("flip", "backforth", "dead", "silent", "qerr", "entropy")


BASE = {
    "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
             "synthetic_train": 192, "synthetic_val": 64, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 12, "hidden": 32, "depth": 2},
    "method": {"name": "ste"},
    "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
    "schedule": {"name": "constant"},
    "training": {"epochs": 3, "seed": 3},
    "logging": {"log_every": 2, "progress": "off", "tensorboard": False},
}  # fmt: skip


def recipe(**sections):
    return merged(BASE, **sections)


def binary_names(cfg):
    model = create_model(cfg["model"]["name"], num_classes=4, **{
        k: v for k, v in cfg["model"].items() if k != "name"})  # fmt: skip
    binarize_(model, get_method(cfg["method"]["name"]))
    return Dynamics(model).layer_names


@pytest.fixture(scope="module")
def ste_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn") / "run"
    train(recipe(), out=out)
    return out


def test_run_logs_every_key_per_layer_and_all(ste_run):
    names = binary_names(recipe())
    assert len(names) >= 2
    train_events = events(ste_run, "train")
    for e in train_events:
        for m in METRICS:
            assert all(f"dyn/{m}/{n}" in e for n in [*names, "all"]), (m, sorted(e))
    epochs = events(ste_run, "epoch")
    for e in epochs:
        for m in ("oscillation", "backforth", "dead", "silent", "qerr", "entropy"):
            assert all(f"dyn/{m}/{n}" in e for n in [*names, "all"])
    summary = json.loads((ste_run / "summary.json").read_text())
    assert set(summary["dynamics"]) == {f"dyn/{m}/all" for m in (*METRICS, "oscillation")}
    assert summary["dynamics"]["dyn/silent/all"] == epochs[-1]["dyn/silent/all"]
    # silent can only fall; lr 0.5 flips weights, so it does fall
    silent = [e["dyn/silent/all"] for e in epochs]
    assert silent == sorted(silent, reverse=True) and silent[-1] < 1.0


def test_counts_in_the_dump_equal_the_logged_per_step_flip_rates(ste_run):
    """Every step is an update: sum over epochs of oscillation x steps x numel = total flips."""
    dump = load_file(str(ste_run / "dynamics" / "stage1-flips.safetensors"))
    epochs = events(ste_run, "epoch")
    steps_per_epoch = 192 // 32
    for name in binary_names(recipe()):
        flips = dump[f"{name}/flips"].long()
        expected = sum(e[f"dyn/oscillation/{name}"] for e in epochs) * steps_per_epoch * flips.numel()  # fmt: skip
        assert flips.sum().item() == pytest.approx(expected, abs=1e-6)
        assert (flips == 0).float().mean().item() == pytest.approx(epochs[-1][f"dyn/silent/{name}"])
        last = dump[f"{name}/last_flip"]
        assert ((last == -1) == (flips == 0)).all()
        assert last.max().item() <= epochs[-1]["step"] and last[flips > 0].min().item() >= 1
        assert set(dump[f"{name}/sign"].unique().tolist()) <= {-1, 1}


def test_init_dump_and_histograms(ste_run):
    init = load_file(str(ste_run / "dynamics" / "stage1-init.safetensors"))
    ckpt = load_checkpoint(ste_run)
    names = binary_names(recipe())
    assert list(init) == sorted(names) or set(init) == set(names)
    for n in names:
        assert init[n].shape == ckpt.model[f"{n}.weight"].shape
        assert not torch.equal(init[n], ckpt.model[f"{n}.weight"])  # trained since
    lines = (ste_run / "dynamics" / "histograms.jsonl").read_text().splitlines()
    hists = [json.loads(x) for x in lines]
    assert sorted({h["epoch"] for h in hists}) == [0, 1, 2, 3]  # hist_every 1 + the start
    first = next(h for h in hists if h["epoch"] == 0 and h["kind"] == "layer" and h["layer"] == names[0])  # fmt: skip
    assert sum(first["counts"]) == init[names[0]].numel() and len(first["counts"]) == 64
    channel = next(h for h in hists if h["epoch"] == 0 and h["kind"] == "channel0")
    assert sum(channel["counts"]) == init[names[0]][0].numel()


def test_resumed_run_continues_the_tracker_counts(tmp_path):
    train(recipe(), out=tmp_path / "full")

    def stop(result):
        if result.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        train(recipe(), out=tmp_path / "cut", callbacks=[stop])
    train(resume=tmp_path / "cut")
    a = load_file(str(tmp_path / "full" / "dynamics" / "stage1-flips.safetensors"))
    b = load_file(str(tmp_path / "cut" / "dynamics" / "stage1-flips.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = events(tmp_path / "full", "epoch"), events(tmp_path / "cut", "epoch")
    keys = [k for k in ea[-1] if k.startswith("dyn/")]
    assert keys and [e[k] for e in ea for k in keys] == [e[k] for e in eb for k in keys]


def test_every_k_steps_and_disabled(tmp_path):
    train(recipe(diagnostics={"every": 2, "hist_every": 0}), out=tmp_path / "k2")
    dump = load_file(str(tmp_path / "k2" / "dynamics" / "stage1-flips.safetensors"))
    epochs = events(tmp_path / "k2", "epoch")
    name = binary_names(recipe())[0]
    flips = dump[f"{name}/flips"].long()
    updates_per_epoch = (192 // 32) // 2
    expected = sum(e[f"dyn/oscillation/{name}"] for e in epochs) * updates_per_epoch * flips.numel()
    assert flips.sum().item() == pytest.approx(expected, abs=1e-6)
    hists = (tmp_path / "k2" / "dynamics" / "histograms.jsonl").read_text().splitlines()
    assert sorted({json.loads(h)["epoch"] for h in hists}) == [0, 3]  # start and end only

    train(recipe(diagnostics={"enabled": False}), out=tmp_path / "off")
    assert not (tmp_path / "off" / "dynamics").exists()
    assert not any(k.startswith("dyn/") for e in events(tmp_path / "off", "train") for k in e)
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["dynamics"] == {}


def test_float_method_tracks_nothing(tmp_path):
    train(recipe(method={"name": "float"}, training={"epochs": 1}), out=tmp_path / "f")
    assert not any(k.startswith("dyn/") for e in events(tmp_path / "f", "epoch") for k in e)


def test_recu_flips_are_those_of_the_centred_weight():
    """ReCU binarizes sign(w - mean_c(w)): shifting a channel by a constant flips no binary weight."""
    layer = BinaryConv2d(1, 1, 2, bias=False, weight_binarizer=ReCUSign())
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[0.1, 0.2], [0.3, 0.6]]]]))  # mean 0.3
    dyn = Dynamics(nn.Sequential(layer))
    with torch.no_grad():
        layer.weight.sub_(0.25)  # raw signs of 0.1, 0.2 (and 0.3 - 0.25 > 0) change: 2 raw flips
    dyn.update()
    assert dyn.result()["flip/0"] == 0.0
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor([[[[0.1, 0.2], [0.35, 0.15]]]])
        )  # mean 0.2: 0.6 -> 0.15 flips
    dyn.update()
    # centred before: [-0.2, -0.1, 0.0(+), 0.3]; after: [-0.1, 0.0(+), 0.15, -0.05] -> 2 of 4 flip
    assert dyn.result(reset=True)["flip/0"] == pytest.approx((0 + 0.5) / 2)


def test_dead_weights_are_the_clipped_ste_cut_off():
    layer = BinaryLinear(4, 2, bias=False, weight_binarizer="ste_sign")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 1.5, -0.2, -2.0], [0.1, 0.3, 3.0, -0.4]]))
    dyn = Dynamics(nn.Sequential(layer))
    x = torch.tensor([[1.0, -2.0, 0.5, 1.0]])
    layer(x).sum().backward()  # every upstream gradient is nonzero (x has no zero)
    dyn.record_gradients()
    assert dyn.result()["dead/all"] == pytest.approx(3 / 8)  # |w| > 1: 1.5, -2.0, 3.0


def test_tracker_memory_is_at_most_4_bytes_per_binary_weight():
    model = binarize_(create_model("resnet20", num_classes=10), get_method("recu"))
    dyn = Dynamics(model)
    weights = sum(m.weight.numel() for m in dyn._modules_tracked)
    state = sum(b.numel() * b.element_size() for b in dyn.buffers())
    assert weights > 250_000 and state <= 4 * weights + 4096


# -- report -----------------------------------------------------------------------------------------


def test_report_writes_markdown_and_every_figure(ste_run, tmp_path):
    pytest.importorskip("matplotlib")
    report, figures = write_report(ste_run, tmp_path / "rep")
    text = report.read_text()
    names = binary_names(recipe())
    assert all(f"| {n} |" in text for n in names) and "| all |" in text
    assert {f.name for f in figures} == {
        "weight_distribution.png", "oscillation.png", "silent_weights.png",
        "flip_accuracy.png", "dead_tau.png", "flip_heatmap.png",
    }  # fmt: skip
    for f in figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{f.name}" in text
    split = figures_mod.silent_split(load_run(ste_run))
    epochs = events(ste_run, "epoch")
    assert split["percent"] == pytest.approx(100 * epochs[-1][f"dyn/silent/{names[-1]}"])


def test_figures_of_a_one_epoch_run_show_points_whole_epochs_and_tau(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    compare_mod = importlib.import_module("bnnkit.runs.compare")  # the name is also a function
    figures, real = {}, figures_mod.save_figure

    def keep(fig, plt, path):
        figures.setdefault(path.name, fig)  # the recu run's report comes first
        fig.canvas.draw()  # ticks are placed at draw time
        return real(fig, plt, path)

    monkeypatch.setattr(figures_mod, "save_figure", keep)
    monkeypatch.setattr(compare_mod, "save_figure", keep)
    one = recipe(method={"name": "recu"}, training={"epochs": 1})
    train(one, out=tmp_path / "run")
    write_report(tmp_path / "run", tmp_path / "rep")
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(one))
    compare(str(path), ["ste"], [0], out=tmp_path / "cmp", log=lambda s: None)
    assert {"flip_accuracy.png", "dead_tau.png", "oscillation.png", "compare.png"} <= set(figures)
    for name in ("flip_accuracy.png", "dead_tau.png", "oscillation.png", "compare.png"):
        for ax in figures[name].axes:
            for line in ax.get_lines():  # one epoch: one point per line, drawn as a marker
                assert line.get_marker() not in (None, "", "None"), (name, line.get_label())
            if ax.get_xlabel() == "epoch":
                assert all(float(t).is_integer() for t in ax.get_xticks()), (name, ax.get_xticks())
    legend = figures["dead_tau.png"].axes[0].get_legend()
    assert "ReCU τ" in [t.get_text() for t in legend.get_texts()]
    titles = [ax.get_title() for f in figures.values() for ax in f.axes]
    assert not any(t.lower().startswith("flip rate") for t in titles), titles  # one name:
    assert "Oscillation per layer and epoch" in str(titles)  # oscillation (the heat map too)


def test_report_without_matplotlib_keeps_the_tables(ste_run, tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "pyplot", lambda: None)
    report, figures = write_report(ste_run, tmp_path / "rep")
    assert figures == [] and "bnnkit[plot]" in report.read_text()


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "missing")
    with pytest.raises(ReportError, match=r"metrics\.jsonl"):
        write_report(tmp_path)


def test_report_cli(ste_run, tmp_path, capsys):
    assert main(["report", str(ste_run), "--out", str(tmp_path / "r")]) == 0
    assert "report.md" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a directory" in capsys.readouterr().err


# -- compare ----------------------------------------------------------------------------------------


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe(training={"epochs": 2})))
    return path


def test_compare_gives_bop_its_own_optimizer_section(recipe_file, tmp_path):
    out = tmp_path / "cmp"
    res = compare(str(recipe_file), ["ste", "bop"], [0],
                  ["training.epochs=1", "bop.optimizer.binary.gamma=1e-3", "bop.optimizer.lr=0.01"],
                  out=out, log=lambda s: None)  # fmt: skip
    bop = yaml.safe_load((out / "bop-seed0" / "config.yaml").read_text())["stages"][0]["optimizer"]
    ste = yaml.safe_load((out / "ste-seed0" / "config.yaml").read_text())["stages"][0]["optimizer"]
    assert bop["binary"]["gamma"] == 1e-3 and bop["lr"] == 0.01
    assert ste["binary"] is None and ste["lr"] == 0.5  # the recipe's, untouched
    assert set(res.runs) == {"ste", "bop"}
    compare(str(recipe_file), ["bop"], [0], ["training.epochs=1"], out=tmp_path / "d",
            log=lambda s: None)  # no binary section given: Bop's defaults  # fmt: skip
    cfg = yaml.safe_load((tmp_path / "d" / "bop-seed0" / "config.yaml").read_text())
    assert cfg["stages"][0]["optimizer"]["binary"]["gamma"] == 1e-4


def test_compare_trains_every_method_and_seed_then_tabulates(recipe_file, tmp_path):
    out = tmp_path / "cmp"
    res = compare(str(recipe_file), ["ste", "ovsw"], [0, 1], ["ovsw.delta=0.05"], out=out, log=lambda s: None)  # fmt: skip
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "ovsw-seed0", "ovsw-seed1", "ste-seed0", "ste-seed1"]  # fmt: skip
    cfg = yaml.safe_load((out / "ovsw-seed1" / "config.yaml").read_text())
    assert cfg["stages"][0]["method"]["delta"] == 0.05 and cfg["stages"][0]["training"]["seed"] == 1
    assert "delta" not in yaml.safe_load((out / "ste-seed0" / "config.yaml").read_text())["stages"][0]["method"]  # fmt: skip
    for m in ("ste", "ovsw"):
        tops = [json.loads((out / f"{m}-seed{s}" / "summary.json").read_text())["best_top1"] for s in (0, 1)]  # fmt: skip
        mean, std, n = res.stats(m, "best_top1")
        assert n == 2 and mean == pytest.approx(sum(tops) / 2)
        assert std == pytest.approx(abs(tops[0] - tops[1]) / 2**0.5)
        assert (out / f"{m}-seed0" / "report.md").is_file()
    md = (out / "compare.md").read_text()
    assert "| ste |" in md and "| ovsw |" in md and "silent %" in md and "--seeds 0,1" in md
    doc = json.loads((out / "compare.json").read_text())
    assert doc["runs"]["ste"]["0"]["silent"] == pytest.approx(
        100 * json.loads((out / "ste-seed0" / "summary.json").read_text())["dynamics"]["dyn/silent/all"])  # fmt: skip


def test_compare_resumes_skips_finished_runs_and_refuses_other_settings(recipe_file, tmp_path):
    out = tmp_path / "cmp"
    compare(str(recipe_file), ["ste"], [0], out=out, log=lambda s: None)
    calls = []

    def fake_train(*args, **kwargs):
        calls.append(kwargs)
        return train(*args, **kwargs)

    # a second method whose run was interrupted after one epoch
    with pytest.raises(RunInterrupted):

        def stop(result):
            raise KeyboardInterrupt

        train(str(recipe_file), ["method.name=xnor", "training.seed=0"], out=out / "xnor-seed0", callbacks=[stop])  # fmt: skip
    logs = []
    compare(str(recipe_file), ["ste", "xnor"], [0], out=out, train_fn=fake_train, log=logs.append)
    assert [c.get("resume") for c in calls] == [out / "xnor-seed0"]
    assert "done before" in logs[0] and "resuming" in logs[1]
    assert json.loads((out / "xnor-seed0" / "summary.json").read_text())["stages"][0]["epochs"] == 2
    with pytest.raises(CompareError, match="another --out"):
        compare(str(recipe_file), ["ste"], [0], ["training.epochs=1"], out=out, log=lambda s: None)


def test_compare_adds_methods_with_their_own_overrides_but_keeps_trained_ones(
    recipe_file, tmp_path
):
    """A comparison folder grows by methods (each may bring ``<method>.<key>`` overrides of its
    own), but a trained method's overrides, the shared ones and the recipe stay fixed."""
    out, quiet = tmp_path / "cmp", (lambda s: None)
    compare(str(recipe_file), ["ste"], [0], ["training.epochs=1", "ovsw.delta=0.05"], out=out, log=quiet)  # fmt: skip
    assert not (out / "ovsw-seed0").exists()  # an override of a method not compared is kept
    compare(str(recipe_file), ["ste", "ovsw"], [0],
            ["training.epochs=1", "ovsw.delta=0.05", "xnor.optimizer.lr=0.01"], out=out, log=quiet)  # fmt: skip
    cfg = yaml.safe_load((out / "ovsw-seed0" / "config.yaml").read_text())["stages"][0]
    assert cfg["method"]["delta"] == 0.05 and cfg["training"]["epochs"] == 1
    with pytest.raises(CompareError, match=r"the overrides of ovsw.*another --out"):
        compare(str(recipe_file), ["ovsw"], [0], ["training.epochs=1", "ovsw.delta=0.04"], out=out, log=quiet)  # fmt: skip
    with pytest.raises(CompareError, match="another --out"):  # a shared override changed
        compare(str(recipe_file), ["xnor"], [0], ["training.epochs=2", "ovsw.delta=0.05"], out=out, log=quiet)  # fmt: skip
    assert not (out / "xnor-seed0").exists()


def test_compare_figure_keeps_one_colour_per_method_in_every_panel(
    recipe_file, tmp_path, monkeypatch
):
    """float has no dynamics curves: the binary methods' colours must not shift in those panels."""
    import importlib

    C = importlib.import_module(
        "bnnkit.runs.compare"
    )  # the module (bnnkit.runs.compare is the function)
    figures = []
    monkeypatch.setattr(C, "save_figure", lambda fig, plt, path: figures.append(fig) or path)
    compare(str(recipe_file), ["float", "ste", "xnor"], [0], ["training.epochs=1"], out=tmp_path / "c", log=lambda s: None)  # fmt: skip
    (fig,) = figures
    top1, silent = fig.axes[0], fig.axes[4]
    colour = {line.get_label(): line.get_color() for line in top1.lines}
    assert set(colour) == {"float", "ste", "xnor"} and len(set(colour.values())) == 3
    assert [line.get_label() for line in silent.lines] == ["ste", "xnor"]
    assert all(line.get_color() == colour[line.get_label()] for line in silent.lines)


def test_compare_argument_errors(recipe_file, tmp_path):
    with pytest.raises(CompareError, match="unknown method"):
        compare(str(recipe_file), ["ste", "nope"], [0], out=tmp_path / "a")
    with pytest.raises(CompareError, match="set by compare"):
        compare(str(recipe_file), ["ste"], [0], ["method.name=xnor"], out=tmp_path / "b")
    with pytest.raises(ValueError, match="delta"):  # a bad method field fails before training
        compare(str(recipe_file), ["ovsw"], [0], ["ovsw.delta=-1"], out=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_compare_cli_prints_the_table(recipe_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(recipe_file), "--methods", "ste", "--seeds", "0", "--out", str(out), "training.epochs=1"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ste |" in printed and "compare.md" in printed
    assert main(["compare", str(recipe_file), "--methods", "ste", "--seeds", "a,b"]) == 2
