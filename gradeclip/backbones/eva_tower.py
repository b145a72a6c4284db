"""Adapter for open_clip models whose image tower is timm's ``Eva``: rotary ViTs (EVA02-CLIP, Perception Encoder).

open_clip builds ``EVA02-B-16`` and ``PE-Core-B-16`` (and their kin) as a ``CustomTextCLIP`` whose ``visual`` is a
``TimmModel`` wrapping a timm ``Eva``. In timm's names the image side is: ``patch_embed`` (``proj`` convolution,
``norm``), the class token, ``pos_embed`` for class token and patches (resampled to any patch grid as timm's own
``dynamic_img_size`` path does: ``resample_abs_pos_embed``, the identity at the trained grid), ``norm_pre``, the
``blocks`` (``EvaBlock``: ``norm1``; or EVA02-E's residual post-norm ``EvaBlockPostNorm``, whose ``norm1``/``norm2``
normalise the attention and MLP outputs; ``attn`` = ``EvaAttention`` (EVA02: separate ``q_proj``/``k_proj``/``v_proj``,
or a fused ``qkv`` with ``q_bias``/``v_bias``) or ``AttentionRope`` (PE: fused ``qkv`` with its bias), per-head
``q_norm``/``k_norm``, the 2-D rotary embedding on the patch tokens only (never the class token), the inner
``attn.norm`` of the attention output, ``attn.proj``; layer scale ``gamma_1``/``gamma_2`` where set; ``norm2``,
``mlp`` (SwiGLU for EVA02)), the final ``norm``, then either the class token (``timm_pool="token"``: EVA02) or
``attn_pool`` (``AttentionPoolLatent``, ``timm_pool="map"``: PE; a learned probe over all tokens, class token
included; PE-Core-bigG has no class token), ``fc_norm``, the trunk's ``head`` (open_clip's projection) and the
``TimmModel``'s ``head``. EVA01 towers are the same without a rotary embedding.

The rotary embedding depends on the patch grid: it is timm's ``RotaryEmbeddingCat`` output (N, 2 * head_dim)
(sin then cos) for the grid of the pixels last given to ``embed_image`` (the grid is kept on the adapter, and
``run_blocks``/``qkv`` refuse tokens of another count). At the trained grid it is the tower's own cached
embedding; elsewhere it is built from the module's frequency bands exactly as timm builds it with
``dynamic_img_size`` (non-square grids included). Dropout, drop path and patch dropout are the identity in eval
mode and skipped. Towers with register tokens, gated or grouped-query attention, depth-dependent ("mixed") rotary
embeddings or pooling other than the class token or one latent probe are refused in one line.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .adapters import SPECIFIC, library_of, register_adapter, visual_kind
from .base import Backbone
from .timm_tower import TimmTowerBackbone, _per_head


def _refuse(what: str):
    raise TypeError(f"this open_clip timm Eva image tower {what}; gradeclip explains Eva towers without register "
                    f"tokens, with timm's RotaryEmbeddingCat (or no rotary embedding) and class-token or "
                    f"latent-probe pooling (EVA01/EVA02-CLIP, PE-Core)")


def _check_tower(trunk) -> None:
    """One-line refusals for the Eva variants this adapter does not decompose."""
    if trunk.reg_token is not None:
        _refuse("has register tokens")
    if trunk.global_pool not in ("token", "map"):
        _refuse(f"pools with {trunk.global_pool!r}")
    if trunk.global_pool == "map" and (trunk.attn_pool.latent_len != 1 or trunk.attn_pool.pos_embed is not None):
        _refuse("has an attention pool with several latents or its own positional embedding")
    if trunk.rope is not None and (getattr(trunk, "rope_mixed", False)
                                   or type(trunk.rope).__name__ != "RotaryEmbeddingCat"):
        _refuse(f"uses a {type(trunk.rope).__name__} rotary embedding")
    for b in trunk.blocks:
        a = b.attn
        if type(b).__name__ not in ("EvaBlock", "EvaBlockPostNorm") \
                or type(a).__name__ not in ("EvaAttention", "AttentionRope"):
            _refuse(f"has {type(b).__name__} blocks with {type(a).__name__}")
        if a.gate is not None or getattr(a, "num_kv_groups", 1) != 1:
            _refuse("has gated or grouped-query attention")
    pe = trunk.patch_embed
    if pe.patch_size[0] != pe.patch_size[1] or getattr(pe, "dynamic_img_pad", False):
        _refuse("has non-square or padded patches")


class EvaTowerBackbone(TimmTowerBackbone):
    """open_clip ``CustomTextCLIP`` with a timm ``Eva`` tower: class-token pooling (EVA02, EVA01) or a latent-probe
    attention pool over all tokens, a class token among them where the tower has one (PE-Core; not PE-Core-bigG).
    Blocks are pre-norm (``EvaBlock``) or residual post-norm (``EvaBlockPostNorm``: EVA02-E, whose ``norm1`` and
    ``norm2`` normalise the attention and MLP outputs). The pooling-head functions (``pool_heads``, ``pool_qkv``,
    ``pool_finish``, ``pool``) are the SigLIP adapter's: the same ``AttentionPoolLatent``."""

    def __init__(self, model, tokenizer=None, name: str = ""):
        Backbone.__init__(self, model, tokenizer, name)
        visual = model.visual
        trunk = visual.trunk
        _check_tower(trunk)
        self.visual, self.trunk, self.blocks = visual, trunk, trunk.blocks
        self.attn_pool = trunk.attn_pool
        self.prefix = trunk.num_prefix_tokens  # 1: a class token before the patches; 0: none (PE-Core-bigG)
        self.post_norm = type(trunk.blocks[0]).__name__ == "EvaBlockPostNorm"
        self.pooled_by_head = trunk.attn_pool is not None
        self.batch_first = True
        self._patching(visual, trunk.patch_embed)
        self.grid = self.trained_grid  # the patch grid of the pixels last embedded (the rotary embedding's)
        with torch.no_grad():  # the embedding width after the head and the tower's projection
            probe = torch.zeros(1, 1, trunk.embed_dim, device=self.patch_weight.device, dtype=self.patch_weight.dtype)
            self.output_dim = (self.pool_finish(probe) if self.pooled_by_head else self.pool_rows(probe)).shape[-1]
        self._init_text(model)

    # ----- the rotary embedding of the explained grid
    def rope(self, grid: Tuple[int, int]):
        """timm's rotary embedding (h*w, 2 * head_dim) float32 (sin, then cos) for the patch grid (h, w), or None
        where the tower has none: the tower's cached one at its trained grid, else built from its frequency
        bands as timm builds it with ``dynamic_img_size``."""
        rope = self.trunk.rope
        if rope is None:
            return None
        cached = getattr(rope, "_use_cached_embed", True)  # a fixed-size tower caches its grid's embedding
        if not cached:
            return rope.get_embed(shape=list(grid))
        if tuple(grid) == self.trained_grid:
            return rope.get_embed()
        if not hasattr(rope, "_build_embed_cat"):
            h, w = self.trained_grid
            raise ValueError(f"this timm version cannot build the rotary embedding of a {grid[0]}x{grid[1]} patch "
                             f"grid for a fixed-size tower; use input='library' (its {h}x{w} grid) or a newer timm")
        return rope._build_embed_cat(list(grid), rope.bands)

    def _rope_for(self, x: torch.Tensor):
        h, w = self.grid
        if x.shape[1] != self.prefix + h * w:
            raise ValueError(f"tokens of length {x.shape[1]} do not match the {h}x{w} patch grid last embedded "
                             f"({self.prefix} + {h * w} tokens): call embed_image on these pixels first")
        rope = self.rope(self.grid)
        return None if rope is None else rope.to(x.device)

    # ----- image side
    def embed_image(self, pixels):
        from timm.layers import resample_abs_pos_embed

        t = self.trunk
        pe = t.patch_embed
        x = pe.proj(pixels.to(device=self.patch_weight.device, dtype=self.patch_weight.dtype))  # (B, W, h, w)
        self.grid = tuple(x.shape[-2:])
        x = pe.norm(x.flatten(2).transpose(1, 2))  # (B, h*w, W)
        if t.cls_token is not None:
            x = torch.cat([t.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        if t.pos_embed is not None:
            prefix = 0 if t.no_embed_class else self.prefix
            pos = resample_abs_pos_embed(t.pos_embed, new_size=list(self.grid), old_size=self.trained_grid,
                                         num_prefix_tokens=prefix).to(x.dtype)
            x = torch.cat([x[:, :self.prefix], x[:, self.prefix:] + pos], dim=1) if t.no_embed_class else x + pos
        return t.norm_pre(x)

    def run_blocks(self, x, start, stop):
        if stop <= start:
            return x
        rope = self._rope_for(x)
        for block in self.blocks[start:stop]:
            x = block(x, rope=rope)
        return x

    def qkv(self, i, x):
        """q, k, v (B, L, W') of block i as timm computes them: projections of ``norm1(x)`` (of x in post-norm
        blocks), per-head q/k norms, then the rotary embedding of the grid on every patch token's q and k (not the
        class token's)."""
        a = self.blocks[i].attn
        h = self.attention_input(i, x)
        if a.qkv is None:
            q, k, v = a.q_proj(h), a.k_proj(h), a.v_proj(h)
        else:
            bias = a.qkv.bias if getattr(a, "q_bias", None) is None \
                else torch.cat((a.q_bias, a.k_bias, a.v_bias))
            q, k, v = F.linear(h, a.qkv.weight, bias).chunk(3, dim=-1)  # laid out (3, heads, head_dim)
        heads = a.num_heads
        q, k = _per_head(a.q_norm, q, heads), _per_head(a.k_norm, k, heads)
        rope = self._rope_for(x)
        if rope is None:
            return q, k, v
        return self._rotate(q, rope, heads, a.rotate_half), self._rotate(k, rope, heads, a.rotate_half), v

    def _rotate(self, t: torch.Tensor, rope: torch.Tensor, heads: int, half: bool) -> torch.Tensor:
        """timm's rotation (``apply_rot_embed_cat``) of the patch rows of t (B, prefix + P, W'), per head."""
        from timm.layers import apply_rot_embed_cat

        b, n, width = t.shape
        p = self.prefix
        patches = t[:, p:].reshape(b, n - p, heads, width // heads).transpose(1, 2)  # (B, heads, P, d)
        patches = apply_rot_embed_cat(patches, rope, half=half).type_as(t)
        return torch.cat([t[:, :p], patches.transpose(1, 2).reshape(b, n - p, width)], dim=1)

    def attention_input(self, i, x):
        return x if self.post_norm else self.blocks[i].norm1(x)

    def attention_out(self, i, o):
        """The attention's residual term from o (B, L', W') before its inner norm: ``attn.norm``, ``attn.proj``,
        then the layer scale ``gamma_1`` where the block has one (post-norm blocks: ``norm1`` instead)."""
        b = self.blocks[i]
        y = b.attn.proj(b.attn.norm(o))
        if self.post_norm:
            return b.norm1(y)
        return y if b.gamma_1 is None else b.gamma_1 * y

    def finish(self, i, x, o):
        b = self.blocks[i]
        x = x + self.attention_out(i, o)
        if self.post_norm:
            return x + b.norm2(b.mlp(x))
        y = b.mlp(b.norm2(x))
        return x + (y if b.gamma_2 is None else b.gamma_2 * y)

    def cam_layer(self):
        # the last block's attention input: norm1's output, or (post-norm) the block's input, which the previous
        # block's output is
        if self.post_norm:
            return (self.blocks[-2] if self.depth > 1 else self.trunk.norm_pre), True
        return self.blocks[-1].norm1, True

    def pool_rows(self, y):
        """Embeddings (B, R, D) of token rows y (B, R, W) read as the class token is read (``timm_pool="token"``):
        the final norm, ``fc_norm``, the trunk's head and the tower's head."""
        return self.visual.head(self.trunk.head(self.trunk.fc_norm(self.trunk.norm(y))))


def _eva_trunk(model) -> bool:
    """An open_clip ``TimmModel`` tower whose trunk is timm's rotary ``Eva`` (EVA02-CLIP, PE-Core)."""
    return library_of(model) == "open_clip" and visual_kind(model) == "TimmModel" \
        and type(getattr(model.visual, "trunk", None)).__name__ == "Eva"


register_adapter("open_clip timm Eva tower", _eva_trunk, EvaTowerBackbone, order=SPECIFIC)
