"""What `batch` counts as data, run in this process (the Ray side has its own tests in test_batch.py): cut and
corrupted videos recorded as partial and kept out of group statistics unless --include-partial; masks found in
CASIA-B's layout and by a template, missing and resized masks reported, a run whose masks match nothing stopped
before the model loads; leftovers of killed runs removed; several --group-by kept."""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from gradeclip.cli import main
from gradeclip.video import explain_video

from batch_helpers import corrupt_stretch, cut, moving_disc, read_csv, write_mp4
from conftest import write_video

PROMPTS = ["a red circle", "a blue square"]
CASIA = r"(?P<subject>\d{3})-(?P<condition>nm|bg|cl)-(?P<seq>\d{2})-(?P<view>\d{3})"
SET, KIND = r"/(?P<set>[ab])-", r"[ab]-(?P<kind>good|half|head|corrupt|noise)\."


@pytest.fixture
def local_engine(monkeypatch, model):
    """`batch` with both engines (Ray's and the local one) replaced by a loop in this process over the same
    `process_video` (with the session model, the checkpoint's weights); returns the list of id lists each run was
    given."""
    from gradeclip.batch.runner import process_video

    calls = []

    def run(jobs, settings, out, **_):
        calls.append([j["id"] for j in jobs])
        return [process_video(model, job, settings, Path(out)) for job in jobs]

    monkeypatch.setattr("gradeclip.batch.engine.run_on_ray", run)
    monkeypatch.setattr("gradeclip.batch.local.run_local", run)
    return calls


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """a-good.avi (20 frames, 48x64), a-half.avi (another video cut at 50 %), a-head.avi (a third one's first
    6000 bytes); b-good.mp4, b-half.mp4 (intra-only H.264 cut at 50 %: its index comes first, so a cut
    at half leaves a few whole frames), b-corrupt.avi (a stretch of noise), b-noise.avi (no
    video at all)."""
    root = tmp_path_factory.mktemp("damaged")
    src = tmp_path_factory.mktemp("sources")
    sources = [write_video(src / f"s{i}.avi", moving_disc(20, seed=i)[0]) for i in range(4)]
    mp4s = [write_mp4(src / f"m{i}.mp4", moving_disc(20, seed=5 + i)[0], gop=4 - 3 * i) for i in range(2)]
    shutil.copy(sources[0], root / "a-good.avi")
    cut(sources[1], root / "a-half.avi", 0.5)
    cut(sources[2], root / "a-head.avi", 6000)
    shutil.copy(mp4s[0], root / "b-good.mp4")
    cut(mp4s[1], root / "b-half.mp4", 0.5)
    corrupt_stretch(sources[3], root / "b-corrupt.avi")
    (root / "b-noise.avi").write_bytes(b"RIFF" + os.urandom(2000))
    return root


def _damaged_args(root, out, checkpoint, *extra):
    return ["batch", str(root), "-p", PROMPTS[0], "-p", PROMPTS[1], "--model", str(checkpoint), "--out", str(out),
            "--group-by", SET, "--group-by", KIND, "--quiet", *extra]


def test_frame_status_rule():
    """The status rule on counts. Catches `<=` for `<` (every complete video partial), a missing damaged-frames
    check, reasons that do not say which count."""
    from gradeclip.batch.record import frame_status

    assert frame_status(30, 30, 0) == {"status": "complete", "reason": ""}
    assert frame_status(30, 31, 0)["status"] == "complete"
    assert frame_status(None, 12, 0)["status"] == "complete"
    assert frame_status(40, 11, 0) == {"status": "partial", "reason": "decoded 11 of 40 declared frames"}
    assert frame_status(30, 30, 3) == {"status": "partial", "reason": "3 frames damaged or undecodable"}
    assert frame_status(30, 29, 1)["reason"] == "decoded 29 of 30 declared frames; 1 frame damaged or undecodable"


