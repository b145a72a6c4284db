"""Stream a video in batches of frames, so that a long video is never held in memory.

Frames are chosen as all, every k-th or N evenly spaced, and decoded batch by batch (with PyAV, in one forward
pass per keyframe group). A frame that fails to decode is reported (index and reason, in ``StreamErrors`` and as a
warning) and skipped, never replaced by a neighbour; the frames before and after it still come through. With PyAV,
a frame that FFmpeg decodes only by concealing damaged data (flagged corrupt: its picture is made up from its
neighbours) is reported and skipped the same way. With OpenCV, whose decoder stops at a corrupt frame, the stream
ends there instead. Times are the frames' presentation times from the container, from the first frame.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..checks import positive_int
from .decode import _CHUNK, _DecordVideo, open_video, reduce_frames

_REOPEN_EVERY = 64  # batches after which the decord reader is opened afresh (its buffers grow over get_batch calls)


@dataclass
class FrameBatch:
    """A batch of decoded frames: ``indices`` (n,) int64 in the video, ``times`` (n,) seconds, ``frames``
    (n, H, W, 3) uint8 RGB."""

    indices: np.ndarray
    times: np.ndarray
    frames: np.ndarray


@dataclass
class StreamErrors:
    """Frames that could not be decoded: a list of ``(index, reason)``."""

    failed: List[Tuple[int, str]] = field(default_factory=list)


def select_indices(num_frames: int, *, every: Optional[int] = None, count: Optional[int] = None) -> np.ndarray:
    """Frame indices to explain: all (default), every ``every``-th from 0, or ``count`` evenly spaced (first and
    last included). Returns a sorted int64 array."""
    if every is not None and count is not None:
        raise ValueError("give either every (every k-th frame) or count (N evenly spaced frames), not both")
    if every is not None:
        return np.arange(0, num_frames, positive_int(every, "every"), dtype=np.int64)
    if count is not None:
        positive_int(count, "count")
        return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(np.int64))
    return np.arange(num_frames, dtype=np.int64)


def stream_frames(path, *, every: Optional[int] = None, count: Optional[int] = None,
                  indices: Optional[Sequence[int]] = None, batch_size: int = 16, backend: str = "auto",
                  errors: Optional[StreamErrors] = None, max_side: Optional[int] = None) -> Iterator[FrameBatch]:
    """Yield ``FrameBatch``es of at most ``batch_size`` frames, in order, for the selected frames of a video
    (``every``/``count`` as in ``select_indices``, or explicit sorted ``indices``).

    ``errors``: a ``StreamErrors`` that collects frames that failed to decode (they are skipped, with a warning).
    ``max_side``: frames are reduced as they are decoded so that their longer side is at most this many pixels
    (PyAV backend, area interpolation; a 4K clip then costs about what a 1080p one does); None keeps full size.
    """
    positive_int(batch_size, "batch_size")
    if max_side is not None:
        positive_int(max_side, "max_side")
    errors = errors if errors is not None else StreamErrors()
    video = open_video(path, backend, max_side=max_side)
    try:
        if indices is None:
            wanted = select_indices(video.num_frames, every=every, count=count)
        else:
            wanted = np.asarray(list(indices), dtype=np.int64)
            if wanted.ndim != 1 or not len(wanted) or np.any(np.diff(wanted) <= 0) or wanted[0] < 0 \
                    or wanted[-1] >= video.num_frames:
                raise ValueError(f"indices must be increasing frame indices in 0..{video.num_frames - 1}")
        if isinstance(video, _DecordVideo):
            reader = _batches_decord(video, wanted, batch_size, errors)
        elif video.backend == "pyav":
            reader = _batches_pyav(video, wanted, batch_size, errors)
        else:
            reader = _batches_opencv(video, wanted, batch_size, errors)
        for indices, frames in reader:
            frames = frames if video.backend == "pyav" else reduce_frames(frames, max_side)
            yield FrameBatch(indices, np.asarray(video.times, dtype=np.float64)[indices], frames)
    finally:
        video.close()


def _report(errors: StreamErrors, path, index: int, reason: str) -> None:
    errors.failed.append((index, reason))
    warnings.warn(f"{path}: frame {index} could not be decoded ({reason}); skipped")


def _batches_decord(video, wanted, batch_size, errors):
    for n, start in enumerate(range(0, len(wanted), batch_size)):
        if n and n % _REOPEN_EVERY == 0:
            video.reopen()
        good, frames = [], []
        for sub in range(start, min(start + batch_size, len(wanted)), _CHUNK):
            for index, frame in video.read_each(wanted[sub:min(sub + _CHUNK, start + batch_size)].tolist()):
                if isinstance(frame, ValueError):  # skipped, the rest of the batch kept
                    _report(errors, video.path, index, str(frame).split(": ", 1)[-1])
                else:
                    good.append(index)
                    frames.append(frame)
        if good:
            yield np.array(good, dtype=np.int64), np.stack(frames)


def _in_batches(pairs, batch_size):
    """(index, frame) pairs -> (indices (n,) int64, frames (n, H, W, 3)) batches of at most ``batch_size``."""
    indices, frames = [], []
    for index, frame in pairs:
        indices.append(index)
        frames.append(frame)
        if len(indices) == batch_size:
            yield np.array(indices, dtype=np.int64), np.stack(frames)
            indices, frames = [], []
    if indices:
        yield np.array(indices, dtype=np.int64), np.stack(frames)


def _batches_pyav(video, wanted, batch_size, errors):
    def decoded():
        for index, frame in video.scan(wanted):
            if isinstance(frame, ValueError):  # reason: what is inside "could not be decoded (...)"
                _report(errors, video.path, index, str(frame).split("could not be decoded (", 1)[-1].rstrip(")"))
                continue
            if index in video.concealed:  # a picture FFmpeg made up from its neighbours is not data
                _report(errors, video.path, index, "damaged data: FFmpeg's picture for it is concealment made up "
                                                   "from other frames")
                continue
            yield index, frame
    yield from _in_batches(decoded(), batch_size)


def _batches_opencv(video, wanted, batch_size, errors):
    def decoded():
        for index, frame in video.scan(wanted):
            if frame is None:
                _report(errors, video.path, index, "OpenCV's decoder stopped here; later frames are not read")
                return
            yield index, frame
    yield from _in_batches(decoded(), batch_size)
    if video.listed > video.num_frames and not errors.failed:
        _report(errors, video.path, video.num_frames, f"OpenCV's decoder stopped here, but the file lists "
                                                      f"{video.listed} frames; later frames are not read")
