"""Tiny random models of three libraries with the same weights, built offline, for the backbone tests.

``as_open_clip`` converts an openai-clip model with open_clip's own converter for OpenAI state dicts;
``as_hf_clip`` maps its state dict onto a transformers ``CLIPModel`` (key mapping written here, from the two
libraries' module names); ``tiny_siglip`` is a random transformers ``SiglipModel``,
``tiny_open_clip_siglip`` a random open_clip SigLIP (timm tower); ``naive_pooling_grad_eclip`` is the loop reference
of Grad-ECLIP on an attention-pooling head; ``save_tiny_xclip`` saves a random transformers ``XCLIPModel`` folder
(tokenizer and image processor included) for ``hf:FOLDER``.
"""
import warnings

import numpy as np
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip


def clip_tokenizer(context_length=77):
    """An offline tokenizer callable: list of strings -> (K, context_length) ids from CLIP's BPE."""
    return lambda prompts: clip.tokenize(prompts, context_length=context_length, truncate=True)


def as_open_clip(model):
    """The same weights as an open_clip ``CLIP`` (open_clip.model.build_model_from_openai_state_dict), float32."""
    from open_clip.model import build_model_from_openai_state_dict

    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None).float()
    converted.load_state_dict(state)  # the converter rounds to float16 on the way; restore float32 exactly
    return converted.eval()


def _block_keys(src, dst, state, out):
    w, b = state[f"{src}.attn.in_proj_weight"].chunk(3), state[f"{src}.attn.in_proj_bias"].chunk(3)
    for name, wi, bi in zip("qkv", w, b):
        out[f"{dst}.self_attn.{name}_proj.weight"], out[f"{dst}.self_attn.{name}_proj.bias"] = wi, bi
    pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for a, c in pairs.items():
        for leaf in ("weight", "bias"):
            out[f"{dst}.{c}.{leaf}"] = state[f"{src}.{a}.{leaf}"]


def as_hf_clip(model):
    """The same weights as a transformers ``CLIPModel`` (QuickGELU, heads = width // 64 as openai-clip)."""
    from transformers import CLIPConfig, CLIPModel

    v, state = model.visual, model.state_dict()
    vw, tw = v.conv1.weight.shape[0], model.ln_final.weight.shape[0]
    config = CLIPConfig(
        text_config=dict(vocab_size=model.vocab_size, hidden_size=tw, intermediate_size=4 * tw,
                         num_hidden_layers=len(model.transformer.resblocks), num_attention_heads=tw // 64,
                         max_position_embeddings=model.context_length, hidden_act="quick_gelu", eos_token_id=2),
        vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=len(v.transformer.resblocks),
                           num_attention_heads=vw // 64, image_size=v.input_resolution,
                           patch_size=v.conv1.kernel_size[0], hidden_act="quick_gelu"),
        projection_dim=v.output_dim)
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T,
        "logit_scale": state["logit_scale"],
    }
    for leaf in ("weight", "bias"):
        out[f"vision_model.pre_layrnorm.{leaf}"] = state[f"visual.ln_pre.{leaf}"]
        out[f"vision_model.post_layernorm.{leaf}"] = state[f"visual.ln_post.{leaf}"]
        out[f"text_model.final_layer_norm.{leaf}"] = state[f"ln_final.{leaf}"]
    for i in range(len(v.transformer.resblocks)):
        _block_keys(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", state, out)
    for i in range(len(model.transformer.resblocks)):
        _block_keys(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", state, out)
    hf = CLIPModel(config)
    missing, unexpected = hf.load_state_dict(out, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return hf.eval()


def tiny_siglip(seed=0, *, width=128, layers=2, patch=8, resolution=32, text_length=16):
    """A random transformers ``SiglipModel`` (2 heads of 64), every weight perturbed so every path carries signal."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config=dict(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                         num_attention_heads=width // 64, max_position_embeddings=text_length),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=width // 64, image_size=resolution, patch_size=patch))
    return perturbed_sigmoid_model(SiglipModel(config))


def perturbed_sigmoid_model(model):
    """A transformers SigLIP-family model (``SiglipModel``, ``Siglip2Model``) with every weight perturbed (so every
    path carries signal), logit scale 2 and logit bias -3, in eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-3.0)
    return model.eval()


def tiny_open_clip_siglip(seed=0, *, dynamic=False, width=64, layers=2, heads=4, patch=8, resolution=32):
    """A random open_clip SigLIP: ``CustomTextCLIP`` whose ``TimmModel`` tower wraps a small timm
    ``VisionTransformer`` built as ``vit_base_patch16_siglip_224`` is (no class token, ``global_pool='map'``),
    ``dynamic`` for timm's own positional-embedding resampling at any input size; text as open_clip's SigLIP
    configurations have it (not causal, read at the last token); every weight perturbed, logit bias -3."""
    import timm
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(seed)
    model = CustomTextCLIP(
        width, vision_cfg={"image_size": resolution, "timm_model_name": "test_vit", "timm_pool": "map",
                           "timm_proj": "none"},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1,
                  "no_causal_mask": True, "proj_bias": True, "pool_type": "last"},
        init_logit_bias=-3.0)
    # TimmModel passes no size arguments to timm, so the small trunk is built here as TimmModel builds it
    model.visual.trunk = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0,
                                           global_pool="map", embed_dim=width, depth=layers, num_heads=heads,
                                           img_size=resolution, patch_size=patch, dynamic_img_size=dynamic)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(2.0)
    return model.eval()


