"""Ctrl-C in the commands: one line on stderr, exit status 130, and every file under a final name complete.

The subprocess tests send SIGINT to the command's process group, as a terminal does, at phases found by watching
the process (its libraries, its progress bar, its output folder) rather than by fixed sleeps.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
from PIL import Image

from gradeclip.cli import main
from gradeclip.files import is_partial

from conftest import write_video

FRAMES = 24
PROMPTS = ["a person", "a red square"]
STEM = "walk_grad_eclip"
ALL_FILES = [f"{STEM}{s}" for s in ("_maps.npz", "_maps.json", ".mp4", ".gif", "_timeline.png", "_timeline.pdf")]
BAR = re.compile(r".*\|.*\b\d+/\d+ \[")  # a tqdm progress line


def moving_frames(n=FRAMES, h=72, w=112):
    """uint8 RGB (n, h, w, 3), non-square: a ramp that shifts and a red square that moves, so every frame differs."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x + 5 * i) % 256
        frames[i, ..., 1] = 3 * y
        frames[i, 20:44, 3 * i % (w - 24):3 * i % (w - 24) + 24] = (255, 0, 0)
    return frames


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("interrupts") / "walk.avi", moving_frames())


def video_args(walk, checkpoint, out):
    return ["video", walk, "-p", PROMPTS[0], "-p", PROMPTS[1], "--model", checkpoint, "--out", out,
            "--batch-size", "2", "--dpi", "30"]


def command(args, env=None):
    return [sys.executable, "-m", "gradeclip", *map(str, args)], {**os.environ, **(env or {})}


@pytest.fixture(scope="module")
def reference(walk, checkpoint, tmp_path_factory):
    """The output folder of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    cmd, env = command(video_args(walk, checkpoint, out))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def interrupt_when(cmd, env, ready, what, timeout=600, children_first=False):
    """Run ``cmd`` in a session of its own, poll ``ready(pid, stderr_so_far)`` every few milliseconds, and send
    SIGINT to the whole process group once it is true (``children_first``: to its child processes too, first, as
    a terminal does to children that share its process group). Returns (exit status, stderr). Fails if the
    command ended before the phase ``what`` was reached."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored, as a
    # background job (CI) would inherit it: Python raises KeyboardInterrupt only where SIGINT is not ignored
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not ready(proc.pid, b"".join(chunks).decode(errors="replace")):
            if proc.poll() is not None:
                pytest.fail(f"the command ended (status {proc.returncode}) before {what}: "
                            f"{b''.join(chunks).decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not reached in {timeout} s")
            time.sleep(0.003)
        for child in children(proc.pid) if children_first else []:
            os.kill(child, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    return code, b"".join(chunks).decode(errors="replace")


def the_one_line(stderr):
    """The lines on stderr that are not progress-bar updates (tqdm rewrites its line with carriage returns)."""
    assert "Traceback" not in stderr, stderr
    lines = [part for part in re.split(r"[\r\n]+", stderr) if part.strip() and not BAR.match(part)]
    assert len(lines) == 1 and lines[0].startswith("gradeclip: interrupted: "), stderr
    # on a line of its own: not written over an unfinished progress bar (which ends in a carriage return)
    assert stderr.startswith(lines[0]) or f"\n{lines[0]}" in stderr, stderr
    return lines[0]


def check_complete(out):
    """Every file under a final name is whole: PDF ends with %%EOF, PNG and GIF decode, MP4 decodes (PyAV) to the
    explained frame count, JSON and npz load; no temporary file is left. Returns the names present."""
    names = sorted(os.listdir(out)) if out.exists() else []
    assert not [n for n in names if is_partial(n)], names
    for name in names:
        path = out / name
        if name.endswith(".pdf"):
            assert path.read_bytes().rstrip().endswith(b"%%EOF"), name
        elif name.endswith(".png"):
            with Image.open(path) as image:
                image.load()
        elif name.endswith(".gif"):
            with Image.open(path) as image:
                assert image.n_frames == FRAMES, name
        elif name.endswith(".mp4"):
            with av.open(str(path)) as container:
                assert sum(1 for _ in container.decode(video=0)) == FRAMES, name
        elif name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".npz"):
            with np.load(path) as data:
                assert data["maps"].shape[:2] == (FRAMES, len(PROMPTS)), name
    return names


