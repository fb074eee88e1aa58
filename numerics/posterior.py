"""Posterior modes and the marginal likelihood log p_γ(x) by Laplace-centred, posterior-scaled
tensor Gauss–Hermite quadrature (docs/theory.md: log p_γ(x) = log ∫ p0(z) p_γ(x|z) dz).

Conventions.  ε = γ⁻².  The *reduced* log-likelihood drops the divergent term:

    log_px_red = log p_γ(x) − (n−d)/2 · log(γ²/2π)
               = d/2 · log(γ²/2π) + log ∫ exp φ(z) dz,   φ(z) = −γ²/2 ‖x − f(z)‖² + ℓ(z).

Around each posterior mode ẑ_j, with H̃_j = −∇²(εφ)(ẑ_j) = R̃_j R̃_jᵀ (Cholesky), the scaled
coordinates z = ẑ_j + √ε R̃_j^{-T} u make the integrand ≈ N(u; 0, I); the integral is

    log_px_red = −Σ_k log R̃_kk + log E_{u~N(0,I)}[exp(φ(z(u)) + |u|²/2)]    (one mode),

a sum of O(1) terms at every γ² (no cancellation between large numbers).  Several modes
(a decoder that is not injective near x) are combined with a partition of unity
w_j(z) = a_j q_j(z)² / Σ_i a_i q_i(z)² built from the Laplace Gaussians q_j (a_j from the masses):
∫ e^φ = Σ_j ∫ e^φ w_j, each term integrated in the coordinates of its own mode.  This is
exact whatever the overlap of the modes.

Memory: the log-sum-exp over the nodes runs in chunks of nodes sized to a byte budget
(:class:`IntegrationRule`), so no array grows as (nodes × modes) past ``max_memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import hessian, vmap

from .estimate import Estimate
from .models import Model
from .optimize import ConvergenceError, NewtonResult, allocation_probe, as_objective, model_costs, newton_maximize
from .quadrature import (
    DEFAULT_MAX_MEMORY,
    LOG_2PI,
    UNIT_ROUNDOFF,
    MemoryBudgetError,
    TensorRule,
    format_bytes,
    gauss_hermite,
    refinement_levels,
)

Tensor = torch.Tensor

#: Modes whose Laplace mass is below e^-40 of the largest are dropped (relative effect < 5e-18).
MODE_MASS_CUTOFF = 40.0
#: Width δ (relative to the prior's scale) of the smoothing √(y² + δ²) of |y| used to locate a
#: posterior mode that sits on a kink of the prior (:func:`find_modes`).
KINK_WIDTH = 1e-9


def scaled_log_joint(model: Model, kink_width: float = 0.0):
    """φ̃(z; x, ε) = ε·φ(z) = −½‖x − f(z)‖² + ε ℓ(z), for one item (z of shape (d,)).

    ``kink_width`` δ > 0 replaces every kink |t − c| of the prior by √((t − c)² + δ²)
    (:meth:`numerics.models.Prior1D.smoothed_log_prob`): a smooth surrogate used only to locate
    a posterior mode that sits on a kink (see :func:`find_modes`)."""

    def fn(z: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        r = x - model.decoder(z)
        if kink_width > 0:
            ell = sum(f.smoothed_log_prob(z[..., k], kink_width) for k, f in enumerate(model.prior.factors))
        else:
            ell = model.prior.log_prob(z)
        return -0.5 * (r * r).sum() + eps * ell

    return fn


def _is_linalg_failure(exc: BaseException) -> bool:
    return isinstance(exc, torch.linalg.LinAlgError) or (isinstance(exc, RuntimeError) and "linalg" in str(exc))


def newton_robust(fun, x0: Tensor, args: tuple[Tensor, ...] = (), **kwargs) -> NewtonResult:
    """:func:`numerics.optimize.newton_maximize`, with failures confined to the items that cause
    them: items whose start has a non-finite value, gradient or Hessian are not run, and when
    the batched run still fails in linear algebra (a Hessian that turns non-finite on the way,
    e.g. near a singularity of log or sqrt) every item is rerun alone.  Failed items come back
    with ``converged`` False and NaN values, so callers report them by name instead of crashing.
    ``fun``: a one-item function or an :class:`numerics.optimize.Objective`."""
    obj = as_objective(fun)
    B = x0.shape[0]
    with torch.no_grad():
        v0 = obj.value(x0, args)
        g0, h0 = obj.derivatives(x0, args)
    ok = torch.isfinite(v0) & torch.isfinite(g0).all(-1) & torch.isfinite(h0).flatten(1).all(-1)

    def failed(n: int) -> NewtonResult:
        nan = torch.full((n,), float("nan"), dtype=x0.dtype, device=x0.device)
        p = x0.shape[1]
        return NewtonResult(x0[:n].clone(), nan, torch.full((n, p), float("nan"), dtype=x0.dtype, device=x0.device),
                            torch.full((n, p, p), float("nan"), dtype=x0.dtype, device=x0.device), nan.clone(),
                            torch.zeros(n, dtype=torch.bool, device=x0.device), 0)

    def run(idx: Tensor) -> NewtonResult:
        sub = tuple(a[idx] for a in args)
        noise = kwargs.get("value_noise")
        kw = dict(kwargs, value_noise=None if noise is None else noise[idx])
        return newton_maximize(obj, x0[idx], sub, start=(v0[idx], g0[idx], h0[idx]), **kw)

    out = failed(B)
    out.x = x0.clone()
    good = ok.nonzero().flatten()
    if good.numel() == 0:
        return out
    try:
        parts = [(good, run(good))]
    except Exception as exc:  # noqa: BLE001 - only linear-algebra failures are confined, the rest re-raised
        if not _is_linalg_failure(exc):
            raise
        parts = []
        for i in good.tolist():
            idx = torch.tensor([i], device=x0.device)
            try:
                parts.append((idx, run(idx)))
            except Exception as exc_i:  # noqa: BLE001
                if not _is_linalg_failure(exc_i):
                    raise
    for idx, res in parts:
        fin = torch.isfinite(res.value) & torch.isfinite(res.x).all(-1) & torch.isfinite(res.hess).flatten(1).all(-1)
        out.x[idx] = res.x
        out.value[idx] = res.value
        out.grad[idx] = res.grad
        out.hess[idx] = res.hess
        out.decrement[idx] = res.decrement
        out.converged[idx] = res.converged & fin
        out.iterations = max(out.iterations, res.iterations)
    return out


def refinement_error(values: list[float], tol_abs: float) -> tuple[float, bool]:
    """Error estimate and convergence of a refinement sequence v_1, v_2, … (nodes doubling).

    With δ_j = |v_j − v_{j−1}| and r = δ_last/δ_prev: the sequence has converged when δ_last ≤
    ``tol_abs``, or when it converges fast (r ≤ 0.1) and the geometric tail δ_last·r/(1 − r)
    left after the last level is ≤ ``tol_abs``; the error estimate is then δ_last (an upper
    bound on the tail).  Otherwise it has not converged and the error must not claim converged
    accuracy: δ_last/(1 − r) (the geometric tail including the last step) when the steps shrink
    (r < 1), else the largest step seen.  ``inf`` with fewer than two values."""
    if len(values) < 2:
        return math.inf, False
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    last = diffs[-1]
    if not math.isfinite(last):
        return math.inf, False
    if last <= tol_abs:
        return last, True
    r = last / diffs[-2] if len(diffs) >= 2 and diffs[-2] > 0 else math.inf
    if r <= 0.1 and last * r / (1 - r) <= tol_abs:
        return last, True
    if r < 1:
        return last / (1 - r), False
    return max(diffs), False


def log_joint(model: Model, z: Tensor, x: Tensor, gamma2: float) -> Tensor:
    """φ(z) = −γ²/2 ‖x − f(z)‖² + ℓ(z) for a batch z (..., d) (log p0(z) p_γ(x|z) without
    its constant n/2 · log(γ²/2π))."""
    r = x - model.decoder(z)
    return -0.5 * gamma2 * (r * r).sum(-1) + model.prior.log_prob(z)


@dataclass
class PosteriorModes:
    """Local maxima ẑ_j of the posterior p_γ(z|x), with scaled Cholesky factors R̃_j of
    H̃_j = ε·(−∇²φ(ẑ_j)) and Laplace log-masses m_j (reduced: without (n−d)/2 log(γ²/2π))."""

    x: Tensor
    gamma2: float
    modes: Tensor  # (m, d)
    chol: Tensor  # (m, d, d) lower Cholesky factors R̃_j
    log_mass: Tensor  # (m,)
    dropped: int = 0  # local maxima found but negligible (mass < e^-40 of the largest)

    @property
    def eps(self) -> float:
        return 1.0 / self.gamma2

    @property
    def count(self) -> int:
        return int(self.modes.shape[0])

    def scale(self, j: int) -> Tensor:
        """L_j = √ε R̃_j^{-T}: z = ẑ_j + L_j u maps N(0, I) to the Laplace Gaussian of mode j."""
        eye = torch.eye(self.modes.shape[1], dtype=self.modes.dtype, device=self.modes.device)
        Rinv = torch.linalg.solve_triangular(self.chol[j], eye, upper=False)
        return math.sqrt(self.eps) * Rinv.T


def _starts(z_init: Tensor | None, model: Model, num_random: int, seed: int, device) -> Tensor:
    d = model.d
    pts = []
    if z_init is not None:
        pts.append(z_init)
        if d <= 5:  # sign-flip reflections: the preimages of symmetric non-injective maps
            for mask in range(1, 2**d):
                s = torch.tensor([(-1.0 if (mask >> k) & 1 else 1.0) for k in range(d)], dtype=z_init.dtype, device=device)
                pts.append(z_init * s)
    if num_random:
        gen = torch.Generator().manual_seed(seed)
        pts.extend(model.prior.sample(num_random, gen, device=device).clamp(-20, 20))
    pts.append(torch.zeros(d, dtype=torch.float64, device=device))
    return torch.stack([p.to(device=device, dtype=torch.float64) for p in pts])


def find_modes(
    model: Model,
    xs: Tensor,
    gamma2s: list[float] | Tensor,
    z_inits: Tensor | None = None,
    search: bool = True,
    num_random: int = 8,
    seed: int = 0,
) -> list[PosteriorModes]:
    """Posterior modes for a batch of items (x_b, γ²_b), found by batched Newton from
    several starts per item: ``z_inits`` (e.g. the latent z0 that generated x), its
    sign-flip reflections and ``num_random`` prior samples (``search=False``: z_init only).

    Raises ConvergenceError when no start converges to a strict local maximum.
    """
    device = xs.device
    B = xs.shape[0]
    g2 = torch.as_tensor(gamma2s, dtype=torch.float64, device=device).reshape(B)
    starts_per = []
    for b in range(B):
        zi = None if z_inits is None else z_inits[b].to(torch.float64)
        if search or zi is None:
            starts_per.append(_starts(zi, model, num_random, seed, device))
        else:
            starts_per.append(zi.reshape(1, -1))
    counts = [s.shape[0] for s in starts_per]
    Z0 = torch.cat(starts_per)
    X = torch.cat([xs[b].expand(c, -1) for b, c in enumerate(counts)])
    E = torch.cat([(1.0 / g2[b]).expand(c) for b, c in enumerate(counts)])
    res = newton_robust(scaled_log_joint(model), Z0, (X, E), max_iter=200)
    kink_res = None
    if model.prior.kinks and not bool(res.converged.all()):
        # a posterior mode on a kink of the prior (Laplace at small γ²): Newton oscillates across it;
        # locate the mode on a smoothed surrogate, then test it with the true φ̃ below
        bad = (~res.converged).nonzero().flatten()
        kink_res = (bad, newton_robust(scaled_log_joint(model, kink_width=KINK_WIDTH), Z0[bad], (X[bad], E[bad]),
                                       max_iter=200))
    hess_true = vmap(hessian(scaled_log_joint(model)))
    out: list[PosteriorModes] = []
    offset = 0
    d = model.d
    for b, c in enumerate(counts):
        sl = slice(offset, offset + c)
        z, H, conv = res.x[sl], res.hess[sl], res.converged[sl]
        tries = [(z[i], H[i]) for i in range(c) if bool(conv[i]) and bool(torch.isfinite(z[i]).all())]
        if kink_res is not None:
            bad, kr = kink_res
            sel = ((bad >= offset) & (bad < offset + c) & kr.converged).nonzero().flatten()
            if sel.numel():
                zk = kr.x[sel]
                Hk = hess_true(zk, X[bad[sel]], E[bad[sel]])
                tries += [(zk[j], Hk[j]) for j in range(zk.shape[0]) if bool(torch.isfinite(Hk[j]).all())]
        offset += c
        cand = []
        gamma2 = float(g2[b])
        for zi, Hi in tries:
            Ht = -Hi
            Ht = 0.5 * (Ht + Ht.T)
            R, info = torch.linalg.cholesky_ex(Ht)
            if int(info) != 0:
                continue  # a saddle or a flat direction, not a strict maximum
            phi = float(log_joint(model, zi, xs[b], gamma2))
            if not math.isfinite(phi):
                continue
            lm = phi + 0.5 * d * LOG_2PI + 0.5 * d * math.log(1.0 / gamma2) - float(torch.log(torch.diagonal(R)).sum())
            cand.append((lm, zi, R))
        if not cand:
            where = (f"z0 = {[round(v, 12) for v in z_inits[b].tolist()]}" if z_inits is not None
                     else f"x = {[round(v, 12) for v in xs[b].tolist()]}")
            why = ""
            if not bool(torch.isfinite(res.value[sl]).any()):
                why = ("; log p0(z) p_γ(x|z) is not finite at the starts or along the way (is the decoder defined "
                       "on all of R^d near z0, e.g. no log or sqrt of a negative number?)")
            elif model.prior.kinks:
                why = "; the prior has a kink (ℓ not differentiable) that the mode may sit on"
            raise ConvergenceError(
                f"posterior mode search failed at {where}, γ² = {gamma2:g}: no start converged to a strict local "
                f"maximum of log p0(z) p_γ(x|z){why}"
            )
        cand.sort(key=lambda t: -t[0])
        kept: list[tuple[float, Tensor, Tensor]] = []
        dropped = 0
        gamma = math.sqrt(float(g2[b]))
        for lm, z_, R in cand:
            dup = False
            for _, zk, Rk in kept:
                # distance in the scaled coordinates u of the kept mode
                if float(torch.linalg.vector_norm(gamma * (Rk.T @ (z_ - zk)))) < 1e-3:
                    dup = True
                    break
            if dup:
                continue
            if lm < cand[0][0] - MODE_MASS_CUTOFF:
                dropped += 1
                continue
            kept.append((lm, z_, R))
        out.append(
            PosteriorModes(
                xs[b], float(g2[b]), torch.stack([k[1] for k in kept]), torch.stack([k[2] for k in kept]),
                torch.tensor([k[0] for k in kept], dtype=torch.float64, device=device), dropped,
            )
        )
    return out


def gh_rule(k: int, d: int, device) -> tuple[Tensor, Tensor]:
    """Tensor Gauss–Hermite as a rule for ∫ g(u) du ≈ Σ_i exp(logw_i) g(u_i):
    logw = log W_i + |u_i|²/2 + d/2·log 2π (W the normalized weights for N(0, I))."""
    u, logw = gauss_hermite(k, d, device=device)
    return u, logw + 0.5 * (u * u).sum(-1) + 0.5 * d * LOG_2PI


@dataclass
class IntegrationRule:
    """A rule for ∫ g(u) du ≈ Σ_i exp(logw_i) g(u_i) over R^d with ``size`` nodes, handed out in
    chunks (``chunk(start, stop) -> (u, logw)``), and the byte budget ``max_memory`` that the
    sums over its nodes must respect.  ``costs`` caches the measured bytes per node of the
    integrands (shared between rules of one evaluation)."""

    size: int
    d: int
    chunk: Any
    max_memory: int = DEFAULT_MAX_MEMORY
    costs: dict | None = None
    label: str = ""

    @classmethod
    def from_arrays(cls, u: Tensor, logw: Tensor, max_memory: int = DEFAULT_MAX_MEMORY, costs: dict | None = None) -> "IntegrationRule":
        return cls(int(u.shape[0]), int(u.shape[1]), lambda a, b: (u[a:b], logw[a:b]), max_memory, costs)

    @classmethod
    def gauss_hermite(cls, k: int, d: int, device, max_memory: int = DEFAULT_MAX_MEMORY,
                      costs: dict | None = None) -> "IntegrationRule":
        """:func:`gh_rule` (k^d nodes), generated chunk by chunk (the whole rule only when asked for)."""
        tr = TensorRule(k, d, device=device)

        def chunk(a: int, b: int) -> tuple[Tensor, Tensor]:
            if a == 0 and b >= tr.size:
                return gh_rule(k, d, device)
            u, logw = tr.chunk(a, b)
            return u, logw + 0.5 * (u * u).sum(-1) + 0.5 * d * LOG_2PI

        return cls(tr.size, d, chunk, max_memory, costs, f"{k}^{d} Gauss–Hermite")

    def nodes_per_chunk(self, key: Any, terms) -> int:
        """How many nodes one call of ``terms(u, logw)`` (the per-node log-integrand, plus its
        own temporaries) may take within the budget: measured with
        :func:`numerics.optimize.allocation_probe` (cached under ``key``).  Raises
        MemoryBudgetError when not even one node fits."""
        costs = self.costs if self.costs is not None else {}
        if key not in costs:
            costs[key] = allocation_probe(lambda n: terms(*self.chunk(0, n)), self.size)
        fixed, per = costs[key]
        per = per + 8.0 * (self.d + 1)
        n = int((self.max_memory - fixed) // per)
        if n < 1:
            raise MemoryBudgetError(f"log p: one node of the {self.label or 'quadrature'} rule needs "
                                    f"{format_bytes(fixed + per)}, more than the memory budget "
                                    f"{format_bytes(self.max_memory)} (raise --max-memory)")
        return n


def _as_rule(rule: "IntegrationRule | tuple[Tensor, Tensor]", model: Model) -> IntegrationRule:
    """``rule`` as an :class:`IntegrationRule` (arrays get the default budget); without a cost
    cache of its own it uses the model's (:func:`numerics.optimize.model_costs`)."""
    r = rule if isinstance(rule, IntegrationRule) else IntegrationRule.from_arrays(*rule)
    if r.costs is None:
        r.costs = model_costs(model).setdefault("log_px", {})
    return r


