"""Frame-exact decoding: every backend returns FFmpeg's own decode of the frame asked for, with its true time.

Truth is the FFmpeg binary's sequential decode to raw RGB (``ffmpeg_truth.truth``). Files are tiny (64x48, under
2 s) and made once per test session.
"""
import subprocess

import numpy as np
import pytest

from gradeclip import read_frames, resolve_indices, stream_frames, video_info
from gradeclip.io.stream import StreamErrors

from ffmpeg_truth import encoders, make, truth

SRC = "testsrc2=size=64x48:rate=25:duration=1.6"  # 40 frames
VFR = "setpts='PTS+gte(N\\,20)*0.5/TB+gte(N\\,30)*0.37/TB'"  # gaps of 0.54 s and 0.41 s: a variable rate
BFRAMES = ["-bf", "2", "-g", "12"]

FILES = {  # name: output options
    "mpeg4_bframes.avi": ["-c:v", "mpeg4", *BFRAMES],
    "mpeg4_bframes.mp4": ["-c:v", "mpeg4", *BFRAMES],
    "h264_bframes.avi": ["-c:v", "libx264", *BFRAMES],
    "xvid_bframes.avi": ["-c:v", "libxvid", *BFRAMES],
    "h264_vfr.mkv": ["-vf", VFR, "-fps_mode", "vfr", "-c:v", "libx264", *BFRAMES],
    "h264_vfr.mp4": ["-vf", VFR, "-fps_mode", "vfr", "-c:v", "libx264", *BFRAMES],
    "rotated.mkv": ["-c:v", "libx264", "-metadata:s:v:0", "rotate=90"],
    "rotated_180.mkv": ["-c:v", "libx264"],
    "rotated_270.mkv": ["-c:v", "libx264"],
    "av1.mkv": ["-c:v", "libsvtav1", "-preset", "12"],
    "clip.gif": ["-r", "10"],
    # issue 15's kinds: an MP4 cut by stream copy (an edit list hides the frames before the cut), TS files whose
    # head was cut off mid-GOP (their first packets are frames without references), open GOPs with a B-pyramid,
    # x265 (open GOP by default), an animated PNG, interlaced MPEG-2
    "h264.mp4": ["-c:v", "libx264", *BFRAMES],
    "h264_offset.mkv": ["-c:v", "libx264", *BFRAMES, "-output_ts_offset", "0.5"],  # first frame at 0.5 s
    "h264_cut.mp4": ["-c:v", "libx264", *BFRAMES],
    "h264_headcut.ts": ["-c:v", "libx264", *BFRAMES],
    "mpeg2.ts": ["-c:v", "mpeg2video", *BFRAMES],
    "h264.ts": ["-c:v", "libx264", *BFRAMES],
    "mpeg2_headcut.ts": ["-c:v", "mpeg2video", *BFRAMES],
    "h264_opengop.mkv": ["-c:v", "libx264", "-bf", "3", "-x264-params",
                         "open-gop=1:b-pyramid=normal:keyint=12:min-keyint=12:scenecut=0"],
    "x265.mkv": ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=12:min-keyint=12"],
    "clip.apng": ["-f", "apng", "-plays", "0"],
    "h264.flv": ["-c:v", "libx264", *BFRAMES],  # its declared duration counts from 0, its first frame is at 0.08 s
    "theora.ogv": ["-c:v", "libtheora"],  # unchanged frames stored as empty packets: FFmpeg drops them
    "interlaced.ts": ["-vf", "setfield=tff", "-c:v", "mpeg2video", "-flags", "+ilme+ildct", *BFRAMES],
}
SOURCES = {"theora.ogv": SRC.replace("1.6", "3")}  # 75 frames, the last one dropped (an empty packet)
NEEDS = {"xvid_bframes.avi": "libxvid", "av1.mkv": "libsvtav1", "h264_bframes.avi": "libx264",
         "x265.mkv": "libx265", "theora.ogv": "libtheora"}


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """Each test file and FFmpeg's decode of it, made once per session: {name: (path, frames, times)}."""
    folder, have, out = tmp_path_factory.mktemp("exact"), encoders(), {}

    def get(name):
        if name not in out:
            if NEEDS.get(name, "mpeg4") not in have:
                pytest.skip(f"this FFmpeg build has no {NEEDS[name]} encoder")
            path = make(folder / f"source_{name}", SOURCES.get(name, SRC), *FILES[name])
            out[name] = (_derive(name, path, folder / name), *truth(folder / name))
        return out[name]

    return get


