"""What ``explain`` and ``video`` check before any work, and their model loading with a CLI message.

``check_common(args)`` validates every option the two commands share (opacity, resolution, prompts, colour map,
method, input, precision, output folder) before any video is read or model loaded; ``load_model`` is ``load_clip``
with one line saying where to put weights that could not be downloaded. A mistake raises ``cli_status.UserError``
(or the ValueError of the check that found it): one line, exit 1.
"""
from __future__ import annotations

from .checks import output_folder
from .cli_status import UserError
from .input_args import check_input_options, check_precision_option


def check_cmap(name: str) -> None:
    """UserError unless ``name`` is one of matplotlib's colour maps (the message offers the closest names)."""
    import difflib

    import matplotlib

    if name not in matplotlib.colormaps:
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown colour map {name!r}; {hint}any name of matplotlib.colormaps works, "
                        f"e.g. jet, turbo, viridis, inferno")


def check_common(args) -> None:
    """Every option of explain and video, before any video is read or model loaded."""
    from .methods.registry import get_method

    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.dpi <= 0:
        raise UserError(f"--dpi must be positive, got {args.dpi}")
    if any(not p.strip() for p in args.prompt):
        raise UserError("empty --prompt: every prompt needs some text")
    check_cmap(args.cmap)
    get_method(args.method)
    check_input_options(args)
    check_precision_option(args, args.device)
    output_folder(args.out)


def load_model(name: str, device, truncate: bool = False):
    """``load_clip`` with a CLI message when a model name's weights are neither cached nor downloadable: the
    expected file, the cache folder and ``--model PATH``; with ``truncate`` (``--truncate``) the model cuts
    over-long prompts instead of refusing them."""
    from .backbones.model import DEFAULT_CACHE, load_clip  # first: it imports clip with its warning silenced

    import clip

    try:
        model, preprocess = load_clip(name, device=device)
        if truncate:
            from .backbones.base import with_truncation
            model = with_truncation(model)
        return model, preprocess
    except RuntimeError as err:
        if name not in clip.available_models():
            raise
        expected = clip.clip._MODELS[name].rsplit("/", 1)[-1]
        cause = str(err).split("downloading them failed", 1)[-1].split(". Download", 1)[0].strip(" ()")
        raise UserError(f"the weights of {name} ({expected}) are not in the cache folder {DEFAULT_CACHE} and could "
                        f"not be downloaded ({cause}); copy {expected} into {DEFAULT_CACHE}, or pass "
                        f"--model PATH with the path of a local checkpoint") from None