def _chunked_logsumexp(rule: IntegrationRule, terms, key: Any) -> Tensor:
    """logsumexp over all nodes of ``terms(u, logw)`` (one log-term per node), chunk by chunk
    within the rule's budget; one call when the whole rule fits (then exactly the unchunked sum)."""
    c = rule.nodes_per_chunk(key, terms)
    if c >= rule.size:
        return torch.logsumexp(terms(*rule.chunk(0, rule.size)), 0)
    parts = [torch.logsumexp(terms(*rule.chunk(a, a + c)), 0) for a in range(0, rule.size, c)]
    return torch.logsumexp(torch.stack(parts), 0)


def sinh_trapezoid_rule(h: float, d: int, device, T: float = 8.0) -> tuple[Tensor, Tensor]:
    """Product trapezoid rule in t with u = sinh(t), t ∈ [−T, T] step h, for ∫ g(u) du over R^d:
    logw = d·log h + Σ log cosh(t).  The sinh map reaches |u| ≤ sinh(8) ≈ 1490, so algebraic
    (Student-t) tails are integrated too; for integrands analytic in a strip the error falls
    like exp(−c/h), and halving h estimates it."""
    t = torch.arange(-T, T + h / 2, h, dtype=torch.float64, device=device)
    u1 = torch.sinh(t)
    lw1 = math.log(h) + torch.log(torch.cosh(t))
    grids = torch.meshgrid(*([u1] * d), indexing="ij")
    lgrids = torch.meshgrid(*([lw1] * d), indexing="ij")
    u = torch.stack([g.reshape(-1) for g in grids], -1)
    logw = sum(g.reshape(-1) for g in lgrids)
    return u, logw


