"""The one function table (theory/functions.py): every backend derived from it evaluates every
function correctly.

Each function a spec may call is parsed by the real parser and evaluated through every real
backend path: the torch bridge (proofs_check.bridge.to_torch), the mpmath lambdify of the
reference path (proofs_check.bridge.mpmath_functions), the mpmath tree evaluator of derived
coefficients (theory.expansions._mp_eval) and the numpy lambdify of predictions
(theory.functions.lambdify, used by theory.expansions.prediction_functions).  Each value is
held against an *independent* reference the suite does not otherwise compute with: the C
library through Python's :mod:`math` (erf and lgamma excepted, since the numpy path uses them),
published constants of erf, and closed forms of log Γ at (half-)integers.
"""

from __future__ import annotations

import math
from typing import Callable

import mpmath
import numpy as np
import pytest
import sympy as sp
import torch

from proofs_check.bridge import _UNARY, mpmath_functions, to_torch
from theory.expansions import _MP_FUNCS, _mp_eval
from theory.functions import FUNCTIONS, SPEC_FUNCTIONS, ElementaryFunction, by_node, lambdify, lambdify_namespace, unsupported_functions
from theory.spec import ALLOWED_FUNCTIONS, SpecError, loads_spec, parse_expression

Z = sp.Symbol("z1", real=True)

#: Independent float references, one per row; math's function of the same meaning, or the
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
POINTS = (0.3, 0.7, 1.9, -0.6, -1.3)
#: float64 tolerance: each backend is a libm-class implementation, correct to a few ulp (≈2.2e-16
#: relative) per operation; composites chain at most three operations whose condition numbers
#: at these points are below 10 (tan at 1.9: 6.2), so 1e-14 (≈45 ulp) bounds every float value.
FLOAT_REL = 1e-14
#: mpmath at 30 digits against a 25-digit literal: the literal's last digit.
MP_REL = 1e-24


def reference_points(row: ElementaryFunction) -> dict[float, mpmath.mpf]:
    """{x: reference value} for one row, in the row's domain (math raises ValueError outside it)."""
    with mpmath.workdps(30):
        if row.name == "erf":
            return {x: mpmath.mpf(v) * (1 if x > 0 else -1) for x, v in list(ERF_LITERAL.items()) + [(-1.0, ERF_LITERAL[1.0])]}
        if row.name == "loggamma":
            return {x: +f() for x, f in LGAMMA_CLOSED.items()}
        out = {}
        for x in POINTS + (0.0,) * (row.name == "sign"):
            try:
                out[x] = mpmath.mpf(MATH_REF[row.name](x))
            except ValueError:  # outside the domain (log, sqrt of a negative number)
                continue
        return out


def expression(row: ElementaryFunction) -> sp.Expr:
    """The row's function of z1, through the spec parser when a spec may call it."""
    if row.spec:
        return parse_expression(f"{row.name}(z1)", {"z1": Z})
    with pytest.raises(SpecError, match="is not allowed"):
        parse_expression(f"{row.name}(z1)", {"z1": Z})
    return row.build(Z)


def close(got: float, ref: mpmath.mpf, rel: float) -> bool:
    return abs(mpmath.mpf(got) - ref) <= rel * max(abs(ref), mpmath.mpf(1e-300))


def test_table_covers_the_parser_exactly() -> None:
    assert list(ALLOWED_FUNCTIONS) == [f.name for f in FUNCTIONS if f.spec]
    assert set(MATH_REF) | {"erf", "loggamma"} == {f.name for f in FUNCTIONS}  # every row has a reference here
    for f in FUNCTIONS:
        assert f.arity == 1
        if f.composite:
            assert (f.torch, f.mpmath, f.numpy, f.math, f.python_flint_arb) == (None,) * 5
        else:
            assert f.torch is not None and f.mpmath is not None and (f.numpy or f.math)
    with pytest.raises(SpecError, match=r"allowed: .*asinh.*softplus"):
        parse_expression("gamma(z1)", {"z1": Z})
    with pytest.raises(SpecError, match="exactly one positional argument"):
        parse_expression("sin(z1, z1)", {"z1": Z})


