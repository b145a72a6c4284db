"""CLIPSeg, AltCLIP and Chinese-CLIP (transformers): scores equal the library's own forward, Grad-ECLIP and the
bidirectional towers' word importance equal naive loop references, the text attention mask is used, ``hf:FOLDER``
and the CLI work, and the segmentation model is refused in one line. Tiny random models saved as folders
(``hf_family_models.py``), offline.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradeclip
from gradeclip.backbones.base import backbone_of
from gradeclip.cli import main

from conftest import numbered_frames, write_video
from hf_family_models import (PROMPTS, save_altclip, save_chinese_clip, save_clipseg, tiny_altclip,
                              tiny_chinese_clip, tiny_clipseg, xlmr_tokenizer)

FAMILIES = {"clipseg": (tiny_clipseg, save_clipseg, "CLIPSegBackbone"),
            "altclip": (tiny_altclip, save_altclip, "AltCLIPBackbone"),
            "chinese_clip": (tiny_chinese_clip, save_chinese_clip, "ChineseCLIPBackbone")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: save(build(), root / name) for name, (build, save, _) in FAMILIES.items()}


@pytest.fixture(scope="module")
def loaded(folders):
    return {name: gradeclip.load_clip("hf:" + folder, device="cpu")[0] for name, folder in folders.items()}


@pytest.fixture(scope="module")
def frames():
    """Two non-square RGB frames (40 x 56) with different content."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)