def _derive(name, source, target):
    """The test file ``name`` made from its encoded ``source``: rotated by a display matrix (as phones write it),
    cut by stream copy, or its head cut off at a TS packet boundary mid-GOP; else the source itself."""
    import os
    import shutil

    from ffmpeg_truth import FFMPEG

    def remux(*options):
        subprocess.run([FFMPEG, "-loglevel", "error", "-y", *options, "-c", "copy", str(target)], check=True)

    if name.startswith("rotated"):
        remux("-display_rotation", name.split("_")[1].split(".")[0] if "_" in name else "90", "-i", source)
    elif name == "h264_cut.mp4":
        remux("-ss", "0.7", "-i", source)  # keyframes at 0, 0.48, 0.96 s: the cut is mid-GOP
    elif "headcut" in name:
        data = open(source, "rb").read()
        start = (len(data) * 2 // 5) // 188 * 188
        open(target, "wb").write(data[start:])
    else:
        shutil.copyfile(source, target)
    os.remove(source)
    return str(target)


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
@pytest.mark.parametrize("name", list(FILES))
def test_every_frame_is_ffmpegs(made, name, backend):
    """Single random reads, a shuffled batch and the stream all equal FFmpeg's decode pixel for pixel, and the
    times equal FFmpeg's (showinfo's, relative to the first frame) within 1 ms. Catches decord's seek returning
    frame 27 for 37 in a B-frame AVI, a count off by one, an ignored rotation flag, width and height swapped for
    180 degrees (only 90 and 270 swap), times counted from the earliest packet on a cut MP4 or TS (-0.28 s,
    +0.48 s), an interlaced frame converted without field-aware chroma (up to 185 levels off), Theora's empty
    packets (dropped frames) sent to the decoder, which then fails every packet after them."""
    path, frames, times = made(name)
    if name == "av1.mkv" and backend == "opencv":  # OpenCV's FFmpeg has no software AV1 decoder: said so
        with pytest.raises(ValueError, match="AV1 is not supported by OpenCV's decoders here; backend 'pyav'"):
            video_info(path, backend=backend)
        return
    if name == "interlaced.ts" and backend == "opencv":  # OpenCV returns blank pictures for interlaced video
        with pytest.raises(ValueError, match=r"interlaced video \(MPEG2VIDEO\).*use backend 'pyav'") as err:
            read_frames(path, [0], backend=backend)
        assert "\n" not in str(err.value)
        return
    if name == "theora.ogv" and backend == "opencv":  # OpenCV stops at Theora's first dropped frame: said so
        with pytest.raises(ValueError, match=r"OpenCV's decoder stops after 1 of the 49 frames FFmpeg decodes "
                                             r"\(THEORA\); use backend 'pyav'"):
            video_info(path, backend=backend)
        return
    info = video_info(path, backend=backend)
    assert info.num_frames == len(frames)
    assert (info.height, info.width) == frames.shape[1:3]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(frames), 5, replace=False).tolist() + [len(frames) - 1]:
        got = read_frames(path, [i], backend=backend)[0]
        _same(got, frames[i], backend, f"{name} frame {i}")
    order = rng.permutation(len(frames))[:12]
    batch = read_frames(path, order, backend=backend)
    for got, i in zip(batch, order):
        _same(got, frames[i], backend, f"{name} batch frame {i}")
    streamed = list(stream_frames(path, every=3, batch_size=4, backend=backend))
    indices = np.concatenate([b.indices for b in streamed])
    assert indices.tolist() == list(range(0, len(frames), 3))
    for got, i in zip(np.concatenate([b.frames for b in streamed]), indices):
        _same(got, frames[i], backend, f"{name} streamed frame {i}")
    if not name.endswith(".avi"):  # AVI stores no presentation times; elsewhere they are the container's
        assert times[0] == 0 and len(info.times) == len(times)
        np.testing.assert_allclose(info.times, times, atol=1e-3)
        np.testing.assert_allclose(np.concatenate([b.times for b in streamed]), times[indices], atol=1e-3)


