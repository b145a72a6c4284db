"""Frames to model input: uint8 RGB frames -> normalised float pixels (the model's own mean and std), at the frame's
native aspect ratio or as the chosen input mode says (``inputs.py``)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .resize import native_size, resize_normalise  # noqa: F401 (moved to resize.py; importable from here)

# CLIP's normalisation constants (RGB), as in clip.clip._transform
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FramesLike = Union[np.ndarray, Image.Image, Sequence[Union[np.ndarray, Image.Image]]]


def as_frames(frames: FramesLike) -> np.ndarray:
    """Frames as one uint8 RGB array (N, H, W, 3).

    Accepts an array (N, H, W, 3) or (H, W, 3) of dtype uint8, a PIL image, or a list of either (all one size).
    """
    if isinstance(frames, Image.Image):
        frames = [frames]
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("no frames given: pass at least one frame")
        arrays = [np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else as_frames(f) for f in frames]
        arrays = [a[None] if a.ndim == 3 else a for a in arrays]
        sizes = {a.shape[1:3] for a in arrays}
        if len(sizes) > 1:
            raise ValueError(f"frames differ in size {sorted(sizes)}; give frames of one size")
        return np.concatenate(arrays)
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be uint8 RGB arrays or PIL images, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must have dtype uint8 (values 0..255), got {frames.dtype}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3) or (H, W, 3) (RGB), got {frames.shape}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames must not be empty, got shape {frames.shape}")
    return frames


def to_pixels(model, frames: FramesLike, *, input: Optional[str] = None, scale: float = 1.0) -> torch.Tensor:
    """Preprocess frames for a CLIP-family ViT as ``input`` says (see ``backbones/inputs.py``), as ``explain``
    does: None (default) is the model's default input (``"native"``: the frame's aspect, no crop, unless the model
    says otherwise, as the shipped shapes CLIP does with ``"model"``).

    ``model``: any model ``explain`` accepts. ``native``/``model``: each side is resized (bicubic) to the nearest
    multiple of the patch size of ``scale`` times its length (times the model's resolution over the frame's longer
    side for ``model``), then normalised with the model's own mean and std (CLIP's, or SigLIP's 0.5);
    ``library``: the library's own transform. Returns float32 (N, 3, H', W') on the model's device.
    """
    from .base import backbone_of
    from .inputs import input_view, model_pixels

    backbone = backbone_of(model)
    frames = as_frames(frames)
    return model_pixels(backbone, frames, input_view(backbone, frames.shape[1], frames.shape[2], input, scale))


def square_transform(size: int, mean, std, crop: bool = True):
    """A library's own square preprocessing: PIL image -> normalised (3, size, size) float tensor. ``crop``:
    resize the short side (bicubic) and centre-crop, as CLIP does; otherwise squash to the square, as SigLIP does."""
    from torchvision import transforms as T

    resize = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)] if crop \
        else [T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)]
    return T.Compose([*resize, lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(mean, std)])
