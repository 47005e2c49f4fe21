"""conv2d / conv1d / conv_transpose2d against float64 references.

Tolerances are relative to the output's magnitude (max |reference|, at least 1):
GEMM, 1x1 and depthwise kernels accumulate in float32 in a different order
than the float64 reference -> 1e-5; Winograd adds its transforms' rounding ->
F(2,3) 1e-5, F(4,3) 2e-5, F(6,3) 1e-4 (measured worst cases over this sweep:
docs/kernels.md).
"""
import math

import numpy as np
import pytest
import scipy.signal

import pyconv
from pyconv import registry
from pyconv.ops import conv as C

TOL = {"im2col": 1e-5, "1x1": 1e-5, "depthwise": 1e-5, "winograd": 2e-5, "winograd2": 1e-5, "winograd4": 2e-5,
       "winograd6": 1e-4}
ACTIVATIONS = [None, "relu", "relu6", ("clip", -0.5, 0.5), ("leaky_relu", 0.1), ["clip", None, 1.0]]


def rel_err(y, ref, scale=None):
    """max |y - ref| over the output magnitude (``scale``, default max |ref|, at least 1)."""
    ref = np.asarray(ref, np.float64)
    scale = float(np.max(np.abs(ref))) if scale is None else scale
    return float(np.max(np.abs(y - ref)) / max(1.0, scale))


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = pyconv.get_num_threads()
    pyconv.set_num_threads(request.param)
    yield request.param
    pyconv.set_num_threads(before)


def random_case(rng, algorithm):
    """Random conv2d arguments for which ``algorithm`` applies."""
    n = int(rng.choice([1, 3]))
    groups = 1
    if algorithm in ("im2col", "1x1"):
        groups = int(rng.choice([1, 1, 2, 3]))
    cig = int(rng.integers(1, 7))
    cog = int(rng.integers(1, 7))
    if algorithm == "depthwise":
        groups, cig, cog = int(rng.integers(1, 10)), 1, int(rng.integers(1, 4))
    if algorithm.startswith("winograd"):
        cig, cog = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
    stride, dilation = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(1, 4, 2))
    return geometry_case(rng, algorithm, n, groups, cig, cog, kernel, stride, dilation, 14)


def geometry_case(rng, algorithm, n, groups, cig, cog, kernel, stride, dilation, max_hw):
    """conv2d arguments for ``groups`` groups of cig -> cog channels on planes smaller than
    max_hw (random padding, size, arrays, activation); the 1x1 and Winograd algorithms
    get their kernel (and Winograd its stride and dilation)."""
    kh, kw = kernel
    if algorithm == "1x1":
        kh = kw = 1
    if algorithm.startswith("winograd"):
        kh = kw = 3
        stride = dilation = (1, 1)
    pads = tuple(int(v) for v in rng.integers(0, 4, 4))
    while True:
        h, w = (int(v) for v in rng.integers(1, max_hw, 2))
        ho = C.conv_output_size(h, kh, stride[0], pads[0], pads[2], dilation[0])
        wo = C.conv_output_size(w, kw, stride[1], pads[1], pads[3], dilation[1])
        if ho > 0 and wo > 0:
            break
    x = rng.standard_normal((n, cig * groups, h, w)).astype(np.float32)
    weight = rng.standard_normal((cog * groups, cig, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(cog * groups).astype(np.float32) if rng.random() < 0.7 else None
    residual = rng.standard_normal((n, cog * groups, ho, wo)).astype(np.float32) if rng.random() < 0.3 else None
    activation = ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]
    return dict(x=x, weight=weight, bias=bias, stride=stride, padding=pads, dilation=dilation, groups=groups,
                activation=activation, residual=residual)



# ----------------------------------------------------------------------------- the references themselves

@pytest.mark.parametrize("seed", range(6))
def test_reference_matches_scipy_correlate2d(seed):
    rng = np.random.default_rng(seed)
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 4, 2))
    pt, pl, pb, pr = (int(v) for v in rng.integers(0, 4, 4))
    h = (kh - 1) * dh + 1 - pt - pb + int(rng.integers(0, 8))  # at least one output row
    w = (kw - 1) * dw + 1 - pl - pr + int(rng.integers(0, 8))
    h, w = max(h, 1), max(w, 1)
    x = rng.standard_normal((h, w))
    k = rng.standard_normal((kh, kw))
    dilated = np.zeros(((kh - 1) * dh + 1, (kw - 1) * dw + 1))
    dilated[::dh, ::dw] = k
    full = scipy.signal.correlate2d(np.pad(x, ((pt, pb), (pl, pr))), dilated, mode="valid")
    expected = full[::sh, ::sw]
    got = C.conv2d_reference(x[None, None], k[None, None], stride=(sh, sw), padding=(pt, pl, pb, pr),
                             dilation=(dh, dw))
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_transpose_reference_is_the_adjoint_of_conv(seed):
    # <conv2d(x), y> == <x, conv_transpose2d(y)> for the same weight and hyper-parameters
    rng = np.random.default_rng(100 + seed)
    groups = int(rng.integers(1, 3))
    cig, cog = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    pads = tuple(int(v) for v in rng.integers(0, 2, 4))
    h, w = (int(v) for v in rng.integers(6, 11, 2))
    x = rng.standard_normal((2, cig * groups, h, w))
    weight = rng.standard_normal((cog * groups, cig, kh, kw))
    y = C.conv2d_reference(x, weight, stride=stride, padding=pads, dilation=dilation, groups=groups)
    ct = C.TransposeGeometry.from_args(weight.shape, None, stride, pads, 0, groups, dilation)
    ho, wo = ct.output_shape(y.shape)[2:]
    op = (h - ho, w - wo)  # rows/cols the strided conv never reached
    if max(op[0], op[1]) >= 0 and all(op[a] < max(stride[a], dilation[a]) for a in range(2)):
        ty = C.conv_transpose2d_reference(y, weight, stride=stride, padding=pads, output_padding=op, groups=groups,
                                          dilation=dilation)
        assert math.isclose(float(np.sum(y * y)), float(np.sum(x * ty)), rel_tol=1e-9)
    else:
        pytest.skip("shapes not invertible for this draw")


# ----------------------------------------------------------------------------- conv2d sweeps

@pytest.mark.parametrize("algorithm", ["im2col", "1x1", "depthwise", "winograd", "winograd2", "winograd4", "winograd6"])
def test_conv2d_sweep(algorithm, threads):
    if algorithm.startswith("winograd") and C._winograd_kernels() is None:
        pytest.skip("winograd kernel not built")
    rng = np.random.default_rng([len(algorithm), ord(algorithm[-1]), threads])
    for _ in range(40):
        case = random_case(rng, algorithm)
        ref = C.conv2d_reference(**case)
        got = C.conv2d(**case, algorithm=algorithm)
        assert got.dtype == np.float32 and got.shape == ref.shape
        # scale: the pre-activation output (a clip may hide how large the sums were)
        err = rel_err(got, ref, np.max(np.abs(C.conv2d_reference(**dict(case, activation=None)))))
        assert err <= TOL[algorithm], (algorithm, {k: getattr(v, "shape", v) for k, v in case.items()}, err)


