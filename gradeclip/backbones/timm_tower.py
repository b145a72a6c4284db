"""Adapter for open_clip models whose image tower is a timm ``VisionTransformer`` pooled by an attention head.

This is open_clip's SigLIP (``ViT-B-16-SigLIP`` and its kin): a ``CustomTextCLIP`` whose ``visual`` is an
``open_clip.timm_model.TimmModel`` wrapping a timm ``VisionTransformer`` built with ``global_pool='map'``. In timm's
names the image side is: ``patch_embed`` (``proj`` convolution, then its ``norm``), ``pos_embed`` for the patches
only (no class token), resampled to any patch grid the way timm resamples its own (``resample_abs_pos_embed``:
bicubic, antialiased, which is what the tower computes with ``dynamic_img_size`` or after ``set_input_size``, and
the identity at the trained grid), ``norm_pre``, the ``blocks`` (``norm1``, fused ``attn.qkv``, per-head
``q_norm``/``k_norm``, ``attn.norm``, ``attn.proj``, LayerScale ``ls1``/``ls2``, ``norm2``, ``mlp``), the final
``norm``, then ``attn_pool`` (``AttentionPoolLatent``: its learned ``latent`` probe through ``q`` is the only query,
keys and values come from the fused ``kv``; its own heads, ``proj``, then ``norm`` and ``mlp`` as a residual),
``fc_norm``, the trunk's ``head`` and the ``TimmModel``'s ``head`` (a projection, empty for SigLIP). Dropout, drop
path and patch dropout are the identity in eval mode and skipped. The score is open_clip's: sigmoid of
``logit_scale.exp() * cos + logit_bias`` per prompt where the model has a bias. The text side is open_clip's
(inherited from ``OpenClipBackbone``). Other timm towers (class token, register tokens, other pooling or blocks) are
refused with one line.
"""
from __future__ import annotations

import torch

from .adapters import FAMILY, library_of, register_adapter, visual_kind
from .base import Backbone
from .open_clip import OpenClipBackbone, preprocess_constants


def _refuse(what: str):
    raise TypeError(f"this open_clip timm image tower {what}; gradeclip explains timm ViTs that pool with an "
                    f"attention head and no class token (open_clip's SigLIP)")