def same_numbers(out, reference):
    """The maps and the sidecar of ``out`` equal those of the uninterrupted run."""
    with np.load(out / f"{STEM}_maps.npz") as ours, np.load(reference / f"{STEM}_maps.npz") as theirs:
        assert sorted(ours.files) == sorted(theirs.files)
        for key in ours.files:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    ours, theirs = (json.loads((folder / f"{STEM}_maps.json").read_text()) for folder in (out, reference))
    assert ours == theirs


def loaded_torch(pid, stderr):
    with open(f"/proc/{pid}/maps") as maps:
        return "libtorch" in maps.read() and not BAR.search(stderr)


def explaining(pid, stderr):
    done = [int(n) for n in re.findall(r"\b(\d+)/%d \[" % FRAMES, stderr)]
    return bool(done) and 2 <= done[-1] <= FRAMES - 6


def exporting(out):
    return lambda pid, stderr: out.exists() and any(is_partial(n) and n.endswith(".mp4") for n in os.listdir(out))


def drawing_timeline(out):
    return lambda pid, stderr: (out / f"{STEM}.mp4").exists() and not (out / f"{STEM}_timeline.png").exists()


def test_video_interrupted_at_start_up_writes_nothing(walk, checkpoint, tmp_path):
    """SIGINT while the libraries and the model load (torch mapped, no frame explained yet). Catches a traceback
    from an import or from the model loading, or a status other than 130."""
    out = tmp_path / "out"
    cmd, env = command(video_args(walk, checkpoint, out))
    code, stderr = interrupt_when(cmd, env, loaded_torch, "start-up")
    line = the_one_line(stderr)
    assert code == 130
    assert check_complete(out) == []
    assert "nothing written" in line or "no output file was left incomplete" in line, line


def test_video_interrupted_while_explaining_says_how_far_it_got(walk, checkpoint, tmp_path):
    """SIGINT mid-way through the frames: the line says how many of the 24 frames were explained and that nothing
    was written. Catches a traceback out of tqdm or torch, a frame count that is not the bar's, or a bar line that
    the interrupt line continues (the bar not closed first)."""
    out = tmp_path / "out"
    # RISE (hundreds of masked forwards a frame) keeps the 24 frames from being explained before the poll sees
    # the bar move, as the tiny model does on an idle machine (270 frames/s)
    cmd, env = command(video_args(walk, checkpoint, out) + ["--method", "rise"])
    code, stderr = interrupt_when(cmd, env, explaining, "explaining")
    line = the_one_line(stderr)
    assert code == 130
    found = re.search(r"stopped while explaining walk\.avi \((\d+) of 24 frames explained\); nothing written; "
                      r"rerun the same command$", line)
    assert found and 2 <= int(found.group(1)) < FRAMES, line
    assert check_complete(out) == []


@pytest.mark.parametrize("ffmpeg_gets_sigint", [False, True], ids=["terminal", "ffmpeg-signalled-first"])
def test_video_interrupted_while_writing_the_mp4(walk, checkpoint, tmp_path, ffmpeg_gets_sigint):
    """SIGINT while the MP4 and GIF are written: the maps and sidecar (written first) are whole and named in the
    line, the MP4 and GIF are absent (not half-written under their names), the line names what was not finished.
    In the second case the FFmpeg children get SIGINT first (as from a terminal whose process group they shared)
    and stop, so the pipe to them may break before Python sees its own SIGINT: that must still end as the
    interrupt line, with none of FFmpeg's messages on stderr. Catches writers that write the final name directly,
    a close whose BrokenPipe/OSError replaces the interrupt, an FFmpeg left running that writes on after the
    temporary was removed, and leftover temporaries."""
    out = tmp_path / "out"
    cmd, env = command(video_args(walk, checkpoint, out))
    code, stderr = interrupt_when(cmd, env, exporting(out), "the MP4 export", children_first=ffmpeg_gets_sigint)
    line = the_one_line(stderr)
    assert code == 130
    assert check_complete(out) == [f"{STEM}_maps.json", f"{STEM}_maps.npz"]
    assert (f"stopped while writing the files of walk.avi; wrote {STEM}_maps.npz, {STEM}_maps.json in {out}; "
            f"not finished: {STEM}.mp4, {STEM}.gif, {STEM}_timeline.png, {STEM}_timeline.pdf") in line, line
    time.sleep(0.5)  # an FFmpeg child still running would write its file now
    assert sorted(os.listdir(out)) == [f"{STEM}_maps.json", f"{STEM}_maps.npz"]


