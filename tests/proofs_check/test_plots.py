"""Figures of `gapcheck verify` (proofs_check.plots): only the requested claims are drawn, the
orders figure carries the pass band of each check, C13's prior average comes only from C13's
own estimate, C8 is drawn as γ² s_k*‖J_k‖² → 1, and the figure phase shows a progress bar."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from proofs_check import plots
from proofs_check.verification import run_verify


@pytest.fixture(scope="module")
def c11():
    """A real quick-mode report of C11 alone and its context (sweeps cached)."""
    return run_verify(["C11"], mode="quick", show_progress=False)


def _with_claim(report: dict, entry: dict) -> dict:
    rep = copy.deepcopy(report)
    rep["claims"].append(entry)
    return rep


def test_only_requested_figures_with_progress_bar(c11, tmp_path: Path) -> None:
    report, ctx = c11
    # C9 adds order rows but no figure of its own: with C11 the plan is gap + orders only
    rep = _with_claim(report, {"id": "C9", "checks": []})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        pngs = plots.make_figures(rep, ctx, tmp_path, progress=True)
    assert [Path(p).name for p in pngs] == ["gap.png", "orders.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gap.png", "gap.svg", "orders.png", "orders.svg"]
    steps = len(plots.GAP_PANELS) + 1 + 1
    text = err.getvalue()
    assert "gapcheck figures" in text and f"{steps}/{steps}" in text and "gap: ima" in text
    # requesting C7 or C8 adds the self-consistency figure
    assert plots.planned_figures(_with_claim(report, {"id": "C8", "checks": []})) == ["gap", "self_consistency", "orders"]
    assert plots.planned_figures({"claims": [{"id": "C1", "checks": []}]}) == []


def test_orders_figure_draws_pass_bands_and_marks_failures(c11) -> None:
    report, _ = c11
    rep = copy.deepcopy(report)
    fitted = [c for c in rep["claims"][0]["checks"] if isinstance(c["details"].get("fit"), dict)]
    assert fitted, "C11 reports fitted orders"
    fitted[0]["passed"] = False  # marked, whatever the numbers say
    fig = plots.orders_figure(rep)
    ax = fig.axes[0]
    bands = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bands) == 1 and len(bands[0].patches) == len(fitted)
    for patch, c in zip(bands[0].patches, fitted):
        lo, width = patch.get_x(), patch.get_width()
        theory, tol = c["details"]["theory_order"], c["tolerance"]
        assert math.isclose(lo, theory - tol, abs_tol=1e-12) and math.isclose(width, 2 * tol, abs_tol=1e-12)
    # observed orders ± 3 s.e.: the error bars hold the report's numbers
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    xs = np.concatenate([b.lines[0].get_xdata() for b in bars])
    assert sorted(xs) == sorted(c["details"]["fit"]["order"] for c in fitted)
    labels = ax.get_yticklabels()
    assert labels[0].get_text().startswith("FAIL") and labels[0].get_color() == "tab:red"
    assert not any(t.get_text().startswith("FAIL") for t in labels[1:])
    fig.clf()
    assert plots.orders_figure({"claims": [{"id": "C1", "checks": [{"name": "x", "passed": True, "details": {}}]}]}) is None


def test_prior_average_only_from_c13_estimate(c11) -> None:
    report, ctx = c11
    assert plots.c13_prior_average(report) is None  # C13 not run: nothing to draw
    # drawing input in the shape C13 reports it (values arbitrary: the figure must show exactly these)
    per = [{"gamma2": g, "mean_gap": 0.5 + 0.01 * i, "mean_gap_se": 0.04, "C_IMA": 0.39, "C_IMA_se": 0.003,
            "mean_gap_minus_c_ima": 10.0 / g, "mean_gap_minus_c_ima_se": 1.0 / g, "num_samples": n}
           for i, (g, n) in enumerate([(1e4, 32), (1e6, 32), (1e8, 256)])]
    rep = _with_claim(report, {"id": "C13", "checks": [
        {"name": "order", "passed": True, "details": {}},
        {"name": "mean gap vs C_IMA", "passed": True, "details": {"per_gamma2": per, "num_samples": 256}}]})
    fig = plots.gap_figure(rep, ctx)
    top, bottom = fig.axes[0], fig.axes[4]  # triangular column (each panel is followed by its legend axes)
    avg = [c for c in top.containers if isinstance(c, ErrorbarContainer) and "prior average" in (c.get_label() or "")]
    assert len(avg) == 1 and "32–256 prior points" in avg[0].get_label()
    np.testing.assert_array_equal(avg[0].lines[0].get_ydata(), [r["mean_gap"] for r in per])
    np.testing.assert_array_equal(avg[0].lines[0].get_xdata(), [4.0, 6.0, 8.0])
    assert [t.get_text() for t in top.texts] == ["n=32", "n=32", "n=256"]  # the counts differ: written per point
    assert any("0.390" in (ln.get_label() or "") for ln in top.lines)  # the C_IMA line of C13
    paired = [c for c in bottom.containers if isinstance(c, ErrorbarContainer)]
    assert len(paired) == 1
    np.testing.assert_allclose(paired[0].lines[0].get_ydata(), [r["mean_gap_minus_c_ima"] for r in per])
    # the IMA-class column never gets a prior average
    assert not any("prior average" in (c.get_label() or "") for a in (fig.axes[2], fig.axes[6]) for c in a.containers)
    fig.clf()


def test_c8_panel_is_scaled_variance_tending_to_one(c11) -> None:
    report, ctx = c11
    fig = plots.self_consistency_figure({"claims": [{"id": "C8", "checks": []}]}, ctx)
    panels = [a for a in fig.axes if a.get_title().startswith("C8")]
    assert len(panels) == len(plots.SC_MODELS)
    assert not any(a.get_title().startswith("C7") for a in fig.axes)
    for ax in panels:
        curves = [ln for ln in ax.lines if (ln.get_label() or "").startswith(r"$\gamma^2 s^*")]
        assert len(curves) == 2
        for ln in curves:  # γ² s_k* ‖J_k‖² = 1 + O(γ⁻²): within 1e-6 of 1 at γ² = 1e8
            assert abs(ln.get_ydata()[-1] - 1.0) < 1e-6
            assert abs(ln.get_ydata()[0] - 1.0) > 1e-3  # and visibly away from 1 at γ² = 10
        assert any(list(ln.get_ydata()) == [1.0, 1.0] for ln in ax.lines)  # the limit line
    fig.clf()
