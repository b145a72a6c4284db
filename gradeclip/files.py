"""Output files that are complete or absent, and the one-line report of an interrupted command.

Every file a command writes goes through ``atomic_path``: the writer fills a temporary file in the same folder
(a hidden name that keeps the suffix, so matplotlib and FFmpeg still pick the format from it) and only a finished
file is renamed to its final name. An exception or Ctrl-C (``KeyboardInterrupt``) removes the temporary file, so a
final name always holds a whole file. Imports nothing from gradeclip: every layer may use it.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]
PARTIAL_MARK = ".partial-"  # part of every temporary name, so leftovers of a killed process can be recognised


def partial_name(path: PathLike) -> Path:
    """The temporary name used for ``path`` while it is written: ``.NAME.partial-PID.SUFFIX`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.stem}{PARTIAL_MARK}{os.getpid()}{path.suffix}")


def is_partial(path: PathLike) -> bool:
    """True for a temporary name made by ``partial_name`` (a file left by a process that was killed)."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on normal exit rename it to ``path`` (replacing an older
    file), on any exception (Ctrl-C included) remove it and re-raise. The writer must have closed the file when the
    block ends. Raises FileNotFoundError if the writer left no file."""
    final = Path(path)
    temp = partial_name(final)
    try:
        yield temp
        if not temp.exists():
            raise FileNotFoundError(f"{final}: the writer produced no file")
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the final path."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the final path."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_json(path: PathLike, obj, **dump_options) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``dump_options`` go to ``json.dumps``, indent 2 by default);
    returns the final path."""
    dump_options.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dump_options) + "\n")


class Interrupted(Exception):
    """Raised by a command that caught Ctrl-C, carrying one line for the user: what was completed, where it is, and
    how to resume. The CLI prints it and exits with status 130 (as a shell does for SIGINT)."""


INTERRUPT_STATUS = 130
