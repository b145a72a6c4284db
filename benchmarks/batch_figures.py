"""What the figures of a batch run cost next to the run itself, in one run: the per-video work (explain + write)
on the generated gait dataset, then ``figures.write_figures`` cold (aligned maps computed from the records) and warm
(read from each video's ``aligned.npz``, as on a resumed run's end).

The model is the shipped shapes CLIP (``data/shapes_clip.pt``, no download); the dataset is
``data/make_gait_dataset.py``'s (160x120 Xvid AVIs, 1-based silhouettes). torch uses 1 thread.

    PYTHONPATH=$PWD python benchmarks/batch_figures.py [--subjects 2] [--frames 20] [--every 2]
"""
import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CASIA = r"(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--every", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from gradeclip.backbones.model import load_clip
    from gradeclip.batch.aligned import CACHE
    from gradeclip.batch.figures import add_band_shares, write_figures
    from gradeclip.batch.runner import find_videos, process_video
    from gradeclip.batch.summary import groups_of, summary_rows

    spec = importlib.util.spec_from_file_location("make_gait_dataset", ROOT / "data" / "make_gait_dataset.py")
    dataset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dataset)
    prompts = ["a person", "a bag"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset.make_dataset(tmp / "gait", subjects=args.subjects, frames=args.frames)
        jobs = find_videos([tmp / "gait" / "videos"], tmp / "gait" / "silhouettes", lambda p: groups_of(p, [CASIA]))
        settings = {"prompts": prompts, "method": "grad_eclip", "model": str(ROOT / "data" / "shapes_clip.pt"),
                    "every": args.every, "frames": None, "input": None, "scale": 1.0,
                    "masks_root": str(tmp / "gait" / "silhouettes")}
        model, _ = load_clip(settings["model"], device="cpu")
        out = tmp / "run"
        start = time.perf_counter()
        for job in jobs:
            process_video(model, job, settings, out)
        work = time.perf_counter() - start
        columns = ["subject", "condition", "seq", "view"]
        times = []
        for _ in ("cold", "warm"):
            start = time.perf_counter()
            rows = add_band_shares(out, summary_rows(out, jobs, prompts, [CASIA], True), prompts)
            written = write_figures(out, rows, columns, prompts, "grad_eclip")
            times.append(time.perf_counter() - start)
        cached = sum((out / "videos" / j["id"] / CACHE).is_file() for j in jobs)
        frames = sum(json.loads((out / "videos" / j["id"] / "record.json").read_text())["frames"] for j in jobs)
    print(f"{len(jobs)} videos, {frames} explained frames, {len(written)} figures and lists, {cached} aligned caches")
    print(f"per-video work {work:.1f} s; figures cold {times[0]:.1f} s, warm {times[1]:.1f} s")
    print(f"ratio figures cold / work: {times[0] / work:.2f}x; warm / cold: {times[1] / times[0]:.2f}x")


if __name__ == "__main__":
    main()
