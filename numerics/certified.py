"""Certified enclosures in ball arithmetic (python-flint / Arb) for d ≤ 2 latents.

Everything here returns *proven* enclosures: an Arb ball is a midpoint and a radius such
that the exact real number lies inside, and every operation propagates that guarantee.  The
integrals use a tensor Gauss–Legendre rule on adaptive cells with a proven error bound from
the analyticity of the integrand on Bernstein ellipses (:func:`integrate_cells`).  Where a
proof does not go through, the functions raise :class:`NotCertified` with the reason; they
never return an unproven ball.

Quantities (THEORY notation; ε = γ⁻², x = f(z0)):

* the *reduced* log-likelihood (the divergent (n−d)/2 · log(γ²/2π) separated, as the fast
  path does)

      log_px_red = d/2 · log(γ²/2π) + log ∫ exp φ(z) dz,   φ(z) = −γ²/2 ‖x − f(z)‖² + ℓ(z);

  :func:`certify_log_px`: rigorous integration over cells in coordinates aligned with the
  posterior mode, plus a rigorous bound on the mass outside them (a quadtree of boxes, each
  bounded by prior mass × sup of the likelihood factor, and the prior tails beyond a large
  box; see docs/certified.md);
* Gaussian expectations E_{ξ~N(0,I)}[H(μ + Lξ, ξ)] of vector integrands
  (:func:`gaussian_expectations`): rigorous integration over ‖ξ‖∞ ≤ T plus a tail bound from
  a polynomial growth bound |H_c| ≤ P_c(‖z‖∞) |ξ|₂^m;
* the reduced ELBO of a Gaussian encoder, ELBO_red = d/2 + Σ_k log(γ L_kk) + E_q[φ]
  (:func:`certify_elbo`, :func:`certify_elbo_at`), a certified lower bound on ELBO*;
* ELBO* two-sided for the mean-field (:func:`certify_elbo_star`) and the full-covariance
  (:func:`certify_elbo_star_fullcov`) encoder: Krawczyk's test on the stationarity
  equations, with gradient and Hessian written as Gaussian expectations of ∇φ and ∇²φ
  (reparametrization z = μ + Lξ), and negative definiteness of the Hessian enclosure over
  the parameter box;
* c_IMA from an enclosure of J(z0) (:func:`c_ima_ball`).

Nothing here knows sympy: the integrands arrive as callables that accept lists of ``arb``
(real intervals) or ``acb`` (complex balls), built by proofs_check.certification from the spec.
Complex evaluation must be *analytic-checked*: every function with a branch cut or a kink
returns a non-finite ball when its argument ball touches the cut (:data:`ARB_FUNCTIONS`), so
that a finite enclosure of an integrand on a complex ball proves it holomorphic there, as
the quadrature error bound requires.
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
    negative numbers when the ball contains 0); for acb a = x + iy, (x² − y²) + 2ixy with
    those tight real squares (Arb's complex product of a wide box with itself can put 0
    into the real part of a square that is far from 0)."""
    if isinstance(a, acb):
        x, y = a.real, a.imag
        if y == 0 and y.is_exact():
            return acb(square(x))
        return acb(square(x) - square(y), 2 * x * y)
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
# Rigorous integration over boxes (d = 1, 2): tensor Gauss–Legendre with proven error bounds
# ----------------------------------------------------------------------------------------

#: Gauss–Legendre degrees tried per direction of a cell (the smallest that meets the cell's
#: tolerance is used).
GL_DEGREES: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 45, 64)
#: Bernstein-ellipse parameters ρ tried per direction, in this order (exact dyadics).
ELLIPSE_RHOS: tuple[Fraction, ...] = (Fraction(4), Fraction(8), Fraction(2), Fraction(3, 2))
#: Covers used for the bounds on an ellipse E_ρ: strips of the whole ellipse (holomorphy),
#: arcs of its boundary (the maximum modulus), real segments of the other direction.
ELLIPSE_STRIPS, ELLIPSE_ARCS, OTHER_SEGMENTS = 4, 16, 4

_GL_CACHE: dict[tuple[int, int], tuple[list[arb], list[arb]]] = {}


def gl_rule(n: int) -> tuple[list[arb], list[arb]]:
    """Nodes and weights of the n-point Gauss–Legendre rule on [−1, 1] as proven balls
    (Arb's arb_hypgeom_legendre_p_ui_root), cached per (n, precision)."""
    key = (n, ctx.prec)
    rule = _GL_CACHE.get(key)
    if rule is None:
        pairs = [arb.legendre_p_root(n, k, weight=True) for k in range(n)]
        rule = ([p[0] for p in pairs], [p[1] for p in pairs])
        _GL_CACHE[key] = rule
    return rule


def gl_error_factor(rho: arb, n: int) -> arb:
    """64 / (15 (ρ − 1) ρ^{2n−1}): the n-point Gauss–Legendre error on [−1, 1] is at most
    this times sup_{E_ρ} |f| for f holomorphic on the closed Bernstein ellipse E_ρ (foci ±1,
    semi-axes (ρ ± 1/ρ)/2).  Trefethen (SIAM Rev. 2008, Thm 4.5; ATAP Thm 19.3) proves the
    smaller 64/(15 (ρ² − 1) ρ^{2n}); this is the weaker form Arb's own integrator uses."""
    return upper(arb(64) / (15 * (rho - 1) * rho ** (2 * n - 1)))


