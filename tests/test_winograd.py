"""Winograd F(m x m, 3 x 3) kernel (pyconv._core.winograd) against a float64 direct convolution.

Tolerance: max |winograd - reference| <= TOL[m] * max(1, max |reference|).  The
measured errors (docs/winograd.md) on these sizes are about 1e-7 (F2), 1e-6 (F4)
and 5e-6 (F6) relative to the output's magnitude; the bounds leave ~10x room for
other data while any indexing or transform bug produces O(1) errors.
"""
import numpy as np
import pytest

from pyconv._core import winograd_transforms
from pyconv._core.winograd import WinogradConv, winograd_conv, winograd_pack
from pyconv.ops._args import apply_activation_reference, parse_activation

TOL = {2: 1e-5, 4: 3e-5, 6: 1e-4}
TILES = (2, 4, 6)
ACTIVATIONS = [None, "relu", "relu6", ("clip", -0.5, 0.25), ("leaky_relu", 0.1)]


def direct_conv3x3(x, w, bias=None, pads=(0, 0, 0, 0), residual=None, activation=None):
    """Float64 reference: stride 1, dilation 1, groups 1."""
    top, left, bottom, right = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho, wo = xp.shape[2] - 2, xp.shape[3] - 2
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(3):
        for j in range(3):
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j].astype(np.float64), xp[:, :, i:i + ho, j:j + wo])
    if bias is not None:
        out += bias.astype(np.float64)[None, :, None, None]
    if residual is not None:
        out += residual
    return apply_activation_reference(out, activation)


def run(x, w, tile, bias=None, pads=(0, 0, 0, 0), residual=None, activation=None, nthreads=1, panels=False,
        **kw):
    top, left, bottom, right = pads
    out = np.full((x.shape[0], w.shape[0], x.shape[2] + top + bottom - 2, x.shape[3] + left + right - 2),
                  np.nan, dtype=np.float32)
    winograd_conv(x, winograd_pack(w, tile, panels), tile, bias, pads, parse_activation(activation), residual,
                  out, nthreads, **kw)
    return out


def assert_close(got, ref, tile):
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max()) if got.size else 0.0
    assert np.isfinite(got).all()
    assert err <= TOL[tile] * scale, f"F({tile}) error {err:.3g} > {TOL[tile]} * {scale:.3g}"


def random_case(rng, n, ci, co, h, w):
    x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
    wt = (rng.standard_normal((co, ci, 3, 3)) * np.sqrt(2.0 / (9 * ci))).astype(np.float32)
    return x, wt


