"""How a CLI command ends: its own status, one error line and exit 1, or Ctrl-C's one line and exit 130.

``exit_status(run)`` calls ``run()`` (parsing and the command) and turns what it raises into the promised output on
stderr: ``gradeclip: error: ...`` (status 1) for a mistake in what the user gave (``UserError``, or a
FileNotFoundError, ValueError, IndexError, TypeError, RuntimeError, OSError) and ``gradeclip: interrupted: ...``
(status ``files.INTERRUPT_STATUS``, 130) for Ctrl-C, with the command's own line when it raised
``files.Interrupted``. ``one_line_warnings`` prints each warning as one line. Imports nothing heavy (``--help`` stays
free of torch).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Iterator

from .files import INTERRUPT_STATUS, Interrupted
from .interrupts import caused_by_ctrl_c

NOTHING_INCOMPLETE = "no output file was left incomplete under its final name"


class UserError(Exception):
    """A mistake in what the user gave: printed as one line, exit status 1, no traceback."""


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"gradeclip: warning: {' '.join(str(message).split())}", file=sys.stderr)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Inside the block each warning prints as ``gradeclip: warning: ...`` on one line, with no source excerpt; the
    caller's warning settings are restored afterwards."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def exit_status(run: Callable[[], int]) -> int:
    """``run()``'s status, or 130 after one ``gradeclip: interrupted:`` line for Ctrl-C (a KeyboardInterrupt, the
    command's ``Interrupted``, or an OSError that the same Ctrl-C caused), or 1 after one ``gradeclip: error:`` line
    for the errors a user's input causes. Other exceptions pass unchanged (a bug shows its traceback)."""
    try:
        return run()
    except Interrupted as err:  # a command caught Ctrl-C and says what was completed and how to resume
        print(f"gradeclip: interrupted: {' '.join(str(err).split())}", file=sys.stderr)
        return INTERRUPT_STATUS
    except KeyboardInterrupt:
        print(f"gradeclip: interrupted: {NOTHING_INCOMPLETE}", file=sys.stderr)
        return INTERRUPT_STATUS
    except (UserError, FileNotFoundError, ValueError, IndexError, TypeError, RuntimeError, OSError) as err:
        if caused_by_ctrl_c(err):  # a pipe to an FFmpeg child that the same Ctrl-C stopped
            print(f"gradeclip: interrupted: {NOTHING_INCOMPLETE}", file=sys.stderr)
            return INTERRUPT_STATUS
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"gradeclip: error: {message}", file=sys.stderr)
        return 1
