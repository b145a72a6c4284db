"""Whole videos: streaming, explain_video, exports read back, colour scaling, memory, corrupt frames, the CLI."""
import json
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from gradeclip import (VideoExplanation, explain, explain_video, keyframes, plot_timeline, read_frames,
                       save_video_maps, select_indices, stream_frames, video_info, write_overlay_video)
from gradeclip.cli import main
from gradeclip.io.stream import StreamErrors

from conftest import numbered_frames, write_video
from test_frames import level


@pytest.fixture(scope="module")
def corrupt_avi(tmp_path_factory):
    """30 numbered frames with the JPEG data of frame 15 zeroed."""
    path = write_video(tmp_path_factory.mktemp("corrupt") / "corrupt.avi", numbered_frames(30))
    data = bytearray(open(path, "rb").read())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG SOI markers
    data[starts[15]:starts[16]] = bytes(starts[16] - starts[15])
    open(path, "wb").write(bytes(data))
    return path


def test_select_indices():
    assert select_indices(10).tolist() == list(range(10))
    assert select_indices(10, every=3).tolist() == [0, 3, 6, 9]
    assert select_indices(10, count=4).tolist() == [0, 3, 6, 9]
    assert select_indices(3, count=9).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="not both"):
        select_indices(10, every=2, count=3)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        select_indices(10, every=0)


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_stream_batches(avi, backend):
    batches = list(stream_frames(avi, every=2, batch_size=8, backend=backend))
    assert [len(b.indices) for b in batches] == [8, 7]  # 15 frames: a full batch, then a partial one
    indices = np.concatenate([b.indices for b in batches])
    assert indices.tolist() == list(range(0, 30, 2))
    np.testing.assert_allclose(np.concatenate([b.times for b in batches]), indices / 25)
    assert level(np.concatenate([b.frames for b in batches])) == indices.tolist()
    explicit = list(stream_frames(avi, indices=[1, 5, 29], batch_size=2, backend=backend))
    assert [b.indices.tolist() for b in explicit] == [[1, 5], [29]]
    with pytest.raises(ValueError, match="increasing frame indices in 0..29"):
        list(stream_frames(avi, indices=[5, 1], backend=backend))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        list(stream_frames(avi, batch_size=0, backend=backend))


def test_corrupt_frame_is_reported_and_the_rest_kept(corrupt_avi):
    errors = StreamErrors()
    with pytest.warns(UserWarning, match="frame 15 could not be decoded"):
        got = np.concatenate([b.indices for b in stream_frames(corrupt_avi, batch_size=8, errors=errors)])
    assert [i for i, _ in errors.failed] == [15]
    assert got.tolist() == [i for i in range(video_info(corrupt_avi).num_frames) if i != 15]
    # OpenCV's decoder stops at the bad frame: what came before is kept and the stop is reported
    errors = StreamErrors()
    with pytest.warns(UserWarning, match="frame 15"):
        got = np.concatenate([b.indices for b in stream_frames(corrupt_avi, batch_size=8, backend="opencv",
                                                               errors=errors)])
    assert got.tolist() == list(range(15)) and errors.failed[0][0] == 15


def test_explain_video_skips_the_corrupt_frame(model, corrupt_avi):
    with pytest.warns(UserWarning, match="frame 15"):
        result = explain_video(model, corrupt_avi, ["a", "b"], batch_size=8, progress=False)
    assert 15 not in result.indices and 16 in result.indices and [i for i, _ in result.failed] == [15]
    assert len(result.raw) == len(result.indices) == len(result.cosine)


def test_explain_video_matches_explain(model, avi):
    result = explain_video(model, avi, ["a person", "a tree"], every=3, batch_size=4, progress=False)
    assert result.indices.tolist() == list(range(0, 30, 3)) and result.raw.shape == (10, 2, 6, 8)
    single = explain(model, read_frames(avi, result.indices.tolist()), ["a person", "a tree"])
    np.testing.assert_allclose(result.raw, single.raw, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.cosine, single.cosine, rtol=1e-5, atol=1e-6)
    other = explain_video(model, avi, ["a person", "a tree"], every=3, batch_size=16, progress=False)
    np.testing.assert_allclose(other.raw, result.raw, rtol=1e-5, atol=1e-7)
    rise = explain_video(model, avi, ["a person"], count=2, method="rise", n_masks=8, progress=False)
    assert rise.raw.shape == (2, 1, 6, 8) and rise.options == {"n_masks": 8}


