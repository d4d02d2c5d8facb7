"""Lazily imported package attributes (PEP 562), so light entry points skip heavy imports."""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_attributes(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: name -> the module that defines it.

    Each name is imported on first access and then stored in the package's namespace.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
