"""gradeclip: what CLIP looks at when it matches a video frame with a text prompt.

Video -> frames (uint8 RGB) -> pixels (normalised, native aspect) -> CLIP -> maps and scores -> figures and files.

The public names below are imported on first use (PEP 562), so that ``import gradeclip`` and
``python -m gradeclip --help`` do not load torch; ``from gradeclip import explain`` works as usual.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_EXPORTS = {
    **dict.fromkeys(["compare_methods", "format_comparison"], ".eval.compare"),
    **dict.fromkeys(["Explanation", "explain", "normalize_maps", "similarity", "word_importance"], ".explain"),
    **dict.fromkeys(["format_scores", "overlay", "plot_explanation", "plot_frame_strip", "plot_method_grid",
                     "plot_scores", "plot_word_importance"], ".viz.figures"),
    **dict.fromkeys(["save_explanation", "save_figure"], ".viz.saving"),
    **dict.fromkeys(["VideoInfo", "read_frames", "resolve_indices", "sample_video", "video_info"], ".io.frames"),
    **dict.fromkeys(["grad_eclip_image", "grad_eclip_text"], ".methods.grad_eclip"),
    **dict.fromkeys(["evaluate_shapes", "format_evaluation", "shapes_model", "shapes_video"], ".eval.evaluate"),
    **dict.fromkeys(["boxes_to_masks", "clip_scorer", "deletion_insertion", "energy_pointing_game", "pointing_game",
                     "prompt_sensitivity", "randomization_check", "rank_correlation"], ".eval.metrics"),
    **dict.fromkeys(["encode_prompts", "load_clip", "tokenize"], ".backbones.model"),
    "to_pixels": ".backbones.pixels",
    "ClipExplanation": ".clip_result",
    **dict.fromkeys(["explain_clip", "explain_clip_video"], ".clip_level"),
    **dict.fromkeys(["METHODS", "get_method", "method_names"], ".methods.registry"),
    **dict.fromkeys(["FrameBatch", "select_indices", "stream_frames"], ".io.stream"),
    **dict.fromkeys(["VideoExplanation", "explain_video"], ".video"),
    "save_video_maps": ".viz.maps_file",
    **dict.fromkeys(["keyframes", "plot_timeline", "write_overlay_video"], ".viz.video_export"),
    **dict.fromkeys(["output_dir", "resolve_model", "resolve_video"], ".paths"),
    **dict.fromkeys(["explore", "Explorer"], ".viz.explorer"),  # imports ipywidgets, so only on first use
}
_SUBPACKAGES = ("backbones", "batch", "eval", "io", "methods", "viz", "cli", "paths", "explain", "video", "checks")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The package module. ``gradeclip.explain`` is both a function and a submodule: importing the submodule
    (from anywhere) makes Python set the package attribute to the module; keep the public function instead."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f".{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
