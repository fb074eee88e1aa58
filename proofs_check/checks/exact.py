"""Exact claims C1–C6: statements that hold at every γ²."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch

from numerics.elbo import elbo_gh
from numerics.fits import poly_fit
from numerics.jacobian import c_ima_from_jacobian, jacobian
from numerics.posterior import find_modes, log_marginal_gh

from ..bridge import point_tensor
from ..context import Context
from ..properties import run_property
from ..registry import claim, within
from .evidence import A1_SOURCE, Results, a1_tolerance, boolean_check, gap_eps, symbolic_equal
from .faults import contrast_variant


def _gauss_kl(mq: np.ndarray, sq: np.ndarray, mp: np.ndarray, Lam: np.ndarray) -> float:
    """KL(N(mq, diag sq) || N(mp, Λ⁻¹)) in closed form."""
    d = len(mq)
    dm = mq - mp
    return 0.5 * (float(np.sum(np.diag(Lam) * sq)) + float(dm @ Lam @ dm) - d - np.linalg.slogdet(Lam)[1] - float(np.sum(np.log(sq))))


@claim(
    id="C1", title="ELBO identity", kind="exact",
    statement="log p_γ(x) − ELBO(x; μ, s) = KL(q ‖ p_γ(z|x)) ≥ 0 for every q.",
    latex=r"\log p_\gamma(x) - \mathrm{ELBO}(x;\mu,s) = \mathrm{KL}(q\,\|\,p_\gamma(z|x)) \ge 0",
    paper="background: the standard variational identity behind the ELBO",
    assumptions="any decoder, any prior, any Gaussian q",
    models=("linear", "triangular"),
    faults=("entropy_without_e",),
)
def check_c1(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    shift = -0.5 * 2 if fault == "entropy_without_e" else 0.0  # ½Σ log(2π s) instead of ½Σ log(2πe s): −d/2
    # numerical: linear model, KL in closed form (independent of the quadrature code)
    m = ctx.num("linear")
    A = np.array([[float(v) for v in row] for row in ctx.sym("linear").decoder.jacobian(ctx.sym("linear").latents).tolist()])
    z0 = point_tensor(ctx.point("linear"), ctx.torch_device)
    x = m.decoder(z0)
    rng = np.random.default_rng(ctx.seed)
    worst = 0.0
    tol = 0.0
    for g2 in (0.1, 10.0, 1e4):
        pm = find_modes(m, x[None], [g2], z0[None])[0]
        lp = log_marginal_gh(m, pm)
        Lam = np.eye(2) + g2 * A.T @ A
        post_mean = np.linalg.solve(Lam, g2 * A.T @ x.cpu().numpy())
        for _ in range(3):
            mq = post_mean + rng.normal(size=2) * 0.5 / math.sqrt(g2)
            sq = np.exp(rng.normal(size=2)) / np.diag(Lam)
            e = elbo_gh(m, x, g2, torch.tensor(mq, device=x.device), torch.tensor(sq, device=x.device), reduced=True)
            lhs = lp.value - (e.value + shift)
            kl = _gauss_kl(mq, sq, post_mean, Lam)
            worst = max(worst, abs(lhs - kl))
            tol = max(tol, min(10 * (lp.error + e.error) + 1e-12, 1e-9))
    out.append(within("linear model: log p − ELBO(q) equals the closed-form KL(q‖posterior) for random q", "numerical",
                      worst, tol, "10 x (reported quadrature errors of log p and ELBO) + 1e-12 (closed-form KL in float64), "
                      "capped at 1e-9 (the stated accuracy of log p and ELBO at γ² ≤ 1e4, with margin)"))

    # property: ≥ 0 on a nonlinear model for random q
    tri = ctx.num("triangular")
    zt = point_tensor(ctx.point("triangular"), ctx.torch_device)
    xt = tri.decoder(zt)
    posts = {g2: find_modes(tri, xt[None], [g2], zt[None])[0] for g2 in (1.0, 100.0)}
    lps = {g2: log_marginal_gh(tri, pm) for g2, pm in posts.items()}
    from hypothesis import strategies as st

    def pred(ex):
        g2, dm1, dm2, ls1, ls2 = ex
        mu = zt + torch.tensor([dm1, dm2], dtype=torch.float64, device=zt.device) / math.sqrt(g2)
        s = torch.exp(torch.tensor([ls1, ls2], dtype=torch.float64, device=zt.device)) / g2
        e = elbo_gh(tri, xt, g2, mu, s, reduced=True)
        kl = lps[g2].value - (e.value + shift)
        return kl >= -(lps[g2].error + e.error), f"γ²={g2}, μ−z0={[dm1 / math.sqrt(g2), dm2 / math.sqrt(g2)]}, log(γ² s)={[ls1, ls2]}: log p − ELBO = {kl:.3e} < 0"

    strat = st.tuples(st.sampled_from([1.0, 100.0]), *[st.floats(-2, 2)] * 2, *[st.floats(-2, 2)] * 2)
    out.append(run_property("triangular model: log p − ELBO(q) ≥ 0 for random q", strat, pred, ctx.n_samples(10, 25, 100)))

    # symbolic: for the linear-Gaussian model the identity holds exactly
    from theory.exact import EPS, LinearGaussian

    lg = LinearGaussian.from_lists(ctx.sym("linear").decoder.jacobian(ctx.sym("linear").latents).tolist())
    mus = sp.symbols("m1 m2", real=True)
    ss = sp.symbols("s1 s2", positive=True)
    zz = ctx.point("linear")
    eps_v = sp.Rational(1, 10)
    lhs = lg.log_px(zz, eps_v) - lg.elbo(zz, mus, ss, eps_v) - (sp.Integer(1) if fault == "entropy_without_e" else 0)
    Lam = lg.precision(eps_v)
    pmean = lg.posterior_mean(zz, eps_v)
    dmv = sp.Matrix(mus) - pmean
    kl = (sum(Lam[k, k] * ss[k] for k in range(2)) + (dmv.T * Lam * dmv)[0] - 2 - sp.log(Lam.det()) - sum(sp.log(s) for s in ss)) / 2
    diff = sp.simplify(sp.expand_log(lhs - kl, force=True))
    out.append(boolean_check("linear model (ε = 1/10, symbolic μ, s): log p − ELBO − KL simplifies to 0", "symbolic", diff == 0, residual=str(diff)[:200]))
    _ = EPS
    return out


@claim(
    id="C2", title="Mean-field Gaussian lemma", kind="exact",
    statement="For a Gaussian target with precision Λ the best mean-field Gaussian keeps the mean, has s_k = 1/Λ_kk and KL = ½(Σ log Λ_kk − log det Λ).",
    latex=r"s_k = 1/\Lambda_{kk},\quad \mathrm{KL} = \tfrac12\big(\textstyle\sum_k \log\Lambda_{kk} - \log\det\Lambda\big)",
    paper="lemma used in the proof of the ELBO limit (mean-field Gaussian approximation of a Gaussian)",
    assumptions="Λ symmetric positive definite",
    models=(),
    faults=("marginal_variances",),
)
def check_c2(ctx: Context, fault: str | None) -> Results:
    from scipy.optimize import minimize

    from theory.exact import mean_field_gaussian_lemma

    out: Results = []
    for d in ((2,) if ctx.mode == "quick" else (2, 3)):
        lem = mean_field_gaussian_lemma(d)
        out.append(boolean_check(f"d = {d}: stationary s_k = 1/Λ_kk and minimal KL proved for a generic SPD Λ", "symbolic", lem.verified))

    from ..strategies import spd_matrices

    def pred(m):
        Lam = m.array
        d = Lam.shape[0]

        def kl(logs):
            s = np.exp(logs)
            return 0.5 * (np.sum(np.diag(Lam) * s) - d - np.linalg.slogdet(Lam)[1] - np.sum(logs))

        best = minimize(kl, np.zeros(d), method="BFGS", options={"gtol": 1e-12})
        claimed_s = np.diag(np.linalg.inv(Lam)) if fault == "marginal_variances" else 1 / np.diag(Lam)
        claimed_kl = kl(np.log(claimed_s))
        formula = 0.5 * (np.sum(np.log(np.diag(Lam))) - np.linalg.slogdet(Lam)[1])
        # tolerance 1e-8: BFGS with gtol 1e-12 on a convex objective whose curvature at the
        # optimum is ½Λ_kk s_k = ½ in every log s_k whatever the scale of Λ (value error ~ gtol²);
        # 1e-10 between two float64 evaluations of the same sums of logs (|terms| ≤ 20)
        ok = abs(claimed_kl - best.fun) <= 1e-8 and abs(formula - claimed_kl) <= 1e-10
        return ok, f"{m!r}: KL at claimed s = {claimed_kl:.12g}, numerical minimum = {best.fun:.12g}, formula = {formula:.12g}"

    out.append(run_property("random SPD Λ = D(BBᵀ + τI)D (d ≤ 4): numerical KL minimum equals the lemma's value at s = 1/Λ_kk",
                            spd_matrices(4), pred, ctx.n_samples(15, 40, 150)))
    return out



@claim(
    id="C3", title="Hadamard inequality", kind="exact",
    statement="c_IMA ≥ 0, with equality iff the columns of J are orthogonal.",
    latex=r"c_{\mathrm{IMA}}(f,z) \ge 0,\ = 0 \iff J_k^\top J_l = 0\ (k \ne l)",
    paper="IMA background: the contrast is non-negative by Hadamard's inequality",
    assumptions="J of full column rank, n ≥ d",
    models=(),
    faults=("missing_half",),
)
def check_c3(ctx: Context, fault: str | None) -> Results:
    from ..strategies import matrices, orthogonal_column_matrices

    out: Results = []

    def nonneg(m):
        c = contrast_variant(m.array, fault)
        # tolerance: c is a sum of d ≤ 5 logs of ratios in [0, 1] computed to ~1e-15 each
        return c >= -1e-13, f"{m!r}: contrast = {c:.3e} < 0"

    def zero_iff_orth(m):
        c = contrast_variant(m.array, fault)
        # tolerance: Householder Q is orthonormal to ~n·u, so each of the d ≤ 5 terms is ~1e-15
        return abs(c) <= 1e-12, f"{m!r}: contrast = {c:.3e} ≠ 0"

    kinds = lambda m: {"kind": m.kind, "d": m.shape[1], "n": m.shape[0]}  # noqa: E731
    out.append(run_property("random J (2 ≤ d ≤ 5, n ≥ d, half near-singular with column-normalized cond 1e2–1e4): contrast ≥ 0",
                            matrices(min_d=2), nonneg, ctx.n_samples(40, 100, 400), summarize=kinds))
    out.append(run_property("orthogonal-column J (2 ≤ d ≤ 5): contrast = 0", orthogonal_column_matrices(min_d=2), zero_iff_orth,
                            ctx.n_samples(40, 100, 400), summarize=kinds))
    # symbolic: for d = 2, exp(2 c_IMA) = ‖a‖²‖b‖²/(‖a‖²‖b‖² − (a·b)²) (Lagrange identity), so c ≥ 0, = 0 iff a·b = 0
    a = sp.Matrix(sp.symbols("a1:4", real=True))
    b = sp.Matrix(sp.symbols("b1:4", real=True))
    J = a.row_join(b)
    from theory.exact import c_ima_expr

    c = c_ima_expr(J)
    if fault == "missing_half":
        c = c - sp.log((J.T * J).det()) / 2
    lagrange = sp.simplify((J.T * J).det() - (a.dot(a) * b.dot(b) - a.dot(b) ** 2)) == 0
    target = -sp.log(1 - a.dot(b) ** 2 / (a.dot(a) * b.dot(b))) / 2
    same = sp.simplify(sp.expand_log(sp.exp(2 * c) - sp.exp(2 * target), force=True)) == 0
    out.append(boolean_check("n = 3, d = 2 symbolic: c_IMA = −½ log(1 − cos²∠(J1, J2)) (Lagrange identity)", "symbolic", lagrange and same))
    return out


@claim(
    id="C4", title="Invariances of c_IMA", kind="exact",
    statement="c_IMA is unchanged by J → JD, J → JP, J → OJ, and c_IMA(f∘h, z) = c_IMA(f, h(z)) for elementwise h.",
    latex=r"c_{\mathrm{IMA}}(JD)=c_{\mathrm{IMA}}(JP)=c_{\mathrm{IMA}}(OJ)=c_{\mathrm{IMA}}(J),\ c_{\mathrm{IMA}}(f\circ h,z)=c_{\mathrm{IMA}}(f,h(z))",
    paper="IMA background: invariances of the local contrast",
    assumptions="D diagonal invertible, P permutation, O orthogonal, h elementwise diffeomorphism",
    models=("triangular",),
    faults=("no_logdet",),
)
def check_c4(ctx: Context, fault: str | None) -> Results:
    from hypothesis import strategies as st

    from ..strategies import invariance_cases

    out: Results = []

    def invariant(ex):
        Jm, D, perm, O = ex
        J = Jm.array
        P = np.eye(J.shape[1])[:, list(perm)]
        base = contrast_variant(J, fault)
        errs = {k: abs(contrast_variant(M, fault) - base) for k, M in (("JD", J @ D.array), ("JP", J @ P), ("OJ", O.array @ J))}
        # tolerance 1e-11: Householder QR has a columnwise backward error, so each term
        # log(‖J_k‖/|R_kk|) is off by ≲ u·κ, κ ≤ 1e4 the column-normalized condition number:
        # d·u·κ ≤ 5·1.1e-16·1e4 ≈ 6e-12 (2.6e-12 the largest seen in 600 examples)
        bad = {k: v for k, v in errs.items() if v > 1e-11}
        return not bad, f"J = {Jm!r}, D = {D!r}, column permutation {perm}, O = {O!r}: contrast changed by {bad}"

    out.append(run_property("random J (2 ≤ d ≤ 4, half near-singular): invariance to column scaling, permutation, orthogonal O",
                            invariance_cases(4, 2, 2), invariant, ctx.n_samples(30, 80, 300),
                            summarize=lambda ex: {"kind": ex[0].kind, "d": ex[0].shape[1], "n": ex[0].shape[0]}))

    # reparametrization: c_IMA(f∘h, z) = c_IMA(f, h(z)) with f the triangular model, h elementwise
    f = ctx.num("triangular").decoder

    def h(z: torch.Tensor) -> torch.Tensor:
        return z + 0.3 * torch.tanh(z) + 0.1 * z**3

    def reparam(ex):
        z = torch.tensor(ex, dtype=torch.float64)
        if fault == "no_logdet":
            Jfh = jacobian(lambda u: f(h(u)), z).numpy()
            Jf = jacobian(f, h(z)).numpy()
            a, b = contrast_variant(Jfh, fault), contrast_variant(Jf, fault)
        else:
            a = float(c_ima_from_jacobian(jacobian(lambda u: f(h(u)), z)))
            b = float(c_ima_from_jacobian(jacobian(f, h(z))))
        return abs(a - b) <= 1e-12, f"z={ex}: c(f∘h, z) = {a:.15g} vs c(f, h(z)) = {b:.15g}"

    out.append(run_property("triangular f, h(z) = z + 0.3 tanh z + 0.1 z³: c_IMA(f∘h, z) = c_IMA(f, h(z))",
                            st.tuples(st.floats(-2, 2), st.floats(-2, 2)), reparam, ctx.n_samples(20, 50, 200)))
    from theory.exact import invariance_checks

    J = sp.Matrix(2, 2, sp.symbols("j11 j12 j21 j22", real=True))
    D = sp.diag(*sp.symbols("d1 d2", positive=True))
    P = sp.Matrix([[0, 1], [1, 0]])
    th = sp.Symbol("theta", real=True)
    O = sp.Matrix([[sp.cos(th), -sp.sin(th)], [sp.sin(th), sp.cos(th)]])
    if fault == "no_logdet":
        norms = lambda K: sum(sp.log((K.T * K)[k, k]) for k in range(2)) / 2  # noqa: E731
        ok = sp.simplify(sp.expand_log(norms(J * D) - norms(J), force=True)) == 0
        out.append(boolean_check("2x2 symbolic J: contrast invariant under J → JD", "symbolic", ok))
    else:
        res = invariance_checks(J, D, P, O)
        out.append(boolean_check("2x2 symbolic J: c_IMA invariant under JD, JP, OJ (sympy)", "symbolic", all(res.values()), **res))
    return out


@claim(
    id="C5", title="Linear–Gaussian model in closed form", kind="exact",
    statement="For f(z) = Az and a Gaussian prior: Λ = diag(1/v) + γ²AᵀA, gap = ½(Σ log Λ_kk − log det Λ) → c_IMA(A), first-order term ε·½(Σ 1/M_kk − tr M⁻¹) for v = 1.",
    latex=r"\mathrm{gap} = \tfrac12\big(\textstyle\sum_k\log\Lambda_{kk}-\log\det\Lambda\big) = c_{\mathrm{IMA}}(A) + \tfrac{\varepsilon}{2}\big(\textstyle\sum_k M_{kk}^{-1} - \mathrm{tr}\,M^{-1}\big) + O(\varepsilon^2)",
    paper="not stated in this form; the linear-Gaussian special case of the gap result",
    assumptions="linear decoder, Gaussian prior",
    models=("linear",),
    faults=("wrong_first_order",),
)
def check_c5(ctx: Context, fault: str | None) -> Results:
    from theory.exact import EPS, LinearGaussian, linear_gaussian_first_order_generic

    out: Results = []
    coeff, ok = linear_gaussian_first_order_generic(2)
    out.append(boolean_check("generic 2x2 SPD M: d/dε gap at 0 simplifies to ½(Σ 1/M_kk − tr M⁻¹)", "symbolic", ok, coefficient=str(coeff)))
    sym = ctx.sym("linear")
    A = sym.decoder.jacobian(sym.latents)
    lg = LinearGaussian.from_lists(A.tolist())
    M = A.T * A
    claimed_a1 = (sum(1 / M[k, k] for k in range(2)) - (M.inv().trace() if fault != "wrong_first_order" else M.trace())) / 2
    series = lg.series(lg.gap(), order=2)
    out.append(symbolic_equal("linear model: ε-coefficient of the exact gap vs claimed first-order term", series[1], claimed_a1))
    # numerical: evaluate vs the closed form over γ² from 1e-2 to 1e8
    g2s = [1e-2, 1.0, 1e2, 1e4, 1e6, 1e8]
    res = ctx.sweep("linear", g2s)
    zz = ctx.point("linear")
    lp_f = sp.lambdify(EPS, lg.log_px_reduced(zz), "mpmath")
    el_f = sp.lambdify(EPS, lg.elbo_star_reduced(zz), "mpmath")
    import mpmath

    worst = 0.0
    with mpmath.workdps(30):
        for r in res:
            e = mpmath.mpf(1) / mpmath.mpf(r.gamma2)
            worst = max(worst, abs(float(lp_f(e)) - r.reduced_log_px), abs(float(el_f(e)) - r.reduced_elbo_star))
    out.append(within("linear model: log p and ELBO* (reduced) vs closed form (30 digits), γ² = 1e-2..1e8", "numerical", worst, 1e-11,
                      "the stated accuracy of log p and ELBO* for γ² ≤ 1e8: 1e-11 (their reported error estimates are ≤ 5e-11 at γ² = 1e8)"))
    fit_res = ctx.sweep("linear", ctx.fit_gamma2)
    eps, gap, err = gap_eps(fit_res)
    c = float(lg.c_ima())
    pf = poly_fit(eps, (gap - c) / eps, err / eps, 2)
    out.append(within("linear model: Richardson fit of (gap − c_IMA)/ε vs claimed first-order term", "numerical",
                      abs(pf.coef[0] - float(claimed_a1)), a1_tolerance(float(claimed_a1), float(pf.stderr[0])), A1_SOURCE,
                      fitted=float(pf.coef[0]), claimed=float(claimed_a1)))
    return out


@claim(
    id="C6", title="β-VAE equivalence", kind="exact",
    statement="β-ELBO at precision γ² = β × ELBO at precision γ²/β + const(n, β, γ); same optimal encoder.",
    latex=r"\mathrm{ELBO}_\beta(\gamma^2) = \beta\,\mathrm{ELBO}(\gamma^2/\beta) + \tfrac n2\log\tfrac{\gamma^2}{2\pi} - \tfrac{\beta n}{2}\log\tfrac{\gamma^2}{2\pi\beta}",
    paper="remark on β-VAEs (a β-weighted ELBO is a plain ELBO at rescaled decoder variance)",
    assumptions="β > 0; β-ELBO = E_q log p_γ(x|z) − β KL(q‖p0)",
    models=("triangular",),
    faults=("wrong_constant",),
)
def check_c6(ctx: Context, fault: str | None) -> Results:
    from numerics.quadrature import gauss_hermite
    from theory.exact import beta_vae_identity

    out: Results = []
    bi = beta_vae_identity()
    out.append(boolean_check("β-ELBO(γ²) − β·ELBO(γ²/β) simplifies to n/2 log(γ²/2π) − βn/2 log(γ²/(2πβ))", "symbolic", bi.verified, constant=str(bi.constant)))
    m = ctx.num("triangular")
    z0 = point_tensor(ctx.point("triangular"), ctx.torch_device)
    x = m.decoder(z0)
    n, d = m.n, m.d
    rng = np.random.default_rng(ctx.seed)
    nodes, logw = gauss_hermite(40, d, device=z0.device)
    w = torch.exp(logw)
    worst, tol = 0.0, 0.0
    for beta in (0.5, 2.0, 4.0):
        for g2 in (5.0, 50.0):
            mu = z0 + torch.tensor(rng.normal(size=d) * 0.1, device=z0.device)
            s = torch.tensor(np.exp(rng.normal(size=d)) * 0.05, device=z0.device)
            z = mu + torch.sqrt(s) * nodes
            r = x - m.decoder(z)
            e_loglik = 0.5 * n * math.log(g2 / (2 * math.pi)) - 0.5 * g2 * float((w * (r * r).sum(-1)).sum())
            kl = -float((w * m.prior.log_prob(z)).sum()) - 0.5 * float(torch.log(2 * math.pi * math.e * s).sum())
            beta_elbo = e_loglik - beta * kl
            plain = elbo_gh(m, x, g2 / beta, mu, s)
            const = 0.5 * n * math.log(g2 / (2 * math.pi)) - 0.5 * beta * n * math.log(g2 / (2 * math.pi * beta))
            if fault == "wrong_constant":
                const = 0.5 * n * math.log(g2 / (2 * math.pi)) - 0.5 * n * math.log(g2 / (2 * math.pi * beta))
            worst = max(worst, abs(beta_elbo - (beta * plain.value + const)))
            tol = max(tol, min(10 * beta * plain.error + 1e-12, 1e-9))  # capped: the stated accuracy of ELBO, with margin
    out.append(within("triangular model, random q, β ∈ {0.5, 2, 4}: β-ELBO(γ²) = β ELBO(γ²/β) + const", "numerical", worst, tol,
                      "10 x β x (reported GH error of ELBO) + 1e-12 (40-node GH of the β-ELBO, converged for these narrow q), capped at 1e-9"))
    return out

