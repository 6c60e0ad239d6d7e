"""Raw YAML values -> validated frozen dataclasses, with one error type for every mistake.

Every bad key, type or range of a recipe, in whatever section or method it sits, raises one
:class:`~bnnkit.errors.ConfigError` whose message has the dotted location, the bad value and
what is allowed::

    training.epochs = 'three' must be an integer
    stages.1.optimizer.lr = -0.1 is out of range; allowed: a number > 0
    method.tau_min = 1.2 is out of range for recu; allowed: [0.5, 1)
    training.epochz: not a key of training; allowed: epochs, label_smoothing, ...

Types are coerced by pydantic (a ``TypeAdapter`` over each frozen dataclass: YAML's ``1e-3``
string becomes a float, a list a tuple); bnnkit adds what pydantic does not do as bnnkit wants
it: unknown keys are refused with the list of valid ones, ``true``/``false`` is not a number,
and YAML 1.1's ``on``/``off`` (read as booleans) stay the words ``on``/``off`` where a string is
expected. Ranges and choices are the dataclasses' own ``__post_init__`` checks.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bnnkit.errors import ConfigError
from bnnkit.methods import Method, compose, method_class

Location = tuple[str | int, ...]

_PROBLEMS = {
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
}


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar(hint: Any) -> Any:
    """``int`` for ``int | None`` and so on; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _prepare(cls: type, raw: dict[str, Any], location: Location, what: str) -> dict[str, Any]:
    """Refuse unknown keys and booleans given as numbers; ``on``/``off`` where a string goes."""
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in valid:
            raise ConfigError(
                f"not a {what}",
                location=(*location, key),
                allowed=", ".join(valid) if valid else "none",
            )
    out = dict(raw)
    hints = _hints(cls)
    for key, value in raw.items():
        hint = _scalar(hints[key])
        if isinstance(value, bool) and hint in (int, float):
            raise ConfigError(f"must be {'an integer' if hint is int else 'a number'}",
                              location=(*location, key), value=value)  # fmt: skip
        if isinstance(value, bool) and hint is str:  # YAML 1.1 reads on/off/yes/no as booleans
            out[key] = "on" if value else "off"
    return out


def _from_validation_error(err: ValidationError, location: Location) -> ConfigError:
    first = err.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):  # a __post_init__ check: already says what is allowed
        return cause.at(*location)
    loc = list(first["loc"])
    indexed = bool(loc) and isinstance(loc[-1], int)
    if first["type"] in ("too_short", "too_long") or (first["type"] == "missing" and indexed):
        if indexed:
            loc.pop()  # a tuple of the wrong length: report the whole list
        problem = "has the wrong number of values"
    else:
        problem = _PROBLEMS.get(first["type"], f"is not valid ({first['msg']})")
    return ConfigError(problem, location=(*location, *loc), value=first.get("input"))


def build_section(cls: type, raw: Any, location: Location, what: str | None = None) -> Any:
    """The frozen dataclass ``cls`` from the mapping ``raw`` found at ``location``.

    Args:
        cls: a section dataclass (or a method class).
        raw: the YAML value (``None`` means all defaults).
        location: where ``raw`` sits in the recipe (``("stages", 1, "optimizer")``).
        what: how a key of it is named in errors (default ``key of <last location part>``).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of keys", location=location, value=raw)
    what = what or f"key of {location[-1] if location else cls.__name__}"
    values = _prepare(cls, raw, location, what)
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as err:
        raise _from_validation_error(err, location) from None
    except ConfigError as err:  # raised outside pydantic's validation (e.g. a nested check)
        raise err.at(*location) from None


def build_method(raw: Any, location: Location) -> Method:
    """A method from its recipe form: a name, or ``{name: ..., <fields>, base: ...}``.

    ``base`` composes the method on another one (:func:`bnnkit.methods.compose`); a refused
    composition is a ``ConfigError`` naming both parts and why.
    """
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError("must be a mapping with a 'name' (e.g. {name: reactnet}); see "
                          "`bnnkit list methods`", location=location, value=raw)  # fmt: skip
    fields = dict(raw)
    name, base = fields.pop("name"), fields.pop("base", None)
    try:
        cls = method_class(name)
    except ConfigError as err:
        raise err.at(*location, "name") from None
    top = build_section(cls, fields, location, what=f"hyperparameter of {cls.name}")
    if base is None:
        return top
    under = build_method(base, (*location, "base"))
    try:
        return compose(top, under)
    except ConfigError as err:
        raise err.at(*location) from None
