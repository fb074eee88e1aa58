"""The vocabulary of evidence: the comparisons every claim check is made of.

- :func:`within` (registry): a measured error held against a tolerance with its source;
- :func:`order_check`: the observed order of accuracy of a refinement sweep vs the theory;
- :func:`limit_checks`: order check + Richardson limit vs a predicted limit;
- :func:`symbolic_equal`, :func:`boolean_check`: exact (sympy) statements;
- :func:`gap_limit_property`: a hypothesis property over random decoders.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import sympy as sp
import torch

from numerics.fits import OrderFit, fit_order, poly_fit
from numerics.jacobian import c_ima_batch_mean_jacobian, jacobian
from numerics.sweep import PointResult, evaluate_points
from theory.expansions import numeric

from ..bridge import point_tensor
from ..context import Context
from ..properties import run_property_strata
from ..registry import CheckResult, within

Results = list[CheckResult]
LOG2 = math.log(2.0)

#: Models whose gap is checked against c_IMA (non-IMA, IMA class, conformal, n > d).
GAP_MODELS = ("triangular", "ima", "mobius", "embedding", "curved", "mlp")
#: --quick runs a non-IMA n = d model and an n > d model with ∂³f ≠ 0, so every Taylor order
#: the claims depend on (up to the third derivatives in a1, μ1, s2) is exercised.
QUICK_MODELS = ("triangular", "curved")


def _models(ctx: Context, all_models: Sequence[str], quick: Sequence[str]) -> Sequence[str]:
    return quick if ctx.mode == "quick" else all_models



# ----------------------------------------------------------------------------------------
# Shared comparisons
# ----------------------------------------------------------------------------------------

RICHARDSON_TRUNCATION = 1e-9
#: A priori cap of a Richardson-limit tolerance: the float64 floor of the reduced values at
#: γ² ≤ 1e8 (≤ 5e-11 each) plus the O(ε²) truncation (≤ 1e-9), with margin.
RICHARDSON_CAP = 1e-8
RICHARDSON_SOURCE = (
    "3 x the propagated standard error of the Richardson intercept (weights = the reported error estimates) + 1e-9 "
    "(the O(ε²) truncation |a2| ε² for |a2| ≤ 1e3 at ε ≤ 1e-6), capped at 1e-8 (the float64 floor at γ² ≤ 1e8 plus "
    "the truncation): an inflated error estimate cannot widen it further"
)
#: Order fits use the asymptotic range only (γ² ≥ 100), where the next-order term bends the
#: log–log line by ≲ |a2/a1|·ε ≤ 0.02 for |a2/a1| ≤ 2.
ORDER_EPS_MAX = 1e-2
ORDER_BASE, ORDER_CAP = 0.02, 0.05
ORDER_SOURCE = ("0.02 (next-order bending of the log-log line over ε ≤ 1e-2, the fitted range) + 3 standard errors of "
                "the fitted slope, capped at 0.05")


def order_check(label: str, eps: np.ndarray, dev: np.ndarray, noise: np.ndarray, order: float, snr: float = 100.0, **details) -> CheckResult:
    """Observed order of accuracy of a deviation dev(ε) ≈ C ε^p (least-squares slope of
    log|dev| on log ε over the points with ε ≤ 1e-2 where |dev| > snr × noise) held against
    ``order`` with :func:`order_tolerance`."""
    fit = fit_order(eps, dev, noise, snr=snr, eps_max=ORDER_EPS_MAX)
    return within(f"{label} vs theory ({order:g})", "convergence",
                  abs(fit.order - order) if math.isfinite(fit.order) else float("inf"), order_tolerance(fit), ORDER_SOURCE,
                  fit=fit.to_dict(), theory_order=order, **details)


def limit_checks(label: str, eps: np.ndarray, vals: np.ndarray, errs: np.ndarray, limit: float, order: float = 1.0) -> Results:
    """The limit of ``vals`` as ε -> 0 equals ``limit`` and the error ``vals - limit`` decays
    as ε^order: (1) observed order of accuracy (least-squares slope of log|vals − limit| on
    log ε) held against ``order``; (2) Richardson extrapolation (linear fit in ε over the
    points with ε ≤ 1e-6) held against ``limit``."""
    out = [order_check(f"{label}: observed order of convergence", eps, vals - limit, errs, order,
                       eps_values=list(map(float, eps)), deviation=list(map(float, vals - limit)))]
    out.extend(richardson_check(label, eps, vals, errs, limit))
    return out


def richardson_check(label: str, eps: np.ndarray, vals: np.ndarray, errs: np.ndarray, limit: float) -> Results:
    """Richardson extrapolation: a weighted linear fit in ε over the points with ε ≤ 1e-6,
    whose intercept is held against ``limit`` (tolerance: 3 propagated standard errors + the
    O(ε²) truncation, capped at :data:`RICHARDSON_CAP`)."""
    small = eps <= 1e-6 + 1e-18
    if small.sum() < 2:
        return []
    pf = poly_fit(eps[small], vals[small], errs[small], 1)
    est, se = float(pf.coef[0]), float(pf.stderr[0])
    return [within(f"{label}: Richardson limit vs predicted {limit:.12g}", "numerical", abs(est - limit),
                   min(3 * se + RICHARDSON_TRUNCATION, RICHARDSON_CAP), RICHARDSON_SOURCE, extrapolated=est, predicted=limit)]


def _f(expr: sp.Expr) -> float:
    """A numeric sympy expression as a float (50-digit evaluation, theory.expansions.numeric)."""
    return float(numeric(expr, 50))


def symbolic_equal(name: str, a: sp.Expr, b: sp.Expr, digits: int = 30) -> CheckResult:
    """Two sympy expressions agree: exact simplification, or to 1e-25 when evaluated at 30
    digits (exact rationals in, so 1e-25 is far above evaluation rounding)."""
    d = sp.sympify(a - b)
    if not d.free_symbols:
        # a number: exact when rational, else evaluated at 50 digits (theory.expansions.numeric)
        err = float(abs(d)) if d.is_Rational else float(abs(numeric(d, 50)))
    else:
        # simplify only small expressions (it can take minutes on large transcendental ones)
        exact_zero = sp.count_ops(d) <= 300 and sp.simplify(d) == 0
        err = 0.0 if exact_zero else float("inf")
    return within(name, "symbolic", err, 1e-25, "exact for rationals, else 50-digit evaluation (rounding < 1e-40)",
                  lhs=_f(a) if not sp.sympify(a).free_symbols else str(a)[:200], rhs=_f(b) if not sp.sympify(b).free_symbols else str(b)[:200])


def boolean_check(name: str, evidence, ok: bool, **details) -> CheckResult:
    return CheckResult(name, evidence, bool(ok), None, None, "sympy proof (simplify to zero)" if evidence == "symbolic" else "", details,
                       "holds")



#: Relative precision of a degree-2 Richardson fit of an ε or ε² coefficient over γ² ∈ [1e3, 1e6].
FIT_PRECISION = 1e-4
FIT_SOURCE = ("the stated precision of a degree-2 Richardson fit over γ² ∈ [1e3, 1e6]: float64 noise ≤ 1e-13 in the "
              "values, divided by ε ≥ 1e-6 (ε² ≥ 1e-12 for s2), and the O(ε²) truncation")
A1_SOURCE = ("1e-6 relative (the stated precision of the Richardson fit of (gap − c_IMA)/ε over γ² ∈ [1e3, 1e6]), "
             "tightened to 5 standard errors of the fitted intercept if smaller than the cap of 1e-5 × max(|a1|, 1e-2); "
             "never wider than that cap")


def a1_tolerance(a1: float, stderr: float) -> float:
    """Tolerance on a first-order coefficient a1 fitted from the numerics: max(1e-6|a1|,
    5 standard errors), never more than the cap 1e-5 · max(|a1|, 1e-2) (so an inflated error
    estimate of the quantity under test cannot widen it past the cap)."""
    return min(max(1e-6 * abs(a1), 5 * stderr, 1e-9), 1e-5 * max(abs(a1), 1e-2))


def order_tolerance(fit: OrderFit) -> float:
    """Tolerance on |p_observed − p_theory|: 0.02 (the next-order bending over the fitted
    range ε ≤ 1e-2) plus three standard errors of the fitted slope, never more than 0.05 (so a
    bent line, which raises the standard error, cannot widen it further)."""
    return min(ORDER_BASE + 3 * fit.stderr, ORDER_CAP)


def gap_eps(results: list[PointResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ε, gap, gap error) arrays of a sweep."""
    eps = np.array([r.eps for r in results])
    gap = np.array([r.gap.value for r in results])
    err = np.array([r.gap.error for r in results])
    return eps, gap, err


