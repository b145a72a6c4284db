"""Group statistics of a batch run that a paper can use: counts, mean, standard deviation and a bootstrap interval
over videos, per grouping (one factor, or a cross of several) x prompt x method x metric; and paired differences
between the levels of one factor within units named by another (per subject: bg - nm).

The unit of independence is the video: each per-video value (``summary_rows``: a video's mean over its frames) is
one observation, and the bootstrap resamples videos (for paired differences, units) with replacement. The interval
is the expanded percentile interval of the resampled means (``level`` 0.95: for many videos the 2.5th and 97.5th
percentiles; for few, further out, ``expanded_tail``, so that it still holds the mean about 95 % of the time), from a
generator seeded by ``seed`` and the cell's own key, so a cell's interval does not depend on which other cells or
groupings were asked for, and a rerun gives the same numbers. A value that is missing (no masks, rank correlation
undefined for constant maps, a video left out as partial or failed) is not an observation: its ``n`` says how many
videos had one, a resample's mean is over its drawn videos that have it, and a cell with none reports NaN, never 0.
``sd`` (ddof 1) and the interval need 2 observations.
"""
from __future__ import annotations

import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

METRICS = ("mean_cos", "pointing", "energy", "rank_corr", "stability")
LABELS = {"mean_cos": "cosine", "pointing": "pointing", "energy": "energy", "rank_corr": "rank corr.",
          "stability": "stability"}
SEED, RESAMPLES, LEVEL = 0, 2000, 0.95
CROSS = " x "  # joins factor names and values of a cross: "condition x view", "bg x 090"
PRINT_ROWS = 200  # past this many table rows the run names stats.md instead of printing it