def library_logits(bb, pixel_values, **kwargs):
    """logits_per_image (N, K) of the library's own forward, the prompts tokenized by the library's tokenizer as
    its documentation shows (``padding=True``: to the longest prompt), with their attention mask."""
    text = bb.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = bb.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                       pixel_values=pixel_values, **kwargs)
    return out.logits_per_image


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_the_library_forward(loaded, frames, family):
    """cosine and probs of ``explain`` with ``input="library"`` equal the library's ``model(input_ids,
    attention_mask, pixel_values)`` on what the family's own image processor makes of the frames, for three prompts
    of 2, 10 and 6 words (padded by gradeclip to the tokenizer's limit, by the reference to the longest prompt).
    Bugs caught: ``takes_attention_mask`` False on the bidirectional towers (padding attended: off by 1e-1 here),
    CLIPSeg's processor refused or replaced by the trained 32 px (``library_any_size`` lost: its processor makes 48
    px), or its input size reported as 32, the family dispatch handing AltCLIP/Chinese-CLIP to the plain CLIP
    adapter (no ``encoder.layers`` there), the softmax taken over frames instead of prompts."""
    bb = loaded[family]
    assert type(bb).__name__ == FAMILIES[family][2]
    result = gradeclip.explain(bb, frames, PROMPTS, input="library", progress=False)
    from PIL import Image
    pixel_values = bb.image_processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape[-1] == (48 if family == "clipseg" else 32)
    assert result.view.size == tuple(pixel_values.shape[-2:])  # what the figure and sidecar say the input was
    assert result.raw.shape[-2:] == tuple(s // bb.patch_size for s in pixel_values.shape[-2:])
    logits = library_logits(bb, pixel_values, interpolate_pos_encoding=family == "clipseg")
    cosine = (logits / bb.model.logit_scale.exp()).detach().numpy()
    np.testing.assert_allclose(result.cosine, cosine, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.probs, logits.softmax(dim=-1).numpy(), rtol=0, atol=1e-5)
    assert np.ptp(result.cosine, axis=1).min() > 1e-3  # prompts score differently: a swap of prompts would show


@pytest.mark.parametrize("family", FAMILIES)
def test_image_features_at_a_non_square_grid_are_the_library_own(loaded, family):
    """``encode_pixels`` on a 24 x 40 input (3 x 5 patches) equals the library's ``get_image_features`` with
    ``interpolate_pos_encoding=True``. Bug caught: positional embeddings resized to (w, h) instead of (h, w)."""
    bb = loaded[family]
    pixels = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        own = bb.model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
    own = own if isinstance(own, torch.Tensor) else own.pooler_output
    torch.testing.assert_close(bb.encode_pixels(pixels), own, rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_objects_default_to_the_family_preprocessing(loaded, frames, family):
    """A model object passed without its folder (no image processor) is normalised and, with ``input="library"``,
    resized as the family's checkpoints ship (the folders' processors: CLIPSeg ImageNet mean and std, AltCLIP CLIP's
    crop, Chinese-CLIP CLIP's mean squashed without a crop): its cosines equal the folder's. Bugs caught: CLIPSeg
    given CLIP's mean, Chinese-CLIP's ``crop`` True (a centre crop of the 40 x 56 frames instead of the whole)."""
    folder = loaded[family]
    bare = backbone_of(folder.model, folder.tokenizer)
    assert not hasattr(bare, "image_processor")
    modes = ["native"] + ([] if family == "clipseg" else ["library"])  # CLIPSeg's own processor is 48 px, not 32
    for mode in modes:
        want = gradeclip.explain(folder, frames, PROMPTS, input=mode, progress=False).cosine
        got = gradeclip.explain(bare, frames, PROMPTS, input=mode, progress=False).cosine
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5, err_msg=mode)


def naive_grad_eclip(bb, pixels, text_features):
    """Grad-ECLIP of the last vision layer from the paper's formula with loops, on the library's own modules:
    the tokens entering the last layer are caught by a hook on the library's forward; o = the class token's
    attention output (heads concatenated, before ``out_proj``), w = d cos / d o by autograd; per patch token i,
    H_i = ReLU(sum over heads h of sum_c in h of w_c v_ic * lambda_i), lambda_i the cosine of the class token's query
    with key i, min-max normalised over the patch tokens. Returns (maps (B, K, P), cosines (B, K))."""
    vm, model = bb.model.vision_model, bb.model
    last = vm.encoder.layers[-1]
    seen = []
    handle = last.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0] if args else
                                                                                     kwargs["hidden_states"]),
                                            with_kwargs=True)
    with torch.no_grad():
        own = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
    handle.remove()
    own = own if isinstance(own, torch.Tensor) else own.pooler_output
    x_all = seen[0].detach()
    attn = last.self_attn
    heads, width = attn.num_heads, x_all.shape[-1]
    d = width // heads
    text = F.normalize(text_features, dim=-1)
    maps = torch.zeros(x_all.shape[0], text.shape[0], x_all.shape[1] - 1)
    cosines = torch.zeros(x_all.shape[0], text.shape[0])
    for b in range(x_all.shape[0]):
        x = x_all[b]
        h = last.layer_norm1(x)
        q, k, v = attn.q_proj(h).detach(), attn.k_proj(h).detach(), attn.v_proj(h).detach()
        rows = []
        for head in range(heads):
            s = slice(head * d, (head + 1) * d)
            weights = torch.softmax(torch.stack([q[0, s] @ k[j, s] for j in range(k.shape[0])]) * d ** -0.5, 0)
            rows.append(sum(weights[j] * v[j, s] for j in range(k.shape[0])))
        o0 = torch.cat(rows)
        cos_qk = torch.stack([F.cosine_similarity(q[0], k[i], dim=0) for i in range(1, k.shape[0])])
        lam = (cos_qk - cos_qk.min()) / (cos_qk.max() - cos_qk.min())
        for j in range(text.shape[0]):
            o = o0.clone().requires_grad_(True)
            y = x[0] + attn.out_proj(o)
            y = y + last.mlp(last.layer_norm2(y))
            feature = model.visual_projection(vm.post_layernorm(y))
            cos = F.cosine_similarity(feature, text[j], dim=0)
            (w,) = torch.autograd.grad(cos, o)
            cosines[b, j] = cos.detach()
            for i in range(1, k.shape[0]):
                total = sum((w[head * d:(head + 1) * d] * v[i, head * d:(head + 1) * d]).sum()
                            for head in range(heads))
                maps[b, j, i - 1] = torch.relu(total * lam[i - 1])
    # the reference's forward is the library's: its cosine is the library's own score
    torch.testing.assert_close(cosines, F.normalize(own, dim=-1) @ text.T, rtol=0, atol=1e-5)
    return maps, cosines


