"""Certified enclosures in ball arithmetic (python-flint / Arb) for d ≤ 2 latents.

Everything here returns *proven* enclosures: an Arb ball is a midpoint and a radius such
that the exact real number lies inside, and every operation (including the rigorous
numerical integration ``acb.integral``, Gauss–Legendre with error bounds from analyticity
on Bernstein ellipses) propagates that guarantee.  Where a proof does not go through, the
functions raise :class:`NotCertified` with the reason; they never return an unproven ball.

Quantities (THEORY notation; ε = γ⁻², x = f(z0)):

* the *reduced* log-likelihood (the divergent (n−d)/2 · log(γ²/2π) separated, as the fast
  path does)

      log_px_red = d/2 · log(γ²/2π) + log ∫ exp φ(z) dz,   φ(z) = −γ²/2 ‖x − f(z)‖² + ℓ(z);

  :func:`certify_log_px`: rigorous nested integration over parallelograms ("cores") aligned
  with the posterior modes, plus a rigorous bound on the mass outside them (a quadtree of
  boxes, each bounded by prior mass × sup of the likelihood factor, and the prior tails
  beyond a large box; see docs/certified.md);
* Gaussian expectations E_{ξ~N(0,I)}[h(μ + √s ⊙ ξ)] (:func:`gaussian_expectation`):
  rigorous integration over ‖ξ‖∞ ≤ T plus a tail bound from a polynomial growth bound
  |h(z)| ≤ P(‖z‖∞);
* the reduced mean-field ELBO  ELBO_red(μ, s) = d/2 + ½ Σ_k log(γ² s_k) + E_q[φ]
  (:func:`certify_elbo`), a certified lower bound on ELBO*;
* ELBO* two-sided (:func:`certify_elbo_star`): Krawczyk's test on the stationarity
  equations of the ELBO with gradient and Hessian written as Gaussian expectations
  (Bonnet/Price), and negative definiteness of the Hessian enclosure over the box;
* c_IMA from an enclosure of J(z0) (:func:`c_ima_ball`).

Nothing here knows sympy: the integrands arrive as callables that accept lists of ``arb``
(real intervals) or ``acb`` (complex balls), built by proofs_check.certification from the spec.
Complex evaluation must be *analytic-checked*: every function with a branch cut or a kink
returns a non-finite ball when its argument ball touches the cut (:data:`ARB_FUNCTIONS`), so
that a finite enclosure of an integrand on a complex ball proves it holomorphic there, as
``acb.integral`` requires.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from flint import acb, arb, ctx, fmpq, fmpz

Num = Any  # arb or acb
ScalarFn = Callable[[Sequence[Num]], Num]


class NotCertified(Exception):
    """A proof did not go through; ``str(exc)`` is the reason (never a silent wide ball)."""


# ----------------------------------------------------------------------------------------
# Precision and exact conversions
# ----------------------------------------------------------------------------------------


@contextmanager
def working_precision(bits: int) -> Iterator[None]:
    """Set Arb's working precision (bits) for the block; restores the previous one."""
    old = ctx.prec
    ctx.prec = int(bits)
    try:
        yield
    finally:
        ctx.prec = old


def exact_float(v: float) -> arb:
    """The exact binary value of a float as a (radius-zero) arb."""
    if not math.isfinite(v):
        raise NotCertified(f"non-finite input {v!r}")
    fr = Fraction(v)
    a = arb(fmpz(fr.numerator))
    if fr.denominator != 1:  # a power of two: exact
        a = a / arb(fmpz(fr.denominator))
    return a


def exact_rational(p: int, q: int = 1) -> arb:
    """p/q as an arb ball (exact when q is a power of two, else a tight enclosure)."""
    return arb(fmpq(int(p), int(q)))


def is_finite(a: Num) -> bool:
    if isinstance(a, acb):
        return bool(a.real.is_finite() and a.imag.is_finite())
    return bool(a.is_finite())


def upper(a: arb) -> arb:
    """An exact arb ≥ every point of ``a``."""
    return arb(a.upper())


def lower(a: arb) -> arb:
    """An exact arb ≤ every point of ``a``."""
    return arb(a.lower())


def hull(lo: arb, hi: arb) -> arb:
    """A ball containing the interval [lo, hi]."""
    return arb(lo).union(arb(hi))


def rel_radius(a: arb) -> float:
    """rad / (1 + |mid|) as a float (for reporting and for precision decisions)."""
    if not a.is_finite():
        return math.inf
    return float(a.rad()) / (1.0 + abs(float(a.mid())))


# ----------------------------------------------------------------------------------------
# Elementary functions, rigorous on arb and on acb (branch cuts and kinks guarded)
# ----------------------------------------------------------------------------------------

_NAN_ACB = None


def _nan_like(a: Num) -> Num:
    return acb(arb.nan(), arb.nan()) if isinstance(a, acb) else arb.nan()


def _touches_imag_cuts(a: acb) -> bool:
    """Whether the ball may touch {i y : |y| ≥ 1} (the branch cuts of atan and asinh)."""
    re, im = a.real, a.imag
    return bool(re.abs_lower() <= 0 and im.abs_upper() >= 1)


def _touches_neg_real(a: acb, at: int = 0) -> bool:
    """Whether the ball may touch (−∞, at] (the branch cut of log(z − at)-type functions)."""
    return bool(a.imag.abs_lower() <= 0 and a.real.lower() <= at)


def _f_log(a: Num) -> Num:
    return a.log(analytic=True) if isinstance(a, acb) else a.log()


def _f_sqrt(a: Num) -> Num:
    return a.sqrt(analytic=True) if isinstance(a, acb) else a.sqrt()


def _f_atan(a: Num) -> Num:
    if isinstance(a, acb) and _touches_imag_cuts(a):
        return _nan_like(a)
    return a.atan()


def _f_asinh(a: Num) -> Num:
    if isinstance(a, acb) and _touches_imag_cuts(a):
        return _nan_like(a)
    return a.asinh()


def _f_lgamma(a: Num) -> Num:
    if isinstance(a, acb) and _touches_neg_real(a, 0):
        return _nan_like(a)
    return a.lgamma()