def test_video_interrupted_while_drawing_the_timeline_then_rerun(walk, checkpoint, tmp_path, reference):
    """SIGINT after the MP4 and GIF were renamed, while the timeline is drawn: the MP4 decodes to all 24 frames,
    no timeline file exists (the bug this replaced left ``_timeline.pdf`` at 2,689 bytes without %%EOF). A rerun
    of the same command into the same folder completes and its maps and sidecar equal an uninterrupted run's.
    Catches a savefig straight to the final name, a rerun that keeps stale files, or a rerun that differs."""
    out = tmp_path / "out"
    cmd, env = command(video_args(walk, checkpoint, out))
    code, stderr = interrupt_when(cmd, env, drawing_timeline(out), "the timeline")
    line = the_one_line(stderr)
    assert code == 130
    assert check_complete(out) == sorted(ALL_FILES[:4])
    assert f"not finished: {STEM}_timeline.png, {STEM}_timeline.pdf" in line, line
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert check_complete(out) == sorted(ALL_FILES) == check_complete(reference)
    same_numbers(out, reference)


def swallowed_ctrl_c_then(error):
    """A stand-in for work during which Ctrl-C arrives and a library swallows the KeyboardInterrupt, after which
    the pipe to an FFmpeg child (stopped by the same Ctrl-C) fails with ``error``."""
    def work(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        raise error
    return work


def test_a_broken_pipe_after_ctrl_c_is_the_interrupt_not_a_failed_video(walk, checkpoint, tmp_path, monkeypatch,
                                                                         capfd):
    """An OSError after SIGINT inside explain_video ends as the one interrupt line and 130. Catches the per-video
    error handler recording the video as failed ("gradeclip: error: ...", status 1), and the CLI's OSError branch
    printing an error line."""
    import gradeclip.video

    monkeypatch.setattr(gradeclip.video, "explain_video", swallowed_ctrl_c_then(BrokenPipeError(32, "Broken pipe")))
    code = main(video_args(walk, str(checkpoint), str(tmp_path / "out")))
    line = the_one_line(capfd.readouterr().err)
    assert code == 130 and "stopped while explaining walk.avi" in line, line


def test_an_oserror_without_ctrl_c_is_still_an_error(walk, checkpoint, tmp_path, monkeypatch, capfd):
    """The same OSError with no SIGINT is a real failure: one error line and status 1. Catches treating every
    OSError as an interrupt (a full disk reported as Ctrl-C)."""
    import gradeclip.video

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gradeclip.video, "explain_video", broken)
    code = main(video_args(walk, str(checkpoint), str(tmp_path / "out")))
    err = capfd.readouterr().err
    assert code == 1 and "gradeclip: error: " in err and "No space left on device" in err and "interrupted" not in err


def test_explain_interrupted_while_writing_names_the_files_it_wrote(walk, checkpoint, tmp_path, monkeypatch, capfd):
    """Ctrl-C after the figure's PNG and PDF, before the maps and scores: the line names the two files written and
    the two not finished; those two are absent. Catches a line that claims nothing or everything was written."""
    import gradeclip.viz.saving

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradeclip.viz.saving, "save_explanation", stop)
    out = tmp_path / "out"
    code = main(["explain", walk, "-p", "a person", "--model", str(checkpoint), "--out", str(out), "--dpi", "30",
                 "--input", "model"])  # at the model's size: no size warning beside the one line
    line = the_one_line(capfd.readouterr().err)
    name = "walk_frame12_grad_eclip"
    assert code == 130
    assert line == (f"gradeclip: interrupted: stopped while writing the files of frame 12; wrote {name}.png, "
                    f"{name}.pdf in {out}; not finished: {name}_maps.npy, {name}_scores.json; rerun the same command")
    assert sorted(os.listdir(out)) == [f"{name}.pdf", f"{name}.png"]


