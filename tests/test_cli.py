"""The command line end to end, in a subprocess as a user runs it."""
import json
import os
import subprocess
import sys

import pytest

from gradeclip.cli import main

from conftest import numbered_frames, write_video


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "gradeclip", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("cli") / "walk.avi", numbered_frames(12, 40, 56))


def test_explain_end_to_end(video, checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = run("explain", video, "--prompt", "a person walking", "-p", "a tree", "--frame", "-2",
               "--model", checkpoint, "--out", out, "--dpi", 50)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "frame 10 of 12" in lines[0]
    assert any(line.startswith("a person walking") for line in lines)
    stem = "walk_frame10_grad_eclip"
    for suffix in (".png", ".pdf", "_maps.npy", "_scores.json"):
        assert (out / f"{stem}{suffix}").is_file()
    record = json.loads((out / f"{stem}_scores.json").read_text())
    assert record["frame_index"] == 10 and record["prompts"] == ["a person walking", "a tree"]
    assert abs(sum(record["probs"][0]) - 1) < 1e-4
    # the printed table carries the saved scores
    row = next(line for line in lines if line.startswith("a tree")).split()
    assert float(row[-2]) == pytest.approx(record["cosine"][0][1], abs=1e-3)


def test_model_from_environment(video, checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADECLIP_MODEL", str(checkpoint))
    assert main(["explain", video, "-p", "x", "--out", str(tmp_path)]) == 0
    assert f"model {checkpoint}" in capsys.readouterr().out


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["explain", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--prompt", "--frame", "--model", "--out", "--method", "--device", "--dpi", "--alpha", "--cmap"):
        assert option in text


@pytest.mark.parametrize("args,message", [
    (["explain", "missing.avi", "-p", "x"], "video not found: missing.avi"),
    (["explain", "{video}", "-p", "x", "--frame", "99"], "valid indices are -12..11"),
    (["explain", "{video}", "-p", "x", "--frame", "first"], "give 'middle' or an integer index"),
    (["explain", "{video}"], "required: --prompt"),
    (["explain", "{video}", "-p", "x", "--model", "ViT-Z/1"], "neither a file nor a CLIP model name"),
    (["explain", "{video}", "-p", "x", "--method", "nope"], "known methods: clip_surgery, eigencam, game, gem, grad_cam, grad_eclip, "),
    (["explain", "{video}", "-p", " "], "empty --prompt"),
    (["explain", "{video}", "-p", "x", "--alpha", "3"], "--alpha must be in [0, 1]"),
    (["explain", "{video}", "-p", "word " * 80, "--model", "{checkpoint}"], "context length is 77"),
    (["explain", "{notvideo}", "-p", "x"], "not a decodable video"),
    (["bogus"], "invalid choice"),
    (["explain", "{video}", "-p", "x", "--cmap", "jett"], "unknown colour map 'jett'; did you mean jet"),
    (["video", "{video}", "-p", "x", "--cmap", "jett"], "unknown colour map 'jett'"),
    (["explain", "{video}", "-p", "x", "--out", "{notvideo}"], "exists and is not a folder"),
    (["video", "{video}", "-p", "x", "--out", "{notvideo}/sub"], "is not a folder"),
    (["video", "{video}", "-p", "x", "--method", "grad_eclipse"], "unknown method 'grad_eclipse'"),
])
def test_bad_input_is_one_line_and_status_1(video, checkpoint, tmp_path, monkeypatch, capfd, args, message):
    # in-process for speed; capfd also sees what native libraries print to file descriptor 2
    notvideo = tmp_path / "notes.avi"
    notvideo.write_text("hello " * 50)
    monkeypatch.chdir(tmp_path)
    code = main([a.format(video=video, notvideo=notvideo, checkpoint=checkpoint) for a in args])
    err = capfd.readouterr().err
    assert code == 1
    assert err.startswith("gradeclip: error: ") and message in err
    assert len(err.strip().splitlines()) == 1, err


def test_error_exit_status_in_a_real_process(tmp_path):
    proc = run("explain", tmp_path / "missing.avi", "-p", "x")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"gradeclip: error: video not found: {tmp_path / 'missing.avi'}"]


def test_options_are_checked_before_any_work(video, tmp_path, monkeypatch, capfd):
    """A bad --cmap fails before the model is loaded or the video read (it used to fail after the whole video was
    explained, and the MP4 was lost). Catches validation moved after the work: loading the model raises here."""
    import gradeclip.backbones.model as model_module

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(model_module, "load_clip", no_work)
    for command in ("explain", "video"):
        assert main([command, video, "-p", "x", "--cmap", "jett", "--out", str(tmp_path)]) == 1
        assert "unknown colour map" in capfd.readouterr().err


def test_unwritable_out_is_refused(video, tmp_path, monkeypatch, capfd):
    """--out inside a folder the user may not write to is refused before any work, for an existing folder and for
    one that would be created there. The permission answer is faked, since tests may run as root (who may write
    anywhere). Catches a check of the folder itself only, or no write check at all."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).startswith(str(locked)) else
                        real(path, mode))
    assert main(["explain", video, "-p", "x", "--out", str(locked)]) == 1
    assert "the folder is not writable" in capfd.readouterr().err
    assert main(["explain", video, "-p", "x", "--out", str(locked / "new" / "deeper")]) == 1
    assert f"cannot create it, {locked} is not writable" in capfd.readouterr().err


def test_method_help_lists_every_registered_method(capsys):
    """``--method`` help names the methods (it said "see the README"); the static list the help uses without
    importing torch equals the registry. Catches a method added to the registry but not to the help."""
    from gradeclip import method_names
    from gradeclip.cli import METHOD_NAMES

    assert list(METHOD_NAMES) == method_names()
    with pytest.raises(SystemExit):
        main(["video", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(METHOD_NAMES) in text.replace("- ", "-")


def test_missing_weights_message_names_file_cache_and_flag(video, tmp_path, monkeypatch, capfd):
    """Without cached weights and without network, the one-line message names the expected file (ViT-B-32.pt),
    the cache folder and --model PATH."""
    import clip

    def offline(name, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(clip, "load", offline)
    assert main(["explain", video, "-p", "x", "--out", str(tmp_path)]) == 1
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1
    for part in ("ViT-B-32.pt", ".cache/clip", "--model PATH", "network is unreachable"):
        assert part in err, (part, err)


def test_folder_mode_reports_each_skipped_file(video, checkpoint, tmp_path, capfd):
    """Files that are not videos, folders and videos that fail to decode are each named with the reason; the
    good video is still explained. Catches files skipped silently."""
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(video, folder / "good.avi")
    (folder / "notes.txt").write_text("not a video")
    (folder / "broken.avi").write_text("not a video either " * 20)
    (folder / "sub").mkdir()
    code = main(["video", str(folder), "-p", "x", "--model", str(checkpoint), "--out", str(tmp_path / "out"),
                 "--frames", "2", "--no-gif"])
    captured = capfd.readouterr()
    assert code == 1  # one of two videos failed
    assert f"skipped {folder / 'notes.txt'}: not a video file name" in captured.err
    assert f"skipped {folder / 'sub'}: a folder" in captured.err
    assert "broken.avi" in captured.err and "1 of 2 videos failed: broken.avi" in captured.err
    broken = str(folder / "broken.avi")
    assert f"error: {broken}: {broken}" not in captured.err  # the path is not printed twice in a row
    assert (tmp_path / "out" / "good_grad_eclip.mp4").is_file()


def test_explain_words_writes_figure_and_json(video, checkpoint, tmp_path):
    """``explain --words`` writes each prompt's word importance (the README promised it; the CLI never wrote it):
    one figure per prompt and a JSON whose words are the prompt's words with weights summing to 1."""
    out = tmp_path / "out"
    assert main(["explain", video, "-p", "a red car", "-p", "a tree", "--words", "--model", str(checkpoint),
                 "--out", str(out), "--dpi", "50"]) == 0
    stem = "walk_frame6_grad_eclip"
    assert (out / f"{stem}_words_0.png").is_file() and (out / f"{stem}_words_1.pdf").is_file()
    record = json.loads((out / f"{stem}_words.json").read_text())
    assert [p["prompt"] for p in record["prompts"]] == ["a red car", "a tree"]
    words = record["prompts"][0]["words"]
    assert [w for w, _ in words] == ["a", "red", "car"]
    assert sum(weight for _, weight in words) == pytest.approx(1, abs=1e-4)


def test_explain_input_option_reaches_the_scores(video, checkpoint, tmp_path):
    """``explain --input library``: the 40 x 56 frame goes in as the library's 32 x 32 crop; the scores JSON and
    the printed line name the mode, the size and the seen part: the short side resized to 32 gives 32 x 44, cropped
    at column 6 of 44, i.e. frame columns 8..48. Bug caught: --input parsed and dropped (the JSON would say native
    40 x 56)."""
    out = tmp_path / "out"
    proc = run("explain", video, "-p", "a person walking", "--model", checkpoint, "--out", out, "--dpi", 40,
               "--input", "library")
    assert proc.returncode == 0, proc.stderr
    assert "input library 32×32 px" in proc.stdout.splitlines()[0]
    record = json.loads(next(out.glob("*_scores.json")).read_text())
    assert record["input"]["mode"] == "library" and record["input"]["size_hw"] == [32, 32]
    assert record["input"]["seen_box_tlbr"] == [0, 8, 40, 48]


@pytest.mark.parametrize("argv, message", [
    (["explain", "{video}", "-p", "x", "--input", "library", "--scale", "2"], "--scale 2 cannot apply to --input"),
    (["video", "{video}", "-p", "x", "--input", "library", "--scale", "0.5"], "--scale 0.5 cannot apply to --input"),
    (["demo", "--input", "library", "--scale", "3"], "--scale 3 cannot apply to --input library"),
    (["explain", "{video}", "-p", "x", "--input", "square"], "argument --input: invalid choice: 'square'"),
    (["explain", "{video}", "-p", "x", "--scale", "0"], "invalid scale '0': give a number > 0"),
    (["evaluate", "--shapes", "--input", "model"], "--input only work with --video"),
    (["batch", "{video}", "-p", "x", "--out", "{out}", "--input", "library", "--scale", "2"],
     "--scale 2 cannot apply to --input library"),
])
def test_input_option_errors(argv, message, video, tmp_path, capfd):
    """Each command refuses a bad --input/--scale in one line with status 1, before any model loads. Bug caught:
    --scale silently ignored with --input library, or a misspelt mode run as native."""
    assert main([a.format(video=video, out=tmp_path / "o") for a in argv]) == 1
    err = capfd.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_batch_settings_carry_the_input(video, tmp_path):
    """``batch --input model --scale 0.5``: the run's settings (written into the run record and compared on
    resume) carry both. Bug caught: batch parsing --input but running every video at the model's default."""
    from gradeclip.batch.command import check
    from gradeclip.cli import build_parser

    args = build_parser().parse_args(["batch", video, "-p", "x", "--out", str(tmp_path / "o"), "--input", "model",
                                      "--scale", "0.5"])
    settings = check(args)
    assert settings["input"] == "model" and settings["scale"] == 0.5
    from gradeclip.batch.runner import RUN_KEYS

    assert "input" in RUN_KEYS and "scale" in RUN_KEYS


def test_batch_record_names_the_input(model, tmp_path):
    """A batch video explained with ``input="library"``: its record names the mode, the 32 x 32 input and the seen
    box, and its mean map (64 x 64 over the frame) is 0 outside the crop. Bugs caught: the worker ignoring the
    run's input setting; a crop's mean map stretched over the whole frame."""
    import numpy as np

    from gradeclip.batch.runner import process_video

    path = write_video(tmp_path / "wide.avi", numbered_frames(4, 32, 64))
    settings = {"prompts": ["a", "b"], "method": "grad_eclip", "model": "tiny", "every": None, "frames": 2,
                "input": "library", "scale": 1.0}
    record = process_video(model, {"id": "wide", "path": path, "masks": None, "columns": {}}, settings, tmp_path)
    assert record["status"] == "complete", record
    assert record["input"]["mode"] == "library" and record["input"]["seen_box_tlbr"] == [0, 16, 32, 48]
    mean = np.load(tmp_path / "videos" / "wide" / "mean_map.npy")
    assert mean.shape == (2, 64, 64) and not mean[:, :, :16].any() and not mean[:, :, 48:].any()
    assert mean[:, :, 16:48].max() > 0.5


def test_large_input_warns_in_one_line(video, checkpoint, tmp_path):
    """``explain --scale 3`` on the 40 x 56 video feeds 120 x 168 px, a 15 x 21 token grid (315 tokens) to a
    model trained on 4 x 4 (16): one warning line on stderr; ``--scale 1`` (5 x 7 = 35 tokens) gives none. Bugs
    caught: the warning lost in the CLI, printed with a source excerpt, or repeated."""
    proc = run("explain", video, "-p", "x", "--model", checkpoint, "--out", tmp_path, "--dpi", 40, "--scale", 3)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "trained behaviour" in line]
    assert len(lines) == 1 and lines[0].startswith("gradeclip: warning: input native 120×168 px"), proc.stderr
    quiet = run("explain", video, "-p", "x", "--model", checkpoint, "--out", tmp_path, "--dpi", 40)
    assert "trained behaviour" not in quiet.stderr


@pytest.mark.parametrize("command", [
    ["explain", "{video}", "-p", "x", "--model", "{model}"],
    ["video", "{video}", "-p", "x", "--model", "{model}"],
    ["demo"],
    ["evaluate", "--shapes", "--n", "1", "--model", "{model}"],
    ["batch", "{video}", "-p", "x", "--model", "{model}"],
])
def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(video, tmp_path, monkeypatch, capfd,
                                                                         command):
    """``--out /proc/x`` passes every permission check as root (os.access says yes) but no folder can be made
    there; it used to be refused only after the model had run. Now every command refuses it first, in one line:
    loading any model here fails the test, and the model named is a file that does not exist (whose own error
    would come first if the model were loaded first). Catches a check that trusts os.access alone, or one placed
    after the model is loaded."""
    import gradeclip.backbones.model as model_module

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, where a folder cannot be created")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(model_module, "load_clip", no_load)
    args = [a.format(video=video, model=tmp_path / "no_such_model.pt") for a in command]
    code = main(args + ["--out", "/proc/x"])
    err = capfd.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [f"gradeclip: error: --out /proc/x: cannot write there (No such file or "
                                        f"directory)"], err


def test_an_existing_folder_where_no_file_can_be_made_is_refused():
    """/proc exists and os.access calls it writable for root, but no file can be created in it. Catches an existing
    folder trusted on its permissions alone (only new folders tried)."""
    from gradeclip.checks import output_folder

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    with pytest.raises(ValueError, match=r"^--out /proc: cannot write there \("):
        output_folder("/proc")


def test_out_check_leaves_no_folder_and_accepts_a_new_one(tmp_path):
    """The write test creates the folders it needs and removes them again (a refused run leaves nothing), and a
    folder that does not exist yet under a writable parent is accepted. Catches leftover test folders or a probe
    file, and a check that refuses folders still to be created."""
    from gradeclip.checks import output_folder

    target = tmp_path / "a" / "b"
    assert output_folder(target) == target
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()
    assert output_folder(tmp_path / "kept") == tmp_path / "kept" and os.listdir(tmp_path / "kept") == []


def test_video_frames_above_the_count_warns_in_one_line(video, checkpoint, tmp_path, capfd):
    """``video --frames 1000`` on the 12-frame clip explains all 12 and says so in one ``gradeclip: warning:``
    line (the API warns for uniform:N above the count; the CLI path was silent). ``--frames 12`` does not warn.
    Catches the missing warning, a warning at N equal to the count (> vs >=), or one that is not one line."""
    out = tmp_path / "out"
    assert main(["video", video, "-p", "x", "--frames", "1000", "--model", str(checkpoint), "--out", str(out),
                 "--no-gif", "--dpi", "30"]) == 0
    captured = capfd.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("gradeclip: warning:")]
    assert warnings == ["gradeclip: warning: --frames 1000 asks for more frames than walk.avi has (12); "
                        "explaining all 12"], captured.err
    assert "walk.avi: 12 frames explained" in captured.out
    assert main(["video", video, "-p", "x", "--frames", "12", "--model", str(checkpoint), "--out", str(out),
                 "--no-gif", "--dpi", "30"]) == 0
    assert "gradeclip: warning:" not in capfd.readouterr().err


def test_install_forms_work_from_a_clone():
    """gradeclip is not on a package index, so ``pip install "gradeclip[ray]"`` fails; the README, the notebooks,
    the packaging comments and the error messages give the form that works from a clone (``".[ray]"``), and each
    extra they name exists in pyproject.toml. Catches the index form coming back anywhere, or an extra renamed in
    pyproject but not in the text."""
    import pathlib
    import re
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    texts = {path: path.read_text() for path in [root / "README.md", root / "pyproject.toml",
                                                 root / "requirements.txt", *root.glob("notebooks/*.ipynb"),
                                                 *root.glob("gradeclip/**/*.py")]}
    assert [str(path) for path, text in texts.items() if "gradeclip[" in text] == []
    extras = set(tomllib.loads(texts[root / "pyproject.toml"])["project"]["optional-dependencies"])
    named = {name for text in texts.values() for group in re.findall(r"""['"]\.\[([\w,]+)\]['"]""", text)
             for name in group.split(",")}
    assert {"ray", "open_clip", "hf"} <= named and named <= extras, (named, extras)
