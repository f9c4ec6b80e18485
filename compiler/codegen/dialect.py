"""The one expression renderer: a fused kernel's C expression, built from the op table's ``c_expr`` entries.

A backend is a ``Dialect``: its C type names, how it spells literals, and a few ``overrides`` of table
entries (tinygrad style: ``{**base, op: template}``). Nothing else differs between the C and CUDA generators.

    >>> C.ctype(np.dtype("float32"))
    'float'
    >>> C.render("mul", np.dtype("float32"), ["a", C.literal(0.5, np.dtype("float32"))])
    '(a * ((float)0.5))'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from eager.primitives import PRIMITIVES


@dataclass(frozen=True)
class Dialect:
    name: str
    ctypes: dict
    overrides: dict = field(default_factory=dict)
    nan: str = "NAN"
    inf: str = "INFINITY"

    def ctype(self, dtype) -> str:
        try:
            return self.ctypes[np.dtype(dtype)]
        except KeyError:
            raise TypeError(f"{self.name} codegen: dtype {dtype} has no C type") from None

    def literal(self, value, dtype) -> str:
        """A literal of the kernel's type: ``((float)0.1)`` rounds exactly as NumPy's weak scalar does."""
        dtype = np.dtype(dtype)
        if dtype.kind == "b":
            return "1" if value else "0"
        if dtype.kind in "iu":
            v = int(value)
            return f"{v}LL" if dtype.itemsize == 8 else str(v)
        v = float(value)
        if math.isnan(v):
            text = self.nan
        elif math.isinf(v):
            text = self.inf if v > 0 else f"(-{self.inf})"
        else:
            text = repr(v)
        return f"(({self.ctype(dtype)}){text})"

    def lowest(self, dtype) -> str:
        """The start of a running max: at or below every value of ``dtype`` (-inf, the integer minimum)."""
        dtype = np.dtype(dtype)
        if dtype.kind == "b":
            return "0"
        if dtype.kind == "f":
            return self.literal(-math.inf, dtype)
        if dtype.itemsize == 8:
            return "(-9223372036854775807LL - 1)"
        return "(-2147483647 - 1)" if dtype.itemsize == 4 else f"({np.iinfo(dtype).min})"

    def template(self, op: str) -> str:
        if op in self.overrides:
            return self.overrides[op]
        expr = PRIMITIVES[op].c_expr
        if expr is None:
            raise NotImplementedError(f"{self.name} codegen: primitive {op!r} has no c_expr in the op table")
        return expr

    def render(self, op: str, dtype, args: list[str]) -> str:
        integer = np.dtype(dtype).kind in "iu" and f"{op}:int" in self.overrides
        template = self.overrides[f"{op}:int"] if integer else self.template(op)
        return template.format(*args, ctype=self.ctype(dtype))


_F32, _F64 = np.dtype("float32"), np.dtype("float64")
_I64, _I32, _I8, _BOOL = np.dtype("int64"), np.dtype("int32"), np.dtype("int8"), np.dtype("bool")

# Integer powers are exact and wrap on overflow as NumPy's do (math's pow goes through double: inexact past 2**53,
# and NVRTC has no integer overload at all). ``gd_ipow`` is defined once here; each backend's kernel header
# prefixes its own qualifiers (``int_pow_function``).
_INT_POW = "(({ctype})gd_ipow((long long)({0}), (long long)({1})))"
_INT_POW_BODY = """long long gd_ipow(long long b, long long e) {
  /* NumPy refuses negative integer exponents; here: b**e truncated (0 unless |b| == 1) */
  if (e < 0) return b == 1 ? 1 : (b == -1 ? ((e & 1) ? -1 : 1) : 0);
  unsigned long long r = 1, x = (unsigned long long)b, k = (unsigned long long)e;
  while (k) { if (k & 1) r *= x; x *= x; k >>= 1; }  /* unsigned: wraps like NumPy's int64 */
  return (long long)r;
}
"""


def int_pow_function(qualifiers: str) -> str:
    """The C/CUDA definition of ``gd_ipow`` with the backend's qualifiers (``static inline``, ``__device__``)."""
    return f"{qualifiers} {_INT_POW_BODY}"

C = Dialect("c", {_F32: "float", _F64: "double", _I64: "int64_t", _I32: "int32_t", _I8: "int8_t", _BOOL: "_Bool"},
            {"pow:int": _INT_POW})

CUDA = Dialect(
    "cuda", {_F32: "float", _F64: "double", _I64: "long long", _I32: "int", _I8: "signed char", _BOOL: "bool"},
    overrides={
        # fabs has no integer overloads in CUDA C++; this form is exact for every type (and keeps NaN)
        "abs": "(({0}) < 0 ? -({0}) : ({0}))",
        "pow:int": _INT_POW,
    },
    nan="__int_as_float(0x7fc00000)", inf="__int_as_float(0x7f800000)",
)


def full_template_table(dialect: Dialect) -> dict[str, str]:
    """Every elementwise op's template in this dialect (a table-driven test checks none is missing)."""
    return {name: dialect.template(name) for name, p in PRIMITIVES.items() if p.c_expr is not None}


_CALL = re.compile(r"\b([A-Za-z_]\w*)\(")
# compiled to one instruction each, never a libm call: not worth a scratch array, and libmvec has no vector form
INSTRUCTION_FUNCTIONS = frozenset({"sqrt", "fabs"})


def c_calls(template: str) -> dict[str, int]:
    """The C functions a template calls, each with its number of arguments.

    >>> c_calls("(1 / (1 + exp(-{0})))"), c_calls("pow({0}, {1})")
    ({'exp': 1}, {'pow': 2})
    """
    calls = {}
    for m in _CALL.finditer(template):
        depth, commas = 1, 0
        for ch in template[m.end():]:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            commas += ch == "," and depth == 1
            if depth == 0:
                break
        calls[m.group(1)] = commas + 1
    return calls


def transcendental_calls(dialect: Dialect) -> dict[str, dict[str, int]]:
    """Per elementwise op, the libm functions (not single instructions) its template calls; ops calling none are
    left out. The C vector prelude, the C scratch arrays and the SIMT emulator's ``using`` line read this."""
    out = {}
    for name, template in full_template_table(dialect).items():
        calls = {f: n for f, n in c_calls(template).items() if f not in INSTRUCTION_FUNCTIONS}
        if calls:
            out[name] = calls
    return out


def cxx_using_line(dialect: Dialect) -> str:
    """The ``using std::f;`` declarations a C++ host compiler needs so that the dialect's templates call the float
    overloads of <cmath> (as CUDA does) rather than C's double functions: one per function any template calls."""
    names = sorted({f for template in full_template_table(dialect).values() for f in c_calls(template)})
    return " ".join(f"using std::{f};" for f in names)