def test_demo_interrupted_mid_video_keeps_the_finished_frame(tmp_path, monkeypatch, capfd):
    """Ctrl-C in demo while the whole video is explained (7 frames done): the line says the middle frame's files
    are finished and where, and how far the video got. Catches a demo without the interrupt line (a generic one),
    or a count that is not the bar's."""
    import gradeclip.video

    def seven_then_stop(*args, progress, **kwargs):
        progress.update(7)
        raise KeyboardInterrupt

    monkeypatch.setattr(gradeclip.video, "explain_video", seven_then_stop)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--device", "cpu"])
    line = the_one_line(capfd.readouterr().err)
    assert code == 130
    found = re.fullmatch(rf"gradeclip: interrupted: finished frame (\d+) \(files in {re.escape(str(out))}\); "
                         r"stopped while explaining every frame of shapes_demo\.avi \(7 of (\d+) frames "
                         r"explained\); rerun the same command", line)
    assert found, line
    assert sorted(os.listdir(out)) == sorted(f"demo_frame{s}" for s in (".png", ".pdf", "_maps.npy", "_scores.json"))


def test_a_ctrl_c_that_python_cannot_raise_is_raised_again(capfd):
    """SIGINT that lands in a finaliser (as it can in the at-fork hook that runs while FFmpeg is started) is
    "Exception ignored" to Python, and the command would go on as if no Ctrl-C had come. Inside noting_sigint it
    is raised again in the main thread, without the ignored-exception traceback. Catches the lost interrupt (the
    loop runs to its end) and the traceback on stderr."""
    import gc

    from gradeclip.interrupts import noting_sigint

    class Finaliser:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with noting_sigint():
            Finaliser()
            gc.collect()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.001)
            reached_the_end = True
    assert not reached_the_end
    assert "Traceback" not in capfd.readouterr().err


def test_video_folder_interrupted_in_the_second_video_names_the_first_as_finished(walk, checkpoint, tmp_path,
                                                                                  monkeypatch, capfd):
    """Two videos, Ctrl-C while the second is explained: the line says the first is finished and where, and how
    far the second got; the first video's files are all there and whole. Catches a finished video not recorded
    (the line would say nothing was written) or the wrong video named."""
    import shutil

    import gradeclip.video

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(walk, folder / "a.avi")
    shutil.copy(walk, folder / "b.avi")
    real = gradeclip.video.explain_video

    def second_stops(model, path, *args, progress, **kwargs):
        if path.endswith("b.avi"):
            progress.update(3)
            raise KeyboardInterrupt
        return real(model, path, *args, progress=progress, **kwargs)

    monkeypatch.setattr(gradeclip.video, "explain_video", second_stops)
    out = tmp_path / "out"
    code = main(["video", str(folder), "-p", "a person", "--model", str(checkpoint), "--out", str(out),
                 "--frames", "4", "--dpi", "30"])
    line = the_one_line(capfd.readouterr().err)
    assert code == 130
    assert line == (f"gradeclip: interrupted: finished a.avi (files in {out}); stopped while explaining b.avi "
                    f"(3 of 4 frames explained); rerun the same command")
    assert sorted(os.listdir(out)) == sorted(f"a_grad_eclip{s}" for s in ("_maps.npz", "_maps.json", ".mp4", ".gif",
                                                                          "_timeline.png", "_timeline.pdf"))


def test_ctrl_c_while_ffmpeg_starts_is_held_until_its_handle_is_kept():
    """SIGINT while the FFmpeg child is being started is held (the child's handle must be kept, or the child would
    write on unseen after its temporary file was removed) and raised as KeyboardInterrupt when the start is done.
    Catches the held signal dropped (the Ctrl-C lost) or raised inside the start."""
    from gradeclip.viz.ffmpeg_pipe import _ctrl_c_after

    got_past_the_signal = False
    with pytest.raises(KeyboardInterrupt):
        with _ctrl_c_after():
            signal.raise_signal(signal.SIGINT)
            got_past_the_signal = True
    assert got_past_the_signal
