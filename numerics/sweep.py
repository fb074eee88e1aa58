"""The point sweep: log p_γ(x), ELBO*(x), the gap and c_IMA at x = f(z0) for many latent
points z0 and decoder precisions γ², batched.

One :class:`PointResult` per (z0, γ²):

- ``log_px``    log p_γ(x) (Gauss–Hermite around every posterior mode: tensor or sparse grid; or
                randomized QMC importance sampling)
- ``elbo_star`` ELBO*(x) = sup_{μ,s} ELBO(x; μ, s) over mean-field Gaussians q = N(μ, diag s)
                (Newton on a tensor or a sparse-grid Gauss–Hermite rule)
- ``gap``       log p_γ(x) − ELBO*(x), from the reduced quantities (both O(1), the divergent
                (n−d)/2 · log(γ²/2π) cancels exactly), so it does not cancel catastrophically
- ``c_ima``     c_IMA(f, z0) = Σ_k log‖J_k‖ − ½ log det JᵀJ; ``l_ima`` = log p_γ(x) − c_IMA
- ``mu_star``, ``s_star``: the optimal encoder mean μ* and variances s* (s_k = σ_k²)
- ``flags``     e.g. ``multimodal`` (the decoder is not injective near x: outside the
                theorems; the extra modes are included in log p)
- ``method``    which method computed log p and ELBO* at this row (:func:`choose_methods`)

Methods.  ``log_px_method``: ``"gh"`` (tensor Gauss–Hermite, the accurate path for small d),
``"sparse"`` (Smolyak sparse grid, :mod:`numerics.highdim`), ``"is"`` (randomized QMC importance
sampling, :func:`numerics.montecarlo.log_marginal_rqmc`) or ``"auto"``; ``elbo_method``:
``"tensor"``, ``"sparse"`` or ``"auto"``.  Every node sum runs in chunks within ``max_memory``
bytes; a request that cannot be honoured within the budgets raises
:class:`numerics.quadrature.MemoryBudgetError` naming a method that would fit.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .elbo import elbo_star
from .estimate import Estimate
from .jacobian import SingularJacobianError, c_ima_from_jacobian, jacobian
from .models import Model, ModelError
from .montecarlo import RQMC_REPLICATES, log_marginal_rqmc
from .optimize import ConvergenceError
from .posterior import _is_linalg_failure, divergent_term, find_modes, log_marginal_gh
from .quadrature import DEFAULT_MAX_MEMORY, MemoryBudgetError, refinement_levels

Tensor = torch.Tensor

#: log p: "gh" tensor Gauss–Hermite, "sparse" sparse grid, "is" randomized QMC importance sampling.
LOG_PX_METHODS = ("auto", "gh", "sparse", "is")
#: ELBO*: "tensor" Gauss–Hermite, "sparse" sparse grid.
ELBO_METHODS = ("auto", "tensor", "sparse")
#: "auto" uses the tensor rules up to this dimension and sparse grids above: measured on the 2-core
#: machine (docs/performance.md), the tensor refinement is cheaper there for the same accuracy.
AUTO_TENSOR_MAX_D = 3
#: "auto" log p takes importance sampling instead of non-converged sparse levels when this many of
#: its standard errors are below the sparse grid's error estimate.
IS_SE_FACTOR = 2.0

#: The γ² range in which float64 honours the stated accuracy (full accuracy to 1e8, stable to
#: 1e12; the same limits as theory.spec.GAMMA2_MIN/MAX, which a spec is checked against).
#: Below 1e-8 the scaled Hessians of the estimators lose all precision (γ² = 1e-300 ends in a
#: failed eigendecomposition); above 1e12 the rounding of x − f(z), amplified by γ, exceeds the
#: stated stability (at 1e16 spurious extra modes 2e-11 apart appeared).
GAMMA2_MIN = 1e-8
GAMMA2_MAX = 1e12
#: Largest tensor Gauss–Hermite rule (nodes per item) a refinement may need: beyond it (d >= 8) the
#: node sums take hours (memory is bounded by chunking, time is not).
MAX_RULE_NODES = 2**21


@dataclass
class PointResult:
    """Everything computed at one latent point z0 and one γ² (x = f(z0)).

    ``log_px``, ``elbo_star`` and ``gap`` are :class:`Estimate` s of the full quantities;
    ``reduced_log_px`` and ``reduced_elbo_star`` drop the shared divergent term
    ``divergent_term`` = (n−d)/2 · log(γ²/2π) and stay O(1) as γ² → ∞.
    ``prediction`` holds the symbolic expansion at z0 when it was attached (proofs_check).
    ``method``: ``{"log_px": "gh" | "sparse" | "is", "elbo_star": "tensor" | "sparse"}``, the
    method that computed each quantity at this row (also when "auto" chose it).
    """

    latent: list[float]
    x: list[float]
    gamma2: float
    log_px: Estimate
    elbo_star: Estimate
    gap: Estimate
    c_ima: float
    reduced_log_px: float
    reduced_elbo_star: float
    divergent_term: float
    mu_star: list[float]
    s_star: list[float]
    modes: list[list[float]]
    flags: list[str] = field(default_factory=list)
    prediction: dict[str, Any] | None = None
    method: dict[str, str] = field(default_factory=dict)

    @property
    def eps(self) -> float:
        """ε = γ⁻², the decoder variance."""
        return 1.0 / self.gamma2

    @property
    def n_modes(self) -> int:
        return len(self.modes)

    @property
    def l_ima(self) -> float:
        """L_IMA(x) = log p_γ(x) − c_IMA(f, g(x))."""
        return self.log_px.value - self.c_ima

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of `gapcheck evaluate` (docs/json.md)."""
        out: dict[str, Any] = {
            "latent": self.latent,
            "x": self.x,
            "gamma2": self.gamma2,
            "log_px": self.log_px.value,
            "elbo_star": self.elbo_star.value,
            "gap": self.gap.value,
            "c_ima": self.c_ima,
            "l_ima": self.l_ima,
            "mu_star": self.mu_star,
            "s_star": self.s_star,
            "error": {"log_px": self.log_px.error, "elbo_star": self.elbo_star.error, "gap": self.gap.error},
            "error_kind": {"log_px": self.log_px.error_kind, "elbo_star": self.elbo_star.error_kind},
            "reduced": {"log_px": self.reduced_log_px, "elbo_star": self.reduced_elbo_star, "divergent_term": self.divergent_term},
            "n_modes": self.n_modes,
            "modes": self.modes,
            "flags": list(self.flags),
            "method": dict(self.method),
            "diagnostics": {
                "log_px_method": self.log_px.method,
                "log_px_levels": self.log_px.diagnostics.get("levels", []),
                **({"log_px_ess": self.log_px.diagnostics["ess"]} if "ess" in self.log_px.diagnostics else {}),
                **({"log_px_samples": self.log_px.diagnostics["num_samples"]}
                   if "num_samples" in self.log_px.diagnostics else {}),
                **({"log_px_proposal": self.log_px.diagnostics["proposal"]}
                   if "proposal" in self.log_px.diagnostics else {}),
                "elbo_levels": self.elbo_star.diagnostics["levels"],
                "elbo_grad_norm": self.elbo_star.diagnostics["grad_norm"],
                "elbo_newton_decrement": self.elbo_star.diagnostics["newton_decrement"],
            },
        }
        if self.prediction is not None:
            out["prediction"] = self.prediction
        return out


