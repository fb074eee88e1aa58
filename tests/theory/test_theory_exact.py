"""Exact statements (docs/theory.md C1–C6) in theory/exact.py."""

from __future__ import annotations

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.exact import (
    EPS,
    LinearGaussian,
    beta_vae_identity,
    c_ima_expr,
    c_ima_terms,
    invariance_checks,
    linear_gaussian_first_order_generic,
    mean_field_gaussian_lemma,
)

R = sp.Rational
ROT = sp.Matrix([[R(3, 5), -R(4, 5)], [R(4, 5), R(3, 5)]])  # rotation by a rational angle (3-4-5 triple)

LINEAR_CASES = [
    ([[1, 2], [3, -1]], [1, 1]),
    ([[1, R(1, 2)], [0, 2]], [2, R(1, 3)]),
    ([[1, 2], [3, -1], [R(1, 2), 1]], [1, 1]),  # n > d
    ([[1, 0, 1], [0, 1, 1], [1, 1, 0], [R(1, 3), 0, 2]], [1, 2, 1]),  # n > d, d = 3
    ([[2], [1]], [3]),  # d = 1: c_IMA = 0
]


def _zero(expr: sp.Expr) -> bool:
    e = sp.simplify(sp.expand_log(sp.expand(expr), force=True))
    return e == 0


# ---------------------------------------------------------------- C3, C4: c_IMA


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-6, 6), min_size=6, max_size=6))
def test_c_ima_hadamard_nonnegative(entries: list[int]) -> None:
    J = sp.Matrix(3, 2, entries)
    if J.rank() < 2:
        return
    c = c_ima_expr(J)
    assert sp.N(c, 30) >= -1e-25  # C3 (Hadamard)
    col, half_logdet = c_ima_terms(J)
    assert _zero(c - (col - half_logdet))
    orthogonal = (J.T * J)[0, 1] == 0
    assert (c == 0) == orthogonal  # equality iff orthogonal columns


def test_c_ima_orthogonal_columns_and_square_case() -> None:
    J = ROT * sp.diag(2, R(1, 3))
    assert c_ima_expr(J) == 0
    A = sp.Matrix([[1, 2], [3, -1]])
    col, _ = c_ima_terms(A)
    assert _zero(c_ima_expr(A) - (col - sp.log(abs(A.det()))))  # n = d: last term log|det J|


def test_c_ima_invariances_C4() -> None:
    J = sp.Matrix([[1, 2], [3, -1], [R(1, 2), 1]])
    D = sp.diag(3, -R(1, 2))
    P = sp.Matrix([[0, 1], [1, 0]])
    O3 = sp.Matrix([[R(3, 5), -R(4, 5), 0], [R(4, 5), R(3, 5), 0], [0, 0, 1]])
    assert all(invariance_checks(J, D, P, O3).values())
    # symbolic J as well
    a, b, c, d = sp.symbols("a b c d", positive=True)
    Js = sp.Matrix([[a, b], [c, d]])
    assert all(invariance_checks(Js, sp.diag(2, 5), P, ROT).values())


def test_c_ima_elementwise_reparametrization_C4() -> None:
    z1, z2 = sp.symbols("z1 z2", real=True)
    f = sp.Matrix([z1 + z2**2 / 3, z2 - z1 / 2])
    h = sp.Matrix([z1 + z1**3 / 10, sp.exp(z2)])
    fh = f.subs({z1: h[0], z2: h[1]}, simultaneous=True)
    lhs = c_ima_expr(fh.jacobian([z1, z2]))
    rhs = c_ima_expr(f.jacobian([z1, z2])).subs({z1: h[0], z2: h[1]}, simultaneous=True)
    for pt in ({z1: R(3, 10), z2: -R(1, 2)}, {z1: 2, z2: R(7, 5)}):
        assert abs(sp.N((lhs - rhs).subs(pt), 40)) < 1e-35


# ---------------------------------------------------------------- C2


@pytest.mark.parametrize("d", [1, 2, 3])
def test_mean_field_lemma_C2(d: int) -> None:
    res = mean_field_gaussian_lemma(d)
    assert res.verified
    Lam = res.precision
    for k in range(d):
        assert sp.simplify(res.stationary_s[k] - 1 / Lam[k, k]) == 0


