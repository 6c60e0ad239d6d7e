"""Metric and event names: the one place the writers (engine, trackers, runs) and the readers
(report, compare, the CLI's tables) take them from.

``metrics.jsonl`` holds one JSON object per event, ``{"event": TRAIN_EVENT | EPOCH_EVENT, ...}``.
A ``train`` event (every ``logging.log_every`` steps) has ``stage``, ``epoch``, ``step``, ``loss``
(the window's mean), ``lr``, ``images_per_s``, the method's extra losses as ``loss/<name>``,
the method's metrics as ``method/<method>/<name>`` and the trackers' as
``dyn/<metric>/<layer>``. An ``epoch`` event has ``stage``, ``epoch``, ``epochs``, ``step``,
``train_loss``, ``lr``, ``seconds``, ``images_per_s``, and, when evaluated, ``top1``, ``top5``,
``val_loss``, ``is_best``; plus the epoch's ``dyn/...`` values.
"""

from __future__ import annotations

# events
TRAIN_EVENT = "train"
EPOCH_EVENT = "epoch"

# keys of train / epoch events
STAGE = "stage"
EPOCH = "epoch"
EPOCHS = "epochs"
STEP = "step"
LOSS = "loss"
LR = "lr"
IMAGES_PER_S = "images_per_s"
SECONDS = "seconds"
TRAIN_LOSS = "train_loss"
TOP1 = "top1"
TOP5 = "top5"
VAL_LOSS = "val_loss"
IS_BEST = "is_best"

# prefixes
EXTRA_LOSS_PREFIX = "loss/"
METHOD_PREFIX = "method/"
DYN_PREFIX = "dyn/"

# tracker metrics (see bnnkit.diagnostics.dynamics)
FLIP = "flip"
OSCILLATION = "oscillation"
BACKFORTH = "backforth"
DEAD = "dead"
SILENT = "silent"
QERR = "qerr"
ENTROPY = "entropy"
ALL = "all"  # the layer name of a whole-model value


def dyn_key(metric: str, layer: str = ALL) -> str:
    """``dyn/<metric>/<layer>``: a tracker value as logged (``dyn/silent/all``)."""
    return f"{DYN_PREFIX}{metric}/{layer}"


def method_key(name: str) -> str:
    """``method/<name>``: a method metric as logged (``method/recu/tau``)."""
    return f"{METHOD_PREFIX}{name}"
