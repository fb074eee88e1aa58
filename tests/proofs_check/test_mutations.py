"""A standing mutation campaign: faults planted in the REAL code paths (monkeypatches of the
estimators, the contrast, the prior, the symbolic derivation), not in the claims' expected
values.  `gapcheck verify` must reject every one: default mode each, and --quick each one it
claims to cover.  docs/report.md lists them with the claims that catch them.

Each run checks only the claims listed as catching the mutation: claims are independent, so a
rejection there is a rejection by the whole `verify`.  (slow: ~2-4 min for the campaign.)"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import numerics.elbo as elbo
import numerics.jacobian as jacobian
import numerics.models as models
import numerics.posterior as posterior
import numerics.sweep as sweep
from proofs_check.properties import no_shrinking
from proofs_check.verification import run_verify

Patch = Callable[[pytest.MonkeyPatch], None]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    apply: Patch
    caught_by: tuple[str, ...]  # claims that reject it (each run with the mutation planted)
    quick: bool = True  # --quick rejects it too


def _wrap_elbo_star(mp: pytest.MonkeyPatch, change: Callable) -> None:
    real = sweep.elbo_star

    def patched(model, posts, *a, **k):
        return [change(e, pm) for e, pm in zip(real(model, posts, *a, **k), posts)]

    mp.setattr(sweep, "elbo_star", patched)


def gap_offset(mp: pytest.MonkeyPatch) -> None:
    _wrap_elbo_star(mp, lambda e, pm: dataclasses.replace(e, value=e.value - 1e-7))


def biased_elbo_with_matching_error(mp: pytest.MonkeyPatch) -> None:
    # ELBO* low by 1e-4·ε and an error estimate grown by the same amount: the bias hides
    # inside its own error bar unless tolerances are capped a priori
    _wrap_elbo_star(mp, lambda e, pm: dataclasses.replace(e, value=e.value - 1e-4 * pm.eps, error=e.error + 1e-4 * pm.eps))


def encoder_variance(mp: pytest.MonkeyPatch) -> None:
    _wrap_elbo_star(mp, lambda e, pm: dataclasses.replace(e, argmax={"mu": e.argmax["mu"], "s": e.argmax["s"] * (1 + 1e-3)}))


def laplace_logdet(mp: pytest.MonkeyPatch) -> None:
    real = posterior._log_integral

    def patched(model, pm, rule):
        d = model.d
        logdet = float(-torch.log(torch.diagonal(pm.chol[0])).sum()) + 0.5 * d * math.log(pm.eps)
        return real(model, pm, rule) + 1e-3 * logdet  # the Laplace log-det term × 1.001

    mp.setattr(posterior, "_log_integral", patched)


def early_stopped_newton(mp: pytest.MonkeyPatch) -> None:
    real = elbo.newton_robust  # the Newton driver the ELBO* optimizer calls

    def patched(fun, x0, args=(), **k):
        res = real(fun, x0, args, **{**k, "max_iter": 0})
        return dataclasses.replace(res, converged=torch.ones_like(res.converged), decrement=torch.zeros_like(res.decrement))

    mp.setattr(elbo, "newton_robust", patched)


def batch_mean_contrast(mp: pytest.MonkeyPatch) -> None:
    def patched(model, num_samples=4096, seed=0, device="cpu"):
        z = model.prior.sample(num_samples, torch.Generator().manual_seed(seed), device=device)
        from numerics.estimate import Estimate

        return Estimate(float(jacobian.c_ima_batch_mean_jacobian(model.decoder, z)), 1e-3, "monte_carlo", "standard_error",
                        {"num_samples": num_samples, "seed": seed})

    mp.setattr(jacobian, "global_c_ima", patched)


def missing_half_for_n_gt_d(mp: pytest.MonkeyPatch) -> None:
    real = sweep.c_ima_from_jacobian

    def patched(J, rcond=1e-12):
        c = real(J, rcond)
        return c - 0.5 * torch.linalg.slogdet(J.T @ J)[1] if J.shape[-2] > J.shape[-1] else c

    mp.setattr(sweep, "c_ima_from_jacobian", patched)


def prior_offset(mp: pytest.MonkeyPatch) -> None:
    real = models.LogisticPrior1D.log_prob
    mp.setattr(models.LogisticPrior1D, "log_prob", lambda self, t: real(self, t) + 1e-3)


def symbolic_a1(mp: pytest.MonkeyPatch) -> None:
    import theory.expansions as ex

    real = ex.expand_at
    mp.setattr(ex, "expand_at", lambda *a, **k: dataclasses.replace(real(*a, **k), a1=real(*a, **k).a1 * sp_rational(101, 100)))


def moments_wrong(mp: pytest.MonkeyPatch) -> None:
    import sympy as sp

    import theory.moments as moments

    real = moments.gaussian_moment

    def wrong(alpha, cov):
        val = real(alpha, cov)
        return val * sp.Rational(101, 100) if tuple(alpha) in ((4, 2), (2, 4)) else val

    mp.setattr(moments, "gaussian_moment", wrong)


def taylor_sixth_to_fifth(mp: pytest.MonkeyPatch) -> None:
    import sympy as sp

    import theory.expansions as ex

    real = ex._taylor_series

    def wrong(*a, **k):
        P1, P2, P3 = real(*a, **k)
        return [P1, P2, [[sp.Rational(6, 5) * x for x in p] for p in P3]]  # ⅕ instead of ⅙ in the cubic term

    mp.setattr(ex, "_taylor_series", wrong)


def _clear_symbolic_caches() -> None:
    import theory.expansions as ex
    import theory.moments as moments

    ex.generic_formulas.cache_clear()
    moments._mgf_power_coefficients.cache_clear()


def sp_rational(p: int, q: int):
    import sympy as sp

    return sp.Rational(p, q)


MUTATIONS = [
    Mutation("gap_offset_1e-7", "ELBO* returned 1e-7 low (the gap offset by 1e-7)", gap_offset, ("C10", "C11")),
    Mutation("laplace_logdet_x1.001", "the Laplace log-det term of log p multiplied by 1.001", laplace_logdet, ("C9", "C11")),
    Mutation("early_stopped_newton", "the ELBO* Newton iteration stopped before its first step (at the mean-field-lemma start) and reported converged",
             early_stopped_newton, ("C7", "C16")),
    Mutation("batch_mean_jacobian", "C_IMA(f, p0) estimated from the batch-mean Jacobian (the paper code's contrast)",
             batch_mean_contrast, ("C13",)),
    Mutation("missing_half_n_gt_d", "c_IMA without the ½ in front of log det JᵀJ when n > d", missing_half_for_n_gt_d, ("C11",)),
    Mutation("symbolic_a1_x1.01", "the derived first-order coefficient a1 multiplied by 1.01", symbolic_a1, ("C16",)),
    Mutation("encoder_variance_x1.001", "the optimal encoder variances s* multiplied by 1 + 1e-3", encoder_variance, ("C8", "C16")),
    Mutation("prior_plus_1e-3", "the logistic prior's log-density shifted by 1e-3 (a wrong normalizing constant)",
             prior_offset, ("C9", "C10")),
    Mutation("moments_x1.01", "the (4,2)/(2,4) Gaussian moments of theory.moments 1 % wrong (derived in process: no cache can "
             "keep the correct formulas)", moments_wrong, ("C16",)),
    Mutation("taylor_sixth_to_fifth", "⅕ instead of ⅙ in the cubic Taylor term of the derivation", taylor_sixth_to_fifth, ("C16",)),
    Mutation("biased_elbo_matching_error", "ELBO* biased by 1e-4·ε with its error estimate grown to match",
             biased_elbo_with_matching_error, ("C5", "C16")),
]


class _CountingPatch:
    """A MonkeyPatch stand-in whose ``setattr`` wraps every planted callable with a call
    counter: a rejection only counts if the planted code actually ran (a refactor that moves
    the real code path away from the patched name must fail the campaign, not pass it)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.mp = mp
        self.calls: dict[str, int] = {}

    def setattr(self, target, name: str, value) -> None:
        key = f"{getattr(target, '__name__', type(target).__name__)}.{name}"
        self.calls[key] = 0

        def counted(*a, **k):
            self.calls[key] += 1
            return value(*a, **k)

        self.mp.setattr(target, name, counted)


