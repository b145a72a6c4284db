"""Argument checks shared across modules, each raising ValueError that names the value and what is allowed."""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path


def positive_int(value, name: str, hint: str = "") -> int:
    """``value`` if it is an int >= 1 (not a bool); ValueError "NAME must be an int >= 1HINT, got VALUE" else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{hint}, got {value!r}")
    return value


def text_features_for(text_features, prompts) -> None:
    """ValueError unless ``text_features`` (a tensor or array) is (K, D) with K = ``len(prompts)``: encoded prompts
    handed in beside their labels (``explain_encoded``, ``explain_clip_encoded``)."""
    if text_features.ndim != 2 or text_features.shape[0] != len(prompts):
        raise ValueError(f"text_features must be (K, D) with K = {len(prompts)} prompts; got "
                         f"{tuple(text_features.shape)}")


def output_folder(out, flag: str = "--out") -> Path:
    """``out`` as an absolute path if it exists as a writable folder or can be created (its nearest existing parent
    is a writable folder) and a file can really be created in it (permissions alone do not say so: as root,
    ``/proc/x`` passes them); ValueError naming ``flag`` else. Commands call it before any work, so that nothing is
    computed for an output that cannot be written. Folders created for the test are removed again."""
    path = Path(out).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {out}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {out}: the folder is not writable")
        return _try_writing(path, out, flag)
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"{flag} {out}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot create it, {parent} is not writable")
    return _try_writing(path, out, flag)


def _try_writing(path: Path, out, flag: str) -> Path:
    """``path`` once a file could be created and removed in it (creating the folder for the test, then removing the
    folders it had to create); ValueError naming ``flag`` and the system's reason else."""
    created = [p for p in [path, *path.parents] if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".gradeclip-write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {out}: cannot write there ({err.strerror or err})") from None
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return path


def positive_int_arg(text: str) -> int:
    """argparse ``type=`` for options taking a whole number >= 1: the int, or an ArgumentTypeError saying so."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give a whole number >= 1")
    return value
