"""Adapter for ``open_clip`` models (``CLIP``, ``CustomTextCLIP``) with open_clip's own ViT image tower.

The tower's blocks are ``ResidualAttentionBlock``s (``nn.MultiheadAttention``, optional LayerScale ``ls_1``/``ls_2``),
run batch-first or sequence-first as the tower says; patch dropout is off in eval mode and skipped here; the image
embedding is the class token after ``ln_post`` and ``proj``; with CoCa's attentional pooler
(``OpenClipPoolerBackbone``) it is the pooler's first query after ``ln_post`` and ``proj``. Towers that pool
otherwise (averaging, parallel or cascaded poolers) are refused with one line. A timm tower with an attention-pooling
head (open_clip's SigLIP) has its own adapter, ``timm_tower.py``, and a timm ``Eva`` tower (EVA02-CLIP, PE-Core)
``eva_tower.py``, each registered in ``adapters.py``; other timm towers are refused there. The text side is read
at the token open_clip pools (argmax or end-of-text id) with ``ln_final`` and ``text_projection``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import FAMILY, LIBRARY, library_of, register_adapter, visual_kind
from .base import Backbone, interpolate_grid
from .pixels import CLIP_MEAN, CLIP_STD


def _block_finish(b, x, o):
    """The rest of an open_clip residual block after attention: out-projection of o (B, L', W), LayerScale,
    residual, then the MLP with its LayerScale and residual."""
    x = x + b.ls_1(F.linear(o, b.attn.out_proj.weight, b.attn.out_proj.bias))
    return x + b.ls_2(b.mlp(b.ln_2(x)))


def _mha_qkv(norm, attn, x):
    h = norm(x)
    return F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)


def preprocess_constants(visual):
    """(mean, std, crop) of an open_clip image tower: its own preprocessing configuration, CLIP's by default."""
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(getattr(visual, "image_mean", None) or cfg.get("mean") or CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or cfg.get("std") or CLIP_STD)
    return mean, std, cfg.get("resize_mode", "shortest") != "squash"


class OpenClipBackbone(Backbone):
    library = "open_clip"

    def __init__(self, model, tokenizer=None, name: str = ""):
        super().__init__(model, tokenizer, name)
        visual = getattr(model, "visual", None)
        kind = type(visual).__name__
        if kind != "VisionTransformer" or not hasattr(visual, "transformer"):
            raise TypeError(f"gradeclip cannot explain this open_clip image tower ({kind}): it explains open_clip's "
                            f"own ViT, its ModifiedResNet, or a timm ViT with an attention-pooling head (SigLIP)")
        pooler = getattr(visual, "attn_pool", None) is not None
        if pooler != self.pooled_by_head or getattr(visual, "pool_type", "tok") != "tok" \
                or getattr(visual, "attn_pool_contrastive", None) is not None:
            raise TypeError("this open_clip image tower pools by averaging or with a parallel or cascaded attention "
                            "pooler; gradeclip explains towers that read the class token (pool_type 'tok') or the "
                            "first query of CoCa's attentional pooler")
        blocks = visual.transformer.resblocks
        if any(type(b).__name__ != "ResidualAttentionBlock" for b in blocks):
            raise TypeError("this open_clip tower uses custom attention blocks (scaled cosine attention or head "
                            "scaling), which gradeclip cannot decompose")
        self.visual, self.blocks = visual, blocks
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.patch_weight = visual.conv1.weight
        self.patch_size = visual.conv1.kernel_size[0]
        size = visual.image_size
        self.resolution = size[0] if isinstance(size, (tuple, list)) else size
        self.depth = len(blocks)
        self.output_dim = visual.output_dim
        self.mean, self.std, self.crop = preprocess_constants(visual)
        self._init_text(model)

    def _init_text(self, model):
        self.text = getattr(model, "text", model)  # CustomTextCLIP keeps its text tower in .text
        self.context_length = getattr(self.text, "context_length", getattr(model, "context_length", 77))
        self.text_blocks = getattr(getattr(self.text, "transformer", None), "resblocks", [])
        self.text_depth = len(self.text_blocks)
        # open_clip's CLIP copies its text tower's pooling onto itself (text_pool_type, text_eos_id); a separate
        # text tower (CustomTextCLIP's .text) keeps them as pool_type and eos_id
        self.text_pool_type = getattr(self.text, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
        self.text_eos_id = getattr(self.text, "eos_id", getattr(model, "text_eos_id", None))

    # image side
    def embed_image(self, pixels):
        v = self.visual
        x = v.conv1(pixels.to(device=self.patch_weight.device, dtype=self.patch_weight.dtype))  # (B, W, h, w)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, W)
        pos = v.positional_embedding.to(x.dtype)
        pos = torch.cat([pos[:1], interpolate_grid(pos[1:], grid)])
        x = torch.cat([v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1) + pos
        return v.ln_pre(x)  # patch dropout is the identity in eval mode

    def run_blocks(self, x, start, stop):
        if stop <= start:
            return x
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in self.blocks[start:stop]:
            x = block(x)
        return x if self.batch_first else x.transpose(0, 1)

    def heads(self, i):
        return self.blocks[i].attn.num_heads

    def qkv(self, i, x):
        return _mha_qkv(self.blocks[i].ln_1, self.blocks[i].attn, x)

    def finish(self, i, x, o):
        return _block_finish(self.blocks[i], x, o)

    def attention_input(self, i, x):
        return self.blocks[i].ln_1(x)

    def attention_out(self, i, o):
        b = self.blocks[i]
        return b.ls_1(F.linear(o, b.attn.out_proj.weight, b.attn.out_proj.bias))

    def pool_rows(self, y):
        y = self.visual.ln_post(y)
        return y if self.visual.proj is None else y @ self.visual.proj

    def pool(self, x):
        return self.pool_rows(x[:, 0])

    @property
    def vision_blocks(self):
        return list(self.blocks)

    def cam_layer(self):
        return self.blocks[-1].ln_1, self.batch_first

    def logit_scale(self):
        return self.model.logit_scale.exp()

    @torch.no_grad()
    def probabilities(self, cosine):
        bias = getattr(self.model, "logit_bias", None)
        if bias is None:
            return super().probabilities(cosine)
        return torch.sigmoid(self.logit_scale().float() * cosine.float() + bias.float())

    def encode_image(self, pixels):
        return self.model.encode_image(pixels)

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)

    def preprocess(self):
        from .pixels import square_transform
        return square_transform(self.resolution, self.mean, self.std, self.crop)

    # text side
    def default_tokenize(self, prompts, *, truncate: bool = False):
        if getattr(self.text, "vocab_size", None) != 49408:
            return super().default_tokenize(prompts, truncate=truncate)
        from .model import tokenize_with_clip_bpe
        return tokenize_with_clip_bpe(prompts, self.context_length, truncate).to(self.device)

    def _check_text(self):
        if not self.text_depth or getattr(self.text, "cls_emb", None) is not None \
                or self.text_pool_type not in ("argmax", "eos"):
            raise TypeError("word importance needs open_clip's own text transformer read at the end-of-text token; "
                            "this model's text tower is different")

    def text_embed(self, tokens):
        self._check_text()
        x = self.text.token_embedding(tokens)
        return x + self.text.positional_embedding[:tokens.shape[1]].to(x.dtype)

    def text_run_blocks(self, x, start, stop):
        if stop <= start:
            return x
        mask = self.text_mask(x.shape[1], x.device, x.dtype)
        first = getattr(self.text.transformer, "batch_first", True)
        x = x if first else x.transpose(0, 1)
        for block in self.text_blocks[start:stop]:
            x = block(x, attn_mask=mask)
        return x if first else x.transpose(0, 1)

    def text_heads(self, i):
        return self.text_blocks[i].attn.num_heads

    def text_qkv(self, i, x):
        return _mha_qkv(self.text_blocks[i].ln_1, self.text_blocks[i].attn, x)

    def text_finish(self, i, x, o):
        return _block_finish(self.text_blocks[i], x, o)

    def text_mask(self, length, device, dtype):
        mask = getattr(self.text, "attn_mask", None)
        return None if mask is None else mask[:length, :length].to(device=device, dtype=dtype)

    def text_query(self, tokens):
        if self.text_pool_type == "eos":  # the first end-of-text token, as open_clip's text_global_pool reads it
            return (tokens == self.text_eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)  # 'argmax': open_clip's own rule (CLIP's BPE gives the end token the top id)

    def text_pool(self, rows):
        x = self.text.ln_final(rows)
        proj = self.text.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj



class OpenClipPoolerBackbone(OpenClipBackbone):
    """open_clip's own ViT tower pooled by CoCa's attentional pooler (``attentional_pool=True``): the tokens after
    the last block (class token included) pass ``attn_pool.ln_k`` and are the keys and values of one
    ``nn.MultiheadAttention`` whose queries are ``ln_q(query)``; ``ln_post`` then reads the first query's row, which
    ``proj`` turns into the embedding. That first query is the probe that Grad-ECLIP decomposes."""

    pooled_by_head = True

    def pool_heads(self):
        return self.visual.attn_pool.attn.num_heads

    def pool_qkv(self, x):
        """The pooler's first query (B, 1, W') and the keys and values (B, L, W') of all tokens x (B, L, W)."""
        p = self.visual.attn_pool
        a = p.attn
        if a._qkv_same_embed_dim:
            wq, wk, wv = a.in_proj_weight.chunk(3)
        else:  # the pooler's width differs from the tower's: separate projections
            wq, wk, wv = a.q_proj_weight, a.k_proj_weight, a.v_proj_weight
        bq, bk, bv = a.in_proj_bias.chunk(3) if a.in_proj_bias is not None else (None, None, None)
        h = p.ln_k(x)
        q = p.ln_q(p.query[:1]).to(h.dtype).expand(h.shape[0], -1, -1)
        return F.linear(q, wq, bq), F.linear(h, wk, bk), F.linear(h, wv, bv)

    def pool_finish(self, o):
        """Embeddings (B, R, D) from pooler outputs o (B, R, W') before its out-projection: out_proj, ln_post, proj."""
        out = self.visual.attn_pool.attn.out_proj
        y = self.visual.ln_post(F.linear(o, out.weight, out.bias))
        return y if self.visual.proj is None else y @ self.visual.proj

    def pool(self, x):
        pooled, _ = self.visual._pool(x)  # the library's own pooling, so that the dense forward is its own
        return pooled if self.visual.proj is None else pooled @ self.visual.proj

    def encode_image(self, pixels):
        out = self.visual(pixels)  # CoCa's encode_image normalises; its tower returns (pooled, tokens)
        return out[0] if isinstance(out, tuple) else out


def _has_pooler(model) -> bool:
    """An open_clip tower (not a timm one: ``timm_tower.py``) with CoCa's attentional pooler."""
    return library_of(model) == "open_clip" and visual_kind(model) != "TimmModel" and getattr(getattr(model, "visual", None), "attn_pool", None) is not None


register_adapter("open_clip attentional pooler", _has_pooler, OpenClipPoolerBackbone, order=FAMILY)
register_adapter("open_clip", lambda model: library_of(model) == "open_clip", OpenClipBackbone, order=LIBRARY)