def wide_case(rng, algorithm):
    """Random conv2d arguments on larger planes and channel counts than random_case's:
    they reach the kernels' other routes (depthwise's row ring and phase planes, the
    panel GEMMs, several GEMM tiles), which small cases never take."""
    n = int(rng.choice([1, 1, 2]))
    groups, cig = 1, int(rng.choice([1, 3, 5, 8, 16, 17, 24, 40]))
    cog = int(rng.choice([3, 8, 24, 32, 33, 48, 64]))
    kernel = tuple(int(v) for v in rng.choice([1, 2, 3, 3, 5, 7], 2))
    stride = tuple(int(v) for v in rng.choice([1, 1, 2, 3], 2))
    dilation = tuple(int(v) for v in rng.choice([1, 1, 2], 2))
    if algorithm == "depthwise":
        groups, cig, cog = int(rng.choice([1, 3, 16, 17, 32])), 1, int(rng.choice([1, 1, 2]))
    elif algorithm == "im2col" and rng.random() < 0.2:
        groups = 2
    return geometry_case(rng, algorithm, n, groups, cig, cog, kernel, stride, dilation, 72)


@pytest.mark.parametrize("algorithm", ["im2col", "1x1", "depthwise", "winograd2", "winograd4"])
def test_conv2d_wide_sweep(algorithm, threads, monkeypatch):
    # The routes to the panel kernels need the blocked loop: patched on, as on AVX-512, so
    # every CPU runs them.  (A depthwise geometry that broke here, a 2x1 stride-2 kernel
    # with top padding 2 on 28x10 phase planes, had passed the small sweeps.)
    if algorithm.startswith("winograd") and C._winograd_kernels() is None:
        pytest.skip("winograd kernel not built")
    blocked_loop_routes(monkeypatch)
    rng = np.random.default_rng([len(algorithm), ord(algorithm[-1]), threads, 72])
    for _ in range(30):
        case = wide_case(rng, algorithm)
        ref = C.conv2d_reference(**case)
        got = C.conv2d(**case, algorithm=algorithm)
        err = rel_err(got, ref, np.max(np.abs(C.conv2d_reference(**dict(case, activation=None)))))
        assert err <= TOL[algorithm], (algorithm, {k: getattr(v, "shape", v) for k, v in case.items()}, err)


def test_conv2d_direct_is_im2col():
    rng = np.random.default_rng(7)
    case = random_case(rng, "im2col")
    prepared = C.prepare_conv2d(case["weight"], stride=case["stride"], padding=case["padding"],
                                dilation=case["dilation"], groups=case["groups"], algorithm="direct")
    assert prepared.algorithm == "im2col"
    assert rel_err(prepared(case["x"]), C.conv2d_reference(case["x"], case["weight"], stride=case["stride"],
                   padding=case["padding"], dilation=case["dilation"], groups=case["groups"])) <= TOL["im2col"]


