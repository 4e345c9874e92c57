"""The one error family for what a user fixes from the message.

It lives in `kernels`, the lowest layer, because every package raises it and a package may only
import the layers below it (tests/test_layers.py); this module imports nothing, so `cli` can
import it without loading torch.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad value in a config, file, option or environment variable, bad data, or a request the
    command refuses: the message names the file, key or option and the fix, and the CLI prints it
    as `error: ...` with exit 1 (cli/errors.py). A ValueError so that callers catching ValueError
    keep working; a plain ValueError is an internal check that failed, a bug with a traceback."""
