"""Adapter for Hugging Face ``transformers``: ``CLIPModel`` and ``SiglipModel`` (separate q, k, v projections);
CLIPSeg, AltCLIP and Chinese-CLIP build on ``HFClipBackbone`` in ``hf_families.py``, SigLIP 2 on
``HFSiglipBackbone`` in ``hf_siglip2.py``; each registers itself in ``adapters.py``, and a transformers model that
no entry accepts is refused here in one line.

CLIP: class token, ``pre_layrnorm``, encoder layers, ``post_layernorm`` on the class token, ``visual_projection``;
the text is read at the end-of-text token. SigLIP: no class token; after ``post_layernorm`` the attention-pooling
head's probe is the query of one ``nn.MultiheadAttention`` over all patch tokens, then the head's LayerNorm and MLP
residual give the embedding (no projection); the score is ``sigmoid(exp(logit_scale) * cos + logit_bias)``.
Text features are ``get_text_features`` of the tokenizer's ids with the attention mask it returns (``tokens.py``).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .adapters import FAMILY, LIBRARY, class_names, library_of, register_adapter
from .base import ACCEPTED_MODELS, Backbone, interpolate_grid
from .pixels import CLIP_MEAN, CLIP_STD

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
DECOMPOSED = "CLIPModel, SiglipModel, Siglip2Model, XCLIPModel, CLIPSegModel, AltCLIPModel, ChineseCLIPModel"


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features, older versions a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _run_layer(layer, x, mask=None) -> torch.Tensor:
    """One encoder layer of the library on (B, L, W): transformers 4 takes the causal mask as a separate argument
    of CLIP's layers and returns a tuple; transformers 5 takes one mask and returns the tensor."""
    if "causal_attention_mask" in inspect.signature(layer.forward).parameters:
        out = layer(x, None, mask)
    else:
        out = layer(x, mask)
    return out[0] if isinstance(out, tuple) else out


def _refuse(model, tokenizer=None, name: str = ""):
    """The last entry for transformers: a one-line TypeError for a class no adapter decomposes."""
    if hasattr(model, "get_text_features") and hasattr(model, "get_image_features"):  # both towers, another class
        raise TypeError(f"expected {ACCEPTED_MODELS}; got transformers {type(model).__name__}, which has both towers "
                        f"but is none of the classes whose layers gradeclip decomposes ({DECOMPOSED}): where its "
                        f"attention, norms and pooling lie is not known")
    raise TypeError(f"expected {ACCEPTED_MODELS}; got transformers {type(model).__name__}, which lacks an image or a "
                    f"text tower (use the full CLIPModel or SiglipModel, which has both towers, or the full "
                    f"CLIPSegModel, AltCLIPModel or ChineseCLIPModel)")


def _layer_qkv(layer, x):
    """q, k, v (B, L, W) of a transformers encoder layer (pre-norm, separate projections) for tokens x (B, L, W)."""
    h = layer.layer_norm1(x)
    a = layer.self_attn
    return a.q_proj(h), a.k_proj(h), a.v_proj(h)


def _layer_finish(layer, x, o):
    """The rest of the layer after attention: out-projection of o (B, L', W), residual, MLP with its residual."""
    x = x + layer.self_attn.out_proj(o)
    return x + layer.mlp(layer.layer_norm2(x))


class _HFBackbone(Backbone):
    library = "transformers"
    takes_attention_mask = True  # get_text_features gets the mask the tokenizer returns, as the library's pipeline

    def __init__(self, model, tokenizer=None, name: str = ""):
        super().__init__(model, tokenizer, name)
        vm = model.vision_model
        self.vm, self.layers = vm, vm.encoder.layers
        emb = vm.embeddings
        self.emb = emb
        self.patch_weight = emb.patch_embedding.weight
        self.patch_size = emb.patch_embedding.kernel_size[0]
        self.resolution = model.config.vision_config.image_size
        self.depth = len(self.layers)
        self._text_tower(model)

    def _text_tower(self, model):
        """The text tower's pieces: ``tm``, its blocks, their count and the positions a prompt may fill."""
        self.tm = model.text_model
        self.text_blocks = self.tm.encoder.layers
        self.text_depth = len(self.text_blocks)
        self.context_length = model.config.text_config.max_position_embeddings

    def _positions(self, grid, dtype):
        pos = self.emb.position_embedding.weight.to(dtype)
        if self.prefix:
            return torch.cat([pos[:1], interpolate_grid(pos[1:], grid)])
        return interpolate_grid(pos, grid)

    def _patches(self, pixels):
        x = self.emb.patch_embedding(pixels.to(device=self.patch_weight.device, dtype=self.patch_weight.dtype))
        return x.flatten(2).transpose(1, 2), x.shape[-2:]  # (B, h*w, W), (h, w)

    def run_blocks(self, x, start, stop):
        for layer in self.layers[start:stop]:
            x = _run_layer(layer, x)
        return x

    def heads(self, i):
        return self.layers[i].self_attn.num_heads

    def qkv(self, i, x):
        return _layer_qkv(self.layers[i], x)

    def finish(self, i, x, o):
        return _layer_finish(self.layers[i], x, o)

    def attention_input(self, i, x):
        return self.layers[i].layer_norm1(x)

    def attention_out(self, i, o):
        return self.layers[i].self_attn.out_proj(o)

    @property
    def vision_blocks(self):
        return list(self.layers)

    def cam_layer(self):
        return self.layers[-1].layer_norm1, True

    def logit_scale(self):
        return self.model.logit_scale.exp()

    def encode_image(self, pixels):
        return _features(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens, attention_mask=None):
        return _features(self.model.get_text_features(input_ids=tokens, attention_mask=attention_mask))

    def preprocess(self):
        from .pixels import square_transform
        return square_transform(self.resolution, self.mean, self.std, self.crop)

    # text side (CLIP-style: causal, read at the end-of-text token)
    def text_embed(self, tokens):
        e = self.tm.embeddings
        x = e.token_embedding(tokens)
        return x + e.position_embedding.weight[:tokens.shape[1]].to(x.dtype)

    def text_run_blocks(self, x, start, stop):
        mask = self.text_mask(x.shape[1], x.device, x.dtype)
        mask = None if mask is None else mask.expand(x.shape[0], 1, -1, -1)
        for layer in self.text_blocks[start:stop]:
            x = _run_layer(layer, x, mask)
        return x

    def text_heads(self, i):
        return self.text_blocks[i].self_attn.num_heads

    def text_qkv(self, i, x):
        return _layer_qkv(self.text_blocks[i], x)

    def text_finish(self, i, x, o):
        return _layer_finish(self.text_blocks[i], x, o)


