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
from .posterior import PosteriorModes, divergent_term, log_joint
from .quadrature import LOG_2PI

Tensor = torch.Tensor

__all__ = ["log_marginal_is", "elbo_mc", "elbo_qmc"]


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
) -> Estimate:
    """Reduced log p_γ(x) (same convention as :func:`numerics.posterior.log_marginal_gh`) by
    importance sampling from the Laplace mixture (``proposal="laplace"``) or from a mixture of
    multivariate Student-t(``df``) with the same locations and scales (``"laplace_t"``).

    Error: the delta-method standard error std(w)/(mean(w)√N) of the log estimate.
    ``info``: error_kind, ess (effective sample size (Σw)²/Σw²), num_samples, proposal, seed.
    """
    if proposal not in ("laplace", "laplace_t"):
        raise ValueError(f"unknown proposal {proposal!r} (use 'laplace' or 'laplace_t')")
    if num_samples < 2:
        raise ValueError("importance sampling needs num_samples >= 2")
    if proposal == "laplace_t" and not (df > 0 and math.isfinite(df)):
        raise ValueError(f"Student-t proposal needs df > 0, got {df}")
    d = model.d
    device = pm.modes.device
    gen = torch.Generator().manual_seed(int(seed))
    m = pm.count
    log_pi = pm.log_mass - torch.logsumexp(pm.log_mass, 0)

    # mixture component of every sample
    if m > 1:
        comp = torch.multinomial(torch.exp(log_pi).cpu(), num_samples, replacement=True, generator=gen)
    else:
        comp = torch.zeros(num_samples, dtype=torch.long)
    u = torch.randn(num_samples, d, generator=gen, dtype=torch.float64)
    if proposal == "laplace_t":
        # u = g / sqrt(χ²_ν / ν): χ²_ν by the inverse CDF of seeded uniforms (any real ν)
        from scipy import stats

        unif = torch.rand(num_samples, generator=gen, dtype=torch.float64).clamp(1e-300, 1 - 1e-16).numpy()
        chi2 = torch.as_tensor(stats.chi2.ppf(unif, df), dtype=torch.float64)
        u = u / torch.sqrt(chi2 / df).unsqueeze(-1)
    u = u.to(device)
    comp = comp.to(device)

    scales = torch.stack([pm.scale(j) for j in range(m)])  # (m, d, d), lower? L_j = √ε R̃_j^{-T}
    z = pm.modes[comp] + torch.einsum("nij,nj->ni", scales[comp], u)

    # log q_j(z) for every component: q_j is the density of ẑ_j + L_j u, u ~ N(0,I) or t_ν
    eps = pm.eps
    log_det_L = torch.stack([-torch.log(torch.diagonal(pm.chol[j])).sum() + 0.5 * d * math.log(eps) for j in range(m)])
    if proposal == "laplace_t":
        c_t = math.lgamma((df + d) / 2) - math.lgamma(df / 2) - 0.5 * d * math.log(df * math.pi)
    lq = []
    for j in range(m):
        if m == 1:
            uj = u
        else:
            # u_j = L_j^{-1} (z − ẑ_j) = √γ² R̃_jᵀ (z − ẑ_j)
            uj = math.sqrt(pm.gamma2) * ((z - pm.modes[j]) @ pm.chol[j])
        r2 = (uj * uj).sum(-1)
        if proposal == "laplace":
            base = -0.5 * d * LOG_2PI - 0.5 * r2
        else:
            base = c_t - 0.5 * (df + d) * torch.log1p(r2 / df)
        lq.append(log_pi[j] + base - log_det_L[j])
    log_q = torch.logsumexp(torch.stack(lq), 0)
    logw = log_joint(model, z, pm.x, pm.gamma2) - log_q
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
    if proposal == "laplace_t":
        info["df"] = df
    return Estimate(value, se, "importance_sampling", "standard_error", info)


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