def _rejected(m: Mutation, mode: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    _clear_symbolic_caches()
    try:
        with monkeypatch.context() as mp, no_shrinking():  # a failing property need not shrink its example here
            counting = _CountingPatch(mp)
            m.apply(counting)  # type: ignore[arg-type]
            report, _ = run_verify(list(m.caught_by), mode=mode, show_progress=False)
    finally:
        _clear_symbolic_caches()  # nothing derived under the mutation survives it
    never = [k for k, v in counting.calls.items() if v == 0]
    assert counting.calls and not never, f"{m.name}: the planted code {never} was never called by {m.caught_by}"
    crashed = [e["id"] for e in report["claims"] if e["status"] == "error"]
    assert not crashed, f"{m.name}: claims {crashed} crashed instead of rejecting the fault"
    return [e["id"] for e in report["claims"] if e["status"] == "failed"]


@pytest.mark.slow
@pytest.mark.parametrize("m", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_default_verify_rejects(m: Mutation, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _rejected(m, "default", monkeypatch)
    assert failed, f"{m.name} ({m.what}) was accepted by {', '.join(m.caught_by)}"


@pytest.mark.slow
@pytest.mark.parametrize("m", [m for m in MUTATIONS if m.quick], ids=[m.name for m in MUTATIONS if m.quick])
def test_quick_verify_rejects(m: Mutation, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _rejected(m, "quick", monkeypatch)
    assert failed, f"{m.name} ({m.what}) was accepted by --quick {', '.join(m.caught_by)}"


def test_campaign_runs_clean_without_mutations() -> None:
    """Without a planted mutation the same claims pass (so each rejection above is the fault's)."""
    ids = sorted({c for m in MUTATIONS for c in m.caught_by} - {"C13", "C16", "C5"})
    report, _ = run_verify(ids, mode="quick", show_progress=False)
    assert report["passed"], report["summary"]