class HFClipBackbone(_HFBackbone):
    mean, std, crop, prefix = CLIP_MEAN, CLIP_STD, True, 1

    def __init__(self, model, tokenizer=None, name: str = ""):
        super().__init__(model, tokenizer, name)
        self.output_dim = model.config.projection_dim

    def embed_image(self, pixels):
        x, grid = self._patches(pixels)
        cls = self.emb.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positions(grid, x.dtype)
        return self.vm.pre_layrnorm(x)

    def pool_rows(self, y):
        return self.model.visual_projection(self.vm.post_layernorm(y))

    def pool(self, x):
        return self.pool_rows(x[:, 0])

    def text_mask(self, length, device, dtype):
        return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)

    def text_query(self, tokens):
        eos = self.tm.eos_token_id
        if eos == 2:  # the legacy configuration: the highest id is the end-of-text token
            return tokens.argmax(dim=-1)
        return (tokens == eos).int().argmax(dim=-1)

    def text_pool(self, rows):
        return self.model.text_projection(self.tm.final_layer_norm(rows))


class HFSiglipBackbone(_HFBackbone):
    mean, std, crop, prefix = SIGLIP_MEAN, SIGLIP_STD, False, 0

    def __init__(self, model, tokenizer=None, name: str = ""):
        super().__init__(model, tokenizer, name)
        if not getattr(self.vm, "use_head", True):
            raise TypeError("this SiglipModel has no attention-pooling head (vision_use_head=False); its image "
                            "embedding is not defined")
        self.head = self.vm.head
        self.output_dim = model.config.vision_config.hidden_size

    def embed_image(self, pixels):
        x, grid = self._patches(pixels)
        return x + self._positions(grid, x.dtype)

    def pool_heads(self):
        return self.head.attention.num_heads

    def pool_qkv(self, x):
        """The pooling attention's q (B, 1, W) (the probe's query), k and v (B, P, W) from the last tokens (B, P, W)."""
        h = self.vm.post_layernorm(x)
        attn = self.head.attention
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        probe = self.head.probe.to(h.dtype).expand(h.shape[0], -1, -1)
        return F.linear(probe, wq, bq), F.linear(h, wk, bk), F.linear(h, wv, bv)

    def pool_finish(self, o):
        """Embeddings (B, R, D) from pooling-attention outputs o (B, R, W) before the out-projection."""
        y = F.linear(o, self.head.attention.out_proj.weight, self.head.attention.out_proj.bias)
        return y + self.head.mlp(self.head.layernorm(y))

    def pool(self, x):
        return self.head(self.vm.post_layernorm(x))  # the library's own head: the dense forward is its own

    @torch.no_grad()
    def probabilities(self, cosine):
        return torch.sigmoid(self.logit_scale().float() * cosine.float() + self.model.logit_bias.float())

    def text_query(self, tokens):
        return torch.full(tokens.shape[:1], tokens.shape[1] - 1, device=tokens.device, dtype=torch.long)

    def text_embed(self, tokens):
        raise ValueError("word importance needs a CLIP-style text tower (causal, read at the end-of-text token); "
                         "SigLIP's text tower is not supported")


def transformers_class(cls: str):
    """A predicate: a transformers model whose MRO has a class named ``cls``."""
    return lambda model: library_of(model) == "transformers" and cls in class_names(model)


register_adapter("transformers CLIPModel", transformers_class("CLIPModel"), HFClipBackbone, order=FAMILY)
register_adapter("transformers SiglipModel", transformers_class("SiglipModel"), HFSiglipBackbone, order=FAMILY)
register_adapter("transformers refused", lambda model: library_of(model) == "transformers", _refuse, order=LIBRARY)