def test_damaged_videos_are_partial_and_kept_out_of_groups(damaged, checkpoint, model, local_engine, tmp_path):
    """Cut AVI and MP4 files, a 6 kB head and a corrupt stretch are `partial` (never complete) with declared,
    decoded and damaged counts; the group means are over the complete videos only, as `explain_video` gives them,
    and with --include-partial over the partial ones too (the same run folder: nothing recomputed); summary.json
    counts 2 complete, 4 partial, 1 failed. --retry-failed redoes the partial and failed videos, not the complete.
    Catches truncated files counted complete, partial videos averaged into groups, --include-partial ignored, a
    second --group-by dropped, --retry-failed skipping partial videos."""
    out = tmp_path / "run"
    assert main(_damaged_args(damaged, out, checkpoint)) == 1
    records = {p.name: json.loads((p / "record.json").read_text()) for p in (out / "videos").iterdir()}
    status = {k: r["status"] for k, r in records.items()}
    assert status == {"a-good": "complete", "b-good": "complete", "a-half": "partial", "a-head": "partial",
                      "b-half": "partial", "b-corrupt": "partial", "b-noise": "failed"}
    for name in ("a-good", "b-good"):
        assert (records[name]["declared_frames"], records[name]["decoded_frames"]) == (20, 20)
        assert records[name]["damaged_frames"] == 0 and records[name]["frames"] == 20
    for name in ("a-half", "a-head", "b-half"):
        r = records[name]
        assert r["declared_frames"] == 20 and 1 <= r["decoded_frames"] < 20, r
        assert r["reason"].startswith(f"decoded {r['decoded_frames']} of 20 declared frames"), r
    assert records["a-head"]["decoded_frames"] <= 2
    bad = records["b-corrupt"]
    assert bad["decoded_frames"] < 20 or bad["damaged_frames"] > 0
    assert bad["damaged_frames"] == len(bad["damaged_indices"])
    noise = records["b-noise"]
    assert noise["reason"] and "declared_frames" not in noise  # nothing could be read, not even a header

    own = {}
    for name in status:
        if status[name] != "failed":
            path = next(damaged.glob(f"{name}.*"))
            own[name] = explain_video(model, str(path), PROMPTS, progress=False).cosine.mean(axis=0)
    counts = json.loads((out / "summary.json").read_text())
    assert (counts["complete"], counts["partial"], counts["failed"]) == (2, 4, 1)
    assert sorted(e["id"] for e in counts["excluded"]) == ["a-half", "a-head", "b-corrupt", "b-half", "b-noise"]

    def group(value, prompt, rows):
        return next(g for g in rows if (g["group"], g["value"], g["prompt"]) == ("set", value, prompt))

    groups = read_csv(out / "summary_groups.csv")
    assert {g["group"] for g in groups} == {"set", "kind"}
    for j, prompt in enumerate(PROMPTS):
        a, b = group("a", prompt, groups), group("b", prompt, groups)
        assert (a["videos"], a["complete"], a["partial"], a["failed"], a["included"]) == ("3", "1", "2", "0", "1")
        assert (b["videos"], b["complete"], b["partial"], b["failed"], b["included"]) == ("4", "1", "2", "1", "1")
        assert float(a["mean_cos"]) == pytest.approx(own["a-good"][j], abs=2e-6)
        assert float(b["mean_cos"]) == pytest.approx(own["b-good"][j], abs=2e-6)

    assert main(_damaged_args(damaged, out, checkpoint, "--include-partial")) == 1
    assert local_engine == [sorted(status)]  # the second run recomputed nothing
    groups = read_csv(out / "summary_groups.csv")
    for j, prompt in enumerate(PROMPTS):
        a, b = group("a", prompt, groups), group("b", prompt, groups)
        assert (a["included"], b["included"]) == ("3", "3")
        assert float(a["mean_cos"]) == pytest.approx(np.mean([own[n][j] for n in ("a-good", "a-half", "a-head")]),
                                                     abs=2e-6)
        assert float(b["mean_cos"]) == pytest.approx(np.mean([own[n][j] for n in ("b-good", "b-half", "b-corrupt")]),
                                                     abs=2e-6)
    assert json.loads((out / "summary.json").read_text())["excluded"] == [
        {"id": "b-noise", "status": "failed", "reason": records["b-noise"]["reason"]}]

    stamps = {name: (out / "videos" / name / "record.json").stat().st_mtime_ns for name in status}
    assert main(_damaged_args(damaged, out, checkpoint, "--retry-failed")) == 1
    assert sorted(local_engine[-1]) == ["a-half", "a-head", "b-corrupt", "b-half", "b-noise"]
    again = {name: (out / "videos" / name / "record.json").stat().st_mtime_ns for name in status}
    assert sorted(name for name in status if again[name] != stamps[name]) == sorted(local_engine[-1])
    assert not list((out / "videos").glob(".*partial*"))


