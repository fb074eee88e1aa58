"""Certified evidence for `gapcheck verify`: the fast estimators held to proven balls.

On a fixed set of built-in models, points and γ² (:func:`certified_cases`), every fast
estimate of `evaluate` (numerics.posterior / numerics.elbo through
numerics.sweep.evaluate_points, the real code path) is compared with the certified
enclosure of proofs_check.certification:

* **meets the ball**: the distance from the fast value to the ball is at most the fast
  path's stated error (value ± error intersects the ball: the stated error is not refuted);
* **stated error proven**: the largest distance from the fast value to a point of the ball
  (a proven upper bound of the actual error) is at most the stated error (the stated error
  is shown to hold).

Planted faults (:data:`CERTIFIED_FAULTS`) multiply the fast ELBO* or the fast log p by
(1 + 1e-10) inside the estimator itself (the functions evaluate_points calls are wrapped),
never the expected value: each must be rejected.  The certified balls are cached in the
run's Context, so the planted-fault runs repeat only the fast path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

from flint import arb

from numerics.certified import exact_float, working_precision

from ..registry import CheckResult, claim, within

#: Planted faults: a relative error of 1e-10 in the fast ELBO* or in the fast log p.
CERTIFIED_FAULTS = ("relative_1e-10_elbo_star", "relative_1e-10_log_px")
FAULT_FACTOR = 1.0 + 1e-10

#: Stated error of the fast c_IMA (evaluate reports none): float64 QR of the Jacobian is
#: backward stable, so c_IMA = Σ log(‖J_k‖/|R_kk|) carries an error of about u·κ(J)² per
#: term (≈ 2e-14 for κ(J) ≤ 10 on the fixed set); the cap used is 1e-13 · (1 + |c_IMA|).
C_IMA_FLOAT_TOL = 1e-13

#: (model, point index, γ²) checked by default (V1 takes ≈ 14 s wall, 10 s CPU, on this
#: machine) and the extra ones of --full (more points, γ² up to 1e8).
DEFAULT_CASES: tuple[tuple[str, int, float], ...] = (
    ("triangular", 0, 1e2),  # non-IMA decoder, logistic prior (C11)
    ("linear", 0, 1e4),  # closed-form model (C5)
    ("noninjective", 0, 1e2),  # two posterior modes (N1)
    ("mobius", 0, 1e2),  # IMA class (C12), conformal, n = 3
)
FULL_CASES: tuple[tuple[str, int, float], ...] = (
    ("triangular", 1, 1e4),
    ("ima", 0, 1e6),  # IMA class (C12)
    ("mlp", 0, 1e2),  # Student-t prior
    ("embedding", 0, 1e4),  # n > d
    ("curved", 0, 1e2),  # n > d, non-zero third derivatives
    ("mobius", 0, 1.0),  # broad posterior with the prior's tails
    ("linear", 0, 1e8),
    ("triangular", 0, 1e8),
)


def certified_cases(mode: str) -> tuple[tuple[str, int, float], ...]:
    return DEFAULT_CASES + (FULL_CASES if mode == "full" else ())


@contextlib.contextmanager
def planted_fault(fault: str | None) -> Iterator[None]:
    """Plant ``fault`` in the fast estimators that evaluate_points calls (restored on exit)."""
    if fault is None:
        yield
        return
    import numerics.sweep as ev

    if fault == "relative_1e-10_elbo_star":
        orig = ev.elbo_star

        def faulty_elbo_star(*args: Any, **kwargs: Any):
            return [dataclasses.replace(st, value=st.value * FAULT_FACTOR) for st in orig(*args, **kwargs)]

        ev.elbo_star = faulty_elbo_star
        try:
            yield
        finally:
            ev.elbo_star = orig
    elif fault == "relative_1e-10_log_px":
        orig_gh = ev.log_marginal_gh

        def faulty_log_marginal(*args: Any, **kwargs: Any):
            est = orig_gh(*args, **kwargs)
            return dataclasses.replace(est, value=est.value * FAULT_FACTOR)

        ev.log_marginal_gh = faulty_log_marginal
        try:
            yield
        finally:
            ev.log_marginal_gh = orig_gh
    else:
        raise KeyError(f"unknown certified fault {fault!r}; known: {', '.join(CERTIFIED_FAULTS)}")


def _distances(v: float, lo: arb | None, hi: arb | None) -> tuple[float, float]:
    """(distance from v to [lo, hi], largest distance from v to a point of [lo, hi]) as
    floats rounded up; an infinite end gives an infinite largest distance."""
    with working_precision(256):
        x = exact_float(v)
        below = lo - x if lo is not None else None  # > 0 when v is below the ball
        above = x - hi if hi is not None else None  # > 0 when v is above the ball
        dist = arb(0)
        if below is not None and below > 0:
            dist = below
        if above is not None and above > 0:
            dist = above
        far = math.inf
        if lo is not None and hi is not None:
            far_ball = abs(x - lo)
            other = abs(hi - x)
            far = max(float(far_ball.upper()), float(other.upper()))
        return float(arb(dist.upper()).upper()) if dist != 0 else 0.0, far


def _ends(ball: arb | None) -> tuple[arb | None, arb | None]:
    if ball is None:
        return None, None
    return arb(ball.lower()), arb(ball.upper())


def certified_row(ctx, name: str, point: int, gamma2: float):
    """The certified row for a built-in model (cached in the run's Context)."""
    from ..certification import certify_point

    key = ("certified", name, point, float(gamma2))
    if key not in ctx.cache:
        sym = ctx.sym(name)
        ctx.cache[key] = certify_point(sym, sym.points[point], gamma2)
    return ctx.cache[key]


def certified_checks(ctx, fault: str | None, cases: Sequence[tuple[str, int, float]] | None = None) -> list[CheckResult]:
    """Hold every fast estimate of the cases to its certified ball (module doc)."""
    from numerics.sweep import evaluate_points

    from ..bridge import point_tensor

    cases = certified_cases(ctx.mode) if cases is None else cases
    out: list[CheckResult] = []
    for name, pidx, g2 in cases:
        row = certified_row(ctx, name, pidx, g2)
        z0 = point_tensor(ctx.point(name, pidx), ctx.torch_device)
        with planted_fault(fault):
            fast = evaluate_points(ctx.num(name), [z0], [g2])[0]
        label = f"{name} z0={[round(float(v), 4) for v in ctx.point(name, pidx)]} γ²={g2:g}"
        for q in ("log_px", "elbo_star", "gap", "c_ima"):
            status = row.status.get(q, "")
            v = fast.c_ima if q == "c_ima" else getattr(fast, q).value
            if q == "c_ima":
                err = C_IMA_FLOAT_TOL * (1 + abs(v))
                src = "float64 QR error cap 1e-13·(1+|c_IMA|) (module doc)"
            else:
                err = getattr(fast, q).error
                src = "the fast path's stated error (refinement difference + rounding bound)"
            if status.startswith("certified"):
                lo, hi = _ends(row.balls[q])
            elif q == "elbo_star" and "elbo_lower" in row.balls:
                lo, hi = _ends(row.balls["elbo_lower"])[0], None
            elif q == "gap" and "gap_upper" in row.balls:
                lo, hi = None, _ends(row.balls["gap_upper"])[1]
            else:
                out.append(CheckResult(f"certified {label}: {q} has a certified enclosure", "certified", False,
                                       None, None, "", {"status": status}, "holds"))
                continue
            dist, far = _distances(v, lo, hi)
            details = {"fast": v, "stated_error": err, "status": status,
                       "ball": {"lo": str(lo) if lo is not None else "-inf", "hi": str(hi) if hi is not None else "inf"}}
            out.append(within(f"certified {label}: fast {q} meets the proven ball", "certified", dist, err, src, **details))
            if lo is not None and hi is not None:
                out.append(within(f"certified {label}: fast {q} stated error proven (max distance to the ball)",
                                  "certified", far, err, src, **details))
    return out



@claim(
    id="V1", title="Certified values (ball arithmetic)", kind="control",
    statement="Every fast estimate of log p, ELBO*, the gap and c_IMA (value ± its stated error) meets the certified Arb "
              "enclosure, and its actual error (distance to the proven ball) does not exceed its stated error.",
    latex=r"|\widehat{q} - q| \le \mathrm{err}(\widehat{q}),\quad q \in [\mathrm{lo}, \mathrm{hi}]\ \text{(proven)}",
    paper="not in the paper: gapcheck's proof that its fast numbers are right (docs/certified.md)",
    assumptions="d ≤ 2; the spec's translation to Arb, Arb's own correctness and the tail bounds of docs/certified.md; "
                "ELBO* certified as the unique strict local maximum in a small box around the fast optimum",
    models=("triangular", "linear", "noninjective", "mobius"),
    faults=CERTIFIED_FAULTS,
)
def check_v1(ctx, fault: str | None) -> list[CheckResult]:
    return certified_checks(ctx, fault)