def _log_integral_chart(model: Model, pm: PosteriorModes, rule: tuple[Tensor, Tensor]) -> float:
    """log_px_red with one chart for all modes: z = c + L_0 u with c the mean of the modes
    and L_0 the scale of the main mode, no partition of unity.  Used with the sinh-mapped
    trapezoid (which reaches |u| ≈ 1490) when the per-mode rules do not converge: when the
    modes are close enough for a bridge of posterior mass between them to matter, the
    partition of unity becomes steep there and spoils the convergence of the per-mode rules."""
    d = model.d
    rule = _as_rule(rule, model)
    L0 = pm.scale(0)
    c = pm.modes.mean(0)

    def terms(u: Tensor, logw: Tensor) -> Tensor:
        z = c + u @ L0.T
        psi = log_joint(model, z, pm.x, pm.gamma2)
        psi = torch.where(torch.isnan(psi), torch.full_like(psi, -math.inf), psi)
        return logw + psi

    logdet = float(-torch.log(torch.diagonal(pm.chol[0])).sum()) + 0.5 * d * math.log(pm.eps)
    return float(logdet + _chunked_logsumexp(rule, terms, ("chart", 1))) + 0.5 * d * math.log(pm.gamma2 / (2 * math.pi))


def _log_integral(model: Model, pm: PosteriorModes, rule: tuple[Tensor, Tensor]) -> float:
    """log_px_red with a rule (u, logw) for ∫ g(u) du applied per mode in its scaled
    coordinates z = ẑ_j + L_j u, combined by the partition of unity (see module doc)."""
    d = model.d
    rule = _as_rule(rule, model)
    m = pm.count
    eps = pm.eps
    terms = []
    scales = [pm.scale(j) for j in range(m)]
    logdets = [float(-torch.log(torch.diagonal(pm.chol[j])).sum()) + 0.5 * d * math.log(eps) for j in range(m)]
    log_pi = pm.log_mass - torch.logsumexp(pm.log_mass, 0)

    def mode_terms(j: int, u: Tensor, logw: Tensor) -> Tensor:
        z = pm.modes[j] + u @ scales[j].T  # (N, d)
        psi = log_joint(model, z, pm.x, pm.gamma2)
        if m > 1:
            # w_j(z) = a_j q_j(z)² / Σ_i a_i q_i(z)², a_i = π_i |det L_i|: the squared Laplace
            # Gaussians make w_j decay at the other modes faster than e^φ/q_j grows there, so
            # each term stays a single bump in its own scaled coordinates
            lq = []
            for i in range(m):
                ui = torch.linalg.solve_triangular(scales[i], (z - pm.modes[i]).T, upper=True).T
                lq.append(log_pi[i] - (ui * ui).sum(-1) - logdets[i])
            lq_t = torch.stack(lq)  # (m, N)
            psi = psi + lq_t[j] - torch.logsumexp(lq_t, 0)
        psi = torch.where(torch.isnan(psi), torch.full_like(psi, -math.inf), psi)
        return logw + psi

    for j in range(m):
        # ∫ e^φ w_j dz = |det L_j| ∫ e^{φ(ẑ_j + L_j u)} w_j du
        terms.append(logdets[j] + _chunked_logsumexp(rule, lambda u, lw, j=j: mode_terms(j, u, lw), ("modes", m)))
    log_int = torch.logsumexp(torch.stack(terms), 0)
    return float(log_int) + 0.5 * d * math.log(pm.gamma2 / (2 * math.pi))


