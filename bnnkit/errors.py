"""bnnkit's user errors: one root class, so a caller can tell a user's mistake from a bug.

Every error that bad input can cause (a recipe key, a method hyperparameter, a data folder, a
checkpoint, a command-line argument) is a :class:`BnnkitError`. The command line prints those
as one line and exits with their ``exit_status`` (2); anything else is a bug and keeps its
traceback. Each subclass also derives from the built-in error it refines (``ValueError``,
``FileNotFoundError``...), so ``except ValueError`` keeps working.

This module imports nothing from bnnkit: every layer may raise these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class _Missing:
    """The "no value given" marker (a singleton that survives pickling)."""

    def __reduce__(self) -> str:
        return "_MISSING"


_MISSING: Any = _Missing()


class BnnkitError(Exception):
    """Root of bnnkit's user errors: the message names the problem and the fix.

    ``label`` is how the command line introduces it (``bnnkit: error: ...``); ``quiet`` errors
    print nothing (a rank that stops because another one failed and said why)."""

    exit_status: int = 2
    label: str = "error"
    quiet: bool = False
    everywhere: bool = False  # raised alike on every rank of a job: only rank 0 prints it


class PeerFailedError(BnnkitError, RuntimeError):
    """Another process of the job failed (its message names the problem); this one stops."""

    exit_status = 1
    quiet = True


class ConfigError(BnnkitError, ValueError):
    """A bad setting: a recipe key, a method hyperparameter, an override, a CLI option.

    The message is ``<location> = <value> <problem>; allowed: <allowed>``, e.g.
    ``method.tau_min = 1.2 is out of range for recu; allowed: [0.5, 1)``; without a value it
    is ``<location>: <problem>; allowed: <allowed>`` (``training.epoch: not a key of
    training; allowed: epochs, ...``); parts not known are left out.
    The structured parts stay available (``location``, ``value``, ``problem``, ``allowed``) so
    that a caller that knows where the setting sits can prefix its location (:meth:`at`).

    Args:
        problem: what is wrong: phrased to follow the value when there is one ("is out of
            range", "must be a number"), else a statement ("not a key of training").
        location: the dotted path of the setting, as parts (``("method", "tau_min")``).
        value: the bad value (left out of the message when not given).
        allowed: what would be accepted.
    """

    everywhere = True  # every rank validates the same recipe

    def __init__(
        self,
        problem: str,
        *,
        location: Sequence[str | int] = (),
        value: Any = _MISSING,
        allowed: str | None = None,
    ) -> None:
        self.problem = problem
        self.location = tuple(str(p) for p in location)
        self.value = value
        self.allowed = allowed
        super().__init__(self._message())

    @property
    def has_value(self) -> bool:
        return self.value is not _MISSING

    def _message(self) -> str:
        head = ".".join(self.location)
        if self.has_value:
            text = (
                f"{head} = {self.value!r} {self.problem}"
                if head
                else f"{self.value!r} {self.problem}"
            )
        else:
            text = f"{head}: {self.problem}" if head else self.problem
        return f"{text}; allowed: {self.allowed}" if self.allowed else text

    def at(self, *prefix: str | int) -> ConfigError:
        """The same error located under ``prefix`` (``err.at("stages", 1)``)."""
        return ConfigError(
            self.problem,
            location=(*(str(p) for p in prefix), *self.location),
            value=self.value,
            allowed=self.allowed,
        )

    def __reduce__(self) -> Any:  # picklable (torchrun and multiprocessing re-raise errors)
        return (_rebuild_config_error, (self.problem, self.location, self.value, self.allowed))


def _rebuild_config_error(problem: str, location: tuple, value: Any, allowed: Any) -> ConfigError:
    return ConfigError(problem, location=location, value=value, allowed=allowed)


class MissingDependencyError(BnnkitError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


__all__ = ["BnnkitError", "ConfigError", "MissingDependencyError"]