def test_reference_matches_scipy_correlate2d():
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    x, w = random_case(rng, 1, 1, 1, 6, 9)
    ref = direct_conv3x3(x, w, pads=(1, 2, 0, 1))
    xp = np.pad(x[0, 0].astype(np.float64), ((1, 0), (2, 1)))
    np.testing.assert_allclose(ref[0, 0], signal.correlate2d(xp, w[0, 0].astype(np.float64), mode="valid"),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", TILES)
def test_transform_matrices_are_exact(tile):
    assert winograd_transforms.verify(tile) < 1e-12
    at, g, bt = winograd_transforms.transform_matrices(tile)
    assert at.shape == (tile, tile + 2) and g.shape == (tile + 2, 3) and bt.shape == (tile + 2, tile + 2)
    assert np.abs(bt).max() == pytest.approx(1.0)


def test_generated_kernels_header_is_current():
    from pathlib import Path

    header = Path(winograd_transforms.__file__).with_name(winograd_transforms.KERNELS_HEADER)
    assert header.read_text() == winograd_transforms.kernels_source(), \
        "regenerate with: python -m pyconv._core.winograd_transforms"


@pytest.mark.parametrize("tile", TILES)
def test_pack_is_g_g_gt(tile):
    rng = np.random.default_rng(tile)
    _, w = random_case(rng, 1, 3, 5, 1, 1)
    _, g, _ = winograd_transforms.transform_matrices(tile)
    u = winograd_pack(w, tile)
    n = tile + 2
    assert u.shape == (n * n, 3, 5) and u.dtype == np.float32 and u.flags.c_contiguous
    co, ci = 4, 2
    np.testing.assert_allclose(u[:, ci, co].reshape(n, n), g @ w[co, ci].astype(np.float64) @ g.T,
                               rtol=1e-6, atol=1e-6)


# (N, Ci, Co, H, W, pads): odd sizes, H != W, 1x1 and 2x2 inputs, asymmetric pads,
# channel counts not multiples of 8/16, batch 1 and 3.
SHAPES = [
    (1, 1, 1, 1, 1, (1, 1, 1, 1)),
    (1, 3, 17, 2, 2, (1, 1, 1, 1)),
    (3, 17, 3, 7, 5, (0, 2, 1, 0)),
    (1, 16, 16, 9, 13, (2, 0, 0, 3)),
    (3, 5, 8, 11, 4, (1, 1, 1, 1)),
    (1, 33, 31, 14, 14, (0, 0, 0, 0)),
    (2, 1, 3, 3, 3, (0, 0, 0, 0)),
    (1, 20, 7, 5, 23, (3, 1, 2, 0)),
    (2, 35, 33, 6, 37, (1, 2, 0, 1)),  # 16x16 layout transposes, overlapping last block
]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + "p" + "".join(map(str, s[5])))
@pytest.mark.parametrize("nthreads", [1, 2])
def test_matches_direct_convolution(tile, shape, nthreads):
    n, ci, co, h, w, pads = shape
    rng = np.random.default_rng(hash((tile, shape)) % 2**32)
    x, wt = random_case(rng, n, ci, co, h, w)
    bias = rng.standard_normal(co).astype(np.float32)
    assert_close(run(x, wt, tile, bias, pads, nthreads=nthreads), direct_conv3x3(x, wt, bias, pads), tile)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape", [
    (1, 20, 40, 9, 30, (1, 1, 1, 1)),    # 40 output channels: two overlapping column blocks
    (2, 35, 33, 6, 37, (1, 2, 0, 1)),    # batch 2, ragged tile rows
    (1, 7, 32, 23, 17, (0, 1, 2, 0)),    # exactly one column block, K < 8
    (3, 16, 48, 2, 2, (1, 1, 1, 1)),     # fewer tiles per block than a register block: sgemm
])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_blocked_gemm_matches_direct_convolution(tile, shape, nthreads):
    # U in column panels: the per-position GEMMs by blocked_gemm (deep layers on AVX-512
    # CPUs), on every CPU
    n, ci, co, h, w, pads = shape
    rng = np.random.default_rng([tile, n, ci, co, nthreads])
    x, wt = random_case(rng, n, ci, co, h, w)
    bias = rng.standard_normal(co).astype(np.float32)
    ref = direct_conv3x3(x, wt, bias, pads)
    for block_bytes in (1, 1 << 20):   # a tile row per block, and whole images
        for weight_limit in (0, 1 << 30):   # threads share each block's stages, or run whole blocks
            got = run(x, wt, tile, bias, pads, nthreads=nthreads, panels=True, block_bytes=block_bytes,
                      per_thread_weight_bytes=weight_limit)
            assert_close(got, ref, tile)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_fused_epilogue(tile, activation):
    rng = np.random.default_rng(7)
    x, w = random_case(rng, 3, 6, 5, 9, 7)
    pads = (1, 0, 2, 1)
    bias = rng.standard_normal(5).astype(np.float32)
    residual = rng.standard_normal((3, 5, 10, 6)).astype(np.float32)
    for nthreads in (1, 2):
        got = run(x, w, tile, bias, pads, residual, activation, nthreads)
        assert_close(got, direct_conv3x3(x, w, bias, pads, residual, activation), tile)
        got = run(x, w, tile, None, pads, residual, activation, nthreads)
        assert_close(got, direct_conv3x3(x, w, None, pads, residual, activation), tile)


