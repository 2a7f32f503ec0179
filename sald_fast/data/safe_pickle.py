"""Reading pickles (plain and joblib-written) without running code from them.

:func:`load_pickle_data` builds numpy arrays and dtypes, dicts, lists, tuples, strings, bytes and
numbers, and nothing else: every other global a pickle names (a class, a function) is refused
with a :class:`~sald_fast.data.dataset.DataError` naming the file. Files written by
``joblib.dump`` are read too: joblib stores each array as a ``joblib.numpy_pickle.NumpyArrayWrapper``
record (shape, order, dtype) followed by the raw array bytes; the record is built here by a
stand-in class (joblib's code is neither imported nor run) and the bytes are read with bounds
checks. Whole-file compression as joblib writes it (zlib, gzip, bz2, xz, lzma) is undone with the
standard library first.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DataError

__all__ = ["load_pickle_data", "MAX_PICKLE_BYTES"]

MAX_PICKLE_BYTES = 1 << 31  # decompressed size limit (2 GiB)

_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}
_JOBLIB_WRAPPERS = {("joblib.numpy_pickle", "NumpyArrayWrapper"), ("sklearn.externals.joblib.numpy_pickle",
                                                                   "NumpyArrayWrapper")}


class _ArrayRecord:
    """Stand-in for joblib's ``NumpyArrayWrapper``: holds the record's state, runs nothing."""


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD can be hooked
    """Numpy/containers-only unpickler that also reads joblib's array records from the stream."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BufferedIOBase, size: int):
        super().__init__(file, encoding="latin1")
        self._size = size
        self._raw = file

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _JOBLIB_WRAPPERS:
            return _ArrayRecord
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the pickle needs {module}.{name}, which is not allowed (numpy arrays, "
                                     "dicts, lists and scalars only)")

    def _load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if not isinstance(inst, _ArrayRecord):
            pickle._Unpickler.load_build(self)
            return
        self.stack.pop()
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("joblib array record without a dict state")
        self.stack[-1] = self._read_record(state)

    dispatch[pickle.BUILD[0]] = _load_build

    def _read_record(self, state: dict) -> np.ndarray:
        subclass, dtype = state.get("subclass", np.ndarray), state.get("dtype")
        shape, order = state.get("shape"), state.get("order", "C")
        if subclass is not np.ndarray:
            raise pickle.UnpicklingError(f"joblib array record of subclass {subclass!r} (plain ndarray only)")
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError(f"joblib array record with dtype {dtype!r} (numeric arrays only)")
        if (not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or order not in ("C", "F")):
            raise pickle.UnpicklingError(f"joblib array record with shape {shape!r} order {order!r}")
        align = state.get("numpy_array_alignment_bytes")
        if align is not None:
            pad = self.read(1)
            if len(pad) != 1:
                raise pickle.UnpicklingError("truncated: the file ends inside a joblib array record")
            self.read(pad[0])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self._size:
            raise pickle.UnpicklingError(f"joblib array record of {nbytes} bytes in a {self._size}-byte file")
        data = self.read(nbytes)
        if len(data) != nbytes:
            raise pickle.UnpicklingError(f"truncated: joblib array record wants {nbytes} bytes, {len(data)} left")
        flat = np.frombuffer(data, dtype=dtype).copy()
        return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


def _decompressed(raw: bytes, path: Path) -> bytes:
    """The pickle stream of a file, undoing joblib's whole-file compression."""
    try:
        if raw[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
                return f.read(MAX_PICKLE_BYTES + 1)
        if raw[:3] == b"BZh":
            with bz2.BZ2File(io.BytesIO(raw)) as f:
                return f.read(MAX_PICKLE_BYTES + 1)
        if raw[:6] == b"\xfd7zXZ\x00" or raw[:3] == b"\x5d\x00\x00":
            with lzma.LZMAFile(io.BytesIO(raw)) as f:
                return f.read(MAX_PICKLE_BYTES + 1)
        if raw[:1] == b"\x78":
            return zlib.decompressobj().decompress(raw, MAX_PICKLE_BYTES + 1)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(path, "file", f"cannot decompress: {type(e).__name__}: {e}") from None
    if raw[:2] == b"ZF":
        raise DataError(path, "file", "an old joblib (< 0.10) file with separate .npy files: not supported")
    return raw


def _reject_objects(obj: Any, path: Path, key: str = "") -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise DataError(path, key or "file", "object arrays are not allowed")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _reject_objects(v, path, str(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _reject_objects(v, path, key)


def load_pickle_data(path: str | os.PathLike) -> Any:
    """The content of a ``.pkl`` / joblib file built from numpy arrays, dicts, lists and scalars.

    Raises :class:`DataError` (field ``"file"``) naming ``path`` for an unreadable, truncated or
    corrupted file and for a pickle that needs anything else (the refused global is named).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, "file", f"cannot read: {e}") from None
    data = _decompressed(raw, path)
    if len(data) > MAX_PICKLE_BYTES:
        raise DataError(path, "file", f"more than {MAX_PICKLE_BYTES} bytes once decompressed")
    if not data:
        raise DataError(path, "file", "empty file")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), len(data)).load()
    except pickle.UnpicklingError as e:
        raise DataError(path, "file", f"refused or corrupted pickle: {e}") from None
    except Exception as e:  # truncated (EOFError), garbage opcodes, bad numpy state...
        raise DataError(path, "file", f"cannot read as a pickle: {type(e).__name__}: {e}") from None
    _reject_objects(obj, path)
    return obj
