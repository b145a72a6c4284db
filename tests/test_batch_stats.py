"""Group statistics of `batch` (gradeclip/batch/stats.py) on a generated run folder with known effects: per-video
records written directly (no model, no Ray), values drawn in the test so that the expected counts, means, sds and
paired differences are computed here with numpy from the drawn values, not from the code under test.

The dataset: 5 subjects x conditions nm/bg/cl x views 000/090, one video each (30 videos), prompts "a bag" and
"a person" with different values; the bag is present only in "bg" videos, so bg's cosine, pointing and energy for
"a bag" exceed nm's. Subject 005 has no "nm" video (no pair); one video is partial, one failed; the view-090
videos of subject 004 have no masks (metrics missing); one video's rank correlation is undefined (constant maps).
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from gradeclip.batch import stats
from gradeclip.batch.command import check_stats, write_summaries
from gradeclip.batch.summary import included, summary_rows
from gradeclip.cli import build_parser

from batch_helpers import read_csv

PROMPTS = ["a bag", "a person"]
REGEX = r"(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})"
METRICS = ("mean_cos", "pointing", "energy", "rank_corr", "stability")
PARTIAL, FAILED, NO_RANK = "002-cl-01-090", "003-nm-01-000", "001-cl-01-000"


def _videos():
    """name -> drawn values: status, frames, annotated, and per prompt each metric (NaN where missing)."""
    rng = np.random.default_rng(7)
    videos = {}
    for s in range(1, 6):
        for cond in ("nm", "bg", "cl"):
            for view in ("000", "090"):
                if s == 5 and cond == "nm":
                    continue
                name = f"{s:03d}-{cond}-01-{view}"
                frames = int(rng.integers(20, 40))
                masks = not (s == 4 and view == "090")
                bag = cond == "bg"
                values = {}
                for j, prompt in enumerate(PROMPTS):
                    lift = 0.06 if (bag and j == 0) else 0.0
                    values[prompt] = {
                        "mean_cos": 0.20 + 0.1 * j + lift + 0.01 * s + rng.normal(0, 0.01),
                        "pointing": (0.2 + 5 * lift + rng.uniform(0, 0.2)) if masks else np.nan,
                        "energy": (0.1 + 3 * lift + rng.uniform(0, 0.1)) if masks else np.nan,
                        "rank_corr": (0.05 + rng.uniform(0, 0.3)) if masks and name != NO_RANK else np.nan,
                        "stability": 0.6 + rng.uniform(0, 0.3)}
                status = "partial" if name == PARTIAL else "failed" if name == FAILED else "complete"
                videos[name] = {"subject": f"{s:03d}", "condition": cond, "view": view, "status": status,
                                "frames": frames, "masks": masks, "annotated": frames - 2 if masks else 0,
                                "values": values}
    return videos


VIDEOS = _videos()


def _record(name, v):
    """A record.json as the runner writes it (``process_video``), from the drawn values."""
    record = {"id": name, "path": f"/data/{name}.avi", "status": v["status"], "columns": {},
              "masks": f"/masks/{name}" if v["masks"] else None, "reason": "" if v["status"] == "complete" else "x"}
    if v["status"] == "failed":
        return record
    record.update(declared_frames=v["frames"], decoded_frames=v["frames"], damaged_frames=0, frames=v["frames"],
                  mean_cos=[v["values"][p]["mean_cos"] for p in PROMPTS],
                  max_cos=[v["values"][p]["mean_cos"] + 0.01 for p in PROMPTS],
                  stability=[v["values"][p]["stability"] for p in PROMPTS], constant_maps=[0, 0])
    if v["masks"]:
        record.update(annotated_frames=v["annotated"], missing_frames=[0, 1], masks_resized=None, chance=0.1,
                      metrics={p: {k: v["values"][p][k] for k in ("pointing", "energy", "rank_corr")}
                               for p in PROMPTS})
    return record


@pytest.fixture
def run_folder(tmp_path):
    """out/videos/<name>/record.json (+ a zero mean_map.npy) for every generated video; returns (out, jobs)."""
    out = tmp_path / "run"
    jobs = []
    for name, v in VIDEOS.items():
        folder = out / "videos" / name
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(_record(name, v)))
        np.save(folder / "mean_map.npy", np.zeros((2, 64, 64), np.float32))
        jobs.append({"id": name, "path": f"/data/{name}.avi", "masks": None, "columns": {}})
    return out, jobs


def _args(out, *extra):
    argv = ["batch", "/data", "-o", str(out), "--masks-root", "/masks", "-p", PROMPTS[0], "-p", PROMPTS[1],
            "--group-by", REGEX, *extra]
    return build_parser().parse_args(argv)


def _expected(names, prompt, metric, include_partial=False):
    """The drawn values of ``metric`` over the included videos among ``names`` (NaN kept)."""
    ok = ("complete", "partial") if include_partial else ("complete",)
    return np.array([VIDEOS[n]["values"][prompt][metric] for n in names if VIDEOS[n]["status"] in ok])


def _stats_rows(run_folder, crosses=None, include_partial=False, seed=0, resamples=400):
    out, jobs = run_folder
    rows = summary_rows(out, jobs, PROMPTS, [REGEX], masks_asked=True)
    chosen = stats.groupings([["subject", "condition", "seq", "view"]], crosses=crosses)
    return stats.group_stats(rows, chosen, PROMPTS, "grad_eclip", lambda s: included(s, include_partial),
                             seed=seed, resamples=resamples)


def test_cell_counts_means_and_sds_equal_numpy(run_folder):
    """For every cell of condition, view and condition x view, per prompt and metric: videos, frames and
    annotated frames are counts over the included videos (frames summed, not a per-video mean); mean and sd
    (ddof 1) equal numpy's over the drawn values, with missing values left out and counted in n.
    Catches: sd with ddof 0; the partial or failed video averaged in; frames as a per-video mean; a cross whose
    cells mix levels; one prompt's values given to the other; NaN counted as 0."""
    got = _stats_rows(run_folder, crosses=[["condition", "view"]])
    by = {(r["grouping"], r["cell"], r["prompt"], r["metric"]): r for r in got}
    assert {r["grouping"] for r in got} == {"subject", "condition", "seq", "view", "condition x view"}
    cross_cells = {r["cell"] for r in got if r["grouping"] == "condition x view"}
    assert cross_cells == {f"{c} x {v}" for c in ("bg", "cl", "nm") for v in ("000", "090")}
    cells = {("condition",): lambda v: (v["condition"],), ("view",): lambda v: (v["view"],),
             ("condition", "view"): lambda v: (v["condition"], v["view"])}
    checked = 0
    for names, key_of in cells.items():
        for cell in {key_of(v) for v in VIDEOS.values()}:
            members = [n for n, v in VIDEOS.items() if key_of(v) == cell]
            used = [n for n in members if VIDEOS[n]["status"] == "complete"]
            for prompt in PROMPTS:
                for metric in METRICS:
                    row = by[(" x ".join(names), " x ".join(cell), prompt, metric)]
                    values = _expected(members, prompt, metric)
                    finite = values[np.isfinite(values)]
                    assert row["videos"] == len(used)
                    assert row["frames"] == sum(VIDEOS[n]["frames"] for n in used)
                    assert row["annotated_frames"] == sum(VIDEOS[n]["annotated"] for n in used)
                    assert row["n"] == finite.size
                    assert row["mean"] == pytest.approx(finite.mean(), abs=2e-6)
                    assert row["sd"] == pytest.approx(finite.std(ddof=1), abs=2e-6)
                    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
                    checked += 1
    assert checked == (3 + 2 + 6) * 2 * 5
    bg, nm = (by[("condition", c, "a bag", "mean_cos")]["mean"] for c in ("bg", "nm"))
    assert bg > nm + 0.03  # the bag is in bg videos only
    bg, nm = (by[("condition", c, "a person", "mean_cos")]["mean"] for c in ("bg", "nm"))
    assert abs(bg - nm) < 0.03  # the person is in every video


