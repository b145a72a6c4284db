"""Notebook 03 runs with an open_clip and a transformers model given as MODEL (random-weight local folders)."""
import json

import pytest

from backbone_models import save_hf_clip, save_open_clip
from conftest import tiny_clip
from notebook_runner import NOTEBOOK_DIR, run_notebook


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Patch 32 at 64 px, like the openai-clip notebook checkpoint: the 320x240 sample is a 10x8 grid."""
    base = tiny_clip(4, patch=32, resolution=64, vision_width=128, vision_layers=2)
    root = tmp_path_factory.mktemp("nb_models")
    return {"transformers": "hf:" + save_hf_clip(base, root / "hf"),
            "open_clip": "open_clip:" + save_open_clip(base, root / "oc")}


@pytest.mark.parametrize("library", ["open_clip", "transformers"])
def test_notebook_03_with_other_libraries(folders, library, tmp_path, monkeypatch):
    """Catches a notebook step (explain, figures, export, word importance) that only works for openai-clip, and an
    export that does not record which library's model made it."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "out"
    run_notebook(NOTEBOOK_DIR / "03_grad_eclip_heatmap.ipynb",
                 {"MODEL": folders[library], "VIDEO": "sample", "OUT_DIR": str(out)}, tmp_path, timeout=300)
    for name in ("grad_eclip.png", "grad_eclip_maps.npy", "grad_eclip_scores.json", "word_importance.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    record = json.loads((out / "grad_eclip_scores.json").read_text())
    assert record["library"] == library and record["model"] == folders[library]
