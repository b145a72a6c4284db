"""gradeclip: what CLIP looks at when it matches a video frame with a text prompt.

Video -> frames (uint8 RGB) -> pixels (normalised, native aspect) -> CLIP -> maps and scores -> figures and files.
"""
from .eval.compare import compare_methods, format_comparison
from .explain import Explanation, explain, normalize_maps, similarity, word_importance
from .viz.figures import (format_scores, overlay, plot_explanation, plot_frame_strip, plot_method_grid, plot_scores,
                      plot_word_importance, save_explanation, save_figure)
from .io.frames import VideoInfo, read_frames, resolve_indices, sample_video, video_info
from .methods.grad_eclip import grad_eclip_image, grad_eclip_text
from .eval.evaluate import evaluate_shapes, format_evaluation, shapes_model, shapes_video
from .eval.metrics import (boxes_to_masks, clip_scorer, deletion_insertion, energy_pointing_game, pointing_game,
                      prompt_sensitivity, randomization_check, rank_correlation)
from .backbones.model import encode_prompts, load_clip, tokenize
from .backbones.pixels import to_pixels
from .methods.registry import METHODS, get_method, method_names
from .io.stream import FrameBatch, select_indices, stream_frames
from .video import VideoExplanation, explain_video, save_video_maps
from .viz.video_export import keyframes, plot_timeline, write_overlay_video

__version__ = "0.1.0"


def __getattr__(name):
    """``explore`` and ``Explorer`` import ipywidgets, so they load on first use, not with the package."""
    if name in ("explore", "Explorer"):
        from .viz import explorer
        return getattr(explorer, name)
    raise AttributeError(f"module 'gradeclip' has no attribute {name!r}")


__all__ = [
    "METHODS", "Explanation", "VideoInfo", "boxes_to_masks", "clip_scorer", "compare_methods", "deletion_insertion",
    "encode_prompts", "energy_pointing_game", "explain", "format_comparison", "format_scores", "get_method",
    "grad_eclip_image", "grad_eclip_text", "load_clip", "method_names", "normalize_maps", "overlay",
    "plot_explanation", "plot_frame_strip", "plot_method_grid", "plot_scores", "plot_word_importance",
    "pointing_game", "randomization_check", "rank_correlation", "read_frames", "resolve_indices", "sample_video",
    "save_explanation", "save_figure", "similarity", "to_pixels", "tokenize", "video_info", "word_importance",
    "FrameBatch", "VideoExplanation", "explain_video", "keyframes", "plot_timeline", "save_video_maps",
    "select_indices", "stream_frames", "write_overlay_video",
    "evaluate_shapes", "format_evaluation", "prompt_sensitivity", "shapes_model", "shapes_video",
    "explore", "Explorer",
]
