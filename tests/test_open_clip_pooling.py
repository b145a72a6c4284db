"""open_clip models pooled by an attention head: SigLIP (a ``CustomTextCLIP`` whose image tower is a timm ViT with
an ``AttentionPoolLatent`` head) and CoCa's attentional pooler on open_clip's own ViT.

The adapter's dense forward must be open_clip's own image embedding (at the trained size and, where the timm tower
resamples its positional embeddings itself, at non-square sizes); Grad-ECLIP must equal the naive loop reference
shared with the transformers SigLIP test; scores and probabilities must be open_clip's own.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradeclip
from gradeclip import explain
from gradeclip.backbones.base import backbone_of
from gradeclip.methods.grad_eclip import grad_eclip_image_with_features

from backbone_models import (check_pooling_head_model, clip_tokenizer, naive_pooling_grad_eclip, tiny_coca,
                             tiny_open_clip_siglip)

PROMPTS = ["a person walking", "a red car", "a tree"]


@pytest.fixture(scope="module")
def fixed():
    """Built as open_clip builds its SigLIP tower: timm refuses other input sizes (``dynamic_img_size=False``)."""
    return tiny_open_clip_siglip(1)


@pytest.fixture(scope="module")
def dynamic():
    """The same kind of tower with ``dynamic_img_size=True``: timm resamples its positions to any input size."""
    return tiny_open_clip_siglip(2, dynamic=True)


@pytest.fixture(scope="module")
def frames():
    """Two non-square frames (24 x 40: a 3 x 5 grid at patch 8; the trained grid is 4 x 4)."""
    return (np.random.RandomState(0).rand(2, 24, 40, 3) * 255).astype(np.uint8)


def test_dense_forward_is_open_clip_own(fixed, dynamic):
    """Catches a missing final norm or fc_norm, keys and values swapped in the fused kv, the tower's head skipped,
    and positions resampled differently from timm (24 x 40 shrinks one side and stretches the other): the dense
    forward equals ``encode_image`` exactly, and the decomposed Grad-ECLIP forward gives the same embedding."""
    torch.manual_seed(0)
    for model, size in [(fixed, (32, 32)), (dynamic, (32, 32)), (dynamic, (24, 40)), (dynamic, (48, 16))]:
        pixels = torch.randn(2, 3, *size)
        with torch.no_grad():
            want = model.encode_image(pixels)
        bb = backbone_of(model)
        assert type(bb).__name__ == "TimmTowerBackbone" and not bb.has_class_token and bb.output_dim == 64
        torch.testing.assert_close(bb.encode_pixels(pixels), want, rtol=0, atol=0)
        _, features = grad_eclip_image_with_features(model, pixels, torch.randn(3, 64))
        torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)


def test_decomposed_last_block_readout_is_open_clip_own(fixed, dynamic):
    """Catches q and k swapped (or v taken for k, a per-head q/k norm skipped) in the adapter's decomposed
    attention, which Grad-CAM and GradCAM++ read the score through (``Backbone.readout``: the last block from q, k,
    v, then the head): that readout equals open_clip's ``encode_image`` within 1e-5, square and non-square."""
    torch.manual_seed(5)
    for model, size in [(fixed, (32, 32)), (dynamic, (24, 40))]:
        pixels = torch.randn(2, 3, *size)
        bb = backbone_of(model)
        with torch.no_grad():
            want = model.encode_image(pixels)
            got = bb.readout(bb.tokens_before(pixels, -1), bb.depth - 1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_open_clip_vit_b_16_siglip_config():
    """Catches an adapter that fits only the small test tower: open_clip's own ``ViT-B-16-SigLIP`` configuration
    (random weights, no download) is taken, and its dense forward is ``encode_image`` exactly at 224 x 224."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).eval()
    bb = backbone_of(model)
    assert (bb.patch_size, bb.resolution, bb.depth, bb.pool_heads(), bb.output_dim) == (16, 224, 12, 12, 768)
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_pixels(pixels), model.encode_image(pixels), rtol=0, atol=0)


def _open_clip_naive(model, pixels, text, heads=None):
    """The shared naive reference fed with open_clip/timm's own pieces: the trunk's ``forward_features`` (final
    norm included), the latent's query, the two halves of the fused kv and the rest of the head."""
    trunk, ap = model.visual.trunk, model.visual.trunk.attn_pool
    with torch.no_grad():
        h = trunk.forward_features(pixels)
        q = ap.q(ap.latent)[0, 0]
    wk, wv = ap.kv.weight.detach().chunk(2)
    bk, bv = ap.kv.bias.detach().chunk(2)

    def rest(o):
        y = ap.proj(o)
        y = y + ap.mlp(ap.norm(y))
        return model.visual.head(trunk.head(trunk.fc_norm(y)))

    return naive_pooling_grad_eclip(h, q, lambda t: t @ wk.T + bk, lambda t: t @ wv.T + bv, heads or ap.num_heads,
                                    rest, text)


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_grad_eclip_matches_naive_reference(dynamic, size):
    """Catches the probe's query taken without ``q``, keys before the final norm, keys and values swapped, a
    missing ReLU or lambda over the wrong axis, on square and non-square inputs; the cosine explained is the one
    of open_clip's own embedding."""
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, *size)
    text = torch.randn(2, 64)
    got, features = grad_eclip_image_with_features(dynamic, pixels, text)
    want, cosines = _open_clip_naive(dynamic, pixels, text)
    assert want.max() > 0
    torch.testing.assert_close(got, want.reshape(2, 2, size[0] // 8, size[1] // 8), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T, cosines,
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(features, dynamic.encode_image(pixels), rtol=1e-5, atol=1e-6)


def test_single_head_grad_eclip_matches_naive_single_head_reference(dynamic):
    """Catches ``single_head`` ignored under the attention-pooling head (the official code's one head over the
    full width): single_head=True equals the naive loop reference run with one head, and differs from the
    model's own heads."""
    torch.manual_seed(3)
    pixels, text = torch.randn(2, 3, 24, 40), torch.randn(2, 64)
    got = gradeclip.grad_eclip_image(dynamic, pixels, text, single_head=True)
    want, _ = _open_clip_naive(dynamic, pixels, text, heads=1)
    torch.testing.assert_close(got, want.reshape(2, 2, 3, 5), rtol=1e-4, atol=1e-6)
    heads = gradeclip.grad_eclip_image(dynamic, pixels, text)
    assert (got - heads).abs().max() > 1e-3 * heads.abs().max()


def test_scores_and_probs_are_open_clip_own(fixed):
    """Catches a softmax over prompts, a missing logit bias or an unexponentiated scale: ``explain``'s cosine and
    probabilities equal open_clip's forward (normalised embeddings, exp(logit_scale), logit_bias) per prompt."""
    frames = (np.random.RandomState(2).rand(2, 32, 32, 3) * 255).astype(np.uint8)
    tok = clip_tokenizer(16)
    result = explain(fixed, frames, PROMPTS, tokenizer=tok, progress=False)
    pixels = gradeclip.to_pixels(fixed, frames)
    with torch.no_grad():
        image, text, scale, bias = fixed(pixels, tok(PROMPTS))
        cos = image @ text.T
        probs = torch.sigmoid(scale * cos + bias)
    np.testing.assert_allclose(result.cosine, cos.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.probs, probs.numpy(), rtol=1e-5, atol=1e-6)
    assert float(bias.detach()) == pytest.approx(-3.0, abs=0.2) and not np.allclose(result.probs.sum(1), 1)
    assert result.library == "open_clip"


def test_methods_and_refusals(fixed, frames):
    """Catches a class-token method silently reading a patch, a grid off by one without a class token, and a
    tower gradeclip cannot decompose taken silently: methods run on non-square frames with timm's fixed-size
    tower (the adapter resamples the positions itself) and match the naive reference run on a twin with the same
    weights whose timm tower resamples its own positions; class-token methods refuse in one line."""
    twin = tiny_open_clip_siglip(1, dynamic=True)
    for (key, a), b in zip(fixed.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key
    check_pooling_head_model(fixed, frames, PROMPTS, grid=(3, 5), name="CustomTextCLIP", text_width=64,
                             words_error=TypeError, words_match="word importance needs open_clip's own text "
                                                                "transformer",
                             reference=lambda pixels, text, heads: _open_clip_naive(twin, pixels, text, heads))


def test_other_timm_towers_are_refused():
    """Catches a timm tower that averages its tokens being explained as if it had an attention-pooling head."""
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(0)
    model = CustomTextCLIP(32, vision_cfg={"image_size": 224, "timm_model_name": "test_vit", "timm_pool": "avg",
                                           "timm_proj": "linear"},
                           text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1,
                                     "layers": 1}).eval()
    with pytest.raises(TypeError, match=r"^this open_clip timm image tower pools with 'avg'; gradeclip explains"):
        backbone_of(model)


VISION_POOLER = {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "attentional_pool": True,
                 "attn_pooler_heads": 4, "attn_pooler_queries": 6}
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}


@pytest.fixture(scope="module")
def coca():
    """A random open_clip ``CoCa`` (class token, then the attentional pooler; its first query is the embedding),
    built with seed 9: the class token's key is the one nearest the probe's query (see below)."""
    return tiny_coca(9)


def _coca_embeds(v, pixels):
    """open_clip's ``_embeds`` (patches, class token, positions, ln_pre) with the patch positions resized to the
    pixels' grid by bicubic interpolation (align_corners=False), written here; at the trained grid ``_embeds``."""
    if pixels.shape[-2:] == (v.image_size[0], v.image_size[1]):
        return v._embeds(pixels)
    x = v.conv1(pixels)  # (B, W, h, w)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    pos = v.positional_embedding
    side = round((pos.shape[0] - 1) ** 0.5)
    patches = F.interpolate(pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2), size=tuple(grid),
                            mode="bicubic", align_corners=False)[0].flatten(1).T
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + torch.cat([pos[:1], patches])
    return v.ln_pre(x)


