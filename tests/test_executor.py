"""The executor: results against a float64 reference interpreter, fusion, planning, threads, errors."""
import threading

import numpy as np
import pytest

import pyconv
from pyconv import registry
from pyconv.errors import InputError, ModelError
from pyconv.graph.builder import GraphBuilder
from pyconv.graph.format import Graph, read_graph
from pyconv.graph.shapes import topological_order

RTOL = 1e-4  # float32 kernels (incl. Winograd F(4,3), ~1e-6) vs float64 references, relative to max |output|


def needs(*ops):
    missing = [op for op in ops if op not in registry.all_ops()]
    return pytest.mark.skipif(bool(missing), reason=f"ops not registered yet: {missing}")


def reference_run(graph: Graph, feeds):
    """Evaluate the graph as stored (no folding/fusion) with every op's float64 reference."""
    values = {k: np.asarray(v, dtype=np.float64) for k, v in feeds.items()}
    for node in topological_order(graph):
        spec = registry.get(node.op)
        weights = {role: graph.weights[key] for role, key in node.weights.items()}
        result = spec.reference(*[values[t] for t in node.inputs], **weights, **node.attrs)
        results = result if len(node.outputs) > 1 else [result]
        values.update(zip(node.outputs, (np.asarray(r) for r in results)))
    return {o.name: values[o.tensor] for o in graph.outputs}


def assert_close(actual, expected, rtol=RTOL):
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol} x {scale:.3g}"


def _bn(b, x, c, rng, name=None):
    return b.batch_norm(x, mean=rng.standard_normal(c) * 0.1, var=rng.uniform(0.5, 1.5, c),
                        weight=rng.uniform(0.5, 1.5, c), bias=rng.standard_normal(c) * 0.1, name=name)


def small_resnet(rng, classes=10):
    """conv-bn-relu, a residual block, pooling, 1x1, depthwise and a classifier head."""
    b = GraphBuilder()
    x = b.input("input", ["N", 3, "H", "W"])
    w = lambda *s: rng.standard_normal(s).astype(np.float32) * (2.0 / np.prod(s[1:])) ** 0.5
    y = b.relu(_bn(b, b.conv2d(x, weight=w(8, 3, 3, 3), bias=np.zeros(8), padding=1, name="conv1"), 8, rng))
    z = _bn(b, b.conv2d(y, weight=w(8, 8, 3, 3), padding=1, name="conv2"), 8, rng)
    y = b.relu(b.add(z, y, name="residual"))
    y = b.max_pool2d(y, kernel_size=2)
    y = b.relu6(b.conv2d(y, weight=w(16, 8, 1, 1), bias=rng.standard_normal(16), name="expand"))
    y = b.leaky_relu(b.conv2d(y, weight=w(16, 1, 3, 3), padding=1, groups=16, name="depthwise"), negative_slope=0.1)
    y = b.conv2d(y, weight=w(24, 16, 3, 3), padding=(1, 0), name="conv3x3_16")
    y = b.flatten(b.global_avg_pool2d(y))
    b.output(b.softmax(b.linear(y, weight=w(classes, 24), bias=rng.standard_normal(classes)), axis=1), "probs")
    return b


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "resnet.npz"
    small_resnet(np.random.default_rng(0)).save(path, metadata={"task": "classification"})
    return path


NET_OPS = ("conv2d", "batch_norm", "relu", "relu6", "leaky_relu", "add", "max_pool2d", "global_avg_pool2d",
           "flatten", "linear", "softmax")


@needs(*NET_OPS)
@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (3, 3, 9, 13), (2, 3, 2, 6)])
def test_results_match_reference_for_batches_and_sizes(resnet_file, shape):
    model = pyconv.load(resnet_file)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = model.run({"input": x})
    assert list(out) == ["probs"] and out["probs"].shape == (shape[0], 10)
    assert_close(out["probs"], reference_run(read_graph(resnet_file), {"input": x})["probs"])
    np.testing.assert_array_equal(model(x), out["probs"])  # deterministic, same plan


