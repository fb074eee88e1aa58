"""The point sweep: log p_γ(x), ELBO*(x), the gap and c_IMA at x = f(z0) for many latent
points z0 and decoder precisions γ², batched.

One :class:`PointResult` per (z0, γ²):

- ``log_px``    log p_γ(x) (Gauss–Hermite around every posterior mode, or importance sampling)
- ``elbo_star`` ELBO*(x) = sup_{μ,s} ELBO(x; μ, s) over mean-field Gaussians q = N(μ, diag s)
- ``gap``       log p_γ(x) − ELBO*(x), from the reduced quantities (both O(1), the divergent
                (n−d)/2 · log(γ²/2π) cancels exactly), so it does not cancel catastrophically
- ``c_ima``     c_IMA(f, z0) = Σ_k log‖J_k‖ − ½ log det JᵀJ; ``l_ima`` = log p_γ(x) − c_IMA
- ``mu_star``, ``s_star``: the optimal encoder mean μ* and variances s* (s_k = σ_k²)
- ``flags``     e.g. ``multimodal`` (the decoder is not injective near x: outside the
                theorems; the extra modes are included in log p)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .elbo import elbo_star
from .estimate import Estimate
from .jacobian import SingularJacobianError, c_ima_from_jacobian, jacobian
from .models import Model, ModelError
from .montecarlo import log_marginal_is
from .optimize import ConvergenceError
from .posterior import _is_linalg_failure, divergent_term, find_modes, log_marginal_gh
from .quadrature import refinement_levels

Tensor = torch.Tensor

LOG_PX_METHODS = ("gh", "is")

#: The γ² range in which float64 honours the stated accuracy (full accuracy to 1e8, stable to
#: 1e12; the same limits as theory.spec.GAMMA2_MIN/MAX, which a spec is checked against).
#: Below 1e-8 the scaled Hessians of the estimators lose all precision (γ² = 1e-300 ends in a
#: failed eigendecomposition); above 1e12 the rounding of x − f(z), amplified by γ, exceeds the
#: stated stability (at 1e16 spurious extra modes 2e-11 apart appeared).
GAMMA2_MIN = 1e-8
GAMMA2_MAX = 1e12
#: Largest tensor Gauss–Hermite rule (nodes) the ELBO* refinement may need: beyond it (d >= 8)
#: memory runs to tens of GB.
MAX_RULE_NODES = 2**21


@dataclass
class PointResult:
    """Everything computed at one latent point z0 and one γ² (x = f(z0)).

    ``log_px``, ``elbo_star`` and ``gap`` are :class:`Estimate` s of the full quantities;
    ``reduced_log_px`` and ``reduced_elbo_star`` drop the shared divergent term
    ``divergent_term`` = (n−d)/2 · log(γ²/2π) and stay O(1) as γ² → ∞.
    ``prediction`` holds the symbolic expansion at z0 when it was attached (proofs_check).
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
            "diagnostics": {
                "log_px_method": self.log_px.method,
                "log_px_levels": self.log_px.diagnostics.get("levels", []),
                **({"log_px_ess": self.log_px.diagnostics["ess"]} if "ess" in self.log_px.diagnostics else {}),
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


def check_inputs(model: Model, points: Sequence[Tensor], gamma2s: Sequence[float]) -> None:
    """Refuse (ModelError, naming the problem) what the estimators cannot honour: γ² outside
    [GAMMA2_MIN, GAMMA2_MAX], a latent point on a kink of the prior, or a dimension whose
    quadrature rule would exceed MAX_RULE_NODES."""
    src = model.meta.get("source", "")
    pre = f"{src}: " if src else ""
    for g2 in gamma2s:
        if not (math.isfinite(g2) and GAMMA2_MIN <= g2 <= GAMMA2_MAX):
            raise ModelError(f"{pre}γ² = {g2:g} is outside the supported range [{GAMMA2_MIN:g}, {GAMMA2_MAX:g}] "
                             "(where float64 honours the stated accuracy)")
    nodes = max(k ** model.d for k in refinement_levels(model.d))
    if nodes > MAX_RULE_NODES:
        raise ModelError(f"{pre}d = {model.d} latents: the ELBO* quadrature would need {nodes:.3g} nodes "
                         f"(limit {MAX_RULE_NODES}); gapcheck evaluates up to d = 7")
    kinks = model.prior.kinks
    for p in points:
        for k, t in kinks:
            if float(p[k]) == t:
                raise ModelError(f"{pre}latent point z0 = {_fmt_point(p.tolist())}: z{k + 1} = {t:g} is on the kink of "
                                 f"the {model.prior.factors[k].name} prior, where ℓ is not differentiable; the estimators "
                                 "and the theorems need a smooth prior at z0: move the point off the kink")


def evaluate_points(
    model: Model,
    points: Sequence[Tensor],
    gamma2s: Sequence[float],
    search_modes: bool = True,
    log_px_method: str = "gh",
    is_samples: int = 65536,
    seed: int = 0,
) -> list[PointResult]:
    """log p, ELBO*, gap and c_IMA at x = f(z0) for every z0 in ``points`` and every γ² in
    ``gamma2s``; one :class:`PointResult` per (point, γ²), points outer.

    ``log_px_method``: ``"gh"`` (Gauss–Hermite with refinement, error ~1e-13, cost K^d) or
    ``"is"`` (importance sampling with ``is_samples`` draws from the Laplace mixture, error =
    one standard error, cost linear in d; flagged ``log_px_monte_carlo``).

    Raises SingularJacobianError if J(z0) is singular, FloatingPointError if the decoder is
    not finite at a point, ConvergenceError if an optimizer fails (naming x and γ²)."""
    if log_px_method not in LOG_PX_METHODS:
        raise ValueError(f"log_px_method must be one of {LOG_PX_METHODS}, got {log_px_method!r}")
    check_inputs(model, points, gamma2s)
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
        stars = elbo_star(model, posts, z0s=Z)
    except ConvergenceError as exc:
        raise ConvergenceError(f"{pre}{exc}") from None
    except RuntimeError as exc:  # linear algebra on non-finite values that no estimator confined
        if not _is_linalg_failure(exc):
            raise
        raise ConvergenceError(f"{pre}linear algebra failed on non-finite values for the points z0 = "
                               f"{', '.join(_fmt_point(p.tolist()) for p in points[:5])} (γ² = "
                               f"{', '.join(f'{g:g}' for g in gamma2s[:5])}): {str(exc).splitlines()[0][:120]}") from None
    out = []
    for idx, ((zi, g2), pm, st) in enumerate(zip(items, posts, stars)):
        where = f"at z0 = {_fmt_point(zi.tolist())}, γ² = {g2:g}"
        try:
            lp = log_marginal_gh(model, pm) if log_px_method == "gh" else log_marginal_is(model, pm, is_samples, seed)
        except ConvergenceError as exc:
            raise ConvergenceError(f"{pre}{where}: {exc}") from None
        except RuntimeError as exc:
            if not _is_linalg_failure(exc):
                raise
            raise ConvergenceError(f"{pre}log p quadrature failed {where}: {str(exc).splitlines()[0][:120]}") from None
        div = divergent_term(n, d, g2)
        flags = []
        if pm.count > 1:
            flags.append("multimodal")
        if log_px_method == "is":
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
        ))
    return out
