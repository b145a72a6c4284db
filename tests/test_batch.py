"""Dataset runs on a local Ray (2 CPUs, shared by the module): 6 generated videos, one corrupt; a driver killed
midway and resumed; group summaries from a regex."""
import csv
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
from gradeclip.eval.shapes import ShapeObject, render_scene

from conftest import write_video

GROUPS = r"(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})"
NAMES = ["001-nm-01-000", "001-bg-01-090", "002-nm-01-090", "002-cl-01-000", "003-bg-01-000"]


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the whole module (its start-up is slow), 2 CPUs, no dashboard; shut down at the end."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = pytest.importorskip("ray")  # ray is an optional extra; requirements.txt installs it for the tests
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, checkpoint):
    """videos/<subject>/<name>.avi (5 of 12 frames each, a red circle moving) plus a corrupt one, and masks in
    masks/<subject>/<name>/ for the first video."""
    root = tmp_path_factory.mktemp("dataset")
    for i, name in enumerate(NAMES):
        scenes = [render_scene([ShapeObject("circle", "red", (20.0 + 2 * t, 12.0 + 3 * t + i), 9.0)], size=64,
                               seed=i) for t in range(12)]
        folder = root / "videos" / name[:3]
        folder.mkdir(parents=True, exist_ok=True)
        write_video(folder / f"{name}.avi", np.stack([s.image for s in scenes]))
        if i == 0:
            masks = root / "masks" / name[:3] / name
            masks.mkdir(parents=True)
            for t, s in enumerate(scenes):
                cv2.imwrite(str(masks / f"{name}-{t + 1:03d}.png"), s.masks[0].astype(np.uint8) * 255)
    (root / "videos" / "003" / "003-cl-02-180.avi").write_bytes(b"RIFF" + os.urandom(3000))
    return root


def _args(dataset, out, model, address, workers=2):
    return ["batch", str(dataset / "videos"), "-p", "a red circle", "-p", "a blue square", "--model", str(model),
            "--out", str(out), "--masks-root", str(dataset / "masks"), "--group-by", GROUPS, "--address", address,
            "--num-workers", str(workers), "--quiet"]


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _complete(out):
    return sorted(p.name for p in (out / "videos").iterdir() if (p / "record.json").is_file())


@pytest.fixture(scope="module")
def full_run(dataset, checkpoint, ray_address, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    status = main(_args(dataset, out, checkpoint, ray_address))
    return out, status


def test_batch_outputs_and_failure(full_run, capfd):
    """5 complete videos with what `video` writes, 1 recorded failure with its reason, summary rows for each video
    x prompt, metrics only where masks exist. Catches a failure that stops the run, and masks matched to the
    wrong video."""
    out, status = full_run
    assert status == 1  # one video failed
    rows = _summary(out)
    assert len(rows) == 6 * 2
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["id"] for r in failed} == {"003__003-cl-02-180"} and all(r["reason"] for r in failed)
    for name in NAMES:
        folder = out / "videos" / f"{name[:3]}__{name}"
        for file in ("record.json", "scores.csv", "mean_map.npy", f"{name}_grad_eclip_maps.npz",
                     f"{name}_grad_eclip_maps.json"):
            assert (folder / file).is_file(), (name, file)
    with_masks = [r for r in rows if r["pointing"] not in ("", "nan")]
    assert {r["id"] for r in with_masks} == {f"001__{NAMES[0]}"}
    assert all(r["frames"] == "12" for r in rows if r["status"] == "complete")
    assert not list((out / "videos").glob(".*partial*"))


def test_group_summary_from_regex(full_run):
    """Groups from the named regex groups on the path: per view and prompt, the videos counted and the mean of the
    per-video values. Catches grouping by the wrong column or averaging in failed videos."""
    out, _ = full_run
    with open(out / "summary_groups.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    rows = [r for r in _summary(out) if r["prompt"] == "a red circle"]
    view0 = next(g for g in groups if g["group"] == "view" and g["value"] == "000" and g["prompt"] == "a red circle")
    members = [r for r in rows if r.get("view") == "000"]
    assert int(view0["videos"]) == len(members) == 3
    done = [float(r["mean_cos"]) for r in members if r["status"] == "complete"]
    assert float(view0["mean_cos"]) == pytest.approx(np.mean(done), abs=1e-5)
    cl = next(g for g in groups if g["group"] == "condition" and g["value"] == "cl" and g["prompt"] == "a red circle")
    assert (cl["videos"], cl["failed"]) == ("2", "1")
    for column in ("subject", "condition", "seq", "view"):
        assert (out / f"mean_maps_{column}.png").is_file()


def test_different_arguments_refused(full_run, dataset, checkpoint, ray_address, capfd):
    """A rerun with another prompt into the same folder is refused with one line, before any work."""
    out, _ = full_run
    args = _args(dataset, out, checkpoint, ray_address)
    args[args.index("a blue square")] = "a green square"
    assert main(args) == 1
    err = capfd.readouterr().err.strip()
    assert "holds a run with other arguments" in err and "--overwrite" in err and len(err.splitlines()) == 1


def test_interrupted_run_resumes(full_run, dataset, checkpoint, ray_address, tmp_path):
    """Kill the driver once the first video is complete, rerun: complete videos are not recomputed (their files
    keep their modification times), the rest are done, and the summary equals the uninterrupted run's. Catches
    a rerun that redoes everything, and a partial folder taken for a complete one."""
    out = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    driver = subprocess.Popen([sys.executable, "-m", "gradeclip", *_args(dataset, out, checkpoint, ray_address, 1)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None and not ((out / "videos").is_dir() and _complete(out)):
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3)  # the killed driver's actor finishes or dies
    done = _complete(out)
    assert 1 <= len(done) < 6, done  # interrupted midway
    stamps = {p: p.stat().st_mtime_ns for name in done for p in (out / "videos" / name).iterdir()}
    assert main(_args(dataset, out, checkpoint, ray_address)) == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(_complete(out)) == 6
    assert _summary(out) == _summary(full_run[0])
    failed = out / "videos" / "003__003-cl-02-180" / "record.json"
    before = failed.stat().st_mtime_ns
    assert main(_args(dataset, out, checkpoint, ray_address) + ["--retry-failed"]) == 1
    assert failed.stat().st_mtime_ns != before  # retried (and failed again)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_manifest_and_masks_root(dataset, tmp_path):
    """A CSV manifest: relative paths resolved beside it, its masks column and group columns kept; --masks-root
    finds masks by the video's path under its folder. Catches paths resolved against the working directory."""
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
    assert len(found) == 6 and found[f"001__{NAMES[0]}"] == str(dataset / "masks" / "001" / NAMES[0])
    assert sum(m is not None for m in found.values()) == 1
    assert groups_of(f"/x/001/{NAMES[1]}.avi", GROUPS) == {"subject": "001", "condition": "bg", "seq": "01",
                                                          "view": "090"}
