"""numerics.certified on problems with closed forms, built by hand (ball-arithmetic
callables, no spec translator): the linear-Gaussian model f(z) = A z, p0 = N(0, v I).

Closed form (THEORY C5), evaluated in Arb at 256 bits:
Λ = diag(1/v) + γ² AᵀA, m = γ² Λ⁻¹ Aᵀ x,
log p_red = −d/2 log 2π + d/2 log γ² − ½(d log v + log det Λ) − ½(γ²‖x − A m‖² + ‖m‖²/v),
ELBO*_red = log p_red − ½(Σ_k log Λ_kk − log det Λ)   (C2).
The balls must contain these values and have radius ≤ 1e-15·(1 + |value|) (the issue's
target).  A deliberately wrong integrand must give a ball that excludes them.  The posterior
is Gaussian, N(m, Λ⁻¹), so the full-covariance ELBO* equals log p exactly (C1 with KL = 0),
at μ* = m, Σ* = Λ⁻¹.
"""

from __future__ import annotations

import math

import pytest
import scipy.integrate
import scipy.stats
from flint import acb, arb

from numerics.certified import (
    CertPrior1D,
    CertProblem,
    NotCertified,
    PhiDerivatives,
    _negative_definite,
    c_ima_ball,
    certify_elbo,
    certify_elbo_star,
    certify_elbo_star_fullcov,
    certify_log_px,
    exact_float,
    gaussian_expectation,
    gaussian_tail_moment,
    gl_rule,
    int_power,
    integrate_cells,
    polynomial_tail_bound,
    rel_radius,
    square,
    upper,
    working_precision,
)

TARGET = 1e-15


def _gaussian_prior(v: int) -> CertPrior1D:
    c = (2 * arb.pi() * v).log() / 2
    return CertPrior1D("gaussian", ((0, 1), (v, 1)), lambda t: -(t * t) / (2 * v) - c)


def linear_problem(A: list[list[float]], z0: list[float], gamma2: float, prec: int, v: int = 1,
                   perturb: float = 0.0) -> CertProblem:
    """f(z) = A z (exact binary entries), x = A z0; ``perturb`` scales the decoder used in the
    integrand by (1 + perturb) (a deliberately wrong integrand) while x stays A z0."""
    n, d = len(A), len(A[0])
    Ab = [[exact_float(a) for a in row] for row in A]
    Aw = [[a * (1 + exact_float(perturb)) for a in row] for row in Ab]
    x = [sum((Ab[i][k] * exact_float(z0[k]) for k in range(d)), arb(0)) for i in range(n)]

    def decoder(z):
        return [sum((Aw[i][k] * z[k] for k in range(1, d)), Aw[i][0] * z[0]) for i in range(n)]

    return CertProblem(d, n, decoder, [_gaussian_prior(v)] * d, x, exact_float(gamma2), prec)


def closed_form(A: list[list[float]], z0: list[float], gamma2: float, v: int = 1) -> tuple[arb, arb, list[arb], list[arb]]:
    """(log p_red, ELBO*_red, μ*, s*) of the linear-Gaussian model in Arb (module doc), d <= 2."""
    n, d = len(A), len(A[0])
    with working_precision(256):
        Ab = [[exact_float(a) for a in row] for row in A]
        g = exact_float(gamma2)
        x = [sum((Ab[i][k] * exact_float(z0[k]) for k in range(d)), arb(0)) for i in range(n)]
        M = [[sum((Ab[i][a] * Ab[i][b] for i in range(n)), arb(0)) for b in range(d)] for a in range(d)]
        Lam = [[(arb(1) / v if a == b else arb(0)) + g * M[a][b] for b in range(d)] for a in range(d)]
        Atx = [g * sum((Ab[i][k] * x[i] for i in range(n)), arb(0)) for k in range(d)]
        if d == 1:
            det = Lam[0][0]
            m = [Atx[0] / det]
        else:
            det = Lam[0][0] * Lam[1][1] - Lam[0][1] * Lam[1][0]
            m = [(Lam[1][1] * Atx[0] - Lam[0][1] * Atx[1]) / det, (Lam[0][0] * Atx[1] - Lam[1][0] * Atx[0]) / det]
        r = [x[i] - sum((Ab[i][k] * m[k] for k in range(d)), arb(0)) for i in range(n)]
        quad = g * sum((ri * ri for ri in r), arb(0)) + sum((mk * mk for mk in m), arb(0)) / v
        lp = -arb(d) / 2 * (2 * arb.pi()).log() + arb(d) / 2 * g.log() - (d * arb(v).log() + det.log()) / 2 - quad / 2
        gap = (sum((Lam[k][k].log() for k in range(d)), arb(0)) - det.log()) / 2
        return lp, lp - gap, m, [1 / Lam[k][k] for k in range(d)]


