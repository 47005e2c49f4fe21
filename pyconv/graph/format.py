"""The ``.npz`` model format: one zip of ``.npy`` arrays plus the graph as UTF-8 JSON.

The graph is stored under the reserved key :data:`GRAPH_KEY` as a uint8 array,
so the file stays readable with ``numpy.load(allow_pickle=False)``.  Reading a
file never unpickles anything and never trusts a size it has not checked: zip
member sizes, ``.npy`` headers (dtype, declared shape) and the JSON size are
all inspected before a byte of array data is read.  See ``docs/format.md``.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from pyconv._version import __version__
from pyconv.errors import FormatVersionError, ModelError, UnsafeFileError

FORMAT_NAME = "pyconv"
FORMAT_VERSION = 1
# First pyconv release that reads each format version (the "needs pyconv >= X" message).
FORMAT_REQUIRES = {1: "0.1.0"}
GRAPH_KEY = "__pyconv_graph__"

# Limits that keep a hostile or corrupt file from exhausting memory.
MAX_GRAPH_JSON_BYTES = 64 << 20
MAX_MEMBERS = 100_000
MAX_NPY_HEADER_BYTES = 10_000
MAX_COMPRESSION_RATIO = 1000  # deflate of float weights gives ~1.1; bombs give 1000+
COMPRESSION_CHECK_ABOVE = 64 << 20  # small members may compress arbitrarily well (zero biases)
MAX_DIM = 1 << 31
ALLOWED_DTYPE_KINDS = "fiub"  # float, int, unsigned, bool: never object/void/str
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: ... name length, extra length

Dim = Union[int, str]


@dataclass
class TensorInfo:
    """A graph input: name, shape (ints or symbolic names such as "N") and dtype."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str = "float32"


@dataclass
class OutputInfo:
    """A graph output: the public name and the tensor it reads."""

    name: str
    tensor: str


@dataclass
class Node:
    """One op call: input/output tensor names, weight role -> array key, attributes."""

    name: str
    op: str
    inputs: List[str]
    outputs: List[str]
    weights: Dict[str, str] = field(default_factory=dict)
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Graph:
    """A model: inputs, outputs, nodes (any order), weight arrays by key, metadata."""

    inputs: List[TensorInfo]
    outputs: List[OutputInfo]
    nodes: List[Node]
    weights: Dict[str, np.ndarray] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        """The JSON document stored under :data:`GRAPH_KEY` (weights excluded)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "requires": FORMAT_REQUIRES[FORMAT_VERSION],
            "producer": f"pyconv {__version__}",
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.inputs],
            "outputs": [{"name": o.name, "tensor": o.tensor} for o in self.outputs],
            "nodes": [
                {"name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                 "weights": dict(n.weights), "attrs": dict(n.attrs)}
                for n in self.nodes
            ],
            "metadata": self.metadata,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        mine, theirs = self.to_json(), other.to_json()
        for doc in (mine, theirs):
            doc.pop("producer")
        return (mine == theirs and self.weights.keys() == other.weights.keys() and all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in ((self.weights[k], other.weights[k]) for k in self.weights)))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


class ReleasedArray:
    """Stands in for a weight array that a loaded model no longer holds: shape and dtype only.

    ``Model.graph`` keeps the file's structure (summaries and shape inference need
    weight shapes) but not its arrays; their values live on, folded and packed, in
    the prepared ops.  Asking for the values raises :class:`ModelError`."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def _gone(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError("this weight array was released after the model was prepared; read the values "
                         "with pyconv.graph.read_graph(path)")

    __array__ = tobytes = _gone

    def __repr__(self) -> str:
        return f"ReleasedArray(shape={self.shape}, dtype={self.dtype})"


def released(weights: Mapping[str, Any]) -> Dict[str, ReleasedArray]:
    """Shape-and-dtype stand-ins for ``weights`` (see :class:`ReleasedArray`)."""
    return {k: a if isinstance(a, ReleasedArray) else ReleasedArray(a.shape, a.dtype) for k, a in weights.items()}


