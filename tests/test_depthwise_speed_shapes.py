"""Edges of the depthwise kernel's two paths against the float64 reference.

The row ring (outputs >= 32 wide, any kernel) rounds each row's run up to 16
floats and lets the surplus land in the next rows, deinterleaves stride-2 rows
and fills them one output row ahead; the phase-plane path (3x3, narrower
outputs) runs over the wide grid; the lane path (3x3, multiplier 1, small
planes) transposes blocks of 16 consecutive planes into vector lanes (a block may
span images; planes past the last whole block take another path).  These cases sit on those edges: widths
around the vector and the path threshold, width or height 1, padding larger
than the kernel, odd/even widths with stride 2, residual, multiplier, batch.
Tolerance as in tests/test_conv.py: 1e-5 of the pre-activation output's
magnitude.
"""
import numpy as np
import pytest

from pyconv.ops import conv as C

CASES = [
    # (C, H, W, kernel, stride, padding (t, l, b, r), dilation, mult, n)
    (3, 5, 32, 3, 1, (1, 1, 1, 1), 1, 1, 1),     # ring, exactly 2 vectors per row
    (3, 4, 33, 3, 1, (1, 1, 1, 1), 1, 1, 2),     # ring, surplus of 15 per row
    (2, 3, 47, 3, 1, (0, 1, 2, 1), 1, 2, 1),     # ring, asymmetric padding, multiplier
    (2, 1, 40, 3, 1, (1, 1, 1, 1), 1, 1, 1),     # ring, H = 1
    (2, 2, 40, 3, 1, (3, 4, 3, 5), 1, 1, 1),     # ring, padding larger than the kernel
    (3, 7, 65, 3, 2, (1, 1, 1, 1), 1, 1, 2),     # ring, stride 2, odd width
    (3, 6, 66, 3, 2, (0, 0, 1, 1), 1, 1, 1),     # ring, stride 2, even width, pad right only
    (2, 9, 70, 3, 2, (2, 3, 2, 3), 2, 1, 1),     # ring, stride 2 + dilation 2 (one column phase)
    (2, 9, 75, 5, 2, (2, 2, 2, 2), 1, 3, 1),     # ring, general kernel (5x5), stride 2
    (2, 8, 80, 3, 3, (1, 2, 1, 0), 1, 1, 1),     # ring, stride 3
    (2, 3, 64, (1, 7), 1, (0, 3, 0, 3), 1, 1, 1),  # ring, 1 x k (conv1d-like)
    (2, 4, 129, 3, (2, 1), 1, 1, 1, 1),          # ring, strides differ per axis
    (3, 5, 31, 3, 1, (1, 1, 1, 1), 1, 1, 1),     # planes, just below the threshold
    (3, 7, 7, 3, 1, (1, 1, 1, 1), 1, 2, 3),      # planes, MobileNet's last stage, batch 3
    (3, 14, 14, 3, 2, (1, 1, 1, 1), 1, 1, 1),    # planes, stride 2 -> 7 wide
    (2, 1, 1, 3, 1, (1, 1, 1, 1), 1, 1, 1),      # planes, 1 x 1 image
    (2, 5, 1, 3, 2, (1, 1, 1, 1), 1, 1, 1),      # planes, width 1, stride 2
    (2, 3, 16, 3, 1, (0, 0, 0, 0), 1, 1, 1),     # planes, no padding
    (2, 6, 17, 3, 2, (2, 3, 0, 1), 2, 2, 1),     # planes, asymmetric padding, dilation, multiplier
    # planes of a 2x1 kernel, stride 2 in height: the input's last row lies past the first
    # phase plane, and the whole-vector copy of the row before it clobbered the next phase's
    # top padding row (fixed in depthwise_channel_plane)
    (2, 13, 10, (2, 1), (2, 1), (2, 0, 0, 0), 1, 3, 2),
    (2, 13, 10, (2, 3), (2, 1), (2, 1, 0, 1), (1, 2), 1, 1),
    (16, 7, 7, 3, 1, (1, 1, 1, 1), 1, 1, 1),     # lanes (16 channels per vector), MobileNet's 7x7
    (32, 14, 14, 3, 2, (1, 1, 1, 1), 1, 1, 2),   # lanes, stride 2, two blocks, batch 2
    (16, 9, 11, 3, 2, (0, 2, 1, 0), 1, 1, 1),    # lanes, odd sizes, asymmetric padding
    (16, 1, 1, 3, 1, (1, 1, 1, 1), 1, 1, 3),     # lanes, 1 x 1 image, batch 3
    (16, 6, 5, 3, (1, 2), (3, 3, 3, 3), (2, 1), 1, 1),  # lanes, padding > kernel, dilation
    (48, 4, 30, 3, 3, (1, 1, 1, 1), 1, 1, 1),    # lanes, stride 3, input of 120 pixels
    (16, 16, 16, 3, 1, (1, 1, 1, 1), 1, 1, 1),   # lanes at its output limit (256 pixels)
    (16, 33, 33, 3, 2, (1, 1, 1, 1), 1, 1, 1),   # input over the lane limit: planes
    (16, 7, 7, 3, 1, (1, 1, 1, 1), 1, 2, 1),     # multiplier 2: not lanes
    (20, 7, 7, 3, 1, (1, 1, 1, 1), 1, 1, 1),     # lanes for 16 planes, phase planes for the last 4
    (116, 14, 14, 3, 1, (1, 1, 1, 1), 1, 1, 1),  # ShuffleNetV2's stage 3: 7 lane blocks + 4 planes
    (12, 9, 11, 3, 2, (1, 0, 1, 2), 1, 1, 3),    # 36 planes: 2 lane blocks across images + 4 planes
    (5, 6, 6, 3, 1, (1, 1, 1, 1), 1, 1, 4),      # one lane block spanning four images, 4 planes after
    (18, 4, 40, 3, 1, (1, 1, 1, 1), 1, 1, 1),    # lanes (160 outputs) + 2 planes by the row ring
]


