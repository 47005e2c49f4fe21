"""Read PyTorch ``.pth`` state_dicts without torch, and without running their pickles.

A ``.pth`` file is a pickle whose tensors point at raw storages through pickle
"persistent ids".  Two containers exist:

- zip (``torch.save`` default since 1.6): ``<archive>/data.pkl`` plus one
  entry ``<archive>/data/<key>`` of raw little-endian bytes per storage;
- legacy: five concatenated records — a pickled magic number, a protocol
  number, a ``sys_info`` dict, the state_dict pickle, a pickled list of storage
  keys, then per key an int64 element count followed by the raw bytes.

The unpickler is restricted: :meth:`_StateDictUnpickler.find_class` hands out
only stand-ins for the handful of torch callables a state_dict needs (tensor
rebuilders, typed storage classes) and ``collections.OrderedDict``; any other
global — ``os.system``, ``builtins.eval``, ... — raises
:class:`pyconv.UnsafeFileError` before anything is called.  Storage sizes are
checked against the bytes really present and against ``max_bytes`` before any
allocation, so a hostile file can neither run code nor exhaust memory.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Dict, Union

import numpy as np

from pyconv.errors import ModelError, UnsafeFileError

__all__ = ["load_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
DEFAULT_MAX_BYTES = 4 << 30

# torch storage class name -> numpy dtype of its elements (little-endian on disk)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # raw bits, widened to float32 after reading (NumPy has no bfloat16)
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stand-in for a torch typed storage class such as ``torch.FloatStorage``."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __call__(self, *args, **kwargs):
        raise UnsafeFileError(f"the pickle calls torch.{self.name} directly; state_dicts never do")


class _StorageRef:
    """A storage named by the pickle; its bytes are attached after unpickling."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: Union[np.ndarray, None] = None


