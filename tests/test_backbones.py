"""Backbones: openai-clip, open_clip and transformers (CLIPModel, SiglipModel) through one interface.

Same weights in three libraries must give the same maps and scores; each adapter's dense forward must be the
library's own; SigLIP's Grad-ECLIP is checked against a naive reference written from the formula with loops.
"""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradeclip
from gradeclip import explain
from gradeclip.backbones.base import backbone_of
from gradeclip.methods.grad_eclip import grad_eclip_image_with_features

from backbone_models import (as_hf_clip, as_open_clip, check_pooling_head_model, clip_tokenizer,
                             naive_pooling_grad_eclip, tiny_siglip)
from conftest import tiny_clip

PROMPTS = ["a person walking", "a red car", "a tree"]


def _image_features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def trio():
    """One random openai-clip model and the same weights in open_clip and transformers, with their tokenizers."""
    base = tiny_clip(5)
    return [(base, None), (as_open_clip(base), None), (as_hf_clip(base), clip_tokenizer())]


@pytest.fixture(scope="module")
def siglip():
    return tiny_siglip(1)


@pytest.fixture(scope="module")
def frames():
    """Two non-square frames (24 x 40: a 3 x 5 grid at patch 8, so positions are interpolated)."""
    return (np.random.RandomState(0).rand(2, 24, 40, 3) * 255).astype(np.uint8)


def _library_image(model, pixels):
    if hasattr(model, "get_image_features"):
        return _image_features(model.get_image_features(pixel_values=pixels))
    return model.encode_image(pixels)


def test_dense_forward_is_the_library_own(trio, siglip):
    """Catches a missing LayerScale/pre-norm, a transposed projection or a wrong pooling in any adapter: the
    backbone's dense forward and the decomposed Grad-ECLIP forward give the library's embedding at its size."""
    pixels = torch.randn(2, 3, 32, 32)
    for model, _ in trio + [(siglip, None)]:
        with torch.no_grad():
            want = _library_image(model, pixels)
        bb = backbone_of(model)
        torch.testing.assert_close(bb.encode_pixels(pixels), want, rtol=0, atol=0)
        _, features = grad_eclip_image_with_features(model, pixels, torch.randn(3, want.shape[1]))
        torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)


CASES = [("grad_eclip", {}), ("grad_eclip", {"layers": 2}), ("grad_eclip", {"single_head": True}),
         ("grad_eclip", {"layers": 2, "single_head": True}), ("grad_cam", {}), ("game", {}), ("maskclip", {}),
         ("self_attention", {}), ("rollout", {})]


@pytest.mark.parametrize("method,options", CASES, ids=[f"{m}{o}" for m, o in CASES])
def test_same_weights_same_maps_in_three_libraries(trio, frames, method, options):
    """Catches an adapter that reads a different token, head split, norm or projection than openai-clip: the same
    weights give the same maps (relative error <= 1e-5) and scores through ``explain`` in all three libraries."""
    results = [explain(m, frames, PROMPTS, method=method, tokenizer=t, progress=False, **options) for m, t in trio]
    ref = results[0]
    assert ref.raw.shape == (2, 3, 3, 5) and ref.raw.max() > 0
    for other in results[1:]:
        assert np.abs(other.raw - ref.raw).max() <= 1e-5 * np.abs(ref.raw).max(), (other.library, method)
        np.testing.assert_allclose(other.cosine, ref.cosine, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.probs, ref.probs, rtol=0, atol=1e-5)
    assert [r.library for r in results] == ["openai-clip", "open_clip", "transformers"]


def test_same_weights_same_word_importance(trio, frames):
    """Catches a wrong end-of-text position, causal mask, head split or block finish on the text side of an
    adapter: the same weights give the same word weights in three libraries, and those weights are not trivial
    (a prompt whose weights are all zero, as "a person walking" has on this model, would compare nothing)."""
    prompt = "a red car on a tree"
    want = gradeclip.word_importance(trio[0][0], frames[0], prompt, layers=2)
    values = np.array([v for _, v in want])
    assert abs(values.sum() - 1) < 1e-5 and (values > 0.05).sum() >= 3 and len(set(values.round(3))) >= 3
    for model, tok in trio[1:]:
        got = gradeclip.word_importance(model, frames[0], prompt, layers=2, tokenizer=tok)
        assert [w for w, _ in got] == [w for w, _ in want] == ["a", "red", "car", "on", "a", "tree"]
        np.testing.assert_allclose([v for _, v in got], values, rtol=1e-4, atol=1e-6)


