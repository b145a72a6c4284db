"""Command line: ``python -m gradeclip explain VIDEO ...`` (one frame) and ``python -m gradeclip video ...`` (all).

Errors in what the user gave print one line (``gradeclip: error: ...``) and exit with status 1, no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from .checks import positive_int_arg
from .files import INTERRUPT_STATUS, Interrupted
from .input_args import (add_input_options, add_precision_option, check_input_options,
                         check_precision_option)
from .interrupts import Progress, caused_by_ctrl_c, frames_bar, noting_sigint, reported
from .viz.export import export_frame, export_video, export_words

DEFAULT_MODEL = "ViT-B/32"
# The built-in method names, for --help without importing torch (a test keeps this equal to method_names())
METHOD_NAMES = ("clip_surgery", "eigencam", "game", "gem", "grad_cam", "grad_eclip", "grad_eclip_no_spatial",
                "gradcam_pp", "layercam", "legrad", "maskclip", "rise", "rollout", "scorecam", "self_attention",
                "xgradcam")


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
    demo = sub.add_parser("demo", help="offline demo: the shipped shapes CLIP on the moving-shapes video",
                          description="Runs with no network: the small CLIP trained on synthetic shapes "
                                      "(data/shapes_clip.pt) explains data/shapes_demo.avi: scores and Grad-ECLIP "
                                      "overlays of the middle frame, then every frame as MP4, GIF and timeline.")
    demo.add_argument("--out", "-o", default="outputs/demo", metavar="DIR", help="output folder (default: outputs/demo)")
    demo.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_input_options(demo)
    from .eval import command as evaluate_command

    evaluate_command.add_parser(sub)
    from .batch import command as batch_command

    batch_command.add_parser(sub)
    __import__(f"{__package__}.clip_command", fromlist=["add_parser"]).add_parser(sub)
    return parser


DEMO_PROMPTS = ["a red circle", "a blue square", "a yellow triangle", "a green circle"]


def _demo(args) -> int:
    _check_out(args.out)
    check_input_options(args)
    from .eval.evaluate import shapes_model, shapes_video
    from .explain import explain
    from .viz.figures import format_scores
    from .io.frames import read_frames, video_info
    from .backbones.model import load_clip
    from .io.stream import select_indices
    from .video import explain_video
    from .viz.export import frame_files, video_files

    progress = args.progress
    progress.begin("loading the shapes model")
    model, _ = load_clip(shapes_model(), device=args.device)
    video = shapes_video()
    info = video_info(video)
    index = info.num_frames // 2  # input: the model's own default (its size: "model"), unless --input says
    progress.begin(f"explaining frame {index}")
    result = explain(model, read_frames(video, [index]), DEMO_PROMPTS, input=args.input, scale=args.scale)
    print(f"{Path(video).name}, frame {index} of {info.num_frames}; model {Path(shapes_model()).name} (offline)")
    print(f"{result.view.label()}")
    print(format_scores(result.prompts, result.cosine[0], result.probs[0]))
    progress.begin(f"writing the files of frame {index}", expected=frame_files("demo_frame", args.out))
    paths = export_frame(result, "demo_frame", args.out, title=f"shapes CLIP · frame {index}",
                         meta={"model": shapes_model(), "video": video, "frame_index": index,
                               "input": result.view.as_json()},
                         written=progress.written)
    progress.finish(f"frame {index}")
    bar = frames_bar(len(select_indices(info.num_frames)), f"{Path(video).name} (grad_eclip)")
    progress.begin(f"explaining every frame of {Path(video).name}", bar=bar)
    whole = explain_video(model, video, DEMO_PROMPTS, input=args.input, scale=args.scale, model_name=shapes_model(),
                          progress=bar)
    bar.close()
    progress.begin(f"writing the files of {Path(video).name}",
                   expected=video_files("demo_video", args.out, timeline="demo_timeline"))
    paths += export_video(whole, "demo_video", args.out, timeline="demo_timeline", written=progress.written)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _evaluate(args) -> int:
    from .eval import command as evaluate_command

    return evaluate_command.run(args)


def _batch(args) -> int:
    from .batch import command as batch_command

    return batch_command.run(args)


def _check_out(out) -> None:
    from .checks import output_folder

    output_folder(out)


def _check_cmap(name: str) -> None:
    import difflib

    import matplotlib

    if name not in matplotlib.colormaps:
        close = difflib.get_close_matches(name, list(matplotlib.colormaps), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise _UserError(f"unknown colour map {name!r}; {hint}any name of matplotlib.colormaps works, "
                         f"e.g. jet, turbo, viridis, inferno")


def _check_common(args) -> None:
    """Every option of explain and video, before any video is read or model loaded."""
    from .methods.registry import get_method

    if not 0 <= args.alpha <= 1:
        raise _UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.dpi <= 0:
        raise _UserError(f"--dpi must be positive, got {args.dpi}")
    if any(not p.strip() for p in args.prompt):
        raise _UserError("empty --prompt: every prompt needs some text")
    _check_cmap(args.cmap)
    get_method(args.method)
    check_input_options(args)
    check_precision_option(args, args.device)
    _check_out(args.out)


def _load_model(name: str, device, truncate: bool = False):
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
        raise _UserError(f"the weights of {name} ({expected}) are not in the cache folder {DEFAULT_CACHE} and could "
                         f"not be downloaded ({cause}); copy {expected} into {DEFAULT_CACHE}, or pass "
                         f"--model PATH with the path of a local checkpoint") from None


def _video(args) -> int:
    from .video import explain_video

    _check_common(args)
    from .io.frames import list_videos, video_info
    from .io.stream import select_indices
    from .viz.export import video_files

    videos = list_videos(args.video, lambda entry, why: print(f"gradeclip: skipped {entry}: {why}", file=sys.stderr))
    progress = args.progress
    progress.begin(f"loading the model {args.model}")
    model, _ = _load_model(args.model, args.device, args.truncate)
    from .eval.shapes import warn_unknown_words

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
        raise _UserError(f"{len(failed)} of {len(videos)} videos failed: {', '.join(failed)}")
    return 0


def _explain(args) -> int:
    from .explain import explain
    from .viz.figures import format_scores
    from .io.frames import MAX_SIDE, read_frames, resolve_indices, video_info
    from .viz.export import frame_files, words_files

    _check_common(args)
    info = video_info(args.video)
    index = int(resolve_indices(args.frame, info.num_frames)[0])
    progress = args.progress
    progress.begin(f"reading frame {index}")
    frames = read_frames(args.video, [index], max_side=MAX_SIDE)  # a 4K frame explained at 1920 px
    progress.begin(f"loading the model {args.model}")
    model, _ = _load_model(args.model, args.device, args.truncate)
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


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"gradeclip: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    with warnings.catch_warnings():  # restores the caller's warning settings afterwards
        warnings.showwarning = _show_warning  # one line, no source excerpt
        return _main(argv)


def _main(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 1
        commands = {"explain": _explain, "video": _video, "demo": _demo, "evaluate": _evaluate, "batch": _batch,
                    "clip": lambda a: __import__(f"{__package__}.clip_command", fromlist=["run"]).run(a)}
        with noting_sigint():
            if args.command not in ("explain", "video", "demo"):  # these keep args.progress, for Ctrl-C's line
                return commands[args.command](args)
            args.progress = Progress(args.out)
            with reported(args.progress):
                return commands[args.command](args)
    except Interrupted as err:  # a command caught Ctrl-C and says what was completed and how to resume
        print(f"gradeclip: interrupted: {' '.join(str(err).split())}", file=sys.stderr)
        return INTERRUPT_STATUS
    except KeyboardInterrupt:
        print("gradeclip: interrupted: no output file was left incomplete under its final name", file=sys.stderr)
        return INTERRUPT_STATUS
    except (_UserError, FileNotFoundError, ValueError, IndexError, TypeError, RuntimeError, OSError) as err:
        if caused_by_ctrl_c(err):  # a pipe to an FFmpeg child that the same Ctrl-C stopped
            print("gradeclip: interrupted: no output file was left incomplete under its final name",
                  file=sys.stderr)
            return INTERRUPT_STATUS
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"gradeclip: error: {message}", file=sys.stderr)
        return 1
