"""The methods that explain X-CLIP's video score, one window of ``num_frames`` frames at a time.

The explained score is X-CLIP's own s_k = cos(video, text_k conditioned on the video) (see ``xclip_level.py`` and
``backbones/xclip.py``). It depends on every frame through the last vision layer's class rows (post-norm,
projection, the multi-frame integration transformer, MIT) and its patch rows (the prompts generator), and frames
see each other inside every vision layer through the message tokens. So no method here is a per-frame method run
against a fixed direction (as under mean pooling): the gradient methods take autograd's gradient of s_k through
all of that.

What each method decomposes and what it attributes by gradient (x_t: the tokens of frame t entering the last vision
layer, (1 + P) rows; A_t: that layer's attention weights, whose keys are the frame's 1 + P tokens and its message
token, the last key):

- ``grad_eclip`` / ``grad_eclip_no_spatial``: each frame's class-token row of the attention output in the last
  ``layers`` layers is decomposed over the patches' values, ReLU(sum_c w_tc v_tic lambda_ti) (lambda = 1 without
  the spatial weight); w = d s_k / d o_t[class row] by autograd (the message token's value term is not a place
  on the frame: left out, and out of lambda's min-max).
- ``grad_cam``: ReLU(sum_c mean_i(d s_k / d x_t)[c] * x_t[i, c]) on the patch rows i of x_t, the gradient averaged
  over the frame's 1 + P rows (as the package's Grad-CAM for CLIP), by autograd through the last layer (the
  message tokens included), the MIT and the prompts generator. ``start_layer`` other than -1 is refused.
- ``game`` (Chefer et al. 2021, last layer): mean over heads of ReLU(d s_k / d A_t * A_t) on the class row's
  patch columns (R = I + that term; its class row off the diagonal is the term). The gradient at A_t[class row]
  is exactly <d s_k / d o_t[class row], v_t> per head (o = A v), so the Grad-ECLIP pass gives it. Over several
  layers the relevance would have to follow the message tokens into the other frames: refused.
- ``self_attention``: the class row of A_t, heads averaged, on the patch columns (the message key takes part in
  the softmax, is not mapped). ``rollout``: per layer, A_t restricted to the frame's own 1 + P rows and columns
  (the message token's row is dropped by the layer itself; its column carries the other frames, not a place on
  this one), heads averaged, plus the identity, rows renormalised, multiplied over layers; the class row over
  the patches. No score reaches either: one map per frame, the same for every prompt.

The others refuse in one line (``_REFUSED``). ``precision``: the layers before the first one explained run under
autocast in bfloat16/float16 (``gradeclip/precision.py``); the explained layers, the MIT, the prompts generator,
the score, its gradients and the maps in float32 (so the score reported is the one explained). Rollout reads every
layer's attention: the earlier layers' under autocast (the tokens go on through the library's own layers, as for
the other methods), the last layer's in float32; ``self_attention``, ``grad_cam`` and ``game`` explain the last
layer only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .backbones.base import attend
from .methods.grad_eclip import _per_prompt_grads, qk_weight
from .methods.registry import get_method
from .precision import autocast

GRADIENT_METHODS = ("grad_eclip", "grad_eclip_no_spatial", "grad_cam", "game")
SCORE_FREE_METHODS = ("self_attention", "rollout")
XCLIP_METHODS = GRADIENT_METHODS + SCORE_FREE_METHODS
_OPTIONS = {"grad_eclip": ("layers", "spatial_weight"), "grad_eclip_no_spatial": ("layers",),
            "grad_cam": (), "game": ("start_layer",), "self_attention": (), "rollout": ()}
_PATCH_SCORE = ("it scores each patch's own embedding against the prompt, and X-CLIP's score is the clip's, "
                "through the MIT and a video-conditioned text: no patch embedding meets it")
_REFUSED = {
    "maskclip": _PATCH_SCORE, "clip_surgery": _PATCH_SCORE, "gem": _PATCH_SCORE,
    "legrad": "it reads every layer's tokens through the model's final head as that layer's own score, and reading "
              "each X-CLIP layer through the MIT and the prompts generator is not implemented",
    "rise": "it masks one image and reads its own score; masking the frames of an X-CLIP clip is not implemented",
    "scorecam": "it masks one image and reads its own score; masking the frames of an X-CLIP clip is not "
                "implemented",
}
_CAM_PACKAGE = "the grad-cam package hooks one model call per image, and X-CLIP's score is a whole clip's"


def check_xclip_method(method: str, options: dict) -> None:
    """One-line ValueError for a method that cannot explain X-CLIP's video score (with why), or an option the
    method does not take there (with the ones it does)."""
    get_method(method)  # unknown names: the list of known methods
    allowed = ", ".join(XCLIP_METHODS)
    if method not in XCLIP_METHODS:
        why = _REFUSED.get(method, _CAM_PACKAGE)
        raise ValueError(f"method {method!r} cannot explain X-CLIP's video score: {why}; use one of {allowed}")
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {', '.join(unknown)} on X-CLIP; its options: "
                         f"{', '.join(_OPTIONS[method]) or 'none'}")
    if method == "game" and options.get("start_layer", -1) != -1:
        raise ValueError(f"game start_layer={options['start_layer']!r} is not defined on X-CLIP (relevance over "
                         f"several layers would follow the message tokens into the other frames); use start_layer=-1")


def explain_window(bb, pixels: torch.Tensor, text: torch.Tensor, method: str, dtype: Optional[torch.dtype] = None,
                   **options):
    """One clip of n = ``num_frames`` frames: normalised pixels (n, 3, H, W) and the prompts' text features
    (K, D). Returns raw maps (n, K, h, w), frame importance (n, K) and the cosine (K,), detached float32 (see
    ``xclip_level.py`` for the importance). ``dtype``: the autocast dtype of the layers before the explained ones
    (None: float32). ``method`` and ``options`` as checked by ``check_xclip_method``."""
    if method in ("grad_eclip", "grad_eclip_no_spatial"):
        spatial = options.get("spatial_weight", True) and method == "grad_eclip"
        maps, importance, cosine = _grad_eclip(bb, pixels, text, dtype, options.get("layers", 1), spatial)
    else:
        maps, importance, cosine = _METHODS[method](bb, pixels, text, dtype)
    grid = (pixels.shape[-2] // bb.patch_size, pixels.shape[-1] // bb.patch_size)
    maps = maps.reshape(*maps.shape[:2], *grid)
    return maps.detach().float(), importance.detach().float(), cosine.detach().float()


def _float32(bb):
    """Autocast off on the model's device (the explained layers and the video head run in float32)."""
    return torch.autocast(bb.device.type, enabled=False)


