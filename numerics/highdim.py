"""ELBO*(x) and log p_γ(x) in higher dimension (d ≈ 3…30) by Smolyak sparse-grid Gauss–Hermite
cubature (:mod:`numerics.cubature`), with node sums chunked to a memory budget.

Same quantities, conventions and contracts as :func:`numerics.elbo.elbo_star` and
:func:`numerics.posterior.log_marginal_gh` (reduced values: the divergent (n−d)/2 · log(γ²/2π)
removed); only the rule over ξ ~ N(0, I_d) differs: the tensor k^d Gauss–Hermite rule is replaced
by the level-L sparse rule A(L, d) (exact for total degree 2L + 1), whose size grows like
(2d)^L / L! instead of k^d.

ELBO*.  In the scaled parameters (a, τ) of numerics/elbo.py (μ = μ_base + √ε a, s = ε e^τ,
σ = √s, z = μ + σ ⊙ ξ),

    ELBO_red(a, τ) = d/2 + ½ Σ_k τ_k + Q(μ, σ) + Σ_{k closed} E_{N(μ_k, s_k)}[ℓ_k],
    Q(μ, σ) = Σ_i w_i φ_q(μ + σ ⊙ ξ_i),   φ_q(z) = −‖x − f(z)‖²/(2ε) + Σ_{k quad} ℓ_k(z_k),

(prior factors with a closed-form Gaussian expectation, e.g. Laplace, use it; the others are in
φ_q).  It is maximized by :func:`numerics.posterior.newton_robust` (the saddle-free Newton method
of numerics.optimize), whose gradient and Hessian are the exact derivatives of this cubature sum,
assembled from per-node derivatives g_i = ∇φ_q(z_i), H_i = ∇²φ_q(z_i) summed chunk by chunk
(the Hessian of a sum is the sum of the Hessians of the chunks):

    ∂/∂a = √ε Σ w g,   ∂/∂τ_k = ½ + (σ_k/2) Σ w g_k ξ_k,
    ∂²/∂a∂a = ε Σ w H,   ∂²/∂a_j∂τ_k = √ε (σ_k/2) Σ w H_jk ξ_k,
    ∂²/∂τ_j∂τ_k = (σ_j σ_k/4) Σ w H_jk ξ_j ξ_k + δ_jk (σ_k/4) Σ w g_k ξ_k.

The chunked sums are handed to newton_robust as a batched
:class:`numerics.optimize.Objective` (value, gradient, Hessian, each one pass over the rule per
batch of items) instead of differentiating through the whole rule.  Levels L = 1, 2, 3, … are run
warm-started (the optimum of one level starts the next); at every level after the first,
Newton's Hessian is that of the level below at the same point (an inexact Newton method, see
:func:`elbo_star_sparse`): per-node Hessians cost d backward passes each, and the next rule is
5–15 times larger.

log p.  Per posterior mode, in the Laplace-whitened coordinates z = ẑ_j + L_j u of
numerics/posterior.py, with the same partition of unity for several modes (the code of
:func:`numerics.posterior._log_integral`, called on the positive- and on the negative-weight
nodes separately — the sparse rule has negative weights — chunk by chunk):

    log_px_red = log(I₊ − I₋),   I± = Σ_{±w_i > 0} |w_i| e^{|u_i|²/2} (2π)^{d/2} · (integrand at u_i).

A non-positive I₊ − I₋ at a level is detected and that level dropped (flag
``nonpositive_levels``); the rounding of the cancellation, (rounding bound + 4u)·(I₊ + I₋)/(I₊ − I₋),
enters the error.

Error estimates (both estimators).  With values v_1, v_2, … at successive levels and δ_j their
differences, the error of the last value is max(δ_last, δ_prev) — a single difference can be
accidentally small when the level-to-level error changes sign, and sparse grids of successive
levels often alternate — and no less than the tail of the differences still to come, as the
last two predict (geometric, and algebraic: Gauss–Hermite converges sub-geometrically for
integrands analytic only in a strip, see :func:`level_error`).  The result is ``converged`` when
that error is ≤ tol·max(1, |v|) + twice the rounding bound, which needs at least three levels.
When the budget of nodes (``max_nodes``) runs out first, or further levels are futile
(:func:`futile`), ``converged`` is False, and the error is what the differences say (the
largest of the last four when they do not shrink).  Added:
Newton decrement (ELBO*), the rounding of the signed sum — :func:`numerics.posterior.rounding_bound`
(per node) times Σ_i|w_i| plus 4u·Σ_i|w_i φ_i| (the sparse weights sum to 1 but their absolute
values to up to ~10⁴: d = 30, level 4) — and :func:`numerics.posterior.value_rounding`.

When to use it (measured on the 2-core machine, one thread).  In d ≥ 4 the sparse rule is far
smaller than the tensor rule of the same accuracy; in d ≤ 3 the tensor rule is as cheap and
converges faster at γ² ≲ 10.  At large γ² the integrand in the scaled coordinates is nearly
polynomial and low levels are exact to rounding (d = 10: stated ≤ 1e-9 at γ² ≥ 1e4 in under a
second); at γ² ≈ 1 Gauss–Hermite converges slowly (a strip-analytic integrand) and the sparse
grid more slowly still (d = 10: ~1e-4 at 3.5e5 nodes): the error says so and the result is
flagged not converged.

Memory.  Every node sum runs over chunks of at most c nodes × g items, sized so that the
transient tensors (estimated from the bytes the decoder's autograd graph saves per node,
measured once per model on a probe batch) fit ``max_memory`` bytes; when one node of one item
does not fit, :class:`numerics.models.ModelError` is raised naming the method and the size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.func import grad, jacrev, vmap

from .cubature import MAX_LEVEL, abs_weight_sum, iter_rule, rule_size
from .elbo import _split_prior_terms, failure_place, mode_starts
from .estimate import Estimate
from .models import GaussianPrior1D, Model, ModelError
from .optimize import ConvergenceError, Objective, model_costs
from .posterior import PosteriorModes, _log_integral, kinks_in_reach, newton_robust, rounding_bound, value_rounding
from .quadrature import LOG_2PI, UNIT_ROUNDOFF

Tensor = torch.Tensor

__all__ = [
    "NonPositiveSumError",
    "elbo_star_sparse",
    "log_marginal_sparse",
    "sparse_levels",
    "level_error",
    "futile",
    "DEFAULT_MAX_MEMORY",
    "MAX_ELBO_NODES",
    "MAX_LOGP_NODES",
]

#: Default working-memory budget of the node sums (bytes).
DEFAULT_MAX_MEMORY = 512 * 2**20
#: Default largest sparse rule for ELBO* (per-node Hessians: the expensive part) ...
MAX_ELBO_NODES = 1_000_000
#: ... raised to MAX_ELBO_WORK / d² nodes where that is larger (the per-node Hessian work grows as
#: d²): d = 10 then reaches level 8 (5.9e6 nodes, ~20 CPU s at γ² = 1, where level 7 stated
#: 1.1e-4 and level 8 5e-5 on the 10-D block model), d ≥ 27 keeps MAX_ELBO_NODES.
MAX_ELBO_WORK = 700_000_000


def elbo_node_budget(d: int) -> int:
    """The default node budget of :func:`elbo_star_sparse`: max(MAX_ELBO_NODES, MAX_ELBO_WORK / d²)."""
    return max(MAX_ELBO_NODES, MAX_ELBO_WORK // (d * d))
#: Default largest sparse rule for log p (values only).
MAX_LOGP_NODES = 10_000_000
#: Largest node chunk (larger chunks gain nothing).
MAX_CHUNK = 1 << 16
#: Largest chunk of per-node Hessians, in Hessian entries (c·d² ≤ this: larger chunks only run slower).
MAX_HESS_ENTRIES = 1 << 21


class NonPositiveSumError(ConvergenceError):
    """The signed sparse-grid sum for log p was not positive at enough levels to state an error:
    the posterior is too far from its Laplace approximation for this rule (fall back to importance
    sampling)."""


def sparse_levels(d: int, max_nodes: int, start: int = 1) -> list[int]:
    """Levels start, start+1, … while the rule has at most ``max_nodes`` nodes (at most
    :data:`numerics.cubature.MAX_LEVEL`).  Fewer than three levels cannot state a converged
    error (module doc): then ModelError names the sizes."""
    levels = []
    L = start
    while L <= MAX_LEVEL and rule_size(d, L) <= max_nodes:
        levels.append(L)
        L += 1
    if len(levels) < 3:
        raise ModelError(f"sparse grid: d = {d} needs at least three levels from level {start} "
                         f"({[rule_size(d, start + j) for j in range(3)]} nodes) but the node budget is {max_nodes}")
    return levels


def level_error(values: list[float], tol_abs: float, levels: list[int] | None = None,
                floor: float = 0.0) -> tuple[float, bool]:
    """(error, converged) of a sequence of values at successive sparse-grid levels (module doc).

    With δ the level-to-level differences, the error is E = max(δ_last, δ_prev) and, when the
    differences shrink (r = δ_last/δ_prev < 1), no less than the tail the last two differences
    predict: the geometric tail δ_last·r/(1 − r), and the algebraic tail δ_last·L/(p − 1) of
    δ_j ∝ j^(−p) through them (p = log(δ_prev/δ_last)/log(L/L_prev), taken ≥ 1.5; L the rule level
    of the last value, from ``levels``, default 1, 2, …).  Gauss–Hermite rules converge
    sub-geometrically for integrands analytic only in a strip (tanh, logistic priors: the error
    falls like exp(−c√m)), so the geometric tail alone understates the error of a slowly converging
    sequence; for a fast one (p large) the algebraic tail is below δ_last and changes nothing.
    Differences at or below ``floor`` (the rounding of a difference) are noise: no tail is
    extrapolated from them.  Converged (at least three values) when E ≤ ``tol_abs``.  Otherwise, when the differences do
    not shrink (r ≥ 1), E is raised to the largest of the last four differences (the recent
    amplitude of the oscillation; the first, coarse levels say nothing about the last).  ``inf``
    with fewer than two values; with two, the one difference, never converged."""
    if len(values) < 2:
        return math.inf, False
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    if not all(math.isfinite(x) for x in diffs):
        return math.inf, False
    last = diffs[-1]
    if len(diffs) < 2:
        return last, False
    prev = diffs[-2]
    err = max(last, prev)
    lv = list(levels) if levels is not None else list(range(1, len(values) + 1))
    r = last / prev if prev > 0 else math.inf
    if r < 1 and last > floor:
        if r > 0:
            p = max(1.5, math.log(prev / last) / math.log(lv[-1] / lv[-2]))
            err = max(err, last * lv[-1] / (p - 1))
        err = max(err, last * r / (1 - r))
    if err <= tol_abs:
        return err, True
    if r >= 1:
        err = max(diffs[-4:])
    return err, False


def futile(values: list[float], tol_abs: float, levels_left: int) -> bool:
    """Whether refining further is futile: over the last four differences the error estimate
    max(δ_last, δ_prev) shrank by less than half per two levels (ratio ρ² ≥ ½ against the two
    differences before), and at that rate the ``levels_left`` remaining levels cannot bring it
    below ``tol_abs``.  (Slow, sub-geometric convergence: a kinked or heavy-tailed integrand, the
    prior-dominated regime γ² ≲ 1 in low d.)  Needs at least five values."""
    if len(values) < 5:
        return False
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    now, before = max(diffs[-2:]), max(diffs[-4:-2])
    if now <= tol_abs or before <= 0:
        return False
    rho2 = now / before
    if rho2 < 0.5:
        return False
    if rho2 >= 1:
        return True
    needed = math.log(tol_abs / now) / (0.5 * math.log(rho2))
    return needed > levels_left


def _tol_abs(tol: float, value: float, rounding: float) -> float:
    """What a level-to-level difference may be for convergence: tol·max(1, |value|) plus twice the
    rounding bound of one value (a difference of two values carries the rounding of both)."""
    return tol * max(1.0, abs(value)) + 2 * rounding


# ----------------------------------------------------------------------------------------
# memory model
# ----------------------------------------------------------------------------------------


def _saved_bytes_per_node(model: Model) -> int:
    """Bytes the autograd graph of φ(z) = −‖x − f(z)‖² + ℓ(z) saves per node (a proxy for the
    decoder's intermediate tensors), measured on a probe batch of 64 nodes (once per model, in
    :func:`numerics.optimize.model_costs`)."""
    costs = model_costs(model)
    if "saved_bytes" in costs:
        return costs["saved_bytes"]
    probe = 64
    z = torch.zeros(probe, model.d, dtype=torch.float64).requires_grad_(True)
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        r = model.decoder(z)
        v = (r * r).sum() + model.prior.log_prob(z).sum()
    del v
    out = max(1, total // probe)
    costs["saved_bytes"] = out
    return out


@dataclass(frozen=True)
class _Footprint:
    """Estimated transient bytes per (node, item) of a value, gradient and Hessian pass."""

    value: int
    grad: int
    hess: int

    @classmethod
    def of(cls, model: Model) -> "_Footprint":
        d, n = model.d, model.n
        S = _saved_bytes_per_node(model)
        base = 8 * (3 * d + 3 * n)  # z, ξ copy, residual, φ, outputs
        val = 2 * (S + base)
        grd = 3 * (S + base) + 8 * 4 * d
        hes = (d + 2) * grd + 8 * 6 * d * d  # forward-mode over d tangents + H and its weighted copies
        return cls(val, grd, hes)


def _plan(per: int, items: int, budget: int, method: str, n_nodes: int) -> tuple[int, int]:
    """(items per group, nodes per chunk) with groups·chunk·per ≤ budget; ModelError when even
    one node of one item does not fit."""
    if per > budget:
        raise ModelError(f"{method}: one node needs about {per} bytes of working memory, more than the budget "
                         f"max_memory = {budget} bytes (rule of {n_nodes} nodes); raise max_memory")
    chunk = min(MAX_CHUNK, n_nodes, budget // per)
    group = max(1, min(items, budget // (per * chunk)))
    return group, chunk


# ----------------------------------------------------------------------------------------
# ELBO*: the chunked cubature objective and its derivatives
# ----------------------------------------------------------------------------------------


class _ElboSums:
    """Value, gradient and Hessian of ELBO_red(a, τ) (module doc) for a batch of items on the
    level-``level`` sparse rule, every node sum chunked to ``max_memory``."""

    def __init__(self, model: Model, level: int, max_memory: int, device: torch.device,
                 hessian_level: int | None = None) -> None:
        self.model, self.d, self.level, self.device = model, model.d, level, device
        # Newton's Hessian may come from a smaller rule (see elbo_star_sparse: inexact Newton)
        self._hsums = (None if hessian_level is None or hessian_level == level
                       else _ElboSums(model, hessian_level, max_memory, device))
        self.N = rule_size(model.d, level)
        self.budget = int(max_memory)
        self.fp = _Footprint.of(model)
        self.closed, _, self._closed_terms = _split_prior_terms(model)
        self.quad = [k for k in range(model.d) if k not in self.closed]
        self._cache: dict[str, tuple[tuple[Tensor, ...], Any]] = {}
        # the whole rule is kept when it is small against the budget, else rebuilt chunk by chunk
        self._rule_bytes = 8 * self.N * (self.d + 1)
        self._rule: list[tuple[Tensor, Tensor]] | None = None
        _plan(self.fp.hess, 1, self.budget, "ELBO* (sparse grid)", self.N)

    # -- the rule -------------------------------------------------------------------------
    def chunks(self, chunk: int) -> Iterator[tuple[Tensor, Tensor]]:
        if self._rule_bytes <= self.budget // 8:
            if self._rule is None:
                self._rule = list(iter_rule(self.d, self.level, MAX_CHUNK, device=self.device))
            for xi, w in self._rule:
                for s in range(0, xi.shape[0], chunk):
                    yield xi[s : s + chunk], w[s : s + chunk]
        else:
            yield from iter_rule(self.d, self.level, chunk, device=self.device)

    # -- per-node integrand ---------------------------------------------------------------
    def _phi_batch(self, z: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        """φ_q at nodes z (G, c, d) for items with x (G, n), eps (G,)."""
        r = x[:, None, :] - self.model.decoder(z)
        out = -(r * r).sum(-1) / (2 * eps[:, None])
        return out + self._ell_quad(z)

    def _ell_quad(self, z: Tensor) -> Tensor:
        prior = self.model.prior
        if not self.closed:
            return prior.log_prob(z)
        if not self.quad:
            return torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        return sum(prior.factors[k].log_prob(z[..., k]) for k in self.quad)

    def _phi_one(self, z: Tensor, x: Tensor, eps: Tensor) -> Tensor:
        r = x - self.model.decoder(z)
        return -(r * r).sum() / (2 * eps) + self._ell_quad(z)

    def _closed(self, params: Tensor, eps: Tensor, mub: Tensor) -> Tensor:
        """Σ_{k closed} E_{N(μ_k, s_k)}[ℓ_k] for one item."""
        d = self.d
        a, tau = params[:d], params[d:]
        zero = torch.zeros((), dtype=params.dtype, device=params.device)
        return self._closed_terms(zero, mub + torch.sqrt(eps) * a, eps * torch.exp(tau))

    @staticmethod
    def _split(params: Tensor, eps: Tensor, mub: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
        mu = mub + torch.sqrt(eps)[:, None] * params[:, :d]
        sd = torch.sqrt(eps[:, None] * torch.exp(params[:, d:]))
        return mu, sd, params[:, d:]

    def _cached(self, kind: str, key: tuple[Tensor, ...]):
        hit = self._cache.get(kind)
        if hit is not None and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(hit[0], key)):
            return hit[1]
        return None

    # -- batched passes -------------------------------------------------------------------
    def value(self, params: Tensor, x: Tensor, eps: Tensor, mub: Tensor, with_abs: bool = False):
        """ELBO_red for items (B,); with ``with_abs`` also Σ_i |w_i φ_i| (B,) (rounding).  Both
        are computed in every pass (the absolute sum costs one more reduction) and cached for the
        last batch of inputs, which Newton evaluates again and again."""
        key = (params, x, eps, mub)
        hit = self._cached("value", key)
        if hit is None:
            d, B = self.d, params.shape[0]
            mu, sd, tau = self._split(params, eps, mub, d)
            Q = torch.zeros(B, dtype=params.dtype, device=params.device)
            A = torch.zeros_like(Q)
            group, chunk = _plan(self.fp.value, B, self.budget, "ELBO* (sparse grid)", self.N)
            for g0 in range(0, B, group):
                sl = slice(g0, g0 + group)
                for xi, w in self.chunks(chunk):
                    z = mu[sl, None, :] + sd[sl, None, :] * xi[None]
                    phi = self._phi_batch(z, x[sl], eps[sl])
                    Q[sl] += phi @ w
                    A[sl] += phi.abs() @ w.abs()
            val = 0.5 * d + 0.5 * tau.sum(-1) + Q
            if self.closed:
                val = val + vmap(self._closed)(params, eps, mub)
            hit = (val, A)
            self._cache["value"] = (tuple(t.clone() for t in key), hit)
        return hit if with_abs else hit[0]

    def gradient(self, params: Tensor, x: Tensor, eps: Tensor, mub: Tensor) -> Tensor:
        key = (params, x, eps, mub)
        hit = self._cached("grad", key)
        if hit is not None:
            return hit
        d, B = self.d, params.shape[0]
        mu, sd, tau = self._split(params, eps, mub, d)
        gmu = torch.zeros(B, d, dtype=params.dtype, device=params.device)
        gsd = torch.zeros_like(gmu)
        node_grad = vmap(vmap(grad(self._phi_one), in_dims=(0, None, None)))
        group, chunk = _plan(self.fp.grad, B, self.budget, "ELBO* (sparse grid)", self.N)
        for g0 in range(0, B, group):
            sl = slice(g0, g0 + group)
            for xi, w in self.chunks(chunk):
                z = mu[sl, None, :] + sd[sl, None, :] * xi[None]
                g = node_grad(z, x[sl], eps[sl])  # (G, c, d)
                gmu[sl] += torch.einsum("gcd,c->gd", g, w)
                gsd[sl] += torch.einsum("gcd,cd->gd", g, xi * w[:, None])
        out = torch.cat([torch.sqrt(eps)[:, None] * gmu, 0.5 + 0.5 * sd * gsd], -1)
        if self.closed:
            out = out + vmap(grad(self._closed))(params, eps, mub)
        self._cache["grad"] = (tuple(t.clone() for t in key), out)
        return out

    def hessian(self, params: Tensor, x: Tensor, eps: Tensor, mub: Tensor) -> Tensor:
        if self._hsums is not None:
            return self._hsums.hessian(params, x, eps, mub)
        key = (params, x, eps, mub)
        hit = self._cached("hess", key)
        if hit is not None:
            return hit
        d, B = self.d, params.shape[0]
        mu, sd, tau = self._split(params, eps, mub, d)
        dt, dev = params.dtype, params.device
        Hmm = torch.zeros(B, d, d, dtype=dt, device=dev)
        Hms = torch.zeros_like(Hmm)
        Hss = torch.zeros_like(Hmm)
        gsd = torch.zeros(B, d, dtype=dt, device=dev)

        def g_aux(z: Tensor, x1: Tensor, e1: Tensor) -> tuple[Tensor, Tensor]:
            g = grad(self._phi_one)(z, x1, e1)
            return g, g

        node_hess = vmap(vmap(jacrev(g_aux, has_aux=True), in_dims=(0, None, None)))
        group, chunk = _plan(self.fp.hess, B, self.budget, "ELBO* (sparse grid)", self.N)
        chunk = max(1, min(chunk, MAX_HESS_ENTRIES // (d * d)))
        for g0 in range(0, B, group):
            sl = slice(g0, g0 + group)
            for xi, w in self.chunks(chunk):
                z = mu[sl, None, :] + sd[sl, None, :] * xi[None]
                H, g = node_hess(z, x[sl], eps[sl])  # (G, c, d, d), (G, c, d)
                xw = xi * w[:, None]
                Hmm[sl] += torch.einsum("gcjk,c->gjk", H, w)
                Hms[sl] += torch.einsum("gcjk,ck->gjk", H, xw)
                Hss[sl] += torch.einsum("gcjk,cj,ck->gjk", H, xi, xw)
                gsd[sl] += torch.einsum("gcd,cd->gd", g, xw)
        se = torch.sqrt(eps)[:, None, None]
        half = 0.5 * sd
        Haa = eps[:, None, None] * Hmm
        Hat = se * Hms * half[:, None, :]
        Htt = half[:, :, None] * Hss * half[:, None, :] + torch.diag_embed(0.5 * half * gsd)
        top = torch.cat([Haa, Hat], -1)
        bot = torch.cat([Hat.transpose(-1, -2), Htt], -1)
        H = torch.cat([top, bot], -2)
        H = 0.5 * (H + H.transpose(-1, -2))
        if self.closed:
            from torch.func import hessian as _hessian

            H = H + vmap(_hessian(self._closed))(params, eps, mub)
        self._cache["hess"] = (tuple(t.clone() for t in key), H)
        return H

    def objective(self) -> Objective:
        """The sums as a :class:`numerics.optimize.Objective` (batched value, gradient and
        Hessian) for numerics.posterior.newton_robust."""
        return _SumsObjective(self)


class _SumsObjective(Objective):
    """:class:`_ElboSums` as the Objective that Newton's method calls: the value, and the
    gradient and Hessian from the chunked per-node sums (module doc), for a batch of items."""

    def __init__(self, sums: _ElboSums) -> None:
        self.sums = sums

    def value(self, x: Tensor, args: tuple[Tensor, ...]) -> Tensor:
        return self.sums.value(x, *args)

    def derivatives(self, x: Tensor, args: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        return self.sums.gradient(x, *args), self.sums.hessian(x, *args)


# ----------------------------------------------------------------------------------------
# ELBO*
# ----------------------------------------------------------------------------------------


def elbo_star_sparse(
    model: Model,
    posts: list[PosteriorModes],
    levels: list[int] | None = None,
    tol: float = 1e-12,
    max_iter: int = 100,
    z0s: Tensor | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    max_nodes: int | None = None,
    progress: bool = False,
    exact_hessian: bool = False,
    stop_futile: bool = True,
) -> list[Estimate]:
    """ELBO*(x) (reduced) for a batch of items given by their posterior modes, on sparse grids
    (module doc); the contract of :func:`numerics.elbo.elbo_star`.

    Every mode of an item is a start (μ = ẑ_j, t_k = 1/H̃_kk), the best local optimum is kept.
    ``levels``: sparse levels (default :func:`sparse_levels` (d, ``max_nodes``): 1, 2, … while the
    rule has at most ``max_nodes`` nodes; default :func:`elbo_node_budget`), run warm-started until :func:`level_error` meets
    ``tol``·max(1, |value|) + rounding; a start leaves the sweep once it has, or, with
    ``stop_futile``, once :func:`futile` says the remaining levels cannot get there (it is then
    not converged, its error what the differences say).  ``max_memory``:
    bytes for the transient tensors of the node sums (ModelError when one node does not fit).

    Newton's Hessian at a level L after the first is, unless ``exact_hessian``, the Hessian of the
    level-(L−1) sum at the same point (an inexact Newton method): the per-node Hessians are the
    expensive part (d backward passes per node, and the next rule is ~5–15× larger), the Hessians
    of two successive levels differ only by the level error, and the gradient, the value and the
    line search are those of level L, so the iteration converges to the level-L optimum; the
    decrement ½ gᵀ|H̃|⁻¹g it stops on is the predicted remaining gain to relative accuracy
    ‖H̃ − H‖/‖H‖ (it is in the error estimate anyway).

    Returns one :class:`Estimate` per item, method ``"sparse_grid_newton"``, ``argmax = {"mu",
    "s"}`` and ``diagnostics`` with ``grad_norm``, ``newton_decrement``, ``levels`` (the levels
    run), ``nodes`` (their sizes), ``converged``, ``n_local_optima``, ``reduced``.
    Raises ConvergenceError (naming the point and γ²) if Newton does not converge.
    """
    d = model.d
    device = posts[0].x.device
    levels = list(levels) if levels is not None else sparse_levels(d, elbo_node_budget(d) if max_nodes is None else max_nodes)
    if not levels or any((not isinstance(L, int)) or L < 0 or L > MAX_LEVEL for L in levels):
        raise ValueError(f"elbo_star_sparse: levels must be integers in [0, {MAX_LEVEL}], got {levels}")
    items, Mb, Xb, Eb, params, rb = mode_starts(posts, d, device)
    S = len(items)

    def failure(i: int, dec: float, its: int, level: int) -> str:
        b = items[i]
        where = failure_place(posts, z0s, b)
        if not math.isfinite(dec):
            return (f"ELBO* (sparse grid, level {level}) is not finite at {where}, γ² = {posts[b].gamma2:g}: the decoder "
                    "or the prior is not finite at some cubature nodes of q around z0")
        return (f"ELBO* optimizer (sparse grid, level {level}) did not converge at {where}, γ² = {posts[b].gamma2:g} "
                f"(Newton decrement {dec:.3e} after {its} iterations)")

    history = [[] for _ in range(S)]  # values per level
    noise = torch.zeros(S, dtype=torch.float64, device=device)  # rounding of the signed sum at the last level
    dec = torch.zeros(S, dtype=torch.float64, device=device)
    gnorm = torch.zeros(S, dtype=torch.float64, device=device)
    active = list(range(S))
    used_levels = [[] for _ in range(S)]
    bar = _progress(progress, len(levels), "ELBO* sparse levels")
    prev_level: int | None = None
    for L in levels:
        if not active:
            break
        idx = torch.tensor(active, device=device)
        sums = _ElboSums(model, L, max_memory, device, None if exact_hessian else prev_level)
        prev_level = L
        args = (Xb[idx], Eb[idx], Mb[idx])
        with torch.no_grad():
            _, absum = sums.value(params[idx], *args, with_abs=True)
        wabs = abs_weight_sum(d, L)
        nz = rb[idx] * wabs + 4 * UNIT_ROUNDOFF * absum
        res = newton_robust(sums.objective(), params[idx], args, max_iter=max_iter, tol=1e-20, value_noise=nz)
        bad = ~res.converged
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            raise ConvergenceError(failure(active[j], float(res.decrement[j]), res.iterations, L))
        params[idx] = res.x
        with torch.no_grad():
            _, absum = sums.value(res.x, *args, with_abs=True)
        still = []
        for j, i in enumerate(active):
            v = float(res.value[j])
            history[i].append(v)
            used_levels[i].append(L)
            noise[i] = float(rb[i]) * (wabs - 1) + 4 * UNIT_ROUNDOFF * float(absum[j])
            dec[i] = res.decrement[j]
            gnorm[i] = torch.linalg.vector_norm(res.grad[j])
            rnd = float(rb[i]) + float(noise[i])
            tol_i = _tol_abs(tol, v, rnd)
            _, conv = level_error(history[i], tol_i, used_levels[i], 2 * rnd)
            if not conv and not (stop_futile and futile(history[i], tol_i, len(levels) - 1 - levels.index(L))):
                still.append(i)
        active = still
        bar.update(1)
    bar.close()
    out: list[Estimate] = []
    item_idx = torch.tensor(items, device=device)
    for b, pm in enumerate(posts):
        idx = (item_idx == b).nonzero().flatten().tolist()
        best = max(idx, key=lambda i: history[i][-1])
        v = history[best][-1]
        a, tau = params[best, :d], params[best, d:]
        mu = Mb[best] + math.sqrt(pm.eps) * a
        sv = pm.eps * torch.exp(tau)
        rbb, nzb, dv = float(rb[best]), float(noise[best]), float(dec[best])
        err, conv = level_error(history[best], _tol_abs(tol, v, rbb + nzb), used_levels[best], 2 * (rbb + nzb))
        diag = {
            "grad_norm": float(gnorm[best]),
            "newton_decrement": dv,
            "levels": used_levels[best],
            "nodes": [rule_size(d, L) for L in used_levels[best]],
            "level_values": list(history[best]),
            "converged": conv,
            "n_local_optima": len(idx),
            "reduced": True,
        }
        out.append(Estimate(v, err + dv + rbb + nzb + value_rounding(v), "sparse_grid_newton", "refinement", diag,
                            {"mu": mu, "s": sv}))
    return out


# ----------------------------------------------------------------------------------------
# log p
# ----------------------------------------------------------------------------------------


def _log_integral_chunked(model: Model, pm: PosteriorModes, level: int, budget: int, fp: _Footprint
                          ) -> tuple[float, float]:
    """(log I₊, log I₋) of the level-``level`` rule (module doc), each including the constant
    d/2·log(γ²/2π) once, node sums chunked to ``budget`` bytes."""
    d = model.d
    N = rule_size(d, level)
    per = fp.value * max(1, pm.count) + 8 * pm.count * (2 * d + 2)
    _, chunk = _plan(per, 1, budget, "log p (sparse grid)", N)
    pos: list[float] = []
    neg: list[float] = []
    for u, w in iter_rule(d, level, chunk, device=pm.modes.device):
        lw = torch.log(w.abs()) + 0.5 * (u * u).sum(-1) + 0.5 * d * LOG_2PI
        for sel, acc in ((w > 0, pos), (w < 0, neg)):
            if bool(sel.any()):
                acc.append(_log_integral(model, pm, (u[sel], lw[sel])))
    lse = lambda v: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) if v else -math.inf  # noqa: E731
    return lse(pos), lse(neg)


def log_marginal_sparse(
    model: Model,
    pm: PosteriorModes,
    levels: list[int] | None = None,
    tol: float = 1e-12,
    max_memory: int = DEFAULT_MAX_MEMORY,
    max_nodes: int = MAX_LOGP_NODES,
    progress: bool = False,
    stop_futile: bool = True,
) -> Estimate:
    """log p_γ(x), reduced, by sparse-grid Gauss–Hermite in the Laplace-whitened coordinates of
    every posterior mode (module doc); the contract of :func:`numerics.posterior.log_marginal_gh`.

    Levels (default :func:`sparse_levels` (d, ``max_nodes``)) run until :func:`level_error` meets
    ``tol``·max(1, |value|) + rounding (or, with ``stop_futile``, until :func:`futile`).  A
    level whose signed sum I₊ − I₋ is not positive is
    dropped (``diagnostics["nonpositive_levels"]``, ``converged`` False unless three positive
    levels later agree).  Raises ConvergenceError when a kink of the prior lies in the
    posterior's bulk (no Gauss–Hermite rule converges there), and :class:`NonPositiveSumError` (a
    ConvergenceError) when fewer than two levels give a positive sum: the caller falls back to
    importance sampling.  When not converged and some prior factor is not Gaussian (tails
    heavier than the Laplace chart's), the error is raised to the range of the values of the last
    half of the levels: there the level values can settle away from the limit (measured: d = 3,
    logistic prior, γ² ≤ 0.1, 1.5e-7 off with last differences of 1e-8).
    Returns an :class:`Estimate`, method ``"sparse_grid"``, ``diagnostics`` with
    ``levels``, ``nodes``, ``level_values``, ``converged``, ``modes``, ``n_modes``,
    ``nonpositive_levels``, ``cancellation`` ((I₊ + I₋)/(I₊ − I₋) at the last level),
    ``heavy_tailed_prior``, ``reduced``.
    """
    d = model.d
    levels = list(levels) if levels is not None else sparse_levels(d, max_nodes)
    kinks = kinks_in_reach(model, pm)
    if kinks:
        k, t = kinks[0]
        raise ConvergenceError(
            f"log p (sparse grid): the kink of the {model.prior.factors[k].name} prior at z{k + 1} = {t:g} lies inside "
            "the posterior's bulk, where Gauss–Hermite cubature cannot honour its accuracy; use importance sampling or "
            "a larger γ²")
    rb = rounding_bound(pm.x, pm.gamma2, d)
    fp = _Footprint.of(model)
    vals: list[float] = []
    used: list[int] = []
    bad: list[int] = []
    cancel = math.inf
    bar = _progress(progress, len(levels), "log p sparse levels")
    for L in levels:
        lp, ln = _log_integral_chunked(model, pm, L, int(max_memory), fp)
        bar.update(1)
        if not (math.isfinite(lp) and ln < lp):
            bad.append(L)
            continue
        ratio = math.exp(ln - lp)
        v = lp + math.log1p(-ratio)
        cancel = (1 + ratio) / (1 - ratio)
        vals.append(v)
        used.append(L)
        noise = (rb + 4 * UNIT_ROUNDOFF) * cancel
        tol_v = _tol_abs(tol, v, noise)
        if level_error(vals, tol_v, used, 2 * noise)[1] or (stop_futile and futile(vals, tol_v, len(levels) - 1 - levels.index(L))):
            break
    bar.close()
    if not vals:
        raise NonPositiveSumError(f"log p (sparse grid): the signed cubature sum was not positive at any level {levels} "
                               "(the posterior is far from its Laplace approximation); use importance sampling")
    noise = (rb + 4 * UNIT_ROUNDOFF) * cancel
    err, conv = level_error(vals, _tol_abs(tol, vals[-1], noise), used, 2 * noise)
    if not math.isfinite(err):  # a single positive level: no difference to state
        raise NonPositiveSumError(f"log p (sparse grid): only level(s) {used} gave a positive signed sum (levels {bad} did "
                               "not); no error can be stated; use importance sampling")
    heavy = any(not isinstance(f, GaussianPrior1D) for f in model.prior.factors)
    if not conv and heavy:
        # prior tails heavier than Gaussian, not converged: the integrand in the Laplace chart
        # grows like e^{|u|²/2 − c|u|} and the level values can settle away from the limit (d = 3,
        # logistic prior, γ² ≤ 0.1: 1.5e-7 off while the last differences were 1e-8); state the
        # range of the last half of the levels
        half = vals[len(vals) // 2 :]
        err = max(err, max(abs(vals[-1] - v) for v in half))
    info: dict[str, Any] = {
        "levels": used,
        "nodes": [rule_size(d, L) for L in used],
        "level_values": list(vals),
        "converged": conv and not (bad and bad[-1] > used[-1]),
        "modes": pm.modes.tolist(),
        "n_modes": pm.count,
        "nonpositive_levels": bad,
        "cancellation": cancel,
        "heavy_tailed_prior": heavy,
        "reduced": True,
    }
    return Estimate(vals[-1], err + noise + value_rounding(vals[-1]), "sparse_grid", "refinement", info)


def _progress(on: bool, total: int, desc: str):
    """A tqdm bar over the sparse levels (stderr; a no-op unless ``on``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not on)
