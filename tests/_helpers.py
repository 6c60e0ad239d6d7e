"""Helpers shared by test modules (importable as ``_helpers`` through pytest's ``pythonpath``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any


def merged(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A deep copy of the recipe ``base`` with each given section merged into its own (a
    section given as a non-dict value replaces it)."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """The ``kind`` events (``train`` / ``epoch``) of a run's ``metrics.jsonl``, every line parsed."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]