def _finite(v: float, what: str, where: str = "") -> float:
    if not math.isfinite(v):
        raise FloatingPointError(f"{what} is not finite ({v}){' ' + where if where else ''}")
    return v


def _fmt_point(p: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in p) + ")"


def tensor_rule_nodes(d: int) -> int:
    """Nodes per item of the finest tensor Gauss–Hermite rule of the refinement (both log p and ELBO*)."""
    return max(k**d for k in refinement_levels(d))


def choose_methods(d: int, log_px_method: str = "auto", elbo_method: str = "auto") -> tuple[str, str]:
    """(log p method, ELBO* method) for dimension d: the requested ones, or for "auto" the tensor
    rules up to :data:`AUTO_TENSOR_MAX_D` and sparse grids above (log p "sparse" there falls back
    to importance sampling, per item, where the sparse levels do not converge)."""
    if log_px_method not in LOG_PX_METHODS:
        raise ValueError(f"log_px_method must be one of {LOG_PX_METHODS}, got {log_px_method!r}")
    if elbo_method not in ELBO_METHODS:
        raise ValueError(f"elbo_method must be one of {ELBO_METHODS}, got {elbo_method!r}")
    small = d <= AUTO_TENSOR_MAX_D
    lp = log_px_method if log_px_method != "auto" else ("gh" if small else "sparse")
    el = elbo_method if elbo_method != "auto" else ("tensor" if small else "sparse")
    return lp, el