# --------------------------------------------------------------------------- writing

def save_graph(graph: Graph, path: Union[str, os.PathLike]) -> None:
    """Write ``graph`` as an uncompressed ``.npz`` (fast to load; weights barely compress)."""
    if GRAPH_KEY in graph.weights:
        raise ModelError(f"weight key {GRAPH_KEY!r} is reserved for the graph")
    try:
        text = json.dumps(graph.to_json(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"graph attributes/metadata must be JSON values (ints, floats, strings, lists, "
                         f"dicts; finite numbers: write null for an unbounded clip): {exc}") from None
    arrays = {GRAPH_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    arrays.update(graph.weights)
    path = os.fspath(path)
    # np.savez appends ".npz" to names without it; write through a file object to keep the name
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------- reading

def available_memory() -> int:
    """Bytes of memory the process can still use (MemAvailable), or 8 GiB when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


# The header numpy writes: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with spaces.
# Parsed with one regular expression; anything else goes through numpy's (literal_eval based) parser.
_NPY_MAGIC = b"\x93NUMPY"
_SIMPLE_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[biuf][1248])', 'fortran_order': (True|False), "
                                rb"'shape': \(((?:\d{1,19}, )*(?:\d{1,19},?)?)\), \} *\n")
_NPY_PREFIX_BYTES = 256  # magic + header of every array numpy writes (headers are padded to 64 bytes)


def _check_npy_header(member: str, shape: Any, dtype: np.dtype) -> None:
    if dtype.hasobject or dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.fields is not None:
        raise UnsafeFileError(f"array {member!r} has dtype {dtype}; pyconv only reads numeric arrays "
                              "(object arrays would need unpickling, which is refused)")
    if not isinstance(shape, tuple) or any((not isinstance(d, int)) or d < 0 or d > MAX_DIM for d in shape):
        raise UnsafeFileError(f"array {member!r} declares an invalid shape {shape}")


def _npy_header_length(prefix: bytes, member: str) -> int:
    """Bytes of magic, version, length field and header at the start of a ``.npy`` member."""
    if prefix[:6] != _NPY_MAGIC or len(prefix) < 10:
        raise ModelError(f"array {member!r} has a malformed .npy header: not a .npy array")
    if prefix[6:8] == b"\x01\x00":
        length = 10 + struct.unpack("<H", prefix[8:10])[0]
    elif prefix[6:8] in (b"\x02\x00", b"\x03\x00") and len(prefix) >= 12:
        length = 12 + struct.unpack("<I", prefix[8:12])[0]
    else:
        raise ModelError(f"array {member!r} has a malformed .npy header: unsupported version {tuple(prefix[6:8])}")
    if length > MAX_NPY_HEADER_BYTES:
        raise ModelError(f"array {member!r} has a malformed .npy header: {length} bytes "
                         f"(limit {MAX_NPY_HEADER_BYTES})")
    return length


def _parse_npy_header(header: bytes, member: str) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a complete ``.npy`` header, refusing unsafe dtypes."""
    simple = _SIMPLE_NPY_HEADER.fullmatch(header, 10 if header[6] == 1 else 12)
    if simple is not None:
        descr, fortran, dims = simple.groups()
        dtype = np.dtype(descr.decode("ascii"))
        shape = tuple(int(d) for d in dims.split(b",") if d.strip())
        fortran_order = fortran == b"True"
    else:
        fmt = np.lib.format
        fp = io.BytesIO(header)
        try:
            version = fmt.read_magic(fp)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran_order, dtype = read(fp, max_header_size=MAX_NPY_HEADER_BYTES)
        except Exception as exc:  # noqa: BLE001 - whatever numpy's parser makes of garbage (SyntaxError,
            # tokenize.TokenError from its Python 2 header filter, ...) is a malformed file
            raise ModelError(f"array {member!r} has a malformed .npy header: {exc}") from None
    _check_npy_header(member, shape, dtype)
    return shape, bool(fortran_order), dtype


def _check_archive(zf: zipfile.ZipFile, max_bytes: int) -> Dict[str, zipfile.ZipInfo]:
    """Member name -> ZipInfo after checking names, counts and declared sizes."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeFileError(f"archive has {len(infos)} members (limit {MAX_MEMBERS})")
    members: Dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ModelError(f"archive member {info.filename!r} is not a .npy array; not a pyconv model")
        key = info.filename[:-4]
        if key in members:
            raise ModelError(f"archive holds {key!r} twice")
        total += info.file_size
        if (info.compress_type != zipfile.ZIP_STORED and info.file_size > COMPRESSION_CHECK_ABOVE
                and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            raise UnsafeFileError(f"array {key!r} expands from {info.compress_size} to {info.file_size} bytes; "
                                  "refusing a likely zip bomb")
        members[key] = info
    if total > max_bytes:
        raise UnsafeFileError(f"arrays declare {total} bytes uncompressed, more than the {max_bytes} bytes "
                              "allowed (pass max_bytes= to raise the limit)")
    return members


class IntegrityCheck:
    """CRC-32 of the arrays read directly from the file, checked against the zip directory.

    ``start()`` computes them on a helper thread (zlib releases the GIL), so the
    check overlaps with validation; ``wait()`` joins it and raises ModelError on a
    mismatch.  Members that zipfile decompresses are checked by zipfile itself."""

    THREAD_ABOVE = 1 << 20  # smaller models are checked inline: a thread costs more than the CRC

    def __init__(self) -> None:
        self._jobs: List[Tuple[str, int, memoryview, int]] = []
        self._bytes = 0
        self._failed: Optional[str] = None
        self._thread: Optional[threading.Thread] = None

    def add(self, key: str, header_crc: int, data: memoryview, expected: int) -> None:
        self._jobs.append((key, header_crc, data, expected))
        self._bytes += data.nbytes

    def _run(self) -> None:
        for key, crc, data, expected in self._jobs:
            if zlib.crc32(data, crc) != expected:
                self._failed = key
                break
        self._jobs = []

    def start(self) -> "IntegrityCheck":
        if self._bytes >= self.THREAD_ABOVE:
            self._thread = threading.Thread(target=self._run, name="pyconv-crc", daemon=True)
            self._thread.start()
        return self

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._run()
        if self._failed is not None:
            raise ModelError(f"array {self._failed!r} is corrupt (CRC mismatch); the file is damaged")


def _new_array(shape: Tuple[int, ...], fortran: bool, dtype: np.dtype) -> Tuple[np.ndarray, memoryview]:
    """A fresh (writable, aligned: kernels take writable buffers) array and its bytes."""
    arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    return arr, memoryview(arr.reshape(-1, order="A").view(np.uint8))


def _fill(source: BinaryIO, view: memoryview, key: str) -> None:
    done, nbytes = 0, view.nbytes
    while done < nbytes:
        got = source.readinto(view[done:])
        if not got:
            raise ModelError(f"array {key!r} is truncated")
        done += got


def _checked_size(key: str, info: zipfile.ZipInfo, shape: Tuple[int, ...], dtype: np.dtype, header_len: int) -> None:
    """The declared shape must account for exactly the member's size (checked before allocating)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if header_len + nbytes != info.file_size:
        raise UnsafeFileError(f"array {key!r} declares shape {shape} ({nbytes} bytes) but the file holds "
                              f"{info.file_size - header_len} bytes of data")


def _read_stored_member(raw: BinaryIO, key: str, info: zipfile.ZipInfo, check: IntegrityCheck) -> np.ndarray:
    """An uncompressed member, read straight into its array (its CRC queued on ``check``)."""
    raw.seek(info.header_offset)
    name_guess = len(info.orig_filename.encode("utf-8"))
    chunk = raw.read(_LOCAL_HEADER.size + name_guess + _NPY_PREFIX_BYTES)
    if len(chunk) < _LOCAL_HEADER.size or chunk[:4] != b"PK\x03\x04":
        raise ModelError(f"archive member {info.filename!r} has a damaged local header")
    name_len, extra_len = _LOCAL_HEADER.unpack_from(chunk)[-2:]
    data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    prefix = chunk[data_start - info.header_offset:][: info.file_size]
    header_len = _npy_header_length(prefix, key)
    if header_len > info.file_size:
        raise ModelError(f"array {key!r} is truncated")
    if header_len > len(prefix):
        raw.seek(data_start)
        prefix = raw.read(header_len)
    header = prefix[:header_len]
    shape, fortran, dtype = _parse_npy_header(header, key)
    _checked_size(key, info, shape, dtype, header_len)
    arr, view = _new_array(shape, fortran, dtype)
    raw.seek(data_start + header_len)
    _fill(raw, view, key)
    check.add(key, zlib.crc32(header), view, info.CRC)
    return arr


def _read_member(zf: zipfile.ZipFile, key: str, info: zipfile.ZipInfo) -> np.ndarray:
    """One array through zipfile's (decompressing, CRC-checking) reader, its declared shape
    checked against the member size before any data is read."""
    with zf.open(info) as fp:
        prefix = fp.read(min(_NPY_PREFIX_BYTES, info.file_size))
        header_len = _npy_header_length(prefix, key)
        if header_len > len(prefix):
            prefix += fp.read(header_len - len(prefix))
        if header_len > len(prefix):
            raise ModelError(f"array {key!r} is truncated")
        shape, fortran, dtype = _parse_npy_header(prefix[:header_len], key)
        _checked_size(key, info, shape, dtype, header_len)
        arr, view = _new_array(shape, fortran, dtype)
        already = prefix[header_len:]
        view[: len(already)] = already
        _fill(fp, view[len(already):], key)
        fp.read(1)  # reach the end of the member: zipfile checks its CRC there
    return arr


def _parse_graph_json(raw: np.ndarray) -> Dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelError(f"{GRAPH_KEY!r} must be a 1-D uint8 array of UTF-8 JSON")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"the graph is not valid UTF-8 JSON: {exc}"[:500]) from None
    if not isinstance(doc, dict):
        raise ModelError("the graph JSON must be an object")
    return doc


def check_format_version(doc: Mapping[str, Any]) -> None:
    """Refuse files of another format, or of a newer version than this pyconv reads."""
    if doc.get("format") != FORMAT_NAME:
        raise ModelError(f"not a pyconv model: graph format is {doc.get('format')!r}, expected {FORMAT_NAME!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelError(f"graph format version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        needs = doc.get("requires")
        needs = needs if isinstance(needs, str) and len(needs) < 32 else "a newer release"
        raise FormatVersionError(
            f"this model needs pyconv >= {needs} (file format version {version}; pyconv {__version__} "
            f"reads versions up to {FORMAT_VERSION}); upgrade with: pip install -U pyconv")


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise ModelError(message)


def _str_list(value: Any, what: str) -> List[str]:
    _expect(isinstance(value, list) and all(isinstance(v, str) for v in value), f"{what} must be a list of strings")
    return list(value)


def graph_from_json(doc: Mapping[str, Any], weights: Dict[str, np.ndarray]) -> Graph:
    """Build a :class:`Graph` from its JSON document, checking every field's type."""
    check_format_version(doc)
    inputs = []
    _expect(isinstance(doc.get("inputs"), list), "graph 'inputs' must be a list")
    for i, t in enumerate(doc["inputs"]):
        _expect(isinstance(t, dict) and isinstance(t.get("name"), str), f"graph input #{i} needs a string 'name'")
        shape = t.get("shape")
        _expect(isinstance(shape, list) and all(
            (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM) or (isinstance(d, str) and d)
            for d in shape), f"graph input {t['name']!r}: 'shape' must list positive ints or symbolic names, "
                             f"got {shape!r}")
        dtype = t.get("dtype", "float32")
        _expect(dtype == "float32", f"graph input {t['name']!r}: dtype must be 'float32', got {dtype!r}")
        inputs.append(TensorInfo(t["name"], tuple(shape), dtype))
    outputs = []
    _expect(isinstance(doc.get("outputs"), list) and doc["outputs"], "graph 'outputs' must be a non-empty list")
    for i, o in enumerate(doc["outputs"]):
        _expect(isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("tensor"), str),
                f"graph output #{i} needs string 'name' and 'tensor'")
        outputs.append(OutputInfo(o["name"], o["tensor"]))
    nodes = []
    _expect(isinstance(doc.get("nodes"), list), "graph 'nodes' must be a list")
    for i, n in enumerate(doc["nodes"]):
        _expect(isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("op"), str),
                f"node #{i} needs string 'name' and 'op'")
        where = f"node {n['name']!r} ({n['op']})"
        node_weights = n.get("weights", {})
        _expect(isinstance(node_weights, dict) and all(isinstance(v, str) for v in node_weights.values()),
                f"{where}: 'weights' must map weight names to array keys")
        attrs = n.get("attrs", {})
        _expect(isinstance(attrs, dict), f"{where}: 'attrs' must be an object")
        nodes.append(Node(n["name"], n["op"], _str_list(n.get("inputs"), f"{where}: 'inputs'"),
                          _str_list(n.get("outputs"), f"{where}: 'outputs'"), dict(node_weights), dict(attrs)))
    metadata = doc.get("metadata", {})
    _expect(isinstance(metadata, dict), "graph 'metadata' must be an object")
    return Graph(inputs, outputs, nodes, weights, metadata)


