"""Video-level explanations: which frames, and where in them, made a whole clip match a prompt.

Mean pooling (CLIP4Clip's zero-shot baseline) scores a clip of T frames against prompt k as

    v = mean_t f_t / |f_t|,    cosine_k = cos(v, g_k)

with f_t the model's image features of frame t and g_k its text features. Frame t's exact additive share of that
cosine is ``frame_importance[t, k] = <f_t/|f_t|, g_k> / (T |v| |g_k|)`` (summed over t it is the cosine).

Gradient methods explain the clip score through the pooling: its gradient with respect to frame t's features is
``d cosine_k / d f_t = (|d_k| / T) * d cos(f_t, d_k) / d f_t`` with the clip direction
``d_k = (g_k/|g_k| - cosine_k v/|v|) / |v|`` (one vector per prompt, the same for every frame). So each frame's
Grad-ECLIP map for the clip score is exactly its per-frame Grad-ECLIP map against d_k (the gradient reaching the
class-token attention output is the clip score's), times the per-prompt constant |d_k| / T. The same holds for
every method that is positively homogeneous in the gradient (Grad-CAM, GAME over one block). Frames go through the
model in batches, twice: a scoring pass (which keeps the tokens entering the decomposed blocks) and an explaining
pass over those blocks only; memory grows linearly with T.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backbones.base import backbone_of
from .backbones.inputs import input_view, model_pixels, warn_token_count
from .backbones.pixels import FramesLike, as_frames
from .checks import positive_int, text_features_for
from .clip_result import ClipExplanation
from .methods.baselines import run_method  # noqa: F401 (importing it registers every method)
from .methods.grad_eclip import decomposition_start, grad_eclip_tokens
from .methods.registry import check_options, get_method
from .precision import autocast, check_precision, exact_features
from .xclip_level import explain_xclip  # X-CLIP's own video head

POOLINGS = ("mean", "xclip")
# methods through the clip score's gradient: exact, because each is positively homogeneous in the gradient
GRADIENT_METHODS = ("grad_eclip", "grad_eclip_no_spatial", "grad_cam", "game")
# methods that never look at the score: each frame's map is its per-frame map, the same for every prompt
SCORE_FREE_METHODS = ("self_attention", "rollout")
_REFUSED = {
    "maskclip": "it scores each patch against the prompt directly, so no clip score reaches it",
    "rise": "it perturbs one image and reads its own score; masking frames of a clip is not implemented",
    "scorecam": "it perturbs one image and reads its own score; masking frames of a clip is not implemented",
}
_CAM_PACKAGE = "the grad-cam package normalises each frame's map on its own, which erases the difference between frames"


def mean_pooling(image_features: torch.Tensor, text_features: torch.Tensor):
    """The mean-pooled clip score and its pieces, in float64, from image features (T, D) and text features (K, D)
    (both the library's own, not normalised). Returns ``(cosine (K,), frame_importance (T, K), direction (K, D),
    gain (K,))``: the clip cosine, each frame's additive share of it, the clip direction d_k and |d_k| / T (see the
    module docstring), so that d cosine_k / d f_t = gain_k * d cos(f_t, direction_k) / d f_t."""
    f = F.normalize(image_features.double(), dim=-1)
    g = F.normalize(text_features.double(), dim=-1)
    v = f.mean(dim=0)
    norm = v.norm()
    cosine = g @ v / norm
    importance = (f @ g.T) / (len(f) * norm)
    direction = (g - cosine[:, None] * (v / norm)[None]) / norm
    return cosine, importance, direction, direction.norm(dim=-1) / len(f)


def check_clip_method(method: str, options: dict) -> None:
    """One-line ValueError for a method (or option) that cannot explain a clip score; see ``GRADIENT_METHODS``."""
    check_options(method, options)
    if method in _REFUSED:
        raise ValueError(f"method {method!r} cannot explain a clip score: {_REFUSED[method]}; use one of "
                         f"{', '.join(GRADIENT_METHODS + SCORE_FREE_METHODS)}")
    if method not in GRADIENT_METHODS + SCORE_FREE_METHODS:
        raise ValueError(f"method {method!r} cannot explain a clip score: {_CAM_PACKAGE}; use one of "
                         f"{', '.join(GRADIENT_METHODS + SCORE_FREE_METHODS)}")
    if method == "game" and options.get("start_layer", -1) != -1:
        raise ValueError(f"game start_layer={options['start_layer']!r} cannot explain a clip score exactly (its "
                         f"relevance over several blocks is not proportional to the gradient); use start_layer=-1")


def check_pooling(pooling: Optional[str], model) -> str:
    """The pooling ``explain_clip`` uses for ``model``: None means the model's own (``"xclip"`` for an X-CLIP
    model, else ``"mean"``); one-line ValueError for an unknown pooling or one the model does not have."""
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
    own = "xclip" if _is_xclip(model) else "mean"
    if pooling is not None and pooling != own:
        name = type(getattr(model, "model", model)).__name__
        raise ValueError(f"pooling {pooling!r} is not defined for {name}: "
                         + ("X-CLIP scores a clip with its own video head; use pooling='xclip' (or leave it out)"
                            if own == "xclip" else "only a transformers XCLIPModel has X-CLIP's video head; use "
                                                   "pooling='mean' (or leave it out)"))
    return own


def _is_xclip(model) -> bool:
    inner = getattr(model, "model", model)  # a Backbone wraps the library's model
    return any(c.__name__ == "XCLIPModel" for c in (*type(model).__mro__, *type(inner).__mro__))


def explain_clip(model, frames: FramesLike, prompts: Union[str, Sequence[str]], *, pooling: Optional[str] = None,
                 method: str = "grad_eclip", tokenizer=None, input: Optional[str] = None, scale: float = 1.0,
                 batch_size: int = 16, progress: bool = True, precision: str = "fp32",
                 **options) -> ClipExplanation:
    """Explain a clip-level score: which of the T frames, and where in them, made the clip match each prompt.

    ``model``: any model ``explain`` takes (mean pooling over its frame embeddings), or a transformers
    ``XCLIPModel`` (then ``gradeclip.xclip_level.explain_xclip`` explains its own video score).
    ``frames``: uint8 RGB (T, H, W, 3) array or a list of frames, in time order. ``prompts``: a string or K strings.
    ``pooling``: None (the model's own: ``"xclip"`` for an X-CLIP model, else ``"mean"``), ``"mean"`` or
    ``"xclip"``; a pooling the model does not have is refused in one line. ``method``: one of
    ``GRADIENT_METHODS`` (through the clip score's gradient) or ``SCORE_FREE_METHODS`` (per-frame maps, which no
    score reaches); others are refused in one line.
    ``options`` go to the method (Grad-ECLIP: ``layers``, ``single_head``). ``input``, ``scale``, ``tokenizer``:
    as for ``explain``. Frames go through the model ``batch_size`` at a time. ``precision``: ``"fp32"``
    (default), ``"bf16"`` or ``"fp16"`` (GPU only; refused on CPU in one line): the forward under autocast on the
    model's device, the caller's model unchanged; maps float32 and scores from float32 (see
    ``explain_clip_encoded``; X-CLIP: ``xclip_methods.py``).

    Returns a ``ClipExplanation``: ``cosine``/``probs`` (K,) of the clip, ``maps`` (T, K, H, W) in [0, 1] on one
    scale per prompt over all T frames, ``raw`` (T, K, h, w) the clip score's relevance, ``frame_importance``
    (T, K) summing to ``cosine``, ``relevance_mass`` (T, K); indices 0..T-1 and NaN times (in-memory frames).
    """
    pooling = check_pooling(pooling, model)
    if pooling == "xclip":

        return explain_xclip(model, frames, prompts, method=method, tokenizer=tokenizer, progress=progress,
                             input=input, scale=scale, batch_size=batch_size, precision=precision, **options)
    bb = backbone_of(model, tokenizer)
    check_clip_method(method, options)
    check_precision(precision, bb, method)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return explain_clip_encoded(bb, frames, prompts, bb.encode_prompts(prompts), method=method, input=input,
                                scale=scale, batch_size=batch_size, progress=progress, precision=precision,
                                **options)


def explain_clip_encoded(model, frames: FramesLike, prompts: Sequence[str], text_features: torch.Tensor, *,
                         method: str = "grad_eclip", input: Optional[str] = None, scale: float = 1.0,
                         batch_size: int = 16, progress: bool = True, precision: str = "fp32",
                         **options) -> ClipExplanation:
    """``explain_clip`` under mean pooling with the prompts already encoded: ``text_features`` (K, D), the
    library's own (``encode_prompts``), for ``prompts`` (K strings, used as labels); for callers that explain many
    clips against one prompt set. Returns a ``ClipExplanation``.

    ``precision`` bf16/fp16: Grad-ECLIP's blocks before the decomposed ones run under autocast; the decomposed
    blocks, the clip score (so the score reported is the one explained), its gradients and the maps in float32.
    The other methods: the scores from ``precision.exact_features`` (the last block's readout in float32), the
    explaining pass under autocast throughout (its gradients carry reduced-precision rounding), maps float32."""
    bb = backbone_of(model)
    check_clip_method(method, options)
    dtype = check_precision(precision, bb, method)
    positive_int(batch_size, "batch_size")
    frames = as_frames(frames)
    prompts = list(prompts)
    text_features_for(text_features, prompts)
    view = input_view(bb, frames.shape[1], frames.shape[2], input, scale)
    warn_token_count(bb, view)
    starts = list(range(0, len(frames), batch_size))
    bar = tqdm(total=2 * len(starts), desc=f"explaining clip ({method})", unit="batch",
               disable=not progress or len(starts) < 2)
    decomposed = method.startswith("grad_eclip")
    start = decomposition_start(bb, options.get("layers", 1)) if decomposed else bb.depth
    kept, features = [], []
    with torch.no_grad():  # scoring pass: the clip score needs every frame before any frame can be explained
        for s in starts:
            pixels = model_pixels(bb, frames[s:s + batch_size], view)
            if decomposed or dtype is None:
                with autocast(bb, dtype):  # the blocks before the decomposed ones (a no-op at fp32)
                    x = bb.tokens_before(pixels, start).to(bb.dtype)
                with torch.autocast(bb.device.type, enabled=False):
                    # only the rows the embedding depends on go through the last block (``readout``)
                    features.append(bb.pool(x) if start == bb.depth else
                                    bb.readout(bb.run_blocks(x, start, bb.depth - 1), bb.depth - 1))
            else:  # another method under bf16/fp16: the float32 readout of the last block
                x = None
                features.append(exact_features(bb, pixels, dtype))
            kept.append(x if decomposed else None)
            bar.update()
    cosine, importance, direction, gain = mean_pooling(torch.cat(features), text_features)
    direction = direction.to(text_features.dtype)
    raws = []
    for s, x in zip(starts, kept):  # explaining pass, against the clip direction
        if decomposed:
            grid = (view.size[0] // bb.patch_size, view.size[1] // bb.patch_size)
            raw, _ = grad_eclip_tokens(bb, x, grid, direction, start=start,
                                       single_head=options.get("single_head", False),
                                       spatial_weight=options.get("spatial_weight", True) and method == "grad_eclip")
        else:
            with autocast(bb, dtype):
                raw = get_method(method)(bb, model_pixels(bb, frames[s:s + batch_size], view), direction, **options)
        raws.append(raw.float())
        bar.update()
    bar.close()
    raw = torch.cat(raws)
    if method in GRADIENT_METHODS:
        raw = raw * gain.to(raw)[None, :, None, None]
    raw = torch.nan_to_num(raw.cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    return ClipExplanation(
        cosine=cosine.float().cpu().numpy(), probs=bb.probabilities(cosine[None].float())[0].cpu().numpy(),
        maps=shared_scale(view, raw).numpy(), raw=raw.numpy(), frame_importance=importance.float().cpu().numpy(),
        relevance_mass=raw.sum(dim=(2, 3)).numpy(), indices=np.arange(len(frames)),
        times=np.full(len(frames), np.nan), prompts=prompts, method=method, pooling="mean",
        **bb.describe(), input=f"{view.mode} {view.size[1]}x{view.size[0]}", frames=frames, precision=precision)


def shared_scale(view, raw: torch.Tensor) -> torch.Tensor:
    """Token-grid maps (T, K, h, w) -> (T, K, H, W) float32 in [0, 1] at frame size: upsampled onto the seen part of
    the frame, then min-max normalised with ONE scale per prompt over all T frames (a prompt whose maps are all
    equal gives zeros), 0 outside the seen part."""
    fitted = view.fit(raw.float())
    low = fitted.amin(dim=(0, 2, 3), keepdim=True)
    span = fitted.amax(dim=(0, 2, 3), keepdim=True) - low
    scaled = torch.where(span > 0, (fitted - low) / span.clamp_min(torch.finfo(span.dtype).tiny),
                         torch.zeros_like(fitted))
    return view.place(scaled)


def default_frames(model, pooling: Optional[str] = None, tokenizer=None) -> str:
    """The frames a clip of ``model`` is sampled as by default: ``"uniform:NUM_FRAMES"`` for X-CLIP (the clip
    length its video head takes), else ``"uniform:8"``."""
    if check_pooling(pooling, model) == "xclip":
        return f"uniform:{backbone_of(model, tokenizer).num_frames}"
    return "uniform:8"


def explain_clip_video(model, video, prompts: Union[str, Sequence[str]], *, frames=None,
                       max_side: Optional[int] = None, **kwargs) -> ClipExplanation:
    """``explain_clip`` on frames read from the video file ``video``: ``frames`` is a selection as ``read_frames``
    takes it (``"uniform:N"``, an index or a list of indices, in time order); None (the default) samples as the
    model expects: ``"uniform:NUM_FRAMES"`` for X-CLIP (its clip length), else ``"uniform:8"``. X-CLIP explains
    more frames in windows of its clip length, each window's score reported, and refuses fewer in one line.

    The result carries the frames' indices in the video and their true presentation times (seconds, from the
    container); an X-CLIP window also lists its frames' video indices (``windows[i]["indices"]``); ``frames`` is
    None (decode them again with ``read_frames(video, result.indices)``). ``kwargs`` go to ``explain_clip``."""
    from .io.frames import read_frames, resolve_indices, video_info

    frames = default_frames(model, kwargs.get("pooling"), kwargs.get("tokenizer")) if frames is None else frames
    info = video_info(video)
    wanted = resolve_indices(frames, info.num_frames)
    result = explain_clip(model, read_frames(video, wanted, max_side=max_side), prompts, **kwargs)
    times = np.asarray(info.times, dtype=np.float64)
    positions = np.asarray(result.indices)  # positions in ``wanted`` (X-CLIP may explain a subset)
    result.indices = wanted[positions]
    result.times = times[result.indices] if len(times) == info.num_frames else np.full(len(positions), np.nan)
    for window in result.windows:  # start/stop count sampled frames; the indices name the video's frames
        window["indices"] = [int(i) for i in result.indices[window["start"]:window["stop"]]]
    result.frames = None
    return result
