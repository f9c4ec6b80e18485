"""eager.optim: SGD (momentum, dampening, nesterov, weight decay, maximize), Adam (L2, AMSGrad) and AdamW give
PyTorch's parameters step by step (float64, 10 steps); groups, zero_grad, state_dict, refusals; the update is
made of recordable primitives only (what a tracer needs)."""

from __future__ import annotations

import numpy as np
import pytest

import eager
from eager import nn, optim
from eager.autograd.mode import add_recorder

F64 = eager.float64
X = np.random.default_rng(0).standard_normal((8, 3))
Y = np.random.default_rng(1).standard_normal((8, 2))


def _models(torch, dtype=F64):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    em = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    if dtype == F64:
        tm.double()
    em.to(dtype)
    em.load_state_dict({k: eager.tensor(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return tm, em


def _run(torch, t_cls, e_cls, kwargs, steps=10, dtype=F64, groups=None):
    tm, em = _models(torch, dtype)
    if groups:
        t_opt = t_cls(groups(tm), **kwargs)
        e_opt = e_cls(groups(em), **kwargs)
    else:
        t_opt, e_opt = t_cls(tm.parameters(), **kwargs), e_cls(em.parameters(), **kwargs)
    tx, ty = torch.tensor(X, dtype=tm[0].weight.dtype), torch.tensor(Y, dtype=tm[0].weight.dtype)
    ex, ey = eager.tensor(X, dtype=dtype), eager.tensor(Y, dtype=dtype)
    for _ in range(steps):
        t_opt.zero_grad()
        torch.nn.functional.mse_loss(tm(tx), ty).backward()
        t_opt.step()
        e_opt.zero_grad()
        nn.functional.mse_loss(em(ex), ey).backward()
        e_opt.step()
    return tm, em, e_opt


def _assert_same_params(tm, em, tol):
    for (name, tp), ep in zip(tm.named_parameters(), em.parameters()):
        np.testing.assert_allclose(ep.detach().numpy(), tp.detach().numpy(), rtol=tol, atol=tol, err_msg=name)


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
             dict(lr=0.05, momentum=0.8, nesterov=True), dict(lr=0.1, weight_decay=0.05),
             dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), dict(lr=0.01, maximize=True)]
ADAM_CASES = [dict(lr=0.05), dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6), dict(lr=0.05, weight_decay=0.1),
              dict(lr=0.05, amsgrad=True), dict(lr=0.05, weight_decay=0.1, amsgrad=True, maximize=True)]
ADAMW_CASES = [dict(lr=0.05), dict(lr=0.05, weight_decay=0.3), dict(lr=0.05, weight_decay=0.1, amsgrad=True)]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=str)
def test_sgd_matches_torch_over_ten_steps_in_float64(kwargs):
    torch = pytest.importorskip("torch")
    tm, em, _ = _run(torch, torch.optim.SGD, optim.SGD, kwargs)
    _assert_same_params(tm, em, 1e-12)


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=str)
def test_adam_matches_torch_over_ten_steps_in_float64(kwargs):
    torch = pytest.importorskip("torch")
    tm, em, _ = _run(torch, torch.optim.Adam, optim.Adam, kwargs)
    _assert_same_params(tm, em, 1e-12)


@pytest.mark.parametrize("kwargs", ADAMW_CASES, ids=str)
def test_adamw_matches_torch_over_ten_steps_in_float64(kwargs):
    torch = pytest.importorskip("torch")
    tm, em, _ = _run(torch, torch.optim.AdamW, optim.AdamW, kwargs)
    _assert_same_params(tm, em, 1e-12)


def test_adam_matches_torch_in_float32():
    torch = pytest.importorskip("torch")
    tm, em, _ = _run(torch, torch.optim.Adam, optim.Adam, dict(lr=0.01), dtype=eager.float32)
    _assert_same_params(tm, em, 1e-5)


def test_param_groups_with_their_own_hyperparameters_match_torch():
    torch = pytest.importorskip("torch")

    def groups(model):
        return [{"params": model[0].parameters(), "lr": 0.2, "momentum": 0.5},
                {"params": model[2].parameters()}]
    tm, em, opt = _run(torch, torch.optim.SGD, optim.SGD, dict(lr=0.05, momentum=0.9), groups=groups)
    _assert_same_params(tm, em, 1e-12)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.05]
    assert [g["momentum"] for g in opt.param_groups] == [0.5, 0.9]


def test_first_adam_step_moves_every_weight_by_lr():
    w = eager.tensor([1.0, -2.0, 3.0], dtype=F64, requires_grad=True)
    opt = optim.Adam([w], lr=0.1)
    (w * eager.tensor([5.0, -0.01, 2.0], dtype=F64)).sum().backward()
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), [0.9, -1.9, 2.9], rtol=1e-6)


def test_state_is_eager_tensors_and_updates_leave_parameters_as_leaves():
    m = nn.Linear(3, 2)
    opt = optim.Adam(m.parameters(), lr=0.1)
    m(eager.randn(4, 3)).sum().backward()
    opt.step()
    state = opt.state[m.weight]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert all(isinstance(v, eager.Tensor) for v in state.values())
    assert state["step"].item() == 1.0 and state["exp_avg"].shape == m.weight.shape
    assert m.weight.is_leaf and m.weight.requires_grad and m.weight.grad_fn is None
    assert not state["exp_avg"].requires_grad


