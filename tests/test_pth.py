"""pyconv.io.pth: PyTorch state_dicts read without torch, and hostile pickles refused.

Test files are written here by hand in both containers (zip and legacy) with a
fake ``torch`` module, so the tests need no torch; real files are checked when
present (the AdderNet ResNet-20 in ../shared/data, the cached MobileNetV2).
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pyconv import ModelError, UnsafeFileError
from pyconv.io.pth import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ADDERNET = SHARED / "addernet" / "resnet20_addernet_cifar10.pth"
ADDERNET_SHA256 = "fe3ad7c15573d34cddd9b3ec2eed12d9c2c818e59cd7d0797a954d6f76ea375b"

STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                 np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
                 np.dtype(np.bool_): "BoolStorage"}


class Storage:
    """A flat array saved as one torch storage."""

    def __init__(self, data: np.ndarray, key: str, type_name: str = ""):
        self.data, self.key = np.ascontiguousarray(data).ravel(), key
        self.type_name = type_name or STORAGE_NAMES[self.data.dtype]


class Tensor:
    """A view of a Storage; pickles as torch._utils._rebuild_tensor_v2(...)."""

    def __init__(self, storage: Storage, offset: int, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, tuple(shape), tuple(strides)

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.strides, False, collections.OrderedDict())


def contiguous(array: np.ndarray, key: str) -> Tensor:
    strides = tuple(s // array.itemsize for s in np.array(array, order="C").strides)
    return Tensor(Storage(array, key), 0, array.shape, strides)


@pytest.fixture
def fake_torch(monkeypatch):
    """Minimal importable ``torch``/``torch._utils`` so pickle writes torch's global names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in set(STORAGE_NAMES.values()) | {"BFloat16Storage"}:
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _TorchPickler(pickle.Pickler):
    def __init__(self, file, storages: dict):
        super().__init__(file, protocol=2)
        self.storages = storages

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages[obj.key] = obj
            return ("storage", getattr(sys.modules["torch"], obj.type_name), obj.key, "cpu", obj.data.size)
        return None


def _pickle_state(state) -> tuple:
    buffer, storages = io.BytesIO(), {}
    _TorchPickler(buffer, storages).dump(state)
    return buffer.getvalue(), storages


