"""The bad-input catalogue: every mistake fails with the right exception type and a message that
names the op, the offending shapes/dtypes/argument, and what to do.

Each row: a function that makes the mistake, the exception type, and regexes that must ALL be found in the
message: (what op), (which shapes/dtypes/argument), (what to do). The compiler's "no C compiler" case warns and
falls back instead of failing: tests/test_compiler_runtime.py proves it says so once and still computes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import eager
import tracer
from eager.autograd import AnomalyError, BackwardError
from eager.control import ControlFlowError
from eager.primitives import ShapeError


def leaf(values, dtype=eager.float64):
    return eager.tensor(values, dtype=dtype, requires_grad=True)


def _backward_twice():
    y = (leaf([1.0]) * 2).sum()
    y.backward()
    y.backward()


def _saved_tensor_modified():
    a = leaf([1.0, 2.0]) * 2
    y = (a * a).sum()
    a.add_(1)
    y.backward()


def _anomaly():
    x = leaf([-1.0, 4.0])
    with eager.autograd.detect_anomaly():
        y = x.sqrt()  # the user line the message must name
        (y * 2).sum().backward()


def _setitem_out_of_range():
    x = eager.zeros(3)
    x[eager.tensor([3])] = 1.0


def _inplace_dtype_change():
    x = eager.tensor([1, 2])
    x += 1.5


def _state_dict_with(change):
    import eager.nn as nn
    model = nn.Linear(2, 3)
    state = model.state_dict()
    change(state)
    model.load_state_dict(state)


def _traced(**kwargs):
    import tracer
    return tracer.trace(lambda x: x * 2, eager.ones(2, 3), **kwargs)


def _load_edited(tmp_edit):
    """Save a traced graph, let ``tmp_edit(document)`` tamper with its graph.json, and load it back."""
    import json
    import tempfile

    import tracer
    path = tempfile.mkdtemp() + "/model"
    _traced().save(path)
    with open(path + "/graph.json") as f:
        text = f.read()
    with open(path + "/graph.json", "w") as f:
        f.write(tmp_edit(text, json))
    tracer.load(path)


def _guarded_branch_called_on_the_other_side():
    import warnings

    def branch(x):
        if bool(x.sum() > 0):
            return x * 2
        return x - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tracer.TracerWarning)
        traced = tracer.trace(branch, eager.ones(2), guards="raise")
    traced(-eager.ones(2))


def _traced_cond(true_fn, false_fn):
    tracer.trace(lambda v: eager.cond(v.sum() > 0, true_fn, false_fn, (v,)), eager.ones(3))


def _backward_through_traced_while_loop():
    w = eager.ones(3, requires_grad=True)

    def step(x):
        _, out = eager.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * w), (eager.tensor(0), x))
        out.sum().backward()
        return out
    tracer.trace(step, eager.ones(3))


def _python_object_reference(text, json):
    doc = json.loads(text)
    doc["nodes"][-1]["params"] = {"evil": {"py/reduce": ["os.system", ["echo pwned"]]}}
    return json.dumps(doc)


def _function_wrong_gradient_count():
    class Twice(eager.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * 2 + y

        @staticmethod
        def backward(ctx, g):
            return g * 2

    Twice.apply(leaf([1.0]), leaf([2.0])).sum().backward()


CATALOGUE = [
    # shapes
    ("add_shape_mismatch", lambda: eager.ones(2, 3) + eager.ones(4), ShapeError,
     [r"^add:", r"f32\[2,3\], f32\[4\]", r"Reshape or unsqueeze"]),
    ("matmul_shape_mismatch", lambda: eager.ones(2, 3) @ eager.ones(4, 5), ShapeError,
     [r"^matmul:", r"f32\[2,3\] and f32\[4,5\]", r"last dim of the first \(3\) must equal.*\(4\)"]),
    ("matmul_vector_mismatch", lambda: eager.ones(3) @ eager.ones(4), ShapeError,
     [r"^matmul:", r"f32\[3\] and f32\[4\]", r"must equal"]),
    ("matmul_batch_mismatch", lambda: eager.ones(2, 2, 3) @ eager.ones(3, 3, 2), ShapeError,
     [r"matmul", r"\[2\].*\[3\]", r"trailing dimensions must be equal or 1"]),
    ("matmul_0d", lambda: eager.ones(()) @ eager.ones(3), ShapeError, [r"^matmul:", r"\[\] and \[3\]", r"use \*"]),
    ("cat_shape_mismatch", lambda: eager.cat([eager.ones(2, 3), eager.ones(2, 4)]), ShapeError,
     [r"^cat:", r"f32\[2,3\], f32\[2,4\]", r"equal sizes in every dim except dim 0"]),
    ("stack_shape_mismatch", lambda: eager.stack([eager.ones(2), eager.ones(3)]), ShapeError,
     [r"^stack:", r"\[2\].*\[3\]", r"same shape"]),
    ("reshape_incompatible", lambda: eager.ones(2, 3).reshape(4, 2), ShapeError,
     [r"^reshape:", r"f32\[2,3\] \(6 elements\) to \[4, 2\] \(8 elements\)", r"element counts must match"]),
    ("reshape_bad_minus_one", lambda: eager.ones(2, 3).reshape(4, -1), ShapeError,
     [r"^reshape:", r"\[4, -1\].*\[2, 3\]", r"cannot infer"]),
    ("expand_incompatible", lambda: eager.ones(3, 2).expand(3, 4), ShapeError,
     [r"expand", r"f32\[3,2\] to \[3, 4\]", r"each dim must equal the target or be 1"]),
    ("permute_not_a_permutation", lambda: eager.ones(2, 3).permute(0, 0), ShapeError,
     [r"^permute:", r"\[0, 0\].*f32\[2,3\]", r"not a permutation"]),
    ("sum_dim_out_of_range", lambda: eager.ones(2, 3).sum(dim=2), IndexError,
     [r"[Dd]imension out of range", r"\[-2, 1\].*got 2", r"shape \[2, 3\]"]),
    ("split_sections_wrong", lambda: eager.ones(5).split([2, 2]), ShapeError,
     [r"^split:", r"\[2, 2\] sum to 4.*size 5", r"dim 0"]),
    # indexing
    ("index_out_of_range", lambda: eager.ones(3)[5], IndexError,
     [r"^getitem:", r"\[5\].*f32\[3\]", r"out of bounds.*size 3"]),
    ("index_tensor_out_of_range", lambda: eager.ones(3, 2)[eager.tensor([0, 7])], IndexError,
     [r"getitem", r"f32\[3,2\]", r"index 7 is out of bounds.*size 3"]),
    ("setitem_out_of_range", _setitem_out_of_range, IndexError, [r"getitem", r"f32\[3\]", r"out of bounds"]),
    ("index_float_tensor", lambda: eager.ones(3)[eager.tensor([0.0])], IndexError,
     [r"^getitem:", r"float32", r"integer or bool"]),
    # dtypes
    ("where_float_condition", lambda: eager.where(eager.ones(2), eager.ones(2), eager.zeros(2)), TypeError,
     [r"^where:", r"condition.*f32", r"bool.*compare first"]),
    ("where_python_condition", lambda: eager.where(True, eager.ones(2), 0.0), TypeError,
     [r"^where:", r"bool", r"Tensor"]),
    ("requires_grad_on_int", lambda: eager.tensor([1, 2], requires_grad=True), TypeError,
     [r"requires_grad", r"i64\[2\]", r"\.float\(\)"]),
    ("inplace_changes_dtype", _inplace_dtype_change, TypeError,
     [r"in-place", r"float32.*int64", r"out-of-place"]),
    ("unsupported_dtype", lambda: eager.tensor([1.0], dtype=np.float16), TypeError,
     [r"dtype float16 is not supported", r"float16", r"use float32, float64"]),
    ("random_int_dtype", lambda: eager.randn(2, dtype=eager.int64), TypeError,
     [r"^normal:", r"int64", r"floating dtype"]),
    # autograd
    ("backward_twice", _backward_twice, BackwardError,
     [r"backward through the graph a second time", r"SumBackward", r"retain_graph=True"]),
    ("inplace_on_saved_tensor", _saved_tensor_modified, BackwardError,
     [r"input 0 of MulBackward", r"shape \[2\].*version 1; expected version 0", r"[Cc]lone it"]),
    ("inplace_on_leaf_requiring_grad", lambda: leaf([1.0]).add_(1), RuntimeError,
     [r"leaf tensor", r"shape \[1\]", r"no_grad"]),
    ("non_scalar_backward", lambda: (leaf([1.0, 2.0]) * 2).backward(), BackwardError,
     [r"^backward:", r"shape \[2\]", r"pass gradient="]),
    ("backward_gradient_wrong_shape",
     lambda: (leaf([1.0, 2.0]) * 2).backward(eager.ones(3, dtype=eager.float64)), BackwardError,
     [r"^backward:", r"shape \[3\].*shape \[2\]", r"must match"]),
    ("backward_without_grad", lambda: eager.ones(2).sum().backward(), BackwardError,
     [r"^backward:", r"does not require grad", r"requires_grad=True"]),
    ("grad_of_unused_tensor", lambda: eager.autograd.grad((leaf([1.0]) * 2).sum(), leaf([3.0])), BackwardError,
     [r"^grad:", r"input 0 \(shape \[1\]\).*not used", r"allow_unused=True"]),
    ("grad_wrt_constant", lambda: eager.autograd.grad((leaf([1.0]) * 2).sum(), eager.ones(1)), BackwardError,
     [r"^grad:", r"input 0 \(shape \[1\]\) does not require grad", r"requires_grad=True"]),
    ("function_wrong_gradient_count", _function_wrong_gradient_count, BackwardError,
     [r"Twice\.backward", r"returned 1 gradients.*took 2 inputs", r"one per input"]),
    ("anomaly_nan_in_backward", _anomaly, AnomalyError,
     [r"SqrtBackward.*'sqrt'", r"nan", r"test_bad_inputs\.py:\d+"]),
    # conversions
    ("item_of_many", lambda: eager.ones(2).item(), ValueError, [r"^item:", r"shape \[2\]", r"Index or reduce"]),
    ("bool_of_many", lambda: bool(eager.ones(2)), ValueError, [r"^bool:", r"shape \[2\]", r"\.any\(\) or \.all\(\)"]),
    ("numpy_requires_grad", lambda: leaf([1.0]).numpy(), RuntimeError, [r"numpy\(\)", r"requires grad", r"detach"]),
    # devices
    ("cuda_without_cupy", lambda: eager.zeros(2, device="cuda"), RuntimeError,
     [r"device='cuda'", r"CuPy|CUDA|GPU", r"device='cpu'"]),
    ("to_cuda_without_cupy", lambda: eager.ones(2).cuda(), RuntimeError, [r"device='cuda'", r"CuPy|GPU", r"'cpu'"]),
    ("unknown_device", lambda: eager.ones(2, device="tpu"), ValueError, [r"unknown device 'tpu'", r"tpu", r"'cpu'"]),
    # nn and optim
    ("optimizer_non_leaf", lambda: eager.optim.SGD([eager.ones(2, requires_grad=True) * 2], lr=0.1), ValueError,
     [r"SGD", r"non-leaf.*shape \[2\].*MulBackward", r"Pass leaf tensors"]),
    ("state_dict_missing_key", lambda: _state_dict_with(lambda s: s.pop("bias")), RuntimeError,
     [r"load(ing)? state_dict for Linear", r'Missing.*"bias".*\[3\]', r"strict=False"]),
    ("state_dict_unexpected_key", lambda: _state_dict_with(lambda s: s.update(extra=eager.ones(1))), RuntimeError,
     [r"state_dict for Linear", r'Unexpected.*"extra".*\[1\]', r"strict=False"]),
    ("state_dict_wrong_shape", lambda: _state_dict_with(lambda s: s.update(weight=eager.ones(3, 3))), RuntimeError,
     [r"state_dict for Linear", r"weight.*\[3, 3\].*\[3, 2\]", r"same architecture"]),
    # tracer
    ("traced_new_signature_strict", lambda: _traced(strict=True)(eager.ones(4, 3)), TypeError,
     [r"strict=True", r"argument x: f32\[2,3\] -> f32\[4,3\]", r"strict=False to retrace"]),
    ("traced_wrong_argument_count", lambda: _traced()(eager.ones(2, 3), eager.ones(1)), TypeError,
     [r"traced <lambda>\(x\)", r"2 positional argument", r"arguments the original function takes"]),
    ("traced_guard_failed_raise", _guarded_branch_called_on_the_other_side, tracer.GuardError,
     [r"guard failed at test_bad_inputs\.py:\d+: bool\(tensor\)", r"was True while tracing and is False on this call",
      r"guards='retrace'"]),
    ("ir_file_corrupt", lambda: _load_edited(lambda text, json: text[:50]), ValueError,
     [r"^load:", r"graph\.json is corrupt", r"traced\.save"]),
    ("ir_file_newer_version", lambda: _load_edited(lambda t, json: t.replace('"version": 2', '"version": 99')),
     ValueError, [r"^load:", r"newer graphduel \(format version 99\)", r"Upgrade graphduel"]),
    ("ir_file_python_object", lambda: _load_edited(_python_object_reference), ValueError,
     [r"reference a Python object", r"py/reduce", r"Refused.*never imports or calls"]),
    # control flow
    ("cond_branch_shapes_differ", lambda: _traced_cond(lambda u: u, lambda u: u.sum(0, keepdim=True)), ControlFlowError,
     [r"^cond:", r"true branch gives f32\[3\] but the false branch gives f32\[1\]", r"Cast or reshape"]),
    ("cond_branch_dtypes_differ", lambda: _traced_cond(lambda u: u, lambda u: u.double()), ControlFlowError,
     [r"^cond:", r"f32\[3\] but the false branch gives f64\[3\]", r"Cast or reshape"]),
    ("cond_pred_not_scalar", lambda: eager.cond(eager.ones(2) > 0, lambda u: u, lambda u: u, (eager.ones(1),)),
     ControlFlowError, [r"^cond:", r"0-d bool tensor, got bool\[2\]", r"reduce it first"]),
    ("cond_pred_not_bool", lambda: eager.cond(eager.tensor(1.0), lambda u: u, lambda u: u, (eager.ones(1),)),
     ControlFlowError, [r"^cond:", r"0-d bool tensor, got f32\[\]", r"x\.sum\(\) > 0"]),
    ("while_loop_body_changes_carry_shape",
     lambda: eager.while_loop(lambda v: v.sum() < 10, lambda v: eager.cat([v, v]), eager.ones(2)), ControlFlowError,
     [r"^while_loop:", r"carry gives f32\[2\] but body_fn gives f32\[4\]", r"must match"]),
    ("backward_through_traced_while_loop", _backward_through_traced_while_loop, BackwardError,
     [r"while_loop is forward only", r"data-dependent", r"Use eager\.scan"]),
    # compiler
    ("compile_for_cuda_without_gpu", lambda: __import__("compiler").compile(lambda x: x * 2, eager.ones(2),
                                                                           device="cuda"), RuntimeError,
     [r"device='cuda'", r"CuPy|GPU", r"device='cpu'"]),
]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("make_mistake, exc_type, patterns", [pytest.param(*row[1:], id=row[0]) for row in CATALOGUE])
def test_mistake_fails_with_a_message_that_says_what_and_how_to_fix(make_mistake, exc_type, patterns):
    if "cuda" in str(patterns) and eager.cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(exc_type) as err:
        make_mistake()
    for pattern in patterns:
        assert re.search(pattern, str(err.value)), f"{pattern!r} not in: {err.value}"


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 20


def test_reading_grad_of_a_non_leaf_warns_and_says_what_to_do():
    y = leaf([1.0]) * 2
    with pytest.warns(UserWarning, match=r"not a leaf Tensor.*retain_grad\(\)"):
        assert y.grad is None


def test_importing_eager_never_needs_cupy():
    import subprocess
    import sys
    code = "import sys, eager; eager.ones(2) + 1; assert 'cupy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
