"""An allowlisting unpickler that rebuilds torch tensors as numpy arrays, without torch.

``find_class`` is the only way a pickle can reach a callable, so it returns hyperkit's own
stand-ins for the few globals a weights file needs and refuses everything else *before* anything
runs. Nothing the file names is ever imported. Tensor storages are fetched through a callback, so
the same unpickler serves the zip archive and the legacy stacked-pickle format.

Every pickle is first analysed statically (:mod:`hyperkit.formats.pickle_scan`: opcode count,
nesting depth, cycles) and only then unpickled, and tensor views are checked against their
storage and never expanded, so a hostile file meets a clear error before it can allocate.

Example:
    >>> import io, pickle
    >>> load_pickle(pickle.dumps({"step": 3}, protocol=2), lambda pid: None).obj
    {'step': 3}
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkit.errors import CorruptFileError, HyperkitError, LimitExceeded, UnsafePickleError, UnsupportedError
from hyperkit.formats.dtypes import numpy_dtype
from hyperkit.formats.limits import MAX_NDIM, MAX_TENSORS, MAX_VIEW_EXPANSION
from hyperkit.formats.pickle_scan import PickleFacts, analyze

#: torch storage class name -> numpy dtype name of its elements (bfloat16 comes from ml_dtypes,
#: imported only when such a storage is met: it costs ~0.5 s of start-up).
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
STORAGE_NAMES: dict[str, str] = {v: k for k, v in STORAGE_DTYPES.items()}


class _Frozen:
    """Base of stand-ins shared across reads: a pickle's BUILD must not alter them for the next file."""

    __slots__ = ()

    def __setattr__(self, key: str, value: Any) -> None:
        raise CorruptFileError("pickle tried to modify one of hyperkit's allowlisted globals")

    def __setstate__(self, state: Any) -> None:
        raise CorruptFileError("pickle tried to modify one of hyperkit's allowlisted globals")


class StorageType(_Frozen):
    """Stand-in for ``torch.FloatStorage`` & co.: only records the element dtype."""

    __slots__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the storage's elements."""
        return numpy_dtype(STORAGE_DTYPES[self.name])


class Call(_Frozen):
    """An allowlisted function, wrapped so a pickle cannot set attributes (``__defaults__``) on it."""

    __slots__ = ("fn",)
    fn: Callable[..., Any]

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


class InertGlobal(_Frozen):
    """A global a checkpoint may *name* but never use: old Stable Diffusion ``.ckpt`` files key
    their Lightning callback state by the callback class. It hashes and compares by name; calling
    it refuses the file."""

    __slots__ = ("qualname",)
    qualname: str

    def __init__(self, qualname: str) -> None:
        object.__setattr__(self, "qualname", qualname)

    def __call__(self, *args: Any) -> Any:
        raise UnsafePickleError(f"pickle calls '{self.qualname}', which is allowed only as a name; nothing was run")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InertGlobal) and other.qualname == self.qualname

    def __hash__(self) -> int:
        return hash(("InertGlobal", self.qualname))

    def __repr__(self) -> str:
        return f"<name {self.qualname}>"


#: Globals accepted only as inert names (A1111's safety check allows the same two for SD ``.ckpt``).
INERT_GLOBALS = (
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("pytorch_lightning.callbacks", "model_checkpoint"),
)