def linear_exprs(A, z0, gamma2: float, v: int = 1) -> PhiDerivatives:
    """φ, φ' and φ'' for d = 1 (hand-written): φ = −γ²/2 Σ(x_i − a_i z)² − z²/(2v) − ½ log 2πv."""
    a = [exact_float(r[0]) for r in A]
    g = exact_float(gamma2)
    x = [ai * exact_float(z0[0]) for ai in a]
    c = (2 * arb.pi() * v).log() / 2
    saa = sum((ai * ai for ai in a), arb(0))
    curv = -g * saa - arb(1) / v

    def fn(z):
        t = z[0]
        phi = -g / 2 * sum(((xi - ai * t) * (xi - ai * t) for xi, ai in zip(x, a)), 0 * t) - t * t / (2 * v) - c
        d1 = g * sum((ai * (xi - ai * t) for xi, ai in zip(x, a)), 0 * t) - t / v
        return [phi, d1, curv + 0 * t]

    # |φ| <= γ²/2 Σ(|x_i| + |a_i| r)² + r²/(2v) + |c|: coefficients of 1, r, r²
    p0 = g / 2 * sum((xi * xi for xi in x), arb(0)) + abs(c)
    p1 = g * sum((abs(xi) * abs(ai) for xi, ai in zip(x, a)), arb(0))
    p2 = g / 2 * saa + arb(1) / (2 * v)
    grow_phi = [arb(p0.upper()), arb(p1.upper()), arb(p2.upper())]
    grow_d1 = [arb(p1.upper()), arb((g * saa + arb(1) / v).upper())]
    grow_d2 = [arb((g * saa + arb(1) / v).upper())]
    return PhiDerivatives(1, fn, [grow_phi, grow_d1, grow_d2], 2)


def linear_exprs_2d(A, z0, gamma2: float, v: int = 1, perturb: float = 0.0) -> PhiDerivatives:
    """φ, ∇φ and ∇²φ for d = 2, n = len(A) (hand-written): φ = −γ²/2 ‖x − Ãz‖² − ‖z‖²/(2v) −
    log 2πv with x = A z0 and Ã = (1 + ``perturb``) A (a deliberately wrong integrand when
    perturb ≠ 0); ∇φ = γ² Ãᵀ(x − Ãz) − z/v, ∇²φ = −γ² ÃᵀÃ − I/v."""
    n = len(A)
    Ab = [[exact_float(a) for a in row] for row in A]
    At = [[a * (1 + exact_float(perturb)) for a in row] for row in Ab]
    g = exact_float(gamma2)
    x = [Ab[i][0] * exact_float(z0[0]) + Ab[i][1] * exact_float(z0[1]) for i in range(n)]
    c = (2 * arb.pi() * v).log()
    M = [[sum((At[i][a] * At[i][b] for i in range(n)), arb(0)) for b in range(2)] for a in range(2)]
    hess = [-g * M[0][0] - arb(1) / v, -g * M[0][1], -g * M[1][1] - arb(1) / v]

    def fn(z):
        r = [x[i] - At[i][0] * z[0] - At[i][1] * z[1] for i in range(n)]
        phi = -g / 2 * sum((ri * ri for ri in r), 0 * z[0]) - (z[0] * z[0] + z[1] * z[1]) / (2 * v) - c
        grad = [g * sum((At[i][k] * r[i] for i in range(n)), 0 * z[0]) - z[k] / v for k in range(2)]
        return [phi, *grad, *(h + 0 * z[0] for h in hess)]

    # |r_i| <= |x_i| + a_i ‖z‖∞ with a_i = |Ã_i1| + |Ã_i2|
    a = [abs(At[i][0]) + abs(At[i][1]) for i in range(n)]
    gphi = [g / 2 * sum((xi * xi for xi in x), arb(0)) + abs(c), g * sum((abs(xi) * ai for xi, ai in zip(x, a)), arb(0)),
            g / 2 * sum((ai * ai for ai in a), arb(0)) + arb(1) / v]
    ggrad = [[g * sum((abs(At[i][k]) * abs(x[i]) for i in range(n)), arb(0)),
              g * sum((abs(At[i][k]) * a[i] for i in range(n)), arb(0)) + arb(1) / v] for k in range(2)]
    growth = [[upper(p) for p in gphi], *[[upper(p) for p in gk] for gk in ggrad], *[[upper(abs(h))] for h in hess]]
    return PhiDerivatives(2, fn, growth, 2)


