"""One run, one writer: ``<run>/.lock``, held by the process that trains into the run directory.

The lock is an exclusive ``fcntl.flock`` on the file, held for the run's life. The kernel drops
it when the process ends in any way (``kill -9`` included), so a stale lock needs no timeout:
a lock file whose lock is free belongs to a stopped run and is taken over. The file's text
names the holder (pid, host, start time, command), for the message a second process gets.
Under DDP only rank 0 takes it. Where ``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bnnkit.errors import BnnkitError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"


class RunLockedError(BnnkitError):
    """The run directory is in use by another live process."""


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (f"pid {info.get('pid')} on {info.get('host')} (since {started}: "
            f"{info.get('command', '?')})")  # fmt: skip


class RunLock:
    """The lock of one run directory; :meth:`acquire` it, :meth:`release` it (or ``with``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._file: Any = None
        self.previous: dict[str, Any] = {}  # the holder recorded by a stopped run, if any

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunLockedError` naming the live holder."""
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 (held for the run's life)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(f)
            f.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by {_holder_text(holder)}; wait for that run to "
                "end or stop it, or train into another --out"
            ) from None
        self.previous = _read(f)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)[:300]}  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info))
        f.flush()
        self._file = f
        return self

    @property
    def took_over(self) -> str | None:
        """A line saying whose stale lock was taken over (None when the file was new)."""
        if not self.previous:
            return None
        return f"took over the lock of a stopped run ({_holder_text(self.previous)})"

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(f: Any) -> dict[str, Any]:
    f.seek(0)
    try:
        data = json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