def tiny_coca(seed=9):
    """A random open_clip ``CoCa``: open_clip's own ViT (2 blocks of width 128, patch 8, 32 px, a class token), then
    the attentional pooler (4 heads of width 32, 6 queries; its first query is the embedding); every vision weight
    perturbed. Seed 9: the class token's key is the one nearest the probe's query (test_open_clip_pooling)."""
    from open_clip.coca_model import CoCa

    text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
    vision = {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "attentional_pool": True,
              "attn_pooler_heads": 4, "attn_pooler_queries": 6, "output_tokens": True}
    torch.manual_seed(seed)
    model = CoCa(32, multimodal_cfg=dict(text, attn_pooler_heads=1), text_cfg=dict(text, embed_cls=True,
                                                                                  output_tokens=True),
                 vision_cfg=vision).eval()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def naive_pooling_grad_eclip(h, q, key, value, heads, rest, text_features, skip=0):
    """Grad-ECLIP on an attention-pooling head (SigLIP) from the issue's formula, with loops over heads and
    tokens: o = the pooling attention's output at the probe (before its out-projection), w = dcos/do, v_i the value
    of patch i, lambda_i the min-max normalised cosine of the probe's query with key i,
    H_i = ReLU(sum_c w_c v_ic lambda_i).

    h (B, P, C): the tokens entering the head (after its norm); q (W,): the probe's query (W: the attention width);
    ``key``/``value``: the head's projections of tokens (P, W); ``rest``: o (W,) -> the image embedding (D,);
    ``skip``: tokens before the patches (a class token), attended to but given no map entry and left out of
    lambda's min-max. Returns maps (B, K, P - skip) and the cosines (B, K) of the embeddings with ``text_features``
    (K, D)."""
    import torch.nn.functional as F

    width = q.shape[-1]  # the attention width (CoCa: the pooler's, narrower than the tower's)
    d = width // heads
    maps = torch.zeros(h.shape[0], text_features.shape[0], h.shape[1])
    cosines = torch.zeros(h.shape[0], text_features.shape[0])
    with torch.no_grad():
        q = q.detach()
    for b in range(h.shape[0]):
        with torch.no_grad():
            k = key(h[b])  # (P, W)
            v = value(h[b])
        o = torch.zeros(width)
        for m in range(heads):
            cols = slice(m * d, (m + 1) * d)
            logits = torch.stack([q[cols] @ k[i, cols] / d ** 0.5 for i in range(k.shape[0])])
            a = logits.softmax(0)
            o[cols] = sum(a[i] * v[i, cols] for i in range(k.shape[0]))
        cos_qk = torch.stack([F.cosine_similarity(q, k[i], dim=0) for i in range(skip, k.shape[0])])
        lam = (cos_qk - cos_qk.min()) / (cos_qk.max() - cos_qk.min())
        for j in range(text_features.shape[0]):
            o_leaf = o.clone().requires_grad_(True)
            cos = F.cosine_similarity(rest(o_leaf), text_features[j], dim=0)
            (w,) = torch.autograd.grad(cos, o_leaf)
            cosines[b, j] = cos.detach()
            for i in range(skip, k.shape[0]):
                maps[b, j, i] = torch.relu((w * v[i]).sum() * lam[i - skip])
    return maps[:, :, skip:], cosines


