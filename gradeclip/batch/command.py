"""The ``batch`` command: a dataset of videos explained in this process or on Ray Data, resumable, with a summary.

    python -m gradeclip batch INPUT... --prompt P [...] --out DIR [--masks-root DIR [--masks-template T]]
                              [--group-by REGEX ...] [--include-partial] [--engine auto|local|ray]
                              [--address ADDR] [--num-workers N] [--overwrite] [--retry-failed]
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
        "batch", help="explain a dataset of videos, in this process or on Ray (resumable), with a summary per video and per group",
        description="Explain every video of folders or a CSV manifest, in this process or on Ray Data (--engine). "
                    "Per video: maps (.npz + JSON), scores, and with masks the annotation metrics, each video's "
                    "folder renamed into place when complete; a rerun skips complete videos. Then summary.csv "
                    "(video x prompt), summary_groups.csv and a mean relevance map figure per group.")
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folders of videos (searched recursively), video files, or a CSV manifest with columns "
                        "path[,masks][,group columns...]")
    b.add_argument("--prompt", "-p", action="append", required=True, metavar="TEXT", help="a prompt; repeat")
    b.add_argument("--truncate", action="store_true",
                   help="cut prompts longer than the tokenizer's context length instead of refusing them")
    b.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder of the run")
    b.add_argument("--model", "-m", default=os.environ.get("GRADECLIP_MODEL", "ViT-B/32"), metavar="NAME|PATH",
                   help="CLIP model (default: $GRADECLIP_MODEL or ViT-B/32); must be loadable on every worker")
    b.add_argument("--method", default="grad_eclip", metavar="NAME", help="explanation method (default: grad_eclip)")
    choose = b.add_mutually_exclusive_group()
    choose.add_argument("--every", type=positive_int_arg, metavar="K", help="explain every K-th frame (default: all)")
    choose.add_argument("--frames", type=positive_int_arg, metavar="N", help="explain N evenly spaced frames")
    add_input_options(b)
    b.add_argument("--masks-root", metavar="DIR",
                   help="masks of video a/b.avi (relative to its input folder) in DIR/a/b (a folder or video), or "
                        "in CASIA-B's layout DIR/SUBJECT/COND-SEQ/VIEW for a video SUBJECT-COND-SEQ-VIEW.avi")
    b.add_argument("--masks-template", metavar="TEMPLATE",
                   help="instead: masks in DIR/TEMPLATE, fields from --group-by's named groups, manifest columns, "
                        "{stem} and {rel}, e.g. '{subject}/{condition}-{seq}/{view}'")
    b.add_argument("--group-by", action="append", metavar="REGEX",
                   help="named groups on the video path form the summary's groups, e.g. "
                        r"'(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})'; repeat "
                        "for more groupings (each kept, one block of summary_groups.csv per named group)")
    b.add_argument("--include-partial", action="store_true",
                   help="count partial videos (frames missing or damaged) in the group statistics (default: only "
                        "complete videos)")
    b.add_argument("--engine", choices=("auto", "local", "ray"), default="auto",
                   help="local: one model in this process; ray: Ray Data actors (a private local Ray, or the "
                        "cluster of --address); auto (default): ray with --address or on a machine with at least "
                        "8 cores or 2 GPUs, else local")
    b.add_argument("--address", metavar="ADDR",
                   help="join this Ray cluster, e.g. 127.0.0.1:6379 (implies --engine ray; default: a private "
                        "local Ray on 127.0.0.1 when the engine is ray)")
    b.add_argument("--num-workers", type=positive_int_arg, default=2, metavar="N",
                   help="model replicas (Ray actors, one CPU each; default: 2)")
    b.add_argument("--num-cpus", type=positive_int_arg, default=2, metavar="N",
                   help="CPUs of the local Ray (default: 2; ignored with --address)")
    b.add_argument("--overwrite", action="store_true",
                   help="recompute everything when the arguments differ from the folder's earlier run")
    b.add_argument("--retry-failed", action="store_true",
                   help="redo the videos of the folder's earlier run that are not complete (failed or partial; "
                        "default: keep their records)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return b


def check(args) -> dict:
    """Validate before any work; returns the run settings. Raises ValueError with a one-line message."""
    from ..methods.registry import get_method

    if any(not p.strip() for p in args.prompt):
        raise ValueError("empty --prompt: every prompt needs some text")
    get_method(args.method)
    check_input_options(args)
    group_names(args.group_by)
    if args.masks_root and not Path(args.masks_root).is_dir():
        raise FileNotFoundError(f"--masks-root not found: {args.masks_root}")
    if args.masks_template is not None and not args.masks_root:
        raise ValueError("--masks-template needs --masks-root (the folder the template is relative to)")
    output_folder(args.out)
    model = args.model if not os.path.exists(args.model) else str(Path(args.model).resolve())
    return {"prompts": list(args.prompt), "method": args.method, "model": model, "every": args.every,
            "frames": args.frames, "input": args.input, "scale": args.scale, "truncate": args.truncate,
            "masks_root": str(Path(args.masks_root).resolve()) if args.masks_root else None,
            "masks_template": args.masks_template}


def group_names(patterns) -> list:
    """The named groups of every ``--group-by`` regex, in order; ValueError (one line) for a pattern that is not a
    regex, has no named group, or reuses another pattern's group name."""
    names = []
    for text in patterns or []:
        try:
            pattern = re.compile(text)
        except re.error as err:
            raise ValueError(f"--group-by {text!r} is not a regular expression: {err}") from None
        if not pattern.groupindex:
            raise ValueError(f"--group-by {text!r} needs named groups, e.g. (?P<view>\\d{{3}})")
        again = [n for n in pattern.groupindex if n in names]
        if again:
            raise ValueError(f"--group-by {text!r} reuses the group name {again[0]!r} of an earlier --group-by; "
                             "give each grouping its own names")
        names += list(pattern.groupindex)
    return names


