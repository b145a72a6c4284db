"""Video frames: metadata and frame extraction as uint8 RGB arrays.

Decoding uses decord when it can be imported and falls back to OpenCV otherwise (decord has no wheels for macOS
arm64 or Linux aarch64; ``decord2`` is a drop-in that does). Both backends return the same frames.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .decode import open_video

Indices = Union[str, int, Sequence[int]]

def data_dir() -> Path:
    """The repository's ``data/`` folder, or ``$GRADECLIP_DATA`` when set (e.g. a clone's data/ beside a regular,
    non-editable install, as in Colab)."""
    return Path(os.environ.get("GRADECLIP_DATA") or Path(__file__).resolve().parents[2] / "data")


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video: frame count, frames per second, frame size in pixels, duration in seconds."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


def sample_video() -> str:
    """Path of the small synthetic sample video shipped in ``data/`` (320x240, 25 fps)."""
    path = data_dir() / "sample_walk.avi"
    if not path.is_file():
        raise FileNotFoundError(f"sample video not found at {path}; run `python data/make_sample_video.py` in the "
                                f"repository, or set GRADECLIP_DATA to its data/ folder")
    return str(path)


def video_info(path, *, backend: str = "auto") -> VideoInfo:
    """Metadata of the video at ``path``: ``num_frames``, ``fps``, ``width``, ``height`` and ``duration`` (s).

    ``num_frames`` counts frames that actually decode. Raises FileNotFoundError for a missing path and ValueError
    for a file that is not a decodable video or holds no frames.
    """
    video = open_video(path, backend)
    try:
        duration = video.num_frames / video.fps if video.fps > 0 else 0.0
        return VideoInfo(video.num_frames, video.fps, int(video.width), int(video.height), duration)
    finally:
        video.close()


def resolve_indices(indices: Indices, num_frames: int) -> np.ndarray:
    """Frame indices as a 1-D int64 array in ``[0, num_frames)``.

    ``indices``: ``"middle"`` (``num_frames // 2``), an int (negative counts from the end), a list of ints, or
    ``"uniform:N"`` (N evenly spaced frames, first and last included). Raises IndexError with the valid range.
    """
    if isinstance(indices, str):
        if indices == "middle":
            return np.array([num_frames // 2], dtype=np.int64)
        if indices.startswith("uniform:"):
            count = indices.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"bad frame selection {indices!r}: 'uniform:N' needs a whole number N >= 1")
            count = min(int(count), num_frames)
            return np.unique(np.linspace(0, num_frames - 1, count).round().astype(np.int64))
        raise ValueError(f"bad frame selection {indices!r}; allowed: 'middle', 'uniform:N', an int or a list of ints")
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
        indices = [int(indices)]
    try:
        values = [int(i) for i in indices if not isinstance(i, bool) and float(i) == int(i)]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != len(indices):
        raise ValueError(f"bad frame selection {indices!r}; allowed: 'middle', 'uniform:N', an int or a list of ints")
    if not values:
        raise ValueError("empty frame selection: give at least one frame index")
    out = []
    for i in values:
        if not -num_frames <= i < num_frames:
            raise IndexError(f"frame index {i} out of range: the video has {num_frames} frames, "
                             f"valid indices are {-num_frames}..{num_frames - 1}")
        out.append(i % num_frames)
    return np.array(out, dtype=np.int64)


def read_frames(path, indices: Indices = "middle", *, backend: str = "auto") -> np.ndarray:
    """Decode frames of the video at ``path``.

    Returns an array (N, H, W, 3), dtype uint8, RGB, in the order of ``indices`` (see ``resolve_indices``).
    ``backend``: ``"auto"`` (decord if installed, else OpenCV), ``"decord"`` or ``"opencv"``.
    Raises FileNotFoundError (missing path), ValueError (not a decodable video, no frames, bad selection) and
    IndexError (index out of range, with the valid range).
    """
    video = open_video(path, backend)
    try:
        wanted = resolve_indices(indices, video.num_frames)
        return np.ascontiguousarray(video.read(wanted), dtype=np.uint8)
    finally:
        video.close()
