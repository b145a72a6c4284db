"""load_clip: checkpoints in both OpenAI formats, names, download failures; prompt tokenisation."""
import urllib.error
import urllib.request

import pytest
import torch

import gradeclip
from gradeclip import encode_prompts, load_clip, tokenize


def same_model(a, b):
    pixels = torch.randn(2, 3, 32, 32)
    tokens = tokenize(a, ["a dog", "two cats"])
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(pixels), b.encode_image(pixels))
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens))


def test_state_dict_checkpoint(model, checkpoint):
    loaded, preprocess = load_clip(checkpoint, device="cpu")
    assert not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    same_model(model, loaded)
    from PIL import Image
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit:FutureWarning")
def test_torchscript_checkpoint(model, tmp_path):
    # OpenAI publishes TorchScript archives; a traced tiny model stands in for one
    path = tmp_path / "traced.pt"
    traced = torch.jit.trace(model, (torch.randn(1, 3, 32, 32), tokenize(model, ["a dog"])), check_trace=False)
    traced.save(str(path))
    loaded, _ = load_clip(str(path), device="cpu")
    same_model(model, loaded)


def test_half_checkpoint_comes_back_float32(model, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded, _ = load_clip(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_unknown_name():
    with pytest.raises(ValueError, match=r"neither a file nor a CLIP model name.*ViT-B/32"):
        load_clip("ViT-Q/99")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither a TorchScript CLIP archive nor a state dict"):
        load_clip(junk)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="no 'text_projection' key"):
        load_clip(other)


def test_download_failure_is_explained(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError) as err:
        load_clip("ViT-B/32", download_root=str(tmp_path))
    message = str(err.value)
    assert "ViT-B/32" in message and str(tmp_path) in message and "path of a local checkpoint" in message


def test_tokenize_errors_and_truncation(model):
    long = "word " * 100
    with pytest.raises(ValueError, match="context length is 77"):
        tokenize(model, [long])
    with pytest.warns(UserWarning, match="truncated"):
        tokens = tokenize(model, [long], truncate=True)
    assert tokens.shape == (1, 77) and int(tokens[0].argmax()) == 76
    with pytest.raises(ValueError, match="no prompts"):
        tokenize(model, [])
    with pytest.raises(TypeError, match="prompts must be strings"):
        tokenize(model, ["ok", 3])


def test_encode_prompts(model):
    feats = encode_prompts(model, "a dog")
    assert feats.shape == (1, 32) and feats.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(feats, model.encode_text(tokenize(model, ["a dog"])).float())


def test_public_surface():
    for name in gradeclip.__all__:
        assert hasattr(gradeclip, name), name


def test_pixels_equal_clips_own_transform(model):
    """A 64x64 frame at scale 0.5 through ``to_pixels`` equals CLIP's own transform (``clip.clip._transform(32)``:
    bicubic resize, centre crop, ToTensor, Normalize) on the same image. Catches swapped mean/std channel order,
    BGR input, bilinear instead of bicubic resizing, or a missing /255."""
    import warnings

    import numpy as np
    from PIL import Image

    from gradeclip import to_pixels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip

    y, x = np.mgrid[0:64, 0:64]
    rng = np.random.default_rng(0)
    frame = np.clip(np.stack([x * 4, y * 4, 255 - x * 2], -1) + rng.integers(-40, 40, (64, 64, 3)), 0, 255)
    frame = frame.astype(np.uint8)
    want = clip.clip._transform(32)(Image.fromarray(frame))[None]
    got = to_pixels(model, frame, scale=0.5)
    assert got.shape == want.shape == (1, 3, 32, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