def run(args) -> int:
    """Run ``batch`` for parsed ``args``; returns the exit status (1 when some video is not complete). Ctrl-C:
    temporary folders removed, then ``Interrupted`` with what is complete and how to resume."""
    from ..files import Interrupted
    from .masks import check_template
    from .local import choose_engine
    from .runner import check_run, find_videos, settle, status_of, tidy
    from .summary import groups_of

    settings = check(args)
    choose_engine(args.engine, args.address, cores=1, gpus=0)  # refuses local with --address before any work
    fields_of = (lambda path: groups_of(path, args.group_by)) if args.group_by else None
    jobs = find_videos(args.inputs, args.masks_root, fields_of, args.masks_template)
    if args.masks_template is not None:
        check_template(args.masks_template, group_names(args.group_by) + [k for j in jobs for k in j["columns"]])
    if args.masks_root and not any(j["masks"] for j in jobs):
        looked = jobs[0]["masks_looked"] if jobs else []
        raise ValueError(f"--masks-root {args.masks_root}: no masks found for any of the {len(jobs)} videos "
                         f"(for {Path(jobs[0]['path']).name} looked for {' and '.join(looked)}); "
                         "see --masks-template")
    out = Path(args.out).resolve()
    check_run(out, settings, args.overwrite)
    try:
        tidied = tidy(out)
        if tidied["repaired"]:
            print(f"{len(tidied['repaired'])} video folders had no record.json (an interrupted run): recomputing "
                  f"{', '.join(tidied['repaired'])}", file=sys.stderr)
        redo = (None, "failed", "partial") if args.retry_failed else (None,)
        todo = [j for j in jobs if status_of(out, j["id"]) in redo]
        engine = choose_engine(args.engine, args.address)
        print(f"{len(jobs)} videos; {len(jobs) - len(todo)} already done in {out}; {len(todo)} to do"
              + (f" ({engine} engine)" if todo else ""))
        log = lambda line: print(line, file=sys.stderr)  # noqa: E731 (sys.stderr as it is when called)
        if todo and engine == "local":
            from .local import run_local

            run_local(todo, settings, out, progress=not args.quiet, log=log)
        elif todo:
            from .engine import run_on_ray

            run_on_ray(todo, settings, out, address=args.address, num_workers=args.num_workers,
                       num_cpus=args.num_cpus, progress=not args.quiet, log=log)
        return write_summaries(args, settings, jobs, out)
    except KeyboardInterrupt:
        settle(out)
        complete = sum(status_of(out, j["id"]) == "complete" for j in jobs)
        raise Interrupted(f"{complete} of {len(jobs)} videos complete in {out / 'videos'}; temporary folders "
                          "removed; rerun the same command to resume") from None


def write_summaries(args, settings: dict, jobs: list, out: Path) -> int:
    """Write summary.csv, summary_groups.csv, summary.json and the mean map figures; print the summary; returns
    the exit status (1 when some video is not complete)."""
    from ..files import atomic_path, write_json
    from ..eval.annotations import write_csv
    from .summary import format_summary, group_mean_maps, group_rows, plot_group_maps, run_counts, summary_rows

    prompts, masks_asked = settings["prompts"], bool(args.masks_root)
    rows = summary_rows(out, jobs, prompts, args.group_by, masks_asked)
    paths = [out / "summary.csv"]
    with atomic_path(paths[0]) as temp:
        write_csv(rows, temp)
    columns = list(dict.fromkeys([*(k for j in jobs for k in j["columns"]), *group_names(args.group_by)]))
    groups = group_rows(rows, columns, args.include_partial)
    if groups:
        paths.append(out / "summary_groups.csv")
        with atomic_path(paths[-1]) as temp:
            write_csv(groups, temp)
        import matplotlib.pyplot as plt

        from ..viz.figures import save_figure

        for column in columns:
            means = group_mean_maps(out, rows, column, prompts, args.include_partial)
            if means:
                fig = plot_group_maps(means, prompts, column)
                paths += save_figure(fig, f"mean_maps_{column}", out, formats=("png",))
                plt.close(fig)
    counts = run_counts(rows, prompts, args.include_partial, masks_asked)
    paths.append(write_json(out / "summary.json", counts))
    print(format_summary(groups or rows))
    excluded = counts["excluded"]
    print(f"{counts['complete']} of {counts['videos']} videos complete, {counts['partial']} partial, "
          f"{counts['failed'] + counts['missing']} failed" +
          (f"; not in the group statistics: {', '.join(e['id'] + ' (' + e['status'] + ')' for e in excluded)}"
           if excluded and groups else "") +
          (f"; masks found for {counts['with_masks']} of {counts['videos']} videos" if masks_asked else ""))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if counts["complete"] < counts["videos"] else 0
