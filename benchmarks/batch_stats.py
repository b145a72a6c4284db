"""What the group statistics of ``batch`` cost on a CASIA-B-sized run, and how often their intervals cover.

Time: ``stats.group_stats`` and ``stats.paired_stats`` on generated summary rows laid out like CASIA-B (124
subjects x 10 condition-sequences (nm 6, bg 2, cl 2) x 11 views = 13,640 videos, 3 prompts, 5 metrics), groupings
subject, condition, view and condition x view, paired condition:nm within subject, --resamples 2000; the video
loop of such a run takes hours, so the target is seconds. Coverage: the share of 2000 simulated datasets of n
videos (skewed values: gamma, shape 4) whose 95 % interval holds the true mean, per n; the percentile bootstrap is
known to fall short of 95 % with few units. The last line reads ``stats_s=T coverage_n5=C ... coverage_n40=C``.

    python benchmarks/batch_stats.py [--subjects 124] [--resamples 2000]
"""
import argparse
import time

import numpy as np

from gradeclip.batch import stats

PROMPTS = ["a person walking", "a person carrying a bag", "a person wearing a coat"]


def casia_rows(subjects: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, subjects + 1):
        for cond, seqs in (("nm", 6), ("bg", 2), ("cl", 2)):
            for seq in range(1, seqs + 1):
                for view in range(0, 181, 18):
                    for prompt in PROMPTS:
                        rows.append({"id": f"{s:03d}-{cond}-{seq:02d}-{view:03d}", "subject": f"{s:03d}",
                                     "condition": cond, "seq": f"{seq:02d}", "view": f"{view:03d}",
                                     "prompt": prompt, "status": "complete", "frames": 80, "annotated_frames": 78,
                                     **{m: float(rng.uniform()) for m in stats.METRICS}})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=124)
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    rows = casia_rows(args.subjects)
    include = lambda status: status == "complete"  # noqa: E731
    start = time.perf_counter()
    table = stats.group_stats(rows, [("subject",), ("condition",), ("view",), ("condition", "view")], PROMPTS,
                              "grad_eclip", include, resamples=args.resamples)
    paired = stats.paired_stats(rows, "condition", "nm", ["subject"], PROMPTS, "grad_eclip", include,
                                resamples=args.resamples)
    elapsed = time.perf_counter() - start
    print(f"{len(rows) // len(PROMPTS)} videos, {len(table)} statistics rows, {len(paired)} paired rows: "
          f"{elapsed:.1f} s")
    coverage = {}
    for n in (5, 10, 20, 40):
        rng = np.random.default_rng(n)
        data = rng.gamma(4.0, 0.5, size=(2000, n))  # true mean 2.0
        low, high = stats.bootstrap_interval(data, args.resamples, np.random.default_rng(100 + n))
        coverage[n] = float(np.mean((low <= 2.0) & (2.0 <= high)))
        print(f"n={n:3d} videos: 95 % interval covers the true mean in {coverage[n]:.1%} of 2000 datasets")
    print(f"stats_s={elapsed:.2f} " + " ".join(f"coverage_n{n}={c:.3f}" for n, c in coverage.items()))


if __name__ == "__main__":
    main()
