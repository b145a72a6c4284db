"""Ctrl-C in a command: what it had finished, told in one line, and the errors that Ctrl-C causes told apart.

A command keeps a ``Progress`` up to date (the items finished, the step under way with its frame bar, the files that
step writes and those already complete) and runs its work inside ``reported(progress)``; Ctrl-C there raises
``gradeclip.files.Interrupted`` with ``progress.line()``, which the CLI prints as ``gradeclip: interrupted: ...``
and exits 130. Output files are complete or absent (``gradeclip.files.atomic_path``), so the line can say exactly
which exist. Imports nothing above ``files``: the CLI layer uses it.
"""
from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Sequence

from .files import Interrupted

_sigint_seen = threading.Event()


@contextlib.contextmanager
def noting_sigint() -> Iterator[None]:
    """While the block runs, SIGINT raises KeyboardInterrupt as Python's own handler does and is remembered, so that
    an OSError from a pipe to a child process that the same Ctrl-C stopped (a BrokenPipeError from FFmpeg, which the
    terminal signals too) can be reported as the interrupt it is (``caused_by_ctrl_c``). A KeyboardInterrupt that
    Python cannot raise where the signal landed (in an at-fork hook while a child process such as FFmpeg starts, or
    in a finaliser: Python prints "Exception ignored" and goes on) is not lost: it is raised again a moment later
    in the main thread's own code. Only in the main thread; a SIGINT that the caller ignores stays ignored."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return

    def note(signum, frame):
        _sigint_seen.set()
        raise KeyboardInterrupt

    def raise_again(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _sigint_seen.is_set():
            timer = threading.Timer(0.01, _thread.interrupt_main)  # runs ``note`` in the main thread, outside here
            timer.daemon = True
            timer.start()
        else:
            previous_hook(unraisable)

    _sigint_seen.clear()
    previous_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, note)
    sys.unraisablehook = raise_again
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        sys.unraisablehook = previous_hook
        # the mark stays until the next command: the CLI's error handler, outside the block, still reads it


def caused_by_ctrl_c(err: BaseException) -> bool:
    """True for KeyboardInterrupt, and for an OSError raised after SIGINT arrived inside ``noting_sigint``."""
    return isinstance(err, KeyboardInterrupt) or (isinstance(err, OSError) and _sigint_seen.is_set())


class Progress:
    """What a command has finished so far. ``out``: its output folder. ``finished``: whole items done (a video's
    name). ``step``: what is under way ("explaining walk.avi"); ``bar``: that step's frame bar (anything with ``n``
    and ``total``, e.g. a tqdm) or None; ``expected``: the files the step writes; ``written``: those of them already
    complete under their final names (the export functions append to it)."""

    def __init__(self, out):
        self.out = Path(out)
        self.finished: List[str] = []
        self.begin("starting")

    def begin(self, step: str, *, bar=None, expected: Sequence[Path] = ()) -> None:
        """A new step: ``step`` says what it does; its bar, and the files it will write."""
        self.step, self.bar, self.expected, self.written = step, bar, [Path(p) for p in expected], []

    def finish(self, item: str) -> None:
        """``item`` is complete, all its files written."""
        self.finished.append(item)
        self.begin("going on to the next step")

    def line(self) -> str:
        """One line: what was finished and where, what was under way, which of its files exist, how to resume."""
        parts = []
        if self.finished:
            parts.append(f"finished {', '.join(self.finished)} (files in {self.out})")
        doing = f"stopped while {self.step}"
        if self.bar is not None and getattr(self.bar, "total", None):
            doing += f" ({int(self.bar.n)} of {int(self.bar.total)} frames explained)"
        parts.append(doing)
        written = [p.name for p in self.written]
        if written:
            missing = [p.name for p in self.expected if p.name not in written]
            parts.append(f"wrote {', '.join(written)} in {self.out}"
                         + (f"; not finished: {', '.join(missing)}" if missing else ""))
        elif self.expected:
            parts.append("none of its files was written")
        elif not self.finished:
            parts.append("nothing written")
        parts.append("rerun the same command")
        return "; ".join(parts)


@contextlib.contextmanager
def reported(progress: Progress) -> Iterator[Progress]:
    """Run a command's work: Ctrl-C inside (``caused_by_ctrl_c``) closes the step's bar, so that the line starts on a
    line of its own, and raises ``Interrupted(progress.line())``; other errors pass unchanged."""
    try:
        yield progress
    except (KeyboardInterrupt, OSError) as err:
        if not caused_by_ctrl_c(err):
            raise
        close = getattr(progress.bar, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        raise Interrupted(progress.line()) from None


def frames_bar(total: int, desc: str, enabled: bool = True):
    """The tqdm bar a command shows while explaining ``total`` frames (kept by the command, so Ctrl-C can say how
    far it got)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled)

