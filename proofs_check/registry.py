"""The claims registry: each claim of docs/theory.md (C1–C17) and each negative control (N1, N2)
is one small declarative :class:`Claim` record.  Adding a claim is adding one record.

A check is a function ``check(ctx, fault) -> list[CheckResult]``.  With ``fault=None`` it
checks the claim and must pass; with a fault named in the claim's ``faults`` it runs the
very same check with that fault planted (a wrong contrast, a perturbed optimum, a missing
posterior mode, a wrong rate, ...) and must fail.  `gapcheck verify` fails if any planted
fault is accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Evidence = Literal["symbolic", "numerical", "convergence", "property", "certified"]


Comparison = Literal["at_most", "at_least", "holds"]


@dataclass
class CheckResult:
    """One measured check.  ``comparison`` says how to read it:

    - ``"at_most"``: ``error`` (a measured error) ≤ ``tolerance`` (with its ``tolerance_source``);
    - ``"at_least"``: ``error`` holds a measured separation that must be ≥ ``tolerance`` (a
      required minimum): e.g. "the two coefficients differ by more than 100× the fit precision";
    - ``"holds"``: a stated property is true or false; no number.

    ``details["estimates"]``, when present, lists the estimates the statement promises, each
    ``{"name", "value", "error"}``; reports print them with their errors."""

    name: str
    evidence: Evidence
    passed: bool
    error: float | None = None
    tolerance: float | None = None
    tolerance_source: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    comparison: Comparison = "at_most"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "evidence": self.evidence,
            "passed": bool(self.passed),
            "comparison": self.comparison,
            "error": _clean(self.error),
            "tolerance": _clean(self.tolerance),
            "tolerance_source": self.tolerance_source,
            "details": _clean(self.details),
        }


def _clean(v: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings ('inf', 'nan') instead of invalid JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):
        try:
            return _clean(v.item())
        except (ValueError, TypeError):
            pass
    return v


def within(name: str, evidence: Evidence, error: float, tolerance: float, source: str, **details: Any) -> CheckResult:
    """A check that passes when a finite ``error`` is at most ``tolerance``."""
    ok = math.isfinite(error) and error <= tolerance
    return CheckResult(name, evidence, ok, float(error), float(tolerance), source, details)


def at_least(name: str, evidence: Evidence, measured: float, minimum: float, source: str, **details: Any) -> CheckResult:
    """A check that passes when a finite measured separation is at least ``minimum``."""
    ok = math.isfinite(measured) and measured >= minimum
    return CheckResult(name, evidence, ok, float(measured), float(minimum), source, details, "at_least")


CheckFn = Callable[[Any, "str | None"], list[CheckResult]]


@dataclass(frozen=True)
class Claim:
    """A claim of docs/theory.md and how it is checked.

    ``faults`` name planted faults that the claim's check must reject (negative controls).
    ``quick`` says whether the claim runs in ``--quick`` mode (all claims run in default and
    ``--full`` modes).
    """

    id: str
    title: str
    statement: str
    latex: str
    paper: str
    assumptions: str
    models: tuple[str, ...]
    check: CheckFn
    faults: tuple[str, ...]
    kind: Literal["exact", "asymptotic", "control"] = "exact"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "statement": self.statement,
            "latex": self.latex,
            "paper": self.paper,
            "assumptions": self.assumptions,
            "models": list(self.models),
            "faults": list(self.faults),
            "kind": self.kind,
        }


REGISTRY: dict[str, Claim] = {}


def claim(**fields: Any) -> Callable[[CheckFn], CheckFn]:
    """Decorator registering a check function as the check of one claim record."""

    def deco(fn: CheckFn) -> CheckFn:
        c = Claim(check=fn, **fields)
        if c.id in REGISTRY:
            raise ValueError(f"duplicate claim id {c.id}")
        REGISTRY[c.id] = c
        return fn

    return deco
