"""The backbone interface: one view of a CLIP-family ViT that every explanation method is written against.

A ``Backbone`` wraps a model object of one library (openai-clip, open_clip, transformers) and exposes its image
tower in pieces: tokens at any patch grid, blocks run without autograd, a decomposed attention (q, k, v, the output
before the out-projection, the rest of the block), pooling to the image embedding (class token -> post-norm ->
projection, or SigLIP's attention-pooling head), the text side, the library's own score, and its preprocessing
constants. Only the adapters (``openai.py``, ``open_clip.py``, ``hf.py``, ...) know a library's attribute names;
each registers itself in ``adapters.py``, where ``backbone_of`` finds it.
Tensors are batch-first here: (B, L, W) for B images, L tokens, W channels.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .adapters import adapter_for
from .tokens import call_tokenizer, check_prompts, decode_token, tokenizer_inputs  # noqa: F401 (call_tokenizer: public name)

ACCEPTED_MODELS = ("an openai-clip clip.model.CLIP (ViT or ResNet), an open_clip CLIP, CustomTextCLIP or CoCa, "
                   "a transformers CLIPModel, SiglipModel, Siglip2Model, CLIPSegModel, AltCLIPModel, "
                   "ChineseCLIPModel or XCLIPModel, or a gradeclip Backbone")


def interpolate_grid(patches: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Patch positional embeddings (N, W) of a square trained grid, resized to ``grid`` (h, w) -> (h*w, W).

    Bicubic, align_corners=False (as the libraries interpolate); unchanged at the trained grid.
    """
    side = round(patches.shape[0] ** 0.5)
    if tuple(grid) == (side, side):
        return patches
    x = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(grid), mode="bicubic", align_corners=False)
    return x.flatten(2).squeeze(0).T


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
           mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention split into ``heads`` heads.

    q (B, Lq, W), k and v (B, L, W), ``mask`` additive (Lq, L). Returns the attention output o before the
    out-projection (B, Lq, W) and the attention weights (B, heads, Lq, L).
    """
    b, lq, width = q.shape
    d = width // heads
    qh = q.reshape(b, lq, heads, d).transpose(1, 2) * d ** -0.5
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2)  # (B, heads, Lq, L)
    if mask is not None:
        logits = logits + mask
    weights = logits.softmax(dim=-1)
    o = (weights @ vh).transpose(1, 2).reshape(b, lq, width)
    return o, weights


class Backbone:
    """A CLIP-family ViT seen through one interface. Subclasses (the adapters) fill in the library specifics.

    Attributes every adapter sets: ``model`` (the library's object), ``tokenizer`` (or None), ``name`` (what it was
    loaded as, may be empty), ``library``, ``patch_size``, ``resolution`` (trained square side in pixels),
    ``mean``/``std`` (RGB normalisation), ``crop`` (True: resize the short side and centre-crop; False: squash to a
    square), ``prefix`` (1 with a class token, 0 without), ``pooled_by_head`` (the embedding comes from an
    attention-pooling head, not the class token's row), ``depth`` (vision blocks), ``output_dim``,
    ``patch_weight`` (the patch embedding's weight: device and dtype), ``context_length``, ``text_depth``.

    Methods every adapter provides (x: tokens (B, L, W) batch-first; i: a block index):
    ``embed_image(pixels)`` -> tokens entering block 0 (class token first if any, positions interpolated);
    ``run_blocks(x, start, stop)`` through the library's own block modules; ``heads(i)``; ``qkv(i, x)`` -> q, k, v
    (B, L, W) after the block's first norm; ``finish(i, x, o)`` -> the block's output from the attention output o
    before its out-projection (rows of x match rows of o); with a class token also ``attention_input(i, x)`` (the
block's first norm of x, what q, k, v are projected from) and ``attention_out(i, o)`` (the out-projection, and layer
scale where the block has one, of o: the attention's residual term alone); ``pool(x)`` -> image features (B, D);
    ``vision_blocks``; ``cam_layer()`` -> (module, batch_first) for the grad-cam package; ``logit_scale()``;
    ``encode_image(pixels)`` and ``encode_text(tokens)`` (the library's own); ``preprocess()``. With a class token
    also ``pool_rows(y)`` (B, R, W) -> (B, R, D); without one (attention-pooling head) ``pool_heads()``,
    ``pool_qkv(x)`` -> the probe's q (B, 1, W), k, v and ``pool_finish(o)`` (B, R, W) -> (B, R, D). Text side:
    ``text_embed(tokens)``, ``text_run_blocks``, ``text_heads``, ``text_qkv``, ``text_finish``,
    ``text_mask(T, device, dtype)`` (additive or None), ``text_query(tokens)`` -> (K,) pooled position,
    ``text_pool(rows)`` (K, W) -> (K, D); ``text_word_end`` and ``text_lengths`` where the defaults do not hold.
    Under a pooling head the keys and values of ``pool_qkv`` span all tokens, the first ``prefix`` of them (a class
    token) before the patches.
    """

    library = "?"
    prefix = 1
    pooled_by_head = False  # True where an attention-pooling head makes the embedding (SigLIP, CoCa)

    def __init__(self, model, tokenizer=None, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name

    # ----- generic parts, written once on top of the adapter's pieces
    @property
    def has_class_token(self) -> bool:
        """True where the image embedding is read from the class token's row (False under a pooling head, even
        where the tokens carry a class token, as in CoCa: ``prefix`` counts the tokens before the patches)."""
        return self.prefix == 1 and not self.pooled_by_head

    @property
    def parameter(self) -> torch.Tensor:
        return self.patch_weight

    @property
    def device(self) -> torch.device:
        return self.parameter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.parameter.dtype

    def describe(self) -> dict:
        """``{"library": ..., "model": ...}`` for figures and sidecars."""
        return {"library": self.library, "model": self.name or type(self.model).__name__}

    def require_class_token(self, method: str) -> None:
        """One-line ValueError for methods that read the class token's row, on models whose image embedding is not
        that row (no class token, or one that an attention-pooling head only attends to)."""
        if not self.has_class_token:
            raise ValueError(f"{method} needs the image embedding to be the class token's row; "
                             f"{type(self.model).__name__} pools its image embedding with an attention head instead "
                             f"(use grad_eclip, legrad, grad_cam, maskclip or rise)")

    def check_pixels(self, pixels: torch.Tensor) -> Tuple[int, int]:
        """Validate normalised pixels (B, 3, H, W); returns the patch grid (h, w)."""
        patch = self.patch_size
        if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
            raise TypeError(f"pixels must be a float tensor (B, 3, H, W), got {type(pixels).__name__}"
                            + (f" of {pixels.dtype}" if isinstance(pixels, torch.Tensor) else ""))
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h % patch or w % patch or h == 0 or w == 0:
            raise ValueError(f"pixel height and width must be positive multiples of the patch size {patch}, "
                             f"got {h}x{w}; gradeclip.to_pixels resizes frames accordingly")
        return h // patch, w // patch

    def unit_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """Text features (K, D) validated, L2-normalised, detached, on the model's device and dtype."""
        if not isinstance(text_features, torch.Tensor) or text_features.ndim != 2 \
                or text_features.shape[1] != self.output_dim:
            shape = tuple(text_features.shape) if isinstance(text_features, torch.Tensor) \
                else type(text_features).__name__
            raise ValueError(f"text_features must have shape (K, {self.output_dim}), got {shape}")
        return F.normalize(text_features.detach().to(device=self.device, dtype=self.dtype), dim=-1)

    @torch.no_grad()
    def tokens_before(self, pixels: torch.Tensor, stop: int) -> torch.Tensor:
        """Tokens (B, L, W) entering block ``stop`` (0-based; negative counts from the end), without autograd."""
        return self.run_blocks(self.embed_image(pixels), 0, stop % self.depth if stop < 0 else stop)

    def readout(self, x: torch.Tensor, last: int) -> torch.Tensor:
        """Image features (B, D) from the tokens entering block ``last`` (the last block): only the rows the score
        depends on go through it (the class token; all tokens where an attention head pools)."""
        q, k, v = self.qkv(last, x)
        rows = slice(0, 1) if self.has_class_token else slice(None)
        o, _ = attend(q[:, rows], k, v, self.heads(last))
        return self.pool(self.finish(last, x[:, rows], o))

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image features (B, D), not normalised, at any patch grid; the library's own embedding at its size."""
        self.check_pixels(pixels)
        return self.pool(self.run_blocks(self.embed_image(pixels), 0, self.depth))

    @torch.no_grad()
    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """The library's own probabilities from cosines (N, K): softmax over prompts of logit_scale * cos."""
        return (self.logit_scale().float() * cosine.float()).softmax(dim=-1)

    # ----- text side
    truncate = False  # True: prompts over the context length are cut with a warning (``with_truncation``)
    takes_attention_mask = False  # True where encode_text accepts the tokenizer's attention mask (transformers)

    def text_inputs(self, prompts: Union[str, Sequence[str]], *, truncate: Optional[bool] = None
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Token ids (K, T) int64 and the tokenizer's attention mask (K, T) or None, on the model's device, from the
        given tokenizer or the model's own, exactly as the library tokenizes (``tokens.tokenizer_inputs``).
        Over-long prompts are cut (with a warning) where ``truncate`` or the backbone's ``truncate`` setting is
        True, else refused in one line."""
        prompts = check_prompts(prompts)
        truncate = bool(truncate) or self.truncate
        if self.tokenizer is None:
            return self.default_tokenize(prompts, truncate=truncate), None
        ids, mask = tokenizer_inputs(self.tokenizer, prompts, self.context_length, truncate)
        return ids.to(self.device), None if mask is None else mask.to(self.device)

    def tokenize(self, prompts: Union[str, Sequence[str]], *, truncate: Optional[bool] = None) -> torch.Tensor:
        """Token ids (K, T) int64 on the model's device, with the given tokenizer or the model's own; T is the
        tokenizer's length (77 for CLIP's BPE, 64 for SigLIP's, ...), at most the text tower's positions."""
        return self.text_inputs(prompts, truncate=truncate)[0]

    def default_tokenize(self, prompts, *, truncate: bool = False) -> torch.Tensor:
        raise TypeError(f"{type(self.model).__name__} carries no tokenizer: pass tokenizer= (a callable from a "
                        f"list of strings to a (K, T) tensor of token ids, an open_clip tokenizer, or a transformers "
                        f"tokenizer or processor), or load the model with gradeclip.load_clip, which keeps its "
                        f"tokenizer")

    @torch.no_grad()
    def encode_prompts(self, prompts, *, truncate: Optional[bool] = None) -> torch.Tensor:
        """Text features (K, D) float32, the library's own (its tokenizer, its attention mask where the tower takes
        one, its ``encode_text``/``get_text_features``), not normalised."""
        ids, mask = self.text_inputs(prompts, truncate=truncate)
        if mask is not None and self.takes_attention_mask:
            return self.encode_text(ids, attention_mask=mask).float()
        return self.encode_text(ids).float()

    def text_word_end(self, tokens: torch.Tensor) -> torch.Tensor:
        """(K,) position of the token that ends the words of each prompt (K, T): the query token (CLIP's end of
        text) unless the tower is read elsewhere."""
        return self.text_query(tokens)

    def text_lengths(self, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        """(K,) tokens of each prompt that a bidirectional text tower attends to (the rest is padding its library
        masks), or None where padding cannot change the score (causal towers read before it)."""
        return None

    def token_words(self, tokens: torch.Tensor) -> list:
        """The word tokens (strings) of one tokenised prompt (T,), between its start token and its last word."""
        end = int(self.text_word_end(tokens[None])[0])
        ids = tokens[1:end].tolist()
        decode = getattr(getattr(self.tokenizer, "tokenizer", self.tokenizer), "decode", None)
        if decode is not None:
            return [decode([t]).strip() for t in ids]
        return [decode_token(t) for t in ids]


def with_truncation(model, truncate: bool = True) -> "Backbone":
    """The ``Backbone`` of ``model`` (a copy where it is one already) whose prompts longer than the tokenizer's
    context length are cut with a warning (``truncate=True``) instead of refused, whatever each call asks: the
    command line's ``--truncate``, for code paths that take no ``truncate`` argument (``explain_video``)."""
    twin = copy.copy(backbone_of(model))
    twin.truncate = truncate
    return twin


def backbone_of(model, tokenizer=None) -> Backbone:
    """The ``Backbone`` of any accepted model object (see ``ACCEPTED_MODELS``); a Backbone is returned as it is,
    or with ``tokenizer`` in place of its own when one is given. Imports no library the model does not come from.
    """
    if isinstance(model, Backbone):
        if tokenizer is None:
            return model
        twin = copy.copy(model)  # keeps what loading set (name, the checkpoint's mean and std)
        twin.tokenizer = tokenizer
        return twin
    return build_backbone(model, tokenizer)


def build_backbone(model, tokenizer=None, name: str = "") -> Backbone:
    """A new ``Backbone`` of a library's model object, named ``name``, from the first registered adapter that accepts
    it (``adapters.py``; each adapter module registers itself, ``backbones/__init__.py`` imports them all)."""
    adapter = adapter_for(model)
    if adapter is None:
        raise TypeError(f"expected {ACCEPTED_MODELS}; got {type(model).__module__}.{type(model).__name__}")
    return adapter.build(model, tokenizer, name)