def test_a_callers_bar_advances_by_the_frames_explained(model, avi):
    """``progress=bar``: the caller's bar moves batch by batch and stays open (the evaluate command counts frames
    of several methods on one bar). Catches a bar advanced once per video, by batches instead of frames, or closed."""
    class Bar:
        def __init__(self):
            self.steps, self.closed = [], False

        def update(self, n):
            self.steps.append(n)

        def close(self):
            self.closed = True

    bar = Bar()
    result = explain_video(model, avi, ["a person"], every=3, batch_size=4, progress=bar)
    assert bar.steps == [4, 4, 2] and sum(bar.steps) == len(result.indices) and not bar.closed


def fake_result(video, raw):
    f, k = raw.shape[:2]
    return VideoExplanation(video=video, prompts=[f"p{j}" for j in range(k)], method="grad_eclip", model="tiny",
                            raw=raw, cosine=np.linspace(0, 1, f * k).reshape(f, k), probs=np.full((f, k), 1 / k),
                            indices=np.arange(f) * 2, times=np.arange(f) * 2 / 25, fps=25.0, frame_size=(48, 64),
                            input_size=(48, 64))


def test_shared_and_per_frame_scaling(avi):
    raw = np.zeros((2, 1, 2, 2), np.float32)
    raw[0, 0] = [[0, 1], [0, 0]]
    raw[1, 0] = [[0, 4], [2, 0]]
    result = fake_result(avi, raw)
    shared, per_frame = result.normalized("shared"), result.normalized("per_frame")
    assert shared[0, 0].max() == pytest.approx(0.25) and shared[1, 0].max() == 1
    assert per_frame[0, 0].max() == 1 and per_frame[1, 0, 1, 0] == pytest.approx(0.5)
    assert np.all(fake_result(avi, np.ones((2, 1, 2, 2), np.float32)).normalized("per_frame") == 0)
    with pytest.raises(ValueError, match="allowed: shared, per_frame"):
        result.normalized("global")


def test_exports_read_back(model, avi, tmp_path):
    result = explain_video(model, avi, ["a person", "a tree"], every=2, progress=False, model_name="tiny")
    npz, sidecar = save_video_maps(result, tmp_path)
    with np.load(npz) as data:
        assert data["maps"].dtype == np.float16 and data["maps"].shape == (15, 2, 6, 8)
        np.testing.assert_allclose(data["maps"], result.raw, rtol=1e-2, atol=1e-4)
        assert data["indices"].tolist() == list(range(0, 30, 2))
    record = json.loads(sidecar.read_text())
    assert record["model"] == "tiny" and record["prompts"] == ["a person", "a tree"]
    assert record["frame_indices"] == list(range(0, 30, 2)) and len(record["timestamps_s"]) == 15
    assert record["preprocessing"]["input_size_hw"] == [48, 64]
    mp4, gif = write_overlay_video(result, tmp_path / "overlay.mp4")
    info = video_info(mp4)
    assert info.num_frames == 15 and info.fps == pytest.approx(12.5)
    first = read_frames(mp4, 0)[0]
    assert first.shape == (info.height, info.width, 3) and info.width > 3 * 64  # frame + 2 overlays + colorbar
    with Image.open(gif) as image:
        # every exported frame, full size, at the MP4's rate (it kept every other frame, downscaled)
        assert image.n_frames == 15 and image.width >= info.width and image.height >= info.height
        assert image.info["duration"] == pytest.approx(1000 / 12.5, abs=10)



