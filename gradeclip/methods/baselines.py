"""Explanation methods other than Grad-ECLIP, written for CLIP ViTs, and the registry entries of all methods.

Every method: ``method(model, pixels, text_features, *, options) -> raw maps (B, K, h, w)``, float32, non-negative,
on the token grid of ``pixels`` (any patch grid; positional embeddings are interpolated). Prompt-independent
methods (self_attention, rollout) repeat one map per frame for each prompt. The methods of the ``grad-cam`` package
are in ``cam_package``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cam_package import eigencam, gradcam_pp, layercam, scorecam, xgradcam
from .grad_eclip import _per_prompt_grads, grad_eclip_image, grad_eclip_image_with_features
from ..backbones.model import check_vit
from .registry import METHODS, check_options, get_method
from ..backbones.vit import (attend, check_pixels, embed_image, encode_pixels, finish_block, image_features, qkv, tokens_before,
                  unit_text_features)


def _prepare(model, pixels, text_features):
    """Validated inputs: the visual encoder, the patch grid and the normalised text features (K, D)."""
    check_vit(model)
    grid = check_pixels(model, pixels)
    return model.visual, grid, unit_text_features(model.visual, text_features)


def _grid_maps(per_prompt: torch.Tensor, grid) -> torch.Tensor:
    """(K, B, P) or (B, K, P) patch scores -> (B, K, h, w) float32, detached."""
    return per_prompt.reshape(*per_prompt.shape[:2], *grid).float().detach()


def _cosine(visual, cls_tokens, text):
    return F.normalize(image_features(visual, cls_tokens), dim=-1) @ text.T  # (B, K)


def grad_eclip_no_spatial(model, pixels, text_features, *, layers: int = 1, single_head: bool = False):
    """Grad-ECLIP without the spatial (query-key) weight: the paper's ablation."""
    return grad_eclip_image(model, pixels, text_features, layers=layers, single_head=single_head,
                            spatial_weight=False)


def grad_cam(model, pixels, text_features):
    """Grad-CAM as the Grad-ECLIP paper applies it to CLIP ViT: the tokens entering the last block, weighted by the
    gradient of the cosine averaged over all tokens, summed over channels, ReLU."""
    visual, grid, text = _prepare(model, pixels, text_features)
    blocks = visual.transformer.resblocks
    x = tokens_before(visual, pixels, -1)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        q, k, v = qkv(blocks[-1], x)
        o, _ = attend(q[:, :1], k, v, blocks[-1].attn.num_heads)  # only the class token reaches the score
        cosine = _cosine(visual, finish_block(blocks[-1], x[:, :1], o)[:, 0], text)
        (grad,) = _per_prompt_grads(cosine, [x])  # (K, B, L, W)
    weights = grad.mean(dim=2, keepdim=True)
    cam = (weights * x.detach()).sum(-1).relu()[:, :, 1:]  # (K, B, P)
    return _grid_maps(cam.transpose(0, 1), grid)


def _attentions(visual, pixels, blocks):
    """Attention weights (B, heads, L, L) of each block, without autograd."""
    weights = []
    with torch.no_grad():
        x = embed_image(visual, pixels)
        for block in blocks:
            q, k, v = qkv(block, x)
            o, w = attend(q, k, v, block.attn.num_heads)
            weights.append(w)
            x = finish_block(block, x, o)
    return weights


def self_attention(model, pixels, text_features):
    """The class token's attention to the patches in the last block, heads averaged (prompt-independent)."""
    visual, grid, text = _prepare(model, pixels, text_features)
    blocks = visual.transformer.resblocks
    x = tokens_before(visual, pixels, -1)
    with torch.no_grad():
        q, k, v = qkv(blocks[-1], x)
        _, w = attend(q[:, :1], k, v, blocks[-1].attn.num_heads)  # (B, heads, 1, L)
    cls = w.mean(dim=1)[:, 0, 1:]  # (B, P)
    return _grid_maps(cls[:, None].expand(-1, text.shape[0], -1), grid)


def rollout(model, pixels, text_features):
    """Attention rollout (Abnar & Zuidema 2020): per block, heads averaged plus the identity for the residual,
    rows renormalised; the product over all blocks; the class token's row over the patches (prompt-independent)."""
    visual, grid, text = _prepare(model, pixels, text_features)
    weights = _attentions(visual, pixels, visual.transformer.resblocks)
    eye = torch.eye(weights[0].shape[-1], device=weights[0].device, dtype=weights[0].dtype)
    joint = eye
    for w in weights:
        a = w.mean(dim=1) + eye
        joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
    cls = joint[:, 0, 1:]
    return _grid_maps(cls[:, None].expand(-1, text.shape[0], -1), grid)


