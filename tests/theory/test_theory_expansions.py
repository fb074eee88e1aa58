"""ε-expansions (docs/theory.md C7–C11, C14, C16) in theory/expansions.py.

Three independent checks of the symbolic results:
1. exact closed forms of the linear-Gaussian model (C5), series-expanded by sympy;
2. generic structural facts (parity, vanishing half-integer orders, C14 at leading order);
3. brute-force numerics (tests/theory/theory_bruteforce.py): quadrature of log p and of the
   mean-field ELBO, its root-found optimum, and polynomial fits in ε.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from theory.exact import EPS, LinearGaussian
from theory.expansions import (
    expand_at,
    expansion_symbolic,
    full_covariance_leading_order,
    generic_expansion_1d,
    generic_formulas,
    refined_variance_comparison,
)
from theory.moments import gaussian_expectation, gaussian_moment, symmetric_symbols
from theory.spec import loads_spec

sys.path.insert(0, str(Path(__file__).parent))
import theory_bruteforce as bf  # noqa: E402

R = sp.Rational

# Decoders of the brief: triangular, IMA class O·h(z) (rotation by the 3-4-5 angle, h(z) = z + z³/10),
# and an n > d embedding.
TRIANGULAR = '["z1 + 0.4*z2**2", "z2"]'
IMA = '["0.6*(z1 + z1**3/10) - 0.8*(z2 + z2**3/10)", "0.8*(z1 + z1**3/10) + 0.6*(z2 + z2**3/10)"]'
EMBED = '["z1", "z2", "0.3*z1*z2"]'


def model(decoder: str, prior: str = '"gaussian"', latents: str = "[[0.3, -0.5]]", name: str = "m"):
    return loads_spec(f"name = {json.dumps(name)}\ndecoder = {decoder}\nprior = {prior}\nlatents = {latents}")


def num(e: sp.Expr) -> float:
    return float(sp.N(e, 30))


# ---------------------------------------------------------------- Gaussian moments


def test_gaussian_moments_isserlis() -> None:
    S = symmetric_symbols("S", 2)
    s11, s12, s22 = S[0, 0], S[0, 1], S[1, 1]
    assert gaussian_moment((2, 0), S) == s11
    assert sp.expand(gaussian_moment((4, 0), S) - 3 * s11**2) == 0
    assert sp.expand(gaussian_moment((2, 2), S) - (s11 * s22 + 2 * s12**2)) == 0
    assert sp.expand(gaussian_moment((3, 1), S) - 3 * s11 * s12) == 0
    assert sp.expand(gaussian_moment((6, 0), S) - 15 * s11**3) == 0
    assert gaussian_moment((3, 0), S) == 0 and gaussian_moment((2, 1), S) == 0
    u = sp.symbols("u1 u2")
    a = sp.Symbol("a")
    assert sp.expand(gaussian_expectation((a * u[0] + u[1]) ** 2, u, S) - (a**2 * s11 + 2 * a * s12 + s22)) == 0


def test_monomial_coefficients_match_sympy_poly() -> None:
    """gaussian_expectation reads coefficients off term by term; they equal sympy's Poly.terms()."""
    from theory.moments import _monomial_coefficients

    u = sp.symbols("u1 u2", real=True)
    a, b, c = sp.symbols("a b c", real=True)
    for e in [(a * u[0] + b * u[1] + c) ** 3 * (u[0] - 2 * a * b * u[1] ** 2), sp.Integer(7) * a, sp.Integer(0), (u[0] * u[1] - a) ** 2 - u[0] ** 2 * u[1] ** 2]:
        ex = sp.expand(e)
        ref = {m: cf for m, cf in sp.Poly(ex, *u).terms()} if ex != 0 else {}
        got = _monomial_coefficients(ex, u)
        assert set(got) == set(ref) and all(sp.expand(got[m] - ref[m]) == 0 for m in ref)
    with pytest.raises(ValueError, match="polynomial"):
        _monomial_coefficients(sp.expand(sp.exp(u[0]) * a + u[1] ** -1), u)


