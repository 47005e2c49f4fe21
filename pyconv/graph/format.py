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
import struct
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


def _read_npy_header(fp, member: str) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header_length) of one ``.npy`` member, refusing unsafe dtypes."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp, max_header_size=MAX_NPY_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp, max_header_size=MAX_NPY_HEADER_BYTES)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ModelError(f"array {member!r} has a malformed .npy header: {exc}") from None
    if dtype.hasobject or dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.fields is not None:
        raise UnsafeFileError(f"array {member!r} has dtype {dtype}; pyconv only reads numeric arrays "
                              "(object arrays would need unpickling, which is refused)")
    if any((not isinstance(d, int)) or d < 0 or d > MAX_DIM for d in shape):
        raise UnsafeFileError(f"array {member!r} declares an invalid shape {shape}")
    return tuple(shape), bool(fortran), dtype, fp.tell()


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


def _stored_data_offset(raw: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (name and extra field)."""
    raw.seek(info.header_offset)
    local = raw.read(_LOCAL_HEADER.size)
    if len(local) != _LOCAL_HEADER.size or local[:4] != b"PK\x03\x04":
        raise ModelError(f"archive member {info.filename!r} has a damaged local header")
    name_len, extra_len = _LOCAL_HEADER.unpack(local)[-2:]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _read_member(zf: zipfile.ZipFile, key: str, info: zipfile.ZipInfo, raw: Optional[BinaryIO] = None) -> np.ndarray:
    """One array, its declared shape checked against the member size before any data is read.

    Uncompressed members of a file on disk are read straight into the array (one copy,
    CRC still checked); others go through zipfile's decompressing reader."""
    with zf.open(info) as fp:
        shape, fortran, dtype, header_len = _read_npy_header(fp, key)
        nbytes = math.prod(shape) * dtype.itemsize
        if header_len + nbytes != info.file_size:
            raise UnsafeFileError(f"array {key!r} declares shape {shape} ({nbytes} bytes) but the file holds "
                                  f"{info.file_size - header_len} bytes of data")
        # a fresh (writable, aligned) array: kernels take writable buffers
        arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        view = memoryview(arr.reshape(-1, order="A").view(np.uint8))
        direct = raw is not None and info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
        source = raw if direct else fp
        if direct:
            raw.seek(_stored_data_offset(raw, info))
            crc = zlib.crc32(raw.read(header_len))
        done = 0
        while done < nbytes:
            got = source.readinto(view[done:])
            if not got:
                raise ModelError(f"array {key!r} is truncated")
            done += got
        if direct and zlib.crc32(view, crc) != info.CRC:
            raise ModelError(f"array {key!r} is corrupt (CRC mismatch)")
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


def read_graph(path: Union[str, os.PathLike], max_bytes: Optional[int] = None) -> Graph:
    """Read a model file into a :class:`Graph` without validating it against the op registry.

    ``max_bytes`` caps the total uncompressed array size (default: the memory available).
    Raises FileNotFoundError, ModelError (malformed), UnsafeFileError (refused) or
    FormatVersionError (newer format)."""
    limit = available_memory() if max_bytes is None else int(max_bytes)
    label = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "model"
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError):  # not a zip, or a damaged one
        raise ModelError(f"{label}: not a pyconv model (expected an .npz zip archive)") from None
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
            if isinstance(path, (str, os.PathLike)):
                with open(path, "rb") as raw:
                    weights = {key: _read_member(zf, key, info, raw) for key, info in members.items()}
            else:
                weights = {key: _read_member(zf, key, info) for key, info in members.items()}
        except ModelError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError,
                RuntimeError, ValueError) as exc:
            raise ModelError(f"{label}: corrupt archive: {exc}") from None
    return graph_from_json(doc, weights)


def graph_from_bytes(data: bytes, max_bytes: Optional[int] = None) -> Graph:
    """:func:`read_graph` for a model held in memory."""
    return read_graph(io.BytesIO(data), max_bytes=max_bytes)
