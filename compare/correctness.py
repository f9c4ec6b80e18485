"""Correctness: how far a mode's outputs are from a float64 reference, judged by written tolerances.

Tolerances per dtype (the dtype of the values under test). An element passes when
``|got - want| <= atol * scale + rtol * |want|`` with ``scale = max(1, max|want|)`` of that output, so one
tolerance fits outputs of any magnitude. float32: a matmul over K terms accumulates about sqrt(K) * 6e-8
relative error (K = 2048: 3e-6) and a layer_norm or softmax a few ulps; rtol 1e-3 / atol 1e-4 leaves a wide
margin above that and still catches a wrong formula (those are off by 1e-2 or more).

    >>> import numpy as np
    >>> r = compare_outputs({"out": np.float32([1.0, 2.0])}, {"out": np.array([1.0, 2.0000001])})
    >>> r.ok, r.worst
    (True, 'out')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Tolerance(NamedTuple):
    rtol: float
    atol: float


TOLERANCES: dict[str, Tolerance] = {
    "float16": Tolerance(1e-2, 1e-2),
    "float32": Tolerance(1e-3, 1e-4),
    "float64": Tolerance(1e-9, 1e-10),
}
EXACT = Tolerance(0.0, 0.0)  # integers and booleans


def tolerance_for(dtype: np.dtype) -> Tolerance:
    return TOLERANCES.get(np.dtype(dtype).name, EXACT)


@dataclass
class Comparison:
    """The result of comparing named outputs: pass/fail, worst errors and what was compared."""

    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: str = ""
    compared: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"max abs {self.max_abs:.3g}, rel {self.max_rel:.3g}"
        if self.worst:
            head += f" (worst: {self.worst})"
        return "; ".join([head, *self.problems])


def compare_outputs(got: dict[str, np.ndarray | None], want: dict[str, np.ndarray | None]) -> Comparison:
    """Compare every name present in ``want`` (names ``got`` lacks are problems, extra names are ignored).

    ``max_rel`` is normwise: max|got - want| / max|want| of the same output.
    """
    result = Comparison(ok=True)
    for name, w in want.items():
        if w is None:
            continue
        g = got.get(name)
        if g is None:
            result.ok = False
            result.problems.append(f"{name}: missing (None or not returned)")
            continue
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            result.ok = False
            result.problems.append(f"{name}: shape {list(g.shape)}, expected {list(w.shape)}")
            continue
        result.compared.append(name)
        if g.size == 0:
            continue
        tol = tolerance_for(g.dtype)
        wf = w.astype(np.float64)
        diff = np.abs(g.astype(np.float64) - wf)
        if not np.all(np.isfinite(g)):
            result.ok = False
            result.problems.append(f"{name}: has NaN or inf")
            continue
        scale = max(1.0, float(np.max(np.abs(wf))))
        abs_err = float(np.max(diff))
        rel_err = abs_err / max(float(np.max(np.abs(wf))), 1e-30)
        if abs_err >= result.max_abs:
            result.max_abs, result.worst = abs_err, name
        result.max_rel = max(result.max_rel, rel_err)
        bad = diff > tol.atol * scale + tol.rtol * np.abs(wf)
        if bad.any():
            result.ok = False
            result.problems.append(f"{name}: {int(bad.sum())}/{bad.size} elements beyond rtol {tol.rtol:g}, "
                                   f"atol {tol.atol:g} x {scale:.3g} (max abs {abs_err:.3g})")
    return result


def named(outputs: tuple, names: tuple[str, ...], state: dict | None = None) -> dict[str, np.ndarray | None]:
    """Name a mode's returned values by the workload's output names and add its state (``state:...``)."""
    from compare.modes import to_numpy
    out = {n: to_numpy(v) for n, v in zip(names, outputs)}
    for k, v in (state or {}).items():
        out[k] = to_numpy(v)
    return out