def _entering(bb, pixels: torch.Tensor, layer: int, dtype) -> torch.Tensor:
    """Tokens (n, 1 + P, W) entering vision layer ``layer``, no graph, in the model's dtype (the layers before it
    under autocast at ``dtype``)."""
    with torch.no_grad(), autocast(bb, dtype):
        x = bb.run_layers(bb.frame_tokens(pixels), 0, layer)
    return x.to(bb.dtype)


def _score(bb, cls: torch.Tensor, patches: torch.Tensor, text: torch.Tensor):
    """X-CLIP's cosine (K,) from the last layer's class rows (n, 1, W) and patch rows (n, P, W), and each frame's
    additive share of it (n, K) over the MIT's output tokens."""
    tokens, conditioned = bb.video_and_text(cls, patches, text)  # (n, D), (K, D)
    video = tokens.mean(dim=0)
    g = F.normalize(conditioned, dim=-1)
    cosine = g @ F.normalize(video, dim=-1)
    return cosine, (tokens @ g.T) / (tokens.shape[0] * video.norm())


def _decomposed(bb, pixels, text, dtype, layers: int):
    """The last ``layers`` layers with their attention recorded: records [(q, k, v, o_cls)] per layer, the cosine,
    the importance and, per prompt, autograd's gradients of the cosine at each layer's o_cls."""
    x = _entering(bb, pixels, bb.depth - layers, dtype)
    records = []
    with torch.enable_grad(), _float32(bb):
        for i in range(bb.depth - layers, bb.depth):
            cls, patches, record = bb.layer_with_attention(i, x)
            records.append(record)
            x = torch.cat([cls, patches], dim=1)
        cosine, importance = _score(bb, cls, patches, text)
        batched = _per_prompt_grads(cosine[None], [o for *_, o in records])  # per layer (K, n, 1, W)
        grads = [[g[k] for g in batched] for k in range(len(cosine))]
    return records, cosine, importance, grads