def posterior_cov_2d(A, gamma2: float, v: int = 1) -> list[list[arb]]:
    """Λ⁻¹ for d = 2 in Arb (256 bits)."""
    with working_precision(256):
        n = len(A)
        g = exact_float(gamma2)
        Ab = [[exact_float(a) for a in row] for row in A]
        L = [[(arb(1) / v if a == b else arb(0)) + g * sum((Ab[i][a] * Ab[i][b] for i in range(n)), arb(0))
              for b in range(2)] for a in range(2)]
        det = L[0][0] * L[1][1] - L[0][1] * L[1][0]
        return [[L[1][1] / det, -L[0][1] / det], [-L[1][0] / det, L[0][0] / det]]


A1 = [[1.25], [-0.5]]  # d = 1, n = 2
Z1 = [0.75]
A2 = [[1.0, 0.5], [0.25, 1.25]]  # d = 2, n = 2
Z2 = [0.5, -0.75]


@pytest.mark.parametrize("gamma2", [1.0, 1e4])
def test_log_px_d1_contains_closed_form(gamma2: float) -> None:
    lp, _, m, s = closed_form(A1, Z1, gamma2)
    with working_precision(96):
        prob = linear_problem(A1, Z1, gamma2, 96)
        cert = certify_log_px(prob, [float(m[0].mid())], [[math.sqrt(float(s[0].mid()))]])
    assert cert.value.contains(lp), (cert.value, lp)
    assert rel_radius(cert.value) <= TARGET


def test_log_px_d2_contains_closed_form() -> None:
    lp, _, m, s = closed_form(A2, Z2, 1e2)
    # a deliberately crude chart (diagonal, 30% off): the chart only steers the work
    scale = [[1.3 * math.sqrt(float(s[0].mid())), 0.0], [0.0, 0.7 * math.sqrt(float(s[1].mid()))]]
    with working_precision(96):
        cert = certify_log_px(linear_problem(A2, Z2, 1e2, 96), [float(v.mid()) for v in m], scale)
    assert cert.value.contains(lp), (cert.value, lp)
    assert rel_radius(cert.value) <= TARGET


def test_wrong_integrand_is_excluded() -> None:
    """The decoder in the integrand off by a relative 1e-6: the ball must exclude the truth."""
    lp, _, m, s = closed_form(A1, Z1, 1e4)
    with working_precision(96):
        cert = certify_log_px(linear_problem(A1, Z1, 1e4, 96, perturb=1e-6), [float(m[0].mid())], [[math.sqrt(float(s[0].mid()))]])
    assert not cert.value.overlaps(lp)
    assert rel_radius(cert.value) <= TARGET


@pytest.mark.parametrize("gamma2", [1.0, 1e6])
def test_elbo_star_d1_two_sided_contains_closed_form(gamma2: float) -> None:
    _, es, m, s = closed_form(A1, Z1, gamma2)
    # a hint off by ~1e-9 (relative), as from a float64 optimizer
    mu_h = [float(m[0].mid()) * (1 + 1e-9)]
    s_h = [float(s[0].mid()) * (1 - 1e-9)]
    with working_precision(110):
        cert = certify_elbo_star(linear_exprs(A1, Z1, gamma2), exact_float(gamma2), mu_h, s_h)
    assert cert.two_sided, cert.reason
    assert cert.value.contains(es), (cert.value, es)
    assert rel_radius(cert.value) <= TARGET
    assert cert.lower_bound.lower() <= es.upper()
    assert cert.mu[0].contains(m[0]) and cert.s[0].contains(s[0])


