"""A restricted unpickler for data files: plain containers and numpy arrays, nothing else.

`pickle.load` on an untrusted file can run any code the file names (os.system, eval, ...). CIFAR
batches and the competition's test pickle only ever need dicts, lists, strings, bytes, numbers and
numpy arrays, so `find_class` admits just the globals that rebuilding a numpy array references:

- numpy 1.x / 2.x, protocols 0-4: `numpy.core.multiarray._reconstruct` (2.x: `numpy._core...`),
  `numpy.ndarray`, `numpy.dtype`; numpy scalars: `numpy.core.multiarray.scalar`.
- protocol 5: `numpy.core.numeric._frombuffer` (2.x: `numpy._core.numeric._frombuffer`) with the
  buffer in-band; out-of-band buffers are refused (no `buffers` are ever supplied).
- protocols 0-2 written by Python 3: `_codecs.encode(text, "latin1")` for bytes and
  `__builtin__.bytes()` (read as `builtins.bytes`, as pickle itself maps Python 2 names) for
  empty bytes.

Each admitted name maps to a narrow stand-in that accepts only the arguments numpy's own pickles
use, never to whatever the file names. That matters beyond code execution: numpy trusts pickled
array and dtype state, and a crafted state (an object dtype, or dtype flags claiming object
items) crashes the interpreter. So only plain dtypes (bool, int, uint, float, complex, bytes,
str) are built, and the BUILD opcode -- which calls `__setstate__` -- is allowed only on arrays
and dtypes, with their state checked first. That is why this uses the pure-Python unpickler,
whose opcodes can be overridden; it is as fast as the C one on CIFAR batches (few, large
opcodes).
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
import struct
from typing import IO, Any, Callable

import numpy as np

from cifarkit.errors import DataError

_PLAIN_KINDS = "biufcSU"          # bool, signed, unsigned, float, complex, bytes, str
_ORDERS = {"C", "F", "A", "K"}


class _Refused(pickle.UnpicklingError):
    """A call or state that numpy's own pickles never produce."""


def _numpy_attr(name: str, *modules: str) -> Callable[..., Any]:
    # numpy 2 moved the internals to numpy._core; look there first, fall back to numpy 1's path.
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name} in {modules}")  # pragma: no cover - broken numpy


_np_reconstruct = _numpy_attr("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_np_scalar = _numpy_attr("scalar", "numpy._core.multiarray", "numpy.core.multiarray")
_np_frombuffer = _numpy_attr("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")


def _check_plain(dtype: object) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.kind not in _PLAIN_KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"dtype {dtype} is not allowed (only plain numeric, bytes and str arrays)")
    return dtype


def _is_shape(shape: object) -> bool:
    return isinstance(shape, tuple) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)


class _NdarrayType:
    """Stands for `numpy.ndarray` as `_reconstruct`'s first argument; calling it is refused."""

    def __call__(self, *args: object) -> None:
        raise _Refused("'numpy.ndarray' may not be called directly")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype: object, shape: object, dtype_code: object) -> np.ndarray:
    # numpy always pickles `_reconstruct(ndarray, (0,), b'b')` and then sets the real state.
    if subtype is not _NDARRAY or not _is_shape(shape) or np.prod(shape) != 0:
        raise _Refused("'_reconstruct' is only allowed to create an empty numpy array")
    return _np_reconstruct(np.ndarray, shape, dtype_code)


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    if not isinstance(spec, (str, bytes)):
        raise _Refused("'numpy.dtype' is only allowed with a type code")
    return _check_plain(np.dtype(spec.decode("latin-1") if isinstance(spec, bytes) else spec, bool(align), bool(copy)))


def _scalar(dtype: object, data: object = None) -> Any:
    if not isinstance(data, (bytes, str)):
        raise _Refused("'scalar' is only allowed with raw bytes")
    return _np_scalar(_check_plain(dtype), data)


def _frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)) or not _is_shape(shape) or order not in _ORDERS:
        raise _Refused("'_frombuffer' is only allowed with in-band bytes, a shape and an order")
    return _np_frombuffer(buf, _check_plain(dtype), shape, order)


