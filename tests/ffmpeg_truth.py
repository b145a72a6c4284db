"""Test videos made with the FFmpeg binary that imageio-ffmpeg ships, and FFmpeg's own sequential decode of them
(raw RGB and presentation times), the truth that frame-exact reading is checked against."""
import re
import subprocess

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
SOURCE = ["-f", "lavfi", "-i"]  # testsrc2: a moving pattern with a frame counter, every frame different


def encoders():
    out = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return {line.split()[1] for line in out.splitlines()[10:] if len(line.split()) > 1}


def make(path, source, *args):
    """Run FFmpeg on a lavfi ``source`` with output options ``args``; returns ``path`` as str."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *SOURCE, source, *args, str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return str(path)


def truth(path):
    """FFmpeg's decode of ``path``: frames (N, H, W, 3) uint8 RGB as FFmpeg displays them (rotation applied) and
    their presentation times in seconds (N,) relative to the first presented frame (showinfo's ``pts_time`` of
    each frame with the container's own timestamps kept, less the first frame's: ffprobe's times less the first),
    every decoded frame kept (no frame-rate conversion)."""
    probe = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-frames:v", "1",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True)
    size = re.search(rb"Output #0.*?Video: rawvideo.*?, (\d+)x(\d+)", probe.stderr, re.S)
    width, height = int(size.group(1)), int(size.group(2))
    run = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-copyts", "-i", str(path), "-map", "0:v:0",
                          "-fps_mode", "passthrough", "-vf", "showinfo", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], capture_output=True)
    frames = np.frombuffer(run.stdout, np.uint8).reshape(-1, height, width, 3)
    times = np.array([float(t) for t in re.findall(rb"pts_time:\s*(-?[\d.]+)", run.stderr)])
    assert len(times) == len(frames)
    return frames, times - times[0] if len(times) else times
