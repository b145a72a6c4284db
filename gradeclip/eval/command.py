"""The ``evaluate`` command: explanation methods scored against ground truth.

    python -m gradeclip evaluate --shapes [--n N]                                  # synthetic shape scenes
    python -m gradeclip evaluate --video V (--masks M | --boxes F) --prompt P ...  # your own annotations

One labelled progress bar (scenes for --shapes, maps for --video; the grad-cam package's inner bars are silenced);
the table is printed and written as CSV and Markdown into ``--out``; for a video also a per-frame CSV and a plot of
each metric over time. Every file is written under a temporary name and renamed when complete. ``--shapes`` states
its expected run time after the first scene, saves each finished scene (``resume.SceneLog``) and resumes on a rerun
with the same arguments; Ctrl-C in either form raises ``files.Interrupted`` with one line for the user.
"""
from __future__ import annotations

import argparse
import contextlib
import os
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
        return _shapes(args) if args.shapes else _video(args)


def _write_table(table, text: str, out: Path, stem: str) -> list:
    from ..files import write_text
    from .annotations import write_csv

    out.mkdir(parents=True, exist_ok=True)
    return [write_csv(table, out / f"{stem}.csv"), write_text(out / f"{stem}.md", text + os.linesep)]


def _shapes(args) -> int:
    import time

    from tqdm.auto import tqdm

    from ..backbones.base import backbone_of
    from ..backbones.model import load_clip
    from ..files import Interrupted
    from ..methods.registry import method_names
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
    paths = _write_table(rows, text, Path(args.out), "shapes_evaluation")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _video(args) -> int:
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from ..backbones.model import load_clip
    from ..io.frames import video_info
    from ..io.stream import select_indices
    from ..video import explain_video
    from ..files import Interrupted, atomic_path
    from .annotations import format_table, open_masks, plot_metrics_over_time, score_frames, summarize, write_csv

    info = video_info(args.video)
    source = open_masks(args.masks, boxes=args.boxes, frame_size=(info.height, info.width), first=args.first)
    methods = args.methods or ["grad_eclip"]
    results = {}  # method -> VideoExplanation, for the galleries
    model_name = args.model or os.environ.get("GRADECLIP_MODEL", "ViT-B/32")
    model, _ = load_clip(model_name, device=args.device)
    if args.truncate:
        from ..backbones.base import with_truncation
        model = with_truncation(model)
    requested = [int(i) for i in select_indices(info.num_frames, every=args.every, count=args.frames)]
    total = len(requested)
    rows, missing, resized, done = [], [], None, 0
    stem = Path(args.video).stem
    try:
        with tqdm(total=total * len(methods), desc=f"evaluate {Path(args.video).name}: frames x methods",
                  unit="map") as bar:
            for method in methods:
                bar.set_postfix_str(method)
                result = explain_video(model, args.video, args.prompt, method=method, every=args.every,
                                       count=args.frames, input=args.input, scale=args.scale, model_name=model_name,
                                       progress=bar)
                bar.update(total - len(result.indices))  # frames that failed to decode, so the bar ends full
                scored = score_frames(result, source)
                for row in scored["rows"]:  # which input the numbers belong to
                    row["input"] = f"{result.view.mode} {result.view.size[0]}x{result.view.size[1]}"
                rows += scored["rows"]
                results[method] = result
                missing, resized = scored["missing"], scored["resized"] or resized
                explained, done = len(result.indices), done + 1
    except KeyboardInterrupt:
        raise Interrupted(f"evaluate --video stopped after {done} of {len(methods)} methods; nothing was written "
                          f"to {args.out}; rerun the same command") from None
    print(f"{Path(args.video).name}: {explained} frames explained, {explained - len(missing)} annotated "
          f"({source.description}); model {Path(model_name).name}; {result.view.label()}")
    if missing:
        print(f"  {len(missing)} explained frames have no annotation and were skipped: "
              f"{_ranges(missing)}")
    if resized:
        print(f"  masks of {resized[0][1]}x{resized[0][0]} resized nearest-neighbour to the frame size "
              f"{resized[1][1]}x{resized[1][0]}")
    if not rows:
        raise ValueError(f"no explained frame of {args.video} has an annotation in {source.description}; check "
                         f"the frame numbering (--first 0 or 1)")
    table = summarize(rows)
    text = format_table(table)
    print(text)
    out, paths = Path(args.out), []
    try:
        paths += _write_table(table, text, out, f"{stem}_annotations")
        paths.append(write_csv(rows, out / f"{stem}_frames.csv"))
        fig = plot_metrics_over_time(rows, explained=requested)
        for suffix in ("png", "pdf"):
            with atomic_path(out / f"{stem}_metrics.{suffix}") as temp:
                fig.savefig(temp, dpi=150, bbox_inches="tight")
            paths.append(out / f"{stem}_metrics.{suffix}")
        plt.close(fig)
        paths += _galleries(results, rows, source, args.gallery_k, out, stem)
    except KeyboardInterrupt:
        raise Interrupted(f"evaluate --video stopped while writing; complete files in {out}: "
                          f"{', '.join(p.name for p in paths) or 'none'}; rerun the same command") from None
    print("wrote " + ", ".join(str(p) for p in paths))
    sys.stdout.flush()
    return 0


def _ranges(indices) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (at most 10 ranges shown)."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts[:10]) + (f", ... ({len(parts) - 10} more ranges)" if len(parts) > 10 else "")


def _galleries(results: dict, rows: list, source, k: int, out: Path, stem: str) -> list:
    """Per method and prompt, the ``k`` annotated frames with the lowest and the ``k`` with the highest energy in
    the mask (``viz.gallery``), re-decoded frame-exactly: ``{stem}_gallery_{method}_{prompt}.png`` and the frame
    list ``{stem}_gallery.csv``. Returns the paths."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..files import atomic_path
    from ..io.frames import read_frames
    from ..viz.figures import _safe_name
    from ..viz.gallery import extremes, gallery_csv_rows, plot_gallery
    from .annotations import write_csv

    paths, listing = [], []
    for method, result in results.items():
        where = {int(i): n for n, i in enumerate(result.indices.tolist())}
        size = tuple(result.frame_size)
        for j, prompt in enumerate(result.prompts):
            chosen = [{**r, "video": stem} for r in rows if r["method"] == method and r["prompt"] == prompt]
            lowest, highest = extremes(chosen, k)
            if not lowest:
                continue
            frames = sorted({int(r["frame"]) for r in lowest + highest})
            drawn = {}
            for frame, image in zip(frames, read_frames(str(result.video), frames)):
                maps, (top, left, bottom, right) = result.frame_maps(where[frame], size)
                canvas = np.zeros(size, np.float32)
                canvas[top:bottom, left:right] = maps[j]
                drawn[frame] = {"image": image, "map": canvas, "mask": source.mask(frame, size)}
            lowest = [{**r, **drawn[int(r["frame"])]} for r in lowest]
            highest = [{**r, **drawn[int(r["frame"])]} for r in highest]
            fig = plot_gallery(lowest, highest, f"{stem} · {method} · “{prompt}” · lowest / highest energy in mask")
            path = out / f"{_safe_name(f'{stem}_gallery_{method}_{prompt}')}.png"
            with atomic_path(path) as temp:
                fig.savefig(temp, dpi=150, bbox_inches="tight", format="png")
            plt.close(fig)
            paths.append(path)
            listing += gallery_csv_rows(lowest, highest, method=method, prompt=prompt, figure=path.name)
    if listing:
        paths.append(out / f"{stem}_gallery.csv")
        with atomic_path(paths[-1]) as temp:
            write_csv(listing, temp)
    return paths

