"""The registry of explanation methods (an mmengine ``Registry``), looked up by name.

Every method has one signature: ``method(model, pixels, text_features, **options) -> raw maps (B, K, h, w)``,
non-negative, on the token grid. A new method is one function plus one ``METHODS.register_module(name=...)`` line
(see ``baselines.py``), and ``explain(..., method=name)`` finds it.
"""
from __future__ import annotations

import inspect
from typing import List

from mmengine.registry import Registry

METHODS = Registry("explanation method", scope="gradeclip")


def _with_builtins() -> dict:
    """The registry's name -> method table, with the built-in methods registered (their module registers them when
    first imported; importing it here means no caller has to remember to)."""
    from . import baselines  # noqa: F401

    return METHODS.module_dict


def method_names() -> List[str]:
    """Names of the registered explanation methods, sorted."""
    return sorted(_with_builtins())


def get_method(name: str):
    """The registered method called ``name``; ValueError listing the known names otherwise."""
    _with_builtins()
    if not isinstance(name, str) or name not in METHODS.module_dict:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return METHODS.get(name)


def check_options(name: str, options: dict) -> None:
    """ValueError naming the options the method called ``name`` does not take, and the ones it does."""
    allowed = [p.name for p in inspect.signature(get_method(name)).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {', '.join(unknown)}; "
                         f"its options: {', '.join(allowed) or 'none'}")
