"""Shared state of a verification run: built-in models, cached γ² sweeps (numerics.sweep) and
symbolic expansions (theory.expansions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import numpy as np

from numerics.models import Model, resolve_device
from numerics.sweep import PointResult, evaluate_points
from theory.spec import SymbolicModel, loads_spec

from .bridge import numeric_model, point_tensor

#: Built-in model specs shipped in proofs_check/models/.
BUILTIN_MODELS = ("linear", "triangular", "ima", "mobius", "embedding", "curved", "mlp", "noninjective")


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
        """The asymptotic sweep: log-spaced γ² from 10 to 1e8 (docs/theory.md: γ² up to 1e8 with full
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

    def sweep(self, name: str, gamma2s: Sequence[float] | None = None, point: int = 0, search_modes: bool = True) -> list[PointResult]:
        """numerics.sweep.evaluate_points results for one built-in model and point over a γ² list (cached)."""
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
