"""The ``evaluate`` command: explanation methods scored against ground truth.

    python -m gradeclip evaluate --shapes [--n N]                                  # synthetic shape scenes
    python -m gradeclip evaluate --video V (--masks M | --boxes F) --prompt P ...  # your own annotations

One labelled progress bar (scenes for --shapes, maps for --video; the grad-cam package's inner bars are silenced);
the table is printed and written as CSV and Markdown into ``--out``; for a video also a per-frame CSV and a plot of
each metric over time (the ``--video`` half is ``eval.video_command``). Every file is written under a temporary
name and renamed when complete. ``--shapes`` states its expected run time after the first scene, saves each
finished scene (``resume.SceneLog``) and resumes on a rerun with the same arguments; Ctrl-C in either form raises
``files.Interrupted`` with one line for the user.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..checks import output_folder, positive_int_arg
from ..input_args import add_input_options, check_input_options

DEFAULT_OUT = "outputs/evaluate"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an argparse subparsers object; returns its parser."""
    ev = subparsers.add_parser(
        "evaluate", help="score explanation methods against ground truth (shape scenes, or your video's masks)",
        description="Score explanation methods against ground truth. --shapes: pointing game, energy, deletion and "
                    "insertion AUC and time per map on held-out synthetic shape scenes with the shapes CLIP. "
                    "--video: pointing game, energy in the mask and rank correlation of map and mask for every "
                    "annotated frame of your video (masks as a folder of images or a mask video, or COCO boxes).")
    what = ev.add_mutually_exclusive_group()
    what.add_argument("--shapes", action="store_true", help="the synthetic shapes benchmark")
    what.add_argument("--video", metavar="VIDEO", help="a video whose frames you annotated")
    ann = ev.add_mutually_exclusive_group()
    ann.add_argument("--masks", metavar="DIR|VIDEO",
                     help="with --video: a folder of per-frame mask images (PNG/JPG/BMP, frame number = last "
                          "integer in the name) or a mask video")
    ann.add_argument("--boxes", metavar="JSON", help="with --video: COCO-style boxes, image_id = frame index")
    ev.add_argument("--first", type=int, choices=(0, 1), default=None,
                    help="number of the first frame in mask names / image_ids (default: 0 if present, else 1)")
    ev.add_argument("--prompt", "-p", action="append", metavar="TEXT", help="with --video: a prompt; repeat")
    ev.add_argument("--gallery-k", type=positive_int_arg, default=6, metavar="K",
                    help="with --video: the K frames with the lowest and the K with the highest energy in the mask "
                         "per method and prompt, drawn as a gallery (default: 6)")
    ev.add_argument("--truncate", action="store_true",
                    help="with --video: cut prompts longer than the tokenizer's context length instead of refusing")
    choose = ev.add_mutually_exclusive_group()
    choose.add_argument("--every", type=positive_int_arg, metavar="K", help="with --video: every K-th frame (default: all)")
    choose.add_argument("--frames", type=positive_int_arg, metavar="N", help="with --video: N evenly spaced frames")
    add_input_options(ev)  # --input, --scale: with --video
    ev.add_argument("--n", type=positive_int_arg, default=None, metavar="N", help="with --shapes: scenes (default: 50)")
    ev.add_argument("--methods", nargs="+", metavar="NAME",
                    help="methods to evaluate (default: all registered with --shapes, grad_eclip with --video)")
    ev.add_argument("--model", "-m", default=None, metavar="NAME|PATH",
                    help="CLIP model (default: data/shapes_clip.pt with --shapes; $GRADECLIP_MODEL or ViT-B/32 "
                         "with --video)")
    ev.add_argument("--out", "-o", default=DEFAULT_OUT, metavar="DIR",
                    help=f"folder for the table (CSV, Markdown) and, with --video, per-frame CSV and plot "
                         f"(default: {DEFAULT_OUT})")
    ev.add_argument("--overwrite", action="store_true",
                    help="with --shapes: start over, discarding the scenes a run with other arguments saved in --out "
                         "(by default a rerun with the same arguments resumes after the last saved scene)")
    ev.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return ev


