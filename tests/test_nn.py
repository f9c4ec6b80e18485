"""eager.nn: Module registration and traversal, state_dict round trips and errors, layers and losses against
PyTorch (same weights, float64), init bounds, devices, printing, and error messages naming the module."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import eager
from eager import nn, optim
from eager.nn import functional as F
from eager.nn.utils import clip_grad_norm_, clip_grad_value_

F64 = eager.float64


def _np(t):
    return t.detach().numpy()


def _copy_torch_weights(torch_module, eager_module):
    eager_module.load_state_dict({k: eager.tensor(v.detach().numpy()) for k, v in torch_module.state_dict().items()})


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 2)
        self.register_buffer("running", eager.zeros(2))
        self.register_buffer("scratch", eager.zeros(1), persistent=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) + self.running


# ---------------------------------------------------------------- registration and traversal


def test_assigned_parameters_modules_and_buffers_are_registered_in_order():
    m = TwoLayer()
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [n for n, _ in m.named_children()] == ["fc1", "act", "fc2"]
    assert [n for n, _ in m.named_modules()] == ["", "fc1", "act", "fc2"]
    assert [n for n, _ in m.named_buffers()] == ["running", "scratch"]
    assert list(m.state_dict()) == ["running", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf for p in m.parameters())
    assert m.get_submodule("fc1") is m.fc1 and m.fc1.weight is dict(m.named_parameters())["fc1.weight"]


def test_shared_parameter_is_listed_once():
    a = nn.Linear(2, 2)
    m = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(m.parameters())) == 2
    assert [n for n, _ in m.named_modules()] == ["", "0", "1"]


def test_reassigning_and_deleting_attributes_keeps_registries_consistent():
    m = TwoLayer()
    m.fc1 = nn.Linear(3, 4, bias=False)
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight", "fc2.weight", "fc2.bias"]
    m.fc1.bias = None  # a registered None parameter may stay None
    del m.fc2
    assert [n for n, _ in m.named_children()] == ["fc1", "act"]
    with pytest.raises(TypeError, match="cannot assign Tensor as parameter 'weight'"):
        m.fc1.weight = eager.zeros(4, 3)
    with pytest.raises(TypeError, match="buffer 'running'"):
        m.running = 3


def test_assigning_before_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Bad()


def test_parameter_is_a_leaf_tensor_and_ops_on_it_give_plain_tensors():
    p = nn.Parameter(eager.tensor([1.0, 2.0]))
    assert p.requires_grad and p.is_leaf and isinstance(p, eager.Tensor)
    y = p * 2
    assert type(y) is eager.Tensor and y.grad_fn.name() == "MulBackward" and y.tolist() == [2.0, 4.0]
    assert repr(p).startswith("Parameter containing:\ntensor([1., 2.], requires_grad=True)")
    assert not nn.Parameter(eager.zeros(1), requires_grad=False).requires_grad


def test_train_and_eval_propagate_and_switch_dropout():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    assert m.training and m[1].training
    m.eval()
    assert not m.training and not m[1].training
    x = eager.ones(3, 4)
    np.testing.assert_array_equal(m(x).detach().numpy(), m[0](x).detach().numpy())
    m.train()
    eager.manual_seed(0)
    assert (m(eager.ones(50, 4)).detach().numpy() == 0).any()


def test_zero_grad_sets_none_or_zeros():
    m = TwoLayer()
    m(eager.randn(2, 3)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_module_to_float64_casts_parameters_gradients_and_buffers_in_place():
    m = TwoLayer()
    weight = m.fc1.weight
    m(eager.randn(2, 3)).sum().backward()
    assert m.double() is m
    assert m.fc1.weight is weight and weight.dtype == F64 and weight.grad.dtype == F64
    assert m.running.dtype == F64
    assert m(eager.randn(2, 3, dtype=F64)).dtype == F64


@pytest.mark.skipif(eager.cuda_available(), reason="checks the error raised when no GPU/CuPy is present")
def test_module_to_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device='cuda'"):
        nn.Linear(2, 2).to("cuda")


def test_deepcopy_gives_an_independent_module():
    m = TwoLayer()
    c = copy.deepcopy(m)
    with eager.no_grad():
        c.fc1.weight.add_(1.0)
    np.testing.assert_allclose(_np(c.fc1.weight) - _np(m.fc1.weight), 1.0, rtol=1e-6)
    assert isinstance(c.fc1.weight, nn.Parameter)


# ---------------------------------------------------------------- state_dict


def test_state_dict_round_trip_reproduces_outputs_and_keeps_parameter_identity():
    a, b = TwoLayer(), TwoLayer()
    with eager.no_grad():
        a.running.add_(0.5)
    weight = b.fc1.weight
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert b.fc1.weight is weight and b.fc1.weight.requires_grad
    x = eager.randn(5, 3)
    np.testing.assert_array_equal(_np(a(x)), _np(b(x)))


def test_state_dict_shares_memory_with_the_parameters_as_in_pytorch():
    m = TwoLayer()
    saved = m.state_dict()
    before = saved["fc1.weight"].numpy().copy()
    with eager.no_grad():
        m.fc1.weight.sub_(1.0)
    np.testing.assert_array_equal(saved["fc1.weight"].numpy(), before - 1.0)  # sees the update
    assert not saved["fc1.weight"].requires_grad
    saved["fc1.bias"].zero_()  # and writes through to the module
    assert not m.fc1.bias.detach().numpy().any()


def test_load_state_dict_reports_missing_unexpected_and_mis_shaped_keys_together():
    m = TwoLayer()
    sd = m.state_dict()
    del sd["fc2.bias"]
    sd["fc3.weight"] = eager.zeros(2, 5)
    sd["fc1.weight"] = eager.zeros(5, 3)
    with pytest.raises(nn.StateDictError) as info:
        m.load_state_dict(sd)
    msg = str(info.value)
    assert 'Missing key(s) in state_dict: "fc2.bias" (expected shape [2])' in msg
    assert 'Unexpected key(s) in state_dict: "fc3.weight" (shape [2, 5])' in msg
    assert "size mismatch for fc1.weight: copying a param with shape [5, 3] from checkpoint, the shape in " \
           "current model is [4, 3]" in msg


def test_load_state_dict_non_strict_returns_keys_but_still_refuses_wrong_shapes():
    m = TwoLayer()
    sd = m.state_dict()
    del sd["fc2.bias"]
    sd["extra"] = eager.zeros(1)
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["fc2.bias"] and result.unexpected_keys == ["extra"]
    sd["fc2.weight"] = eager.zeros(1)
    with pytest.raises(nn.StateDictError, match="size mismatch for fc2.weight"):
        m.load_state_dict(sd, strict=False)


def test_load_state_dict_accepts_torch_weights():
    torch = pytest.importorskip("torch")
    t = torch.nn.Linear(3, 2)
    e = nn.Linear(3, 2)
    _copy_torch_weights(t, e)
    np.testing.assert_array_equal(_np(e.weight), t.weight.detach().numpy())


# ---------------------------------------------------------------- layers against torch


def test_linear_init_is_uniform_within_one_over_sqrt_in_features():
    eager.manual_seed(0)
    m = nn.Linear(256, 128)
    bound = 1 / 16
    w, b = _np(m.weight), _np(m.bias)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.03)  # U(-b, b) has std b/sqrt(3)
    assert abs(w.mean()) < 0.01 * bound * 3


def _layer_cases(torch):
    tnn = torch.nn
    return [
        (tnn.Linear(5, 3), nn.Linear(5, 3), (4, 5)),
        (tnn.Linear(5, 3, bias=False), nn.Linear(5, 3, bias=False), (2, 4, 5)),
        (tnn.LayerNorm(5), nn.LayerNorm(5), (4, 5)),
        (tnn.LayerNorm((3, 5), elementwise_affine=False), nn.LayerNorm((3, 5), elementwise_affine=False), (2, 3, 5)),
        (tnn.GELU(), nn.GELU(), (4, 5)),
        (tnn.GELU(approximate="tanh"), nn.GELU(approximate="tanh"), (4, 5)),
        (tnn.ReLU(), nn.ReLU(), (4, 5)),
        (tnn.LeakyReLU(0.2), nn.LeakyReLU(0.2), (4, 5)),
        (tnn.Tanh(), nn.Tanh(), (4, 5)),
        (tnn.Sigmoid(), nn.Sigmoid(), (4, 5)),
        (tnn.SiLU(), nn.SiLU(), (4, 5)),
        (tnn.Softmax(dim=1), nn.Softmax(dim=1), (4, 5)),
        (tnn.LogSoftmax(dim=1), nn.LogSoftmax(dim=1), (4, 5)),
        (tnn.Flatten(), nn.Flatten(), (2, 3, 4)),
        (tnn.Identity(), nn.Identity(), (2, 3)),
        (tnn.Sequential(tnn.Linear(5, 8), tnn.GELU(), tnn.LayerNorm(8), tnn.Linear(8, 2)),
         nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 2)), (6, 5)),
    ]


@pytest.mark.parametrize("index", range(16))
def test_layer_output_and_gradients_equal_torch_in_float64(index):
    torch = pytest.importorskip("torch")
    torch.manual_seed(index)
    t_layer, e_layer, shape = _layer_cases(torch)[index]
    t_layer.double()
    e_layer.double()
    _copy_torch_weights(t_layer, e_layer)
    x = np.random.default_rng(index).standard_normal(shape)
    tx, ex = torch.tensor(x, requires_grad=True), eager.tensor(x, requires_grad=True)
    t_out, e_out = t_layer(tx), e_layer(ex)
    np.testing.assert_allclose(_np(e_out), t_out.detach().numpy(), rtol=1e-12, atol=1e-14)
    ct = np.random.default_rng(99).standard_normal(t_out.shape)
    t_out.backward(torch.tensor(ct))
    e_out.backward(eager.tensor(ct))
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-13)
    for (name, tp), ep in zip(t_layer.named_parameters(), e_layer.parameters()):
        np.testing.assert_allclose(ep.grad.numpy(), tp.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_embedding_matches_torch_and_padding_row_gets_no_gradient():
    torch = pytest.importorskip("torch")
    t, e = torch.nn.Embedding(6, 3, padding_idx=1).double(), nn.Embedding(6, 3, padding_idx=1).double()
    assert not _np(e.weight)[1].any()  # the padding row starts at zero
    _copy_torch_weights(t, e)
    idx = np.array([[0, 1, 1], [5, 0, 2]])
    t_out, e_out = t(torch.tensor(idx)), e(eager.tensor(idx))
    np.testing.assert_array_equal(_np(e_out), t_out.detach().numpy())
    (t_out * 2).sum().backward()
    (e_out * 2).sum().backward()
    np.testing.assert_array_equal(e.weight.grad.numpy(), t.weight.grad.numpy())
    assert e.weight.grad.numpy()[0].tolist() == [4.0, 4.0, 4.0]  # index 0 used twice: gradients accumulate
    assert not e.weight.grad.numpy()[1].any()


@pytest.mark.parametrize("name", ["mse", "ce", "ce_weighted_smoothed", "nll", "bce", "bce_logits"])
def test_loss_modules_equal_torch(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits, probs = rng.standard_normal((6, 4)), rng.uniform(0.05, 0.95, (6, 4))
    cls, binary = np.array([0, 3, 1, 2, 2, 0]), rng.integers(0, 2, (6, 4)).astype(np.float64)
    w = np.array([1.0, 0.5, 2.0, 1.0])
    cases = {
        "mse": (torch.nn.MSELoss(), nn.MSELoss(), logits, probs),
        "ce": (torch.nn.CrossEntropyLoss(), nn.CrossEntropyLoss(), logits, cls),
        "ce_weighted_smoothed": (torch.nn.CrossEntropyLoss(torch.tensor(w), label_smoothing=0.1, ignore_index=2),
                                 nn.CrossEntropyLoss(eager.tensor(w), label_smoothing=0.1, ignore_index=2),
                                 logits, cls),
        "nll": (torch.nn.NLLLoss(reduction="sum"), nn.NLLLoss(reduction="sum"), -probs, cls),
        "bce": (torch.nn.BCELoss(), nn.BCELoss(), probs, binary),
        "bce_logits": (torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w)),
                       nn.BCEWithLogitsLoss(pos_weight=eager.tensor(w)), logits, binary),
    }
    t_loss, e_loss, x, y = cases[name]
    tx, ex = torch.tensor(x, requires_grad=True), eager.tensor(x, requires_grad=True)
    t_val, e_val = t_loss(tx, torch.tensor(y)), e_loss(ex, eager.tensor(y))
    assert e_val.item() == pytest.approx(t_val.item(), rel=1e-12)
    t_val.backward()
    e_val.backward()
    np.testing.assert_allclose(ex.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_mlp_classifier_matches_torch_through_training_with_cross_entropy():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    em = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    _copy_torch_weights(tm, em)
    x = np.random.default_rng(0).standard_normal((32, 4))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    t_opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    e_opt = optim.SGD(em.parameters(), lr=0.1)
    for _ in range(5):
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y)).backward()
        t_opt.step()
        e_opt.zero_grad()
        F.cross_entropy(em(eager.tensor(x)), eager.tensor(y)).backward()
        e_opt.step()
    for tp, ep in zip(tm.parameters(), em.parameters()):
        np.testing.assert_allclose(_np(ep), tp.detach().numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- containers and printing


def test_repr_matches_torch_for_nested_models():
    torch = pytest.importorskip("torch")

    def build(lib):
        blocks = lib.ModuleList([lib.Linear(8, 8) for _ in range(3)] + [lib.Linear(8, 4)])
        return lib.Sequential(lib.Linear(2, 8), lib.ReLU(), lib.GELU(approximate="tanh"), lib.LayerNorm(8),
                              lib.Dropout(0.1), lib.Embedding(10, 3, padding_idx=0), blocks,
                              lib.CrossEntropyLoss(), lib.Flatten(), lib.LeakyReLU(0.2), lib.Softmax(dim=-1))

    assert repr(build(nn)) == repr(build(torch.nn))


def test_module_list_and_sequential_behave_like_lists():
    layers = nn.ModuleList([nn.Linear(1, 1) for _ in range(3)])
    first = layers[0]
    layers.insert(0, nn.ReLU())
    assert isinstance(layers[0], nn.ReLU) and layers[1] is first and len(layers) == 4
    assert [n for n, _ in layers.named_children()] == ["0", "1", "2", "3"]
    del layers[0]
    assert layers[0] is first and layers[-1] is list(layers)[2]
    assert len(layers[1:]) == 2
    layers += [nn.Tanh()]
    assert isinstance(layers[3], nn.Tanh)
    with pytest.raises(IndexError, match="out of range for 4"):
        layers[4]
    with pytest.raises(NotImplementedError, match="iterate"):
        layers(eager.zeros(1))
    seq = nn.Sequential({"a": nn.Linear(2, 2), "b": nn.ReLU()})
    assert list(seq.state_dict()) == ["a.weight", "a.bias"]
    assert isinstance(seq[-1], nn.ReLU) and len(seq[:1]) == 1
    d = nn.ModuleDict({"enc": nn.Linear(2, 2)})
    d["dec"] = nn.Linear(2, 1)
    assert list(d) == ["enc", "dec"] and "dec" in d and len(list(d.parameters())) == 4


def test_shape_error_inside_a_model_names_the_module_path():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(4, 2))

        def forward(self, x):
            return self.body(x)

    with pytest.raises(eager.ShapeError) as info:
        Net()(eager.randn(3, 4))
    msg = str(info.value)
    assert "input of shape [3, 8]" in msg and "in_features=4" in msg
    assert "raised in module Net.body.2: Linear(in_features=4, out_features=2, bias=True)" in msg


# ---------------------------------------------------------------- init and gradient clipping


def test_init_functions_respect_their_bounds():
    w = eager.empty(64, 32)
    nn.init.xavier_uniform_(w)
    assert np.abs(w.numpy()).max() <= np.sqrt(6 / 96)
    nn.init.kaiming_uniform_(w, nonlinearity="relu")
    assert np.abs(w.numpy()).max() <= np.sqrt(6 / 32)
    nn.init.constant_(w, 0.25)
    assert (w.numpy() == 0.25).all()
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(eager.empty(3))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_equals_torch(norm_type):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)) * 5, rng.standard_normal(4)]
    tp = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    ep = [eager.zeros(*g.shape, dtype=F64, requires_grad=True) for g in grads]
    for t, e, g in zip(tp, ep, grads):
        t.grad, e.grad = torch.tensor(g), eager.tensor(g)
    t_norm = torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type)
    e_norm = clip_grad_norm_(ep, 1.0, norm_type)
    assert e_norm.item() == pytest.approx(t_norm.item(), rel=1e-12)
    for t, e in zip(tp, ep):
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_leaves_small_gradients_and_clip_value_clamps():
    w = eager.zeros(2, requires_grad=True)
    w.grad = eager.tensor([0.3, 0.4])
    assert clip_grad_norm_(w, max_norm=1.0).item() == pytest.approx(0.5)
    np.testing.assert_allclose(w.grad.numpy(), [0.3, 0.4], rtol=1e-5)
    w.grad = eager.tensor([-3.0, 0.2])
    clip_grad_value_([w], 1.0)
    np.testing.assert_allclose(w.grad.numpy(), [-1.0, 0.2], rtol=1e-6)
    w.grad = eager.tensor([float("nan"), 1.0])
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        clip_grad_norm_([w], 1.0, error_if_nonfinite=True)


def test_randperm_without_a_generator_permutation_is_still_a_uniform_permutation():
    """CuPy's Generator has no ``permutation``: the fallback argsorts uniform draws."""
    from eager.random import Generator

    class NoPermutation:
        def __init__(self, rng):
            self.rng = rng

        def random(self, *args, **kwargs):
            return self.rng.random(*args, **kwargs)
    gen = Generator(seed=3)
    gen._rng = NoPermutation(np.random.default_rng(3))
    perms = [gen.permutation(6) for _ in range(600)]
    assert all(sorted(p.tolist()) == list(range(6)) and p.dtype == np.int64 for p in perms)
    first = np.bincount([p[0] for p in perms], minlength=6)
    assert first.min() > 60  # each of 6 values leads about 100 times in 600 draws
