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
                             "kept (SigLIP 2 NaFlex: the grid its image processor picks); library = the library's "
                             "own resize and crop (its exact score; the map covers the crop). Default: the "
                             "model's own (model for the shipped shapes CLIP, else native)")
    parser.add_argument("--scale", type=positive_float_arg, default=1.0, metavar="F",
                        help="multiply the native or model input size by F (default: 1; not with --input library)")


def check_input_options(args) -> None:
    """ValueError (one line) for ``--scale`` with ``--input library``; call before any model is loaded."""
    if args.input == "library" and args.scale != 1:
        raise ValueError(f"--scale {args.scale:g} cannot apply to --input library (the library's transform fixes "
                         f"the size); use --input native or model to scale")


PRECISION_CHOICES = ("fp32", "bf16", "fp16")  # precision.PRECISIONS (a test keeps them equal)


def add_precision_option(parser) -> None:
    """Add ``--precision {fp32,bf16,fp16}`` to an argparse parser."""
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                        help="forward precision: fp32 (default); bf16 or fp16 run the forward under autocast on the "
                             "model's device, maps stay float32 and scores come from a float32 readout of the last "
                             "block (fp16 needs a GPU; bf16 works on CPU)")


def check_precision_option(args, device=None) -> None:
    """ValueError (one line) for ``--precision fp16`` where the model would run on the CPU (``device``: the
    ``--device`` given, None: cuda if available); call before any model is loaded."""
    if args.precision != "fp16":
        return
    import torch

    where = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if where.split(":")[0] == "cpu":
        raise ValueError("--precision fp16 needs a GPU (float16 on CPU is slow and loses accuracy); "
                         "on CPU use --precision bf16 or fp32")
