"""Monte Carlo and randomized quasi-Monte Carlo estimators, the stochastic counterparts of the
deterministic Gauss–Hermite estimators in :mod:`numerics.posterior` and :mod:`numerics.elbo`.

They exist to cross-check those (docs/theory.md quantities, same conventions), and to show what a
sampling-based estimate costs at a given accuracy.  All estimators

- work in float64 with a seeded ``torch.Generator`` (or a seeded numpy ``Generator`` for the
  Sobol scrambling), so a call is deterministic given its seed;
- work in the scaled coordinates of the deterministic estimators, so every term is O(1) at
  every γ² (no cancellation between numbers of size γ²);
- return an :class:`numerics.estimate.Estimate` whose ``error`` is one standard error
  (``"standard_error"``) or, for randomized QMC, the standard error over independent
  scramblings (``"replicate_error"``).

Importance sampling (``log_marginal_is``).  With the posterior modes ẑ_j, their Laplace scales
L_j (z = ẑ_j + L_j u, u ~ N(0, I), see :meth:`PosteriorModes.scale`) and mixture weights
π_j ∝ exp(log_mass_j), the proposal is q(z) = Σ_j π_j q_j(z) with q_j the Laplace Gaussian
(or a Student-t with the same location and scale).  With w = e^φ / q,

    log_px_red = d/2 · log(γ²/2π) + log mean(w),

(φ as in :func:`numerics.posterior.log_joint`), computed with logsumexp.  The error is the
delta-method standard error of log mean(w): std(w) / (mean(w) √N).

Randomized QMC importance sampling (``log_marginal_rqmc``).  The same estimator with the
proposal's draws taken from R independently scrambled Sobol sequences
(``torch.quasirandom.SobolEngine``, seeded) instead of pseudo-random numbers: replicate r gives
p̂_r = mean_i w(z_ri), each an unbiased estimate of p; the value is log mean_r p̂_r and the error
the standard error over the replicates, std_r(p̂_r) / (√R · mean_r p̂_r) (delta method).  For
smooth weights the error falls nearly like 1/N instead of 1/√N, and the error estimate does not
rely on the weights' variance being finite within one replicate.

Memory: the log-weights are computed in chunks of samples sized to a byte budget
(:func:`numerics.optimize.allocation_probe`), so d = 30 with 10^5 samples stays small.

ELBO (``elbo_mc``, ``elbo_qmc``).  With ε = γ⁻², t = s/ε and z = μ + √s ⊙ ξ, ξ ~ N(0, I)
(docs/theory.md, scaled form of numerics/elbo.py):

    ELBO_red = d/2 + ½ Σ_k log t_k + E_ξ[−γ²/2 ‖x − f(z)‖² + ℓ(z)],

and ELBO = ELBO_red + (n−d)/2 · log(γ²/2π).  Only the expectation is estimated; the per-sample
term −γ²/2‖x − f(z)‖² is O(1) because ‖x − f(z)‖ = O(γ⁻¹) on the support of q.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .estimate import Estimate
from .models import Model
from .optimize import allocation_probe, model_costs
from .posterior import PosteriorModes, divergent_term, log_joint, rounding_bound, value_rounding
from .quadrature import DEFAULT_MAX_MEMORY, LOG_2PI, MemoryBudgetError, format_bytes

Tensor = torch.Tensor

__all__ = ["log_marginal_is", "log_marginal_rqmc", "elbo_mc", "elbo_qmc", "RQMC_REPLICATES", "PROPOSALS"]

#: Independent scramblings of the Sobol points in :func:`log_marginal_rqmc` (the error estimate
#: has R − 1 degrees of freedom).
RQMC_REPLICATES = 16
#: Importance-sampling proposals: the Laplace mixture, and the Student-t(ν) mixture with the same
#: locations and scales.
PROPOSALS = ("laplace", "laplace_t")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _log_mean_and_se(logw: Tensor) -> tuple[float, float, float]:
    """(log mean(w), delta-method standard error std(w)/(mean(w)√N), ESS) from log-weights,
    in log space: w is rescaled by its maximum before exponentiating."""
    N = logw.numel()
    if not bool(torch.isfinite(logw).any()):
        raise FloatingPointError("importance sampling: every log-weight is -inf or NaN")
    logw = torch.where(torch.isnan(logw), torch.full_like(logw, -math.inf), logw)
    mx = logw.max()
    w = torch.exp(logw - mx)  # in (0, 1], the largest exactly 1
    mean = w.mean()
    log_mean = float(mx + torch.log(mean))
    if N > 1:
        std = w.std(unbiased=True)
        se = float(std / (mean * math.sqrt(N)))
    else:
        se = math.inf
    ess = float(w.sum() ** 2 / (w * w).sum())
    return log_mean, se, ess


class _Proposal:
    """The importance-sampling proposal built on the posterior modes: components j with location
    ẑ_j, scale L_j (z = ẑ_j + L_j u) and weight π_j; u ~ N(0, I) (``laplace``) or multivariate
    Student-t(ν) (``laplace_t``)."""

    def __init__(self, pm: PosteriorModes, proposal: str, df: float) -> None:
        if proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {proposal!r} (use one of {', '.join(PROPOSALS)})")
        if proposal != "laplace" and not (df > 0 and math.isfinite(df)):
            raise ValueError(f"Student-t proposal needs df > 0, got {df}")
        self.pm, self.kind, self.df = pm, proposal, df
        self.d = pm.modes.shape[1]
        self.m = pm.count
        self.log_pi = pm.log_mass - torch.logsumexp(pm.log_mass, 0)
        self.scales = torch.stack([pm.scale(j) for j in range(self.m)])  # (m, d, d)
        d, eps = self.d, pm.eps
        self.log_det_L = torch.stack([-torch.log(torch.diagonal(pm.chol[j])).sum() + 0.5 * d * math.log(eps)
                                      for j in range(self.m)])
        self.c_t = math.lgamma((df + d) / 2) - math.lgamma(df / 2) - 0.5 * d * math.log(df * math.pi)

    def _base(self, r2: Tensor) -> Tensor:
        """log density of u (|u|² = r2) under the standardized proposal."""
        d = self.d
        gauss = -0.5 * d * LOG_2PI - 0.5 * r2
        if self.kind == "laplace":
            return gauss
        return self.c_t - 0.5 * (self.df + d) * torch.log1p(r2 / self.df)

    def sample(self, comp: Tensor, u: Tensor) -> Tensor:
        """z = ẑ_comp + L_comp u."""
        return self.pm.modes[comp] + torch.einsum("nij,nj->ni", self.scales[comp], u)

    def log_q(self, z: Tensor, u: Tensor | None) -> Tensor:
        """log q(z) of the mixture (``u``: the standardized draws when m = 1, else recomputed)."""
        pm, m = self.pm, self.m
        lq = []
        for j in range(m):
            if m == 1 and u is not None:
                uj = u
            else:
                # u_j = L_j^{-1} (z − ẑ_j) = √γ² R̃_jᵀ (z − ẑ_j)
                uj = math.sqrt(pm.gamma2) * ((z - pm.modes[j]) @ pm.chol[j])
            lq.append(self.log_pi[j] + self._base((uj * uj).sum(-1)) - self.log_det_L[j])
        return torch.logsumexp(torch.stack(lq), 0)

    def log_weights(self, model: Model, comp: Tensor, u: Tensor) -> Tensor:
        """log w = φ(z) − log q(z) for the draws (comp, u)."""
        z = self.sample(comp, u)
        return log_joint(model, z, self.pm.x, self.pm.gamma2) - self.log_q(z, u)


def _samples_per_chunk(model: Model, prop: _Proposal, total: int, max_memory: int, what: str) -> int:
    """How many samples one chunk of log-weights may take within ``max_memory`` bytes (measured
    with :func:`numerics.optimize.allocation_probe`, cached per model)."""
    costs = model_costs(model).setdefault("importance", {})
    key = (prop.kind, prop.m)
    d = prop.d
    if key not in costs:
        def run(n: int) -> None:
            comp = torch.zeros(n, dtype=torch.long, device=prop.pm.modes.device)
            prop.log_weights(model, comp, torch.zeros(n, d, dtype=torch.float64, device=prop.pm.modes.device))

        costs[key] = allocation_probe(run, max(total, 1))
    fixed, per = costs[key]
    per += 8.0 * (d + 3)  # the draws themselves
    n = int((max_memory - fixed) // per)
    if n < 1:
        raise MemoryBudgetError(f"{what}: one sample needs {format_bytes(fixed + per)}, more than the memory budget "
                                f"{format_bytes(max_memory)} (raise --max-memory)")
    return n


def _check_encoder(mu: Tensor | Any, s: Tensor | Any, d: int, device) -> tuple[Tensor, Tensor]:
    mu = torch.as_tensor(mu, dtype=torch.float64, device=device).reshape(d)
    s = torch.as_tensor(s, dtype=torch.float64, device=device).reshape(d)
    if bool((s <= 0).any()) or not bool(torch.isfinite(s).all()) or not bool(torch.isfinite(mu).all()):
        raise ValueError("ELBO: encoder variances s must be finite and > 0 and μ finite")
    return mu, s


def _elbo_terms(model: Model, x: Tensor, gamma2: float, mu: Tensor, s: Tensor, xi: Tensor) -> Tensor:
    """Per-sample h(ξ) = −γ²/2 ‖x − f(μ + √s ξ)‖² + ℓ(μ + √s ξ) for ξ of shape (N, d)."""
    z = mu + torch.sqrt(s) * xi
    return log_joint(model, z, x, gamma2)


def _elbo_constant(model: Model, gamma2: float, s: Tensor, reduced: bool) -> float:
    """d/2 + ½ Σ log(s_k/ε) (+ the divergent term unless ``reduced``)."""
    d = model.d
    const = 0.5 * d + 0.5 * float(torch.log(s * gamma2).sum())
    if not reduced:
        const += divergent_term(model.n, d, gamma2)
    return const


# ----------------------------------------------------------------------------------------
# log p_γ(x) by importance sampling
# ----------------------------------------------------------------------------------------


def log_marginal_is(
    model: Model,
    pm: PosteriorModes,
    num_samples: int,
    seed: int,
    proposal: str = "laplace",
    df: float = 5.0,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> Estimate:
    """Reduced log p_γ(x) (same convention as :func:`numerics.posterior.log_marginal_gh`) by
    importance sampling from the Laplace mixture (``proposal="laplace"``), from a mixture of
    multivariate Student-t(``df``) with the same locations and scales (``"laplace_t"``), with
    pseudo-random draws.

    Error: the delta-method standard error std(w)/(mean(w)√N) of the log estimate, plus the
    floating-point rounding bound of the quadrature estimators (:func:`numerics.posterior.rounding_bound`,
    which the sampling spread cannot show when the proposal is nearly exact).
    ``info``: error_kind, ess (effective sample size (Σw)²/Σw²), num_samples, proposal, seed.
    The log-weights are computed in chunks within ``max_memory`` bytes.
    """
    prop = _Proposal(pm, proposal, df)
    if num_samples < 2:
        raise ValueError("importance sampling needs num_samples >= 2")
    d = model.d
    device = pm.modes.device
    need = num_samples * 8 * (d + 3)
    if need > max_memory // 2:
        raise MemoryBudgetError(f"importance sampling: {num_samples} draws in d = {d} take {format_bytes(need)}, more than "
                                f"half the memory budget {format_bytes(max_memory)} (use fewer --samples or "
                                "--log-px-method auto, whose randomized QMC draws come in chunks)")
    gen = torch.Generator().manual_seed(int(seed))
    m = pm.count

    # mixture component of every sample
    if m > 1:
        comp = torch.multinomial(torch.exp(prop.log_pi).cpu(), num_samples, replacement=True, generator=gen)
    else:
        comp = torch.zeros(num_samples, dtype=torch.long)
    u = torch.randn(num_samples, d, generator=gen, dtype=torch.float64)
    if proposal != "laplace":
        # u = g / sqrt(χ²_ν / ν): χ²_ν by the inverse CDF of seeded uniforms (any real ν)
        from scipy import stats

        unif = torch.rand(num_samples, generator=gen, dtype=torch.float64).clamp(1e-300, 1 - 1e-16).numpy()
        chi2 = torch.as_tensor(stats.chi2.ppf(unif, df), dtype=torch.float64)
        scale_t = 1 / torch.sqrt(chi2 / df)
        u = u * scale_t.unsqueeze(-1)
    u = u.to(device)
    comp = comp.to(device)
    c = _samples_per_chunk(model, prop, num_samples, max_memory, "importance sampling")
    logw = torch.cat([prop.log_weights(model, comp[i:i + c], u[i:i + c]) for i in range(0, num_samples, c)])
    log_mean, se, ess = _log_mean_and_se(logw)
    value = log_mean + 0.5 * d * math.log(pm.gamma2 / (2 * math.pi))
    info = {
        "ess": ess,
        "num_samples": int(num_samples),
        "proposal": proposal,
        "seed": int(seed),
        "reduced": True,
        "n_modes": m,
    }
    if proposal != "laplace":
        info["df"] = df
    se += rounding_bound(pm.x, pm.gamma2, d) + value_rounding(value)
    return Estimate(value, se, "importance_sampling", "standard_error", info)


def _replicate_seeds(seed: int, replicates: int) -> list[int]:
    """Independent 63-bit seeds for the scramblings, derived from ``seed`` (numpy SeedSequence)."""
    ss = np.random.SeedSequence(int(seed))
    return [int(c.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for c in ss.spawn(replicates)]


def log_marginal_rqmc(
    model: Model,
    pm: PosteriorModes,
    num_points: int = 4096,
    replicates: int = RQMC_REPLICATES,
    seed: int = 0,
    proposal: str = "laplace",
    df: float = 5.0,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> Estimate:
    """Reduced log p_γ(x) (the convention of :func:`numerics.posterior.log_marginal_gh`) by
    randomized quasi-Monte Carlo importance sampling (module doc).

    Replicate r = 1 … R scrambles the Sobol sequence with its own seed (derived from ``seed``):
    the first ``num_points`` (a power of 2) points in [0, 1)^D, D = d (+1 for the χ²_ν variable
    of a t proposal, +1 for the mixture component when there are
    several modes; the Gaussian coordinates first, where the Sobol sequence is best), mapped by
    inverse CDFs to draws of the proposal (:data:`PROPOSALS`).  Replicate estimate
    p̂_r = mean_i w_ri; value log mean_r p̂_r; error std_r(p̂_r)/(√R mean_r p̂_r) (a standard error
    with R − 1 degrees of freedom) plus the rounding bound of :func:`log_marginal_is`.  Deterministic given ``seed``.  The log-weights are computed
    in chunks within ``max_memory`` bytes.

    ``diagnostics``: num_points, replicates, proposal, seed, ess (of the pooled weights),
    replicate_values (log p̂_r, reduced), n_modes.
    """
    if num_points < 2 or num_points & (num_points - 1):
        raise ValueError(f"randomized QMC: num_points must be a power of 2 (>= 2), got {num_points}")
    if replicates < 2:
        raise ValueError("randomized QMC needs replicates >= 2 for an error estimate")
    prop = _Proposal(pm, proposal, df)
    d = model.d
    device = pm.modes.device
    m = pm.count
    extra_t = proposal != "laplace"
    dim = d + int(extra_t) + int(m > 1)
    if dim > torch.quasirandom.SobolEngine.MAXDIM:
        raise ValueError(f"randomized QMC: dimension {dim} exceeds the Sobol engine's {torch.quasirandom.SobolEngine.MAXDIM}")
    c = _samples_per_chunk(model, prop, num_points, max_memory, "randomized QMC importance sampling")
    c = max(1, min(c, num_points))
    cum_pi = torch.cumsum(torch.exp(prop.log_pi), 0)
    if extra_t:
        from scipy import special
    lo, hi = 2.0**-60, 1 - 2.0**-53
    rep_logs: list[float] = []
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=device)
    lse2 = neg_inf  # log Σ w² over all replicates, for the effective sample size
    for rs in _replicate_seeds(seed, replicates):
        engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=rs)
        lse = neg_inf
        for start in range(0, num_points, c):
            n = min(c, num_points - start)
            pts = engine.draw(n, dtype=torch.float64).clamp(lo, hi).to(device)
            u = torch.special.ndtri(pts[:, :d])
            col = d
            if extra_t:
                chi2 = 2 * torch.as_tensor(special.gammaincinv(df / 2, pts[:, col].cpu().numpy()), dtype=torch.float64,
                                           device=device)
                col += 1
                scale_t = 1 / torch.sqrt(chi2.clamp_min(1e-300) / df)
                u = u * scale_t.unsqueeze(-1)
            if m > 1:
                comp = torch.searchsorted(cum_pi, pts[:, col].contiguous()).clamp_max(m - 1)
            else:
                comp = torch.zeros(n, dtype=torch.long, device=device)
            lw = prop.log_weights(model, comp, u)
            lw = torch.where(torch.isnan(lw), torch.full_like(lw, -math.inf), lw)
            lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        if not bool(torch.isfinite(lse)):
            raise FloatingPointError("randomized QMC importance sampling: every log-weight of a replicate is -inf or NaN")
        rep_logs.append(float(lse) - math.log(num_points))
    logs = torch.tensor(rep_logs, dtype=torch.float64)
    top = logs.max()
    p = torch.exp(logs - top)  # p̂_r / max_r p̂_r
    mean = p.mean()
    log_mean = float(top + torch.log(mean))
    se = float(p.std(unbiased=True) / (mean * math.sqrt(replicates)))
    shift = 0.5 * d * math.log(pm.gamma2 / (2 * math.pi))
    value = log_mean + shift
    log_sum = float(torch.logsumexp(logs, 0)) + math.log(num_points)  # log Σ w over all replicates
    info = {
        "num_points": int(num_points),
        "replicates": int(replicates),
        "num_samples": int(num_points * replicates),
        "proposal": proposal,
        "seed": int(seed),
        "reduced": True,
        "n_modes": m,
        "ess": math.exp(2 * log_sum - float(lse2)),
        "replicate_values": [float(v) + shift for v in rep_logs],
    }
    if extra_t:
        info["df"] = df
    se += rounding_bound(pm.x, pm.gamma2, d) + value_rounding(value)
    return Estimate(value, se, "randomized_qmc_importance_sampling", "standard_error", info)


# ----------------------------------------------------------------------------------------
# ELBO(x; μ, s) by Monte Carlo and randomized QMC
# ----------------------------------------------------------------------------------------


def elbo_mc(
    model: Model,
    x: Tensor,
    gamma2: float,
    mu: Tensor,
    s: Tensor,
    num_samples: int,
    seed: int,
    reduced: bool = False,
) -> Estimate:
    """ELBO(x; μ, s) by reparameterized Monte Carlo, z = μ + √s ξ with ξ ~ N(0, I) from a
    seeded generator (scaled form, see the module doc).  Error: std(h)/√N, the standard
    error of the sample mean of h(ξ) = −γ²/2‖x − f(z)‖² + ℓ(z)."""
    if num_samples < 2:
        raise ValueError("elbo_mc needs num_samples >= 2")
    d = model.d
    mu, s = _check_encoder(mu, s, d, x.device)
    gen = torch.Generator().manual_seed(int(seed))
    xi = torch.randn(num_samples, d, generator=gen, dtype=torch.float64).to(x.device)
    h = _elbo_terms(model, x, gamma2, mu, s, xi)
    if not bool(torch.isfinite(h).all()):
        raise FloatingPointError("elbo_mc: a sample of log p(x|z) + ℓ(z) is not finite")
    mean = float(h.mean())
    se = float(h.std(unbiased=True)) / math.sqrt(num_samples)
    value = mean + _elbo_constant(model, gamma2, s, reduced)
    return Estimate(value, se, "monte_carlo", "standard_error", {"num_samples": int(num_samples), "seed": int(seed), "reduced": reduced})


def elbo_qmc(
    model: Model,
    x: Tensor,
    gamma2: float,
    mu: Tensor,
    s: Tensor,
    num_points: int,
    replicates: int,
    seed: int,
    reduced: bool = False,
) -> Estimate:
    """ELBO(x; μ, s) by randomized quasi-Monte Carlo: ``replicates`` independent scramblings
    (Owen scrambling, scipy.stats.qmc.Sobol) of ``num_points`` (a power of 2) Sobol points,
    mapped to N(0, I) by the normal inverse CDF.  Value: the mean over replicates; error: the
    standard deviation over replicates / √replicates (``"replicate_error"``)."""
    from scipy import special
    from scipy.stats import qmc

    if num_points < 2 or num_points & (num_points - 1):
        raise ValueError(f"elbo_qmc: num_points must be a power of 2 (>= 2), got {num_points}")
    if replicates < 2:
        raise ValueError("elbo_qmc needs replicates >= 2 for an error estimate")
    d = model.d
    mu, s = _check_encoder(mu, s, d, x.device)
    m = int(round(math.log2(num_points)))
    ss = np.random.SeedSequence(int(seed))
    means = []
    for child in ss.spawn(replicates):
        rng = np.random.default_rng(child)
        pts = qmc.Sobol(d, scramble=True, rng=rng).random_base2(m)
        # scrambled points lie in the open cube a.s.; clamp guards the map against 0 and 1
        pts = np.clip(pts, 2.0**-60, 1 - 2.0**-53)
        xi = torch.as_tensor(special.ndtri(pts), dtype=torch.float64, device=x.device)
        h = _elbo_terms(model, x, gamma2, mu, s, xi)
        if not bool(torch.isfinite(h).all()):
            raise FloatingPointError("elbo_qmc: a sample of log p(x|z) + ℓ(z) is not finite")
        means.append(float(h.mean()))
    arr = np.asarray(means)
    value = float(arr.mean()) + _elbo_constant(model, gamma2, s, reduced)
    err = float(arr.std(ddof=1)) / math.sqrt(replicates)
    shift = _elbo_constant(model, gamma2, s, reduced)
    info = {
        "num_points": int(num_points),
        "replicates": int(replicates),
        "seed": int(seed),
        "reduced": reduced,
        "replicate_values": [float(v) + shift for v in arr],  # one estimate per scrambling
    }
    return Estimate(value, err, "randomized_qmc", "replicate_error", info)
