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
    (["explain", "{video}", "-p", "x", "--method", "nope"], "known methods: eigencam, game, grad_cam, grad_eclip, "),
    (["explain", "{video}", "-p", " "], "empty --prompt"),
    (["explain", "{video}", "-p", "x", "--alpha", "3"], "--alpha must be in [0, 1]"),
    (["explain", "{video}", "-p", "word " * 80, "--model", "{checkpoint}"], "context length is 77"),
    (["explain", "{notvideo}", "-p", "x"], "not a decodable video"),
    (["bogus"], "invalid choice"),
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