def jac_at(ctx: Context, name: str) -> torch.Tensor:
    """J(z0) of a built-in model at its first point (torch.func, float64)."""
    z0 = point_tensor(ctx.point(name), ctx.torch_device)
    return jacobian(ctx.num(name).decoder, z0)


#: The two γ² of a gap property's Richardson limit (10·gap(1e7) − gap(1e6))/9.
GAP_PROPERTY_GAMMA2 = (1e6, 1e7)
#: O(ε²) remainder of that limit: a2·(ε6² − 10 ε7²)/9 ≈ 1e-13·a2, ≤ 1e-9 for |a2| ≤ 1e4 (the
#: strategies keep σ_min(J(z0)) ≥ 0.3; measured |a2| ≤ 1e3 on their families).
GAP_PROPERTY_TRUNCATION = 1e-9
GAP_PROPERTY_SOURCE = (
    "3 x the propagated error estimates (10·e(γ²=1e7) + e(1e6))/9 + 1e-9 (the O(ε²) remainder 1e-13·|a2| for "
    "|a2| ≤ 1e4), capped by the same expression with the stated accuracies of log p and ELBO* in place of their "
    "estimates (refinement tolerances 1e-12 and 1e-13 x max(1, |value|), plus numerics.posterior.rounding_bound "
    "at x each): an inflated error estimate cannot widen it"
)