_LATIN1_NAMES = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_bytes(text: object, encoding: object = "utf-8", errors: object = "strict") -> bytes:
    """The one use of `_codecs.encode` in pickles: bytes written as a latin-1 string."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in _LATIN1_NAMES:
        raise _Refused("'_codecs.encode' is only allowed to rebuild latin-1 bytes")
    return text.encode("latin-1")


def _empty_bytes(*args: object) -> bytes:
    """The one use of `bytes` in pickles: `bytes()` for b'' under protocols 0-2."""
    if args:
        raise _Refused("'bytes' is only allowed without arguments (empty bytes)")
    return b""


_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


def _check_array_state(state: object) -> None:
    # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw data); version is optional.
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _Refused("array state is not numpy's (version, shape, dtype, order, data) tuple")
    shape, dtype, _, data = state[-4:]
    if not _is_shape(shape) or not isinstance(data, (bytes, bytearray, str)):
        raise _Refused("array state needs a shape and raw data (object arrays are not allowed)")
    _check_plain(dtype)


def _check_dtype_state(dtype: np.dtype, state: object) -> None:
    # Only the state numpy writes for a plain dtype: the same sizes and flags, any byte order.
    current = dtype.__reduce__()[2]
    if (not isinstance(state, tuple) or len(state) != len(current) or state[0] not in (3, 4)
            or state[1] not in ("<", ">", "|", "=", b"<", b">", b"|", b"=") or state[2:] != current[2:]):
        raise _Refused(f"dtype state {state!r:.80} is not a plain dtype's")


class _RestrictedUnpickler(pickle._Unpickler):
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], *, what: str, encoding: str, size: int) -> None:
        super().__init__(file, encoding=encoding)
        self._what = what
        self._size = size

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 names, as pickle itself maps them (e.g. __builtin__ -> builtins)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise DataError(
                f"{self._what}: refuses to load pickle global '{module}.{name}' "
                "(only plain containers and numpy arrays are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent ids are not allowed")

    def _line(self) -> str:
        line = self.readline()
        if not line.endswith(b"\n"):
            raise pickle.UnpicklingError("the pickle data was truncated inside a global's name")
        return line[:-1].decode("utf-8")

    def _load_global(self) -> None:
        module, name = self._line(), self._line()
        self.append(self.find_class(module, name))

    def _load_inst(self) -> None:
        module, name = self._line(), self._line()
        self._instantiate(self.find_class(module, name), self.pop_mark())

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.ndarray):
            _check_array_state(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        else:
            raise _Refused(f"setting the state of a {type(inst).__name__} is not allowed")
        inst.__setstate__(state)

    def _load_bytearray8(self) -> None:
        # bytearray(n) is allocated before reading; never allocate more than the input holds.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise pickle.UnpicklingError("a bytearray is longer than the whole file")
        buffer = bytearray(n)
        if self.readinto(buffer) != n:
            raise pickle.UnpicklingError("the pickle data was truncated")
        self.append(buffer)

    dispatch[pickle.GLOBAL[0]] = _load_global
    dispatch[pickle.INST[0]] = _load_inst
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


def safe_loads(data: bytes, *, what: str, encoding: str = "bytes") -> object:
    """Unpickle bytes, admitting only plain containers and numpy arrays of plain dtypes.

    `what` names the file in error messages. `encoding` is how Python 2 strings are decoded
    ("bytes" keeps them as bytes, as the CIFAR batches expect; "latin1" gives str).
    Raises DataError for a forbidden global or for anything that is not a valid pickle.
    """
    try:
        unpickler = _RestrictedUnpickler(io.BytesIO(data), what=what, encoding=encoding, size=len(data))
        return unpickler.load()
    except DataError:
        raise
    except _Refused as exc:
        raise DataError(f"{what}: refuses to load this pickle ({exc})") from None
    except Exception as exc:  # a garbled stream can fail in any constructor it reaches
        detail = f"{type(exc).__name__}: {exc}"[:200]
        raise DataError(f"{what} is not a valid pickle file (truncated or corrupt: {detail})") from None


def safe_load(f: IO[bytes], *, what: str, encoding: str = "bytes") -> object:
    """Unpickle from a binary file object; see `safe_loads`. The file is read whole first."""
    try:
        data = f.read()
    except OSError as exc:
        raise DataError(f"{what} cannot be read ({exc})") from None
    return safe_loads(data, what=what, encoding=encoding)
