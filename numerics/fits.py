"""Refinement-sweep fits: the observed order of accuracy and Richardson extrapolation.

Convergence-order tests as in PDE codes: a quantity q(ε) measured over a sweep of
ε = γ⁻² is fitted as

- :func:`fit_order`: its deviation from a limit, e(ε) = |q(ε) − q₀| ≈ C ε^p, by least squares on
  log e vs log ε → the observed order p with its standard error;
- :func:`poly_fit`: q(ε) ≈ Σ_j c_j ε^j by weighted least squares → c₀ is the Richardson limit,
  c₁ the first-order coefficient, each with a standard error.

Both return typed records (:class:`OrderFit`, :class:`PolyFit`) with ``to_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class OrderFit:
    """Observed order p of an error e(ε) ≈ C ε^p, fitted on ``used`` points of the sweep.

    ``order`` is NaN (and ``stderr`` inf) when fewer than 3 points stand above the noise."""

    order: float
    stderr: float
    constant: float
    used: int
    eps: tuple[float, ...]
    errors: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "stderr": self.stderr, "constant": self.constant, "points_used": self.used}


def fit_order(eps: Sequence[float], err: Sequence[float], noise: Sequence[float], snr: float = 100.0,
              eps_max: float | None = None) -> OrderFit:
    """Fit log|e| = log C + p log ε over the points where |e| > snr × the numerical error
    estimate ``noise`` (so rounding does not bend the line) and, if given, ε ≤ ``eps_max``
    (the asymptotic range).  Needs at least 3 such points."""
    e = np.asarray(eps, float)
    r = np.abs(np.asarray(err, float))
    nz = np.asarray(noise, float)
    keep = (r > snr * nz) & (r > 0)
    if eps_max is not None:
        keep &= e <= eps_max
    if keep.sum() < 3:
        return OrderFit(float("nan"), float("inf"), float("nan"), int(keep.sum()), tuple(e.tolist()), tuple(r.tolist()))
    X = np.vstack([np.ones(keep.sum()), np.log(e[keep])]).T
    y = np.log(r[keep])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = max(1, int(keep.sum()) - 2)
    resid = y - X @ coef
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    return OrderFit(float(coef[1]), float(math.sqrt(max(cov[1, 1], 0.0))), float(math.exp(coef[0])), int(keep.sum()),
                    tuple(e.tolist()), tuple(r.tolist()))


@dataclass(frozen=True)
class PolyFit:
    """Coefficients c_j of y ≈ Σ_j c_j ε^j and their standard errors."""

    coef: np.ndarray
    stderr: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "stderr": self.stderr.tolist()}


def poly_fit(eps: Sequence[float], y: Sequence[float], sigma: Sequence[float], degree: int) -> PolyFit:
    """Weighted least-squares fit y ≈ Σ_j c_j ε^j (j = 0..degree), weights 1/σ; the
    coefficient errors combine the propagated σ and the fit residual (Richardson-type)."""
    e = np.asarray(eps, float)
    yy = np.asarray(y, float)
    s = np.maximum(np.asarray(sigma, float), 1e-300)
    X = np.vstack([e**j for j in range(degree + 1)]).T
    W = 1.0 / s
    Xw = X * W[:, None]
    yw = yy * W
    coef, *_ = np.linalg.lstsq(Xw, yw, rcond=None)
    cov = np.linalg.pinv(Xw.T @ Xw)
    resid = yw - Xw @ coef
    dof = max(1, len(e) - degree - 1)
    scale = max(1.0, float(resid @ resid) / dof)
    return PolyFit(coef, np.sqrt(np.diag(cov) * scale))