def _grad_eclip(bb, pixels, text, dtype, layers: int, spatial_weight: bool):
    records, cosine, importance, grads = _decomposed(bb, pixels, text, dtype, layers)
    maps = 0
    for j, (q, k, v, _) in enumerate(records):
        patches = slice(1, k.shape[1] - 1)  # row 0 the class token, the last row the message token
        w = torch.stack([g_k[j][:, 0] for g_k in grads])  # (K, n, W): gradient at each frame's class row
        lam = qk_weight(q[:, 0], k[:, patches]) if spatial_weight else torch.ones_like(k[:, patches, 0])
        maps = maps + (torch.einsum("knc,npc->nkp", w, v[:, patches]) * lam[:, None, :]).relu()
    return maps, importance, cosine


def _game(bb, pixels, text, dtype):
    ((q, k, v, _),), cosine, importance, grads = _decomposed(bb, pixels, text, dtype, 1)
    heads = bb.heads(bb.depth - 1)
    n, keys, width = v.shape
    with torch.no_grad():
        _, weights = attend(q[:, :1], k, v, heads)  # (n, heads, 1, keys)
        vh = v.reshape(n, keys, heads, width // heads)
        cams = []
        for (g,) in grads:  # g (n, 1, W): d s_k / d o_cls
            d_weights = torch.einsum("nhd,njhd->nhj", g[:, 0].reshape(n, heads, -1), vh)  # d s_k / d A[class row]
            cams.append((d_weights * weights[:, :, 0]).clamp(min=0).mean(dim=1)[:, 1:keys - 1])  # (n, P)
    return torch.stack(cams, dim=1), importance, cosine


def _grad_cam(bb, pixels, text, dtype):
    last = bb.depth - 1
    x = _entering(bb, pixels, last, dtype)
    with torch.enable_grad(), _float32(bb):
        x = x.requires_grad_(True)
        cls, patches, _ = bb.layer_with_attention(last, x)
        cosine, importance = _score(bb, cls, patches, text)
        (grads,) = _per_prompt_grads(cosine[None], [x])  # (K, n, 1 + P, W): one batched backward
    cam = (grads.mean(dim=2, keepdim=True) * x.detach()).sum(-1).relu()[:, :, 1:]  # (K, n, P)
    return cam.transpose(0, 1), importance, cosine


def _self_attention(bb, pixels, text, dtype):
    last = bb.depth - 1
    x = _entering(bb, pixels, last, dtype)
    with torch.no_grad(), _float32(bb):
        cls, patches, (q, k, v, _) = bb.layer_with_attention(last, x)
        cosine, importance = _score(bb, cls, patches, text)
        _, weights = attend(q[:, :1], k, v, bb.heads(last))  # (n, heads, 1, 1 + P + 1)
    attention = weights.mean(dim=1)[:, 0, 1:-1]  # (n, P): the message key is not a place
    return attention[:, None].expand(-1, len(cosine), -1), importance, cosine


def _rollout(bb, pixels, text, dtype):
    joint = None
    with torch.no_grad():
        with autocast(bb, dtype):
            x = bb.frame_tokens(pixels)
        length = x.shape[1]  # 1 + P: the frame's own tokens
        eye = torch.eye(length, device=x.device)
        for i in range(bb.depth):
            reduced = i < bb.depth - 1
            with autocast(bb, dtype) if reduced else _float32(bb):
                cls, patches, (q, k, v, _) = bb.layer_with_attention(i, x if reduced else x.to(bb.dtype))
                _, weights = attend(q[:, :length], k, v, bb.heads(i))  # (n, heads, L, L + 1)
                # under autocast the tokens go on through the library's own layer (its rounding, as _entering)
                x = bb.run_layers(x, i, i + 1) if reduced and dtype is not None else torch.cat([cls, patches], 1)
            a = weights.float().mean(dim=1)[:, :, :length] + eye  # the message column dropped
            a = a / a.sum(dim=-1, keepdim=True)
            joint = a if joint is None else a @ joint
        with _float32(bb):
            cosine, importance = _score(bb, cls, patches, text)
    return joint[:, 0, 1:][:, None].expand(-1, len(cosine), -1), importance, cosine


_METHODS = {"grad_cam": _grad_cam, "game": _game, "self_attention": _self_attention, "rollout": _rollout}