def _stated_gap_accuracy(r: PointResult, d: int) -> float:
    """A-priori accuracy of one gap value: the refinement tolerances of log p (1e-12 relative)
    and ELBO* (1e-13 relative) plus the float64 rounding bound of each at x and γ²."""
    from numerics.posterior import rounding_bound

    rb = rounding_bound(torch.tensor(r.x, dtype=torch.float64), r.gamma2, d)
    return 1e-12 * max(1.0, abs(r.reduced_log_px)) + 1e-13 * max(1.0, abs(r.reduced_elbo_star)) + 2 * rb


def richardson_gap(r6: PointResult, r7: PointResult, d: int) -> tuple[float, float]:
    """(limit, tolerance) of the gap from γ² = 1e6 and 1e7: (10·gap(1e7) − gap(1e6))/9, with
    tolerance min(3 × propagated reported errors, 3 × propagated stated accuracies) + 1e-9
    (:data:`GAP_PROPERTY_SOURCE`)."""
    lim = (10 * r7.gap.value - r6.gap.value) / 9
    reported = 3 * (10 * r7.gap.error + r6.gap.error) / 9
    cap = 3 * (10 * _stated_gap_accuracy(r7, d) + _stated_gap_accuracy(r6, d)) / 9
    return lim, min(reported, cap) + GAP_PROPERTY_TRUNCATION


_GAP_LABELS = {
    "non_ima": "non-IMA decoders (affine+tanh, non-triangular coupling, near-singular with cond J(z0) 1e2–1e4; d = 2, "
               "n ∈ {2, 3}, c_IMA(f, z0) ≥ 0.02)",
    "ima": "IMA-class decoders (O·diag(r)·h(z) with h elementwise increasing, d ∈ {1, 2}; Möbius, d = 2; n ∈ {d, d+1})",
}


def gap_limit_property(ctx: Context, kind: str, predicted: str, fault: str | None) -> CheckResult:
    """hypothesis over random decoders of ``kind`` (``"non_ima"``, alias ``"triangular"``, or
    ``"ima"``; proofs_check.strategies, the examples split evenly over the families), priors
    and points: the Richardson limit
    (10·gap(1e7) − gap(1e6))/9 equals the prediction: c_IMA(f, z0) (``predicted="c_ima"``;
    the batch-mean contrast under the fault ``batch_mean_contrast``) or 0 (``"zero"``).

    Every decoder is injective by construction, so the mode search is skipped.  A passing
    result is cached on the context: a planted fault that this property does not take
    (``fault=None``) would give the very same examples and verdict."""
    from ..strategies import GAP_STRATA, gap_cases

    kind = "non_ima" if kind == "triangular" else kind
    key = ("gap_limit_property", kind, predicted, fault)
    if key in ctx.cache:
        return ctx.cache[key]

    def pred(case):
        z = torch.tensor(case.z0, dtype=torch.float64, device=ctx.torch_device)
        model = case.model
        r6, r7 = evaluate_points(model, [z], list(GAP_PROPERTY_GAMMA2), search_modes=False)
        lim, tol = richardson_gap(r6, r7, case.d)
        c = r6.c_ima if predicted == "c_ima" else 0.0
        if fault == "batch_mean_contrast":
            zs = model.prior.sample(256, torch.Generator().manual_seed(ctx.seed), device=ctx.torch_device)
            c = float(c_ima_batch_mean_jacobian(model.decoder, zs))
        return abs(lim - c) <= tol, f"{case!r}: Richardson gap limit {lim:.12g} vs predicted {c:.12g} (tol {tol:.1e})"

    target = "c_IMA(f, z0)" if predicted == "c_ima" else "0"
    res = run_property_strata(f"random {_GAP_LABELS[kind]}, priors, points in the bulk: Richardson gap limit = {target}",
                              [(str(f), gap_cases(kind, f)) for f in GAP_STRATA[kind]], pred, ctx.n_samples(4, 12, 50),
                              summarize=lambda c: c.summary())
    res.tolerance_source = GAP_PROPERTY_SOURCE
    if res.passed:
        ctx.cache[key] = res
    return res
