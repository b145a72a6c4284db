"""Plain parameter values of notebooks and commands turned into paths: "sample" videos, "shapes" model, outputs/.

Notebook parameter cells hold plain strings (so a user's edit, a Colab form or papermill can set them); these
functions give the strings their meaning, without code in the notebook. Nothing here imports torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .io.frames import data_dir

# Names that stand for files shipped in the repository's data/ folder (see data/README.md)
SAMPLE_VIDEOS = {"sample": "sample_walk.avi", "shapes": "shapes_demo.avi"}
SAMPLE_MODELS = {"shapes": "shapes_clip.pt"}


def _shipped(name: str, kind: str) -> str:
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"the shipped {kind} {path} is missing; clone the repository (data/ is part of it) "
                                f"or set GRADECLIP_DATA to a clone's data/ folder")
    return str(path)


def resolve_video(value: Union[str, os.PathLike]) -> str:
    """Path of the video named by ``value``: ``"sample"`` (the 320x240 walking-figure clip in data/),
    ``"shapes"`` (the moving-shapes clip in data/), or a path (``~`` expanded). FileNotFoundError if the path
    does not exist, naming it and the allowed names."""
    text = str(value).strip()
    if text in SAMPLE_VIDEOS:
        return _shipped(SAMPLE_VIDEOS[text], "sample video")
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"video not found: {text!r}; give a path, or one of "
                                f"{', '.join(repr(k) for k in SAMPLE_VIDEOS)} for a video shipped in data/")
    return str(path)


def resolve_model(value: Union[str, os.PathLike]) -> str:
    """The model name or checkpoint path that ``load_clip`` takes: ``"shapes"`` becomes the small CLIP trained on
    synthetic shapes (data/shapes_clip.pt, no download); anything else (``"ViT-B/32"``, a path) is returned as
    given (``~`` expanded for existing paths)."""
    text = str(value).strip()
    if text in SAMPLE_MODELS:
        return _shipped(SAMPLE_MODELS[text], "model")
    expanded = Path(text).expanduser()
    return str(expanded) if text.startswith("~") and expanded.exists() else text


def repository_root(start: Optional[Union[str, os.PathLike]] = None) -> Optional[Path]:
    """The gradeclip repository containing ``start`` (default: the working directory), found by walking up to a
    folder that holds both ``pyproject.toml`` and ``notebooks/``; None outside a clone."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir() and (folder / "gradeclip").is_dir():
            return folder
    return None


def output_dir(value: Union[str, os.PathLike] = "outputs", *, create: bool = True) -> Path:
    """Where figures go: an absolute ``value`` as given; a relative one under the repository root when the working
    directory is inside a clone (so a Jupyter started in ``notebooks/`` still writes to the repository's
    ``outputs/``, which git ignores), else under the working directory. Created (with parents) unless
    ``create`` is false; NotADirectoryError if it exists as a file."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (repository_root() or Path.cwd()) / path
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output folder {str(path)!r} exists and is not a folder")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