def test_large_gemm_tiles_and_threads_agree():
    # several column tiles per image and groups (and a transposed conv big enough to be
    # split over threads): both thread counts give the reference
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 24, 37, 45)).astype(np.float32)
    w = rng.standard_normal((36, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(36).astype(np.float32)
    ref = C.conv2d_reference(x, w, b, stride=(1, 2), padding=(2, 1, 0, 1), groups=3, activation="relu")
    xt = rng.standard_normal((1, 16, 21, 19)).astype(np.float32)
    wt = rng.standard_normal((16, 6, 4, 3)).astype(np.float32)
    ref_t = C.conv_transpose2d_reference(xt, wt, stride=2, padding=1, groups=2, activation="relu6")
    before = pyconv.get_num_threads()
    try:
        for n in (1, 2):
            pyconv.set_num_threads(n)
            assert rel_err(C.conv2d(x, w, b, stride=(1, 2), padding=(2, 1, 0, 1), groups=3, activation="relu"),
                           ref) <= 1e-5
            assert rel_err(C.conv_transpose2d(xt, wt, stride=2, padding=1, groups=2, activation="relu6"),
                           ref_t) <= 1e-5
    finally:
        pyconv.set_num_threads(before)


@pytest.mark.parametrize("algorithm, weight_shape, groups", [
    ("im2col", (7, 5, 3, 2), 1), ("1x1", (7, 5, 1, 1), 1), ("depthwise", (10, 1, 3, 2), 5),
])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_kernels_with_explicit_thread_counts(algorithm, weight_shape, groups, nthreads):
    # nthreads=1 is what a build without OpenMP runs; 2 threads on a 1-image call split tiles/planes
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 5, 19, 17)).astype(np.float32)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    prepared = C.prepare_conv2d(w, stride=(2, 1), padding=(1, 0, 1, 1), groups=groups, algorithm=algorithm)
    out = np.empty(prepared.output_shape(x.shape), np.float32)
    prepared._kernel.plan(x.shape, out.shape, nthreads)(x, None, out)
    ref = C.conv2d_reference(x, w, stride=(2, 1), padding=(1, 0, 1, 1), groups=groups)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("kernel, cog, groups, ci", [
    (1, 40, 1, 24), (1, 33, 1, 70), (3, 37, 1, 9), (3, 32, 2, 6), (1, 17, 1, 12),
])
@pytest.mark.parametrize("batch", [1, 2])
def test_few_pixels_split_output_channels_across_threads(kernel, cog, groups, ci, batch):
    # 7x7 outputs: one tile, so two threads split its output channels (blocks of >= 16:
    # 17 channels stay whole and the pixels are split instead; two groups are two tasks
    # already); 1x1 with K <= 32 runs the blocked loop on each block
    rng = np.random.default_rng([kernel, cog, groups, batch])
    x = rng.standard_normal((batch, ci * groups, 7, 7)).astype(np.float32)
    w = rng.standard_normal((cog * groups, ci, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(cog * groups).astype(np.float32)
    prepared = C.prepare_conv2d(w, b, padding=kernel // 2, groups=groups, activation="relu6", algorithm="im2col"
                                if kernel > 1 else "1x1")
    assert prepared._kernel.split(49, 2)[1] == (2 if groups == 1 and cog >= 32 else 1)
    ref0 = C.conv2d_reference(x, w, b, padding=kernel // 2, groups=groups)
    res = rng.standard_normal(ref0.shape).astype(np.float32)
    out = np.empty(ref0.shape, np.float32)
    prepared._kernel.plan(x.shape, out.shape, 2)(x, res, out)
    ref = C.conv2d_reference(x, w, b, padding=kernel // 2, groups=groups, residual=res, activation="relu6")
    assert rel_err(out, ref, np.max(np.abs(ref0 + res))) <= 1e-5


@pytest.mark.parametrize("hw", [(7, 7), (6, 8), (8, 10), (5, 10)], ids=str)
def test_winograd_few_tiles_chunk_k(hw, threads, monkeypatch):
    # On one thread 16 F(2x2) tiles (two 8-row register blocks) run every block over 64 k
    # at a time (blocked_gemm's chunked_column); 96 channels: a partial chunk.  12 and 20
    # tiles (12-row blocks) and 15 (overlapping blocks) take the unchunked loop.  Two
    # threads split the tile rows into blocks of either kind.
    blocked_loop_routes(monkeypatch)
    monkeypatch.setattr(C, "_WINOGRAD_BLOCKED_MIN_FILTER", 1)
    rng = np.random.default_rng(hw)
    x = rng.standard_normal((1, 96, *hw)).astype(np.float32)
    w = (rng.standard_normal((40, 96, 3, 3)) / np.sqrt(9 * 96)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    got = C.conv2d(x, w, b, padding=1, algorithm="winograd2", activation="relu")
    assert rel_err(got, C.conv2d_reference(x, w, b, padding=1, activation="relu")) <= TOL["winograd2"]


@pytest.mark.parametrize("channels, blocked", [(96, True), (64, False)])
def test_winograd_gemms_of_wide_layers_take_the_blocked_loop(channels, blocked, monkeypatch):
    # >= 8K filters per position: the per-position GEMMs by the blocked loop (where it pays)
    module = C._winograd_kernels()
    if module is None:
        pytest.skip("winograd kernel not built")
    seen = []
    original = module.WinogradConv

    def recording(x_shape, packed, *args, **kwargs):
        seen.append(packed.ndim == 4)   # U in column panels: the GEMMs by the blocked loop
        return original(x_shape, packed, *args, **kwargs)

    monkeypatch.setattr(module, "WinogradConv", recording)
    blocked_loop_routes(monkeypatch)
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((2, channels, 9, 8)).astype(np.float32)
    w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    got = C.conv2d(x, w, padding=1, algorithm="winograd2")
    assert seen == [blocked]
    assert rel_err(got, C.conv2d_reference(x, w, padding=1)) <= TOL["winograd2"]
    monkeypatch.setattr(C, "_blocked_loop_pays", lambda: False)
    C.conv2d(x, w, padding=1, algorithm="winograd2")
    assert seen[-1] is False


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (3, 8, 1, 7), (1, 8, 9, 1), (3, 8, 5, 3)])
@pytest.mark.parametrize("algorithm", ["auto", "im2col", "winograd", "winograd2", "winograd4", "winograd6"])
def test_conv3x3_tiny_and_odd_spatial_sizes(shape, algorithm):
    if algorithm.startswith("winograd") and C._winograd_kernels() is None:
        pytest.skip("winograd kernel not built")
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((17, 8, 3, 3)).astype(np.float32)
    got = C.conv2d(x, w, padding=1, algorithm=algorithm)
    assert rel_err(got, C.conv2d_reference(x, w, padding=1)) <= TOL.get(algorithm, 1e-5)


def test_1x1_on_1x1_spatial_and_stride():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 13, 1, 1)).astype(np.float32)
    w = rng.standard_normal((11, 13, 1, 1)).astype(np.float32)
    assert rel_err(C.conv2d(x, w, stride=2), C.conv2d_reference(x, w, stride=2)) <= 1e-5
    x = rng.standard_normal((1, 13, 9, 6)).astype(np.float32)
    for stride in (2, 3, (1, 2)):
        assert rel_err(C.conv2d(x, w, stride=stride), C.conv2d_reference(x, w, stride=stride)) <= 1e-5


@pytest.mark.parametrize("cig, cog, groups, hw, stride, pads, blocked", [
    (1, 8, 1, (6, 6), 1, (0, 0, 0, 0), True),       # smallest block: 8 rows, 36 pixels (overlapping last block)
    (16, 9, 1, (5, 7), 1, (0, 0, 0, 0), True),      # rows not a multiple of the block, pixels 35
    (32, 20, 2, (13, 11), 2, (1, 0, 2, 1), True),   # groups, strided, padded: B read from phase planes
    (24, 13, 1, (47, 45), 1, (0, 0, 0, 0), True),   # several tiles
    (70, 16, 1, (9, 9), 1, (0, 0, 0, 0), True),     # large K, few output channels
    (12, 30, 1, (23, 19), 1, (0, 0, 0, 0), True),   # K < rows (column blocks inside), ragged rows and pixels
    (33, 40, 1, (9, 9), 1, (0, 0, 0, 0), True),     # an expansion
    (116, 58, 1, (9, 9), 1, (0, 0, 0, 0), True),    # no expansion, few weights
    (116, 58, 1, (7, 7), 1, (0, 0, 0, 0), "panels"),   # a small plane: weights in panels
    (40, 31, 1, (7, 7), 1, (0, 0, 0, 0), True),     # too few output channels for panels
    (40, 64, 1, (7, 7), 1, (1, 0, 0, 0), "implicit"),  # padded: implicit GEMM on the phase planes
    (40, 64, 1, (13, 15), 2, (0, 0, 0, 0), "implicit"),  # strided: implicit GEMM on the phase planes
    (15, 64, 1, (13, 15), 2, (0, 0, 0, 0), True),      # too few input channels for the implicit GEMM
    (40, 64, 1, (23, 21), 2, (0, 0, 0, 0), True),   # strided, 132 outputs: the NCHW loop on the even phase
    (40, 64, 1, (9, 9), 1, (1, 1, 2, 0), True),     # padded, 108 outputs: the NCHW loop on the padded plane
    (40, 64, 1, (17, 17), 1, (0, 0, 0, 0), True),    # above the panels' 64 pixels: the NCHW loop
    (40, 64, 2, (5, 5), 1, (0, 0, 0, 0), False),    # groups: not in panels; 25 pixels, too few for a block
    (17, 40, 1, (2, 3), 1, (0, 0, 0, 0), False),    # fewer pixels than a register block: sgemm
])
def test_1x1_blocked_loop(cig, cog, groups, hw, stride, pads, blocked, threads, monkeypatch):
    # the rule in ops/conv.py sends these 1x1 convs to blocked_gemm_tile (or sgemm)
    _check_gemm_path(cig, cog, groups, 1, hw, stride, pads, 1, blocked, threads, monkeypatch)


@pytest.mark.parametrize("cig, cog, groups, kernel, hw, stride, pads, dilation, blocked", [
    (3, 64, 1, 7, (29, 31), 2, 3, 1, "implicit"),    # ResNet's conv1 (K = 147 in runs of 12 and 9)
    (3, 32, 1, 7, (29, 31), 2, 3, 3, True),          # K = 147 dilated: taps alone, the NCHW loop
    (16, 16, 1, 3, (13, 11), 1, 1, 1, True),         # K = 144, one tile with an overlapping last block
    (5, 12, 2, 5, (17, 19), 1, (2, 1, 3, 0), 2, True),  # groups, dilation, asymmetric padding
    (9, 20, 1, 3, (40, 37), 2, 1, 1, True),          # several tiles, stride 2, ragged rows
    (3, 24, 1, 3, (15, 15), 2, 1, 1, False),         # K = 27 (an RGB first layer): sgemm with 512-bit tiles
    (64, 128, 1, 3, (9, 9), 2, 1, 1, "implicit"),    # 5x5 out: implicit GEMM on the phase planes
    (64, 128, 1, 3, (17, 17), 2, 1, 1, "implicit"),  # 9x9 out (a wide grid of 10 columns)
    (16, 40, 1, 3, (8, 9), 1, (1, 0, 2, 1), 2, "implicit"),  # dilated, asymmetric padding
    (20, 33, 1, 5, (30, 27), 3, (2, 1, 0, 2), 1, "implicit"),  # stride 3: nine phase planes, two panels
    (13, 40, 1, 3, (8, 9), 1, 1, 1, True),           # too few input channels for the implicit GEMM (K = 117)
    (8, 64, 1, 5, (23, 21), 2, 2, 1, "implicit"),    # ... but K = 200 in runs of 24 and 16
])
def test_kxk_blocked_loop(cig, cog, groups, kernel, hw, stride, pads, dilation, blocked, threads, monkeypatch):
    # im2col convs with K > 32 and at most 64K weights per group run blocked_gemm_tile on the tiles
    _check_gemm_path(cig, cog, groups, kernel, hw, stride, pads, dilation, blocked, threads, monkeypatch)


def blocked_loop_routes(monkeypatch, wide_tiles: bool = True):
    """Patch the blocked loop's routes on (they need AVX2 or AVX-512), with the rules of
    512-bit tiles (AVX-512) or of 256-bit ones (AVX2), so that every CPU runs them."""
    monkeypatch.setattr(C, "_blocked_loop_pays", lambda: True)
    monkeypatch.setattr(C, "_wide_register_tiles", lambda: wide_tiles)


def _gemm_path(run):
    """True (the blocked loop on NCHW), False (sgemm), "panels" (PanelConv1x1) or
    "implicit" (PanelConv)."""
    from pyconv._core import pointwise_panels
    if isinstance(run.call, pointwise_panels.PanelConv1x1):
        return "panels"
    return "implicit" if isinstance(run.call, pointwise_panels.PanelConv) else run.call.blocked


@pytest.mark.parametrize("cig, cog, kernel, hw, stride, pads, blocked", [
    (3, 24, 3, (15, 15), 2, 1, True),         # K = 27: the loop (sgemm with 512-bit tiles)
    (33, 40, 1, (9, 11), 1, 0, False),        # a wide 1x1 conv: sgemm
    (33, 40, 1, (6, 7), 1, 0, False),         # ... also on a small plane (no PanelConv1x1)
    (24, 40, 1, (9, 11), 1, 0, True),         # a narrow one: the loop
    (48, 32, 1, (6, 7), 1, 0, "panels"),      # ... PanelConv1x1 on a small plane
])
def test_routes_with_256_bit_tiles(cig, cog, kernel, hw, stride, pads, blocked, threads, monkeypatch):
    # AVX2's rules (_wide_register_tiles False): first layers take the loop, 1x1 convs only
    # with few input or output channels
    _check_gemm_path(cig, cog, 1, kernel, hw, stride, pads, 1, blocked, threads, monkeypatch, wide_tiles=False)


def _check_gemm_path(cig, cog, groups, kernel, hw, stride, pads, dilation, blocked, threads, monkeypatch,
                     wide_tiles=True):
    # the loop runs where the CPU has AVX2 or AVX-512; patched on, so it is tested on every
    # CPU, with the routing rules of 512-bit tiles unless told otherwise
    rng = np.random.default_rng([cig, cog, groups, kernel, threads])
    w = rng.standard_normal((cog * groups, cig, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(cog * groups).astype(np.float32)
    args = dict(stride=stride, padding=pads, dilation=dilation, groups=groups)
    algorithm = "1x1" if kernel == 1 else "im2col"
    monkeypatch.setattr(C, "_blocked_loop_pays", lambda: False)
    x_shape = (1, cig * groups, *hw)
    without = C.prepare_conv2d(w, b, **args, algorithm=algorithm)
    assert _gemm_path(without._kernel.plan(x_shape, without.output_shape(x_shape), threads)) is False
    blocked_loop_routes(monkeypatch, wide_tiles)
    prepared = C.prepare_conv2d(w, b, **args, activation="relu6", algorithm=algorithm)
    for n in (1, 3):
        x = rng.standard_normal((n, cig * groups, *hw)).astype(np.float32)
        ref0 = C.conv2d_reference(x, w, b, **args)
        assert _gemm_path(prepared._kernel.plan(x.shape, ref0.shape, threads)) == blocked
        # bias + clip applied in registers; with a residual, the shared epilogue on stored rows
        ref = C.conv2d_reference(x, w, b, **args, activation="relu6")
        assert rel_err(prepared(x), ref, np.max(np.abs(ref0))) <= TOL["1x1"]
        res = rng.standard_normal(ref0.shape).astype(np.float32)
        got = prepared(x, residual=res)
        ref = C.conv2d_reference(x, w, b, **args, residual=res, activation="relu6")
        assert rel_err(got, ref, np.max(np.abs(ref0 + res))) <= TOL["1x1"]


def test_blocked_kernel_matches_sgemm():
    # the kernel flag itself (the rule above could route around it): both paths, same output
    from pyconv._core import conv_gemm
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 12, 7, 9)).astype(np.float32)
    w = rng.standard_normal((10, 12)).astype(np.float32)
    results = []
    for blocked in (False, True):
        out = np.full((2, 10, 7, 9), np.nan, np.float32)
        conv = conv_gemm.GemmConv(x.shape, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, 1, 1, (0, 0.0, 0.0, 0.0),
                                  out.shape, 48, 1, blocked)
        assert conv.blocked == blocked
        conv(x, None, out, np.zeros(1, np.float32), np.zeros((1, conv_gemm.scratch_floats(12, 10, 48, 1, 1)), np.float32))
        results.append(out)
    ref = C.conv2d_reference(x, w[:, :, None, None])
    for out in results:
        assert rel_err(out, ref) <= TOL["1x1"]


def test_epilogue_with_residual_and_out():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 10, 11)).astype(np.float32)
    for w, algorithm in [(rng.standard_normal((16, 16, 3, 3)), "auto"), (rng.standard_normal((16, 16, 1, 1)), "1x1"),
                         (rng.standard_normal((16, 1, 3, 3)), "depthwise"), (rng.standard_normal((16, 8, 3, 3)), "im2col")]:
        w = w.astype(np.float32)
        groups = 16 // w.shape[1]
        b = rng.standard_normal(16).astype(np.float32)
        res = rng.standard_normal((2, 16, 10, 11)).astype(np.float32)
        out = np.full((2, 16, 10, 11), np.nan, np.float32)
        pad = w.shape[-1] // 2
        got = C.conv2d(x, w, b, padding=pad, groups=groups, activation="relu6", residual=res, out=out,
                       algorithm=algorithm)
        assert got is out
        ref = C.conv2d_reference(x, w, b, padding=pad, groups=groups, activation="relu6", residual=res)
        assert rel_err(got, ref) <= 2e-5
        assert got.min() >= 0 and got.max() <= 6


