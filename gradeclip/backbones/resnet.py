"""Adapter for ResNet CLIPs: openai-clip's ``clip.model.ModifiedResNet`` and open_clip's
``open_clip.modified_resnet.ModifiedResNet`` image towers (RN50, RN101, RN50x4, ...).

The tower is a stem of three convolutions and an average pool, four stages (``layer1``..``layer4``, total stride 32)
and ``attnpool`` (``AttentionPool2d``): one multi-head attention whose only query is the mean of the last stage's
spatial tokens, over the mean token and the spatial tokens (each plus its positional embedding), then ``c_proj``.
That is the probe-query structure of SigLIP's pooling head, so the generic pooling-head paths apply: Grad-ECLIP
decomposes the pool (the mean token's query; values of each spatial token; lambda from query-key cosines), MaskCLIP
sends each spatial token's value through ``c_proj``, Grad-CAM and the grad-cam package's CAMs read the last stage's
output, RISE and Score-CAM need only the embedding. Methods that read a ViT's attention blocks refuse in one line.

Tokens here are the last stage's output (B, 1 + h*w, C) batch-first: row 0 the mean token, then the spatial tokens
row-major, before the positional embedding. "Patches" are 32x32 pixels. The pool recomputes the mean from the
spatial rows, so gradients with respect to the spatial rows are those with respect to ``layer4``'s output.

At another grid than the trained square the pool's positional embedding is interpolated (bicubic, as ``base.
interpolate_grid``), which openai-clip and open_clip do not do (their towers accept the trained size only): the
score equals the library's own at the trained square input (``input="library"`` gives it exactly).
The positional embedding depends on the grid (h, w), which the tokens alone do not carry: ``embed_image`` records
the grid of each token count it makes, and the pool looks it up (frames of one call are embedded before they are
pooled; portrait and landscape grids with the same token count must not be explained concurrently on one backbone).
"""
from __future__ import annotations

import torch

from .adapters import SPECIFIC, library_of, register_adapter, visual_kind
from .base import Backbone, attend, interpolate_grid
from .open_clip import OpenClipBackbone, preprocess_constants
from .openai import OpenAIBackbone
from .pixels import CLIP_MEAN, CLIP_STD

STRIDE = 32  # the tower's total stride: the stem's 4, then 2 in each of layer2..layer4


def is_resnet_tower(model) -> bool:
    """True where ``model.visual`` is openai-clip's or open_clip's ``ModifiedResNet``."""
    return type(getattr(model, "visual", None)).__name__ == "ModifiedResNet"


