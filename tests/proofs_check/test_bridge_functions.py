"""The torch bridge and the mpmath reference path of proofs_check.bridge are derived from the one
function table (theory/functions.py) and evaluate every function correctly, against the
independent references of tests/theory/function_references.py."""

from __future__ import annotations

import sys
from pathlib import Path

import mpmath
import pytest
import torch

from proofs_check.bridge import _UNARY, mpmath_functions, to_torch
from theory.functions import FUNCTIONS
from theory.spec import loads_spec

sys.path.insert(0, str(Path(__file__).parents[1] / "theory"))
from function_references import FLOAT_REL, Z, close, expression, reference_points, row, tolerance  # noqa: E402


def test_torch_map_is_derived_from_the_table() -> None:
    assert _UNARY == {f.sympy_class: getattr(torch, f.torch) for f in FUNCTIONS if f.sympy_class is not None}


@pytest.mark.parametrize("name", [f.name for f in FUNCTIONS])
def test_every_function_round_trips_through_torch_and_the_mpmath_reference_path(name: str) -> None:
    r = row(name)
    expr = expression(r)
    refs = reference_points(r)
    xs = list(refs)
    t = to_torch(expr, [Z])([torch.tensor(xs, dtype=torch.float64)])
    f_mp = None
    if r.spec:  # the reference path lambdifies a spec's decoder
        f_mp, _ = mpmath_functions(loads_spec(f'decoder = ["{r.name}(z1)"]\nprior = "gaussian"\n'))
    for i, (x, ref) in enumerate(refs.items()):
        assert close(float(t[i]), ref, FLOAT_REL), ("torch", x, float(t[i]), ref)
        if f_mp is not None:
            with mpmath.workdps(30):
                v = f_mp([mpmath.mpf(x)])[0]
            assert close(v, ref, tolerance(r, True)), ("mpmath reference path", x, v, ref)
