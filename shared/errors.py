"""One error policy for every ``soundception`` command: :func:`command_errors`.

=========================================  =====================================================  =====
what went wrong                            what the person sees                                   exit
=========================================  =====================================================  =====
a bad option or argument (click's own)     ``Usage: ...`` and one ``Error:`` line                  2
their mistake (:class:`UserError` and      one line (credentials in URLs removed)                 1
its kin, a missing or unreadable file,
a package to install for their input)
a fault of the run (:class:`RunFault`,     one line: what to fix, and that rerunning the same     1
a full disk, a store that became           command resumes (finished work is kept)
unwritable)
Ctrl-C                                     one line: what was kept and how to go on               130
anything else (a bug)                      one line naming the error; ``SOUNDCEPTION_DEBUG=1``    1
                                           prints the traceback too
=========================================  =====================================================  =====

A fault of one file (a corrupt recording) is not an error of the command: the file fails alone,
is recorded as failed and counted in the summary.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from soundception.shared.text import one_line, redact

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
DEBUG_VARIABLE = "SOUNDCEPTION_DEBUG"

# errno values that say the machine, not the input, is at fault: the run stops instead of failing file after file
RUN_FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class UserError(ValueError):
    """A mistake of the user's (a bad option value, a missing or foreign store, a bad checkpoint):
    one line, exit 1. A ``ValueError`` so that code that validates arguments can raise it too."""


class RunFault(RuntimeError):
    """The run cannot go on for a reason of the machine (a full disk, an unwritable store); the
    message says what to fix and how to resume."""


def is_run_fault(error: BaseException) -> bool:
    """True for an ``OSError`` that no other file would escape: a full disk or quota, a read-only
    or failing file system."""
    return isinstance(error, RunFault) or (isinstance(error, OSError) and error.errno in RUN_FAULT_ERRNOS)


def run_fault_message(error: BaseException, resume: str = "rerun the same command to go on", *,
                      writing: str | None = None) -> str:
    """The one line for a run fault: the system's words, where (the error's own file name, else
    ``writing``), and what to do."""
    if isinstance(error, RunFault):
        return one_line(error)
    assert isinstance(error, OSError)
    target = error.filename or writing
    where = f" writing {target}" if target else ""
    fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
           errno.EROFS: "make it writable", errno.EIO: "check the disk"}.get(error.errno, "fix it")
    return f"{error.strerror or one_line(error)}{where}: {fix}, then {resume}; finished work is kept"


class Interrupted(click.ClickException):
    """Ctrl-C, said in one line (what was kept, how to go on); exits with :data:`INTERRUPTED_EXIT_CODE`.
    Raise it from ``except KeyboardInterrupt`` where the line depends on how far the command got."""

    exit_code = INTERRUPTED_EXIT_CODE


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, PermissionError, IsADirectoryError,
                                                NotADirectoryError)


def command_errors(*, interrupted: str = "interrupted; nothing was kept",
                   explain: Callable[[BaseException], str | None] | None = None) -> Callable:
    """Decorate a click command's function with the policy in this module's table.

    Args:
        interrupted: the line printed on Ctrl-C, which says what was kept and how to go on (a
            command whose line depends on how far it got raises :class:`Interrupted` itself).
        explain: turns a side-specific error into its one line (e.g. running out of GPU memory into
            advice), or returns None to leave it to the policy.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
                raise
            except KeyboardInterrupt:
                raise Interrupted(interrupted) from None
            except Exception as error:
                raise click.ClickException(error_line(error, explain)) from None

        return wrapper

    return decorate


def _missing_package(error: BaseException) -> bool:
    """An optional package the user's input needs is not installed, and the error says what to
    install (fsspec's "Please install gcsfs to access Google Storage"): the user's to fix."""
    return isinstance(error, ImportError) and "install" in str(error).lower()


def error_line(error: BaseException, explain: Callable[[BaseException], str | None] | None = None) -> str:
    """The one line :func:`command_errors` shows for ``error`` (printing the traceback first for a
    bug when ``SOUNDCEPTION_DEBUG`` is set)."""
    line = explain(error) if explain is not None else None
    if line is not None:
        return redact(line)
    if is_run_fault(error):
        return redact(run_fault_message(error))
    if isinstance(error, USER_ERRORS) or _missing_package(error):
        return redact(one_line(error, limit=1000))
    if os.environ.get(DEBUG_VARIABLE):
        traceback.print_exception(error, file=sys.stderr)
    return (f"{type(error).__name__}: {redact(one_line(error))} (unexpected: {DEBUG_VARIABLE}=1 shows the "
            "traceback; please report it)")