def test_auto_algorithm_rule():
    def algo(shape, **kw):
        return C.prepare_conv2d(np.zeros(shape, np.float32), **kw).algorithm

    assert algo((32, 1, 3, 3), groups=32) == "depthwise"
    assert algo((64, 1, 5, 5), groups=32) == "depthwise"  # channel multiplier 2
    assert algo((64, 32, 1, 1)) == "1x1"
    assert algo((64, 32, 1, 1), stride=2) == "1x1"
    assert algo((64, 32, 3, 3), stride=2) == "im2col"
    assert algo((64, 32, 3, 3), dilation=2) == "im2col"
    assert algo((64, 16, 3, 3), groups=2) == "im2col"
    assert algo((8, 3, 3, 3)) == "im2col"  # too few channels for Winograd to pay
    if C._winograd_kernels() is not None:
        assert algo((64, 64, 3, 3), padding=1) == "winograd"
        assert algo((64, 64, 3, 3), algorithm="winograd") == "winograd"
        assert algo((64, 64, 3, 3), algorithm="winograd6") == "winograd6"
    tile = C.winograd_tile_for
    assert tile(1, 64, 64, 56, 56) == 4 and tile(1, 256, 256, 14, 14) == 2 and tile(4, 256, 256, 14, 14) == 4
    assert tile(1, 512, 512, 28, 28) == 2  # F(4x4)'s filters: 770 KiB per tile
    assert tile(1, 512, 512, 7, 7, allow_im2col=True) is None and tile(1, 512, 512, 7, 7) == 2
    assert tile(1, 48, 192, 13, 13, allow_im2col=True) == 2
    # filters in column panels (the blocked loop) stream faster: larger ones pay
    assert tile(1, 512, 512, 28, 28, panels=True) == 4 and tile(1, 512, 512, 7, 7, True, panels=True) == 2
    assert tile(1, 2048, 2048, 7, 7, allow_im2col=True, panels=True) is None
    # ... only where the loop runs: a single tile takes sgemm, so the plain budget
    assert tile(1, 192, 192, 1, 1, allow_im2col=True, panels=True) is None