def value_rounding(value: float) -> float:
    """Rounding of a reduced value itself: 4u·max(1, |value|).  The reduced quantities are O(1)
    for γ² ≳ 1, but for small γ² they are sums of terms like d/2·log(γ²/2π) that cancel (|value|
    ≈ 30 at γ² = 1e-12), so the last bits of |value| are noise that :func:`rounding_bound`
    (an absolute floor) does not cover."""
    return 4 * UNIT_ROUNDOFF * max(1.0, abs(value))


def rounding_bound(x: Tensor, gamma2: float, d: int) -> float:
    """Floating-point error model for the reduced quantities: the residual x − f(z) is
    O(γ⁻¹) and carries an absolute rounding error ~u‖x‖, so γ²/2‖r‖² carries ~γ·u·‖x‖·|u|;
    we take 8·u·(1 + γ‖x‖√d)."""
    return 8 * UNIT_ROUNDOFF * (1 + math.sqrt(gamma2) * float(torch.linalg.vector_norm(x)) * math.sqrt(d))


#: A kink of the prior closer than this many posterior standard deviations to a mode is "inside
#: the bulk": the Gaussian mass beyond it (e^{-800}) is far below rounding.
KINK_REACH = 40.0


def _posterior_scales(pm: PosteriorModes) -> Tensor:
    """Per-mode marginal standard deviations of the Laplace Gaussians, (m, d)."""
    eye = torch.eye(pm.modes.shape[1], dtype=pm.modes.dtype, device=pm.modes.device)
    out = []
    for j in range(pm.count):
        Rinv = torch.linalg.solve_triangular(pm.chol[j], eye, upper=False)  # H̃ = R Rᵀ, Σ = ε H̃⁻¹
        out.append(torch.sqrt(pm.eps * (Rinv * Rinv).sum(0)))
    return torch.stack(out)