@needs(*NET_OPS)
def test_batch_norm_folded_and_activations_and_residual_fused(resnet_file):
    model = pyconv.load(resnet_file)
    ops = [n.op for n in model.optimized.nodes]
    assert "batch_norm" not in ops and "relu" not in ops and "relu6" not in ops and "leaky_relu" not in ops
    assert "add" not in ops  # conv2 absorbed bn, the residual add and the relu after it
    conv2 = model.optimized.node("conv2")
    assert len(conv2.inputs) == 2 and conv2.attrs["activation"] == "relu"
    assert model.optimized.node("depthwise").attrs["activation"] == ["leaky_relu", 0.1]
    unfused = pyconv.load(resnet_file, optimize=False)
    assert [n.op for n in unfused.optimized.nodes].count("batch_norm") == 2
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_close(model(x), unfused(x))


@needs(*NET_OPS)
def test_plans_are_cached_per_input_shape(resnet_file):
    model = pyconv.load(resnet_file)
    rng = np.random.default_rng(3)
    for shape in [(1, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 8), (1, 3, 10, 6), (1, 3, 8, 8)]:
        model(rng.standard_normal(shape).astype(np.float32))
    assert len(model._plans) == 3


@needs(*NET_OPS)
def test_memory_plan_reuses_buffers(resnet_file):
    model = pyconv.load(resnet_file)
    plan = model.memory_plan({"input": (1, 3, 32, 32)})
    assert plan["activation_bytes"] < plan["unplanned_activation_bytes"]
    assert plan["weight_bytes"] == sum(a.nbytes for a in model.optimized.weights.values())
    assert plan["nodes"] < plan["nodes_in_file"]


@needs("relu", "sigmoid", "tanh")
def test_chain_of_inplace_ops_uses_one_buffer_besides_input_and_output():
    b = GraphBuilder()
    y = b.input("x", [1, 4, 8, 8])
    for i in range(6):
        y = (b.sigmoid if i % 2 else b.tanh)(y)
    b.output(b.relu(y))
    graph = b.build()
    model = pyconv.Model(graph)
    plan = model.memory_plan()
    assert plan["buffers"] == 2  # the input's buffer is reused in place all along; the output is dedicated
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert_close(model(x), reference_run(graph, {"x": x})["relu_1"])


@needs(*NET_OPS)
def test_outputs_are_fresh_arrays(resnet_file):
    model = pyconv.load(resnet_file)
    x = np.ones((1, 3, 8, 8), np.float32)
    first = model(x)
    second = model(2 * x)
    assert not np.shares_memory(first, second) and not np.array_equal(first, second)


