"""Argument checks shared across modules, each raising ValueError that names the value and what is allowed."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(value, name: str, hint: str = "") -> int:
    """``value`` if it is an int >= 1 (not a bool); ValueError "NAME must be an int >= 1HINT, got VALUE" else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{hint}, got {value!r}")
    return value


def output_folder(out, flag: str = "--out") -> Path:
    """``out`` as an absolute path if it exists as a writable folder or can be created (its nearest existing parent
    is a writable folder); ValueError naming ``flag`` else. Commands call it before any work, so that nothing is
    computed for an output that cannot be written."""
    path = Path(out).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {out}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {out}: the folder is not writable")
        return path
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"{flag} {out}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {out}: cannot create it, {parent} is not writable")
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
