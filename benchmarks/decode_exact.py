"""Frame-exact decoding: what random access costs, as ratios measured in one run.

1. A 1,500-frame MPEG-4 part 2 AVI with B-frames and a keyframe every 12 frames (320x240, CASIA-B's kind of
   file): reading 16 evenly spaced frames (index built from scratch) against one full sequential decode to RGB.
   Target: <= 0.3. The same with one keyframe for the whole file: at most one sequential pass (<= ~1.0). And an
   Xvid AVI with packed B-frames (CASIA-B's codec), whose index needs one full decode: first and later reads.
2. Files decord already read exactly (H.264 MP4, MJPEG AVI): the new default path (PyAV index + seek) against
   today's decord path (decord reader with its end-of-file probe), 16 evenly spaced frames. Target: <= 1.1.
3. 4K against 1080p: decoding 5 frames for explaining (reduced to 1920 px while decoding) and the peak memory of
   the frames, 1 s clips; then ``explain_video`` of 1 frame with a random CLIP of ViT-B/32's shape (no weights
   needed), whose cost should be about the same for both.
4. The paths other than the PyAV seek, 1,500 frames of 320x240: the full-decode fallback (H.264 and MPEG-2 in TS,
   interlaced MPEG-2 TS), the forward read (APNG), and an MP4 cut by stream copy (edit list): which path the index
   takes, then 16 evenly spaced frames, first read (index built) and later reads, against one full decode.

Run: ``python benchmarks/decode_exact.py`` (about two minutes on 2 cores; ``--parts 4`` for one part). Medians of
``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def _ffmpeg(path, source, *args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", source, *args, str(path)], check=True)
    return str(path)


def _median(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fresh():
    from gradeclip.io import index

    index._cache.clear()  # every measured read builds its index from scratch


def _sequential(path):
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")


def _new(path, count=16):
    from gradeclip import read_frames

    _fresh()
    return read_frames(path, f"uniform:{count}")


def _new_cached(path, count=16):
    from gradeclip import read_frames

    return read_frames(path, f"uniform:{count}")  # the index from an earlier read of this file, in this process


def _today(path, count=16):
    from gradeclip.io.decode import _DecordVideo

    video = _DecordVideo(path)  # as before this change: decord, its end-of-file probe, get_batch
    try:
        return video.read(np.linspace(0, video.num_frames - 1, count).round().astype(np.int64))
    finally:
        video.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = "testsrc2=size=320x240:rate=25:duration=60"  # 1,500 frames
        if "4" in args.parts:
            _other_paths(tmp, src, args.repeat)
        if args.parts == "4":
            return
        avi = _ffmpeg(tmp / "bframes.avi", src, "-c:v", "mpeg4", "-bf", "2", "-g", "12", "-q:v", "4")
        one_key = _ffmpeg(tmp / "onekey.avi", src, "-c:v", "mpeg4", "-bf", "2", "-g", "1500", "-q:v", "4")
        xvid = _ffmpeg(tmp / "xvid.avi", src, "-c:v", "libxvid", "-bf", "2", "-g", "12", "-q:v", "4")
        h264 = _ffmpeg(tmp / "h264.mp4", src, "-c:v", "libx264", "-preset", "veryfast")
        mjpeg = _ffmpeg(tmp / "mjpeg.avi", src, "-c:v", "mjpeg", "-q:v", "5")

        print("1. MPEG-4 part 2 AVI, B-frames, 1,500 frames, 320x240: 16 evenly spaced frames vs a full decode")
        for name, path, target in [("keyframe every 12", avi, 0.3), ("one keyframe", one_key, 1.05)]:
            full = _median(lambda: _sequential(path), args.repeat)
            new = _median(lambda: _new(path), args.repeat)
            print(f"   {name:18s} full decode {full:6.3f} s   16 frames {new:6.3f} s   ratio {new / full:5.3f}  "
                  f"(target <= {target})")

        full = _median(lambda: _sequential(xvid), args.repeat)
        first = _median(lambda: _new(xvid), args.repeat)
        later = _median(lambda: _new_cached(xvid), args.repeat)
        print(f"   Xvid, packed B-frames (its timestamps cannot be trusted, so the index is one full decode): full "
              f"decode {full:6.3f} s   16 frames, first read {first:6.3f} s (ratio {first / full:5.3f}), later "
              f"reads {later:6.3f} s (ratio {later / full:5.3f})")

        print("2. files decord already read exactly: new default path vs today's decord path, 16 frames")
        for name, path in [("H.264 MP4", h264), ("MJPEG AVI", mjpeg)]:
            today = _median(lambda: _today(path), args.repeat)
            new = _median(lambda: _new(path), args.repeat)
            same = np.array_equal(_today(path), _new(path))
            print(f"   {name:10s} today {today:6.3f} s   new {new:6.3f} s   ratio {new / today:5.3f}  "
                  f"(target <= 1.1; same frames: {same})")

        print("3. 4K vs 1080p, 1 s clips: 5 evenly spaced frames decoded for explaining (max_side 1920)")
        from gradeclip import read_frames
        from gradeclip.io.frames import MAX_SIDE
        for name, size in [("1080p", "1920x1080"), ("4K", "3840x2160")]:
            path = _ffmpeg(tmp / f"{name}.mp4", f"testsrc2=size={size}:rate=25:duration=1", "-c:v", "libx264",
                           "-preset", "ultrafast")
            _fresh()
            tracemalloc.start()
            start = time.perf_counter()
            frames = read_frames(path, "uniform:5", max_side=MAX_SIDE)
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
            tracemalloc.stop()
            print(f"   {name:5s} {seconds:6.3f} s   frames {frames.shape}   peak numpy memory {peak:6.1f} MiB")
            explain_seconds = _median(lambda: _explain(path), 1)
            print(f"   {name:5s} explain_video, 1 frame, random ViT-B/32-shaped CLIP: {explain_seconds:6.2f} s")


def _other_paths(tmp, src, repeat):
    from gradeclip.io.index import build_index

    full_mp4 = _ffmpeg(tmp / "full.mp4", src, "-c:v", "libx264", "-preset", "veryfast", "-g", "25")
    cut = tmp / "cut.mp4"
    import imageio_ffmpeg
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-ss", "1.3", "-i", full_mp4,
                    "-c", "copy", str(cut)], check=True)
    files = {
        "H.264 in TS": _ffmpeg(tmp / "h264.ts", src, "-c:v", "libx264", "-preset", "veryfast", "-g", "25"),
        "MPEG-2 TS": _ffmpeg(tmp / "mpeg2.ts", src, "-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-q:v", "4"),
        "interlaced MPEG-2 TS": _ffmpeg(tmp / "interlaced.ts", src, "-vf", "setfield=tff", "-c:v", "mpeg2video",
                                        "-flags", "+ilme+ildct", "-g", "12", "-q:v", "4"),
        "APNG": _ffmpeg(tmp / "clip.apng", src.replace("duration=60", "duration=12"), "-f", "apng"),
        "MP4 cut by stream copy": str(cut),
    }
    print("4. other paths: 16 evenly spaced frames, first read (index built) and later reads, vs one full decode")
    for name, path in files.items():
        _fresh()
        index = build_index(path)
        how = "forward from the start" if index.mode == "sequential" and not len(index.key_frames) else \
            "fallback (full-decode index, seek + count)" if index.mode == "sequential" else "seek"
        full = _median(lambda: _sequential(path), repeat)
        first = _median(lambda: _new(path), repeat)
        later = _median(lambda: _new_cached(path), repeat)
        print(f"   {name:22s} {index.num_frames:5d} frames, {how}: full decode {full:6.3f} s   first read "
              f"{first:6.3f} s ({first / full:4.2f}x)   later reads {later:6.3f} s ({later / full:4.2f}x)")


def _explain(path):
    import torch
    from clip.model import CLIP

    from gradeclip import explain_video

    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12).float().eval()
    _fresh()
    explain_video(model, path, ["a test pattern"], count=1, progress=False)


if __name__ == "__main__":
    main()