def test_partial_videos_included_on_request(run_folder):
    """With include-partial the partial video counts in its cells (n, mean). Catches the flag ignored."""
    got = _stats_rows(run_folder, include_partial=True)
    row = next(r for r in got if (r["grouping"], r["cell"], r["prompt"], r["metric"]) ==
               ("condition", "cl", "a person", "mean_cos"))
    members = [n for n, v in VIDEOS.items() if v["condition"] == "cl"]
    values = _expected(members, "a person", "mean_cos", include_partial=True)
    assert row["videos"] == row["n"] == values.size == 10
    assert row["mean"] == pytest.approx(values.mean(), abs=2e-6)


def test_missing_metric_is_nan_with_n_zero(run_folder):
    """Subject 004's view-090 videos have no masks: that cell's pointing/energy/rank correlation are NaN with
    n 0 (not 0), its cosine is there; the constant-map video's rank correlation is left out of n. The Markdown
    shows "–" for them. Catches a missing value reported as 0, or counted in n."""
    got = _stats_rows(run_folder, crosses=[["subject", "view"]])
    by = {(r["grouping"], r["cell"], r["prompt"], r["metric"]): r for r in got}
    for metric in ("pointing", "energy", "rank_corr"):
        row = by[("subject x view", "004 x 090", "a bag", metric)]
        assert row["n"] == 0 and row["videos"] == 3 and row["annotated_frames"] == 0
        assert all(np.isnan(row[k]) for k in ("mean", "sd", "ci_low", "ci_high"))
    assert by[("subject x view", "004 x 090", "a bag", "mean_cos")]["n"] == 3
    rank = by[("subject", "001", "a bag", "rank_corr")]
    assert (rank["videos"], rank["n"]) == (6, 5)
    text = stats.markdown(got, [], 400, 0)
    line = next(x for x in text.splitlines() if x.startswith("| 004 x 090 | a bag |"))
    assert "– (n 0)" in line and " 0.000 " not in line
    rank = next(x for x in text.splitlines() if x.startswith("| 001 | a bag |")).split(" | ")
    assert rank[-2].endswith("(n 5)") and "(n" not in rank[-3]  # rank corr. 5 of 6 videos; energy all 6


