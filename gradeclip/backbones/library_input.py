"""The library's own preprocessing of a frame, and where its square input lies on the frame.

``input="library"`` feeds a model exactly what its library's own transform makes of the frame (openai-clip's
``clip._transform``; open_clip's ``image_transform_v2`` from the tower's ``preprocess_cfg``; transformers' image
processor), so that the score is the library's own. This module also says which rectangle of the frame that input
shows (resize + centre-crop keeps a centre rectangle; squash keeps the whole frame; open_clip's ``longest`` pads it),
so that maps can be placed back on the frame and the rest marked as not seen.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image

Box = Tuple[float, float, float, float]  # (top, left, bottom, right)


def crop_geometry(height: int, width: int, resized: Tuple[int, int], crop, rounding: str) -> Box:
    """The frame rectangle (top, left, bottom, right), float frame pixels, that a resize to ``resized`` (h, w)
    followed by a centre crop ``crop`` (h, w; None: no crop) keeps. ``rounding`` of the crop offset: ``"round"``
    (torchvision's ``CenterCrop``: ``int(round(d / 2))``) or ``"floor"`` (transformers: ``int(d / 2)``)."""
    new_h, new_w = resized
    if crop is None:
        return 0.0, 0.0, float(height), float(width)
    ch, cw = crop
    offset = (lambda d: int(round(d / 2.0))) if rounding == "round" else (lambda d: int(d / 2.0))
    top, left = offset(new_h - ch), offset(new_w - cw)
    sy, sx = height / new_h, width / new_w
    return top * sy, left * sx, (top + ch) * sy, (left + cw) * sx


def shortest_side(height: int, width: int, size: int) -> Tuple[int, int]:
    """(h, w) after a resize of the short side to ``size`` (torchvision's and transformers' rule: the long side
    becomes ``int(size * long / short)``)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


class LibraryInput:
    """One library's transform for one model: ``transform(PIL image) -> (3, S, S)`` float tensor, and
    ``geometry(height, width) -> (window, box)``: the rectangle of the model input that shows the frame (input
    pixels; all of it unless the library pads) and the rectangle of the frame it shows (frame pixels, float).
    ``input_size(height, width) -> (H', W')``: the model input's size for such a frame, (S, S) unless the library's
    size depends on the frame (SigLIP 2 NaFlex)."""

    def __init__(self, transform: Callable, geometry: Callable, size: int, rule: str,
                 input_size: Optional[Callable] = None):
        self.transform, self.geometry, self.size, self.rule = transform, geometry, size, rule
        self.input_size = input_size or (lambda height, width: (size, size))

    def pixels(self, frames: np.ndarray, device) -> torch.Tensor:
        """uint8 RGB frames (N, H, W, 3) -> float32 (N, 3, S, S) on ``device``, each through the library's transform."""
        return torch.stack([self.transform(Image.fromarray(f)).float() for f in frames]).to(device)


def _torchvision_rule(size: int, crop: bool):
    def geometry(height, width):
        whole = (0.0, 0.0, float(size), float(size))
        if not crop:
            return whole, (0.0, 0.0, float(height), float(width))
        return whole, crop_geometry(height, width, shortest_side(height, width, size), (size, size), "round")
    return geometry


def _longest_rule(size: int):
    def geometry(height, width):  # open_clip's ResizeKeepRatio(longest=1) + CenterCropOrPad
        ratio = max(height / size, width / size)
        new_h, new_w = round(height / ratio), round(width / ratio)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        return (float(top), float(left), float(top + new_h), float(left + new_w)), \
            (0.0, 0.0, float(height), float(width))
    return geometry


def _open_clip(backbone) -> LibraryInput:
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    visual = backbone.model.visual
    base = PreprocessCfg(size=backbone.resolution, mean=tuple(backbone.mean), std=tuple(backbone.std))
    cfg = PreprocessCfg(**merge_preprocess_dict(base, getattr(visual, "preprocess_cfg", None) or {}))
    size = cfg.size if isinstance(cfg.size, int) else tuple(cfg.size)
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ValueError(f"input='library' needs a square model input; this open_clip model's is {size}")
        size = size[0]
    transform = image_transform_v2(cfg, is_train=False)
    rule = cfg.resize_mode
    geometry = _longest_rule(size) if rule == "longest" else _torchvision_rule(size, rule != "squash")
    return LibraryInput(transform, geometry, size, rule)


def _hf_processor(backbone):
    processor = getattr(backbone, "image_processor", None)
    if processor is not None:
        return processor
    import transformers

    size = backbone.resolution
    if backbone.crop:  # what CLIPModel checkpoints ship: short side, then a centre crop
        return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                               image_mean=list(backbone.mean), image_std=list(backbone.std))
    return transformers.SiglipImageProcessor(size={"height": size, "width": size}, image_mean=list(backbone.mean),
                                             image_std=list(backbone.std))


def _transformers(backbone) -> LibraryInput:
    processor = _hf_processor(backbone)
    size = dict(processor.size)
    crop = dict(processor.crop_size) if getattr(processor, "do_center_crop", False) else None
    out = (crop["height"], crop["width"]) if crop else (size.get("height"), size.get("width"))
    # a library that interpolates positions at any size (CLIPSeg) takes any square input its processor makes
    side = out[0] if getattr(backbone, "library_any_size", False) and isinstance(out[0], int) else backbone.resolution
    if set(size) - {"shortest_edge", "height", "width"} or out != (side, side):
        raise ValueError(f"input='library' supports image processors that resize to 'shortest_edge' or 'height'/"
                         f"'width' and give the model's square input {side}; this one has size {size}, crop {crop}")

    def geometry(height, width):
        resized = shortest_side(height, width, size["shortest_edge"]) if "shortest_edge" in size \
            else (size["height"], size["width"])
        box = crop_geometry(height, width, resized, out if crop else None, "floor")
        return (0.0, 0.0, float(out[0]), float(out[1])), box

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    rule = "shortest + centre crop" if crop else "squash"
    return LibraryInput(transform, geometry, side, rule)


def library_input(backbone) -> LibraryInput:
    """The ``LibraryInput`` of any ``Backbone``: its library's own transform and crop geometry."""
    if hasattr(backbone, "library_input"):  # a backbone that knows its own (SigLIP 2 NaFlex)
        return backbone.library_input()
    if backbone.library == "openai-clip":
        return LibraryInput(backbone.preprocess(), _torchvision_rule(backbone.resolution, True), backbone.resolution,
                            "shortest")
    if backbone.library == "open_clip":
        return _open_clip(backbone)
    if backbone.library == "transformers":
        return _transformers(backbone)
    raise ValueError(f"input='library' does not know the preprocessing of library {backbone.library!r}; "
                     f"use input='native' or 'model'")
