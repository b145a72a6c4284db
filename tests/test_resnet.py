"""ResNet CLIPs (openai-clip and open_clip ``ModifiedResNet``): the adapter's forward is the library's, Grad-ECLIP on
the attention pool, Grad-CAM on layer4 and MaskCLIP against references written here from the formulas, scores equal
the library's own, transformer-only methods refused in one line.

References are computed from the library's own modules (stem, stages, q/k/v/c_proj projections) with
``F.multi_head_attention_forward`` or explicit loops, never through gradeclip's backbone."""
import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gradeclip
from gradeclip.backbones.base import backbone_of
from gradeclip.methods.baselines import run_method
from gradeclip.methods.gradients import grad_cam
from gradeclip.methods.grad_eclip import grad_eclip_image

from backbone_models import as_open_clip

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP

PROMPTS = ["a red circle", "a person walking", "a tree"]


def tiny_resnet_clip(seed=0, *, width=8, resolution=96):
    """A random openai-clip RN CLIP: one Bottleneck per stage, width*32 channels entering the pool (256 for width
    8, 4 heads of 64), trained at ``resolution`` (96: a 3x3 grid); perturbed so that every path carries signal."""
    torch.manual_seed(seed)
    model = CLIP(embed_dim=32, image_resolution=resolution, vision_layers=(1, 1, 1, 1), vision_width=width,
                 vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                 transformer_heads=1, transformer_layers=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():  # BatchNorm statistics other than (0, 1), so that eval-mode BN is not a no-op
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def rn():
    return tiny_resnet_clip()


@pytest.fixture(scope="module")
def rn_open_clip(rn):
    return as_open_clip(rn)


def text_features(seed=1, k=3, d=32):
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


def pixels(h, w, b=2, seed=2):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def layer4_output(visual, x):
    """The last stage's output (B, C, h, w), run here through the library's own modules."""
    for i in (1, 2, 3):
        act = getattr(visual, f"relu{i}", None) or getattr(visual, f"act{i}")
        x = act(getattr(visual, f"bn{i}")(getattr(visual, f"conv{i}")(x)))
    x = visual.avgpool(x)
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def pool_input(pool, fmap):
    """(L = 1 + h*w, B, C) pool tokens: the mean token then the spatial ones, plus the positional embedding
    interpolated bicubically to (h, w) (torch's own F.interpolate; the identity at the trained grid)."""
    b, c, h, w = fmap.shape
    pos = pool.positional_embedding
    side = round((pos.shape[0] - 1) ** 0.5)
    grid = pos[1:].T.reshape(1, c, side, side)
    if (h, w) != (side, side):
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:1], grid.reshape(c, h * w).T])
    x = fmap.flatten(2).permute(2, 0, 1)  # (h*w, B, C)
    return torch.cat([x.mean(dim=0, keepdim=True), x]) + pos[:, None]


def library_pool(pool, fmap):
    """The pool as openai-clip writes it, with torch's multi-head attention, at any grid: (B, D)."""
    x = pool_input(pool, fmap)
    out, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False)
    return out[0]


# ----- the forward is the library's
@pytest.mark.parametrize("library", ["openai-clip", "open_clip"])
def test_dense_forward_is_the_librarys_encode_image(rn, rn_open_clip, library):
    """Bugs caught: a stem activation or the stem's average pool skipped, the mean token left out of the pool, the
    positional embedding not added, the wrong stage read: the embedding at the trained input would differ from the
    library's ``encode_image`` (asserted bit-exact, float32)."""
    model = rn if library == "openai-clip" else rn_open_clip
    bb = backbone_of(model)
    assert type(bb).__name__ == ("OpenAIResNetBackbone" if library == "openai-clip" else "OpenClipResNetBackbone")
    x = pixels(96, 96)
    with torch.no_grad():
        expected = model.encode_image(x)
    assert torch.equal(bb.encode_pixels(x), expected)
    assert (bb.resolution, bb.patch_size, bb.output_dim) == (96, 32, 32)