def _sparse_level_check(d: int, what: str, max_nodes: int, alternative: str) -> None:
    from .highdim import sparse_levels

    try:
        sparse_levels(d, max_nodes)
    except ModelError as exc:
        raise MemoryBudgetError(f"{what} by sparse grid: {exc}; {alternative}") from None


def check_budget(d: int, log_px_method: str = "auto", elbo_method: str = "auto") -> tuple[str, str]:
    """The methods :func:`choose_methods` picks, refused up front (MemoryBudgetError, naming a
    method that would fit) when a rule would exceed its node budget: the tensor rules beyond
    :data:`MAX_RULE_NODES` nodes, sparse grids with fewer than three levels within
    numerics.highdim's node limits.  "auto" log p moves to importance sampling when the sparse
    grid cannot run at all."""
    lp, el = choose_methods(d, log_px_method, elbo_method)
    nodes = tensor_rule_nodes(d)
    if el == "tensor" and nodes > MAX_RULE_NODES:
        raise MemoryBudgetError(f"d = {d} latents: the tensor Gauss–Hermite rule of ELBO* would need {nodes:.3g} nodes per "
                                f"item (limit {MAX_RULE_NODES}); use --elbo-method sparse (or auto)")
    if lp == "gh" and nodes > MAX_RULE_NODES:
        raise MemoryBudgetError(f"d = {d} latents: the tensor Gauss–Hermite rule of log p would need {nodes:.3g} nodes per "
                                f"item (limit {MAX_RULE_NODES}); use --log-px-method sparse or is (or auto)")
    if "sparse" not in (lp, el):
        return lp, el
    # imported only when needed: numerics.highdim is not used by (and not loaded for) d <= 3 runs
    from .highdim import MAX_ELBO_NODES, MAX_LOGP_NODES

    if el == "sparse":
        _sparse_level_check(d, "ELBO*", MAX_ELBO_NODES, "no other ELBO* method fits either: use fewer latents")
    if lp == "sparse":
        try:
            _sparse_level_check(d, "log p", MAX_LOGP_NODES, "use --log-px-method is")
        except MemoryBudgetError:
            if log_px_method != "auto":
                raise
            lp = "is"
    return lp, el


def check_inputs(model: Model, points: Sequence[Tensor], gamma2s: Sequence[float], log_px_method: str = "auto",
                 elbo_method: str = "auto") -> tuple[str, str]:
    """Refuse (ModelError, naming the problem) what the estimators cannot honour: γ² outside
    [GAMMA2_MIN, GAMMA2_MAX], a latent point on a kink of the prior, or methods whose rules do
    not fit their budgets (:func:`check_budget`, MemoryBudgetError).  Returns the methods
    (log p, ELBO*) that will run."""
    src = model.meta.get("source", "")
    pre = f"{src}: " if src else ""
    for g2 in gamma2s:
        if not (math.isfinite(g2) and GAMMA2_MIN <= g2 <= GAMMA2_MAX):
            raise ModelError(f"{pre}γ² = {g2:g} is outside the supported range [{GAMMA2_MIN:g}, {GAMMA2_MAX:g}] "
                             "(where float64 honours the stated accuracy)")
    try:
        methods = check_budget(model.d, log_px_method, elbo_method)
    except MemoryBudgetError as exc:
        raise MemoryBudgetError(f"{pre}{exc}") from None
    kinks = model.prior.kinks
    for p in points:
        for k, t in kinks:
            if float(p[k]) == t:
                raise ModelError(f"{pre}latent point z0 = {_fmt_point(p.tolist())}: z{k + 1} = {t:g} is on the kink of "
                                 f"the {model.prior.factors[k].name} prior, where ℓ is not differentiable; the estimators "
                                 "and the theorems need a smooth prior at z0: move the point off the kink")
    return methods


