"""Prompts to token ids exactly as each library's own tokenizer gives them.

open_clip's tokenizer objects (``SimpleTokenizer``, ``HFTokenizer``, ``SigLipTokenizer``) are called whole, as
open_clip calls them: their text cleaning (``clean="canonicalize"``: lower case, punctuation stripped, as SigLIP's
configurations ask), special tokens, ``strip_sep_token`` and their own context length. A transformers tokenizer or
processor pads to ``max_length`` at its own ``model_max_length`` (at most the text tower's positions), as the
library's zero-shot pipeline pads SigLIP (which was trained so) and as CLIP's causal, end-of-text-read tower ignores;
its attention mask comes with the ids. Any other callable is called with the list of prompts. A prompt longer than
the tokenizer's length raises a one-line ValueError naming ``truncate=True`` (``--truncate`` on the command line),
or is cut with a warning when truncation was asked for.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

TOO_LONG = "Shorten it, or pass truncate=True (on the command line: --truncate) to cut it"


def check_prompts(prompts) -> list:
    """A list of K >= 1 strings from one string or a sequence of them; TypeError/ValueError in one line otherwise."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given: pass at least one text prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return prompts


def too_long(prompt: str, tokens: Optional[int], length: int, truncate: bool) -> None:
    """Raise the one-line over-long-prompt error, or warn that the prompt is cut when ``truncate``."""
    size = f"{tokens} tokens long" if tokens is not None else "longer than that"
    if not truncate:
        raise ValueError(f"prompt {prompt[:60]!r} is {size}; the tokenizer's context length is {length} (start and "
                         f"end tokens included). {TOO_LONG}")
    warnings.warn(f"prompt {prompt[:60]!r} is {size}; truncated to the tokenizer's context length {length}")


def is_open_clip_tokenizer(tokenizer) -> bool:
    return type(tokenizer).__module__.startswith("open_clip")


def _open_clip_ids(tok, prompts: list, truncate: bool) -> torch.Tensor:
    """open_clip's own call; a prompt was cut where its ids differ from the first ``context_length`` ids of the same
    call with room to spare (every open_clip tokenizer ends a cut prompt with its end token)."""
    ids = tok(prompts)
    length = ids.shape[1]
    if getattr(tok, "reduction_fn", None) is None:  # a reduction (random, shuffle...) shortens by design
        room = length + max(len(p.encode("utf-8")) for p in prompts) + 8  # more than any prompt's token count
        spare = tok(prompts, context_length=room)
        for prompt, cut, whole in zip(prompts, ids, spare):
            if not torch.equal(cut, whole[:length]):
                too_long(prompt, None, length, truncate)
    return ids


def _transformers_inputs(tok, prompts: list, length: int, truncate: bool):
    """ids (K, T) and attention mask (K, T) of a transformers tokenizer, T its ``model_max_length`` (at most
    ``length``, the tower's positions)."""
    own = getattr(tok, "model_max_length", None)
    size = own if isinstance(own, int) and 0 < own <= length else length
    counts = [len(ids) for ids in tok(prompts, truncation=False, verbose=False)["input_ids"]]  # no log line
    for prompt, n in zip(prompts, counts):
        if n > size:
            too_long(prompt, n, size, truncate)
    out = tok(prompts, padding="max_length", max_length=size, truncation=True, return_tensors="pt")
    return out["input_ids"], out.get("attention_mask")


def tokenizer_inputs(tokenizer, prompts: list, length: int, truncate: bool
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(ids (K, T) int64 on the CPU, attention mask (K, T) or None) from the library's own tokenizer, T at most
    ``length`` (the text tower's positions). The mask is the one a transformers tokenizer returns, else None."""
    mask = None
    if is_open_clip_tokenizer(tokenizer):
        ids = _open_clip_ids(tokenizer, prompts, truncate)
    elif type(tokenizer).__module__.startswith(("transformers", "tokenizers")):
        tok = getattr(tokenizer, "tokenizer", tokenizer)  # a transformers processor holds its tokenizer
        ids, mask = _transformers_inputs(tok, prompts, length, truncate)
    elif callable(tokenizer):
        ids = tokenizer(prompts)
    else:
        raise TypeError(f"tokenizer must be a callable (list of strings -> (K, T) token ids), an open_clip tokenizer "
                        f"or a transformers tokenizer or processor, got {type(tokenizer).__name__}")
    ids = torch.as_tensor(ids)
    if ids.ndim != 2 or ids.shape[0] != len(prompts) or ids.shape[1] > length or ids.is_floating_point():
        raise ValueError(f"the tokenizer must return integer token ids (K={len(prompts)}, T<={length}), "
                         f"got {tuple(ids.shape)} {ids.dtype}")
    return ids.long(), (None if mask is None else torch.as_tensor(mask).long())


def call_tokenizer(tokenizer, prompts: list, length: int, truncate: bool) -> torch.Tensor:
    """(K, T) token ids from the library's own tokenizer (see ``tokenizer_inputs``), T at most ``length``."""
    return tokenizer_inputs(tokenizer, prompts, length, truncate)[0]


def decode_token(token_id: int) -> str:
    """One token id decoded with CLIP's BPE vocabulary (shared by openai-clip and open_clip's default tokenizer)."""
    import clip
    return clip.clip._tokenizer.decode([token_id]).strip()