def _same(got, want, backend, what):
    """Bit-exact, whatever the backend (OpenCV's FFmpeg converts YUV to RGB as FFmpeg does on these files:
    measured max difference 0)."""
    assert np.array_equal(got, want), f"{what}: not FFmpeg's picture ({backend})"


def test_variable_frame_rate_times(made):
    """Duration, average rate and the variable-rate flag come from the presentation times (a VFR MKV used to
    report 25 fps and 2.0 s with times 0.48/0.96/... where the frames are at 0.88/1.88/...)."""
    for name in ("h264_vfr.mkv", "h264_vfr.mp4"):
        path, frames, times = made(name)
        info = video_info(path)
        assert info.variable_rate
        step = np.diff(times)
        assert info.duration == pytest.approx(times[-1] - times[0] + (times[-1] - times[0]) / (len(times) - 1))
        assert info.fps == pytest.approx((len(times) - 1) / (times[-1] - times[0]))
        assert step.max() > 0.5 > info.duration / len(times)
    path, *_ = made("mpeg4_bframes.mp4")
    assert not video_info(path).variable_rate


def test_truncated_file_counts_only_frames_that_decode(made, tmp_path):
    """A B-frame AVI cut at 60%: the count is what FFmpeg decodes and the last index is FFmpeg's last picture
    (it used to report one frame too many and repeat frame 55's picture for 56 and 57)."""
    path, *_ = made("mpeg4_bframes.avi")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames, _ = truth(cut)
    for backend in ("pyav", "decord", "opencv"):
        info = video_info(cut, backend=backend)
        assert info.num_frames == len(frames), backend
        _same(read_frames(cut, -1, backend=backend)[0], frames[-1], backend, f"last frame ({backend})")