@pytest.fixture(scope="module")
def casia(tmp_path_factory):
    """CASIA-B's layout in miniature: videos/SUBJECT-COND-SEQ-VIEW.avi (3 subjects x nm-01, bg-01 x 000, 090, 8
    frames of 48x64) and SIL/SUBJECT/COND-SEQ/VIEW/SUBJECT-COND-SEQ-VIEW-FFF.png (1-based); 001-nm-01-000 lacks the
    masks of frames 2 and 5 (files 003 and 006); 002-bg-01-090's masks are 32x24; 004-nm-01-000 has none."""
    root = tmp_path_factory.mktemp("casia")
    (root / "videos").mkdir()
    names = [f"{s:03d}-{c}-{v}" for s in (1, 2, 3) for c in ("nm-01", "bg-01") for v in ("000", "090")]
    for i, name in enumerate(names + ["004-nm-01-000"]):
        frames, masks = moving_disc(8, seed=i)
        write_video(root / "videos" / f"{name}.avi", frames)
        if name.startswith("004"):
            continue
        subject, cond, seq, view = name.split("-")
        folder = root / "SIL" / subject / f"{cond}-{seq}" / view
        folder.mkdir(parents=True)
        for t, mask in enumerate(masks):
            image = mask.astype(np.uint8) * 255
            if name == "002-bg-01-090":
                image = cv2.resize(image, (32, 24), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(folder / f"{name}-{t + 1:03d}.png"), image)
    for t in (3, 6):
        (root / "SIL" / "001" / "nm-01" / "000" / f"001-nm-01-000-{t:03d}.png").unlink()
    return root, names


def test_casia_layout_and_template_find_every_folder(casia):
    """By CASIA-B's layout and by the template "{subject}/{condition}-{seq}/{view}", each of the 12 videos gets its
    own silhouette folder; the video without one gets None and the places looked at; a template naming other
    folders finds nothing. Catches condition and sequence swapped, view and subject swapped, masks matched to
    another video, a template ignored."""
    from gradeclip.batch.runner import find_videos
    from gradeclip.batch.summary import groups_of

    root, names = casia
    want = {n: str(root / "SIL" / n[:3] / n[4:9] / n[10:]) for n in names}
    fields = lambda path: groups_of(path, [CASIA])  # noqa: E731
    for jobs in (find_videos([root / "videos"], root / "SIL"),
                 find_videos([root / "videos"], root / "SIL", fields, "{subject}/{condition}-{seq}/{view}")):
        found = {j["id"]: j["masks"] for j in jobs}
        assert {k: v for k, v in found.items() if k in want} == want
        assert found["004-nm-01-000"] is None
        looked = next(j for j in jobs if j["id"] == "004-nm-01-000")["masks_looked"]
        assert str(root / "SIL" / "004" / "nm-01" / "000") in looked
    wrong = find_videos([root / "videos"], root / "SIL", fields, "{subject}/{view}/{condition}-{seq}")
    assert all(j["masks"] is None for j in wrong)