def test_backend_maps_are_derived_from_the_table() -> None:
    assert _UNARY == {f.sympy_class: getattr(torch, f.torch) for f in FUNCTIONS if f.sympy_class is not None}
    assert _MP_FUNCS == {f.sympy_class: getattr(mpmath, f.mpmath) for f in FUNCTIONS if f.sympy_class is not None}
    ns = lambdify_namespace("numpy")
    assert set(ns) == set(by_node()) and ns["atan"] is np.arctan and ns["Abs"] is np.abs
    with pytest.raises(ValueError, match="DiracDelta"):
        lambdify([Z], sp.DiracDelta(Z), "numpy")  # a node the table lacks is refused by name


@pytest.mark.parametrize("name", [f.name for f in FUNCTIONS])
def test_every_function_round_trips_through_every_backend(name: str) -> None:
    row = next(f for f in FUNCTIONS if f.name == name)
    expr = expression(row)
    assert not unsupported_functions([expr]), expr
    refs = reference_points(row)
    assert len(refs) >= 3
    xs = list(refs)
    # torch bridge
    t = to_torch(expr, [Z])([torch.tensor(xs, dtype=torch.float64)])
    # numpy lambdify (vectorized over the points, and scalar)
    f_np = lambdify([Z], expr, "numpy")
    v_np = np.asarray(f_np(np.array(xs)), dtype=np.float64) * np.ones(len(xs))
    # mpmath: lambdify of the reference path (a one-output decoder) and the derived-coefficient evaluator
    f_mp = None
    if row.spec:
        model = loads_spec(f'decoder = ["{row.name}(z1)"]\nprior = "gaussian"\n')
        f_mp, _ = mpmath_functions(model)
    for i, (x, ref) in enumerate(refs.items()):
        assert close(float(t[i]), ref, FLOAT_REL), ("torch", x, float(t[i]), ref)
        assert close(float(v_np[i]), ref, FLOAT_REL), ("numpy", x, v_np[i], ref)
        assert close(float(f_np(x)), ref, FLOAT_REL), ("numpy scalar", x)
        with mpmath.workdps(30):
            rx = sp.Rational(x)  # the exact binary value of the float x
            v_tree = _mp_eval(expr.xreplace({Z: rx}), {}, 30)
            v_lam = f_mp([mpmath.mpf(x)])[0] if f_mp is not None else lambdify([Z], expr, "mpmath")(mpmath.mpf(x))
            # against a float reference: its own rounding; against a 25-digit literal: MP_REL
            rel = MP_REL if row.name in ("erf", "loggamma") else FLOAT_REL
            assert close(v_tree, ref, rel), ("mpmath tree", x, v_tree, ref)
            assert close(v_lam, ref, rel), ("mpmath lambdify", x, v_lam, ref)


def test_arb_names_evaluate_to_the_references() -> None:
    """python-flint is optional (the certified backend is future work): the arb names exist and,
    at 100 bits, give balls whose midpoints match the references."""
    flint = pytest.importorskip("flint")
    prec = flint.ctx.prec
    with flint.ctx.workprec(100), mpmath.workdps(30):
        for row in FUNCTIONS:
            if row.python_flint_arb is None:
                continue
            for x, ref in reference_points(row).items():
                ball = getattr(flint.arb(x), row.python_flint_arb)()
                mid = mpmath.mpf(ball.mid().str(30, radius=False))
                tol = FLOAT_REL if row.name not in ("erf", "loggamma") else MP_REL
                assert close(mid, ref, tol), (row.name, x, str(ball), ref)
    assert flint.ctx.prec == prec


def test_spec_functions_have_one_entry_each() -> None:
    assert set(SPEC_FUNCTIONS) == set(ALLOWED_FUNCTIONS)
    assert "loggamma" not in SPEC_FUNCTIONS and "sign" not in SPEC_FUNCTIONS