def open_graph(path: Union[str, os.PathLike, BinaryIO],
               max_bytes: Optional[int] = None) -> Tuple[Graph, IntegrityCheck]:
    """:func:`read_graph`, with the CRC check of the weights still running: call
    ``check.wait()`` before the weights are trusted (``pyconv.load`` overlaps it with validation)."""
    limit = available_memory() if max_bytes is None else int(max_bytes)
    on_disk = isinstance(path, (str, os.PathLike))
    label = os.fspath(path) if on_disk else "model"
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError):  # not a zip, or a damaged one
        raise ModelError(f"{label}: not a pyconv model (expected an .npz zip archive)") from None
    check = IntegrityCheck()
    with zf:
        try:
            members = _check_archive(zf, limit)
            if GRAPH_KEY not in members:
                raise ModelError(f"no {GRAPH_KEY!r} entry: a plain .npz of arrays, not a pyconv model")
            if members[GRAPH_KEY].file_size > MAX_GRAPH_JSON_BYTES:
                raise UnsafeFileError(f"graph JSON is {members[GRAPH_KEY].file_size} bytes "
                                      f"(limit {MAX_GRAPH_JSON_BYTES})")
            doc = _parse_graph_json(_read_member(zf, GRAPH_KEY, members.pop(GRAPH_KEY)))
            check_format_version(doc)  # before reading weights: a newer file may store them differently
            # stored members are read with plain seeks and reads (no zipfile stream per member)
            raw = open(path, "rb", buffering=0) if on_disk else zf.fp
            try:
                weights = {key: _read_stored_member(raw, key, info, check)
                           if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
                           else _read_member(zf, key, info) for key, info in members.items()}
            finally:
                if on_disk:
                    raw.close()
        except ModelError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError,
                RuntimeError, ValueError) as exc:
            raise ModelError(f"{label}: corrupt archive: {exc}") from None
    return graph_from_json(doc, weights), check.start()


def read_graph(path: Union[str, os.PathLike, BinaryIO], max_bytes: Optional[int] = None) -> Graph:
    """Read a model file into a :class:`Graph` without validating it against the op registry.

    ``max_bytes`` caps the total uncompressed array size (default: the memory available).
    Raises FileNotFoundError, ModelError (malformed or damaged), UnsafeFileError (refused) or
    FormatVersionError (newer format)."""
    graph, check = open_graph(path, max_bytes)
    check.wait()
    return graph


def graph_from_bytes(data: bytes, max_bytes: Optional[int] = None) -> Graph:
    """:func:`read_graph` for a model held in memory."""
    return read_graph(io.BytesIO(data), max_bytes=max_bytes)