def _f_log1p(a: Num) -> Num:
    if isinstance(a, acb) and _touches_neg_real(a, -1):
        return _nan_like(a)
    return a.log1p()


def _f_abs(a: Num) -> Num:
    # |t| for real t, extended analytically only away from Re t = 0 (a kink is not analytic)
    return a.real_abs(analytic=True) if isinstance(a, acb) else abs(a)


#: Rigorous elementary functions by their python-flint arb name (the names that the single
#: table of allowed spec functions gives as ``python_flint_arb``).  Entire and meromorphic
#: functions need no guard (poles give non-finite balls by themselves).
ARB_FUNCTIONS: dict[str, Callable[[Num], Num]] = {
    "exp": lambda a: a.exp(),
    "log": _f_log,
    "sqrt": _f_sqrt,
    "sin": lambda a: a.sin(),
    "cos": lambda a: a.cos(),
    "tan": lambda a: a.tan(),
    "tanh": lambda a: a.tanh(),
    "sinh": lambda a: a.sinh(),
    "cosh": lambda a: a.cosh(),
    "atan": _f_atan,
    "asinh": _f_asinh,
    "erf": lambda a: a.erf(),
    "lgamma": _f_lgamma,
    "log1p": _f_log1p,
    "abs": _f_abs,
}


def arb_function(name: str) -> Callable[[Num], Num]:
    """The rigorous arb/acb implementation of the elementary function called ``name``."""
    try:
        return ARB_FUNCTIONS[name]
    except KeyError:
        raise NotCertified(f"no rigorous ball implementation for function {name!r}") from None


def square(a: Num) -> Num:
    """a² with the tight real enclosure [|a|_min², |a|_max²] for arb (a·a would include
    negative numbers when the ball contains 0)."""
    if isinstance(a, acb):
        return a * a
    lo = arb(a.abs_lower())
    hi = arb(a.abs_upper())
    sq = hull(lo * lo, hi * hi)
    # the hull's midpoint-radius form may reach slightly below 0: clip at 0 (a square is >= 0)
    return sq.nonnegative_part() if sq.lower() < 0 else sq


def int_power(a: Num, k: int) -> Num:
    """a^k for an integer k by repeated squaring (python-flint's ``**`` on a ball that
    contains 0 returns nan)."""
    if k < 0:
        return 1 / int_power(a, -k)
    if k == 0:
        return acb(1) if isinstance(a, acb) else arb(1)
    if k == 1:
        return a
    half = int_power(a, k // 2)
    sq = square(half)
    return sq * a if k % 2 else sq


def real_power(a: Num, q: arb) -> Num:
    """a^q for a non-integer real exponent q: principal branch, guarded (branch cut on the
    negative reals; a real base must be positive)."""
    if isinstance(a, acb):
        return a.pow(acb(q), analytic=True)
    if not (a > 0):
        return arb.nan()
    return (q * a.log()).exp()


# ----------------------------------------------------------------------------------------
# Priors: log-densities come from the spec; tail masses by kind
# ----------------------------------------------------------------------------------------


@dataclass
class CertPrior1D:
    """One prior factor p_k for the certificates.

    ``logpdf`` is ℓ_k (from the spec, via the translator) on arb/acb.  ``kind`` and
    ``params`` (exact rationals as (p, q) pairs) give the one-sided tail bound
    P(t − loc ≥ u) ≤ tail(u) for u ≥ 0 (all built-in priors are symmetric about ``loc``):

    * gaussian(m, v): ½ erfc(u / √(2v))                       (exact);
    * logistic(loc, s): 1 / (1 + e^{u/s})                       (exact);
    * student_t(ν): c_ν ν^{(ν−1)/2} u^{−ν}, c_ν = Γ((ν+1)/2) / (Γ(ν/2) √(νπ)), from
      (1 + t²/ν)^{−(ν+1)/2} ≤ (t²/ν)^{−(ν+1)/2}                  (a bound).
    """

    kind: str
    params: tuple[tuple[int, int], ...]
    logpdf: ScalarFn

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "logistic", "student_t"):
            raise NotCertified(
                f"prior {self.kind!r}: no rigorous tail bound (certificates support gaussian, logistic and "
                "student_t priors; a custom log-density would need a proven tail bound and normalizer)"
            )

    def _p(self, i: int) -> arb:
        p, q = self.params[i]
        return exact_rational(p, q)

    @property
    def loc(self) -> arb:
        return arb(0) if self.kind == "student_t" else self._p(0)

    def tail(self, u: arb) -> arb:
        """Upper bound (an arb ball whose upper end bounds it) of P(t − loc ≥ u), u ≥ 0."""
        u = arb(u)
        if not (u >= 0):
            return arb(1)
        if self.kind == "gaussian":
            v = self._p(1)
            return (u / (2 * v).sqrt()).erfc() / 2
        if self.kind == "logistic":
            s = self._p(1)
            return 1 / (1 + (u / s).exp())
        nu = self._p(0)
        if not (u > 0):
            return arb(1) / 2
        c = ((nu + 1) / 2).lgamma() - (nu / 2).lgamma() - (nu * arb.pi()).log() / 2
        b = c.exp() * ((nu - 1) / 2 * nu.log()).exp() * (-nu * u.log()).exp()
        return min(arb(1) / 2, b)

    def two_sided_tail(self, T: arb) -> arb:
        """Upper bound of P(|t − loc| > T)."""
        return 2 * self.tail(T)

    def mass_upper(self, lo: arb, hi: arb) -> arb:
        """An exact upper bound of P(lo ≤ t ≤ hi): the smaller of width × sup density on the
        interval (interval evaluation of ℓ_k) and the one-sided tail when the interval lies
        on one side of loc."""
        best = arb(1)
        dens = self.logpdf(hull(lo, hi))
        if dens.is_finite():
            best = _min_upper(best, (hi - lo) * dens.exp())
        c = self.loc
        if lo >= c:
            best = _min_upper(best, self.tail(lo - c))
        elif hi <= c:
            best = _min_upper(best, self.tail(c - hi))
        return upper(best)