@pytest.mark.parametrize("family", ["altclip", "clipseg", "chinese_clip"])
def test_grad_eclip_equals_the_naive_reference(loaded, family):
    """Grad-ECLIP on a non-square input (24 x 40: 3 x 5 patches), K = 3 prompts whose text features are the
    library's (the padded prompts' mask used), equals ``naive_grad_eclip``, and the maps differ between prompts.
    Bugs caught: an adapter reading another norm or projection than the library's (e.g. ``post_layernorm`` skipped,
    ``text_projection`` for ``visual_projection``), positions interpolated to (w, h), the class token included in
    lambda's min-max, the ReLU taken per head."""
    bb = loaded[family]
    pixels = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(7))
    text = gradeclip.encode_prompts(bb, PROMPTS)
    want, _ = naive_grad_eclip(bb, pixels, text)
    got = gradeclip.grad_eclip_image(bb, pixels, text)
    assert got.shape == (1, 3, 3, 5)
    assert want.max() > 0 and not torch.allclose(want[0, 0], want[0, 1])
    torch.testing.assert_close(got.reshape(1, 3, 15), want, rtol=1e-4, atol=1e-6 * float(want.max()))


@pytest.mark.parametrize("family", ["altclip", "chinese_clip"])
def test_text_features_use_the_attention_mask(loaded, family):
    """Each prompt's features, encoded in one padded batch, equal the library's ``get_text_features`` of that prompt
    alone without padding (where no mask is needed). Bug caught: the mask dropped (every prompt shorter than the
    padding moves, the 2e-2 of the issue), or the mask of another prompt used."""
    bb = loaded[family]
    ids, mask = bb.text_inputs(PROMPTS)
    assert mask is not None and len(set(mask.sum(1).tolist())) == 3  # three lengths, all padded
    got = gradeclip.encode_prompts(bb, PROMPTS)
    for k, prompt in enumerate(PROMPTS):
        alone = bb.tokenizer([prompt], return_tensors="pt")
        with torch.no_grad():
            own = bb.model.get_text_features(input_ids=alone["input_ids"])
        own = own if isinstance(own, torch.Tensor) else own.pooler_output
        torch.testing.assert_close(got[k], own[0], rtol=0, atol=2e-6)
    with torch.no_grad():
        unmasked = bb.model.get_text_features(input_ids=ids).pooler_output
    assert (F.cosine_similarity(unmasked, got) < 1 - 1e-4).all()  # the mask matters for every prompt of the test


def test_altclip_context_is_512_positions(loaded):
    """AltCLIP's XLM-R positions start after the pad id: 514 embeddings give prompts 512 positions. With a tokenizer
    that states no limit, prompts are padded to 512 and encoded as the library encodes them alone; a prompt of 513
    tokens is refused in one line naming truncate=True, and cut to 512 (with a warning) when asked. Bug caught: the
    context read as ``max_position_embeddings`` (514: the library's position index runs out of its table)."""
    bb = backbone_of(loaded["altclip"], xlmr_tokenizer(model_max_length=int(1e30)))
    assert bb.context_length == 512
    ids, mask = bb.text_inputs(PROMPTS)
    assert ids.shape == (3, 512)
    torch.testing.assert_close(gradeclip.encode_prompts(bb, PROMPTS), gradeclip.encode_prompts(loaded["altclip"],
                                                                                             PROMPTS))
    long = " ".join(["dog"] * 511)  # <s> + 511 words + </s> = 513 tokens
    with pytest.raises(ValueError, match=r"is 513 tokens long; the tokenizer's context length is 512 .*truncate=True"):
        gradeclip.encode_prompts(bb, [long])
    with pytest.warns(UserWarning, match="truncated to the tokenizer's context length 512"):
        features = gradeclip.encode_prompts(bb, [long], truncate=True)
    assert torch.isfinite(features).all()


