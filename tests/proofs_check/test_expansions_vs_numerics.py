"""Issue #3's acceptance test, through the public pieces: the symbolic next-order coefficients
(theory.expansions) against Richardson fits of the numerics (numerics/, via evaluate_points)
for nonlinear decoders under three priors — triangular (logistic), IMA class (Gaussian), an
n > d embedding (Gaussian), a tanh MLP (Student-t) — and the linear model.

Fits use γ² ∈ [1e3, 1e6] (Context.fit_gamma2): there the O(ε) signal is ≥ 1e-6·|a1| while
the float64 error of the gap is ≤ 1e-12, so (gap − c_IMA)/ε is resolved to ~1e-9 absolute; at
γ² = 1e8 the quotient would carry 1e-3 relative noise.  Tolerances (issue #3): a1 to 1e-6
relative, μ1 and s2 to 1e-4 relative, s1 to 1e-13 (float64 ‖J_k‖²)."""

from __future__ import annotations

import pytest

from proofs_check.checks.asymptotic import check_c16
from proofs_check.context import Context


@pytest.fixture(scope="module")
def results():
    return check_c16(Context(mode="default", device="cpu"), None)


@pytest.mark.parametrize("model", ["linear", "triangular", "ima", "embedding", "mlp"])
@pytest.mark.parametrize("quantity", ["a1", "μ1", "s2", "s1"])
def test_coefficient_matches_numerics(results, model: str, quantity: str) -> None:
    rows = [r for r in results if r.name.startswith(f"{model}:") and quantity in r.name]
    assert rows, f"no {quantity} check for {model}"
    for r in rows:
        assert r.passed, f"{r.name}: error {r.error:.3e} > tolerance {r.tolerance:.3e} ({r.details})"


def test_a1_check_rejects_the_linear_formula_on_curved_decoders() -> None:
    """The same comparison rejects a1 computed with the linear-Gaussian formula (C5) at J(z0)."""
    res = check_c16(Context(mode="default", device="cpu"), "linear_a1")
    failed = {r.name.split(":")[0] for r in res if not r.passed and "a1" in r.name}
    assert {"triangular", "embedding", "mlp"} <= failed