def write_zip(path: Path, state, archive: str = "archive") -> Path:
    data, storages = _pickle_state(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", data)
        z.writestr(f"{archive}/byteorder", "little")
        for key, storage in storages.items():
            z.writestr(f"{archive}/data/{key}", storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
        z.writestr(f"{archive}/version", "3\n")
    return path


def write_legacy(path: Path, state, little_endian: bool = True) -> Path:
    data, storages = _pickle_state(state)
    order = "<" if little_endian else ">"
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(LEGACY_PROTOCOL, f, protocol=2)
        pickle.dump({"protocol_version": LEGACY_PROTOCOL, "little_endian": little_endian,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        f.write(data)
        pickle.dump(list(storages), f, protocol=2)
        for storage in storages.values():
            f.write(struct.pack(order + "q", storage.data.size))
            f.write(storage.data.astype(storage.data.dtype.newbyteorder(order)).tobytes())
    return path


WRITERS = {"zip": write_zip, "legacy": write_legacy}


def _sample_state():
    rng = np.random.default_rng(0)
    arrays = collections.OrderedDict(
        [("conv.weight", rng.standard_normal((4, 3, 3, 5)).astype(np.float32)),
         ("conv.bias", rng.standard_normal(4).astype(np.float32)),
         ("bn.num_batches_tracked", np.array(7, dtype=np.int64)),
         ("fc.weight", rng.standard_normal((2, 6)).astype(np.float64)),
         ("half", rng.standard_normal((3,)).astype(np.float16)),
         ("mask", np.array([True, False, True])),
         ("ids", np.arange(5, dtype=np.int32)),
         ("empty", np.zeros((0, 3), dtype=np.float32))])
    state = collections.OrderedDict((name, contiguous(a, str(i))) for i, (name, a) in enumerate(arrays.items()))
    return state, arrays


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_round_trip_dtypes_and_shapes(tmp_path, fake_torch, kind):
    state, arrays = _sample_state()
    loaded = load_state_dict(WRITERS[kind](tmp_path / "m.pth", state))
    assert list(loaded) == list(arrays)
    for name, expected in arrays.items():
        got = loaded[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.flags.c_contiguous and got.flags.owndata and got.flags.writeable
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_views_offsets_strides_and_shared_storage(tmp_path, fake_torch, kind):
    base = np.arange(60, dtype=np.float32)
    storage = Storage(base, "0")
    state = {
        "transposed": Tensor(storage, 0, (4, 5), (1, 4)),      # a .t() of a 5x4 tensor
        "offset": Tensor(storage, 10, (2, 3), (3, 1)),         # a slice starting mid-storage
        "broadcast": Tensor(storage, 2, (3, 2), (0, 1)),       # expand(): stride 0
        "scalar": Tensor(storage, 59, (), ()),
    }
    loaded = load_state_dict(WRITERS[kind](tmp_path / "v.pth", state))
    np.testing.assert_array_equal(loaded["transposed"], base[:20].reshape(5, 4).T)
    np.testing.assert_array_equal(loaded["offset"], base[10:16].reshape(2, 3))
    np.testing.assert_array_equal(loaded["broadcast"], np.tile(base[2:4], (3, 1)))
    assert loaded["scalar"].shape == () and loaded["scalar"] == 59
    loaded["offset"][0, 0] = -1  # copies: writing one leaves the others alone
    assert loaded["transposed"][2, 2] == 10


def test_big_endian_legacy(tmp_path, fake_torch):
    state, arrays = _sample_state()
    loaded = load_state_dict(write_legacy(tmp_path / "be.pth", state, little_endian=False))
    for name, expected in arrays.items():
        assert loaded[name].dtype == expected.dtype  # native byte order
        np.testing.assert_array_equal(loaded[name], expected)


def test_bfloat16_widened_to_float32(tmp_path, fake_torch):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    state = {"w": Tensor(Storage(bits, "0", "BFloat16Storage"), 0, (3,), (1,))}
    loaded = load_state_dict(write_zip(tmp_path / "bf.pth", state))
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], values)


def test_nested_checkpoint_flattened_and_other_values_skipped(tmp_path, fake_torch):
    w = np.ones((2, 2), np.float32)
    state = {"epoch": 3, "state_dict": collections.OrderedDict([("fc.weight", contiguous(w, "0"))]), "arch": "x"}
    loaded = load_state_dict(write_zip(tmp_path / "ckpt.pth", state, archive="ckpt"))
    assert list(loaded) == ["state_dict.fc.weight"]


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _HostileEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_hostile_pickle_raises_and_never_runs(tmp_path, fake_torch, kind, payload):
    marker = tmp_path / "pwned"
    evil = _Hostile(marker) if payload == "os.system" else _HostileEval()
    state = {"w": contiguous(np.ones(3, np.float32), "0"), "evil": evil}
    path = WRITERS[kind](tmp_path / "evil.pth", state)
    with pytest.raises(UnsafeFileError, match="refusing to load"):
        load_state_dict(path)
    assert not marker.exists()


def test_hostile_bare_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "bare.pth"
    path.write_bytes(pickle.dumps(_Hostile(marker), protocol=4))
    with pytest.raises(ModelError):  # UnsafeFileError or "not a PyTorch file"; never runs
        load_state_dict(path)
    assert not marker.exists()


def test_tensor_reading_past_storage_refused(tmp_path, fake_torch):
    state = {"w": Tensor(Storage(np.zeros(4, np.float32), "0"), 2, (3,), (1,))}
    with pytest.raises(ModelError, match="past its storage"):
        load_state_dict(write_zip(tmp_path / "oob.pth", state))


def test_declared_size_over_limit_refused(tmp_path, fake_torch):
    state, _ = _sample_state()
    with pytest.raises(ModelError, match="max_bytes"):
        load_state_dict(write_zip(tmp_path / "m.pth", state), max_bytes=100)


def test_zip_entry_size_mismatch_refused(tmp_path, fake_torch):
    path = write_zip(tmp_path / "m.pth", {"w": contiguous(np.ones(4, np.float32), "0")})
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries["archive/data/0"] = entries["archive/data/0"][:8]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(ModelError, match="holds 8 bytes, expected 16"):
        load_state_dict(path)


def test_truncated_legacy_refused(tmp_path, fake_torch):
    path = write_legacy(tmp_path / "m.pth", {"w": contiguous(np.ones(100, np.float32), "0")})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelError, match="truncated"):
        load_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"PK\x03\x04garbage"])
def test_garbage_files_raise_model_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        load_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_state_dict(tmp_path / "nope.pth")


def test_real_addernet_legacy_file():
    if not ADDERNET.exists():
        pytest.skip(f"{ADDERNET} not present")
    assert hashlib.sha256(ADDERNET.read_bytes()).hexdigest() == ADDERNET_SHA256
    sd = load_state_dict(ADDERNET)
    assert sd["module.conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["module.layer1.0.conv1.adder"].shape == (16, 16, 3, 3)
    assert sd["module.fc.weight"].shape == (10, 64, 1, 1)
    assert sd["module.bn1.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(v).all() for v in sd.values())
    assert (sd["module.bn1.running_var"] > 0).all()


def test_real_mobilenet_v2_if_cached():
    from models.mobilenet_v2_torchvision import cached_pth_path

    path = cached_pth_path()
    if path is None:
        pytest.skip("mobilenet_v2-b0353104.pth is not in the cache (python -m models.mobilenet_v2_torchvision fetches it)")
    sd = load_state_dict(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")  # torchvision's file-name hash
    assert len(sd) == 314
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["classifier.1.weight"].shape == (1000, 1280)
    params = sum(v.size for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
    assert params == 3_504_872
