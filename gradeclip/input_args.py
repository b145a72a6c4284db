"""The input-size options, spelled the same in every command: ``--input {native,model,library}`` and ``--scale F``
(see ``backbones/inputs.py`` for their meaning). Imports no torch, so that ``--help`` stays fast."""
from __future__ import annotations

import argparse

INPUT_CHOICES = ("native", "model", "library")  # backbones.inputs.INPUT_MODES (a test keeps them equal)


def positive_float_arg(text: str) -> float:
    """argparse ``type=`` for ``--scale``: the number, or an ArgumentTypeError saying what is allowed."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid scale {text!r}: give a number > 0")
    return value


def add_input_options(parser) -> None:
    """Add ``--input`` and ``--scale`` to an argparse parser."""
    parser.add_argument("--input", choices=INPUT_CHOICES, default=None,
                        help="model input: native = the frame's size and aspect rounded to the patch grid (the "
                             "paper's choice); model = the longer side at the model's trained resolution, aspect "
                             "kept; library = the library's own resize and crop (its exact score; the map covers "
                             "the crop). Default: the model's own (model for the shipped shapes CLIP, else native)")
    parser.add_argument("--scale", type=positive_float_arg, default=1.0, metavar="F",
                        help="multiply the native or model input size by F (default: 1; not with --input library)")


def check_input_options(args) -> None:
    """ValueError (one line) for ``--scale`` with ``--input library``; call before any model is loaded."""
    if args.input == "library" and args.scale != 1:
        raise ValueError(f"--scale {args.scale:g} cannot apply to --input library (the library's transform fixes "
                         f"the size); use --input native or model to scale")