def _is_points(samples: int) -> int:
    """Sobol points per replicate for ``samples`` draws in all: the largest power of 2 ≤ samples/R (≥ 2)."""
    per = max(2, samples // RQMC_REPLICATES)
    return 1 << (per.bit_length() - 1)


def _log_px_is(model: Model, pm, samples: int, seed: int, max_memory: int) -> Estimate:
    """log p by randomized QMC importance sampling: the Laplace proposal, and also the Student-t
    one when the Laplace weights are uneven (pooled ESS below half the draws: heavy posterior
    tails, e.g. a logistic prior at small γ²); the estimate with the smaller standard error is kept
    (``diagnostics["proposal"]`` says which)."""
    n = _is_points(samples)
    est = log_marginal_rqmc(model, pm, n, RQMC_REPLICATES, seed, "laplace", max_memory=max_memory)
    if est.diagnostics["ess"] < 0.5 * est.diagnostics["num_samples"]:
        alt = log_marginal_rqmc(model, pm, n, RQMC_REPLICATES, seed, "laplace_t", max_memory=max_memory)
        if alt.error < est.error:
            est = alt
    return est


def evaluate_points(
    model: Model,
    points: Sequence[Tensor],
    gamma2s: Sequence[float],
    search_modes: bool = True,
    log_px_method: str = "auto",
    is_samples: int = 65536,
    seed: int = 0,
    elbo_method: str = "auto",
    max_memory: int | None = None,
    progress: bool = False,
) -> list[PointResult]:
    """log p, ELBO*, gap and c_IMA at x = f(z0) for every z0 in ``points`` and every γ² in
    ``gamma2s``; one :class:`PointResult` per (point, γ²), points outer.

    ``log_px_method``: ``"gh"`` (tensor Gauss–Hermite with refinement, error ~1e-13 where it
    converges, cost K^d nodes per item), ``"sparse"`` (Smolyak sparse grid, numerics.highdim,
    cost ~(2d)^L/L! nodes), ``"is"`` (randomized QMC importance sampling with ``is_samples``
    draws in all, R = 16 scrambled Sobol replicates, error = one standard error over replicates,
    cost linear in the draws; flagged ``log_px_monte_carlo``), or ``"auto"``: "gh" for
    d ≤ :data:`AUTO_TENSOR_MAX_D`, else "sparse", with "is" for the items where the sparse
    levels do not converge (or cannot run) and :data:`IS_SE_FACTOR` standard errors of "is" are
    below the sparse error estimate.  ``elbo_method``: ``"tensor"``, ``"sparse"`` or
    ``"auto"`` (tensor for d ≤ :data:`AUTO_TENSOR_MAX_D`).  ``max_memory``: byte budget of the
    node sums (default :data:`numerics.quadrature.DEFAULT_MAX_MEMORY`).  The method used is in
    each row's ``method``.  ``progress``: tqdm bars on stderr for the long steps.

    Raises SingularJacobianError if J(z0) is singular, FloatingPointError if the decoder is
    not finite at a point, ConvergenceError if an optimizer fails (naming x and γ²),
    MemoryBudgetError (a ModelError) when the methods cannot fit their budgets."""
    max_memory = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
    if max_memory < 1:
        raise ModelError(f"max_memory must be a positive number of bytes, got {max_memory}")
    lp_method, el_method = check_inputs(model, points, gamma2s, log_px_method, elbo_method)
    src = model.meta.get("source", "")
    pre = f"{src}: " if src else ""
    d, n = model.d, model.n
    items = [(zi, g2) for zi in points for g2 in gamma2s]
    Z = torch.stack([p for p, _ in items])
    X = model.decoder(Z)
    if not bool(torch.isfinite(X).all()):
        bad = []
        for p in points:
            if not bool(torch.isfinite(model.decoder(p[None])).all()) and _fmt_point(p.tolist()) not in bad:
                bad.append(_fmt_point(p.tolist()))
        raise FloatingPointError(f"{pre}the decoder is not finite at latent point(s) z0 = {', '.join(bad[:5])}"
                                 + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    cimas = {}
    Js = jacobian(model.decoder, torch.stack(list(points)))
    for i, (p, J) in enumerate(zip(points, Js)):
        try:
            cimas[i] = float(c_ima_from_jacobian(J))
        except SingularJacobianError:
            raise SingularJacobianError(
                f"{pre}the Jacobian J(z0) is singular (or not finite) at z0 = {_fmt_point(p.tolist())}: the decoder is "
                "not locally injective there, so c_IMA and the theorems do not apply"
            ) from None
    # the numerically computed normalizer of a user-given prior density (ExpressionPrior1D) carries
    # an error: it shifts log p and ELBO* alike (not the gap), so it enters their error estimates
    norm_err = float(sum(getattr(f, "log_normalizer_error", 0.0) for f in model.prior.factors))
    try:
        posts = find_modes(model, X, [g for _, g in items], Z, search=search_modes)
        if el_method == "tensor":
            stars = elbo_star(model, posts, z0s=Z, max_memory=max_memory)
        else:
            from .highdim import elbo_star_sparse

            stars = elbo_star_sparse(model, posts, z0s=Z, max_memory=max_memory, progress=progress)
    except ConvergenceError as exc:
        raise ConvergenceError(f"{pre}{exc}") from None
    except ModelError as exc:  # a budget refusal (MemoryBudgetError, or the sparse grid's): name the spec
        raise type(exc)(f"{pre}{exc}") from None
    except RuntimeError as exc:  # linear algebra on non-finite values that no estimator confined
        if not _is_linalg_failure(exc):
            raise
        raise ConvergenceError(f"{pre}linear algebra failed on non-finite values for the points z0 = "
                               f"{', '.join(_fmt_point(p.tolist()) for p in points[:5])} (γ² = "
                               f"{', '.join(f'{g:g}' for g in gamma2s[:5])}): {str(exc).splitlines()[0][:120]}") from None
    out = []
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc="log p", unit="item", file=sys.stderr, disable=not progress, leave=False)
    for idx, ((zi, g2), pm, st) in enumerate(zip(items, posts, stars)):
        where = f"at z0 = {_fmt_point(zi.tolist())}, γ² = {g2:g}"
        used = lp_method
        try:
            if lp_method == "gh":
                lp = log_marginal_gh(model, pm, max_memory=max_memory)
            elif lp_method == "is":
                lp = _log_px_is(model, pm, is_samples, seed, max_memory)
            else:
                from .highdim import log_marginal_sparse

                try:
                    lp = log_marginal_sparse(model, pm, max_memory=max_memory)
                except ConvergenceError:
                    if log_px_method != "auto":
                        raise
                    lp = None
                if log_px_method == "auto" and (lp is None or not lp.diagnostics["converged"]):
                    # the sparse levels did not converge: importance sampling replaces them when two of
                    # its standard errors are below their error estimate (an SE is one sigma, the
                    # refinement error is meant as a bound)
                    alt = _log_px_is(model, pm, is_samples, seed, max_memory)
                    if lp is None or IS_SE_FACTOR * alt.error < lp.error:
                        lp, used = alt, "is"
        except ConvergenceError as exc:
            raise ConvergenceError(f"{pre}{where}: {exc}") from None
        except ModelError as exc:
            raise type(exc)(f"{pre}{where}: {exc}") from None
        except RuntimeError as exc:
            if not _is_linalg_failure(exc):
                raise
            raise ConvergenceError(f"{pre}log p quadrature failed {where}: {str(exc).splitlines()[0][:120]}") from None
        bar.update(1)
        div = divergent_term(n, d, g2)
        flags = []
        if pm.count > 1:
            flags.append("multimodal")
        if used == "is":
            flags.append("log_px_monte_carlo")
        elif not lp.diagnostics["converged"]:
            flags.append("log_px_quadrature_not_converged")
        if not st.diagnostics["converged"]:
            flags.append("elbo_quadrature_not_converged")
        gap_kind = "standard_error" if lp.error_kind == "standard_error" else st.error_kind
        fail = f"{where} (the integrand is not finite on part of the posterior's bulk?)"
        _finite(lp.value, f"{pre}log p", fail)
        _finite(st.value, f"{pre}ELBO*", fail)
        _finite(lp.error + st.error, f"{pre}the error estimate of the gap", fail)
        gap = Estimate(_finite(lp.value - st.value, f"{pre}gap", fail), lp.error + st.error, "difference", gap_kind,
                       {"log_px_method": lp.method, "elbo_star_method": st.method})
        out.append(PointResult(
            latent=zi.tolist(),
            x=X[idx].tolist(),
            gamma2=float(g2),
            log_px=dataclasses.replace(lp.shifted(_finite(div, "divergent term")), error=lp.error + norm_err),
            elbo_star=dataclasses.replace(st.shifted(div), error=st.error + norm_err),
            gap=gap,
            c_ima=cimas[idx // len(gamma2s)],
            reduced_log_px=lp.value,
            reduced_elbo_star=st.value,
            divergent_term=div,
            mu_star=st.argmax["mu"].tolist(),
            s_star=st.argmax["s"].tolist(),
            modes=pm.modes.tolist(),
            flags=flags,
            method={"log_px": used, "elbo_star": el_method},
        ))
    bar.close()
    return out