def naive_siglip_grad_eclip(model, pixels, text_features, heads=None):
    """The naive reference (``naive_pooling_grad_eclip``) fed with transformers SigLIP's own pieces: the tokens
    after post_layernorm, the head's probe query, its key and value projections and the rest of its head."""
    vm = model.vision_model
    with torch.no_grad():
        h = vm(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state  # after post_layernorm
    head = vm.head
    attn = head.attention
    wq, wk, wv = attn.in_proj_weight.detach().chunk(3)
    bq, bk, bv = attn.in_proj_bias.detach().chunk(3)
    q = head.probe.detach()[0, 0] @ wq.T + bq  # (W,)

    def rest(o):
        y = attn.out_proj(o)
        return y + head.mlp(head.layernorm(y))

    return naive_pooling_grad_eclip(h, q, lambda t: t @ wk.T + bk, lambda t: t @ wv.T + bv, heads or attn.num_heads,
                                    rest, text_features)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_siglip_grad_eclip_matches_naive_reference(siglip, size):
    """Catches a wrong query (mean token instead of the probe), keys taken before post_layernorm, a missing
    ReLU or a lambda over the wrong axis, on square and non-square inputs; and checks that the cosine it explains
    is the library's own."""
    pixels = torch.randn(2, 3, *size)
    text = torch.randn(2, siglip.config.vision_config.hidden_size)
    got, features = grad_eclip_image_with_features(siglip, pixels, text)
    want, cosines = naive_siglip_grad_eclip(siglip, pixels, text)
    grid = (size[0] // 8, size[1] // 8)
    torch.testing.assert_close(got, want.reshape(2, 2, *grid), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        own = _image_features(siglip.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True))
    torch.testing.assert_close(F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T, cosines,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features, own, rtol=1e-5, atol=1e-6)


def test_siglip_single_head_matches_naive_single_head_reference(siglip):
    """Catches ``single_head`` ignored under SigLIP's pooling head: single_head=True equals the naive reference
    with one head over the full width, and differs from the model's own heads."""
    pixels, text = torch.randn(2, 3, 24, 40), torch.randn(2, siglip.config.vision_config.hidden_size)
    got = gradeclip.grad_eclip_image(siglip, pixels, text, single_head=True)
    want, _ = naive_siglip_grad_eclip(siglip, pixels, text, heads=1)
    torch.testing.assert_close(got, want.reshape(2, 2, 3, 5), rtol=1e-4, atol=1e-6)
    heads = gradeclip.grad_eclip_image(siglip, pixels, text)
    assert (got - heads).abs().max() > 1e-3 * heads.abs().max()


def test_decomposed_last_block_readout_is_the_library_own(trio, siglip):
    """Catches q and k swapped, or a block's rest (out-projection, MLP) wrong, in an adapter's decomposed
    attention, through which Grad-CAM and GradCAM++ read the score: ``Backbone.readout`` of the last block equals
    the library's image embedding within 1e-5."""
    pixels = torch.randn(2, 3, 32, 32)
    for model, _ in trio + [(siglip, None)]:
        bb = backbone_of(model)
        with torch.no_grad():
            got = bb.readout(bb.tokens_before(pixels, -1), bb.depth - 1)
            torch.testing.assert_close(got, _library_image(model, pixels), rtol=1e-5, atol=1e-5)


def test_siglip_scores_and_probs_are_the_library_own(siglip):
    """Catches a softmax over prompts where SigLIP scores each prompt with its own sigmoid (and its bias)."""
    frames = (np.random.RandomState(2).rand(2, 32, 32, 3) * 255).astype(np.uint8)
    tok = clip_tokenizer(16)
    result = explain(siglip, frames, PROMPTS, tokenizer=tok, progress=False)
    pixels = gradeclip.to_pixels(siglip, frames)
    with torch.no_grad():
        out = siglip(input_ids=tok(PROMPTS), pixel_values=pixels)
    np.testing.assert_allclose(result.probs, torch.sigmoid(out.logits_per_image).numpy(), rtol=1e-5, atol=1e-6)
    cos = F.normalize(out.image_embeds, dim=-1) @ F.normalize(out.text_embeds, dim=-1).T
    np.testing.assert_allclose(result.cosine, cos.numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(result.probs.sum(1), 1)  # per prompt, not a distribution over the prompts
    assert result.library == "transformers"


def test_siglip_methods_on_non_square_frames(siglip, frames):
    """Catches a class-token method silently reading a patch on SigLIP, and a grid off by one without one."""
    check_pooling_head_model(siglip, frames, PROMPTS, grid=(3, 5), name="SiglipModel", text_width=128,
                             words_error=ValueError, words_match="SigLIP's text tower is not supported",
                             reference=lambda pixels, text, heads: naive_siglip_grad_eclip(siglip, pixels, text,
                                                                                           heads))

def test_open_clip_layerscale(frames):
    """Catches an adapter that ignores LayerScale (ls_1, ls_2): open_clip's own ViT with it is explained with its
    own score, and the dense forward equals encode_image."""
    from open_clip.model import CLIP

    torch.manual_seed(3)
    model = CLIP(32, vision_cfg={"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "ls_init_value": 0.5},
                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.encode_image(pixels)
    torch.testing.assert_close(backbone_of(model).encode_pixels(pixels), want, rtol=1e-5, atol=1e-6)
    _, features = grad_eclip_image_with_features(model, pixels, torch.randn(2, 32))
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)
    assert explain(model, frames, PROMPTS, progress=False).raw.shape == (2, 3, 3, 5)


def test_bad_models_and_missing_tokenizers(trio, siglip, frames):
    """Catches an unsupported object reaching a method (AttributeError deep inside) and a transformers model
    used without a tokenizer."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    for bad in (torch.nn.Linear(2, 2), "ViT-B/32", CLIPVisionModel(CLIPVisionConfig(hidden_size=64,
                                                                                   intermediate_size=64,
                                                                                   num_hidden_layers=1,
                                                                                   num_attention_heads=1))):
        with pytest.raises(TypeError, match="expected an openai-clip clip.model.CLIP .ViT or ResNet., an open_clip CLIP"):
            explain(bad, frames, PROMPTS, progress=False)
    for model in (trio[2][0], siglip):
        with pytest.raises(TypeError, match="carries no tokenizer: pass tokenizer="):
            explain(model, frames, PROMPTS, progress=False)
    with pytest.raises(ValueError, match=r"the tokenizer must return integer token ids \(K=3, T<=77\)"):
        explain(trio[2][0], frames, PROMPTS, tokenizer=lambda p: torch.zeros(len(p), 80, dtype=torch.long))


def test_importing_gradeclip_imports_no_optional_library():
    """Catches a module-level ``import open_clip`` / ``transformers`` in gradeclip (slow, and optional extras)."""
    code = ("import sys, gradeclip, gradeclip.backbones.base, gradeclip.methods.baselines; "
            "print(sorted(m for m in ('open_clip', 'transformers', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_clip_custom_text_clip(frames):
    """Catches an adapter that looks for the text tower on the model itself (CustomTextCLIP keeps it in .text)."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(4)
    model = CustomTextCLIP(32, vision_cfg={"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                                     "layers": 2}).eval()
    bb = backbone_of(model)
    tokens = bb.tokenize(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(gradeclip.encode_prompts(model, PROMPTS), model.encode_text(tokens))
        pixels = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(bb.encode_pixels(pixels), model.encode_image(pixels), rtol=0, atol=0)
    assert explain(model, frames, PROMPTS, progress=False).raw.shape == (2, 3, 3, 5)
    words = gradeclip.word_importance(model, frames[0], "a person walking", layers=2)
    assert [w for w, _ in words] == ["a", "person", "walking"] and abs(sum(v for _, v in words) - 1) < 1e-5
