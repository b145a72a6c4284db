"""Video frames: metadata and frame extraction as uint8 RGB arrays.

Decoding uses decord when it can be imported and falls back to OpenCV otherwise (decord has no wheels for macOS
arm64 or Linux aarch64; ``decord2`` is a drop-in that does). Both backends return the same frames.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

Indices = Union[str, int, Sequence[int]]

BACKENDS = ("auto", "decord", "opencv")
_CHUNK = 32  # frames per decord get_batch call; small batches keep decord's buffers from growing
_PROBE_BACK = 16  # how far back from the reported end we look for a decodable last frame

SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "data" / "sample_walk.avi"


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
    if not SAMPLE_VIDEO.is_file():
        raise FileNotFoundError(
            f"sample video not found at {SAMPLE_VIDEO}; run `python data/make_sample_video.py` in the repository"
        )
    return str(SAMPLE_VIDEO)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide what decord and FFmpeg print from C++ straight to file descriptor 2 (their errors reach us as
    exceptions, which we turn into one clear message)."""
    fd = 2  # native code writes to the process's descriptor 2, whatever sys.stderr is
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


def _pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "decord" if _decord() is not None else "opencv"
    if backend == "decord" and _decord() is None:
        raise ValueError("backend 'decord' asked for, but decord cannot be imported; install decord or decord2")
    return backend


def _check_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a video")
    return path


class _DecordVideo:
    def __init__(self, path: str):
        decord = _decord()
        with _native_stderr_silenced():
            try:
                self.reader = decord.VideoReader(path, ctx=decord.cpu(0))
            except Exception as err:  # decord raises RuntimeError or its own DECORDError
                raise ValueError(f"{path} is not a decodable video ({_first_line(err)})") from None
            self.path = path
            self.fps = float(self.reader.get_avg_fps())
            self.num_frames = self._usable_length()
            self.height, self.width = self.reader[0].shape[:2] if self.num_frames else (0, 0)
            self.reader.seek(0)

    def _decodes(self, index: int) -> bool:
        try:
            self.reader[index]
            return True
        except Exception:
            return False

    def _usable_length(self) -> int:
        # decord over-reports the frame count at the end of some files: find the last frame that decodes.
        n = len(self.reader)
        for last in range(n - 1, max(n - 1 - _PROBE_BACK, -1), -1):
            if self._decodes(last):
                return last + 1
        if n == 0 or not self._decodes(0):
            return 0
        lo, hi = 0, n - 1 - _PROBE_BACK  # lo decodes; find the last decodable index by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._decodes(mid) else (lo, mid - 1)
        return lo + 1

    def read(self, indices: np.ndarray) -> np.ndarray:
        unique = np.unique(indices)
        parts = []
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start:start + _CHUNK].tolist()
            try:
                with _native_stderr_silenced():
                    parts.append(self.reader.get_batch(chunk).asnumpy())
            except Exception as err:
                raise ValueError(f"{self.path}: could not decode frames {chunk[0]}..{chunk[-1]} "
                                 f"({_first_line(err)})") from None
        frames = np.concatenate(parts)
        return frames[np.searchsorted(unique, indices)]

    def reopen(self):
        """A fresh reader: decord's buffers grow over many get_batch calls on one reader."""
        del self.reader
        with _native_stderr_silenced():
            self.reader = _decord().VideoReader(self.path, ctx=_decord().cpu(0))

    def close(self):
        del self.reader


class _OpenCVVideo:
    def __init__(self, path: str):
        import cv2

        self.cv2 = cv2
        self.path = path
        with _native_stderr_silenced():
            cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise ValueError(f"{path} is not a decodable video (OpenCV cannot open it)")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.listed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # what the container claims
        cap.release()
        self.num_frames = self._count()

    def _count(self) -> int:
        # OpenCV's CAP_PROP_FRAME_COUNT is an estimate; counting grabbed frames is exact.
        cap = self.cv2.VideoCapture(self.path)
        n = 0
        while cap.grab():
            n += 1
        cap.release()
        return n

    def read(self, indices: np.ndarray) -> np.ndarray:
        wanted = set(indices.tolist())
        found = {}
        cap = self.cv2.VideoCapture(self.path)
        for index in range(int(indices.max()) + 1):
            if not cap.grab():
                break
            if index in wanted:
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                found[index] = self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB)
        cap.release()
        missing = sorted(wanted - found.keys())
        if missing:
            raise ValueError(f"{self.path}: could not decode frame {missing[0]}")
        return np.stack([found[i] for i in indices.tolist()])

    def close(self):
        pass


def _first_line(err: Exception) -> str:
    # decord prefixes its messages with "[hh:mm:ss] /source/file.cc:NN: "; keep only what it says
    text = [re.sub(r"\[[\d:]+\] \S+:\d+: ", "", line) for line in str(err).strip().splitlines()]
    return text[0][:200] if text else type(err).__name__


def _open(path, backend: str):
    path = _check_path(path)
    backend = _pick_backend(backend)
    video = _DecordVideo(path) if backend == "decord" else _OpenCVVideo(path)
    if video.num_frames == 0:
        video.close()
        raise ValueError(f"{path} contains no decodable frames")
    return video


def video_info(path, *, backend: str = "auto") -> VideoInfo:
    """Metadata of the video at ``path``: ``num_frames``, ``fps``, ``width``, ``height`` and ``duration`` (s).

    ``num_frames`` counts frames that actually decode. Raises FileNotFoundError for a missing path and ValueError
    for a file that is not a decodable video or holds no frames.
    """
    video = _open(path, backend)
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
    video = _open(path, backend)
    try:
        wanted = resolve_indices(indices, video.num_frames)
        return np.ascontiguousarray(video.read(wanted), dtype=np.uint8)
    finally:
        video.close()