def write_clip_tokenizer(folder):
    """Save a transformers CLIPTokenizer into ``folder`` whose vocabulary and merges are built from openai-clip's
    own BPE file, the way clip's SimpleTokenizer builds its encoder (no download)."""
    import gzip
    import json
    from pathlib import Path

    from clip.simple_tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(str(folder))


def save_hf_clip(model, folder):
    """An openai-clip model saved as a transformers CLIPModel folder with its tokenizer (``hf:FOLDER``)."""
    as_hf_clip(model).save_pretrained(str(folder))
    write_clip_tokenizer(folder)
    return str(folder)


def save_tiny_xclip(folder, *, seed=0, num_frames=4):
    """A random tiny transformers ``XCLIPModel`` (2 vision layers, width 32, 4 heads, patch 8 at 32 px,
    ``num_frames`` frames per clip) saved into ``folder`` with an offline CLIP tokenizer and a VideoMAE image
    processor (what the published X-CLIP checkpoints ship), for ``hf:FOLDER``; returns the folder as str."""
    import transformers
    from gradeclip.backbones.pixels import CLIP_MEAN, CLIP_STD

    torch.manual_seed(seed)
    config = transformers.XCLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, num_frames=num_frames, mit_hidden_size=24,
                           mit_intermediate_size=48, mit_num_hidden_layers=1, mit_num_attention_heads=2),
        projection_dim=24, prompt_layers=1, prompt_num_attention_heads=2, prompt_alpha=0.5)
    model = transformers.XCLIPModel(config).eval()
    with torch.no_grad():  # random init leaves LayerNorms at identity and some biases at 0: give every path signal
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    write_clip_tokenizer(folder)
    transformers.VideoMAEImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(
        str(folder))
    return str(folder)


def save_open_clip(model, folder, preprocess_cfg=None):
    """An openai-clip model saved as an open_clip local folder (open_clip_config.json + weights), with
    ``preprocess_cfg`` (e.g. ``{"resize_mode": "squash"}``) as its preprocessing configuration."""
    import json
    from pathlib import Path

    v = model.visual
    cfg = {"embed_dim": v.output_dim, "quick_gelu": True,
           "vision_cfg": {"image_size": v.input_resolution, "layers": len(v.transformer.resblocks),
                          "width": v.conv1.weight.shape[0], "patch_size": v.conv1.kernel_size[0]},
           "text_cfg": {"context_length": model.context_length, "vocab_size": model.vocab_size,
                        "width": model.ln_final.weight.shape[0], "heads": model.ln_final.weight.shape[0] // 64,
                        "layers": len(model.transformer.resblocks)}}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg,
                                                              "preprocess_cfg": preprocess_cfg or {}}))
    torch.save(as_open_clip(model).state_dict(), folder / "open_clip_pytorch_model.bin")
    return str(folder)


