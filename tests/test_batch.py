"""Dataset runs on a local Ray (2 CPUs, one per test session): 7 generated non-square videos (one with an upper-case
suffix, one corrupt), two prompts whose scores differ; values checked against `explain_video` called directly; a
driver interrupted midway and resumed; group summaries from regexes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gradeclip.cli import main
from gradeclip.video import explain_video

from batch_helpers import moving_disc, ray_address, read_csv  # noqa: F401 (ray_address is a fixture)
from conftest import write_video

GROUPS = r"(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})"
NAMES = ["001-nm-01-000", "001-bg-01-090", "002-nm-01-090", "002-cl-01-000", "003-bg-01-000", "003-nm-01-090"]
SUFFIX = {"003-nm-01-090": ".AVI"}  # an upper-case suffix, as cameras and Windows tools write them
PROMPTS = ["a red circle", "a blue square"]
CORRUPT = "003__003-cl-02-180"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """videos/<subject>/<name>.avi (12 frames of 48x64 each, a red disc moving) plus a corrupt one, and masks in
    masks/<subject>/<name>/ (1-based, CASIA-B's file names) for the first video."""
    root = tmp_path_factory.mktemp("dataset")
    for i, name in enumerate(NAMES):
        frames, masks = moving_disc(12, seed=i)
        folder = root / "videos" / name[:3]
        folder.mkdir(parents=True, exist_ok=True)
        path = write_video(folder / f"{name}.avi", frames)
        os.rename(path, folder / f"{name}{SUFFIX.get(name, '.avi')}")
        if i == 0:
            target = root / "masks" / name[:3] / name
            target.mkdir(parents=True)
            for t, mask in enumerate(masks):
                cv2.imwrite(str(target / f"{name}-{t + 1:03d}.png"), mask.astype(np.uint8) * 255)
    (root / "videos" / "003" / "003-cl-02-180.avi").write_bytes(b"RIFF" + os.urandom(3000))
    return root


def _args(dataset, out, model, address, workers=2):
    return ["batch", str(dataset / "videos"), "-p", PROMPTS[0], "-p", PROMPTS[1], "--model", str(model),
            "--out", str(out), "--masks-root", str(dataset / "masks"), "--group-by", GROUPS, "--address", address,
            "--num-workers", str(workers), "--quiet"]


def _complete(out):
    return sorted(p.name for p in (out / "videos").iterdir() if (p / "record.json").is_file())


def _vid(name):
    return f"{name[:3]}__{name}"


@pytest.fixture(scope="module")
def expected(dataset, model):
    """Each good video's mean and max cosine per prompt, from `explain_video` on the in-memory model (the
    checkpoint's weights) and numpy: values from outside the batch code."""
    values = {}
    for name in NAMES:
        path = dataset / "videos" / name[:3] / f"{name}{SUFFIX.get(name, '.avi')}"
        cosine = explain_video(model, str(path), PROMPTS, progress=False).cosine  # (frames, prompts)
        values[_vid(name)] = {"mean_cos": cosine.mean(axis=0), "max_cos": cosine.max(axis=0),
                              "frames": cosine.shape[0]}
    return values


@pytest.fixture(scope="module")
def full_run(dataset, checkpoint, ray_address, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    status = main(_args(dataset, out, checkpoint, ray_address))
    return out, status


def test_batch_outputs_and_failure(full_run, expected):
    """6 complete videos (one named .AVI) with what `video` writes, 1 recorded failure with its reason, summary rows
    for each video x prompt with the per-video values of `explain_video`, metrics only where masks exist.
    Catches: upper-case suffixes skipped; a failure that stops the run; masks matched to the wrong video;
    `mean_cos` averaged over the prompt axis instead of frames; every prompt given the first prompt's values;
    complete videos counted as failed."""
    out, status = full_run
    assert status == 1  # one video failed
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 7 * 2
    assert {r["id"] for r in rows if r["status"] == "failed"} == {CORRUPT}
    assert all(r["reason"] for r in rows if r["status"] == "failed")
    assert sorted(r["id"] for r in rows if r["status"] == "complete") == sorted(list(expected) * 2)
    for name in NAMES:
        folder = out / "videos" / _vid(name)
        for file in ("record.json", "scores.csv", "mean_map.npy", f"{name}_grad_eclip_maps.npz",
                     f"{name}_grad_eclip_maps.json"):
            assert (folder / file).is_file(), (name, file)
    for row in rows:
        if row["status"] == "complete":
            j = PROMPTS.index(row["prompt"])
            want = expected[row["id"]]
            assert float(row["mean_cos"]) == pytest.approx(want["mean_cos"][j], abs=2e-6), row
            assert float(row["max_cos"]) == pytest.approx(want["max_cos"][j], abs=2e-6), row
            assert int(row["frames"]) == want["frames"] == 12
            assert int(row["declared_frames"]) == int(row["decoded_frames"]) == 12 and row["damaged_frames"] == "0"
    with_masks = [r for r in rows if r["pointing"] not in ("", "nan")]
    assert {r["id"] for r in with_masks} == {_vid(NAMES[0])}
    counts = json.loads((out / "summary.json").read_text())
    assert (counts["videos"], counts["complete"], counts["partial"], counts["failed"]) == (7, 6, 0, 1)
    assert counts["with_masks"] == 1 and len(counts["without_masks"]) == 6
    assert not list((out / "videos").glob(".*partial*"))


def test_group_summary_from_regex(full_run, expected):
    """Groups from the named regex groups on the path: per view and prompt, the videos counted by status and the
    mean of `explain_video`'s per-video values over the complete videos, for both prompts (whose values differ).
    Catches grouping by the wrong column, averaging in failed videos, one prompt's means given to all, counts of
    complete videos reported as failed."""
    out, _ = full_run
    groups = read_csv(out / "summary_groups.csv")
    by_view = {"000": [n for n in NAMES if n.endswith("000")], "090": [n for n in NAMES if n.endswith("090")]}
    means = {}
    for view, names in by_view.items():
        for j, prompt in enumerate(PROMPTS):
            row = next(g for g in groups if (g["group"], g["value"], g["prompt"]) == ("view", view, prompt))
            want = np.mean([expected[_vid(n)]["mean_cos"][j] for n in names])
            means[view, prompt] = want
            assert float(row["mean_cos"]) == pytest.approx(want, abs=2e-6), (view, prompt)
            assert (int(row["videos"]), int(row["complete"]), int(row["failed"])) == (3, 3, 0)
    assert abs(means["000", PROMPTS[0]] - means["000", PROMPTS[1]]) > 1e-4  # the prompts are told apart
    cl = next(g for g in groups if (g["group"], g["value"], g["prompt"]) == ("condition", "cl", PROMPTS[0]))
    assert (cl["videos"], cl["complete"], cl["failed"], cl["included"]) == ("2", "1", "1", "1")
    assert float(cl["mean_cos"]) == pytest.approx(expected[_vid("002-cl-01-000")]["mean_cos"][0], abs=2e-6)
    for column in ("subject", "condition", "seq", "view"):
        assert (out / f"mean_maps_{column}.png").is_file()


def test_different_arguments_refused(full_run, dataset, checkpoint, ray_address, capfd):
    """A rerun with another prompt into the same folder is refused with one line, before any work."""
    out, _ = full_run
    args = _args(dataset, out, checkpoint, ray_address)
    args[args.index(PROMPTS[1])] = "a green square"
    assert main(args) == 1
    err = capfd.readouterr().err.strip()
    assert "holds a run with other arguments" in err and "--overwrite" in err and len(err.splitlines()) == 1


def test_interrupted_run_resumes(full_run, dataset, checkpoint, ray_address, tmp_path):
    """SIGINT to `batch` once the first video is complete: one line on stderr saying how many videos are complete
    and how to resume, exit 130, no `.partial-*` folder left. Then a killed run's leftovers are added (a temporary
    folder, a complete video's folder without its record.json) and the rerun removes the first, recomputes the
    second, does not recompute the other complete videos, and its summary equals the uninterrupted run's.
    --retry-failed redoes the failed video. Catches a traceback on Ctrl-C, temporary folders left behind, a rerun
    that redoes everything, a record-less folder reported missing, a partial folder taken for a complete one."""
    out = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    driver = subprocess.Popen([sys.executable, "-m", "gradeclip", *_args(dataset, out, checkpoint, ray_address, 1)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background
    deadline = time.time() + 120  # job (CI) inherits SIGINT ignored: Python would then never raise Ctrl-C
    while time.time() < deadline and driver.poll() is None and not ((out / "videos").is_dir() and _complete(out)):
        time.sleep(0.02)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradeclip: interrupted: "), err
    assert "rerun the same command to resume" in lines[0] and str(out / "videos") in lines[0]
    assert not list((out / "videos").glob(".*partial*"))
    done = _complete(out)
    assert 1 <= len(done) < 7, done  # interrupted midway
    assert f"{sum(json.loads((out / 'videos' / d / 'record.json').read_text())['status'] == 'complete' for d in done)}"\
        f" of 7 videos complete" in lines[0]
    lost = out / "videos" / done[0] / "record.json"
    lost.unlink()  # as a killed run leaves it: a folder without its record
    leftover = out / "videos" / f".{done[-1]}.partial-deadbeef"
    leftover.mkdir()
    (leftover / "maps.npz").write_bytes(b"half")
    keep = [d for d in done[1:]]
    stamps = {p: p.stat().st_mtime_ns for name in keep for p in (out / "videos" / name).iterdir()}
    assert main(_args(dataset, out, checkpoint, ray_address)) == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert lost.is_file() and not leftover.exists()
    assert len(_complete(out)) == 7
    assert read_csv(out / "summary.csv") == read_csv(full_run[0] / "summary.csv")
    failed = out / "videos" / CORRUPT / "record.json"
    before = failed.stat().st_mtime_ns
    assert main(_args(dataset, out, checkpoint, ray_address) + ["--retry-failed"]) == 1
    assert failed.stat().st_mtime_ns != before  # retried (and failed again)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_manifest_and_masks_root(dataset, tmp_path):
    """A CSV manifest: relative paths resolved beside it, its masks column and group columns kept; --masks-root
    finds masks by the video's path under its folder, the .AVI video included. Catches paths resolved against the
    working directory and upper-case suffixes skipped."""
    from gradeclip.batch.runner import find_videos
    from gradeclip.batch.summary import groups_of

    manifest = dataset / "manifest.csv"
    manifest.write_text(f"path,masks,site\nvideos/001/{NAMES[0]}.avi,masks/001/{NAMES[0]},a\n"
                        f"videos/002/{NAMES[2]}.avi,,b\n")
    jobs = find_videos([manifest])
    assert [j["id"] for j in jobs] == [f"videos__001__{NAMES[0]}", f"videos__002__{NAMES[2]}"]
    assert jobs[0]["masks"] == str(dataset / "masks" / "001" / NAMES[0]) and jobs[1]["masks"] is None
    assert [j["columns"] for j in jobs] == [{"site": "a"}, {"site": "b"}]
    found = {j["id"]: j["masks"] for j in find_videos([dataset / "videos"], dataset / "masks")}
    assert len(found) == 7 and _vid("003-nm-01-090") in found
    assert found[_vid(NAMES[0])] == str(dataset / "masks" / "001" / NAMES[0])
    assert sum(m is not None for m in found.values()) == 1
    assert groups_of(f"/x/001/{NAMES[1]}.avi", GROUPS) == {"subject": "001", "condition": "bg", "seq": "01",
                                                          "view": "090"}
    assert groups_of("/x/001-bg-01-090.avi", [r"(?P<subject>\d{3})-", r"-(?P<view>\d{3})\."]) == \
        {"subject": "001", "view": "090"}