class Tokens(torch.nn.Module):
    """The last stage's feature map (B, C, h, w) -> tokens (B, 1 + h*w, C): the mean token, then the spatial ones.

    A module of its own so that the grad-cam package can hook the last stage's output as tokens."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)


class ResNetImage:
    """The image side of a ``ModifiedResNet`` tower (mixed into the libraries' adapters, before them)."""

    prefix = 1  # the mean token, attended by the pool but not mapped
    pooled_by_head = True
    depth = 1  # no attention blocks: tokens leave ``embed_image`` as the pool's input

    def _init_image(self, visual, resolution: int):
        pool = visual.attnpool
        self.visual, self.attnpool = visual, pool
        self.patch_weight = visual.conv1.weight
        self.patch_size = STRIDE
        self.resolution = int(resolution)
        self.output_dim = pool.c_proj.out_features
        side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
        self.trained_grid = (side, side)
        self.to_tokens = Tokens()
        self._grids = {side * side: self.trained_grid}  # token count -> grid of the last pixels embedded

    def require_class_token(self, method: str) -> None:
        raise ValueError(f"{method} reads a ViT's attention blocks; {type(self.model).__name__} has a ResNet image "
                         f"tower (ModifiedResNet), which has none (use grad_eclip, grad_cam, maskclip, rise, scorecam "
                         f"or the grad-cam package's other CAMs)")

    def _stem(self, x):
        v = self.visual
        for i in (1, 2, 3):  # openai-clip names the activations relu1..3, open_clip act1..3
            act = getattr(v, f"relu{i}", None) or getattr(v, f"act{i}")
            x = act(getattr(v, f"bn{i}")(getattr(v, f"conv{i}")(x)))
        return v.avgpool(x)

    def embed_image(self, pixels):
        """Normalised pixels (B, 3, H, W), H and W multiples of 32 -> tokens (B, 1 + H/32 * W/32, C)."""
        v = self.visual
        x = self._stem(pixels.to(device=self.patch_weight.device, dtype=self.patch_weight.dtype))
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # (B, C, h, w)
        self._grids[fmap.shape[-2] * fmap.shape[-1]] = tuple(fmap.shape[-2:])
        return self.to_tokens(fmap)

    def run_blocks(self, x, start, stop):
        return x  # no blocks between the last stage and the pool

    def _positions(self, count: int, dtype):
        grid = self._grids.get(count)
        if grid is None:
            raise ValueError(f"tokens of {count} spatial positions were not made by this backbone's embed_image; "
                             f"the pool's positional embedding needs their grid")
        pos = self.attnpool.positional_embedding.to(dtype)
        return torch.cat([pos[:1], interpolate_grid(pos[1:], grid)])  # (1 + h*w, C)

    def pool_heads(self):
        return self.attnpool.num_heads

    def pool_qkv(self, x):
        """The pool's q (B, 1, C) (the mean token's query), k and v (B, 1 + h*w, C) from tokens (B, 1 + h*w, C);
        the mean is recomputed from the spatial rows, so that gradients reach them through it."""
        ap, spatial = self.attnpool, x[:, 1:]
        t = torch.cat([spatial.mean(dim=1, keepdim=True), spatial], dim=1)
        t = t + self._positions(spatial.shape[1], t.dtype)
        return ap.q_proj(t[:, :1]), ap.k_proj(t), ap.v_proj(t)

    def pool_finish(self, o):
        """Embeddings (B, R, D) from pool attention outputs o (B, R, C) before ``c_proj``."""
        return self.attnpool.c_proj(o)

    def pool(self, x):
        """Image features (B, D) from tokens: the library's own ``attnpool`` at the trained grid (so that the dense
        forward is its ``encode_image``), the decomposed pool with interpolated positions elsewhere."""
        spatial = x[:, 1:]
        if self._grids.get(spatial.shape[1]) == self.trained_grid:
            fmap = spatial.transpose(1, 2).contiguous().reshape(x.shape[0], x.shape[2], *self.trained_grid)
            return self.attnpool(fmap)
        q, k, v = self.pool_qkv(x)
        o, _ = attend(q, k, v, self.pool_heads())
        return self.pool_finish(o)[:, 0]

    def readout(self, x, last):
        return self.pool(x)

    def _no_blocks(self, *args):
        raise ValueError(f"{type(self.model).__name__} has a ResNet image tower: it has no attention blocks")

    heads = qkv = finish = pool_rows = _no_blocks

    @property
    def vision_blocks(self):
        return [self.visual.layer4]  # the last stage stands for the "last block" (e.g. randomize_last_blocks)

    def cam_layer(self):
        return self.to_tokens, True


class OpenAIResNetBackbone(ResNetImage, OpenAIBackbone):
    """openai-clip ``clip.model.CLIP`` with a ``ModifiedResNet`` image tower; the text side is openai-clip's."""

    mean, std, crop = CLIP_MEAN, CLIP_STD, True

    def __init__(self, model, tokenizer=None, name: str = ""):
        Backbone.__init__(self, model, tokenizer, name)
        self._init_image(model.visual, model.visual.input_resolution)
        self.context_length = model.context_length
        self.text_blocks = model.transformer.resblocks
        self.text_depth = len(self.text_blocks)


class OpenClipResNetBackbone(ResNetImage, OpenClipBackbone):
    """open_clip ``CLIP`` with a ``ModifiedResNet`` image tower; the text side is open_clip's."""

    def __init__(self, model, tokenizer=None, name: str = ""):
        Backbone.__init__(self, model, tokenizer, name)
        size = model.visual.image_size
        self._init_image(model.visual, size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std, self.crop = preprocess_constants(model.visual)
        self._init_text(model)


__all__ = ["OpenAIResNetBackbone", "OpenClipResNetBackbone", "is_resnet_tower"]


def _resnet_of(library: str):
    return lambda model: library_of(model) == library and visual_kind(model) == "ModifiedResNet"


register_adapter("openai-clip ModifiedResNet", _resnet_of("clip"), OpenAIResNetBackbone, order=SPECIFIC)
register_adapter("open_clip ModifiedResNet", _resnet_of("open_clip"), OpenClipResNetBackbone, order=SPECIFIC)
