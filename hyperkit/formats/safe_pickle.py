"""An allowlisting unpickler that rebuilds torch tensors as numpy arrays, without torch.

``find_class`` is the only way a pickle can reach a callable, so it returns hyperkit's own
stand-ins for the few globals a weights file needs and refuses everything else *before* anything
runs. Nothing the file names is ever imported. Tensor storages are fetched through a callback, so
the same unpickler serves the zip archive and the legacy stacked-pickle format.

Example:
    >>> import io, pickle
    >>> load_pickle(pickle.dumps({"step": 3}, protocol=2), lambda pid: None)
    {'step': 3}
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from hyperkit.errors import CorruptFileError, UnsafePickleError, UnsupportedError

#: torch storage class name -> numpy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
STORAGE_NAMES: dict[str, str] = {str(v): k for k, v in STORAGE_DTYPES.items()}


class _Frozen:
    """Base of stand-ins shared across reads: a pickle's BUILD must not alter them for the next file."""

    __slots__ = ()

    def __setattr__(self, key: str, value: Any) -> None:
        raise CorruptFileError("pickle tried to modify one of hyperkit's allowlisted globals")

    def __setstate__(self, state: Any) -> None:
        raise CorruptFileError("pickle tried to modify one of hyperkit's allowlisted globals")


class StorageType(_Frozen):
    """Stand-in for ``torch.FloatStorage`` & co.: only records the element dtype."""

    __slots__ = ("dtype", "name")
    dtype: np.dtype
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", STORAGE_DTYPES[name])


class Call(_Frozen):
    """An allowlisted function, wrapped so a pickle cannot set attributes (``__defaults__``) on it."""

    __slots__ = ("fn",)
    fn: Callable[..., Any]

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class SafeOrderedDict(dict[Any, Any]):
    """Stand-in for ``collections.OrderedDict`` (plain dicts keep order); BUILD may only attach
    torch's ``_metadata`` map, which is dropped because nothing needs it."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            raise CorruptFileError(f"unexpected OrderedDict state {type(state).__name__}")


def _check_view(buf_len: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """Refuse a tensor view that would reach outside its storage (``as_strided`` trusts us)."""
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride):
        raise CorruptFileError(f"invalid tensor view: offset {offset!r}, size {size!r}, stride {stride!r}")
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= buf_len:
        raise CorruptFileError(
            f"tensor view (offset {offset}, size {list(size)}) reaches element {last}, past its storage of {buf_len}"
        )


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a C-contiguous numpy array."""
    if not isinstance(storage, np.ndarray) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise CorruptFileError("malformed tensor record in pickle")
    _check_view(storage.size, offset, size, stride)
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    isz = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * isz for s in stride), writeable=False
    )
    if view.flags.c_contiguous:
        return view
    return np.ascontiguousarray(view)


def rebuild_parameter(data: Any, requires_grad: Any = False, *_rest: Any) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its data here."""
    if not isinstance(data, np.ndarray):
        raise CorruptFileError("malformed Parameter record in pickle")
    return data


def codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol 2 uses to pickle ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CorruptFileError("unexpected _codecs.encode call in pickle")
    return text.encode("latin1")


class NumpyDType:
    """Stand-in for ``numpy.dtype`` as pickled: ``dtype(name, align, copy)`` then BUILD."""

    def __init__(self, name: Any, *_args: Any) -> None:
        try:
            self.dtype = np.dtype(name)
        except TypeError as e:
            raise CorruptFileError(f"unknown numpy dtype {name!r}") from e
        if self.dtype.kind not in "biuf":
            raise UnsafePickleError(f"numpy dtype {name!r} is not a plain numeric type")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
            self.dtype = self.dtype.newbyteorder(">")


def numpy_scalar(dtype: Any, data: Any = None) -> int | float | bool:
    """Stand-in for ``numpy.core.multiarray.scalar``: returns the plain Python number."""
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise CorruptFileError("malformed numpy scalar in pickle")
    value: int | float | bool = np.frombuffer(data, dtype.dtype)[0].item()
    return value


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): Call(SafeOrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): Call(rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): Call(rebuild_parameter),
    ("_codecs", "encode"): Call(codecs_encode),
    ("numpy", "dtype"): Call(NumpyDType),
    ("numpy.core.multiarray", "scalar"): Call(numpy_scalar),
    ("numpy._core.multiarray", "scalar"): Call(numpy_scalar),
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, persistent: Callable[[Any], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        # Protocol < 3 pickles spell Python 2 names (``__builtin__``); report the Python 3 ones.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            if module == "torch" and name.endswith("Storage"):
                raise UnsupportedError(f"tensors of storage type torch.{name} are not supported") from None
            raise UnsafePickleError(
                f"pickle wants global '{module}.{name}', which is not on the allowlist; nothing was run",
                hint="this file may be malicious; only plain tensors and metadata are allowed",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)


def load_pickle(data: bytes, persistent: Callable[[Any], Any]) -> Any:
    """Unpickle ``data`` with the allowlist; ``persistent`` resolves storage ids to arrays.

    Raises :class:`UnsafePickleError` for a forbidden global and :class:`CorruptFileError` for
    anything malformed; no other exception escapes.
    """
    try:
        return _Unpickler(data, persistent).load()
    except (UnsafePickleError, UnsupportedError, CorruptFileError):
        raise
    except RecursionError as e:
        raise CorruptFileError("pickle nests too deeply") from e
    except MemoryError as e:
        raise CorruptFileError("pickle asks for more memory than available") from e
    except Exception as e:  # malformed opcodes, bad arguments to a stand-in, truncation, ...
        raise CorruptFileError(f"malformed pickle: {type(e).__name__}: {e}") from e


def scan_globals(data: bytes) -> list[str]:
    """List the globals a pickle names, statically (nothing is unpickled); best effort.

    Example:
        >>> scan_globals(b"\\x80\\x02cos\\nsystem\\nq\\x00.")
        ['os.system']
    """
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns on some damaged protocol-0 opcodes
        try:
            for op, arg, _pos in pickletools.genops(data):
                if op.name in ("GLOBAL", "INST"):
                    module, _, name = str(arg).partition(" ")
                    found.append(f"{module}.{name}")
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings and isinstance(arg, int):
                    memo[arg] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int) and arg in memo:
                    strings.append(memo[arg])
                elif op.name == "STACK_GLOBAL":
                    found.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
        except Exception:  # truncated or malformed: report what was seen so far
            found.append("<unreadable rest of pickle>")
    return list(dict.fromkeys(found))