@pytest.mark.skipif(C._winograd_kernels() is None, reason="pyconv._core.winograd is not built")
def test_auto_chooses_per_input_shape(threads):
    """"auto" on a Winograd-eligible conv picks the kernel per input shape, packs only what it runs."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((96, 96, 3, 3)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    prepared = C.prepare_conv2d(w, b, padding=1, activation="relu")
    assert prepared.algorithm == "winograd"
    small, large = (1, 96, 1, 1), (2, 96, 9, 7)  # 1 output tile: im2col; 2 x 12 F(2x2) tiles: Winograd
    assert prepared.algorithm_for(small) == "im2col" and prepared.algorithm_for(large) == "winograd2"
    for shape in (small, large, small):
        x = rng.standard_normal(shape).astype(np.float32)
        ref = C.conv2d_reference(x, w, b, padding=1, activation="relu")
        np.testing.assert_allclose(prepared(x), ref, atol=1e-4 * np.abs(ref).max())
    assert sorted(prepared._kernel.packed) == [2]
    forced = C.prepare_conv2d(w, b, padding=1, algorithm="winograd")
    assert forced.algorithm_for(small) == "winograd2"  # a forced Winograd never falls back


@pytest.mark.parametrize("shape, kwargs, message", [
    ((8, 8, 3, 3), dict(algorithm="1x1"), "1x1 kernel"),
    ((8, 8, 3, 3), dict(algorithm="depthwise"), "groups == C_in"),
    ((8, 8, 3, 3), dict(algorithm="winograd", stride=2), "stride 1"),
    ((8, 8, 5, 5), dict(algorithm="winograd4"), "3x3 kernel"),
    ((8, 4, 3, 3), dict(algorithm="winograd2", groups=2), "groups=1"),
    ((8, 8, 3, 3), dict(algorithm="fft"), "algorithm must be one of"),
])
def test_forced_algorithm_that_does_not_apply(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        C.prepare_conv2d(np.zeros(shape, np.float32), **kwargs)


# ----------------------------------------------------------------------------- validation

X = np.zeros((1, 4, 6, 6), np.float32)
W = np.zeros((8, 4, 3, 3), np.float32)


@pytest.mark.parametrize("call, match", [
    (lambda: C.conv2d(X[0], W), r"x must have 4 dimensions.*\(4, 6, 6\)"),
    (lambda: C.conv2d(X, W[0]), r"weight must have 4 dimensions.*\(4, 3, 3\)"),
    (lambda: C.conv2d(np.zeros((1, 5, 6, 6), np.float32), W), r"x has 5 channels.*expects 4"),
    (lambda: C.conv2d(X, np.zeros((8, 2, 3, 3), np.float32), groups=3), r"groups=3 must divide"),
    (lambda: C.conv2d(X, np.zeros((9, 2, 3, 3), np.float32), groups=2), r"groups=2 must divide.*\(9, 2, 3, 3\)"),
    (lambda: C.conv2d(X, W, groups=0), r"groups must be a positive int"),
    (lambda: C.conv2d(X, W, padding=-1), r"padding must not be negative"),
    (lambda: C.conv2d(X, W, padding=(1, 2, 3)), r"padding must be an int"),
    (lambda: C.conv2d(X, W, stride=0), r"stride must be >= 1"),
    (lambda: C.conv2d(X, W, dilation=(1, 0)), r"dilation must be >= 1"),
    (lambda: C.conv2d(X, W, dilation=4), r"output size.*\(1, 4, 6, 6\)"),
    (lambda: C.conv2d(np.zeros((1, 4, 2, 9), np.float32), W), r"output size.*\(1, 4, 2, 9\)"),
    (lambda: C.conv2d(np.zeros((1, 4, 0, 5), np.float32), W[:, :, :1, :1], padding=1), r"x must not be empty"),
    (lambda: C.conv2d(np.zeros((0, 4, 6, 6), np.float32), W), r"x must not be empty"),
    (lambda: C.conv_transpose2d(np.zeros((1, 4, 0, 5), np.float32), W[:4]), r"x must not be empty"),
    (lambda: C.conv2d(X, W, bias=np.zeros(7, np.float32)), r"bias must have shape \(8,\)"),
    (lambda: C.conv2d(X, W, residual=np.zeros((1, 8, 6, 6), np.float32)), r"residual must have the output shape"),
    (lambda: C.conv2d(X, W, out=np.zeros((1, 8, 5, 5), np.float32)), r"out must be .*\(1, 8, 4, 4\)"),
    (lambda: C.conv2d(X, W, activation="swish"), r"activation must be"),
    (lambda: C.conv1d(np.zeros((1, 4, 5, 1), np.float32), W[:, :, 0]), r"conv1d x must have 3 dimensions"),
    (lambda: C.conv1d(np.zeros((1, 4, 5), np.float32), W), r"conv1d weight must have 3 dimensions"),
    (lambda: C.conv1d(np.zeros((1, 4, 2), np.float32), W[:, :, 0]), r"output size"),
    (lambda: C.conv1d(np.zeros((1, 4, 9), np.float32), W[:, :, 0], padding=-2), r"padding must not be negative"),
    (lambda: C.conv_transpose2d(X, np.zeros((5, 2, 3, 3), np.float32)), r"x has 4 channels.*expects 5"),
    (lambda: C.conv_transpose2d(X, np.zeros((4, 2, 3, 3), np.float32), groups=3), r"groups=3 must divide"),
    (lambda: C.conv_transpose2d(X, W[:4], stride=2, output_padding=2), r"output_padding"),
    (lambda: C.conv_transpose2d(X, W[:4], padding=5), r"output size"),
    (lambda: C.conv_transpose2d(X, W[:4], padding=-1), r"padding must not be negative"),
    (lambda: C.conv_transpose2d(X[0], W[:4]), r"x must have 4 dimensions"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.complex64, bool])
def test_other_dtypes_raise_type_error(dtype):
    with pytest.raises(TypeError, match="float32"):
        C.conv2d(X.astype(dtype), W)
    with pytest.raises(TypeError, match="float32"):
        C.conv2d(X, W.astype(dtype))


def test_float64_and_non_contiguous_inputs_are_converted():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 9, 5, 2))[..., 0]  # float64, non-contiguous
    w = rng.standard_normal((4, 6, 3, 3))[:, :, ::-1]  # float64, negative strides
    y = C.conv2d(x, w, padding=1)
    assert y.dtype == np.float32
    assert rel_err(y, C.conv2d_reference(x, w, padding=1)) <= 1e-5
    y = C.conv_transpose2d(x, np.asfortranarray(rng.standard_normal((6, 2, 2, 2))))
    assert y.dtype == np.float32 and y.flags.c_contiguous


@pytest.mark.parametrize("algorithm, kernel, groups", [("im2col", 3, 1), ("1x1", 1, 1), ("depthwise", 3, 6)])
def test_residual_may_be_out(algorithm, kernel, groups):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 6, 7, 8)).astype(np.float32)
    w = rng.standard_normal((6, 6 // groups, kernel, kernel)).astype(np.float32)
    res = rng.standard_normal((1, 6, 7, 8)).astype(np.float32)
    ref = C.conv2d_reference(x, w, padding=kernel // 2, groups=groups, residual=res)
    y = C.conv2d(x, w, padding=kernel // 2, groups=groups, residual=res, out=res, algorithm=algorithm)
    assert y is res and rel_err(y, ref) <= 1e-5


def test_out_must_not_overlap_x():
    x = np.ones((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        C.conv2d(x, np.ones((4, 4, 1, 1), np.float32), out=x)
    with pytest.raises(ValueError, match="overlap"):
        C.conv_transpose2d(x, np.ones((4, 4, 1, 1), np.float32), out=x)


# ----------------------------------------------------------------------------- conv1d

def test_conv1d_sweep(threads):
    rng = np.random.default_rng(20 + threads)
    for _ in range(20):
        groups = int(rng.choice([1, 2, 3]))
        cig, cog = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        if rng.random() < 0.3:  # depthwise 1-D
            cig = 1
        k, stride, dilation = int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        padding = (int(rng.integers(0, 4)), int(rng.integers(0, 4))) if rng.random() < 0.5 else int(rng.integers(0, 4))
        length = int(rng.integers((k - 1) * dilation + 1, 40))
        x = rng.standard_normal((int(rng.choice([1, 3])), cig * groups, length)).astype(np.float32)
        w = rng.standard_normal((cog * groups, cig, k)).astype(np.float32)
        b = rng.standard_normal(cog * groups).astype(np.float32)
        got = C.conv1d(x, w, b, stride, padding, dilation, groups, activation="relu")
        ref = C.conv1d_reference(x, w, b, stride, padding, dilation, groups, activation="relu")
        assert got.shape == ref.shape and rel_err(got, ref) <= 1e-5


def test_conv1d_large_kernel_matches_scipy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 1, 3000)).astype(np.float32)
    w = rng.standard_normal((1, 1, 255)).astype(np.float32)
    expected = scipy.signal.correlate(x[0, 0].astype(np.float64), w[0, 0].astype(np.float64), mode="valid")
    got = C.conv1d(x, w)
    assert rel_err(got[0, 0], expected) <= 1e-5
    x = rng.standard_normal((2, 16, 1000)).astype(np.float32)
    w = rng.standard_normal((24, 16, 63)).astype(np.float32)
    assert rel_err(C.conv1d(x, w, padding=31), C.conv1d_reference(x, w, padding=31)) <= 1e-5


# ----------------------------------------------------------------------------- conv_transpose2d

def test_conv_transpose2d_sweep(threads):
    rng = np.random.default_rng(40 + threads)
    for _ in range(25):
        groups = int(rng.choice([1, 2, 3]))
        cig, cog = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        output_padding = tuple(int(rng.integers(0, max(stride[a], dilation[a]))) for a in range(2))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        x = rng.standard_normal((int(rng.choice([1, 3])), cig * groups, *(int(v) for v in rng.integers(1, 9, 2))))
        x = x.astype(np.float32)
        w = rng.standard_normal((cig * groups, cog, kh, kw)).astype(np.float32)
        b = rng.standard_normal(cog * groups).astype(np.float32) if rng.random() < 0.7 else None
        activation = ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]
        args = (x, w, b, stride, pads, output_padding, groups, dilation)
        try:
            ref = C.conv_transpose2d_reference(*args, activation=activation)
        except ValueError:  # padding crops everything for this draw
            continue
        got = C.conv_transpose2d(*args, activation=activation)
        assert got.shape == ref.shape and rel_err(got, ref) <= 1e-5


# ----------------------------------------------------------------------------- registry

def test_registry_conv2d_shape_counts_window_prepare():
    spec = registry.get("conv2d")
    attrs = spec.resolve_attrs({"stride": [2, 2], "padding": [1, 1, 1, 1], "activation": "relu"})
    weights = {"weight": (128, 64, 3, 3), "bias": (128,)}
    shapes = spec.infer_shape([(1, 64, 56, 56)], weights, attrs)
    assert shapes == [(1, 128, 28, 28)]
    counts = spec.count([(1, 64, 56, 56)], weights, attrs, shapes)
    assert counts.params == 128 * 64 * 9 + 128
    assert counts.macs == 128 * 28 * 28 * 64 * 9
    counts = spec.count([(1, 64, 56, 56)], {"weight": (128, 64, 3, 3)}, attrs, shapes)
    assert counts.params == 128 * 64 * 9 and counts.adds == 0
    assert spec.window(attrs, weights) == registry.Window((3, 3), (2, 2), (1, 1))
    with pytest.raises(ValueError, match="channels"):
        spec.infer_shape([(1, 32, 56, 56)], weights, attrs)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)
    res = rng.standard_normal((1, 4, 4, 5)).astype(np.float32)
    w = {"weight": rng.standard_normal((4, 6, 3, 3)).astype(np.float32), "bias": np.ones(4, np.float32)}
    attrs = spec.resolve_attrs({"stride": 2, "padding": 1, "activation": ["clip", 0, 6]})
    call = spec.bind(w, attrs)
    assert isinstance(call, C.PreparedConv2d) and call.algorithm == "im2col"
    expected = spec.reference(x, res, **w, **attrs)
    out = np.empty((1, 4, 4, 5), np.float32)
    assert call(x, res, out=out) is out
    assert rel_err(out, expected) <= 1e-5
    assert rel_err(spec.fn(x, res, **w, **attrs), expected) <= 1e-5


def test_registry_conv1d_and_transpose():
    rng = np.random.default_rng(1)
    spec = registry.get("conv1d")
    attrs = spec.resolve_attrs({"stride": 2, "padding": [3, 1], "dilation": 2})
    w = {"weight": rng.standard_normal((5, 3, 4)).astype(np.float32)}
    shapes = spec.infer_shape([(2, 3, 20)], {"weight": (5, 3, 4)}, attrs)
    x = rng.standard_normal((2, 3, 20)).astype(np.float32)
    y = spec.bind(w, attrs)(x)
    assert [y.shape] == shapes
    assert rel_err(y, spec.reference(x, **w, **attrs)) <= 1e-5
    assert spec.count([(2, 3, 20)], {"weight": (5, 3, 4)}, attrs, shapes).macs == 2 * 5 * shapes[0][2] * 12

    spec = registry.get("conv_transpose2d")
    attrs = spec.resolve_attrs({"stride": 2, "padding": 1, "output_padding": 1})
    weights = {"weight": (6, 4, 3, 3), "bias": (4,)}
    shapes = spec.infer_shape([(1, 6, 5, 7)], weights, attrs)
    assert shapes == [(1, 4, 10, 14)]
    counts = spec.count([(1, 6, 5, 7)], weights, attrs, shapes)
    assert counts.params == 6 * 4 * 9 + 4 and counts.macs == 6 * 5 * 7 * 4 * 9
    x = rng.standard_normal((1, 6, 5, 7)).astype(np.float32)
    w = {"weight": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
         "bias": rng.standard_normal(4).astype(np.float32)}
    out = np.empty(shapes[0], np.float32)
    spec.bind(w, attrs)(x, out=out)
    assert rel_err(out, spec.reference(x, **w, **attrs)) <= 1e-5


# ----------------------------------------------------------------------------- other engines (optional)

def test_against_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 12, 15, 13)).astype(np.float32)
    for w, attrs in [(rng.standard_normal((18, 4, 3, 3)), dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2],
                                                                 group=3)),
                     (rng.standard_normal((24, 1, 5, 5)), dict(strides=[1, 1], pads=[2, 2, 2, 2], group=12))]:
        w = w.astype(np.float32)
        node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"x": x})[0]
        p = attrs["pads"]
        got = C.conv2d(x, w, stride=attrs["strides"], padding=(p[0], p[1], p[2], p[3]),
                       dilation=attrs.get("dilations", 1), groups=attrs["group"])
        assert rel_err(got, expected) <= 1e-5


def test_kernel_objects_refuse_arrays_that_do_not_match_their_plan():
    # GemmConv / DepthwiseConv check every array on every call (they write through raw
    # pointers): wrong shape, dtype, layout or too small a work buffer is a ValueError
    from pyconv._core import conv_gemm, depthwise
    x = np.zeros((1, 8, 6, 6), np.float32)
    out = np.zeros((1, 8, 6, 6), np.float32)
    gemm = conv_gemm.GemmConv(x.shape, np.zeros((8, 72), np.float32), None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 3, 3,
                              (0, 0.0, 0.0, 0.0), out.shape, 32, 1)
    phases = np.zeros(conv_gemm.phase_floats(8, (1, 1), 8, 8), np.float32)
    tiles = np.zeros((1, conv_gemm.scratch_floats(72, 8, 32, 3, 3)), np.float32)
    gemm(x, None, out, phases, tiles)
    dw = depthwise.DepthwiseConv(x.shape, np.zeros((8, 1, 3, 3), np.float32), None, (1, 1), (1, 1, 1, 1), (1, 1),
                                 (0, 0.0, 0.0, 0.0), out.shape, 1)
    planes = np.zeros((1, depthwise.scratch_floats(6, 6, 3, 3, (1, 1), (1, 1))), np.float32)
    dw(x, None, out, planes)
    bad_calls = [
        lambda: gemm(np.zeros((1, 8, 7, 6), np.float32), None, out, phases, tiles),      # another shape
        lambda: gemm(x.astype(np.float64), None, out, phases, tiles),                    # dtype
        lambda: gemm(x, None, np.zeros((1, 8, 6, 6), np.float32)[:, :, :, ::-1], phases, tiles),  # layout
        lambda: gemm(x, np.zeros((1, 8, 6, 5), np.float32), out, phases, tiles),          # residual shape
        lambda: gemm(x, None, out, phases[:10], tiles),                                   # phase buffer
        lambda: gemm(x, None, out, phases, tiles[:, :5]),                                 # tile buffer
        lambda: dw(x, None, out, planes[:, :3]),
        lambda: dw(np.zeros((2, 8, 6, 6), np.float32), None, out, planes),
        lambda: conv_gemm.GemmConv(x.shape, np.zeros((8, 71), np.float32), None, (1, 1), (1, 1, 1, 1), (1, 1),
                                   1, 3, 3, (0, 0.0, 0.0, 0.0), out.shape, 32, 1),          # weights of another K
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            call()


# ----------------------------------------------------------------------------- fused max pools

def _pool_path(run):
    """Which kernel pools in its output loop (its class name), or "after" (a work buffer,
    then max_pool2d)."""
    name = type(run.call).__name__
    return name if name in ("GemmConv", "WinogradConv") else "after"


@pytest.mark.parametrize("pool", C.FUSED_POOLS)
@pytest.mark.parametrize("algorithm", ["im2col", "1x1", "depthwise", "winograd2", "winograd4", "winograd6"])
def test_conv2d_pool_sweep(algorithm, pool, threads):
    # conv2d(pool=...) against conv2d_reference then the reference max pool, on odd and
    # even output sizes (a last row or column without a window, or in ceil mode with a
    # clipped one), batches, groups, strides
    if algorithm.startswith("winograd") and C._winograd_kernels() is None:
        pytest.skip("winograd kernel not built")
    rng = np.random.default_rng([len(algorithm), ord(algorithm[-1]), threads, len(pool)])
    done = 0
    while done < 25:
        case = random_case(rng, algorithm)
        case["residual"] = None
        if min(C.conv2d_reference(**case).shape[2:]) < C.POOL_KINDS[pool][0]:
            continue
        ref = C.conv2d_reference(**case, pool=pool)
        got = C.conv2d(**case, algorithm=algorithm, pool=pool)
        assert got.dtype == np.float32 and got.shape == ref.shape
        err = rel_err(got, ref, np.max(np.abs(C.conv2d_reference(**dict(case, activation=None)))))
        assert err <= TOL[algorithm], (algorithm, {k: getattr(v, "shape", v) for k, v in case.items()}, err)
        done += 1


@pytest.mark.parametrize("cig, cog, kernel, hw, stride, pads, activation, algorithm, pool, path", [
    (3, 64, 3, (30, 31), 1, 1, "relu", "auto", "max2x2", "GemmConv"),     # an RGB first layer, the blocked loop
    (9, 40, 3, (21, 20), 2, 1, "relu6", "im2col", "max2x2", "GemmConv"),  # strided, the blocked loop into scratch
    (3, 128, 3, (7, 8), 2, 1, "relu", "im2col", "max2x2", "GemmConv"),    # 16 pixels: sgemm, output channels split
    (24, 40, 1, (17, 13), 1, 0, "relu", "1x1", "max2x2", "GemmConv"),     # B read straight from x
    (3, 64, 3, (61, 45), 2, 0, "relu", "auto", "max3x3s2", "GemmConv"),   # SqueezeNet's first layer: tiles overlap
    (5, 24, 3, (23, 30), 1, 1, None, "im2col", "max3x3s2", "GemmConv"),   # sgemm (fewer than 32 channels)
    (3, 128, 3, (9, 9), 1, 1, "relu", "im2col", "max3x3s2", "GemmConv"),  # one pooled row, channels split
    (24, 40, 1, (17, 13), 1, 0, "relu", "1x1", "max3x3s2", "GemmConv"),
    (3, 32, 3, (31, 35), 2, 0, "relu", "auto", "max3x3s2_ceil", "GemmConv"),   # odd output: no clipped window
    (3, 32, 3, (30, 33), 2, 0, "relu", "auto", "max3x3s2_ceil", "after"),      # even output: clipped windows
    (20, 48, 3, (15, 14), 1, 1, "relu", "winograd2", "max2x2", "WinogradConv"),
    (32, 64, 3, (29, 27), 1, (1, 0, 2, 1), "relu", "winograd4", "max2x2", "WinogradConv"),   # panels, odd Ho, Wo
    (17, 20, 3, (23, 22), 1, 1, None, "winograd6", "max2x2", "WinogradConv"),
    (64, 64, 3, (57, 56), 1, 1, ("leaky_relu", 0.2), "auto", "max2x2", "WinogradConv"),
    (32, 32, 3, (12, 12), 1, 1, ("leaky_relu", -0.5), "winograd4", "max2x2", "after"),  # decreasing: pooled after
    (20, 48, 3, (15, 14), 1, 1, "relu", "winograd4", "max3x3s2", "after"),
    (40, 64, 1, (6, 7), 1, 0, "relu", "1x1", "max2x2", "after"),          # PanelConv1x1
    (40, 64, 3, (9, 9), 1, 1, None, "im2col", "max2x2", "after"),         # PanelConv
    (40, 64, 3, (9, 9), 1, 1, None, "im2col", "max3x3s2_ceil", "after"),
    (16, 16, 3, (11, 10), 1, 1, "relu", "depthwise", "max2x2", "after"),
    (16, 16, 3, (11, 10), 1, 1, "relu", "depthwise", "max3x3s2", "after"),
])
def test_conv2d_pool_paths(cig, cog, kernel, hw, stride, pads, activation, algorithm, pool, path, threads,
                           monkeypatch):
    # GemmConv pools in its output loop, and so does Winograd 2x2; other kernels (and
    # Winograd with an activation that decreases somewhere, which its pooled epilogue cannot
    # follow, or ceil mode's clipped windows) write a work buffer that max_pool2d reads.
    # Each path against the reference, batch 1 and 3.
    # The routes to the panel kernels need the blocked loop: patched on, as on AVX-512.
    blocked_loop_routes(monkeypatch)
    rng = np.random.default_rng([cig, cog, kernel, threads])
    groups = cig if algorithm == "depthwise" else 1
    w = rng.standard_normal((cog, cig // groups, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(cog).astype(np.float32)
    args = dict(stride=stride, padding=pads, groups=groups, activation=activation)
    prepared = C.prepare_conv2d(w, b, **args, algorithm=algorithm, pool=pool)
    for n in (1, 3):
        x = rng.standard_normal((n, cig, *hw)).astype(np.float32)
        run = prepared._plan(x.shape)[1]
        assert _pool_path(run) == path
        ref = C.conv2d_reference(x, w, b, **args, pool=pool)
        out = np.full(ref.shape, np.nan, np.float32)
        assert prepared(x, out=out) is out
        tol = TOL.get(prepared.algorithm_for(x.shape), 1e-5)
        assert rel_err(out, ref, np.max(np.abs(C.conv2d_reference(x, w, b, **dict(args, activation=None))))) <= tol


@pytest.mark.parametrize("algorithm, pool", [("im2col", "max2x2"), ("winograd4", "max2x2"), ("im2col", "max3x3s2")])
def test_conv2d_pool_propagates_nan(algorithm, pool):
    # a window holding a NaN pools to NaN, as max_pool2d does (the fused max is NaN-aware)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    x[0, 3, 5, 6] = np.nan
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    got = C.conv2d(x, w, padding=1, activation="relu", algorithm=algorithm, pool=pool)
    ref = C.conv2d_reference(x, w, padding=1, activation="relu", pool=pool)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(ref).any() and not np.isnan(ref).all()


def test_conv2d_pool_bad_arguments():
    x = np.zeros((1, 8, 6, 6), np.float32)
    w = np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(ValueError, match="pool must be None or one of"):
        C.conv2d(x, w, pool="avg2x2")
    with pytest.raises(ValueError, match="at least 2x2"):
        C.conv2d(x[:, :, :3], w, pool="max2x2")            # a 1x4 output has no 2x2 window
    with pytest.raises(ValueError, match="at least 3x3"):
        C.conv2d(x[:, :, :4], w, pool="max3x3s2_ceil")     # nor a 2x4 one a 3x3 window
    with pytest.raises(ValueError, match="residual"):
        C.conv2d(x, w, padding=1, residual=np.zeros((1, 8, 3, 3), np.float32), pool="max2x2")
    spec = registry.get("conv2d")
    with pytest.raises(ValueError, match="pool"):
        spec.infer_shape([(1, 8, 6, 6)], {"weight": (8, 8, 3, 3)}, spec.resolve_attrs({"pool": "max3x3"}))
    with pytest.raises(ValueError, match="residual"):
        spec.infer_shape([(1, 8, 6, 6), (1, 8, 2, 2)], {"weight": (8, 8, 3, 3)},
                         spec.resolve_attrs({"pool": "max2x2"}))


@pytest.mark.parametrize("pool, pooled, window", [("max2x2", 6, 5), ("max3x3s2", 5, 7), ("max3x3s2_ceil", 6, 7)])
def test_registry_conv2d_pool_shape_counts_window(pool, pooled, window):
    # a pooled conv2d costs the conv's MACs plus k*k - 1 comparisons per pooled output, and
    # sees the conv's window widened by k - 1 strides, at twice the stride
    spec = registry.get("conv2d")
    attrs = spec.resolve_attrs({"stride": 2, "padding": 1, "pool": pool})
    weights = {"weight": (16, 8, 3, 3), "bias": (16,)}
    shapes = spec.infer_shape([(2, 8, 23, 23)], weights, attrs)
    assert shapes == [(2, 16, pooled, pooled)]
    counts = spec.count([(2, 8, 23, 23)], weights, attrs, shapes)
    k = C.POOL_KINDS[pool][0]
    assert counts.macs == 2 * 16 * 12 * 12 * 8 * 9
    assert counts.adds == 2 * 16 * 12 * 12 + (k * k - 1) * 2 * 16 * pooled * pooled
    assert spec.window(attrs, weights) == registry.Window((window, window), (4, 4), (1, 1))


def test_kernel_objects_refuse_a_pool_they_cannot_fuse():
    from pyconv._core import conv_gemm
    x = np.zeros((1, 8, 6, 6), np.float32)
    wmat = np.zeros((8, 72), np.float32)

    def make(out_shape, tile_cols, pool=2):
        return conv_gemm.GemmConv(x.shape, wmat, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 3, 3, (0, 0.0, 0.0, 0.0),
                                  out_shape, tile_cols, 1, pool=pool)
    gemm = make((1, 8, 3, 3), 12)
    phases = np.zeros(conv_gemm.phase_floats(8, (1, 1), 8, 8), np.float32)
    tiles = np.zeros((1, conv_gemm.scratch_floats(72, 8, 12, 3, 3, True)), np.float32)
    gemm(x, None, np.zeros((1, 8, 3, 3), np.float32), phases, tiles)
    with pytest.raises(ValueError, match="pairs"):
        make((1, 8, 3, 3), 18)                   # a tile ending inside a pair of rows
    with pytest.raises(ValueError, match="max-pooled"):
        make((1, 8, 6, 6), 12)                   # out not pooled
    make((1, 8, 2, 2), 18, pool=3)               # 3x3 windows: pairs of rows and the row after them
    with pytest.raises(ValueError, match="one row"):
        make((1, 8, 2, 2), 12, pool=3)
    with pytest.raises(ValueError, match="max-pooled"):
        make((1, 8, 3, 3), 18, pool=3)
    with pytest.raises(ValueError, match="pool must be"):
        make((1, 8, 3, 3), 12, pool=4)
    with pytest.raises(ValueError, match="residual"):
        gemm(x, np.zeros((1, 8, 3, 3), np.float32), np.zeros((1, 8, 3, 3), np.float32), phases, tiles)
    with pytest.raises(ValueError):
        gemm(x, None, np.zeros((1, 8, 3, 3), np.float32), phases, tiles[:, :-16])   # no room for the tile
    if C._winograd_kernels() is None:
        return
    W = C._winograd_kernels()
    packed = W.winograd_pack(np.zeros((8, 8, 3, 3), np.float32), 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        W.WinogradConv(x.shape, packed, 2, None, (1, 1, 1, 1), (2, 0.0, 0.0, -0.1), (1, 8, 3, 3), 1, max_pool=True)
    conv = W.WinogradConv(x.shape, packed, 2, None, (1, 1, 1, 1), (0, 0.0, 0.0, 0.0), (1, 8, 3, 3), 1, max_pool=True)
    with pytest.raises(ValueError, match="residual"):
        conv(x, np.zeros((1, 8, 3, 3), np.float32), np.zeros((1, 8, 3, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        conv(x, None, np.zeros((1, 8, 6, 6), np.float32))