def test_gif_palette_does_not_posterise(tmp_path):
    """A smooth frame and heatmaps through the GIF writer: after a 5x5 box blur (which averages dithering out but
    not bands) the GIF stays within 2 levels of the picture on average, less than half of the error of a single
    adaptive palette without dithering (Pillow's default, the old writer). Catches posterised GIFs."""
    from scipy.ndimage import uniform_filter

    from gradeclip.viz.video_export import _GifWriter, compose_frame

    y, x = np.mgrid[0:120, 0:160]
    frame = np.stack([x * 1.5, y * 2, 255 - x], -1).astype(np.uint8)
    maps = np.stack([np.exp(-((x - 60) ** 2 + (y - 50) ** 2) / 2000.0), x / 160.0])
    picture = compose_frame(frame, maps, ["a", "b"], [0.1, 0.2], [0.4, 0.6], 1.0, 3, scale_label="shared",
                            method="grad_eclip")
    writer = _GifWriter(tmp_path / "a.gif", 10)
    writer.append(picture)
    writer.append(picture)
    writer.close()
    Image.fromarray(picture).save(tmp_path / "b.gif")
    blur = lambda a: uniform_filter(np.asarray(a, dtype=float), (5, 5, 1))  # noqa: E731
    with Image.open(tmp_path / "a.gif") as ours, Image.open(tmp_path / "b.gif") as plain:
        assert ours.n_frames == 2
        error = np.abs(blur(ours.convert("RGB")) - blur(picture)).mean()
        plain_error = np.abs(blur(plain.convert("RGB")) - blur(picture)).mean()
    assert error < 2 and error < plain_error / 2, (error, plain_error)


def test_timeline_and_keyframes(avi):
    raw = np.random.default_rng(0).random((6, 2, 3, 4)).astype(np.float32)
    result = fake_result(avi, raw)
    result.cosine = np.array([[0.1, 0.2], [0.3, 0.2], [0.2, 0.25], [0.5, 0.1], [0.1, 0.15], [0.2, 0.1]])
    marks = keyframes(result)
    positions = [n for n, _ in marks]
    assert positions == sorted(positions)
    # p0 peaks at 3 and dips at 0 and 4 (the first wins: 0); p1 peaks at 2 and dips at 3 and 5 (3: taken); the best
    # prompt changes at 1 (to p0), 2, 3, 4 and 5: one label per position, the first given wins
    assert marks == [(0, "valley: p0"), (1, "best → p0"), (2, "peak: p1"), (3, "peak: p0"), (4, "best → p1"),
                     (5, "best → p0")]
    assert any("valley" in label for _, label in marks)
    fig = plot_timeline(result)
    assert len([ax for ax in fig.axes if ax.get_images()]) == len(marks)
    assert "shared over the video" in fig.axes[0].get_title()
    # each thumbnail says which prompt's map it shows (the best prompt at that moment); one colorbar names the method
    thumbs = [ax for ax in fig.axes if ax.get_images()]
    best = [result.prompts[int(result.cosine[n].argmax())] for n, _ in marks]
    assert [ax.get_title().split("map: ")[1] for ax in thumbs] == best
    assert [ax.get_ylabel().split(" relevance")[0] for ax in fig.axes if "relevance" in ax.get_ylabel()] == [
        "Grad-ECLIP"]


def test_memory_stays_bounded(tmp_path):
    # 1,500 frames of 160x120: 86 MB if held at once; the stream must stay far below that
    frames = np.random.default_rng(0).integers(0, 256, size=(50, 120, 160, 3), dtype=np.uint8)
    path = write_video(tmp_path / "long.avi", np.concatenate([frames] * 30))
    process = psutil.Process()
    base = process.memory_info().rss
    peak, count = 0, 0
    for batch in stream_frames(path, batch_size=16):
        count += len(batch.indices)
        peak = max(peak, process.memory_info().rss - base)
    assert count == 1500
    assert peak < 40 * 2 ** 20, f"stream grew memory by {peak / 2 ** 20:.0f} MB"


