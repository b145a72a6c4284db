"""Video decoding backends: PyAV (FFmpeg, frame-exact, the default), decord (where it is exact) and OpenCV.

``open_video(path, backend)`` returns an object with ``num_frames`` (frames that really decode), ``fps`` (average),
``times`` (N,) presentation times in seconds from the first frame, ``width``, ``height`` (as displayed),
``read(indices) -> (N, H, W, 3) uint8 RGB`` and ``close()``. Every backend returns FFmpeg's i-th decoded frame for
index i, rotated as FFmpeg displays it: the PyAV index (``index.py``) says where each frame is; decord is used only
on files where its seek was measured exact (H.264/HEVC/VP9/MJPEG in MP4/MOV/MKV/WebM) and its frame count and
timestamps agree with the index and the file has no open GOP (decord's seek returns other frames there), PyAV
elsewhere; OpenCV decodes forward from the start and refuses interlaced video (its conversion returns blank pictures
for it). Every reader also has ``declared_frames``: the count the container declares (None where it declares none).
The decord backend guards decord's known problems: buffers that grow over repeated ``get_batch`` calls and errors
that its threaded decoder reports on the good neighbours of a corrupt frame.
"""
from __future__ import annotations

import os
import re

from typing import List, Tuple, Union

import numpy as np

from .native_stderr import native_stderr_silenced
from .opencv import _OpenCVVideo, _opencv_frame

BACKENDS = ("auto", "pyav", "decord", "opencv")
# decord's random access was measured frame-exact for these codecs in these containers (issue 12's probe); with
# B-frames in AVI, or MPEG-4 part 2 anywhere, its seek returns other frames' pictures.
_DECORD_EXACT_CODECS = {"h264", "hevc", "vp9", "mjpeg"}
_DECORD_EXACT_CONTAINERS = ("mov", "mp4", "matroska", "webm")
_CHUNK = 32  # frames per decord get_batch call; small batches keep decord's buffers from growing
_PROBE_BACK = 16  # how far back from the reported end we look for a decodable last frame


def _decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


def _pyav():
    try:
        import av
    except ImportError:
        return None
    return av


def _pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "pyav" if _pyav() is not None else "decord" if _decord() is not None else "opencv"
    if backend == "decord" and _decord() is None:
        raise ValueError("backend 'decord' asked for, but decord cannot be imported; install decord or decord2")
    if backend == "pyav" and _pyav() is None:
        raise ValueError("backend 'pyav' asked for, but PyAV cannot be imported; install av")
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
    backend = "decord"

    def __init__(self, path: str, index=None):
        decord = _decord()
        with native_stderr_silenced():
            try:
                self.reader = decord.VideoReader(path, ctx=decord.cpu(0))
            except Exception as err:  # decord raises RuntimeError or its own DECORDError
                raise ValueError(f"{path} is not a decodable video ({_first_line(err)})") from None
            self.path = path
            self.fps = float(self.reader.get_avg_fps())
            self.num_frames = index.num_frames if index is not None else self._usable_length()
            self.declared_frames = index.declared if index is not None else (len(self.reader) or None)
        self.rotation, self.index = (index.rotation if index is not None else 0), index
        if index is None:
            self.reopen()  # probing may leave the decoder mid-error
            self.times = np.arange(self.num_frames) / (self.fps or 1.0)
            self.height, self.width = self.read(np.array([0]))[0].shape[:2] if self.num_frames else (0, 0)
        else:
            self.fps, self.times, self.width, self.height = index.avg_fps, index.times, index.width, index.height

    def _decodes(self, index: int) -> bool:
        try:
            self.reader[index]
            return True
        except Exception:
            pass
        try:
            self.read_one(index)
            return True
        except ValueError:
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

    def read_one(self, index: int) -> np.ndarray:
        """One frame, decoded on its own: a fresh decord reader, then OpenCV. decord's threaded decoder reads
        ahead, so a corrupt frame can fail a read of a good neighbour, at random; a fresh reader or OpenCV's
        single-frame decode tells the frame that is really bad. ValueError when neither decodes it."""
        decord = _decord()
        try:
            with native_stderr_silenced():
                reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
                try:
                    return self._rotated(reader[index].asnumpy()[None])[0]
                finally:
                    del reader
        except Exception as err:
            reason = _first_line(err)
        if self.index is not None:  # PyAV decodes the frame exactly; OpenCV's seek is not frame-exact
            from .pyav import PyAVVideo
            return PyAVVideo(self.index).read(np.array([index]))[0]
        frame = _opencv_frame(self.path, index)
        if frame is None:
            raise ValueError(f"{self.path}: could not decode frame {index} ({reason})")
        return frame

    def read_each(self, chunk: List[int]) -> List[Tuple[int, Union[np.ndarray, ValueError]]]:
        """``(index, frame)`` for each of at most ``_CHUNK`` sorted indices, or ``(index, ValueError)`` for a frame
        that does not decode: one get_batch call, frame by frame only when that call fails."""
        try:
            with native_stderr_silenced():
                return list(zip(chunk, self._rotated(self.reader.get_batch(chunk).asnumpy())))
        except Exception:
            self.reopen()  # its decoder state is unreliable after an error
        results = []
        for index in chunk:
            try:
                results.append((index, self.read_one(index)))
            except ValueError as err:
                results.append((index, err))
        return results

    def _rotated(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) turned as FFmpeg displays them (decord ignores the rotation flag)."""
        return np.ascontiguousarray(np.rot90(frames, self.rotation // 90, axes=(1, 2))) if self.rotation else frames

    def read(self, indices: np.ndarray) -> np.ndarray:
        unique = np.unique(indices)
        frames = []
        for start in range(0, len(unique), _CHUNK):
            for _, frame in self.read_each(unique[start:start + _CHUNK].tolist()):
                if isinstance(frame, ValueError):
                    raise frame
                frames.append(frame)
        return np.stack(frames)[np.searchsorted(unique, indices)]

    def reopen(self):
        """A fresh reader: decord's buffers grow over many get_batch calls on one reader."""
        del self.reader
        with native_stderr_silenced():
            self.reader = _decord().VideoReader(self.path, ctx=_decord().cpu(0))

    def close(self):
        del self.reader