@pytest.mark.parametrize("n", [5, 20])
def test_bootstrap_interval_coverage(n):
    """1000 simulated datasets of n videos (skewed: gamma, known mean 2.0, sd 1.0), one vectorised call: the 95 %
    interval contains the true mean in 90-99 % of them, and its mean width is close to the t interval's,
    2 t_{0.975, n-1} sigma / sqrt(n) (within 10 % at n 20, 25 % at n 5). Catches the plain percentile levels
    (2.5/97.5: 84 % at n 5), an interval of the values rather than of their mean (too wide), quantiles at 5/95
    or a resample of the wrong size (too narrow)."""
    rng = np.random.default_rng(11 + n)
    data = rng.gamma(4.0, 0.5, size=(1000, n))
    low, high = stats.bootstrap_interval(data, 2000, np.random.default_rng(5))
    assert low.shape == high.shape == (1000,)
    coverage = np.mean((low <= 2.0) & (2.0 <= high))
    assert 0.90 <= coverage <= 0.99, coverage
    width = np.mean(high - low)
    t_width = 2 * scipy.stats.t.ppf(0.975, n - 1) * 1.0 / np.sqrt(n)
    assert width == pytest.approx(t_width, rel=0.10 if n == 20 else 0.25), (width, t_width)


def test_bootstrap_interval_equals_scipy_percentile():
    """On one sample of 15, our interval equals scipy.stats.bootstrap's percentile interval at the expanded
    level (Hesterberg: tails Phi(sqrt(n/(n-1)) t_{0.025, n-1}), computed here) within Monte Carlo error
    (0.1 standard errors at 20000 resamples each), also with 8 videos lacking the value among them (0.15: their
    number in a resample varies); the same seed gives the same interval, another seed another. Catches quantiles
    of the wrong tail, resampling with the wrong count, missing values counted as 0 in a resample's mean, an
    unseeded generator."""
    x = np.random.default_rng(3).lognormal(0, 0.7, size=15)
    ours = stats.bootstrap_interval(x, 20000, stats.cell_rng(0, "a"))
    tail = scipy.stats.norm.cdf(np.sqrt(15 / 14) * scipy.stats.t.ppf(0.025, 14))
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=1 - 2 * tail,
                                random_state=np.random.default_rng(1)).confidence_interval
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert ours[0] == pytest.approx(ref.low, abs=0.1 * se) and ours[1] == pytest.approx(ref.high, abs=0.1 * se)
    assert stats.bootstrap_interval(x, 500, stats.cell_rng(0, "a")) == stats.bootstrap_interval(
        x, 500, stats.cell_rng(0, "a"))
    assert stats.bootstrap_interval(x, 500, stats.cell_rng(1, "a")) != stats.bootstrap_interval(
        x, 500, stats.cell_rng(0, "a"))
    gaps = np.concatenate([x, np.full(8, np.nan)])[np.random.default_rng(4).permutation(23)]
    ours = stats.bootstrap_interval(gaps, 20000, stats.cell_rng(0, "b"))  # videos without the value drop out
    assert ours[0] == pytest.approx(ref.low, abs=0.15 * se) and ours[1] == pytest.approx(ref.high, abs=0.15 * se)
    one = stats.describe([[0.4]], 100, stats.cell_rng(0))[0]
    assert one["n"] == 1 and one["mean"] == 0.4 and np.isnan(one["sd"]) and np.isnan(one["ci_low"])


