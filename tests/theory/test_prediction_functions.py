"""Lambdified predictions (numpy and mpmath) agree with the exact point expansions."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from theory.expansions import expand_at, prediction_functions
from theory.spec import loads_spec

SPECS = {
    "triangular_logistic": 'decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\n',
    "embedding_gaussian": 'decoder = ["z1", "z2", "0.8*z1*z2 + 0.5*z1**2"]\nprior = "gaussian"\n',
}
POINTS = [(0.3, 1.1), (-0.8, -0.5), (0.7, 1.2)]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_numpy_and_mpmath_functions_match_point_expansions(name: str) -> None:
    model = loads_spec(SPECS[name], name=name)
    fnp = prediction_functions(model, "numpy")
    fmp = prediction_functions(model, "mpmath")
    for p in POINTS:
        ref = expand_at(model, p).as_floats()
        # numpy: float64 evaluation of the symbolic formula (rounding ~1e-15 relative, a few
        # cancellations: 1e-12); mpmath at 15 digits default but fed exact decimal strings: 1e-13
        got_np = {"c": fnp["c_ima"](*p), "a1": fnp["a1"](*p), "mu1": [f(*p) for f in fnp["mu1"]], "s2": [f(*p) for f in fnp["s2"]]}
        zp = [mpmath.mpf(str(v)) for v in p]
        got_mp = {"c": float(fmp["c_ima"](*zp)), "a1": float(fmp["a1"](*zp))}
        assert got_np["c"] == pytest.approx(ref["gap"][0], rel=1e-12, abs=1e-14)
        assert got_np["a1"] == pytest.approx(ref["gap"][1], rel=1e-12, abs=1e-14)
        assert np.allclose(got_np["mu1"], ref["mu_star"][1], rtol=1e-12, atol=1e-14)
        assert np.allclose(got_np["s2"], ref["s_star"][1], rtol=1e-12, atol=1e-14)
        assert got_mp["c"] == pytest.approx(ref["gap"][0], rel=1e-13, abs=1e-14)
        assert got_mp["a1"] == pytest.approx(ref["gap"][1], rel=1e-13, abs=1e-14)


def test_numpy_functions_vectorize() -> None:
    model = loads_spec(SPECS["triangular_logistic"])
    f = prediction_functions(model)
    z1 = np.array([p[0] for p in POINTS])
    z2 = np.array([p[1] for p in POINTS])
    vec = f["a1"](z1, z2)
    assert vec.shape == (3,)
    assert np.allclose(vec, [f["a1"](*p) for p in POINTS], rtol=1e-15)


def test_numpy_functions_vectorize_functions_numpy_lacks() -> None:
    """erf enters the derivatives of this decoder; numpy has no erf, so the function table's
    vectorized math.erf is used (plain ``lambdify(..., "numpy")`` falls back to the scalar
    math.erf, which fails on arrays)."""
    model = loads_spec('decoder = ["z1 + 0.3*erf(z2)**2", "z2"]\nprior = "gaussian"\n')
    f = prediction_functions(model)
    z1 = np.array([p[0] for p in POINTS])
    z2 = np.array([p[1] for p in POINTS])
    vec = f["a1"](z1, z2)
    ref = [expand_at(model, p).as_floats()["gap"][1] for p in POINTS]
    # float64 evaluation of the symbolic formula vs the 30-digit point expansion (as above)
    assert np.allclose(vec, ref, rtol=1e-12, atol=1e-14)