def _first_line(err: Exception) -> str:
    # decord prefixes its messages with "[hh:mm:ss] /source/file.cc:NN: "; keep only what it says
    text = [re.sub(r"\[[\d:]+\] \S+:\d+: ", "", line) for line in str(err).strip().splitlines()]
    return text[0][:200] if text else type(err).__name__


def reduce_frames(frames: np.ndarray, max_side) -> np.ndarray:
    """(N, H, W, 3) uint8 reduced by area interpolation so that the longer side is at most ``max_side`` (for the
    decord and OpenCV backends; PyAV reduces while it converts)."""
    from .index import shape_after

    width, height = shape_after(frames.shape[2], frames.shape[1], max_side)
    if (width, height) == (frames.shape[2], frames.shape[1]):
        return frames
    import cv2
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def _decord_exact(index, path: str) -> bool:
    """True when decord reads this file frame-exactly: a codec and container where its seek was measured exact,
    timestamps the index verified, no rotation flag (decord returns wrongly sized arrays there), no open GOP
    (measured: 5 of 100 single reads wrong on open-GOP H.264, 7 of 75 on x265 HEVC; 0 of 100 on closed GOPs with
    or without a B-pyramid), and decord's own frame count and timestamps equal to the index's."""
    if index.mode != "seek" or index.rotation or index.failed or index.open_gop \
            or index.codec not in _DECORD_EXACT_CODECS \
            or not any(name in _DECORD_EXACT_CONTAINERS for name in index.container.split(",")):
        return False
    decord = _decord()
    try:
        with native_stderr_silenced():
            reader = decord.VideoReader(path, ctx=decord.cpu(0))
            stamps = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0] if len(reader) else np.zeros(0)
            del reader
    except Exception:
        return False
    if len(stamps) != index.num_frames or not len(stamps):
        return False  # decord's times count from its first frame's timestamp, as the index's do
    return bool(np.all(np.abs((stamps - stamps[0]) - index.times) < 1e-3))


def open_video(path, backend: str = "auto", *, max_side=None):
    """A reader for ``path`` (see the module docstring). ``max_side``: with PyAV, frames are reduced while they
    are converted so that their longer side is at most this many pixels (None: full size)."""
    path = _check_path(path)
    backend = _pick_backend(backend)
    index = None
    if _pyav() is not None:
        from .index import build_index
        index = build_index(path)
    if backend == "opencv" and index is not None and index.interlaced:
        raise ValueError(f"{path}: interlaced video ({index.codec.upper()}), which OpenCV's decoder returns as blank "
                         f"pictures; use backend 'pyav' (or 'auto')")
    if backend == "pyav" or (backend == "decord" and index is not None and not _decord_exact(index, path)):
        from .pyav import PyAVVideo
        video = PyAVVideo(index, max_side=max_side)
    else:
        video = _DecordVideo(path, index) if backend == "decord" else _OpenCVVideo(path, index)
    if video.backend == "opencv" and index is not None and index.dropped and video.num_frames < index.num_frames:
        video.close()  # dropped frames (Theora's empty packets) end OpenCV's reading; damage ends it too (reported)
        raise ValueError(f"{path}: OpenCV's decoder stops after {video.num_frames} of the {index.num_frames} frames "
                         f"FFmpeg decodes ({index.codec.upper()}); use backend 'pyav' (or 'auto')")
    if video.num_frames == 0:
        video.close()
        if index is not None and index.num_frames:
            codec = {"libdav1d": "AV1", "libaom-av1": "AV1"}.get(index.codec, index.codec.upper())
            raise ValueError(f"{path}: {codec} is not supported by OpenCV's decoders here; backend 'pyav' or "
                             f"'auto' reads it")
        raise ValueError(f"{path} contains no decodable frames")
    return video