@pytest.mark.parametrize("name", ["h264_vfr.mp4", "mpeg2.ts"])
def test_corrupt_stretch_gives_ffmpegs_frames(made, tmp_path, name):
    """Garbage over 400 bytes mid-file (it lands on a keyframe): FFmpeg conceals the damage with earlier pictures
    and keeps decoding; every frame, the default middle one included, is FFmpeg's picture at that time, because a
    read that would start at a damaged keyframe starts one keyframe earlier (it used to fail with decord's internal
    "Check failed: avcodec_send_packet" message). The stream reports the frames FFmpeg flags as concealed (PyAV's
    own sequential decode says which) as failed and skips them, so damage is never counted as data: the MP4
    declares and decodes 40 frames, and used to be counted complete (the TS also loses two frames whole, which its
    declared count shows). The MP4 is read by seeking, the MPEG-2 TS on the
    fallback path (here by one forward decode). Catches a concealed keyframe decoded without its history,
    and concealed frames passed on as data, on either path."""
    import av

    path, *_ = made(name)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2 // 188 * 188 + 4 if name.endswith(".ts") else len(data) // 2  # TS: after a header
    data[middle:middle + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    bad = tmp_path / f"corrupt_{name}"
    bad.write_bytes(bytes(data))
    frames, times = truth(bad)
    with av.open(str(bad)) as container:
        flagged = [i for i, frame in enumerate(container.decode(video=0)) if frame.is_corrupt]
    assert flagged  # the damage is there, and FFmpeg says where
    info = video_info(bad)
    assert (info.num_frames, info.declared_frames) == (len(frames), 40)  # the TS also loses 2 whole frames
    assert np.array_equal(read_frames(bad)[0], frames[len(frames) // 2])
    errors = StreamErrors()
    with pytest.warns(UserWarning, match=f"frame {flagged[0]} could not be decoded \\(damaged data"):
        batches = list(stream_frames(bad, errors=errors))
    got = np.concatenate([b.frames for b in batches])
    kept = [i for i in range(len(frames)) if i not in flagged]
    assert [i for i, _ in errors.failed] == flagged
    assert np.concatenate([b.indices for b in batches]).tolist() == kept and np.array_equal(got, frames[kept])


def test_undecodable_frame_keeps_its_place_and_plain_words(tmp_path):
    """An MJPEG AVI whose frame 15 is zeroed: PyAV reports frame 15 failed, in plain words, and frame 14's picture
    never stands in for it; the frames after it keep their indices."""
    from conftest import numbered_frames, write_video
    from test_frames import level

    path = write_video(tmp_path / "zeroed.avi", numbered_frames(30))
    data = bytearray(open(path, "rb").read())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG SOI markers
    data[starts[15] + 2:starts[16] - 8] = bytes(starts[16] - 8 - starts[15] - 2)  # frame 15's data, not the chunks
    open(path, "wb").write(bytes(data))
    assert level(read_frames(path, [14, 16, 29], backend="pyav")) == [14, 16, 29]
    with pytest.raises(ValueError, match=r"frame 15 could not be decoded \(FFmpeg produced no picture") as err:
        read_frames(path, [15], backend="pyav")
    assert "Check failed" not in str(err.value) and "avcodec" not in str(err.value)


def test_4k_frames_are_reduced_while_decoding(tmp_path):
    """A 3840x2160 clip read with max_side=640 comes back 640x360 (area-reduced FFmpeg picture), and full size
    without it; catches the reduction being skipped (4.5 GB for 5 frames) or the aspect swapped."""
    path = make(tmp_path / "uhd.mp4", "testsrc2=size=3840x2160:rate=25:duration=0.12", "-c:v", "libx264",
                "-preset", "ultrafast")
    full = read_frames(path, [1])
    assert full.shape == (1, 2160, 3840, 3)
    small = read_frames(path, [1], max_side=640)
    assert small.shape == (1, 360, 640, 3)
    reference = full[0].reshape(360, 6, 640, 6, 3).mean(axis=(1, 3))
    assert np.abs(small[0].astype(float) - reference).mean() < 3
    batches = list(stream_frames(path, max_side=640))
    assert batches[0].frames.shape[1:] == (360, 640, 3)
    for backend in ("decord", "opencv"):  # the same bound from every backend
        assert read_frames(path, [1], backend=backend, max_side=640).shape == (1, 360, 640, 3)


def test_4k_explained_at_the_bounded_size(model, tmp_path):
    """explain_video reduces a 4K clip to ``max_side`` before the model (input size from the reduced frame, frame
    size still the video's); catches the bound being ignored, which ran a 4K frame at native size (140 s, 2 GB)."""
    from gradeclip import explain_video
    from gradeclip.backbones.pixels import native_size

    path = make(tmp_path / "uhd.mp4", "testsrc2=size=3840x2160:rate=25:duration=0.08", "-c:v", "libx264",
                "-preset", "ultrafast")
    result = explain_video(model, path, ["a"], progress=False, max_side=256)
    assert result.frame_size == (2160, 3840)
    assert result.input_size == native_size(144, 256, 8) and result.raw.shape[2:] == (18, 32)


@pytest.mark.parametrize("selection", [2, 2.0, np.int64(2), np.float32(2.0), [2], [2.0], (2,), iter([2]),
                                       np.array([2]), range(2, 3)])
def test_whole_numbers_accepted_alike(selection):
    """One rule: ints, integer-valued floats and numpy scalars, alone or in any iterable (it used to be TypeError
    on an iterator, and 2.0 refused where [2.0] was accepted)."""
    assert resolve_indices(selection, 10).tolist() == [2]


@pytest.mark.parametrize("selection", ["3", ["3"], 2.5, [2.5], float("inf"), [float("inf")], float("nan"),
                                       True, [True], None, [None]])
def test_refused_alike(selection):
    """Strings, fractions, non-finite values, bools and None are refused with the same message (inf used to raise
    OverflowError; ['3'] was accepted while '3' was refused)."""
    with pytest.raises(ValueError, match="bad frame selection"):
        resolve_indices(selection, 10)


def test_uniform_above_frame_count_says_so():
    with pytest.warns(UserWarning, match="asks for 1000 frames but the video has 75"):
        assert len(resolve_indices("uniform:1000", 75)) == 75


@pytest.mark.parametrize("name", ["mpeg4_bframes.avi", "xvid_bframes.avi", "h264_vfr.mkv", "h264_cut.mp4",
                                  "h264_headcut.ts"])
def test_video_export_shows_the_frames_it_labels(made, name, model, tmp_path, monkeypatch):
    """explain_video then write_overlay_video: each exported picture is composed from FFmpeg's frame at the label's
    index, with its presentation time as timecode (``video --frames 5`` used to export other frames' pictures
    under the right labels, with times from the average rate). On an MP4 cut by stream copy and a TS cut mid-GOP
    the timecodes start at 0 as FFmpeg's times do (they used to read t = -0.28 s and t = 2.80 s)."""
    from gradeclip import explain_video, write_overlay_video
    from gradeclip.viz import video_export

    path, frames, times = made(name)
    result = explain_video(model, path, ["a", "b"], count=5, progress=False)
    assert result.indices.tolist() == np.linspace(0, len(frames) - 1, 5).round().astype(int).tolist()
    if not name.endswith(".avi"):
        np.testing.assert_allclose(result.times, times[result.indices], atol=1e-3)
    shown = []
    compose = video_export.compose_frame
    monkeypatch.setattr(video_export, "compose_frame",
                        lambda frame, *a, **k: shown.append((frame.copy(), a[4], a[5])) or compose(frame, *a, **k))
    write_overlay_video(result, tmp_path / "out.mp4", gif=False)
    assert [i for _, _, i in shown] == result.indices.tolist()
    for frame, time_s, index in shown:
        assert np.array_equal(frame, frames[index]), f"exported frame {index} is not FFmpeg's"
        assert time_s == result.times[result.indices.tolist().index(index)]


@pytest.mark.parametrize("name, uses_decord", [("h264_opengop.mkv", False), ("x265.mkv", False),
                                               ("h264_vfr.mkv", True), ("h264_vfr.mp4", True),
                                               ("h264_offset.mkv", True), ("rotated.mkv", False),
                                               ("h264_cut.mp4", False)])
def test_decord_only_where_its_seek_is_exact(made, name, uses_decord):
    """backend="decord" reads with decord only where the file's structure is one its seek was measured exact on
    (closed GOPs, no rotation flag), and then its count, times and every frame read on its own are FFmpeg's. On
    open GOPs (x264 open-gop with a B-pyramid, x265's default) decord returned other frames for 5-7 % of single
    reads; catches the open-GOP guard removed, decord's own count or times one frame off where it is used, and
    decord's timestamps compared without its first frame's offset (a file starting at 0.5 s never read by it)."""
    from gradeclip.io.decode import open_video

    path, frames, times = made(name)
    video = open_video(path, "decord")
    try:
        assert video.backend == ("decord" if uses_decord else "pyav")
        assert video.num_frames == len(frames)
        np.testing.assert_allclose(video.times, times, atol=1e-3)
        for i in range(len(frames)):
            _same(video.read(np.array([i]))[0], frames[i], video.backend, f"{name} frame {i}")
    finally:
        video.close()


def test_open_gop_seen_in_the_packets(made):
    """The index sees an open GOP from the packets alone (a keyframe followed in decode order by a frame shown
    before it), and only there: catches a detector that also flags closed GOPs with B-frames (decord never used)
    or that misses x265's CRA keyframes (decord's wrong frames). FFmpeg's MPEG-4 part 2 encoder makes open GOPs
    (B-frames before an I-frame reference the previous group) unless told +cgop."""
    from gradeclip.io.index import build_index

    flags = {name: build_index(made(name)[0]).open_gop
             for name in ("h264_opengop.mkv", "x265.mkv", "mpeg4_bframes.mp4", "h264_vfr.mkv", "h264_vfr.mp4")}
    assert flags == {"h264_opengop.mkv": True, "x265.mkv": True, "mpeg4_bframes.mp4": True,
                     "h264_vfr.mkv": False, "h264_vfr.mp4": False}


def test_apng_is_read_forward(made, monkeypatch):
    """APNG's keyframe flags cannot be trusted (a seek there returned frames with a black band): its index is
    built from a forward decode and every read decodes forward from the start, never seeking. Catches APNG left
    on the seek path."""
    import av.container

    from gradeclip.io.index import build_index

    path, frames, _ = made("clip.apng")
    index = build_index(path)
    assert index.mode == "sequential" and not len(index.key_frames)
    seeks = []
    original = av.container.InputContainer.seek
    monkeypatch.setattr(av.container.InputContainer, "seek", lambda self, *a, **k: seeks.append(a) or
                        original(self, *a, **k))
    _same(read_frames(path, [37], backend="pyav")[0], frames[37], "pyav", "apng frame 37")
    assert seeks == []


@pytest.mark.parametrize("name", ["h264_cut.mp4", "h264_headcut.ts", "mpeg2_headcut.ts", "interlaced.ts"])
def test_cut_files_start_at_zero_on_the_fallback_path(made, name, monkeypatch):
    """Times of a file cut mid-GOP are FFmpeg's, counted from the first frame shown, also when the index is built
    from one full decode (forced here for the MP4, which the index can otherwise read by seeking): gradeclip used
    to count slots from the earliest packet (-0.28 s on this MP4, whose first packets an edit list hides; TS heads
    whose first packets never decode). Catches the fallback's times taken from the demuxed packets."""
    from gradeclip.io import index as index_module

    path, frames, times = made(name)
    index_module._cache.clear()
    monkeypatch.setattr(index_module, "_HEAD_MAX", 0)  # the head check sees nothing: it cannot verify the pts
    index = index_module._build(path)
    assert index.mode == "sequential" and index.num_frames == len(frames)
    assert times[0] == 0 and index.times.min() >= 0
    np.testing.assert_allclose(index.times, times, atol=1e-3)


def test_declared_frames_against_decoded(made, tmp_path):
    """``declared_frames`` is what the container declares, so a damaged file shows as fewer decoded frames than
    declared: an AVI cut at 60 % (header 40, 24 decode), an MP4 with its index first and an MKV (a duration, no
    count) cut at 60 %; a TS whose
    head was cut mid-GOP declares more than decode (its first frames lack references). Every intact file declares
    exactly what decodes, with every backend (no false "partial"), the MP4 cut by stream copy included (its edit
    list hides 5 frames it still stores), a file starting at 0.5 s or 0.08 s whose declared duration counts from 0
    (MKV, FLV), and Theora's dropped frames (its last frame too: the declared end is one frame past the last frame
    held, which is rounding, not a lost frame). Catches declared_frames left None, taken from the decoded count (or the
    packets held, blind to an MKV's missing tail), duration times rate (61 for the 40-frame variable-rate MKV), or
    counting the frames an edit list hides."""
    for name in ("mpeg4_bframes.avi", "mpeg4_bframes.mp4", "h264_vfr.mkv", "h264_cut.mp4", "x265.mkv",
                 "interlaced.ts", "rotated_270.mkv", "h264_offset.mkv", "h264.flv", "theora.ogv", "clip.apng"):
        path, frames, _ = made(name)
        for backend in ("pyav", "decord", "opencv"):
            if name in ("interlaced.ts", "theora.ogv") and backend == "opencv":
                continue  # refused in one line (test_every_frame_is_ffmpegs)
            assert video_info(path, backend=backend).declared_frames == len(frames), (name, backend)
    path, frames, _ = made("h264_headcut.ts")
    assert video_info(path).declared_frames > len(frames)
    avi, *_ = made("mpeg4_bframes.avi")
    # an MKV declares no count, only its duration (in its header, before the frames)
    mkv = make(tmp_path / "h264.mkv", SRC, "-c:v", "libx264", *BFRAMES)
    mp4 = make(tmp_path / "faststart.mp4", SRC, "-c:v", "libx264", *BFRAMES, "-movflags", "+faststart")
    for source in (avi, mp4, mkv):
        data = open(source, "rb").read()
        cut = tmp_path / f"cut_{source.rsplit('/', 1)[-1]}"
        cut.write_bytes(data[: int(len(data) * 0.6)])
        decoded, _ = truth(cut)
        for backend in ("pyav", "decord", "opencv"):
            info = video_info(cut, backend=backend)
            assert info.num_frames == len(decoded) < 30, (source, backend)
            if source == mkv:  # frames held plus the declared time after the last: B-frames lost before it are
                assert len(decoded) < info.declared_frames <= 40  # not seen (39 here)
            else:
                assert info.declared_frames == 40, (source, backend)


@pytest.mark.parametrize("name", ["mpeg4_bframes.avi", "h264_bframes.avi", "xvid_bframes.avi"])
def test_avi_times_are_frame_slots(made, name):
    """AVI stores decode-order timestamps; with B-frames they are out of presentation order. Times are the sorted
    slots, i / 25 s from the first frame, and the rate is constant. Catches the demuxed times left unsorted (the
    rate then flagged variable, times running backwards) and slots counted from the second packet."""
    path, frames, _ = made(name)
    info = video_info(path)
    np.testing.assert_allclose(info.times, np.arange(len(frames)) / 25, atol=1e-6)
    assert not info.variable_rate and info.fps == pytest.approx(25)


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_without_pyav_counts_and_times_are_ffmpegs(made, backend, monkeypatch):
    """Without PyAV (no index), decord and OpenCV count frames, time them and declare a count themselves: on a
    constant-rate H.264 MP4 the count, times (slots from 0), declared count and frames equal FFmpeg's. Catches
    decord's own count or times one frame off (its over-reported length trimmed by one too many, slots from 1)."""
    from gradeclip.io import decode as decode_module

    path, frames, times = made("h264.mp4")
    monkeypatch.setattr(decode_module, "_pyav", lambda: None)
    info = video_info(path, backend=backend)
    assert (info.num_frames, info.declared_frames) == (len(frames), len(frames))
    np.testing.assert_allclose(info.times, times, atol=1e-3)
    for i in (0, 17, len(frames) - 1):
        _same(read_frames(path, [i], backend=backend)[0], frames[i], backend, f"frame {i} without PyAV")


def test_mp4_cut_by_stream_copy_is_read_by_seeking(made):
    """An MP4 cut by stream copy keeps the frames before the cut (its edit list hides them, FFmpeg's demuxer marks
    them discarded) and FFmpeg's seek there lands one keyframe early: the index leaves the hidden frames out,
    keeps their keyframe to seek from, and trusts a seek that lands early, so the file is read by seeking (the
    full-decode fallback cost 1.3-2x a full decode on the first read). Catches hidden packets counted as frames
    and an early landing distrusted."""
    from gradeclip.io.index import build_index

    path, frames, _ = made("h264_cut.mp4")
    index = build_index(path)
    assert index.mode == "seek" and index.num_frames == len(frames) and index.keys[0] < index.pts[0]
    assert np.array_equal(read_frames(path, [len(frames) - 1, 0])[::-1], frames[[0, -1]])


def test_frames_lost_in_a_ts_are_declared(made, tmp_path):
    """A corrupt stretch in an H.264 TS destroys whole packets: FFmpeg decodes 37 of the 40 frames and nothing
    fails, so only the gaps in the timestamps show the loss. In MPEG-TS/PS, whose streams run at the fixed rate
    their headers state, ``declared_frames`` counts the frames missing in those gaps (the intact file and the
    interlaced and head-cut ones declare no gap). Catches a corrupt TS counted complete (declared 37)."""
    path, *_ = made("h264.ts")
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2 // 188 * 188 + 4  # after a TS packet's header
    data[middle:middle + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.ts"
    bad.write_bytes(bytes(data))
    frames, times = truth(bad)
    slots = np.round(times * 25).astype(int)
    lost = 40 - len(frames)
    assert lost > 0 and slots[-1] == 39 and len(set(range(40)) - set(slots.tolist())) == lost
    for backend in ("pyav", "decord", "opencv"):
        info = video_info(bad, backend=backend)
        assert (info.num_frames, info.declared_frames) == (len(frames), 40), backend
    for name in ("h264.ts", "mpeg2.ts", "interlaced.ts"):
        path, frames, _ = made(name)
        assert video_info(path).declared_frames == len(frames), name
