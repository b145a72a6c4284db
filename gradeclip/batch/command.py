"""The ``batch`` command: a dataset of videos explained in this process or on Ray Data, resumable, with a summary.

    python -m gradeclip batch INPUT... --prompt P [...] --out DIR [--masks-root DIR [--masks-template T]]
                              [--group-by REGEX ...] [--cross A,B ...] [--paired FACTOR:BASELINE --unit NAME]
                              [--seed S] [--resamples B] [--gallery-k K] [--include-partial]
                              [--engine auto|local|ray] [--address ADDR] [--num-workers N] [--overwrite]
                              [--retry-failed]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ..input_args import add_input_options, add_precision_option, check_input_options, check_precision_option
from ..checks import output_folder, positive_int_arg


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``batch`` on an argparse subparsers object; returns its parser."""
    b = subparsers.add_parser(
        "batch", help="explain a dataset of videos, in this process or on Ray (resumable), with a summary per "
                      "video and per group",
        description="Explain every video of folders or a CSV manifest, in this process or on Ray Data (--engine). "
                    "Per video: maps (.npz + JSON), scores, and with masks the annotation metrics, each video's "
                    "folder renamed into place when complete; a rerun skips complete videos. Then summary.csv "
                    "(video x prompt), summary_groups.csv, stats.csv/stats.md (n, mean, sd and a bootstrap "
                    "interval over videos per group and cross; paired differences with --paired) and a mean "
                    "relevance map figure per group.")
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
    add_precision_option(b)
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
    b.add_argument("--gallery-k", type=positive_int_arg, default=6, metavar="K",
                   help="with masks: frames per failure gallery, the K lowest and K highest energy in the mask per "
                        "group, method and prompt (default: 6)")
    b.add_argument("--cross", action="append", metavar="A,B",
                   help="a cross of group names tabulated in stats.csv/stats.md, e.g. condition,view; repeat for more "
                        "(default: the cross of all named groups of each --group-by with several; 'none': no cross)")
    b.add_argument("--paired", action="append", metavar="FACTOR:BASELINE",
                   help="paired differences of each other level of FACTOR minus BASELINE within each --unit, e.g. "
                        "condition:nm (bg - nm, cl - nm per subject); repeat for more factors")
    b.add_argument("--unit", metavar="NAME[,NAME]",
                   help="the unit the --paired differences are taken within and resampled over, e.g. subject")
    b.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap intervals (default: 0)")
    b.add_argument("--resamples", type=positive_int_arg, default=2000, metavar="B",
                   help="bootstrap resamples of the videos per interval (default: 2000)")
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
    check_precision_option(args)  # workers run on cuda where available, as the driver sees it
    group_names(args.group_by)
    stats_options(args)
    if args.masks_root and not Path(args.masks_root).is_dir():
        raise FileNotFoundError(f"--masks-root not found: {args.masks_root}")
    if args.masks_template is not None and not args.masks_root:
        raise ValueError("--masks-template needs --masks-root (the folder the template is relative to)")
    output_folder(args.out)
    model = args.model if not os.path.exists(args.model) else str(Path(args.model).resolve())
    return {"prompts": list(args.prompt), "method": args.method, "model": model, "every": args.every,
            "frames": args.frames, "input": args.input, "scale": args.scale, "truncate": args.truncate,
            "precision": args.precision,
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


def stats_options(args) -> dict:
    """``--cross``, ``--paired`` and ``--unit`` parsed: ``{"crosses": None | [[names]], "paired": [(factor,
    baseline)], "unit": [names]}``; ValueError (one line) for a malformed one. Names are checked against the groups
    once the videos are found (``check_stats``)."""
    crosses = None
    if getattr(args, "cross", None):
        crosses = [] if args.cross == ["none"] else [[n.strip() for n in c.split(",") if n.strip()] for c in args.cross]
        if any(len(c) < 2 for c in crosses):
            raise ValueError(f"--cross {args.cross!r}: give two or more group names separated by commas, or 'none'")
    paired = []
    for text in getattr(args, "paired", None) or []:
        factor, _, baseline = text.partition(":")
        if not factor or not baseline:
            raise ValueError(f"--paired {text!r}: give FACTOR:BASELINE, e.g. condition:nm")
        paired.append((factor, baseline))
    unit = [n.strip() for n in (getattr(args, "unit", None) or "").split(",") if n.strip()]
    if paired and not unit:
        raise ValueError("--paired needs --unit NAME: the group the differences are taken within, e.g. subject")
    clash = [f for f, _ in paired if f in unit]
    if clash:
        raise ValueError(f"--paired {clash[0]}:... --unit {','.join(unit)}: the factor compared cannot also be the "
                         "unit; name the unit the levels are compared within, e.g. subject")
    if unit and not paired:
        raise ValueError("--unit is used by --paired only: add --paired FACTOR:BASELINE, e.g. condition:nm")
    return {"crosses": crosses, "paired": paired, "unit": unit}


def check_stats(args, jobs: list) -> list:
    """Before the work: the groupings to tabulate (``stats.groupings``), with --cross, --paired and --unit names
    and the --paired baseline level checked against the videos' groups. Returns the groupings."""
    from .stats import groupings
    from .summary import groups_of

    options = stats_options(args)
    per_pattern = [group_names([p]) for p in args.group_by or []]
    columns = list(dict.fromkeys(k for j in jobs for k in j["columns"]))
    chosen = groupings(per_pattern, columns, options["crosses"])
    fields = [{**j["columns"], **groups_of(j["path"], args.group_by)} for j in jobs]
    if options["crosses"] is None:  # a default cross whose every cell is one video is summary.csv again: left out
        chosen = [g for g in chosen if len(g) == 1 or _shared_cell(fields, g)]
    for factor, baseline in options["paired"]:
        for name in (factor, *options["unit"]):
            if (name,) not in chosen:
                raise ValueError(f"--paired/--unit: {name!r} is not a group name (named groups of --group-by and "
                                 f"manifest columns: {', '.join(g[0] for g in chosen if len(g) == 1) or 'none'})")
        levels = sorted({f[factor] for f in fields if factor in f})
        if baseline not in levels:
            raise ValueError(f"--paired {factor}:{baseline}: no video has {factor} {baseline!r} "
                             f"(found {', '.join(levels) or 'none'})")
    return chosen


def _shared_cell(fields: list, names) -> bool:
    """Whether some cell of the cross of ``names`` holds two or more of the videos (``fields``: their groups)."""
    cells = [tuple(f[n] for n in names) for f in fields if all(n in f for n in names)]
    return len(set(cells)) < len(cells)


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
    check_stats(args, jobs)
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
    """Write summary.csv, summary_groups.csv, stats.csv/stats.md (and paired.csv with --paired), summary.json and
    the mean map figures; print the statistics table (the video x prompt table without groups), or past
    ``stats.PRINT_ROWS`` rows the file's name; returns the exit status (1 when some video is not complete)."""
    from ..files import atomic_path, write_json
    from ..eval.annotations import write_csv
    from .figures import add_band_shares, write_figures
    from .stats import PRINT_ROWS, table_rows, write_tables
    from .summary import format_summary, group_rows, included, run_counts, summary_rows

    prompts, masks_asked = settings["prompts"], bool(args.masks_root)
    rows = summary_rows(out, jobs, prompts, args.group_by, masks_asked)
    if masks_asked:
        add_band_shares(out, rows, prompts)
    paths = [out / "summary.csv"]
    with atomic_path(paths[0]) as temp:
        write_csv(rows, temp)
    columns = list(dict.fromkeys([*(k for j in jobs for k in j["columns"]), *group_names(args.group_by)]))
    groups = group_rows(rows, columns, args.include_partial)
    if groups:
        paths.append(out / "summary_groups.csv")
        with atomic_path(paths[-1]) as temp:
            write_csv(groups, temp)
    else:  # none asked for this time: none left from an earlier run
        (out / "summary_groups.csv").unlink(missing_ok=True)
    options = stats_options(args)
    written, table, counts_stats = write_tables(
        out, rows, check_stats(args, jobs), options["paired"], options["unit"], prompts, settings["method"],
        lambda status: included(status, args.include_partial), args.seed, args.resamples)
    paths += written
    figures = write_figures(out, rows, columns if groups else [], prompts, settings["method"], args.include_partial,
                            getattr(args, "gallery_k", 6))
    counts = run_counts(rows, prompts, args.include_partial, masks_asked)
    if table:
        counts["statistics"] = counts_stats
    paths.append(write_json(out / "summary.json", counts))
    table = table or format_summary(rows)
    named = out / ("stats.md" if groups else "summary.csv")
    print(table if table_rows(table) <= PRINT_ROWS else f"({table_rows(table)} table rows: see {named})")
    excluded = counts["excluded"]
    print(f"{counts['complete']} of {counts['videos']} videos complete, {counts['partial']} partial, "
          f"{counts['failed'] + counts['missing']} failed" +
          (f"; not in the group statistics: {', '.join(e['id'] + ' (' + e['status'] + ')' for e in excluded)}"
           if excluded and groups else "") +
          (f"; masks found for {counts['with_masks']} of {counts['videos']} videos" if masks_asked else ""))
    print("wrote " + ", ".join(str(p) for p in paths) +
          (f" and {len(figures)} figures and lists (named in {out / 'figures.json'})" if figures else ""))
    return 1 if counts["complete"] < counts["videos"] else 0