class _TensorRef:
    """A tensor view (offset, shape, strides in elements) of a storage, resolved after loading."""

    __slots__ = ("storage", "offset", "shape", "strides")

    def __init__(self, storage: _StorageRef, offset: int, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides

    def __setstate__(self, state):
        raise UnsafeFileError("the pickle sets state on a tensor; state_dicts never do")


def _int_tuple(value, what: str):
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ModelError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise ModelError("a tensor is rebuilt from something that is not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ModelError(f"tensor storage offset must be a non-negative int, got {storage_offset!r}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise ModelError(f"tensor size {shape} and stride {strides} have different lengths")
    if 0 not in shape:
        last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise ModelError(f"tensor of size {shape}, stride {strides}, offset {storage_offset} "
                             f"reads past its storage of {storage.numel} elements")
    return _TensorRef(storage, storage_offset, shape, strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorRef):
        raise ModelError("a parameter is rebuilt from something that is not a tensor")
    return data


# (module, name) -> object the pickle may reference; everything else is refused
_ALLOWED_GLOBALS: Dict[tuple, Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds tensors as :class:`_TensorRef` and refuses every other global."""

    def __init__(self, file: BinaryIO, storages: Dict[str, _StorageRef]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeFileError(
                f"refusing to load {module}.{name} from the pickle: only tensors, storages and "
                "ordered dicts are allowed in a state_dict") from None

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsafeFileError(f"unsupported persistent id in the pickle: {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise ModelError("storage views (pre-1.0 PyTorch files) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise ModelError(f"unknown storage type {storage_type!r:.100}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelError(f"malformed storage record {pid!r:.200}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            raise ModelError(f"storage {key!r} is declared twice with different types or sizes")
        return ref


def _check_total(storages: Dict[str, _StorageRef], max_bytes: int) -> None:
    total = sum(ref.numel * ref.dtype.itemsize for ref in storages.values())
    if total > max_bytes:
        raise ModelError(f"the file declares {total} bytes of tensors, more than max_bytes={max_bytes}")


def _storage_from_bytes(ref: _StorageRef, data: bytes, byteorder: str) -> np.ndarray:
    expected = ref.numel * ref.dtype.itemsize
    if len(data) != expected:
        raise ModelError(f"storage {ref.key!r} holds {len(data)} bytes, its header says {expected}")
    dtype = ref.dtype if byteorder == "little" else ref.dtype.newbyteorder(">")
    return np.frombuffer(data, dtype=dtype)


def _read_zip(path: str, max_bytes: int) -> tuple:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ModelError(f"{path}: a zip .pth file needs exactly one <archive>/data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ModelError(f"{path}: unknown byte order {byteorder!r}")
        storages: Dict[str, _StorageRef] = {}
        with archive.open(pickles[0]) as f:
            obj = _StateDictUnpickler(io.BytesIO(f.read()), storages).load()
        _check_total(storages, max_bytes)
        for ref in storages.values():
            entry = f"{prefix}data/{ref.key}"
            try:
                info = archive.getinfo(entry)
            except KeyError:
                raise ModelError(f"{path}: storage {ref.key!r} has no entry {entry!r}") from None
            expected = ref.numel * ref.dtype.itemsize
            if info.file_size != expected:  # checked before inflating anything (zip bombs)
                raise ModelError(f"{path}: entry {entry!r} holds {info.file_size} bytes, expected {expected}")
            ref.array = _storage_from_bytes(ref, archive.read(entry), byteorder)
    return obj


def _read_legacy(path: str, max_bytes: int) -> Any:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = _StateDictUnpickler(f, {})
        try:
            magic, protocol, sys_info = header.load(), header.load(), header.load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise ModelError(f"{path}: not a PyTorch file ({exc})") from None
        if magic != LEGACY_MAGIC:
            raise ModelError(f"{path}: not a PyTorch file (bad magic number)")
        if protocol != LEGACY_PROTOCOL:
            raise ModelError(f"{path}: unsupported legacy PyTorch protocol {protocol!r}")
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        storages: Dict[str, _StorageRef] = {}
        obj = _StateDictUnpickler(f, storages).load()
        keys = _StateDictUnpickler(f, {}).load()
        if not isinstance(keys, list) or set(keys) != set(storages):
            raise ModelError(f"{path}: the storage key list does not match the tensors")
        _check_total(storages, max_bytes)
        for key in keys:
            ref = storages[key]
            count = f.read(8)
            if len(count) != 8:
                raise ModelError(f"{path}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", count)
            if numel != ref.numel:
                raise ModelError(f"{path}: storage {key!r} has {numel} elements, the pickle says {ref.numel}")
            nbytes = numel * ref.dtype.itemsize
            if f.tell() + nbytes > file_size:
                raise ModelError(f"{path}: truncated inside storage {key!r}")
            ref.array = _storage_from_bytes(ref, f.read(nbytes), byteorder)
    return obj


def _materialize(tensor: _TensorRef) -> np.ndarray:
    base = tensor.storage.array
    itemsize = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base[tensor.offset:], shape=tensor.shape, strides=tuple(s * itemsize for s in tensor.strides))
    out = np.array(view, dtype=base.dtype.newbyteorder("="), order="C")  # own, native, contiguous copy
    if tensor.storage.dtype == _STORAGE_DTYPES["BFloat16Storage"]:  # the only unsigned 16-bit storage
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _collect(obj: Any, prefix: str, out: Dict[str, np.ndarray]) -> None:
    if isinstance(obj, _TensorRef):
        out[prefix] = _materialize(obj)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _collect(value, f"{prefix}.{key}" if prefix else str(key), out)


def load_state_dict(path: Union[str, os.PathLike], max_bytes: int = DEFAULT_MAX_BYTES) -> Dict[str, np.ndarray]:
    """Read the tensors of a PyTorch ``.pth``/``.pt`` file as NumPy arrays, without torch.

    Both the zip and the legacy container are read.  Returns ``{name: array}``
    in file order, each array an owned C-contiguous copy with the tensor's dtype
    and shape (bfloat16 is widened to float32).  Nested dicts (checkpoints such
    as ``{"state_dict": {...}, "epoch": 3}``) are flattened with dotted names;
    non-tensor values are skipped.

    Raises :class:`pyconv.UnsafeFileError` when the pickle references anything
    but tensors, storages and ordered dicts (nothing in it is executed), and
    :class:`pyconv.ModelError` for a malformed or truncated file, or one that
    declares more than ``max_bytes`` of tensor data.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file")
    try:
        obj = _read_zip(path, max_bytes) if zipfile.is_zipfile(path) else _read_legacy(path, max_bytes)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: corrupt PyTorch file ({type(exc).__name__}: {exc})") from None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{path}: malformed PyTorch file ({type(exc).__name__}: {exc})") from None
    tensors: Dict[str, np.ndarray] = {}
    _collect(obj, "", tensors)
    if not tensors:
        raise ModelError(f"{path}: the file holds no tensors")
    return tensors
