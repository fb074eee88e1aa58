"""The one function table (theory/functions.py): the parser's whitelist and every theory-side
backend derived from it evaluate every function correctly.

Each function a spec may call is parsed by the real parser and evaluated through the real
paths: the mpmath tree evaluator of derived coefficients (theory.expansions._mp_eval), the
mpmath and numpy lambdify (theory.functions.lambdify, used by
theory.expansions.prediction_functions and by the reference path of proofs_check.bridge), and
python-flint's arb methods when installed.  Values are held against the independent
references of function_references.py.  The torch bridge is tested in
tests/proofs_check/test_bridge_functions.py with the same references.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mpmath
import numpy as np
import pytest
import sympy as sp

from theory.expansions import _MP_FUNCS, _mp_eval
from theory.functions import FUNCTIONS, SPEC_FUNCTIONS, by_node, lambdify, lambdify_namespace, unsupported_functions
from theory.spec import ALLOWED_FUNCTIONS, SpecError, parse_expression

sys.path.insert(0, str(Path(__file__).parent))
from function_references import FLOAT_REL, MATH_REF, Z, close, expression, reference_points, row, tolerance  # noqa: E402


def test_table_covers_the_parser_exactly() -> None:
    assert list(ALLOWED_FUNCTIONS) == [f.name for f in FUNCTIONS if f.spec]
    assert set(SPEC_FUNCTIONS) == set(ALLOWED_FUNCTIONS)
    assert "loggamma" not in SPEC_FUNCTIONS and "sign" not in SPEC_FUNCTIONS
    assert set(MATH_REF) | {"erf", "loggamma"} == {f.name for f in FUNCTIONS}  # every row has a reference
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


def test_theory_backend_maps_are_derived_from_the_table() -> None:
    assert _MP_FUNCS == {f.sympy_class: getattr(mpmath, f.mpmath) for f in FUNCTIONS if f.sympy_class is not None}
    ns = lambdify_namespace("numpy")
    assert set(ns) == set(by_node()) and ns["atan"] is np.arctan and ns["Abs"] is np.abs
    assert set(lambdify_namespace("mpmath")) == set(by_node())
    with pytest.raises(ValueError, match="DiracDelta"):
        lambdify([Z], sp.DiracDelta(Z), "numpy")  # a node the table lacks is refused by name


@pytest.mark.parametrize("name", [f.name for f in FUNCTIONS])
def test_every_function_round_trips_through_numpy_and_mpmath(name: str) -> None:
    r = row(name)
    expr = expression(r)
    assert not unsupported_functions([expr]), expr
    refs = reference_points(r)
    assert len(refs) >= 3
    xs = list(refs)
    f_np = lambdify([Z], expr, "numpy")
    v_np = np.asarray(f_np(np.array(xs)), dtype=np.float64) * np.ones(len(xs))  # vectorized
    f_mp = lambdify([Z], expr, "mpmath")
    for i, (x, ref) in enumerate(refs.items()):
        assert close(float(v_np[i]), ref, FLOAT_REL), ("numpy", x, v_np[i], ref)
        assert close(float(f_np(x)), ref, FLOAT_REL), ("numpy scalar", x)
        if r.math is not None:  # the name numpy falls back to where it lacks the function
            assert close(getattr(math, r.math)(x), ref, FLOAT_REL), ("math", x)
        with mpmath.workdps(30):
            v_tree = _mp_eval(expr.xreplace({Z: sp.Rational(x)}), {}, 30)  # Rational(x): the float's exact value
            v_lam = f_mp(mpmath.mpf(x))
        assert close(v_tree, ref, tolerance(r, True)), ("mpmath tree", x, v_tree, ref)
        assert close(v_lam, ref, tolerance(r, True)), ("mpmath lambdify", x, v_lam, ref)


def test_arb_names_evaluate_to_the_references() -> None:
    """python-flint is optional (the certified backend is future work): the arb names exist and,
    at 100 bits, give balls whose midpoints match the references."""
    flint = pytest.importorskip("flint")
    prec = flint.ctx.prec
    with flint.ctx.workprec(100), mpmath.workdps(30):
        for r in FUNCTIONS:
            if r.python_flint_arb is None:
                continue
            for x, ref in reference_points(r).items():
                ball = getattr(flint.arb(x), r.python_flint_arb)()
                mid = mpmath.mpf(ball.mid().str(30, radius=False))
                assert close(mid, ref, tolerance(r, True)), (r.name, x, str(ball), ref)
    assert flint.ctx.prec == prec
