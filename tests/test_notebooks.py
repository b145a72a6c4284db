"""Every notebook runs top to bottom headless, without its Colab cell, with a tiny checkpoint instead of downloaded
weights injected into its parameters cell (papermill's convention, ``notebook_runner.run_notebook``)."""
import ast
import json
import re
import sys
import types

import nbformat
import pytest
import torch

from conftest import tiny_clip
from notebook_runner import NOTEBOOK_DIR, cell_text, parameter_names, parameters_cell_index, run_notebook

ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.stem != "00_explorer"]  # 00 runs in tests/test_explorer.py (shapes model)
EXPECTED = {
    "01_extract_frames": ["frame_strip.png", "frame_strip.pdf"],
    "02_clip_similarity": ["scores.png", "scores.pdf"],
    "03_grad_eclip_heatmap": ["grad_eclip.png", "grad_eclip.pdf", "grad_eclip_maps.npy", "grad_eclip_scores.json",
                              "word_importance.png"],
    "04_compare_methods": ["methods_grid.png", "methods_grid.pdf"],
    "05_video_explanations": ["timeline.png", "timeline.pdf", "overlay.mp4", "overlay.gif",
                              "sample_walk_grad_eclip_maps.npz", "sample_walk_grad_eclip_maps.json"],
    "06_failure_cases": ["absent_object.png", "negation.png", "same_colour.png", "tiny_object.png",
                         "text_in_the_image.png", "unrelated_prompts.pdf"],
    "07_video_level": ["sample_walk_clip.png", "sample_clip.mp4", "sample_clip.gif", "sample_clip.json",
                       "sample_clip.npz", "sample_clip_prompt-1.png", "shapes_clip_prompt-1.png"],
}
# Names the issue asks every notebook to keep where it has them
KEPT = {"VIDEO", "MODEL", "FRAME", "PROMPTS", "METHOD", "OUT_DIR"}


@pytest.fixture(scope="module")
def notebook_checkpoint(tmp_path_factory):
    """Patch 32 like ViT-B/32, so the 320x240 sample is a 10x8 grid and every method stays quick."""
    path = tmp_path_factory.mktemp("nb") / "tiny_p32.pt"
    torch.save(tiny_clip(4, patch=32, resolution=64, vision_width=128, vision_layers=2).state_dict(), path)
    return path


def test_all_notebooks_are_covered():
    assert sorted(p.stem for p in ALL_NOTEBOOKS) == sorted([*EXPECTED, "00_explorer"])


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_layout(path):
    """Badge, Colab cell as the first code cell, one parameters cell of plain values with Colab form annotations.
    Catches: an ``os.environ`` default that overrides the user's edit, an import the parameters cell needs (it
    fails without the Colab cell), a parameter without its form annotation, an install that upgrades Jupyter."""
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert "colab-badge" in book.cells[0].source
    assert "google.colab" in code[0].source and all("google.colab" not in c.source for c in code[1:])
    commands = "\n".join(line.split("#")[0] for line in code[0].source.splitlines())  # without comments
    for word in ("ipykernel", "jupyter", "requirements.txt", "--upgrade", "-U"):
        assert f'"{word}"' not in commands and f" {word} " not in commands, word
    params = book.cells[parameters_cell_index(book)]
    assert "os.environ" not in params.source and "import" not in params.source
    names = parameter_names(book)
    assert "OUT_DIR" in names and ("MODEL" in names or path.stem == "01_extract_frames")
    for line in params.source.splitlines():
        ast.literal_eval(line.split("=", 1)[1].split("#@param")[0].strip())  # a plain value, no code
        assert "#@param" in line, line
    # the markdown above the parameters cell names exactly the notebook's parameters
    text = book.cells[parameters_cell_index(book) - 1].source
    documented = set(re.findall(r"^- `([A-Z_]+)`", text, flags=re.M))
    assert documented == set(names)


