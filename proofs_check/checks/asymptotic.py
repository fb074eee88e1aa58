"""Asymptotic claims C7–C16: limits as γ² → ∞ and their rates, checked on γ² sweeps."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch

from numerics.elbo import elbo_star_fullcov
from numerics.fits import poly_fit
from numerics.jacobian import c_ima_batch_mean_jacobian
from numerics.posterior import find_modes
from numerics.sweep import PointResult, evaluate_points
from theory.spec import SymbolicModel

from ..bridge import numeric_model, point_tensor
from ..context import Context
from ..registry import at_least, claim, within
from .evidence import (
    A1_SOURCE,
    FIT_PRECISION,
    FIT_SOURCE,
    GAP_MODELS,
    QUICK_MODELS,
    Results,
    _f,
    _models,
    a1_tolerance,
    boolean_check,
    gap_eps,
    gap_limit_property,
    jac_at,
    limit_checks,
    order_check,
    richardson_check,
    symbolic_equal,
)
from .faults import expected_order, perturbed_gaps, wrong_contrast


@claim(
    id="C7", title="Self-consistency", kind="asymptotic",
    statement="μ*(x) → g(x) = z0 with μ* − z0 = O(γ⁻²), and ‖f(μ*(x)) − x‖ → 0.",
    latex=r"\mu^*(x) = z_0 + \mu_1\varepsilon + O(\varepsilon^2),\quad \|f(\mu^*(x)) - x\| \to 0",
    paper="the paper's first theorem (self-consistency of the optimal encoder)",
    assumptions="f smooth and injective, J full column rank, x = f(z0)",
    models=GAP_MODELS,
    faults=("wrong_rate", "perturbed_optimum"),
)
def check_c7(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in _models(ctx, GAP_MODELS, QUICK_MODELS):
        res = ctx.sweep(name)
        z0 = np.array([float(v) for v in ctx.point(name)])
        eps = np.array([1 / r.gamma2 for r in res])
        mus = np.array([r.mu_star for r in res])
        if fault == "perturbed_optimum":
            mus = mus + 0.05 * np.sqrt(eps)[:, None]
        dist = np.linalg.norm(mus - z0, axis=1)
        noise = np.full_like(dist, 1e-14)  # μ* is resolved to ~1e-16·κ(J); 1e-14 is the floor used
        out.append(order_check(f"{name}: ‖μ* − z0‖ observed order", eps, dist, noise, expected_order(fault)))
        m = ctx.num(name)
        fx = m.decoder(torch.tensor(mus, dtype=torch.float64, device=ctx.torch_device)).cpu().numpy()
        x = np.array(res[0].x)
        rdist = np.linalg.norm(fx - x, axis=1)
        out.append(order_check(f"{name}: ‖f(μ*) − x‖ observed order", eps, rdist, np.full_like(rdist, 1e-14), expected_order(fault)))
        for k in range(len(z0)):
            out.extend(richardson_check(f"{name}: μ*_{k + 1} → z0_{k + 1}", eps, mus[:, k], np.full_like(eps, 1e-14 * (1 + abs(z0[k]))), z0[k]))
        out.extend(_mu1_check(ctx, name, fault))
    return out


def _mu1_check(ctx: Context, name: str, fault: str | None) -> Results:
    """Richardson fit of (μ* − z0)/ε = μ1 + μ2 ε + μ3 ε² over γ² ∈ [1e3, 1e6] vs symbolic μ1."""
    exp = ctx.expansion(name)
    mu1 = np.array([_f(v) for v in exp.mu1])
    res = ctx.sweep(name, ctx.fit_gamma2)
    z0 = np.array([float(v) for v in ctx.point(name)])
    eps = np.array([1 / r.gamma2 for r in res])
    mus = np.array([r.mu_star for r in res])
    if fault == "perturbed_optimum":
        mus = mus + 0.05 * np.sqrt(eps)[:, None]
    worst, tol = 0.0, 0.0
    fitted = []
    for k in range(len(z0)):
        y = (mus[:, k] - z0[k]) / eps
        pf = poly_fit(eps, y, 1e-15 * (1 + abs(z0[k])) / eps, 2)
        fitted.append(float(pf.coef[0]))
        worst = max(worst, abs(pf.coef[0] - mu1[k]) / max(abs(mu1[k]), 1e-3))
        tol = max(tol, 1e-4)
    return [within(f"{name}: Richardson μ1 vs symbolic μ1 (relative)", "numerical", worst, tol,
                   f"{FIT_PRECISION:g} relative ({FIT_SOURCE}); |μ1| floored at 1e-3", fitted=fitted, symbolic=mu1.tolist())]


@claim(
    id="C8", title="Optimal variances", kind="asymptotic",
    statement="γ² s_k* ‖J_k(z0)‖² → 1 (s_k* = ε/‖J_k‖² + O(ε²)); the paper's refined (γ²‖J_k‖² − ℓ_k'')⁻¹ is exact to O(ε²) for linear decoders only.",
    latex=r"\gamma^2 s_k^*\|J_k\|^2 \to 1;\quad s_k^* = \varepsilon/\|J_k\|^2 + s_{2,k}\varepsilon^2 + O(\varepsilon^3)",
    paper="self-consistency theorem: optimal encoder variances, and the refined variance formula",
    assumptions="as C7",
    models=("linear", "triangular", "embedding"),
    faults=("wrong_rate", "refined_formula_curved"),
)
def check_c8(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in ("triangular", "embedding"):
        res = ctx.sweep(name)
        eps = np.array([1 / r.gamma2 for r in res])
        J = jac_at(ctx, name).cpu().numpy()
        nrm2 = (J * J).sum(0)
        for k in range(J.shape[1]):
            v = np.array([r.s_star[k] for r in res]) / eps * nrm2[k]
            out.append(order_check(f"{name}: γ² s*_{k + 1} ‖J_{k + 1}‖² → 1, observed order", eps, v - 1.0, np.full_like(v, 1e-13), expected_order(fault)))
            out.extend(richardson_check(f"{name}: γ² s*_{k + 1} ‖J_{k + 1}‖² → 1", eps, v, np.full_like(v, 1e-13), 1.0))
    # the refined formula: exact to O(ε²) for the linear decoder (symbolic), not for a curved one (numerical)
    lin = ctx.expansion("linear")
    out.append(symbolic_equal("linear model: ε² coefficient of the refined formula equals s2 (k = 1)", lin.refined_s2[0], lin.s2[0]))
    tri = ctx.expansion("triangular")
    s2 = np.array([_f(v) for v in tri.s2])
    refined = np.array([_f(v) for v in tri.refined_s2])
    fitted = _s2_fit(ctx, "triangular")
    pred = refined if fault == "refined_formula_curved" else s2
    rel = np.max(np.abs(fitted - pred) / np.maximum(np.abs(pred), 1e-3))
    out.append(within("triangular (curved) model: Richardson s2 vs predicted s2", "numerical", rel, 1e-4, f"{FIT_PRECISION:g} relative ({FIT_SOURCE})",
                      fitted=fitted.tolist(), predicted=pred.tolist(), refined_formula=refined.tolist(), derived=s2.tolist()))
    sep = np.max(np.abs(s2 - refined) / np.maximum(np.abs(s2), 1e-3))
    out.append(at_least("triangular (curved) model: the refined formula's ε² coefficient differs from s2 (relative separation)",
                        "numerical", float(sep), 1e-2, "at least 100 x the 1e-4 relative precision of the Richardson s2 fit"))
    return out


def _s2_fit(ctx: Context, name: str) -> np.ndarray:
    exp = ctx.expansion(name)
    s1 = np.array([_f(v) for v in exp.s1])
    res = ctx.sweep(name, ctx.fit_gamma2)
    eps = np.array([1 / r.gamma2 for r in res])
    s = np.array([r.s_star for r in res])
    out = []
    for k in range(s.shape[1]):
        y = (s[:, k] / eps - s1[k]) / eps
        pf = poly_fit(eps, y, 1e-14 * s1[k] / eps, 2)
        out.append(float(pf.coef[0]))
    return np.array(out)


def _symbolic_at(ctx: Context, name: str) -> tuple[sp.Matrix, sp.Expr]:
    """(J(z0), ℓ(z0)) of a built-in model as exact sympy objects at its first point."""
    sym = ctx.sym(name)
    at = dict(zip(sym.latents, ctx.point(name)))
    return sym.jacobian().subs(at), sym.log_prior().subs(at)


def _symbolic_limits(ctx: Context, name: str) -> tuple[float, float]:
    """(ℓ(z0) − ½ log det JᵀJ, ℓ(z0) − Σ log‖J_k‖) from the symbolic side: the spec's sympy prior
    (with its exact normalizing constant) and the sympy Jacobian at z0, evaluated at 50 digits,
    so the targets of C9/C10 are independent of the numeric prior and decoder."""
    key = ("symbolic_limits", name)
    if key not in ctx.cache:
        Js, ell0 = _symbolic_at(ctx, name)
        M = Js.T * Js
        lp = ell0 - sp.log(M.det()) / 2
        el = ell0 - sum(sp.log(M[k, k]) for k in range(M.shape[0])) / 2
        ctx.cache[key] = (_f(lp), _f(el))
    return ctx.cache[key]


def _limit_and_constant(ctx: Context, name: str, label: str, attr: str, lim: float, fault: str | None,
                        constant: sp.Expr, pred: sp.Expr) -> Results:
    """The two checks C9 and C10 share for one model: the reduced quantity ``attr`` (``log_px`` or
    ``elbo_star``) of the γ² sweep converges to the symbolic limit ``lim`` at the expected order
    (Richardson, :func:`limit_checks`), and the derivation's order-0 ``constant`` equals ``pred``."""
    res = ctx.sweep(name)
    eps = np.array([1 / r.gamma2 for r in res])
    vals = np.array([getattr(r, f"reduced_{attr}") for r in res])
    errs = np.array([getattr(r, attr).error for r in res])
    out = limit_checks(f"{name}: reduced {label}", eps, vals, errs, lim, expected_order(fault))
    out.append(symbolic_equal(f"{name}: symbolic {label.split(' →')[0]} constant vs {label.split('→ ')[1]}", constant, pred))
    return out


