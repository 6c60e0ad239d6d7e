"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    exec(compile(blocks[0], str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "swapped to binary: 2" in out and "kept float: 0 (first conv)" in out
    assert "kept float: 11 (last linear)" in out and "torch.Size([2, 10])" in out


def test_readme_starts_with_the_two_fresh_machine_commands():
    text = README.read_text()
    first_block = re.findall(r"```bash\n(.*?)```", text, re.S)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("bnnkit train")
    ci = (README.parent / ".ci" / "run").read_text()
    # .ci/run runs the README's test command, step by step
    for step in commands[1].split(" && "):
        step = step.replace("pip install", "python -m pip install --quiet")
        assert step in ci, step