def kinks_in_reach(model: Model, pm: PosteriorModes) -> list[tuple[int, float]]:
    """The kinks (k, t) of the prior within :data:`KINK_REACH` posterior standard deviations of a
    mode in z_k: where they are, the integrand e^φ of log p is not smooth in the posterior's bulk."""
    if not model.prior.kinks:
        return []
    sd = _posterior_scales(pm)
    return [(k, t) for k, t in model.prior.kinks
            if bool(((pm.modes[:, k] - t).abs() <= KINK_REACH * sd[:, k]).any())]


def _exp_sinh(a: float, sign: float, s: float, h: float, dt, dev) -> tuple[Tensor, Tensor]:
    """Half-line a → ±∞: z = a ± s·exp(π/2·sinh τ), τ ∈ [−4.2, 3.2] (nodes from 1e-23 s to 2e8 s)."""
    tau = torch.arange(-4.2, 3.2 + h / 2, h, dtype=dt, device=dev)
    e = (math.pi / 2) * torch.sinh(tau)
    return a + sign * s * torch.exp(e), math.log(h) + math.log(s) + e + torch.log((math.pi / 2) * torch.cosh(tau))


def _tanh_sinh(a: float, b: float, h: float, dt, dev) -> tuple[Tensor, Tensor]:
    """Interval [a, b]: z = (a+b)/2 + (b−a)/2·tanh(π/2·sinh τ), τ ∈ [−3.2, 3.2]."""
    tau = torch.arange(-3.2, 3.2 + h / 2, h, dtype=dt, device=dev)
    e = (math.pi / 2) * torch.sinh(tau)
    z = 0.5 * (a + b) + 0.5 * (b - a) * torch.tanh(e)
    lw = math.log(h) + math.log(0.5 * (b - a)) + torch.log((math.pi / 2) * torch.cosh(tau)) - 2 * torch.log(torch.cosh(e))
    return z, lw


