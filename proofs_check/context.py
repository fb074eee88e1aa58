"""Shared state of a verification run: built-in models, cached γ² sweeps and symbolic
expansions, and the fitting tools (observed order of convergence, Richardson fits)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import numpy as np
import torch

from numerics.models import Model, resolve_device
from theory.spec import SymbolicModel, loads_spec

from .bridge import numeric_model, point_tensor
from .evaluate import evaluate_points

#: Built-in model specs shipped in proofs_check/models/.
BUILTIN_MODELS = ("linear", "triangular", "ima", "mobius", "embedding", "mlp", "noninjective")


def builtin_spec(name: str) -> SymbolicModel:
    if name not in BUILTIN_MODELS:
        raise KeyError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    text = resources.files("proofs_check").joinpath("models", f"{name}.toml").read_text(encoding="utf-8")
    return loads_spec(text, name=name)


@dataclass
class Context:
    """Settings and caches of one `gapcheck verify` run.

    ``mode`` is "quick", "default" or "full"; it sets the γ² sweep and sample counts.
    """

    mode: str = "default"
    seed: int = 0
    device: str = "auto"
    cache: dict[Any, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.torch_device = resolve_device(self.device)

    # -- sizes ---------------------------------------------------------------------------
    @property
    def sweep_gamma2(self) -> list[float]:
        """The asymptotic sweep: log-spaced γ² from 10 to 1e8 (THEORY: γ² up to 1e8 with full
        accuracy); half-decades by default, whole decades in --quick, quarter-decades in --full."""
        step = {"quick": 1.0, "default": 0.5, "full": 0.25}[self.mode]
        return [float(10**e) for e in np.arange(1.0, 8.0 + 1e-9, step)]

    @property
    def fit_gamma2(self) -> list[float]:
        """γ² used for Richardson fits of expansion coefficients (C16): 1e3..1e6, where the
        O(ε) signal (≥ 1e-6·|a1|) dwarfs the float64 error (≤ 1e-12) and ε² terms are small."""
        return [1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6]

    def n_samples(self, quick: int, default: int, full: int) -> int:
        return {"quick": quick, "default": default, "full": full}[self.mode]

    # -- models --------------------------------------------------------------------------
    def sym(self, name: str) -> SymbolicModel:
        key = ("sym", name)
        if key not in self.cache:
            self.cache[key] = builtin_spec(name)
        return self.cache[key]

    def num(self, name: str) -> Model:
        key = ("num", name)
        if key not in self.cache:
            self.cache[key] = numeric_model(self.sym(name))
        return self.cache[key]

    def point(self, name: str, i: int = 0) -> tuple:
        return self.sym(name).points[i]

    def sweep(self, name: str, gamma2s: Sequence[float] | None = None, point: int = 0, search_modes: bool = True) -> list[dict]:
        """evaluate_points results for one built-in model and point over a γ² list (cached)."""
        g = tuple(self.sweep_gamma2 if gamma2s is None else gamma2s)
        key = ("sweep", name, point, g, search_modes)
        if key not in self.cache:
            z0 = point_tensor(self.point(name, point), self.torch_device)
            self.cache[key] = evaluate_points(self.num(name), [z0], list(g), search_modes=search_modes)
        return self.cache[key]

    def expansion(self, name: str, point: int = 0):
        """theory.expansions.expand_at for a built-in model and point (cached)."""
        from theory.expansions import expand_at

        key = ("expansion", name, point)
        if key not in self.cache:
            self.cache[key] = expand_at(self.sym(name), self.point(name, point))
        return self.cache[key]


# ----------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------


@dataclass
class OrderFit:
    """Observed order p of an error e(ε) ≈ C ε^p, fitted by least squares on log e vs log ε."""

    order: float
    stderr: float
    constant: float
    used: int
    eps: list[float]
    errors: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"order": self.order, "stderr": self.stderr, "constant": self.constant, "points_used": self.used}


def fit_order(eps: Sequence[float], err: Sequence[float], noise: Sequence[float], snr: float = 100.0) -> OrderFit:
    """Fit log|e| = log C + p log ε over the points where |e| > snr × the numerical error
    estimate (so rounding does not bend the line).  Needs at least 3 such points."""
    e = np.asarray(eps, float)
    r = np.abs(np.asarray(err, float))
    nz = np.asarray(noise, float)
    keep = (r > snr * nz) & (r > 0)
    if keep.sum() < 3:
        return OrderFit(float("nan"), float("inf"), float("nan"), int(keep.sum()), e.tolist(), r.tolist())
    X = np.vstack([np.ones(keep.sum()), np.log(e[keep])]).T
    y = np.log(r[keep])
    coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = max(1, keep.sum() - 2)
    resid = y - X @ coef
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    return OrderFit(float(coef[1]), float(math.sqrt(max(cov[1, 1], 0.0))), float(math.exp(coef[0])), int(keep.sum()), e.tolist(), r.tolist())


def order_tolerance(fit: OrderFit) -> float:
    """Tolerance on |p_observed − p_theory|: 0.1 (the sweep reaches ε = 0.1, where the
    next-order term bends the log–log line by up to ~|a2/a1|·ε; measured bends on the
    built-in models are < 0.05) plus three standard errors of the fitted slope."""
    return 0.1 + 3 * fit.stderr


@dataclass
class PolyFit:
    coef: np.ndarray
    stderr: np.ndarray


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


def gap_eps(results: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ε, gap, gap error) arrays from evaluate results."""
    eps = np.array([1.0 / r["gamma2"] for r in results])
    gap = np.array([r["gap"] for r in results])
    err = np.array([r["error"]["gap"] for r in results])
    return eps, gap, err


def to_tensor(v: Sequence[float], ctx: Context) -> torch.Tensor:
    return torch.tensor([float(a) for a in v], dtype=torch.float64, device=ctx.torch_device)
