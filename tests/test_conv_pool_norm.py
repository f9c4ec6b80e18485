"""Convolution, pooling and batch normalisation: values and gradients against PyTorch in float64, PyTorch's module
layouts (a torch state_dict loads as it is), running statistics, the three modes (eager, traced, compiled), and bad
inputs that fail with messages naming what is wrong.

The rows' own facts (finite differences, jax.grad to second order, the JAX lowering) are checked with every other row
in tests/test_primitive_grads.py and tests/test_primitive_table.py; this file checks the layers users call.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import eager
import tracer
from compiler.runtime.simt import cxx_compiler
from eager import nn, optim
from eager.nn import functional as F
from eager.primitives import ShapeError

torch = pytest.importorskip("torch")
TF = torch.nn.functional
RNG = np.random.default_rng(0)


def _both(fn_eager, fn_torch, *arrays):
    """Run both functions on the same float64 arrays with one cotangent; return (eager, torch) outputs and grads."""
    ts = [eager.tensor(a, requires_grad=True) for a in arrays]
    tt = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, want = fn_eager(*ts), fn_torch(*tt)
    extra = None
    if isinstance(want, tuple):  # (values, indices)
        extra = (out[1].numpy(), want[1].numpy())
        out, want = out[0], want[0]
    g = RNG.standard_normal(tuple(want.shape))
    out.backward(eager.tensor(g))
    want.backward(torch.tensor(g))
    ours = (out.detach().numpy(), [t.grad.numpy() for t in ts])
    return ours, (want.detach().numpy(), [t.grad.numpy() for t in tt]), extra


def _check(fn_eager, fn_torch, *arrays):
    (out, grads), (want, want_grads), extra = _both(fn_eager, fn_torch, *arrays)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    if extra is not None:
        np.testing.assert_array_equal(*extra)


X2 = RNG.standard_normal((2, 3, 7, 8))
X1 = RNG.standard_normal((2, 3, 9))

CONV2D = {
    "plain": dict(),
    "same": dict(padding="same"),
    "valid_strided": dict(padding="valid", stride=2),
    "pairs_dilated": dict(padding=(1, 2), dilation=(2, 1)),
    "same_dilated": dict(padding="same", dilation=2),
    "strided_padded": dict(stride=(2, 3), padding=1),
}


@pytest.mark.parametrize("kw", CONV2D.values(), ids=CONV2D.keys())
def test_conv2d_with_bias_matches_torch_values_and_gradients(kw):
    w, b = RNG.standard_normal((6, 3, 3, 3)), RNG.standard_normal(6)
    _check(lambda x, w, b: F.conv2d(x, w, b, **kw), lambda x, w, b: TF.conv2d(x, w, b, **kw), X2, w, b)


def test_conv2d_groups_even_same_kernel_unbatched_and_conv1d_match_torch():
    _check(lambda x, w: F.conv2d(x, w, groups=3, stride=2), lambda x, w: TF.conv2d(x, w, groups=3, stride=2),
           X2, RNG.standard_normal((6, 1, 3, 2)))
    # an even kernel with "same": PyTorch pads the odd element on the high side
    with pytest.warns(UserWarning):  # torch's own warning about the copy it makes
        _check(lambda x, w: F.conv2d(x, w, padding="same"), lambda x, w: TF.conv2d(x, w, padding="same"),
               X2[0], RNG.standard_normal((4, 3, 2, 4)))
    _check(lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=2, dilation=2),
           lambda x, w, b: TF.conv1d(x, w, b, stride=2, padding=2, dilation=2), X1, RNG.standard_normal((4, 3, 3)),
           RNG.standard_normal(4))
    _check(lambda x, w: F.conv1d(x, w, groups=3, padding="same"),
           lambda x, w: TF.conv1d(x, w, groups=3, padding="same"), X1, RNG.standard_normal((6, 1, 5)))


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1, output_padding=1), dict(stride=(2, 1), groups=3, dilation=2),
                                dict(stride=3, padding=(0, 2))], ids=["output_padding", "groups_dilation", "strided"])
def test_conv_transpose2d_matches_torch(kw):
    groups = kw.get("groups", 1)  # weight [in_channels, out_channels / groups, kh, kw]: 2 outputs per group
    w, b = RNG.standard_normal((3, 2, 3, 3)), RNG.standard_normal(2 * groups)
    _check(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), lambda x, w, b: TF.conv_transpose2d(x, w, b, **kw),
           X2, w, b)


def test_conv_transpose1d_matches_torch():
    _check(lambda x, w: F.conv_transpose1d(x, w, stride=3), lambda x, w: TF.conv_transpose1d(x, w, stride=3), X1,
           RNG.standard_normal((3, 2, 4)))


MAX_POOL = {
    "k2": dict(kernel_size=2),
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "ceil_mode": dict(kernel_size=3, stride=2, ceil_mode=True),
    "rect_dilated": dict(kernel_size=(2, 3), stride=(1, 2), dilation=2, padding=(1, 1)),
    "overlapping": dict(kernel_size=3, stride=1),
}


@pytest.mark.parametrize("kw", MAX_POOL.values(), ids=MAX_POOL.keys())
@pytest.mark.parametrize("data", ["distinct", "ties"])
def test_max_pool2d_matches_torch_values_indices_and_gradients(kw, data):
    # rounded normals tie often: the gradient must go to the element PyTorch picks, and overlaps must add up
    x = X2 if data == "distinct" else np.round(X2)
    _check(lambda a: F.max_pool2d(a, **kw, return_indices=True), lambda a: TF.max_pool2d(a, **kw, return_indices=True),
           x)


def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window():
    x = eager.tensor([[[[1.0, 4.0, 4.0], [4.0, 0.0, 4.0]]]], requires_grad=True)
    F.max_pool2d(x, (2, 2), stride=1).sum().backward()
    # window 1 reads columns 0-1 and picks (0, 1); window 2 reads columns 1-2 and picks (0, 1) again
    assert x.grad.tolist() == [[[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]]
    assert torch.equal(torch.tensor(x.grad.numpy()), _torch_grad(lambda t: TF.max_pool2d(t, (2, 2), stride=1),
                                                                  x.detach().numpy()))


def _torch_grad(fn, a):
    t = torch.tensor(a, requires_grad=True)
    fn(t).sum().backward()
    return t.grad


AVG_POOL = {
    "k2": dict(kernel_size=2),
    "padded": dict(kernel_size=3, stride=2, padding=1),
    "padded_exclude": dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "ceil_mode": dict(kernel_size=3, stride=2, ceil_mode=True, padding=1),
    "ceil_mode_exclude": dict(kernel_size=3, stride=2, ceil_mode=True, padding=1, count_include_pad=False),
    "divisor_override": dict(kernel_size=(2, 3), divisor_override=5),
}


@pytest.mark.parametrize("kw", AVG_POOL.values(), ids=AVG_POOL.keys())
def test_avg_pool2d_matches_torch(kw):
    _check(lambda a: F.avg_pool2d(a, **kw), lambda a: TF.avg_pool2d(a, **kw), X2)


@pytest.mark.parametrize("size", [1, (3, 5), (None, 3), (7, 8), (4, 11)], ids=str)
def test_adaptive_avg_pool2d_matches_torch_with_unequal_windows(size):
    _check(lambda a: F.adaptive_avg_pool2d(a, size), lambda a: TF.adaptive_avg_pool2d(a, size), X2)


def test_1d_pools_match_torch():
    _check(lambda a: F.max_pool1d(a, 3, 2, 1), lambda a: TF.max_pool1d(a, 3, 2, 1), X1)
    _check(lambda a: F.avg_pool1d(a, 3, 2, 1, count_include_pad=False),
           lambda a: TF.avg_pool1d(a, 3, 2, 1, count_include_pad=False), X1)
    _check(lambda a: F.adaptive_avg_pool1d(a, 4), lambda a: TF.adaptive_avg_pool1d(a, 4), X1)


def test_pool_modules_match_torch_and_print_like_it():
    for ours, theirs in [(nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)), (nn.AvgPool2d(2), torch.nn.AvgPool2d(2)),
                         (nn.AdaptiveAvgPool2d((2, 3)), torch.nn.AdaptiveAvgPool2d((2, 3))),
                         (nn.MaxPool1d(2), torch.nn.MaxPool1d(2)), (nn.AvgPool1d(3, 1), torch.nn.AvgPool1d(3, 1)),
                         (nn.AdaptiveAvgPool1d(2), torch.nn.AdaptiveAvgPool1d(2))]:
        x = X2 if "2d" in type(ours).__name__ else X1
        np.testing.assert_allclose(ours(eager.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy(), rtol=1e-12)
        assert repr(ours) == repr(theirs)


def test_pad_matches_torch_including_negative_amounts():
    for amounts in [(1, 2), (1, 0, 2, 1), (-1, 2, 0, 1), (1, 1, 1, 1, 1, 1)]:
        _check(lambda a, p=amounts: F.pad(a, p, value=3.0), lambda a, p=amounts: TF.pad(a, p, value=3.0), X2[0])


# ---------------------------------------------------------------- batch norm


def test_batch_norm_function_matches_torch_in_training_and_eval():
    rm, rv = RNG.standard_normal(3), RNG.uniform(0.5, 2, 3)
    w, b = RNG.standard_normal(3), RNG.standard_normal(3)
    _check(lambda x, w, b: F.batch_norm(x, eager.tensor(rm), eager.tensor(rv), w, b),
           lambda x, w, b: TF.batch_norm(x, torch.tensor(rm), torch.tensor(rv), w, b), X2, w, b)
    ours, theirs = (eager.tensor(rm), eager.tensor(rv)), (torch.tensor(rm), torch.tensor(rv))
    _check(lambda x, w, b: F.batch_norm(x, *ours, w, b, training=True, momentum=0.3),
           lambda x, w, b: TF.batch_norm(x, *theirs, w, b, training=True, momentum=0.3), X2, w, b)
    for o, t in zip(ours, theirs):  # updated in place: the unbiased variance, momentum 0.3
        np.testing.assert_allclose(o.numpy(), t.numpy(), rtol=1e-12)
        assert not np.allclose(o.numpy(), rm) and not np.allclose(o.numpy(), rv)


@pytest.mark.parametrize("kw", [dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                                dict(momentum=0.5, eps=1e-3)], ids=str)
@pytest.mark.parametrize("cls, shape", [("BatchNorm2d", (4, 3, 5, 5)), ("BatchNorm1d", (6, 3)),
                                        ("BatchNorm1d", (4, 3, 7))])
def test_batchnorm_module_tracks_running_stats_like_torch_in_train_then_eval(cls, shape, kw):
    ours, theirs = getattr(nn, cls)(3, **kw).double(), getattr(torch.nn, cls)(3, **kw).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for step in range(3):  # three training batches, then eval on a fourth
        x = RNG.standard_normal(shape) * (step + 1) + step
        np.testing.assert_allclose(ours(eager.tensor(x)).detach().numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[k].numpy(), v.numpy(), rtol=1e-12, err_msg=k)
    ours.eval(), theirs.eval()
    x = RNG.standard_normal(shape)
    np.testing.assert_allclose(ours(eager.tensor(x)).detach().numpy(), theirs(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    if ours.track_running_stats:
        assert ours.num_batches_tracked.item() == 3 and ours.num_batches_tracked.dtype == np.int64


def test_batchnorm_eval_uses_running_stats_and_does_not_update_them():
    bn = nn.BatchNorm2d(2)
    with eager.no_grad():
        bn.running_mean.copy_(eager.tensor([1.0, -1.0]))
        bn.running_var.copy_(eager.tensor([4.0, 0.25]))
    bn.eval()
    out = bn(eager.ones(1, 2, 1, 1) * 3.0)
    want = [2.0 / np.sqrt(4 + 1e-5), 4.0 / np.sqrt(0.25 + 1e-5)]
    np.testing.assert_allclose(out.detach().numpy().ravel(), want, rtol=1e-6)
    assert bn.running_mean.tolist() == [1.0, -1.0] and bn.num_batches_tracked.item() == 0


# ---------------------------------------------------------------- modules and state dicts across


@pytest.mark.parametrize("make", [
    lambda m: m.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
    lambda m: m.Conv2d(3, 5, (2, 3), padding="same", dilation=(1, 2), bias=False),
    lambda m: m.Conv1d(3, 4, 5, padding="valid"),
    lambda m: m.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    lambda m: m.ConvTranspose1d(3, 2, 4, stride=2),
    lambda m: m.BatchNorm2d(4),
], ids=["conv2d_groups", "conv2d_same_nobias", "conv1d", "convtranspose2d", "convtranspose1d", "batchnorm2d"])
def test_torch_state_dict_loads_into_our_module_and_outputs_agree(make):
    theirs, ours = make(torch.nn).double(), make(nn).double()
    assert repr(ours) == repr(theirs)
    assert {k: list(v.shape) for k, v in ours.state_dict().items()} == \
        {k: list(v.shape) for k, v in theirs.state_dict().items()}
    ours.load_state_dict({k: eager.tensor(v.numpy()) for k, v in theirs.state_dict().items()})
    channels = getattr(theirs, "in_channels", 4)
    spatial = (6, 7) if "2d" in type(ours).__name__ else (9,)
    x = RNG.standard_normal((2, channels) + spatial)
    np.testing.assert_allclose(ours(eager.tensor(x)).detach().numpy(), theirs(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_conv_init_has_pytorchs_bounds():
    eager.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, groups=2)  # fan_in = 4 / 2 * 9 = 18
    bound = 1 / np.sqrt(18)
    assert np.abs(conv.weight.detach().numpy()).max() <= bound and np.abs(conv.bias.detach().numpy()).max() <= bound
    assert np.abs(conv.weight.detach().numpy()).max() > 0.8 * bound  # uniform over the whole range, not a narrower one


# ---------------------------------------------------------------- the three modes


def _cnn():
    eager.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, stride=2, groups=2), nn.AvgPool2d(2, ceil_mode=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


X_IMG = eager.tensor(RNG.standard_normal((4, 1, 12, 12)).astype(np.float32))
Y_IMG = eager.tensor([0, 1, 2, 1])


def _train(mode: str, steps: int = 3):
    model = _cnn()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    if mode == "eager":
        fn = step
    elif mode == "traced":
        fn = tracer.trace(step, X_IMG, Y_IMG)
    else:
        fn = compiler.compile(step, X_IMG, Y_IMG, backend=mode)
    losses = [float(fn(X_IMG, Y_IMG)) for _ in range(steps)]
    return fn, losses, {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["traced", "c", "simt", "xla"])
def test_cnn_train_step_with_batchnorm_agrees_with_eager_in_every_mode(mode):
    if mode == "simt" and cxx_compiler() is None:
        pytest.skip("no C++ compiler for the SIMT emulator")
    _, want_losses, want = _train("eager")
    fn, losses, got = _train(mode)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert got.keys() == want.keys()
    for k in want:  # parameters, and the running statistics written back after every call
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert got["1.num_batches_tracked"] == 3 and not np.allclose(got["1.running_mean"], 0)
    if mode != "xla":
        graph = fn.graph if mode == "traced" else fn.lowered.source_graph
        ops = [n.op for n in graph.nodes]
        assert {"conv", "conv_transpose", "conv_weight_grad"} <= set(ops)
        assert "conv_transpose" in ops[ops.index("conv"):]  # the input gradient of the second conv, after the forward


@pytest.mark.parametrize("mode", ["traced", "c", "xla"])
def test_cnn_in_eval_runs_the_running_stats_in_every_mode(mode):
    model = _cnn()
    model.train()
    model(X_IMG)  # one batch of statistics
    model.eval()
    want = model(X_IMG).detach().numpy()
    fn = tracer.trace(model, X_IMG) if mode == "traced" else compiler.compile(model, X_IMG, backend=mode)
    np.testing.assert_allclose(fn(X_IMG).numpy(), want, rtol=1e-5, atol=1e-6)
    assert model[1].num_batches_tracked.item() == 1  # eval calls left the statistics alone


def test_traced_conv_graph_saves_and_loads(tmp_path):
    conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
    traced = tracer.trace(lambda x: F.max_pool2d(conv(x), 2).relu(), X_IMG)
    traced.save(str(tmp_path / "conv.gd"))
    loaded = tracer.load(str(tmp_path / "conv.gd"))
    np.testing.assert_allclose(loaded(X_IMG).numpy(), traced(X_IMG).numpy(), rtol=1e-6)


def test_tracer_grad_of_a_conv_equals_eager_backward():
    w = eager.tensor(RNG.standard_normal((3, 1, 3, 3)).astype(np.float32), requires_grad=True)
    fn = lambda x, w: F.conv2d(x, w, stride=2, padding=1).tanh().sum()  # noqa: E731
    fn(X_IMG, w).backward()
    grad = tracer.grad(fn, X_IMG, w, argnums=1)
    np.testing.assert_allclose(grad(X_IMG, w).numpy(), w.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad inputs


def test_conv_channel_mismatch_names_expected_and_given_channels():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ShapeError, match=r"expected input \[2, 4, 10, 10\] to have 3 channels, but got 4") as e:
        conv(eager.ones(2, 4, 10, 10))
    assert "Conv2d" in str(e.value)  # the module where it was raised


def test_conv_kernel_larger_than_the_padded_input_is_refused():
    with pytest.raises(ShapeError, match=r"padded input size per channel: \(4 x 4\). Kernel size \(dilated\): \(5 x 5"):
        F.conv2d(eager.ones(1, 1, 2, 2), eager.ones(1, 1, 5, 5), padding=1)
    with pytest.raises(ShapeError, match="Kernel size"):
        F.conv1d(eager.ones(1, 1, 5), eager.ones(1, 1, 3), dilation=3)


def test_groups_that_do_not_divide_the_channels_are_refused():
    with pytest.raises(ValueError, match=r"in_channels \(3\) must be divisible by groups \(2\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"out_channels \(5\) must be divisible by groups \(2\)"):
        nn.Conv2d(4, 5, 3, groups=2)
    with pytest.raises(ShapeError, match=r"out_channels \(5.*divisible by groups \(2\)"):
        F.conv2d(eager.ones(1, 4, 5, 5), eager.ones(5, 2, 3, 3), groups=2)


def test_bad_conv_arguments_fail_clearly():
    x, w = eager.ones(1, 1, 5, 5), eager.ones(1, 1, 3, 3)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="invalid padding string 'full'"):
        F.conv2d(x, w, padding="full")
    with pytest.raises(ShapeError, match="expected a 3-D .unbatched. or 4-D .batched. input"):
        F.conv2d(eager.ones(5, 5), w)
    with pytest.raises(ShapeError, match="bias of shape \\[2\\]"):
        F.conv2d(x, w, eager.ones(2))
    with pytest.raises(ShapeError, match="one dtype"):
        F.conv2d(x.double(), w)
    with pytest.raises(ValueError, match="output padding"):
        F.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(NotImplementedError, match="padding_mode 'reflect'"):
        nn.Conv2d(1, 1, 3, padding_mode="reflect")


def test_bad_pooling_and_batchnorm_inputs_fail_clearly():
    with pytest.raises(ValueError, match="pad should be at most half"):
        F.max_pool2d(eager.ones(1, 1, 6, 6), 2, padding=2)
    with pytest.raises(ShapeError, match="output size is too small"):
        F.max_pool2d(eager.ones(1, 1, 2, 2), 3)
    with pytest.raises(TypeError, match="floating-point"):
        F.avg_pool2d(eager.ones(1, 1, 4, 4).long(), 2)
    with pytest.raises(ShapeError, match="num_features=3"):
        nn.BatchNorm2d(3)(eager.ones(2, 4, 2, 2))
    with pytest.raises(ShapeError, match="expected 4D input .got 3D"):
        nn.BatchNorm2d(3)(eager.ones(2, 3, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(eager.ones(1, 3))


# ---------------------------------------------------------------- on the GPU (the real one, or the fake CuPy in CI)


def _conv_bn(device: str):
    eager.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3)).to(device)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return model, step


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_conv_batchnorm_train_step_on_cuda_matches_the_cpu(mode):
    model_g, step_g = _conv_bn("cuda")
    model_c, step_c = _conv_bn("cpu")
    xg, yg = X_IMG.to("cuda"), Y_IMG.to("cuda")
    if mode == "compiled":
        step_g = compiler.compile(step_g, xg, yg, device="cuda")
    for _ in range(2):
        np.testing.assert_allclose(float(step_g(xg, yg)), float(step_c(X_IMG, Y_IMG)), rtol=1e-4, atol=1e-6)
    for (k, g), c in zip(model_g.state_dict().items(), model_c.state_dict().values()):
        np.testing.assert_allclose(g.cpu().numpy(), c.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.gpu
def test_pooling_on_cuda_matches_the_cpu():
    import cupy
    if not hasattr(cupy, "lib"):
        pytest.skip("the fake CuPy has no cupy.lib.stride_tricks, which unfold's views use (real CuPy has it)")
    x = X2.astype(np.float32)
    for fn in (lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: F.avg_pool2d(t, 2, ceil_mode=True),
               lambda t: F.adaptive_avg_pool2d(t, (3, 5))):
        xg, xc = eager.tensor(x, device="cuda", requires_grad=True), eager.tensor(x, requires_grad=True)
        fn(xg).sum().backward()
        fn(xc).sum().backward()
        np.testing.assert_allclose(fn(xg).detach().cpu().numpy(), fn(xc).detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xg.grad.cpu().numpy(), xc.grad.numpy(), rtol=1e-6, atol=1e-6)
