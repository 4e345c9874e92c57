"""How every command fails: the one error context, entered once around every command in cli/app.py.

- Usage errors (a bad option value: `typer.BadParameter`; mutually exclusive flags: `UsageError`
  below; a missing argument) are click's: click prints them with the usage line and exits 2.
  This module lets them pass.
- User, data and environment errors (`is_user_error`) print `error: message` in red on stderr
  and exit 1, without a traceback: the message names the file or key and the fix. Code that
  checks what a user gave it raises kernels.errors.InputError (or its ConfigError, SourceError)
  for that; a plain ValueError is an internal check and stays a bug.
- Ctrl-C prints one line and exits 130. Every writer in the engine publishes with a rename
  (engine.run_dir.atomic_write, loaders.beton), so an interrupted command leaves each file
  whole or absent.
- Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from typing import Iterator

import typer
from rich.markup import escape

from cli.console import err_console
from kernels.errors import InputError

# click's UsageError, for what no single option is wrong about (mutually exclusive flags). Typer
# exports only its subclass BadParameter; its base is the UsageError of the click Typer runs on,
# whether Typer vendors click or depends on it.
UsageError: type[Exception] = typer.BadParameter.__bases__[0]

# The engine's own errors, by import path rather than by class: importing engine.trainer would
# import torch, and `biamat-engine --help` must not. When one of them is raised its module is
# loaded anyway; tests/test_cli_errors.py checks that every path still names a class.
ENGINE_ERRORS = (
    "engine.trainer.NonFiniteLossError",  # NaN/inf loss: the last good checkpoint is kept
    "engine.evaluation.backends.BackendUnavailable",  # e.g. tensorrt without CUDA
    "torch.OutOfMemoryError",  # a resource limit like a full disk: the fix is a smaller batch
)

# ImportErrors from these packages are bugs in this repository (a renamed function), not a
# missing optional extra.
OWN_PACKAGES = ("engine", "loaders", "kernels", "cli", "benchmarks", "studies")

# What to do about the OS errors a user meets, by errno.
_OS_FIXES = {
    errno.ENOENT: "check the path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.ENOSPC: "free some space on that disk or write elsewhere",
    errno.EDQUOT: "free some space within the quota or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EEXIST: "remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "expected a file, found a folder",
}


_EXTRAS_HINT = "`biamat-engine info` lists the optional extras and how to install each"


def _named(err: BaseException) -> bool:
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in type(err).__mro__}
    return not names.isdisjoint(ENGINE_ERRORS)


def is_user_error(err: BaseException) -> bool:
    """True for what a user fixes from the message: an InputError (a bad value in a file, config
    or option, bad data, a refused request; engine.config.ConfigError and loaders' SourceError
    are InputErrors), anything the OS refused (missing file, permission, full or read-only disk,
    network: OSError), a missing optional package, running out of memory and the engine's own
    errors above. Not a bare ValueError: that is a check inside the code failing, a bug."""
    if isinstance(err, BrokenPipeError):
        return False  # `... | head` closed the pipe: click exits quietly on its own
    if isinstance(err, ImportError):
        return (err.name or "").split(".")[0] not in OWN_PACKAGES
    return isinstance(err, (InputError, OSError, MemoryError)) or _named(err)


def describe(err: BaseException) -> str:
    """The one-line message: the error's own text, for OS errors the path first and the fix."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else f"{err.filename}"
        fix = _OS_FIXES.get(err.errno)
        return f"{where}: {err.strerror}" + (f" ({fix})" if fix else "")
    text = str(err) or type(err).__name__
    if isinstance(err, ImportError) and "pip install" not in text:
        text += f"; {_EXTRAS_HINT}"
    return text


@contextlib.contextmanager
def error_context() -> Iterator[None]:
    """Runs a command under the policy in this module's docstring."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("[bold yellow]interrupted[/]: every file is written whole or not at all; "
                          "`train --resume` continues a run; `robustify` and `study` continue when run again", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except Exception as err:
        if not is_user_error(err):
            raise
        # soft_wrap: a long path stays on one line, whole, for the reader to copy.
        err_console.print(f"[bold red]error:[/] {escape(describe(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