def test_elbo_at_given_encoder_is_a_lower_bound() -> None:
    """ELBO(μ, s) at a non-optimal encoder: its certified ball lies below ELBO* (C1/C2) and
    contains the closed-form ELBO of the linear-Gaussian model."""
    gamma2 = 1e2
    _, es, _m, _s = closed_form(A1, Z1, gamma2)
    mu = [exact_float(0.7)]
    sv = [exact_float(0.004)]
    with working_precision(110):
        ball = certify_elbo(linear_exprs(A1, Z1, gamma2), exact_float(gamma2), mu, sv)
        # closed form: E_q‖x − a z‖² = ‖x − a μ‖² + s‖a‖²; E_q z² = μ² + s
        a = [exact_float(r[0]) for r in A1]
        g = exact_float(gamma2)
        x = [ai * exact_float(Z1[0]) for ai in a]
        fit = sum(((xi - ai * mu[0]) ** 2 + sv[0] * ai * ai for xi, ai in zip(x, a)), arb(0))
        exact = arb(1) / 2 + (g * sv[0]).log() / 2 - g / 2 * fit - (mu[0] ** 2 + sv[0]) / 2 - (2 * arb.pi()).log() / 2
    assert ball.contains(exact), (ball, exact)
    assert ball.upper() < es.lower()


def test_krawczyk_refuses_a_far_hint() -> None:
    """A hint far from the maximiser: no two-sided certificate, the reason says why, and the
    one-sided lower bound is still proven (it lies below ELBO*)."""
    _, es, m, s = closed_form(A1, Z1, 1e2)
    with working_precision(96):
        cert = certify_elbo_star(linear_exprs(A1, Z1, 1e2), exact_float(1e2), [float(m[0].mid()) + 0.05],
                                 [float(s[0].mid()) * 3])
    assert not cert.two_sided and cert.value is None
    assert cert.reason  # e.g. the box needed to hold the Newton step reaches s <= 0
    assert cert.lower_bound.upper() < es.lower()


@pytest.mark.parametrize("gamma2", [1.0, pytest.param(1e6, marks=pytest.mark.slow)])
def test_elbo_star_d2_meanfield_and_fullcov_closed_form(gamma2: float) -> None:
    """d = 2: the mean-field ELBO* (C2: log p − ½(Σ log Λ_kk − log det Λ)) and the
    full-covariance ELBO* (= log p exactly, at Σ* = Λ⁻¹) each inside a two-sided ball of
    radius <= 1e-15·(1 + |value|), from hints off by ~1e-9; the certified full-covariance
    maximiser contains (m, Λ⁻¹)."""
    lp, es, m, s = closed_form(A2, Z2, gamma2)
    cov = posterior_cov_2d(A2, gamma2)
    mu_h = [float(mk.mid()) * (1 + 1e-9) for mk in m]
    s_h = [float(sk.mid()) * (1 - 1e-9) for sk in s]
    c = [[float(v.mid()) for v in row] for row in cov]
    l11 = math.sqrt(c[0][0])
    l21 = c[1][0] / l11
    L_h = [[l11 * (1 + 1e-9), 0.0], [l21, math.sqrt(c[1][1] - l21 * l21)]]
    with working_precision(110):
        pd = linear_exprs_2d(A2, Z2, gamma2)
        mf = certify_elbo_star(pd, exact_float(gamma2), mu_h, s_h)
        fc = certify_elbo_star_fullcov(pd, exact_float(gamma2), mu_h, L_h)
    assert mf.two_sided and fc.two_sided, (mf.reason, fc.reason)
    assert mf.value.contains(es) and rel_radius(mf.value) <= TARGET, (mf.value, es)
    assert fc.value.contains(lp) and rel_radius(fc.value) <= TARGET, (fc.value, lp)
    assert not fc.value.overlaps(mf.value)  # A2 is not orthogonal: the mean-field gap is > 0
    assert all(fc.mu[k].contains(m[k]) for k in range(2))
    assert all(fc.cov[i][j].contains(cov[i][j]) for i in range(2) for j in range(2))
    assert fc.lower_bound.upper() >= mf.lower_bound.lower() - 1  # both finite, proven
    assert fc.lower_bound.lower() <= lp.upper()


def test_fullcov_wrong_integrand_is_excluded() -> None:
    """The decoder in the integrand off by a relative 1e-6 (x unchanged): the certified
    full-covariance ELBO* excludes the true log p."""
    gamma2 = 1e4
    lp, _, m, _ = closed_form(A2, Z2, gamma2)
    cov = posterior_cov_2d(A2, gamma2)
    c = [[float(v.mid()) for v in row] for row in cov]
    l11 = math.sqrt(c[0][0])
    l21 = c[1][0] / l11
    L_h = [[l11, 0.0], [l21, math.sqrt(c[1][1] - l21 * l21)]]
    with working_precision(110):
        fc = certify_elbo_star_fullcov(linear_exprs_2d(A2, Z2, gamma2, perturb=1e-6), exact_float(gamma2),
                                       [float(v.mid()) for v in m], L_h)
    assert fc.two_sided, fc.reason
    assert not fc.value.overlaps(lp), (fc.value, lp)
    assert rel_radius(fc.value) <= TARGET


