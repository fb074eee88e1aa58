"""`gapcheck evaluate`: log p_γ(x), ELBO*(x), the gap and c_IMA for a user's model spec.

For each latent point z0 of the spec and each γ², at x = f(z0) (THEORY.md):

- ``log_px``   log p_γ(x), Gauss–Hermite around the posterior modes (numerics.posterior)
- ``elbo_star`` ELBO*(x) = sup_{μ,s} ELBO(x; μ, s) (numerics.elbo)
- ``gap``      log p_γ(x) − ELBO*(x), computed from the reduced quantities (both O(1)),
               so it does not cancel catastrophically at large γ²
- ``c_ima``    c_IMA(f, z0); ``l_ima`` = log p_γ(x) − c_IMA(f, g(x))
- ``mu_star``, ``s2_star``: the optimal encoder mean and variances s* = σ*²
- ``error``    error estimates (refinement differences + rounding bounds)
- ``flags``    e.g. "multimodal": the posterior has several modes (decoder not injective
               near x: outside the theorems; the extra modes are included in log p)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from numerics.elbo import elbo_star
from numerics.jacobian import SingularJacobianError, c_ima_from_jacobian, jacobian
from numerics.models import Model, resolve_device
from numerics.montecarlo import log_marginal_is
from numerics.posterior import divergent_term, find_modes, log_marginal_gh
from theory.spec import SpecError, SymbolicModel

from .bridge import log_normalizers, numeric_model, point_tensor


@dataclass
class Evaluation:
    model: SymbolicModel
    results: list[dict[str, Any]]
    seconds: float
    device: str


def _finite(v: float, what: str) -> float:
    if not math.isfinite(v):
        raise FloatingPointError(f"{what} is not finite ({v})")
    return v


def evaluate_points(
    model: Model,
    points: Sequence[torch.Tensor],
    gamma2s: Sequence[float],
    search_modes: bool = True,
    log_px_method: str = "gh",
    is_samples: int = 65536,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The evaluate computation for a numeric model; one dict per (point, γ²), points outer.

    ``log_px_method``: "gh" (default: Gauss–Hermite with refinement, error ~1e-13, cost K^d)
    or "is" (importance sampling with ``is_samples`` draws from the Laplace mixture, error =
    one standard error, cost linear in d; flagged ``log_px_monte_carlo``)."""
    if log_px_method not in ("gh", "is"):
        raise ValueError(f"log_px_method must be 'gh' or 'is', got {log_px_method!r}")
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
        gap = lp.value - st.value
        c = cimas[idx // len(gamma2s)]
        flags = []
        if pm.count > 1:
            flags.append("multimodal")
        if log_px_method == "is":
            flags.append("log_px_monte_carlo")
        elif not lp.info["converged"]:
            flags.append("log_px_quadrature_not_converged")
        if not st.converged:
            flags.append("elbo_quadrature_not_converged")
        res = {
            "latent": zi.tolist(),
            "x": X[idx].tolist(),
            "gamma2": g2,
            "log_px": _finite(lp.value + div, "log p"),
            "elbo_star": _finite(st.value + div, "ELBO*"),
            "gap": _finite(gap, "gap"),
            "c_ima": c,
            "l_ima": lp.value + div - c,
            "mu_star": st.mu.tolist(),
            "s2_star": st.s.tolist(),
            "error": {"log_px": lp.error, "elbo_star": st.error, "gap": lp.error + st.error},
            "reduced": {"log_px": lp.value, "elbo_star": st.value, "divergent_term": div},
            "n_modes": pm.count,
            "modes": pm.modes.tolist(),
            "flags": flags,
            "diagnostics": {
                "log_px_levels": lp.info.get("levels", []),
                "log_px_method": lp.method,
                **({"log_px_ess": lp.info["ess"]} if "ess" in lp.info else {}),
                "elbo_levels": st.levels,
                "elbo_grad_norm": st.grad_norm,
                "elbo_newton_decrement": st.decrement,
            },
        }
        out.append(res)
    return out


def evaluate_spec(sym: SymbolicModel, device: str = "auto", predictions: bool = True, log_px_method: str = "gh",
                  is_samples: int = 65536, seed: int = 0) -> Evaluation:
    """Run `gapcheck evaluate` on a parsed spec; raises SpecError/ModelError on bad input."""
    if not sym.gamma2:
        raise SpecError("spec has no 'gamma2' (a list of decoder precisions γ² > 0)")
    if not sym.points:
        raise SpecError("spec has no 'latents' (a list of points z0 at which x = f(z0) is evaluated)")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model = numeric_model(sym)
    pts = [point_tensor(p, dev) for p in sym.points]
    results = evaluate_points(model, pts, list(sym.gamma2), log_px_method=log_px_method, is_samples=is_samples, seed=seed)
    if predictions:
        attach_predictions(sym, results, log_normalizer=sum(log_normalizers(model)))
    return Evaluation(sym, results, time.perf_counter() - t0, str(dev))


def attach_predictions(sym: SymbolicModel, results: list[dict[str, Any]], log_normalizer: float = 0.0) -> None:
    """Add the symbolic expansion coefficients (theory.expansions.expand_at) to each result.

    ``log_normalizer`` is the numerically computed log normalizer of user-given prior
    log-densities (0 for the closed-form priors), so that the predicted log p and ELBO*
    constants refer to the normalized prior, as the numerics do."""
    from theory.expansions import expand_at

    cache: dict[tuple, dict[str, Any]] = {}
    for r in results:
        key = tuple(r["latent"])
        if key not in cache:
            i = [tuple(float(v) for v in p) for p in sym.points].index(key)
            cache[key] = expand_at(sym, sym.points[i], log_normalizer=log_normalizer).as_floats()
        r["prediction"] = cache[key]