def test_clipseg_segmentation_model_refused_and_its_clip_explained(frames, tmp_path):
    """``CLIPSegForImageSegmentation`` is refused in one line that names ``model.clip``; its ``.clip`` is explained
    with scores equal to the library's forward; a folder saved from the segmentation model (what CLIPSeg's
    checkpoints are) loads with ``hf:FOLDER`` as its CLIP. Bug caught: the segmentation model let through to fail
    deep inside (it has no ``vision_model`` at the top), or refused with the generic "use the full CLIPModel"
    advice; the folder's weights not those of ``.clip``."""
    seg = tiny_clipseg(segmentation=True)
    loaded_seg, _ = gradeclip.load_clip("hf:" + save_clipseg(seg, tmp_path / "seg"), device="cpu")
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded_seg.encode_pixels(pixels),
                                   seg.clip.get_image_features(pixel_values=pixels).pooler_output, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"^got transformers CLIPSegForImageSegmentation, .*pass its CLIP, model\.clip "
                                        r"\(a CLIPSegModel\)") as err:
        backbone_of(seg)
    assert "\n" not in str(err.value)
    from backbone_models import clip_tokenizer
    tok = clip_tokenizer(24)
    result = gradeclip.explain(seg.clip, frames, PROMPTS, input="model", tokenizer=tok, progress=False)
    pixels = gradeclip.to_pixels(seg.clip, frames, input="model")  # 24 x 32 px: 3 x 4 patches, positions resized
    assert pixels.shape[-2:] == (24, 32)
    ids = tok(PROMPTS)
    with torch.no_grad():
        logits = seg.clip(input_ids=ids, pixel_values=pixels).logits_per_image
    np.testing.assert_allclose(result.cosine, (logits / seg.clip.logit_scale.exp()).detach().numpy(), rtol=0,
                               atol=1e-5)


def naive_word_weights(bb, pixels, prompt, layers):
    """Grad-ECLIP word weights of one prompt on a BERT-style text tower (AltCLIP, Chinese-CLIP), with loops, on the
    library's own modules: the prompt tokenized alone (no padding), the tokens entering the first decomposed layer
    caught by a hook on ``get_text_features``; in each of the last ``layers`` layers, per head, o = softmax(q k^T /
    sqrt(d)) v, then LayerNorm(dense(o) + x) and the feed-forward; the text feature read at the first token through
    the family's pooling; w = d cos / d o at the first token (autograd); token t's relevance ReLU(sum over layers and
    heads of sum_c w_c v_tc * lambda_t), lambda_t the first token's query-key cosine min-max normalised over all
    tokens; the words (between the first and the last token) normalised to sum 1."""
    tm, model = bb.model.text_model, bb.model
    blocks = tm.roberta.encoder.layers if hasattr(tm, "roberta") else tm.encoder.layer
    ids = bb.tokenizer([prompt], return_tensors="pt")["input_ids"]
    first = len(blocks) - layers
    seen = []
    handle = blocks[first].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        own = model.get_text_features(input_ids=ids).pooler_output[0]
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output[0], dim=0)
    handle.remove()
    x = seen[0][0].detach()  # (T, W)
    records = []
    for block in blocks[first:]:
        a = block.attention.self
        heads, d = a.num_attention_heads, a.attention_head_size
        q, k, v = a.query(x), a.key(x), a.value(x)
        o = torch.cat([torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T * d ** -0.5, dim=-1)
                       @ v[:, h * d:(h + 1) * d] for h in range(heads)], dim=1)
        if not o.requires_grad:
            o.requires_grad_(True)
        records.append((q, k, v, o, heads, d))
        h1 = block.attention.output.LayerNorm(block.attention.output.dense(o) + x)
        x = block.output.LayerNorm(block.output.dense(block.intermediate(h1)) + h1)
    row = x[0]
    feature = model.text_projection(tm.transformation(tm.pre_LN(row)) if hasattr(tm, "pre_LN") else row)
    torch.testing.assert_close(feature.detach(), own, rtol=0, atol=2e-6)  # the reference is the library's forward
    cos = F.cosine_similarity(feature, image, dim=0)
    grads = torch.autograd.grad(cos, [r[3] for r in records])
    count = ids.shape[1]
    total = torch.zeros(count)
    for (q, k, v, _, heads, d), grad in zip(records, grads):
        w = grad[0]
        qk = torch.stack([F.cosine_similarity(q[0], k[t], dim=0) for t in range(count)]).detach()
        lam = (qk - qk.min()) / (qk.max() - qk.min())
        for t in range(count):
            total[t] += sum((w[h * d:(h + 1) * d] * v[t, h * d:(h + 1) * d]).sum() for h in range(heads)) * lam[t]
    words = torch.relu(total)[1:count - 1]
    return words / words.sum() if words.sum() > 0 else words


