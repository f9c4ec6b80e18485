"""diagonal and unfold (views of their input's memory), gather, scatter, scatter_add, index_select and index_add,
with PyTorch's names and semantics: values and gradients against PyTorch in float64 and finite differences,
memory shared both ways, traced and compiled programs equal to eager, and clear errors for bad input.
(Their rows' gradients against jax.grad are in tests/test_primitive_grads.py.)"""

import numpy as np
import pytest

import eager
from eager import ops
from eager.autograd import gradcheck
from eager.autograd.engine import BackwardError
from eager.primitives import ShapeError

# ---------------------------------------------------------------- programs, written once for eager and torch


def _programs():
    def diagonals(m, x):
        return m.cat([x.diagonal(), x.diagonal(1) * 2, x.diagonal(-2), x.T.diagonal(2)])

    def diagonal_3d(m, x):
        z = x.reshape(2, 3, 2)
        return z.diagonal(1, 2, 0) * z.diagonal(0, -1, 1).sum()

    def diagonal_fill_and_mul(m, x):
        y = x * 1
        y.diagonal().fill_(0)
        y.diagonal(1).mul_(3)
        return y.tanh()

    def diagonal_add_from_other(m, x, w):
        y = x.sin()
        y.diagonal(-1).add_(w[0, :2])
        return y * w

    def diagonal_of_a_slice_written(m, x, w):
        y = x * 1
        y[:, 1:].diagonal().copy_(w[1, :3])
        return y

    def unfold_overlapping(m, x):
        return x.unfold(1, 3, 1) * x.unfold(0, 2, 1).sum()

    def unfold_with_gaps_written(m, x, w):
        y = x * 1
        y.unfold(1, 1, 2).mul_(w[:, :2].unsqueeze(-1))  # columns 0 and 2
        y.unfold(0, 2, 2).add_(1)  # rows 0 and 1: windows side by side, none shared
        return y

    def gather_repeated(m, x):
        return x.gather(1, m.tensor([[0, 0, 3], [2, 1, 2], [3, 3, 3]]))

    def gather_smaller_index(m, x):
        return x.gather(0, m.tensor([[2, 0], [1, 1]])) ** 2

    def scatter_src(m, x, w):
        return x.scatter(1, m.tensor([[3, 0], [1, 2], [0, 1]]), w[:, 1:3])

    def scatter_value(m, x):
        return x.scatter(0, m.tensor([[2, 0, 1, 0]]), 5.0) * x

    def scatter_add_repeated(m, x, w):
        return x.scatter_add(0, m.tensor([[0, 1, 2, 0], [0, 0, 0, 0], [2, 2, 1, 0]]), w)

    def index_select_repeated(m, x):
        return x.index_select(1, m.tensor([3, 0, 3])) * x.index_select(0, m.tensor(1))[:, 1:]

    def index_add_alpha(m, x, w):
        return x.index_add(0, m.tensor([2, 0, 2]), w, alpha=0.5)

    def in_place_index_ops(m, x, w):
        y = x * 1
        y.index_add_(1, m.tensor([1, 1]), w[:, :2], alpha=-2)
        y.scatter_(0, m.tensor([[2, 0, 1, 2]]), w[:1] * 3)
        y.scatter_add_(1, m.tensor([[0], [0], [3]]), w[:, 3:])
        y[0].scatter_(0, m.tensor([1]), value=7.0)
        return y

    return {f.__name__: f for f in (diagonals, diagonal_3d, diagonal_fill_and_mul, diagonal_add_from_other,
                                    diagonal_of_a_slice_written, unfold_overlapping, unfold_with_gaps_written,
                                    gather_repeated, gather_smaller_index, scatter_src, scatter_value,
                                    scatter_add_repeated, index_select_repeated, index_add_alpha,
                                    in_place_index_ops)}


PROGRAMS = _programs()


def scatter_src_larger_than_index(m, x, w):
    """PyTorch computes it, but its backward fails ("ScatterBackward0 returned an invalid gradient ... got [3, 2] but
    expected shape compatible with [3, 4]"): src's gradient is zero outside the index, as finite differences say."""
    return x.scatter(1, m.tensor([[3, 0], [1, 2], [0, 1]]), w)