def test_casia_masks_in_records_and_summary(casia, checkpoint, local_engine, tmp_path):
    """A run with the template: masks found for 12 of 13 videos (the 13th's record says none were found and where
    they were looked for), frames 2 and 5 of 001-nm-01-000 counted missing, 002-bg-01-090's masks reported resized
    from 32x24 to 64x48, the chance level equal to the masks' mean area computed here with numpy, a constant_maps
    column. Catches masks silently not found, missing frames dropped, resizes unreported, chance over the wrong
    frames."""
    root, names = casia
    out = tmp_path / "casia"
    args = ["batch", str(root / "videos"), "-p", PROMPTS[0], "-p", PROMPTS[1], "--model", str(checkpoint),
            "--out", str(out), "--masks-root", str(root / "SIL"), "--masks-template",
            "{subject}/{condition}-{seq}/{view}", "--group-by", CASIA, "--quiet"]
    assert main(args) == 0
    counts = json.loads((out / "summary.json").read_text())
    assert counts["with_masks"] == 12 and counts["without_masks"] == ["004-nm-01-000"]
    assert counts["masks_resized"] == ["32x24->64x48"] and counts["missing_frames"] == 2
    none = json.loads((out / "videos" / "004-nm-01-000" / "record.json").read_text())
    assert none["masks"] is None and "no masks found" in none["masks_note"] and "004/nm-01/000" in none["masks_note"]
    gaps = json.loads((out / "videos" / "001-nm-01-000" / "record.json").read_text())
    assert gaps["missing_frames"] == [2, 5] and gaps["annotated_frames"] == 6
    folder = root / "SIL" / "001" / "nm-01" / "000"
    shares = [(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127).mean() for p in sorted(folder.glob("*.png"))]
    assert len(shares) == 6 and gaps["chance"] == pytest.approx(np.mean(shares), abs=1e-9)
    small = json.loads((out / "videos" / "002-bg-01-090" / "record.json").read_text())
    assert small["masks_resized"] == {"from": [24, 32], "to": [48, 64]} and small["annotated_frames"] == 8
    rows = read_csv(out / "summary.csv")
    assert {r["masks_resized"] for r in rows if r["id"] == "002-bg-01-090"} == {"32x24->64x48"}
    assert all(r["constant_maps"] != "" for r in rows)
    view = next(g for g in read_csv(out / "summary_groups.csv")
                if (g["group"], g["value"], g["prompt"]) == ("subject", "001", PROMPTS[0]))
    assert (view["with_masks"], view["without_masks"]) == ("4", "0")
    chances = [json.loads((out / "videos" / n / "record.json").read_text())["chance"] for n in names if n[:3] == "001"]
    assert float(view["chance"]) == pytest.approx(np.mean(chances), abs=1e-6)


def test_masks_matching_nothing_stop_before_the_model(casia, checkpoint, local_engine, monkeypatch, tmp_path,
                                                      capfd):
    """--masks-root whose layout matches no video: one line, exit 1, no model loaded, no engine started, nothing
    written. Catches a run that goes on with every metric NaN."""
    import gradeclip.backbones.model as loading

    monkeypatch.setattr(loading, "load_clip", lambda *a, **k: pytest.fail("the model was loaded"))
    root, _ = casia
    out = tmp_path / "none"
    args = ["batch", str(root / "videos"), "-p", PROMPTS[0], "--model", str(checkpoint), "--out", str(out),
            "--masks-root", str(root / "SIL" / "001"), "--quiet"]
    assert main(args) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no masks found for any of the 13 videos" in err[0], err
    assert local_engine == [] and not out.exists()


def test_group_by_names_and_template_fields_checked():
    """Several --group-by patterns are each kept; a reused group name, a pattern without names and a template
    field no pattern gives are refused in one line. Catches the last --group-by silently winning."""
    from gradeclip.batch.command import group_names
    from gradeclip.batch.masks import check_template

    assert group_names([SET, KIND]) == ["set", "kind"]
    with pytest.raises(ValueError, match="reuses the group name 'set'"):
        group_names([SET, r"(?P<set>\d)"])
    with pytest.raises(ValueError, match="needs named groups"):
        group_names([r"\d+"])
    check_template("{subject}/{stem}", ["subject"])
    with pytest.raises(ValueError, match="names view"):
        check_template("{subject}/{view}", ["subject"])