# ---------------------------------------------------------------------------------------
# the integrator on its own
# ---------------------------------------------------------------------------------------


def test_gl_rule_integrates_polynomials_exactly() -> None:
    with working_precision(128):
        x, w = gl_rule(6)
        for k in range(12):  # exact up to degree 2n − 1 = 11
            q = sum((wi * xi**k for xi, wi in zip(x, w)), arb(0))
            exact = arb(0) if k % 2 else arb(2) / (k + 1)
            assert q.overlaps(exact) and q.rad() < 1e-35, (k, q)


def test_integrate_cells_against_closed_forms() -> None:
    """∫_{-1}^{1} dt/(1 + 25t²) = (2/5) atan 5 (poles at ±i/5: the cells must shrink near
    them), and ∫∫_{[0,2]×[-1,3]} e^{-(u² + v²)/2} with a second component u·v: each inside a
    ball of the requested tolerance."""
    with working_precision(96):
        tol = arb(2) ** -80
        r = integrate_cells(lambda u: [1 / (1 + 25 * (u[0] * u[0]))], [arb(-1)], [arb(1)], [tol], 1)
        exact = 2 * arb(5).atan() / 5
        assert r is not None and r[0].overlaps(exact) and float(r[0].rad()) <= float(tol.upper()) * 2
        def F(u):
            w = (-(square(u[0]) + square(u[1])) / 2).exp()
            return [w, w * u[0] * u[1]]
        r2 = integrate_cells(F, [arb(0), arb(-1)], [arb(2), arb(3)], [tol, tol], 2)
        sq = (arb.pi() / 2).sqrt()
        e1 = sq * (arb(2) / arb(2).sqrt()).erf() * sq * ((arb(3) / arb(2).sqrt()).erf() + (arb(1) / arb(2).sqrt()).erf())
        e2 = (1 - (-arb(2)).exp()) * ((-arb(1) / 2).exp() - (-arb(9) / 2).exp())
        assert r2 is not None and r2[0].overlaps(e1) and r2[1].overlaps(e2), (r2, e1, e2)
        assert all(float(v.rad()) <= 2 * float(tol.upper()) for v in r2)


def test_integrate_cells_refuses_a_pole_on_the_path() -> None:
    """1/t on [−1, 1]: not holomorphic at 0, and no cell can be proven; nothing is returned."""
    with working_precision(64):
        assert integrate_cells(lambda u: [1 / u[0]], [arb(-1)], [arb(1)], [arb(2) ** -40], 1, max_evals=20_000) is None


def test_negative_definite_interval_matrices() -> None:
    with working_precision(64):
        H = [[arb(-2, 0.1), arb(1, 0.1)], [arb(1, 0.1), arb(-2, 0.1)]]  # eigenvalues −1, −3 ± 0.2
        assert _negative_definite(H)
        H_bad = [[arb(-2, 0.1), arb(2, 0.1)], [arb(2, 0.1), arb(-2, 0.1)]]  # contains singular matrices
        assert not _negative_definite(H_bad)


# ---------------------------------------------------------------------------------------
# tail bounds on their own
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("u", [0.5, 3.0, 12.0, 40.0])
def test_prior_tails_against_scipy(u: float) -> None:
    """One-sided tails: Gaussian and logistic exact, Student-t an upper bound (scipy as the
    independent reference; relative slack 1e-12 for its float64 rounding)."""
    dummy = lambda t: t
    with working_precision(128):
        g = CertPrior1D("gaussian", ((0, 1), (2, 1)), dummy).tail(exact_float(u))
        lg = CertPrior1D("logistic", ((0, 1), (1, 2)), dummy).tail(exact_float(u))
        st = CertPrior1D("student_t", ((5, 1),), dummy).tail(exact_float(u))
    ref_g = scipy.stats.norm.sf(u, scale=math.sqrt(2))
    ref_l = scipy.stats.logistic.sf(u, scale=0.5)
    ref_t = scipy.stats.t.sf(u, 5)
    assert math.isclose(float(g.mid()), ref_g, rel_tol=1e-12)
    assert math.isclose(float(lg.mid()), ref_l, rel_tol=1e-12)
    assert float(st.upper()) >= ref_t * (1 - 1e-12)
    if u >= 12:  # the Student-t bound is tight in the far tail (ratio → 1)
        assert float(st.upper()) <= 1.1 * ref_t


