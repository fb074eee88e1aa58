"""The result type of every estimator: a value and an error estimate (DEVELOPERS.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Estimate:
    """``value`` ± ``error``.

    ``error`` is what ``info["error_kind"]`` says: ``"standard_error"`` for Monte Carlo
    (one standard deviation of the estimator), ``"replicate_error"`` for randomized QMC,
    ``"refinement"`` for deterministic quadrature (the difference between the two finest
    node sets, plus a floating-point rounding bound), ``"bound"`` for a rigorous bound.
    """

    value: float
    error: float
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise FloatingPointError(f"{self.method}: estimate is not finite ({self.value})")

    def __float__(self) -> float:
        return self.value

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "error": self.error, "method": self.method}