def kink_split_rule(pm: PosteriorModes, kinks: list[tuple[int, float]], h: float) -> tuple[Tensor, Tensor]:
    """A product rule in z for ∫ g(z) dz over R^d, split at the kinks.

    A coordinate z_k with a kink t is cut at t and at the modes' z_k (breakpoints closer than
    1e-6 σ merged): double-exponential (tanh-sinh) rules on the pieces between breakpoints and
    exp-sinh rules on the two half-lines beyond them (scale σ, the largest marginal posterior
    standard deviation of the modes), so the nodes cluster both at the kink and at the
    posterior's peak.  Coordinates without a kink use z = c + σ·sinh(τ), τ ∈ [−8, 8] (c the mean
    of the modes).  Every piece integrates a function analytic inside it, so the error falls like
    exp(−c/h) and halving h estimates it — unlike a Gauss–Hermite rule across a kink, whose
    error is algebraic and erratic."""
    d = pm.modes.shape[1]
    dev, dt = pm.modes.device, pm.modes.dtype
    sd = _posterior_scales(pm).amax(0)
    center = pm.modes.mean(0)
    at: dict[int, list[float]] = {}
    for k, t in kinks:
        at.setdefault(k, []).append(t)
    axes, logws = [], []
    for k in range(d):
        s = float(sd[k])
        if k in at:
            cuts: list[float] = []
            for p in sorted(at[k] + [float(v) for v in pm.modes[:, k]]):
                if not cuts or p - cuts[-1] > 1e-6 * s:
                    cuts.append(p)
            pieces = [_exp_sinh(cuts[0], -1.0, s, h, dt, dev)]
            pieces += [_tanh_sinh(a, b, h, dt, dev) for a, b in zip(cuts, cuts[1:])]
            pieces.append(_exp_sinh(cuts[-1], 1.0, s, h, dt, dev))
            axes.append(torch.cat([z for z, _ in pieces]))
            logws.append(torch.cat([w for _, w in pieces]))
        else:
            tau = torch.arange(-8.0, 8.0 + h / 2, h, dtype=dt, device=dev)
            axes.append(float(center[k]) + s * torch.sinh(tau))
            logws.append(math.log(h) + math.log(s) + torch.log(torch.cosh(tau)))
    grids = torch.meshgrid(*axes, indexing="ij")
    lgrids = torch.meshgrid(*logws, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], -1), sum(g.reshape(-1) for g in lgrids)


