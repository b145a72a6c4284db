"""explain, similarity, word_importance and the method registry."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gradeclip
from gradeclip import METHODS, explain, method_names, normalize_maps, similarity, word_importance
from gradeclip.explain import upsample

PROMPTS = ["a person walking", "a tree", "a car"]


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, 30, 44, 3), dtype=np.uint8)


def test_explain_outputs(model, frames):
    result = explain(model, frames, PROMPTS)
    assert result.maps.shape == (2, 3, 30, 44) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert np.allclose(result.maps.reshape(6, -1).max(1), 1, atol=1e-3)  # each map is normalised
    # 30x44 frame -> 32x48 input (nearest multiples of 8; 44 / 8 = 5.5 rounds up) -> 4x6 token grid
    assert result.raw.shape == (2, 3, 4, 6) and (result.raw >= 0).all()
    assert result.cosine.shape == result.probs.shape == (2, 3)
    np.testing.assert_allclose(result.probs.sum(1), 1, rtol=1e-5)
    assert result.prompts == PROMPTS and result.method == "grad_eclip"


def test_explain_raw_is_the_contract_function(model, frames):
    result = explain(model, frames[:1], PROMPTS[:2], layers=2)
    pixels = gradeclip.to_pixels(model, frames[:1])
    raw = gradeclip.grad_eclip_image(model, pixels, gradeclip.encode_prompts(model, PROMPTS[:2]), layers=2)
    np.testing.assert_allclose(result.raw, raw.numpy(), rtol=1e-5)


def test_scores_follow_clip(model, frames):
    txt = F.normalize(gradeclip.encode_prompts(model, PROMPTS), dim=-1)
    # at the model's own input size the scores are CLIP's: encode_image, cosine, softmax of scaled logits
    square = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BICUBIC)) for f in frames])
    cosine, probs = similarity(model, square, PROMPTS)
    with torch.no_grad():
        img = F.normalize(model.encode_image(gradeclip.to_pixels(model, square)), dim=-1)
        want = torch.softmax(model.logit_scale.exp() * (img @ txt.T), -1).numpy()
    np.testing.assert_allclose(cosine, (img @ txt.T).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)
    # at native aspect, explain reports the score it explains, the same as similarity
    cosine, probs = similarity(model, frames, PROMPTS)
    result = explain(model, frames, PROMPTS)
    np.testing.assert_allclose(result.cosine, cosine, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.probs, probs, rtol=1e-5, atol=1e-6)


def test_frame_formats_agree(model, frames):
    base = explain(model, frames[0], PROMPTS[:1]).raw
    assert base.shape[0] == 1
    np.testing.assert_allclose(explain(model, Image.fromarray(frames[0]), PROMPTS[:1]).raw, base, rtol=1e-5)
    np.testing.assert_allclose(explain(model, [frames[0]], PROMPTS[:1]).raw, base, rtol=1e-5)
    np.testing.assert_allclose(explain(model, frames[:1], "a person walking").raw, base, rtol=1e-5)


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros((10, 10, 3), np.float32), ValueError, "dtype uint8"),
    (np.zeros((10, 10), np.uint8), ValueError, r"\(N, H, W, 3\)"),
    (np.zeros((1, 10, 10, 4), np.uint8), ValueError, r"\(N, H, W, 3\)"),
    ([], ValueError, "no frames"),
    ("frame.png", TypeError, "uint8 RGB arrays or PIL images"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], ValueError, "differ in size"),
])
def test_bad_frames(model, bad, error, match):
    with pytest.raises(error, match=match):
        explain(model, bad, PROMPTS)


def test_bad_prompts_and_options(model, frames):
    with pytest.raises(ValueError, match="no prompts"):
        explain(model, frames, [])
    with pytest.raises(ValueError, match="context length"):
        explain(model, frames, ["very " * 80 + "long"])
    with pytest.raises(ValueError, match=r"unknown method 'gradcam'; known methods: .*grad_eclip"):
        explain(model, frames, PROMPTS, method="gradcam")
    with pytest.raises(ValueError, match="has no option.*layer.*its options: layers, single_head, spatial_weight"):
        explain(model, frames, PROMPTS, layer=2)
    with pytest.raises(ValueError, match="scale must be positive"):
        explain(model, frames, PROMPTS, scale=0)


def test_scale(model, frames):
    result = explain(model, frames[:1], PROMPTS[:1], scale=2.0)
    assert result.raw.shape[-2:] == (8, 11)  # 60x88 -> 64x88 -> 8x11 tokens
    assert result.maps.shape[-2:] == (30, 44)


def test_registry_plugs_in_new_methods(model, frames):
    name = "test_uniform"

    def uniform(model, pixels, text_features, *, value=1.0):
        h, w = pixels.shape[-2] // 8, pixels.shape[-1] // 8
        return torch.full((pixels.shape[0], text_features.shape[0], h, w), value)

    METHODS.register_module(name=name, module=uniform)
    try:
        assert name in method_names()
        result = explain(model, frames, PROMPTS, method=name, value=3.0)
        assert result.method == name
        assert np.all(result.raw == 3.0) and np.all(result.maps == 0)  # constant map -> zeros, not NaN
    finally:
        METHODS.module_dict.pop(name)


def test_normalize_maps():
    raw = torch.tensor([[[0.0, 2.0], [4.0, 1.0]], [[3.0, 3.0], [3.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalize_maps(raw)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(out[1:], torch.zeros(2, 2, 2))


def test_upsample_keeps_range():
    maps = torch.rand(2, 3, 4, 5)
    up = upsample(maps, (31, 47))
    assert up.shape == (2, 3, 31, 47)
    assert up.min() >= maps.min() - 1e-6 and up.max() <= maps.max() + 1e-6


def test_word_importance(model, frames):
    pairs = word_importance(model, frames[0], "a person walking", layers=2)
    assert [w for w, _ in pairs] == ["a", "person", "walking"]
    weights = np.array([wt for _, wt in pairs])
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match="one frame"):
        word_importance(model, frames, "a person")


def test_batches_give_the_same_result(model, frames):
    many = np.concatenate([frames, frames[::-1], frames[:1]])  # 5 frames
    whole = explain(model, many, PROMPTS, batch_size=16)
    batched = explain(model, many, PROMPTS, batch_size=2, progress=False)
    np.testing.assert_allclose(batched.raw, whole.raw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batched.cosine, whole.cosine, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        explain(model, many, PROMPTS, batch_size=0)
