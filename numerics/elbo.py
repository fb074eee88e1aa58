"""The mean-field ELBO and its supremum ELBO*(x) (docs/theory.md).

ELBO(x; μ, s) = E_q[log p_γ(x|z)] + E_q[ℓ(z)] + ½ Σ_k log(2πe s_k),  q = N(μ, diag(s)).

Scaled form.  With ε = γ⁻², s_k = ε t_k and z = μ + √(ε t) ⊙ ξ, ξ ~ N(0, I), the reduced
ELBO (the divergent (n−d)/2 · log(γ²/2π) removed) is a sum of O(1) terms at every γ²:

    ELBO_red = d/2 + ½ Σ_k log t_k − E_ξ[‖x − f(z)‖²]/(2ε) + E_ξ[ℓ(z)].

ELBO*(x) is found by a saddle-free Newton method in the parameters (a, τ) with
μ = μ_base + √ε a and t = e^τ (both O(1) at every γ²), on the deterministic tensor
Gauss–Hermite version of the objective, batched over items, with node refinement.  The node
sums (value, gradient, Hessian) are evaluated in chunks within a byte budget ``max_memory``
(:class:`numerics.optimize.NodeSumObjective`), so memory does not grow with k^d × items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .estimate import Estimate
from .models import Model, Prior1D
from .optimize import ConvergenceError, NodeSumObjective, Objective, model_costs
from .posterior import PosteriorModes, divergent_term, newton_robust, refinement_error, rounding_bound, value_rounding
from .quadrature import DEFAULT_MAX_MEMORY, TensorRule, gauss_hermite, refinement_levels

Tensor = torch.Tensor


def _prior_expectation(model: Model, z: Tensor, w: Tensor, mu: Tensor, var: Tensor) -> Tensor:
    """E_q[ℓ(z)] for q with marginals N(μ_k, var_k), nodes ``z`` and weights ``w`` of q.

    By the quadrature rule, unless a prior factor has a closed-form Gaussian expectation (the
    Laplace prior, whose kink makes quadrature converge slowly while E_q[ℓ_k] is smooth in
    (μ_k, var_k)): then :meth:`numerics.models.Prior.expected_log_prob` uses it for that factor."""
    if model.prior.has_gaussian_expectation:
        return model.prior.expected_log_prob(z, w, mu, var)
    return (w * model.prior.log_prob(z)).sum()


def _elbo_red_scaled(model: Model, nodes: Tensor, logw: Tensor):
    """One-item reduced ELBO as a function of params = (a, τ) (see module doc)."""
    d = model.d
    w = torch.exp(logw)

    def fn(params: Tensor, x: Tensor, eps: Tensor, mu_base: Tensor) -> Tensor:
        a, tau = params[:d], params[d:]
        mu = mu_base + torch.sqrt(eps) * a
        sd = torch.sqrt(eps * torch.exp(tau))
        z = mu + sd * nodes
        r = x - model.decoder(z)
        fit = (w * (r * r).sum(-1)).sum() / (2 * eps)
        return 0.5 * d + 0.5 * tau.sum() - fit + _prior_expectation(model, z, w, mu, sd * sd)

    return fn


def _closed_form_factors(model: Model) -> list[int]:
    """Prior factors whose Gaussian expectation E_q[ℓ_k] is in closed form (:func:`_prior_expectation`)."""
    return [k for k, f in enumerate(model.prior.factors) if type(f).gaussian_expectation is not Prior1D.gaussian_expectation]


def _split_prior_terms(model: Model):
    """The terms of the reduced ELBO that a node chunk contributes, and the rest, for the
    chunked objectives (:func:`_elbo_red_parts`, :func:`_elbo_red_fullcov_parts`):
    ``node_terms(x, eps, z, w)`` = Σ_i W_i (−‖x − f(z_i)‖²/(2ε) + Σ_k ℓ_k(z_ik)) with the
    closed-form prior factors left out, ``closed_terms(mu, var)`` = Σ_k E_q[ℓ_k] over those
    factors (q with marginals N(μ_k, var_k)); ``closed`` lists them (empty: no closed terms)."""
    d = model.d
    closed = _closed_form_factors(model)
    quad = [k for k in range(d) if k not in closed]

    def node_terms(x: Tensor, eps: Tensor, z: Tensor, w: Tensor) -> Tensor:
        r = x - model.decoder(z)
        fit = (w * (r * r).sum(-1)).sum() / (2 * eps)
        if not closed:
            prior = (w * model.prior.log_prob(z)).sum()
        else:
            prior = sum(((w * model.prior.factors[k].log_prob(z[..., k])).sum() for k in quad),
                        torch.zeros((), dtype=z.dtype, device=z.device))
        return prior - fit

    def closed_terms(out: Tensor, mu: Tensor, var: Tensor) -> Tensor:
        for k in closed:
            out = out + model.prior.factors[k].gaussian_expectation(mu[k], var[k])
        return out

    return closed, node_terms, closed_terms


def _elbo_red_parts(model: Model):
    """The reduced ELBO of :func:`_elbo_red_scaled` split for chunked evaluation: ``part`` is the
    node sum Σ_i W_i (−‖x − f(z_i)‖²/(2ε) + Σ_k ℓ_k(z_ik)) over a chunk of nodes (the closed-form
    prior factors left out), ``glob`` the rest, d/2 + ½ Σ τ_k + Σ_k E_q[ℓ_k] (closed-form factors)."""
    d = model.d
    closed, node_terms, closed_terms = _split_prior_terms(model)

    def part(params: Tensor, x: Tensor, eps: Tensor, mu_base: Tensor, nodes: Tensor, logw: Tensor) -> Tensor:
        a, tau = params[:d], params[d:]
        mu = mu_base + torch.sqrt(eps) * a
        sd = torch.sqrt(eps * torch.exp(tau))
        return node_terms(x, eps, mu + sd * nodes, torch.exp(logw))

    def glob(params: Tensor, x: Tensor, eps: Tensor, mu_base: Tensor) -> Tensor:
        a, tau = params[:d], params[d:]
        out = 0.5 * d + 0.5 * tau.sum()
        if closed:
            out = closed_terms(out, mu_base + torch.sqrt(eps) * a, eps * torch.exp(tau))
        return out

    return part, glob


def elbo_objective(model: Model, k: int, device, max_memory: int = DEFAULT_MAX_MEMORY,
                   costs: dict | None = None) -> NodeSumObjective:
    """The reduced ELBO in (a, τ) (module doc) on the k^d-node tensor rule, as a memory-bounded
    :class:`numerics.optimize.NodeSumObjective` (per-item args: x, ε, μ_base; ``costs`` shared
    between the levels of one refinement)."""
    part, glob = _elbo_red_parts(model)
    return NodeSumObjective(lambda: _elbo_red_scaled(model, *gauss_hermite(k, model.d, device=device)), part, glob,
                            TensorRule(k, model.d, device=device), max_memory,
                            what=f"ELBO* on the {k}^{model.d}-node tensor rule", costs=costs)


def elbo_gh(model: Model, x: Tensor, gamma2: float, mu: Tensor, s: Tensor, k: int | None = None, reduced: bool = False,
            max_memory: int = DEFAULT_MAX_MEMORY) -> Estimate:
    """ELBO(x; μ, s) by tensor Gauss–Hermite with one refinement (k and 2k nodes per
    dimension).  Error: the difference of the two rules (+ rounding bound).  Node sums in chunks
    within ``max_memory`` bytes."""
    d = model.d
    eps = 1.0 / gamma2
    mu = torch.as_tensor(mu, dtype=torch.float64, device=x.device)
    s = torch.as_tensor(s, dtype=torch.float64, device=x.device)
    if bool((s <= 0).any()):
        raise ValueError("ELBO: encoder variances s must be > 0")
    params = torch.cat([torch.zeros(d, dtype=torch.float64, device=x.device), torch.log(s / eps)])
    vals = []
    levels = [k, 2 * k] if k else refinement_levels(d)
    e = torch.tensor(eps, dtype=torch.float64, device=x.device)
    costs = model_costs(model).setdefault("elbo", {})
    for kk in levels:
        obj = elbo_objective(model, kk, x.device, max_memory, costs)
        args = (x[None], e[None], mu[None])
        if obj.plan("value", params[None], args).whole:
            nodes, logw = gauss_hermite(kk, d, device=x.device)
            vals.append(float(_elbo_red_scaled(model, nodes, logw)(params, x, e, mu)))
        else:
            vals.append(float(obj.value(params[None], args)[0]))
        if len(vals) >= 2 and abs(vals[-1] - vals[-2]) <= 1e-14 * max(1.0, abs(vals[-1])) + rounding_bound(x, gamma2, d):
            break
    shift = 0.0 if reduced else divergent_term(model.n, d, gamma2)
    err = abs(vals[-1] - vals[-2]) + rounding_bound(x, gamma2, d)
    return Estimate(vals[-1] + shift, err, "gauss_hermite", "refinement", {"reduced": reduced, "levels": levels[: len(vals)]})


@dataclass
class _Refined:
    """Per-start results of :func:`_refined_newton`."""

    params: Tensor
    value: Tensor
    diff: Tensor  # last refinement difference (inf if only one level ran)
    dec: Tensor  # final Newton decrement
    gnorm: Tensor  # final gradient norm
    n_levels: Tensor  # levels used
    history: Tensor  # (levels, B) value at each level (NaN where the start had left the sweep)

    def error(self, i: int, tol_abs: float) -> tuple[float, bool]:
        """(refinement error, converged) of start ``i`` (:func:`numerics.posterior.refinement_error`)."""
        vals = [float(v) for v in self.history[: int(self.n_levels[i]), i]]
        return refinement_error(vals, tol_abs)


def _refined_newton(make_obj, params: Tensor, args: tuple[Tensor, ...], rb: Tensor, levels: list[int], tol: float,
                    max_iter: int, d: int, failure) -> _Refined:
    """Maximize ``make_obj(k)`` (an :class:`numerics.optimize.Objective` on the k^d-node
    Gauss–Hermite rule) for every start, doubling k along ``levels`` warm-started; a start leaves the sweep
    once two successive levels agree to tol·max(1, |value|) + its rounding bound ``rb``.
    Raises ConvergenceError(failure(start, decrement, iterations)) if Newton does not converge
    (also when the objective is not finite: ``failure`` gets a NaN decrement then)."""
    device = params.device
    params = params.clone()
    B = params.shape[0]
    history = torch.full((len(levels), B), float("nan"), dtype=torch.float64, device=device)
    value = torch.full((B,), float("nan"), dtype=torch.float64, device=device)
    diff = torch.full((B,), float("inf"), dtype=torch.float64, device=device)
    dec = torch.zeros(B, dtype=torch.float64, device=device)
    gnorm = torch.zeros(B, dtype=torch.float64, device=device)
    n_levels = torch.zeros(B, dtype=torch.long, device=device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    for li, k in enumerate(levels):
        idx = active.nonzero().flatten()
        res = newton_robust(make_obj(k), params[idx], tuple(a[idx] for a in args), max_iter=max_iter,
                            tol=1e-20, value_noise=rb[idx])
        bad = ~res.converged
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            raise ConvergenceError(failure(int(idx[j]), float(res.decrement[j]), res.iterations))
        params[idx] = res.x
        if li >= 1:
            diff[idx] = (res.value - value[idx]).abs()
        value[idx] = res.value
        history[li, idx] = res.value
        dec[idx] = res.decrement
        gnorm[idx] = torch.linalg.vector_norm(res.grad, dim=-1)
        n_levels[idx] = li + 1
        if li >= 1:
            done = diff[idx] <= tol * value[idx].abs().clamp_min(1.0) + rb[idx]
            active[idx[done]] = False
            if not bool(active.any()):
                break
    return _Refined(params, value, diff, dec, gnorm, n_levels, history)


def mode_starts(posts: list[PosteriorModes], d: int, device: torch.device) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The Newton starts of ELBO*, one per mode ẑ_j of each item: μ = ẑ_j (a = 0), t_k = 1/H̃_kk
    (the mean-field lemma C2 applied to the Laplace precision).  Returns (the item of each start,
    its base μ, x, ε, parameters (a, τ), rounding bound), stacked (also for the sparse grids)."""
    items, bases, X, E, P = [], [], [], [], []
    for b, pm in enumerate(posts):
        for j in range(pm.count):
            Ht = pm.chol[j] @ pm.chol[j].T
            tau0 = -torch.log(torch.diagonal(Ht))
            items.append(b)
            bases.append(pm.modes[j])
            X.append(pm.x)
            E.append(pm.eps)
            P.append(torch.cat([torch.zeros(d, dtype=torch.float64, device=device), tau0]))
    rb = torch.tensor([rounding_bound(posts[b].x, posts[b].gamma2, d) for b in items], dtype=torch.float64, device=device)
    return (items, torch.stack(bases), torch.stack(X), torch.tensor(E, dtype=torch.float64, device=device), torch.stack(P), rb)


