"""The ``batch`` command: a dataset of videos explained on Ray Data, resumable, with a dataset summary.

    python -m gradeclip batch INPUT... --prompt P [...] --out DIR [--masks-root DIR] [--group-by REGEX]
                              [--address ADDR] [--num-workers N] [--overwrite]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ..input_args import add_input_options, check_input_options
from ..checks import output_folder, positive_int_arg


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``batch`` on an argparse subparsers object; returns its parser."""
    b = subparsers.add_parser(
        "batch", help="explain a dataset of videos on Ray (resumable), with a summary per video and per group",
        description="Explain every video of folders or a CSV manifest on Ray Data (a local Ray unless --address). "
                    "Per video: maps (.npz + JSON), scores, and with masks the annotation metrics, each video's "
                    "folder renamed into place when complete; a rerun skips complete videos. Then summary.csv "
                    "(video x prompt), summary_groups.csv and a mean relevance map figure per group.")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folders of videos (searched recursively), video files, or a CSV manifest with columns "
                        "path[,masks][,group columns...]")
    b.add_argument("--prompt", "-p", action="append", required=True, metavar="TEXT", help="a prompt; repeat")
    b.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder of the run")
    b.add_argument("--model", "-m", default=os.environ.get("GRADECLIP_MODEL", "ViT-B/32"), metavar="NAME|PATH",
                   help="CLIP model (default: $GRADECLIP_MODEL or ViT-B/32); must be loadable on every worker")
    b.add_argument("--method", default="grad_eclip", metavar="NAME", help="explanation method (default: grad_eclip)")
    choose = b.add_mutually_exclusive_group()
    choose.add_argument("--every", type=positive_int_arg, metavar="K", help="explain every K-th frame (default: all)")
    choose.add_argument("--frames", type=positive_int_arg, metavar="N", help="explain N evenly spaced frames")
    add_input_options(b)
    b.add_argument("--masks-root", metavar="DIR",
                   help="masks of video a/b.avi (relative to its input folder) in DIR/a/b (a folder or video)")
    b.add_argument("--group-by", metavar="REGEX",
                   help="named groups on the video path form the summary's groups, e.g. "
                        r"'(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})'")
    b.add_argument("--address", metavar="ADDR", help="join this Ray cluster (default: start a local Ray)")
    b.add_argument("--num-workers", type=positive_int_arg, default=2, metavar="N",
                   help="model replicas (Ray actors, one CPU each; default: 2)")
    b.add_argument("--num-cpus", type=positive_int_arg, default=2, metavar="N",
                   help="CPUs of the local Ray (default: 2; ignored with --address)")
    b.add_argument("--overwrite", action="store_true",
                   help="recompute everything when the arguments differ from the folder's earlier run")
    b.add_argument("--retry-failed", action="store_true",
                   help="redo the videos that failed in the folder's earlier run (default: keep their records)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return b


def check(args) -> dict:
    """Validate before any work; returns the run settings. Raises ValueError with a one-line message."""
    from ..methods.registry import get_method

    if any(not p.strip() for p in args.prompt):
        raise ValueError("empty --prompt: every prompt needs some text")
    get_method(args.method)
    check_input_options(args)
    if args.group_by:
        try:
            pattern = re.compile(args.group_by)
        except re.error as err:
            raise ValueError(f"--group-by {args.group_by!r} is not a regular expression: {err}") from None
        if not pattern.groupindex:
            raise ValueError("--group-by needs named groups, e.g. (?P<view>\\d{3})")
    if args.masks_root and not Path(args.masks_root).is_dir():
        raise FileNotFoundError(f"--masks-root not found: {args.masks_root}")
    output_folder(args.out)
    model = args.model if not os.path.exists(args.model) else str(Path(args.model).resolve())
    return {"prompts": list(args.prompt), "method": args.method, "model": model, "every": args.every,
            "frames": args.frames, "input": args.input, "scale": args.scale,
            "masks_root": str(Path(args.masks_root).resolve()) if args.masks_root else None}


def run(args) -> int:
    """Run ``batch`` for parsed ``args``; returns the exit status (1 when some video failed)."""
    from ..eval.annotations import write_csv
    from .runner import check_run, find_videos, run_on_ray, status_of
    from .summary import format_summary, group_mean_maps, group_rows, plot_group_maps, summary_rows

    settings = check(args)
    jobs = find_videos(args.inputs, args.masks_root)
    out = Path(args.out).resolve()
    check_run(out, settings, args.overwrite)
    redo = (None, "failed") if args.retry_failed else (None,)
    todo = [j for j in jobs if status_of(out, j["id"]) in redo]
    print(f"{len(jobs)} videos; {len(jobs) - len(todo)} already done in {out}; {len(todo)} to do")
    if todo:
        run_on_ray(todo, settings, out, address=args.address, num_workers=args.num_workers, num_cpus=args.num_cpus,
                   progress=not args.quiet, log=lambda line: print(line, file=sys.stderr))
    rows = summary_rows(out, jobs, settings["prompts"], args.group_by)
    paths = [write_csv(rows, out / "summary.csv")]
    columns = list(dict.fromkeys(k for j in jobs for k in j["columns"]))
    if args.group_by:
        columns += [k for k in re.compile(args.group_by).groupindex if k not in columns]
    groups = group_rows(rows, columns)
    if groups:
        paths.append(write_csv(groups, out / "summary_groups.csv"))
        import matplotlib.pyplot as plt

        from ..viz.figures import save_figure

        for column in columns:
            means = group_mean_maps(out, rows, column, settings["prompts"])
            if means:
                fig = plot_group_maps(means, settings["prompts"], column)
                paths += save_figure(fig, f"mean_maps_{column}", out, formats=("png",))
                plt.close(fig)
    failed = sorted({r["id"] for r in rows if r["status"] != "complete"})
    print(format_summary(groups or rows))
    print(f"{len(jobs) - len(failed)} of {len(jobs)} videos complete" +
          (f"; failed: {', '.join(failed)}" if failed else ""))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if failed else 0