class SafeOrderedDict(dict[Any, Any]):
    """Stand-in for ``collections.OrderedDict`` (plain dicts keep order); BUILD may only attach
    torch's ``_metadata`` map, which is dropped because nothing needs it."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            raise CorruptFileError(f"unexpected OrderedDict state {type(state).__name__}")


def _check_view(buf_len: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """Refuse a tensor view that reaches outside its storage (``as_strided`` trusts us) or that
    overlaps itself (zero or overlapping strides), which would expand a small storage into a huge
    array; neither occurs in a saved weights file."""
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride):
        raise CorruptFileError(f"invalid tensor view: offset {offset!r:.40}, size {size!r:.80}, stride {stride!r:.80}")
    if len(size) > MAX_NDIM:
        raise LimitExceeded(f"tensor view has {len(size)} dimensions, more than the limit of {MAX_NDIM}")
    if 0 in size:
        return
    reach = 0  # the furthest element the dims checked so far reach, smallest stride first
    for step, n in sorted((st, n) for n, st in zip(size, stride, strict=True) if n > 1):
        if step <= reach:
            raise UnsupportedError(
                f"tensor view (size {list(size)}, stride {list(stride)}) overlaps itself; "
                "hyperkit refuses to expand it into a larger array"
            )
        reach += (n - 1) * step
    last = offset + reach
    if last >= buf_len:
        raise CorruptFileError(
            f"tensor view (offset {offset}, size {list(size)}) reaches element {last}, past its storage of {buf_len}"
        )


@dataclass(frozen=True)
class StorageSpec:
    """A storage known only by its element type and count (the legacy format's first pass, before
    the data is located): views over it are checked but nothing is read or allocated."""

    dtype: np.dtype
    size: int

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class _TensorBuilder:
    """Per-file stand-in for ``torch._utils._rebuild_tensor_v2`` with a budget: the tensors built
    may hold at most :data:`MAX_VIEW_EXPANSION` times the bytes of the storages they view."""

    def __init__(self) -> None:
        self.built = 0
        self.bytes_built = 0
        self.storages: dict[int, int] = {}  # id(storage array) -> its bytes

    def __call__(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> np.ndarray:
        if not isinstance(storage, np.ndarray | StorageSpec) or not isinstance(size, tuple):
            raise CorruptFileError("malformed tensor record in pickle")
        if not isinstance(stride, tuple):
            raise CorruptFileError("malformed tensor record in pickle")
        _check_view(storage.size, offset, size, stride)
        self.built += 1
        if self.built > MAX_TENSORS:
            raise LimitExceeded(f"more than {MAX_TENSORS:,} tensors in one file")
        self.storages[id(storage)] = storage.nbytes
        numel = 1
        for n in size:
            numel *= n
        self.bytes_built += numel * storage.dtype.itemsize
        if self.bytes_built > MAX_VIEW_EXPANSION * sum(self.storages.values()) + 4096:
            raise LimitExceeded(
                f"tensors view their storages more than {MAX_VIEW_EXPANSION} times over; refusing to expand them"
            )
        if isinstance(storage, StorageSpec):
            return np.empty(0, dtype=storage.dtype)  # a placeholder: the first pass reads nothing
        if 0 in size:
            return np.zeros(size, dtype=storage.dtype)
        isz = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=tuple(s * isz for s in stride), writeable=False
        )
        if view.flags.c_contiguous:
            return view
        return np.ascontiguousarray(view)  # e.g. a transposed weight: no larger than its storage


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
    ("torch._utils", "_rebuild_parameter"): Call(rebuild_parameter),
    ("_codecs", "encode"): Call(codecs_encode),
    ("numpy", "dtype"): Call(NumpyDType),
    ("numpy.core.multiarray", "scalar"): Call(numpy_scalar),
    ("numpy._core.multiarray", "scalar"): Call(numpy_scalar),
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
    **{key: InertGlobal(".".join(key)) for key in INERT_GLOBALS},
}
REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")  # per file: it carries the view budget


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes | memoryview, persistent: Callable[[Any], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._persistent = persistent
        self._rebuild_tensor = Call(_TensorBuilder())

    def find_class(self, module: str, name: str) -> Any:
        # Protocol < 3 pickles spell Python 2 names (``__builtin__``); report the Python 3 ones.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) == REBUILD_TENSOR:
            return self._rebuild_tensor
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


@dataclass
class Loaded:
    """An unpickled object and what the static analysis found in its pickle."""

    obj: Any
    facts: PickleFacts


def load_pickle(data: bytes | memoryview, persistent: Callable[[Any], Any], facts: PickleFacts | None = None) -> Loaded:
    """Analyse ``data`` (unless ``facts`` of it are given), then unpickle it with the allowlist;
    ``persistent`` resolves storage ids to arrays.

    Raises :class:`UnsafePickleError` for a forbidden global, :class:`LimitExceeded` past a limit
    and :class:`CorruptFileError` for anything malformed; no other exception escapes.
    """
    facts = facts or analyze(data)
    try:
        return Loaded(_Unpickler(data[: facts.length], persistent).load(), facts)
    except HyperkitError:
        raise
    except RecursionError as e:
        raise CorruptFileError("pickle nests too deeply") from e
    except MemoryError as e:
        raise CorruptFileError("pickle asks for more memory than available") from e
    except Exception as e:  # malformed opcodes, bad arguments to a stand-in, truncation, ...
        raise CorruptFileError(f"malformed pickle: {type(e).__name__}: {e}") from e
