"""Notebook/CLI parameter values: "sample" videos, the "shapes" model, and where outputs/ is."""
import subprocess
from pathlib import Path

import pytest

from gradeclip.paths import output_dir, repository_root, resolve_model, resolve_video

REPO = Path(__file__).resolve().parent.parent


def test_sample_names_resolve_to_the_shipped_files():
    """Catches a swapped table entry (the shapes clip for "sample") or a wrong data/ folder."""
    assert Path(resolve_video("sample")) == REPO / "data" / "sample_walk.avi"
    assert Path(resolve_video("shapes")) == REPO / "data" / "shapes_demo.avi"
    assert Path(resolve_model("shapes")) == REPO / "data" / "shapes_clip.pt"
    assert resolve_model("ViT-B/32") == "ViT-B/32"


def test_missing_video_names_the_value_and_the_shipped_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'nope.avi'.*'sample'"):
        resolve_video("nope.avi")
    (tmp_path / "v.avi").write_bytes(b"x")
    assert resolve_video(tmp_path / "v.avi") == str(tmp_path / "v.avi")


def test_outputs_go_to_the_repository_root_from_notebooks_folder(monkeypatch, tmp_path):
    """Jupyter started in notebooks/ must write to the repository's outputs/ (ignored by git), not to
    notebooks/outputs/ (the bug: a path relative to the working folder)."""
    monkeypatch.chdir(REPO / "notebooks")
    assert repository_root() == REPO
    assert output_dir("outputs/x", create=False) == REPO / "outputs" / "x"
    monkeypatch.chdir(tmp_path)  # outside a clone: the working folder
    assert output_dir("outputs/x") == tmp_path / "outputs" / "x" and (tmp_path / "outputs" / "x").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        output_dir(tmp_path / "file")


def test_outputs_content_is_ignored_by_git():
    """Anything a notebook writes under outputs/ is ignored; outputs/README.md is not."""
    ignored = subprocess.run(["git", "check-ignore", "-q", "outputs/04_compare_methods/methods_grid.png"],
                             cwd=REPO).returncode
    kept = subprocess.run(["git", "check-ignore", "-q", "outputs/README.md"], cwd=REPO).returncode
    assert (ignored, kept) == (0, 1)