def test_scatter_from_a_src_larger_than_the_index_matches_pytorch_forward_and_finite_differences():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here")
    x, w = _arrays(scatter_src_larger_than_index)
    got = scatter_src_larger_than_index(eager, eager.tensor(x), eager.tensor(w))
    np.testing.assert_array_equal(got.numpy(), scatter_src_larger_than_index(torch, torch.tensor(x),
                                                                             torch.tensor(w)).numpy())
    ours = [eager.tensor(a, requires_grad=True) for a in (x, w)]
    assert gradcheck(lambda *xs: scatter_src_larger_than_index(eager, *xs), ours)
    scatter_src_larger_than_index(eager, *ours).sum().backward()
    assert ours[1].grad.tolist() == [[1.0, 1.0, 0.0, 0.0]] * 3


def _arrays(fn, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 4)).astype(dtype) for _ in range(fn.__code__.co_argcount - 1)]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_values_and_gradients_match_pytorch_in_float64(name):
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here")
    fn = PROGRAMS[name]
    arrays = _arrays(fn)
    ours = [eager.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out_ours, out_theirs = fn(eager, *ours), fn(torch, *theirs)
    np.testing.assert_allclose(out_ours.detach().numpy(), out_theirs.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(1).standard_normal(tuple(out_theirs.shape))
    (out_ours * eager.tensor(g)).sum().backward()
    (out_theirs * torch.tensor(g)).sum().backward()
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_gradients_match_finite_differences_in_float64(name):
    fn = PROGRAMS[name]
    ours = [eager.tensor(a, requires_grad=True) for a in _arrays(fn)]
    assert gradcheck(lambda *xs: fn(eager, *xs), ours)


def test_an_overlapping_unfold_adds_each_windows_gradient_into_the_shared_elements():
    x = eager.arange(5.0, dtype=eager.float64).requires_grad_()
    x.unfold(0, 3, 1).sum().backward()  # windows [0..2], [1..3], [2..4]
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 2.0, 1.0]


# ---------------------------------------------------------------- memory is shared both ways


@pytest.mark.parametrize("make_view", [
    lambda t: t.diagonal(), lambda t: t.diagonal(1), lambda t: t.diagonal(-1, 1, 0), lambda t: t.T.diagonal(),
    lambda t: t[1:].diagonal(), lambda t: t.unfold(1, 2, 2), lambda t: t.unfold(0, 1, 2), lambda t: t.unfold(1, 1, 3),
], ids=["diagonal", "above", "below_swapped", "of_transpose", "of_slice", "unfold_side_by_side", "unfold_rows_0_2",
        "unfold_gaps"])
def test_a_write_through_the_view_reaches_the_base_and_a_base_write_reaches_the_view(make_view):
    base = eager.zeros(3, 4, dtype=eager.float64)
    view = make_view(base)
    view.add_(1)
    assert float(base.sum()) == view.numel()
    assert base._version == view._version == 1  # one version counter for the storage
    base.mul_(0).add_(eager.arange(12.0, dtype=eager.float64).reshape(3, 4))
    np.testing.assert_array_equal(view.numpy(), make_view(eager.arange(12.0).reshape(3, 4)).numpy())


def test_diagonal_fill_and_add_write_the_base_as_in_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here")
    ours, theirs = eager.arange(12.0).reshape(3, 4), torch.arange(12.0).reshape(3, 4)
    for x in (ours, theirs):
        x.diagonal().fill_(0)
        x.diagonal(1).add_(1)
        x.diagonal(-1)[0] = -5
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_in_place_writes_to_an_unfold_whose_windows_overlap_are_refused():
    x = eager.arange(6.0)
    windows = x.unfold(0, 3, 1)
    for write in (lambda: windows.add_(1), lambda: windows.fill_(0), lambda: windows.copy_(eager.ones(4, 3))):
        with pytest.raises(RuntimeError, match="an unfold\\(\\) whose windows overlap"):
            write()
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # nothing was written
    assert windows.sum().item() == 30.0  # reading it is fine


def test_writing_a_leafs_diagonal_is_refused_outside_no_grad_and_allowed_inside_as_in_pytorch():
    w = eager.ones(3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a view of a leaf tensor that requires grad"):
        w.diagonal().fill_(0)
    with eager.no_grad():
        w.diagonal().fill_(0)  # an identity-like init
    assert w.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]] and w.is_leaf and w.requires_grad


def test_a_tensor_gather_saved_and_then_written_in_place_makes_backward_fail():
    x = eager.ones(3, requires_grad=True)
    index = eager.tensor([0, 2])
    y = x.gather(0, index)
    index.add_(0)  # the backward of gather reads the index: it must not have changed since
    with pytest.raises(BackwardError):
        y.sum().backward()


# ---------------------------------------------------------------- repeated indices


