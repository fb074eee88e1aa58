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

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .elbo import elbo_star
from .estimate import Estimate
from .jacobian import SingularJacobianError, c_ima_from_jacobian, jacobian
from .models import Model
from .montecarlo import log_marginal_is
from .posterior import divergent_term, find_modes, log_marginal_gh

Tensor = torch.Tensor

LOG_PX_METHODS = ("gh", "is")


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


def _finite(v: float, what: str) -> float:
    if not math.isfinite(v):
        raise FloatingPointError(f"{what} is not finite ({v})")
    return v


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
    d, n = model.d, model.n
    items = [(zi, g2) for zi in points for g2 in gamma2s]
    Z = torch.stack([p for p, _ in items])
    X = model.decoder(Z)
    if not bool(torch.isfinite(X).all()):
        bad = [p.tolist() for p, x in zip(Z, X) if not bool(torch.isfinite(x).all())]
        raise FloatingPointError(f"the decoder is not finite at latent point(s) {bad}")
    cimas = {}
    Js = jacobian(model.decoder, torch.stack(list(points)))
    for i, (p, J) in enumerate(zip(points, Js)):
        try:
            cimas[i] = float(c_ima_from_jacobian(J))
        except SingularJacobianError:
            raise SingularJacobianError(
                f"the Jacobian J(z0) is singular at z0 = {p.tolist()}: the decoder is not locally injective "
                "there, so c_IMA and the theorems do not apply"
            ) from None
    posts = find_modes(model, X, [g for _, g in items], Z, search=search_modes)
    stars = elbo_star(model, posts)
    out = []
    for idx, ((zi, g2), pm, st) in enumerate(zip(items, posts, stars)):
        lp = log_marginal_gh(model, pm) if log_px_method == "gh" else log_marginal_is(model, pm, is_samples, seed)
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
        gap = Estimate(_finite(lp.value - st.value, "gap"), lp.error + st.error, "difference", gap_kind,
                       {"log_px_method": lp.method, "elbo_star_method": st.method})
        out.append(PointResult(
            latent=zi.tolist(),
            x=X[idx].tolist(),
            gamma2=float(g2),
            log_px=lp.shifted(_finite(div, "divergent term")),
            elbo_star=st.shifted(div),
            gap=gap,
            c_ima=cimas[idx // len(gamma2s)],
            reduced_log_px=_finite(lp.value, "log p"),
            reduced_elbo_star=_finite(st.value, "ELBO*"),
            divergent_term=div,
            mu_star=st.argmax["mu"].tolist(),
            s_star=st.argmax["s"].tolist(),
            modes=pm.modes.tolist(),
            flags=flags,
        ))
    return out