# ---------------------------------------------------------------- C5


@pytest.mark.parametrize("A, v", LINEAR_CASES)
def test_linear_gaussian_gap_series_C5(A, v) -> None:
    lg = LinearGaussian.from_lists(A, v)
    c0, c1 = lg.series(lg.gap(), 2)
    assert _zero(c0 - lg.c_ima())
    assert sp.simplify(c1 - lg.gap_first_order()) == 0
    M = lg.M
    if all(x == 1 for x in v):
        assert sp.simplify(c1 - (sum(1 / M[k, k] for k in range(lg.d)) - M.inv().trace()) / 2) == 0
    # optimal variances: s_k = ε/M_kk − ε²/(v_k M_kk²) + O(ε³)
    for k, (s0, s1, s2) in enumerate(lg.variance_series(3)):
        assert s0 == 0 and s1 == 1 / M[k, k] and sp.simplify(s2 + 1 / (lg.v[k] * M[k, k] ** 2)) == 0


@pytest.mark.parametrize("A, v", LINEAR_CASES[:3])
def test_linear_gaussian_mean_and_likelihood_C5(A, v) -> None:
    lg = LinearGaussian.from_lists(A, v)
    z0 = [R(3, 10), -R(1, 2), R(2, 3)][: lg.d]
    g = -lg.V.inv() * sp.Matrix(z0)  # ∇ℓ(z0)
    mu1 = lg.M.inv() * g
    for k, (m0, m1) in enumerate(lg.mean_series(z0, 2)):
        assert m0 == z0[k] and sp.simplify(m1 - mu1[k]) == 0
    # reduced log p: direct Gaussian formula vs determinant-lemma form
    shift = sp.Rational(lg.n - lg.d, 2) * sp.log(2 * sp.pi * EPS)
    assert _zero(lg.log_px(z0) + shift - lg.log_px_reduced(z0))


@pytest.mark.parametrize("A, v", LINEAR_CASES[:3])
def test_linear_gaussian_elbo_identity_C1(A, v) -> None:
    """C1 in closed form: log p − ELBO(μ, s) = KL(q ‖ posterior) ≥ 0, with equality structure of C2."""
    lg = LinearGaussian.from_lists(A, v)
    z0 = [R(3, 10), -R(1, 2)][: lg.d]
    eps_val = R(1, 7)
    Lam = lg.precision(eps_val)
    post_mean = lg.posterior_mean(z0, eps_val)
    mu = sp.Matrix([R(1, 5), R(2, 3)][: lg.d])
    s = [R(1, 9), R(1, 4)][: lg.d]
    S = sp.diag(*s)
    diff = mu - post_mean
    kl = ((Lam * S).trace() + (diff.T * Lam * diff)[0, 0] - lg.d - sp.log(Lam.det()) - sum(sp.log(x) for x in s)) / 2
    lhs = lg.log_px(z0, eps_val) - lg.elbo(z0, list(mu), s, eps_val)
    assert abs(sp.N(lhs - kl, 40)) < 1e-35
    assert sp.N(kl, 30) > 0
    # at the optimum (posterior mean, s = 1/Λ_kk) the ELBO equals log p − gap (C2)
    opt = lg.elbo(z0, list(post_mean), lg.mean_field_variances(eps_val), eps_val)
    assert abs(sp.N(opt - lg.elbo_star(z0, eps_val), 40)) < 1e-35


@pytest.mark.parametrize("d", [2, 3])
def test_linear_gaussian_first_order_generic(d: int) -> None:
    _, ok = linear_gaussian_first_order_generic(d)
    assert ok


# ---------------------------------------------------------------- C6


def test_beta_vae_identity_C6() -> None:
    res = beta_vae_identity()
    assert res.verified
    n, beta = sp.symbols("n beta", positive=True)
    assert res.constant.free_symbols <= {n, beta, sp.Symbol("gamma2", positive=True)}
    # β = 1: the identity is trivial
    assert sp.simplify(res.constant.subs(beta, 1)) == 0