def test_repeated_indices_accumulate_in_index_add_and_scatter_add_and_the_last_write_wins_in_scatter():
    idx = eager.tensor([0, 2, 0, 0])
    src = eager.tensor([1.0, 2.0, 3.0, 4.0])
    assert eager.zeros(3).index_add(0, idx, src).tolist() == [8.0, 0.0, 2.0]
    assert eager.zeros(3).scatter_add(0, idx, src).tolist() == [8.0, 0.0, 2.0]
    assert eager.zeros(3).scatter(0, idx, src).tolist() == [4.0, 0.0, 2.0]  # documented: the last write lands
    big = np.zeros(1000, np.int64)  # many repeats of one position: still the last
    assert eager.zeros(2).scatter(0, eager.tensor(big), eager.arange(1000.0)).tolist() == [999.0, 0.0]


def test_zero_dim_operands_count_as_one_element_as_in_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle here")
    for m in (eager, torch):
        s = m.tensor(3.0)
        got = [s.gather(0, m.tensor(0)), s.gather(0, m.tensor([0, 0])), m.arange(3.0).gather(0, m.tensor(1)),
               s.scatter(0, m.tensor(0), m.tensor(5.0)), s.scatter_add(0, m.tensor(0), m.tensor(5.0)),
               s.index_select(0, m.tensor([0])), s.index_add(0, m.tensor([0]), m.tensor(2.0)), s.unfold(0, 1, 1),
               m.arange(4.0).index_select(0, m.tensor(2))]
        if m is eager:
            ours = got
    for a, b in zip(ours, got):
        assert a.shape == tuple(b.shape) and a.tolist() == b.tolist()


def test_scatter_of_a_value_casts_it_to_the_tensors_dtype_as_pytorch_does():
    x = eager.zeros(2, 3, dtype=eager.int64)
    x.scatter_(1, eager.tensor([[2], [0]]), value=3.7)
    assert x.dtype == eager.int64 and x.tolist() == [[0, 0, 3], [3, 0, 0]]


# ---------------------------------------------------------------- traced and compiled equal eager


def _static_programs():
    def write_diagonal_of_a_copy(x):
        y = x * 2
        y.diagonal().fill_(0)
        y.diagonal(1).add_(x[0, :3])
        return y

    def read_a_diagonal_after_the_base_was_written(x):
        y = x * 1
        d = y.diagonal()
        y.mul_(3)  # d is stale in any record of it: it must be derived from y again
        return d.sum() + y

    def write_unfold_windows(x):
        y = x.exp()
        y.unfold(1, 2, 2).mul_(0.5)
        return y.unfold(0, 2, 1).sum(-1)

    def scatter_gather_and_friends(x, index):
        y = x.gather(1, index) * 3
        z = x.scatter(1, index, y).scatter_add(1, index, y)
        z.index_add_(0, eager.tensor([2, 2]), x[:2], alpha=2)
        return z.index_select(1, eager.tensor([3, 0])) + z.scatter(0, index[:1], 1.5)[:, :2]

    return {f.__name__: f for f in (write_diagonal_of_a_copy, read_a_diagonal_after_the_base_was_written,
                                    write_unfold_windows, scatter_gather_and_friends)}


STATIC = _static_programs()


def _static_inputs(fn, seed):
    rng = np.random.default_rng(seed)
    x = eager.tensor(rng.standard_normal((3, 4)).astype(np.float32))
    if fn.__code__.co_argcount == 1:
        return [x]
    return [x, eager.tensor(rng.integers(0, 3, (3, 2)))]  # the index is an input: new values on every call


@pytest.mark.parametrize("mode", ["traced", "c", "xla"])
@pytest.mark.parametrize("name", sorted(STATIC))
def test_traced_and_compiled_programs_equal_eager_on_new_inputs(name, mode):
    import compiler
    import tracer
    fn = STATIC[name]
    example = _static_inputs(fn, 0)
    static = tracer.trace(fn, *example) if mode == "traced" else compiler.compile(fn, *example, backend=mode)
    for seed in (1, 2):
        xs = _static_inputs(fn, seed)
        want = fn(*[x.clone() for x in xs]).numpy()
        np.testing.assert_allclose(static(*xs).numpy(), want, rtol=1e-6, atol=1e-6)


def test_a_traced_write_through_an_inputs_diagonal_updates_the_callers_tensor():
    import tracer

    def stamp(x):
        x.diagonal().fill_(5.0)
        x.diagonal(1).mul_(2)
        return x.sum()
    traced = tracer.trace(stamp, eager.ones(2, 3))
    x = eager.ones(2, 3)
    out = traced(x)
    assert x.tolist() == [[5.0, 2.0, 1.0], [1.0, 5.0, 2.0]] and float(out) == 16.0


