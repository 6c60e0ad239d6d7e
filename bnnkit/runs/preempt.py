"""Preemption: SIGTERM / SIGUSR1 ask the run to checkpoint at the next step boundary and stop.

Schedulers signal before they kill: SLURM sends SIGTERM at preemption or ``scancel`` (and
SIGUSR1 ahead of the time limit with ``--signal=USR1@90``), Kubernetes and torchrun send
SIGTERM. The first signal sets a flag; the loop polls it after every step (under DDP the
ranks OR their flags in one tiny all-reduce, so all stop after the same step), writes a step
checkpoint, says where, and ends with :data:`EXIT_PREEMPTED`. A second signal ends the
process at once (exit ``128 + signal``); the checkpoints on disk are always whole (atomic
writes), so a resume still finds the newest complete one.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from bnnkit.errors import BnnkitError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped cleanly, run the same command again
SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s
)


class RunPreempted(BnnkitError):
    """The run stopped on a signal after writing a checkpoint; resume continues it exactly."""

    exit_status = EXIT_PREEMPTED
    label = "stopped"
    everywhere = True  # every rank stops after the same step


class StopSignals:
    """While active (``with``), SIGTERM and SIGUSR1 request a stop instead of killing.

    ``requested`` is the first signal's name, or None. Handlers can only be installed from
    the main thread; elsewhere (a run started from a worker thread) this does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            print(f"\nbnnkit: second signal ({name}): exiting now, without a checkpoint",
                  file=sys.stderr, flush=True)  # fmt: skip
            os._exit(128 + signum)
        self.requested = name
        print(f"\nbnnkit: {name} received: checkpointing after this step, then stopping "
              "(send it again to exit at once)", file=sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
