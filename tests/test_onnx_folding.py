"""The importer's constant folder (pure NumPy: runs without onnx installed)."""
from __future__ import annotations

import numpy as np
import pytest

from pyconv.convert.folding import Dim, NotFoldable, fold, has_symbols, reshape_shape

N, H = Dim("N"), Dim("H")


def _sym(*values):
    return np.array(values, dtype=object)


def test_shape_subgraph_carries_symbols():
    shape = _sym(N, 3, H, 8)
    (n,) = fold("Gather", [shape, np.array(0)], {"axis": 0}, 13)
    assert n.shape == () and n.reshape(()).item() == N  # a 0-d object array, not a bare Dim
    (n1,) = fold("Unsqueeze", [n, np.array([0])], {}, 13)
    (target,) = fold("Concat", [n1, np.array([-1], np.int64)], {"axis": 0}, 13)
    assert target.tolist() == [N, -1] and has_symbols(target)
    (same,) = fold("Cast", [target], {"to": 7}, 13)
    assert same.tolist() == [N, -1]
    (hw,) = fold("Slice", [shape, np.array([2]), np.array([2 ** 63 - 1])], {}, 13)
    assert hw.tolist() == [H, 8]


def test_symbol_arithmetic_keeps_scales_and_ratios():
    hw = _sym(H, Dim("W"))
    (up,) = fold("Mul", [fold("Cast", [hw], {"to": 1}, 13)[0], np.array([2.0, 2.0], np.float32)], {}, 13)
    assert up.tolist() == [Dim("H", 2.0), Dim("W", 2.0)]
    (floored,) = fold("Floor", [up], {}, 13)
    assert floored.tolist() == up.tolist()  # an integer multiple of a size is already whole
    (ratio,) = fold("Div", [up, hw], {}, 13)
    assert not has_symbols(ratio) and ratio.tolist() == [2.0, 2.0]
    (same,) = fold("Mul", [_sym(N, 3), np.array([1, 2], np.int64)], {}, 13)
    assert same.tolist() == [N, 6]


@pytest.mark.parametrize("op_type,other", [("Add", 1), ("Sub", 1), ("Div", 2), ("Mul", None)])
def test_other_symbol_arithmetic_gives_opaque_symbols(op_type, other):
    b = _sym(H) if other is None else np.array([other], np.int64)
    (out,) = fold(op_type, [_sym(H), b], {}, 13)
    (d,) = out.tolist()
    assert isinstance(d, Dim) and d.name.startswith("(") and d != H


@pytest.mark.parametrize("op_type,inputs", [
    ("ConstantOfShape", [_sym(N, 3)]), ("Range", [np.array(0), _sym(H).reshape(()), np.array(1)]),
    ("Equal", [_sym(N), np.array([1])]),
])
def test_ops_needing_values_refuse_symbols(op_type, inputs):
    with pytest.raises(NotFoldable, match="--input-shape|dynamic"):
        fold(op_type, inputs, {}, 13)


def test_integer_division_truncates_toward_zero_like_onnx():
    (q,) = fold("Div", [np.array([7, -7], np.int64), np.array([2, 2], np.int64)], {}, 13)
    assert q.tolist() == [3, -3] and q.dtype == np.int64
    (f,) = fold("Div", [np.array([1.0], np.float32), np.array([4.0], np.float32)], {}, 13)
    assert f.dtype == np.float32 and f.tolist() == [0.25]


def test_slice_with_negative_steps_and_int64_limits():
    x = np.arange(10)
    (y,) = fold("Slice", [x, np.array([-1]), np.array([-2 ** 63]), np.array([0]), np.array([-3])], {}, 13)
    assert y.tolist() == [9, 6, 3, 0]
    (z,) = fold("Slice", [x.reshape(2, 5)], {"starts": [1], "ends": [100], "axes": [1]}, 9)
    assert z.tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]


def test_constant_of_shape_and_reshape_rules():
    (c,) = fold("ConstantOfShape", [np.array([2, 3], np.int64)], {"value": np.array([1.5], np.float32)}, 13)
    assert c.shape == (2, 3) and c.dtype == np.float32 and np.all(c == 1.5)
    assert reshape_shape((2, 3, 4), [0, -1]) == [2, 12]
    assert reshape_shape((2, 3, 4), [0, 3, 4], allowzero=True) == [0, 3, 4]


def test_dequantize_linear_per_axis():
    q = np.array([[1, 2], [3, 4]], np.int8)
    (w,) = fold("DequantizeLinear", [q, np.array([0.5, 2.0], np.float32), np.array([1, 0], np.int8)], {"axis": 0}, 13)
    assert w.dtype == np.float32 and w.tolist() == [[0.0, 0.5], [6.0, 8.0]]


def test_unknown_op_is_not_foldable():
    with pytest.raises(NotFoldable, match="not evaluated"):
        fold("Conv", [np.zeros((1, 1, 3, 3))], {}, 13)