def test_a_traced_scatter_keeps_the_last_write_on_replay_in_every_mode():
    import compiler
    import tracer

    def fn(x, index, src):
        return x.scatter(0, index, src)
    example = (eager.zeros(3), eager.tensor([0, 1, 2, 1]), eager.ones(4))
    args = (eager.zeros(3), eager.tensor([2, 0, 2, 2]), eager.tensor([1.0, 2.0, 3.0, 4.0]))
    for run in (tracer.trace(fn, *example), compiler.compile(fn, *example),
                compiler.compile(fn, *example, backend="xla")):
        assert run(*args).tolist() == [2.0, 0.0, 4.0]


def test_a_saved_and_loaded_graph_of_the_new_ops_equals_eager(tmp_path):
    import tracer
    fn = STATIC["scatter_gather_and_friends"]
    traced = tracer.trace(fn, *_static_inputs(fn, 0))
    traced.save(tmp_path / "graph")
    loaded = tracer.load(tmp_path / "graph")
    xs = _static_inputs(fn, 3)
    assert {"gather", "scatter", "scatter_add"} <= set(traced.graph.op_counts())
    np.testing.assert_allclose(loaded(*xs).numpy(), fn(*[x.clone() for x in xs]).numpy(), rtol=1e-6, atol=1e-6)


def test_a_replayed_gather_refuses_an_index_out_of_range():
    import compiler
    import tracer

    def fn(x, index):
        return x.gather(1, index) * 2
    example = (eager.ones(2, 3), eager.tensor([[0], [2]]))
    for run in (tracer.trace(fn, *example), compiler.compile(fn, *example)):
        with pytest.raises(Exception, match="gather: index -1 is out of bounds for dim 1 with size 3"):
            run(eager.ones(2, 3), eager.tensor([[0], [-1]]))


# ---------------------------------------------------------------- bad input


X = eager.arange(12.0).reshape(3, 4)
I2 = eager.tensor([[0, 1]])


@pytest.mark.parametrize("call, message", [
    (lambda: X.gather(1, eager.tensor([[4]])), "gather: index 4 is out of bounds for dim 1 with size 4"),
    (lambda: X.gather(1, eager.tensor([[-1]])), "gather: index -1 is out of bounds for dim 1 with size 4"),
    (lambda: X.scatter(0, eager.tensor([[3]]), eager.ones(1, 1)), "scatter: index 3 is out of bounds for dim 0"),
    (lambda: X.scatter(0, eager.tensor([[-1]]), 1.0), "scatter: index -1 is out of bounds"),
    (lambda: X.scatter_add(1, eager.tensor([[9]]), eager.ones(1, 1)), "scatter_add: index 9 is out of bounds"),
    (lambda: X.index_select(0, eager.tensor([0, 3])), "index_select: index 3 is out of bounds for dim 0 with size 3"),
    (lambda: X.index_select(1, eager.tensor([-1])), "index_select: index -1 is out of bounds"),
    (lambda: X.index_add(1, eager.tensor([4]), eager.ones(3, 1)), "index_add: index 4 is out of bounds"),
], ids=["gather", "gather_negative", "scatter", "scatter_negative", "scatter_add", "index_select",
        "index_select_negative", "index_add"])
def test_an_index_out_of_range_is_an_index_error_naming_the_op(call, message):
    with pytest.raises(eager.IndexOutOfRange, match=message) as info:
        call()
    assert isinstance(info.value, IndexError)


