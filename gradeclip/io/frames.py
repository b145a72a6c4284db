"""Video frames: metadata and frame extraction as uint8 RGB arrays.

The frame returned for index i is FFmpeg's i-th decoded frame, with its presentation time from the container.
Decoding goes through PyAV (FFmpeg's decoders) by default; ``backend="decord"`` uses decord on the files where its
seek is exact and PyAV elsewhere; ``backend="opencv"`` decodes forward with OpenCV (see ``decode.py``).
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Union

import numpy as np

from .decode import open_video, reduce_frames

Indices = Union[str, int, Iterable[int]]
# Frames whose longer side is above this are reduced (area interpolation, while decoding) before they are explained:
# the models run at the frame's native size, so a 4K frame would cost 4x a 1080p one for no gain in the maps.
MAX_SIDE = 1920
# File name endings taken for videos when a folder is searched (any file can still be named directly)
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".gif")

def data_dir() -> Path:
    """The repository's ``data/`` folder, or ``$GRADECLIP_DATA`` when set (e.g. a clone's data/ beside a regular,
    non-editable install, as in Colab)."""
    return Path(os.environ.get("GRADECLIP_DATA") or Path(__file__).resolve().parents[2] / "data")


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video: frame count (frames that decode), average frames per second, frame size in pixels as
    displayed (rotation applied), duration in seconds, whether the frame rate is variable, each frame's
    presentation time in seconds (``times``, a tuple of N floats) and the codec's FFmpeg name.

    ``declared_frames``: the frame count the container declares (its header, or its duration times its rate where
    it has no count), None where it declares neither; a video whose ``num_frames`` is below it is truncated or
    damaged, and callers that count data must say so rather than count it complete."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    variable_rate: bool = False
    times: tuple = ()
    codec: str = ""
    declared_frames: Optional[int] = None


def sample_video() -> str:
    """Path of the small synthetic sample video shipped in ``data/`` (320x240, 25 fps)."""
    path = data_dir() / "sample_walk.avi"
    if not path.is_file():
        raise FileNotFoundError(f"sample video not found at {path}; run `python data/make_sample_video.py` in the "
                                f"repository, or set GRADECLIP_DATA to its data/ folder")
    return str(path)


def video_info(path, *, backend: str = "auto") -> VideoInfo:
    """Metadata of the video at ``path``: ``num_frames``, ``fps``, ``width``, ``height`` and ``duration`` (s).

    ``num_frames`` counts frames that actually decode; ``fps`` is the average rate over the presentation times and
    ``duration`` the time from the first frame to the end of the last (its own interval included), so both hold for
    a variable frame rate (``variable_rate`` says so). ``times`` are presentation times relative to the first
    presented frame (edit lists applied), so never negative.

    Damaged input: ``declared_frames`` is the count the container declares (its header's frame count less the
    frames an edit list hides; where it has none, its duration times its average rate, rounded; None where it
    declares neither), with every backend. ``num_frames < declared_frames`` means frames the file promises do not
    decode (a truncated file, or a head cut mid-GOP whose first frames lack their references); frames that fail
    mid-file keep their places and are reported by the readers (``read_frames`` raises, ``stream_frames`` lists
    them in ``StreamErrors.failed``). A file is complete only when neither holds. Raises FileNotFoundError for a
    missing path and ValueError for a file that is not a decodable video or holds no frames.
    """
    from .index import fps_is_variable

    video = open_video(path, backend)
    try:
        times = np.asarray(video.times, dtype=np.float64)
        fps = float(video.fps)
        if len(times) > 1 and times[-1] > times[0]:
            duration = float(times[-1] - times[0]) * len(times) / (len(times) - 1)
        else:
            duration = video.num_frames / fps if fps > 0 else 0.0
        return VideoInfo(video.num_frames, fps, int(video.width), int(video.height), duration,
                         fps_is_variable(times), tuple(float(t) for t in times),
                         getattr(getattr(video, "index", None), "codec", ""), video.declared_frames)
    finally:
        video.close()


_SELECTION_HELP = "allowed: 'middle', 'uniform:N', a whole number or a list of whole numbers"


def _whole(value, selection) -> int:
    """``value`` as an int when it is a whole number (int, integer-valued float, numpy scalar); ValueError
    otherwise (bools, strings, fractions, inf and nan are refused)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or not isinstance(value, numbers.Real):
        raise ValueError(f"bad frame selection {selection!r}: {value!r} is not a frame index; {_SELECTION_HELP}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"bad frame selection {selection!r}: {value!r} is not a whole number; {_SELECTION_HELP}")
    return int(value)


def resolve_indices(indices: Indices, num_frames: int) -> np.ndarray:
    """Frame indices as a 1-D int64 array in ``[0, num_frames)``.

    ``indices``: ``"middle"`` (``num_frames // 2``), a whole number (negative counts from the end), any iterable of
    whole numbers, or ``"uniform:N"`` (N evenly spaced frames, first and last included; N above the frame count
    gives every frame, with a warning). Whole numbers are ints, integer-valued floats and numpy scalars, alone or
    in an iterable alike; bools, strings, fractions and non-finite values are refused with ValueError. Raises
    IndexError with the valid range.
    """
    if isinstance(indices, str):
        if indices == "middle":
            return np.array([num_frames // 2], dtype=np.int64)
        if indices.startswith("uniform:"):
            count = indices.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"bad frame selection {indices!r}: 'uniform:N' needs a whole number N >= 1")
            if int(count) > num_frames:
                warnings.warn(f"frame selection {indices!r} asks for {count} frames but the video has "
                              f"{num_frames}; using all {num_frames}")
            count = min(int(count), num_frames)
            return np.unique(np.linspace(0, num_frames - 1, count).round().astype(np.int64))
        raise ValueError(f"bad frame selection {indices!r}; {_SELECTION_HELP}")
    if isinstance(indices, np.ndarray) and indices.ndim == 0:
        indices = indices.item()
    if isinstance(indices, (numbers.Real, np.bool_)):
        values = [_whole(indices, indices)]
    else:
        try:
            items = list(indices)
        except TypeError:
            raise ValueError(f"bad frame selection {indices!r}; {_SELECTION_HELP}") from None
        values = [_whole(i, items) for i in items]
    if not values:
        raise ValueError("empty frame selection: give at least one frame index")
    out = []
    for i in values:
        if not -num_frames <= i < num_frames:
            raise IndexError(f"frame index {i} out of range: the video has {num_frames} frames, "
                             f"valid indices are {-num_frames}..{num_frames - 1}")
        out.append(i % num_frames)
    return np.array(out, dtype=np.int64)


def read_frames(path, indices: Indices = "middle", *, backend: str = "auto",
                max_side: Optional[int] = None) -> np.ndarray:
    """Decode frames of the video at ``path``: frame i is FFmpeg's i-th decoded frame, as FFmpeg displays it.

    Returns an array (N, H, W, 3), dtype uint8, RGB, in the order of ``indices`` (see ``resolve_indices``).
    ``backend``: ``"auto"`` (PyAV if installed, else decord, else OpenCV), ``"pyav"``, ``"decord"`` (decord where
    its seek is exact, PyAV elsewhere) or ``"opencv"``. ``max_side``: reduce frames while decoding so that the
    longer side is at most this many pixels (area interpolation; None: full size).
    Raises FileNotFoundError (missing path), ValueError (not a decodable video, no frames, bad selection) and
    IndexError (index out of range, with the valid range).
    """
    video = open_video(path, backend, max_side=max_side)
    try:
        wanted = resolve_indices(indices, video.num_frames)
        frames = video.read(wanted)
        frames = frames if video.backend == "pyav" else reduce_frames(frames, max_side)
        return np.ascontiguousarray(frames, dtype=np.uint8)
    finally:
        video.close()


def list_videos(path, on_skip: Optional[Callable[[Path, str], None]] = None) -> List[Path]:
    """``[path]`` for a file; for a folder, its files whose names end in ``VIDEO_SUFFIXES``, sorted (not searching
    folders inside), calling ``on_skip(entry, reason)`` for every other entry. FileNotFoundError for a missing
    path; ValueError for a folder without videos."""
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if not target.is_dir():
        return [target]
    found = []
    for entry in sorted(target.iterdir()):
        if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            found.append(entry)
        elif on_skip is not None:
            on_skip(entry, "a folder (folders inside are not searched)" if entry.is_dir() else
                    f"not a video file name (videos end in {', '.join(VIDEO_SUFFIXES)})")
    if not found:
        raise ValueError(f"no video files in {path} (looked for {', '.join(VIDEO_SUFFIXES)})")
    return found