def test_colab_cell_stops_with_a_clear_message_when_the_clone_fails(tmp_path, monkeypatch):
    """In a (faked) Colab runtime whose ``git clone`` fails, the cell raises at once with a message naming the
    clone, instead of going on to a ModuleNotFoundError later (the bug: an unchecked ``!git clone``)."""
    book = nbformat.read(NOTEBOOKS[0], as_version=4)
    source = next(c.source for c in book.cells if c.cell_type == "code")
    fake_git = tmp_path / "git"
    fake_git.write_text("#!/bin/sh\necho 'fatal: unable to access repository' >&2\nexit 128\n")
    fake_git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(RuntimeError, match="could not clone gradeclip.*unable to access"):
        exec(compile(source, "colab_cell", "exec"), {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, notebook_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("GRADECLIP_MODEL", raising=False)
    parameters = {"OUT_DIR": f"outputs/{path.stem}", **({"VIDEO": "sample"} if path.stem != "06_failure_cases" else {})}
    if path.stem not in ("01_extract_frames", "06_failure_cases"):  # 06's default: the shipped shapes CLIP
        parameters["MODEL"] = str(notebook_checkpoint)
    book = run_notebook(path, parameters, tmp_path, timeout=300)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    out = tmp_path / "outputs" / path.stem
    for name in EXPECTED[path.stem]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    if path.stem == "04_compare_methods":
        table = cell_text(code[-1])
        assert "deletion AUC" in table and "grad_eclip " in table
        assert "scorecam" not in table and "rise" not in table  # the slow ones stay out of the default
    if path.stem == "03_grad_eclip_heatmap":
        record = json.loads((out / "grad_eclip_scores.json").read_text())
        assert record["model"] == str(notebook_checkpoint) and len(record["prompts"]) == 3


def test_injected_values_win(notebook_checkpoint, tmp_path, monkeypatch):
    """A value injected after the parameters cell is the one the notebook uses (here: the frame strip's size and
    the output folder), as a user's edit of the cell would be. Catches a notebook that reads its own defaults
    again, or an environment variable, after the parameters cell."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("GRADECLIP_VIDEO", "/nonexistent.avi")  # must not matter any more
    run_notebook(NOTEBOOKS[0], {"STRIP_FRAMES": 3, "OUT_DIR": str(tmp_path / "elsewhere")}, tmp_path)
    assert (tmp_path / "elsewhere" / "frame_strip.png").is_file()
    assert not (tmp_path / "outputs").exists()


def test_input_parameter_reaches_the_explanation(notebook_checkpoint, tmp_path, monkeypatch):
    """Notebook 03 with ``INPUT = "library"`` injected: the saved scores name the library's 64 x 64 crop of the
    320 x 240 sample: the short side resized to 64 gives 64 x 85, cropped at column round(10.5) = 10, i.e. frame
    columns 38..279 seen. Bug caught: a parameters cell whose INPUT is never passed on."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = next(p for p in NOTEBOOKS if p.stem == "03_grad_eclip_heatmap")
    run_notebook(path, {"MODEL": str(notebook_checkpoint), "INPUT": "library", "OUT_DIR": str(tmp_path / "o")},
                 tmp_path, timeout=300)
    record = json.loads((tmp_path / "o" / "grad_eclip_scores.json").read_text())
    assert record["input"]["mode"] == "library" and record["input"]["size_hw"] == [64, 64]
    assert record["input"]["seen_box_tlbr"] == [0, 38, 240, 279]


def test_notebook_07_runs_on_an_xclip_folder(tmp_path, monkeypatch):
    """Notebook 07 with ``MODEL = "hf:FOLDER"`` of a random tiny X-CLIP (num_frames 4) and FRAMES left to the
    model: it runs headless, writes its files, and the JSON's cosine is the model's own ``logits_per_video`` /
    logit_scale on the frames the JSON names (X-CLIP's processor and forward, called here). Catches: a notebook
    that only works with mean pooling (a hard-coded pooling or 8-frame default), a JSON that reports the mean
    pooling score of an X-CLIP model, or frames other than those named."""
    import numpy as np
    import transformers

    import gradeclip
    from backbone_models import save_tiny_xclip

    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("GRADECLIP_MODEL", raising=False)
    folder = save_tiny_xclip(tmp_path / "xclip")
    path = next(p for p in NOTEBOOKS if p.stem == "07_video_level")
    book = run_notebook(path, {"MODEL": f"hf:{folder}", "VIDEO": "sample", "OUT_DIR": str(tmp_path / "o")},
                        tmp_path, timeout=300)
    assert not [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    for name in EXPECTED["07_video_level"]:
        assert (tmp_path / "o" / name).is_file(), name
    record = json.loads((tmp_path / "o" / "sample_clip.json").read_text())
    video = gradeclip.resolve_video("sample")
    count = gradeclip.video_info(video).num_frames
    assert record["pooling"] == "xclip" and record["model"] == f"hf:{folder}"
    assert record["frame_indices"] == np.round(np.linspace(0, count - 1, 4)).astype(int).tolist()
    model, tokenizer = (transformers.XCLIPModel.from_pretrained(folder).eval(),
                        transformers.AutoTokenizer.from_pretrained(folder))
    processor = transformers.XCLIPProcessor(image_processor=transformers.AutoImageProcessor.from_pretrained(folder),
                                            tokenizer=tokenizer)
    inputs = processor(text=record["prompts"], videos=list(gradeclip.read_frames(video, record["frame_indices"])),
                       padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    expected = out.logits_per_video[0] / model.logit_scale.detach().exp()
    np.testing.assert_allclose(record["cosine"], expected.numpy(), atol=1e-5)
    assert abs(record["cosine"][0] - record["cosine"][1]) > 1e-4  # two prompts, two values: a swap would show
