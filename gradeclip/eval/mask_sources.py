"""The annotations a user gives for a video, read per frame as binary masks: mask images, a mask video or boxes.

Sources: a folder of binary mask images (PNG/JPG/BMP, one per frame; the frame number is the last integer in the
file name, so CASIA-B's ``001-bg-01-090-001.png`` is frame 1), a mask video (frame i masks frame i), or a COCO-style
JSON of boxes (``image_id`` is the frame index, ``bbox`` is ``[x, y, width, height]`` in frame pixels).
Numbering: a folder or JSON holding frame number 0 is 0-based; otherwise it is taken as 1-based (CASIA-B, most
image-sequence tools) unless ``first`` says so. ``open_masks`` picks the source; ``eval.annotations`` scores maps
against it.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_NUMBER = re.compile(r"(\d+)")


def frame_number(name: str) -> int:
    """The last integer in a file name without its suffix: ``001-bg-01-090-017.png`` -> 17."""
    found = _NUMBER.findall(Path(name).stem)
    if not found:
        raise ValueError(f"no frame number in mask file name {name!r}: the last integer in the name is the frame")
    return int(found[-1])


class MaskSource:
    """Per-frame binary masks of one video, read on demand.

    ``indices``: the (0-based) frame indices that have an annotation. ``mask(index, size)`` returns the (H, W) bool
    mask at frame size ``size = (H, W)``; a mask of another size is resized nearest-neighbour, and the first such
    resize is reported once (a warning, and ``resized`` holds ``(from_hw, to_hw)``).
    """

    def __init__(self, description: str, indices: Sequence[int]):
        self.description = description
        self.indices = sorted(int(i) for i in indices)
        self.resized: Optional[tuple] = None

    def _raw(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def mask(self, index: int, size) -> np.ndarray:
        import cv2

        raw = self._raw(index)
        if raw.shape != tuple(size):
            if self.resized is None:
                self.resized = (raw.shape, tuple(size))
                warnings.warn(f"{self.description}: masks are {raw.shape[1]}x{raw.shape[0]}, frames are "
                              f"{size[1]}x{size[0]}; masks resized nearest-neighbour", stacklevel=2)
            raw = cv2.resize(raw.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        return raw


class _Folder(MaskSource):
    def __init__(self, folder: Path, first: Optional[int]):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"no mask images in {folder} (looked for {', '.join(MASK_SUFFIXES)})")
        numbers: Dict[int, Path] = {}
        for path in files:
            n = frame_number(path.name)
            if n in numbers:
                raise ValueError(f"two masks for frame number {n} in {folder}: {numbers[n].name} and {path.name}")
            numbers[n] = path
        self.first = _first(first, numbers)
        self.files = {n - self.first: p for n, p in numbers.items()}
        super().__init__(f"mask folder {folder}", self.files)

    def _raw(self, index):
        import cv2

        image = cv2.imread(str(self.files[index]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"cannot read mask image {self.files[index]}")
        return image > 127


class _Video(MaskSource):
    def __init__(self, path: Path):
        from ..io.frames import video_info

        self.path = str(path)
        super().__init__(f"mask video {path}", range(video_info(self.path).num_frames))

    def _raw(self, index):
        from ..io.frames import read_frames

        return read_frames(self.path, [index])[0].mean(-1) > 127


class _Boxes(MaskSource):
    def __init__(self, path: Path, size, first: Optional[int]):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read boxes {path}: {err}") from None
        items = data.get("annotations") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a COCO-style JSON with an 'annotations' list (or a plain list)")
        boxes: Dict[int, list] = {}
        for item in items:
            try:
                boxes.setdefault(int(item["image_id"]), []).append([float(v) for v in item["bbox"]][:4])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: every annotation needs 'image_id' and 'bbox' [x, y, w, h], got {item!r}"
                                 ) from None
        self.first = _first(first, boxes)
        self.boxes = {n - self.first: b for n, b in boxes.items()}
        self.size = tuple(size)
        super().__init__(f"boxes {path}", self.boxes)

    def _raw(self, index):
        h, w = self.size
        mask = np.zeros((h, w), bool)
        for x, y, bw, bh in self.boxes[index]:
            mask[max(0, int(round(y))):int(round(y + bh)), max(0, int(round(x))):int(round(x + bw))] = True
        return mask


def _first(first: Optional[int], numbers) -> int:
    if first is None:
        return 0 if 0 in numbers else 1
    if first not in (0, 1):
        raise ValueError(f"first frame number must be 0 or 1, got {first}")
    return first


def open_masks(masks=None, *, boxes=None, frame_size=None, first: Optional[int] = None) -> MaskSource:
    """A ``MaskSource`` from ``masks`` (a folder of mask images, or a mask video) or ``boxes`` (COCO-style JSON;
    needs ``frame_size`` (H, W)). ``first``: the number of the video's first frame in the file names (0 or 1;
    default: 0 when a number 0 is present, else 1)."""
    if (masks is None) == (boxes is None):
        raise ValueError("give exactly one annotation source: masks (a folder or video) or boxes (a JSON file)")
    if boxes is not None:
        if not Path(boxes).is_file():
            raise FileNotFoundError(f"boxes file not found: {boxes}")
        return _Boxes(Path(boxes), frame_size, first)
    path = Path(masks)
    if path.is_dir():
        return _Folder(path, first)
    if path.is_file():
        return _Video(path)
    raise FileNotFoundError(f"masks not found: {masks} (give a folder of mask images or a mask video)")
