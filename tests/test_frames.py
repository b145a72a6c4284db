"""Frame extraction: selections, both backends, metadata, and every bad input."""
import numpy as np
import pytest

from gradeclip import read_frames, resolve_indices, sample_video, video_info
from gradeclip.io import decode as decode_module

from conftest import write_video

BACKENDS = ["pyav", "decord", "opencv"]


def level(frames):
    """Index of each numbered frame, read back from its brightness in a corner free of the square."""
    return [int(round(f[30:, :, 1].mean() / 8)) for f in frames]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["avi", "mp4"])
def test_selections(request, fmt, backend):
    path = request.getfixturevalue(fmt)
    assert level(read_frames(path, "middle", backend=backend)) == [15]
    assert level(read_frames(path, 3, backend=backend)) == [3]
    assert level(read_frames(path, -1, backend=backend)) == [29]
    assert level(read_frames(path, [7, 2, 7, -2], backend=backend)) == [7, 2, 7, 28]
    assert level(read_frames(path, "uniform:4", backend=backend)) == [0, 10, 19, 29]
    out = read_frames(path, "uniform:4", backend=backend)
    assert out.shape == (4, 48, 64, 3) and out.dtype == np.uint8


def test_rgb_order(avi):
    frame = read_frames(avi, 0)[0]
    red = frame[15, 5]  # inside the square drawn as pure red (RGB)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


@pytest.mark.parametrize("fmt", ["avi", "mp4"])
def test_backends_agree(request, fmt):
    path = request.getfixturevalue(fmt)
    a = read_frames(path, "uniform:6", backend="decord").astype(int)
    b = read_frames(path, "uniform:6", backend="opencv").astype(int)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 1.0


def test_auto_falls_back_to_opencv(avi, monkeypatch):
    """Without PyAV, auto uses decord; without either, OpenCV; each still returns the right frames."""
    monkeypatch.setattr(decode_module, "_pyav", lambda: None)
    monkeypatch.setattr(decode_module, "_DecordVideo", _only(decode_module._DecordVideo, seen := []))
    assert level(read_frames(avi, [1, 2])) == [1, 2] and seen == ["decord"]
    with pytest.raises(ValueError, match="PyAV cannot be imported"):
        read_frames(avi, 1, backend="pyav")
    monkeypatch.setattr(decode_module, "_decord", lambda: None)
    monkeypatch.setattr(decode_module, "_OpenCVVideo", _only(decode_module._OpenCVVideo, seen))
    assert level(read_frames(avi, [1, 2])) == [1, 2] and seen == ["decord", "opencv"]
    with pytest.raises(ValueError, match="decord cannot be imported"):
        read_frames(avi, 1, backend="decord")


def _only(cls, seen):
    """``cls``, noting in ``seen`` each time a reader of it is made."""
    def make(*args, **kwargs):
        seen.append(cls.backend)
        return cls(*args, **kwargs)
    return make


def test_more_frames_than_one_decord_batch(avi):
    wanted = list(range(29, -1, -1)) + [0, 29]  # 32 frames in reverse order, more than a chunk after dedup
    assert level(read_frames(avi, wanted)) == wanted


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_info(avi, backend):
    info = video_info(avi, backend=backend)
    assert (info.num_frames, info.width, info.height) == (30, 64, 48)
    assert info.fps == pytest.approx(25)
    assert info.duration == pytest.approx(30 / 25)


def test_overreported_frame_count_is_corrected(avi, tmp_path):
    # A truncated AVI keeps its index: decord reports frames it cannot decode. Count and last frame must be real.
    data = open(avi, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    import decord
    reported = len(decord.VideoReader(str(cut)))
    info = video_info(cut)
    assert info.num_frames < reported
    assert info.num_frames == video_info(cut, backend="opencv").num_frames
    last = read_frames(cut, -1)
    assert level(last) == [info.num_frames - 1]


def test_sample_video_ships():
    info = video_info(sample_video())
    assert (info.width, info.height, info.fps) == (320, 240, 25)
    assert info.num_frames >= 25


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="no/such.avi"):
        read_frames("no/such.avi")


@pytest.mark.parametrize("backend", BACKENDS)
def test_not_a_video(tmp_path, backend):
    bad = tmp_path / "notes.avi"
    bad.write_bytes(b"this is not a video " * 100)
    with pytest.raises(ValueError, match="not a decodable video|no decodable frames"):
        read_frames(bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_video(tmp_path, backend):
    empty = write_video(tmp_path / "empty.avi", np.zeros((0, 48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"empty|no decodable frames|not a decodable video"):
        video_info(empty, backend=backend)
    zero = tmp_path / "zero.avi"
    zero.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_frames(zero, backend=backend)


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        read_frames(tmp_path)


@pytest.mark.parametrize("index", [30, -31, [0, 40]])
def test_index_out_of_range(avi, index):
    with pytest.raises(IndexError, match=r"valid indices are -30\.\.29"):
        read_frames(avi, index)


@pytest.mark.parametrize("selection", ["first", "uniform:0", "uniform:x", [], [1.5], "7", True])
def test_bad_selection(selection):
    with pytest.raises(ValueError, match="frame selection|uniform:N"):
        resolve_indices(selection, 10)


def test_unknown_backend(avi):
    with pytest.raises(ValueError, match="allowed: auto, pyav, decord, opencv"):
        read_frames(avi, backend="ffmpeg")


def test_uniform_more_than_frames():
    with pytest.warns(UserWarning, match="asks for 50 frames but the video has 5"):
        assert resolve_indices("uniform:50", 5).tolist() == [0, 1, 2, 3, 4]


def test_data_folder_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADECLIP_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GRADECLIP_DATA"):
        sample_video()
    (tmp_path / "sample_walk.avi").write_bytes(b"x")
    assert sample_video() == str(tmp_path / "sample_walk.avi")
    import gradeclip
    with pytest.raises(FileNotFoundError, match="shapes_clip.pt not found"):
        gradeclip.shapes_model()


def test_index_follows_a_file_rewritten_in_place(tmp_path):
    """A file rewritten under the same name with other content (fewer frames, in reverse order, its old
    modification time restored as `cp -p` or rsync would) is read afresh: its new count, its new frames. Catches a
    frame index cached by path alone (it returned the old 30 frames' count and positions)."""
    import os

    from conftest import numbered_frames

    path = write_video(tmp_path / "rewritten.avi", numbered_frames(30))
    assert video_info(path).num_frames == 30 and level(read_frames(path, [0, 5])) == [0, 5]
    stat = os.stat(path)
    write_video(path, numbered_frames(30)[::-1][:20])  # frame i now shows level 29 - i
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert video_info(path).num_frames == 20
    assert level(read_frames(path, [0, 5, -1])) == [29, 24, 10]