@dataclass
class _Ellipse:
    """Covers of the Bernstein ellipse E_ρ of the interval [m − h, m + h]."""

    strips: list[acb]  # cover the closed ellipse (finite values there prove holomorphy)
    arcs: list[acb]  # cover its boundary (sup |f| on the ellipse, maximum modulus)
    rho: arb


_ELLIPSE_UNIT: dict[tuple[Fraction, int], tuple[list[tuple[arb, arb]], list[tuple[arb, arb]], arb]] = {}


def _unit_ellipse(rho: Fraction) -> tuple[list[tuple[arb, arb]], list[tuple[arb, arb]], arb]:
    """(strips, arcs, ρ) of the ellipse for [−1, 1], each piece a (real ball, imaginary
    ball) pair that contains its part of the closed ellipse {X cos θ + i Y sin θ},
    X = (ρ + 1/ρ)/2, Y = (ρ − 1/ρ)/2."""
    key = (rho, ctx.prec)
    if key in _ELLIPSE_UNIT:
        return _ELLIPSE_UNIT[key]
    r = exact_rational(rho.numerator, rho.denominator)
    X = (r + 1 / r) / 2
    Y = (r - 1 / r) / 2
    strips = []
    K = ELLIPSE_STRIPS
    for k in range(K):
        t0 = -X + 2 * X * k / K
        t1 = -X + 2 * X * (k + 1) / K
        if k < K // 2:
            tmin = abs(t1) if k + 1 < K / 2 else arb(0)
        else:
            tmin = abs(t0) if k > K / 2 else arb(0)
        y = Y * (1 - square(tmin) / square(X)).nonnegative_part().sqrt() if tmin != 0 else Y
        strips.append((hull(t0, t1), hull(-upper(y), upper(y))))
    arcs = []
    N = ELLIPSE_ARCS
    two_pi = 2 * arb.pi()
    for j in range(N):
        th = hull(two_pi * j / N, two_pi * (j + 1) / N)
        arcs.append((X * th.cos(), Y * th.sin()))
    out = (strips, arcs, lower(r))
    _ELLIPSE_UNIT[key] = out
    return out


def _ellipse(m: arb, h: arb, rho: Fraction) -> _Ellipse:
    strips, arcs, r = _unit_ellipse(rho)
    return _Ellipse([acb(m + h * a, h * b) for a, b in strips], [acb(m + h * a, h * b) for a, b in arcs], r)


class _EvalBudget:
    """Counts integrand evaluations; past ``limit`` every further integration fails."""

    def __init__(self, limit: int | None) -> None:
        self.count = 0
        self.limit = limit

    def spend(self, k: int) -> bool:
        self.count += k
        return self.limit is None or self.count <= self.limit


VecFn = Callable[[Sequence[Num]], list[Num]]


def _sup_abs(F: VecFn, grids: Sequence[Sequence[Num]], ncomp: int, budget: _EvalBudget) -> list[arb] | None:
    """Per component, an upper bound of |F| over the union of the product boxes of ``grids``
    (one list of balls per dimension); None when a value is not finite (not holomorphic
    there, or not bounded)."""
    best = [arb(0)] * ncomp
    combos = [[g] for g in grids[0]] if len(grids) == 1 else [[g, k] for g in grids[0] for k in grids[1]]
    if not budget.spend(len(combos)):
        return None
    for c in combos:
        vals = F(c)
        for i, v in enumerate(vals):
            if not is_finite(v):
                return None
            a = arb(abs(v).upper())
            if a > best[i]:
                best[i] = a
            elif not (a < best[i]):
                best[i] = arb(max(a.upper(), best[i].upper()))
    return best


def _segments(m: arb, h: arb, k: int) -> list[arb]:
    return [hull(m - h + 2 * h * i / k, m - h + 2 * h * (i + 1) / k) for i in range(k)]


def _direction_degree(F: VecFn, d: int, k: int, mids: list[arb], halfs: list[arb], tols: list[arb], prefactor: arb,
                      ncomp: int, budget: _EvalBudget, max_degree: int) -> tuple[int, arb, list[arb]] | None:
    """The smallest Gauss–Legendre degree n for direction k of a cell (and its ρ, and the
    sup bounds) with prefactor · gl_error_factor(ρ, n) · M_c ≤ tols_c for every component,
    M_c = sup |F_c| over E_ρ(direction k) × the other directions' real intervals."""
    others = [_segments(mids[j], halfs[j], OTHER_SEGMENTS) for j in range(d)]
    best: tuple[int, arb, list[arb]] | None = None
    for rho in ELLIPSE_RHOS:
        if best is not None and (rho < ELLIPSE_RHOS[0] or best[0] <= 16):
            break
        E = _ellipse(mids[k], halfs[k], rho)
        strip_grid = [others[j] if j != k else E.strips for j in range(d)]
        if _sup_abs(F, strip_grid, ncomp, budget) is None:
            continue
        arc_grid = [others[j] if j != k else E.arcs for j in range(d)]
        M = _sup_abs(F, arc_grid, ncomp, budget)
        if M is None:
            continue
        for n in GL_DEGREES:
            if n > max_degree:
                break
            fac = prefactor * gl_error_factor(E.rho, n)
            if all((fac * M[c]).upper() <= tols[c].lower() for c in range(ncomp)):
                if best is None or n < best[0]:
                    best = (n, E.rho, [upper(fac * M[c]) for c in range(ncomp)])
                break
    return best