def test_video_cli(checkpoint, avi, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.avi", "b.avi"):
        (folder / name).write_bytes(open(avi, "rb").read())
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    code = main(["video", str(folder), "-p", "a person", "-p", "a tree", "--frames", "5", "--model",
                 str(checkpoint), "--out", str(out), "--dpi", "40", "--no-gif"])
    assert code == 0
    text = capsys.readouterr().out
    assert "a.avi: 5 frames explained" in text and "b.avi: 5 frames explained" in text
    for stem in ("a_grad_eclip", "b_grad_eclip"):
        for suffix in (".mp4", "_maps.npz", "_maps.json", "_timeline.png", "_timeline.pdf"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    assert not (out / "a_grad_eclip.gif").exists()


@pytest.mark.parametrize("args,message", [
    (["video", "{empty}", "-p", "x"], "no video files in"),
    (["video", "{video}", "-p", "x", "--every", "2", "--frames", "3"], "not allowed with argument --every"),
    (["video", "{video}", "-p", "x", "--every", "0"], "give a whole number >= 1"),
    (["video", "{video}", "-p", "x", "--colour-scale", "global"], "invalid choice"),
])
def test_video_cli_bad_input(avi, tmp_path, capfd, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main([a.format(video=avi, empty=empty) for a in args])
    err = capfd.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_sidecar_sizes_are_height_then_width_and_follow_scale(model, avi, tmp_path):
    """The 48x64 (H x W) video at scale 0.5 with patch 8: the sidecar says frame_size_hw [48, 64] and input_size_hw
    [24, 32], and the raw maps are (3, 4). Catches (W, H) order or an input size that ignores ``scale``."""
    result = explain_video(model, avi, ["a person"], count=2, scale=0.5, progress=False, model_name="tiny")
    assert result.raw.shape[-2:] == (3, 4)
    _, sidecar = save_video_maps(result, tmp_path)
    record = json.loads(sidecar.read_text())["preprocessing"]
    assert record["frame_size_hw"] == [48, 64] and record["input_size_hw"] == [24, 32]


def test_library_mode_video_maps_and_sidecar(model, avi, tmp_path):
    """``input="library"`` on the 48 x 64 video (model at 32 px): the video's maps and scores are ``explain``'s in
    the same mode, the sidecar names the mode, the 32 x 32 input and the seen box (columns 8..56: the short side
    resized to 32 gives 32 x 42, cropped at column 5), ``frame_maps`` gives the maps on that box only (what the
    metrics score), and the display maps are 0 outside it. Bugs caught: the video path ignoring ``input``, a
    sidecar still saying native, metrics fed the unseen margins, the display map stretched over the whole frame."""
    from gradeclip.explain import normalize_maps

    import torch
    import torch.nn.functional as F

    result = explain_video(model, avi, ["a person", "a tree"], count=3, input="library", progress=False)
    single = explain(model, read_frames(avi, result.indices.tolist()), ["a person", "a tree"], input="library")
    np.testing.assert_allclose(result.cosine, single.cosine, atol=1e-6)
    np.testing.assert_allclose(result.raw, single.raw, rtol=1e-4, atol=1e-7)
    record = json.loads(save_video_maps(result, tmp_path)[1].read_text())["preprocessing"]
    assert record["input_mode"] == "library" and record["input_size_hw"] == [32, 32]
    assert record["input"]["seen_box_tlbr"] == [0, 8, 48, 56]
    maps, box = result.frame_maps(1, (48, 64))
    assert box == (0, 8, 48, 56) and maps.shape == (2, 48, 48)
    expected = normalize_maps(F.interpolate(torch.from_numpy(result.raw[1]).float()[:, None], size=(48, 48),
                                            mode="bilinear", align_corners=False)[:, 0])
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(maps, single.maps[1][:, :, 8:56], atol=1e-5)
    shown = result.normalized("per_frame")  # on a 192 x 256 canvas: the box is columns 32..224
    assert shown.shape[-2:] == (192, 256) and not shown[..., :32].any() and not shown[..., 224:].any()
    assert shown[..., 32:224].max() > 0.9  # bilinear resizing of the [0, 1] grid maps onto the box


def test_video_cli_input_option(checkpoint, avi, tmp_path, capsys):
    """``video --input model --scale 0.5`` reaches explain_video: the 48 x 64 video's longer side goes to 32 x 0.5
    = 16 px (16 x 16 after rounding to the patch grid), and the sidecar and the printed line say so. Bug caught:
    the option parsed but not passed on."""
    out = tmp_path / "out"
    assert main(["video", avi, "-p", "a person", "--frames", "2", "--model", str(checkpoint), "--out", str(out),
                 "--dpi", "40", "--no-gif", "--input", "model", "--scale", "0.5"]) == 0
    assert "input model 16×16 px" in capsys.readouterr().out
    record = json.loads((out / f"{Path(avi).stem}_grad_eclip_maps.json").read_text())["preprocessing"]
    assert record["input"] == {"mode": "model", "size_hw": [16, 16], "frame_size_hw": [48, 64], "scale": 0.5,
                               "resize": record["input"]["resize"]}
    assert record["input_size_hw"] == [16, 16]


def test_library_mode_metrics_count_only_the_seen_part(model, avi, tmp_path):
    """Annotation metrics with ``input="library"`` on the 48 x 64 video (seen: columns 8..56): a mask of exactly
    the seen part has chance level (mask share) 1 and holds all of every non-constant map's energy; a mask of the two unseen margins
    is empty once cut to the seen part (share 0, no hit, no energy). Bug caught: metrics computed over the whole
    frame (share 0.75 for the first mask, the margins counted against the map)."""
    from gradeclip.eval.annotations import open_masks, score_frames

    result = explain_video(model, avi, ["a person", "a tree"], count=3, input="library", progress=False)
    for name, columns in [("seen", slice(8, 56)), ("margins", np.r_[0:8, 56:64])]:
        folder = tmp_path / name
        folder.mkdir()
        for index in result.indices:
            mask = np.zeros((48, 64), np.uint8)
            mask[:, columns] = 255
            Image.fromarray(mask).save(folder / f"mask_{int(index):03d}.png")
        rows = score_frames(result, open_masks(folder, first=0))["rows"]
        assert len(rows) == 6
        if name == "seen":
            assert all(r["mask_share"] == 1.0 for r in rows), rows
            # a non-constant map has all its energy in it (a constant map scores 0 by the metrics' rule)
            assert all(r["energy"] == pytest.approx(1.0) or r["energy"] == 0 for r in rows) and \
                sum(r["energy"] == pytest.approx(1.0) for r in rows) >= 2, rows
        else:
            assert all(r["mask_share"] == 0.0 and r["pointing"] == 0 and r["energy"] == 0 for r in rows), rows


def test_an_interrupted_overlay_export_leaves_the_older_files_and_no_ffmpeg(model, avi, tmp_path, monkeypatch):
    """Ctrl-C at the 4th exported frame, with an older export of the same name in the folder: the older MP4 and GIF
    are kept byte for byte, no temporary file is left, and no FFmpeg child is still running (it would write on
    after the temporary was removed). Then an uninterrupted export replaces both, the MP4 decoding (PyAV) to
    every exported frame. Catches writers opened on the final names, a temporary left behind, and FFmpeg left
    running (not stopped when the export fails)."""
    import os

    import av

    import gradeclip.viz.video_export as video_export

    result = explain_video(model, avi, ["a person", "a tree"], count=8, progress=False)
    mp4, gif = tmp_path / "overlay.mp4", tmp_path / "overlay.gif"
    mp4.write_bytes(b"older mp4")
    gif.write_bytes(b"older gif")
    real, calls = video_export.compose_frame, []

    def stop_at_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(video_export, "compose_frame", stop_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        write_overlay_video(result, mp4)
    assert mp4.read_bytes() == b"older mp4" and gif.read_bytes() == b"older gif"
    assert sorted(os.listdir(tmp_path)) == ["overlay.gif", "overlay.mp4"]
    assert [p for p in psutil.Process().children(recursive=True) if p.is_running() and  # Ray's, from other
            p.status() != psutil.STATUS_ZOMBIE and "ffmpeg" in p.name().lower()] == []   # tests, may live on
    monkeypatch.setattr(video_export, "compose_frame", real)
    assert write_overlay_video(result, mp4) == [mp4, gif]
    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8
    with Image.open(gif) as image:
        assert image.n_frames == 8
    assert sorted(os.listdir(tmp_path)) == ["overlay.gif", "overlay.mp4"]


def half_then_ctrl_c(path, *args, **kwargs):
    """A writer (np.save, np.savez_compressed, Path.write_text) that writes part of a file and is interrupted."""
    path = path if hasattr(path, "write_bytes") else __import__("pathlib").Path(path)
    path.write_bytes(b"PK\x03\x04 half a file")
    raise KeyboardInterrupt


@pytest.mark.parametrize("writer", ["savez_compressed", "write_text"])
def test_interrupted_video_maps_leave_no_file_under_their_names(model, avi, tmp_path, monkeypatch, writer):
    """save_video_maps interrupted half-way through the npz or the JSON sidecar: neither name holds half a file,
    and no temporary is left. Catches np.savez_compressed or write_text aimed at the final name."""
    import os
    import pathlib

    result = explain_video(model, avi, ["a person"], count=2, progress=False)
    if writer == "savez_compressed":
        monkeypatch.setattr(np, "savez_compressed", half_then_ctrl_c)
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", lambda self, *a, **k: half_then_ctrl_c(self))
    with pytest.raises(KeyboardInterrupt):
        save_video_maps(result, tmp_path, "clip")
    left = sorted(os.listdir(tmp_path))
    assert left == ([] if writer == "savez_compressed" else ["clip_maps.npz"]), left


def test_an_ffmpeg_that_stops_is_an_error_while_writing(tmp_path):
    """FFmpeg refusing its arguments (an encoder that does not exist) exits at once; frames larger than the pipe's
    buffer then meet a broken pipe, which raises OSError naming the file and FFmpeg's own message. Catches the
    broken pipe swallowed (the frames would go nowhere until close)."""
    from gradeclip.viz.ffmpeg_pipe import FfmpegWriter

    writer = FfmpegWriter(tmp_path / "clip.mp4", 10, "mp4", ["-vcodec", "no_such_encoder"])
    frame = np.zeros((256, 256, 3), np.uint8)  # 192 KiB: more than a pipe holds
    with pytest.raises(OSError, match=r"FFmpeg stopped .* while writing clip\.mp4: .*no_such_encoder"):
        for _ in range(20):
            writer.append(frame)
    writer.abort()


def test_an_ffmpeg_that_fails_at_the_end_is_an_error_on_close():
    """FFmpeg that takes every frame but cannot write its output (/dev/full: no space left) fails when the file is
    finished: close raises OSError with FFmpeg's message, so the export's temporary file is never renamed as if
    complete. Catches FFmpeg's exit status not checked."""
    from gradeclip.viz.ffmpeg_pipe import FfmpegWriter

    writer = FfmpegWriter("/dev/full", 10, "mp4", ["-vcodec", "libx264", "-pix_fmt", "yuv420p"])
    writer.append(np.zeros((16, 24, 3), np.uint8))  # 1 KiB: fits the pipe whatever FFmpeg does
    with pytest.raises(OSError, match=r"FFmpeg failed \(status \d+\) to write full: .*No space left on device"):
        writer.close()


def test_timeline_thumbnail_of_a_constant_map_says_so(avi):
    """A keyframe whose best prompt's map is constant (0.5 everywhere) gets a thumbnail saying "constant map", not
    a uniform colour that reads as low relevance; the other thumbnails are overlays. Catches the thumbnails drawn
    without the check, or the check made on the wrong prompt's map."""
    raw = np.random.default_rng(1).random((6, 2, 3, 4)).astype(np.float32)
    result = fake_result(avi, raw)
    result.cosine = np.array([[0.1, 0.2], [0.3, 0.2], [0.2, 0.25], [0.5, 0.1], [0.1, 0.15], [0.2, 0.1]])
    result.raw[3, 0] = 0.5  # frame 3: prompt 0 is best (its peak)
    result.raw[3, 1] = 0.0  # the other prompt's map there is constant too, but is not the one shown
    result.raw[2, 0] = 0.5  # frame 2: prompt 1 is best; prompt 0's constant map is not shown
    fig = plot_timeline(result)
    thumbs = [ax for ax in fig.axes if ax.get_images()]
    marked = [ax.get_title().split(" s ·")[0] for ax in thumbs if [t.get_text() for t in ax.texts] == ["constant map"]]
    assert marked == [f"{result.times[3]:.2f}"], [ax.get_title() for ax in thumbs]
