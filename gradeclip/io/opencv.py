"""The OpenCV backend: forward decoding from the start (OpenCV's seeking is not frame-exact), frames counted by
grabbing them. OpenCV applies the rotation flag itself, as FFmpeg does; with the PyAV index at hand, the times,
size and expected count are FFmpeg's."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np


class _OpenCVVideo:
    backend = "opencv"

    def __init__(self, path: str, index=None):
        import cv2

        from .native_stderr import native_stderr_silenced

        self.cv2 = cv2
        self.path = path
        with native_stderr_silenced():
            cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise ValueError(f"{path} is not a decodable video (OpenCV cannot open it)")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.listed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # what the container claims
        self.declared_frames = (self.listed or None) if index is None else index.declared
        cap.release()
        self.num_frames = self._count()
        self.times = np.arange(self.num_frames) / (self.fps or 1.0)
        if index is not None:  # true times; OpenCV applies the rotation flag itself, as FFmpeg does
            self.fps, self.width, self.height = index.avg_fps, index.width, index.height
            self.times = index.times[: self.num_frames]
            self.listed = index.num_frames  # the frames FFmpeg decodes, not the container's estimate

    def _count(self) -> int:
        # OpenCV's CAP_PROP_FRAME_COUNT is an estimate; counting grabbed frames is exact.
        cap = self.cv2.VideoCapture(self.path)
        n = 0
        while cap.grab():
            n += 1
        cap.release()
        return n

    def scan(self, wanted: np.ndarray) -> Iterator[Tuple[int, Optional[np.ndarray]]]:
        """Decode from the start (OpenCV's seeking is not frame-exact), yielding ``(index, frame)`` for each wanted
        index in sorted order; where the decoder stops, ``(index, None)`` and the end."""
        wanted = set(wanted.tolist())
        cap = self.cv2.VideoCapture(self.path)
        try:
            for index in range(max(wanted) + 1):
                ok = cap.grab()
                if ok and index in wanted:
                    ok, bgr = cap.retrieve()
                    if ok:
                        yield index, self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB)
                if not ok:
                    yield index, None
                    return
        finally:
            cap.release()

    def read(self, indices: np.ndarray) -> np.ndarray:
        found = dict(self.scan(np.unique(indices)))
        missing = sorted(i for i in set(indices.tolist()) if found.get(i) is None)
        if missing:
            raise ValueError(f"{self.path}: could not decode frame {missing[0]}")
        return np.stack([found[i] for i in indices.tolist()])

    def close(self):
        pass


def _opencv_frame(path: str, index: int):
    """Frame ``index`` decoded by OpenCV on its own (seek, then read), uint8 RGB, or None."""
    import cv2

    from .native_stderr import native_stderr_silenced

    with native_stderr_silenced():
        cap = cv2.VideoCapture(path)
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = cap.read()
        cap.release()
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None else None