def check_pooling_head_model(model, frames, prompts, *, grid, name, text_width, words_error, words_match,
                             reference):
    """What every model pooled by an attention head must do (SigLIP of either library, CoCa), on non-square
    ``frames`` with maps of ``grid`` (h, w): Grad-ECLIP's maps (the model's heads, and ``single_head``) equal the
    naive loop reference ``reference(pixels, text_features, heads)`` -> (maps (B, K, h*w), cosines (B, K)) built
    from the library's own pieces (``heads`` None: the model's); every method's cosine is the model's own (the
    reference's, with the model's heads), its maps finite and, except RISE (it clips negative saliency, and a random
    model's cosines may all be negative), somewhere positive; the class-token methods, ``layers=2`` and word
    importance refuse in one line naming the model class ``name``."""
    import pytest

    import gradeclip

    tok = clip_tokenizer(16)
    pixels = gradeclip.to_pixels(model, frames)
    text = gradeclip.encode_prompts(model, prompts, tokenizer=tok)
    want = {False: reference(pixels, text, None), True: reference(pixels, text, 1)}
    own = want[False][1].numpy()
    assert want[False][0].max() > 0 and not np.allclose(want[False][0], want[True][0])
    for method, options in [("grad_eclip", {}), ("grad_eclip", {"single_head": True}), ("grad_cam", {}),
                            ("maskclip", {}), ("rise", {"n_masks": 16}), ("gradcam_pp", {})]:
        result = gradeclip.explain(model, frames, prompts, method=method, tokenizer=tok, progress=False, **options)
        assert result.raw.shape == (len(frames), len(prompts), *grid) and np.isfinite(result.raw).all(), method
        assert method == "rise" or result.raw.max() > 0, method
        np.testing.assert_allclose(result.cosine, own, rtol=0, atol=1e-5, err_msg=method)
        if method == "grad_eclip":
            maps = want[bool(options)][0].reshape(len(frames), len(prompts), *grid).numpy()
            np.testing.assert_allclose(result.raw, maps, rtol=1e-4, atol=1e-6 * maps.max(), err_msg=str(options))
    for method in ("self_attention", "rollout", "game"):
        with pytest.raises(ValueError, match=f"^{method} needs the image embedding to be the class token's row; "
                                             f"{name} pools"):
            gradeclip.explain(model, frames, prompts, method=method, tokenizer=tok, progress=False)
    with pytest.raises(ValueError, match="layers must be 1"):
        gradeclip.grad_eclip_image(model, torch.randn(1, 3, 32, 32), torch.randn(1, text_width), layers=2)
    with pytest.raises(words_error, match=words_match):
        gradeclip.word_importance(model, frames[0], "a dog", tokenizer=tok)


# A vocabulary in which case, punctuation and accents change the ids, and whose end token (id 1) is not the largest
# id, so that reading the end of text by argmax, or skipping a library's text cleaning, gives other numbers.
SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]
WORDS = ["a", "photo", "of", "dog", "A", "Photo", "Dog", ".", ",", "!", "été", "ÉTÉ", "café", "Café", "person",
         "walking", "red", "car", "tree", "two", "cats", "word", "##s"]
PAD, EOS, UNK, BOS = range(4)


def write_wordpiece_tokenizer(folder, *, model_max_length, bos=False):
    """A WordPiece tokenizer built with the ``tokenizers`` library (no lower-casing, no accent stripping, BERT's
    split on whitespace and punctuation; ids: <pad> 0, </s> 1, <unk> 2, <s> 3, then ``WORDS``), each prompt ended
    by </s> (and started by <s> with ``bos``), saved with transformers' ``PreTrainedTokenizerFast.save_pretrained``
    into ``folder``. Returns the transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=("<s> " if bos else "") + "$A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                   bos_token="<s>", model_max_length=model_max_length)
    fast.save_pretrained(str(folder))
    return fast


def write_open_clip_hf_tokenizer_model(folder, *, context_length=16, seed=0):
    """An open_clip folder (``open_clip_config.json``, weights, tokenizer files) of a small ``CustomTextCLIP``
    whose text side is configured as open_clip's SigLIP models are: an HF tokenizer (``hf_tokenizer_name``; for a
    local folder open_clip reads the folder's own) with ``clean="canonicalize"``, no causal mask, read at the last
    token, a logit bias. Random weights, every one perturbed. Returns the folder as str."""
    import json
    from pathlib import Path

    from open_clip.model import CustomTextCLIP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_wordpiece_tokenizer(folder, model_max_length=context_length)
    cfg = {"embed_dim": 32, "init_logit_bias": -3.0, "custom_text": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": context_length, "vocab_size": len(SPECIALS) + len(WORDS),
                        "hf_tokenizer_name": "local-wordpiece", "tokenizer_kwargs": {"clean": "canonicalize"},
                        "width": 64, "heads": 1, "layers": 1, "no_causal_mask": True, "proj_bias": True,
                        "pool_type": "last"}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    model = CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return str(folder)
