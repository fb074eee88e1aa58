"""Claim C17 (population-level identifiability, proofs_check.checks.population) in --quick mode:
the check passes, each planted fault is rejected by the checks it targets, the mode-search
shortcut from SEARCH_BELOW on loses no posterior mode, and the figure is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from proofs_check.context import Context
from proofs_check.registry import REGISTRY


@pytest.fixture(scope="module")
def c17():
    """The C17 module (registered with the other claims by proofs_check.checks)."""
    import proofs_check.checks.population as cp

    assert "C17" in REGISTRY
    return cp


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context(mode="quick", seed=0, device="cpu")


def test_c17_passes_in_quick_mode(c17, ctx: Context) -> None:
    res = REGISTRY["C17"].check(ctx, None)
    bad = [f"{r.name}: {r.error} > {r.tolerance} ({r.details})" for r in res if not r.passed]
    assert res and not bad, "\n".join(bad)
    assert {r.evidence for r in res} >= {"numerical", "convergence"}
    # report.json carries L, E (and E_full) per θ and γ² with errors
    table = res[0].details["values"]
    sz = c17.sizes(ctx)
    assert len(table) == len(sz.thetas) * len(sz.gamma2s)
    assert all(row["L"]["se"] > 0 and row["E"]["se"] > 0 and row["E_full"] is not None for row in table)


@pytest.mark.parametrize("fault,targets", [
    ("fullcov_scoring", ("ima: E is maximal at θ = 0", "ima: E(0) − E(θ) at γ²", "ima: margin − per-sample")),
    ("unpaired", ("ima (IMA class", "ima: the paired margins", "ima: E is maximal at θ = 0")),
])
def test_c17_planted_faults_are_rejected(c17, ctx: Context, fault: str, targets: tuple[str, ...]) -> None:
    assert fault in REGISTRY["C17"].faults
    res = REGISTRY["C17"].check(ctx, fault)
    failed = [r.name for r in res if not r.passed]
    for t in targets:
        assert any(name.startswith(t) for name in failed), f"{fault}: no failing check starts with {t!r}; failed: {failed}"
    # the fault is planted in the IMA family only: the other families' checks still pass
    assert all(r.passed for r in res if not r.name.startswith("ima"))


def test_mode_search_shortcut_loses_no_mode(c17, ctx: Context) -> None:
    """From SEARCH_BELOW on the claim starts Newton only at the generating latent; the full start
    set (sign flips, 8 prior draws, 0) must find the same single mode there."""
    from numerics.population import draw_population, rotated_model
    from numerics.posterior import find_modes

    g2 = c17.SEARCH_BELOW
    for fam in c17.FAMILIES:
        m = c17.family_model(ctx, fam)
        cand = rotated_model(m, math.pi / 4)
        draw = draw_population(m, 6, seed=11)
        X = draw.x(m, g2)
        zi = draw.Z @ torch.as_tensor(cand.decoder.R)
        short = find_modes(cand, X, [g2] * len(X), zi, search=False)
        full = find_modes(cand, X, [g2] * len(X), zi, search=True)
        for a, b in zip(short, full):
            assert a.count == b.count == 1, fam
            assert float(torch.max(torch.abs(a.modes - b.modes))) < 1e-8, fam


def test_c17_figure(c17, ctx: Context, tmp_path: Path) -> None:
    from proofs_check.plots_population import fig_population

    paths = fig_population(ctx, tmp_path)
    assert sorted(Path(p).name for p in paths) == ["population.png", "population.svg"]
    assert all(Path(p).stat().st_size > 10_000 for p in paths)
    from proofs_check.plots_population import predicted_curve

    t, v, s = predicted_curve(ctx, "ima", 4096)
    # C_IMA(f∘R_θ) > C_IMA(f) = 0 for θ ∈ (0, π/4]: the predicted margin curve is positive
    assert t[0] == 0.0 and abs(v[0]) < 1e-12 and np.all(v[1:] > 0) and np.all(s[1:] > 0)
