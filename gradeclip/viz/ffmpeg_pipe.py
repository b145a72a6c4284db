"""Frames piped to an FFmpeg child process (the binary that imageio-ffmpeg ships), for the MP4 and GIF exports.

The child runs in a session of its own, so the terminal's Ctrl-C reaches only the Python process, which then stops
the child itself: ``close`` lets FFmpeg finish the file, ``abort`` kills it (no trailer written, nothing printed).
FFmpeg's messages go to a temporary file and are shown only in the error of a failed write, never mixed into the
command's output.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


@contextlib.contextmanager
def _ctrl_c_after():
    """Hold a SIGINT that arrives inside the block and deliver it (to the handler that was installed) when the
    block ends. Only in the main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)
            raise KeyboardInterrupt


class FfmpegWriter:
    """Write uint8 RGB frames (H, W, 3), all of one size, to ``path`` at ``fps`` frames per second; FFmpeg encodes
    them with ``output_args`` (codec, pixel format, filters) into the container ``fmt`` (e.g. "mp4", "gif"). FFmpeg
    starts at the first frame. Raises OSError naming the file and FFmpeg's message when FFmpeg fails."""

    def __init__(self, path, fps: float, fmt: str, output_args: Sequence[str]):
        self.path, self.fps, self.fmt, self.output_args = Path(path), fps, fmt, list(output_args)
        self.process: Optional[subprocess.Popen] = None
        self.log = None

    def _start(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        rate = str(Fraction(self.fps).limit_denominator())
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", rate, "-i", "pipe:0",
                   "-an", *self.output_args, "-f", self.fmt, str(self.path)]
        self.log = tempfile.TemporaryFile()
        with _ctrl_c_after():  # never a child running whose handle we lost to Ctrl-C (it would write on, unseen)
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=self.log, start_new_session=True)

    def _failed(self, what: str) -> OSError:
        self.log.seek(0)
        message = " ".join(self.log.read().decode(errors="replace").split())[-500:]
        return OSError(f"FFmpeg {what} {self.path.name}: {message or 'no message'}")

    def append(self, rgb: np.ndarray) -> None:
        """Send one frame."""
        if self.process is None:
            self._start(rgb.shape[1], rgb.shape[0])
        try:
            self.process.stdin.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            self.process.wait()
            raise self._failed(f"stopped (status {self.process.returncode}) while writing") from None

    def close(self) -> None:
        """Finish the file: FFmpeg encodes what it holds and writes the trailer; OSError if it fails."""
        if self.process is None:
            return
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        if self.process.wait() != 0:
            raise self._failed(f"failed (status {self.process.returncode}) to write")
        self.log.close()

    def abort(self) -> None:
        """Stop FFmpeg at once without finishing the file (after an error or Ctrl-C; the caller discards it)."""
        if self.process is None:
            return
        self.process.kill()
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.wait()
        self.log.close()