def test_pool_at_a_non_square_grid_interpolates_positions(rn):
    """Bugs caught: the interpolated positional embedding laid out (w, h) instead of (h, w), or not interpolated at
    all (a crash or a wrong embedding), the mean token taken over the wrong axis, the trained grid recognised by its
    token count alone (1x9 read as 3x3): the 96x160 (3x5) and 32x288 (1x9) embeddings must equal torch's
    multi-head attention over positions interpolated here, and the trained 3x3 the library's own after them."""
    bb, x = backbone_of(rn), pixels(96, 160)
    with torch.no_grad():
        expected = library_pool(rn.visual.attnpool, layer4_output(rn.visual, x))
    got = bb.encode_pixels(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    strip = pixels(32, 288)  # a 1x9 grid: as many tokens as the trained 3x3, other positions
    with torch.no_grad():
        expected = library_pool(rn.visual.attnpool, layer4_output(rn.visual, strip))
    torch.testing.assert_close(bb.encode_pixels(strip), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bb.encode_pixels(pixels(96, 96)), rn.encode_image(pixels(96, 96)), rtol=0, atol=0)
    with torch.no_grad():  # the decomposed pool at the trained grid equals the library's too
        q, k, v = bb.pool_qkv(bb.embed_image(pixels(96, 96)))
        o, _ = gradeclip.backbones.base.attend(q, k, v, bb.pool_heads())
        torch.testing.assert_close(bb.pool_finish(o)[:, 0], rn.encode_image(pixels(96, 96)), rtol=1e-5, atol=1e-6)


# ----- Grad-ECLIP on the attention pool, against a loop from the formula
def naive_grad_eclip(model, x, text):
    """Grad-ECLIP on the pool, from the paper's formula, one head and one spatial token at a time:
    o = concat_h sum_j softmax_j(q_h . k_jh / sqrt(d)) v_jh (the mean token's query, keys and values of the mean
    token and every spatial token), cos_k = cos(c_proj(o), t_k), w_k = d cos_k / d o,
    lambda_i = minmax_i cos(q, k_i) over the spatial tokens, H_ki = ReLU(sum_c w_kc v_ic lambda_i).
    Returns (B, K, h, w)."""
    pool = model.visual.attnpool
    with torch.no_grad():
        fmap = layer4_output(model.visual, x)
        t = pool_input(pool, fmap).transpose(0, 1)  # (B, L, C)
        q, k, v = pool.q_proj(t[:, :1]), pool.k_proj(t), pool.v_proj(t)
    b, length, c = k.shape
    heads, d = pool.num_heads, c // pool.num_heads
    maps = torch.zeros(b, text.shape[0], length - 1)
    for n in range(b):
        o = torch.zeros(c)
        for h in range(heads):
            s = slice(h * d, (h + 1) * d)
            logits = torch.stack([q[n, 0, s] @ k[n, j, s] / d ** 0.5 for j in range(length)])
            a = logits.softmax(0)
            o[s] = sum(a[j] * v[n, j, s] for j in range(length))
        o.requires_grad_(True)
        feature = pool.c_proj(o)
        cos = torch.stack([F.cosine_similarity(feature, tk, dim=0) for tk in text])
        cosq = torch.stack([F.cosine_similarity(q[n, 0], k[n, i], dim=0) for i in range(1, length)])
        lam = (cosq - cosq.min()) / (cosq.max() - cosq.min())
        for kk in range(text.shape[0]):
            (w,) = torch.autograd.grad(cos[kk], o, retain_graph=True)
            for i in range(1, length):
                maps[n, kk, i - 1] = torch.relu((w * v[n, i]).sum() * lam[i - 1])
    return maps.reshape(b, text.shape[0], *fmap.shape[-2:])


@pytest.mark.parametrize("library", ["openai-clip", "open_clip"])
def test_grad_eclip_matches_the_loop_reference_on_a_non_square_grid(rn, rn_open_clip, library):
    """Bugs caught: the mean token mapped (maps shifted by one token), lambda normalised over the mean token too,
    the heads ignored (one head over the full width), the gradient taken after c_proj, the grid transposed (3x5
    read as 5x3), one prompt's gradient given to all: Grad-ECLIP on 2 frames at 96x160 for 3 prompts must equal
    the loop reference."""
    model = rn if library == "openai-clip" else rn_open_clip
    x, text = pixels(96, 160), text_features()
    expected = naive_grad_eclip(rn, x, text)
    got = grad_eclip_image(model, x, text)
    assert got.shape == (2, 3, 3, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert (expected > 0).sum() > 5 and not torch.allclose(expected[:, 0], expected[:, 1])  # a real test
    ablation = run_method("grad_eclip_no_spatial", model, x, text)[0]
    assert not torch.allclose(ablation, got)  # lambda really weighs the maps


def test_grad_eclip_layers_other_than_one_are_refused(rn):
    """Bug caught: layers=2 silently decomposing nothing more (the pool is the only attention)."""
    with pytest.raises(ValueError, match="layers=2.*layers must be 1"):
        grad_eclip_image(rn, pixels(96, 96), text_features(), layers=2)


# ----- Grad-CAM on layer4 and MaskCLIP's value path
def layer4_gradients(rn, x, text):
    """layer4's output A (B, C, h, w) of ``x`` and, per prompt k, d cos_k / d A by autograd through the library's
    own attention pool (frames independent, so one backward of the summed cosines serves a whole batch)."""
    with torch.no_grad():
        fmap = layer4_output(rn.visual, x)
    a = fmap.clone().requires_grad_(True)
    cos = F.normalize(library_pool(rn.visual.attnpool, a), dim=-1) @ F.normalize(text, dim=-1).T  # (B, K)
    return fmap, [torch.autograd.grad(cos[:, kk].sum(), a, retain_graph=True)[0] for kk in range(cos.shape[1])]


def test_grad_cam_is_layer4_grad_cam(rn):
    """Bugs caught: the gradient missing the path through the mean token (the pool's query), the ReLU left out, the
    weights averaged over channels instead of positions, the mean token's row taken as a position: Grad-CAM must
    equal ReLU(sum_c mean_ij(d cos / d A_cij) A_c) with A = layer4's output, computed by autograd here, times
    h*w / (h*w + 1): the shared pipeline averages the gradient over every token row, the mean token's too (whose
    gradient is 0, since the pool recomputes the mean from the spatial rows), a uniform factor (README)."""
    x, text = pixels(96, 160), text_features()
    fmap, grads = layer4_gradients(rn, x, text)
    expected = torch.zeros(2, 3, 3, 5)
    for kk in range(3):
        g = grads[kk]
        alpha = g.mean(dim=(2, 3), keepdim=True)
        expected[:, kk] = (alpha * fmap).sum(1).relu()
    got = grad_cam(rn, x, text)
    torch.testing.assert_close(got, expected * 15 / 16, rtol=1e-4, atol=1e-7)
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU matters on this fixture


def test_layercam_reads_layer4_with_gradients_through_the_mean_token(rn):
    """Bugs caught: the pool taking the mean token's row as given (per-position gradients then miss the path through
    the pool's query), the package hooking another tensor than layer4's output, the mean token kept as a position:
    the grad-cam package's LayerCAM must equal ReLU(sum_c ReLU(d cos / d A_cij) A_cij), min-max scaled per map as
    the package scales, with the gradient computed by autograd here."""
    x, text = pixels(96, 160), text_features()
    fmap, grads = layer4_gradients(rn, x, text)
    expected = torch.zeros(2, 3, 3, 5)
    for kk in range(3):
        g = grads[kk]
        cam = (g.relu() * fmap).sum(1).relu()  # (B, 3, 5)
        cam = cam - cam.amin(dim=(1, 2), keepdim=True)
        expected[:, kk] = cam / (1e-7 + cam.amax(dim=(1, 2), keepdim=True))
    got = run_method("layercam", rn, x, text)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_maskclip_is_the_value_path_through_c_proj(rn):
    """Bugs caught: the positional embedding left out of the values, the mean token's value mapped, c_proj's bias
    dropped, the ReLU left out: each spatial token's c_proj(v_proj(A_i + pos_i)) compared with the prompt."""
    x, text = pixels(96, 160), text_features()
    pool = rn.visual.attnpool
    with torch.no_grad():
        t = pool_input(pool, layer4_output(rn.visual, x)).transpose(0, 1)[:, 1:]  # (B, 15, C)
        emb = pool.c_proj(pool.v_proj(t))
        expected = (F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).T).relu().transpose(1, 2)
    got = run_method("maskclip", rn, x, text)[0]
    torch.testing.assert_close(got, expected.reshape(2, 3, 3, 5), rtol=1e-5, atol=1e-6)
    assert (expected == 0).any() and (expected > 0).any()


def test_cam_package_and_rise_run_on_the_last_stage():
    """Bugs caught: the CAM package's reshape keeping the mean token (6 + 1 tokens do not fill 2x3), a hook on a
    module the forward does not pass, RISE at another stride: maps on the 3x5 grid, not constant, per prompt."""
    small = tiny_resnet_clip(width=2, resolution=64)  # 64 channels: Score-CAM runs a masked forward per channel
    x, text = pixels(64, 96, b=1), text_features(k=2)
    for name, options in [("scorecam", {"batch_size": 64}), ("gradcam_pp", {}),
                          ("rise", {"n_masks": 40, "batch_size": 20})]:
        maps = run_method(name, small, x, text, **options)[0]
        assert maps.shape == (1, 2, 2, 3), name
        assert maps.amax() > maps.amin(), name
    eigen = run_method("eigencam", small, x, text)[0]  # prompt-independent: the first principal component
    torch.testing.assert_close(eigen[:, 0], eigen[:, 1])


# ----- scores are the library's own
def test_library_input_scores_are_the_librarys_own(rn, rn_open_clip):
    """Bugs caught: another normalisation or resize than the library's for ResNet models, the text side read at
    the wrong token: ``input="library"`` must give clip's own preprocess + encode_image + encode_text cosine."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
    frame = np.asarray(Image.fromarray(small).resize((200, 150), Image.BILINEAR))
    with torch.no_grad():
        image = rn.encode_image(clip.clip._transform(96)(Image.fromarray(frame))[None])
        text = rn.encode_text(clip.tokenize(PROMPTS))
    expected = (F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T).numpy()
    for model in (rn, rn_open_clip):
        cosine, probs = gradeclip.similarity(model, frame, PROMPTS, input="library")
        np.testing.assert_allclose(cosine, expected, atol=1e-6)
        scale = rn.logit_scale.exp().detach()
        np.testing.assert_allclose(probs, (scale * torch.from_numpy(expected)).softmax(-1).numpy(), atol=1e-5)
    result = gradeclip.explain(rn, frame, PROMPTS, input="library", progress=False)
    np.testing.assert_allclose(result.cosine, expected, atol=1e-6)
    assert result.raw.shape == (1, 3, 3, 3)
    words = gradeclip.word_importance(rn, frame, "a person walking", layers=1)  # the text side is the ViT models'
    assert len(words) == 3


# ----- refusals, one line each
@pytest.mark.parametrize("method", ["self_attention", "rollout", "game"])
def test_transformer_only_methods_refuse_in_one_line(rn, method):
    """Bug caught: a ViT method reading the pool's mean token as a class token (or crashing deep inside): each
    says in one line that the ResNet tower has no attention blocks."""
    with pytest.raises(ValueError) as err:
        run_method(method, rn, pixels(96, 96), text_features())
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{method} reads a ViT's attention blocks")
    assert "ResNet image tower (ModifiedResNet)" in message


def save_open_clip_resnet(model, folder):
    """``model`` (the tiny RN CLIP) saved as an open_clip folder: open_clip_config.json with a ResNet vision_cfg
    (``layers`` a list: open_clip builds a ModifiedResNet) and the converted weights."""
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(as_open_clip(model).state_dict(), folder / "open_clip_pytorch_model.bin")
    return str(folder)


def test_load_clip_accepts_resnet_checkpoints_and_folders(tmp_path, rn):
    """Bug caught: a ResNet CLIP refused at load ("this method needs open_clip's own ViT image tower ...") or at
    explain ("this method needs a ViT image encoder"): an OpenAI-format state dict and an open_clip folder load,
    explain and score as the model they were saved from."""
    path = tmp_path / "rn.pt"
    torch.save(rn.state_dict(), path)
    x, text = pixels(96, 128), text_features()
    expected = grad_eclip_image(rn, x, text)
    loaded, _ = gradeclip.load_clip(str(path), device="cpu")
    torch.testing.assert_close(grad_eclip_image(loaded, x, text), expected)
    folder, _ = gradeclip.load_clip("open_clip:" + save_open_clip_resnet(rn, tmp_path / "oc"), device="cpu")
    assert type(folder).__name__ == "OpenClipResNetBackbone"
    torch.testing.assert_close(grad_eclip_image(folder, x, text), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gradeclip.similarity(folder, np.zeros((96, 96, 3), np.uint8), PROMPTS)[0],
                               gradeclip.similarity(rn, np.zeros((96, 96, 3), np.uint8), PROMPTS)[0], atol=1e-6)


def test_transformers_refusal_names_the_class_honestly():
    """Bug caught: a transformers model with both towers told to "use the full CLIPModel ..., which has both
    towers" (the issue's wrong message); a vision tower alone is still told so."""
    both = type("FlavaModel", (), {"__module__": "transformers.models.flava",
                                   "get_text_features": lambda self: None, "get_image_features": lambda self: None})
    with pytest.raises(TypeError) as err:
        backbone_of(both())
    assert "has both towers but is none of the classes whose layers gradeclip decomposes" in str(err.value)
    assert "use the full" not in str(err.value) and "\n" not in str(err.value)
    vision = type("CLIPVisionModel", (), {"__module__": "transformers.models.clip"})
    with pytest.raises(TypeError, match="use the full CLIPModel or SiglipModel, which has both towers"):
        backbone_of(vision())


def test_other_openai_encoders_refusal_does_not_speak_of_a_method(rn):
    """Bug caught: refusing an openai-clip encoder gradeclip does not know with "this method needs ..." (the
    issue's message, given at load time): one line naming the encoder and the two that are explained."""
    other = copy.deepcopy(rn)
    other.visual = torch.nn.Identity()
    with pytest.raises(TypeError) as err:
        backbone_of(other)
    message = str(err.value)
    assert message.startswith("gradeclip cannot explain this openai-clip image encoder (Identity)")
    assert "ModifiedResNet" in message and "\n" not in message