@pytest.mark.parametrize("case", CASES, ids=[f"c{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("activation, with_residual", [("relu6", False), (("leaky_relu", 0.1), True)])
def test_depthwise_edges(case, activation, with_residual, nthreads):
    ch, h, w, kernel, stride, padding, dilation, mult, n = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rng = np.random.default_rng([ch, h, w, kh, kw, mult, n])
    x = rng.standard_normal((n, ch, h, w)).astype(np.float32)
    weight = rng.standard_normal((ch * mult, 1, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(ch * mult).astype(np.float32)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=ch)
    plain = C.conv2d_reference(x, weight, bias, **args)
    residual = rng.standard_normal(plain.shape).astype(np.float32) if with_residual else None
    ref = C.conv2d_reference(x, weight, bias, **args, activation=activation, residual=residual)
    out = np.full(plain.shape, np.nan, np.float32)  # every output element must be written
    got = C.conv2d(x, weight, bias, **args, activation=activation, residual=residual, algorithm="depthwise",
                   out=out)
    scale = max(1.0, float(np.max(np.abs(plain))) + (float(np.max(np.abs(residual))) if with_residual else 0.0))
    assert got is out
    assert float(np.max(np.abs(got - ref))) / scale <= 1e-5


def test_depthwise_neighbours_untouched():
    # the rounded-up runs of one plane must stay inside it: an output view with
    # sentinel rows around it in one buffer keeps them
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 3, 40)).astype(np.float32)
    weight = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    buf = np.full((4 * 3 * 40 + 64,), 7.0, np.float32)
    out = buf[32:32 + 4 * 3 * 40].reshape(1, 4, 3, 40)
    C.conv2d(x, weight, None, 1, 1, groups=4, activation="relu6", algorithm="depthwise", out=out)
    np.testing.assert_array_equal(buf[:32], 7.0)
    np.testing.assert_array_equal(buf[-32:], 7.0)
    ref = C.conv2d_reference(x, weight, None, 1, 1, groups=4, activation="relu6")
    assert float(np.max(np.abs(out - ref))) <= 1e-5 * max(1.0, float(np.max(np.abs(ref))))