class _Recorder:
    """What a tracer sees: every primitive run, every in-place mutation, every value leaving the graph."""

    def __init__(self):
        self.prims, self.mutated, self.escapes = [], [], []

    def record(self, prim, inputs, params, out):
        self.prims.append(prim.name)

    def mutate(self, tensor, new):
        self.mutated.append(id(tensor))

    def escape(self, tensor, kind, value):
        self.escapes.append(kind)


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda ps: optim.Adam(ps, lr=0.1, amsgrad=True),
                                  lambda ps: optim.AdamW(ps, lr=0.1)], ids=["sgd", "adam", "adamw"])
def test_optimizer_step_is_only_recordable_primitives_and_in_place_mutations(make):
    m = nn.Linear(3, 2)
    opt = make(m.parameters())
    for _ in range(2):  # the second step also mutates the state created by the first
        opt.zero_grad()
        m(eager.randn(4, 3)).sum().backward()
        rec = _Recorder()
        with add_recorder(rec):
            opt.step()
        assert rec.escapes == []  # no .item()/.numpy(): the update never leaves the graph
        assert rec.prims  # it ran through apply (the tracer's hook)
        assert {id(p) for p in m.parameters()} <= set(rec.mutated)
    state_ids = {id(v) for s in opt.state.values() for v in s.values()}
    assert state_ids <= set(rec.mutated)


def test_parameters_without_grad_are_skipped_and_get_no_state():
    a = eager.tensor([1.0], requires_grad=True)
    b = eager.tensor([2.0], requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    (a * 2).sum().backward()
    opt.step()
    assert b.item() == 2.0 and b not in opt.state and a in opt.state


def test_zero_grad_sets_none_by_default_or_zeros():
    w = eager.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.1)
    (w * w).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert w.grad.tolist() == [0.0, 0.0]
    opt.zero_grad()
    assert w.grad is None


def test_closure_is_evaluated_with_grad_enabled_and_its_loss_returned():
    w = eager.tensor([3.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss
    with eager.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 9.0 and w.item() == 0.0


def test_state_dict_round_trip_continues_exactly_like_an_uninterrupted_run():
    def make():
        eager.manual_seed(0)
        m = nn.Linear(3, 2).double()
        return m, optim.Adam(m.parameters(), lr=0.05, amsgrad=True)

    def train(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            (m(eager.tensor(X)) ** 2).mean().backward()
            opt.step()

    m1, o1 = make()
    train(m1, o1, 6)
    m2, o2 = make()
    train(m2, o2, 3)
    saved_model, saved_opt = m2.state_dict(), o2.state_dict()
    assert sorted(saved_opt["state"]) == [0, 1] and saved_opt["param_groups"][0]["params"] == [0, 1]
    m3, o3 = make()
    o3 = optim.Adam(m3.parameters(), lr=999.0)  # hyper-parameters come back from the state dict too
    m3.load_state_dict(saved_model)
    o3.load_state_dict(saved_opt)
    assert o3.param_groups[0]["lr"] == 0.05
    train(m3, o3, 3)
    for p1, p3 in zip(m1.parameters(), m3.parameters()):
        np.testing.assert_array_equal(p1.detach().numpy(), p3.detach().numpy())


def test_load_state_dict_refuses_a_differently_built_optimizer():
    a = optim.SGD([eager.zeros(2, requires_grad=True)], lr=0.1)
    b = optim.SGD([eager.zeros(2, requires_grad=True), eager.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"hold \[1\] parameters.*hold \[2\]"):
        b.load_state_dict(a.state_dict())


def test_refuses_non_leaf_empty_duplicate_and_bare_tensor_parameters():
    w = eager.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match=r"can't optimize a non-leaf Tensor.*MulBackward"):
        optim.SGD([w * 2], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([w, w], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(w, lr=0.1)


def test_invalid_hyperparameters_fail_clearly():
    w = [eager.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum > 0 and zero dampening"):
        optim.SGD(w, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD(w, lr=-1.0)
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        optim.Adam(w, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdamW(w, weight_decay=-0.1)


def test_repr_lists_groups_and_hyperparameters():
    opt = optim.SGD([eager.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    text = repr(opt)
    assert text.startswith("SGD (\nParameter Group 0\n") and "    lr: 0.1" in text and "    momentum: 0.9" in text


@pytest.mark.parametrize("kwargs", ADAM_CASES + [dict(ADAMW_CASES[2], decoupled_weight_decay=True)], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_eager_array_path_equals_the_traced_tensor_path_bit_for_bit(kwargs, dtype):
    # run eagerly, Adam updates arrays in place with the step count as a Python float; under a recorder (a trace)
    # it runs tensor ops with the step count as a tensor: the two must compute exactly the same parameters
    def run(recorded: bool):
        eager.manual_seed(0)
        m = nn.Linear(5, 3).to(getattr(eager, dtype))
        opt = optim.Adam(m.parameters(), **kwargs)
        x = eager.randn(7, 5, dtype=getattr(eager, dtype))
        for _ in range(10):
            opt.zero_grad()
            (m(x) ** 2).sum().backward()
            if recorded:
                with add_recorder(_Recorder()):
                    opt.step()
            else:
                opt.step()
        return [p.detach().numpy().copy() for p in m.parameters()], opt.state
    arrays, state = run(False)
    tensors, _ = run(True)
    for a, b in zip(arrays, tensors):
        np.testing.assert_array_equal(a, b)
    assert all(float(s["step"]) == 10.0 for s in state.values())
