"""Silence what native decoders (decord, FFmpeg, OpenCV) print from C/C++ straight to file descriptor 2."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_stderr_silenced():
    """Hide what decord and FFmpeg print from C++ straight to file descriptor 2 (their errors reach us as
    exceptions, which we turn into one clear message)."""
    fd = 2  # native code writes to the process's descriptor 2, whatever sys.stderr is
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