@pytest.mark.parametrize("j,d", [(0, 1), (3, 1), (0, 2), (2, 2), (5, 2)])
def test_gaussian_tail_moment(j: int, d: int) -> None:
    """∫_{|ξ|>T} N(ξ; 0, I_d) |ξ|^j against numerical quadrature of the radial density."""
    T = 3.0
    with working_precision(128):
        val = float(gaussian_tail_moment(j, d, exact_float(T)).mid())
    const = 2 ** (1 - d / 2) / math.gamma(d / 2)
    ref, _ = scipy.integrate.quad(lambda r: const * r ** (j + d - 1) * math.exp(-r * r / 2), T, math.inf)
    assert math.isclose(val, ref, rel_tol=1e-9)


def test_polynomial_tail_bound_dominates_brute_force() -> None:
    """E[P(|μ|∞ + σ|ξ|₂); ‖ξ‖∞ > T] for P(r) = 1 + 2r² in d = 2 against a brute-force
    integral over ‖ξ‖∞ > T (the bound uses the larger region |ξ|₂ > T)."""
    mu, sd, T = 0.5, 0.3, 2.0
    with working_precision(128):
        bound = float(polynomial_tail_bound([arb(1), arb(0), arb(2)], arb(mu), arb(sd), 2, exact_float(T)).upper())
    P = lambda r: 1 + 2 * r * r

    def dens(y, x):
        return math.exp(-(x * x + y * y) / 2) / (2 * math.pi) * P(mu + sd * math.hypot(x, y))

    total, _ = scipy.integrate.dblquad(dens, -12, 12, -12, 12)
    inner, _ = scipy.integrate.dblquad(dens, -T, T, -T, T)
    assert bound >= total - inner
    assert bound <= 3 * (total - inner)


def test_expectation_tail_truncation() -> None:
    """E[ξ⁴] = 3 under N(0, 1) from the truncated integral plus the tail bound."""
    with working_precision(96):
        e = gaussian_expectation(lambda z: z[0] ** 4, [arb(0)], [arb(1)], [arb(0)] * 4 + [arb(1)], arb(2) ** -60, 62)
    assert e.value.contains(arb(3)) and rel_radius(e.value) < 1e-16


# ---------------------------------------------------------------------------------------
# "not certified" paths and ball helpers
# ---------------------------------------------------------------------------------------


def test_custom_prior_is_refused() -> None:
    with pytest.raises(NotCertified, match="tail bound"):
        CertPrior1D("custom", (), lambda t: t)


def test_non_analytic_integrand_is_not_certified() -> None:
    """A decoder that is nowhere finite: no cell can be integrated, nothing is returned."""
    with working_precision(64):
        prob = linear_problem(A1, Z1, 1e2, 64)
        prob.decoder = lambda z: [arb.nan() if not isinstance(z[0], acb) else acb(arb.nan(), 0)] * 2
        with pytest.raises(NotCertified):
            certify_log_px(prob, [0.75], [[0.1]], max_cells=2000)


def test_expectation_refuses_when_tail_cannot_be_bounded() -> None:
    with working_precision(64), pytest.raises(NotCertified, match="tail"):
        gaussian_expectation(lambda z: z[0], [arb(0)], [arb(1)], [arb.pos_inf()], arb(2) ** -60, 62)


def test_ball_helpers() -> None:
    with working_precision(64):
        b = arb(0, 1)
        sq = square(b)
        assert sq.lower() >= 0 and sq.contains(arb(1))
        assert int_power(b, 2).lower() >= 0  # python-flint's ** gives nan here
        assert int_power(arb(-2), 3).contains(arb(-8))
        assert int_power(arb(2), -2).contains(arb(1) / 4)


def test_c_ima_ball() -> None:
    with working_precision(128):
        J = [[arb(1), arb(2)], [arb(3), arb(4)]]
        c = c_ima_ball(J)
        ortho = c_ima_ball([[arb(3), arb(-4)], [arb(4), arb(3)]])
        emb = c_ima_ball([[arb(1), arb(0)], [arb(0), arb(1)], [arb(1), arb(1)]])
    assert math.isclose(float(c.mid()), -0.5 * math.log(1 - 196 / 200), rel_tol=1e-14)
    assert ortho.contains(arb(0)) and ortho.lower() >= 0
    # n > d: ρ = 1/4 → c = −½ log(3/4)
    assert math.isclose(float(emb.mid()), -0.5 * math.log(0.75), rel_tol=1e-14)
