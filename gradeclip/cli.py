"""Command line: ``python -m gradeclip explain VIDEO ...`` (one frame) and ``python -m gradeclip video ...`` (all);
the other commands (``demo``, ``evaluate``, ``batch``, ``clip``) live in their own modules and register here.

Errors in what the user gave print one line (``gradeclip: error: ...``) and exit with status 1, no traceback; Ctrl-C
prints one line and exits 130 (``cli_status``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import demo_command
from .checks import positive_int_arg
from .cli_checks import check_common, load_model
from .cli_status import UserError, exit_status, one_line_warnings
from .input_args import add_input_options, add_precision_option
from .interrupts import Progress, caused_by_ctrl_c, frames_bar, noting_sigint, reported
from .viz.export import export_frame, export_video, export_words

DEFAULT_MODEL = "ViT-B/32"
DEMO_PROMPTS = demo_command.DEMO_PROMPTS  # public here too: the prompts of ``demo``
# The built-in method names, for --help without importing torch (a test keeps this equal to method_names())
METHOD_NAMES = ("clip_surgery", "eigencam", "game", "gem", "grad_cam", "grad_eclip", "grad_eclip_no_spatial",
                "gradcam_pp", "layercam", "legrad", "maskclip", "rise", "rollout", "scorecam", "self_attention",
                "xgradcam")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit with 2 and print the usage; we promise one line and 1
        raise UserError(f"{message} (see {self.prog} --help)")


def _frame(text: str):
    if text == "middle":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid frame {text!r}: give 'middle' or an integer index") from None


def _common(p) -> None:
    p.add_argument("--prompt", "-p", action="append", required=True, metavar="TEXT",
                   help="text prompt; repeat for several prompts")
    p.add_argument("--model", "-m", default=os.environ.get("GRADECLIP_MODEL", DEFAULT_MODEL), metavar="NAME|PATH",
                   help="CLIP model: an OpenAI name (e.g. ViT-B/32, ViT-L/14), open_clip:ARCH/PRETRAINED (e.g. "
                        "open_clip:ViT-B-32/laion2b_s34b_b79k), hf:REPO_OR_FOLDER (e.g. hf:google/siglip-base-"
                        "patch16-224), or a local checkpoint or model folder (default: $GRADECLIP_MODEL or ViT-B/32)")
    p.add_argument("--out", "-o", default="outputs", metavar="DIR", help="output folder (default: outputs)")
    p.add_argument("--truncate", action="store_true",
                   help="cut prompts longer than the tokenizer's context length (with a warning) instead of refusing")
    p.add_argument("--method", default="grad_eclip", metavar="NAME",
                   help=f"explanation method: {', '.join(METHOD_NAMES)} (default: grad_eclip)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of PNG figures (default: 150)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay, 0..1 (default: 0.5)")
    p.add_argument("--cmap", default="jet", metavar="NAME",
                   help="matplotlib colour map of the heatmap, e.g. jet, turbo, viridis, inferno (default: jet)")
    add_input_options(p)
    add_precision_option(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gradeclip", description="Show what CLIP looks at in video frames.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    ex = sub.add_parser("explain", help="explain one frame of a video for one or more prompts",
                        description="Explain one frame of a video: writes the figure (PNG and PDF), the raw maps "
                                    "(.npy) and the scores (JSON), and prints the scores.")
    ex.add_argument("video", metavar="VIDEO", help="path of the video file (any format FFmpeg decodes)")
    ex.add_argument("--frame", "-f", type=_frame, default="middle", metavar="middle|INDEX",
                    help="frame to explain: 'middle' (default) or an index (negative counts from the end)")
    ex.add_argument("--words", action="store_true",
                    help="also write each prompt's word importance (figure NAME_words_K.png/.pdf and NAME_words.json)")
    _common(ex)
    vid = sub.add_parser("video", help="explain every (or every k-th) frame of a video or of each video in a folder",
                         description="Explain a whole video, or each video in a folder: writes an MP4 and a GIF of "
                                     "the overlays, the maps (.npz, float16) with a JSON sidecar, and a timeline "
                                     "of each prompt's score; prints a summary per video.")
    vid.add_argument("video", metavar="VIDEO_OR_DIR", help="a video file, or a folder whose videos are all explained")
    choose = vid.add_mutually_exclusive_group()
    choose.add_argument("--every", type=positive_int_arg, metavar="K", help="explain every K-th frame (default: all)")
    choose.add_argument("--frames", type=positive_int_arg, metavar="N", help="explain N evenly spaced frames")
    vid.add_argument("--batch-size", type=positive_int_arg, default=16, metavar="B",
                     help="frames per forward pass (default: 16)")
    vid.add_argument("--colour-scale", choices=("shared", "per_frame"), default="shared",
                     help="heatmap colours shared over the video (default), so that colour changes mean relevance "
                          "changes, or scaled per frame")
    vid.add_argument("--no-gif", action="store_true", help="write the MP4 only")
    _common(vid)
    demo_command.add_parser(sub)
    from .eval import command as evaluate_command

    evaluate_command.add_parser(sub)
    from .batch import command as batch_command

    batch_command.add_parser(sub)
    from . import clip_command

    clip_command.add_parser(sub)
    return parser


def _evaluate(args) -> int:
    from .eval import command as evaluate_command

    return evaluate_command.run(args)


def _batch(args) -> int:
    from .batch import command as batch_command

    return batch_command.run(args)


def _clip(args) -> int:
    from . import clip_command

    return clip_command.run(args)


def _video(args) -> int:
    from .video import explain_video

    check_common(args)
    from .io.frames import list_videos, video_info
    from .io.stream import select_indices
    from .viz.export import video_files

    videos = list_videos(args.video, lambda entry, why: print(f"gradeclip: skipped {entry}: {why}", file=sys.stderr))
    progress = args.progress
    progress.begin(f"loading the model {args.model}")
    model, _ = load_model(args.model, args.device, args.truncate)
    from .backbones.shapes_model import warn_unknown_words

    warn_unknown_words(model, args.prompt)
    failed = []
    for path in videos:
        progress.begin(f"reading {path.name}")
        bar = None
        try:
            info = video_info(str(path))
            if args.frames is not None and args.frames > info.num_frames:  # explain_video takes them all, silently
                print(f"gradeclip: warning: --frames {args.frames} asks for more frames than {path.name} has "
                      f"({info.num_frames}); explaining all {info.num_frames}", file=sys.stderr)
            bar = frames_bar(len(select_indices(info.num_frames, every=args.every, count=args.frames)),
                             f"{path.name} ({args.method})")
            progress.begin(f"explaining {path.name}", bar=bar)
            start = time.perf_counter()
            result = explain_video(model, str(path), args.prompt, method=args.method, every=args.every,
                                   count=args.frames, batch_size=args.batch_size, model_name=args.model,
                                   input=args.input, scale=args.scale, progress=bar, precision=args.precision)
            seconds = time.perf_counter() - start
            bar.close()
        except (ValueError, IndexError, OSError) as err:
            if caused_by_ctrl_c(err):
                raise
            if bar is not None:
                bar.close()
            failed.append(path.name)
            message = " ".join(str(err).split())
            where = "" if str(path) in message else f"{path}: "  # most errors already name the file
            print(f"gradeclip: error: {where}{message}", file=sys.stderr)
            continue
        stem = f"{path.stem}_{args.method}"
        progress.begin(f"writing the files of {path.name}", expected=video_files(stem, args.out, gif=not args.no_gif))
        paths = export_video(result, stem, args.out, scale=args.colour_scale, cmap=args.cmap, alpha=args.alpha,
                             gif=not args.no_gif, dpi=args.dpi, written=progress.written)
        progress.finish(path.name)
        print(f"{path.name}: {len(result.indices)} frames explained in {seconds:.1f} s "
              f"({len(result.indices) / seconds:.1f} frames/s); model {args.model}; method {args.method}; "
              f"{result.view.label()}")
        for index, reason in result.failed:
            print(f"  frame {index} could not be decoded and was skipped: {reason}")
        width = max(6, *(len(p) for p in result.prompts))
        print(f"  {'prompt':<{width}}  mean cos  max cos  best in")
        best = result.cosine.argmax(axis=1)
        for j, prompt in enumerate(result.prompts):
            print(f"  {prompt:<{width}}  {result.cosine[:, j].mean():8.3f}  {result.cosine[:, j].max():7.3f}  "
                  f"{(best == j).mean():6.0%}")
        print("  wrote " + ", ".join(str(p) for p in paths))
    if failed:
        raise UserError(f"{len(failed)} of {len(videos)} videos failed: {', '.join(failed)}")
    return 0


def _explain(args) -> int:
    from .explain import explain
    from .viz.figures import format_scores
    from .io.frames import MAX_SIDE, read_frames, resolve_indices, video_info
    from .viz.export import frame_files, words_files

    check_common(args)
    info = video_info(args.video)
    index = int(resolve_indices(args.frame, info.num_frames)[0])
    progress = args.progress
    progress.begin(f"reading frame {index}")
    frames = read_frames(args.video, [index], max_side=MAX_SIDE)  # a 4K frame explained at 1920 px
    progress.begin(f"loading the model {args.model}")
    model, _ = load_model(args.model, args.device, args.truncate)
    progress.begin(f"explaining frame {index}")
    result = explain(model, frames, args.prompt, method=args.method, input=args.input, scale=args.scale,
                     precision=args.precision)
    name = f"{Path(args.video).stem}_frame{index}_{args.method}"
    progress.begin(f"writing the files of frame {index}", expected=frame_files(name, args.out) + (
        words_files(name, args.out, len(args.prompt)) if args.words else []))
    paths = export_frame(result, name, args.out, dpi=args.dpi, cmap=args.cmap, alpha=args.alpha,
                         title=f"{Path(args.video).name} · frame {index} ({info.times[index]:.2f} s)",
                         meta={"library": result.library, "model": args.model, "video": str(args.video),
                               "frame_index": index,
                               "time_s": info.times[index],  # the frame's presentation time
                               "input": result.view.as_json()},
                         written=progress.written)
    if args.words:
        paths += export_words(model, frames[0], result.prompts, name, args.out, dpi=args.dpi,
                              written=progress.written)
    print(f"{Path(args.video).name}, frame {index} of {info.num_frames}; model {args.model} ({result.library}); "
          f"method {args.method}; {result.view.label()}")
    print(format_scores(result.prompts, result.cosine[0], result.probs[0]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status (0, 1, or 130 on Ctrl-C)."""
    with one_line_warnings():
        parser = build_parser()
        return exit_status(lambda: _run(parser, argv))


def _run(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> int:
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    commands = {"explain": _explain, "video": _video, "demo": demo_command.run, "evaluate": _evaluate,
                "batch": _batch, "clip": _clip}
    with noting_sigint():
        if args.command not in ("explain", "video", "demo"):  # these keep args.progress, for Ctrl-C's line
            return commands[args.command](args)
        args.progress = Progress(args.out)
        with reported(args.progress):
            return commands[args.command](args)
