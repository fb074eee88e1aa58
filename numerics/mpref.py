"""Extended-precision references for log p_γ(x) and ELBO*(x), d ≤ 2, in mpmath only.

The decoder and the prior come as mpmath callables ``f_mp(z) -> list`` and ``ell_mp(z) -> mpf``
of a latent list z (:func:`proofs_check.bridge.mpmath_functions` builds them from a spec); x,
the mode and the scales are plain float lists (converted exactly to mpf).  All arithmetic runs
at ``dps`` decimal digits (default 30), so the residual x − f(z) ~ γ⁻¹ and the products
γ²‖x − f(z)‖² carry no float64 rounding at γ² up to 1e12.  Conventions are those of
:mod:`numerics.posterior` and :mod:`numerics.elbo`: *reduced* values, i.e. without
(n−d)/2 · log(γ²/2π).

Quadrature (why not ``mpmath.quad``): ``mpmath.quad`` (tanh-sinh, infinite intervals) gives
the same log p to ~1e-15 here but needs ~10⁶ integrand evaluations in 2-D (40-80 s per value).
Both references below use the trapezoidal rule on the whole line, which converges
geometrically for analytic integrands, in a form that reaches a quadrature error far below
the 1e-10 tolerance of the float64 checks with ~10⁴ evaluations in 2-D:

* ``log_marginal_mp``: the posterior-scaled coordinates u (z = center + L u, so the integrand
  is ≈ e^{−|u|²/2} for large γ²) are further mapped by u = sinh(v) (handles exponential and
  algebraic tails, e.g. a logistic or Student-t prior at small γ²), and the trapezoidal rule
  in v is applied with steps h = 1/4, 1/8, 1/16 (nested; one set of evaluations).  The
  truncation box |v_k| ≤ V_k is grown per coordinate until the integrand on the box boundary
  is below 1e-24 of its peak.  Error estimate (``error``): d₂²/d₁ (the geometric
  extrapolation of the refinement differences d₁ = |I_{1/4} − I_{1/8}|, d₂ = |I_{1/8} −
  I_{1/16}|; the trapezoidal error for an analytic integrand falls like e^{−c/h}, so halving h
  squares it), floored at d₂·1e-3, plus the boundary mass, 10^{−dps+5} and the rounding of the
  returned float (2⁻⁵³·|value|, included in every error below).  Stated
  precision: ≤ 1e-15 absolute in the log for the models of the test suite (cross-checked
  against ``mpmath.quad`` at full precision in 1-D and, once, in 2-D).

* ``elbo_mp``: E_{ξ~N(0,I)}[h(μ + √s ξ)] by the trapezoidal rule in ξ on |ξ_k| ≤ 11
  (Gaussian tail e^{−60.5} ≈ 5e-27 times a polynomially bounded h), steps h = 1/4 and 1/8.
  For h analytic in the strip |Im ξ| < a the error is ~e^{−2πa/h} (logistic prior: a = π/σ_k,
  e^{−2π²/(σ h)} ≤ 1e-30 at h = 1/8 for σ ≤ 2.3).  Error estimate: |I_{1/4} − I_{1/8}|
  (conservative: it is the error of the coarser rule) plus 10^{−dps+5}.

``elbo_star_mp`` maximizes the ELBO in (μ, τ = log s) by Newton's method from the float64
optimum.  Gradient and Hessian are Gaussian expectations too (Stein's identity:
∂_μ N = N ξ/σ, ∂_τ N = N (ξ²−1)/2, ...), so one pass over the nodes gives value, gradient
and Hessian.  The value of a maximum is insensitive to parameter errors: the error adds the
Newton decrement ½ gᵀ(−H)⁻¹g at the final point.

Cost (2 cores, CPU, the logistic triangular model): log_marginal_mp 1-3 s, elbo_star_mp 2-4 s
for d = 2; well under 0.1 s for d = 1.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import mpmath

from .estimate import Estimate

__all__ = ["log_marginal_mp", "elbo_mp", "elbo_star_mp"]

FMp = Callable[[Sequence], Sequence]
EllMp = Callable[[Sequence], "mpmath.mpf"]

#: trapezoid steps for log p (v = asinh u coordinates), coarse to fine; nested
_LOGP_STEPS = (4, 8, 16)  # h = 1/4, 1/8, 1/16
#: relative size of the integrand on the truncation box boundary
_LOGP_TAIL = mpmath.mpf("1e-24")
#: ELBO trapezoid: half-width of the box in ξ and steps h = 1/4, 1/8
_ELBO_T = 11
_ELBO_STEPS = (4, 8)
#: rounding of the returned float64 value (2⁻⁵³ relative), included in every reported error
_F64_ROUND = 2.0**-53


def _mpf_list(v) -> list:
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [mpmath.mpf(float(a)) if not isinstance(a, mpmath.mpf) else a for a in v]


def _as_matrix(scale, d: int) -> list[list]:
    """scale: a d×d matrix (list of rows) or d numbers (a diagonal)."""
    if hasattr(scale, "tolist"):
        scale = scale.tolist()
    if d == 1 and not isinstance(scale, (list, tuple)):
        scale = [scale]
    if all(not isinstance(r, (list, tuple)) for r in scale):
        if len(scale) != d:
            raise ValueError(f"scale: expected {d} numbers or a {d}x{d} matrix")
        return [[mpmath.mpf(float(scale[i])) if i == j else mpmath.mpf(0) for j in range(d)] for i in range(d)]
    if len(scale) != d or any(len(r) != d for r in scale):
        raise ValueError(f"scale: expected a {d}x{d} matrix")
    return [[mpmath.mpf(float(a)) for a in r] for r in scale]


def _det(M: list[list]):
    d = len(M)
    if d == 1:
        return M[0][0]
    if d == 2:
        return M[0][0] * M[1][1] - M[0][1] * M[1][0]
    return mpmath.det(mpmath.matrix(M))


def _phi_factory(f_mp: FMp, ell_mp: EllMp, x: list, G):
    """φ(z) = −γ²/2 ‖x − f(z)‖² + ℓ(z) in mpmath."""

    def phi(z):
        fz = f_mp(z)
        r2 = mpmath.fsum((xi - fi) ** 2 for xi, fi in zip(x, fz))
        return -G / 2 * r2 + ell_mp(z)

    return phi


# ----------------------------------------------------------------------------------------
# log p_γ(x)
# ----------------------------------------------------------------------------------------


def log_marginal_mp(f_mp: FMp, ell_mp: EllMp, x, gamma2, center, scale, dps: int = 30) -> Estimate:
    """Reduced log p_γ(x) = d/2 · log(γ²/2π) + log ∫ exp φ(z) dz, with
    z = center + L sinh(v) (L = ``scale``: the Laplace scale :meth:`PosteriorModes.scale`, or
    any d×d matrix / d-vector of that size) and the nested trapezoidal rule in v (module
    doc).  Returns an :class:`Estimate` (method ``mpmath_sinh_trapezoid``); the posterior is assumed unimodal (the box is
    centred at ``center``)."""
    with mpmath.workdps(dps):
        c = _mpf_list(center)
        d = len(c)
        if d > 2:
            raise ValueError("log_marginal_mp supports d <= 2")
        X = _mpf_list(x)
        G = mpmath.mpf(float(gamma2)) if not isinstance(gamma2, mpmath.mpf) else gamma2
        L = _as_matrix(scale, d)
        phi = _phi_factory(f_mp, ell_mp, X, G)
        phi0 = phi(c)
        hfine = mpmath.mpf(1) / _LOGP_STEPS[-1]
        cache: dict[tuple[int, ...], object] = {}
        shs: dict[int, tuple] = {}

        def node(i: int):
            if i not in shs:
                v = i * hfine
                shs[i] = (mpmath.sinh(v), mpmath.cosh(v))
            return shs[i]

        def g(idx: tuple[int, ...]):
            """Integrand in v at the fine-grid index ``idx`` (exp(φ − φ0) · Π cosh v_k)."""
            val = cache.get(idx)
            if val is None:
                u, jac = [], mpmath.mpf(1)
                for i in idx:
                    s_, c_ = node(i)
                    u.append(s_)
                    jac *= c_
                z = [c[k] + mpmath.fsum(L[k][j] * u[j] for j in range(d)) for k in range(d)]
                e = phi(z) - phi0
                val = mpmath.exp(e) * jac if e > -10_000 else mpmath.mpf(0)
                cache[idx] = val
            return val

        # truncation box: grow each half-axis (in coarse steps) until the integrand along the
        # axis is below _LOGP_TAIL of its peak for two consecutive coarse nodes
        coarse = _LOGP_STEPS[-1] // _LOGP_STEPS[0]  # fine indices per coarse step
        peak = g((0,) * d)
        K = []
        for k in range(d):
            lim = []
            for sign in (1, -1):
                m, small = 0, 0
                while small < 2:
                    m += 1
                    idx = [0] * d
                    idx[k] = sign * m * coarse
                    if abs(g(tuple(idx))) < _LOGP_TAIL * peak:
                        small += 1
                    else:
                        small = 0
                    if m * coarse * hfine > 12:  # |u| = sinh(12) ≈ 8e4 posterior scales
                        break
                lim.append(m * coarse)
            K.append(lim)  # [positive limit, negative limit] in fine indices
        sums = []
        for steps in _LOGP_STEPS:
            stride = _LOGP_STEPS[-1] // steps
            ranges = [range(-K[k][1], K[k][0] + 1, stride) for k in range(d)]
            tot = mpmath.fsum(g(idx) for idx in itertools.product(*ranges))
            sums.append(tot * (mpmath.mpf(1) / steps) ** d)
        # boundary mass: the trapezoid contribution of the box faces at the finest step
        stride = 1
        bsum = mpmath.mpf(0)
        for k in range(d):
            for lim in (K[k][0], -K[k][1]):
                ranges = [range(-K[j][1], K[j][0] + 1, stride) if j != k else [lim] for j in range(d)]
                bsum += mpmath.fsum(abs(g(idx)) for idx in itertools.product(*ranges))
        bmass = bsum * hfine**d
        I = sums[-1]
        if not I > 0:
            raise FloatingPointError("log_marginal_mp: the integral is not positive")
        d1 = abs(sums[1] - sums[0]) / I
        d2 = abs(sums[2] - sums[1]) / I
        extrap = d2 * d2 / d1 if d1 > 0 else mpmath.mpf(0)
        rel_err = max(extrap, d2 * mpmath.mpf("1e-3")) + bmass / I + mpmath.mpf(10) ** (-dps + 5)
        value = mpmath.mpf(d) / 2 * mpmath.log(G / (2 * mpmath.pi)) + mpmath.log(abs(_det(L))) + phi0 + mpmath.log(I)
        return Estimate(float(value), float(rel_err) + _F64_ROUND * abs(float(value)), "mpmath_sinh_trapezoid", "refinement",
                        {"dps": dps, "reduced": True})


# ----------------------------------------------------------------------------------------
# ELBO(x; μ, s) and ELBO*(x)
# ----------------------------------------------------------------------------------------


def _gauss_nodes(steps: int):
    """Trapezoid nodes/weights for E_{ξ~N(0,1)} on |ξ| ≤ _ELBO_T with step 1/steps."""
    h = mpmath.mpf(1) / steps
    K = _ELBO_T * steps
    norm = h / mpmath.sqrt(2 * mpmath.pi)
    return [(i * h, norm * mpmath.exp(-((i * h) ** 2) / 2)) for i in range(-K, K + 1)]


def _elbo_pass(f_mp, ell_mp, X, G, mu, s, steps: int, derivs: bool, coarse_steps: int | None = None):
    """One trapezoid pass over the tensor grid of step 1/steps.

    Returns (E, grad, Hess, E_coarse): E = E_ξ[h(μ + √s ξ)]; if ``derivs``, the gradient and
    Hessian of E in (μ, τ = log s) by Stein's identity (module doc) — otherwise None;
    E_coarse is the same expectation on the nested grid of step 1/coarse_steps (or None).

    The grid values h_ij are reduced to the moments M[a][b] = Σ w_i w_j ξ_i^a ξ_j^b h_ij
    (a, b ≤ 4); every derivative is a combination of them, because the derivatives of the
    Gaussian density are the density times a product of per-coordinate polynomials in ξ.
    """
    d = len(mu)
    phi = _phi_factory(f_mp, ell_mp, X, G)
    sig = [mpmath.sqrt(v) for v in s]
    nodes = _gauss_nodes(steps)
    deg = 5 if derivs else 1
    powers = [[t**a for a in range(deg)] for t, _ in nodes]
    ratio = steps // coarse_steps if coarse_steps else 0
    K = len(nodes) // 2
    coarse_acc = mpmath.mpf(0)
    if d == 1:
        M = [mpmath.mpf(0)] * deg
        for i, (t, w) in enumerate(nodes):
            hw = phi([mu[0] + sig[0] * t]) * w
            for a in range(deg):
                M[a] += hw * powers[i][a]
            if ratio and (i - K) % ratio == 0:
                coarse_acc += hw
    else:
        M = [[mpmath.mpf(0)] * deg for _ in range(deg)]
        for i, (t1, w1) in enumerate(nodes):
            z1 = mu[0] + sig[0] * t1
            row = [mpmath.mpf(0)] * deg
            crow = mpmath.mpf(0)
            for j, (t2, w2) in enumerate(nodes):
                hw = phi([z1, mu[1] + sig[1] * t2]) * w2
                for b in range(deg):
                    row[b] += hw * powers[j][b]
                if ratio and (j - K) % ratio == 0:
                    crow += hw
            for a in range(deg):
                wa = w1 * powers[i][a]
                for b in range(deg):
                    M[a][b] += wa * row[b]
            if ratio and (i - K) % ratio == 0:
                coarse_acc += w1 * crow
    E = M[0] if d == 1 else M[0][0]
    E_coarse = coarse_acc * ratio**d if ratio else None
    if not derivs:
        return E, None, None, E_coarse

    half = mpmath.mpf(1) / 2

    def first(i):  # ∂_i N / N as a polynomial in ξ_k, k = i % d
        k = i % d
        return [mpmath.mpf(0), 1 / sig[k]] if i < d else [-half, mpmath.mpf(0), half]

    def second(i, j):  # ∂_i ∂_j N / N for two parameters of the same coordinate k
        k = i % d
        if i < d and j < d:
            return [-1 / s[k], mpmath.mpf(0), 1 / s[k]]
        if i < d or j < d:
            return [mpmath.mpf(0), -3 / (2 * sig[k]), mpmath.mpf(0), 1 / (2 * sig[k])]
        return [mpmath.mpf(1) / 4, mpmath.mpf(0), mpmath.mpf(-1), mpmath.mpf(0), mpmath.mpf(1) / 4]

    def expect(polys):
        if d == 1:
            return mpmath.fsum(c * M[a] for a, c in enumerate(polys[0]))
        return mpmath.fsum(c1 * c2 * M[a][b] for a, c1 in enumerate(polys[0]) for b, c2 in enumerate(polys[1]))

    p = 2 * d
    one = [mpmath.mpf(1)]
    grad = []
    for i in range(p):
        polys = [one] * d
        polys[i % d] = first(i)
        grad.append(expect(polys))
    H = [[mpmath.mpf(0)] * p for _ in range(p)]
    for i in range(p):
        for j in range(i, p):
            polys = [one] * d
            if i % d != j % d:
                polys[i % d] = first(i)
                polys[j % d] = first(j)
            else:
                polys[i % d] = second(i, j)
            H[i][j] = H[j][i] = expect(polys)
    return E, grad, H, E_coarse


def _elbo_const(s, G, d):
    """d/2 + ½ Σ log(s_k γ²): the entropy part of the reduced ELBO."""
    return mpmath.mpf(d) / 2 + mpmath.fsum(mpmath.log(v * G) for v in s) / 2


def elbo_mp(f_mp: FMp, ell_mp: EllMp, x, gamma2, mu, s, n: int, d: int, dps: int = 30, reduced: bool = True) -> Estimate:
    """ELBO(x; μ, s) (reduced by default: without (n−d)/2 · log(γ²/2π)) as a Gaussian
    expectation by the trapezoidal rule in ξ (module doc).  Returns an :class:`Estimate`."""
    if d > 2:
        raise ValueError("elbo_mp supports d <= 2")
    with mpmath.workdps(dps):
        X = _mpf_list(x)
        G = mpmath.mpf(float(gamma2))
        m_ = _mpf_list(mu)
        s_ = _mpf_list(s)
        if len(m_) != d or len(s_) != d or any(v <= 0 for v in s_):
            raise ValueError("elbo_mp: need d means and d variances s > 0")
        E, _, _, Ec = _elbo_pass(f_mp, ell_mp, X, G, m_, s_, _ELBO_STEPS[-1], False, _ELBO_STEPS[0])
        const = _elbo_const(s_, G, d)
        if not reduced:
            const += mpmath.mpf(n - d) / 2 * mpmath.log(G / (2 * mpmath.pi))
        err = abs(E - Ec) + mpmath.mpf(10) ** (-dps + 5)
        value = float(E + const)
        return Estimate(value, float(err) + _F64_ROUND * abs(value), "mpmath_trapezoid", "refinement", {"dps": dps, "reduced": reduced})


def _solve(H, g):
    return list(mpmath.lu_solve(mpmath.matrix(H), mpmath.matrix(g)))


def elbo_star_mp(
    f_mp: FMp,
    ell_mp: EllMp,
    x,
    gamma2,
    mu0,
    s0,
    n: int,
    d: int,
    dps: int = 30,
    max_iter: int = 8,
    reduced: bool = True,
) -> Estimate:
    """ELBO*(x) = sup_{μ,s} ELBO, by Newton's method in (μ, τ = log s) started at the float64
    optimum (μ0, s0).  Iterations use the h = 1/4 rule; the final point is re-evaluated with
    h = 1/8 (value, gradient, Hessian).  error = quadrature error (|I_{1/4} − I_{1/8}|) +
    Newton decrement at the final point + 10^{−dps+5}.  Returns an :class:`Estimate` with
    ``argmax = {"mu": [...], "s": [...]}`` (floats) and ``diagnostics`` ``newton_decrement``
    (½ gᵀ(−H)⁻¹g at the final point), ``quad_error`` (|I_{1/4} − I_{1/8}|), ``iterations``."""
    if d > 2:
        raise ValueError("elbo_star_mp supports d <= 2")
    with mpmath.workdps(dps):
        X = _mpf_list(x)
        G = mpmath.mpf(float(gamma2))
        mu = _mpf_list(mu0)
        tau = [mpmath.log(v) for v in _mpf_list(s0)]
        p = 2 * d
        tol = mpmath.mpf(10) ** (-dps)

        def full(mu, tau, steps, coarse=None):
            s = [mpmath.exp(t) for t in tau]
            E, g, H, Ec = _elbo_pass(f_mp, ell_mp, X, G, mu, s, steps, True, coarse)
            const = _elbo_const(s, G, d)
            for k in range(d):
                g[d + k] += mpmath.mpf(1) / 2
            return E + const, g, H, (None if Ec is None else Ec + const)

        def newton(g, H):
            negH = [[-H[i][j] for j in range(p)] for i in range(p)]
            step = _solve(negH, g)
            return step, mpmath.fsum(gi * si for gi, si in zip(g, step)) / 2

        it = 0
        val, g, H, _ = full(mu, tau, _ELBO_STEPS[0])
        for it in range(1, max_iter + 1):
            step, dec = newton(g, H)
            if not dec >= 0:
                raise FloatingPointError("elbo_star_mp: the Hessian is not negative definite; start from a float64 optimum")
            if dec < tol:
                break
            # damped Newton: halve the step until the value does not decrease
            alpha = mpmath.mpf(1)
            for _ in range(40):
                mu_n = [mu[k] + alpha * step[k] for k in range(d)]
                tau_n = [tau[k] + alpha * step[d + k] for k in range(d)]
                v_n, g_n, H_n, _ = full(mu_n, tau_n, _ELBO_STEPS[0])
                if v_n >= val - tol:
                    break
                alpha /= 2
            mu, tau, val, g, H = mu_n, tau_n, v_n, g_n, H_n
        val, g, H, coarse = full(mu, tau, _ELBO_STEPS[-1], _ELBO_STEPS[0])
        _, dec = newton(g, H)
        quad = abs(val - coarse)
        err = quad + abs(dec) + mpmath.mpf(10) ** (-dps + 5)
        if not reduced:
            val += mpmath.mpf(n - d) / 2 * mpmath.log(G / (2 * mpmath.pi))
        s = [mpmath.exp(t) for t in tau]
        return Estimate(float(val), float(err) + _F64_ROUND * abs(float(val)), "mpmath_trapezoid_newton", "refinement",
                        {"newton_decrement": float(dec), "quad_error": float(quad), "iterations": it, "dps": dps, "reduced": reduced},
                        {"mu": [float(v) for v in mu], "s": [float(v) for v in s]})