def _coca_naive(model, pixels, text, heads=None):
    """The shared naive reference fed with open_clip's own pieces of CoCa's tower: ``_embeds`` (``_coca_embeds``
    off the trained grid) and the blocks, the pooler's ``ln_k`` and first ``ln_q(query)``, the key and value
    projections (class token attended, not mapped), then ``out_proj``, ``ln_post`` and ``proj``."""
    v = model.visual
    p = v.attn_pool
    a = p.attn
    with torch.no_grad():
        h = p.ln_k(v.transformer(_coca_embeds(v, pixels)))
        wq, wk, wv = a.q_proj_weight, a.k_proj_weight, a.v_proj_weight  # pooler width 32, tower width 128
        bq, bk, bv = a.in_proj_bias.chunk(3)
        q = p.ln_q(p.query)[0] @ wq.T + bq
    return naive_pooling_grad_eclip(h, q, lambda t: t @ wk.T + bk, lambda t: t @ wv.T + bv, heads or a.num_heads,
                                    lambda o: v.ln_post(a.out_proj(o)) @ v.proj, text, skip=1)


def test_coca_pooler_forward_and_grad_eclip(coca):
    """Catches the class token's row read instead of the pooler's first query, ln_post skipped, the class token
    mapped as a patch or counted in lambda: the dense forward is CoCa's own (unnormalised) image embedding, and
    Grad-ECLIP equals the naive loop reference."""
    torch.manual_seed(2)
    pixels, text = torch.randn(2, 3, 32, 32), torch.randn(2, 32)
    bb = backbone_of(coca)
    assert bb.prefix == 1 and not bb.has_class_token
    with torch.no_grad():  # so that a lambda min-maxed over the class token too would differ from the reference
        q, k, _ = bb.pool_qkv(bb.tokens_before(pixels, bb.depth))
        cos = F.normalize(k, dim=-1) @ F.normalize(q[:, 0], dim=-1)[:, :, None]  # (B, L, 1)
        assert (cos[:, 0] > cos[:, 1:].amax(dim=1)).all()
    with torch.no_grad():
        want = coca.encode_image(pixels, normalize=False)
    torch.testing.assert_close(bb.encode_pixels(pixels), want, rtol=0, atol=0)
    got, features = grad_eclip_image_with_features(coca, pixels, text)
    torch.testing.assert_close(features, want, rtol=1e-5, atol=1e-6)
    ref, cosines = _coca_naive(coca, pixels, text)
    assert ref.max() > 0
    torch.testing.assert_close(got, ref.reshape(2, 2, 4, 4), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T, cosines,
                               rtol=1e-5, atol=1e-6)