def game(model, pixels, text_features, *, start_layer: int = -1):
    """Gradient-weighted attention relevance (Chefer et al. 2021, "Generic Attention-model Explainability").

    From block ``start_layer`` on (default -1: the last block, as its authors use for CLIP ViT; negative counts
    from the end): R <- R + mean_heads(ReLU(dcos/dA * A)) @ R, with R starting as the identity; the map is R's
    class-token row over the patches.
    """
    visual, grid, text = _prepare(model, pixels, text_features)
    blocks = visual.transformer.resblocks
    depth = len(blocks)
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -depth <= start_layer < depth:
        raise ValueError(f"start_layer must be an int in {-depth}..{depth - 1} (the model has {depth} blocks), "
                         f"got {start_layer!r}")
    start = start_layer % depth
    x = tokens_before(visual, pixels, start)
    attentions = []
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)  # so that the attention weights join the graph
        for block in blocks[start:]:
            q, k, v = qkv(block, x)
            o, w = attend(q, k, v, block.attn.num_heads)
            attentions.append(w)
            x = finish_block(block, x, o)
        grads = _per_prompt_grads(_cosine(visual, x[:, 0], text), attentions)  # each (K, B, heads, L, L)
    length = attentions[0].shape[-1]
    relevance = torch.eye(length, device=x.device, dtype=x.dtype).expand(*grads[0].shape[:2], length, length)
    for w, g in zip(attentions, grads):
        cam = (g * w.detach()).clamp(min=0).mean(dim=2)  # (K, B, L, L)
        relevance = relevance + cam @ relevance
    return _grid_maps(relevance[:, :, 0, 1:].transpose(0, 1), grid)


def maskclip(model, pixels, text_features):
    """MaskCLIP (Zhou et al. 2022): each patch's value-path embedding compared with the prompt.

    In the last block every token attends only to itself (attention output = its value), the residual and MLP
    are kept, then ln_post and proj give one embedding per patch; the map is its cosine with the prompt, ReLU.
    """
    visual, grid, text = _prepare(model, pixels, text_features)
    blocks = visual.transformer.resblocks
    x = tokens_before(visual, pixels, -1)
    with torch.no_grad():
        _, _, v = qkv(blocks[-1], x)
        y = finish_block(blocks[-1], x[:, 1:], v[:, 1:])
        patches = F.normalize(image_features(visual, y), dim=-1)  # (B, P, D)
        cos = (patches @ text.T).relu()  # (B, P, K)
    return _grid_maps(cos.transpose(1, 2), grid)


def rise(model, pixels, text_features, *, n_masks: int = 1000, cells: int = 8, p: float = 0.5,
         batch_size: int = 32, seed: int = 0):
    """RISE (Petsiuk et al. 2018): saliency = sum over random masks of cosine(masked image) * mask / (N * p).

    Masks: ``cells`` x ``cells`` binary grids (each cell kept with probability ``p``), bilinearly upsampled with a
    random shift; masked pixels become 0 in normalised space (the dataset mean). Every masked image is scored for
    all prompts in one forward, ``batch_size`` images at a time. Negative saliency is clipped to 0; the map is
    averaged over each patch. ``seed`` makes the masks reproducible.
    """
    visual, grid, text = _prepare(model, pixels, text_features)
    if n_masks < 1 or cells < 1 or not 0 < p <= 1 or batch_size < 1:
        raise ValueError(f"rise needs n_masks >= 1, cells >= 1, 0 < p <= 1 and batch_size >= 1; got n_masks="
                         f"{n_masks}, cells={cells}, p={p}, batch_size={batch_size}")
    b, _, h, w = pixels.shape
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = -(-h // cells), -(-w // cells)
    saliency = torch.zeros(b, text.shape[0], h, w, device=pixels.device)
    for start in range(0, n_masks, batch_size):
        m = min(batch_size, n_masks - start)
        coarse = (torch.rand(m, 1, cells, cells, generator=generator) < p).float()
        up = F.interpolate(coarse, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                           align_corners=False)
        dy = torch.randint(0, cell_h, (m,), generator=generator)
        dx = torch.randint(0, cell_w, (m,), generator=generator)
        masks = torch.stack([up[i, 0, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(m)]).to(pixels.device)
        for i in range(b):
            feats = encode_pixels(model, pixels[i:i + 1] * masks[:, None])  # (m, D)
            cos = F.normalize(feats.float(), dim=-1) @ text.float().T  # (m, K)
            saliency[i] += torch.einsum("mk,mhw->khw", cos, masks)
    saliency = (saliency / (n_masks * p)).clamp(min=0)
    patch = visual.conv1.kernel_size[0]
    return F.avg_pool2d(saliency, patch).float()


for _name, _fn in [("grad_eclip", grad_eclip_image), ("grad_eclip_no_spatial", grad_eclip_no_spatial),
                   ("grad_cam", grad_cam), ("self_attention", self_attention), ("rollout", rollout),
                   ("game", game), ("maskclip", maskclip), ("rise", rise), ("gradcam_pp", gradcam_pp),
                   ("xgradcam", xgradcam), ("layercam", layercam), ("eigencam", eigencam), ("scorecam", scorecam)]:
    METHODS.register_module(name=_name, module=_fn)

# Methods whose forward already yields the image features: their scores then need no second forward.
_WITH_FEATURES = {
    "grad_eclip": grad_eclip_image_with_features,
    "grad_eclip_no_spatial": lambda model, pixels, text_features, **options: grad_eclip_image_with_features(
        model, pixels, text_features, spatial_weight=False, **options),
}


def run_method(name: str, model, pixels, text_features, **options):
    """``(raw maps (B, K, h, w) float32, image features (B, D))`` of the method called ``name``: one forward where
    the method provides the features, else the method and then ``encode_pixels``."""
    check_options(name, options)
    if name in _WITH_FEATURES:
        maps, features = _WITH_FEATURES[name](model, pixels, text_features, **options)
    else:
        maps, features = get_method(name)(model, pixels, text_features, **options), encode_pixels(model, pixels)
    return maps.float(), features