@pytest.mark.parametrize("call, message", [
    (lambda: X.gather(1, eager.tensor([1, 2])), "gather: the index i64\\[2\\] must have as many dims as the input"),
    (lambda: X.gather(1, eager.zeros(4, 1, dtype=eager.int64)), "larger than the input f32\\[3,4\\] in dim 0"),
    (lambda: X.scatter(1, I2, eager.ones(1, 1)), "scatter: the index i64\\[1,2\\] is larger than src f32\\[1,1\\]"),
    (lambda: X.scatter(1, I2, eager.ones(1, 2, dtype=eager.float64)), "src f64\\[1,2\\] must be a tensor of the "
                                                                      "input's dtype"),
    (lambda: X.scatter_add(1, I2, eager.ones(2)), "must have the same number of dims"),
    (lambda: X.index_select(1, eager.tensor([[1]])), "index_select: the index must be 1-D"),
    (lambda: X.index_add(1, eager.tensor([1]), eager.ones(3, 2)), "index_add: source of shape \\[3, 2\\] must have"),
    (lambda: eager.arange(3.0).diagonal(), "diagonal: expects a tensor with at least 2 dims"),
    (lambda: X.diagonal(0, 1, -1), "diagonal: dim1 and dim2 must be two different dims"),
    (lambda: eager.arange(5.0).unfold(0, 6, 1), "unfold: size 6 does not fit dim 0 of f32\\[5\\]"),
    (lambda: eager.arange(5.0).unfold(0, -1, 1), "unfold: size -1 does not fit"),
    (lambda: eager.arange(5.0).unfold(0, 2, 0), "unfold: step is 0 but must be > 0"),
], ids=["gather_rank", "gather_too_big", "scatter_src_small", "scatter_src_dtype", "scatter_add_rank",
        "index_select_2d", "index_add_source_shape", "diagonal_1d", "diagonal_same_dims", "unfold_size_too_big",
        "unfold_negative_size", "unfold_step_zero"])
def test_wrong_shapes_are_a_shape_error_naming_the_op_and_shapes(call, message):
    with pytest.raises(ShapeError, match=message):
        call()


@pytest.mark.parametrize("call", [
    lambda: X.diagonal(0, 0, 2), lambda: X.unfold(2, 1, 1), lambda: X.gather(2, I2), lambda: X.index_select(-3, I2[0]),
], ids=["diagonal", "unfold", "gather", "index_select"])
def test_a_dim_out_of_range_is_an_index_error(call):
    with pytest.raises(IndexError, match="Dimension out of range"):
        call()


@pytest.mark.parametrize("call", [
    lambda: X.gather(1, eager.tensor([[1.0]])), lambda: X.scatter(1, eager.tensor([[True]]), 1.0),
    lambda: X.scatter_add(1, eager.tensor([[0.0]]), eager.ones(1, 1)), lambda: X.index_select(0, eager.tensor([0.0])),
    lambda: X.index_add(0, eager.tensor([True]), eager.ones(1, 4)),
], ids=["gather", "scatter", "scatter_add", "index_select", "index_add"])
def test_an_index_that_is_not_an_integer_tensor_is_a_type_error(call):
    with pytest.raises(TypeError, match="the index must be an integer tensor, got (f32|bool)"):
        call()


def test_the_ops_module_functions_are_the_tensor_methods_arguments():
    idx = eager.tensor([[1, 0]])
    assert ops.diagonal(X, offset=1, dim1=1, dim2=0).tolist() == X.diagonal(1, 1, 0).tolist() == [4.0, 9.0]
    assert ops.gather(X, 1, idx).tolist() == [[1.0, 0.0]]
    assert ops.scatter(X, 1, idx, value=-1.0)[0].tolist() == [-1.0, -1.0, 2.0, 3.0]
    assert ops.index_select(X, 0, eager.tensor([2])).tolist() == [[8.0, 9.0, 10.0, 11.0]]
    with pytest.raises(TypeError, match="give src \\(a tensor\\) or value \\(a number\\)"):
        ops.scatter(X, 1, idx)


@pytest.mark.gpu
def test_index_ops_and_diagonal_on_cuda_equal_the_cpu_values_and_gradients():
    def program(x, w):
        i = eager.tensor([[0, 2, 2], [1, 0, 2], [2, 2, 0]], device=x.device)
        y = x.gather(1, i) + x.scatter(1, i, w[:, :3]).scatter_add(0, i, w[:, 1:])[:, :3]
        y = y + x.index_select(1, eager.tensor([3, 0, 3], device=x.device)) * x.diagonal(1).sum()
        y = y.index_add(0, eager.tensor([2, 2], device=x.device), w[:2, :3], alpha=0.5)
        with pytest.raises(eager.IndexOutOfRange, match="gather: index -1 is out of bounds"):
            x.gather(1, eager.tensor([[-1]], device=x.device))  # checked in eager (CuPy would wrap it around)
        return y
    arrays = _arrays(PROGRAMS["diagonal_add_from_other"])  # two [3, 4] arrays
    results = []
    for device in ("cpu", "cuda"):
        xs = [eager.tensor(a, device=device, requires_grad=True) for a in arrays]
        out = program(*xs)
        out.sum().backward()
        results.append([out.detach().cpu().numpy()] + [x.grad.cpu().numpy() for x in xs])
    for cpu, cuda in zip(*results):
        np.testing.assert_allclose(cuda, cpu, rtol=1e-12, atol=1e-12)