def _min_upper(a: arb, b: arb) -> arb:
    """The ball with the smaller upper end (both are upper bounds)."""
    if not b.is_finite():
        return a
    if not a.is_finite():
        return b
    return a if a.upper() <= b.upper() else b


# ----------------------------------------------------------------------------------------
# Rigorous integration over boxes (d = 1, 2)
# ----------------------------------------------------------------------------------------

#: Evaluation limit of the *crude* inner integrals that only bound the inner integral on a
#: wide complex ball (the outer integrator's error bound); their result is rigorous, merely
#: wide.
CRUDE_EVAL_LIMIT = 200


def integrate_box(
    integrand: Callable[..., Any],
    lo: Sequence[arb],
    hi: Sequence[arb],
    abs_tol: arb,
    rel_bits: int,
    max_evals: int | None = None,
) -> acb:
    """∫ over the box Π[lo_k, hi_k] (d = 1 or 2), rigorous (nested ``acb.integral``).

    d = 1: ``integrand(t) -> acb``.  d = 2: ``integrand(u1) -> (u2 -> acb)`` (a factory, so
    that work depending only on the outer variable is done once per outer node).

    Correctness: the integrand must return a non-finite ball wherever it is not holomorphic
    (guarded functions, :data:`ARB_FUNCTIONS`), so that a finite inner integral on a complex
    ball u1 proves the inner integral holomorphic there.  When the outer integrator asks for
    such a bound (``analytic`` flag), the inner integral is computed crudely with at most
    :data:`CRUDE_EVAL_LIMIT` evaluations: a correct but wider enclosure, all the bound needs.
    ``max_evals`` caps the total number of integrand evaluations: past it the integrand
    returns a non-finite ball, so the result is non-finite (a failure, never a wrong ball).
    """
    rt = arb(2) ** (-rel_bits)
    count = [0]
    nan = acb(arb.nan(), arb.nan())
    limit = max_evals if max_evals is not None else -1

    def over() -> bool:
        count[0] += 1
        return 0 <= limit < count[0]

    if len(lo) == 1:
        return acb.integral(lambda t, _an: nan if over() else integrand(t), lo[0], hi[0], rel_tol=rt, abs_tol=abs_tol)
    if len(lo) != 2:
        raise NotCertified(f"certified integration supports d <= 2, got d = {len(lo)}")
    at_in = abs_tol / (4 * (hi[0] - lo[0]))
    crude = arb(2) ** -6
    inner_limit = None if limit < 0 else max(1000, limit // 20)
    node_rad = arb(2) ** (-(ctx.prec // 2))

    def outer(u1: acb, analytic: bool) -> acb:
        if 0 <= limit < count[0]:
            return nan
        g = integrand(u1)

        def gi(u2: acb, _an: bool) -> acb:
            return nan if over() else g(u2)

        # a wide u1 ball (the outer integrator bounding a whole subinterval or an ellipse)
        # needs only a bound: a crude inner integral; quadrature nodes are near-points
        if analytic or u1.real.rad() + u1.imag.rad() > node_rad:
            return acb.integral(gi, lo[1], hi[1], rel_tol=crude, abs_tol=at_in, eval_limit=CRUDE_EVAL_LIMIT)
        return acb.integral(gi, lo[1], hi[1], rel_tol=rt, abs_tol=at_in, eval_limit=inner_limit)

    return acb.integral(outer, lo[0], hi[0], rel_tol=rt, abs_tol=abs_tol,
                        eval_limit=None if limit < 0 else max(500, limit // 100))


# ----------------------------------------------------------------------------------------
# The problem: decoder, prior, x, γ²
# ----------------------------------------------------------------------------------------


@dataclass
class CertProblem:
    """One certificate problem at one working precision (closures hold constants computed
    at that precision): decoder f (``decoder(z) -> [f_1..f_n]`` on arb/acb lists), prior
    factors, the observation x = f(z0) as balls, and γ² (exact)."""

    d: int
    n: int
    decoder: Callable[[Sequence[Num]], list[Num]]
    priors: Sequence[CertPrior1D]
    x: Sequence[arb]
    gamma2: arb
    prec: int
    phi_fn: ScalarFn | None = None  # an equivalent compiled φ (faster); None: built from the parts

    def phi(self, z: Sequence[Num]) -> Num:
        """φ(z) = −γ²/2 ‖x − f(z)‖² + ℓ(z)."""
        if self.phi_fn is not None:
            return self.phi_fn(z)
        fz = self.decoder(z)
        s = None
        for xi, fi in zip(self.x, fz):
            r = xi - fi
            s = square(r) if s is None else s + square(r)
        out = -self.gamma2 / 2 * s
        for p, zk in zip(self.priors, z):
            out = out + p.logpdf(zk)
        return out

    def likelihood_exponent_upper(self, zbox: Sequence[arb]) -> arb:
        """An upper bound of −γ²/2 ‖x − f(z)‖² over a real box (≤ 0 always)."""
        fz = self.decoder(zbox)
        s = arb(0)
        for xi, fi in zip(self.x, fz):
            r = xi - fi
            if not r.is_finite():
                return arb(0)  # f unbounded on the box (a pole): use only ‖·‖² ≥ 0
            m = arb(r.abs_lower())
            s = s + m * m
        return upper(-self.gamma2 / 2 * lower(s))

    def log_prior_box(self, zbox: Sequence[arb]) -> arb:
        out = arb(0)
        for p, zk in zip(self.priors, zbox):
            out = out + p.logpdf(zk)
        return out


# ----------------------------------------------------------------------------------------
# log p_γ(x): an adaptive quadtree in posterior-aligned coordinates
# ----------------------------------------------------------------------------------------


@dataclass
class Chart:
    """Posterior-aligned coordinates z = ẑ + L u (exact ẑ, L from the fast path's Laplace
    approximation of the main mode; ``Linv`` encloses L⁻¹)."""

    center: list[arb]
    L: list[list[arb]]

    def __post_init__(self) -> None:
        d = len(self.center)
        if d == 1:
            det = self.L[0][0]
            self.Linv = [[1 / det]]
        else:
            det = self.L[0][0] * self.L[1][1] - self.L[0][1] * self.L[1][0]
            self.Linv = [[self.L[1][1] / det, -self.L[0][1] / det], [-self.L[1][0] / det, self.L[0][0] / det]]
        if not (abs(det) > 0):
            raise NotCertified("the posterior-aligned chart has a singular scale matrix")
        self.absdet = abs(det)
        self.cen_c = [acb(c) for c in self.center]
        self.L_c = [[acb(v) for v in row] for row in self.L]

    def z_of(self, u: Sequence[Num]) -> list[Num]:
        d = len(self.center)
        cen, L = (self.cen_c, self.L_c) if isinstance(u[0], acb) else (self.center, self.L)
        return [cen[i] + sum((L[i][k] * u[k] for k in range(1, d)), L[i][0] * u[0]) for i in range(d)]

    def to_u(self, z: Sequence[arb]) -> list[arb]:
        d = len(self.center)
        w = [z[k] - self.center[k] for k in range(d)]
        return [sum((self.Linv[i][k] * w[k] for k in range(d)), arb(0)) for i in range(d)]


@dataclass
class LogPxCertificate:
    """log_px_red as a proven ball, with what went into it."""

    value: arb  # reduced log p_γ(x)
    prec: int
    integrated_cells: int
    bounded_cells: int
    outside_bound: arb  # proven upper bound of the (normalized) mass not integrated
    far_T: list[float]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _cell_ball(lo: Sequence[arb], hi: Sequence[arb]) -> list[arb]:
    return [hull(a, b) for a, b in zip(lo, hi)]


def certify_log_px(
    prob: CertProblem,
    mode: Sequence[float],
    scale: Sequence[Sequence[float]],
    R: float = 11.0,
    bits: int = 60,
    max_cells: int = 40_000,
    max_integrations: int = 2000,
    max_cell_evals: int = 80_000,
    grad_fn: Callable[[Sequence[Num]], list[Num]] | None = None,
) -> LogPxCertificate:
    """Certified log_px_red (module doc) at the problem's precision.

    ``mode`` and ``scale`` (z = ẑ + L u maps N(0, I) to the main mode's Laplace Gaussian)
    are hints from the fast path: they choose the coordinates, never the result.  A missed
    mode or a poor scale only costs time (or makes the certificate fail), never a wrong ball.

    All of R^d is covered, in u-coordinates:

    1. far field: a z-box B = Π[loc_k − T_k, loc_k + T_k] with prior mass outside it below
       the budget (the prior tails of :class:`CertPrior1D`; outside B, e^φ ≤ p0(z) because
       e^{−γ²‖x−f‖²/2} ≤ 1), and the u-box K = [−U, U]^d (U = R·2^k) whose image contains B;
    2. a quadtree over K: each cell Q is either integrated (nested ``acb.integral`` of
       e^{φ(ẑ+Lu)−φref}; cells with real mass and side ≤ R) or bounded by the smaller of
       (a) |det L|⁻¹ P0(H) sup_H e^{−γ²‖x−f‖²/2} e^{−φref} (H the z-hull of the cell, P0(H)
       a product of one-dimensional prior masses) and (b) area · exp(φ(c) − φref +
       Σ_k |∂_{u_k}φ(Q)| w_k/2) (mean-value form, when ``grad_fn`` gives ∇_zφ); the cell with
       the largest bound is split until the bounds sum to ≤ 2^-bits × the integral.

    ∫ e^φ dz = |det L| e^{φref} (Σ integrated cells + [0, Σ bounds + far-field bound]).
    """
    t0 = time.perf_counter()
    d = prob.d
    if d not in (1, 2):
        raise NotCertified(f"log p certificates need d <= 2 (d = {d})")
    chart = Chart([exact_float(float(v)) for v in mode], [[exact_float(float(v)) for v in row] for row in scale])
    phi_ref = arb(prob.phi(chart.center).mid())
    if not phi_ref.is_finite():
        raise NotCertified("φ is not finite at the posterior mode hint")
    phi_ref_c = acb(phi_ref)
    # steering scale of the normalized integral ∫ e^{φ−φref} du (≈ (2π)^{d/2} for a Gaussian);
    # it only chooses the effort, the final ball is computed from proven values
    budget = arb(2) ** -bits * (2 * math.pi) ** (d / 2)
    far_budget = budget / 8
    inv_absdet = 1 / chart.absdet
    # (1) far field
    T: list[arb] = []
    Bz_lo, Bz_hi = [], []
    for kdim, p in enumerate(prob.priors):
        t = arb(8)
        for _ in range(200):
            if (p.two_sided_tail(t) * inv_absdet * (-phi_ref).exp()).upper() <= (far_budget / d).lower():
                break
            t = t * 2
        else:
            raise NotCertified(f"prior factor {kdim + 1}: tail too heavy to truncate")
        T.append(t)
        Bz_lo.append(p.loc - t)
        Bz_hi.append(p.loc + t)
    far = upper(sum((p.two_sided_tail(t) for p, t in zip(prob.priors, T)), arb(0)) * inv_absdet * (-phi_ref).exp())
    umax = 0.0
    for mask in range(2**d):
        corner = [Bz_hi[k] if (mask >> k) & 1 else Bz_lo[k] for k in range(d)]
        umax = max(umax, max(float(abs(u).upper()) for u in chart.to_u(corner)))
    U = R
    while U < umax * (1 + 1e-9) + 1:  # margin for the float conversion of umax
        U *= 2

    def z_hull(lo, hi) -> list[arb]:
        return chart.z_of(_cell_ball(lo, hi))

    def bound_cell(lo: list[arb], hi: list[arb]) -> arb:
        H = z_hull(lo, hi)
        mass = arb(1)
        for p, h in zip(prob.priors, H):
            mass = mass * p.mass_upper(arb(h.lower()), arb(h.upper()))
        like = prob.likelihood_exponent_upper(H)
        best = upper(mass * inv_absdet * (like - phi_ref).exp())
        if grad_fn is not None:
            area = arb(1)
            for a, b in zip(lo, hi):
                area = area * (b - a)
            c = [arb(((a + b) / 2).mid()) for a, b in zip(lo, hi)]
            pc = prob.phi(chart.z_of(c))
            gz = grad_fn(H)
            if pc.is_finite() and all(g.is_finite() for g in gz):
                slope = arb(0)
                for k in range(d):
                    gu = sum((chart.L[i][k] * gz[i] for i in range(d)), arb(0))
                    slope = slope + arb(gu.abs_upper()) * (hi[k] - lo[k]) / 2
                best = _min_upper(best, upper(area * (pc - phi_ref + slope).exp()))
        return best

    def mass_estimate(lo: list[arb], hi: list[arb]) -> float:
        """Float estimate of ∫_Q e^{φ−φref} du (3^d midpoint grid): decides integrate versus
        split; never enters the result."""
        axes = []
        for k in range(d):
            a, b = float(lo[k].mid()), float(hi[k].mid())
            axes.append([a + (b - a) * (i + 0.5) / 3 for i in range(3)])
        area = 1.0
        for k in range(d):
            area *= float(hi[k].mid()) - float(lo[k].mid())
        grid = [[p] for p in axes[0]] if d == 1 else [[p, q] for p in axes[0] for q in axes[1]]
        acc = 0.0
        for g in grid:
            v = prob.phi(chart.z_of([exact_float(c) for c in g])) - phi_ref
            fv = float(v.mid()) if v.is_finite() else -math.inf
            acc += math.exp(min(fv, 700.0))
        return acc * area / len(grid)

    def analytic_near(lo: list[arb], hi: list[arb]) -> bool:
        """Cheap pre-test: φ finite on complex balls covering the cell (4^d pieces) with an
        imaginary margin of 1/6 of its width, at most 2 (a pole of f nearby makes the
        integration costly: split first)."""
        pieces = []
        for a, b in zip(lo, hi):
            w = (b - a) / 4
            m = min(2.0, float((w * 2 / 3).upper()))
            pieces.append([acb(hull(a + w * i, a + w * (i + 1)), arb(0, m)) for i in range(4)])
        grid = [[p] for p in pieces[0]] if d == 1 else [[p, q] for p in pieces[0] for q in pieces[1]]
        return all(is_finite(prob.phi(chart.z_of(g))) for g in grid)

    def integrand():
        if d == 1:
            return lambda t: (prob.phi(chart.z_of([t])) - phi_ref_c).exp()

        def fac(u1: acb):
            a = [chart.cen_c[i] + chart.L_c[i][0] * u1 for i in range(d)]
            c = [chart.L_c[i][1] for i in range(d)]
            return lambda u2: (prob.phi([a[i] + c[i] * u2 for i in range(d)]) - phi_ref_c).exp()

        return fac

    g_int = integrand()
    heap: list[tuple[float, int, list[arb], list[arb], arb]] = []
    counter = 0
    integrated: list[arb] = []
    n_cells = 0
    n_int = 0
    failed_int = 0
    cell_tol = budget / 16
    budget_f = float(budget.mid())

    def push(lo: list[arb], hi: list[arb]) -> None:
        nonlocal counter, n_cells
        n_cells += 1
        b = bound_cell(lo, hi)
        fb = float(b.mid()) if b.is_finite() else math.inf
        counter += 1
        heapq.heappush(heap, (-fb, counter, lo, hi, b))

    push([exact_float(-U)] * d, [exact_float(U)] * d)
    bounded_total = math.inf
    quad_budget_f = budget_f - float(far.mid())
    while heap:
        bounded_total = -sum(h[0] for h in heap)
        if bounded_total <= quad_budget_f:
            break
        if n_cells > max_cells:
            top = heap[0]
            zc = [float(v.mid()) for v in z_hull(top[2], top[3])]
            raise NotCertified(f"the mass outside the integrated cells was not bounded below its budget within {max_cells} "
                               f"cells (largest remaining bound {float(top[4].mid()):.3g} near z = {zc}; "
                               f"u-cell {[float(v.mid()) for v in top[2]]}..{[float(v.mid()) for v in top[3]]}, "
                               f"estimate {mass_estimate(top[2], top[3]):.3g}, analytic {analytic_near(top[2], top[3])})")
        negb, _, lo, hi, _b = heapq.heappop(heap)
        # cells within 2R of the mode (u = 0) are integrated at side <= R, farther ones up to 4R
        dist = max(max(0.0, float(l.mid()), -float(h.mid())) for l, h in zip(lo, hi))
        side = R if dist <= 2 * R else 4 * R
        small = all(float((h - l).mid()) <= side for l, h in zip(lo, hi))
        est = mass_estimate(lo, hi) if small else 0.0
        # integrate a cell that carries mass, or whose bound is already close to its mass
        # (splitting cannot push a bound below the mass it bounds)
        if small and n_int < max_integrations and (est * 64 > budget_f or est * 16 > -negb) and analytic_near(lo, hi):
            n_int += 1
            val = integrate_box(g_int, lo, hi, abs_tol=cell_tol, rel_bits=bits + 2, max_evals=max_cell_evals).real
            if val.is_finite() and float(val.rad()) < budget_f / 4:
                integrated.append(val)
                continue
            failed_int += 1
        kdim = max(range(d), key=lambda k: float((hi[k] - lo[k]).mid()))
        mid = arb(((lo[kdim] + hi[kdim]) / 2).mid())
        if not (lo[kdim] < mid < hi[kdim]):
            raise NotCertified("the quadtree reached the precision limit (a singular point of the integrand?)")
        hi1 = list(hi)
        hi1[kdim] = mid
        lo2 = list(lo)
        lo2[kdim] = mid
        push(lo, hi1)
        push(lo2, hi)
    outside = upper(sum((h[4] for h in heap), arb(0)) + far)
    inner = sum(integrated, arb(0))
    if not (inner > 0):
        raise NotCertified("no mass was integrated (the mode hint is far from the posterior?)")
    total = inner + hull(arb(0), outside)
    value = total.log() + phi_ref + chart.absdet.log() + (prob.gamma2 / (2 * arb.pi())).log() * d / 2
    if not value.is_finite():
        raise NotCertified("the log-likelihood enclosure is not finite")
    return LogPxCertificate(value, prob.prec, len(integrated), len(heap), outside, [float(t.mid()) for t in T],
                            time.perf_counter() - t0,
                            {"cells_visited": n_cells, "integrations": n_int, "failed_integrations": failed_int,
                             "U": U, "R": R})


# ----------------------------------------------------------------------------------------
# Gaussian expectations with a polynomial tail bound
# ----------------------------------------------------------------------------------------


def _binomial(n: int, k: int) -> int:
    return math.comb(n, k)


def gaussian_tail_moment(j: int, d: int, T: arb) -> arb:
    """∫_{|ξ|₂ > T} N(ξ; 0, I_d) |ξ|₂^j dξ = 2^{j/2} Γ((j+d)/2, T²/2) / Γ(d/2)."""
    s = arb(j + d) / 2
    return arb(2) ** (arb(j) / 2) * (T * T / 2).gamma_upper(s) / (arb(d) / 2).gamma()


def polynomial_tail_bound(coeffs: Sequence[arb], mu_abs: arb, sd_max: arb, d: int, T: arb) -> arb:
    """Upper bound of ∫_{‖ξ‖∞ > T} N(ξ) P(‖μ‖∞ + σ_max |ξ|₂) dξ for a polynomial P with
    non-negative coefficients (‖ξ‖∞ > T implies |ξ|₂ > T; P is non-decreasing)."""
    A, B = upper(mu_abs), upper(sd_max)
    total = arb(0)
    for j, c in enumerate(coeffs):
        if c == 0:
            continue
        for i in range(j + 1):
            total = total + c * _binomial(j, i) * A ** (j - i) * B**i * gaussian_tail_moment(i, d, T)
    return upper(total)


@dataclass
class Expectation:
    value: arb
    T: float
    tail: arb


def gaussian_expectation(
    h: ScalarFn,
    mu: Sequence[arb],
    sd: Sequence[arb],
    growth: Sequence[arb],
    abs_tol: arb,
    rel_bits: int,
    max_evals: int | None = None,
) -> Expectation:
    """E_{ξ~N(0,I_d)}[h(μ + sd ⊙ ξ)] as a proven ball.

    ``mu`` and ``sd`` may be balls (then the result encloses the expectation for every
    parameter in them).  ``growth`` are non-negative coefficients P_j with
    |h(z)| ≤ Σ_j P_j ‖z‖∞^j for all real z; the truncation T is raised until the tail bound
    (:func:`polynomial_tail_bound`) is ≤ abs_tol/4."""
    d = len(mu)
    mu_abs = max((abs(m) for m in mu), key=lambda a: a.upper())
    sd_max = max((abs(s) for s in sd), key=lambda a: a.upper())
    T = arb(8)
    while True:
        tail = polynomial_tail_bound(growth, mu_abs, sd_max, d, T)
        if tail.is_finite() and tail.upper() <= (abs_tol / 4).lower():
            break
        T = T + 2
        if T > 60:
            raise NotCertified("Gaussian expectation: tail bound does not fall below the tolerance")
    norm = (2 * arb.pi()) ** (arb(-d) / 2)

    muc = [acb(m) for m in mu]
    sdc = [acb(s) for s in sd]
    half = acb(arb(1) / 2)
    if d == 1:
        def g1(t: acb) -> acb:
            return (-(t * t) * half).exp() * h([muc[0] + sdc[0] * t])

        core = integrate_box(g1, [-T], [T], abs_tol=abs_tol / 4, rel_bits=rel_bits, max_evals=max_evals)
    else:
        def fac(u1: acb):
            z1 = muc[0] + sdc[0] * u1
            w1 = -(u1 * u1) * half
            return lambda u2: (w1 - (u2 * u2) * half).exp() * h([z1, muc[1] + sdc[1] * u2])

        core = integrate_box(fac, [-T, -T], [T, T], abs_tol=abs_tol / 4, rel_bits=rel_bits, max_evals=max_evals)
    val = core.real * norm
    if not val.is_finite():
        raise NotCertified("Gaussian expectation: the integrand is not analytic on the integration box "
                           "(or the integral did not converge)")
    return Expectation(val + hull(-tail, tail), float(T.mid()), tail)


# ----------------------------------------------------------------------------------------
# ELBO and ELBO*
# ----------------------------------------------------------------------------------------


@dataclass
class ExprSet:
    """The integrands of the ELBO and its derivatives as callables on z (arb/acb lists), each
    with a polynomial growth bound (coefficients of P with |h(z)| ≤ P(‖z‖∞)).

    ``phi``: φ; ``grad[j]``: ∂_jφ; ``hess[j][k]``: ∂_j∂_kφ; ``third[j][k]``: ∂_j∂_k∂_kφ;
    ``fourth[j][k]``: ∂_j∂_j∂_k∂_kφ.  Derivative entries may be None when only the ELBO
    value is needed."""

    phi: tuple[ScalarFn, Sequence[arb]]
    grad: list[tuple[ScalarFn, Sequence[arb]]] | None = None
    hess: list[list[tuple[ScalarFn, Sequence[arb]]]] | None = None
    third: list[list[tuple[ScalarFn, Sequence[arb]]]] | None = None
    fourth: list[list[tuple[ScalarFn, Sequence[arb]]]] | None = None


def certify_elbo(exprs: ExprSet, gamma2: arb, mu: Sequence[arb], s: Sequence[arb], bits: int = 60) -> arb:
    """ELBO_red(x; μ, s) = d/2 + ½ Σ_k log(γ² s_k) + E_q[φ] as a proven ball (μ, s may be
    balls; the module doc gives the formula)."""
    d = len(mu)
    sd = [sk.sqrt() for sk in s]
    h, growth = exprs.phi
    e = gaussian_expectation(h, mu, sd, growth, abs_tol=arb(2) ** -bits, rel_bits=bits + 2)
    out = arb(d) / 2 + e.value
    for sk in s:
        out = out + (gamma2 * sk).log() / 2
    return out


@dataclass
class ElboStarCertificate:
    """What :func:`certify_elbo_star` proved.

    ``lower_bound``: ELBO_red at the given encoder (a lower bound of the global supremum
    ELBO*). When ``two_sided``: the ELBO has exactly one stationary point in the parameter
    box ``box`` (μ = μc + √ε a, s = ε t; the box is in (a, t)), the Hessian is negative
    definite on the whole box (so it is a strict local maximum, the maximum over the box),
    and its value lies in ``value``."""

    lower_bound: arb
    value: arb | None
    two_sided: bool
    reason: str
    mu: list[arb] | None
    s: list[arb] | None
    box_radius: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _sylvester_negative_definite(H: list[list[arb]]) -> bool:
    """All leading principal minors of −H positive (interval evaluation of each minor
    encloses it for every matrix in the interval family, in particular every symmetric one)."""
    m = len(H)
    A = [[-H[i][j] for j in range(m)] for i in range(m)]
    for k in range(1, m + 1):
        if not (_det([row[:k] for row in A[:k]]) > 0):
            return False
    return True


def _det(M: list[list[arb]]) -> arb:
    n = len(M)
    if n == 1:
        return M[0][0]
    if n == 2:
        return M[0][0] * M[1][1] - M[0][1] * M[1][0]
    total = arb(0)
    for j in range(n):
        minor = [row[:j] + row[j + 1:] for row in M[1:]]
        term = M[0][j] * _det(minor)
        total = total + term if j % 2 == 0 else total - term
    return total


def _solve_float(H: list[list[float]], g: list[float]) -> list[float]:
    """Plain Gaussian elimination with partial pivoting (floats; only for the
    preconditioner and the Newton step, whose accuracy the proof does not assume)."""
    n = len(g)
    A = [list(map(float, row)) + [float(b)] for row, b in zip(H, g)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(A[r][c]))
        A[c], A[p] = A[p], A[c]
        if A[c][c] == 0:
            raise NotCertified("singular Hessian")
        for r in range(c + 1, n):
            f = A[r][c] / A[c][c]
            for k in range(c, n + 1):
                A[r][k] -= f * A[c][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (A[r][n] - sum(A[r][k] * x[k] for k in range(r + 1, n))) / A[r][r]
    return x


def _inverse_float(H: list[list[float]]) -> list[list[float]]:
    n = len(H)
    cols = [_solve_float(H, [1.0 if i == j else 0.0 for i in range(n)]) for j in range(n)]
    return [[cols[j][i] for j in range(n)] for i in range(n)]


def certify_elbo_star(
    exprs: ExprSet,
    gamma2: arb,
    mu_hint: Sequence[float],
    s_hint: Sequence[float],
    bits: int = 60,
    hess_bits: int = 10,
    box_radius: float = 2.0**-24,
    max_hess_evals: int = 400_000,
) -> ElboStarCertificate:
    """Two-sided certificate of the local maximum of the mean-field ELBO near a hint.

    Parameters θ = (a, t): μ = μc + √ε a, s = ε t (μc = the hint; all entries O(1) at every
    γ²).  With Bonnet's and Price's theorems (E_q[∂_μ h] = ∂_μ E_q[h], ∂_{s_k} E_q[h] =
    ½ E_q[∂_k² h]):

        ∂_{a_j} ELBO = √ε E[∂_jφ],            ∂_{t_k} ELBO = 1/(2 t_k) + ε/2 E[∂_k²φ],
        ∂²_{a_i a_j} = ε E[∂_i∂_jφ],          ∂²_{a_j t_k} = ε^{3/2}/2 E[∂_j∂_k²φ],
        ∂²_{t_j t_k} = ε²/4 E[∂_j²∂_k²φ] − δ_jk / (2 t_k²).

    Steps: gradient at the hint θ0 (precise) and Hessian enclosure over the box
    X = θ0 ± ``box_radius`` (crude, ``hess_bits``); one Newton step θ1 = θ0 − C g(θ0) with
    C = mid(H)⁻¹ (floats: the proof does not rely on it); precise gradient at θ1; Krawczyk:
    K = θ1 − C g(θ1) + (I − C H(X))(X − θ1) ⊂ int X proves a unique zero of the gradient in
    X (and that it lies in K); H(X) negative definite (Sylvester) makes it the strict
    maximum over X.  Concavity on X then gives ELBO(θ1) ≤ ELBO* ≤ ELBO(θ1) + g(θ1)·(θ* − θ1)
    with θ* ∈ K ∩ X.  A failing step returns the one-sided lower bound with the reason.
    """
    t0 = time.perf_counter()
    d = len(mu_hint)
    eps = 1 / gamma2
    se = eps.sqrt()
    muc = [exact_float(float(m)) for m in mu_hint]
    t_hint = [exact_float(float(sv) * float(gamma2.mid())) for sv in s_hint]

    def params(a: Sequence[arb], t: Sequence[arb]) -> tuple[list[arb], list[arb]]:
        mu = [muc[k] + se * a[k] for k in range(d)]
        sd = [(eps * t[k]).sqrt() for k in range(d)]
        return mu, sd

    def E(pair, mu, sd, precise: bool, scale: arb) -> arb:
        """E[h] to an absolute tolerance 2^-bits · scale (``scale`` = 1 / the factor that
        multiplies this expectation in the ELBO's derivatives, so every entry is accurate
        to 2^-bits in the O(1) scaled parameters)."""
        h, growth = pair
        b = bits if precise else hess_bits
        return gaussian_expectation(h, mu, sd, growth, abs_tol=arb(2) ** -b * scale, rel_bits=b + 2,
                                    max_evals=None if precise else max_hess_evals).value

    g1s = gamma2.sqrt()

    def elbo_at(a, t) -> arb:
        mu, sd = params(a, t)
        out = arb(d) / 2 + E(exprs.phi, mu, sd, True, arb(1))
        for tk in t:
            out = out + tk.log() / 2
        return out

    def grad_at(a, t, precise=True) -> list[arb]:
        mu, sd = params(a, t)
        g = [se * E(exprs.grad[j], mu, sd, precise, g1s) for j in range(d)]
        g += [1 / (2 * t[k]) + eps / 2 * E(exprs.hess[k][k], mu, sd, precise, gamma2) for k in range(d)]
        return g

    def hess_on(a, t) -> list[list[arb]]:
        mu, sd = params(a, t)
        m = 2 * d
        H = [[arb(0)] * m for _ in range(m)]
        for i in range(d):
            for j in range(i, d):
                v = eps * E(exprs.hess[i][j], mu, sd, False, gamma2)
                H[i][j] = H[j][i] = v
        for j in range(d):
            for k in range(d):
                v = eps * se / 2 * E(exprs.third[j][k], mu, sd, False, gamma2 * g1s)
                H[j][d + k] = H[d + k][j] = v
        for j in range(d):
            for k in range(j, d):
                v = eps * eps / 4 * E(exprs.fourth[j][k], mu, sd, False, gamma2 * gamma2)
                if j == k:
                    v = v - 1 / (2 * t[k] * t[k])
                H[d + j][d + k] = H[d + k][d + j] = v
        return H

    a0 = [arb(0)] * d
    t0p = list(t_hint)
    lb = elbo_at(a0, t0p)
    if not lb.is_finite():
        raise NotCertified("ELBO at the hint is not finite")
    try:
        if exprs.grad is None or exprs.hess is None or exprs.third is None or exprs.fourth is None:
            raise NotCertified("derivative integrands not available")
        m = 2 * d
        theta0 = [*a0, *t0p]
        g0 = grad_at(a0, t0p)
        radius = box_radius
        for attempt in range(3):
            # the box X = θ0 ± radius; it is enlarged (at most twice) when the Newton step
            # from the hint does not stay well inside it
            rho = exact_float(radius)
            Xa = [hull(-rho, rho)] * d
            Xt = [hull(t0p[k] - rho, t0p[k] + rho) for k in range(d)]
            if not all(x > 0 for x in Xt):
                raise NotCertified("parameter box reaches s <= 0")
            HX = hess_on(Xa, Xt)
            if not all(all(v.is_finite() for v in row) for row in HX):
                raise NotCertified("Hessian enclosure over the box is not finite")
            C = _inverse_float([[float(v.mid()) for v in row] for row in HX])
            Cb = [[exact_float(v) for v in row] for row in C]
            step = [sum((Cb[i][j] * g0[j] for j in range(m)), arb(0)) for i in range(m)]
            th1 = [arb((theta0[i] - step[i]).mid()) for i in range(m)]
            biggest = max(float(abs(sv).upper()) for sv in step)
            if biggest <= radius / 4:
                break
            radius = 8 * biggest
        else:
            raise NotCertified("the Newton step from the hint leaves the parameter box (hint too far from a maximum)")
        a1, t1 = th1[:d], th1[d:]
        X = [*Xa, *Xt]
        box_radius = radius
        g1 = grad_at(a1, t1)
        Cg = [sum((Cb[i][j] * g1[j] for j in range(m)), arb(0)) for i in range(m)]
        # M = I − C H(X)
        M = [[(arb(1) if i == j else arb(0)) - sum((Cb[i][k] * HX[k][j] for k in range(m)), arb(0)) for j in range(m)]
             for i in range(m)]
        Xc = list(X)
        contained = False
        for _ in range(4):
            K = [th1[i] - Cg[i] + sum((M[i][j] * (Xc[j] - th1[j]) for j in range(m)), arb(0)) for i in range(m)]
            inside = all(bool(K[i].lower() > X[i].lower() and K[i].upper() < X[i].upper()) for i in range(m))
            if not inside:
                break
            contained = True
            Xc = [K[i].intersection(Xc[i]) for i in range(m)]
        if not contained:
            raise NotCertified("Krawczyk test failed: K(X) is not inside the parameter box")
        if not _sylvester_negative_definite(HX):
            raise NotCertified("the Hessian enclosure over the box is not negative definite")
        e1 = elbo_at(a1, t1)
        slack = sum((abs(g1[i]) * (Xc[i] - th1[i]).abs_upper() for i in range(m)), arb(0))
        value = hull(lower(e1), upper(e1 + slack))
        # the certified maximiser
        mu_star = [muc[k] + se * Xc[k] for k in range(d)]
        s_star = [eps * Xc[d + k] for k in range(d)]
        if lb > value:
            raise NotCertified("inconsistent enclosures (ELBO at the hint exceeds the local maximum)")
        value = value.intersection(hull(lower(lb), upper(value)))
        return ElboStarCertificate(lb, value, True, "", mu_star, s_star, box_radius, time.perf_counter() - t0,
                                   {"newton_step": max(float(abs(s).mid()) for s in step),
                                    "krawczyk_radius": max(float(x.rad()) for x in Xc)})
    except NotCertified as exc:
        return ElboStarCertificate(lb, None, False, str(exc), None, None, box_radius, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# c_IMA
# ----------------------------------------------------------------------------------------


def c_ima_ball(J: Sequence[Sequence[arb]]) -> arb:
    """c_IMA = Σ_k log‖J_k‖ − ½ log det(JᵀJ) from an enclosure of J (n × d, d ≤ 2).

    d = 1: exactly 0.  d = 2: with ρ = (J_1·J_2)² / (‖J_1‖²‖J_2‖²) ∈ [0, 1),
    c_IMA = −½ log(1 − ρ) (Gram determinant ‖J_1‖²‖J_2‖² − (J_1·J_2)²), so an exactly
    orthogonal pair gives a ball around 0 whose lower end is 0."""
    n, d = len(J), len(J[0])
    if d == 1:
        return arb(0)
    if d != 2:
        raise NotCertified("c_IMA certificates support d <= 2")
    n1 = sum((square(J[i][0]) for i in range(n)), arb(0))
    n2 = sum((square(J[i][1]) for i in range(n)), arb(0))
    dot = sum((J[i][0] * J[i][1] for i in range(n)), arb(0))
    if not (n1 > 0 and n2 > 0):
        raise NotCertified("a Jacobian column may vanish")
    rho = square(dot) / (n1 * n2)
    one_minus = 1 - rho
    if not (one_minus > 0):
        raise NotCertified("the Jacobian may be singular (columns parallel within the enclosure)")
    c = -one_minus.log() / 2
    return c.intersection(hull(arb(0), upper(c))) if c.upper() >= 0 else c