# ---------------------------------------------------------------- generic structure


@pytest.mark.parametrize("n, d", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_generic_structure(n: int, d: int) -> None:
    G = generic_formulas(n, d)
    assert G.parity_ok  # X1 odd, X2 even: only integer powers of ε survive
    assert G.elbo_h1 == 0 and G.logp_h1 == 0  # the √ε terms vanish identically


def test_generic_terms_match_hand_derivation() -> None:
    """X1, X2 and E1 read off mechanically equal the hand-derived forms (docs/derivations_method.md):
    X1 = g·u − A1(u), X2 = ½uᵀHu − A2(u), A1 = ½(Ju)·T2[u,u], A2 = |T2[u,u]|²/8 + (Ju)·T3[u,u,u]/6,
    E1(m, t) = −½mᵀMm − E[∇A1(w')]·m + g·m − E[A2(w')] + ½Σ t_k H_kk,  w' ~ N(0, diag t)."""
    import itertools

    n, d = 2, 2
    G = generic_formulas(n, d)
    u = sp.Matrix(G.u)
    Ju = G.J * u
    T2uu = [(u.T * G.T2[i] * u)[0, 0] for i in range(n)]
    T3uuu = [sp.Add(*[G.T3[(i,) + abc] * u[abc[0]] * u[abc[1]] * u[abc[2]] for abc in itertools.product(range(d), repeat=3)]) for i in range(n)]
    A1 = sum(Ju[i] * T2uu[i] for i in range(n)) / 2
    A2 = sum(T2uu[i] ** 2 for i in range(n)) / 8 + sum(Ju[i] * T3uuu[i] for i in range(n)) / 6
    assert sp.expand(G.X1 - ((G.g.T * u)[0, 0] - A1)) == 0
    assert sp.expand(G.X2 - ((u.T * G.H * u)[0, 0] / 2 - A2)) == 0
    w = sp.symbols("w1:3")
    cov = sp.diag(*G.t)
    gradA1 = [sp.diff(A1, ua).xreplace(dict(zip(G.u, w))) for ua in G.u]
    M = G.J.T * G.J
    E1 = (
        -(G.m.T * M * G.m)[0, 0] / 2
        - sum(gaussian_expectation(gradA1[a], w, cov) * G.m[a] for a in range(d))
        + (G.g.T * G.m)[0, 0]
        - gaussian_expectation(A2.xreplace(dict(zip(G.u, w))), w, cov)
        + sum(G.t[k] * G.H[k, k] for k in range(d)) / 2
    )
    assert sp.expand(G.E1_mf - E1) == 0


def test_generic_1d_closed_forms() -> None:
    """n = d = 1: a1 = 3 f''² / (4 f'⁴) (posterior skewness), μ1, s2 in closed form."""
    e = generic_expansion_1d()
    f1 = sp.Symbol("f1", positive=True)
    f2, f3, l1, l2 = sp.symbols("f2 f3 l1 l2", real=True)
    assert e.c_ima == 0
    assert sp.simplify(e.a1 - 3 * f2**2 / (4 * f1**4)) == 0
    assert sp.simplify(e.full_cov_a1 - e.a1) == 0  # d = 1: mean-field = full covariance
    assert sp.simplify(e.mu1[0] - (l1 / f1**2 - 3 * f2 / (2 * f1**3))) == 0
    assert sp.simplify(e.s2[0] - (l2 / f1**4 - 3 * f2 * l1 / f1**5 - 2 * f3 / f1**5 + 3 * f2**2 / f1**6)) == 0
    # log p coefficient = the classical second-order Laplace correction for ∫ exp(−φ/ε + ℓ):
    # −φ''''/(8φ''²) + 5φ'''²/(24φ''³) + (ℓ'² + ℓ'')/(2φ'') − ℓ'φ'''/(2φ''²), φ = ½(f − x)²
    p2, p3, p4 = f1**2, 3 * f1 * f2, 3 * f2**2 + 4 * f1 * f3
    laplace = -p4 / (8 * p2**2) + 5 * p3**2 / (24 * p2**3) + (l1**2 + l2) / (2 * p2) - l1 * p3 / (2 * p2**2)
    assert sp.simplify(e.log_px[1] - laplace) == 0


@pytest.mark.parametrize("d", [1, 2])
def test_full_covariance_leading_order_C14(d: int) -> None:
    res = full_covariance_leading_order(d)
    assert res.verified and res.gap0 == 0


# ---------------------------------------------------------------- linear-Gaussian: exact series (C5)

LINEAR_SPECS = [
    # (decoder, priors, A, v)
    ('["z1 + 2*z2", "3*z1 - z2"]', '"gaussian"', [[1, 2], [3, -1]], [1, 1]),
    ('["z1 + 2*z2", "3*z1 - z2", "0.5*z1 + z2"]', '["gaussian(0, 2)", "gaussian(0, 0.5)"]', [[1, 2], [3, -1], [R(1, 2), 1]], [2, R(1, 2)]),
    ('["2*z1", "z1"]', '"gaussian(0, 3)"', [[2], [1]], [3]),
]


@pytest.mark.parametrize("decoder, prior, A, v", LINEAR_SPECS)
def test_expand_at_matches_linear_gaussian_series(decoder, prior, A, v) -> None:
    d = len(v)
    m = model(decoder, prior, "[[0.3, -0.5]]" if d == 2 else "[[0.7]]")
    z0 = m.points[0]
    e = expand_at(m, z0)
    lg = LinearGaussian.from_lists(A, v)
    gap = lg.series(lg.gap(), 2)
    zero = lambda x: sp.simplify(sp.expand_log(sp.expand(x), force=True)) == 0  # noqa: E731
    assert zero(e.c_ima - gap[0]) and sp.simplify(e.a1 - gap[1]) == 0
    lp = lg.series(lg.log_px_reduced(z0), 2)
    assert zero(e.log_px[0] - lp[0]) and sp.simplify(e.log_px[1] - lp[1]) == 0
    el = lg.series(lg.elbo_star_reduced(z0), 2)
    assert zero(e.elbo_star[0] - el[0]) and sp.simplify(e.elbo_star[1] - el[1]) == 0
    for k, (m0, m1) in enumerate(lg.mean_series(z0, 2)):
        assert m0 == z0[k] and sp.simplify(e.mu1[k] - m1) == 0
    for k, (s0, s1, s2) in enumerate(lg.variance_series(3)):
        assert s0 == 0 and e.s1[k] == s1 and sp.simplify(e.s2[k] - s2) == 0
    # C8: for linear decoders the paper's refined variance is exact to O(ε²)
    assert refined_variance_comparison(e).equal
    # C14: the posterior is Gaussian, so the full-covariance gap vanishes identically
    assert e.full_cov_gap0 == 0 and e.full_cov_a1 == 0
    if all(x == 1 for x in v):
        M = lg.M
        assert sp.simplify(e.a1 - (sum(1 / M[k, k] for k in range(d)) - M.inv().trace()) / 2) == 0


@pytest.mark.slow
def test_expand_at_linear_gaussian_d3() -> None:
    A = [[1, 0, 1], [0, 1, 1], [1, 1, 0], [R(1, 3), 0, 2]]
    m = model('["z1 + z3", "z2 + z3", "z1 + z2", "z1/3 + 2*z3"]', '"gaussian"', "[[0.3, -0.5, 0.2]]")
    e = expand_at(m, m.points[0])
    lg = LinearGaussian.from_lists(A, [1, 1, 1])
    M = lg.M
    assert sp.simplify(e.a1 - (sum(1 / M[k, k] for k in range(3)) - M.inv().trace()) / 2) == 0
    assert refined_variance_comparison(e).equal


# ---------------------------------------------------------------- nonlinear decoders vs brute force

NONLINEAR = [
    ("triangular-gauss", TRIANGULAR, '"gaussian"', "[[0.3, -0.5]]"),
    ("triangular-logistic", TRIANGULAR, '"logistic"', "[[0.9, 0.6]]"),
    ("ima-logistic", IMA, '"logistic"', "[[0.7, -0.4]]"),
    ("ima-gauss", IMA, '"gaussian"', "[[-0.2, 0.5]]"),
    ("embed-gauss", EMBED, '"gaussian"', "[[0.3, -0.5]]"),
    ("embed-logistic", EMBED, '"logistic"', "[[1.2, 0.4]]"),
    ("triangular-student", TRIANGULAR, '"student_t(5)"', "[[0.3, -0.5]]"),
    ("scalar-cubic", '["z1 + 0.3*z1**3"]', '"logistic"', "[[0.4]]"),
    ("scalar-embed", '["z1", "0.5*z1**2"]', '"gaussian"', "[[-0.6]]"),
    ("tanh-sin", '["tanh(z1) + 0.3*z2", "z2 + 0.2*sin(z1)"]', '"logistic"', "[[0.3, -0.5]]"),
    ("exp-embed", '["exp(z1/2)", "z2 + z1**2/4", "sin(z1 + z2)"]', '"student_t(4)"', "[[0.2, 0.4]]"),
]

# ε grid: 5e-3·2^-j, j = 0..7 (γ² from 200 to 25600), fitted by a degree-5 polynomial (FIT_DEG).
# Error budget of a fitted coefficient: float64 quadrature/root-finding noise ~1e-13 (the root
# finder's residual is asserted below 1e-11) amplified by the fit's 1/ε_min ≈ 2.6e4 gives ~3e-9;
# the neglected ε⁶ term biases the ε-coefficient by ~|a6|·ε_max⁵ ≲ 1e-9 (with ε_max = 1e-2 and
# degree 4 this bias reached 2e-7 for the scalar cubic and tanh decoders).  Observed errors:
# 1e-11 .. 3e-9 over the models below.  TOL = 1e-7 (absolute, relative above 1) keeps a 30×
# margin and is still ~1e5× smaller than the differences a wrong formula gives (e.g. s2 vs the
# paper's refined s2).  (The brief suggested ε in [1e-6, 1e-3]; this range conditions the fit
# better, and float64 in scaled coordinates stays accurate at ε = 5e-3.)
EPS_GRID = 5e-3 * 2.0 ** -np.arange(8)
FIT_DEG = 5
TOL = 1e-7


def close(a: float, b: float, tol: float = TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.mark.parametrize("name, decoder, prior, latents", NONLINEAR, ids=[c[0] for c in NONLINEAR])
def test_expansion_matches_brute_force(name, decoder, prior, latents) -> None:
    m = model(decoder, prior, latents, name)
    z0 = m.points[0]
    e = expand_at(m, z0)
    f = e.as_floats()
    b = bf.brute_force(m, z0, EPS_GRID)
    assert b.residual < 1e-11
    gap = bf.fit(b.eps, b.gap, FIT_DEG)
    assert close(gap[0], f["gap"][0]) and close(gap[1], f["gap"][1]), (gap[:2], f["gap"])
    lp = bf.fit(b.eps, b.log_px, FIT_DEG)
    assert close(lp[0], f["log_px"][0]) and close(lp[1], f["log_px"][1]), (lp[:2], f["log_px"])
    el = bf.fit(b.eps, b.elbo, FIT_DEG)
    assert close(el[0], f["elbo_star"][0]) and close(el[1], f["elbo_star"][1]), (el[:2], f["elbo_star"])
    for k in range(m.d):
        mu = bf.fit(b.eps, b.m[:, k], FIT_DEG)
        assert close(mu[0], f["mu_star"][1][k]), (k, mu[0], f["mu_star"][1][k])
        s = bf.fit(b.eps, b.t[:, k], FIT_DEG)
        assert close(s[0], f["s_star"][0][k]) and close(s[1], f["s_star"][1][k]), (k, s[:2], f["s_star"])
    # C7: μ* − z0 = O(ε) and ‖f(μ*) − x‖ → 0 (μ* = z0 + ε m with m bounded)
    assert np.all(np.abs(b.m) < 10)


@pytest.mark.slow  # 12 s of sympy; C3 and C12 are also checked by every verify run
def test_c_ima_signs_and_ima_class_C3_C12() -> None:
    for name, decoder, prior, latents in NONLINEAR:
        m = model(decoder, prior, latents, name)
        e = expand_at(m, m.points[0])
        assert num(e.c_ima) >= 0
        assert (e.c_ima == 0) == name.startswith(("ima", "scalar"))
        assert e.full_cov_gap0 == 0  # C14
        assert num(e.full_cov_a1) >= -1e-25  # ½ E[(X1 − linear part)²] ≥ 0
    ima = expansion_symbolic(model(IMA, '"logistic"'))
    assert ima.c_ima == 0  # C12 at every z0, not only at sample points


def test_refined_variance_C8_both_ways() -> None:
    lin = expand_at(model('["z1 + 2*z2", "3*z1 - z2"]', '"logistic"'), (R(3, 10), -R(1, 2)))
    assert refined_variance_comparison(lin).equal
    for decoder in (TRIANGULAR, EMBED):
        e = expand_at(model(decoder, '"gaussian"'), (R(3, 10), -R(1, 2)))
        cmp = refined_variance_comparison(e)
        assert not cmp.equal
        assert max(abs(num(x)) for x in cmp.difference) > 1e-3
    # leading order always agrees: s1 = 1/‖J_k‖² (C8)
    e = expand_at(model(TRIANGULAR), (R(3, 10), -R(1, 2)))
    assert e.s1 == (1, R(25, 29))


def test_full_covariance_gap_brute_force_C14() -> None:
    m = model(TRIANGULAR)
    z0 = np.array([0.3, -0.5])
    e = expand_at(m, m.points[0])
    nm = bf.NumericModel.from_symbolic(m)
    eps = 1e-2 * 2.0 ** -np.arange(6)
    gaps = np.array([bf.log_px_reduced(nm, z0, x) - bf.full_cov_elbo_star(nm, z0, x) for x in eps])
    c = bf.fit(eps, gaps, 3)
    # BFGS/Nelder–Mead leave ~1e-12 in ELBO*; /ε_min ≈ 3e-4 → 1e-8-level slope noise; 1e-5 margin.
    assert abs(c[0]) < 1e-8
    assert abs(c[1] - num(e.full_cov_a1)) < 1e-5


# ---------------------------------------------------------------- symbolic expansion, normalizer, API


@pytest.mark.parametrize("decoder, prior", [(TRIANGULAR, '"gaussian"'), (EMBED, '"logistic"')])
def test_symbolic_expansion_agrees_with_points(decoder, prior) -> None:
    m = model(decoder, prior)
    sym = expansion_symbolic(m)
    for pt in [(R(3, 10), -R(1, 2)), (R(-7, 5), R(2, 3))]:
        e = expand_at(m, pt)
        sub = dict(zip(m.latents, pt))
        sub.update({a: v.xreplace(sub) for a, v in sym.atoms.items()})
        pairs = [(sym.c_ima, e.c_ima), (sym.a1, e.a1), (sym.log_px[1], e.log_px[1]), (sym.elbo_star[0], e.elbo_star[0])]
        pairs += list(zip(sym.mu1 + sym.s1 + sym.s2 + sym.refined_s2, e.mu1 + e.s1 + e.s2 + e.refined_s2))
        for s_expr, p_expr in pairs:
            assert abs(num(s_expr.xreplace(sub)) - num(p_expr)) < 1e-20


def test_log_normalizer_custom_prior() -> None:
    gauss = model(TRIANGULAR, '"gaussian"')
    custom = model(TRIANGULAR, '{logpdf = "-z**2/2"}')
    pt = (R(3, 10), -R(1, 2))
    eg = expand_at(gauss, pt)
    ec = expand_at(custom, pt)
    assert eg.normalized and not ec.normalized
    assert ec.a1 == eg.a1 and ec.mu1 == eg.mu1 and ec.s2 == eg.s2  # unaffected by the normalizer
    en = expand_at(custom, pt, log_normalizer=sp.log(2 * sp.pi))  # log ∫∫ exp(−(z1² + z2²)/2)
    assert en.normalized
    for a, b in zip(en.log_px + en.elbo_star, eg.log_px + eg.elbo_star):
        assert sp.simplify(a - b) == 0


def test_as_floats_and_latex() -> None:
    e = expand_at(model(EMBED, '"logistic"'), ["0.3", -0.5])
    f = e.as_floats()
    json.dumps(f)
    assert set(f) >= {"gap", "mu_star", "s_star", "log_px", "elbo_star"}
    assert f["mu_star"][0] == [0.3, -0.5] and len(f["s_star"]) == 2
    assert all(isinstance(x, float) for x in f["gap"] + f["log_px"] + f["elbo_star"])
    assert e.latex().startswith("\\begin{align*}")
    with pytest.raises(ValueError):
        expansion_symbolic(model(EMBED)).as_floats()


def test_rank_deficient_and_dimension_errors() -> None:
    m = model('["z1**2", "z2"]')
    with pytest.raises(ValueError, match="rank-deficient"):
        expand_at(m, (0, 1))
    with pytest.raises(ValueError):
        expand_at(m, (1,))


def test_expand_at_speed() -> None:
    """The brief's target: a 2-D model (n = 3, d = 2) in ~5 s, generic formulas included.

    Measured ~1.3 s (generic (3, 2) derivation) + ~0.2–0.3 s per point on the development
    machine; the bound is generous to stay robust on slower CI machines.
    """
    generic_formulas.cache_clear()
    m = model(EMBED, '"logistic"')
    t = time.perf_counter()
    expand_at(m, m.points[0])
    first = time.perf_counter() - t
    t = time.perf_counter()
    expand_at(m, (R(1, 2), R(1, 3)))
    second = time.perf_counter() - t
    assert first < 15 and second < 5, (first, second)


def test_brute_force_helper_is_exact_on_linear_gaussian() -> None:
    """The brute-force helper itself, checked against closed forms (C5) at fixed ε, and for
    convergence in its discretization parameters on a curved decoder."""
    m = model('["z1 + 2*z2", "3*z1 - z2", "0.5*z1 + z2"]', '["gaussian(0, 2)", "gaussian(0, 0.5)"]')
    lg = LinearGaussian.from_lists([[1, 2], [3, -1], [R(1, 2), 1]], [2, R(1, 2)])
    z0 = m.points[0]
    nm = bf.NumericModel.from_symbolic(m)
    q = bf.ElboQuadrature(nm, np.array([0.3, -0.5]))
    for eps in (1e-2, 1e-4):
        lp = bf.log_px_reduced(nm, np.array([0.3, -0.5]), eps)
        assert abs(lp - num(lg.log_px_reduced(z0).subs(EPS, R(eps)))) < 1e-12
        mm, t, el, _ = q.optimum(eps)
        assert abs(el - num(lg.elbo_star_reduced(z0).subs(EPS, R(eps)))) < 1e-12
        s_exact = [num(s.subs(EPS, R(eps))) / eps for s in lg.mean_field_variances()]
        assert np.allclose(t, s_exact, rtol=1e-11, atol=0)
    curved = model(TRIANGULAR)
    nm = bf.NumericModel.from_symbolic(curved)
    z = np.array([0.3, -0.5])
    a = bf.log_px_reduced(nm, z, 1e-2)
    assert abs(a - bf.log_px_reduced(nm, z, 1e-2, R=16.0, step=0.07)) < 1e-13
    e40 = bf.ElboQuadrature(nm, z, 40).optimum(1e-2)[2]
    e60 = bf.ElboQuadrature(nm, z, 60).optimum(1e-2)[2]
    assert abs(e40 - e60) < 1e-13
