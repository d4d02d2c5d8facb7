"""Type checks shared by the stages' frozen config dataclasses (called in ``__post_init__``).

A config is a static jit argument and the source of a run's settings digest, so a value
of another type than its field's either fails far from its cause (a list is unhashable, a
float size breaks a shape) or quietly changes the digest (``12`` prints unlike ``12.0``),
and a NaN or infinite weight gives an empty mask instead of an error. These checks refuse
such values with the config's and the field's name and store the rest as the field's type.
Nothing here imports another part of jaxseg.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Iterable


def _base_type(field: dataclasses.Field) -> tuple[str, bool]:
    """(type name, whether None is allowed) of a field annotated ``int``, ``float`` or
    ``Optional[...]`` of them, read from its annotation's text."""
    kind = field.type
    if not isinstance(kind, str):  # a typing object would be skipped without a word
        raise TypeError(f"jaxseg.checks reads annotations as text; the module defining "
                        f"{field.name!r} needs `from __future__ import annotations`")
    optional = kind.startswith("Optional[")
    return (kind[len("Optional["):-1] if optional else kind), optional


def check_numbers(config, allow_inf: Iterable[str] = ()) -> None:
    """Checks a config's ``int`` and ``float`` fields and stores them as their type.

    An ``int`` field must hold an integer (numpy integers too), a ``float`` field a finite
    real number (``+inf`` too for the fields named in ``allow_inf``); bools are refused for
    both; ``None`` is kept where the annotation is ``Optional``.

    Raises:
      ValueError: naming the config's class and field.
    """
    allow_inf = tuple(allow_inf)
    for field in dataclasses.fields(config):
        kind, optional = _base_type(field)
        value = getattr(config, field.name)
        if kind not in ("int", "float") or (value is None and optional):
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if kind == "int":
            valid, what = number and isinstance(value, numbers.Integral), "an integer"
        else:
            infinite = field.name in allow_inf
            valid = number and (math.isfinite(value) or (infinite and value == math.inf))
            what = "a finite number" + (" or inf" if infinite else "")
        if not valid:
            raise ValueError(f"{type(config).__name__}.{field.name} must be {what}"
                             f"{' or None' if optional else ''}, got {value!r}")
        object.__setattr__(config, field.name, int(value) if kind == "int" else float(value))


def _integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError
    return int(value)


def _finite(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError
    return float(value)


# store_tuple's element kinds: converter and what the message calls them.
_ELEMENTS: dict[str, tuple[Callable, str]] = {
    "int": (_integer, "integers"), "float": (_finite, "finite numbers"), "str": (str, "strings")}


def store_tuple(config, name: str, element: str) -> None:
    """Stores a sequence field as a tuple (hashable) of ``element`` ("int", "float":
    finite, or "str"); a string or None is left as it is, for the config's own checks to
    refuse or accept.

    Raises:
      ValueError: when the value is not a sequence of that kind.
    """
    value = getattr(config, name)
    if value is None or isinstance(value, str):
        return
    convert, what = _ELEMENTS[element]
    try:
        if element == "str" and not all(isinstance(item, str) for item in value):
            raise TypeError
        object.__setattr__(config, name, tuple(convert(item) for item in value))
    except (TypeError, ValueError):
        raise ValueError(f"{type(config).__name__}.{name} must be a sequence of {what}, got "
                         f"{value!r}") from None
