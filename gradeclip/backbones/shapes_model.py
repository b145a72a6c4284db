"""The shipped shapes CLIP (``data/shapes_clip.pt``), recognised by its architecture, and the warning that belongs
to it: prompts with words its training captions never held, whose scores and maps mean little.

Lives with the backbones (not with the synthetic scenes of ``eval.shapes``) so that the pipeline (``explain``) and
the CLI can warn without importing from a layer above them.
"""
from __future__ import annotations

from typing import List, Sequence

# Every word of every caption the shipped shapes CLIP was trained on ("a red circle and a blue square"): the colours
# and shapes that eval.shapes draws (a test keeps the two equal)
SHAPES_VOCABULARY = frozenset({"a", "and", "red", "green", "blue", "yellow", "circle", "square", "triangle"})
_SHAPES_CONFIG = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
                  "context_length", "transformer_width", "transformer_layers")


def unknown_words(prompts: Sequence[str]) -> List[str]:
    """The words of ``prompts`` (lower-cased, split at anything but letters) outside ``SHAPES_VOCABULARY``,
    sorted and without repeats."""
    import re

    words = {w for p in prompts for w in re.findall(r"[a-z]+", p.lower())}
    return sorted(words - SHAPES_VOCABULARY)


def is_shapes_model(model) -> bool:
    """Whether ``model`` has the architecture of the shipped shapes CLIP (``data/shapes_clip.json``); False for any
    other model, or when that file is missing."""
    import json

    from ..paths import data_dir
    from .base import Backbone

    if isinstance(model, Backbone):  # the library's own model inside the interface
        model = model.model
    path = data_dir() / "shapes_clip.json"
    try:
        config = json.loads(path.read_text())["config"]
        visual = model.visual
        found = {"embed_dim": model.text_projection.shape[1], "image_resolution": visual.input_resolution,
                 "vision_layers": len(visual.transformer.resblocks), "vision_width": visual.conv1.out_channels,
                 "vision_patch_size": visual.conv1.kernel_size[0], "context_length": model.context_length,
                 "transformer_width": model.ln_final.weight.shape[0],
                 "transformer_layers": len(model.transformer.resblocks)}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False
    return all(found[k] == config.get(k) for k in _SHAPES_CONFIG)


def warn_unknown_words(model, prompts: Sequence[str]) -> List[str]:
    """With the shapes CLIP, warn (once per set of words, Python's default warning filter) when ``prompts`` use
    words its training captions never held: its scores and maps for them mean little. Returns those words."""
    import warnings

    if not is_shapes_model(model):
        return []
    unknown = unknown_words(prompts)
    if unknown:
        warnings.warn(f"the shapes CLIP never saw the word(s) {', '.join(repr(w) for w in unknown)} in training "
                      f"(its captions use only: {', '.join(sorted(SHAPES_VOCABULARY))}); its scores and maps for "
                      f"such prompts mean little", UserWarning, stacklevel=3)
    return unknown
