"""Command line: ``python -m gradeclip explain VIDEO --prompt ... [--frame ...] [--model ...] [--out DIR]``.

Errors in what the user gave print one line (``gradeclip: error: ...``) and exit with status 1, no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

DEFAULT_MODEL = "ViT-B/32"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit with 2 and print the usage; we promise one line and 1
        raise _UserError(f"{message} (see {self.prog} --help)")


class _UserError(Exception):
    pass


def _frame(text: str):
    if text == "middle":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid frame {text!r}: give 'middle' or an integer index") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gradeclip", description="Show what CLIP looks at in video frames.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ex = sub.add_parser("explain", help="explain one frame of a video for one or more prompts",
                        description="Explain one frame of a video: writes the figure (PNG and PDF), the raw maps "
                                    "(.npy) and the scores (JSON), and prints the scores.")
    ex.add_argument("video", metavar="VIDEO", help="path of the video file (any format FFmpeg decodes)")
    ex.add_argument("--prompt", "-p", action="append", required=True, metavar="TEXT",
                    help="text prompt; repeat for several prompts")
    ex.add_argument("--frame", "-f", type=_frame, default="middle", metavar="middle|INDEX",
                    help="frame to explain: 'middle' (default) or an index (negative counts from the end)")
    ex.add_argument("--model", "-m", default=os.environ.get("GRADECLIP_MODEL", DEFAULT_MODEL), metavar="NAME|PATH",
                    help="CLIP model name (e.g. ViT-B/32, ViT-B/16, ViT-L/14) or path of a local checkpoint "
                         "(default: $GRADECLIP_MODEL or ViT-B/32)")
    ex.add_argument("--out", "-o", default="outputs", metavar="DIR", help="output folder (default: outputs)")
    ex.add_argument("--method", default="grad_eclip", metavar="NAME",
                    help="explanation method (default: grad_eclip)")
    ex.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    ex.add_argument("--dpi", type=int, default=150, help="resolution of the PNG figure (default: 150)")
    ex.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay, 0..1 (default: 0.5)")
    ex.add_argument("--cmap", default="jet", help="matplotlib colour map of the heatmap (default: jet)")
    return parser


def _explain(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .explain import explain, get_method
    from .figures import format_scores, plot_explanation, save_explanation, save_figure
    from .frames import read_frames, resolve_indices, video_info
    from .model import load_clip

    if not 0 <= args.alpha <= 1:
        raise _UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.dpi <= 0:
        raise _UserError(f"--dpi must be positive, got {args.dpi}")
    if any(not p.strip() for p in args.prompt):
        raise _UserError("empty --prompt: every prompt needs some text")
    get_method(args.method)
    info = video_info(args.video)
    index = int(resolve_indices(args.frame, info.num_frames)[0])
    frames = read_frames(args.video, [index])
    model, _ = load_clip(args.model, device=args.device)
    result = explain(model, frames, args.prompt, method=args.method)
    name = f"{Path(args.video).stem}_frame{index}_{args.method}"
    fig = plot_explanation(result, cmap=args.cmap, alpha=args.alpha,
                           title=f"{Path(args.video).name} · frame {index} ({index / info.fps:.2f} s)"
                           if info.fps else None)
    paths = save_figure(fig, name, args.out, dpi=args.dpi)
    plt.close(fig)
    paths += save_explanation(result, name, args.out, meta={
        "model": args.model, "video": str(args.video), "frame_index": index,
        "time_s": index / info.fps if info.fps else None})
    print(f"{Path(args.video).name}, frame {index} of {info.num_frames}; model {args.model}; method {args.method}")
    print(format_scores(result.prompts, result.cosine[0], result.probs[0]))
    print("wrote " + ", ".join(str(p) for p in paths))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 1
        _explain(args)
    except (_UserError, FileNotFoundError, ValueError, IndexError, TypeError, RuntimeError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"gradeclip: error: {message}", file=sys.stderr)
        return 1
    return 0