@pytest.mark.parametrize("tile", TILES)
def test_residual_may_be_the_output_buffer(tile):
    rng = np.random.default_rng(3)
    x, w = random_case(rng, 1, 4, 4, 6, 6)
    out = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    ref = direct_conv3x3(x, w, pads=(1, 1, 1, 1), residual=out.astype(np.float64), activation="relu")
    winograd_conv(x, winograd_pack(w, tile), tile, None, (1, 1, 1, 1), parse_activation("relu"), out, out, 1)
    assert_close(out, ref, tile)


@pytest.mark.parametrize("tile", TILES)
def test_input_may_be_the_output_buffer(tile):
    """In-place convolution (same shape in and out): x is read after early blocks wrote out."""
    rng = np.random.default_rng(4)
    x, w = random_case(rng, 2, 5, 5, 11, 9)
    ref = direct_conv3x3(x, w, pads=(1, 1, 1, 1))
    winograd_conv(x, winograd_pack(w, tile), tile, None, (1, 1, 1, 1), parse_activation(None), None, x, 2,
                  block_bytes=1)
    assert_close(x, ref, tile)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("block_bytes", [1, 20000])
@pytest.mark.parametrize("schedule", ["thread per block", "threads share stages"])
def test_small_blocks_span_images(tile, block_bytes, schedule):
    """One or a few tile rows per block: blocks start mid-image and cross image boundaries.

    Both multi-thread schedules: per-thread blocks (small filters) and shared
    stages with the GEMM split by position (filters above per_thread_weight_bytes)."""
    weight_limit = 0 if schedule == "threads share stages" else 1 << 30
    rng = np.random.default_rng(11)
    x, w = random_case(rng, 3, 7, 9, 13, 10)
    bias = rng.standard_normal(9).astype(np.float32)
    pads = (1, 2, 1, 0)
    for nthreads in (1, 2):
        got = run(x, w, tile, bias, pads, nthreads=nthreads, block_bytes=block_bytes,
                  per_thread_weight_bytes=weight_limit)
        assert_close(got, direct_conv3x3(x, w, bias, pads), tile)


@pytest.mark.parametrize("tile", TILES)
def test_randomized_sweep(tile):
    rng = np.random.default_rng(100 + tile)
    for _ in range(12):
        n = int(rng.integers(1, 4))
        ci, co = (int(v) for v in rng.integers(1, 24, size=2))
        h, w = (int(v) for v in rng.integers(1, 17, size=2))
        pads = tuple(int(v) for v in rng.integers(0, 3, size=4))
        if h + pads[0] + pads[2] < 3 or w + pads[1] + pads[3] < 3:
            continue
        x, wt = random_case(rng, n, ci, co, h, w)
        bias = rng.standard_normal(co).astype(np.float32)
        activation = ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))]
        got = run(x, wt, tile, bias, pads, activation=activation, nthreads=int(rng.integers(1, 3)))
        assert_close(got, direct_conv3x3(x, wt, bias, pads, activation=activation), tile)


def test_agrees_with_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    x, w = random_case(rng, 2, 12, 10, 15, 11)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 2, 1])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for tile in TILES:  # ONNX pads are (top, left, bottom, right) too
        np.testing.assert_allclose(run(x, w, tile, pads=(1, 0, 2, 1)), expected, atol=TOL[tile] * 10, rtol=0)


# ---------------------------------------------------------------------------- bad arguments

def good_args():
    x = np.zeros((1, 3, 5, 5), np.float32)
    u = winograd_pack(np.zeros((4, 3, 3, 3), np.float32), 4)
    return dict(x=x, packed=u, tile=4, bias=None, pads=(1, 1, 1, 1), epilogue=parse_activation(None),
                residual=None, out=np.zeros((1, 4, 5, 5), np.float32), nthreads=1)


def test_good_args_run():
    winograd_conv(**good_args())