def _log_integral_z(model: Model, pm: PosteriorModes, rule: tuple[Tensor, Tensor]) -> float:
    """log_px_red with a rule (z, logw) for ∫ g(z) dz directly in z (no chart)."""
    rule = _as_rule(rule, model)

    def terms(z: Tensor, logw: Tensor) -> Tensor:
        psi = log_joint(model, z, pm.x, pm.gamma2)
        psi = torch.where(torch.isnan(psi), torch.full_like(psi, -math.inf), psi)
        return logw + psi

    return float(_chunked_logsumexp(rule, terms, ("z", 1))) + 0.5 * model.d * math.log(pm.gamma2 / (2 * math.pi))


def log_marginal_gh(
    model: Model,
    pm: PosteriorModes,
    levels: list[int] | None = None,
    tol: float = 1e-12,
    max_memory: int = DEFAULT_MAX_MEMORY,
    costs: dict | None = None,
) -> Estimate:
    """log p_γ(x), reduced (see module doc), by Gauss–Hermite with node refinement.

    Nodes per dimension double along ``levels`` until two successive values agree to
    ``tol``·max(1, |value|).  When they never do (a posterior far from Gaussian: heavy
    Student-t tails at small γ², overlapping modes) and d ≤ 2, the sinh-mapped trapezoid rule
    (:func:`sinh_trapezoid_rule`, h = 0.2 … 0.025, one chart for all modes,
    :func:`_log_integral_chart`) is tried too, and the estimate with the
    smaller refinement difference is returned.  When a kink of the prior lies within
    :data:`KINK_REACH` posterior standard deviations of a mode (:func:`kinks_in_reach`), d ≤ 2
    uses :func:`kink_split_rule` instead (h = 0.2 … 0.025), and d > 2 raises ConvergenceError
    (no rule here can honour the accuracy there).  The error estimate is :func:`refinement_error`
    (the last refinement difference, or a geometric-tail bound when the refinement did not
    converge) plus :func:`rounding_bound`; ``diagnostics["converged"]`` is False when no rule met
    the tolerance.

    The log-sum-exp over the nodes runs in chunks within ``max_memory`` bytes
    (:class:`IntegrationRule`; ``costs``: a dict caching the measured bytes per node, shared
    between calls on the same model).
    """
    d = model.d
    device = pm.modes.device
    levels = levels or refinement_levels(d)
    rb = rounding_bound(pm.x, pm.gamma2, d)
    costs = model_costs(model).setdefault("log_px", {}) if costs is None else costs

    def arrays(rule: tuple[Tensor, Tensor]) -> IntegrationRule:
        return IntegrationRule.from_arrays(*rule, max_memory=max_memory, costs=costs)

    def sweep(rules, integral=_log_integral) -> tuple[list[float], list, bool]:
        vals: list[float] = []
        used = []
        for label, make in rules:
            vals.append(integral(model, pm, make()))
            used.append(label)
            if len(vals) >= 2 and abs(vals[-1] - vals[-2]) <= tol * max(1.0, abs(vals[-1])) + rb:
                return vals, used, True
        return vals, used, False

    kinks = kinks_in_reach(model, pm)
    if kinks and d > 2:
        k, t = kinks[0]
        raise ConvergenceError(
            f"log p: the kink of the {model.prior.factors[k].name} prior at z{k + 1} = {t:g} lies "
            "inside the posterior's bulk, where quadrature cannot honour its accuracy for d > 2; use "
            "--log-px-method is (importance sampling) or a larger γ²")
    if kinks:
        # the kink of a Laplace prior inside the bulk: a rule split at the kink (error estimable by halving h)
        vals, used, conv = sweep([(f"split h={h}", (lambda h=h: arrays(kink_split_rule(pm, kinks, h))))
                                  for h in (0.2, 0.1, 0.05, 0.025)], integral=_log_integral_z)
        method = "kink_split_trapezoid"
    else:
        vals, used, conv = sweep([(k, (lambda k=k: IntegrationRule.gauss_hermite(k, d, device, max_memory, costs)))
                                  for k in levels])
        method = "gauss_hermite"
    if not conv and not kinks and d <= 2:
        tvals, tused, tconv = sweep([(f"h={h}", (lambda h=h: arrays(sinh_trapezoid_rule(h, d, device)))) for h in (0.2, 0.1, 0.05, 0.025)],
                                    integral=_log_integral_chart)
        if abs(tvals[-1] - tvals[-2]) < abs(vals[-1] - vals[-2]):
            vals, used, conv, method = tvals, tused, tconv, "sinh_trapezoid"
    diff, conv = refinement_error(vals, tol * max(1.0, abs(vals[-1])) + rb)
    err = diff + rb + value_rounding(vals[-1])
    info: dict[str, Any] = {
        "levels": used,
        "converged": conv,
        "modes": pm.modes.tolist(),
        "n_modes": pm.count,
        "reduced": True,
    }
    return Estimate(vals[-1], err, method, "refinement", info)


def divergent_term(n: int, d: int, gamma2: float) -> float:
    """(n−d)/2 · log(γ²/2π), the term that log p and ELBO* share and that diverges for n > d."""
    return 0.5 * (n - d) * math.log(gamma2 / (2 * math.pi))
