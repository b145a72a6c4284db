"""Loading open_clip and transformers models by name and from local folders, and the new names in the CLI and the
video sidecar. Random-weight folders are written in the test; nothing touches the network."""
import json

import numpy as np
import pytest
import torch

import gradeclip
from gradeclip import load_clip
from gradeclip.backbones.base import Backbone
from gradeclip.cli import main

from backbone_models import save_hf_clip, save_open_clip
from conftest import numbered_frames, tiny_clip, write_video


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same random weights as a transformers CLIPModel folder and an open_clip folder, and the original."""
    base = tiny_clip(7)
    root = tmp_path_factory.mktemp("models")
    return base, save_hf_clip(base, root / "hf"), save_open_clip(base, root / "oc")


@pytest.mark.parametrize("form", ["hf:{hf}", "{hf}", "open_clip:{oc}", "{oc}"])
def test_local_folders_load_with_their_tokenizer(folders, form):
    """Catches a folder loaded as the wrong library, a tokenizer lost on the way (the hf folder's own tokenizer
    must give the same text features as CLIP's), or weights not restored."""
    base, hf, oc = folders
    name = form.format(hf=hf, oc=oc)
    model, preprocess = load_clip(name, device="cpu")
    assert isinstance(model, Backbone) and model.library == ("transformers" if hf in name else "open_clip")
    # the name it was loaded as, whatever the form (catches the loaders' name not passed to the adapter's build)
    assert model.describe()["model"] == (f"hf:{hf}" if hf in name else f"open_clip:{oc}")
    assert not model.model.training and all(p.dtype == torch.float32 for p in model.model.parameters())
    torch.testing.assert_close(gradeclip.encode_prompts(model, ["a dog", "two cats"]),
                               gradeclip.encode_prompts(base, ["a dog", "two cats"]), rtol=1e-5, atol=1e-6)
    from PIL import Image
    image = Image.fromarray((np.random.RandomState(0).rand(40, 50, 3) * 255).astype(np.uint8))
    pixels = preprocess(image)[None]
    assert pixels.shape == (1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_pixels(pixels), base.encode_image(pixels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,message", [
    ("ViT-Q/99", r"neither a file nor a CLIP model name; accepted: .*ViT-B/32.*'open_clip:ARCH/PRETRAINED'.*"
                 r"'hf:REPO_OR_FOLDER'"),
    ("open_clip:ViT-Q-99/laion", "unknown open_clip architecture 'ViT-Q-99'"),
    ("open_clip:ViT-B-32", "names no weights; give 'open_clip:ARCH/PRETRAINED'"),
])
def test_wrong_names_get_one_line_naming_the_forms(name, message):
    """Catches a traceback or a bare KeyError instead of one line listing what is accepted."""
    with pytest.raises(ValueError, match=message) as err:
        load_clip(name)
    assert "\n" not in str(err.value)


def test_folder_of_neither_library(tmp_path):
    with pytest.raises(ValueError, match="neither open_clip_config.json .open_clip. nor config.json"):
        load_clip(tmp_path)


def test_cli_and_video_sidecar_record_library_and_model(folders, tmp_path, capsys):
    """Catches the CLI refusing the new names, and JSON files that do not say which library's model was used."""
    _, hf, oc = folders
    video = write_video(tmp_path / "walk.avi", numbered_frames(6, 40, 56))
    assert main(["explain", video, "-p", "a dog", "-p", "a cat", "--model", f"hf:{hf}", "--out", str(tmp_path),
                 "--dpi", "40"]) == 0
    assert "(transformers)" in capsys.readouterr().out
    record = json.loads(next(tmp_path.glob("*_scores.json")).read_text())
    assert record["library"] == "transformers" and record["model"] == f"hf:{hf}"
    assert main(["video", video, "-p", "a dog", "--model", f"open_clip:{oc}", "--out", str(tmp_path / "v"),
                 "--no-gif", "--dpi", "40"]) == 0
    sidecar = json.loads(next((tmp_path / "v").glob("*_maps.json")).read_text())
    assert sidecar["library"] == "open_clip" and sidecar["model"] == f"open_clip:{oc}"


@pytest.mark.parametrize("mode", ["squash", "shortest"])
def test_open_clip_preprocess_is_open_clip_own(tmp_path, mode):
    """Catches squash and resize-and-crop swapped (or the folder's resize_mode ignored): ``preprocess()`` of an
    open_clip folder with ``resize_mode`` squash or shortest equals open_clip's own transform on a non-square
    image (56 x 40), and the two modes give different pixels (so a swap cannot pass)."""
    import open_clip
    from PIL import Image

    folder = save_open_clip(tiny_clip(8), tmp_path / mode, preprocess_cfg={"resize_mode": mode})
    image = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    model, preprocess = load_clip(folder, device="cpu")
    _, _, own = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    want = own(image)
    assert want.shape == (3, 32, 32)
    torch.testing.assert_close(model.preprocess()(image), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(preprocess(image), want, rtol=0, atol=1e-5)
    other = open_clip.image_transform(32, is_train=False, resize_mode="shortest" if mode == "squash" else "squash")
    assert (other(image) - want).abs().max() > 0.1