def integrate_cells(F: VecFn, lo: Sequence[arb], hi: Sequence[arb], tols: Sequence[arb], ncomp: int,
                    max_evals: int | None = None, max_degree: int = 64, max_cells: int = 20_000) -> list[arb] | None:
    """∫ over the box Π[lo_k, hi_k] (d = 1 or 2) of every component of the vector integrand
    F, each as a proven real ball with error at most ``tols[c]``; None when it fails (the
    integrand not holomorphic near the box, or the evaluation budget spent).

    F takes a list of d numbers (arb at the quadrature nodes and on real boxes, acb on complex
    boxes) and returns ``ncomp`` values; on a ball it must return an enclosure of its values,
    and a non-finite value wherever it is not holomorphic (the guarded functions of
    :data:`ARB_FUNCTIONS`).  The integrand must be real on the real box.

    Method: the box is cut adaptively into cells.  A cell gets the tolerance of its share of
    the area.  (0) If area × F(cell) (interval evaluation: the integral of a real function
    lies in area × [inf F, sup F]) is within tolerance, that ball is the cell's integral.
    (1) Otherwise a tensor Gauss–Legendre rule with n_k nodes in direction k: with
    G(u1) = ∫ F(u1, u2) du2 and half-widths h_k,

        |∫∫F − Q| ≤ |∫G − Q_1 G| + Σ_i W_i |G(x_i) − Q_2 F(x_i, ·)|
                 ≤ 2 h1 h2 · [e(ρ1, n1) M1 + e(ρ2, n2) M2],     e = gl_error_factor,

    M1 = sup |F| over E_ρ1 × [lo2, hi2] and M2 over [lo1, hi1] × E_ρ2 (G is holomorphic in
    E_ρ1 with |G| ≤ 2 h2 M1; the weights W_i are positive and sum to 2 h1).  Holomorphy is
    proven by finite values of F on strips that cover the closed ellipse (times real
    segments of the other direction); the sup is taken over boxes covering the ellipse's
    boundary (maximum modulus principle).  d = 1: |∫F − Q| ≤ h e(ρ, n) M.  A cell where no
    ρ and n ≤ ``max_degree`` meet the tolerance is halved along its longer side.
    """
    d = len(lo)
    if d not in (1, 2):
        raise NotCertified(f"certified integration supports d <= 2, got d = {d}")
    budget = _EvalBudget(max_evals)
    area = arb(1)
    for a, b in zip(lo, hi):
        area = area * (b - a)
    tol_density = [t / area for t in tols]
    total = [arb(0)] * ncomp
    stack = [(list(lo), list(hi))]
    cells = 0
    while stack:
        clo, chi = stack.pop()
        cells += 1
        if cells > max_cells:
            return None
        mids = [(a + b) / 2 for a, b in zip(clo, chi)]
        halfs = [(b - a) / 2 for a, b in zip(clo, chi)]
        carea = arb(1)
        for hk in halfs:
            carea = carea * 2 * hk
        ctols = [t * carea for t in tol_density]
        # (0) a bound by the box evaluation
        if not budget.spend(1):
            return None
        box = [hull(a, b) for a, b in zip(clo, chi)]
        vals = F(box)
        if all(is_finite(v) for v in vals):
            cand = [carea * v for v in vals]
            if all(float(c.rad()) <= float(t.lower()) for c, t in zip(cand, ctols)):
                total = [s + c for s, c in zip(total, cand)]
                continue
        # (1) tensor Gauss–Legendre
        if d == 1:
            pref = halfs[0]
            sub = [t for t in ctols]
        else:
            pref = 2 * halfs[0] * halfs[1]
            sub = [t / 2 for t in ctols]
        plan = []
        failed = None
        for k in range(d):
            r = _direction_degree(F, d, k, mids, halfs, sub, pref, ncomp, budget, max_degree)
            if r is None:
                failed = k
                break
            plan.append(r)
        if budget.limit is not None and budget.count > budget.limit:
            return None
        if failed is not None:
            # halve the longer side (the covers of the other direction shrink with it), the
            # failed direction on a tie
            k = max(range(d), key=lambda j: (float(halfs[j].mid()), j == failed))
            if not (halfs[k] > 0) or float(halfs[k].upper()) < 1e-12 * (1 + float(abs(mids[k]).upper())):
                return None
            cut = arb(mids[k].mid())
            hi1 = list(chi)
            hi1[k] = cut
            lo2 = list(clo)
            lo2[k] = cut
            stack.append((clo, hi1))
            stack.append((lo2, chi))
            continue
        rules = [gl_rule(n) for n, _, _ in plan]
        pts = [[mids[k] + halfs[k] * x for x in rules[k][0]] for k in range(d)]
        wts = [[halfs[k] * w for w in rules[k][1]] for k in range(d)]
        acc = [arb(0)] * ncomp
        if d == 1:
            if not budget.spend(len(pts[0])):
                return None
            for x, w in zip(pts[0], wts[0]):
                for c, v in enumerate(F([x])):
                    acc[c] = acc[c] + w * v
        else:
            if not budget.spend(len(pts[0]) * len(pts[1])):
                return None
            for x, wx in zip(pts[0], wts[0]):
                inner = [arb(0)] * ncomp
                for y, wy in zip(pts[1], wts[1]):
                    for c, v in enumerate(F([x, y])):
                        inner[c] = inner[c] + wy * v
                for c in range(ncomp):
                    acc[c] = acc[c] + wx * inner[c]
        for c in range(ncomp):
            err = sum((p[2][c] for p in plan), arb(0))
            v = acc[c]
            if not v.is_finite():
                return None
            total[c] = total[c] + v + hull(-err, err)
    return total


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
        cen, L = (self.cen_c, self.L_c) if any(isinstance(v, acb) for v in u) else (self.center, self.L)
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
    2. a quadtree over K: each cell Q is either integrated (:func:`integrate_cells` of
       e^{φ(ẑ+Lu)−φref}; cells with real mass and side ≤ R) or bounded by the smaller of
       (a) |det L|⁻¹ P0(H) sup_H e^{−γ²‖x−f‖²/2} e^{−φref} (H the z-hull of the cell, P0(H)
       a product of one-dimensional prior masses) and (b) area · exp(φ(c) − φref +
       Σ_k |∂_{u_k}φ(Q)| w_k/2) (mean-value form, when ``grad_fn`` gives ∇_zφ); the cell with
       the largest bound is split until the bounds sum to ≤ 2^-bits × the integral.

    ∫ e^φ dz = |det L| e^{φref} (Σ integrated cells + [0, Σ bounds + far-field bound]).
    """
    t0, c0 = time.perf_counter(), time.process_time()
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

    def F(u: Sequence[Num]) -> list[Num]:
        cplx = any(isinstance(v, acb) for v in u)
        return [(prob.phi(chart.z_of(u)) - (phi_ref_c if cplx else phi_ref)).exp()]

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
            res = integrate_cells(F, lo, hi, [cell_tol], 1, max_evals=max_cell_evals)
            val = res[0] if res is not None else arb.nan()
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
                             "U": U, "R": R, "cpu_seconds": round(time.process_time() - c0, 3)})


# ----------------------------------------------------------------------------------------
# Gaussian expectations with a polynomial tail bound
# ----------------------------------------------------------------------------------------


def _binomial(n: int, k: int) -> int:
    return math.comb(n, k)


def gaussian_tail_moment(j: int, d: int, T: arb) -> arb:
    """∫_{|ξ|₂ > T} N(ξ; 0, I_d) |ξ|₂^j dξ = 2^{j/2} Γ((j+d)/2, T²/2) / Γ(d/2)."""
    s = arb(j + d) / 2
    return arb(2) ** (arb(j) / 2) * (T * T / 2).gamma_upper(s) / (arb(d) / 2).gamma()


def polynomial_tail_bound(coeffs: Sequence[arb], mu_abs: arb, sd_max: arb, d: int, T: arb, xi_power: int = 0) -> arb:
    """Upper bound of ∫_{‖ξ‖∞ > T} N(ξ) P(‖μ‖∞ + σ_max |ξ|₂) |ξ|₂^m dξ (m = ``xi_power``)
    for a polynomial P with non-negative coefficients (‖ξ‖∞ > T implies |ξ|₂ > T; P is
    non-decreasing): Σ_j c_j Σ_i C(j, i) A^{j−i} B^i M_{i+m}(T), A = ‖μ‖∞, B = σ_max."""
    A, B = upper(mu_abs), upper(sd_max)
    total = arb(0)
    for j, c in enumerate(coeffs):
        if c == 0:
            continue
        for i in range(j + 1):
            total = total + c * _binomial(j, i) * A ** (j - i) * B**i * gaussian_tail_moment(i + xi_power, d, T)
    return upper(total)


@dataclass
class Growth:
    """|h(z, ξ)| ≤ P(‖z‖∞) · |ξ|₂^m for all real z = μ + Lξ: coefficients of P (non-negative)
    and the power m of the ξ factor."""

    coeffs: Sequence[arb]
    xi_power: int = 0


@dataclass
class Expectation:
    value: arb
    T: float
    tail: arb


def gaussian_expectations(
    H: Callable[[Sequence[Num], Sequence[Num]], list[Num]],
    mu: Sequence[arb],
    L: Sequence[Sequence[arb]],
    growth: Sequence[Growth],
    abs_tols: Sequence[arb],
    max_evals: int | None = None,
    max_degree: int = 64,
) -> list[Expectation]:
    """E_{ξ~N(0,I_d)}[H_c(μ + Lξ, ξ)] for every component c, as proven balls (d ≤ 2).

    ``mu`` and ``L`` (d × d) may be balls: the results then enclose the expectations for
    every parameter in them.  ``growth[c]`` bounds |H_c| (:class:`Growth`); the truncation
    T (the same for every component) is raised from 8 until every tail bound
    (:func:`polynomial_tail_bound`, with σ_max = max_i ‖L_i·‖₂, since ‖Lξ‖∞ ≤ σ_max |ξ|₂) is
    ≤ abs_tol_c/4; the rest is integrated over ‖ξ‖∞ ≤ T (:func:`integrate_cells`, tolerance
    abs_tol_c/2).  Each result is the integral plus [−tail, tail]."""
    d = len(mu)
    ncomp = len(growth)
    mu_abs = max((abs(m) for m in mu), key=lambda a: a.upper())
    sd_max = max((sum((square(L[i][k]) for k in range(d)), arb(0)).sqrt() for i in range(d)), key=lambda a: a.upper())
    T = arb(8)
    while True:
        tails = [polynomial_tail_bound(g.coeffs, mu_abs, sd_max, d, T, g.xi_power) for g in growth]
        if all(t.is_finite() and t.upper() <= (tol / 4).lower() for t, tol in zip(tails, abs_tols)):
            break
        T = T + 2
        if T > 60:
            raise NotCertified("Gaussian expectation: tail bound does not fall below the tolerance")
    norm = (2 * arb.pi()) ** (arb(-d) / 2)
    half = arb(1) / 2
    Lc = [[acb(v) for v in row] for row in L]
    muc = [acb(m) for m in mu]

    def F(u: Sequence[Num]) -> list[Num]:
        cplx = isinstance(u[0], acb) or (d > 1 and isinstance(u[1], acb))
        m_, L_ = (muc, Lc) if cplx else (mu, L)
        if d == 1:
            z = [m_[0] + L_[0][0] * u[0]]
            q = square(u[0])
        else:
            z = [m_[0] + L_[0][0] * u[0] + L_[0][1] * u[1], m_[1] + L_[1][0] * u[0] + L_[1][1] * u[1]]
            q = square(u[0]) + square(u[1])
        w = (-q * half).exp() * norm
        return [w * v for v in H(z, u)]

    Tn = -T
    res = integrate_cells(F, [Tn] * d, [T] * d, [t / 2 for t in abs_tols], ncomp, max_evals=max_evals,
                          max_degree=max_degree)
    if res is None or not all(v.is_finite() for v in res):
        raise NotCertified("Gaussian expectation: the integrand is not holomorphic near the integration box "
                           "(or the evaluation budget was spent)")
    return [Expectation(v + hull(-t, t), float(T.mid()), t) for v, t in zip(res, tails)]


def gaussian_expectation(
    h: ScalarFn,
    mu: Sequence[arb],
    sd: Sequence[arb],
    growth: Sequence[arb],
    abs_tol: arb,
    rel_bits: int = 0,
    max_evals: int | None = None,
) -> Expectation:
    """E_{ξ~N(0,I_d)}[h(μ + sd ⊙ ξ)] as a proven ball: the one-component, diagonal case of
    :func:`gaussian_expectations` (``growth``: P with |h(z)| ≤ P(‖z‖∞); ``rel_bits`` is
    unused, kept for callers)."""
    d = len(mu)
    L = [[sd[i] if i == k else arb(0) for k in range(d)] for i in range(d)]
    return gaussian_expectations(lambda z, _xi: [h(z)], mu, L, [Growth(list(growth))], [abs_tol], max_evals)[0]


# ----------------------------------------------------------------------------------------
# ELBO and ELBO* (mean-field and full-covariance Gaussian encoders)
# ----------------------------------------------------------------------------------------


@dataclass
class PhiDerivatives:
    """φ and, for ``order`` = 2, its first and second derivatives, as one ball function of z
    (arb/acb list) with a polynomial growth bound per output.

    ``fn(z)`` returns [φ] (order 0) or [φ, ∂_1φ, …, ∂_dφ, ∂_1∂_1φ, ∂_1∂_2φ, …, ∂_d∂_dφ]
    (the upper triangle of the Hessian row by row); ``growth[i]`` are non-negative
    coefficients P with |output_i(z)| ≤ P(‖z‖∞) for every real z."""

    d: int
    fn: Callable[[Sequence[Num]], list[Num]]
    growth: list[list[arb]]
    order: int = 2

    def grad_index(self, i: int) -> int:
        return 1 + i

    def hess_index(self, i: int, k: int) -> int:
        i, k = min(i, k), max(i, k)
        return 1 + self.d + sum(self.d - r for r in range(i)) + (k - i)


#: Encoder families: which entries of the scale matrix B (z = μ + √ε B ξ) are parameters.
FAMILIES = ("meanfield", "fullcov")


def scale_pattern(d: int, family: str) -> list[tuple[int, int]]:
    """The free entries (i, j) of B: the diagonal (mean-field, s_k = ε B_kk²) or the lower
    triangle row by row (full covariance, Σ = ε B Bᵀ, B_kk > 0: the Cholesky factor)."""
    if family == "meanfield":
        return [(k, k) for k in range(d)]
    if family == "fullcov":
        return [(i, j) for i in range(d) for j in range(i + 1)]
    raise ValueError(f"unknown encoder family {family!r}; known: {', '.join(FAMILIES)}")


class _ElboModel:
    """The reduced ELBO of a Gaussian encoder in scaled parameters θ = (a, b): μ = μc + √ε a,
    z = μ + √ε B ξ with B built from b (:func:`scale_pattern`), so that every entry of θ is
    O(1) at every γ²:

        ELBO_red(θ) = d/2 + Σ_k log B_kk + E_ξ[φ(μc + √ε (a + Bξ))]

    (for the mean-field family ½ Σ_k log(γ² s_k) = Σ_k log B_kk).  Differentiating under the
    expectation (justified by the growth bounds, which dominate every integrand):

        ∂_{a_k}      = √ε E[∂_kφ],                 ∂_{B_ij} = √ε E[∂_iφ ξ_j] + δ_ij / B_ii,
        ∂²_{a_k a_l} = ε E[∂_k∂_lφ],               ∂²_{a_k B_ij} = ε E[∂_k∂_iφ ξ_j],
        ∂²_{B_ij B_kl} = ε E[∂_i∂_kφ ξ_j ξ_l] − δ_{(ij),(kl)} δ_ij / B_ii²."""

    def __init__(self, pd: PhiDerivatives, gamma2: arb, mu_c: Sequence[arb], family: str) -> None:
        self.pd = pd
        self.d = pd.d
        self.eps = 1 / gamma2
        self.se = self.eps.sqrt()
        self.gamma2 = gamma2
        self.mu_c = list(mu_c)
        self.P = scale_pattern(self.d, family)
        self.m = self.d + len(self.P)

    def B_of(self, b: Sequence[arb]) -> list[list[arb]]:
        B = [[arb(0)] * self.d for _ in range(self.d)]
        for (i, j), v in zip(self.P, b):
            B[i][j] = v
        return B

    def _moments(self, a, b):
        d = self.d
        mu = [self.mu_c[k] + self.se * a[k] for k in range(d)]
        B = self.B_of(b)
        L = [[self.se * B[i][j] for j in range(d)] for i in range(d)]
        return mu, B, L

    def point(self, theta: Sequence[arb], bits: int, max_evals: int | None = None, value_only: bool = False
              ) -> tuple[arb, list[arb] | None]:
        """(ELBO_red, gradient) at θ (θ may be balls), each to about 2^-bits absolute."""
        d, pd = self.d, self.pd
        a, b = theta[:d], theta[d:]
        mu, B, L = self._moments(a, b)
        tol_v = arb(2) ** -bits
        tol_g = tol_v / self.se
        gi = [pd.grad_index(i) for i in range(d)]
        if value_only:
            def H(z, xi):
                return [pd.fn(z)[0]]

            growth = [Growth(pd.growth[0])]
            tols = [tol_v]
        else:
            P = self.P

            def H(z, xi):
                v = pd.fn(z)
                return [v[0], *(v[g] for g in gi), *(v[gi[i]] * xi[j] for i, j in P)]

            growth = [Growth(pd.growth[0])] + [Growth(pd.growth[g]) for g in gi] + [Growth(pd.growth[gi[i]], 1) for i, _ in P]
            tols = [tol_v] + [tol_g] * (d + len(P))
        ex = [e.value for e in gaussian_expectations(H, mu, L, growth, tols, max_evals=max_evals)]
        value = arb(d) / 2 + ex[0]
        for k in range(d):
            value = value + B[k][k].log()
        if value_only:
            return value, None
        g = [self.se * ex[1 + k] for k in range(d)]
        for p, (i, j) in enumerate(self.P):
            v = self.se * ex[1 + d + p]
            if i == j:
                v = v + 1 / B[i][i]
            g.append(v)
        return value, g

    def hessian(self, theta: Sequence[arb], bits: int, max_evals: int | None = None) -> list[list[arb]]:
        """The Hessian of ELBO_red, enclosed for every θ in the (ball) argument."""
        d, pd, P = self.d, self.pd, self.P
        a, b = theta[:d], theta[d:]
        mu, B, L = self._moments(a, b)
        hh = [(i, k) for i in range(d) for k in range(i, d)]
        hx = [(k, p) for k in range(d) for p in range(len(P))]
        hxx = [(p, q) for p in range(len(P)) for q in range(p, len(P))]
        hidx = pd.hess_index

        def H(z, xi):
            v = pd.fn(z)
            out = [v[hidx(i, k)] for i, k in hh]
            out += [v[hidx(k, P[p][0])] * xi[P[p][1]] for k, p in hx]
            out += [v[hidx(P[p][0], P[q][0])] * (xi[P[p][1]] * xi[P[q][1]]) for p, q in hxx]
            return out

        growth = ([Growth(pd.growth[hidx(i, k)]) for i, k in hh] + [Growth(pd.growth[hidx(k, P[p][0])], 1) for k, p in hx]
                  + [Growth(pd.growth[hidx(P[p][0], P[q][0])], 2) for p, q in hxx])
        tol = arb(2) ** -bits * self.gamma2
        ex = [e.value for e in gaussian_expectations(H, mu, L, growth, [tol] * len(growth), max_evals=max_evals)]
        m = self.m
        Hm = [[arb(0)] * m for _ in range(m)]
        it = iter(ex)
        for i, k in hh:
            Hm[i][k] = Hm[k][i] = self.eps * next(it)
        for k, p in hx:
            Hm[k][d + p] = Hm[d + p][k] = self.eps * next(it)
        for p, q in hxx:
            v = self.eps * next(it)
            if p == q and P[p][0] == P[p][1]:
                v = v - 1 / square(B[P[p][0]][P[p][0]])
            Hm[d + p][d + q] = Hm[d + q][d + p] = v
        return Hm


def certify_elbo(pd: PhiDerivatives, gamma2: arb, mu: Sequence[arb], s: Sequence[arb], bits: int = 60) -> arb:
    """ELBO_red(x; μ, s) = d/2 + ½ Σ_k log(γ² s_k) + E_q[φ] of the mean-field encoder as a
    proven ball (μ, s may be balls)."""
    model = _ElboModel(pd, gamma2, mu, "meanfield")
    b = [(gamma2 * sk).sqrt() for sk in s]
    return model.point([arb(0)] * len(mu) + b, bits, value_only=True)[0]


def certify_elbo_at(pd: PhiDerivatives, gamma2: arb, mu: Sequence[arb], L: Sequence[Sequence[arb]], bits: int = 60) -> arb:
    """ELBO_red of the Gaussian encoder q = N(μ, L Lᵀ) (L lower triangular, positive
    diagonal; balls allowed): d/2 + Σ_k log(γ L_kk) + E_q[φ], a proven lower bound of the
    full-covariance ELBO* (and, for diagonal L, of the mean-field one)."""
    d = len(mu)
    model = _ElboModel(pd, gamma2, mu, "fullcov")
    g = gamma2.sqrt()
    return model.point([arb(0)] * d + [g * L[i][j] for i, j in model.P], bits, value_only=True)[0]


@dataclass
class ElboStarCertificate:
    """What :func:`certify_elbo_star` / :func:`certify_elbo_star_fullcov` proved.

    ``lower_bound``: ELBO_red at the given encoder (a lower bound of the global supremum over
    the family).  When ``two_sided``: the ELBO has exactly one stationary point in the
    parameter box θ0 ± ``box_radius`` (θ = (a, b) of :class:`_ElboModel`), the Hessian is
    negative definite on the whole box (so it is a strict local maximum, the maximum over
    the box), and its value lies in ``value``; ``mu`` and ``s`` enclose the maximiser's mean
    and variances (diagonal of Σ), ``cov`` (full covariance) its Σ = ε B Bᵀ row by row."""

    lower_bound: arb
    value: arb | None
    two_sided: bool
    reason: str
    mu: list[arb] | None
    s: list[arb] | None
    box_radius: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    cov: list[list[arb]] | None = None
    family: str = "meanfield"


def _negative_definite(H: list[list[arb]]) -> bool:
    """Every symmetric matrix in the interval matrix H is negative definite.

    With A = −H = A_c + Δ (A_c the midpoints, |Δ_ij| ≤ r_ij), every symmetric S ∈ A has
    ‖S − A_c‖₂ ≤ ‖r‖_F =: ρ, so S ⪰ A_c − ρI; A_c − ρI is shown positive definite by its
    leading principal minors (ball arithmetic on a thin matrix)."""
    m = len(H)
    Ac = [[arb((-H[i][j]).mid()) for j in range(m)] for i in range(m)]
    rad2 = arb(0)
    for i in range(m):
        for j in range(m):
            r = abs(Ac[i][j] + H[i][j])  # |S_ij − mid| for every S_ij in the ball
            rad2 = rad2 + square(upper(r))
    rho = upper(rad2.sqrt())
    A = [[Ac[i][j] - (rho if i == j else 0) for j in range(m)] for i in range(m)]
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


def _certify_local_max(model: _ElboModel, theta_hint: list[arb], bits: int, hess_bits: int, box_radius: float,
                       max_hess_evals: int | None, t_start: float, c_start: float) -> ElboStarCertificate:
    """Krawczyk on the stationarity equations g(θ) = 0 of ``model`` near ``theta_hint``.

    Steps: ELBO and gradient at the hint θ0 (precise); the Hessian enclosed over the box
    X = θ0 ± ρ (crude, ``hess_bits``); one Newton step θ1 = θ0 − C g(θ0) with C = mid(H)⁻¹
    (floats: the proof does not rely on it; the box is enlarged, at most 3 times, when the
    step does not stay well inside it); the precise gradient at θ1; Krawczyk:
    K = θ1 − C g(θ1) + (I − C H(X))(X − θ1) ⊂ int X proves a unique zero of the gradient in
    X, lying in K; H(X) negative definite (:func:`_negative_definite`) makes it the strict
    maximum over X.  Concavity on X then gives ELBO(θ1) ≤ ELBO* ≤ ELBO(θ1) + g(θ1)·(θ* − θ1)
    with θ* ∈ K ∩ X.  A failing step returns the one-sided lower bound with the reason."""
    d, m = model.d, model.m
    lb, g0 = model.point(theta_hint, bits)
    if not lb.is_finite():
        raise NotCertified("ELBO at the hint is not finite")
    diag_idx = [d + p for p, (i, j) in enumerate(model.P) if i == j]
    radius = box_radius
    try:
        theta0 = list(theta_hint)
        for _attempt in range(4):
            rho = exact_float(radius)
            X = [hull(theta0[i] - rho, theta0[i] + rho) for i in range(m)]
            if not all(X[i] > 0 for i in diag_idx):
                raise NotCertified("parameter box reaches a non-positive scale (B_kk <= 0)")
            HX = model.hessian(X, hess_bits, max_hess_evals)
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
        e1, g1 = model.point(th1, bits)
        Cg = [sum((Cb[i][j] * g1[j] for j in range(m)), arb(0)) for i in range(m)]
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
        if not _negative_definite(HX):
            raise NotCertified("the Hessian enclosure over the box is not negative definite")
        slack = sum((abs(g1[i]) * (Xc[i] - th1[i]).abs_upper() for i in range(m)), arb(0))
        value = hull(lower(e1), upper(e1 + slack))
        if lb > value:
            raise NotCertified("inconsistent enclosures (ELBO at the hint exceeds the local maximum)")
        value = value.intersection(hull(lower(lb), upper(value)))
        mu_star = [model.mu_c[k] + model.se * Xc[k] for k in range(d)]
        B = model.B_of(Xc[d:])
        cov = [[model.eps * sum((B[i][k] * B[j][k] for k in range(d)), arb(0)) for j in range(d)] for i in range(d)]
        return ElboStarCertificate(lb, value, True, "", mu_star, [cov[k][k] for k in range(d)], radius,
                                   time.perf_counter() - t_start,
                                   {"newton_step": max(float(abs(s).mid()) for s in step),
                                    "krawczyk_radius": max(float(x.rad()) for x in Xc),
                                    "cpu_seconds": round(time.process_time() - c_start, 3)},
                                   cov, "")
    except NotCertified as exc:
        return ElboStarCertificate(lb, None, False, str(exc), None, None, radius, time.perf_counter() - t_start,
                                   {"cpu_seconds": round(time.process_time() - c_start, 3)})


def certify_elbo_star(
    pd: PhiDerivatives,
    gamma2: arb,
    mu_hint: Sequence[float],
    s_hint: Sequence[float],
    bits: int = 60,
    hess_bits: int = 12,
    box_radius: float = 2.0**-24,
    max_hess_evals: int = 400_000,
) -> ElboStarCertificate:
    """Two-sided certificate of the local maximum of the mean-field ELBO near a hint
    (μ, s) (floats, e.g. the fast path's optimum): :func:`_certify_local_max` in
    θ = (a, b), μ = μ_hint + √ε a, s_k = ε b_k²."""
    t0, c0 = time.perf_counter(), time.process_time()
    model = _ElboModel(pd, gamma2, [exact_float(float(v)) for v in mu_hint], "meanfield")
    g2 = float(gamma2.mid())
    theta = [arb(0)] * len(mu_hint) + [exact_float(math.sqrt(float(sv) * g2)) for sv in s_hint]
    cert = _certify_local_max(model, theta, bits, hess_bits, box_radius, max_hess_evals, t0, c0)
    cert.family = "meanfield"
    return cert


def certify_elbo_star_fullcov(
    pd: PhiDerivatives,
    gamma2: arb,
    mu_hint: Sequence[float],
    L_hint: Sequence[Sequence[float]],
    bits: int = 60,
    hess_bits: int = 12,
    box_radius: float = 2.0**-24,
    max_hess_evals: int = 600_000,
) -> ElboStarCertificate:
    """Two-sided certificate of the local maximum of the full-covariance Gaussian ELBO
    (q = N(μ, Σ), Σ = L Lᵀ, L lower triangular with positive diagonal) near a hint (μ, L)
    (floats): :func:`_certify_local_max` in θ = (a, b), μ = μ_hint + √ε a, L = √ε B(b)."""
    t0, c0 = time.perf_counter(), time.process_time()
    d = len(mu_hint)
    model = _ElboModel(pd, gamma2, [exact_float(float(v)) for v in mu_hint], "fullcov")
    g = math.sqrt(float(gamma2.mid()))
    theta = [arb(0)] * d + [exact_float(float(L_hint[i][j]) * g) for i, j in model.P]
    cert = _certify_local_max(model, theta, bits, hess_bits, box_radius, max_hess_evals, t0, c0)
    cert.family = "fullcov"
    return cert


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
