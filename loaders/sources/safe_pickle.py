"""Reading the pickled dataset releases (CIFAR python batches, downsampled ImageNet) without
letting a file run code.

`pickle.loads` calls whatever callable a file names, so a crafted `batches.meta` could run any
command. The published files need only plain containers, bytes/str, numbers and numpy arrays,
dtypes and scalars, which numpy rebuilds through its own reconstructors; `safe_loads` admits
exactly those globals and refuses anything else before it is imported, naming the file.
"""

from __future__ import annotations

import io
import pickle

from loaders.sources.base import SourceError

# (module, name) of every callable a published release references. numpy 2 writes
# `numpy._core`, numpy 1 and the original Python 2 releases `numpy.core`; `_codecs.encode` is
# how protocol-2 pickles written by Python 3 spell a bytes object.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 writes arrays through it
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _Refused(pickle.UnpicklingError):
    """A global outside ALLOWED_GLOBALS: refused, as opposed to a truncated or corrupt file."""


class _DatasetUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise _Refused(
                f"it references {module}.{name}, which no published dataset file contains "
                "(a pickle can run code through such a reference, so it is refused)")
        return super().find_class(module, name)


def safe_loads(blob: bytes, where: str, *, encoding: str = "ASCII") -> object:
    """The object pickled in `blob`, built from plain data and numpy arrays only. Any other
    global is a `SourceError` naming `where`; a truncated or corrupt file raises what pickle
    raises (EOFError, UnpicklingError, ...), for the caller to name its format."""
    try:
        return _DatasetUnpickler(io.BytesIO(blob), encoding=encoding).load()
    except _Refused as err:
        raise SourceError(f"{where}: refused to unpickle: {err}") from None