@needs(*NET_OPS)
def test_concurrent_calls_from_threads_give_correct_results(resnet_file):
    model = pyconv.load(resnet_file)
    rng = np.random.default_rng(4)
    inputs = [rng.standard_normal((1, 3, 12, 12)).astype(np.float32) for _ in range(6)]
    expected = [model(x) for x in inputs]
    errors, barrier = [], threading.Barrier(4)

    def worker(k):
        barrier.wait()
        for i in range(12):
            j = (i + k) % len(inputs)
            if not np.array_equal(model(inputs[j]), expected[j]):
                errors.append((k, i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@needs("conv2d")
def test_winograd_off_and_per_layer_algorithm_overrides():
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", ["N", 32, 10, 10])
    y = b.conv2d(x, weight=rng.standard_normal((32, 32, 3, 3)) * 0.05, padding=1, name="a")
    b.output(b.conv2d(y, weight=rng.standard_normal((32, 32, 3, 3)) * 0.05, padding=1, name="b"))
    graph = b.build()
    auto = pyconv.Model(graph)
    plain = pyconv.Model(graph, winograd=False)
    forced = pyconv.Model(graph, algorithms={"a": "im2col", "b": "winograd2"})
    assert plain.node_attrs["a"]["algorithm"] == "im2col" and plain.node_attrs["b"]["algorithm"] == "im2col"
    assert forced.node_attrs["b"]["algorithm"] == "winograd2"
    xin = rng.standard_normal((2, 32, 10, 10)).astype(np.float32)
    ref = reference_run(graph, {"x": xin})["b"]
    for model in (auto, plain, forced):
        assert_close(model(xin), ref)
    with pytest.raises(ModelError, match="nope"):
        pyconv.Model(graph, algorithms={"nope": "im2col"})
    with pytest.raises(ModelError, match="'a'"):
        pyconv.Model(graph, algorithms={"a": "bogus"})


@needs("split", "concat", "relu", "constant", "add")
def test_multi_output_and_constant_nodes():
    rng = np.random.default_rng(6)
    b = GraphBuilder()
    x = b.input("x", ["N", 6, 5, 5])
    lo, hi = b.split(x, sizes_or_count=2, axis=1)
    offset = b.constant(value=rng.standard_normal((1, 3, 1, 1)))
    y = b.concat(b.relu(lo), b.add(hi, offset), axis=1)
    b.output(y, alias="y")
    b.output(hi, alias="hi")
    graph = b.build()
    model = pyconv.Model(graph)
    xin = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    out = model.run({"x": xin})
    ref = reference_run(graph, {"x": xin})
    assert_close(out["y"], ref["y"])
    np.testing.assert_array_equal(out["hi"], xin[:, 3:])
    assert model(xin)[0].shape == (2, 6, 5, 5)  # several outputs: a tuple


@needs(*NET_OPS)
def test_profile_times_every_node(resnet_file):
    model = pyconv.load(resnet_file)
    prof = model.profile(np.zeros((1, 3, 8, 8), np.float32), runs=2)
    assert [p["node"] for p in prof] == [n.name for n in model.optimized.nodes]
    assert all(p["seconds"] >= 0 for p in prof)


@needs(*NET_OPS)
def test_bad_inputs_raise_input_errors(resnet_file):
    model = pyconv.load(resnet_file)
    with pytest.raises(InputError, match="axis 1 is 4"):
        model(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(InputError, match="4 dimensions"):
        model(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(InputError, match="dtype int64"):
        model(np.zeros((1, 3, 8, 8), np.int64))
    with pytest.raises(InputError, match="missing"):
        model.run({"image": np.zeros((1, 3, 8, 8), np.float32)})
    model(np.zeros((1, 3, 8, 8), np.float64))  # float64 is converted


@needs("relu")
def test_symbols_must_agree_across_inputs():
    b = GraphBuilder()
    a = b.input("a", ["N", 2])
    c = b.input("c", ["N", 2])
    b.output(b.relu(a))
    b.output(b.relu(c))
    model = pyconv.Model(b.build())
    with pytest.raises(InputError, match="'N'"):
        model.run({"a": np.zeros((1, 2), np.float32), "c": np.zeros((2, 2), np.float32)})
    with pytest.raises(InputError, match="model.run"):
        model(np.zeros((1, 2), np.float32))


@needs("conv2d")
def test_inputs_too_small_for_the_network_raise_model_error():
    b = GraphBuilder()
    x = b.input("x", [1, 1, "H", "W"])
    b.output(b.conv2d(x, weight=np.ones((1, 1, 5, 5))))
    model = pyconv.Model(b.build())
    with pytest.raises(ModelError, match="conv2d"):
        model(np.zeros((1, 1, 3, 3), np.float32))


@needs("relu", "resize")
def test_giant_intermediate_shapes_are_refused_before_allocating():
    b = GraphBuilder()
    x = b.input("x", [1, 1, 4, 4])
    b.output(b.relu(b.resize(x, sizes=[1, 1, 100000, 100000])))
    model = pyconv.Model(b.build())
    with pytest.raises(ModelError, match="MiB"):
        model.memory_plan()


@needs("conv2d", "add", "identity", "relu")
def test_residual_computed_later_fuses_into_the_other_branch_and_identities_vanish():
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    x = b.input("x", ["N", 4, 6, 6])
    main = b.identity(b.conv2d(x, weight=rng.standard_normal((4, 4, 3, 3)), padding=1, name="main"))
    down = b.conv2d(x, weight=rng.standard_normal((4, 4, 1, 1)), name="down")  # written after the add's 1st input
    b.output(b.relu(b.add(main, down)))
    graph = b.build()
    before = [n.op for n in graph.nodes]
    model = pyconv.Model(graph)
    assert [n.op for n in graph.nodes] == before  # the file's graph is untouched
    assert [n.op for n in model.optimized.nodes] == ["conv2d", "conv2d"]
    fused = [n for n in model.optimized.nodes if len(n.inputs) == 2]
    assert len(fused) == 1 and fused[0].attrs["activation"] == "relu"
    xin = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    assert_close(model(xin), reference_run(graph, {"x": xin})["relu_1"])


@needs("conv2d", "relu")
def test_tensors_read_twice_or_published_are_not_fused_away():
    rng = np.random.default_rng(8)
    b = GraphBuilder()
    x = b.input("x", [1, 2, 5, 5])
    c = b.conv2d(x, weight=rng.standard_normal((2, 2, 1, 1)), name="c")
    b.output(b.relu(c), alias="activated")
    b.output(c, alias="raw")  # the pre-activation value is an output: relu must stay separate
    model = pyconv.Model(b.build())
    assert [n.op for n in model.optimized.nodes] == ["conv2d", "relu"]
    out = model.run({"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32)})
    np.testing.assert_array_equal(out["activated"], np.maximum(out["raw"], 0))


@needs("conv2d", "relu", "max_pool2d")
@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 45, 38)])
def test_max_pools_fuse_into_the_conv_before_them(shape):
    """conv (-> relu) -> max_pool2d(2, 2), or max_pool2d(3, 2) in either mode, becomes one
    conv2d with pool="max2x2", "max3x3s2" or "max3x3s2_ceil", whatever its kernel; pools
    with another window, stride or padding, 2x2 ones in ceil mode, pools after a residual
    add, and convs whose output is read elsewhere stay apart."""
    rng = np.random.default_rng(12)
    w = lambda *s: rng.standard_normal(s).astype(np.float32) * (2.0 / np.prod(s[1:])) ** 0.5
    b = GraphBuilder()
    x = b.input("x", ["N", 3, "H", "W"])
    y = b.max_pool2d(b.relu(b.conv2d(x, weight=w(16, 3, 3, 3), padding=1, name="rgb")), kernel_size=2)
    y = b.max_pool2d(b.relu(b.conv2d(y, weight=w(16, 16, 3, 3), padding=1, name="wino")), kernel_size=2, stride=2)
    y = b.max_pool2d(b.conv2d(y, weight=w(16, 1, 3, 3), padding=1, groups=16, name="dw"), kernel_size=[2, 2])
    overlapping = [b.max_pool2d(b.relu(b.conv2d(y, weight=w(8, 16, 3, 3), padding=1, name=f"o{i}")), kernel_size=3,
                                stride=2, ceil_mode=bool(i)) for i in (0, 1)]
    kept = [b.max_pool2d(b.conv2d(y, weight=w(4, 16, 1, 1), name=f"c{i}"), **kw)
            for i, kw in enumerate([dict(kernel_size=2, stride=1), dict(kernel_size=2, ceil_mode=True),
                                    dict(kernel_size=3, stride=1), dict(kernel_size=2, padding=1),
                                    dict(kernel_size=3, stride=2, padding=1)])]
    res = b.conv2d(y, weight=w(16, 16, 1, 1), name="res")
    pooled_sum = b.max_pool2d(b.relu(b.add(res, y)), kernel_size=2)   # conv + residual: not fused
    shared = b.conv2d(y, weight=w(4, 16, 1, 1), name="shared")
    for i, t in enumerate(overlapping + kept + [pooled_sum, b.max_pool2d(shared, kernel_size=2), shared]):
        b.output(t, alias=f"out{i}")
    graph = b.build()
    model = pyconv.Model(graph)
    pools = {n.name: n.attrs.get("pool") for n in model.optimized.nodes if n.op == "conv2d"}
    assert pools == {"rgb": "max2x2", "wino": "max2x2", "dw": "max2x2", "o0": "max3x3s2", "o1": "max3x3s2_ceil",
                     "c0": None, "c1": None, "c2": None, "c3": None, "c4": None, "res": None, "shared": None}
    assert [n.op for n in model.optimized.nodes].count("max_pool2d") == 7
    xin = rng.standard_normal(shape).astype(np.float32)
    out, want = model.run({"x": xin}), reference_run(graph, {"x": xin})
    for name in want:
        assert_close(out[name], want[name])


@needs("conv2d", "concat", "channel_shuffle", "split", "flatten", "relu")
@pytest.mark.parametrize("batch", [1, 2])
def test_shufflenet_unit_tail_fuses_and_splits_alias_their_input(batch):
    """concat -> channel_shuffle runs as one concat_shuffle; at batch 1 a channel split and a
    flatten are views of their input (never run); at batch 2 the split's parts are not
    contiguous and it runs.  Results equal the unfused float64 graph either way."""
    rng = np.random.default_rng(11)
    b = GraphBuilder()
    x = b.input("x", ["N", 8, 5, 5])
    left, right = b.split(x, sizes_or_count=2, name="halves")
    branch = b.conv2d(right, weight=rng.standard_normal((4, 4, 1, 1)), name="branch")
    mixed = b.channel_shuffle(b.concat(left, branch), groups=2)
    a, c = b.split(mixed, sizes_or_count=[2, 6], name="parts")
    head = b.conv2d(c, weight=rng.standard_normal((3, 6, 3, 3)), padding=1, name="head")
    b.output(b.relu(b.flatten(head, name="flat")), alias="y")
    b.output(b.relu(a), alias="a")
    shared = b.concat(a, c, name="kept")          # read twice: stays a concat
    b.output(b.channel_shuffle(shared, groups=4), alias="shuffled")
    b.output(shared, alias="joined")
    graph = b.build()
    model = pyconv.Model(graph)
    ops = [n.op for n in model.optimized.nodes]
    assert ops.count("concat_shuffle") == 1 and ops.count("concat") == 1 and ops.count("channel_shuffle") == 1
    xin = rng.standard_normal((batch, 8, 5, 5)).astype(np.float32)
    out = model.run({"x": xin})
    want = reference_run(graph, {"x": xin})
    for public in ("y", "a", "shuffled", "joined"):
        assert_close(out[public], want[public])
    model.memory_plan({"x": (batch, 8, 5, 5)})
    (plan, _), = model._plans.values()
    skipped = {n.name for n in model.optimized.nodes} - {model.optimized.nodes[i].name for i in plan.run_steps}
    assert skipped == ({"halves", "parts", "flat"} if batch == 1 else {"flat"})
    assert_plan_never_shares_live_tensors(model.optimized, plan)


@needs("conv2d", "concat", "max_pool2d", "relu")
@pytest.mark.parametrize("batch", [1, 2])
def test_concat_inputs_are_written_into_the_concatenation(batch):
    """Fire modules: at batch 1 both expand convs write their channel slices of the concat
    output and the concat never runs; a concat with an input read elsewhere, and any concat
    at batch 2 (slices not contiguous), runs.  Results equal the float64 graph."""
    rng = np.random.default_rng(12)
    b = GraphBuilder()
    x = b.input("x", ["N", 4, 9, 9])
    squeeze = b.conv2d(x, weight=rng.standard_normal((3, 4, 1, 1)), activation="relu", name="squeeze")
    e1 = b.conv2d(squeeze, weight=rng.standard_normal((5, 3, 1, 1)), activation="relu", name="e1")
    e3 = b.conv2d(squeeze, weight=rng.standard_normal((6, 3, 3, 3)), padding=1, activation="relu", name="e3")
    fire = b.concat(e1, e3, name="fire")
    pooled = b.max_pool2d(fire, kernel_size=3, stride=2, ceil_mode=True, name="pool")
    side = b.conv2d(pooled, weight=rng.standard_normal((2, 11, 1, 1)), name="side")
    both = b.concat(pooled, side, name="both")    # pooled is also read by side: this concat runs
    inner = b.concat(b.relu(side, name="r1"), b.relu(side, name="r2"), name="inner")
    outer = b.concat(inner, b.relu(side, name="r3"), name="outer")   # nested: the inner one is written in
    b.output(b.relu(both), alias="y")                                 # place, so the outer one must run
    b.output(b.relu(outer), alias="z")
    graph = b.build()
    model = pyconv.Model(graph)
    xin = rng.standard_normal((batch, 4, 9, 9)).astype(np.float32)
    got, want = model.run({"x": xin}), reference_run(graph, {"x": xin})
    assert_close(got["y"], want["y"])
    assert_close(got["z"], want["z"])
    model.memory_plan({"x": (batch, 4, 9, 9)})
    (plan, _), = model._plans.values()
    ran = {model.optimized.nodes[i].name for i in plan.run_steps}
    assert ("fire" in ran) == ("inner" in ran) == (batch > 1) and "both" in ran and "outer" in ran
    assert_plan_never_shares_live_tensors(model.optimized, plan)


def assert_plan_never_shares_live_tensors(graph, plan):
    """Replays the plan: when a step writes a tensor, no other live tensor may overlap the
    memory written, except the first input of an in-place op read for the last time there;
    a view node (never run) must place each output inside its input's memory, a concat
    that does not run must hold its inputs."""
    order = [i for i, node in enumerate(graph.nodes) if node.inputs]
    executed = set(plan.run_steps)
    last = {}
    for pos, i in enumerate(order):
        for t in graph.nodes[i].inputs:
            last[t] = pos
    for o in graph.outputs:
        last[o.tensor] = len(order)

    def span(t):
        start = plan.tensor_offset[t]
        return plan.tensor_buffer[t], start, start + int(np.prod(plan.shapes[t]))

    live = [t for t in plan.shapes if t in {i.name for i in graph.inputs}]
    live += [t for i, node in enumerate(graph.nodes) if not node.inputs for t in node.outputs]
    for pos, i in enumerate(order):
        node = graph.nodes[i]
        for k, t in enumerate(node.outputs):
            buf, lo, hi = span(t)
            assert plan.buffer_sizes[buf] >= hi, f"{t} does not fit its buffer"
            if i not in executed and node.op == "concat":   # the inputs were written into it
                assert all(span(t)[0] == buf and lo <= span(t)[1] and span(t)[2] <= hi for t in node.inputs)
                continue
            if i not in executed:   # an alias of the input's memory
                src_buf, src_lo, src_hi = span(node.inputs[0])
                assert registry.get(node.op).view is not None and buf == src_buf and src_lo <= lo and hi <= src_hi
                continue
            for u in live:
                u_buf, u_lo, u_hi = span(u)
                if u_buf != buf or u_hi <= lo or hi <= u_lo or last.get(u, -1) < pos:
                    continue
                in_place = (k == 0 and registry.get(node.op).inplace and u == node.inputs[0]
                            and last[u] == pos)
                assert in_place, f"{node.name} writes {t} over {u}, which is still live"
        live += node.outputs


@needs(*NET_OPS)
@pytest.mark.parametrize("optimize", [True, False])
def test_buffer_plan_is_sound(resnet_file, optimize):
    model = pyconv.load(resnet_file, optimize=optimize)
    model.memory_plan({"input": (2, 3, 12, 12)})
    for plan, _ in model._plans.values():
        assert_plan_never_shares_live_tensors(model.optimized, plan)


@needs("conv2d", "max_pool2d", "global_avg_pool2d")
def test_summary_counts_and_receptive_fields():
    from pyconv.graph.summary import summarize, totals

    c = 8
    b = GraphBuilder()
    x = b.input("x", [1, c, 32, 32])
    y = x
    for i in range(3):  # three stacked 3x3 convs see 7x7 with 27 C^2 weights...
        y = b.conv2d(y, weight=np.zeros((c, c, 3, 3)), padding=1, name=f"s{i}")
    seven = b.conv2d(x, weight=np.zeros((c, c, 7, 7)), bias=np.zeros(c), padding=3, name="seven")  # ...one 7x7: 49 C^2
    y = b.max_pool2d(y, kernel_size=2, stride=2)
    y = b.conv2d(y, weight=np.zeros((c, c, 3, 3)), dilation=2, name="after_pool")
    b.output(b.global_avg_pool2d(y))
    b.output(seven)
    graph = b.build()
    rows = {r.name: r for r in summarize(graph, {"x": (1, c, 32, 32)})}
    assert [rows[f"s{i}"].receptive_field for i in range(3)] == [(3, 3), (5, 5), (7, 7)]
    assert rows["seven"].receptive_field == (7, 7)
    assert sum(rows[f"s{i}"].params for i in range(3)) == 27 * c * c and rows["seven"].params == 49 * c * c + c
    assert rows["max_pool2d_1"].receptive_field == (8, 8)
    assert rows["after_pool"].receptive_field == (8 + 2 * 2 * 2, 8 + 2 * 2 * 2)  # dilation 2, jump 2
    assert rows["global_avg_pool2d_1"].field_text() == "global"
    assert rows["s0"].macs == c * 9 * c * 32 * 32
    assert totals(list(rows.values()))["params"] == 27 * c * c + 49 * c * c + c + 9 * c * c
    text = pyconv.Model(graph).summary()
    assert "global" in text and "s2" in text and f"{27 * c * c + 49 * c * c + c + 9 * c * c:,} parameters" in text


@needs(*NET_OPS)
def test_mutated_graphs_fail_with_model_errors_only():
    """Wrong attribute types/values, rewired inputs, other input sizes: load and run either work
    or raise a pyconv error (never a bare TypeError/KeyError from deep inside)."""
    import copy
    import warnings

    from pyconv.errors import PyconvError
    from pyconv.graph.format import graph_from_json

    graph = small_resnet(np.random.default_rng(0)).build()
    original = graph.to_json()
    values = [None, -1, 0, 1, 2, 3, 1e308, -0.5, "x", "relu", [], [1], [1, 2], [0, 0, 0, 0], [-1, 2], {}, True, [[1]]]
    attr_names = ["stride", "padding", "dilation", "groups", "activation", "kernel_size", "axis", "eps",
                  "negative_slope", "start_dim", "algorithm"]
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(150):
        doc = copy.deepcopy(original)
        node = doc["nodes"][int(rng.integers(len(doc["nodes"])))]
        value = values[int(rng.integers(len(values)))]
        if rng.random() < 0.7:
            keys = list(node["attrs"]) + attr_names
            node["attrs"][keys[int(rng.integers(len(keys)))]] = value
        else:
            node["inputs"] = node["inputs"][::-1] if rng.random() < 0.5 else value
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = pyconv.Model(graph_from_json(doc, dict(graph.weights)))
                model(np.zeros((1, 3, 6, 6), np.float32))
            outcomes.add("ran")
        except PyconvError:
            outcomes.add("refused")
    assert outcomes == {"ran", "refused"}


@needs(*NET_OPS)
def test_symbolic_shapes_follow_the_input_symbols():
    from pyconv.graph.shapes import symbolic_shapes

    graph = small_resnet(np.random.default_rng(0)).build()
    shapes = symbolic_shapes(graph)
    assert shapes["conv1"] == ("N", 8, "H", "W")
    assert shapes["max_pool2d_1"] == ("N", 8, "H/2", "W/2")
    assert shapes["conv3x3_16"] == ("N", 24, "H/2", "W/2-2")  # padding (1, 0): two columns lost
    assert shapes["global_avg_pool2d_1"] == ("N", 24, 1, 1) and shapes["linear_1"] == ("N", 10)
    text = pyconv.Model(graph).summary()
    assert "Nx24xH/2xW/2-2" in text and "summarised at 1x3x224x224" in text
    assert "2x24x5x4" in pyconv.Model(graph).summary({"input": (2, 3, 10, 12)})


@needs("conv_transpose2d", "batch_norm", "relu6")
def test_batch_norm_folds_into_grouped_transposed_conv():
    rng = np.random.default_rng(9)
    b = GraphBuilder()
    x = b.input("x", ["N", 4, 5, 5])
    y = b.conv_transpose2d(x, weight=rng.standard_normal((4, 3, 3, 3)), stride=2, groups=2, name="up")
    b.output(b.relu6(_bn(b, y, 6, rng)))
    graph = b.build()
    model = pyconv.Model(graph)
    assert [n.op for n in model.optimized.nodes] == ["conv_transpose2d"]
    xin = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    assert_close(model(xin), reference_run(graph, {"x": xin})["relu6_1"])


@needs("conv2d", "batch_norm", "relu")
def test_loaded_model_holds_one_copy_of_the_weights(tmp_path):
    """The file's arrays are freed as folding replaces them: after loading, the model holds
    about one float32 copy of the weights (it used to hold the file's and the folded ones:
    2.1x, peak 3.1x).  The peak adds one layer's float64 folding temporaries (here a layer
    is a quarter of the weights)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    y = b.input("input", ["N", 128, "H", "W"])
    for i in range(4):
        y = b.conv2d(y, weight=rng.standard_normal((128, 128, 3, 3)) * 0.03, padding=1, name=f"conv{i}")
        y = b.relu(b.batch_norm(y, mean=rng.standard_normal(128), var=rng.random(128) + 0.5,
                                weight=rng.standard_normal(128), bias=rng.standard_normal(128)))
    b.output(y)
    path = tmp_path / "convs.npz"
    b.save(path)
    weight_bytes = 4 * 128 * 128 * 9 * 4
    tracemalloc.start()
    try:
        model = pyconv.load(path)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"held {held / weight_bytes:.2f}x, peak {peak / weight_bytes:.2f}x the weights")
    assert held < 1.3 * weight_bytes, (held, weight_bytes)
    assert peak < 2.6 * weight_bytes, (peak, weight_bytes)
    x = rng.standard_normal((1, 128, 6, 5)).astype(np.float32)
    assert_close(model(x), reference_run(read_graph(path), {"input": x})[model.output_names[0]])


@needs(*NET_OPS)
def test_load_and_run_import_only_what_they_need(resnet_file):
    """Loading a model pulls in neither image, ONNX nor signal-processing code, nor all of
    scipy.linalg (the conv kernels need only its BLAS extension module); running it adds
    no image, ONNX or signal-processing code either."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, pyconv\n"
            "heavy = ('PIL', 'onnx', 'onnxruntime', 'scipy.signal', 'scipy.ndimage', 'skimage', 'pyconv.io',\n"
            "         'pyconv.convert', 'pyconv.cli')\n"
            f"model = pyconv.load({str(resnet_file)!r})\n"
            "print(sorted(m for m in heavy + ('scipy.linalg',) if m in sys.modules))\n"
            "model(np.zeros((1, 3, 8, 8), np.float32))\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]


@needs(*NET_OPS)
def test_conv_steps_are_bound_to_their_buffers_and_follow_the_thread_setting(resnet_file):
    # convs run as pre-checked steps on the planned buffers (no per-call checks); a thread
    # setting changed between runs still applies, and results stay those of the reference
    from pyconv.ops.conv import PreparedConv2d

    model = pyconv.load(resnet_file)
    x = np.random.default_rng(4).standard_normal((2, 3, 12, 10)).astype(np.float32)
    expected = reference_run(read_graph(resnet_file), {"input": x})["probs"]
    before = pyconv.get_num_threads()
    try:
        for threads in (1, 2, 1):
            pyconv.set_num_threads(threads)
            assert_close(model(x), expected)
    finally:
        pyconv.set_num_threads(before)
    plan, pool = model._plan((x.shape,))
    steps = {name: step for name, step in zip(pool[0].names, pool[0].steps)}
    conv_names = [n.name for n in model.optimized.nodes if n.op == "conv2d"]
    assert len(conv_names) == 5
    for name in conv_names:
        fn, args, out = steps[name]
        assert not isinstance(fn, PreparedConv2d) and args == (), name
    conv = next(c for c, n in zip(model._calls, model.optimized.nodes) if n.name == "conv1")
    x16 = np.zeros((1, 3, 4, 4), np.float16)  # needs __call__'s conversion: not bound
    assert conv.bind_step((x16,), np.empty((1, 8, 4, 4), np.float32)) is None
    assert conv.bind_step((np.zeros((1, 3, 4, 4), np.float32),), np.empty((1, 8, 5, 4), np.float32)) is None
