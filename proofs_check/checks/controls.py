"""Negative controls N1, N2: the claims must fail where their assumptions fail."""

from __future__ import annotations

import sympy as sp
import torch

from numerics.jacobian import c_ima_batch_mean_jacobian
from numerics.sweep import PointResult, evaluate_points

from ..context import Context
from ..properties import run_property_strata
from ..registry import CheckResult, claim
from .evidence import GAP_PROPERTY_GAMMA2, GAP_PROPERTY_SOURCE, LOG2, Results, gap_eps, limit_checks, richardson_gap, symbolic_equal
from .faults import wrong_contrast


@claim(
    id="N1", title="Non-injective decoder", kind="control",
    statement="f(z) = (z1², z2), symmetric prior, z0 = (1, 0.5): two equal posterior modes, so the gap → c_IMA + log 2, not c_IMA.",
    latex=r"f(z) = (z_1^2, z_2):\ \log p_\gamma(x) - \mathrm{ELBO}^*(x) \to c_{\mathrm{IMA}} + \log 2",
    paper="outside the theorems (injectivity assumption)",
    assumptions="violates injectivity",
    models=("noninjective",),
    faults=("single_mode",),
)
def check_n1(ctx: Context, fault: str | None) -> Results:
    res = ctx.sweep("noninjective", search_modes=(fault != "single_mode"))
    eps, gap, err = gap_eps(res)
    c = res[0].c_ima
    out = limit_checks("noninjective: gap → c_IMA + log 2", eps, gap, err, c + LOG2)
    modes = [r.n_modes for r in res if r.gamma2 >= 1e2]
    out.append(CheckResult("noninjective: the second posterior mode is detected and flagged (γ² ≥ 100)", "numerical",
                           all(k == 2 for k in modes) and all("multimodal" in r.flags for r in res if r.gamma2 >= 1e2),
                           None, None, "", {"n_modes": modes}, "holds"))
    out.extend(check_c11_like_rejects(ctx, "noninjective", res, c))
    sym = ctx.sym("noninjective")
    ell = sym.log_prior()
    J = sym.jacobian()
    val = lambda z: ell.subs(dict(zip(sym.latents, z))) - sp.log(abs((J.T * J).det().subs(dict(zip(sym.latents, z))))) / 2  # noqa: E731
    out.append(symbolic_equal("noninjective: both preimages (±1, 0.5) carry the same Laplace mass (so log 2)", val((1, sp.Rational(1, 2))), val((-1, sp.Rational(1, 2)))))
    out.append(noninjective_property(ctx, fault))
    return out


def noninjective_property(ctx: Context, fault: str | None) -> CheckResult:
    """hypothesis over random non-injective decoders f(z) = F(g(z1)², z2, …) (g odd and
    increasing, F injective; proofs_check.strategies.noninjective_cases), symmetric priors and
    points with |z0_1| ≥ 0.3: the posterior at x = f(z0) has two modes (±z0_1, z0_2, …) of
    equal mass, so the Richardson gap limit (10·gap(1e7) − gap(1e6))/9 is c_IMA(f, z0) + log 2,
    and the mode search finds both modes.  Under ``single_mode`` the search is off."""
    from ..strategies import GAP_STRATA, noninjective_cases

    def pred(case):
        z = torch.tensor(case.z0, dtype=torch.float64, device=ctx.torch_device)
        r6, r7 = evaluate_points(case.model, [z], list(GAP_PROPERTY_GAMMA2), search_modes=(fault != "single_mode"))
        lim, tol = richardson_gap(r6, r7, case.d)
        target = r6.c_ima + LOG2
        ok = abs(lim - target) <= tol and r6.n_modes == 2 and r7.n_modes == 2
        return ok, (f"{case!r}: Richardson gap limit {lim:.12g} vs c_IMA + log 2 = {target:.12g} (tol {tol:.1e}); "
                    f"posterior modes found at γ² = 1e6, 1e7: {r6.n_modes}, {r7.n_modes} (expected 2)")

    res = run_property_strata("random non-injective fold decoders F(g(z1)², z2, …) (d ∈ {1, 2}, n ∈ {d, d+1}), symmetric priors: "
                              "two posterior modes and Richardson gap limit = c_IMA(f, z0) + log 2",
                              [(f"d={d}", noninjective_cases(d)) for d in GAP_STRATA["noninjective"]], pred,
                              ctx.n_samples(2, 4, 25), summarize=lambda c: c.summary())
    res.tolerance_source = GAP_PROPERTY_SOURCE
    return res


def check_c11_like_rejects(ctx: Context, name: str, res: list[PointResult], c: float) -> Results:
    """The C11 check (gap → c_IMA) must reject the non-injective decoder."""
    eps, gap, err = gap_eps(res)
    inner = limit_checks("inner", eps, gap, err, c)
    rejected = not all(r.passed for r in inner)
    return [CheckResult(f"{name}: the gap-theorem check (gap → c_IMA) rejects this decoder", "numerical", rejected, None, None, "", {}, "holds")]


@claim(
    id="N2", title="Wrong contrast", kind="control",
    statement="A contrast that is not c_IMA (c_IMA of the batch-mean Jacobian; a missing ½ for n > d) is rejected by the numerical checks.",
    latex=r"c_{\mathrm{IMA}}(\bar J) \ne \mathbb{E}\,c_{\mathrm{IMA}}(J);\ \textstyle\sum_k\log\|J_k\| - \log\det J^\top J \ne c_{\mathrm{IMA}}",
    paper="the paper's code estimates c_IMA from the batch-mean Jacobian",
    assumptions="—",
    models=("triangular", "embedding"),
    faults=("wrong_is_right",),
)
def check_n2(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name, kind in (("triangular", "batch_mean_contrast"), ("embedding", "missing_half")):
        res = ctx.sweep(name)
        eps, gap, err = gap_eps(res)
        wrong = res[0].c_ima if fault == "wrong_is_right" else wrong_contrast(ctx, name, kind)
        inner = limit_checks("inner", eps, gap, err, wrong)
        out.append(CheckResult(f"{name}: the gap-limit check rejects the {kind.replace('_', ' ')} ({wrong:.6g} vs c_IMA {res[0].c_ima:.6g})",
                               "numerical", not all(r.passed for r in inner), None, None, "", {"wrong_contrast": wrong}, "holds"))
    from ..strategies import NON_IMA_FAMILIES, non_ima_batches

    def pred(case):
        pointwise = float(case.c_ima.mean())
        bm = pointwise if fault == "wrong_is_right" else float(c_ima_batch_mean_jacobian(case.decoder, case.z.to(ctx.torch_device)))
        # 1e-6: both are float64 means of O(0.1–10) numbers (rounding ~1e-14); a real difference
        # is O(0.01) when c_IMA varies over the batch by ≥ 0.01 (the strategy's filter)
        return abs(pointwise - bm) > 1e-6, f"{case!r}: batch-mean contrast {bm:.6g} ≈ mean c_IMA {pointwise:.6g}"

    out.append(run_property_strata("random non-IMA decoders (affine+tanh, coupling, near-singular; c_IMA varying over the batch): "
                                   "batch-mean contrast differs from the mean pointwise c_IMA",
                                   [(f, non_ima_batches(64, ctx.seed, f)) for f in NON_IMA_FAMILIES], pred,
                                   ctx.n_samples(10, 30, 100), summarize=lambda c: c.summary()))
    return out
