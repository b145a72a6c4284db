"""The registry of explanation methods (an mmengine ``Registry``), looked up by name.

Every method has one signature: ``method(model, pixels, text_features, **options) -> raw maps (B, K, h, w)``,
non-negative, on the token grid. A new method is one function plus one ``METHODS.register_module(name=...)`` line
(see ``baselines.py``), and ``explain(..., method=name)`` finds it. This module imports no method: the package's
``__init__`` imports the modules that register them, and any import of ``gradeclip.methods.registry`` runs it first.
"""
from __future__ import annotations

import inspect
from typing import List

from mmengine.registry import Registry

METHODS = Registry("explanation method", scope="gradeclip")


def method_names() -> List[str]:
    """Names of the registered explanation methods, sorted."""
    return sorted(METHODS.module_dict)


def get_method(name: str):
    """The registered method called ``name``; ValueError listing the known names otherwise."""
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