def test_attentional_pooler_scores_methods_and_refusals(coca, frames):
    """Catches a softmax model scored with a sigmoid, a class token mapped as a patch (grid off by one) and a
    class-token method run on a pooled tower: an open_clip ``CLIP`` with the pooler scores as its own forward;
    methods run on non-square frames; class-token methods, layers > 1 and CoCa's word importance refuse."""
    from open_clip.model import CLIP

    torch.manual_seed(6)
    model = CLIP(32, vision_cfg=VISION_POOLER, text_cfg=dict(TEXT, context_length=77)).eval()
    square = (np.random.RandomState(3).rand(2, 32, 32, 3) * 255).astype(np.uint8)
    result = explain(model, square, PROMPTS, progress=False)
    with torch.no_grad():
        image, text, scale = model(gradeclip.to_pixels(model, square), backbone_of(model).tokenize(PROMPTS))
        cos = image @ text.T
    np.testing.assert_allclose(result.cosine, cos.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.probs, (scale * cos).softmax(-1).numpy(), rtol=1e-5, atol=1e-6)
    check_pooling_head_model(coca, frames, PROMPTS, grid=(3, 5), name="CoCa", text_width=32, words_error=TypeError,
                             words_match="word importance needs open_clip's own text transformer",
                             reference=lambda pixels, text, heads: _coca_naive(coca, pixels, text, heads))
