"""The user-facing pipeline: frames and prompts in, normalised heatmaps and scores out.

Methods are looked up by name in ``registry.METHODS`` (see ``methods/baselines.py`` for the list); models of every
supported library are seen through their ``Backbone`` (``backbones/base.py``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .backbones.base import backbone_of
from .backbones.shapes_model import warn_unknown_words
from .backbones.inputs import InputView, input_view, model_pixels, warn_token_count
from .backbones.pixels import FramesLike, as_frames
from .checks import positive_int, text_features_for
from .methods.baselines import run_method  # noqa: F401 importing methods registers every method in METHODS
from .methods.grad_eclip import grad_eclip_text
from .methods.registry import check_options
from .precision import check_precision, run_method_at


@dataclass
class Explanation:
    """What ``explain`` returns for N frames and K prompts.

    ``maps``: (N, K, H, W) float32 in [0, 1], each map min-max normalised, at frame size.
    ``raw``: (N, K, h, w) float32 maps on the token grid, as the method returned them (not normalised).
    ``cosine``: (N, K) cosine similarity of each frame (at the explained input size) and prompt: the model's own
    score (for Grad-ECLIP with ``single_head=True``, the one-head variant's score that it explains).
    ``probs``: (N, K) the library's own probabilities: for CLIP the softmax over the prompts of
    logit_scale * cosine; for SigLIP sigmoid(exp(logit_scale) * cosine + logit_bias), each prompt on its own.
    ``frames``: the (N, H, W, 3) uint8 RGB frames; ``prompts``, ``method``: what was asked; ``library`` and
    ``model``: which library's model explained them, and its name where known. ``view``: how the frames reached
    the model (``view.mode`` native, model or library; ``view.size`` the input (H', W') in pixels); ``seen``:
    (H, W) bool, True where the frame reached the model (all True unless ``input="library"`` cropped it; ``maps``
    are 0 where it is False). ``precision``: ``"fp32"``, ``"bf16"`` or ``"fp16"``, how the forward ran
    (``gradeclip/precision.py``; maps float32 always, scores from a float32 readout).
    """

    maps: np.ndarray
    raw: np.ndarray
    cosine: np.ndarray
    probs: np.ndarray
    frames: np.ndarray
    prompts: List[str]
    method: str
    library: str = ""
    model: str = ""
    view: Optional[InputView] = None
    seen: Optional[np.ndarray] = None
    precision: str = "fp32"


def normalize_maps(raw: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of (..., h, w) to [0, 1].

    A constant map (its range below 1e-6 of its magnitude, i.e. rounding noise) becomes all zeros, never NaN.
    """
    flat = raw.flatten(-2)
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    span = high - low
    varies = span > 1e-6 * torch.maximum(low.abs(), high.abs())
    out = torch.where(varies, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(raw.shape)


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Resize maps (N, K, h, w) to ``size`` (H, W) bilinearly (align_corners=False)."""
    n, k, h, w = maps.shape
    out = F.interpolate(maps.reshape(n * k, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(n, k, *size)


@torch.no_grad()
def scores(model, image_features: torch.Tensor, text_features: torch.Tensor):
    """(cosine, probs), each (N, K) float32 numpy, from unnormalised image (N, D) and text (K, D) features; probs
    are the library's own (softmax over prompts for CLIP, per-prompt sigmoid for SigLIP)."""
    cosine = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
    probs = backbone_of(model).probabilities(cosine)
    return cosine.cpu().numpy(), probs.cpu().numpy()


def explain(model, frames: FramesLike, prompts: Union[str, Sequence[str]], *, method: str = "grad_eclip",
            tokenizer=None, input: Optional[str] = None, scale: float = 1.0, truncate: bool = False, batch_size: int = 16, progress: bool = True,
            precision: str = "fp32", **options) -> Explanation:
    """Explain a CLIP-family model's match of each frame with each prompt.

    ``model``: an openai-clip ``clip.model.CLIP`` (ViT or ResNet), an open_clip ``CLIP`` or ``CustomTextCLIP``, a
    transformers ``CLIPModel`` or ``SiglipModel``, or what ``load_clip`` returns. ``tokenizer``: needed only where
    the model carries none (transformers models, open_clip models with a non-CLIP vocabulary): a callable from a
    list of strings to a (K, T) tensor of token ids, or a transformers tokenizer or processor.
    ``frames``: uint8 RGB array (N, H, W, 3) or (H, W, 3), a PIL image or a list of them. ``prompts``: a string
    or a list of strings. ``method``: a name in ``METHODS`` (see ``method_names()``); ``options`` go to it
    (for Grad-ECLIP: ``layers``, ``single_head``, ``spatial_weight``). ``input``: ``"native"`` (the frame's size
    and aspect, rounded to the patch grid), ``"model"`` (its longer side at the model's trained resolution, aspect
    kept) or ``"library"`` (the library's own resize and crop: the library's own score; the map covers the crop
    and ``seen`` marks it); None: the model's default (``"model"`` for the shipped shapes CLIP, else
    ``"native"``). ``scale`` multiplies the native or model size (refused with library). A token grid above 4
    times the trained one warns. ``truncate`` cuts over-long prompts instead of raising.
    Frames go through the model ``batch_size`` at a time, with a progress bar when there is more than one batch
    (``progress=False`` hides it). ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (GPU only): the
    forward under autocast on the model's device, the caller's model unchanged; maps float32, scores from a
    float32 recomputation of the last block's readout (see ``gradeclip/precision.py``).

    Returns an ``Explanation`` (maps at frame size in [0, 1], raw token-grid maps, cosine, probs).
    """
    model = backbone_of(model, tokenizer)
    check_options(method, options)
    check_precision(precision, model, method)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    warn_unknown_words(model, prompts)
    text_features = model.encode_prompts(prompts, truncate=truncate)
    return explain_encoded(model, frames, prompts, text_features, method=method, input=input, scale=scale,
                           batch_size=batch_size, progress=progress, precision=precision, **options)


def explain_encoded(model, frames: FramesLike, prompts: Sequence[str], text_features: torch.Tensor, *,
                    method: str = "grad_eclip", input: Optional[str] = None, scale: float = 1.0,
                    batch_size: int = 16, progress: bool = True, precision: str = "fp32", **options) -> Explanation:
    """``explain`` with the prompts already encoded: ``text_features`` (K, D) are the library's own (as
    ``encode_prompts`` returns them, not normalised) for ``prompts`` (K strings, used as labels). For callers that
    explain many frames against one prompt set (the explorer) and encode it once. ``model``: as for ``explain``
    (a ``Backbone`` carries its tokenizer); ``input``, ``scale`` and ``precision`` as for ``explain``. Returns an ``Explanation``."""
    model = backbone_of(model)
    check_options(method, options)
    check_precision(precision, model, method)
    positive_int(batch_size, "batch_size")
    frames = as_frames(frames)
    prompts = list(prompts)
    text_features_for(text_features, prompts)
    view = input_view(model, frames.shape[1], frames.shape[2], input, scale)
    warn_token_count(model, view)
    starts = range(0, len(frames), batch_size)
    raws, features = [], []
    for start in tqdm(starts, desc=f"explaining ({method})", unit="batch", disable=not progress or len(starts) < 2):
        pixels = model_pixels(model, frames[start:start + batch_size], view)
        raw, feats = run_method_at(precision, method, model, pixels, text_features, **options)
        raws.append(raw)
        features.append(feats)
    raw = torch.cat(raws)
    cosine, probs = scores(model, torch.cat(features), text_features)
    if not torch.isfinite(raw).all():
        warnings.warn(f"method {method!r} returned non-finite values; they are shown as 0")
        raw = torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    # normalise after upsampling, so that each map on the seen part of the frame spans exactly [0, 1]
    maps = view.place(normalize_maps(view.fit(raw)))
    return Explanation(maps=maps.cpu().numpy(), raw=raw.cpu().numpy(), cosine=cosine, probs=probs,
                       frames=frames, prompts=prompts, method=method, **model.describe(), view=view,
                       seen=view.seen(), precision=precision)


def similarity(model, frames: FramesLike, prompts: Union[str, Sequence[str]], *, input: Optional[str] = None,
               scale: float = 1.0, truncate: bool = False, tokenizer=None):
    """The model's scores of frames against prompts, with frames as ``explain`` sees them under ``input`` and
    ``scale`` (see ``explain``; ``input="library"`` gives exactly the library's own scores).

    Returns ``(cosine, probs)``, each (N, K) float32 numpy: cosine similarity, and the library's own probabilities
    (CLIP: softmax over the prompts of ``logit_scale * cosine``; SigLIP: per-prompt sigmoid).
    """
    model = backbone_of(model, tokenizer)
    frames = as_frames(frames)
    text_features = model.encode_prompts(prompts, truncate=truncate)
    view = input_view(model, frames.shape[1], frames.shape[2], input, scale)
    warn_token_count(model, view)
    return scores(model, model.encode_pixels(model_pixels(model, frames, view)), text_features)


def word_importance(model, frame: FramesLike, prompt: str, *, layers: int = 8, single_head: bool = False,
                    truncate: bool = False, tokenizer=None):
    """Grad-ECLIP weight of each word token of ``prompt`` for one frame.

    The frame (uint8 RGB (H, W, 3) or PIL image) goes through the library's own preprocessing (CLIP: resize,
    centre crop). Needs a CLIP-style text tower, or AltCLIP's or Chinese-CLIP's (not SigLIP's). Returns a list of
    ``(token, weight)`` pairs in prompt order, weights float summing to 1 (or all 0).
    """
    model = backbone_of(model, tokenizer)
    frames = as_frames(frame)
    if frames.shape[0] != 1:
        raise ValueError(f"word_importance takes one frame, got {frames.shape[0]}")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    pixels = model.preprocess()(Image.fromarray(frames[0]))[None].to(model.device)
    tokens = model.tokenize([prompt], truncate=truncate)
    weights = grad_eclip_text(model, pixels, tokens, layers=layers, single_head=single_head)[0]
    return list(zip(model.token_words(tokens[0]), weights.cpu().tolist()))