def test_paired_differences_per_subject(run_folder):
    """bg - nm and cl - nm within subject: mean of the per-subject differences computed here (each subject's mean
    over its views), n pairs (subject 005 has no nm; subject 003's nm at 000 failed, so its nm side is its 090
    video), sd ddof 1, an interval that brackets the mean; for "a bag" bg - nm is positive with an interval above
    0, and cl - nm is not. Catches a swapped difference, pairs formed across subjects, an unpaired subject
    counted, the difference of group means instead of the mean of differences."""
    out, jobs = run_folder
    rows = summary_rows(out, jobs, PROMPTS, [REGEX], masks_asked=True)
    got = stats.paired_stats(rows, "condition", "nm", ["subject"], PROMPTS, "grad_eclip",
                             lambda s: included(s, False), resamples=2000)
    by = {(r["level"], r["prompt"], r["metric"]): r for r in got}
    assert {r["level"] for r in got} == {"bg", "cl"}
    for level in ("bg", "cl"):
        for prompt in PROMPTS:
            for metric in METRICS:
                diffs = []
                for s in ("001", "002", "003", "004", "005"):
                    sides = [[v["values"][prompt][metric] for v in VIDEOS.values()
                              if v["subject"] == s and v["condition"] == c and v["status"] == "complete"
                              and np.isfinite(v["values"][prompt][metric])] for c in (level, "nm")]
                    if sides[0] and sides[1]:
                        diffs.append(np.mean(sides[0]) - np.mean(sides[1]))
                row = by[(level, prompt, metric)]
                assert row["pairs"] == len(diffs)
                assert row["mean_diff"] == pytest.approx(np.mean(diffs), abs=2e-6)
                assert row["sd"] == pytest.approx(np.std(diffs, ddof=1), abs=2e-6)
                assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
    assert by[("bg", "a bag", "mean_cos")]["pairs"] == 4
    assert by[("bg", "a bag", "pointing")]["pairs"] == 4  # 004 keeps its view-000 pair
    bag = by[("bg", "a bag", "mean_cos")]
    assert bag["mean_diff"] > 0.04 and bag["ci_low"] > 0
    assert by[("bg", "a bag", "energy")]["ci_low"] > 0
    assert by[("cl", "a bag", "mean_cos")]["ci_low"] < 0.04
    with pytest.raises(ValueError, match=r"no video has condition 'xx' \(found bg, cl, nm\)"):
        stats.paired_stats(rows, "condition", "xx", ["subject"], PROMPTS, "m", lambda s: True)


