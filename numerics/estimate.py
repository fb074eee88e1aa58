"""The one result type of every estimator in numerics/: a value and an error estimate.

Every estimator (quadrature, Monte Carlo, QMC, Newton-optimized ELBO*, the mpmath reference)
returns an :class:`Estimate`.  Optimizers also return where the optimum is (``argmax``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

ErrorKind = Literal["refinement", "standard_error", "replicate_error", "bound"]

#: What ``Estimate.error`` means, by ``error_kind``.
ERROR_KINDS: dict[str, str] = {
    "refinement": "deterministic quadrature: difference of the two finest rules (+ Newton decrement for optima) "
                  "+ a floating-point rounding bound",
    "standard_error": "Monte Carlo: one standard deviation of the estimator",
    "replicate_error": "randomized QMC: standard error over independent scramblings",
    "bound": "a rigorous bound",
}


def _plain(v: Any) -> Any:
    """JSON-friendly copy of a diagnostics value (tensors and arrays become lists)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class Estimate:
    """``value`` ± ``error``.

    - ``error`` is what ``error_kind`` says (:data:`ERROR_KINDS`).
    - ``method`` names the estimator (``"gauss_hermite"``, ``"importance_sampling"``, ...).
    - ``diagnostics``: estimator-specific facts (levels used, convergence, ESS, seeds, ...).
    - ``argmax``: for optimizers (ELBO*), the maximizer, e.g. ``{"mu": ..., "s": ...}``.

    A non-finite value is never an estimate: construction raises ``FloatingPointError``.
    """

    value: float
    error: float
    method: str
    error_kind: ErrorKind = "refinement"
    diagnostics: dict[str, Any] = field(default_factory=dict)
    argmax: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise FloatingPointError(f"{self.method}: estimate is not finite ({self.value})")
        if self.error_kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error_kind!r}")

    def __float__(self) -> float:
        return self.value

    def shifted(self, c: float) -> "Estimate":
        """The same estimate of the quantity plus the exact constant ``c`` (same error)."""
        return Estimate(self.value + c, self.error, self.method, self.error_kind, self.diagnostics, self.argmax)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "error": self.error,
            "error_kind": self.error_kind,
            "method": self.method,
            "diagnostics": _plain(self.diagnostics),
        }
