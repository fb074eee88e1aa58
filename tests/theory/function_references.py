"""Independent reference values for the function table (theory/functions.py), shared by
tests/theory/test_functions_table.py (sympy, mpmath, numpy, arb) and
tests/proofs_check/test_bridge_functions.py (the torch bridge and the mpmath reference path).

The references are values the suite does not otherwise compute with: the C library through
Python's :mod:`math` (erf and lgamma excepted, since the numpy path uses them), published
constants of erf, and closed forms of log Γ at (half-)integers.
"""

from __future__ import annotations

import math
from typing import Callable

import mpmath
import pytest
import sympy as sp

from theory.functions import FUNCTIONS, ElementaryFunction
from theory.spec import SpecError, parse_expression

Z = sp.Symbol("z1", real=True)

#: Independent float references, one per row: math's function of the same meaning, or the
#: composite written out with math.
MATH_REF: dict[str, Callable[[float], float]] = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "exp": math.exp, "log": math.log, "sqrt": math.sqrt,
    "tanh": math.tanh, "sinh": math.sinh, "cosh": math.cosh, "atan": math.atan, "asinh": math.asinh,
    "abs": math.fabs, "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)), "softplus": lambda x: math.log1p(math.exp(x)),
    "log1p": math.log1p, "sign": lambda x: float((x > 0) - (x < 0)),
}
#: erf at 1/2, 1, 2 (published values, e.g. Abramowitz & Stegun table 7.1; 25 digits).
ERF_LITERAL = {0.5: "0.5204998778130465376827467", 1.0: "0.8427007929497148693412206", 2.0: "0.9953222650189527341620693"}
#: log Γ at 1/2, 3/2, 3, 9/2: log √π, log(√π/2), log 2, log(105 √π / 16) (closed forms).
LGAMMA_CLOSED = {
    0.5: lambda: mpmath.log(mpmath.sqrt(mpmath.pi)),
    1.5: lambda: mpmath.log(mpmath.sqrt(mpmath.pi) / 2),
    3.0: lambda: mpmath.log(2),
    4.5: lambda: mpmath.log(105 * mpmath.sqrt(mpmath.pi) / 16),
}
#: Rows whose references carry 25+ digits (the others are float64 values).
HIGH_PRECISION = ("erf", "loggamma")
POINTS = (0.3, 0.7, 1.9, -0.6, -1.3)
#: float64 tolerance: each backend is a libm-class implementation, correct to a few ulp (≈2.2e-16
#: relative) per operation; composites chain at most three operations whose condition numbers
#: at these points are below 10 (tan at 1.9: 6.2), so 1e-14 (≈45 ulp) bounds every float value.
FLOAT_REL = 1e-14
#: mpmath at 30 digits against a 25-digit literal: the literal's last digit.
MP_REL = 1e-24


def row(name: str) -> ElementaryFunction:
    return next(f for f in FUNCTIONS if f.name == name)


def reference_points(r: ElementaryFunction) -> dict[float, mpmath.mpf]:
    """{x: reference value} for one row, in the row's domain (math raises ValueError outside it)."""
    with mpmath.workdps(30):
        if r.name == "erf":
            return {x: mpmath.mpf(v) * (1 if x > 0 else -1) for x, v in list(ERF_LITERAL.items()) + [(-1.0, ERF_LITERAL[1.0])]}
        if r.name == "loggamma":
            return {x: +f() for x, f in LGAMMA_CLOSED.items()}
        out = {}
        for x in POINTS + (0.0,) * (r.name == "sign"):
            try:
                out[x] = mpmath.mpf(MATH_REF[r.name](x))
            except ValueError:  # outside the domain (log, sqrt of a negative number)
                continue
        return out


def expression(r: ElementaryFunction) -> sp.Expr:
    """The row's function of z1, through the spec parser when a spec may call it (and refused
    by the parser when it may not)."""
    if r.spec:
        return parse_expression(f"{r.name}(z1)", {"z1": Z})
    with pytest.raises(SpecError, match="is not allowed"):
        parse_expression(f"{r.name}(z1)", {"z1": Z})
    return r.build(Z)


def close(got, ref: mpmath.mpf, rel: float) -> bool:
    with mpmath.workdps(30):
        return abs(mpmath.mpf(got) - ref) <= rel * max(abs(ref), mpmath.mpf(1e-300))


def tolerance(r: ElementaryFunction, extended: bool) -> float:
    """FLOAT_REL for float64 results; MP_REL for extended-precision results against a 25-digit reference."""
    return MP_REL if extended and r.name in HIGH_PRECISION else FLOAT_REL