@pytest.mark.parametrize("family", ["altclip", "chinese_clip"])
@pytest.mark.parametrize("layers", [1, 2])
def test_bidirectional_word_importance_equals_the_naive_reference(loaded, family, layers):
    """Word weights of three padded prompts (2, 10 and 6 words, one call) equal ``naive_word_weights`` of each
    prompt alone, for the last layer and for both. Bugs caught: padding attended (``text_lengths`` ignored: every
    weight moves), the query read at the end token instead of the first, the words cut at the first token (none) or
    including the end token, the post-norm block run as pre-norm, AltCLIP's ``pre_LN``/``transformation`` skipped."""
    from gradeclip.methods.grad_eclip import grad_eclip_text

    bb = loaded[family]
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(15))  # several words weighted
    tokens = bb.tokenize(PROMPTS)
    got = grad_eclip_text(bb, pixels, tokens, layers=layers)
    assert [len(g) for g in got] == [len(bb.tokenizer([p])["input_ids"][0]) - 2 for p in PROMPTS]
    spread = 0
    for prompt, weights in zip(PROMPTS, got):
        want = naive_word_weights(bb, pixels, prompt, layers)
        spread += int((want > 0).sum() > 1)
        torch.testing.assert_close(weights, want, rtol=1e-4, atol=1e-6)
    assert spread >= 2  # at least two prompts with several weighted words: a shift of words would show


def test_word_importance_words(loaded, frames):
    """``word_importance`` pairs each word token with its weight, summing to 1: CLIPSeg (CLIP's causal tower) and
    AltCLIP (XLM-R's ▁ pieces decoded without the marker). Bug caught: the words read up to the query token (none
    for a tower read at its first token) or including the end token."""
    for family in ("clipseg", "altclip"):
        pairs = gradeclip.word_importance(loaded[family], frames[0], "a photo of two red cats", layers=2)
        assert [w for w, _ in pairs] == ["a", "photo", "of", "two", "red", "cats"], family
        assert abs(sum(v for _, v in pairs) - 1) < 1e-5, family


def test_cli_explain_on_each_family(folders, tmp_path, capsys):
    """``python -m gradeclip explain VIDEO --model hf:FOLDER`` runs for each family and its scores JSON holds the
    model's own cosine of the first frame at the input it reports. Bug caught: the CLI or ``load_clip`` refusing
    the new classes, or a folder's tokenizer/processor not loaded with it."""
    video = write_video(tmp_path / "walk.avi", numbered_frames(4, 40, 56))
    for family, folder in folders.items():
        out = tmp_path / family
        assert main(["explain", video, "-p", "a dog", "-p", "two cats", "--model", f"hf:{folder}", "--out", str(out),
                     "--dpi", "40"]) == 0, family
        record = json.loads(next(out.glob("*_scores.json")).read_text())
        assert record["library"] == "transformers" and record["model"] == f"hf:{folder}"
        assert "(transformers)" in capsys.readouterr().out


def test_every_method_runs_with_the_model_own_cosine(loaded, frames):
    """Every method of the CLI but Score-CAM (the grad-cam package's, on the layer its other CAMs use; 64 forwards per
    map) on AltCLIP (Chinese-CLIP's adapter differs only in its text tower's names): maps of the frame's grid (40 x 56
    native: 5 x 7 patches), finite, and the cosine the model's own (``similarity`` at the same input). Bug caught: a
    method reaching a text-tower piece these adapters lack (``text_model.encoder.layers``) or scoring with unmasked
    text features."""
    from gradeclip.cli import METHOD_NAMES

    bb, frame = loaded["altclip"], frames[:1]
    own = gradeclip.similarity(bb, frame, PROMPTS)[0]  # (cosine, probs)
    for method in sorted(set(METHOD_NAMES) - {"scorecam"}):
        options = {"n_masks": 8} if method == "rise" else {}
        result = gradeclip.explain(bb, frame, PROMPTS, method=method, progress=False, **options)
        assert result.raw.shape == (1, 3, 5, 7) and np.isfinite(result.raw).all(), method
        np.testing.assert_allclose(result.cosine, own, rtol=0, atol=1e-5, err_msg=method)
