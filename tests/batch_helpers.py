"""Shared by the batch tests: one local Ray for the test session, and generated videos (whole, cut, corrupted)."""
import csv
import os
import subprocess

import numpy as np
import pytest

from conftest import write_video


@pytest.fixture(scope="session")
def ray_address():
    """One private local Ray for the whole session (its start-up is slow), started as `batch` starts it (127.0.0.1
    only, no dashboard, retried under load, watched), 2 CPUs; it and all its processes end with the session."""
    pytest.importorskip("ray")  # ray is an optional extra; requirements.txt installs it for the tests
    import ray

    from gradeclip.batch.engine import private_ray

    with private_ray(num_cpus=2):
        yield ray.get_runtime_context().gcs_address


def moving_disc(n=12, h=48, w=64, seed=0, radius=7):
    """(n, h, w, 3) uint8 RGB frames of a red disc moving right and down on grey, and (n, h, w) bool masks of it;
    ``seed`` shifts the path so that videos differ."""
    yy, xx = np.mgrid[:h, :w]
    frames = np.full((n, h, w, 3), 90, np.uint8)
    masks = np.zeros((n, h, w), bool)
    for t in range(n):
        cx, cy = 12 + 3 * t + seed % 5, 10 + 2 * t + (seed * 3) % 7
        masks[t] = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
        frames[t][masks[t]] = (230, 20, 20)
        frames[t, :, : 4 + seed % 3] = (20, 20, 200)  # a blue band whose width differs per video
    return frames, masks


def ffmpeg_exe():
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_mp4(path, frames, gop=4):
    """An H.264 MP4 with its index at the front (``+faststart``), so that a cut copy still declares its frames."""
    avi = str(path) + ".tmp.avi"
    write_video(avi, frames)
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", avi, "-c:v", "libx264", "-g", str(gop),
                    "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)], check=True)
    os.remove(avi)
    return str(path)


def cut(source, target, size):
    """Copy the first ``size`` bytes of ``source`` (a fraction of its length when < 1) to ``target``."""
    data = open(source, "rb").read()
    n = int(len(data) * size) if size < 1 else int(size)
    with open(target, "wb") as f:
        f.write(data[:n])
    return str(target)


def corrupt_stretch(source, target, start=0.4, stop=0.55, seed=0):
    """Copy ``source`` with the bytes between fractions ``start`` and ``stop`` of its length replaced by noise."""
    data = bytearray(open(source, "rb").read())
    a, b = int(len(data) * start), int(len(data) * stop)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    with open(target, "wb") as f:
        f.write(bytes(data))
    return str(target)


def decoded_count(path):
    """How many frames FFmpeg itself decodes from ``path`` (a ``framemd5`` line per decoded frame)."""
    run = subprocess.run([ffmpeg_exe(), "-v", "quiet", "-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"],
                         capture_output=True, text=True)
    return sum(1 for line in run.stdout.splitlines() if line and not line.startswith("#"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
