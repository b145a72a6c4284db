"""Failure galleries: the k lowest and k highest energies chosen (checked with numpy), drawn with captions, and
written by `evaluate --video` for one video (its frame list checked against the per-frame CSV it writes)."""
import csv

import numpy as np
import pytest

from gradeclip.cli import main
from gradeclip.viz.gallery import extremes, gallery_csv_rows, plot_gallery

from batch_helpers import moving_disc
from conftest import write_video


def _rows(seed=0, n=20):
    rng = np.random.default_rng(seed)
    energy = rng.random(n).round(3)
    energy[[3, 11]] = np.nan  # constant-map frames with no energy to rank
    energy[7] = energy[2]  # ties, broken by video then frame (reproducible galleries)
    energy[[1, 10]] = energy[np.isfinite(energy)].max() + 0.5  # v1 frame 1 and v1 frame 10: frame 1 first
    return [{"video": f"v{i % 3}", "frame": i, "time_s": i / 25, "energy": float(e)} for i, e in enumerate(energy)]


def test_extremes_are_the_k_lowest_and_highest():
    """Against numpy's sort of the same energies. Catches 'highest' in ascending order (or the lowest list reversed,
    which breaks ties the other way), NaN rows ranked, an off-by-one in k, and lowest/highest swapped."""
    rows = _rows()
    energy = np.array([r["energy"] for r in rows])
    valid = np.flatnonzero(np.isfinite(energy))
    keys = [(energy[i], rows[i]["video"], i) for i in valid]
    lowest, highest = extremes(rows, 4)
    assert [r["frame"] for r in lowest] == [i for _, _, i in sorted(keys)[:4]]
    assert [r["frame"] for r in highest] == [i for _, _, i in sorted(keys, key=lambda t: (-t[0], t[1], t[2]))[:4]]
    assert [r["energy"] for r in lowest] == list(np.sort(energy[valid])[:4])
    assert [r["energy"] for r in highest] == list(np.sort(energy[valid])[::-1][:4])
    assert all(np.isfinite(r["energy"]) for r in lowest + highest)
    with pytest.raises(ValueError, match="at least 1"):
        extremes(rows, 0)


def test_gallery_rows_and_captions():
    """The CSV rows rank each list from 1 and keep video, frame and time; every panel's caption names the video,
    frame and true time. Catches captions from the wrong item and ranks from 0."""
    rows = _rows(1, 12)
    frames, masks = moving_disc(12, h=30, w=50)
    for r in rows:
        r.update(image=frames[r["frame"]], map=masks[r["frame"]].astype(float), mask=masks[r["frame"]])
    lowest, highest = extremes(rows, 2)
    listing = gallery_csv_rows(lowest, highest, prompt="p")
    assert [(r["kind"], r["rank"], r["frame"]) for r in listing] == \
        [("lowest", 1, lowest[0]["frame"]), ("lowest", 2, lowest[1]["frame"]),
         ("highest", 1, highest[0]["frame"]), ("highest", 2, highest[1]["frame"])]
    fig = plot_gallery(lowest, highest, "title")
    captions = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    expected = [f"{r['video']}\nframe {r['frame']} · {r['time_s']:.2f} s" for r in lowest + highest]
    assert [c.rsplit("\n", 1)[0] for c in captions] == expected


def test_evaluate_video_writes_the_gallery(checkpoint, tmp_path, capfd):
    """`evaluate --video` with --gallery-k 3: the gallery CSV lists, per prompt, the 3 lowest and 3 highest
    energies of the per-frame CSV the same run writes (numpy sort in the test), and one PNG per prompt. Catches
    the hook taking the frames of another prompt or method, or its ranking of the energies."""
    frames, masks = moving_disc(10, h=40, w=56)
    video = write_video(tmp_path / "walk.avi", frames)
    folder = tmp_path / "masks"
    folder.mkdir()
    import cv2

    for i, mask in enumerate(masks, start=1):
        cv2.imwrite(str(folder / f"walk-{i:03d}.png"), mask.astype(np.uint8) * 255)
    prompts = ["a red circle", "a blue square"]
    out = tmp_path / "out"
    assert main(["evaluate", "--video", video, "--masks", str(folder), "-p", prompts[0], "-p", prompts[1],
                 "--model", str(checkpoint), "--out", str(out), "--gallery-k", "3"]) == 0
    capfd.readouterr()
    with open(out / "walk_frames.csv", newline="") as f:
        per_frame = list(csv.DictReader(f))
    with open(out / "walk_gallery.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    for prompt in prompts:
        energy = {int(r["frame"]): float(r["energy"]) for r in per_frame if r["prompt"] == prompt}
        ranked = sorted(energy, key=lambda i: (energy[i], i))
        down = sorted(energy, key=lambda i: (-energy[i], i))
        got = [r for r in listed if r["prompt"] == prompt]
        assert [int(r["frame"]) for r in got if r["kind"] == "lowest"] == ranked[:3]
        assert [int(r["frame"]) for r in got if r["kind"] == "highest"] == down[:3]
        assert {r["figure"] for r in got} == {f"walk_gallery_grad_eclip_{prompt.replace(' ', '_')}.png"}
        assert (out / got[0]["figure"]).is_file()
