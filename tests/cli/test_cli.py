"""The ``bnnkit`` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bnnkit.cli.main import main


def test_list_models_and_methods(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "reactnet_a" in out
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "irnet" in out and "t_min=0.001" in out
    assert main(["list", "binarizers"]) == 0
    assert "approx_sign" in capsys.readouterr().out


def test_listings_print_plain_text_not_markup(capsys):
    for what in ("models", "methods"):
        assert main(["list", what]) == 0
        out = capsys.readouterr().out
        assert "``" not in out and ":math:" not in out and ":class:" not in out, out
    assert main(["list", "models"]) == 0
    assert "depth binary hidden layers of width hidden" in capsys.readouterr().out


def test_help_does_not_import_torch():
    """`bnnkit --help` (and argument errors) answer without loading torch (2 s here)."""
    code = ("import sys; from bnnkit.cli.main import build_parser; build_parser(); "
            "import bnnkit; print('torch' in sys.modules)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "train" in proc.stdout


def test_the_package_still_exports_its_api_lazily():
    import bnnkit

    assert callable(bnnkit.create_model) and callable(bnnkit.train) and bnnkit.export.save_packed
    assert {"create_model", "train", "export"} <= set(dir(bnnkit))
    code = ("import bnnkit; print(bnnkit.nn.BinaryConv2d.__name__, bnnkit.binarize.sign.__name__, "
            "bnnkit.training.Trainer.__name__)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["BinaryConv2d", "sign", "Trainer"]  # subpackages, lazily
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bnnkit.nope  # noqa: B018


def test_summary_table_and_json(capsys):
    assert main(["summary", "resnet20", "--method", "xnor"]) == 0
    out = capsys.readouterr().out
    assert "layers.0.conv1" in out and "OPs = FLOPs + BOPs/64" in out
    assert main(["summary", "mlp", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["binary_params"] == 2 * 256 * 256


def test_summary_input_size_and_num_classes(capsys):
    assert (
        main(["summary", "resnet18", "--input-size", "3,64,64", "--num-classes", "10", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [3, 64, 64]
    assert data["layers"][-1]["output_shape"] == [10]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "resnet21"], "'resnet21' is not a known model; allowed: mlp"),
        (
            ["summary", "resnet20", "--method", "bnn"],
            "'bnn' is not a known method; allowed: adabin, biper, bireal",
        ),
    ],
)
def test_user_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "list", "methods"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "reactnet" in proc.stdout


def test_only_user_errors_become_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """The CLI turns bnnkit's user errors (BnnkitError) into one line and their exit status;
    any other exception (an internal bug, even a ValueError) propagates with its traceback."""
    from bnnkit.cli import listing
    from bnnkit.errors import BnnkitError, ConfigError
    from bnnkit.training import NonFiniteLossError

    def raising(error):
        def run(args):
            raise error

        return run

    for error, status in [(ConfigError("is bad", location=("a", "b"), value=1), 2),
                          (NonFiniteLossError("diverged"), 1), (BnnkitError("plain"), 2)]:  # fmt: skip
        monkeypatch.setattr(listing, "run", raising(error))
        parser_run = main(["list", "models"])
        err = capsys.readouterr().err
        assert parser_run == status and err == f"bnnkit: error: {error}\n"
    monkeypatch.setattr(listing, "run", raising(ValueError("an internal bug")))
    with pytest.raises(ValueError, match="an internal bug"):
        main(["list", "models"])


def test_ctrl_c_outside_a_run_is_one_line_and_130(monkeypatch, capsys):
    from bnnkit.cli import listing

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(listing, "run", interrupted)
    assert main(["list", "models"]) == 130
    assert capsys.readouterr().err.strip() == "bnnkit: stopped: interrupted"
