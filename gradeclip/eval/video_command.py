"""``evaluate --video``: a method's maps on every explained frame scored against the user's masks or boxes.

One labelled progress bar over frames x methods (the grad-cam package's inner bars are silenced by the caller,
``eval.command.run``); prints the summary table and writes it as CSV and Markdown, a per-frame CSV, a plot of each
metric over time and galleries of the lowest- and highest-energy frames into ``--out``, each file under a temporary
name renamed when complete. Ctrl-C raises ``files.Interrupted`` with one line saying what exists.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def run_video(args) -> int:
    """``evaluate --video`` for parsed and checked ``args`` (``command.check``); returns the exit status 0."""
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from ..backbones.model import load_clip
    from ..io.frames import video_info
    from ..io.stream import select_indices
    from ..video import explain_video
    from ..files import Interrupted, atomic_path
    from .annotations import (format_table, open_masks, plot_metrics_over_time, score_frames, summarize, write_csv,
                              write_table)

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
        paths += write_table(table, text, out, f"{stem}_annotations")
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
    from ..viz.saving import safe_name
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
            path = out / f"{safe_name(f'{stem}_gallery_{method}_{prompt}')}.png"
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