@claim(
    id="C9", title="Likelihood limit (Laplace)", kind="asymptotic",
    statement="log p_γ(x) = (n−d)/2·log(γ²/2π) + ℓ(z0) − ½ log det(JᵀJ) + O(γ⁻²).",
    latex=r"\log p_\gamma(x) = \tfrac{n-d}{2}\log\tfrac{\gamma^2}{2\pi} + \ell(z_0) - \tfrac12\log\det J^\top J + O(\varepsilon)",
    paper="Laplace approximation of the marginal likelihood, used for the main result",
    assumptions="as C7",
    models=GAP_MODELS,
    faults=("missing_half", "wrong_rate"),
)
def check_c9(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in _models(ctx, GAP_MODELS, QUICK_MODELS):
        lim, _ = _symbolic_limits(ctx, name)
        if fault == "missing_half":
            lim = lim - 0.5 * float(torch.linalg.slogdet(jac_at(ctx, name).T @ jac_at(ctx, name))[1])
        Js, ell0 = _symbolic_at(ctx, name)
        pred = ell0 - sp.log((Js.T * Js).det()) / (2 if fault != "missing_half" else 1)
        out.extend(_limit_and_constant(ctx, name, "log p → ℓ(z0) − ½ log det JᵀJ", "log_px", lim, fault,
                                       ctx.expansion(name).log_px[0], pred))
    return out


@claim(
    id="C10", title="ELBO limit", kind="asymptotic",
    statement="ELBO*(x) = (n−d)/2·log(γ²/2π) + ℓ(z0) − Σ_k log‖J_k‖ + O(γ⁻²).",
    latex=r"\mathrm{ELBO}^*(x) = \tfrac{n-d}{2}\log\tfrac{\gamma^2}{2\pi} + \ell(z_0) - \textstyle\sum_k\log\|J_k\| + O(\varepsilon)",
    paper="the ELBO limit in the main result",
    assumptions="as C7",
    models=GAP_MODELS,
    faults=("logdet_for_norms", "wrong_rate"),
)
def check_c10(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in _models(ctx, GAP_MODELS, QUICK_MODELS):
        lim_lp, lim = _symbolic_limits(ctx, name)
        if fault == "logdet_for_norms":
            lim = lim_lp
        exp = ctx.expansion(name)
        Js, ell0 = _symbolic_at(ctx, name)
        M = Js.T * Js
        norms = sum(sp.log(M[k, k]) for k in range(M.shape[0])) / 2 if fault != "logdet_for_norms" else sp.log(M.det()) / 2
        out.extend(_limit_and_constant(ctx, name, "ELBO* → ℓ(z0) − Σ log‖J_k‖", "elbo_star", lim, fault,
                                       exp.elbo_star[0], ell0 - norms))
        out.append(boolean_check(f"{name}: the derivation's own check: the mean-field optimum of the Laplace precision gives "
                                 "ELBO*_0 = ℓ0 − Σ log‖J_k‖ (symbolic, generic J)", "symbolic",
                                 bool(exp.checks.get("elbo0_is_l0_minus_sum_log_norms")) and bool(exp.checks.get("elbo_half_order_zero"))))
    return out


@claim(
    id="C11", title="The gap theorem", kind="asymptotic",
    statement="log p_γ(x) − ELBO*(x) → c_IMA(f, z0), i.e. ELBO*(x) − L_IMA(x) → 0, with error O(γ⁻²).",
    latex=r"\log p_\gamma(x) - \mathrm{ELBO}^*(x) = c_{\mathrm{IMA}}(f, z_0) + O(\varepsilon)",
    paper="the paper's main result (ELBO → L_IMA); its gap figure",
    assumptions="as C7",
    models=GAP_MODELS,
    faults=("batch_mean_contrast", "perturbed_optimum", "wrong_rate"),
)
def check_c11(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in _models(ctx, GAP_MODELS, QUICK_MODELS):
        res = ctx.sweep(name)
        eps, gap, err = gap_eps(res)
        if fault == "perturbed_optimum":
            gap = perturbed_gaps(ctx, name, res)
        c = res[0].c_ima
        if fault == "batch_mean_contrast":
            c = wrong_contrast(ctx, name, "batch_mean_contrast")
        out.extend(limit_checks(f"{name}: gap → c_IMA(f, z0)", eps, gap, err, c, expected_order(fault)))
        exp = ctx.expansion(name)
        from theory.exact import c_ima_expr

        Js, _ = _symbolic_at(ctx, name)
        out.append(symbolic_equal(f"{name}: symbolic gap limit (log p − ELBO* constants) vs c_IMA(J(z0))", exp.log_px[0] - exp.elbo_star[0], c_ima_expr(Js)))
        out.append(within(f"{name}: numeric c_IMA (QR) vs symbolic c_IMA", "numerical", abs(res[0].c_ima - _f(exp.c_ima)),
                          1e-13, "float64 QR: each of the 2d logs to ~1e-15"))
    if fault != "wrong_rate":
        out.append(gap_limit_property(ctx, "triangular", "c_ima", fault if fault == "batch_mean_contrast" else None))
    return out


@claim(
    id="C12", title="IMA class: the gap vanishes", kind="asymptotic",
    statement="If J has orthogonal columns everywhere (conformal maps, Möbius transforms, O·h(z)), the gap → 0.",
    latex=r"J_k^\top J_l \equiv 0\ (k\neq l) \Rightarrow \log p_\gamma(x) - \mathrm{ELBO}^*(x) \to 0",
    paper="consequence of the main result for IMA-class decoders; Möbius experiments",
    assumptions="f in the IMA class",
    models=("ima", "mobius"),
    faults=("non_ima_decoder",),
)
def check_c12(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in ("ima", "mobius"):
        used = "triangular" if fault == "non_ima_decoder" else name
        res = ctx.sweep(used)
        eps, gap, err = gap_eps(res)
        out.extend(limit_checks(f"{name}{' (planted: triangular)' if used != name else ''}: gap → 0", eps, gap, err, 0.0))
        sym = ctx.sym(used)
        J = sym.jacobian()
        M = J.T * J
        offdiag = sp.simplify(M[0, 1])
        out.append(boolean_check(f"{name}: JᵀJ is diagonal for every z (symbolic), so c_IMA ≡ 0", "symbolic", offdiag == 0, off_diagonal=str(offdiag)))
    out.append(gap_limit_property(ctx, "triangular" if fault == "non_ima_decoder" else "ima", "zero", None))
    return out


@claim(
    id="C13", title="Global version", kind="asymptotic",
    statement="E_{z0∼p0}[log p_γ(f(z0)) − ELBO*(f(z0))] → C_IMA(f, p0), with a stated Monte Carlo error.",
    latex=r"\mathbb{E}_{z_0\sim p_0}\big[\log p_\gamma(f(z_0)) - \mathrm{ELBO}^*(f(z_0))\big] \to C_{\mathrm{IMA}}(f,p_0)",
    paper="global form of the main result; the gap figure averages over data",
    assumptions="as C7, for p0-almost every z0; the prior average by randomized QMC (scrambled Sobol points through the "
                "prior's quantile function), C_IMA by an independent plain Monte Carlo",
    models=("triangular",),
    faults=("batch_mean_contrast",),
)
def check_c13(ctx: Context, fault: str | None) -> Results:
    """Two estimates and two checks.  (1) The prior-averaged gap E[gap] at γ² = 1e8 by RQMC
    (R replicates × N scrambled Sobol points; error = standard error over replicates) against
    C_IMA(f, p0) from an independent Monte Carlo (65536 plain prior samples, its standard
    error): |difference| ≤ min(4 × combined standard error, cap) + the largest per-point
    |gap − c_IMA| at 1e8 (the O(ε) bias).  The cap (5 % of C_IMA) is written in the record's
    source: a larger standard error can never widen the tolerance past it.  (2) The paired mean
    of gap − c_IMA over the same points → 0 at rate ε (observed order and Richardson limit on
    the first replicate's points at γ² = 1e3 … 1e6 and 1e8)."""
    from numerics.jacobian import global_c_ima

    m = ctx.num("triangular")
    reps, per = {"quick": (8, 16), "default": (8, 32), "full": (16, 64)}[ctx.mode]
    key = ("c13", ctx.mode, ctx.seed)
    if key not in ctx.cache:
        zs = _sobol_prior_points(m, reps, per, ctx.seed + 13, ctx.torch_device)
        top = evaluate_points(m, list(zs), [1e8], search_modes=False)
        first = evaluate_points(m, list(zs[:per]), [1e3, 1e4, 1e5, 1e6], search_modes=False)
        glob = global_c_ima(m, num_samples=ctx.n_samples(16384, 65536, 262144), seed=ctx.seed + 1, device=ctx.torch_device)
        ctx.cache[key] = (top, first, glob)
    top, first, glob = ctx.cache[key]
    gaps = np.array([r.gap.value for r in top]).reshape(reps, per)
    devs = np.array([r.gap.value - r.c_ima for r in top]).reshape(reps, per)
    rep_means = gaps.mean(1)
    mean_gap, se_gap = float(rep_means.mean()), float(rep_means.std(ddof=1) / math.sqrt(reps))
    C, C_se = glob.value, glob.error
    if fault == "batch_mean_contrast":
        z = m.prior.sample(4096, torch.Generator().manual_seed(ctx.seed + 2), device=ctx.torch_device)
        C = float(c_ima_batch_mean_jacobian(m.decoder, z))
    bias = float(np.abs(devs).max())  # deterministic O(ε) part at γ² = 1e8, measured per point
    cap = 0.05 * abs(glob.value)
    sd = math.sqrt(se_gap**2 + C_se**2)
    tol = min(4 * sd, cap) + bias
    # paired deviation on the first replicate's points at γ² = 1e3 … 1e6 and 1e8
    g2s = [1e3, 1e4, 1e5, 1e6, 1e8]
    by_g = {g: [r for r in first if r.gamma2 == g] for g in g2s[:-1]}
    by_g[1e8] = top[:per]
    eps = np.array([1 / g for g in g2s])
    dev = np.array([np.mean([r.gap.value - r.c_ima for r in by_g[g]]) for g in g2s])
    noise = np.array([np.mean([r.gap.error for r in by_g[g]]) for g in g2s])
    if fault == "batch_mean_contrast":
        dev = dev + np.mean([r.c_ima for r in top]) - C
    per_g = [{"gamma2": 1e8, "num_samples": reps * per, "mean_gap": mean_gap, "mean_gap_se": se_gap, "C_IMA": C, "C_IMA_se": C_se,
              "mean_gap_minus_c_ima": float(devs.mean()), "mean_gap_minus_c_ima_se": float(devs.mean(1).std(ddof=1) / math.sqrt(reps))}]
    for g in g2s[:-1]:
        gg = np.array([r.gap.value for r in by_g[g]])
        per_g.append({"gamma2": g, "num_samples": per, "mean_gap": float(gg.mean()), "mean_gap_se": float(gg.std(ddof=1) / math.sqrt(per)),
                      "C_IMA": C, "C_IMA_se": C_se, "mean_gap_minus_c_ima": float(dev[g2s.index(g)]),
                      "mean_gap_minus_c_ima_se": float(np.std([r.gap.value - r.c_ima for r in by_g[g]], ddof=1) / math.sqrt(per))})
    per_g.sort(key=lambda d: d["gamma2"])
    estimates = [{"name": f"mean gap over {reps * per} prior points (RQMC, {reps} replicates), γ² = 1e8", "value": mean_gap, "error": se_gap},
                 {"name": f"C_IMA(f, p0), independent Monte Carlo ({glob.diagnostics['num_samples']} samples)", "value": C, "error": C_se}]
    estimates += [{"name": f"paired mean of gap − c_IMA over {per} points, γ² = {d['gamma2']:g}", "value": d["mean_gap_minus_c_ima"],
                   "error": d["mean_gap_minus_c_ima_se"]} for d in per_g]
    out = limit_checks("prior-averaged (paired) gap − c_IMA → 0", eps, dev, noise, 0.0)
    out.append(within(f"triangular, logistic prior: mean gap over {reps * per} prior points at γ² = 1e8 vs independent C_IMA(f, p0)",
                      "numerical", abs(mean_gap - C), tol,
                      "min(4 x combined standard error of the two estimates, cap = 5 % of C_IMA) + the largest per-point "
                      "|gap − c_IMA| at γ² = 1e8 (the O(ε) bias)",
                      mean_gap=mean_gap, se_gap=se_gap, C_IMA=C, C_IMA_se=C_se, cap=cap, bias=bias,
                      num_samples=reps * per, per_gamma2=per_g, estimates=estimates))
    return out


def _sobol_prior_points(m, reps: int, per: int, seed: int, device) -> torch.Tensor:
    """``reps`` independent scramblings of ``per`` Sobol points mapped through the prior's
    quantile function (randomized QMC); (reps·per, d), replicate-major."""
    from scipy.stats import qmc

    out = []
    for child in np.random.SeedSequence(seed).spawn(reps):
        u = qmc.Sobol(m.d, scramble=True, rng=np.random.default_rng(child)).random_base2(int(math.log2(per)))
        u = torch.as_tensor(np.clip(u, 2.0**-60, 1 - 2.0**-53), dtype=torch.float64, device=device)
        out.append(torch.stack([f.icdf(u[:, k]) for k, f in enumerate(m.prior.factors)], -1))
    return torch.cat(out)


@claim(
    id="C14", title="Full-covariance encoder", kind="asymptotic",
    statement="With a full-covariance Gaussian q the gap tends to 0 for every f: the IMA regularizer comes from the mean-field restriction.",
    latex=r"\log p_\gamma(x) - \sup_{\mu,\Sigma}\mathrm{ELBO}(x;\mu,\Sigma) = O(\varepsilon)",
    paper="discussion: the IMA bias comes from the mean-field restriction",
    assumptions="as C7; q = N(μ, Σ) with Σ full",
    models=("triangular", "embedding"),
    faults=("mean_field",),
)
def check_c14(ctx: Context, fault: str | None) -> Results:
    from theory.expansions import full_covariance_leading_order

    out: Results = []
    lo = full_covariance_leading_order(2)
    out.append(boolean_check("generic 2x2 SPD M: leading-order full-covariance ELBO* = ℓ0 − ½ log det M, gap limit 0", "symbolic", lo.verified))
    for name in ("triangular", "embedding"):
        res = ctx.sweep(name)
        m = ctx.num(name)
        eps, gap, err = gap_eps(res)
        if fault != "mean_field":
            X = torch.tensor([r.x for r in res], dtype=torch.float64, device=ctx.torch_device)
            z0 = point_tensor(ctx.point(name), ctx.torch_device)
            posts = find_modes(m, X, [r.gamma2 for r in res], z0.expand(len(res), -1))
            full = elbo_star_fullcov(m, posts)
            gap = np.array([r.reduced_log_px - f.value for r, f in zip(res, full)])
            err = np.array([r.log_px.error + f.error for r, f in zip(res, full)])
        out.extend(limit_checks(f"{name}: full-covariance gap → 0", eps, gap, err, 0.0))
        exp = ctx.expansion(name)
        out.append(symbolic_equal(f"{name}: symbolic full-covariance gap limit is 0", exp.full_cov_gap0, sp.Integer(0)))
    return out


def _rotated(sym: SymbolicModel, R: sp.Matrix) -> SymbolicModel:
    """f∘R as a symbolic model (latent z -> R z)."""
    zs = sp.Matrix(sym.latents)
    sub = dict(zip(sym.latents, list(R * zs)))
    dec = sym.decoder.xreplace(sub)
    pts = tuple(tuple(R.T * sp.Matrix(p)) for p in sym.points)
    return SymbolicModel(sym.name + "_rotated", sym.latents, dec, sym.priors, sym.gamma2, pts)


ROTATION_345 = sp.Matrix([[sp.Rational(3, 5), -sp.Rational(4, 5)], [sp.Rational(4, 5), sp.Rational(3, 5)]])


def darmois_pair(sym_ima: SymbolicModel) -> tuple[SymbolicModel, SymbolicModel, sp.Matrix]:
    """A linear IMA-class decoder f(z) = O D z (O the 3-4-5 rotation, D = diag(2, 1)) and its
    Darmois counterpart under the standard Gaussian prior.

    The data x = O D z, z ~ N(0, I), are N(0, Σ) with Σ = O D² Oᵀ.  The Darmois construction
    maps x to independent latents through the conditional CDFs F(x1), F(x2 | x1); composed with
    the Gaussian quantile function (so its latents are standard Gaussian), for Gaussian data it
    is the whitening by the lower-triangular Cholesky factor L (LLᵀ = Σ): the Darmois decoder is
    f_D(z) = L z.  Both generate N(0, Σ + γ⁻²I) for every γ (equal likelihood), but f_D's
    columns are not orthogonal: c_IMA(L) > 0 = c_IMA(O D).  Returns (f, f_D, Σ)."""
    O = ROTATION_345
    D = sp.diag(2, 1)
    A = O * D
    Sigma = A * A.T
    L = Sigma.cholesky(hermitian=False)
    z = sp.Matrix(sym_ima.latents)
    gauss = sym_ima.priors[:2]
    z0 = sp.Matrix([sp.Rational(3, 10), -sp.Rational(1, 2)])
    zD = L.inv() * (A * z0)
    f = SymbolicModel("linear_ima", sym_ima.latents, A * z, gauss, sym_ima.gamma2, (tuple(z0),))
    fD = SymbolicModel("linear_darmois", sym_ima.latents, L * z, gauss, sym_ima.gamma2, (tuple(sp.simplify(v) for v in zD),))
    return f, fD, Sigma


def _sweep_of(ctx: Context, sym: SymbolicModel) -> list[PointResult]:
    key = ("sweep_sym", sym.name, tuple(ctx.sweep_gamma2))
    if key not in ctx.cache:
        ctx.cache[key] = evaluate_points(numeric_model(sym), [point_tensor(sym.points[0], ctx.torch_device)], ctx.sweep_gamma2)
    return ctx.cache[key]


def _spurious_checks(label: str, res_f: list[PointResult], res_s: list[PointResult], pred: float) -> Results:
    """Same x; log p identical at every γ² (to the error estimates); ELBO*(f) − ELBO*(f_s) →
    ``pred`` at rate ε."""
    dx = max(abs(a - b) for a, b in zip(res_f[0].x, res_s[0].x))
    dlp = max(abs(a.log_px.value - b.log_px.value) for a, b in zip(res_f, res_s))
    tol = min(max(a.log_px.error + b.log_px.error for a, b in zip(res_f, res_s)), 1e-9)
    out = [within(f"{label}: log p identical for every γ² (largest |difference| over the sweep)", "numerical", dlp, tol,
                  "the two reported quadrature errors (largest over the sweep), capped at 1e-9 (the stated 1e-11 accuracy "
                  "of log p at γ² ≤ 1e8, with margin)", same_x=dx),
           within(f"{label}: the two latents map to the same x", "numerical", dx, 1e-14, "float64 evaluation of f (|x| ≤ 3)")]
    eps = np.array([r.eps for r in res_f])
    diff = np.array([a.elbo_star.value - b.elbo_star.value for a, b in zip(res_f, res_s)])
    errs = np.array([a.elbo_star.error + b.elbo_star.error for a, b in zip(res_f, res_s)])
    out.extend(limit_checks(f"{label}: ELBO*(f) − ELBO*(spurious) → c_IMA(spurious) − c_IMA(f)", eps, diff, errs, pred))
    return out


@claim(
    id="C15", title="Spurious solutions", kind="asymptotic",
    statement="ML cannot tell f from f∘R (R orthogonal, standard Gaussian prior) nor from its Darmois construction: p_γ(x) "
              "is identical; ELBO* can: its difference tends to the difference of c_IMA, > 0 when f is IMA-class and the "
              "spurious decoder is not.",
    latex=r"\log p^{f}_\gamma = \log p^{f_s}_\gamma;\quad \mathrm{ELBO}^{*}_{f} - \mathrm{ELBO}^{*}_{f_s} \to c_{\mathrm{IMA}}(f_s) - c_{\mathrm{IMA}}(f) > 0,\ f_s \in \{f\circ R,\ f_{\mathrm{Darmois}}\}",
    paper="discussion of spurious solutions (rotations, Darmois construction)",
    assumptions="standard Gaussian prior. Rotation: the built-in IMA-class decoder O·h and R the 3-4-5 rotation. Darmois: "
                "the linear IMA-class decoder O·D (D = diag(2, 1)), whose Gaussian data make the Darmois construction the "
                "Cholesky whitening (f_D = L z, LLᵀ = O D² Oᵀ; equal likelihood at every γ²). A Darmois construction for "
                "a nonlinear decoder (conditional CDFs with no closed form) is not checked",
    models=("ima",),
    faults=("ml_cannot_tell",),
)
def check_c15(ctx: Context, fault: str | None) -> Results:
    from theory.exact import c_ima_expr

    out: Results = []
    # (1) rotations: f∘R
    sym = ctx.sym("ima")
    rot = _rotated(sym, ROTATION_345)
    res_f, res_r = ctx.sweep("ima"), _sweep_of(ctx, rot)
    c_r = res_r[0].c_ima - res_f[0].c_ima
    out.extend(_spurious_checks("ima vs ima∘R", res_f, res_r, 0.0 if fault == "ml_cannot_tell" else c_r))
    Jr = rot.jacobian().subs(dict(zip(rot.latents, rot.points[0])))
    val = sp.N(c_ima_expr(Jr), 30)
    out.append(at_least("symbolic c_IMA(f∘R, R⁻¹z0) > 0 while f is IMA-class", "symbolic", float(val), 0.0, "exact (30 digits)"))
    # (2) the Darmois construction of a linear IMA-class decoder
    f, fD, Sigma = darmois_pair(sym)
    zs = sp.Matrix(f.latents)
    same_law = sp.simplify(fD.decoder.jacobian(zs) * fD.decoder.jacobian(zs).T - Sigma) == sp.zeros(2, 2)
    out.append(boolean_check("Darmois: L Lᵀ = O D² Oᵀ exactly, so f_D pushes N(0, I) to the law of the data", "symbolic", same_law))
    lower = fD.decoder.jacobian(zs)[0, 1] == 0
    out.append(boolean_check("Darmois: f_D is triangular (x1 depends on z1 only), as the construction requires", "symbolic", lower))
    cD = c_ima_expr(fD.decoder.jacobian(zs))
    out.append(at_least("symbolic c_IMA(f_D) > 0 = c_IMA(O·D)", "symbolic", float(sp.N(cD, 30)), 0.0, "exact (30 digits)",
                        c_ima_darmois=str(sp.nsimplify(cD))))
    res_a, res_d = _sweep_of(ctx, f), _sweep_of(ctx, fD)
    out.extend(_spurious_checks("O·D vs its Darmois construction", res_a, res_d, 0.0 if fault == "ml_cannot_tell" else float(sp.N(cD, 30))))
    return out


@claim(
    id="C16", title="Next order (beyond the paper)", kind="asymptotic",
    statement="gap = c_IMA + a1 ε + O(ε²), μ* = z0 + μ1 ε + O(ε²), s_k* = s1_k ε + s2_k ε² + O(ε³), derived symbolically and confirmed numerically.",
    latex=r"\mathrm{gap} = c_{\mathrm{IMA}} + a_1\varepsilon + O(\varepsilon^2),\ \mu^* = z_0 + \mu_1\varepsilon + O(\varepsilon^2),\ s^*_k = s_{1,k}\varepsilon + s_{2,k}\varepsilon^2 + O(\varepsilon^3)",
    paper="not in the paper (gapcheck's own derivation, docs/derivations.md)",
    assumptions="f and ℓ smooth (C³ at least), x = f(z0), injective",
    models=("linear", "triangular", "ima", "embedding", "curved", "mlp"),
    faults=("linear_a1",),
)
def check_c16(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name in _models(ctx, ("linear", "triangular", "ima", "embedding", "curved", "mlp"), QUICK_MODELS):
        exp = ctx.expansion(name)
        a1 = _f(exp.a1)
        if fault == "linear_a1":
            J = jac_at(ctx, name).cpu().numpy()
            M = J.T @ J
            a1 = 0.5 * (np.sum(1 / np.diag(M)) - np.trace(np.linalg.inv(M)))
        res = ctx.sweep(name, ctx.fit_gamma2)
        eps, gap, err = gap_eps(res)
        c = _f(exp.c_ima)
        pf = poly_fit(eps, (gap - c) / eps, err / eps, 2)
        out.append(within(f"{name}: Richardson a1 vs symbolic a1", "numerical", abs(float(pf.coef[0]) - a1),
                          a1_tolerance(a1, float(pf.stderr[0])), A1_SOURCE,
                          fitted=float(pf.coef[0]), symbolic=a1))
        out.extend(_mu1_check(ctx, name, None))
        s2 = np.array([_f(v) for v in exp.s2])
        fitted = _s2_fit(ctx, name)
        rel = float(np.max(np.abs(fitted - s2) / np.maximum(np.abs(s2), 1e-3)))
        out.append(within(f"{name}: Richardson s2 vs symbolic s2 (relative)", "numerical", rel, 1e-4, f"{FIT_PRECISION:g} relative ({FIT_SOURCE})",
                          fitted=fitted.tolist(), symbolic=s2.tolist()))
        J = jac_at(ctx, name).cpu().numpy()
        s1 = np.array([_f(v) for v in exp.s1])
        out.append(within(f"{name}: symbolic s1 vs 1/‖J_k‖² (numeric)", "symbolic", float(np.max(np.abs(s1 * (J * J).sum(0) - 1))), 1e-13,
                          "float64 evaluation of ‖J_k‖²"))
    return out