def failure_place(posts: list[PosteriorModes], z0s: Tensor | None, b: int) -> str:
    """Where item ``b`` is, for an error message: its latent point z0 when known, else x."""
    return (f"z0 = {[round(v, 12) for v in z0s[b].tolist()]}" if z0s is not None
            else f"x = {[round(v, 12) for v in posts[b].x.tolist()]}")


def elbo_star(
    model: Model,
    posts: list[PosteriorModes],
    levels: list[int] | None = None,
    tol: float = 1e-13,
    max_iter: int = 100,
    z0s: Tensor | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> list[Estimate]:
    """ELBO*(x) (reduced) for a batch of items, each given by its posterior modes (from
    :func:`numerics.posterior.find_modes`).  Node sums are evaluated in chunks within
    ``max_memory`` bytes (:class:`numerics.optimize.NodeSumObjective`).

    Every mode of an item is a start (the sup over local optima is taken: for a
    non-injective decoder the mean-field q can only cover one mode).  Start: μ = ẑ_j,
    t_k = 1/H̃_kk (the mean-field lemma C2 applied to the Laplace precision).  Nodes per
    dimension double along ``levels`` (warm-started) until ELBO*_red changes by less than
    ``tol``.  Error = refinement error (:func:`numerics.posterior.refinement_error`: the last
    refinement difference, or more when the refinement did not converge) + Newton decrement +
    rounding bound.  ``z0s`` (one latent point per item, optional) only names the points in
    error messages.

    Returns one :class:`Estimate` per item: ``argmax = {"mu": μ*, "s": s*}`` (tensors) and
    ``diagnostics`` with ``grad_norm``, ``newton_decrement``, ``levels``, ``converged`` (the
    quadrature refinement met ``tol``) and ``n_local_optima`` (starts tried).
    Raises ConvergenceError (naming x and γ²) if Newton does not converge.
    """
    d = model.d
    device = posts[0].x.device
    levels = levels or refinement_levels(d)
    items, Mb, Xb, Eb, params, rb = mode_starts(posts, d, device)
    item_idx = torch.tensor(items, device=device)

    def failure(i: int, dec: float, its: int) -> str:
        b = items[i]
        where = failure_place(posts, z0s, b)
        if not math.isfinite(dec):
            return (f"ELBO* is not finite at {where}, γ² = {posts[b].gamma2:g}: the decoder or the prior is not finite "
                    "at some quadrature nodes of q around z0 (is the decoder defined on all of R^d near z0?)")
        return (f"ELBO* optimizer did not converge at {where}, γ² = {posts[b].gamma2:g} (Newton decrement "
                f"{dec:.3e} after {its} iterations)")

    costs = model_costs(model).setdefault("elbo", {})
    ref = _refined_newton(
        lambda k: elbo_objective(model, k, device, max_memory, costs), params, (Xb, Eb, Mb), rb, levels, tol, max_iter, d,
        failure,
    )
    params, value, dec, gnorm, n_levels = ref.params, ref.value, ref.dec, ref.gnorm, ref.n_levels
    out: list[Estimate] = []
    for b, pm in enumerate(posts):
        idx = (item_idx == b).nonzero().flatten()
        best = int(idx[int(value[idx].argmax())])
        v = float(value[best])
        eps = pm.eps
        a, tau = params[best, :d], params[best, d:]
        mu = Mb[best] + math.sqrt(eps) * a
        sv = eps * torch.exp(tau)
        dv, rbb = float(dec[best]), float(rb[best])
        df, conv = ref.error(best, tol * max(1.0, abs(v)) + rbb)
        diag = {
            "grad_norm": float(gnorm[best]),
            "newton_decrement": dv,
            "levels": levels[: int(n_levels[best])],
            "converged": conv,
            "n_local_optima": int(idx.numel()),
            "reduced": True,
        }
        out.append(Estimate(v, df + dv + rbb + value_rounding(v), "gauss_hermite_newton", "refinement", diag,
                            {"mu": mu, "s": sv}))
    return out


def _elbo_red_fullcov(model: Model, nodes: Tensor, logw: Tensor):
    """One-item reduced ELBO for a full-covariance Gaussian q = N(μ, ε L Lᵀ), L lower
    triangular with log-diagonal parametrization; params = (a, log diag L, strict lower L)."""
    d = model.d
    w = torch.exp(logw)
    rows, cols = torch.tril_indices(d, d, offset=-1)

    def fn(params: Tensor, x: Tensor, eps: Tensor, mu_base: Tensor) -> Tensor:
        a, logdiag, off = params[:d], params[d : 2 * d], params[2 * d :]
        L = torch.diag(torch.exp(logdiag))
        if off.numel():
            L = L + torch.zeros(d, d, dtype=params.dtype, device=params.device).index_put((rows, cols), off)
        mu = mu_base + torch.sqrt(eps) * a
        z = mu + torch.sqrt(eps) * (nodes @ L.T)
        r = x - model.decoder(z)
        fit = (w * (r * r).sum(-1)).sum() / (2 * eps)
        var = eps * (L * L).sum(-1)  # marginal variances: diag(ε L Lᵀ)
        return 0.5 * d + logdiag.sum() - fit + _prior_expectation(model, z, w, mu, var)

    return fn


def _elbo_red_fullcov_parts(model: Model):
    """:func:`_elbo_red_fullcov` split into a node part and the rest, as :func:`_elbo_red_parts`."""
    d = model.d
    closed, node_terms, closed_terms = _split_prior_terms(model)
    rows, cols = torch.tril_indices(d, d, offset=-1)

    def chol(params: Tensor) -> Tensor:
        logdiag, off = params[d : 2 * d], params[2 * d :]
        L = torch.diag(torch.exp(logdiag))
        if off.numel():
            L = L + torch.zeros(d, d, dtype=params.dtype, device=params.device).index_put((rows, cols), off)
        return L

    def part(params: Tensor, x: Tensor, eps: Tensor, mu_base: Tensor, nodes: Tensor, logw: Tensor) -> Tensor:
        L = chol(params)
        mu = mu_base + torch.sqrt(eps) * params[:d]
        return node_terms(x, eps, mu + torch.sqrt(eps) * (nodes @ L.T), torch.exp(logw))

    def glob(params: Tensor, x: Tensor, eps: Tensor, mu_base: Tensor) -> Tensor:
        out = 0.5 * d + params[d : 2 * d].sum()
        if closed:
            L = chol(params)
            out = closed_terms(out, mu_base + torch.sqrt(eps) * params[:d], eps * (L * L).sum(-1))
        return out

    return part, glob


def elbo_star_fullcov(model: Model, posts: list[PosteriorModes], levels: list[int] | None = None, tol: float = 1e-13,
                      max_memory: int = DEFAULT_MAX_MEMORY) -> list[Estimate]:
    """sup over full-covariance Gaussians q = N(μ, Σ) of the ELBO (reduced), docs/theory.md C14.

    Same scaled parametrization, quadrature refinement and Newton method as
    :func:`elbo_star`; start: μ = ẑ (main mode), Σ = the Laplace covariance.  ``argmax`` of each
    Estimate: ``{"mu": μ*, "L": L*}`` with the optimal q = N(μ*, L* L*ᵀ) (L* lower triangular).
    """
    d = model.d
    device = posts[0].x.device
    levels = levels or refinement_levels(d)
    P, X, E, Mb = [], [], [], []
    rows, cols = torch.tril_indices(d, d, offset=-1)
    for pm in posts:
        Ht = pm.chol[0] @ pm.chol[0].T
        Lc = torch.linalg.cholesky(torch.linalg.inv(Ht))
        P.append(torch.cat([torch.zeros(d, dtype=torch.float64, device=device), torch.log(torch.diagonal(Lc)), Lc[rows, cols]]))
        X.append(pm.x)
        E.append(pm.eps)
        Mb.append(pm.modes[0])
    params = torch.stack(P)
    args = (torch.stack(X), torch.tensor(E, dtype=torch.float64, device=device), torch.stack(Mb))
    rb = torch.tensor([rounding_bound(pm.x, pm.gamma2, d) for pm in posts], dtype=torch.float64, device=device)
    part, glob = _elbo_red_fullcov_parts(model)
    costs = model_costs(model).setdefault("elbo_fullcov", {})

    def make_obj(k: int) -> Objective:
        return NodeSumObjective(lambda: _elbo_red_fullcov(model, *gauss_hermite(k, d, device=device)), part, glob,
                                TensorRule(k, d, device=device), max_memory,
                                what=f"full-covariance ELBO* on the {k}^{d}-node tensor rule", costs=costs)

    ref = _refined_newton(
        make_obj, params, args, rb, levels, tol, 100, d,
        lambda i, dec, its: f"full-covariance ELBO* did not converge at γ² = {posts[i].gamma2:g} "
        f"(Newton decrement {dec:.3e} after {its} iterations)",
    )
    out = []
    for b, pm in enumerate(posts):
        df, _ = ref.error(b, tol * max(1.0, abs(float(ref.value[b]))) + float(rb[b]))
        err = df + float(ref.dec[b]) + float(rb[b]) + value_rounding(float(ref.value[b]))
        th = ref.params[b]
        se = math.sqrt(pm.eps)
        L = torch.diag(torch.exp(th[d:2 * d]))
        if d > 1:
            L[rows, cols] = th[2 * d:]
        argmax = {"mu": pm.modes[0] + se * th[:d], "L": se * L}  # q = N(μ*, L Lᵀ)
        out.append(Estimate(float(ref.value[b]), err, "gauss_hermite_newton_fullcov", "refinement", {"reduced": True}, argmax))
    return out
