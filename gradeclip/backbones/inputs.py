"""The input-size choice, one spelling everywhere: how frames become the model's input, and where that input lies on
the frame.

``input="native"``: the frame's own size and aspect, times ``scale``, each side rounded to the patch grid (the
paper's and the official code's choice). ``"model"``: the frame resized so that its longer side is the model's
trained resolution (times ``scale``), aspect kept, rounded to the patch grid (a backbone with ``model_size`` says its
own: SigLIP 2 NaFlex, the grid its processor picks). ``"library"``: the library's own
preprocessing (``library_input.py``): the score is exactly the library's, the map covers the cropped region only.
``None``: the model's default (``default_input``): ``"model"`` for a model that says so (the shipped shapes CLIP,
through its JSON sidecar), else ``"native"``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .resize import native_size, resize_normalise

INPUT_MODES = ("native", "model", "library")
TOKEN_FACTOR = 4  # a token grid above this many times the trained one warns


def default_input(backbone) -> str:
    """The model's own default input mode: ``default_input`` set on the Backbone or on the library's model object
    (``load_clip`` sets it from a checkpoint's JSON sidecar), else ``"native"``."""
    mode = getattr(backbone, "default_input", None) or getattr(backbone.model, "default_input", None) or "native"
    if mode not in INPUT_MODES:
        raise ValueError(f"the model's default input {mode!r} is not one of {', '.join(INPUT_MODES)}")
    return mode


def resolve_input(backbone, input: Optional[str], scale: float = 1.0) -> str:
    """``input`` checked (None: the model's default); ``scale`` must be a positive number, and 1 with library."""
    mode = default_input(backbone) if input is None else input
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input {mode!r}; allowed: {', '.join(INPUT_MODES)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be positive (a number > 0), got {scale!r}")
    if mode == "library" and scale != 1:
        raise ValueError(f"scale {scale} cannot apply to input 'library' (the library's transform fixes the size); "
                         f"use input 'native' or 'model' to scale")
    return mode


@dataclass(frozen=True)
class InputView:
    """How frames of ``frame_size`` (H, W) reach the model: ``mode``, the model input ``size`` (H', W') in pixels,
    ``window`` (top, left, bottom, right) the part of the input that shows the frame (input pixels) and ``box``
    (top, left, bottom, right) the part of the frame the model sees (integer frame pixels; the whole frame unless
    the library crops)."""

    mode: str
    scale: float
    frame_size: Tuple[int, int]
    size: Tuple[int, int]
    window: Tuple[float, float, float, float]
    box: Tuple[int, int, int, int]
    rule: str = "bicubic to the nearest multiple of the patch size, no crop"

    def seen(self) -> np.ndarray:
        """(H, W) bool: True where the frame reaches the model."""
        mask = np.zeros(self.frame_size, bool)
        top, left, bottom, right = self.box
        mask[top:bottom, left:right] = True
        return mask

    def fit(self, raw: torch.Tensor) -> torch.Tensor:
        """Token-grid maps (N, K, h, w) resized bilinearly onto the seen part of the frame: (N, K, bh, bw)."""
        top, left, bottom, right = self.box
        target = (bottom - top, right - left)
        if self.window != (0.0, 0.0, float(self.size[0]), float(self.size[1])):  # the library padded: cut it off
            raw = _resize(raw, self.size)
            y0, x0, y1, x1 = (int(round(v)) for v in self.window)
            raw = raw[..., y0:y1, x0:x1]
        return _resize(raw, target)

    def place(self, inner: torch.Tensor) -> torch.Tensor:
        """Maps on the seen part (N, K, bh, bw) -> (N, K, H, W) at frame size, 0 where the frame is not seen."""
        top, left, bottom, right = self.box
        out = inner.new_zeros((*inner.shape[:-2], *self.frame_size))
        out[..., top:bottom, left:right] = inner
        return out

    def at(self, frame_size: Tuple[int, int]) -> "InputView":
        """The same view for frames shown at another ``frame_size`` (H, W) (decoded smaller, or a display canvas):
        the seen box scaled in proportion."""
        (h0, w0), (h, w) = self.frame_size, frame_size
        top, left, bottom, right = self.box
        box = (round(top * h / h0), round(left * w / w0), round(bottom * h / h0), round(right * w / w0))
        return replace(self, frame_size=(int(h), int(w)), box=tuple(int(v) for v in box))

    def as_json(self) -> dict:
        """What sidecars and batch records say about the model input."""
        record = {"mode": self.mode, "size_hw": list(self.size), "frame_size_hw": list(self.frame_size),
                  "resize": self.rule}
        if self.mode != "library":
            record["scale"] = self.scale
        else:
            record["seen_box_tlbr"] = list(self.box)
        return record

    def label(self) -> str:
        """One line for figure captions: ``input native 224×320 px`` (height × width)."""
        seen = "" if self.box == (0, 0, *self.frame_size) else \
            f", sees frame rows {self.box[0]}–{self.box[2]}, columns {self.box[1]}–{self.box[3]}"
        return f"input {self.mode} {self.size[0]}×{self.size[1]} px{seen}"


def _resize(maps: torch.Tensor, size) -> torch.Tensor:
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    out = F.interpolate(maps.reshape(-1, 1, h, w).float(), size=tuple(int(s) for s in size), mode="bilinear",
                        align_corners=False)
    return out.reshape(*lead, *out.shape[-2:])


def input_view(backbone, height: int, width: int, input: Optional[str] = None, scale: float = 1.0) -> InputView:
    """The ``InputView`` of frames (height, width) for ``backbone`` under ``input`` and ``scale``."""
    mode = resolve_input(backbone, input, scale)
    whole = (0, 0, height, width)
    if mode == "library":
        from .library_input import library_input

        lib = library_input(backbone)
        window, box = lib.geometry(height, width)
        box = tuple(int(round(v)) for v in box)
        size = tuple(lib.input_size(height, width))
        return InputView(mode, 1.0, (height, width), size, window, box, rule=lib.rule)
    if mode == "model" and hasattr(backbone, "model_size"):  # the model's own rule (SigLIP 2 NaFlex: its processor's)
        size = backbone.model_size(height, width, scale)
    else:
        factor = scale * (backbone.resolution / max(height, width) if mode == "model" else 1.0)
        size = native_size(height, width, backbone.patch_size, factor)
    return InputView(mode, float(scale), (height, width), size, (0.0, 0.0, float(size[0]), float(size[1])), whole)


def model_pixels(backbone, frames: np.ndarray, view: InputView) -> torch.Tensor:
    """uint8 RGB frames (N, H, W, 3) -> normalised float32 (N, 3, H', W') on the model's device, as ``view`` says."""
    if view.mode == "library":
        from .library_input import library_input

        return library_input(backbone).pixels(frames, backbone.device)

    return resize_normalise(backbone, frames, view.size)


def warn_token_count(backbone, view: InputView) -> None:
    """Warn (once per call) when the input's token grid exceeds ``TOKEN_FACTOR`` times the trained one."""
    patch = backbone.patch_size
    grid = (view.size[0] // patch, view.size[1] // patch)
    trained = (backbone.resolution // patch) ** 2
    if grid[0] * grid[1] > TOKEN_FACTOR * trained:
        side = backbone.resolution // patch
        warnings.warn(f"input {view.mode} {view.size[0]}×{view.size[1]} px (height × width) is a "
                      f"{grid[0]}×{grid[1]} token grid, {grid[0] * grid[1] / trained:.1f} times the {side}×{side} the "
                      f"model was trained at: scores at this size differ from the model's trained behaviour (input "
                      f"'model' or 'library' stays close to it)", stacklevel=3)