def test_tidy_removes_leftovers_and_record_less_folders(tmp_path):
    """What a killed run leaves: a `.partial-` folder is removed, a video folder without record.json is removed
    (so it is recomputed), a complete folder is kept. Catches leftovers kept forever, and a complete video redone."""
    from gradeclip.batch.runner import status_of, tidy

    videos = tmp_path / "videos"
    for name in (".v1.partial-1a2b3c4d", "v2", "v3"):
        (videos / name).mkdir(parents=True)
        (videos / name / "maps.npz").write_bytes(b"x")
    (videos / "v3" / "record.json").write_text('{"status": "complete"}')
    assert tidy(tmp_path) == {"partial": 1, "repaired": ["v2"]}
    assert sorted(p.name for p in videos.iterdir()) == ["v3"] and status_of(tmp_path, "v3") == "complete"


def test_overwrite_removes_every_old_video(tmp_path):
    """Other arguments with --overwrite: none of the earlier run's video folders survives (so every video is
    recomputed); without --overwrite they are refused and kept; the same arguments keep them. Catches --overwrite
    keeping the old videos' results, and a refusal that deletes them anyway."""
    from gradeclip.batch.runner import RUN_KEYS, check_run, status_of

    settings = dict.fromkeys(RUN_KEYS, None) | {"prompts": PROMPTS, "method": "grad_eclip", "model": "m.pt"}
    check_run(tmp_path, settings, overwrite=False)
    for name in ("v1", "v2"):
        (tmp_path / "videos" / name).mkdir(parents=True)
        (tmp_path / "videos" / name / "record.json").write_text('{"status": "complete"}')
    check_run(tmp_path, settings, overwrite=True)  # the same arguments: nothing to redo
    assert status_of(tmp_path, "v1") == status_of(tmp_path, "v2") == "complete"
    changed = {**settings, "prompts": [PROMPTS[0], "a green square"]}
    with pytest.raises(ValueError, match="holds a run with other arguments"):
        check_run(tmp_path, changed, overwrite=False)
    assert status_of(tmp_path, "v1") == status_of(tmp_path, "v2") == "complete"
    check_run(tmp_path, changed, overwrite=True)
    assert status_of(tmp_path, "v1") is None and status_of(tmp_path, "v2") is None
    assert json.loads((tmp_path / "run.json").read_text())["prompts"] == changed["prompts"]


def test_local_ray_start_retried_then_one_line(monkeypatch):
    """A local Ray head that fails to start under load is tried again (in Ray's local-only mode: 127.0.0.1,
    tagged processes), then joined; when every try fails, one line that names --address and --engine local.
    Catches a single fixed-wait attempt, a multi-line Ray traceback, and a start outside the local-only mode."""
    ray = pytest.importorskip("ray")
    from gradeclip.batch import engine, rayproc

    calls, joined = [], []

    def flaky(num_cpus, tag, log_path, timeout_s):
        calls.append((num_cpus, tag, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")))
        if len(calls) < 2:
            raise RuntimeError("`ray start --head` failed (exit 1)")
        return "127.0.0.1:6390"

    monkeypatch.setattr(rayproc, "start_head", flaky)
    monkeypatch.setattr(rayproc, "reap", lambda tag: 0)
    monkeypatch.setattr(ray, "init", lambda **kwargs: joined.append(kwargs) or "context")
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    for key in rayproc.private_env("x"):
        monkeypatch.delenv(key, raising=False)
    assert engine.start_ray(num_cpus=2) == "context" and len(calls) == 2
    assert calls[-1][0] == 2 and calls[-1][2] == "0" and calls[-1][1].startswith("/tmp/gcray-")
    assert joined == [{"address": "127.0.0.1:6390", "log_to_driver": False, "logging_level": "ERROR"}]
    shutil.rmtree(calls[-1][1])  # the temp folder start_ray made (private_ray removes it in a real run)
    calls.clear()

    def failing(num_cpus, tag, log_path, timeout_s):
        calls.append(tag)
        raise RuntimeError("`ray start --head` did not finish\nmore")

    monkeypatch.setattr(rayproc, "start_head", failing)
    with pytest.raises(RuntimeError) as err:
        engine.start_ray(num_cpus=2)
    message = str(err.value)
    assert "--address" in message and "--engine local" in message and "\n" not in message
    assert "did not finish" in message
    assert len(calls) == engine.START_TRIES > 1