def cell_rng(seed: int, *key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a stable hash of ``key`` (the cell's names), independent of call order."""
    return np.random.default_rng([int(seed), zlib.crc32("|".join(key).encode())])


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) int: how often each of n units is drawn in each of ``resamples`` draws of n units with
    replacement."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def bootstrap_interval(values, resamples: int, rng: np.random.Generator, level: float = LEVEL
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Expanded percentile bootstrap interval of the mean (quantile levels ``expanded_tail`` of the number of
    units with a value, not ``(1 - level) / 2``). ``values`` (..., n) float, the last axis the units (videos),
    NaN where a unit has no value; ``resamples`` draws of the n units with replacement, shared by the leading
    axes, each resample's mean taken over its drawn units that have a value. Returns (low, high), each of shape
    (...,); NaN where fewer than 2 units have a value."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    enough = finite.sum(axis=-1) >= 2
    if not enough.any():
        nan = np.full(values.shape[:-1], np.nan)
        return nan, nan.copy()
    counts = resample_counts(values.shape[-1], resamples, rng).T.astype(np.float64)  # (n, resamples)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (np.where(finite, values, 0.0) @ counts) / (finite @ counts)  # (..., resamples); NaN: none drawn
    means[~enough] = 0.0  # keeps nanquantile quiet; replaced by NaN below
    low, high = np.full(values.shape[:-1], np.nan), np.full(values.shape[:-1], np.nan)
    n = finite.sum(axis=-1)
    for size in np.unique(n[enough]):  # rows with the same number of values share their quantile levels
        rows = n == size
        tail = expanded_tail(int(size), level)
        low[rows], high[rows] = np.nanquantile(means[rows], [tail, 1 - tail], axis=-1)
    return low, high


def expanded_tail(n: int, level: float = LEVEL) -> float:
    """The lower quantile level of the expanded percentile interval for n units (Hesterberg 2015, "What teachers
    should know about the bootstrap", sec. 5): Phi(sqrt(n / (n - 1)) t_{(1 - level) / 2, n - 1}) in place of
    (1 - level) / 2, which widens the percentile interval by the t/z and n/(n-1) factors it lacks with few units.
    E.g. 0.025 -> 0.0010 at n 5, 0.0159 at n 20, 0.0231 at n 100; 0 (the extremes) at n 2."""
    from scipy.stats import norm, t

    return float(norm.cdf(np.sqrt(n / (n - 1)) * t.ppf((1 - level) / 2, n - 1)))


def describe(values, resamples: int, rng: np.random.Generator, level: float = LEVEL) -> List[dict]:
    """Per row of ``values`` (m, n) (NaN or None: missing), ``n`` (finite values), ``mean``, ``sd`` (ddof 1),
    ``ci_low``, ``ci_high`` (``bootstrap_interval``, one set of draws of the n units for all rows); NaN
    statistics where there are too few values (mean: 1, sd and interval: 2)."""
    if not len(values):
        return []
    x = np.array([[np.nan if v is None else v for v in row] for row in values], np.float64)
    low, high = bootstrap_interval(x, resamples, rng, level)
    out = []
    for row, lo, hi in zip(x, low, high):
        row = row[np.isfinite(row)]
        out.append({"n": int(row.size), "mean": float(row.mean()) if row.size else float("nan"),
                    "sd": float(row.std(ddof=1)) if row.size > 1 else float("nan"),
                    "ci_low": float(lo), "ci_high": float(hi)})
    return out


def groupings(names_per_pattern: Sequence[Sequence[str]], columns: Sequence[str] = (),
              crosses: Optional[Sequence[Sequence[str]]] = None) -> List[Tuple[str, ...]]:
    """The groupings to tabulate: each factor alone (every named group of every pattern, then manifest
    ``columns``), then the crosses: ``crosses`` when given, else the cross of all names of each pattern with two
    or more. Each is a tuple of factor names; duplicates dropped, order kept."""
    factors = list(dict.fromkeys([n for names in names_per_pattern for n in names] + list(columns)))
    chosen = crosses if crosses is not None else [names for names in names_per_pattern if len(names) > 1]
    for cross in chosen:
        unknown = [n for n in cross if n not in factors]
        if unknown:
            raise ValueError(f"--cross {','.join(cross)}: {unknown[0]!r} is not a group name "
                             f"(named groups of --group-by and manifest columns: {', '.join(factors) or 'none'})")
    return list(dict.fromkeys([(f,) for f in factors] + [tuple(c) for c in chosen if len(c) > 1]))


def group_stats(rows: List[dict], groupings_: Sequence[Tuple[str, ...]], prompts: Sequence[str], method: str,
                include: callable, seed: int = SEED, resamples: int = RESAMPLES, level: float = LEVEL) -> List[dict]:
    """One row per grouping x cell x prompt x metric from ``summary_rows``'s rows (video x prompt): ``grouping``
    and ``cell`` (names and values joined by `` x ``), the factor columns, ``prompt``, ``method``, ``metric``,
    ``videos`` (included videos in the cell: ``include(status)``), ``frames`` and ``annotated_frames`` (counts
    summed over them; the latter only where masks were asked for), then ``describe``'s ``n``, ``mean``, ``sd``,
    ``ci_low``, ``ci_high`` and the ``resamples``. Metrics no row has are left out; cells in sorted order. One set of
    draws of a cell's videos serves all its prompts and metrics (seeded by the cell)."""
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    out = []
    for names in groupings_:
        members: Dict[tuple, List[dict]] = {}  # (cell, prompt) -> included rows, in one pass over the rows
        for r in rows:
            if all(n in r for n in names):
                cell = tuple(r[n] for n in names)
                members.setdefault((cell, None), [])
                if include(r["status"]):
                    members.setdefault((cell, r["prompt"]), []).append(r)
        for cell in sorted(c for c, p in members if p is None):
            ids = list(dict.fromkeys(r["id"] for p in prompts for r in members.get((cell, p), [])))
            value = {(r["id"], r["prompt"], m): r.get(m) for p in prompts for r in members.get((cell, p), [])
                     for m in metrics}
            matrix = [[value.get((i, p, m)) for i in ids] for p in prompts for m in metrics]  # one draw of videos
            described = iter(describe(matrix, resamples, cell_rng(seed, CROSS.join(names), CROSS.join(cell),
                                                                  method), level))
            for prompt in prompts:
                used = members.get((cell, prompt), [])
                base = {"grouping": CROSS.join(names), "cell": CROSS.join(cell), **dict(zip(names, cell)),
                        "prompt": prompt, "method": method}
                counts = {"videos": len(used), "frames": int(sum(_count(r.get("frames")) for r in used))}
                if any("annotated_frames" in r for r in rows):
                    counts["annotated_frames"] = int(sum(_count(r.get("annotated_frames")) for r in used))
                for metric in metrics:
                    out.append({**base, "metric": metric, **counts, **next(described), "resamples": resamples})
    return out


def _count(value) -> int:
    """A frame count from a summary row: NaN, None and "" (a failed video) count 0."""
    try:
        return int(value) if np.isfinite(float(value)) else 0
    except (TypeError, ValueError):
        return 0


def paired_stats(rows: List[dict], factor: str, baseline: str, unit: Sequence[str], prompts: Sequence[str],
                 method: str, include: callable, seed: int = SEED, resamples: int = RESAMPLES,
                 level: float = LEVEL) -> List[dict]:
    """Paired differences ``level - baseline`` of ``factor`` within units (the values of the ``unit`` names, e.g.
    ``["subject"]``): per unit, the mean over its included videos at that level minus the mean over its videos at
    the baseline (videos with the metric missing left out); then over the units that have both, ``pairs``,
    ``mean_diff``, ``sd`` (ddof 1) and the bootstrap interval resampling units. One row per other level x prompt
    x metric. ValueError (one line) when the factor, a unit name or the baseline level is not in the rows."""
    names = [factor, *unit]
    known = [n for n in names if any(n in r for r in rows)]
    if len(known) < len(names):
        missing = next(n for n in names if n not in known)
        raise ValueError(f"--paired/--unit: no video has a group {missing!r}; give a name of --group-by or a "
                         "manifest column")
    levels = sorted({r[factor] for r in rows if factor in r})
    if baseline not in levels:
        raise ValueError(f"--paired {factor}:{baseline}: no video has {factor} {baseline!r} "
                         f"(found {', '.join(levels)})")
    metrics = [m for m in METRICS if any(m in r for r in rows)]
    out = []
    used = [r for r in rows if include(r["status"]) and all(n in r for n in names)]
    for level_ in (v for v in levels if v != baseline):
        diffs = {(p, m): _unit_differences([r for r in used if r["prompt"] == p], factor, level_, baseline, unit, m)
                 for p in prompts for m in metrics}
        units = sorted({u for d in diffs.values() for u in d})
        matrix = [[diffs[p, m].get(u) for u in units] for p in prompts for m in metrics]  # one draw of units
        described = iter(describe(matrix, resamples, cell_rng(seed, "paired", factor, level_, baseline,
                                                              ",".join(unit), method), level))
        for prompt in prompts:
            for metric in metrics:
                stats = next(described)
                out.append({"factor": factor, "level": level_, "baseline": baseline, "unit": ",".join(unit),
                            "prompt": prompt, "method": method, "metric": metric, "pairs": stats.pop("n"),
                            "mean_diff": stats.pop("mean"), **stats, "resamples": resamples})
    return out


def _unit_differences(rows: List[dict], factor: str, level: str, baseline: str, unit: Sequence[str],
                      metric: str) -> Dict[tuple, float]:
    """unit values -> mean of ``metric`` over the unit's rows at ``level`` minus at ``baseline`` (finite values
    only); units lacking either side are left out."""
    sides: Dict[tuple, Dict[str, list]] = {}
    for r in rows:
        value = r.get(metric)
        if r[factor] in (level, baseline) and value is not None and np.isfinite(float(value)):
            sides.setdefault(tuple(r[n] for n in unit), {}).setdefault(r[factor], []).append(float(value))
    return {u: float(np.mean(s[level]) - np.mean(s[baseline])) for u, s in sorted(sides.items())
            if level in s and baseline in s}


def markdown(stats_rows: List[dict], paired_rows: List[dict], resamples: int, seed: int, level: float = LEVEL) -> str:
    """The tables as Markdown: per grouping, a row per cell x prompt with videos, frames, annotated frames and per
    metric ``mean ± sd [low, high]`` (``(n k)`` added where fewer videos than the cell's have the value, ``–`` for
    none); then the paired differences. A first line says what the interval is."""
    lines = [f"Intervals: {level:.0%} expanded percentile bootstrap over videos (paired: over units), "
             f"{resamples} resamples, seed {seed}. mean ± sd [low, high]; (n k): only k videos have the value; "
             "–: none."]
    keys = list(dict.fromkeys((r["grouping"], r["cell"], r["prompt"]) for r in stats_rows))
    metrics = list(dict.fromkeys(r["metric"] for r in stats_rows))
    by_key = {(r["grouping"], r["cell"], r["prompt"], r["metric"]): r for r in stats_rows}
    for grouping in dict.fromkeys(k[0] for k in keys):
        first = by_key[next((k + (metrics[0],) for k in keys if k[0] == grouping))]
        counts = [c for c in ("videos", "frames", "annotated_frames") if c in first]
        lines += ["", f"### {grouping} ({first['method']})", "",
                  "| " + " | ".join([grouping, "prompt", *counts, *(LABELS[m] for m in metrics)]) + " |",
                  "|" + "---|" * (2 + len(counts) + len(metrics))]
        for key in (k for k in keys if k[0] == grouping):
            rows = [by_key[key + (m,)] for m in metrics]
            cells = [key[1], key[2], *(str(rows[0][c]) for c in counts)]
            cells += [_estimate(r["mean"], r["sd"], r["ci_low"], r["ci_high"], r["n"], r["videos"]) for r in rows]
            lines.append("| " + " | ".join(cells) + " |")
    if paired_rows:
        lines += ["", "### paired differences", "",
                  "| difference | within | prompt | " + " | ".join(LABELS[m] for m in metrics) + " |",
                  "|" + "---|" * (3 + len(metrics))]
        pairs = {(r["factor"], r["level"], r["baseline"], r["unit"], r["prompt"], r["metric"]): r for r in paired_rows}
        for key in dict.fromkeys(k[:5] for k in pairs):
            rows = [pairs[key + (m,)] for m in metrics if key + (m,) in pairs]
            top = max(r["pairs"] for r in rows)
            cells = [f"{key[0]} {key[1]} − {key[2]}", key[3], key[4]]
            cells += [_estimate(r["mean_diff"], r["sd"], r["ci_low"], r["ci_high"], r["pairs"], top, "pairs")
                      for r in rows]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _estimate(mean, sd, low, high, n, of, what="n") -> str:
    """``mean ± sd [low, high]`` with 3 decimals; ``–`` for NaN parts; ``(n k)`` when k < ``of``."""
    if not np.isfinite(mean):
        return f"– ({what} 0)"
    text = f"{mean:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "")
    text += f" [{low:.3f}, {high:.3f}]" if np.isfinite(low) else ""
    return text + (f" ({what} {n})" if n < of or what == "pairs" else "")


def table_rows(text: str) -> int:
    """How many table rows (lines starting with ``|``, headers excluded) a ``markdown`` text holds."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return max(0, len(lines) - 2 * sum(line.startswith("|---") for line in lines))


def write_tables(out, rows: List[dict], groupings_: Sequence[Tuple[str, ...]], paired: Sequence[Tuple[str, str]],
                 unit: Sequence[str], prompts: Sequence[str], method: str, include: callable, seed: int = SEED,
                 resamples: int = RESAMPLES) -> Tuple[list, str, dict]:
    """Write ``out/stats.csv`` (``group_stats``), ``out/paired.csv`` (``paired_stats`` per ``(factor,
    baseline)``) and ``out/stats.md`` (``markdown``), each atomically; a table not asked for this time is removed,
    so none is left from an earlier run's options. Returns (paths written, the Markdown, what summary.json
    records about the statistics)."""
    from pathlib import Path

    from ..eval.annotations import write_csv
    from ..files import atomic_path, write_text

    out = Path(out)
    stats_rows = group_stats(rows, groupings_, prompts, method, include, seed, resamples)
    paired_rows = [r for factor, baseline in paired
                   for r in paired_stats(rows, factor, baseline, unit, prompts, method, include, seed, resamples)]
    paths = []
    for name, table in (("stats.csv", stats_rows), ("paired.csv", paired_rows)):
        if table:
            with atomic_path(out / name) as temp:
                write_csv(table, temp)
            paths.append(out / name)
        else:
            (out / name).unlink(missing_ok=True)
    text = markdown(stats_rows, paired_rows, resamples, seed) if stats_rows else ""
    if text:
        paths.append(write_text(out / "stats.md", text + "\n"))
    else:
        (out / "stats.md").unlink(missing_ok=True)
    meta = {"interval": f"{LEVEL:.0%} expanded percentile bootstrap of the mean, resampling videos (paired: units)",
            "resamples": resamples, "seed": seed, "groupings": [CROSS.join(g) for g in groupings_],
            "paired": [f"{f}:{b} within {','.join(unit)}" for f, b in paired]}
    return paths, text, meta
