"""The table of backbone adapters: which ``Backbone`` subclass wraps which model object.

Each adapter module registers itself when imported (``register_adapter`` at its foot); ``backbones/__init__.py``
imports every adapter module, so the table is full before any lookup (``base.backbone_of``). This module imports
no adapter and no library: a predicate reads only the model object (its class's module, the class names of its MRO,
the type of its ``.visual``), so a lookup imports nothing the model does not come from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Set

# Orders: lower is tried first. A model matched by several entries gets the most specific adapter.
SPECIFIC = 10  # one class or tower kind (SigLIP 2, X-CLIP, a ResNet or Eva tower, CLIPSeg, ...)
FAMILY = 20  # a broader kind the specific ones are special cases of (SigLIP after SigLIP 2, timm after Eva)
LIBRARY = 90  # whatever else a library makes: its generic adapter, or a one-line refusal


@dataclass(frozen=True)
class Adapter:
    """One entry: ``build(model, tokenizer, name) -> Backbone`` for models where ``accepts(model)`` is True."""

    name: str
    accepts: Callable[[object], bool]
    build: Callable
    order: int
    module: str  # the registering module, for the check that every adapter module is imported


_ADAPTERS: List[Adapter] = []


def register_adapter(name: str, accepts: Callable[[object], bool], build: Callable, *, order: int) -> None:
    """Add (or, under the same ``name``, replace) an entry; entries are tried by ``order``, then by name."""
    if not isinstance(order, int):
        raise TypeError(f"order must be an int (SPECIFIC, FAMILY or LIBRARY), got {order!r}")
    _ADAPTERS[:] = [a for a in _ADAPTERS if a.name != name]
    _ADAPTERS.append(Adapter(name, accepts, build, order, getattr(build, "__module__", "?")))
    _ADAPTERS.sort(key=lambda a: (a.order, a.name))


def adapters() -> List[Adapter]:
    """The registered entries in the order they are tried."""
    return list(_ADAPTERS)


def adapter_for(model) -> Optional[Adapter]:
    """The first entry that accepts ``model``, or None."""
    return next((a for a in _ADAPTERS if a.accepts(model)), None)


def library_of(model) -> str:
    """``"clip"``, ``"open_clip"``, ``"transformers"`` or ``""``: the library whose module defines the model's class."""
    module = type(model).__module__
    if module.startswith("clip."):
        return "clip"
    return next((lib for lib in ("open_clip", "transformers") if module.startswith(lib)), "")


def class_names(model) -> Set[str]:
    """The names of the classes in the MRO of the model's class."""
    return {c.__name__ for c in type(model).__mro__}


def visual_kind(model) -> str:
    """The class name of the model's ``.visual`` (its image tower where the library keeps it there), or ``""``."""
    visual = getattr(model, "visual", None)
    return "" if visual is None else type(visual).__name__