@pytest.mark.parametrize("change", [
    dict(tile=3),
    dict(tile=4.5),
    dict(x=np.zeros((1, 3, 5, 5), np.float64)),
    dict(x=np.zeros((1, 3, 5, 10), np.float32)[..., ::2]),
    dict(x=np.zeros((3, 5, 5), np.float32)),
    dict(x=np.zeros((1, 2, 5, 5), np.float32)),
    dict(x=[[[[0.0]]]]),
    dict(packed=winograd_pack(np.zeros((4, 3, 3, 3), np.float32), 2)),
    dict(packed=np.zeros((36, 3), np.float32)),
    dict(packed=winograd_pack(np.zeros((40, 3, 3, 3), np.float32), 4, panels=True)),   # out: 4 channels
    dict(pads=(1, 1, 1)),
    dict(pads=(1, -1, 1, 1)),
    dict(pads=None),
    dict(pads=(0, 0, 0, 0), x=np.zeros((1, 3, 2, 5), np.float32)),
    dict(out=np.zeros((1, 4, 5, 4), np.float32)),
    dict(out=np.zeros((1, 4, 5, 5), np.float64)),
    dict(out=np.zeros((1, 4, 5, 10), np.float32)[..., ::2]),
    dict(bias=np.zeros(3, np.float32)),
    dict(bias=np.zeros(4, np.float64)),
    dict(residual=np.zeros((1, 4, 5, 4), np.float32)),
    dict(epilogue=("relu",)),
    dict(epilogue=None),
    dict(nthreads=0),
], ids=lambda c: ",".join(f"{k}" for k in c))
def test_bad_arguments_raise_value_error(change):
    args = good_args()
    args.update(change)
    with pytest.raises(ValueError):
        winograd_conv(**args)


@pytest.mark.parametrize("weight", [
    np.zeros((4, 3, 5, 5), np.float32),
    np.zeros((4, 3, 3), np.float32),
    np.zeros((4, 3, 3, 3), np.float64),
    np.zeros((0, 3, 3, 3), np.float32),
    np.zeros((4, 3, 3, 6), np.float32)[..., ::2],
])
def test_pack_rejects_bad_weight(weight):
    with pytest.raises(ValueError):
        winograd_pack(weight, 4)


def test_bound_conv_checks_its_arrays_per_call():
    """WinogradConv is built for one shape; each call checks dtype, contiguity and shape."""
    args = good_args()
    x, out = args.pop("x"), args.pop("out")
    residual = args.pop("residual")
    conv = WinogradConv(x.shape, args["packed"], args["tile"], args["bias"], args["pads"], args["epilogue"],
                        out.shape, args["nthreads"])
    conv(x, residual, out)
    for bad in [(x.astype(np.float64), None, out), (x[:, :, :4], None, out), (x, None, out[..., :4]),
                (x, np.zeros((1, 4, 5, 4), np.float32), out),
                (np.zeros((1, 3, 5, 10), np.float32)[..., ::2], None, out)]:
        with pytest.raises(ValueError):
            conv(*bad)
    with pytest.raises(TypeError):
        conv([[[[0.0]]]], None, out)


def test_panels_must_match_out_channels():
    args = good_args()
    args.update(packed=winograd_pack(np.zeros((40, 3, 3, 3), np.float32), 4, panels=True),
                out=np.zeros((1, 40, 5, 5), np.float32))
    winograd_conv(**args)
    args["out"] = np.zeros((1, 72, 5, 5), np.float32)   # 3 panels, not 2
    with pytest.raises(ValueError, match="packed"):
        winograd_conv(**args)


def test_pack_panels_need_32_output_channels():
    with pytest.raises(ValueError, match="32 output channels"):
        winograd_pack(np.zeros((31, 3, 3, 3), np.float32), 2, panels=True)


def test_pack_rejects_bad_tile():
    with pytest.raises(ValueError):
        winograd_pack(np.zeros((4, 3, 3, 3), np.float32), 8)