def test_run_writes_tables_prints_them_whole_and_drops_stale_ones(run_folder, capsys):
    """`write_summaries` with --cross condition,view --paired condition:nm --unit subject: stats.csv (long, one
    row per grouping x cell x prompt x metric), paired.csv, stats.md, the whole Markdown printed (more than 20
    rows), the seed and resamples in summary.json; summary_groups.csv's frames are sums. The same seed rewrites
    identical bytes; another seed changes the intervals, not the means; a rerun without --paired removes
    paired.csv, one without --cross drops the cross, one without groups removes the group tables. Catches the
    20-row print limit, unseeded intervals, a stale table or grouping left from an earlier run."""
    out, jobs = run_folder
    args = _args(out, "--cross", "condition,view", "--paired", "condition:nm", "--unit", "subject",
                 "--seed", "3", "--resamples", "300")
    assert write_summaries(args, {"prompts": PROMPTS, "method": "grad_eclip"}, jobs, out) == 1
    printed = capsys.readouterr().out
    table = (out / "stats.md").read_text()
    assert table.strip() in printed
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| prompt")]
    assert stats.table_rows(table) > 20 and all(line in printed for line in body)
    assert "300 resamples, seed 3" in table and "| condition bg − nm | subject | a bag |" in table
    rows = read_csv(out / "stats.csv")
    groupings = {"subject", "condition", "seq", "view", "condition x view"}
    assert {r["grouping"] for r in rows} == groupings
    assert len(rows) == (5 + 3 + 1 + 2 + 6) * 2 * 5
    assert {r["resamples"] for r in rows} == {"300"}
    assert len(read_csv(out / "paired.csv")) == 2 * 2 * 5
    meta = json.loads((out / "summary.json").read_text())["statistics"]
    assert (meta["resamples"], meta["seed"]) == (300, 3) and set(meta["groupings"]) == groupings
    group = next(g for g in read_csv(out / "summary_groups.csv") if (g["group"], g["value"]) == ("view", "000"))
    assert int(group["frames"]) == sum(v["frames"] for v in VIDEOS.values()
                                       if v["view"] == "000" and v["status"] == "complete")
    before = (out / "stats.csv").read_bytes()
    write_summaries(args, {"prompts": PROMPTS, "method": "grad_eclip"}, jobs, out)
    assert (out / "stats.csv").read_bytes() == before
    other = _args(out, "--cross", "condition,view", "--seed", "4", "--resamples", "300")
    write_summaries(other, {"prompts": PROMPTS, "method": "grad_eclip"}, jobs, out)
    again = read_csv(out / "stats.csv")
    assert [r["mean"] for r in again] == [r["mean"] for r in rows]
    assert [r["ci_low"] for r in again] != [r["ci_low"] for r in rows]
    assert not (out / "paired.csv").exists() and "paired differences" not in (out / "stats.md").read_text()
    write_summaries(_args(out), {"prompts": PROMPTS, "method": "grad_eclip"}, jobs, out)  # no --cross now
    assert {r["grouping"] for r in read_csv(out / "stats.csv")} == groupings - {"condition x view"}
    plain = build_parser().parse_args(["batch", "/data", "-o", str(out), "--masks-root", "/m", "-p", PROMPTS[0],
                                       "-p", PROMPTS[1]])
    write_summaries(plain, {"prompts": PROMPTS, "method": "grad_eclip"}, jobs, out)  # no groups at all
    assert not any((out / name).exists() for name in ("stats.csv", "stats.md", "summary_groups.csv"))
    assert "statistics" not in json.loads((out / "summary.json").read_text())


def test_video_table_printed_whole_without_groups(run_folder):
    """Without groups the video x prompt table is what is printed: all 60 rows, not the first 20. Catches a row
    limit left in `format_summary`."""
    from gradeclip.batch.summary import format_summary

    out, jobs = run_folder
    rows = summary_rows(out, jobs, PROMPTS, None, masks_asked=True)
    text = format_summary(rows)
    assert stats.table_rows(text) == len(rows) == 2 * len(VIDEOS)
    assert all(f"| {name} |" in text for name in VIDEOS)


def test_default_crosses_and_option_errors(run_folder):
    """Default: the cross of a regex's names is left out when every cell is one video (subject x condition x seq
    x view here), kept otherwise; --cross 'none' gives none; unknown names and baselines, --paired without
    --unit, and malformed values are refused in one line naming the value. Catches a useless per-video cross
    printed by default, a typo'd name silently giving no table."""
    _, jobs = run_folder
    assert all(len(g) == 1 for g in check_stats(_args("x"), jobs))
    two = r"(?P<condition>nm|bg|cl)-\d{2}-(?P<view>\d{3})"
    args = build_parser().parse_args(["batch", "/d", "-o", "x", "-p", "a", "--group-by", two])
    assert check_stats(args, jobs) == [("condition",), ("view",), ("condition", "view")]
    args = build_parser().parse_args(["batch", "/d", "-o", "x", "-p", "a", "--group-by", two, "--cross", "none"])
    assert check_stats(args, jobs) == [("condition",), ("view",)]
    bad = {("--cross", "condition,colour"): "'colour' is not a group name",
           ("--cross", "view"): "two or more group names",
           ("--paired", "condition:xx", "--unit", "subject"): "no video has condition 'xx' (found bg, cl, nm)",
           ("--paired", "condition:nm", "--unit", "person"): "'person' is not a group name",
           ("--paired", "condition:nm"): "--paired needs --unit",
           ("--paired", "condition:nm", "--unit", "subject,condition"): "cannot also be the unit",
           ("--paired", "condition", "--unit", "subject"): "give FACTOR:BASELINE"}
    for extra, message in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            check_stats(_args("x", *extra), jobs)
        assert "\n" not in str(err.value)
