"""The claims of docs/theory.md (C1–C17) and the negative controls (N1, N2) as registry records.

- :mod:`.evidence`: the vocabulary of evidence (tolerance-carrying comparisons);
- :mod:`.faults`: planted faults as named ingredients;
- :mod:`.exact` (C1–C6), :mod:`.asymptotic` (C7–C16), :mod:`.population` (C17),
  :mod:`.controls` (N1, N2), :mod:`.certified` (V1: fast estimates held to proven Arb balls):
  the records.

Importing this package registers every record in :data:`proofs_check.registry.REGISTRY`.
"""

from __future__ import annotations

from ..registry import REGISTRY, Claim
from . import asymptotic, certified, controls, exact, population  # noqa: F401  (register the records)

__all__ = ["all_claims", "get_claim"]


def all_claims() -> list[Claim]:
    """Every registered record in order: the claims C1…, the negative controls N1…, then the
    certified-values check V1."""

    def key(c: Claim) -> tuple[int, int]:
        return ({"C": 0, "N": 1}.get(c.id[0], 2), int(c.id[1:]))

    return sorted(REGISTRY.values(), key=key)


def get_claim(claim_id: str) -> Claim:
    return REGISTRY[claim_id.strip().upper()]