def check(args) -> None:
    """Validate the flag combination before any work; raises ValueError with a one-line message."""
    if not args.shapes and not args.video:
        raise ValueError("choose a benchmark: --shapes (synthetic shape scenes) or --video VIDEO with --masks or "
                         "--boxes (your annotations)")
    video_only = {"--masks": args.masks, "--boxes": args.boxes, "--prompt": args.prompt, "--every": args.every,
                  "--frames": args.frames, "--first": args.first, "--truncate": args.truncate or None}
    if args.shapes:
        given = [flag for flag, value in video_only.items() if value is not None]
        given += ["--input"] * (args.input is not None) + ["--scale"] * (args.scale != 1.0)
        if given:
            raise ValueError(f"{', '.join(given)} only work with --video, not with --shapes")
    else:
        if args.n is not None or args.overwrite:
            raise ValueError(f"{'--n' if args.n is not None else '--overwrite'} only works with --shapes")
        if args.masks is None and args.boxes is None:
            raise ValueError("--video needs its annotations: --masks DIR|VIDEO or --boxes JSON")
        if not args.prompt or any(not p.strip() for p in args.prompt):
            raise ValueError("--video needs at least one non-empty --prompt (what the annotation shows)")
        if not Path(args.video).is_file():
            raise FileNotFoundError(f"video not found: {args.video}")
    from ..methods.registry import get_method

    for name in args.methods or []:
        get_method(name)
    check_input_options(args)
    output_folder(args.out)


@contextlib.contextmanager
def quiet_cam_package():
    """Silence the progress bars that the grad-cam package opens inside Score-CAM and Ablation-CAM."""
    import importlib
    from functools import partial
    from types import SimpleNamespace
    from unittest import mock

    import tqdm

    quiet = SimpleNamespace(tqdm=partial(tqdm.tqdm, disable=True))
    with contextlib.ExitStack() as stack:
        for name in ("score_cam", "ablation_cam", "ablation_cam_multilayer"):
            try:
                module = importlib.import_module(f"pytorch_grad_cam.{name}")
            except ImportError:
                continue
            if hasattr(module, "tqdm"):
                stack.enter_context(mock.patch.object(module, "tqdm", quiet))
        yield


def run(args) -> int:
    """Run ``evaluate`` for parsed ``args``; returns the exit status."""
    check(args)
    with quiet_cam_package():
        if args.shapes:
            return _shapes(args)
        from .video_command import run_video

        return run_video(args)


def _shapes(args) -> int:
    import time

    from tqdm.auto import tqdm

    from ..backbones.base import backbone_of
    from ..backbones.model import load_clip
    from ..files import Interrupted
    from ..methods.registry import method_names
    from .annotations import write_table
    from .evaluate import evaluate_shapes, format_evaluation, held_out_scenes, pointing_chance, shapes_model
    from .resume import SceneLog

    n = args.n or 50
    model_name = args.model or shapes_model()
    methods = list(args.methods or method_names())
    model_id = str(Path(model_name).resolve()) if Path(model_name).is_file() else model_name
    log = SceneLog(args.out, {"model": model_id, "n": n, "methods": methods, "steps": 10},
                   overwrite=args.overwrite)
    if log.scenes:
        print(f"resuming: {len(log.scenes)} of {n} scenes were saved in {log.path}")
    try:
        model, _ = load_clip(model_name, device=args.device)
        size = backbone_of(model).resolution
        maps_left = [len(s.objects) for s in held_out_scenes(n, size=size)][len(log.scenes):]
        started = time.perf_counter()

        def saved(index: int, record: dict) -> None:
            log.save(index, record)
            if index == n - len(maps_left) and len(maps_left) > 1:  # the first scene of this run: extrapolate
                seconds = time.perf_counter() - started
                left = seconds / maps_left[0] * sum(maps_left[1:])
                tqdm.write(f"expected run time: about {_duration(left)} more for {len(maps_left) - 1} scenes "
                           f"(the first took {seconds:.1f} s for {maps_left[0]} object(s) x {len(methods)} methods)")
                sys.stdout.flush()

        rows = evaluate_shapes(model, n=n, methods=methods, done=log.scenes, on_scene=saved)
    except KeyboardInterrupt:
        raise Interrupted(f"{len(log.scenes)} of {n} scenes done, saved in {log.path}; rerun the same command to "
                          f"resume") from None
    text = format_evaluation(rows)
    print(f"{n} held-out shape scenes, {rows[0]['maps']} maps per method; model {Path(model_name).name}")
    print(text)
    chance = pointing_chance(n, size=size)
    print(f"chance level: a random point falls inside the object {chance:.3f} of the time")
    paths = write_table(rows, text, Path(args.out), "shapes_evaluation")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
