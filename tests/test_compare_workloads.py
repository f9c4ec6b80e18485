"""Workloads: each runs eagerly and matches its float64 reference, the references agree with PyTorch in
float64 (the oracle), and the seed programs behave as mathematics (not the seed text) says."""

from __future__ import annotations

import numpy as np
import pytest

import eager
import eager.nn
import eager.optim
from compare import workloads
from compare.correctness import compare_outputs, named
from compare.modes import as_tuple
from compare.workloads import Program, workload
from compare.workloads.seeds import module_list_net

NAMES = workloads.names()


def _eager_outputs(wl, arrays):
    prog = wl.build(eager, arrays)
    out = prog.fn(*prog.args)
    return named(as_tuple(out), wl.outputs, prog.state() if prog.state else None)


def test_the_issue_workloads_are_registered():
    for name in ["tanh_gelu", "layer_norm", "softmax", "attention_block", "mlp_forward", "mlp_train_sgd",
                 "mlp_train_adam", "adam_update", "classifier_train", "seed_add_mul", "dynamic_net", "module_list",
                 "gan_step", "custom_sigmoid"]:
        assert name in NAMES
    assert {workloads.get(n).kind for n in NAMES} == {"forward", "train"}


@pytest.mark.parametrize("name", NAMES)
def test_eager_matches_the_float64_reference(name):
    wl = workloads.get(name)
    arrays = wl.make_inputs("small")
    reference = wl.run_reference(arrays)
    assert reference, f"{name} has no reference"
    result = compare_outputs(_eager_outputs(wl, arrays), reference)
    assert result.ok, result.summary()
    assert set(result.compared) == set(reference)


@pytest.mark.parametrize("name", NAMES)
def test_reference_agrees_with_torch_in_float64(name):
    """The hand-derived NumPy gradients and optimizer steps are checked against PyTorch, the oracle."""
    torch = pytest.importorskip("torch")
    wl = workloads.get(name)
    arrays = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in wl.make_inputs("small").items()}
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        prog = wl.build(torch, arrays)
        got = named(as_tuple(prog.fn(*prog.args)), wl.outputs, prog.state() if prog.state else None)
    finally:
        torch.set_default_dtype(old)
    for k, want in wl.run_reference(arrays).items():
        np.testing.assert_allclose(got[k], want, rtol=1e-7, atol=1e-9, err_msg=f"{name}: {k}")


def test_seed_add_mul_has_the_mathematical_gradients():
    """Seed 004 at w=1, x=2: w.grad 5, x.grad 2, a.grad 2 (and y 6)."""
    out = _eager_outputs(workloads.get("seed_add_mul"), workloads.get("seed_add_mul").make_inputs("small"))
    assert (out["y"], out["grad:w"], out["grad:x"], out["grad:a"]) == ([6.0], [5.0], [2.0], [2.0])


def test_dynamic_net_alternates_its_branch_eagerly():
    wl = workloads.get("dynamic_net")
    prog = wl.build(eager, wl.make_inputs("small"))
    first, second, third = (prog.fn(*prog.args).detach().numpy() for _ in range(3))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(first, third)


def test_the_seed_module_list_network_does_not_run_and_the_corrected_one_does():
    x = eager.randn(1, 64)
    with pytest.raises(eager.ShapeError):
        module_list_net(eager, 64, 10, corrected=False)(x)
    assert module_list_net(eager, 64, 10)(x).shape == (1, 10)


def test_a_user_workload_is_one_decorated_function():
    @workload(sizes={"small": {"x": (8, 4)}}, register=False)
    def scaled_tanh(lib, x):
        return lib.tanh(x) * 3

    @scaled_tanh.peer("numpy")
    def _(xp, x):
        return xp.tanh(x) * 3

    arrays = scaled_tanh.make_inputs("small")
    assert compare_outputs(_eager_outputs(scaled_tanh, arrays), scaled_tanh.run_reference(arrays)).ok
    assert isinstance(scaled_tanh.build(eager, arrays), Program)


def test_unknown_names_fail_clearly():
    with pytest.raises(KeyError, match="known: "):
        workloads.get("no_such_workload")
    with pytest.raises(KeyError, match="has no size"):
        workloads.get("softmax").make_inputs("huge")
    with pytest.raises(ValueError, match="torch peers need no code"):
        workloads.get("softmax").peer("torch")