def _per_head(norm, t: torch.Tensor, heads: int) -> torch.Tensor:
    """timm's per-head q/k normalisation applied to t (B, L, W) split into ``heads`` heads (identity if none)."""
    if isinstance(norm, torch.nn.Identity):
        return t
    b, n, width = t.shape
    return norm(t.reshape(b, n, heads, width // heads)).reshape(b, n, width)


class TimmTowerBackbone(OpenClipBackbone):
    """open_clip ``CustomTextCLIP`` with a timm ``VisionTransformer`` tower and its ``AttentionPoolLatent`` head."""

    prefix = 0

    def __init__(self, model, tokenizer=None, name: str = ""):
        Backbone.__init__(self, model, tokenizer, name)
        visual = model.visual
        trunk = getattr(visual, "trunk", None)
        if type(trunk).__name__ != "VisionTransformer" or not type(trunk).__module__.startswith("timm"):
            _refuse(f"is {type(trunk).__name__}, not a timm VisionTransformer")
        pool = getattr(trunk, "attn_pool", None)
        if type(pool).__name__ != "AttentionPoolLatent":
            _refuse(f"pools with {type(pool).__name__ if pool is not None else repr(trunk.global_pool)}")
        if pool.latent_len != 1 or pool.pos_embed is not None:
            _refuse("has an attention pool with several latents or its own positional embedding")
        if getattr(trunk, "cls_token", None) is not None or getattr(trunk, "reg_token", None) is not None \
                or trunk.num_prefix_tokens or trunk.pos_embed is None:
            _refuse("has a class or register token, or no learned positional embedding")
        if any(type(b).__name__ != "Block" or type(b.attn).__name__ != "Attention"
               or getattr(b.attn, "gate", None) is not None for b in trunk.blocks):
            _refuse("has blocks other than timm's plain Block with Attention")
        pe = trunk.patch_embed
        if pe.patch_size[0] != pe.patch_size[1] or getattr(pe, "dynamic_img_pad", False):
            _refuse("has non-square or padded patches")
        self.visual, self.trunk, self.blocks, self.attn_pool = visual, trunk, trunk.blocks, pool
        self.batch_first = True
        self._patching(visual, pe)
        with torch.no_grad():  # the embedding width after the head and the tower's projection
            probe = torch.zeros(1, 1, pool.kv.out_features // 2, device=self.patch_weight.device,
                                dtype=self.patch_weight.dtype)
            self.output_dim = self.pool_finish(probe).shape[-1]
        self._init_text(model)

    # image side
    def _patching(self, visual, pe) -> None:
        """The attributes read from timm's patch embedding and open_clip's preprocessing (shared with
        ``eva_tower.py``): patch weight, size, trained grid and side, depth, normalisation and crop."""
        self.patch_weight = pe.proj.weight
        self.patch_size = pe.patch_size[0]
        self.trained_grid = tuple(pe.grid_size)
        self.resolution = pe.img_size[0]
        self.depth = len(self.blocks)
        self.mean, self.std, self.crop = preprocess_constants(visual)

    def embed_image(self, pixels):
        from timm.layers import resample_abs_pos_embed

        pe = self.trunk.patch_embed
        x = pe.proj(pixels.to(device=self.patch_weight.device, dtype=self.patch_weight.dtype))  # (B, W, h, w)
        grid = list(x.shape[-2:])
        x = pe.norm(x.flatten(2).transpose(1, 2))  # (B, h*w, W)
        pos = resample_abs_pos_embed(self.trunk.pos_embed, new_size=grid, old_size=self.trained_grid,
                                     num_prefix_tokens=0)  # (1, h*w, W)
        return self.trunk.norm_pre(x + pos.to(x.dtype))

    def run_blocks(self, x, start, stop):
        for block in self.blocks[start:stop]:
            x = block(x)
        return x

    def heads(self, i):
        return self.blocks[i].attn.num_heads

    def qkv(self, i, x):
        b = self.blocks[i]
        a = b.attn
        q, k, v = a.qkv(b.norm1(x)).chunk(3, dim=-1)  # timm lays the fused output out as (3, heads, head_dim)
        return _per_head(a.q_norm, q, a.num_heads), _per_head(a.k_norm, k, a.num_heads), v

    def finish(self, i, x, o):
        b = self.blocks[i]
        norm = getattr(b.attn, "norm", None)  # timm >= 1.0.8: an optional norm of o (scale_norm)
        x = x + b.ls1(b.attn.proj(o if norm is None else norm(o)))
        return x + b.ls2(b.mlp(b.norm2(x)))

    def pool_heads(self):
        return self.attn_pool.num_heads

    def pool_qkv(self, x):
        """The pooling attention's q (B, 1, W) (the latent probe's query), k and v (B, P, W) from the tokens
        (B, P, W) leaving the last block (after the trunk's final norm)."""
        ap = self.attn_pool
        h = self.trunk.norm(x)
        q = ap.q(ap.latent.to(h.dtype)).expand(h.shape[0], -1, -1)
        k, v = ap.kv(h).chunk(2, dim=-1)  # timm lays the fused output out as (2, heads, head_dim)
        return _per_head(ap.q_norm, q, ap.num_heads), _per_head(ap.k_norm, k, ap.num_heads), v

    def pool_finish(self, o):
        """Embeddings (B, R, D) from pooling-attention outputs o (B, R, W) before its out-projection: ``proj``,
        the head's norm + MLP residual, the trunk's ``fc_norm`` and ``head``, the tower's ``head``."""
        ap = self.attn_pool
        y = ap.proj(o)
        if ap.mlp is not None:
            y = y + ap.mlp(ap.norm(y))
        return self.visual.head(self.trunk.head(self.trunk.fc_norm(y)))

    def pool(self, x):
        # the library's own pooling and heads, so that the dense forward is open_clip's encode_image
        return self.visual.head(self.trunk.forward_head(self.trunk.norm(x)))

    @property
    def vision_blocks(self):
        return list(self.blocks)

    def cam_layer(self):
        return self.blocks[-1].norm1, True


register_adapter("open_clip timm tower", lambda model: library_of(model) == "open_clip" and visual_kind(model) == "TimmModel",
                 TimmTowerBackbone, order=FAMILY)
